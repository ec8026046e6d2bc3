"""Baseline loading and lint: every problem named as FILE:LINE: field: reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import host_baseline

from driftd.baselines.loader import fingerprint, json_schema, load_set
from driftd.cli import main

REPO = Path(__file__).resolve().parent.parent


def problems_of(bdir: Path) -> list[str]:
    bset, problems = load_set(bdir)
    assert bset is None
    return [str(p) for p in problems]


class TestExampleBaselines:
    def test_shipped_examples_are_valid(self):
        """The baselines shipped in baselines/ lint clean."""
        bset, problems = load_set(REPO / "baselines")
        assert bset is not None, problems
        assert {b.metadata.name for b in bset.baselines} >= {"cis-sshd", "cis-sysctl"}
        assert len(bset.version) == 12

    def test_lint_cli_exit_zero_on_valid_set(self, capsys):
        """`driftd baseline lint` exits 0 on a valid set."""
        assert main(["baseline", "lint", str(REPO / "baselines")]) == 0

    def test_version_changes_with_any_byte(self, baselines_dir):
        """The set version is a content hash: changing a source file changes it."""
        bdir = baselines_dir({"a.yaml": host_baseline(spec="""
            files:
              - {path: /etc/motd, source: motd}
        """), "motd": "one\n"})
        v1 = load_set(bdir)[0].version
        (bdir / "motd").write_text("two\n")
        v2 = load_set(bdir)[0].version
        assert v1 != v2


class TestLintMessages:
    def test_unknown_field_names_file_line_and_field(self, baselines_dir):
        """A typo in a field is rejected with its file, line and dotted field path."""
        bdir = baselines_dir({"a.yaml": host_baseline(spec="""
            files:
              - path: /etc/motd
                mdoe: "0644"
        """)})
        msgs = problems_of(bdir)
        assert msgs == [f"{bdir}/a.yaml:9: spec.files[0].mdoe: unknown field"]

    def test_bad_mode_and_window(self, baselines_dir):
        """Unquoted modes and malformed windows get a reason that says what to write."""
        bdir = baselines_dir({"a.yaml": host_baseline(spec="""
            window: soon
            files:
              - path: /etc/motd
                mode: 644
        """)})
        msgs = problems_of(bdir)
        assert any(":7: spec.window: invalid duration 'soon'" in m for m in msgs), msgs
        assert any(":10: spec.files[0].mode: mode must be a quoted octal string" in m for m in msgs), msgs

    @pytest.mark.parametrize("path", ["/etc/../../outside", "etc/relative", "/etc/./x", "/etc//x"])
    def test_paths_that_escape_or_are_not_normal_are_errors(self, baselines_dir, path):
        """Paths with '..', '.', '//' or no leading '/' are lint errors on the path field."""
        bdir = baselines_dir({"a.yaml": host_baseline(spec=f"""
            files:
              - path: "{path}"
                absent: true
        """)})
        (msg,) = problems_of(bdir)
        assert msg.startswith(f"{bdir}/a.yaml:8: spec.files[0].path: ")

    def test_duplicate_claim_across_baselines(self, baselines_dir):
        """The same file in two baselines is a duplicate claim; different values are a conflict."""
        bdir = baselines_dir({
            "a.yaml": host_baseline("a", """
                files:
                  - {path: /etc/motd, mode: "0644"}
                  - {path: /etc/issue, mode: "0644"}
            """),
            "b.yaml": host_baseline("b", """
                files:
                  - {path: /etc/motd, mode: "0644"}
                  - {path: /etc/issue, mode: "0600"}
            """),
        })
        msgs = problems_of(bdir)
        assert f"{bdir}/b.yaml:8: spec.files[0].path: duplicate claim on path /etc/motd: also governed by baseline 'a' ({bdir}/a.yaml:8)" in msgs
        assert any("b.yaml:9: spec.files[1].path: conflicting claim on path /etc/issue" in m for m in msgs), msgs

    def test_disjoint_selectors_may_claim_the_same_file(self, baselines_dir):
        """Two baselines for disjoint host sets can both govern a path."""
        bdir = baselines_dir({
            "a.yaml": host_baseline("a", """
                selector: {hostnames: [web-1]}
                files: [{path: /etc/motd, mode: "0644"}]
            """),
            "b.yaml": host_baseline("b", """
                selector: {hostnames: [db-1]}
                files: [{path: /etc/motd, mode: "0600"}]
            """),
        })
        bset, problems = load_set(bdir)
        assert bset is not None, problems

    def test_sysctl_and_name_duplicates(self, baselines_dir):
        """Duplicate baseline names and conflicting sysctls are both reported."""
        bdir = baselines_dir({
            "a.yaml": host_baseline("same", "sysctls: [{key: net.ipv4.ip_forward, value: '0'}]"),
            "b.yaml": host_baseline("same", "sysctls: [{key: net.ipv4.ip_forward, value: '1'}]"),
        })
        msgs = problems_of(bdir)
        assert any("b.yaml:4: metadata.name: duplicate baseline name 'same'" in m for m in msgs), msgs
        assert any("conflicting claim on sysctl net.ipv4.ip_forward" in m for m in msgs), msgs

    def test_duplicate_yaml_keys_are_errors(self, baselines_dir):
        """YAML would silently keep the last of two equal keys; lint refuses."""
        bdir = baselines_dir({"a.yaml": host_baseline(spec="""
            files:
              - path: /etc/motd
                path: /etc/issue
        """)})
        msgs = problems_of(bdir)
        assert any(":9: spec.files[0].path: duplicate key" in m for m in msgs), msgs

    def test_missing_source_and_source_outside(self, baselines_dir, tmp_path):
        """A source that is missing or resolves outside the directory is an error on the source field."""
        (tmp_path / "secret").write_text("x")
        bdir = baselines_dir({"a.yaml": host_baseline(spec="""
            files:
              - {path: /etc/a, source: nothere}
              - {path: /etc/b, source: link}
        """)})
        (bdir / "link").symlink_to(tmp_path / "secret")
        msgs = problems_of(bdir)
        assert any(":8: spec.files[0].source: source file 'nothere' not found" in m for m in msgs), msgs
        assert any(":9: spec.files[1].source: source resolves outside the baselines directory" in m for m in msgs), msgs

    def test_yaml_syntax_error_has_line(self, baselines_dir):
        """A YAML syntax error is reported at its line."""
        bdir = baselines_dir({"a.yaml": "apiVersion: driftd.io/v1alpha1\nkind: HostBaseline\nmetadata: {name: x\n"})
        (msg,) = problems_of(bdir)
        assert msg.startswith(f"{bdir}/a.yaml:") and "(yaml)" in msg

    def test_unknown_kind(self, baselines_dir):
        """An unknown kind says which kinds exist."""
        bdir = baselines_dir({"a.yaml": "apiVersion: driftd.io/v1alpha1\nkind: Nope\nmetadata: {name: x}\nspec: {}\n"})
        (msg,) = problems_of(bdir)
        assert msg == f"{bdir}/a.yaml:2: kind: unknown kind 'Nope' (known: ContainerBaseline, HostBaseline, PodBaseline)"


class TestBadFiles:
    def test_non_utf8_file(self, baselines_dir):
        """A baseline that is not UTF-8 is an error naming the byte, not a crash."""
        bdir = baselines_dir({"a.yaml": b"apiVersion: driftd.io/v1alpha1\nkind: \xff\n"})
        (msg,) = problems_of(bdir)
        assert msg == f"{bdir}/a.yaml:2: (file): not valid UTF-8 (byte 37)"

    def test_huge_file(self, baselines_dir):
        """A file over the size limit is refused before it is read whole."""
        bdir = baselines_dir({"a.yaml": "# " + "x" * 2000 + "\n"})
        bset, problems = load_set(bdir, max_file_bytes=1000)
        assert bset is None
        assert "over the 1000-byte limit" in str(problems[0])

    def test_unreadable_entry(self, baselines_dir):
        """A directory named like a baseline file is reported, not a crash."""
        bdir = baselines_dir({"ok.yaml": host_baseline()})
        (bdir / "dir.yaml").mkdir()
        # os.walk lists dir.yaml as a directory, so it is simply not a baseline file
        bset, problems = load_set(bdir)
        assert bset is not None and not problems

    def test_permission_denied(self):
        """Permission denied on a baseline file is a clear error (checked as an unprivileged user)."""
        import shutil
        import tempfile

        from conftest import need_root

        need_root()  # to drop to an unprivileged user; root itself reads anything
        bdir = Path(tempfile.mkdtemp(prefix="driftd-perm-"))
        try:
            bdir.chmod(0o755)
            (bdir / "a.yaml").write_text(host_baseline())
            (bdir / "a.yaml").chmod(0o000)
            code = (
                "import os; from driftd.baselines.loader import load_set;"
                "os.setgid(65534); os.setuid(65534);"
                f"b,p=load_set({str(bdir)!r}); print(b); print('\\n'.join(map(str,p)))"
            )
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            assert out.stdout.splitlines() == ["None", f"{bdir}/a.yaml:1: (file): permission denied"]
        finally:
            shutil.rmtree(bdir)

    def test_lint_cli_prints_problems_and_fails(self, baselines_dir, capsys):
        """`driftd baseline lint` exits non-zero and prints FILE:LINE: field: reason lines."""
        bdir = baselines_dir({"a.yaml": host_baseline(spec="bogus: 1")})
        assert main(["baseline", "lint", str(bdir)]) == 1
        out = capsys.readouterr().out.strip().splitlines()
        assert out == [f"{bdir}/a.yaml:7: spec.bogus: unknown field"]


class TestSchemaAndReload:
    def test_schema_cli_prints_json_schema(self, capsys):
        """`driftd baseline schema` prints a JSON Schema that forbids unknown fields."""
        assert main(["baseline", "schema"]) == 0
        schema = json.loads(capsys.readouterr().out)
        host = schema["$defs"]["HostBaseline"]
        assert host["additionalProperties"] is False
        assert set(host["required"]) == {"apiVersion", "kind", "metadata", "spec"}

    def test_committed_schema_is_current(self):
        """docs/driftd.schema.json matches the models (regenerate with `driftd baseline schema`)."""
        committed = json.loads((REPO / "docs/driftd.schema.json").read_text())
        assert committed == json.loads(json.dumps(json_schema()))

    def test_fingerprint_sees_configmap_symlink_swap(self, tmp_path):
        """Swapping a ConfigMap-style ..data symlink changes the fingerprint."""
        root = tmp_path / "cm"
        (root / "..v1").mkdir(parents=True)
        (root / "..v2").mkdir()
        (root / "..v1/a.yaml").write_text(host_baseline("a"))
        (root / "..v2/a.yaml").write_text(host_baseline("b"))
        (root / "..data").symlink_to("..v1")
        (root / "a.yaml").symlink_to("..data/a.yaml")
        fp1 = fingerprint(root)
        assert load_set(root)[0].baselines[0].metadata.name == "a"
        tmp = root / "..data_tmp"
        tmp.symlink_to("..v2")
        tmp.rename(root / "..data")
        assert fingerprint(root) != fp1
        assert load_set(root)[0].baselines[0].metadata.name == "b"


class TestDocs:
    def test_every_setting_is_documented(self):
        """docs/configuration.md names every field of the settings root and its sections."""
        from driftd.settings import Settings

        doc = (REPO / "docs/configuration.md").read_text()
        for name, field in Settings.model_fields.items():
            sub = getattr(field.annotation, "model_fields", None)
            if sub:
                for subname in sub:
                    assert f"`{name}.{subname}`" in doc, f"{name}.{subname} undocumented"
            else:
                assert f"`{name}`" in doc, f"{name} undocumented"

    def test_every_log_event_is_documented(self):
        """docs/operations.md lists the whole log event vocabulary."""
        from driftd.observability.logging import Event

        doc = (REPO / "docs/operations.md").read_text()
        for ev in Event:
            assert f"`{ev.value}`" in doc, ev


def _sourced_set(baselines_dir, docs: int, per_doc: int) -> tuple[Path, dict[str, bytes]]:
    """``docs`` baselines of ``per_doc`` source files each, every source's bytes unique."""
    files: dict[str, str | bytes] = {}
    contents: dict[str, bytes] = {}
    for d in range(docs):
        rules = "\n".join(f"  - {{path: /etc/b{d}/f{i}, source: files/b{d}-{i}.conf}}" for i in range(per_doc))
        files[f"b{d}.yaml"] = host_baseline(f"b{d}", spec="files:\n" + rules)
        for i in range(per_doc):
            data = f"# source {d}/{i} {'x' * (d * per_doc + i)}\n".encode()
            files[f"files/b{d}-{i}.conf"] = contents[f"files/b{d}-{i}.conf"] = data
    return baselines_dir(files), contents


class TestHashedOnce:
    def test_every_source_is_hashed_once_by_load_and_compile(self, baselines_dir, monkeypatch):
        """Load + compile feed each source's bytes to sha256 once (its digest), plus the set version's stream."""
        import hashlib

        from driftd.core.compile import compile_host

        bdir, contents = _sourced_set(baselines_dir, docs=3, per_doc=4)
        real = hashlib.sha256
        fed: list[bytes] = []

        class Counting:
            def __init__(self, data: bytes = b"", **kw: object) -> None:
                self._h = real(data, **kw)
                fed.append(bytes(data))

            def update(self, data: bytes) -> None:
                fed.append(bytes(data))
                self._h.update(data)

            def __getattr__(self, name: str) -> object:
                return getattr(self._h, name)

        monkeypatch.setattr(hashlib, "sha256", Counting)
        bset, problems = load_set(bdir)
        assert bset is not None, problems
        desired = compile_host(bset.baselines, bset.sources, "n", {})
        monkeypatch.setattr(hashlib, "sha256", real)
        for rel, data in contents.items():
            alone = sum(1 for f in fed if f == data)
            within = sum(1 for f in fed if data in f)
            # once on its own (the digest everything reuses), once in the version's stream (src NUL bytes)
            assert (alone, within) == (1, 2), rel
            key = (rel.split("-")[0].removeprefix("files/"), rel)
            assert bset.source_digests[key] == real(data).hexdigest() == bset.file_digests[rel]
        by_path = {d.address: d.expected["content"] for d in desired}
        assert by_path["/etc/b1/f2"] == "sha256:" + real(contents["files/b1-2.conf"]).hexdigest()

    def test_baseline_hashes_are_linear_in_the_sources(self, tmp_path, monkeypatch):
        """The per-baseline hash does not walk every source once per baseline (work 4x the docs: ~4x, not ~16x)."""
        import builtins

        from driftd.baselines import loader

        work = 0

        def counting_sorted(items, **kw):
            nonlocal work
            out = builtins.sorted(items, **kw)
            work += len(out)
            return out

        monkeypatch.setattr(loader, "sorted", counting_sorted, raising=False)
        counts = []
        for docs in (10, 40):
            small, _ = _sourced_set(lambda files, d=docs: _write_at(tmp_path / f"s{d}", files), docs, 5)
            work = 0
            bset, problems = load_set(small)
            assert bset is not None, problems
            counts.append(work)
        assert counts[1] < 6 * counts[0], counts

    def test_hashes_follow_source_bytes_only_of_their_own_baseline(self, baselines_dir):
        """A changed source changes its baseline's hash and the version, not the other baselines' hashes."""
        bdir, _ = _sourced_set(baselines_dir, docs=2, per_doc=2)
        before = load_set(bdir)[0]
        (bdir / "files/b1-0.conf").write_bytes(b"changed\n")
        after = load_set(bdir)[0]
        assert before is not None and after is not None
        assert before.hashes["b0"] == after.hashes["b0"]
        assert before.hashes["b1"] != after.hashes["b1"]
        assert before.version != after.version


def _write_at(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return root


class TestConfigMapVolume:
    """A ConfigMap volume (``..<timestamp>/``, ``..data`` -> it, top-level symlinks) swapped by the kubelet mid-load."""

    @staticmethod
    def version(root: Path, stamp: str, word: str) -> None:
        d = root / stamp
        (d / "files").mkdir(parents=True)
        for name in ("a", "b"):
            (d / f"{name}.yaml").write_text(host_baseline(name, f"""
                files:
                  - {{path: /etc/{name}, content: "{word}\\n"}}
                  - {{path: /etc/{name}.src, source: files/{name}.txt}}
            """))
            (d / "files" / f"{name}.txt").write_text(f"{word} from source\n")

    @staticmethod
    def swap(root: Path, stamp: str) -> None:
        tmp = root / "..data_tmp"
        tmp.symlink_to(stamp)
        os.rename(tmp, root / "..data")  # what the kubelet's AtomicWriter does

    def mounted(self, tmp_path: Path) -> Path:
        root = tmp_path / "vol"
        self.version(root, "..2026_12_02_00_00_00.000000001", "one")
        self.version(root, "..2026_12_02_00_01_00.000000002", "two")
        (root / "..data").symlink_to("..2026_12_02_00_00_00.000000001")
        for top in ("a.yaml", "b.yaml", "files"):
            (root / top).symlink_to(Path("..data") / top)
        return root

    @pytest.mark.parametrize("swap_after", ["the first YAML file", "the YAML files"])
    def test_a_swap_while_loading_never_mixes_two_versions(self, tmp_path, monkeypatch, swap_after):
        """The set comes whole from the version ..data named when loading began: YAML and source files alike."""
        import driftd.baselines.loader as loader

        root = self.mounted(tmp_path)
        real_read, reads = loader._read, []

        def read_then_swap(path, *a, **kw):
            out = real_read(path, *a, **kw)
            reads.append(path)
            if len(reads) == (1 if swap_after == "the first YAML file" else 2):
                self.swap(root, "..2026_12_02_00_01_00.000000002")
            return out

        monkeypatch.setattr(loader, "_read", read_then_swap)
        bset, problems = load_set(root)
        assert bset is not None, problems
        assert (root / "a.yaml").read_text().count('"two\\n"') == 1  # the swap did happen during the load
        contents = {r.path: r.content for b in bset.baselines for r in b.spec.files if r.content}
        assert contents == {"/etc/a": "one\n", "/etc/b": "one\n"}
        assert set(bset.sources.values()) == {b"one from source\n"}
        assert bset.directory == str(root)  # named as the user gave it, not by the version read

    def test_after_the_swap_the_next_load_is_the_new_version_whole_and_problems_name_the_volume(self, tmp_path):
        root = self.mounted(tmp_path)
        self.swap(root, "..2026_12_02_00_01_00.000000002")
        bset, problems = load_set(root)
        assert bset is not None, problems
        assert {r.content for b in bset.baselines for r in b.spec.files if r.content} == {"two\n"}
        (root / "..2026_12_02_00_01_00.000000002" / "b.yaml").write_text("kind: HostBaseline\nspec: [\n")
        bset, problems = load_set(root)
        assert bset is None
        assert [p.file for p in problems if p.field == "(yaml)"] == [str(root / "b.yaml")]
