"""Loading never crashes and is bounded: duplicate claims of every rule kind, alias bombs, deep nesting, empty files."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml
from conftest import host_baseline

from driftd.baselines import loader
from driftd.baselines.loader import load_set
from driftd.cli import main
from driftd.engine.clock import FakeClock
from driftd.engine.daemon import BaselineManager
from driftd.models.baseline import HostSpec

REPO = Path(__file__).resolve().parent.parent

# one sample per rule kind of HostBaseline (a new rule kind must be added here: see the coverage test)
HOST_RULES = {
    "files": "files:\n  - {path: /etc/motd, content: \"x\\n\"}",
    "directories": "directories:\n  - {path: /etc/ssh, mode: \"0755\"}",
    "sysctls": "sysctls:\n  - {key: net.ipv4.ip_forward, value: \"0\"}",
    "kernel": "kernel: {minimumRelease: \"5.10\"}",
    "packages": "packages:\n  - {name: openssl, minimum: \"3.0.15-1\"}",
}
NOT_RULES = {"enforcement", "window", "grace", "selector", "retire_on_failure"}
SELECTORS = {
    "empty": "",
    "hostname": "selector: {hostnames: [\"node-*\"]}",
    "labels": "selector: {matchLabels: {role: web}}",
}


def lint(bdir: Path) -> tuple[object, list[loader.Problem]]:
    return load_set(bdir)


class TestClaimedTwice:
    def test_every_host_rule_kind_is_covered(self):
        """The samples cover every rule field of HostSpec, so a new rule kind cannot skip this suite."""
        assert set(HostSpec.model_fields) - NOT_RULES == set(HOST_RULES)

    @pytest.mark.parametrize("kind", sorted(HOST_RULES))
    @pytest.mark.parametrize("sel_a,sel_b", [("empty", "empty"), ("empty", "hostname"), ("hostname", "labels"), ("labels", "labels")])
    @pytest.mark.parametrize("same_value", [True, False])
    def test_host_rule_claimed_by_two_baselines_is_a_problem_not_a_crash(self, tmp_path, kind, sel_a, sel_b, same_value):
        """Two HostBaselines claiming the same rule with overlapping selectors: a duplicate/conflict problem."""
        rule_b = HOST_RULES[kind] if same_value else HOST_RULES[kind].replace('"0"', '"1"').replace("5.10", "6.1").replace(
            '"x\\n"', '"y\\n"').replace('"0755"', '"0700"').replace("3.0.15-1", "3.0.16-1")
        bdir = tmp_path / "b"
        bdir.mkdir()
        (bdir / "a.yaml").write_text(host_baseline("a", SELECTORS[sel_a] + "\n" + HOST_RULES[kind]))
        (bdir / "b.yaml").write_text(host_baseline("b", SELECTORS[sel_b] + "\n" + rule_b))
        bset, problems = lint(bdir)
        assert bset is None
        reasons = [p.reason for p in problems]
        assert any(("duplicate claim" if same_value else "conflicting claim") in r for r in reasons), reasons
        assert all(p.field != "(loader)" for p in problems)

    @pytest.mark.parametrize("kind", sorted(HOST_RULES))
    def test_host_rule_listed_twice_in_one_baseline(self, tmp_path, kind):
        """The same rule twice inside one baseline is reported (a kernel rule is a single field: valid once)."""
        bdir = tmp_path / "b"
        bdir.mkdir()
        body = HOST_RULES[kind]
        if kind != "kernel":
            body += "\n" + body.split("\n", 1)[1]
        (bdir / "a.yaml").write_text(host_baseline("a", body))
        bset, problems = lint(bdir)
        assert all(p.field != "(loader)" for p in problems)
        assert (bset is None) == (kind != "kernel"), problems

    @pytest.mark.parametrize("shipped", sorted(p.name for p in (REPO / "baselines").glob("*.yaml")))
    def test_every_shipped_baseline_kind_loaded_twice_does_not_crash(self, tmp_path, shipped):
        """Each shipped baseline (every kind) twice, under two names and under one name: problems, never a crash."""
        for rename in (True, False):
            bdir = tmp_path / f"b{rename}"
            shutil.copytree(REPO / "baselines", bdir)
            doc = yaml.safe_load((bdir / shipped).read_text())
            if rename:
                doc["metadata"]["name"] += "-copy"
            (bdir / f"copy-{shipped}").write_text(yaml.safe_dump(doc))
            bset, problems = lint(bdir)
            assert all(p.field != "(loader)" for p in problems), problems
            if not rename:
                assert bset is None and any("duplicate baseline name" in p.reason for p in problems)

    def test_lint_cli_on_two_kernel_rules(self, tmp_path, capsys):
        """`driftd baseline lint` with two default-selector kernel rules prints the conflict and exits 1."""
        bdir = tmp_path / "b"
        bdir.mkdir()
        (bdir / "a.yaml").write_text(host_baseline("a", HOST_RULES["kernel"]))
        (bdir / "b.yaml").write_text(host_baseline("b", "kernel: {minimumRelease: \"6.1\"}"))
        assert main(["baseline", "lint", str(bdir)]) == 1
        assert "conflicting claim on kernel rule" in capsys.readouterr().out


class TestCrashIsARejectedSet:
    def _manager(self, tmp_path, make_runtime, bdir):
        rt = make_runtime(bdir)
        mgr = BaselineManager(rt.settings, rt.engine, rt.metrics, FakeClock())
        mgr.prime()
        return rt, mgr

    def test_hot_reload_of_overlapping_kernel_rules_is_counted_and_keeps_the_old_set(self, tmp_path, baselines_dir, make_runtime):
        """The set that crashed lint before is now rejected once: counted, logged, old set kept, no repeat."""
        bdir = baselines_dir({"a.yaml": host_baseline("a", HOST_RULES["files"])})
        rt, mgr = self._manager(tmp_path, make_runtime, bdir)
        kept = rt.engine.baselines.version
        (bdir / "k1.yaml").write_text(host_baseline("k1", HOST_RULES["kernel"]))
        (bdir / "k2.yaml").write_text(host_baseline("k2", HOST_RULES["kernel"]))
        from structlog.testing import capture_logs

        with capture_logs() as logs:
            assert mgr.check() is False
            assert mgr.check() is False  # the same broken set is not reloaded (nor logged) again
        assert [e["event"] for e in logs].count("baseline.rejected") == 1
        assert rt.metrics.registry.get_sample_value("driftd_baseline_load_errors_total") == 1
        assert rt.engine.baselines.version == kept

    def test_a_loader_crash_rejects_the_set(self, tmp_path, baselines_dir, make_runtime, monkeypatch):
        """An exception anywhere inside load_set is a rejected set with the error, never an exception."""
        bdir = baselines_dir({"a.yaml": host_baseline("a", HOST_RULES["files"])})
        rt, mgr = self._manager(tmp_path, make_runtime, bdir)

        def boom(*_a, **_k):
            raise RuntimeError("simulated bug")

        monkeypatch.setattr(loader, "_check_set", boom)
        (bdir / "b.yaml").write_text(host_baseline("b", HOST_RULES["sysctls"]))
        bset, problems = load_set(bdir)
        assert bset is None and problems[0].field == "(loader)" and "simulated bug" in problems[0].reason
        assert mgr.check() is False
        assert rt.metrics.registry.get_sample_value("driftd_baseline_load_errors_total") == 1


def laughs(levels: int = 9) -> str:
    out = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        out.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "apiVersion: driftd.io/v1alpha1\nkind: HostBaseline\nmetadata: {name: bomb}\nspec:\n  x:\n" + "\n".join(
        "    " + line for line in out) + "\n"


class TestHostileInput:
    def _load_bounded(self, tmp_path, text: str) -> list[loader.Problem]:
        bdir = tmp_path / "b"
        bdir.mkdir(exist_ok=True)
        (bdir / "evil.yaml").write_text(text)
        started = time.monotonic()
        bset, problems = load_set(bdir)
        elapsed = time.monotonic() - started
        assert bset is None
        assert elapsed < 5, f"took {elapsed:.1f}s"  # a bound, not a benchmark: unbounded work takes minutes
        assert all(p.file.endswith("evil.yaml") for p in problems if p.severity == "error"), problems
        return problems

    def test_billion_laughs_is_refused_quickly_with_file_and_reason(self, tmp_path):
        """An alias bomb (9^9 expansion) is refused without expanding it."""
        problems = self._load_bounded(tmp_path, laughs())
        assert any("alias" in p.reason for p in problems), problems

    def test_small_alias_use_still_loads(self, tmp_path):
        """Anchors and aliases as people use them (shared values) are fine."""
        bdir = tmp_path / "b"
        bdir.mkdir()
        (bdir / "a.yaml").write_text(
            "apiVersion: driftd.io/v1alpha1\nkind: HostBaseline\nmetadata: {name: a}\nspec:\n"
            "  files:\n    - &f {path: /etc/a, mode: \"0644\"}\n    - {path: /etc/b, mode: \"0644\"}\n"
        )
        bset, problems = load_set(bdir)
        assert bset is not None, problems

    def test_recursive_alias_is_refused(self, tmp_path):
        """A node that contains itself is refused, not walked forever."""
        problems = self._load_bounded(tmp_path, "a: &a [*a]\n")
        assert any("recursive alias" in p.reason for p in problems), problems

    @pytest.mark.parametrize("depth", [200, 900, 20_000])
    def test_deep_nesting_is_refused_quickly(self, tmp_path, depth):
        """Thousands of nested collections are refused with the file and a reason, never a RecursionError."""
        problems = self._load_bounded(tmp_path, "a: " + "[" * depth + "]" * depth + "\n")
        assert any("nest" in p.reason for p in problems), problems

    @pytest.mark.parametrize("text", ["", "# a comment only\n", "---\n", "\n\n"])
    def test_file_with_no_document_is_an_error_naming_it(self, tmp_path, text):
        """An empty or truncated baseline file is an error: silently dropping its rules would stop enforcing them."""
        problems = self._load_bounded(tmp_path, text)
        assert any("no YAML document" in p.reason or "expected a mapping" in p.reason for p in problems), problems



# every kind of text the loader meets: plain baselines, YAML features left to PyYAML, hostile and broken files
LEAN_CORPUS = [
    *(p.read_text() for p in sorted((REPO / "baselines").glob("*.yaml"))),
    host_baseline("a", "files:\n  - path: /etc/a\n    mode: '0600'\n    mode: '0644'\n  - {path: /b, path: /c}\n"),
    "a: 1\nb: 1.5\nc: true\nd: null\ne: ~\nf: 2001-12-14\ng: 2001-12-14t21:59:43.10-05:00\nh: !!binary aGVsbG8=\n",
    "a: '0644'\nb: 0644\nc: 0o17\nd: 0x1F\ne: .inf\nf: -.nan\ng: yes\nh: 'yes'\n1: int key\n'1': str key\n",
    "a: 1\na: 2\nb: {c: 1, c: 2, d: [ {e: 1, e: 1} ]}\n",
    "top: [1, [2, [3, {k: v}]], '', \"\"]\nempty: {}\nnone:\n",
    "---\na: 1\n---\n- 1\n- 2\n---\nplain scalar\n",
    "m: !!map {a: 1}\ns: !!seq [1]\nt: !!str 12\nu: ! 12\n",
    "base: &b {x: 1}\nuse: *b\n",
    "base: &b {x: 1}\nuse:\n  <<: *b\n  y: 2\n",
    "s: !!set {a, b}\n",
    "? [a, b]\n: complex key\n",
    "x: !custom 1\n",
    "= : value key\n",
    "d: 2001-13-45\n",  # the timestamp constructor raises
    "b: !!binary '%%%'\n",
    "a: 1\n---\nb: [\n",  # a parser error in the second document
    "a: 1\na: 1\n---\nb: {c\n",
    "x: [" * 70 + "]" * 70 + "\n",
    "a: " + "{k: " * 66 + "v" + "}" * 66 + "\n",
    laughs(4),
    "a: &a [*a]\n",
    "",
    "# a comment only\n",
    "---\n",
    "- just\n- a list\n",
]


class TestLeanParse:
    @pytest.mark.parametrize("text", LEAN_CORPUS, ids=range(len(LEAN_CORPUS)))
    def test_lean_parse_equals_the_composer(self, text):
        """Events-built documents give the composer's data, problems (lines) and node lines, for every input."""
        lean_p: list[loader.Problem] = []
        comp_p: list[loader.Problem] = []
        try:
            comp = loader._parse_composed("f.yaml", text, comp_p)
        except Exception as e:  # PyYAML's own failure (a complex key): the same one either way
            with pytest.raises(type(e)):
                loader._parse("f.yaml", text.encode(), lean_p)
            return
        lean = loader._parse("f.yaml", text.encode(), lean_p)
        assert lean_p == comp_p
        assert [d.data for d in lean] == [d.data for d in comp]
        assert [type(d.data) for d in lean] == [type(d.data) for d in comp]
        for a, b in zip(lean, comp, strict=True):
            for loc in [(), ("spec",), ("spec", "files", 0, "mode"), ("spec", "files", 1, "path"), ("b", "d", 0), (1,)]:
                assert a.line_of(loc) == b.line_of(loc), loc

    def test_a_valid_set_never_composes_a_node_tree(self, baselines_dir, monkeypatch):
        """No node tree for a valid set; an invalid document composes its file once, lazily, for its lines."""
        composed: list[str] = []
        real = yaml.compose_all

        def counting(text, Loader):
            composed.append(text)
            return real(text, Loader=Loader)

        monkeypatch.setattr(yaml, "compose_all", counting)
        bdir = baselines_dir({
            "a.yaml": host_baseline("a", "files:\n  - {path: /etc/a, source: a.conf}\n  - {path: /etc/b, mode: \"0644\"}"),
            "b.yaml": "---\n" + host_baseline("b", HOST_RULES["sysctls"]) + "---\n" + host_baseline("c", HOST_RULES["kernel"]),
            "a.conf": "x\n",
        })
        bset, problems = load_set(bdir)
        assert bset is not None and not problems, problems
        assert composed == []
        (bdir / "b.yaml").write_text(
            "---\n" + host_baseline("b", HOST_RULES["sysctls"]) + "---\n" + host_baseline("c", "kernel: {minimumRelease: \"5.10\", bogus: 1}\nnope: 2"))
        bset, problems = load_set(bdir)
        assert bset is None
        assert [str(p) for p in problems] == [f"{bdir}/b.yaml:17: spec.kernel.bogus: unknown field",
                                              f"{bdir}/b.yaml:18: spec.nope: unknown field"]
        assert len(composed) == 1  # b.yaml, once for both problems

    def test_reading_a_small_file_does_not_allocate_the_size_limit(self, tmp_path):
        """A 300-byte file under an 8 MiB limit costs about 300 bytes (not a max-size buffer per file)."""
        import tracemalloc

        p = tmp_path / "small.conf"
        p.write_bytes(b"x" * 300)
        tracemalloc.start()
        try:
            data = loader._read(p, "small.conf", 8 * 1024 * 1024, [])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert data == b"x" * 300
        assert peak < 256 * 1024, peak

    def test_size_limit_still_holds(self, tmp_path):
        """Over the limit is refused; at the limit the whole file is read."""
        p = tmp_path / "f.conf"
        p.write_bytes(b"y" * 1000)
        problems: list[loader.Problem] = []
        assert loader._read(p, "f.conf", 999, problems) is None
        assert "over the 999-byte limit" in problems[0].reason
        assert loader._read(p, "f.conf", 1000, []) == b"y" * 1000
