"""The daemon (`driftd run`): a real subprocess, hot reload, start-up failures, `--once` exit codes, scheduler.

Subprocess tests poll (bounded) for what the running daemon does; in-process tests never wait on the
scheduler's timing.  Every server binds to 127.0.0.1 on a free port.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import host_baseline, poll
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from driftd.baselines.loader import fingerprint, load_set
from driftd.engine.daemon import BaselineManager, Daemon
from driftd.engine.once import run_once
from driftd.engine.queue import KeyedQueue
from driftd.observability.logging import configure_logging

DRIFTD = str(Path(sys.executable).with_name("driftd"))
POLL_TIMEOUT = 15.0  # seconds; every wait on the running daemon is bounded by this

MOTD = host_baseline(name="motd", spec="""
    files:
      - path: /etc/motd
        content: "hello\\n"
        mode: "0644"
""")
# line 10 holds the typo: apiVersion, kind, metadata, name, spec, enforcement, files, path, content, mdoe
MOTD_TYPO = host_baseline(name="motd", spec="""
    files:
      - path: /etc/motd
        content: "hello\\n"
        mdoe: "0644"
""")
MOTD_CHANGED = host_baseline(name="motd", spec="""
    files:
      - path: /etc/motd
        content: "hello, changed world\\n"
        mode: "0644"
""")
SECRET = "s3cret-token\n"
WARNED = host_baseline(name="warned", enforcement="warn", spec=f"""
    files:
      - path: /etc/issue
        content: {json.dumps(SECRET)}
        sensitive: true
""")


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


def http_get(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def sample(text: str, metric: str, **labels: str) -> float | None:
    """Value of the exposition sample ``metric`` whose labels include ``labels`` (None if absent)."""
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def series(text: str, name: str) -> list[dict[str, str]]:
    return [dict(s.labels) for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name]


def wait_for(pred: Callable[[], Any], what: str, timeout: float = POLL_TIMEOUT) -> Any:
    return poll(pred, what, timeout, interval=0.05)


def write_atomic(path: Path, text: str) -> None:
    """Replace a baseline file in one step, as a ConfigMap update or an editor would."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(textwrap.dedent(text))
    os.replace(tmp, path)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_") and k != "NODE_NAME"}
    env.update({"DRIFTD_LOG__FORMAT": "json", "DRIFTD_SCAN__JITTER_SECONDS": "0", "DRIFTD_RELOAD_INTERVAL_SECONDS": "0.5"})
    env.update(extra)
    return env


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


class DaemonProcess:
    """A real `driftd run` in the background, its stderr (JSON logs) captured to a file."""

    def __init__(self, tmp_path: Path, host_root: Path, bdir: Path, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.api_port = free_port()
        self.host_root = host_root
        self.bdir = bdir
        self.err_path = tmp_path / "daemon.stderr"
        self.out_path = tmp_path / "daemon.stdout"
        cmd = [
            DRIFTD, "run", "--host-root", str(host_root), "--baselines", str(bdir), "--state-dir", str(tmp_path / "state"),
            "--listen", f"127.0.0.1:{self.port}", "--api-listen", f"127.0.0.1:{self.api_port}", "--interval", "1", *args,
        ]
        with self.err_path.open("wb") as err, self.out_path.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env or child_env())

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        lines = self.stderr().splitlines()
        if lines and not self.stderr().endswith("\n"):
            lines = lines[:-1]  # a line still being written
        return [json.loads(x) for x in lines if x.strip()]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]

    def get(self, path: str) -> tuple[int, str, bytes]:
        return http_get(self.port, path)

    def metrics(self) -> str:
        code, _, body = self.get("/metrics")
        assert code == 200
        return body.decode()

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"driftd exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                return self.get("/readyz")[0] == 200
            except OSError:
                return False

        wait_for(ready, "/readyz to answer 200")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def run_daemon(tmp_path: Path, host_root: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(bdir: Path, *args: str, env: dict[str, str] | None = None) -> DaemonProcess:
        d = DaemonProcess(tmp_path, host_root, bdir, *args, env=env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DRIFTD, *args], capture_output=True, text=True, env=env or child_env(), timeout=timeout, stdin=subprocess.DEVNULL
    )


def leftover_temps(root: Path) -> list[str]:
    return [str(Path(d) / n) for d, dirs, files in os.walk(root) for n in dirs + files if ".driftd-tmp-" in n]


# --------------------------------------------------------------------------- the real daemon


class TestDaemonProcess:
    def test_probes_metrics_and_drifts_api(self, host_root, baselines_dir, run_daemon):
        """A running daemon answers /healthz, /readyz (after its first scan), /metrics and /api/v1/drifts."""
        (host_root / "etc/issue").write_text("not the secret\n")
        bdir = baselines_dir({"motd.yaml": MOTD, "warned.yaml": WARNED})
        bset, _ = load_set(bdir)
        assert bset is not None
        d = run_daemon(bdir)
        d.wait_ready()

        code, ctype, body = d.get("/healthz")
        assert (code, body) == (200, b"ok\n") and ctype.startswith("text/plain")
        code, _, body = d.get("/readyz")
        assert code == 200 and body.decode().strip() == f"ok baselines={bset.version}"
        assert d.get("/nope")[0] == 404

        # the missing motd is written by the first pass; its time to remediate is recorded
        wait_for(lambda: (host_root / "etc/motd").exists() and (host_root / "etc/motd").read_text() == "hello\n",
                 "the first pass to write /etc/motd")
        wait_for(lambda: sample(d.metrics(), "driftd_time_to_remediate_seconds_count", target="host"),
                 "driftd_time_to_remediate_seconds_count >= 1")
        text = d.metrics()
        assert sum(sample(text, "driftd_scans_total", target="host", result=r) or 0 for r in ("clean", "drift", "error")) >= 1
        assert sample(text, "driftd_baseline_info", name="motd", kind="HostBaseline", hash=bset.hashes["motd"]) == 1.0
        assert sample(text, "driftd_baseline_info", name="warned", kind="HostBaseline", hash=bset.hashes["warned"]) == 1.0
        assert sample(text, "driftd_baseline_set_info", version=bset.version) == 1.0
        # the warn-only drift stays open: it is active, never remediated
        assert sample(text, "driftd_active_drifts", target="host", baseline="warned") == 1.0
        assert sample(text, "driftd_active_drifts", target="host", baseline="motd") is None
        assert (host_root / "etc/issue").read_text() == "not the secret\n"

        assert d.get("/api/v1/drifts")[0] == 404  # not on the metrics listener: on its own (loopback) one
        code, ctype, body = http_get(d.api_port, "/api/v1/drifts")
        assert code == 200 and ctype == "application/json"
        doc = json.loads(body)
        drifts = doc["drifts"]
        assert [(x["key"], x["baseline"], x["status"]) for x in drifts] == [("host:file:/etc/issue", "warned", "reported")]
        assert drifts[0]["drift"][0]["text"] == "content: (redacted) → (redacted)"  # the baseline marks it sensitive
        # the set in force, as metrics, logs, status and the PolicyReport name it
        assert (doc["baselines"]["version"], doc["baselines"]["hashes"]) == (bset.version, bset.hashes)
        assert {f["field"] for f in drifts[0]["drift"]} == {"content"}
        # sensitive content: neither the secret nor its digest is served
        digest = hashlib.sha256(SECRET.encode()).hexdigest()
        assert digest not in body.decode() and "s3cret" not in body.decode()
        assert d.stop() == 0

    def test_injected_drift_is_reverted_by_the_next_scheduled_scan(self, host_root, baselines_dir, run_daemon):
        """Drift introduced while the daemon runs is detected and reverted without any outside trigger."""
        motd = host_root / "etc/motd"
        motd.write_text("hello\n")
        motd.chmod(0o644)
        d = run_daemon(baselines_dir({"motd.yaml": MOTD}))
        d.wait_ready()
        assert d.named("drift.detected") == []
        motd.write_text("pwned by an operator\n")
        wait_for(lambda: motd.read_text() == "hello\n", "the injected drift to be reverted")
        wait_for(lambda: d.named("drift.resolved"), "drift.resolved")
        (detected,) = d.named("drift.detected")
        assert detected["key"] == "host:file:/etc/motd" and detected["baseline"] == "motd"
        assert oct(motd.stat().st_mode & 0o7777) == "0o644"
        assert d.stop() == 0

    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
    def test_signal_stops_cleanly(self, host_root, baselines_dir, run_daemon, sig):
        """SIGTERM/SIGINT stop the daemon with exit 0 within seconds, logging stopping/stopped, no temp files left."""
        (host_root / "etc/motd").write_text("drifted\n")
        d = run_daemon(baselines_dir({"motd.yaml": MOTD}))
        d.wait_ready()
        wait_for(lambda: (host_root / "etc/motd").read_text() == "hello\n", "the first pass to revert /etc/motd")
        # the file is back before the worker has verified, audited and recorded it: stop after that
        wait_for(lambda: "drift.resolved" in [e["event"] for e in d.events()], "the revert to be recorded")
        started = time.monotonic()
        assert d.stop(sig, timeout=10) == 0
        assert time.monotonic() - started < 5
        events = [e["event"] for e in d.events()]
        assert "daemon.started" in events
        assert events[-2:] == ["daemon.stopping", "daemon.stopped"]
        assert leftover_temps(host_root) == []
        assert "Traceback" not in d.stderr()
        with pytest.raises(OSError):
            d.get("/healthz")  # the listener is closed


class TestHotReload:
    def test_invalid_set_is_rejected_and_old_kept_then_valid_set_loaded(self, host_root, baselines_dir, run_daemon):
        """A broken baseline edit is refused (old set keeps enforcing); a valid edit is then loaded and enforced."""
        motd = host_root / "etc/motd"
        bdir = baselines_dir({"motd.yaml": MOTD})
        old, _ = load_set(bdir)
        assert old is not None
        d = run_daemon(bdir)
        d.wait_ready()
        wait_for(lambda: motd.exists() and motd.read_text() == "hello\n", "the first pass to write /etc/motd")
        assert sample(d.metrics(), "driftd_baseline_load_errors_total") == 0.0

        write_atomic(bdir / "motd.yaml", MOTD_TYPO)
        (rejected,) = wait_for(lambda: d.named("baseline.rejected"), "baseline.rejected")
        assert rejected["level"] == "error"
        assert f"{bdir}/motd.yaml:10: spec.files[0].mdoe: unknown field" in rejected["problems"]
        assert rejected["kept_version"] == old.version
        text = d.metrics()
        assert sample(text, "driftd_baseline_load_errors_total") == 1.0
        assert sample(text, "driftd_baseline_info", name="motd", hash=old.hashes["motd"]) == 1.0
        assert sample(text, "driftd_baseline_set_info", version=old.version) == 1.0

        # the old set is still enforced
        motd.write_text("drift under the broken edit\n")
        wait_for(lambda: motd.read_text() == "hello\n", "the old set to revert /etc/motd")

        write_atomic(bdir / "motd.yaml", MOTD_CHANGED)
        new, _ = load_set(bdir)
        assert new is not None and new.version != old.version and new.hashes["motd"] != old.hashes["motd"]
        (loaded,) = wait_for(lambda: d.named("baseline.loaded"), "baseline.loaded")
        assert loaded["version"] == new.version
        wait_for(lambda: motd.read_text() == "hello, changed world\n", "the new set to be enforced")
        text = d.metrics()
        assert sample(text, "driftd_baseline_info", name="motd", hash=new.hashes["motd"]) == 1.0
        assert sample(text, "driftd_baseline_info", name="motd", hash=old.hashes["motd"]) is None
        assert series(text, "driftd_baseline_set_info") == [{"version": new.version}]
        assert sample(text, "driftd_baseline_load_errors_total") == 1.0
        assert d.get("/readyz")[2].decode().strip() == f"ok baselines={new.version}"
        # log lines after the swap carry the new version
        assert d.events()[-1]["baseline_version"] == new.version
        assert d.stop() == 0


@pytest.fixture
def debug_logs() -> None:
    configure_logging("json", "debug")


@pytest.mark.usefixtures("debug_logs")
class TestBaselineManager:
    def _setup(self, baselines_dir, make_runtime, registry):
        bdir = baselines_dir({"motd.yaml": MOTD})
        rt = make_runtime(bdir, registry=registry)
        manager = BaselineManager(rt.settings, rt.engine, rt.metrics, rt.engine.clock)
        manager.prime()
        return bdir, rt, manager

    def test_unchanged_directory_is_not_reloaded(self, baselines_dir, make_runtime):
        """check() on an unchanged directory loads nothing and logs nothing."""
        _, rt, manager = self._setup(baselines_dir, make_runtime, CollectorRegistry())
        before = rt.engine.baselines
        with capture_logs() as logs:
            assert manager.check() is False
        assert rt.engine.baselines is before
        assert logs == []

    def test_rejected_set_keeps_old_and_is_counted_once(self, baselines_dir, make_runtime):
        """A broken set is rejected once (logged with FILE:LINE: field: reason, counted) and the old set stays."""
        reg = CollectorRegistry()
        bdir, rt, manager = self._setup(baselines_dir, make_runtime, reg)
        old = rt.engine.baselines
        write_atomic(bdir / "motd.yaml", MOTD_TYPO)
        with capture_logs() as logs:
            assert manager.check() is False
            assert manager.check() is False  # same broken content: not re-reported
        assert rt.engine.baselines is old
        assert rt.engine.desired["host:file:/etc/motd"].content == b"hello\n"
        assert reg.get_sample_value("driftd_baseline_load_errors_total") == 1.0
        (ev,) = logs
        assert ev["event"] == "baseline.rejected" and ev["log_level"] == "error"
        assert ev["problems"] == [f"{bdir}/motd.yaml:10: spec.files[0].mdoe: unknown field"]
        assert ev["kept_version"] == old.version
        assert reg.get_sample_value("driftd_baseline_set_info", {"version": old.version}) == 1.0

    def test_valid_change_swaps_set_and_metrics(self, baselines_dir, make_runtime):
        """A valid changed set replaces the old one, its hash and version in the info metrics."""
        reg = CollectorRegistry()
        bdir, rt, manager = self._setup(baselines_dir, make_runtime, reg)
        old = rt.engine.baselines
        rt.engine.clock.advance(60)
        write_atomic(bdir / "motd.yaml", MOTD_CHANGED)
        with capture_logs() as logs:
            assert manager.check() is True
        new = rt.engine.baselines
        assert new.version == load_set(bdir)[0].version != old.version
        assert rt.engine.desired["host:file:/etc/motd"].content == b"hello, changed world\n"
        assert [(e["event"], e["version"]) for e in logs] == [("baseline.loaded", new.version)]
        g = reg.get_sample_value
        assert g("driftd_baseline_info", {"name": "motd", "kind": "HostBaseline", "hash": new.hashes["motd"]}) == 1.0
        assert g("driftd_baseline_info", {"name": "motd", "kind": "HostBaseline", "hash": old.hashes["motd"]}) is None
        assert g("driftd_baseline_set_info", {"version": new.version}) == 1.0
        assert g("driftd_baseline_set_info", {"version": old.version}) is None
        assert g("driftd_baseline_last_reload_success_timestamp_seconds") == rt.engine.clock.time()
        assert g("driftd_baseline_load_errors_total") == 0.0
        assert manager.check() is False  # loaded once

    def test_recovers_after_rejection(self, baselines_dir, make_runtime):
        """After a rejected edit, restoring a valid set loads it; the error counter keeps its history."""
        reg = CollectorRegistry()
        bdir, _rt, manager = self._setup(baselines_dir, make_runtime, reg)
        write_atomic(bdir / "motd.yaml", MOTD_TYPO)
        assert manager.check() is False
        write_atomic(bdir / "motd.yaml", MOTD_CHANGED)
        assert manager.check() is True
        assert manager.rejected_fingerprint is None
        assert reg.get_sample_value("driftd_baseline_load_errors_total") == 1.0

    def test_prime_with_fingerprint_taken_before_loading(self, baselines_dir, make_runtime):
        """A change made between loading the set and priming is still picked up by the next check()."""
        bdir = baselines_dir({"motd.yaml": MOTD})
        before_load = fingerprint(bdir)
        rt = make_runtime(bdir)
        write_atomic(bdir / "motd.yaml", MOTD_CHANGED)  # lands while the daemon is starting
        manager = BaselineManager(rt.settings, rt.engine, rt.metrics, rt.engine.clock)
        manager.prime(before_load)
        assert manager.check() is True
        assert rt.engine.desired["host:file:/etc/motd"].content == b"hello, changed world\n"

    def test_cli_daemon_primes_with_the_fingerprint_of_the_loaded_set(self, tmp_path, host_root, baselines_dir, monkeypatch):
        """`driftd run` reloads a change that landed while it was starting (after load, before the reload job)."""
        import driftd.cli as cli

        bdir = baselines_dir({"motd.yaml": MOTD})
        real_load = cli._load_baselines

        def load_then_edit(settings: Any) -> Any:
            bset = real_load(settings)
            write_atomic(bdir / "motd.yaml", MOTD_CHANGED)
            return bset

        seen: list[bool] = []

        def fake_run_until(self: Daemon, stop: threading.Event) -> None:
            seen.append(self.manager.check())
            self.api.close()  # never served: just release the sockets

        monkeypatch.setattr(cli, "_load_baselines", load_then_edit)
        monkeypatch.setattr(Daemon, "run_until", fake_run_until)
        monkeypatch.setattr(cli.signal, "signal", lambda *a: None)
        rc = cli.main(["run", "--host-root", str(host_root), "--baselines", str(bdir), "--state-dir",
                       str(tmp_path / "state"), "--listen", f"127.0.0.1:{free_port()}",
                       "--api-listen", f"127.0.0.1:{free_port()}", "--log-level", "error"])
        assert rc == 0
        assert seen == [True]


# --------------------------------------------------------------------------- start-up with a bad set


def _problem_lines(stderr: str) -> list[str]:
    """The FILE:LINE: field: reason texts of a refused start: plain lines, or inside the JSON baseline.rejected event."""
    out = []
    for line in stderr.splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            out.append(line)
            continue
        out += [p["text"] for p in ev.get("problems", [])]
    return out


class TestInvalidSetAtStartup:
    @pytest.mark.parametrize("mode", [["--once"], []], ids=["once", "daemon"])
    def test_invalid_set_exits_1_with_lint_messages(self, tmp_path, host_root, baselines_dir, mode):
        """`driftd run` (one pass or daemon) refuses an invalid set: exit 1, FILE:LINE: field: reason on stderr."""
        bdir = baselines_dir({"motd.yaml": MOTD_TYPO})
        r = run_cli("run", *mode, "--host-root", str(host_root), "--baselines", str(bdir), "--state-dir",
                    str(tmp_path / "state"), "--listen", f"127.0.0.1:{free_port()}")
        assert r.returncode == 1, r.stderr
        # stderr is not a terminal: JSON log lines, every one of them (the problems inside the event, not beside it)
        (ev,) = [json.loads(line) for line in r.stderr.splitlines()]
        assert ev["event"] == "baseline.rejected" and ev["level"] == "error"
        assert ev["reason"] == f"baselines in {bdir} are invalid; not starting"
        assert [p["text"] for p in ev["problems"]] == [f"{bdir}/motd.yaml:10: spec.files[0].mdoe: unknown field"]
        assert (ev["problems"][0]["line"], ev["problems"][0]["field"]) == (10, "spec.files[0].mdoe")
        assert r.stdout == ""
        assert not (host_root / "etc/motd").exists()
        console = run_cli("run", *mode, "--host-root", str(host_root), "--baselines", str(bdir), "--state-dir",
                          str(tmp_path / "state"), "--listen", f"127.0.0.1:{free_port()}", "--log-format", "console")
        assert console.returncode == 1
        assert f"baselines in {bdir} are invalid; not starting" in console.stderr
        assert f"{bdir}/motd.yaml:10: spec.files[0].mdoe: unknown field" in console.stderr.splitlines()
        assert "Traceback" not in console.stderr

    @pytest.mark.parametrize(
        ("case", "reason"),
        [
            ("dangling-symlink", "(file): cannot read: No such file or directory"),
            ("fifo", "(file): not a regular file"),
            ("not-utf8", "(file): not valid UTF-8 (byte 71)"),
            ("over-env-limit", "(file): file is 4096 bytes, over the 1000-byte limit"),
        ],
    )
    def test_unreadable_files_give_clear_errors(self, tmp_path, host_root, baselines_dir, case, reason):
        """Unreadable, non-regular, non-UTF-8 and oversized baseline files are named with a reason, no traceback."""
        bdir = baselines_dir({"motd.yaml": MOTD})
        bad = bdir / "x.yaml"
        env = child_env()
        line = 1
        if case == "dangling-symlink":
            bad.symlink_to(tmp_path / "missing.yaml")
        elif case == "fifo":
            os.mkfifo(bad)  # opening it for reading must not hang the loader
        elif case == "not-utf8":
            bad.write_bytes(b"apiVersion: driftd.io/v1alpha1\nkind: HostBaseline\nmetadata:\n  name: caf\xe9\n")
            line = 4
        else:
            bad.write_text("# " + "x" * 4093 + "\n")
            env["DRIFTD_BASELINE_FILE_MAX_BYTES"] = "1000"
        r = run_cli("run", "--once", "--host-root", str(host_root), "--baselines", str(bdir), "--state-dir",
                    str(tmp_path / "state"), env=env)
        assert r.returncode == 1, r.stderr
        assert f"{bad}:{line}: {reason}" in _problem_lines(r.stderr), r.stderr
        assert "Traceback" not in r.stderr

    def test_huge_file_over_default_limit(self, tmp_path, host_root, baselines_dir):
        """A baseline file over the default 8 MiB limit is refused without being parsed."""
        bdir = baselines_dir({"motd.yaml": MOTD})
        size = 8 * 1024 * 1024 + 1
        with (bdir / "huge.yaml").open("wb") as fh:
            fh.write(b"#" * (size - 1) + b"\n")
        r = run_cli("run", "--once", "--host-root", str(host_root), "--baselines", str(bdir), "--state-dir",
                    str(tmp_path / "state"))
        assert r.returncode == 1, r.stderr
        assert f"{bdir}/huge.yaml:1: (file): file is {size} bytes, over the {8 * 1024 * 1024}-byte limit" in _problem_lines(r.stderr)
        assert "Traceback" not in r.stderr

    def test_missing_directory(self, tmp_path, host_root):
        """A baselines directory that does not exist is an error (exit 1), not a silently empty set."""
        r = run_cli("run", "--once", "--host-root", str(host_root), "--baselines", str(tmp_path / "nope"),
                    "--state-dir", str(tmp_path / "state"))
        assert r.returncode == 1
        assert "baselines directory not found or not a directory" in r.stderr
        assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------- --once exit codes


def once(tmp_path: Path, host_root: Path, bdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli("run", "--once", "--host-root", str(host_root), "--baselines", str(bdir), "--state-dir",
                   str(tmp_path / "state"), *args, env=child_env(**env))


class TestOnceExitCodes:
    def test_clean_and_remediated_exit_0(self, tmp_path, host_root, baselines_dir):
        """A pass that reverts every drift exits 0; so does the next, clean pass; both as parseable JSON."""
        (host_root / "etc/motd").write_text("drifted\n")
        bdir = baselines_dir({"motd.yaml": MOTD})
        version = load_set(bdir)[0].version
        r = once(tmp_path, host_root, bdir, "--output", "json")
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert (s["exitCode"], s["baselineSet"], s["dryRun"], s["resources"]) == (0, version, False, 1)
        assert [(o["key"], o["status"]) for o in s["results"]] == [("host:file:/etc/motd", "reverted")]
        assert len(s["results"][0]["snapshots"]) == 1
        assert (host_root / "etc/motd").read_text() == "hello\n"

        r = once(tmp_path, host_root, bdir, "--output", "json")
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert s["results"] == [] and s["counts"]["clean"] == 1 and s["counts"]["failed"] == 0

    def test_dry_run_drift_remained_exit_3(self, tmp_path, host_root, baselines_dir):
        """--dry-run reports drift without touching it and exits 3."""
        (host_root / "etc/motd").write_text("drifted\n")
        bdir = baselines_dir({"motd.yaml": MOTD})
        r = once(tmp_path, host_root, bdir, "--dry-run", "--output", "json")
        assert r.returncode == 3, r.stderr
        s = json.loads(r.stdout)
        assert s["exitCode"] == 3 and s["dryRun"] is True
        assert [(o["status"], o["would"], o["did"]) for o in s["results"]] == [("reported", ["write_file"], [])]
        assert (host_root / "etc/motd").read_text() == "drifted\n"

    def test_remediation_failed_exit_4(self, tmp_path, host_root, baselines_dir):
        """A file whose parent directory is missing (and not declared) cannot be written: exit 4."""
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - path: /etc/nodir/conf
                content: "x\\n"
        """)})
        r = once(tmp_path, host_root, bdir, "--output", "json", DRIFTD_RETRY__BASE_SECONDS="0.01")
        assert r.returncode == 4, r.stderr
        s = json.loads(r.stdout)
        (o,) = s["results"]
        assert o["status"] == "failed" and "parent directory" in o["reason"] and "/etc/nodir" in o["reason"]
        assert not (host_root / "etc/nodir").exists()

    def test_observe_error_exit_1(self, tmp_path, host_root, baselines_dir):
        """A governed path below a symlinked directory is refused at observe time: exit 1, nothing written."""
        real = tmp_path / "elsewhere"
        real.mkdir()
        (host_root / "etc/ssh").symlink_to(real)
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - path: /etc/ssh/sshd_config
                content: "PermitRootLogin no\\n"
              - path: /etc/motd
                content: "hello\\n"
        """)})
        r = once(tmp_path, host_root, bdir, "--output", "json")
        assert r.returncode == 1, r.stderr
        s = json.loads(r.stdout)
        by_key = {o["key"]: o for o in s["results"]}
        assert by_key["host:file:/etc/ssh/sshd_config"]["status"] == "error"
        assert "symlink" in by_key["host:file:/etc/ssh/sshd_config"]["reason"]
        assert by_key["host:file:/etc/motd"]["status"] == "reverted"  # the rest of the pass still ran
        assert list(real.iterdir()) == []

    def test_error_outranks_failure(self, tmp_path, host_root, baselines_dir):
        """With both an observe error and a failed remediation in one pass, the exit code is 1."""
        real = tmp_path / "elsewhere"
        real.mkdir()
        (host_root / "etc/ssh").symlink_to(real)
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - path: /etc/ssh/sshd_config
                content: "x\\n"
              - path: /etc/nodir/conf
                content: "x\\n"
        """)})
        r = once(tmp_path, host_root, bdir, "--output", "json", DRIFTD_RETRY__BASE_SECONDS="0.01")
        assert r.returncode == 1, r.stderr
        assert sorted(o["status"] for o in json.loads(r.stdout)["results"]) == ["error", "failed"]

    def test_text_output_is_human_readable(self, tmp_path, host_root, baselines_dir):
        """The default text summary names the set version, each outcome and the exit code in words."""
        (host_root / "etc/motd").write_text("drifted\n")
        bdir = baselines_dir({"motd.yaml": MOTD})
        version = load_set(bdir)[0].version
        r = once(tmp_path, host_root, bdir, "--dry-run")
        assert r.returncode == 3
        live, desired = (hashlib.sha256(b).hexdigest()[:12] for b in (b"drifted\n", b"hello\n"))
        assert r.stdout.splitlines()[1:] == [  # golden: live value first, then what the baseline wants
            f"  reported  /etc/motd  motd  content: sha256:{live} → sha256:{desired}",
            "            would write_file (dry-run)",
            "            --- /etc/motd (live)",
            "            +++ /etc/motd (desired)",
            "            @@ -1 +1 @@",
            "            -drifted",
            "            +hello",
            "result: 0 clean, 0 reverted, 0 retired, 1 reported, 0 held, 0 blocked, 0 failed, 0 error; exit 3 (drift remained)",
        ]
        assert re.fullmatch(rf"driftd run on \S+: 1 resources, baseline set {version} \(dry-run: nothing changed\), "
                            r"\d+\.\d{3} s", r.stdout.splitlines()[0])
        assert "\x1b[" not in r.stdout  # no colour into a pipe
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.stdout)


class VanishingTarget:
    """A dynamic target (an event source, like Docker) whose only resource has disappeared."""

    name = "fake"
    capabilities = frozenset({"events"})

    def desired(self, baselines: Any, node: Any) -> list[Any]:
        return []

    def discover(self) -> list[Any]:
        return []

    def resolve(self, key: str) -> None:
        return None

    def begin_pass(self, *, full: bool) -> None:
        return None

    def observe(self, desired: Any) -> Any:
        raise AssertionError("nothing to observe")

    def apply(self, desired: Any, observed: Any, plan: Any) -> Any:
        raise AssertionError("nothing to act on")

    def watch(self, on_key: Callable[[str], None], stop: threading.Event) -> None:
        return None

    def close(self) -> None:
        return None


class TestOncePassSummary:
    def _open(self, rt: Any, key: str, target: str, baseline: str) -> None:
        rt.state.open_drift(key=key, target=target, baseline=baseline, address=key.split(":")[-1],
                            now=rt.engine.clock.time(), window_seconds=1800, fields=[])

    def test_removed_host_baseline_closes_drift_as_no_longer_governed(self, host_root, baselines_dir, make_runtime):
        """A host drift whose baseline entry was removed is closed 'no longer governed' and not counted against clean."""
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/hostname, content: "node-a\\n"}
        """)}))
        self._open(rt, "host:file:/etc/motd", "host", "old")
        summary = run_once(rt.engine, rt.queue, attempts=1)
        assert (summary.exit_code, summary.outcomes, summary.counts) == (0, [], {"unmanaged": 1, "clean": 1})
        assert rt.state.recent(1)[0].resolution == "no longer governed"

    def test_vanished_dynamic_resource_is_gone_and_not_counted_against_clean(self, host_root, baselines_dir, make_runtime):
        """A drift of a dynamic resource that no longer exists is closed as 'gone'; the clean count is unaffected."""
        from driftd.engine.reconciler import Engine

        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/hostname, content: "node-a\\n"}
        """)}))
        e = rt.engine
        engine = Engine(targets={"host": e.targets["host"], "fake": VanishingTarget()}, state=rt.state,
                        metrics=rt.metrics, node=e.node, clock=e.clock)
        engine.set_baselines(e.baselines)
        self._open(rt, "fake:thing", "fake", "containers")
        summary = run_once(engine, rt.queue, attempts=1)
        assert summary.exit_code == 0
        assert [(o.key, o.status) for o in summary.outcomes] == [("fake:thing", "gone")]
        assert summary.counts["clean"] == summary.resources == 1
        assert rt.state.recent(1)[0].resolution == "gone"


# --------------------------------------------------------------------------- scheduler properties


class BlockingEngine:
    """Engine stand-in whose scan blocks until released, counting how many scans run at once."""

    def __init__(self, *, fail: bool = False) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self.running = 0
        self.max_running = 0
        self.fail = fail
        self._lock = threading.Lock()
        self.baselines = SimpleNamespace(version="v-test")
        self.dry_run = False
        self.node = SimpleNamespace(name="node-a")
        self.targets: dict[str, Any] = {}

    def scan(self, queue: KeyedQueue, *, full_rehash_interval: float = 0.0) -> None:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.started.set()
        try:
            if self.fail:
                raise RuntimeError("disk on fire")
            assert self.release.wait(10), "test never released the scan"
        finally:
            with self._lock:
                self.running -= 1

    def handle(self, key: str) -> bool:
        return True


def make_daemon(make_runtime, baselines_dir, engine: Any = None, **settings: Any) -> Daemon:
    rt = make_runtime(baselines_dir({"motd.yaml": MOTD}), **settings)
    manager = BaselineManager(rt.settings, rt.engine, rt.metrics, rt.engine.clock)
    manager.prime()
    return Daemon(settings=rt.settings, engine=engine or rt.engine, queue=KeyedQueue(), metrics=rt.metrics,
                  manager=manager, api=None)


class TestScheduler:
    def test_scan_never_overlaps_itself(self, make_runtime, baselines_dir):
        """A second scan requested while one runs returns at once without starting another."""
        engine = BlockingEngine()
        daemon = make_daemon(make_runtime, baselines_dir, engine)
        first = threading.Thread(target=daemon.scan)
        first.start()
        try:
            assert engine.started.wait(5)
            second = threading.Thread(target=daemon.scan)
            second.start()
            second.join(5)
            assert not second.is_alive(), "the overlapping scan waited instead of returning"
            assert (engine.calls, engine.running, daemon.scans_done) == (1, 1, 0)
        finally:
            engine.release.set()
            first.join(5)
        assert (engine.calls, engine.max_running, daemon.scans_done) == (1, 1, 1)
        engine.release.set()
        daemon.scan()  # the lock was released: the next scan runs
        assert (engine.calls, daemon.scans_done) == (2, 2)

    def test_failing_scan_is_logged_and_does_not_wedge(self, make_runtime, baselines_dir):
        """An exception in a scan is logged as scan.failed; the next scan can still run."""
        engine = BlockingEngine(fail=True)
        daemon = make_daemon(make_runtime, baselines_dir, engine)
        with capture_logs() as logs:
            daemon.scan()
            daemon.scan()
        assert engine.calls == 2 and daemon.scans_done == 0
        assert [e["event"] for e in logs] == ["scan.failed", "scan.failed"]
        assert logs[0]["error"] == "disk on fire"

    def test_reload_scans_at_once_only_when_a_new_set_is_in_force(self, make_runtime, baselines_dir):
        """The reload job triggers an immediate scan after loading a new set, not on no-ops or rejected sets."""
        daemon = make_daemon(make_runtime, baselines_dir)
        scans: list[str] = []
        daemon.scan = lambda: scans.append(daemon.engine.baselines.version)  # type: ignore[method-assign]
        bdir = daemon.settings.baselines
        daemon.reload()
        assert scans == []
        write_atomic(bdir / "motd.yaml", MOTD_TYPO)
        daemon.reload()
        assert scans == []
        write_atomic(bdir / "motd.yaml", MOTD_CHANGED)
        daemon.reload()
        assert scans == [load_set(bdir)[0].version]

    @pytest.mark.parametrize(("jitter", "expected"), [(7.0, 7.0), (0.0, None)])
    def test_job_configuration(self, make_runtime, baselines_dir, jitter, expected):
        """The scan job runs at the configured interval with jitter, max_instances=1 and coalescing."""
        daemon = make_daemon(make_runtime, baselines_dir, scan={"interval_seconds": 60, "jitter_seconds": jitter},
                             reload_interval_seconds=5)
        daemon.start()
        try:
            job = daemon._scheduler.get_job("scan")
            assert job.max_instances == 1
            assert job.coalesce is True
            assert job.trigger.interval == timedelta(seconds=60)
            assert job.trigger.jitter == expected
            reload = daemon._scheduler.get_job("reload")
            assert reload.max_instances == 1
            assert reload.trigger.interval == timedelta(seconds=5)
            assert len(daemon._workers) == daemon.settings.workers == 2
        finally:
            daemon.stop()
        assert not daemon._scheduler.running
        assert all(not t.is_alive() for t in daemon._workers)

    def test_probes_follow_the_lifecycle(self, make_runtime, baselines_dir):
        """healthy/ready: not before start, healthy but not ready during the first scan, ready after, neither once stopping."""
        engine = BlockingEngine()
        daemon = make_daemon(make_runtime, baselines_dir, engine)
        assert daemon.healthy() == (False, "scheduler not running")
        daemon.start()  # the first scan is scheduled immediately and blocks in the engine
        try:
            assert engine.started.wait(5)
            assert daemon.healthy() == (True, "ok")
            assert daemon.ready() == (False, "first scan not finished")
            engine.release.set()
            assert daemon._scan_lock.acquire(timeout=5)  # the first scan has returned
            daemon._scan_lock.release()
            assert daemon.ready() == (True, "ok baselines=v-test")
        finally:
            engine.release.set()
            daemon.stop()
        assert daemon.healthy() == (False, "stopping")
        assert daemon.ready() == (False, "stopping")

    def test_workers_drain_the_queue(self, make_runtime, baselines_dir, host_root):
        """Keys queued while the daemon runs are reconciled by its worker threads."""
        daemon = make_daemon(make_runtime, baselines_dir)
        daemon.start()
        try:
            daemon.scan()  # enqueues the missing motd (whichever scan got the lock, the key is queued)
            daemon.queue.add("host:file:/etc/motd")
            wait_for(lambda: (host_root / "etc/motd").exists(), "a worker to write /etc/motd", timeout=10)
        finally:
            daemon.stop()
        assert (host_root / "etc/motd").read_text() == "hello\n"


class TestEventDrivenReload:
    """A changed baselines directory is loaded on its inotify event, not at the next reload_interval_seconds."""

    def test_an_edit_is_in_force_without_waiting_for_the_reload_job(self, make_runtime, baselines_dir):
        daemon = make_daemon(make_runtime, baselines_dir, reload_interval_seconds=3600)
        daemon.start()
        try:
            bdir = daemon.settings.baselines
            write_atomic(bdir / "motd.yaml", MOTD_CHANGED)
            want = load_set(bdir)[0].version
            poll(lambda: daemon.engine.baselines.version == want, "the edited set in force", POLL_TIMEOUT)
        finally:
            daemon.stop()

    def test_a_configmap_swap_is_in_force_and_a_broken_one_is_not(self, make_runtime, tmp_path):
        """The kubelet's ..data rename loads the new version whole; a broken version keeps the good set."""
        vol = tmp_path / "vol"
        for stamp, text in (("..v1", MOTD), ("..v2", MOTD_CHANGED), ("..v3", MOTD_TYPO)):
            (vol / stamp).mkdir(parents=True)
            (vol / stamp / "motd.yaml").write_text(textwrap.dedent(text))
        (vol / "..data").symlink_to("..v1")
        (vol / "motd.yaml").symlink_to("..data/motd.yaml")
        rt = make_runtime(vol, reload_interval_seconds=3600)
        manager = BaselineManager(rt.settings, rt.engine, rt.metrics, rt.engine.clock)
        manager.prime()
        daemon = Daemon(settings=rt.settings, engine=rt.engine, queue=KeyedQueue(), metrics=rt.metrics, manager=manager)

        def swap(stamp: str) -> None:
            (vol / "..data_tmp").symlink_to(stamp)
            os.rename(vol / "..data_tmp", vol / "..data")

        first = rt.engine.baselines.version
        daemon.start()
        try:
            swap("..v2")
            want = load_set(vol)[0].version
            assert want != first
            poll(lambda: daemon.engine.baselines.version == want, "the swapped-in version in force", POLL_TIMEOUT)
            with capture_logs() as logs:
                swap("..v3")
                poll(lambda: any(e["event"] == "baseline.rejected" for e in logs), "the broken version rejected",
                     POLL_TIMEOUT)
            assert daemon.engine.baselines.version == want  # the last good set keeps enforcing
        finally:
            daemon.stop()


class TestDaemonHoldsNoOutcomes:
    def test_a_reconciled_key_leaves_no_outcome_behind(self, make_runtime, baselines_dir):
        """The pass summary's per-key outcomes are not kept by a daemon (they would grow with every key that drifts)."""
        daemon = make_daemon(make_runtime, baselines_dir, reload_interval_seconds=3600)
        motd = Path(daemon.settings.host_root) / "etc/motd"
        daemon.start()
        try:
            poll(lambda: motd.exists() and motd.read_text() == "hello\n", "the missing motd written", POLL_TIMEOUT)
            poll(lambda: not daemon.queue.processing and daemon.engine.outcomes == {}, "no outcome kept", 5.0)
        finally:
            daemon.stop()
