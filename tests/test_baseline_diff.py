"""``driftd baseline diff OLD NEW``: what changed between two baseline sets, field by field.

The pure diff (``driftd.baselines.diff``) over sets loaded from real directories, and the
command line over directories and git revisions of a real temporary repository.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import host_baseline

from driftd.baselines.diff import SetDiff, diff_sets
from driftd.baselines.loader import load_set
from driftd.cli import main

SSHD = host_baseline("cis-sshd", spec="""
    files:
      - {path: /etc/ssh/sshd_config, source: files/sshd_config, mode: "0644", owner: root}
      - {path: /etc/motd, content: "hello\\n"}
    directories:
      - {path: /etc/ssh, mode: "0755"}
    sysctls:
      - {key: net.ipv4.ip_forward, value: "0"}
""")
DIGEST = "registry.example.com/app@sha256:" + "a" * 64
OTHER_DIGEST = "registry.example.com/app@sha256:" + "b" * 64
CONTAINER = f"""\
apiVersion: driftd.io/v1alpha1
kind: ContainerBaseline
metadata: {{name: hardened}}
spec:
  selector: {{matchLabels: {{driftd.io/profile: hardened}}}}
  images: {{approved: ["{DIGEST}"]}}
  runtime: {{privileged: false, capDrop: [ALL]}}
"""
POD = """\
apiVersion: driftd.io/v1alpha1
kind: PodBaseline
metadata: {name: restricted}
spec:
  security: {runAsNonRoot: true, privileged: false}
  resources: {requireLimits: [memory]}
"""
SECRET = "s3cr3t-Passw0rd-do-not-print"


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text) if isinstance(text, bytes) else p.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def two_sets(baselines_dir: Callable[..., Path], tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """OLD: a copy of the set as first written; NEW: the same directory after ``change`` (files to write, None = delete)."""

    def make(first: dict[str, str | bytes], change: dict[str, str | bytes | None]) -> tuple[Path, Path]:
        new = baselines_dir(first)
        old = tmp_path / "old"
        shutil.copytree(new, old)
        for name, text in change.items():
            if text is None:
                (new / name).unlink()
            else:
                write(new, {name: text})
        return old, new

    return make


def diff_of(old: Path, new: Path) -> SetDiff:
    a, pa = load_set(old)
    b, pb = load_set(new)
    assert a is not None, pa
    assert b is not None, pb
    return diff_sets(a, b)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["baseline", "diff", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], old: Path | str, new: Path | str, *more: str) -> tuple[int, Any]:
    code, out, _ = run(capsys, str(old), str(new), "-o", "json", *more)
    return code, json.loads(out)


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in doc["baselines"]}


def rules_of(doc: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    return {r["rule"]: r for r in by_name(doc)[name]["rules"]}


BASE = {"sshd.yaml": SSHD, "files/sshd_config": "PermitRootLogin no\n"}


class TestIdentical:
    def test_identical_sets_no_diff_exit_0(self, two_sets, capsys):
        """Two sets with the same bytes: nothing listed, zero summary, exit 0."""
        old, new = two_sets({**BASE, "c.yaml": CONTAINER, "p.yaml": POD}, {})
        assert not diff_of(old, new).changed
        code, out, _ = run(capsys, str(old), str(new))
        assert code == 0
        assert out.splitlines()[2:] == ["0 baselines changed: 0 added, 0 removed, 0 changed; "
                                        "rules: 0 added, 0 removed, 0 changed; settings: 0 changed"]

    def test_reformatted_yaml_is_no_difference(self, two_sets, capsys):
        """Only meaning counts: the same baseline in another YAML layout (and a default spelled out) is no change."""
        old, new = two_sets(BASE, {"sshd.yaml": SSHD.replace("spec:\n", "spec:\n  window: 30m\n").replace(
            '{key: net.ipv4.ip_forward, value: "0"}', "{value: 0, key: net.ipv4.ip_forward}")})
        assert diff_of(old, new).baselines == ()
        assert run(capsys, str(old), str(new))[0] == 0


class TestBaselines:
    def test_added_removed_changed_baselines(self, two_sets, capsys):
        """Baselines are matched by metadata.name and listed with their kind and change."""
        old, new = two_sets({**BASE, "p.yaml": POD}, {
            "p.yaml": None,
            "c.yaml": CONTAINER,
            "sshd.yaml": SSHD.replace("enforcement: enforce", "enforcement: warn"),
        })
        code, doc = run_json(capsys, old, new)
        assert code == 3
        got = {(b["name"], b["kind"], b["change"]) for b in doc["baselines"]}
        assert got == {("restricted", "PodBaseline", "removed"), ("hardened", "ContainerBaseline", "added"),
                       ("cis-sshd", "HostBaseline", "changed")}
        assert doc["summary"]["baselines"] == {"added": 1, "removed": 1, "changed": 1}
        code, out, _ = run(capsys, str(old), str(new))
        assert code == 3
        assert "+ ContainerBaseline hardened" in out
        assert "- PodBaseline restricted" in out
        assert "~ HostBaseline cis-sshd" in out
        assert out.rstrip().endswith("3 baselines changed: 1 added, 1 removed, 1 changed; "
                                     "rules: 0 added, 0 removed, 0 changed; settings: 1 changed")

    def test_added_host_baseline_lists_its_rules(self, two_sets, capsys):
        """A new host baseline shows every rule it adds, each named by its claim."""
        old, new = two_sets({"p.yaml": POD}, BASE)
        code, doc = run_json(capsys, old, new)
        assert code == 3
        assert {r: v["change"] for r, v in rules_of(doc, "cis-sshd").items()} == {
            "path /etc/ssh/sshd_config": "added", "path /etc/motd": "added", "path /etc/ssh": "added",
            "sysctl net.ipv4.ip_forward": "added"}
        assert doc["summary"]["rules"] == {"added": 4, "removed": 0, "changed": 0}

    def test_kind_change_under_one_name_is_removed_and_added(self, two_sets, capsys):
        """The same name under another kind is a different baseline: one removed, one added."""
        old, new = two_sets({"p.yaml": POD}, {"p.yaml": CONTAINER.replace("name: hardened", "name: restricted")})
        _, doc = run_json(capsys, old, new)
        assert [(b["kind"], b["change"]) for b in doc["baselines"]] == [("PodBaseline", "removed"),
                                                                         ("ContainerBaseline", "added")]


class TestRules:
    def test_rule_added_removed_changed(self, two_sets, capsys):
        """Rules are identified by what they govern; a mode change reads `mode: 0644 -> 0600`."""
        changed = (SSHD.replace('mode: "0644"', 'mode: "0600"')
                   .replace('net.ipv4.ip_forward, value: "0"', 'net.ipv4.tcp_syncookies, value: "1"'))
        old, new = two_sets(BASE, {"sshd.yaml": changed})
        code, out, _ = run(capsys, str(old), str(new))
        assert code == 3
        lines = out.splitlines()
        assert "    ~ path /etc/ssh/sshd_config (file)" in lines
        assert "        mode: 0644 -> 0600" in lines
        assert "    + sysctl net.ipv4.tcp_syncookies" in lines
        assert "    - sysctl net.ipv4.ip_forward" in lines
        assert "rules: 1 added, 1 removed, 1 changed" in lines[-1]
        _, doc = run_json(capsys, old, new)
        rules = rules_of(doc, "cis-sshd")
        assert rules["path /etc/ssh/sshd_config"] == {
            "rule": "path /etc/ssh/sshd_config", "kind": "file", "change": "changed",
            "fields": [{"field": "mode", "old": "0644", "new": "0600"}]}
        assert rules["sysctl net.ipv4.tcp_syncookies"]["fields"] == [{"field": "value", "old": None, "new": "1"}]
        assert rules["sysctl net.ipv4.ip_forward"]["change"] == "removed"
        assert "path /etc/motd" not in rules  # unchanged rules are not listed

    def test_owner_unset_and_several_fields_align(self, two_sets, capsys):
        """Several fields of one rule: each `field: old -> new`, unset shown as (unset), names aligned on the colon."""
        changed = SSHD.replace('mode: "0644", owner: root', 'mode: "0600", group: root')
        old, new = two_sets(BASE, {"sshd.yaml": changed})
        _, out, _ = run(capsys, str(old), str(new))
        assert "         mode: 0644 -> 0600" in out.splitlines()
        assert "        owner: root -> (unset)" in out.splitlines()
        assert "        group: (unset) -> root" in out.splitlines()

    def test_file_becoming_a_directory(self, two_sets, capsys):
        """The same path claimed by another kind of rule is a changed rule whose kind changed."""
        changed = SSHD.replace('    - {path: /etc/motd, content: "hello\\n"}\n', "").replace(
            '    - {path: /etc/ssh, mode: "0755"}\n', '    - {path: /etc/ssh, mode: "0755"}\n    - {path: /etc/motd}\n')
        assert changed.count("/etc/motd") == 1
        old, new = two_sets(BASE, {"sshd.yaml": changed})
        _, doc = run_json(capsys, old, new)
        rule = rules_of(doc, "cis-sshd")["path /etc/motd"]
        assert rule["change"] == "changed"
        assert rule["fields"][0] == {"field": "kind", "old": "file", "new": "directory"}
        assert {"field": "content", "old": "hello\n", "new": None} in rule["fields"]


class TestContent:
    def test_source_bytes_changed_same_path_is_content_change(self, two_sets, capsys):
        """New bytes behind the same `source:` path change the rule's content (by the loader's digests)."""
        old, new = two_sets(BASE, {"files/sshd_config": "PermitRootLogin yes\n"})
        d = diff_of(old, new)
        [b] = d.baselines
        [r] = b.rules
        assert (r.rule, r.change) == ("path /etc/ssh/sshd_config", "changed")
        [f] = r.fields
        sets = load_set(old)[0], load_set(new)[0]
        assert sets[0] is not None and sets[1] is not None
        key = ("cis-sshd", "files/sshd_config")
        assert (f.field, f.old, f.new) == ("content", f"sha256:{sets[0].source_digests[key][:16]}",
                                           f"sha256:{sets[1].source_digests[key][:16]}")
        code, out, _ = run(capsys, str(old), str(new))
        assert code == 3
        assert f"content: {f.old} -> {f.new}" in out

    def test_inline_content_change_shows_old_and_new(self, two_sets, capsys):
        old, new = two_sets(BASE, {"sshd.yaml": SSHD.replace('content: "hello\\n"', 'content: "bye\\n"')})
        _, out, _ = run(capsys, str(old), str(new))
        assert '        content: "hello\\n" -> "bye\\n"' in out.splitlines()

    def test_moving_same_bytes_to_another_source_path_is_not_a_content_change(self, two_sets, capsys):
        """Renaming the source file keeps the bytes: only `source:` changed."""
        old, new = two_sets(BASE, {"sshd.yaml": SSHD.replace("files/sshd_config", "files/sshd.conf"),
                                   "files/sshd.conf": "PermitRootLogin no\n"})
        _, doc = run_json(capsys, old, new)
        assert rules_of(doc, "cis-sshd")["path /etc/ssh/sshd_config"]["fields"] == [
            {"field": "source", "old": "files/sshd_config", "new": "files/sshd.conf"}]

    @pytest.mark.parametrize("how", ["source", "inline"])
    def test_sensitive_content_never_printed(self, two_sets, capsys, how):
        """A sensitive file's content (inline or source bytes) and its digest appear in neither output."""
        if how == "source":
            spec = "files:\n  - {path: /etc/app/token, source: token, mode: '0600', sensitive: true}\n"
            first = {"s.yaml": host_baseline("secrets", spec=spec), "token": "old-token-value\n"}
            change: dict[str, str | bytes | None] = {"token": SECRET + "\n"}
        else:
            spec = "files:\n  - {path: /etc/app/token, content: 'old-token-value', sensitive: true}\n"
            first = {"s.yaml": host_baseline("secrets", spec=spec)}
            change = {"s.yaml": host_baseline("secrets", spec=spec.replace("old-token-value", SECRET))}
        old, new = two_sets(first, change)
        new_set = load_set(new)[0]
        assert new_set is not None
        digests = [d[:16] for d in new_set.source_digests.values()]
        code, out, _ = run(capsys, str(old), str(new))
        assert code == 3
        assert "        content: <changed, sensitive>" in out.splitlines()
        code, raw, _ = run(capsys, str(old), str(new), "-o", "json")
        assert code == 3
        for text in (out, raw):
            assert SECRET not in text
            assert "old-token-value" not in text
            assert not any(d in text for d in digests)
        [f] = rules_of(json.loads(raw), "secrets")["path /etc/app/token"]["fields"]
        assert f == {"field": "content", "old": "<sensitive>", "new": "<sensitive>", "sensitive": True}

    def test_added_sensitive_file_never_printed(self, two_sets, capsys):
        spec = f"files:\n  - {{path: /etc/app/token, content: '{SECRET}', sensitive: true}}\n"
        old, new = two_sets(BASE, {"s.yaml": host_baseline("secrets", spec=spec)})
        code, out, _ = run(capsys, str(old), str(new))
        assert code == 3 and "+ HostBaseline secrets" in out
        assert "content: <sensitive>" in out
        raw = run(capsys, str(old), str(new), "-o", "json")[1]
        assert SECRET not in out and SECRET not in raw


class TestSettings:
    def test_spec_level_enforcement_change(self, two_sets, capsys):
        """Spec-level settings diff by dotted path: `spec.enforcement: warn -> enforce`."""
        old, new = two_sets({**BASE, "sshd.yaml": SSHD.replace("enforcement: enforce", "enforcement: warn")},
                            {"sshd.yaml": SSHD.replace("spec:\n", "spec:\n  window: 1h30m\n  grace: 2m\n"
                                                       "  selector: {hostnames: ['web-*']}\n")})
        code, out, _ = run(capsys, str(old), str(new))
        assert code == 3
        lines = out.splitlines()
        assert "    ~        spec.enforcement: warn -> enforce" in lines  # aligned on the colon
        assert "    ~             spec.window: 30m -> 1h30m" in lines
        assert "    ~              spec.grace: 0s -> 2m" in lines
        assert '    ~ spec.selector.hostnames: [] -> ["web-*"]' in lines
        assert lines[-1].endswith("rules: 0 added, 0 removed, 0 changed; settings: 4 changed")

    def test_container_baseline_fields(self, two_sets, capsys):
        """A ContainerBaseline's spec diffs field by field by dotted path."""
        changed = (CONTAINER.replace("privileged: false", "privileged: true, env: {MODE: prod}")
                   .replace(DIGEST, OTHER_DIGEST).replace("selector: {", "ungoverned: retire\n  selector: {"))
        old, new = two_sets({"c.yaml": CONTAINER}, {"c.yaml": changed})
        code, doc = run_json(capsys, old, new)
        assert code == 3
        [b] = doc["baselines"]
        assert (b["name"], b["kind"], b["change"], b["rules"]) == ("hardened", "ContainerBaseline", "changed", [])
        assert b["fields"] == [
            {"field": "spec.images.approved", "old": [DIGEST], "new": [OTHER_DIGEST]},
            {"field": "spec.runtime.privileged", "old": False, "new": True},
            {"field": "spec.runtime.env.MODE", "old": None, "new": "prod"},  # in the model's order
            {"field": "spec.ungoverned", "old": "report", "new": "retire"},
        ]
        _, out, _ = run(capsys, str(old), str(new))
        assert "spec.runtime.privileged: false -> true" in out

    def test_pod_baseline_fields(self, two_sets, capsys):
        changed = POD.replace("runAsNonRoot: true", "runAsNonRoot: false").replace("[memory]", "[cpu, memory]")
        changed += "  allowedHostPaths: null\n"
        old, new = two_sets({"p.yaml": POD}, {"p.yaml": changed})
        _, doc = run_json(capsys, old, new)
        assert by_name(doc)["restricted"]["fields"] == [
            {"field": "spec.security.runAsNonRoot", "old": True, "new": False},
            {"field": "spec.allowedHostPaths", "old": [], "new": None},
            {"field": "spec.resources.requireLimits", "old": ["memory"], "new": ["cpu", "memory"]},
        ]
        _, out, _ = run(capsys, str(old), str(new))
        assert "spec.allowedHostPaths: [] -> (unset)" in out

    def test_metadata_labels(self, two_sets, capsys):
        old, new = two_sets({"p.yaml": POD}, {"p.yaml": POD.replace("{name: restricted}",
                                                                    "{name: restricted, labels: {team: sec}}")})
        _, doc = run_json(capsys, old, new)
        assert by_name(doc)["restricted"]["fields"] == [{"field": "metadata.labels.team", "old": None, "new": "sec"}]


class TestJson:
    def test_json_structure(self, two_sets, capsys):
        """The documented structure: old/new versions, baselines with rules and fields, every count present."""
        old, new = two_sets(BASE, {"sshd.yaml": SSHD.replace('mode: "0755"', 'mode: "0700"')})
        code, doc = run_json(capsys, old, new)
        assert code == 3
        a, b = load_set(old)[0], load_set(new)[0]
        assert a is not None and b is not None
        assert doc == {
            "old": {"version": a.version, "ref": str(old)},
            "new": {"version": b.version, "ref": str(new)},
            "baselines": [{
                "name": "cis-sshd", "kind": "HostBaseline", "change": "changed", "fields": [],
                "rules": [{"rule": "path /etc/ssh", "kind": "directory", "change": "changed",
                           "fields": [{"field": "mode", "old": "0755", "new": "0700"}]}],
            }],
            "summary": {"baselines": {"added": 0, "removed": 0, "changed": 1},
                        "rules": {"added": 0, "removed": 0, "changed": 1}, "fields": 0},
        }

    def test_json_no_differences(self, two_sets, capsys):
        old, new = two_sets(BASE, {})
        code, doc = run_json(capsys, old, new)
        assert code == 0
        assert doc["baselines"] == []
        assert doc["summary"] == {"baselines": {"added": 0, "removed": 0, "changed": 0},
                                  "rules": {"added": 0, "removed": 0, "changed": 0}, "fields": 0}


def git(repo: Path, *argv: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com",
                           "-c", "commit.gpgsign=false", *argv], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A real git repository: commit 1 the set, commit 2 a mode change and new source bytes."""
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q")
    write(r / "baselines", BASE)
    (r / "README").write_text("not a baseline\n")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "one")
    write(r / "baselines", {"sshd.yaml": SSHD.replace('mode: "0644"', 'mode: "0600"'),
                            "files/sshd_config": "PermitRootLogin prohibit-password\n"})
    git(r, "commit", "-q", "-am", "two")
    return r


class TestGit:
    def test_revision_vs_revision(self, repo, capsys, monkeypatch):
        """`HEAD~1:baselines` vs `HEAD:baselines`, resolved in --repo, source files included."""
        monkeypatch.chdir(repo.parent)
        code, out, _ = run(capsys, "HEAD~1:baselines", "HEAD:baselines", "--repo", str(repo))
        assert code == 3
        lines = out.splitlines()
        assert lines[0].startswith("--- HEAD~1:baselines (version ")
        assert lines[1].startswith("+++ HEAD:baselines (version ")
        assert "    ~ path /etc/ssh/sshd_config (file)" in lines
        assert "           mode: 0644 -> 0600" in lines
        assert any(ln.strip().startswith("content: sha256:") for ln in lines)
        assert lines[-1].startswith("1 baseline changed: 0 added, 0 removed, 1 changed; rules: 0 added, 0 removed, 1 changed")

    def test_revision_versions_match_a_checkout(self, repo, capsys, monkeypatch):
        """A revision read into a temporary directory loads to the same set (same version) as the working tree."""
        monkeypatch.chdir(repo)
        code, doc = run_json(capsys, "HEAD:baselines", "baselines")
        assert code == 0
        bset = load_set(repo / "baselines")[0]
        assert bset is not None
        assert doc["old"]["version"] == doc["new"]["version"] == bset.version

    def test_revision_vs_working_directory(self, repo, capsys, monkeypatch):
        """An uncommitted change in the working directory against HEAD (the cwd is the repository)."""
        monkeypatch.chdir(repo)
        write(repo / "baselines", {"files/sshd_config": "PermitRootLogin no\n"})
        code, doc = run_json(capsys, "HEAD:baselines", "baselines")
        assert code == 3
        [f] = rules_of(doc, "cis-sshd")["path /etc/ssh/sshd_config"]["fields"]
        assert f["field"] == "content"
        code, doc = run_json(capsys, "HEAD~1:baselines", "baselines")  # back to commit 1's bytes, mode still 0600
        assert rules_of(doc, "cis-sshd")["path /etc/ssh/sshd_config"]["fields"] == [
            {"field": "mode", "old": "0644", "new": "0600"}]

    def test_existing_directory_wins_over_revision_spelling(self, repo, capsys, monkeypatch, tmp_path):
        """A directory literally named like REV:PATH is read as a directory."""
        work = tmp_path / "work"
        shutil.copytree(repo / "baselines", work / "HEAD:baselines")
        write(work / "HEAD:baselines", {"sshd.yaml": SSHD.replace('mode: "0755"', 'mode: "0711"')})
        monkeypatch.chdir(work)
        _, doc = run_json(capsys, "HEAD:baselines", str(repo / "baselines"), "--repo", str(repo))
        assert rules_of(doc, "cis-sshd")["path /etc/ssh"]["fields"] == [{"field": "mode", "old": "0711", "new": "0755"}]

    def test_unknown_revision_exits_1(self, repo, capsys):
        code, out, err = run(capsys, "no-such-branch:baselines", "HEAD:baselines", "--repo", str(repo))
        assert code == 1 and out == ""
        assert "no-such-branch:baselines" in err

    def test_revision_of_a_file_exits_1(self, repo, capsys):
        code, _, err = run(capsys, "HEAD:README", "HEAD:baselines", "--repo", str(repo))
        assert code == 1
        assert "not a directory" in err

    def test_invalid_set_in_a_revision_names_its_file(self, repo, capsys):
        write(repo / "baselines", {"sshd.yaml": SSHD.replace("mode: \"0755\"", "mdoe: \"0755\"")})
        git(repo, "commit", "-q", "-am", "three: a typo")
        code, out, err = run(capsys, "HEAD~1:baselines", "HEAD:baselines", "--repo", str(repo))
        assert code == 1 and out == ""
        assert "HEAD:baselines/sshd.yaml:" in err
        assert ": spec.directories[0].mdoe: unknown field" in err
        assert "driftd-baseline-diff-" not in err  # the temporary directory is not shown


class TestErrors:
    def test_invalid_new_set_exits_1_naming_file_and_field(self, two_sets, capsys):
        """A NEW set that does not load: its problems as FILE:LINE: field: reason, exit 1, no diff printed."""
        old, new = two_sets(BASE, {"sshd.yaml": SSHD.replace('mode: "0644"', 'mode: "0999"')})
        code, out, err = run(capsys, str(old), str(new))
        assert code == 1
        assert out == ""
        assert f"{new}/sshd.yaml:8: spec.files[0].mode:" in err
        assert "invalid mode" in err

    def test_missing_directory_exits_1(self, tmp_path, capsys, baselines_dir):
        code, _, err = run(capsys, str(tmp_path / "nope"), str(baselines_dir(BASE)))
        assert code == 1
        assert "not found" in err

    def test_usage_exits_2(self, capsys, baselines_dir):
        with pytest.raises(SystemExit) as e:
            main(["baseline", "diff", str(baselines_dir(BASE))])
        assert e.value.code == 2
        code, _, err = run(capsys, ":baselines", str(baselines_dir(BASE)))
        assert code == 2 and "REV:PATH" in err

    def test_help_documents_exit_codes(self, capsys):
        with pytest.raises(SystemExit):
            main(["baseline", "diff", "--help"])
        out = capsys.readouterr().out
        assert "3 differences found" in out
        assert "REV:PATH" in out
