"""The presentation layer: wording (live → desired, status words), golden text and JSON per command, colour, diffs, schema."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import host_baseline

from driftd.cli import main
from driftd.models.resources import REDACTED, OutcomeStatus
from driftd.models.wording import WORDS, change_text, drift_text, record_word, status_word, value_text
from driftd.presentation import documents
from driftd.presentation.contentdiff import unified
from driftd.presentation.terminal import Painter, color_wanted

REPO = Path(__file__).resolve().parent.parent
DRIFTD = Path(sys.executable).parent / "driftd"
MOTD = host_baseline(name="motd", spec="""
    files:
      - {path: /etc/motd, content: "hello\\nworld\\n", mode: "0644"}
      - {path: /etc/token, content: "s3cr3t-planted-value\\n", sensitive: true}
""")


# --------------------------------------------------------------------------- wording (pure)


class TestWording:
    def test_live_value_comes_first(self) -> None:
        assert drift_text({"field": "mode", "expected": "0755", "actual": "0777"}) == "mode: 0777 → 0755"

    def test_presence_reads_as_words(self) -> None:
        assert drift_text({"field": "present", "expected": True, "actual": False}) == "missing"
        assert drift_text({"field": "present", "expected": False, "actual": True}) == "present, must be absent"

    def test_no_deepdiff_or_matcher_jargon(self) -> None:
        text = drift_text({"field": "ports", "expected": [1], "actual": [1, 2], "changes": ["iterable_item_added:[1]"]})
        assert text == "ports: [1, 2] → [1] (added [1])"
        img = drift_text({"field": "image", "expected": {"$in": ["app:2"]}, "actual": "app:1", "changes": ["not_in:app:1"]})
        assert img == "image: app:1 → one of [app:2] (app:1 is not an allowed value)"
        for raw in ("iterable_item_added:[0]", "dictionary_item_removed:['x']", "values_changed:['a']", "not_in:x",
                    "missing:CAP", "forbidden:/", "not_allowed:y", "differs:k", "below:2.0"):
            assert ":" not in change_text(raw).split(" ")[0] or raw.startswith("values"), change_text(raw)
            assert not change_text(raw).startswith(raw.split(":")[0]), raw

    def test_values_are_short_and_redaction_is_named(self) -> None:
        assert value_text("sha256:" + "a" * 64) == "sha256:" + "a" * 12
        assert value_text(REDACTED) == "(redacted)"
        assert len(value_text("x" * 500)) == 40

    def test_one_word_per_status(self) -> None:
        assert status_word(OutcomeStatus.REMEDIATED) == "reverted"
        assert status_word(OutcomeStatus.REMEDIATED, retired=True) == "retired"
        assert {status_word(s) for s in OutcomeStatus} <= set(WORDS)
        assert record_word("held:budget") == "held" and record_word("warn") == "reported"
        assert record_word("failed") == "failed" and record_word(None) == "detected"


class TestContentDiff:
    def test_unified_live_to_desired_and_capped(self) -> None:
        d = unified("/etc/motd", b"a\nb\n", b"a\nc\n")
        assert d is not None and d.splitlines()[:2] == ["--- /etc/motd (live)", "+++ /etc/motd (desired)"]
        assert "-b" in d.splitlines() and "+c" in d.splitlines()
        big = unified("/f", b"".join(b"%d\n" % i for i in range(500)), b"x\n", max_lines=10)
        assert big is not None and len(big.splitlines()) == 11 and big.endswith("more diff lines")

    def test_binary_and_oversized_content_is_not_diffed(self) -> None:
        assert unified("/f", b"\0\1", b"x") is None
        assert unified("/f", b"\xff\xfe", b"x") is None
        assert unified("/f", b"a" * 100, b"b", max_bytes=50) is None


class TestColour:
    def test_no_colour_into_a_pipe_or_with_no_color(self, monkeypatch: pytest.MonkeyPatch) -> None:
        class Tty:
            def isatty(self) -> bool:
                return True

        monkeypatch.delenv("NO_COLOR", raising=False)
        monkeypatch.setenv("TERM", "xterm")
        assert color_wanted(Tty()) is True  # type: ignore[arg-type]
        monkeypatch.setenv("NO_COLOR", "1")
        assert color_wanted(Tty()) is False  # type: ignore[arg-type]
        assert color_wanted(Tty(), "always") is True  # type: ignore[arg-type]
        monkeypatch.delenv("NO_COLOR")
        assert color_wanted(Tty(), "never") is False  # type: ignore[arg-type]
        monkeypatch.setenv("TERM", "dumb")
        assert color_wanted(Tty()) is False  # type: ignore[arg-type]

    def test_padding_stays_outside_the_colour(self) -> None:
        class Tty:
            def isatty(self) -> bool:
                return True

            def write(self, s: str) -> int:
                return len(s)

            def flush(self) -> None:
                pass

        p = Painter(Tty(), "always")  # type: ignore[arg-type]
        w = p.word("failed", 10)
        assert w.startswith("\x1b[") and w.endswith("\x1b[0m    ")

    def test_a_real_terminal_gets_colour_and_no_color_turns_it_off(self, tmp_path: Path, host_root: Path,
                                                                    baselines_dir) -> None:
        """`run --once` on a pseudo-terminal colours its status words; NO_COLOR=1 on the same terminal does not."""
        bdir = baselines_dir({"m.yaml": MOTD})
        (host_root / "etc/motd").write_text("drifted\n")
        outs = {}
        for name, extra in (("tty", {}), ("no_color", {"NO_COLOR": "1"})):
            env = {**os.environ, "TERM": "xterm", **extra}
            env.pop("NO_COLOR", None) if not extra else None
            master, slave = pty.openpty()
            proc = subprocess.Popen([str(DRIFTD), "run", "--once", "--dry-run", "--host-root", str(host_root),
                                     "--baselines", str(bdir), "--state-dir", str(tmp_path / name), "--log-level", "error"],
                                    stdout=slave, stderr=subprocess.DEVNULL, env=env)
            os.close(slave)
            chunks = []
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            proc.wait(60)
            os.close(master)
            outs[name] = b"".join(chunks).decode()
        assert "\x1b[" in outs["tty"] and "reported" in outs["tty"]
        assert "\x1b[" not in outs["no_color"] and "reported" in outs["no_color"]


# --------------------------------------------------------------------------- golden output per command


def _drift(host_root: Path) -> None:
    (host_root / "etc/motd").write_text("hello\nthere\n")
    (host_root / "etc/motd").chmod(0o600)
    (host_root / "etc/token").write_text("DRIFTED-planted-secret\n")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class TestRunOutput:
    def test_text_json_and_yaml_say_the_same(self, tmp_path: Path, host_root: Path, baselines_dir,
                                             capsys: pytest.CaptureFixture[str]) -> None:
        bdir = baselines_dir({"m.yaml": MOTD})
        _drift(host_root)
        base = ["--host-root", str(host_root), "--baselines", str(bdir), "--log-level", "error", "--color", "never"]
        code, text, _ = _run(capsys, "run", "--once", "--dry-run", *base, "--state-dir", str(tmp_path / "s1"))
        assert code == 3
        lines = text.splitlines()
        assert lines[1:4] == [
            "  reported  /etc/motd   motd  content: sha256:" + _sha(b"hello\nthere\n") + " → sha256:"
            + _sha(b"hello\nworld\n") + ", mode: 0600 → 0644",
            "            would write_file (dry-run)",  # the rewrite sets the mode too
            "            --- /etc/motd (live)",
        ]
        assert "  reported  /etc/token  motd  content: (redacted) → (redacted)" in lines
        assert "-there" in [ln.strip() for ln in lines] and "+world" in [ln.strip() for ln in lines]
        assert lines[-1] == "result: 0 clean, 0 reverted, 0 retired, 2 reported, 0 held, 0 blocked, 0 failed, 0 error; exit 3 (drift remained)"

        code, out, _ = _run(capsys, "run", "--once", "--dry-run", *base, "-o", "json", "--state-dir", str(tmp_path / "s2"))
        doc = json.loads(out)
        assert (doc["apiVersion"], doc["kind"], doc["exitCode"], doc["exit"]) == ("driftd.io/v1", "PassResult", 3,
                                                                                  "drift remained")
        assert list(doc["counts"]) == list(WORDS) and doc["counts"]["reported"] == 2 and doc["counts"]["failed"] == 0
        motd = next(r for r in doc["results"] if r["resource"] == "/etc/motd")
        assert [list(d)[:3] for d in motd["drift"]] == [["field", "live", "desired"]] * 2
        assert motd["drift"][1] == {"field": "mode", "live": "0600", "desired": "0644", "changes": [],
                                    "text": "mode: 0600 → 0644"}
        assert motd["would"] == ["write_file"] and motd["did"] == [] and "+world" in motd["diff"]
        token = next(r for r in doc["results"] if r["resource"] == "/etc/token")
        assert token["diff"] is None

        code, out, _ = _run(capsys, "run", "--once", "--dry-run", *base, "-o", "yaml", "--state-dir", str(tmp_path / "s3"))
        ydoc = yaml.safe_load(out)
        assert ydoc["counts"] == doc["counts"] and [r["status"] for r in ydoc["results"]] == ["reported", "reported"]

        code, text, _ = _run(capsys, "run", "--once", *base, "--state-dir", str(tmp_path / "s4"))
        assert code == 0
        assert "  reverted  /etc/motd " in text and "did write_file; drifted content kept as sha256:" in text
        assert text.splitlines()[-1].startswith("result: 0 clean, 2 reverted, 0 retired, 0 reported")

    def test_a_down_target_is_counted_as_such(self) -> None:
        from driftd.engine.once import PassSummary
        from driftd.presentation.render import pass_text

        s = PassSummary(baseline_version="abc", dry_run=False, resources=0, duration_seconds=0.01, exit_code=1,
                        counts={"clean": 0}, targets_down={"docker": "cannot connect"})
        text = pass_text(documents.pass_document(s, node="n1"))
        assert "  error  target docker unreachable: cannot connect" in text
        assert text.endswith("0 failed, 0 error, 1 target down; exit 1 (error)")


def _sha(b: bytes) -> str:
    import hashlib

    return hashlib.sha256(b).hexdigest()[:12]


class TestStatusOutput:
    def test_table_wide_json_yaml_and_filters(self, tmp_path: Path, host_root: Path, baselines_dir,
                                              capsys: pytest.CaptureFixture[str]) -> None:
        bdir = baselines_dir({"m.yaml": MOTD, "w.yaml": host_baseline(name="issue", enforcement="warn", spec="""
            files:
              - {path: /etc/issue, content: "welcome\\n"}
        """)})
        _drift(host_root)
        state = str(tmp_path / "state")
        common = ["--host-root", str(host_root), "--baselines", str(bdir), "--state-dir", state, "--log-level", "error"]
        assert _run(capsys, "run", "--once", "--dry-run", *common)[0] == 3
        code, out, _ = _run(capsys, "status", "--state-dir", state, "--color", "never")
        assert code == 3
        lines = out.splitlines()
        assert lines[0].split() == ["RESOURCE", "TARGET", "BASELINE", "STATUS", "AGE", "DEADLINE", "DRIFT", "(LIVE", "→",
                                    "DESIRED)"]
        rows = {ln.split()[0]: ln for ln in lines[1:4]}
        assert set(rows) == {"/etc/motd", "/etc/token", "/etc/issue"}
        assert rows["/etc/issue"].split()[1:4] == ["host", "issue", "reported"] and rows["/etc/issue"].endswith("missing")
        assert rows["/etc/motd"].endswith("mode: 0600 → 0644")
        assert lines[0].index("STATUS") == rows["/etc/issue"].index("reported")  # aligned columns
        assert "open drifts: 3 reported" in out and "baseline set " in out
        scan_line = next(ln for ln in out.splitlines() if "last scan" in ln)
        assert scan_line.startswith("node node-a: last scan host ") and scan_line.endswith(" ago (drift, 3 resources)")

        _, wide, _ = _run(capsys, "status", "--state-dir", state, "-o", "wide", "--color", "never")
        assert "ATTEMPTS" in wide.splitlines()[0] and "host:file:/etc/motd" in wide

        _, out, _ = _run(capsys, "status", "--state-dir", state, "-o", "json")
        doc = json.loads(out)
        assert (doc["apiVersion"], doc["kind"]) == ("driftd.io/v1", "DriftList")
        assert list(doc["counts"]) == list(documents.RECORD_WORDS) and doc["counts"]["reported"] == 3
        assert doc["node"] == "node-a" and [(sc["target"], sc["result"], sc["resources"]) for sc in doc["scans"]] == [
            ("host", "drift", 3)] and doc["scans"][0]["at"].endswith("Z")
        assert doc["counts"]["failed"] == 0
        token = next(i for i in doc["items"] if i["resource"] == "/etc/token")
        assert token["drift"][0]["live"] == token["drift"][0]["desired"] == REDACTED
        assert yaml.safe_load(_run(capsys, "status", "--state-dir", state, "-o", "yaml")[1]) == {
            **doc, "scans": [{**sc, "ageSeconds": pytest.approx(sc["ageSeconds"], abs=5)} for sc in doc["scans"]],
            "items": [{**i, "ageSeconds": pytest.approx(i["ageSeconds"], abs=5),
                              "deadlineInSeconds": pytest.approx(i["deadlineInSeconds"], abs=5)} for i in doc["items"]]}

        code, out, _ = _run(capsys, "status", "--state-dir", state, "-o", "json", "--baseline", "issue")
        assert [i["resource"] for i in json.loads(out)["items"]] == ["/etc/issue"] and code == 3
        code, out, _ = _run(capsys, "status", "--state-dir", state, "-o", "json", "--status", "failed")
        assert json.loads(out)["items"] == [] and code == 0
        code, out, _ = _run(capsys, "status", "--state-dir", state, "--target", "docker", "--color", "never")
        assert out.splitlines()[0] == "no active drift" and code == 0


class TestEveryCommandSpeaksYaml:
    def test_plan_lint_and_baseline_diff_print_the_same_document_as_json_or_yaml(
            self, tmp_path: Path, host_root: Path, baselines_dir) -> None:
        bdir = baselines_dir({"m.yaml": MOTD})
        new = baselines_dir({"m.yaml": MOTD.replace('mode: "0644"', 'mode: "0640"')})
        _drift(host_root)
        for argv in (["plan", "--host-root", str(host_root), "--baselines", str(bdir)],
                     ["baseline", "lint", str(bdir)], ["baseline", "diff", str(bdir), str(new)]):
            docs = []
            for fmt in ("json", "yaml"):
                r = subprocess.run([str(DRIFTD), *argv, "-o", fmt], capture_output=True, text=True, timeout=60, check=False)
                assert r.returncode in (0, 3), (argv, fmt, r.stderr)
                docs.append(json.loads(r.stdout) if fmt == "json" else yaml.safe_load(r.stdout))
            assert docs[0] == docs[1] and docs[0], argv
            assert not r.stdout.lstrip().startswith("{"), "the YAML is block style, not JSON"


class TestSecretsOnEverySurface:
    def test_planted_secret_reaches_no_output(self, tmp_path: Path, host_root: Path, baselines_dir,
                                              capsys: pytest.CaptureFixture[str]) -> None:
        """The desired and the drifted secret appear in no stdout, stderr, JSON, YAML or status output."""
        bdir = baselines_dir({"m.yaml": MOTD})
        _drift(host_root)
        state = str(tmp_path / "state")
        common = ["--host-root", str(host_root), "--baselines", str(bdir), "--state-dir", state,
                  "--log-level", "debug", "--log-format", "json"]
        seen = []
        for argv in (["run", "--once", "--dry-run", *common], ["run", "--once", "--dry-run", "-o", "json", *common],
                     ["run", "--once", "--dry-run", "-o", "yaml", *common], ["status", "--state-dir", state],
                     ["status", "--state-dir", state, "-o", "wide"], ["status", "--state-dir", state, "-o", "json"],
                     ["run", "--once", "-o", "json", *common]):
            _, out, err = _run(capsys, *argv)
            seen.append(out + err)
        everything = "\n".join(seen)
        assert "/etc/token" in everything
        for secret in ("s3cr3t-planted-value", "DRIFTED-planted-secret"):
            assert secret not in everything
            import hashlib

            digest = hashlib.sha256(secret.encode() + b"\n").hexdigest()
            assert digest[:12] not in everything  # nor any hash of it


    def test_planted_secret_reaches_no_event_report_api_metric_audit_log_or_dashboard(
            self, tmp_path: Path, host_root: Path, baselines_dir, make_runtime) -> None:
        """Every other surface, in process: Kubernetes Event messages and PolicyReport rows (their real wire format),
        GET /api/v1/drifts, the /metrics scrape, the audit log, the JSON log stream, plan -o json|yaml|markdown,
        baseline diff, and the dashboard's queries, for a dry-run pass that leaves the drift and one that reverts it."""
        import hashlib
        import io

        from prometheus_client import CollectorRegistry, generate_latest

        from driftd.cli import api_drifts
        from driftd.engine.once import run_once
        from driftd.observability.logging import configure_logging
        from driftd.targets.kubernetes.policyreport import to_row

        class Channel:
            """A Notifier and Reporter: what the Kubernetes target would send as Events and PolicyReport rows."""

            def __init__(self) -> None:
                self.sent: list[str] = []

            def notify(self, reason: str, desired, message: str, *, warning: bool = True) -> None:
                self.sent.append(f"{reason} {desired.address} {message}")

            def publish_report(self, results, *, baseline_set: str = "") -> None:
                self.sent += [json.dumps(to_row(r)) for r in results]

        bdir = baselines_dir({"m.yaml": MOTD})
        _drift(host_root)
        logs = io.StringIO()
        configure_logging("json", "debug", stream=logs)
        seen: list[str] = []
        channel = Channel()
        state = tmp_path / "state"
        for dry_run in (True, False):
            reg = CollectorRegistry()
            rt = make_runtime(bdir, dry_run=dry_run, state_dir=state, registry=reg)
            rt.engine.notifiers.append(channel)
            rt.engine.reporters.append(channel)
            run_once(rt.engine, rt.queue, attempts=2)
            seen.append(json.dumps(api_drifts(rt)))
            seen.append(generate_latest(reg).decode())
            rt.state.close()
        assert "DRIFTED-planted-secret" not in (host_root / "etc/token").read_text(), "the second pass reverted it"
        seen += [*channel.sent, logs.getvalue()]
        seen += [p.read_text(errors="replace") for p in (state / "audit").iterdir()]
        seen.append((REPO / "charts/driftd/dashboards/driftd.json").read_text())
        _drift(host_root)
        new = baselines_dir({"m.yaml": MOTD.replace("s3cr3t-planted-value", "an0ther-planted-value")})
        for argv in (["plan", "--host-root", str(host_root), "--baselines", str(bdir), "-o", "json"],
                     ["plan", "--host-root", str(host_root), "--baselines", str(bdir), "-o", "yaml"],
                     ["plan", "--host-root", str(host_root), "--baselines", str(bdir), "-o", "markdown"],
                     ["baseline", "diff", str(bdir), str(new)], ["baseline", "diff", str(bdir), str(new), "-o", "yaml"]):
            r = subprocess.run([str(DRIFTD), *argv], capture_output=True, text=True, timeout=60, check=False)
            assert r.returncode in (0, 3), (argv, r.stderr)
            seen.append(r.stdout + r.stderr)
        everything = "\n".join(seen)
        assert "/etc/token" in everything and "DriftDetected /etc/token" in everything
        assert any('"rule": "host/file"' in s and "/etc/token" in s for s in channel.sent), "the report was published"
        for secret in ("s3cr3t-planted-value", "DRIFTED-planted-secret", "an0ther-planted-value"):
            assert secret not in everything
            digest = hashlib.sha256(secret.encode() + b"\n").hexdigest()
            assert digest[:12] not in everything, f"a hash of {secret} leaked"


class TestSchemaAndVersion:
    def test_committed_schema_matches_the_models(self) -> None:
        """docs/output.schema.json is current (regenerate with `driftd output-schema > docs/output.schema.json`)."""
        committed = json.loads((REPO / "docs/output.schema.json").read_text())
        assert committed == json.loads(json.dumps(documents.schema()))

    def test_documents_validate_against_the_schema_names(self, tmp_path: Path) -> None:
        s = documents.schema()
        assert set(s["$defs"]["PassDocument"]["required"]) >= {"apiVersion", "kind", "counts", "results", "exitCode"}
        assert set(s["$defs"]["StatusDocument"]["required"]) >= {"apiVersion", "kind", "counts", "items"}

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as e:
            main(["--version"])
        assert e.value.code == 0
        assert capsys.readouterr().out.strip() == "driftd 0.1.0 (output driftd.io/v1)"


class TestCompletion:
    def test_bash_completes_commands_flags_and_choices(self) -> None:
        """The generated script, sourced by a real bash, completes subcommands, flags and flag values."""
        script = subprocess.run([str(DRIFTD), "completion", "bash"], capture_output=True, text=True, check=True).stdout

        def complete(*words: str) -> list[str]:
            arr = " ".join(f"'{w}'" for w in ("driftd", *words))
            prog = f'{script}\nCOMP_WORDS=({arr}); COMP_CWORD={len(words)}; _driftd; printf "%s\\n" "${{COMPREPLY[@]}}"'
            return subprocess.run(["bash", "-c", prog], capture_output=True, text=True, check=True).stdout.split()

        assert complete("st") == ["state", "status"]
        assert complete("status", "-o", "") == ["text", "wide", "json", "yaml"]
        assert set(complete("baseline", "")) >= {"lint", "diff", "capture", "sign", "verify", "schema"}
        assert complete("status", "--ba") == ["--baseline", "--baselines"]
        assert complete("run", "-o", "y") == ["yaml"]
