"""Acting never harms (host): full disks, hard links, set-id bits, umask, read-only commands, snapshot ids.

Every fault is the real thing: a small tmpfs filled up, a real hard link, a real 6755 file,
``umask 000``, a planted symlink in the state directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import GROUP, PASSWD, host_baseline, need, need_root
from structlog.testing import capture_logs

from driftd.cli import main
from driftd.engine.once import PassSummary, run_once
from driftd.engine.state import StateError, StateStore
from driftd.presentation.documents import pass_document
from driftd.presentation.render import pass_text
from driftd.safety.snapshots import SnapshotError, SnapshotStore
from driftd.targets.safefs import TMP_MARK

DRIFTD = Path(sys.executable).parent / "driftd"
REPO = Path(__file__).resolve().parent.parent


def run(rt, attempts: int = 1) -> PassSummary:
    return run_once(rt.engine, rt.queue, attempts=attempts)


def perm(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def can_mount() -> bool:
    return os.geteuid() == 0 and Path("/proc/filesystems").read_text().find("tmpfs") >= 0


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``where`` (root only)."""
    need(can_mount(), "needs root to mount a small tmpfs")
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], capture_output=True, text=True)
    need(r.returncode == 0, f"cannot mount tmpfs: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(where: Path, leave: int = 0) -> Path:
    """Fill the filesystem of ``where`` until at most ``leave`` bytes are free."""
    filler = where / ".filler"
    with open(filler, "ab") as fh:
        while True:
            st = os.statvfs(where)
            free = st.f_bavail * st.f_frsize
            if free <= leave:
                break
            try:
                fh.write(b"\0" * min(1 << 16, max(1, free - leave)))
                fh.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
    return filler


def make_host(root: Path) -> Path:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "proc/sys").mkdir(parents=True, exist_ok=True)
    return root


def temps_below(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if TMP_MARK in p.name or re.match(r"\.[0-9a-f]{64}\.", p.name))


# --------------------------------------------------------------------------- 1. full host filesystem


class TestHostDiskFull:
    def test_revert_onto_full_filesystem_keeps_original_byte_for_byte(self, tmp_path, baselines_dir, make_runtime):
        """A revert that cannot be written whole fails, escalates, leaves the original intact and no temp file."""
        with small_tmpfs(tmp_path / "hostfs", "256k") as root:
            make_host(root)
            original = os.urandom(100_000)
            target = root / "etc/app.conf"
            target.write_bytes(original)
            big = b"baseline line\n" * 25_000  # 350 kB: cannot fit next to the original
            bdir = baselines_dir({"b.yaml": host_baseline(spec="""
                files:
                  - {path: /etc/app.conf, source: app.conf}
            """), "app.conf": big})
            rt = _runtime_on(tmp_path, root, bdir, tmp_path / "state")
            with capture_logs() as logs:
                summary = run(rt)
            assert target.read_bytes() == original
            assert temps_below(root) == []
            (o,) = summary.outcomes
            assert o.status == "failed", o
            assert "left as it was" in (o.error or "") and "No space left" in (o.error or "")
            assert summary.exit_code == 4
            assert any(e["event"] == "remediation.escalated" for e in logs), [e["event"] for e in logs]
            # the snapshot kept is the intact original, not garbage
            rec = rt.state.get_active("host:file:/etc/app.conf")
            assert rec is not None and rec.last_result == "failed"
            snaps = rt.engine.targets["host"].snapshots
            assert [snaps.get(x) for x in rec.snapshots] == [original]

    def test_write_all_loops_over_short_writes(self, tmp_path):
        """A short write is continued, not accepted: every byte lands or an error is raised."""
        from driftd.safety.durable import write_all

        with small_tmpfs(tmp_path / "fs", "64k") as fs:
            fd = os.open(fs / "f", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                with pytest.raises(OSError) as ei:
                    write_all(fd, b"x" * 200_000)
                assert ei.value.errno == errno.ENOSPC
            finally:
                os.close(fd)
            fd = os.open(fs / "g", os.O_WRONLY | os.O_CREAT, 0o600)
            (fs / "f").unlink()
            try:
                write_all(fd, b"y" * 30_000)
            finally:
                os.close(fd)
            assert (fs / "g").read_bytes() == b"y" * 30_000


# --------------------------------------------------------------------------- 2. full state directory


def _runtime_on(tmp_path: Path, host_root: Path, bdir: Path, state_dir: Path):
    from prometheus_client import CollectorRegistry

    from driftd.baselines.loader import load_set
    from driftd.engine.clock import FakeClock
    from driftd.runtime import build_runtime
    from driftd.settings import load_settings

    s = load_settings(host_root=host_root, baselines=bdir, state_dir=state_dir, node_name="node-a")
    rt = build_runtime(s, registry=CollectorRegistry(), clock=FakeClock())
    bset, problems = load_set(bdir)
    assert bset is not None, problems
    rt.engine.set_baselines(bset)
    return rt


MOTD_BASELINE = host_baseline(spec="""
    files:
      - {path: /etc/motd, content: "hello\\n"}
""")


class TestStateDiskFull:
    def test_snapshot_that_cannot_be_saved_blocks_the_revert(self, tmp_path, host_root, baselines_dir):
        """No room for the snapshot: the host file is not overwritten, no partial entry, a clear failure."""
        drifted = os.urandom(300_000)
        (host_root / "etc/motd").write_bytes(drifted)
        with small_tmpfs(tmp_path / "statefs", "512k") as sfs:
            rt = _runtime_on(tmp_path, host_root, baselines_dir({"b.yaml": MOTD_BASELINE}), sfs / "state")
            fill(sfs, leave=128 * 1024)  # room for state records, not for the 300 kB snapshot
            s = run(rt)
            assert (host_root / "etc/motd").read_bytes() == drifted
            (o,) = s.outcomes
            assert o.status == "failed" and "cannot save snapshot" in (o.error or ""), o
            assert "was not changed" in (o.error or "")
            assert s.exit_code == 4
            digest = hashlib.sha256(drifted).hexdigest()
            assert not (sfs / "state/snapshots/sha256" / digest[:2] / digest).exists()
            assert temps_below(sfs / "state") == []

    def test_state_database_full_is_a_clear_error_and_nothing_is_overwritten(self, tmp_path, host_root, baselines_dir):
        """`database or disk is full` surfaces as the error (never a ROLLBACK's), and the file is kept."""
        (host_root / "etc/motd").write_text("drifted\n")
        with small_tmpfs(tmp_path / "statefs", "256k") as sfs:
            rt = _runtime_on(tmp_path, host_root, baselines_dir({"b.yaml": MOTD_BASELINE}), sfs / "state")
            fill(sfs)
            with capture_logs() as logs:
                s = run(rt)
            assert any(x["event"] == "state.failed" and "database or disk is full" in x["error"] for x in logs), logs
            assert (host_root / "etc/motd").read_text() == "drifted\n"
            (o,) = s.outcomes
            assert o.status == "error", o
            assert "database or disk is full" in (o.error or "")
            assert "rollback" not in (o.error or "").lower()
            assert s.exit_code == 1

    def test_state_write_error_names_the_real_cause(self, tmp_path):
        """A failed transaction raises StateError with SQLite's own message."""
        with small_tmpfs(tmp_path / "statefs", "256k") as sfs:
            st = StateStore(sfs / "state")
            fill(sfs)
            with pytest.raises(StateError, match="database or disk is full"):
                st.open_drift(key="k", target="host", baseline="b", address="/x", now=1.0, window_seconds=60,
                              fields=[{"field": "content", "blob": "x" * 300_000}])
            st.close()

    def test_snapshot_not_recorded_in_state_means_no_overwrite(self, tmp_path, host_root, baselines_dir):
        """The snapshot is saved but the state cannot record it: the revert does not happen."""
        drifted = b"d" * 20_000
        (host_root / "etc/motd").write_bytes(drifted)
        with small_tmpfs(tmp_path / "statefs", "1m") as sfs:
            rt = _runtime_on(tmp_path, host_root, baselines_dir({"b.yaml": MOTD_BASELINE}), sfs / "state")
            state = rt.state
            orig_open = state.open_drift

            def open_then_fill(**kw):  # the drift record lands, then the disk fills up (a log burst, say)
                rec = orig_open(**kw)
                snaps = rt.engine.targets["host"].snapshots
                snaps.put(drifted)  # the snapshot itself is durable
                fill(sfs)
                return rec

            state.open_drift = open_then_fill  # type: ignore[method-assign]
            with capture_logs() as logs:
                s = run(rt)
            assert (host_root / "etc/motd").read_bytes() == drifted
            (o,) = s.outcomes
            assert o.status == "error" and "database or disk is full" in (o.error or ""), o
            failed = [x for x in logs if x["event"] == "remediation.failed"]
            assert failed and "not recorded" in failed[0]["error"] and "not overwriting" in failed[0]["error"], logs
            assert any(x["event"] == "state.failed" and "database or disk is full" in x["error"] for x in logs)

    def test_corrupt_snapshot_entry_is_replaced_not_trusted(self, tmp_path, host_root, baselines_dir, make_runtime):
        """An entry whose bytes do not match its name is rewritten from the live file before the revert."""
        drifted = b"the drifted bytes\n"
        (host_root / "etc/motd").write_bytes(drifted)
        rt = make_runtime(baselines_dir({"b.yaml": MOTD_BASELINE}))
        digest = hashlib.sha256(drifted).hexdigest()
        entry = Path(rt.settings.state_dir) / "snapshots/sha256" / digest[:2] / digest
        entry.parent.mkdir(parents=True)
        entry.write_bytes(b"garb")  # a truncated entry from an earlier full disk
        s = run(rt)
        assert s.exit_code == 0 and (host_root / "etc/motd").read_text() == "hello\n"
        assert entry.read_bytes() == drifted

    def test_cli_snapshot_corrupt_or_missing_is_a_clear_error(self, tmp_path, capsysbinary):
        """`driftd snapshot` on a corrupt entry says so with exit 1; on a missing one too; no traceback."""
        state = tmp_path / "state"
        StateStore(state).close()
        store = SnapshotStore(state / "snapshots")
        sid = store.put(b"good bytes")
        digest = sid.split(":")[1]
        (state / "snapshots/sha256" / digest[:2] / digest).write_bytes(b"bad")
        assert main(["snapshot", sid, "--state-dir", str(state)]) == 1
        assert b"corrupt" in capsysbinary.readouterr().err
        assert main(["snapshot", "sha256:" + "1" * 64, "--state-dir", str(state)]) == 1
        assert b"no snapshot" in capsysbinary.readouterr().err
        with pytest.raises(SnapshotError):
            store.get(sid)


# --------------------------------------------------------------------------- 3. hard links


class TestHardLinks:
    def test_hard_linked_file_mode_and_owner_are_not_changed(self, tmp_path, host_root, baselines_dir, make_runtime):
        """chmod/chown of a file with a second link outside the root is refused and reported as blocked."""
        outside = tmp_path / "outside-secret"
        outside.write_text("secret\n")
        outside.chmod(0o600)
        inside = host_root / "etc/app.key"
        os.link(outside, inside)
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/app.key, mode: "0644"}
        """)}))
        s = run(rt)
        assert perm(outside) == 0o600
        (o,) = s.outcomes
        assert o.status == "blocked" and "hard links" in (o.error or "")
        assert s.exit_code == 3

    def test_hard_linked_file_owner_is_not_changed(self, tmp_path, host_root, baselines_dir, make_runtime):
        """A chown through a shared inode would change the outside file's owner too: refused."""
        need_root()
        outside = tmp_path / "outside"
        outside.write_text("x\n")
        os.chown(outside, 65534, 65534)
        os.link(outside, host_root / "etc/linked")
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/linked, owner: root}
        """)}))
        s = run(rt)
        assert outside.stat().st_uid == 65534
        assert s.outcomes[0].status == "blocked"

    def test_safefs_refuses_chmod_of_a_linked_inode(self, tmp_path, host_root):
        """Defence in depth: SafeRoot itself refuses, whatever the planner said."""
        from driftd.targets.safefs import HardLinkError, SafeRoot

        (host_root / "etc/a").write_text("a")
        os.link(host_root / "etc/a", tmp_path / "b")
        with pytest.raises(HardLinkError):
            SafeRoot(host_root).chmod("/etc/a", 0o600)

    def test_content_rewrite_of_a_linked_file_breaks_the_link_only(self, tmp_path, host_root, baselines_dir, make_runtime):
        """A content revert renames a new inode in: the outside name keeps its bytes and mode."""
        outside = tmp_path / "outside"
        outside.write_text("outside\n")
        outside.chmod(0o600)
        os.link(outside, host_root / "etc/motd")
        rt = make_runtime(baselines_dir({"b.yaml": MOTD_BASELINE}))
        s = run(rt)
        assert s.exit_code == 0
        assert (host_root / "etc/motd").read_text() == "hello\n"
        assert outside.read_text() == "outside\n" and perm(outside) == 0o600 and outside.stat().st_nlink == 1


# --------------------------------------------------------------------------- 4. set-id bits


class TestSetIdBits:
    def test_owner_root_on_a_setuid_user_binary_does_not_make_setuid_root(self, host_root, baselines_dir, make_runtime):
        """`owner: root` on a 6755 file owned by nobody leaves a root-owned file without set-id bits."""
        need_root()
        f = host_root / "usr/local/bin/tool"
        f.parent.mkdir(parents=True)
        f.write_bytes(b"\x7fELF fake")
        os.chown(f, 65534, 65534)
        os.chmod(f, 0o6755)
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /usr/local/bin/tool, owner: root, group: root}
        """)}))
        s = run(rt)
        assert s.exit_code == 0, pass_text(pass_document(s, node="n"))
        st = f.stat()
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert stat.S_IMODE(st.st_mode) & 0o6000 == 0, oct(st.st_mode)
        assert run(rt).outcomes == []  # idempotent: nothing found the second time

    def test_setuid_named_by_the_baseline_survives_the_chown(self, host_root, baselines_dir, make_runtime):
        """A baseline that names 4755 explicitly gets 4755 after the owner change."""
        need_root()
        f = host_root / "usr/bin/passwd"
        f.parent.mkdir(parents=True)
        f.write_bytes(b"\x7fELF")
        os.chown(f, 65534, 65534)
        os.chmod(f, 0o755)
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /usr/bin/passwd, owner: root, mode: "4755", allowDangerous: "passwd is set-uid by design"}
        """)}))
        s = run(rt)
        assert s.exit_code == 0, pass_text(pass_document(s, node="n"))
        assert perm(f) == 0o4755 and f.stat().st_uid == 0
        assert run(rt).outcomes == []

    def test_rewrite_without_baseline_mode_drops_setid_bits(self, host_root, baselines_dir, make_runtime):
        """A content revert keeps the current mode but never its set-uid/set-gid bits."""
        f = host_root / "etc/motd"
        f.write_text("drift\n")
        os.chmod(f, 0o6755)
        rt = make_runtime(baselines_dir({"b.yaml": MOTD_BASELINE}))
        assert run(rt).exit_code == 0
        assert f.read_text() == "hello\n" and perm(f) == 0o755

    def test_lint_refuses_setid_modes_without_a_reason_and_reports_them_with_one(self, baselines_dir, capsys):
        """Set-uid/set-gid modes are a guardrail: refused with FILE:LINE unless the rule says why
        (``allowDangerous``), then reported on every lint and load; the sticky bit on a file is a warning."""
        spec = """
            directories:
              - {path: /tmp, mode: "1777"}
            files:
              - {path: /usr/bin/a, mode: "4755"%s}
              - {path: /usr/bin/b, mode: "2755"%s}
              - {path: /usr/bin/c, mode: "1644"}
              - {path: /usr/bin/d, mode: "0755"}
        """
        bdir = baselines_dir({"b.yaml": host_baseline(spec=spec % ("", ""))})
        assert main(["baseline", "lint", str(bdir)]) == 1
        out = capsys.readouterr().out
        assert re.findall(r"b\.yaml:(\d+): spec\.files\[(\d)\]\.mode: mode \d+ sets (set-\w+) on", out) == [
            ("10", "0", "set-uid"), ("11", "1", "set-gid")], out
        assert "spec.files[2].mode: warning: mode 1644 sets the sticky bit" in out
        assert "directories" not in out
        why = ', allowDangerous: "vendor agent needs it (CHG-7)"'
        bdir2 = baselines_dir({"b.yaml": host_baseline(spec=spec % (why, why))})
        assert main(["baseline", "lint", str(bdir2)]) == 0
        out = capsys.readouterr().out
        assert out.count("allowed-dangerous: mode") == 2 and "allowed: vendor agent needs it (CHG-7)" in out


# --------------------------------------------------------------------------- 5. state under any umask


class TestStateModes:
    def test_state_is_private_under_umask_000_even_in_a_loose_existing_dir(self, tmp_path, host_root, baselines_dir):
        """State dir 0700, state.db and snapshots 0600, their folders 0700, with umask 000 and a 0755 dir."""
        (host_root / "etc/motd").write_text("drift\n")
        bdir = baselines_dir({"b.yaml": MOTD_BASELINE})
        state = tmp_path / "state"
        state.mkdir()
        state.chmod(0o755)  # what a hostPath DirectoryOrCreate makes
        code = (
            "import os, sys; os.umask(0); from driftd.cli import main; "
            f"sys.exit(main(['run', '--once', '--host-root', {str(host_root)!r}, '--baselines', {str(bdir)!r}, "
            f"'--state-dir', {str(state)!r}, '--node-name', 'node-a']))"
        )
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 0, r.stdout + r.stderr
        assert perm(state) == 0o700
        seen = []
        for p in [state, *state.rglob("*")]:
            seen.append(p.name)
            want = 0o700 if p.is_dir() else 0o600
            assert perm(p) == want, f"{p}: {oct(perm(p))}"
        assert "state.db" in seen and any(len(n) == 64 for n in seen)

    def test_planted_symlink_in_the_snapshot_store_is_not_followed(self, tmp_path, host_root, baselines_dir, make_runtime):
        """`snapshots/sha256/xx -> elsewhere` is refused: nothing is written through it, nothing overwritten."""
        drifted = b"drifted\n"
        (host_root / "etc/motd").write_bytes(drifted)
        elsewhere = tmp_path / "cron.d"
        elsewhere.mkdir()
        state = tmp_path / "state"
        digest = hashlib.sha256(drifted).hexdigest()
        (state / "snapshots/sha256").mkdir(parents=True)
        (state / "snapshots/sha256" / digest[:2]).symlink_to(elsewhere)
        rt = make_runtime(baselines_dir({"b.yaml": MOTD_BASELINE}), state_dir=state)
        s = run(rt)
        assert list(elsewhere.iterdir()) == []
        assert (host_root / "etc/motd").read_bytes() == drifted
        assert s.outcomes[0].status == "failed" and "symlink" in (s.outcomes[0].error or "")

    def test_symlinked_state_db_is_refused(self, tmp_path):
        """A state.db that is a symlink is an error, not followed."""
        state = tmp_path / "state"
        state.mkdir()
        victim = tmp_path / "victim"
        victim.write_text("keep")
        (state / "state.db").symlink_to(victim)
        with pytest.raises(StateError, match="symlink"):
            StateStore(state)
        assert victim.read_text() == "keep"


# --------------------------------------------------------------------------- 6. read-only commands


class TestReadOnlyCommands:
    def test_status_on_a_mistyped_state_dir_is_an_error_and_creates_nothing(self, tmp_path, capsys):
        """`driftd status --state-dir TYPO` exits 1 with "no state at", and TYPO does not appear."""
        typo = tmp_path / "var/lib/drfitd"
        assert main(["status", "--state-dir", str(typo)]) == 1
        assert "no state at" in capsys.readouterr().err
        assert not typo.exists() and not typo.parent.exists()

    def test_snapshot_on_a_mistyped_state_dir_creates_nothing(self, tmp_path, capsys):
        """`driftd snapshot` on a missing state directory: error, nothing created."""
        typo = tmp_path / "nostate"
        assert main(["snapshot", "sha256:" + "a" * 64, "--state-dir", str(typo)]) == 1
        assert "no state at" in capsys.readouterr().err
        assert not typo.exists()

    def test_status_reads_without_writing(self, tmp_path, host_root, baselines_dir, make_runtime):
        """status on a real state directory changes no byte or mode of it."""
        (host_root / "etc/motd").write_text("drift\n")
        rt = make_runtime(baselines_dir({"b.yaml": MOTD_BASELINE}), dry_run=True)
        run(rt)
        rt.state.close()
        state = Path(rt.settings.state_dir)

        def digest() -> dict[str, tuple[int, int, bytes]]:
            return {str(p): (p.stat().st_mode, p.stat().st_mtime_ns, p.read_bytes()) for p in state.rglob("*") if p.is_file()}

        before = digest()
        assert main(["status", "--state-dir", str(state)]) == 3
        assert digest() == before

    def test_status_names_the_baseline_set_in_force(self, tmp_path, host_root, baselines_dir, make_runtime, capsys):
        """The set a pass ran with (version, baselines) is recorded in the state and shown by status."""
        rt = make_runtime(baselines_dir({"b.yaml": MOTD_BASELINE}), dry_run=True)
        run(rt)
        version = rt.engine.baselines.version
        rt.state.close()
        capsys.readouterr()
        main(["status", "--state-dir", str(rt.settings.state_dir)])
        (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("baseline set ")]
        assert line.startswith(f"baseline set {version} in force since ") and line.endswith("(1 baselines)")
        main(["status", "--state-dir", str(rt.settings.state_dir), "-o", "json"])
        doc = json.loads(capsys.readouterr().out)
        assert doc["baselineSet"]["version"] == version and doc["baselineSet"]["baselines"] == 1


# --------------------------------------------------------------------------- 7. snapshot ids


class TestSnapshotIds:
    def test_every_snapshot_id_the_cli_prints_is_accepted_back(self, tmp_path, host_root, baselines_dir):
        """Ids in the text summary, the JSON summary and `status` all work with `driftd snapshot`."""
        need(DRIFTD.exists(), f"{DRIFTD} not installed (pip install -e .)")
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/motd, content: "hello\\n"}
              - {path: /etc/issue, content: "welcome\\n"}
        """)})
        state = tmp_path / "state"
        base = ["--host-root", str(host_root), "--baselines", str(bdir), "--state-dir", str(state), "--node-name", "node-a"]
        printed: dict[str, bytes] = {}
        for out_fmt, drift in (("text", b"motd drift\n"), ("json", b"issue drift\n")):
            (host_root / "etc/motd").write_bytes(drift)
            (host_root / "etc/issue").write_bytes(drift + b"2")
            r = subprocess.run([str(DRIFTD), "run", "--once", "--output", out_fmt, *base], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
            ids = set(re.findall(r"drifted content kept as (sha256:[0-9a-f]{12,64})", r.stdout))
            if out_fmt == "json":
                ids = {x for o in json.loads(r.stdout)["results"] for x in o["snapshots"]}
            assert len(ids) == 2, r.stdout
            for sid in ids:
                printed[sid] = drift
        for sid in printed:
            r = subprocess.run([str(DRIFTD), "snapshot", sid, "--state-dir", str(state)], capture_output=True, timeout=60)
            assert r.returncode == 0, (sid, r.stderr)
            assert r.stdout in (b"motd drift\n", b"motd drift\n2", b"issue drift\n", b"issue drift\n2")

    def test_short_prefix_and_ambiguity_are_clear_errors(self, tmp_path):
        """Fewer than 12 hex digits, or a prefix two snapshots share, is refused with the reason."""
        store = SnapshotStore(tmp_path / "snapshots")
        a = store.put(b"a")
        with pytest.raises(KeyError, match="at least 12"):
            store.resolve(a[:15])
        assert store.resolve(a[:19]) == a
        # two entries sharing a 12-digit prefix (planted names; the store only resolves names)
        bucket = tmp_path / "snapshots/sha256" / a[7:9]
        twin = a[7:19] + "0" * 52
        (bucket / twin).write_bytes(b"x")
        with pytest.raises(KeyError, match="ambiguous"):
            store.resolve(a[:19])
