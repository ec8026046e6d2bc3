"""End-to-end smoke test of one enforcing pass on a real tree."""

from conftest import host_baseline

from driftd.engine.once import run_once


def test_one_pass_reverts_content_drift(host_root, baselines_dir, make_runtime):
    """A file whose content drifted is rewritten and the pass ends clean."""
    (host_root / "etc/motd").write_text("hacked\n")
    bdir = baselines_dir({"b.yaml": host_baseline(spec="""
        files:
          - path: /etc/motd
            content: "hello\\n"
            mode: "0644"
    """)})
    rt = make_runtime(bdir)
    summary = run_once(rt.engine, rt.queue, attempts=2)
    assert summary.exit_code == 0
    assert (host_root / "etc/motd").read_text() == "hello\n"
    assert [o.status for o in summary.outcomes] == ["remediated"]
