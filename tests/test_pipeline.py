"""Whole pipeline over real trees: idempotence, no-write modes, snapshots, restarts, failures and secrets."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import host_baseline, need, need_root, tree_digest
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from driftd.cli import main
from driftd.engine.clock import FakeClock
from driftd.engine.once import PassSummary, run_once
from driftd.models.resources import REDACTED
from driftd.observability.logging import configure_logging
from driftd.presentation.documents import pass_document
from driftd.presentation.render import pass_text
from driftd.safety.snapshots import SnapshotError, SnapshotStore

REPO = Path(__file__).resolve().parent.parent
DRIFTD = Path(sys.executable).parent / "driftd"

SPEC = """
    files:
      - {path: /etc/motd, content: "hello\\n", mode: "0644"}
      - {path: /etc/ssh/sshd_config, source: sshd_config, mode: "0600"}
      - {path: /etc/hosts.equiv, absent: true}
      - {path: /etc/issue, content: "welcome\\n"}
    directories:
      - {path: /etc/ssh, mode: "0755"}
      - {path: /etc/cron.d, mode: "0700"}
    sysctls:
      - {key: net.ipv4.ip_forward, value: "0"}
"""
DRIFTED_KEYS = {
    "host:file:/etc/motd",
    "host:file:/etc/ssh/sshd_config",
    "host:file:/etc/hosts.equiv",
    "host:file:/etc/issue",
    "host:dir:/etc/ssh",
    "host:dir:/etc/cron.d",
    "host:sysctl:net.ipv4.ip_forward",
}


def drift_everything(host_root: Path) -> None:
    """Content+mode drift, a missing dir with a file inside, a must-be-absent file, a dir mode, a sysctl."""
    (host_root / "etc/motd").write_text("hacked\n")
    (host_root / "etc/motd").chmod(0o666)
    (host_root / "etc/hosts.equiv").write_text("+ +\n")
    (host_root / "etc/cron.d").mkdir()
    (host_root / "etc/cron.d").chmod(0o777)
    (host_root / "proc/sys/net/ipv4").mkdir(parents=True)
    (host_root / "proc/sys/net/ipv4/ip_forward").write_text("1\n")


def write_baselines(baselines_dir, enforcement: str = "enforce", spec: str = SPEC) -> Path:
    return baselines_dir({
        "b.yaml": host_baseline(spec=spec, enforcement=enforcement),
        "sshd_config": "PermitRootLogin no\nPasswordAuthentication no\n",
    })


def run(rt, attempts: int = 4, **kw: Any) -> PassSummary:
    return run_once(rt.engine, rt.queue, attempts=attempts, **kw)


def all_actions(rt) -> list[dict[str, Any]]:
    return [a for r in rt.state.recent(1000) for a in rt.state.actions(r.id)]


def metric(rt, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, labels) or 0.0


def record(rt, key: str):
    (rec,) = [r for r in rt.state.recent(1000) if r.key == key]
    return rec


# --------------------------------------------------------------------------- idempotence


class TestIdempotence:
    def test_second_pass_finds_nothing_and_writes_nothing(self, host_root, baselines_dir, make_runtime):
        """After an enforcing pass, a second pass reports nothing, records nothing and leaves every byte and mtime."""
        drift_everything(host_root)
        rt = make_runtime(write_baselines(baselines_dir))
        first = run(rt)
        assert first.exit_code == 0
        assert {o.key for o in first.outcomes} == DRIFTED_KEYS
        assert {o.status for o in first.outcomes} == {"remediated"}
        digest, actions = tree_digest(host_root), all_actions(rt)
        succeeded = metric(rt, "driftd_remediations_total", target="host", action="write_file", result="succeeded")

        second = run(rt)
        assert second.exit_code == 0
        assert second.outcomes == []
        assert second.counts == {"clean": second.resources} and second.resources == len(DRIFTED_KEYS) + 0
        assert tree_digest(host_root) == digest
        assert all_actions(rt) == actions
        assert rt.state.active() == {}
        assert metric(rt, "driftd_remediations_total", target="host", action="write_file", result="succeeded") == succeeded

    def test_second_pass_with_ownership_writes_nothing(self, host_root, baselines_dir, make_runtime):
        """Ownership fixes are idempotent too: the second pass finds the declared owners and changes nothing."""
        need_root()
        f = host_root / "etc/shadow"
        f.write_text("root:*:1::::::\n")
        os.chown(f, 1000, 1000)
        (host_root / "etc/ssh").mkdir()
        os.chown(host_root / "etc/ssh", 1000, 1000)
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/shadow, mode: "0640", owner: root, group: shadow}
              - {path: /etc/ssh/moduli, content: "x\\n", owner: sshd, group: nogroup}
            directories:
              - {path: /etc/ssh, owner: root, group: root}
        """)}))
        assert run(rt).exit_code == 0
        assert (f.stat().st_uid, f.stat().st_gid) == (0, 42)
        digest = tree_digest(host_root)
        second = run(rt)
        assert (second.exit_code, second.outcomes) == (0, [])
        assert tree_digest(host_root) == digest

    def test_cached_hash_still_sees_same_size_rewrite_with_restored_mtime(self, host_root, baselines_dir, make_runtime):
        """Between full rehashes a same-size edit whose mtime was put back is still caught (ctime/inode change)."""
        drift_everything(host_root)
        rt = make_runtime(write_baselines(baselines_dir))
        assert run(rt, full_rehash_interval=3600).exit_code == 0
        motd = host_root / "etc/motd"
        st = motd.stat()
        with motd.open("r+b") as fh:
            fh.write(b"HELLO\n")
        os.utime(motd, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert motd.stat().st_size == st.st_size and motd.stat().st_mtime_ns == st.st_mtime_ns
        again = run(rt, full_rehash_interval=3600)
        assert [(o.key, o.status) for o in again.outcomes] == [("host:file:/etc/motd", "remediated")]
        assert motd.read_text() == "hello\n"


# --------------------------------------------------------------------------- dry-run, warn, dryrun


class TestNoWriteModes:
    @pytest.mark.parametrize(
        ("dry_run", "enforcement", "result"),
        [(True, "enforce", "dry-run"), (False, "warn", "warn"), (False, "dryrun", "dryrun")],
        ids=["global-dry-run", "warn-baseline", "dryrun-baseline"],
    )
    def test_nothing_is_written_but_drift_is_recorded(self, host_root, baselines_dir, make_runtime, dry_run, enforcement, result):
        """Dry-run and warn/dryrun baselines change no byte, exit 3, and still record every drift in state."""
        drift_everything(host_root)
        before = tree_digest(host_root)
        rt = make_runtime(write_baselines(baselines_dir, enforcement), dry_run=dry_run)
        s = run(rt)
        assert tree_digest(host_root) == before
        assert s.exit_code == 3 and s.dry_run is dry_run
        assert {o.key for o in s.outcomes} == DRIFTED_KEYS
        assert {o.status for o in s.outcomes} == {"reported"}
        outs = {o.key: o for o in s.outcomes}
        assert outs["host:file:/etc/motd"].actions == ["write_file"]
        assert outs["host:file:/etc/hosts.equiv"].actions == ["remove"]
        assert outs["host:sysctl:net.ipv4.ip_forward"].actions == ["write_sysctl"]
        assert all(o.snapshots == [] for o in s.outcomes)
        active = rt.state.active()
        assert set(active) == DRIFTED_KEYS
        assert {r.last_result for r in active.values()} == {result}
        assert {r.attempts for r in active.values()} == {0}
        assert metric(rt, "driftd_remediations_total", target="host", action="remove", result="skipped") == 1
        assert not any((rt.settings.state_dir / "snapshots").rglob("*"))

    def test_repeated_dry_run_adds_no_action_rows(self, host_root, baselines_dir, make_runtime):
        """A second dry-run pass keeps the drift open without logging the same skipped action again."""
        drift_everything(host_root)
        rt = make_runtime(write_baselines(baselines_dir), dry_run=True)
        run(rt)
        rows = all_actions(rt)
        assert len(rows) == len(DRIFTED_KEYS)
        s = run(rt)
        assert s.exit_code == 3
        assert all_actions(rt) == rows


# --------------------------------------------------------------------------- snapshots


BINARY_DRIFT = b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x80not utf-8\xc3\x28" + bytes(range(256))


class TestSnapshots:
    def test_content_revert_keeps_drifted_binary_bytes(self, host_root, baselines_dir, make_runtime):
        """The snapshot id in the outcome and in state gives back the exact drifted (binary) bytes."""
        (host_root / "etc/motd").write_bytes(BINARY_DRIFT)
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/motd, content: "hello\\n"}
        """)}))
        s = run(rt)
        assert s.exit_code == 0
        (o,) = s.outcomes
        (sid,) = o.snapshots
        assert sid == "sha256:" + hashlib.sha256(BINARY_DRIFT).hexdigest()
        store = SnapshotStore(Path(rt.settings.state_dir) / "snapshots")
        assert store.get(sid) == BINARY_DRIFT
        rec = record(rt, "host:file:/etc/motd")
        assert rec.snapshots == [sid] and rec.resolution == "remediated"
        assert [(a["action"], a["result"], a["snapshots"]) for a in rt.state.actions(rec.id)] == [
            ("write_file", "succeeded", [sid])
        ]
        assert metric(rt, "driftd_snapshots_total", target="host") == 1
        assert (host_root / "etc/motd").read_bytes() == b"hello\n"

    def test_absent_removal_keeps_removed_bytes(self, host_root, baselines_dir, make_runtime):
        """A removed must-be-absent file is kept as a snapshot recorded in state."""
        (host_root / "etc/hosts.equiv").write_bytes(b"+\xff +\n")
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/hosts.equiv, absent: true}
        """)}))
        s = run(rt)
        (sid,) = s.outcomes[0].snapshots
        rec = record(rt, "host:file:/etc/hosts.equiv")
        assert rec.snapshots == [sid]
        assert SnapshotStore(Path(rt.settings.state_dir) / "snapshots").get(rec.snapshots[0]) == b"+\xff +\n"

    def test_cli_snapshot_prints_the_bytes(self, host_root, baselines_dir, make_runtime, capsysbinary):
        """`driftd snapshot ID --state-dir DIR` writes the exact drifted bytes to stdout."""
        (host_root / "etc/motd").write_bytes(BINARY_DRIFT)
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/motd, content: "hello\\n"}
        """)}))
        (sid,) = run(rt).outcomes[0].snapshots
        rt.state.close()
        assert main(["snapshot", sid, "--state-dir", str(rt.settings.state_dir)]) == 0
        assert capsysbinary.readouterr().out == BINARY_DRIFT
        missing = "sha256:" + "0" * 64
        assert main(["snapshot", missing, "--state-dir", str(rt.settings.state_dir)]) == 1
        assert b"no snapshot" in capsysbinary.readouterr().err

    def test_cli_snapshot_in_a_subprocess(self, host_root, baselines_dir, make_runtime):
        """The installed `driftd` command prints a snapshot byte for byte."""
        need(DRIFTD.exists(), f"{DRIFTD} not installed (pip install -e .)")
        (host_root / "etc/hosts.equiv").write_bytes(BINARY_DRIFT)
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/hosts.equiv, absent: true}
        """)}))
        (sid,) = run(rt).outcomes[0].snapshots
        rt.state.close()
        r = subprocess.run([str(DRIFTD), "snapshot", sid, "--state-dir", str(rt.settings.state_dir)],
                           capture_output=True, timeout=60, cwd=REPO)
        assert r.returncode == 0, r.stderr
        assert r.stdout == BINARY_DRIFT

    def test_file_over_snapshot_cap_is_not_overwritten(self, host_root, baselines_dir, make_runtime):
        """A drifted file too large to snapshot is left intact and the remediation fails."""
        big = host_root / "etc/motd"
        big.write_bytes(b"x" * 100)
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/motd, content: "hello\\n"}
        """)}), snapshot_max_bytes=64)
        s = run(rt, attempts=2)
        assert s.exit_code == 4
        assert s.outcomes[0].status == "failed" and "64-byte limit" in (s.outcomes[0].error or "")
        assert big.read_bytes() == b"x" * 100

    def test_corrupt_snapshot_is_detected(self, tmp_path):
        """A snapshot whose bytes no longer match its id is reported corrupt, not returned."""
        store = SnapshotStore(tmp_path / "snaps")
        sid = store.put(b"original")
        assert store.put(b"original") == sid
        path = tmp_path / "snaps/sha256" / sid[7:9] / sid[7:]
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        path.write_bytes(b"tampered")
        with pytest.raises(SnapshotError, match="corrupt"):
            store.get(sid)
        with pytest.raises(KeyError):
            store.get("md5:abc")


# --------------------------------------------------------------------------- restart and window


MOTD_ONLY = """
    files:
      - {path: /etc/motd, content: "hello\\n"}
"""


class TestRestartAndWindow:
    def test_restart_keeps_first_seen_and_deadline(self, host_root, tmp_path, baselines_dir, make_runtime):
        """A new runtime on the same state dir keeps first-seen; deadline stays first-seen + window."""
        (host_root / "etc/motd").write_text("hacked\n")
        bdir = baselines_dir({"b.yaml": host_baseline(spec=MOTD_ONLY)})
        clock = FakeClock()
        sd = tmp_path / "state-restart"
        t0 = clock.time()
        rt1 = make_runtime(bdir, dry_run=True, clock=clock, state_dir=sd)
        run(rt1)
        rt1.state.close()

        clock.advance(600)
        rt2 = make_runtime(bdir, dry_run=True, clock=clock, state_dir=sd)
        (o,) = run(rt2).outcomes
        rec = rt2.state.get_active("host:file:/etc/motd")
        assert rec.first_seen == t0 and o.first_seen == t0
        assert rec.deadline == t0 + 1800 and o.deadline == t0 + 1800
        assert not rec.breached
        rt2.state.close()

        clock.advance(300)
        rt3 = make_runtime(bdir, clock=clock, state_dir=sd)
        s = run(rt3)
        assert [o.status for o in s.outcomes] == ["remediated"]
        rec = record(rt3, "host:file:/etc/motd")
        assert rec.first_seen == t0 and rec.resolved_at == t0 + 900
        assert metric(rt3, "driftd_time_to_remediate_seconds_sum", target="host") == 900
        assert metric(rt3, "driftd_drifts_detected_total", target="host", baseline="test") == 0  # not new

    def test_window_comes_from_the_baseline(self, host_root, baselines_dir, make_runtime):
        """A baseline's own window sets the deadline."""
        (host_root / "etc/motd").write_text("hacked\n")
        spec = 'window: 10m\nfiles:\n  - {path: /etc/motd, content: "hello\\n"}'
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec=spec)}), dry_run=True)
        (o,) = run(rt).outcomes
        assert o.deadline - o.first_seen == 600

    def test_window_breach_is_recorded_once(self, host_root, baselines_dir, make_runtime):
        """Drift still open after 30 minutes marks the record breached and counts one breach, logged as an error."""
        (host_root / "etc/motd").write_text("hacked\n")
        clock = FakeClock()
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec=MOTD_ONLY)}), dry_run=True, clock=clock)
        run(rt)
        clock.advance(29 * 60)
        run(rt)
        assert not rt.state.get_active("host:file:/etc/motd").breached
        assert metric(rt, "driftd_window_breaches_total", target="host", baseline="test") == 0

        clock.advance(2 * 60)
        with capture_logs() as logs:
            run(rt)
        rec = rt.state.get_active("host:file:/etc/motd")
        assert rec.breached
        assert metric(rt, "driftd_window_breaches_total", target="host", baseline="test") == 1
        (ev,) = [e for e in logs if e["event"] == "drift.window_breached"]
        assert ev["log_level"] == "error" and ev["deadline"] == rec.deadline

        clock.advance(60)
        run(rt)
        assert metric(rt, "driftd_window_breaches_total", target="host", baseline="test") == 1


# --------------------------------------------------------------------------- failures


class TestFailures:
    def test_missing_undeclared_parent_fails_retries_and_escalates(self, host_root, baselines_dir, make_runtime):
        """A write under a missing, undeclared parent fails transiently: retried with backoff, counted, escalated once."""
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/nodir/app.conf, content: "x=1\\n"}
        """)}))
        clock = rt.engine.clock
        start = clock.monotonic()
        with capture_logs() as logs:
            s = run(rt, attempts=4)
        assert s.exit_code == 4
        (o,) = s.outcomes
        assert o.status == "failed" and o.retry and "/etc/nodir" in (o.error or "")
        assert clock.monotonic() - start == 1 + 2 + 4  # backoff between the 4 attempts
        rec = rt.state.get_active("host:file:/etc/nodir/app.conf")
        assert (rec.attempts, rec.consecutive_failures, rec.last_result) == (4, 4, "failed")
        assert [a["result"] for a in rt.state.actions(rec.id)] == ["failed"] * 4
        assert metric(rt, "driftd_remediations_total", target="host", action="write_file", result="failed") == 4
        assert len([e for e in logs if e["event"] == "remediation.failed"]) == 4
        (esc,) = [e for e in logs if e["event"] == "remediation.escalated"]
        assert esc["consecutive_failures"] == 3 and "/etc/nodir" in esc["error"]
        assert not (host_root / "etc/nodir").exists()

        with capture_logs() as logs:
            assert run(rt, attempts=2).exit_code == 4
        assert not [e for e in logs if e["event"] == "remediation.escalated"]  # escalated once, not every failure
        assert rt.state.get_active("host:file:/etc/nodir/app.conf").consecutive_failures == 6

        (host_root / "etc/nodir").mkdir()
        fixed = run(rt)
        assert fixed.exit_code == 0 and fixed.outcomes[0].status == "remediated"
        rec = record(rt, "host:file:/etc/nodir/app.conf")
        assert (rec.consecutive_failures, rec.attempts, rec.resolution) == (0, 7, "remediated")

    def test_escalation_threshold_comes_from_settings(self, host_root, baselines_dir, make_runtime):
        """retry.escalate_after decides after how many consecutive failures the escalation is logged."""
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/nodir/app.conf, content: "x=1\\n"}
        """)}), retry={"escalate_after": 1})
        with capture_logs() as logs:
            run(rt, attempts=3)
        (esc,) = [e for e in logs if e["event"] == "remediation.escalated"]
        assert esc["consecutive_failures"] == 1

    def test_exit_code_priority(self, host_root, baselines_dir, make_runtime):
        """With blocked, failed and remediated outcomes in one pass, failed (4) wins over blocked (3)."""
        (host_root / "etc/dir_not_file").mkdir()
        (host_root / "etc/motd").write_text("hacked\n")
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/dir_not_file, content: "x\\n"}
              - {path: /etc/nodir/f, content: "x\\n"}
              - {path: /etc/motd, content: "hello\\n"}
        """)}))
        s = run(rt, attempts=1)
        assert {o.key: o.status for o in s.outcomes} == {
            "host:file:/etc/dir_not_file": "blocked",
            "host:file:/etc/nodir/f": "failed",
            "host:file:/etc/motd": "remediated",
        }
        assert s.exit_code == 4
        assert s.counts == {"blocked": 1, "failed": 1, "remediated": 1, "clean": 0}
        text = pass_text(pass_document(s, node="n"))
        assert "  failed " in text and "  blocked " in text and "  reverted " in text
        assert "result: 0 clean, 1 reverted, 0 retired, 0 reported, 0 held, 1 blocked, 1 failed, 0 error; exit 4" in text


# --------------------------------------------------------------------------- secrets


DESIRED_SECRET = b"token=correct-horse-battery-staple\n"
DRIFTED_SECRET = b"token=hunter2-planted-by-attacker\n"
SECRET_SPEC = """
    files:
      - {path: /etc/app/token, source: token, mode: "0600", sensitive: true}
"""


def _secret_tree(host_root: Path, baselines_dir) -> Path:
    (host_root / "etc/app").mkdir()
    (host_root / "etc/app/token").write_bytes(DRIFTED_SECRET)
    (host_root / "etc/app/token").chmod(0o644)
    return baselines_dir({"b.yaml": host_baseline(spec=SECRET_SPEC), "token": DESIRED_SECRET})


def _forbidden() -> list[str]:
    """Every rendering of the secret: the bytes and both content hashes."""
    out = []
    for b in (DESIRED_SECRET, DRIFTED_SECRET):
        out += [b.decode().strip(), hashlib.sha256(b).hexdigest()]
    return out


def _without_snapshot_ids(value: Any) -> Any:
    """Drop snapshot-id fields: a snapshot id is by design the hash of the saved (drifted) bytes."""
    if isinstance(value, dict):
        return {k: _without_snapshot_ids(v) for k, v in value.items() if k not in ("snapshot", "snapshots")}
    if isinstance(value, list | tuple):
        return [_without_snapshot_ids(v) for v in value]
    return value


def _assert_clean(what: str, blob: str) -> None:
    for f in _forbidden():
        assert f not in blob, f"{what} leaks {f[:12]}..."


class TestSecrets:
    def test_sensitive_content_never_appears_in_logs_state_or_summary(self, host_root, baselines_dir, make_runtime):
        """A drifted sensitive file is fixed and its bytes and content hashes appear in no log, state record or summary."""
        bdir = _secret_tree(host_root, baselines_dir)
        configure_logging("json", "debug")
        rt = make_runtime(bdir)
        with capture_logs() as logs:
            s = run(rt)
        assert s.exit_code == 0 and (host_root / "etc/app/token").read_bytes() == DESIRED_SECRET
        (o,) = s.outcomes
        content = [d for d in o.drift if d["field"] == "content"]
        assert content and content[0]["expected"] == content[0]["actual"] == REDACTED
        assert any(d["field"] == "mode" and d["actual"] == "0644" for d in o.drift)  # non-secret fields stay visible

        assert {e["event"] for e in logs} >= {"drift.detected", "remediation.succeeded", "snapshot.saved", "drift.resolved"}
        _assert_clean("logs", json.dumps(_without_snapshot_ids(logs), default=str))
        _assert_clean("summary", json.dumps(_without_snapshot_ids(s.as_dict()), default=str))
        _assert_clean("text summary", pass_text(pass_document(s, node="n")))
        rec = record(rt, "host:file:/etc/app/token")
        assert {f["field"]: f["actual"] for f in rec.fields}["content"] == REDACTED
        _assert_clean("state record", json.dumps(_without_snapshot_ids(rec.as_dict()), default=str))
        _assert_clean("state actions", json.dumps(_without_snapshot_ids(rt.state.actions(rec.id)), default=str))
        _assert_clean("metrics", generate_latest(rt.metrics.registry).decode())
        rt.state.close()
        for p in Path(rt.settings.state_dir).glob("state.db*"):
            raw = p.read_bytes()
            assert DESIRED_SECRET not in raw and DRIFTED_SECRET not in raw
            assert hashlib.sha256(DESIRED_SECRET).hexdigest().encode() not in raw

    def test_dry_run_cli_output_and_logs_carry_no_secret(self, host_root, tmp_path, baselines_dir, capsys):
        """`driftd run --once --dry-run` prints neither the secret nor any hash of it, in JSON or text, nor logs it."""
        bdir = _secret_tree(host_root, baselines_dir)
        for output in ("json", "text"):
            code = main(["run", "--once", "--dry-run", "--output", output, "--log-level", "debug", "--log-format", "json",
                         "--host-root", str(host_root), "--baselines", str(bdir), "--state-dir", str(tmp_path / f"state-{output}")])
            out, err = capsys.readouterr()
            assert code == 3
            assert "/etc/app/token" in out and "drift.detected" in err
            _assert_clean(f"{output} stdout", out)
            _assert_clean(f"{output} stderr", err)
            if output == "json":
                (o,) = json.loads(out)["results"]
                assert {d["field"]: d["desired"] for d in o["drift"]}["content"] == REDACTED
                assert {d["field"]: d["live"] for d in o["drift"]}["content"] == REDACTED
                assert o["diff"] is None  # a sensitive file's content is never diffed
        assert (host_root / "etc/app/token").read_bytes() == DRIFTED_SECRET
