"""Kind ``package``: installed packages held to the baseline (issue 15).

Version ordering against each distribution's own reference cases; the installed set read from
real databases (this machine's dpkg status, compared with ``dpkg-query``; an Alpine ``installed``
file; an rpmdb.sqlite made by the real ``rpm``); then the whole pipeline on a host tree: report,
the patch hook (run, audited), retirement on a plain server (one retirement however many packages),
a host without a database (blocked, not a crash), and a clean host twice.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import host_baseline, need
from packages_support import DPKG_STATUS, dpkg_stanza, rpm_cmd, rpm_installed, rpm_root, write_dpkg
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from driftd.core import versions
from driftd.core.diff import diff
from driftd.core.kinds import find
from driftd.engine.once import run_once
from driftd.exitcodes import ExitCode
from driftd.models.baseline import HostBaseline, PackageRule
from driftd.models.resources import DesiredResource, ObservedResource, ReportResult, ResourceResult
from driftd.targets.capture_io import read_packages
from driftd.targets.host import HostIO
from driftd.targets.kubernetes.policyreport import to_row
from driftd.targets.packages import PackageDatabases, parse_apk_installed, parse_dpkg_status, parse_rpm_header

FIXTURES = Path(__file__).parent / "fixtures"
OPS = {"<": -1, "=": 0, ">": 1}


def vectors(fmt: str) -> list[tuple[str, str, int]]:
    out = []
    for line in (FIXTURES / "versions" / f"{fmt}.txt").read_text().splitlines():
        case = line.split("#", 1)[0].split()
        if case:
            a, op, b = case
            out.append((a, b, OPS[op]))
    return out


# ------------------------------------------------------------------ version ordering

class TestDistributionVersionRules:
    @pytest.mark.parametrize("fmt,file", [("deb", "dpkg"), ("rpm", "rpm"), ("apk", "apk")])
    def test_every_upstream_reference_case(self, fmt, file):
        """dpkg's, rpm's and apk-tools' own test cases (tests/fixtures/versions/, provenance in each header)."""
        cases = vectors(file)
        assert len(cases) >= 20, f"too few {file} vectors"
        if fmt == "apk":  # apk-tools orders even what it calls invalid (23_foo); driftd refuses to judge those
            refused = [(a, b) for a, b, _ in cases if not (versions.apk_valid(a) and versions.apk_valid(b))]
            assert refused == [("23_foo", "4_beta")]
            with pytest.raises(versions.VersionError):
                versions.compare(fmt, "23_foo", "4_beta")
            cases = [c for c in cases if (c[0], c[1]) not in refused]
        wrong = [(a, b, want, versions.compare(fmt, a, b)) for a, b, want in cases if versions.compare(fmt, a, b) != want]
        assert not wrong
        # and the opposite order, which a comparison that only looks one way gets wrong
        assert all(versions.compare(fmt, b, a) == -want for a, b, want in cases)

    @pytest.mark.parametrize("fmt,file", [("deb", "dpkg"), ("rpm", "rpm"), ("apk", "apk")])
    def test_ranges_agree_with_the_ordering(self, fmt, file):
        """A vers range ``>=b`` holds a exactly when a sorts at or after b (the range classes use the same rules)."""
        for a, b, want in [c for c in vectors(file) if "_foo" not in c[0]][:80]:
            assert versions.in_range(fmt, a, f">={b}") is (want >= 0), (a, b)
            assert versions.in_range(fmt, a, f"<{b}") is (want < 0), (a, b)

    def test_python_debian_orders_as_the_real_dpkg_does(self):
        """Every deb case again, against this machine's ``dpkg --compare-versions`` (the reference itself)."""
        need(shutil.which("dpkg") is not None, "dpkg (a Debian system)")
        for a, b, want in vectors("dpkg")[::3]:
            for op, holds in (("lt", want < 0), ("eq", want == 0), ("gt", want > 0)):
                rc = subprocess.run(["dpkg", "--compare-versions", "--", a, op, b], capture_output=True).returncode
                assert rc in (0, 1) and (rc == 0) is holds, (a, op, b)

    def test_univers_apk_ordering_still_refuses_real_alpine_versions(self):
        """Why apk versions are ordered by apk-tools' algorithm here: univers' Gentoo rules refuse what Alpine ships
        (gcc 13.2.1_git20240309-r0 in the real installed file); when this fails, univers can take over again."""
        from univers.versions import AlpineLinuxVersion, InvalidVersion

        with pytest.raises(InvalidVersion):
            AlpineLinuxVersion("13.2.1_git20240309-r0")
        assert versions.compare("apk", "13.2.1_git20240309-r0", "13.2.1-r0") == 1
        assert versions.compare("apk", "13.2.1_git20240309-r0", "13.2.1_p1-r0") == -1

    def test_the_cases_people_get_wrong(self):
        assert versions.compare("deb", "1:1.0", "9.9") == 1  # the epoch wins
        assert versions.compare("deb", "3.0.15-1~deb12u1", "3.0.15-1") == -1  # a backport sorts before the release
        assert versions.compare("deb", "3.0.11-1~deb12u2", "3.0.15-1~deb12u1") == -1
        assert versions.compare("rpm", "1:3.0.7-27.el9", "3.2.2-1.el9") == 1
        assert versions.compare("apk", "3.1.4-r5", "3.1.4-r10") == -1  # r10 is a number, not a string
        assert versions.in_range("deb", "1.9.15p5-1", ">=1.9.13p3-1|<1.9.16")
        assert not versions.in_range("deb", "1.9.16p2-1", ">=1.9.13p3-1|<1.9.16")

    def test_an_unreadable_version_is_an_error_never_a_silent_pass(self):
        for fmt, bad in (("deb", "a:1"), ("apk", "1.0 beta"), ("rpm", "")):
            with pytest.raises(versions.VersionError):
                versions.compare(fmt, bad, "1.0")


class TestRuleModel:
    def test_exactly_one_requirement(self):
        PackageRule(name="openssl", minimum="3.0.15-1~deb12u1")
        PackageRule(name="sudo", versions=">=1.9.13 | <1.9.16")
        PackageRule(name="telnetd", absent=True)
        for bad in ({"name": "x"}, {"name": "x", "minimum": "1", "versions": ">=1"}, {"name": "x", "absent": True, "minimum": "1"},
                    {"name": "x y", "minimum": "1"}, {"name": "x", "minimum": "1 2"}, {"name": "x", "versions": ">>1"},
                    {"name": "x", "minimum": "1", "severity": "urgent"}, {"name": "x", "minimum": "1", "action": "upgrade"}):
            with pytest.raises(ValidationError):
                PackageRule(**bad)

    def test_range_spacing_and_vers_prefix_are_normalised(self):
        assert PackageRule(name="s", versions="vers:deb/>=1.0 | <2.0").versions == ">=1.0|<2.0"


# ------------------------------------------------------------------ the databases

class TestDatabases:
    def test_dpkg_status_of_this_machine_matches_dpkg_query(self, tmp_path):
        """The parser reads a real Debian status file exactly as dpkg itself lists it."""
        need(Path("/var/lib/dpkg/status").is_file() and shutil.which("dpkg-query") is not None, "a Debian system")
        data = Path("/var/lib/dpkg/status").read_bytes()
        out = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status} ${Package} ${Version}\n"],
                             capture_output=True, text=True, check=True).stdout
        want: dict[str, set[str]] = {}
        for line in out.splitlines():
            st, name, *ver = line.split(" ")
            if st not in ("not-installed", "config-files") and ver and ver[0]:
                want.setdefault(name, set()).add(ver[0])
        got = parse_dpkg_status(data)
        assert len(got) > 100
        assert {n: set(v.split(", ")) for n, v in got.items()} == want

    def test_the_committed_debian_12_status_file(self):
        """A real Debian 12 status file (tests/fixtures/packages/dpkg-status.gz, copied from a Debian 12 system)."""
        got = parse_dpkg_status(gzip.decompress((FIXTURES / "packages/dpkg-status.gz").read_bytes()))
        assert len(got) > 500
        assert got["openssl"].endswith("~deb12u2") and got["base-files"].startswith("12.")

    def test_dpkg_states_and_multiarch(self):
        data = (dpkg_stanza("a", "1.0") + dpkg_stanza("gone", "2.0", status="deinstall ok config-files")
                + dpkg_stanza("libc6", "2.36-9", arch="amd64") + dpkg_stanza("libc6", "2.36-8", arch="i386")
                + dpkg_stanza("half", "3.0", status="install reinstreq half-configured")).encode()
        assert parse_dpkg_status(data) == {"a": "1.0", "libc6": "2.36-8, 2.36-9", "half": "3.0"}

    def test_alpine_installed_file(self):
        got = parse_apk_installed((FIXTURES / "packages/alpine-installed").read_bytes())
        assert {"musl", "busybox", "apk-tools"} <= set(got)
        assert all(versions.compare("apk", v, v) == 0 for v in got.values())  # every version is a valid apk version

    @pytest.mark.real
    def test_rpmdb_sqlite_made_by_the_real_rpm(self, tmp_path):
        """Header blobs of a database the real rpm wrote: the same name and [epoch:]version-release rpm -qa shows."""
        root = tmp_path / "root"
        pkgs = [("openssl-libs", "3.0.7", "27.el9", 1), ("sudo", "1.9.5p2", "10.el9_3", None),
                ("bash", "5.1.8", "9.el9", None), ("kernel-core", "5.14.0", "362.el9", None),
                ("kernel-core", "5.14.0", "427.el9", None)]
        db = rpm_root(root, tmp_path / "work", pkgs)
        got = PackageDatabases(HostIO(root)).installed()
        assert got.format == "rpm" and got.database == "/var/lib/rpm/rpmdb.sqlite" and db.is_file()
        assert dict(got.versions) == rpm_installed(root)
        assert got.versions["openssl-libs"] == "1:3.0.7-27.el9"
        assert got.versions["kernel-core"] == "5.14.0-362.el9, 5.14.0-427.el9"
        # the host's database is only read: not a byte of it (or its WAL) changed, no file was added beside it
        assert sorted(p.name for p in db.parent.iterdir()) == sorted({".rpm.lock", "rpmdb.sqlite", "rpmdb.sqlite-shm",
                                                                      "rpmdb.sqlite-wal"} & {p.name for p in db.parent.iterdir()})

    def test_a_truncated_rpm_header_is_an_error(self):
        with pytest.raises(ValueError, match=r"overruns|shorter"):
            parse_rpm_header(b"\x00\x00\x00\x05\x00\x00\x01\x00")

    def test_no_database_and_an_unreadable_rpm_database_say_so(self, tmp_path):
        got = PackageDatabases(HostIO(tmp_path)).installed()
        assert got.format is None and "no package database under the host root" in (got.problem or "")
        (tmp_path / "var/lib/rpm").mkdir(parents=True)
        (tmp_path / "var/lib/rpm/Packages").write_bytes(b"\0" * 64)  # Berkeley DB, before RPM 4.16
        got = PackageDatabases(HostIO(tmp_path)).installed()
        assert got.format is None and "Berkeley DB" in (got.problem or "") and got.database == "/var/lib/rpm/Packages"

    def test_read_again_only_when_the_file_changed(self, tmp_path):
        status = write_dpkg(tmp_path, {"openssl": "3.0.11-1~deb12u2"})
        dbs = PackageDatabases(HostIO(tmp_path))
        assert dbs.installed().versions["openssl"] == "3.0.11-1~deb12u2"
        dbs.installed()
        assert dbs.reads == 1  # same stat: the parsed set is reused
        tmp = status.with_name("status-new")
        tmp.write_text(dpkg_stanza("openssl", "3.0.15-1~deb12u1"))
        tmp.rename(status)  # dpkg replaces the file the same way
        assert dbs.installed().versions["openssl"] == "3.0.15-1~deb12u1" and dbs.reads == 2

    def test_a_full_rehash_pass_parses_the_database_again(self, tmp_path):
        """scan.full_rehash_interval_seconds covers the package database too (a write that kept its stat)."""
        from driftd.safety.snapshots import SnapshotStore
        from driftd.targets.host import HostTarget

        write_dpkg(tmp_path / "root", {"openssl": "3.0.11-1~deb12u2"})
        t = HostTarget(tmp_path / "root", SnapshotStore(tmp_path / "snap"))
        first = t.fs.packages()
        t.begin_pass(full=False)
        assert t.fs.packages() is first
        t.begin_pass(full=True)
        assert t.fs.packages() is not first and t.fs.packages().versions == first.versions

    def test_a_symlinked_database_is_refused_not_followed(self, tmp_path):
        outside = tmp_path / "outside"
        write_dpkg(outside, {"openssl": "9.9"})
        root = tmp_path / "root"
        (root / "var/lib").mkdir(parents=True)
        (root / "var/lib/dpkg").symlink_to(outside / "var/lib/dpkg")
        with pytest.raises(Exception, match="symlink"):
            PackageDatabases(HostIO(root)).installed()


# ------------------------------------------------------------------ the pipeline

def pkg_baseline(rules: str, name: str = "patch", enforcement: str = "enforce", extra: str = "") -> str:
    return host_baseline(name, f"packages:\n{rules}\n{extra}", enforcement=enforcement)


OUT_OF_PATCH = """\
  - {name: openssl, minimum: "3.0.15-1~deb12u1", severity: critical, reason: DSA-5764-1, action: ACTION}
  - {name: telnetd, absent: true, severity: high, reason: cleartext logins}
  - {name: sudo, versions: ">=1.9.13p3-1~deb12u1|<1.9.16"}"""


def hook_script(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "patch.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)]


def audit_records(state_dir: Path) -> list[dict]:
    out = []
    for f in sorted((state_dir / "audit").glob("audit*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


class TestPipeline:
    def test_a_clean_host_reports_nothing_twice(self, host_root, baselines_dir, make_runtime):
        write_dpkg(host_root, {"openssl": "3.0.15-1~deb12u1", "sudo": "1.9.13p3-1+deb12u1", "bash": "5.2.15-2+b7"})
        reg = CollectorRegistry()
        rt = make_runtime(baselines_dir({"p.yaml": pkg_baseline(OUT_OF_PATCH.replace("ACTION", "retire"))}), registry=reg)
        for _ in range(2):
            s = run_once(rt.engine, rt.queue, attempts=1)
            assert s.exit_code == ExitCode.CLEAN and s.counts == {"clean": 3} and s.outcomes == []
        assert reg.get_sample_value("driftd_packages_out_of_patch", {"baseline": "patch", "severity": "critical"}) == 0
        assert rt.state.active() == {}

    def test_report_names_package_installed_required_and_reason_and_counts_by_severity(
            self, host_root, baselines_dir, make_runtime):
        write_dpkg(host_root, {"openssl": "3.0.11-1~deb12u2", "telnetd": "0.17+2.4-2", "sudo": "1.9.16p2-1"})
        reg = CollectorRegistry()
        rt = make_runtime(baselines_dir({"p.yaml": pkg_baseline(OUT_OF_PATCH.replace("ACTION", "report"))}), registry=reg)
        s = run_once(rt.engine, rt.queue, attempts=1)
        got = {o.address: o for o in s.outcomes}
        assert s.exit_code == ExitCode.DRIFT_REMAINED and {o.status for o in got.values()} == {"reported"}
        from driftd.models.wording import drifts_text

        text = drifts_text(got["openssl"].drift)
        assert "3.0.11-1~deb12u2" in text and "3.0.15-1~deb12u1 or later" in text and "DSA-5764-1" in text
        assert "must not be installed" in drifts_text(got["telnetd"].drift) and "cleartext logins" in drifts_text(got["telnetd"].drift)
        assert "outside >=1.9.13p3-1~deb12u1|<1.9.16" in drifts_text(got["sudo"].drift)
        sample = reg.get_sample_value
        assert sample("driftd_packages_out_of_patch", {"baseline": "patch", "severity": "critical"}) == 1
        assert sample("driftd_packages_out_of_patch", {"baseline": "patch", "severity": "high"}) == 1
        assert sample("driftd_packages_out_of_patch", {"baseline": "patch", "severity": "medium"}) == 1
        # the metric names no package (bounded labels)
        names = {k for m in reg.collect() if m.name == "driftd_packages_out_of_patch" for s_ in m.samples for k in s_.labels}
        assert names == {"baseline", "severity"}
        assert os.path.getsize(host_root / DPKG_STATUS) > 0  # reporting never touches the database

    def test_the_policy_report_row_carries_the_rule_severity(self, host_root, baselines_dir, make_runtime):
        write_dpkg(host_root, {"openssl": "3.0.11-1~deb12u2"})
        rt = make_runtime(baselines_dir({"p.yaml": pkg_baseline(OUT_OF_PATCH.replace("ACTION", "report"))}))
        d = rt.engine.desired["host:package:openssl"]
        row = to_row(rt.engine._row(d, ReportResult.FAIL, "drifted: installed: 3.0.11-1~deb12u2 → 3.0.15-1~deb12u1"))
        assert row["severity"] == "critical" and row["rule"] == "host/package" and "openssl" in row["message"]
        plain = ResourceResult(key="host:file:/x", baseline="b", target="host", kind="file", address="/x",
                               result=ReportResult.FAIL, message="m", at=0.0)
        assert to_row(plain)["severity"] == "high"  # rules without their own severity keep the default

    def test_the_patch_hook_runs_is_audited_and_the_fix_is_verified(self, host_root, baselines_dir, make_runtime, tmp_path):
        """action: hook runs the operator's command (here: it upgrades openssl in the status file, as apt would)."""
        status = write_dpkg(host_root, {"openssl": "3.0.11-1~deb12u2"})
        fixed = tmp_path / "fixed-status"
        fixed.write_text(dpkg_stanza("openssl", "3.0.15-1~deb12u1"))
        argv = hook_script(tmp_path, f'echo "upgrading $DRIFTD_PACKAGE from $DRIFTD_INSTALLED ($DRIFTD_REQUIRED)"\n'
                                     f'echo "root=$DRIFTD_HOST_ROOT node=$DRIFTD_NODE"\n'
                                     f'cp {fixed} "$DRIFTD_HOST_ROOT/{DPKG_STATUS}.new" && '
                                     f'mv "$DRIFTD_HOST_ROOT/{DPKG_STATUS}.new" "$DRIFTD_HOST_ROOT/{DPKG_STATUS}"\n')
        state = tmp_path / "state"
        rt = make_runtime(baselines_dir({"p.yaml": pkg_baseline(OUT_OF_PATCH.replace("ACTION", "hook"))}),
                          patch_hook=argv, state_dir=state)
        s = run_once(rt.engine, rt.queue, attempts=1)
        got = {o.address: o for o in s.outcomes}
        assert got["openssl"].status == "remediated" and got["openssl"].actions == ["patch_hook"]
        assert "3.0.15-1~deb12u1" in status.read_text()
        rec = [r for r in audit_records(state) if r["action"] == "patch_hook"]
        assert len(rec) == 1 and rec[0]["result"] == "succeeded" and rec[0]["key"] == "host:package:openssl"
        assert "upgrading openssl from 3.0.11-1~deb12u2 (3.0.15-1~deb12u1 or later (DSA-5764-1))" in rec[0]["output"]
        assert f"root={host_root} node=node-a" in rec[0]["output"]
        again = run_once(rt.engine, rt.queue, attempts=1)
        assert again.exit_code == ExitCode.CLEAN
        assert len([r for r in audit_records(state) if r["action"] == "patch_hook"]) == 1  # nothing run twice

    def test_a_hook_that_changes_nothing_is_a_terminal_failure_not_a_loop(self, host_root, baselines_dir, make_runtime,
                                                                          tmp_path):
        write_dpkg(host_root, {"openssl": "3.0.11-1~deb12u2"})
        runs = tmp_path / "runs"
        argv = hook_script(tmp_path, f"echo run >> {runs}\necho 'E: Unable to fetch some archives'\n")
        rt = make_runtime(baselines_dir({"p.yaml": pkg_baseline(OUT_OF_PATCH.replace("ACTION", "hook"))}),
                          patch_hook=argv, state_dir=tmp_path / "state")
        first = {o.address: o for o in run_once(rt.engine, rt.queue, attempts=1).outcomes}["openssl"]
        assert first.status == "failed" and "verification still finds the same drift" in (first.error or "")
        second = {o.address: o for o in run_once(rt.engine, rt.queue, attempts=1).outcomes}["openssl"]
        assert second.status == "failed" and "held" in (second.error or "")
        assert runs.read_text().count("run") == 1  # ran once; the hold stops it until the baseline or the host changes
        rec = [r for r in audit_records(tmp_path / "state") if r["action"] == "patch_hook"]
        assert rec[0]["result"] == "failed" and "same drift" in rec[0]["reason"]

    def test_a_failing_hook_is_audited_with_its_output(self, host_root, baselines_dir, make_runtime, tmp_path):
        write_dpkg(host_root, {"openssl": "3.0.11-1~deb12u2"})
        argv = hook_script(tmp_path, "echo 'E: dpkg was interrupted' >&2\nexit 100\n")
        rt = make_runtime(baselines_dir({"p.yaml": pkg_baseline(OUT_OF_PATCH.replace("ACTION", "hook"))}),
                          patch_hook=argv, state_dir=tmp_path / "state")
        o = {o.address: o for o in run_once(rt.engine, rt.queue, attempts=1).outcomes}["openssl"]
        assert o.status == "failed" and "patch hook exited 100: E: dpkg was interrupted" in (o.error or "")
        rec = [r for r in audit_records(tmp_path / "state") if r["action"] == "patch_hook"]
        assert rec[0]["result"] == "failed" and "dpkg was interrupted" in rec[0]["reason"]

    def test_without_a_patch_hook_the_hook_action_fails_loudly(self, host_root, baselines_dir, make_runtime):
        write_dpkg(host_root, {"openssl": "3.0.11-1~deb12u2"})
        rt = make_runtime(baselines_dir({"p.yaml": pkg_baseline(OUT_OF_PATCH.replace("ACTION", "hook"))}))
        o = {o.address: o for o in run_once(rt.engine, rt.queue, attempts=1).outcomes}["openssl"]
        assert o.status == "failed" and "set patch_hook" in (o.error or "")

    def test_dry_run_never_runs_the_hook(self, host_root, baselines_dir, make_runtime, tmp_path):
        write_dpkg(host_root, {"openssl": "3.0.11-1~deb12u2"})
        runs = tmp_path / "runs"
        argv = hook_script(tmp_path, f"echo run >> {runs}\n")
        rt = make_runtime(baselines_dir({"p.yaml": pkg_baseline(OUT_OF_PATCH.replace("ACTION", "hook"))}),
                          patch_hook=argv, dry_run=True)
        o = {o.address: o for o in run_once(rt.engine, rt.queue, attempts=1).outcomes}["openssl"]
        assert o.status == "reported" and o.actions == ["patch_hook"] and not runs.exists()

    def test_retire_runs_the_retire_hook_once_for_two_packages(self, host_root, baselines_dir, make_runtime, tmp_path):
        """Two packages out of patch with action retire: one retirement of the machine, not two, and none again."""
        write_dpkg(host_root, {"openssl": "3.0.11-1~deb12u2", "openssh-server": "1:9.2p1-2+deb12u2"})
        log = tmp_path / "retired"
        argv = hook_script(tmp_path, f'echo "$DRIFTD_REASON" >> {log}\n')
        rules = ('  - {name: openssl, minimum: "3.0.15-1~deb12u1", action: retire, severity: critical}\n'
                 '  - {name: openssh-server, minimum: "1:9.2p1-2+deb12u3", action: retire, reason: CVE-2024-6387}')
        rt = make_runtime(baselines_dir({"p.yaml": pkg_baseline(rules)}), retire_hook=argv)
        s = run_once(rt.engine, rt.queue, attempts=1)
        assert sorted(o.status for o in s.outcomes) == ["retired", "retired"]
        assert len(log.read_text().splitlines()) == 1 and "is out of patch" in log.read_text()
        assert any("node already retired for host:package:" in (o.error or "") for o in s.outcomes)
        run_once(rt.engine, rt.queue, attempts=1)
        assert len(log.read_text().splitlines()) == 1

    def test_retirement_waits_for_the_finding_to_persist(self, host_root, baselines_dir, make_runtime, tmp_path):
        """retire.after applies: a package just found out of patch is held, then retired once it persisted."""
        from driftd.engine.clock import FakeClock

        write_dpkg(host_root, {"openssl": "3.0.11-1~deb12u2"})
        log = tmp_path / "retired"
        argv = hook_script(tmp_path, f'echo "$DRIFTD_REASON" >> {log}\n')
        clock = FakeClock()
        rt = make_runtime(baselines_dir({"p.yaml": pkg_baseline(OUT_OF_PATCH.replace("ACTION", "retire"))}),
                          retire_hook=argv, clock=clock, safety={"retire": {"after_seconds": 600}})
        o = {o.address: o for o in run_once(rt.engine, rt.queue, attempts=1).outcomes}["openssl"]
        assert o.status == "held" and "retire" in (o.error or "") and not log.exists()
        clock.advance(601)
        o = {o.address: o for o in run_once(rt.engine, rt.queue, attempts=1).outcomes}["openssl"]
        assert o.status == "retired" and log.exists()

    def test_a_host_without_a_database_is_blocked_not_crashed(self, host_root, baselines_dir, make_runtime):
        rt = make_runtime(baselines_dir({"p.yaml": pkg_baseline(OUT_OF_PATCH.replace("ACTION", "retire"))}))
        s = run_once(rt.engine, rt.queue, attempts=1)
        assert {o.status for o in s.outcomes} == {"blocked"}
        assert all("no package database under the host root" in (o.error or "") for o in s.outcomes)

    def test_an_unreadable_baseline_version_blocks_instead_of_retiring(self, host_root, baselines_dir, make_runtime, tmp_path):
        write_dpkg(host_root, {"openssl": "3.0.11-1~deb12u2"})
        log = tmp_path / "retired"
        argv = hook_script(tmp_path, f"echo x >> {log}\n")
        rules = '  - {name: openssl, minimum: "3.0.15:x", action: retire}'  # a colon is the epoch separator
        rt = make_runtime(baselines_dir({"p.yaml": pkg_baseline(rules)}), retire_hook=argv)
        o = run_once(rt.engine, rt.queue, attempts=1).outcomes[0]
        assert o.status == "blocked" and "not a valid deb version" in (o.error or "") and not log.exists()

    def test_an_rpm_host_end_to_end(self, host_root, baselines_dir, make_runtime, tmp_path):
        """The same rule on an RPM host (a database the real rpm wrote): compared with rpm's rules."""
        rpm_root(host_root, tmp_path / "work", [("openssl-libs", "3.0.7", "24.el9", 1), ("sudo", "1.9.5p2", "10.el9_3", None)])
        rules = ('  - {name: openssl-libs, minimum: "1:3.0.7-27.el9", severity: high}\n'
                 '  - {name: sudo, minimum: "1.9.5p2-9.el9"}')
        rt = make_runtime(baselines_dir({"p.yaml": pkg_baseline(rules)}))
        s = run_once(rt.engine, rt.queue, attempts=1)
        assert {o.address: o.status for o in s.outcomes} == {"openssl-libs": "reported"} and s.counts["clean"] == 1
        rpm_cmd(host_root, "-e", "--nodeps", "--justdb", "openssl-libs")  # the package manager changes the database
        s = run_once(rt.engine, rt.queue, attempts=1)  # re-read after the change; nothing installed is compliant
        assert s.exit_code == ExitCode.CLEAN and rt.state.active() == {}

    def test_an_alpine_host_end_to_end(self, host_root, baselines_dir, make_runtime):
        (host_root / "lib/apk/db").mkdir(parents=True)
        shutil.copy(FIXTURES / "packages/alpine-installed", host_root / "lib/apk/db/installed")
        musl = parse_apk_installed((FIXTURES / "packages/alpine-installed").read_bytes())["musl"]
        rules = (f'  - {{name: musl, minimum: "{musl}"}}\n'
                 f'  - {{name: busybox, minimum: "99.0-r0", severity: critical}}')
        rt = make_runtime(baselines_dir({"p.yaml": pkg_baseline(rules)}))
        s = run_once(rt.engine, rt.queue, attempts=1)
        assert {o.address: o.status for o in s.outcomes} == {"busybox": "reported"} and s.counts["clean"] == 1


class TestLintAndCapture:
    def test_two_baselines_claiming_one_package_collide(self, baselines_dir):
        from driftd.baselines.loader import load_set

        rules = '  - {name: openssl, minimum: "3.0.15-1"}'
        bset, problems = load_set(baselines_dir({"a.yaml": pkg_baseline(rules, name="a"),
                                                 "b.yaml": pkg_baseline(rules, name="b")}))
        assert bset is None and any("package openssl" in str(p) for p in problems)

    def test_capture_writes_a_packages_rule_that_loads_and_holds_this_host(self, host_root, baselines_dir, make_runtime,
                                                                           tmp_path):
        from driftd.cli import main

        write_dpkg(host_root, {"openssl": "3.0.15-1~deb12u1", "sudo": "1.9.13p3-1+deb12u1"})
        out = tmp_path / "captured"
        rc = main(["baseline", "capture", "packages", "openssl", "sudo", "--absent", "telnetd", "--host-root",
                   str(host_root), "--name", "known-good", "--severity", "high", "-o", str(out)])
        assert rc == 0
        doc = HostBaseline.model_validate(__import__("yaml").safe_load((out / "known-good.yaml").read_text()))
        assert {(r.name, r.minimum, r.absent) for r in doc.spec.packages} == {
            ("openssl", "3.0.15-1~deb12u1", False), ("sudo", "1.9.13p3-1+deb12u1", False), ("telnetd", None, True)}
        rt = make_runtime(out)
        assert run_once(rt.engine, rt.queue, attempts=1).exit_code == ExitCode.CLEAN  # the known-good host passes
        write_dpkg(host_root, {"openssl": "3.0.11-1~deb12u2", "sudo": "1.9.13p3-1+deb12u1"})
        assert run_once(rt.engine, rt.queue, attempts=1).exit_code == ExitCode.DRIFT_REMAINED

    def test_capture_refuses_an_absent_package_this_host_has(self, host_root, tmp_path, capsys):
        from driftd.cli import main

        write_dpkg(host_root, {"telnetd": "0.17+2.4-2"})
        rc = main(["baseline", "capture", "packages", "--absent", "telnetd", "--host-root", str(host_root),
                   "--name", "x", "-o", str(tmp_path / "o")])
        assert rc == ExitCode.ERROR and "telnetd must be absent but this host has it" in capsys.readouterr().err
        assert read_packages(host_root).versions == {"telnetd": "0.17+2.4-2"}


def test_the_handler_is_pure_over_an_observation():
    """diff + plan of the kind with no I/O: what the engine runs, over a hand-made observation."""
    from driftd.core.plan import plan

    b = HostBaseline.model_validate({"apiVersion": "driftd.io/v1alpha1", "kind": "HostBaseline", "metadata": {"name": "x"},
                                     "spec": {"packages": [{"name": "openssl", "minimum": "3.0.15-1", "action": "retire"}]}})
    h = find("host", "package")
    assert h is not None
    d: DesiredResource = h.compile(b, b.spec.packages[0], {})
    obs = ObservedResource(key=d.key, actual={"format": "deb", "installed": "3.0.11-1", "database": "/var/lib/dpkg/status"})
    drift = diff(d, obs)
    assert [f.field for f in drift] == ["installed"]
    p = plan(d, obs, drift)
    assert [a.action.value for a in p.actions] == ["retire_node"] and "out of patch" in p.actions[0].reason
    assert diff(d, obs.model_copy(update={"actual": {**obs.actual, "installed": "3.0.15-1"}})) == ()


class TestDaemon:
    def test_a_package_installed_below_its_floor_is_patched_by_the_hook_without_waiting_for_the_scan(
            self, host_root, baselines_dir, make_runtime, tmp_path):
        """The daemon (hourly scan): dpkg writing an old openssl into its status reaches the packages rule through
        inotify, the patch hook runs once, the re-read database is compliant, and no second scan ran."""
        from conftest import poll

        from driftd.engine.daemon import BaselineManager, Daemon
        from driftd.engine.queue import KeyedQueue

        status = write_dpkg(host_root, {"openssl": "3.0.15-1~deb12u1"})
        fixed = tmp_path / "fixed"
        fixed.write_text(dpkg_stanza("openssl", "3.0.15-1~deb12u1"))
        runs = tmp_path / "runs"
        argv = hook_script(tmp_path, f'echo "$DRIFTD_PACKAGE" >> {runs}\n'
                                     f'cp {fixed} "$DRIFTD_HOST_ROOT/{DPKG_STATUS}-new" && '
                                     f'mv "$DRIFTD_HOST_ROOT/{DPKG_STATUS}-new" "$DRIFTD_HOST_ROOT/{DPKG_STATUS}"\n')
        rt = make_runtime(baselines_dir({"p.yaml": pkg_baseline(OUT_OF_PATCH.replace("ACTION", "hook"))}),
                          registry=CollectorRegistry(), patch_hook=argv, state_dir=tmp_path / "state",
                          scan={"interval_seconds": 3600, "jitter_seconds": 0})
        manager = BaselineManager(rt.settings, rt.engine, rt.metrics, rt.engine.clock)
        manager.prime()
        d = Daemon(settings=rt.settings, engine=rt.engine, queue=KeyedQueue(), metrics=rt.metrics, manager=manager,
                   api=None)
        d.start()
        try:
            poll(lambda: d.scans_done == 1, "the first scan", 10)
            assert d.host_watcher is not None and d.host_watcher.wait_armed(10)
            new = status.with_name("status-new")
            new.write_text(dpkg_stanza("openssl", "3.0.11-1~deb12u2"))  # a downgrade, as `apt install openssl=...`
            new.rename(status)
            poll(lambda: runs.exists() and "3.0.15-1~deb12u1" in status.read_text(), "the patch hook", 10)
            poll(lambda: rt.state.active() == {}, "the drift to be resolved", 10)
            assert runs.read_text().split() == ["openssl"] and d.scans_done == 1
            hooks = [r for r in audit_records(tmp_path / "state") if r["action"] == "patch_hook"]
            assert [h["result"] for h in hooks] == ["succeeded"]
        finally:
            d.stop()
