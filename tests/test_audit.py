"""The tamper-evident audit log: real passes write the records, `driftd audit verify` finds every kind of tampering.

Real files, a real CLI subprocess and, as root, a real full tmpfs under the audit directory.
"""

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
from conftest import host_baseline, need
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs
from test_acting_safety import fill, small_tmpfs

from driftd.engine.clock import FakeClock
from driftd.engine.once import run_once
from driftd.models.resources import OutcomeStatus
from driftd.observability.audit import GENESIS, AuditLog, line_hash, verify
from driftd.safety.breakglass import OverrideStore, make_override

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cret-token\n"
LEAKED = "an old leaked secret\n"
NL = b"\n"


def driftd(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "driftd", *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=60)


def records(audit_dir: Path) -> list[dict[str, Any]]:
    """Every record, oldest first (rotated files by seq)."""
    out = []
    for p in audit_dir.glob("audit.jsonl*"):
        out.extend(json.loads(line) for line in p.read_bytes().splitlines())
    return sorted(out, key=lambda r: r["seq"])


def lines_of(p: Path) -> list[bytes]:
    return p.read_bytes().split(b"\n")[:-1]


def write_lines(p: Path, lines: list[bytes]) -> None:
    p.write_bytes(b"".join(ln + b"\n" for ln in lines))


def spec(*files: str) -> str:
    return "files:\n" + "".join(f"  - {f}\n" for f in files)


@pytest.fixture
def scenario(host_root: Path, baselines_dir: Any, make_runtime: Any, tmp_path: Path) -> Any:
    """One enforce baseline (a file to revert, a sensitive file to revert, a file paused by break-glass) and a
    dryrun baseline (a file left as it is), all drifted."""
    etc = host_root / "etc"
    (etc / "app.conf").write_text("drifted\n")
    (etc / "token").write_text(LEAKED)
    (etc / "paused.conf").write_text("hand-edited\n")
    (etc / "watched.conf").write_text("changed\n")
    bdir = baselines_dir({
        "b.yaml": host_baseline("b", spec('{path: /etc/app.conf, content: "v1\\n"}',
                                          f"{{path: /etc/token, content: {json.dumps(SECRET)}, sensitive: true}}",
                                          '{path: /etc/paused.conf, content: "v1\\n"}')),
        "w.yaml": host_baseline("w", spec('{path: /etc/watched.conf, content: "v1\\n"}'), enforcement="dryrun"),
    })
    state = tmp_path / "state"
    clock = FakeClock()
    OverrideStore(state, max_ttl=86400).add(make_override(reason="INC-9: hand-edited during the outage", ttl="1h",
                                                          now=clock.time(), max_ttl=86400, key="host:file:/etc/paused.conf"))

    def make(**settings: Any) -> Any:
        return make_runtime(bdir, clock=clock, state_dir=state, **settings)

    return make


class TestRecords:
    def test_a_pass_records_each_revert_hold_and_skip_with_its_fields_and_no_secret(self, scenario, tmp_path):
        rt = scenario()
        with capture_logs() as logs:
            s = run_once(rt.engine, rt.queue, attempts=1)
        by_key = {o.key: o.status for o in s.outcomes}
        assert by_key == {"host:file:/etc/app.conf": OutcomeStatus.REMEDIATED, "host:file:/etc/token": OutcomeStatus.REMEDIATED,
                          "host:file:/etc/paused.conf": OutcomeStatus.HELD, "host:file:/etc/watched.conf": OutcomeStatus.REPORTED}
        audit = tmp_path / "state/audit"
        recs = records(audit)
        assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
        assert recs[0]["action"] == "audit" and recs[0]["result"] == "started" and recs[0]["prev"] == GENESIS
        got = {r["key"]: r for r in recs[1:]}
        assert set(got) == set(by_key)
        version = rt.engine.baselines.version
        for r in recs[1:]:
            assert r["node"] == "node-a" and r["target"] == "host" and r["set_version"] == version
            assert r["time"].endswith("Z")

        app = got["host:file:/etc/app.conf"]
        assert (app["baseline"], app["action"], app["result"], app["reason"]) == ("b", "write_file", "succeeded", "")
        drifted = "sha256:" + hashlib.sha256(b"drifted\n").hexdigest()
        assert app["before"] == {"content": drifted}
        assert app["after"] == {"content": "sha256:" + hashlib.sha256(b"v1\n").hexdigest()}
        assert app["snapshots"] == [drifted]  # the snapshot of the drifted bytes: `driftd snapshot` prints them

        token = got["host:file:/etc/token"]
        assert (token["result"], token["before"], token["after"]) == ("succeeded", {"content": "<redacted>"},
                                                                       {"content": "<redacted>"})
        assert token["snapshots"] == ["<redacted>"]

        paused = got["host:file:/etc/paused.conf"]
        assert (paused["action"], paused["result"], paused["after"]) == ("write_file", "held", None)
        assert paused["reason"].startswith("break-glass: ") and "INC-9" in paused["reason"]

        watched = got["host:file:/etc/watched.conf"]
        assert (watched["baseline"], watched["action"], watched["result"]) == ("w", "write_file", "skipped")
        assert watched["reason"].startswith("dryrun: ") and watched["after"] is None

        # no secret: neither the content, nor the digest of the expected or of the drifted (leaked) bytes
        text = b"".join(p.read_bytes() for p in audit.iterdir())
        shipped = json.dumps([e for e in logs if e["event"] in ("audit", "audit.failed")]).encode()
        for blob in (text, shipped):
            for secret in (SECRET, LEAKED):
                assert secret.strip().encode() not in blob
                assert hashlib.sha256(secret.encode()).hexdigest().encode() not in blob

        # the same records went to the structured log, each with the hash of its line: the head ships off the node
        events = [e for e in logs if e["event"] == "audit"]
        file_lines = lines_of(audit / "audit.jsonl")
        assert [e["seq"] for e in events] == [r["seq"] for r in recs]
        for e, raw in zip(events, file_lines, strict=True):
            assert e["hash"] == line_hash(raw) and e["prev"] == json.loads(raw)["prev"]
            assert {k: e[k] for k in ("key", "action", "result", "reason")} == {k: json.loads(raw)[k] for k in
                                                                             ("key", "action", "result", "reason")}
        # private like the state directory
        assert stat.S_IMODE(audit.stat().st_mode) == 0o700
        assert stat.S_IMODE((audit / "audit.jsonl").stat().st_mode) == 0o600

    def test_a_hold_or_skip_is_one_record_per_decision_not_one_per_scan_and_a_restart_resumes_the_chain(self, scenario,
                                                                                                       tmp_path):
        rt = scenario()
        run_once(rt.engine, rt.queue, attempts=1)
        audit = tmp_path / "state/audit"
        n = len(records(audit))
        run_once(rt.engine, rt.queue, attempts=1)
        run_once(rt.engine, rt.queue, attempts=1)
        assert len(records(audit)) == n  # still held, still skipped: nothing new to say
        rt.state.close()
        rt2 = scenario()  # a restart: the chain resumes from the last line on disk
        assert rt2.engine.audit.head == (n, line_hash(lines_of(audit / "audit.jsonl")[-1]))
        (tmp_path / "host/etc/app.conf").write_text("drifted again\n")
        run_once(rt2.engine, rt2.queue, attempts=1)
        recs = records(audit)
        assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
        assert [r["key"] for r in recs[n:] if r["result"] == "succeeded"] == ["host:file:/etc/app.conf"]
        assert verify([audit]).intact

    def test_blocked_and_failed_plans_are_recorded_with_their_reason(self, host_root, baselines_dir, make_runtime,
                                                                     tmp_path):
        (host_root / "etc/a-dir.conf").mkdir()  # a directory where a file belongs: no safe action
        stuck = host_root / "etc/stuck.conf"
        stuck.write_text("drifted\n")
        need(os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode == 0,
             "needs root and chattr +i (ext4) to make a revert fail")
        try:
            rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", spec('{path: /etc/a-dir.conf, content: "x"}',
                                                                               '{path: /etc/stuck.conf, content: "v\\n"}'))}))
            s = run_once(rt.engine, rt.queue, attempts=1)
            run_once(rt.engine, rt.queue, attempts=1)  # tried again: a second record; the block is not repeated
        finally:
            subprocess.run(["chattr", "-i", str(stuck)], check=True)
        assert {o.key: o.status for o in s.outcomes} == {"host:file:/etc/a-dir.conf": OutcomeStatus.BLOCKED,
                                                         "host:file:/etc/stuck.conf": OutcomeStatus.FAILED}
        recs = [r for r in records(tmp_path / "state/audit") if r["key"]]
        blocked = [r for r in recs if r["key"] == "host:file:/etc/a-dir.conf"]
        assert [(r["action"], r["result"]) for r in blocked] == [("none", "blocked")]
        assert blocked[0]["reason"] == s.outcomes[0].error and blocked[0]["before"] == {"type": "directory"}
        failed = [r for r in recs if r["key"] == "host:file:/etc/stuck.conf"]
        assert [(r["action"], r["result"]) for r in failed] == [("write_file", "failed")] * 2  # every attempt is one
        assert failed[0]["reason"] and failed[0]["after"] is None
        assert verify([tmp_path / "state/audit"]).intact

    def test_audit_off_writes_nothing(self, scenario, tmp_path):
        rt = scenario(audit={"enabled": False})
        run_once(rt.engine, rt.queue, attempts=1)
        assert rt.engine.audit is None and not (tmp_path / "state/audit").exists()

    def test_a_global_dry_run_records_skips(self, scenario, tmp_path):
        rt = scenario(dry_run=True)
        run_once(rt.engine, rt.queue, attempts=1)
        recs = [r for r in records(tmp_path / "state/audit") if r["key"]]
        assert {r["result"] for r in recs} == {"skipped"} and len(recs) == 4
        assert all(r["reason"].startswith("dry-run: ") for r in recs if r["baseline"] == "b")


def rotated_log(tmp_path: Path, n: int = 40) -> Path:
    """A real log of ``n`` action records over many small files."""
    audit = tmp_path / "audit"
    log = AuditLog(audit, node="node-a", max_bytes=2400, keep=100)
    for i in range(n):
        assert log.record(time=1_800_000_000.0 + i, key=f"host:file:/etc/f{i:02d}", target="host", baseline="b",
                          set_version="v1", action="write_file", result="skipped", reason="dry-run: nothing is changed",
                          before={"content": f"sha256:{i:064x}"})
    log.close()
    return audit


def files_by_seq(audit: Path) -> list[Path]:
    return sorted(audit.glob("audit.jsonl*"), key=lambda p: json.loads(lines_of(p)[0])["seq"])


class TestVerify:
    def test_an_intact_rotated_log_verifies_in_any_order_and_as_a_directory(self, tmp_path):
        audit = rotated_log(tmp_path)
        files = files_by_seq(audit)
        assert len(files) > 5 and all(p.stat().st_size <= 2400 for p in files)
        firsts = [json.loads(lines_of(p)[0]) for p in files]
        assert firsts[0]["result"] == "started" and all(f["result"] == "rotated" for f in firsts[1:])
        for prev_file, f in zip(files, firsts[1:], strict=False):  # the chain carries across files
            assert f["prev"] == line_hash(lines_of(prev_file)[-1])
        head = line_hash(lines_of(audit / "audit.jsonl")[-1])
        last = json.loads(lines_of(audit / "audit.jsonl")[-1])["seq"]
        r = driftd("audit", "verify", audit)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"intact: {last} records, seq 1..{last}, head {head}"
        shuffled = [*files[3:], *reversed(files[:3])]
        r = driftd("audit", "verify", *shuffled)
        assert r.returncode == 0 and f"head {head}" in r.stdout
        r = driftd("audit", "verify", "--expect-head", f"{last}:{head}", audit)
        assert r.returncode == 0, r.stderr

    def test_dropped_rotated_files_leave_a_chain_that_starts_at_a_rotation(self, tmp_path):
        audit = tmp_path / "audit"
        log = AuditLog(audit, node="n", max_bytes=1024, keep=3)
        for i in range(40):
            log.record(time=0.0, key=f"k{i}", target="host", baseline="b", set_version="v", action="chmod",
                       result="succeeded")
        assert sorted(p.name for p in audit.iterdir()) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
        r = driftd("audit", "verify", audit)
        assert r.returncode == 0, r.stderr
        assert "older records were rotated away" in r.stdout
        # but lines cut from the start of the oldest retained file are missing lines
        oldest = files_by_seq(audit)[0]
        write_lines(oldest, lines_of(oldest)[1:])
        r = driftd("audit", "verify", audit)
        assert r.returncode == 1 and f"{oldest}:1:" in r.stderr and "missing line(s) at the start" in r.stderr

    @pytest.mark.parametrize("tamper", ["edit", "delete", "insert", "swap", "torn", "delete-across-files", "anchor"])
    def test_tampering_is_found_at_the_right_line(self, tmp_path, tamper):
        audit = rotated_log(tmp_path)
        files = files_by_seq(audit)
        f = files[2]
        ls = lines_of(f)
        assert len(ls) >= 3
        expect: str
        if tamper == "edit":  # a hold turned into a success, line 2 of the third file
            ls[1] = ls[1].replace(b'"result":"skipped"', b'"result":"succeeded"')
            write_lines(f, ls)
            expect = f"{f}:2: seq {json.loads(ls[1])['seq']}: edited line"
        elif tamper == "delete":
            seq = json.loads(ls[1])["seq"]
            del ls[1]
            write_lines(f, ls)
            expect = f"{f}:2: seq {seq + 1}: missing line(s) before it: seq {seq} (deleted)"
        elif tamper == "insert":
            forged = json.loads(ls[1])
            forged.update(key="host:file:/etc/forged", result="succeeded")
            ls.insert(2, json.dumps(forged, sort_keys=True, separators=(",", ":")).encode())
            write_lines(f, ls)
            expect = f"{f}:3: seq {forged['seq']}: inserted line"
        elif tamper == "swap":
            ls[1], ls[2] = ls[2], ls[1]
            write_lines(f, ls)
            expect = f"{f}:2: seq {json.loads(ls[1])['seq']}: reordered lines"
        elif tamper == "torn":
            f = audit / "audit.jsonl"
            data = f.read_bytes()
            f.write_bytes(data[:-25])  # a write cut short: no newline, no complete JSON
            expect = f"{f}:{data[:-25].count(NL) + 1}: torn line"
        elif tamper == "delete-across-files":  # the last line of one file: the break shows at the next file's first
            seq = json.loads(ls[-1])["seq"]
            write_lines(f, ls[:-1])
            expect = f"{files[3]}:1: seq {seq + 1}: missing line(s) before it: seq {seq} (deleted)"
        else:  # the last line removed: the chain alone cannot tell, the anchor shipped off the node can
            cur = audit / "audit.jsonl"
            cls = lines_of(cur)
            head_seq, head = json.loads(cls[-1])["seq"], line_hash(cls[-1])
            write_lines(cur, cls[:-1])
            assert driftd("audit", "verify", audit).returncode == 0
            r = driftd("audit", "verify", "--expect-head", f"{head_seq}:{head}", audit)
            assert r.returncode == 1 and f"truncated: the log ends at seq {head_seq - 1}" in r.stderr, r.stderr
            return
        r = driftd("audit", "verify", audit)
        assert r.returncode == 1, r.stdout
        assert expect in r.stderr, r.stderr

    def test_an_edit_of_the_first_line_and_of_a_prev_are_edits(self, tmp_path):
        audit = rotated_log(tmp_path, n=5)
        f = audit / "audit.jsonl"
        original = lines_of(f)
        ls = list(original)
        ls[0] = ls[0].replace(b"a new audit chain", b"a new audit chaim")
        write_lines(f, ls)
        r = driftd("audit", "verify", f)
        assert r.returncode == 1 and f"{f}:1: seq 1: edited line" in r.stderr, r.stderr
        ls = list(original)
        rec = json.loads(ls[3])
        rec["prev"] = "f" * 64
        ls[3] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
        write_lines(f, ls)
        r = driftd("audit", "verify", f)
        assert r.returncode == 1 and f"{f}:4: seq 4: edited line" in r.stderr, r.stderr

    def test_usage_errors(self, tmp_path):
        assert driftd("audit", "verify", tmp_path / "nope").returncode == 2
        assert driftd("audit", "verify", "--expect-head", "12", tmp_path).returncode == 2
        r = driftd("audit", "verify", tmp_path)  # an empty directory has no chain to vouch for
        assert r.returncode == 1 and "no audit records" in r.stderr


class TestCrashes:
    def test_a_torn_last_line_is_not_chained_onto_and_the_recovery_says_so(self, tmp_path):
        audit = rotated_log(tmp_path, n=3)
        f = audit / "audit.jsonl"
        good = lines_of(f)
        torn = good[-1][:40]  # the crash came in the middle of the last write
        f.write_bytes(b"".join(ln + b"\n" for ln in good[:-1]) + torn)
        assert driftd("audit", "verify", audit).returncode == 1
        log = AuditLog(audit, node="node-a", max_bytes=1 << 20)  # the restart
        assert log.record(time=0.0, key="k", target="host", baseline="b", set_version="v", action="chmod",
                          result="succeeded")
        ls = lines_of(f)
        assert ls[len(good) - 1] == torn  # kept as it was, now terminated
        rec = json.loads(ls[len(good)])
        assert (rec["action"], rec["result"]) == ("audit", "recovered")
        assert rec["torn"] == {"bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()}
        assert rec["prev"] == line_hash(good[-2]) and rec["seq"] == json.loads(good[-2])["seq"] + 1
        r = driftd("audit", "verify", audit)
        assert r.returncode == 0, r.stderr
        assert f"{f}:{len(good)}: 1 torn line(s) from an interrupted write" in r.stdout
        # a torn line replaced by other bytes is not what the recovery record acknowledged
        ls[len(good) - 1] = torn[:-1] + b"X"
        write_lines(f, ls)
        r = driftd("audit", "verify", audit)
        assert r.returncode == 1 and f"{f}:{len(good)}: edited line" in r.stderr

    def test_a_crash_between_rotation_and_the_first_line_of_the_new_file_resumes_from_the_rotated_file(self, tmp_path):
        audit = rotated_log(tmp_path, n=10)
        (audit / "audit.jsonl").rename(audit / "audit.jsonl.tmp")
        for p in sorted(audit.glob("audit.jsonl.[0-9]*"), key=lambda p: -int(p.suffix[1:])):
            p.rename(audit / f"audit.jsonl.{int(p.suffix[1:]) + 1}")
        (audit / "audit.jsonl.tmp").rename(audit / "audit.jsonl.1")
        log = AuditLog(audit, node="n", max_bytes=1024, keep=100)
        log.record(time=0.0, key="k", target="host", baseline="b", set_version="v", action="chmod", result="succeeded")
        first = json.loads(lines_of(audit / "audit.jsonl")[0])
        assert first["result"] == "rotated" and first["prev"] == line_hash(lines_of(audit / "audit.jsonl.1")[-1])
        assert verify([audit]).intact

    def test_a_symlinked_audit_directory_is_refused_and_acting_is_held(self, scenario, tmp_path):
        (tmp_path / "state").mkdir(mode=0o700, exist_ok=True)
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "state/audit").symlink_to(tmp_path / "elsewhere")
        rt = scenario()
        s = run_once(rt.engine, rt.queue, attempts=1)
        assert list((tmp_path / "elsewhere").iterdir()) == []
        acting = [o for o in s.outcomes if o.key in ("host:file:/etc/app.conf", "host:file:/etc/token")]
        assert all(o.status is OutcomeStatus.HELD and "held: audit: " in (o.error or "") for o in acting)
        assert "symlink" in (acting[0].error or "")
        assert (tmp_path / "host/etc/app.conf").read_text() == "drifted\n"


class TestDiskFull:
    def test_a_full_audit_disk_holds_acting_leaves_no_partial_line_and_catches_up(self, host_root, baselines_dir,
                                                                                 make_runtime, tmp_path):
        need(os.geteuid() == 0, "needs root to mount a small tmpfs")
        n = 30
        (host_root / "etc/app").mkdir()
        for i in range(n):
            (host_root / f"etc/app/f{i:02d}").write_text("drifted\n")
        bdir = baselines_dir({"b.yaml": host_baseline("b", spec(*(f'{{path: /etc/app/f{i:02d}, content: "v\\n"}}'
                                                                  for i in range(n))))})
        state = tmp_path / "state"
        reg = CollectorRegistry()
        with small_tmpfs(state / "audit", "64k") as audit:
            rt = make_runtime(bdir, state_dir=state, registry=reg, safety={"breaker": {"share": 1.0}})
            (host_root / "etc/app/f00").write_text("v\n")
            run_once(rt.engine, rt.queue, attempts=1)  # 29 reverts: the log's first page fills up
            for i in range(n):
                (host_root / f"etc/app/f{i:02d}").write_text("drifted again\n")
            filler = fill(audit)  # the page in use has room for a few lines more; no further page can be had
            before = verify([audit]).records
            with capture_logs() as logs:
                s = run_once(rt.engine, rt.queue, attempts=1)
            done = [o for o in s.outcomes if o.status is OutcomeStatus.REMEDIATED]
            held = [o for o in s.outcomes if o.status is OutcomeStatus.HELD]
            assert done and held and len(done) + len(held) == n, [o.status for o in s.outcomes]
            assert all(o.error and o.error.startswith("held: audit: the audit log cannot be written") for o in held)
            assert all((host_root / f"etc/app/f{int(o.key[-2:]):02d}").read_text() == "drifted again\n" for o in held)
            assert reg.get_sample_value("driftd_audit_write_errors_total") >= 1
            failed = [e for e in logs if e["event"] == "audit.failed"]
            assert failed[0]["result"] == "succeeded" and failed[0]["key"] == done[-1].key  # the action in flight
            assert "No space left on device" in failed[0]["error"]
            data = (audit / "audit.jsonl").read_bytes()
            assert data.endswith(b"\n")  # the short write was truncated back: no partial line
            written = verify([audit / "audit.jsonl"])
            assert written.intact and written.records == before + len(done) - 1  # all but the action in flight
            assert rt.engine.audit.pending >= 2
            # space again: the backlog goes first, then acting resumes
            filler.unlink()
            s2 = run_once(rt.engine, rt.queue, attempts=1)
            assert sorted({o.status for o in s2.outcomes}) == [OutcomeStatus.REMEDIATED] and len(s2.outcomes) == len(held)
            result = verify([audit])
            assert result.intact, result.problem
            recs = records(audit)
            succeeded = [r["key"] for r in recs if r["result"] == "succeeded"]
            assert sorted(succeeded) == sorted(f"host:file:/etc/app/f{i:02d}" for i in [*range(1, n), *range(n)])
            assert [r["result"] for r in recs if r["key"] == done[-1].key] == ["succeeded", "succeeded"]
            rt.state.close()
