"""Host target on real directory trees: every kind of drift, sysctls, escapes, interrupted writes, names."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import host_baseline, need_root, tree_digest

from driftd.baselines.loader import load_set
from driftd.core.diff import diff
from driftd.core.plan import plan
from driftd.engine.once import PassSummary, run_once
from driftd.safety.snapshots import SnapshotStore
from driftd.targets.base import TargetError
from driftd.targets.safefs import TMP_MARK, SafeRoot, UnsafePathError

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534


def run(rt, attempts: int = 2) -> PassSummary:
    return run_once(rt.engine, rt.queue, attempts=attempts)


def by_key(summary: PassSummary) -> dict:
    return {o.key: o for o in summary.outcomes}


def perm(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def snapshots_of(rt) -> SnapshotStore:
    return rt.engine.targets["host"].snapshots


def temps_in(d: Path) -> list[str]:
    return sorted(n for n in os.listdir(d) if TMP_MARK in n)


# --------------------------------------------------------------------------- files


class TestFileDrift:
    def test_content_drift_rewritten_keeping_undeclared_mode(self, host_root, baselines_dir, make_runtime):
        """Drifted content is rewritten; the file's own mode is kept where the baseline is silent."""
        motd = host_root / "etc/motd"
        motd.write_text("hacked\n")
        motd.chmod(0o600)
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/motd, content: "hello\\n"}
        """)})
        s = run(make_runtime(bdir))
        assert s.exit_code == 0
        assert motd.read_bytes() == b"hello\n"
        assert perm(motd) == 0o600
        (o,) = s.outcomes
        assert (o.status, o.actions, [d["field"] for d in o.drift]) == ("remediated", ["write_file"], ["content"])

    def test_mode_drift_is_a_chmod_in_place(self, host_root, baselines_dir, make_runtime):
        """A mode drift is fixed by chmod on the same inode; the bytes are not rewritten."""
        f = host_root / "etc/issue"
        f.write_text("welcome\n")
        f.chmod(0o666)
        ino = f.stat().st_ino
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/issue, content: "welcome\\n", mode: "0644"}
        """)})
        s = run(make_runtime(bdir))
        assert s.exit_code == 0 and [o.actions for o in s.outcomes] == [["chmod"]]
        assert perm(f) == 0o644
        assert f.stat().st_ino == ino and f.read_text() == "welcome\n"

    def test_owner_uid_drift_is_reverted_group_untouched(self, host_root, baselines_dir, make_runtime):
        """A file whose owner drifted is chowned back; the undeclared group stays as it was."""
        need_root()
        f = host_root / "etc/crontab"
        f.write_text("x\n")
        os.chown(f, 1000, 42)
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/crontab, owner: root}
        """)})
        s = run(make_runtime(bdir))
        assert s.exit_code == 0 and [o.actions for o in s.outcomes] == [["chown"]]
        assert (f.stat().st_uid, f.stat().st_gid) == (0, 42)

    def test_group_gid_drift_is_reverted_owner_untouched(self, host_root, baselines_dir, make_runtime):
        """A file whose group drifted gets the declared group back (resolved by name); the owner stays."""
        need_root()
        f = host_root / "etc/shadow"
        f.write_text("root:*:1::::::\n")
        os.chown(f, 105, 0)
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/shadow, group: shadow}
        """)})
        s = run(make_runtime(bdir))
        assert s.exit_code == 0
        assert (f.stat().st_uid, f.stat().st_gid) == (105, 42)

    def test_chown_keeps_setuid_bit(self, host_root, baselines_dir, make_runtime):
        """Fixing the owner of a setuid binary does not lose the setuid bit (chown clears it; driftd restores it)."""
        need_root()
        f = host_root / "etc/helper"
        f.write_bytes(b"\x7fELF")
        os.chown(f, 1000, 1000)
        os.chmod(f, 0o4755)
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/helper, mode: "4755", owner: 0, group: 0, allowDangerous: "test: a set-uid helper on purpose"}
        """)})
        rt = make_runtime(bdir)
        s = run(rt)
        assert s.exit_code == 0 and [o.actions for o in s.outcomes] == [["chown"]]
        rec = rt.state.recent()[0]
        assert [a["result"] for a in rt.state.actions(rec.id)] == ["succeeded"]  # right first time, not after a retry
        st = f.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o4755)

    def test_missing_file_recreated_with_declared_mode_and_owner(self, host_root, baselines_dir, make_runtime):
        """A missing file is created with its content, declared mode, owner and group."""
        need_root()
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/sshd_banner, content: "authorised use only\\n", mode: "0640", owner: sshd, group: shadow}
        """)})
        s = run(make_runtime(bdir))
        f = host_root / "etc/sshd_banner"
        assert s.exit_code == 0 and [(o.status, o.actions) for o in s.outcomes] == [("remediated", ["write_file"])]
        st = f.lstat()
        assert stat.S_ISREG(st.st_mode)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (105, 42, 0o640)
        assert f.read_text() == "authorised use only\n"
        assert s.outcomes[0].snapshots == []  # nothing existed, nothing to keep

    def test_content_from_source_file_beside_baseline(self, host_root, baselines_dir, make_runtime):
        """`source:` content (binary, not UTF-8) is written byte for byte."""
        blob = bytes(range(256)) * 3 + b"\xff\xfe\x00"
        (host_root / "etc/blob").write_bytes(b"old")
        bdir = baselines_dir({
            "b.yaml": host_baseline(spec="""
                files:
                  - {path: /etc/blob, source: files/blob.bin, mode: "0600"}
            """),
            "files/blob.bin": blob,
        })
        s = run(make_runtime(bdir))
        assert s.exit_code == 0
        assert (host_root / "etc/blob").read_bytes() == blob
        assert perm(host_root / "etc/blob") == 0o600

    def test_must_be_absent_file_is_removed_and_kept_as_snapshot(self, host_root, baselines_dir, make_runtime):
        """A must-be-absent file is removed, its bytes kept as a snapshot; its neighbours are untouched."""
        gone = host_root / "etc/hosts.equiv"
        gone.write_bytes(b"+ +\n")
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/hosts.equiv, absent: true}
        """)})
        rt = make_runtime(bdir)
        s = run(rt)
        assert s.exit_code == 0
        assert not os.path.lexists(gone)
        assert (host_root / "etc/hostname").read_text() == "node-a\n"
        (o,) = s.outcomes
        assert o.actions == ["remove"]
        assert snapshots_of(rt).get(o.snapshots[0]) == b"+ +\n"

    def test_must_be_absent_symlink_is_removed_target_untouched(self, host_root, tmp_path, baselines_dir, make_runtime):
        """A must-be-absent path that is a symlink loses the link only; what it points to is untouched."""
        target = tmp_path / "elsewhere"
        target.write_text("keep me\n")
        os.symlink(target, host_root / "etc/rhosts")
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/rhosts, absent: true}
        """)})
        rt = make_runtime(bdir)
        s = run(rt)
        assert s.exit_code == 0
        assert not os.path.lexists(host_root / "etc/rhosts")
        assert target.read_text() == "keep me\n"
        assert snapshots_of(rt).get(s.outcomes[0].snapshots[0]) == f"symlink -> {target}".encode()

    def test_symlink_where_file_belongs_is_replaced_and_target_untouched(self, host_root, tmp_path, baselines_dir, make_runtime):
        """A symlink standing where a file belongs becomes a regular file; the link's target is not written."""
        target = tmp_path / "outside-target"
        target.write_text("outside\n")
        target.chmod(0o600)
        tst = target.stat()
        link = host_root / "etc/motd"
        os.symlink(target, link)
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/motd, content: "hello\\n", mode: "0640"}
        """)})
        rt = make_runtime(bdir)
        s = run(rt)
        assert s.exit_code == 0
        assert not link.is_symlink() and stat.S_ISREG(link.lstat().st_mode)
        assert link.read_text() == "hello\n" and perm(link) == 0o640
        assert target.read_text() == "outside\n"
        assert (target.stat().st_mode, target.stat().st_mtime_ns) == (tst.st_mode, tst.st_mtime_ns)
        (o,) = s.outcomes
        assert [d["field"] for d in o.drift] == ["type"]
        assert snapshots_of(rt).get(o.snapshots[0]) == f"symlink -> {target}".encode()

    def test_symlink_replacement_does_not_inherit_link_mode_or_owner(self, host_root, tmp_path, baselines_dir, make_runtime):
        """A file replacing a symlink gets default attributes, not the link's 0777 mode and foreign owner."""
        need_root()
        target = tmp_path / "t"
        target.write_text("x\n")
        link = host_root / "etc/login.defs"
        os.symlink(target, link)
        os.lchown(link, 1000, 1000)
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/login.defs, content: "UMASK 027\\n"}
        """)})
        s = run(make_runtime(bdir))
        assert s.exit_code == 0
        st = link.lstat()
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o644
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())

    def test_directory_where_file_belongs_is_blocked(self, host_root, baselines_dir, make_runtime):
        """A directory where a file belongs is reported as blocked and left alone (exit 3)."""
        d = host_root / "etc/motd"
        d.mkdir()
        (d / "inner").write_text("data\n")
        before = tree_digest(host_root)
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/motd, content: "hello\\n"}
        """)})
        rt = make_runtime(bdir)
        s = run(rt)
        assert s.exit_code == 3
        (o,) = s.outcomes
        assert o.status == "blocked" and "directory stands where a file belongs" in (o.error or "")
        assert tree_digest(host_root) == before
        rec = rt.state.get_active("host:file:/etc/motd")
        assert rec is not None and rec.last_result == "blocked" and rec.attempts == 0


# --------------------------------------------------------------------------- directories


class TestDirectoryDrift:
    def test_missing_directory_and_file_inside_created_in_one_pass(self, host_root, baselines_dir, make_runtime):
        """A declared missing directory is created with mode and owner before the file declared inside it."""
        need_root()
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/ssh/sshd_config, content: "PermitRootLogin no\\n", mode: "0600"}
            directories:
              - {path: /etc/ssh, mode: "0750", owner: sshd, group: shadow}
        """)})
        s = run(make_runtime(bdir))
        assert s.exit_code == 0
        d = host_root / "etc/ssh"
        st = d.lstat()
        assert stat.S_ISDIR(st.st_mode) and (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (105, 42, 0o750)
        assert (d / "sshd_config").read_text() == "PermitRootLogin no\n" and perm(d / "sshd_config") == 0o600
        assert {o.key: o.actions for o in s.outcomes} == {
            "host:dir:/etc/ssh": ["mkdir"],
            "host:file:/etc/ssh/sshd_config": ["write_file"],
        }

    def test_directory_mode_fixed_contents_untouched(self, host_root, baselines_dir, make_runtime):
        """A directory with a drifted mode is chmodded; the files inside are not touched."""
        d = host_root / "etc/cron.d"
        d.mkdir(mode=0o755)
        (d / "job").write_text("* * * * * true\n")
        d.chmod(0o777)
        inside = tree_digest(d)
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            directories:
              - {path: /etc/cron.d, mode: "0700"}
        """)})
        s = run(make_runtime(bdir))
        assert s.exit_code == 0 and [o.actions for o in s.outcomes] == [["chmod"]]
        assert perm(d) == 0o700
        assert tree_digest(d) == inside

    def test_directory_owner_fixed_keeping_setgid(self, host_root, baselines_dir, make_runtime):
        """A directory whose owner and group drifted is chowned back without losing its setgid bit."""
        need_root()
        d = host_root / "etc/shared"
        d.mkdir()
        os.chown(d, 1000, 1000)
        os.chmod(d, 0o2775)
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            directories:
              - {path: /etc/shared, mode: "2775", owner: root, group: shadow, allowDangerous: "test: a set-gid directory on purpose"}
        """)})
        s = run(make_runtime(bdir))
        assert s.exit_code == 0 and [o.actions for o in s.outcomes] == [["chown"]]
        st = d.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 42, 0o2775)

    def test_file_where_directory_belongs_is_blocked(self, host_root, baselines_dir, make_runtime):
        """A regular file where a directory belongs is blocked, not replaced."""
        (host_root / "etc/ssh").write_text("not a dir\n")
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            directories:
              - {path: /etc/ssh, mode: "0755"}
        """)})
        s = run(make_runtime(bdir))
        assert s.exit_code == 3 and s.outcomes[0].status == "blocked"
        assert (host_root / "etc/ssh").read_text() == "not a dir\n"


# --------------------------------------------------------------------------- sysctls


def put_sysctl(host_root: Path, rel: str, value: str) -> Path:
    p = host_root / "proc/sys" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(value)
    return p


class TestSysctls:
    def test_sysctl_drift_is_written_back(self, host_root, baselines_dir, make_runtime):
        """Drifted sysctls under <host-root>/proc/sys are written back to their values."""
        fwd = put_sysctl(host_root, "net/ipv4/ip_forward", "1\n")
        aslr = put_sysctl(host_root, "kernel/randomize_va_space", "0\n")
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            sysctls:
              - {key: net.ipv4.ip_forward, value: "0"}
              - {key: kernel.randomize_va_space, value: 2}
        """)})
        s = run(make_runtime(bdir))
        assert s.exit_code == 0
        assert fwd.read_text() == "0\n" and aslr.read_text() == "2\n"
        assert {o.key: (o.status, o.actions) for o in s.outcomes} == {
            "host:sysctl:net.ipv4.ip_forward": ("remediated", ["write_sysctl"]),
            "host:sysctl:kernel.randomize_va_space": ("remediated", ["write_sysctl"]),
        }

    def test_whitespace_in_values_is_normalised(self, host_root, baselines_dir, make_runtime):
        """A tab-separated kernel value equal to the space-separated baseline value is clean and not rewritten."""
        put_sysctl(host_root, "net/ipv4/tcp_rmem", "4096\t87380\t6291456\n")
        before = tree_digest(host_root)
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            sysctls:
              - {key: net.ipv4.tcp_rmem, value: "4096 87380   6291456"}
        """)})
        s = run(make_runtime(bdir))
        assert s.exit_code == 0 and s.outcomes == [] and s.counts["clean"] == 1
        assert tree_digest(host_root) == before

    def test_slash_in_key_stands_for_a_literal_dot(self, host_root, baselines_dir, make_runtime):
        """A '/' in a sysctl key is a literal '.' in the path (sysctl(8) convention), e.g. a VLAN interface."""
        p = put_sysctl(host_root, "net/ipv4/conf/eth0.100/rp_filter", "0\n")
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            sysctls:
              - {key: net.ipv4.conf.eth0/100.rp_filter, value: "1"}
        """)})
        s = run(make_runtime(bdir))
        assert s.exit_code == 0 and p.read_text() == "1\n"

    def test_key_missing_on_kernel_is_blocked_not_a_crash(self, host_root, baselines_dir, make_runtime):
        """A sysctl the kernel lacks is blocked (exit 3) and never created; other sysctls are still fixed."""
        fwd = put_sysctl(host_root, "net/ipv4/ip_forward", "1\n")
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            sysctls:
              - {key: net.ipv4.ip_forward, value: "0"}
              - {key: net.ipv6.conf.all.disable_ipv6, value: "1"}
              - {key: fs.nosuchdir.knob, value: "1"}
        """)})
        rt = make_runtime(bdir)
        s = run(rt)
        assert s.exit_code == 3
        out = by_key(s)
        assert out["host:sysctl:net.ipv4.ip_forward"].status == "remediated" and fwd.read_text() == "0\n"
        for key in ("host:sysctl:net.ipv6.conf.all.disable_ipv6", "host:sysctl:fs.nosuchdir.knob"):
            assert out[key].status == "blocked" and "does not exist" in (out[key].error or "")
            assert rt.state.get_active(key).last_result == "blocked"
        assert not (host_root / "proc/sys/net/ipv6").exists()
        assert not (host_root / "proc/sys/fs").exists()


# --------------------------------------------------------------------------- escapes


@pytest.fixture
def outside(tmp_path: Path, host_root: Path) -> Path:
    """A directory outside the host root, reachable through host/etc/ssh -> outside."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "sshd_config").write_text("outside original\n")
    (out / "authorized_keys").write_text("ssh-ed25519 AAAA\n")
    os.symlink(out, host_root / "etc/ssh")
    return out


class TestEscapes:
    def test_symlinked_parent_pointing_outside_is_refused(self, outside, host_root, baselines_dir, make_runtime):
        """Files below a parent that is a symlink out of the root are neither written, created nor removed."""
        before = tree_digest(outside)
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/ssh/sshd_config, content: "PermitRootLogin no\\n", mode: "0600"}
              - {path: /etc/ssh/new_file, content: "x\\n"}
              - {path: /etc/ssh/authorized_keys, absent: true, allowDangerous: "test: no host-wide authorized keys"}
        """)})
        s = run(make_runtime(bdir))
        assert tree_digest(outside) == before
        assert os.readlink(host_root / "etc/ssh") == str(outside)
        assert s.exit_code == 1
        assert len(s.outcomes) == 3
        for o in s.outcomes:
            assert o.status in ("error", "failed")
            assert (o.error or "").startswith("/etc/ssh ") and "symlink" in (o.error or ""), o.error

    def test_declared_directory_that_is_a_symlink_is_blocked(self, outside, host_root, baselines_dir, make_runtime):
        """A declared directory replaced by a symlink out of the root is blocked, and nothing below it is touched."""
        before = tree_digest(outside)
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            directories:
              - {path: /etc/ssh, mode: "0700"}
            files:
              - {path: /etc/ssh/sshd_config, content: "x\\n"}
        """)})
        s = run(make_runtime(bdir))
        out = by_key(s)
        assert out["host:dir:/etc/ssh"].status == "blocked"
        assert "symlink stands where a directory belongs" in (out["host:dir:/etc/ssh"].error or "")
        assert out["host:file:/etc/ssh/sshd_config"].status == "error"
        assert tree_digest(outside) == before
        assert perm(outside) != 0o700

    def test_symlink_swapped_in_after_observe_is_refused_at_write(self, tmp_path, host_root, baselines_dir, make_runtime):
        """If a parent becomes a symlink between observe and act, the write is refused naming it; nothing leaks out."""
        (host_root / "etc/ssh").mkdir()
        (host_root / "etc/ssh/sshd_config").write_text("drifted\n")
        out_dir = tmp_path / "outside"
        out_dir.mkdir()
        (out_dir / "sshd_config").write_text("outside original\n")
        before = tree_digest(out_dir)
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/ssh/sshd_config, content: "PermitRootLogin no\\n"}
        """)})
        rt = make_runtime(bdir)
        host = rt.engine.targets["host"]
        d = rt.engine.desired["host:file:/etc/ssh/sshd_config"]
        host.begin_pass(full=True)
        obs = host.observe(d)
        p = plan(d, obs, diff(d, obs))
        assert [a.action.value for a in p.actions] == ["write_file"]
        os.rename(host_root / "etc/ssh", tmp_path / "moved-away")
        os.symlink(out_dir, host_root / "etc/ssh")
        with pytest.raises(TargetError) as ei:
            host.apply(d, obs, p)
        assert str(ei.value).startswith("/etc/ssh is a symlink") and not ei.value.transient
        assert tree_digest(out_dir) == before
        assert temps_in(out_dir) == []

    @pytest.mark.parametrize("op", ["write_atomic", "remove", "chmod", "chown", "mkdir", "read", "write_in_place"])
    def test_safe_root_refuses_every_operation_through_a_symlinked_parent(self, outside, host_root, op):
        """Every SafeRoot operation refuses to walk through a symlinked parent and names it."""
        before = tree_digest(outside)
        fs = SafeRoot(host_root)
        calls = {
            "write_atomic": lambda: fs.write_atomic("/etc/ssh/sshd_config", b"evil", mode=0o666, uid=None, gid=None),
            "remove": lambda: fs.remove("/etc/ssh/authorized_keys"),
            "chmod": lambda: fs.chmod("/etc/ssh/sshd_config", 0o666),
            "chown": lambda: fs.chown("/etc/ssh/sshd_config", 0, 0),
            "mkdir": lambda: fs.mkdir("/etc/ssh/newdir", 0o777, None, None),
            "read": lambda: fs.read("/etc/ssh/sshd_config", 1 << 20),
            "write_in_place": lambda: fs.write_in_place("/etc/ssh/sshd_config", b"evil"),
        }
        with pytest.raises(UnsafePathError, match=r"^/etc/ssh is a symlink"):
            calls[op]()
        assert tree_digest(outside) == before

    def test_safe_root_refuses_symlink_leaf_for_chmod(self, tmp_path, host_root):
        """chmod on a leaf that is a symlink is refused; the link's target keeps its mode."""
        target = tmp_path / "t"
        target.write_text("x")
        target.chmod(0o600)
        os.symlink(target, host_root / "etc/link")
        with pytest.raises(UnsafePathError, match="symlink"):
            SafeRoot(host_root).chmod("/etc/link", 0o666)
        assert perm(target) == 0o600

    @pytest.mark.parametrize(
        ("entry", "field"),
        [
            ("files:\n  - {path: /etc/../../outside, content: x}", "spec.files[0].path"),
            ("directories:\n  - {path: /etc/ssh/../../../tmp}", "spec.directories[0].path"),
            ("files:\n  - {path: /etc/motd, source: ../../etc/shadow}", "spec.files[0].source"),
        ],
    )
    def test_dotdot_in_a_baseline_path_is_a_lint_error(self, baselines_dir, entry, field):
        """A `..` component in a path or source rejects the whole set with a problem naming the field."""
        bdir = baselines_dir({"b.yaml": host_baseline(spec=entry)})
        bset, problems = load_set(bdir)
        assert bset is None
        assert [(p.field, p.severity) for p in problems] == [(field, "error")]
        assert str(problems[0]).startswith(f"{bdir / 'b.yaml'}:8: {field}: ")


# --------------------------------------------------------------------------- interrupted writes


class TestInterruptedWrites:
    def test_exception_after_first_chunk_leaves_original_and_no_temp(self, host_root):
        """A write that fails after its first 1 MiB chunk leaves the original bytes and no temp file."""
        big = host_root / "etc/big"
        original = b"original\n" * 1000
        big.write_bytes(original)
        st = big.stat()
        chunks: list[int] = []

        def boom(off: int) -> None:
            chunks.append(off)
            raise RuntimeError("disk went away")

        with pytest.raises(RuntimeError, match="disk went away"):
            SafeRoot(host_root).write_atomic("/etc/big", b"N" * (3 << 20), mode=0o644, uid=None, gid=None, on_chunk=boom)
        assert chunks == [0]
        assert big.read_bytes() == original
        assert temps_in(host_root / "etc") == []
        assert (big.stat().st_ino, big.stat().st_mtime_ns, perm(big)) == (st.st_ino, st.st_mtime_ns, stat.S_IMODE(st.st_mode))

    def test_sigkill_mid_write_leaves_original_and_next_write_cleans_temp(self, host_root):
        """A process killed mid-write leaves the original intact; the next write removes the stale temp file."""
        big = host_root / "etc/big"
        original = b"\x00\xffkeep" * 5000
        big.write_bytes(original)
        child = textwrap.dedent("""
            import os, signal, sys
            from driftd.targets.safefs import SafeRoot

            def die(off):
                os.kill(os.getpid(), signal.SIGKILL)

            SafeRoot(sys.argv[1]).write_atomic("/etc/big", b"N" * (3 << 20), mode=None, uid=None, gid=None, on_chunk=die)
            print("not reached")
        """)
        r = subprocess.run([sys.executable, "-c", child, str(host_root)], cwd=REPO, capture_output=True, timeout=60)
        assert r.returncode == -signal.SIGKILL, r.stderr
        assert b"not reached" not in r.stdout
        assert big.read_bytes() == original
        (stale,) = temps_in(host_root / "etc")
        assert stale.startswith(".big" + TMP_MARK)
        assert (host_root / "etc" / stale).stat().st_size == 1 << 20
        (host_root / "etc/.other.driftd-tmp-0000").write_text("someone else's")

        SafeRoot(host_root).write_atomic("/etc/big", b"new\n", mode=0o640, uid=None, gid=None)
        assert big.read_bytes() == b"new\n" and perm(big) == 0o640
        assert temps_in(host_root / "etc") == [".other.driftd-tmp-0000"]  # a name driftd never makes is left

    def test_write_refuses_to_replace_a_directory(self, host_root):
        """write_atomic never replaces a directory and leaves no temp file behind."""
        (host_root / "etc/d").mkdir()
        with pytest.raises(IsADirectoryError):
            SafeRoot(host_root).write_atomic("/etc/d", b"x", mode=None, uid=None, gid=None)
        assert (host_root / "etc/d").is_dir() and temps_in(host_root / "etc") == []


# --------------------------------------------------------------------------- owner names


class TestOwnerNames:
    def test_names_resolve_against_host_databases(self, host_root, baselines_dir, make_runtime):
        """User and group names resolve through <host-root>/etc/passwd and group, not the agent's own."""
        with (host_root / "etc/passwd").open("a") as fh:
            fh.write("svc-driftd-test:x:4321:4321::/:/sbin/nologin\n")
        (host_root / "etc/passwd").write_text(
            (host_root / "etc/passwd").read_text().replace("nobody:x:65534:", "nobody:x:99:")
        )
        with (host_root / "etc/group").open("a") as fh:
            fh.write("svc-grp-test:x:4322:\n")
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/a, owner: sshd, group: shadow}
              - {path: /etc/b, owner: svc-driftd-test, group: svc-grp-test}
              - {path: /etc/c, owner: nobody, group: nogroup}
        """)})
        rt = make_runtime(bdir)
        exp = {k: (v.expected["owner"], v.expected["group"]) for k, v in rt.engine.desired.items()}
        assert exp == {
            "host:file:/etc/a": (105, 42),
            "host:file:/etc/b": (4321, 4322),
            "host:file:/etc/c": (99, NOBODY),  # the host says 99; the agent's nobody would be 65534
        }

    def test_sshd_owner_is_applied_as_host_uid(self, host_root, baselines_dir, make_runtime):
        """`owner: sshd` chowns the file to uid 105 from the host's passwd."""
        need_root()
        f = host_root / "etc/sshd_pid"
        f.write_text("1\n")
        os.chown(f, 0, 0)
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/sshd_pid, owner: sshd}
        """)})
        s = run(make_runtime(bdir))
        assert s.exit_code == 0 and f.stat().st_uid == 105

    @pytest.mark.parametrize(("entry", "name"), [("owner: ghost", "owner 'ghost'"), ("group: wheelz", "group 'wheelz'")])
    def test_unknown_name_is_blocked_naming_it(self, host_root, baselines_dir, make_runtime, entry, name):
        """An owner or group the host does not define blocks the plan, names it, and changes nothing."""
        f = host_root / "etc/motd"
        f.write_text("old\n")
        before = tree_digest(host_root)
        bdir = baselines_dir({"b.yaml": host_baseline(spec=f"""
            files:
              - {{path: /etc/motd, content: "new\\n", {entry}}}
        """)})
        rt = make_runtime(bdir)
        s = run(rt)
        assert s.exit_code == 3
        (o,) = s.outcomes
        assert o.status == "blocked" and name in (o.error or "") and "not defined on this host" in (o.error or "")
        assert tree_digest(host_root) == before
        assert rt.state.get_active("host:file:/etc/motd").last_error == o.error


def test_a_kind_without_an_observer_is_an_error_not_a_silent_lstat(host_root):
    """The host target refuses a resource kind it has no observer for, instead of lstat-ing its address."""
    from driftd.models.resources import DesiredResource
    from driftd.targets.host import HostTarget

    (host_root / "etc/pkg").write_text("x\n")
    t = HostTarget(host_root, SnapshotStore(host_root.parent / "snaps"))
    d = DesiredResource(key="host:service:/etc/pkg", target="host", kind="service", address="/etc/pkg", baseline="b",
                        expected={"present": True})
    with pytest.raises(TargetError, match="cannot observe a 'service' resource"):
        t.observe(d)
