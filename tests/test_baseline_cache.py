"""The start-up cache of a validated baseline set: a hit is exactly a full load, any change is a miss."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import host_baseline, need
from test_signing import allowed, sign

from driftd.baselines import cache, loader
from driftd.baselines.guardrails import DEFAULT
from driftd.baselines.loader import BaselineSet, load_set
from driftd.core.compile import compile_host

HOST = host_baseline("host", spec="""
    files:
      - {path: /etc/motd, source: files/motd, mode: "0644"}
      - {path: /etc/issue, source: files/issue}
      - {path: /etc/sticky, content: "x\\n", mode: "1644"}
      - path: /etc/sudoers.d/backup
        content: "backup ALL=(root) NOPASSWD: /usr/bin/rsync\\n"
        allowDangerous: "INC-42: sudo rule for the backup agent"
    directories:
      - {path: /etc/ssh, mode: "0755"}
    sysctls:
      - {key: net.ipv4.ip_forward, value: 0}
    window: 10m
    grace: 1m
""")
CONTAINER = """\
apiVersion: driftd.io/v1alpha1
kind: ContainerBaseline
metadata: {name: web}
spec:
  selector:
    matchLabels: {app: web}
  images:
    approved: ["nginx:1.25"]
  runtime:
    user: "10001"
    capDrop: [ALL]
"""
SUB = host_baseline("sub", spec="""
    files:
      - {path: /etc/sub, source: deep/x.conf}
      - {path: /etc/sub2, source: own.conf}
""")


@pytest.fixture
def bdir(tmp_path: Path) -> Path:
    root = tmp_path / "baselines"
    (root / "files").mkdir(parents=True)
    (root / "sub/deep").mkdir(parents=True)
    (root / "sub/deep/x.conf").write_bytes(b"deep\n")
    (root / "host.yaml").write_text(HOST)
    (root / "web.yaml").write_text(CONTAINER)
    (root / "sub/sub.yaml").write_text(SUB)
    (root / "sub/own.conf").write_bytes(b"own\n")
    (root / "files/motd").write_bytes(b"hello\n")
    (root / "files/issue").write_bytes(b"\x00binary\xff\n")
    return root


@pytest.fixture
def cdir(tmp_path: Path) -> Path:
    (tmp_path / "state").mkdir()
    return tmp_path / "state" / "cache"


class Calls:
    """Counts the loader's YAML parses and validations of YAML data (a hit makes none)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.parse = self.validate = 0
        real_parse, real_validate = loader._parse, loader._validate

        def parse(*a: Any, **k: Any) -> Any:
            self.parse += 1
            return real_parse(*a, **k)

        def validate(*a: Any, **k: Any) -> Any:
            self.validate += 1
            return real_validate(*a, **k)

        monkeypatch.setattr(loader, "_parse", parse)
        monkeypatch.setattr(loader, "_validate", validate)

    def reset(self) -> None:
        self.parse = self.validate = 0


def forbid_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a cache hit must not parse or validate YAML")

    monkeypatch.setattr(loader, "_parse", boom)
    monkeypatch.setattr(loader, "_validate", boom)


def same(a: tuple[BaselineSet | None, list[loader.Problem]], b: tuple[BaselineSet | None, list[loader.Problem]]) -> None:
    """Two load results are the same set (every field) with the same problems."""
    sa, pa = a
    sb, pb = b
    assert pa == pb
    assert (sa is None) == (sb is None)
    if sa is None or sb is None:
        return
    # a hit keeps a HostBaseline's rules as lines (compiled one at a time), a full load in the model: the same set
    whole_a, whole_b = (tuple(cache.join(b, s.rule_lines.get(b.metadata.name, ())) for b in s.baselines) for s in (sa, sb))
    assert whole_a == whole_b
    assert [b.model_fields_set for b in whole_a] == [b.model_fields_set for b in whole_b]
    node = ("node-a", {"role": "web"})
    assert compile_host(sa.baselines, sa.sources, *node, sa.rule_lines) == compile_host(sb.baselines, sb.sources, *node,
                                                                                         sb.rule_lines)
    for field in ("directory", "hashes", "version", "file_digests", "warnings", "sources", "source_digests", "files",
                  "signed_by"):
        assert getattr(sa, field) == getattr(sb, field), field
    assert sa.sources.digests == sb.sources.digests


def entries(cdir: Path) -> list[Path]:
    return sorted(cdir.glob("baselines-*.json"))


class TestHit:
    def test_a_hit_is_a_full_load_without_parsing(self, bdir, cdir, monkeypatch):
        """Cold load stores an entry; the next load rebuilds the same set from it, parsing and validating no YAML."""
        full = load_set(bdir)
        assert full[0] is not None and full[0].warnings, full[1]  # the set has warnings: they must come back
        assert {p.severity for p in full[0].warnings} == {"warning", "allowed-dangerous"}
        same(load_set(bdir, cache_dir=cdir), full)
        assert len(entries(cdir)) == 1
        assert oct(cdir.stat().st_mode & 0o777) == "0o700"
        assert oct(entries(cdir)[0].stat().st_mode & 0o777) == "0o600"
        forbid_parsing(monkeypatch)
        same(load_set(bdir, cache_dir=cdir), full)

    def test_an_entry_is_json_and_holds_no_source_bytes(self, bdir, cdir):
        load_set(bdir, cache_dir=cdir)
        raw = entries(cdir)[0].read_bytes()
        head, body = raw.split(b"\n", 1)
        assert json.loads(head)["format"] == cache.FORMAT
        # a baseline's line is its JSON; a HostBaseline's rules follow it as "field TAB sort key TAB sort key TAB JSON"
        assert all(json.loads(line.split(b"\t", 3)[3] if b"\t" in line else line) for line in body.splitlines())
        assert b"binary" not in raw and b"own\n" not in raw

    def test_a_hit_holds_host_rules_as_lines_not_models(self, bdir, cdir):
        """The rules of a HostBaseline stay JSON lines on a hit (the agent never holds them all as models)."""
        from driftd.models.baseline import HostBaseline

        full, _ = load_set(bdir)
        load_set(bdir, cache_dir=cdir)
        hit, _ = load_set(bdir, cache_dir=cdir)
        assert full is not None and hit is not None and full.rule_lines == {}
        for b in hit.baselines:
            if isinstance(b, HostBaseline):
                assert list(b.spec.rules()) == []
                n_full = len(list(next(f for f in full.baselines if f.metadata.name == b.metadata.name).spec.rules()))
                assert len(hit.rule_lines[b.metadata.name]) == n_full > 0

    def test_a_damaged_rule_line_is_a_miss(self, bdir, cdir):
        load_set(bdir, cache_dir=cdir)
        entry = entries(cdir)[0]
        raw = entry.read_bytes()
        head, body = raw.split(b"\n", 1)
        damaged = body.replace(b"files\t", b"filez\t", 1)
        assert damaged != body
        h = json.loads(head)
        import hashlib

        h["body"] = hashlib.sha256(damaged).hexdigest()  # consistent header: only the rule line is wrong
        entry.write_bytes(json.dumps(h).encode() + b"\n" + damaged)
        same(load_set(bdir, cache_dir=cdir), load_set(bdir))

    def test_the_hit_compiles_to_the_same_desired_resources(self, bdir, cdir):
        from driftd.core.compile import compile_host

        full, _ = load_set(bdir)
        load_set(bdir, cache_dir=cdir)
        hit, _ = load_set(bdir, cache_dir=cdir)
        assert full is not None and hit is not None
        assert compile_host(hit.baselines, hit.sources, "n", {}, hit.rule_lines) == compile_host(
            full.baselines, full.sources, "n", {})


def change_yaml_byte(bdir: Path) -> None:
    p = bdir / "host.yaml"
    p.write_text(p.read_text().replace("window: 10m", "window: 11m"))


def change_source_byte(bdir: Path) -> None:
    (bdir / "files/motd").write_bytes(b"hellO\n")


def add_yaml(bdir: Path) -> None:
    (bdir / "more.yml").write_text(host_baseline("more", spec="sysctls:\n  - {key: kernel.sysrq, value: 0}"))


def remove_yaml(bdir: Path) -> None:
    (bdir / "web.yaml").unlink()


def remove_source(bdir: Path) -> None:
    (bdir / "sub/own.conf").unlink()


def source_to_outside(bdir: Path) -> None:
    outside = bdir.parent / "outside.conf"
    outside.write_bytes(b"hello\n")  # the same bytes: only where it resolves differs
    (bdir / "files/motd").unlink()
    (bdir / "files/motd").symlink_to(outside)


def source_to_fifo(bdir: Path) -> None:
    (bdir / "sub/own.conf").unlink()
    os.mkfifo(bdir / "sub/own.conf")


def rename_yaml(bdir: Path) -> None:
    (bdir / "web.yaml").rename(bdir / "web2.yaml")


CHANGES = {f.__name__: f for f in (change_yaml_byte, change_source_byte, add_yaml, remove_yaml, remove_source,
                                   source_to_outside, source_to_fifo, rename_yaml)}


class TestMiss:
    @pytest.mark.parametrize("change", sorted(CHANGES))
    def test_any_change_is_a_miss_with_the_full_loads_result(self, bdir, cdir, monkeypatch, change):
        """Each change: the cached load parses again and gives exactly what a load without cache gives."""
        calls = Calls(monkeypatch)
        assert load_set(bdir, cache_dir=cdir)[0] is not None
        assert load_set(bdir, cache_dir=cdir)[0] is not None
        calls.reset()
        CHANGES[change](bdir)
        got = load_set(bdir, cache_dir=cdir)
        assert calls.parse > 0 and calls.validate > 0
        same(got, load_set(bdir))

    def test_a_source_symlinked_outside_is_rejected_as_without_cache(self, bdir, cdir):
        load_set(bdir, cache_dir=cdir)
        source_to_outside(bdir)
        bset, problems = load_set(bdir, cache_dir=cdir)
        assert bset is None
        assert any(p.reason == "source resolves outside the baselines directory" for p in problems), problems
        same((bset, problems), load_set(bdir))

    def test_a_changed_guardrail_is_a_miss(self, bdir, cdir, monkeypatch):
        calls = Calls(monkeypatch)
        load_set(bdir, cache_dir=cdir)
        calls.reset()
        stricter = DEFAULT.extended(paths=["/etc/issue"])
        got = load_set(bdir, cache_dir=cdir, guardrails=stricter)
        assert calls.parse > 0
        assert got[0] is None and any("denied by the operator" in p.reason for p in got[1])
        same(got, load_set(bdir, guardrails=stricter))

    def test_a_changed_size_limit_is_a_miss(self, bdir, cdir, monkeypatch):
        load_set(bdir, cache_dir=cdir)
        got = load_set(bdir, cache_dir=cdir, max_file_bytes=6)  # files/motd is 6 bytes, host.yaml far more
        assert got[0] is None
        same(got, load_set(bdir, max_file_bytes=6))

    def test_a_changed_code_fingerprint_is_a_miss(self, bdir, cdir, monkeypatch):
        calls = Calls(monkeypatch)
        load_set(bdir, cache_dir=cdir)
        calls.reset()
        load_set(bdir, cache_dir=cdir)
        assert calls.parse == 0
        monkeypatch.setattr(cache, "code_fingerprint", lambda: "another driftd")
        same(load_set(bdir, cache_dir=cdir), load_set(bdir))
        assert calls.parse > 0
        assert len(entries(cdir)) == 2  # the new code's entry beside the old one

    def test_no_code_fingerprint_means_no_cache(self, bdir, cdir, monkeypatch):
        monkeypatch.setattr(cache, "code_fingerprint", lambda: None)
        same(load_set(bdir, cache_dir=cdir), load_set(bdir))
        assert not cdir.exists()

    def test_the_code_fingerprint_covers_the_validating_code(self):
        import driftd

        fp = cache.code_fingerprint()
        assert fp is not None and fp == cache.code_fingerprint()
        pkg = Path(driftd.__file__).parent
        for sub in ("models/baseline.py", "baselines/loader.py", "baselines/guardrails.py", "core/kinds/file.py"):
            assert (pkg / sub).is_file()
            assert any(Path(p).as_posix().endswith(sub) for p in _fingerprinted(pkg)), sub

    def test_another_directory_with_the_same_bytes_is_a_miss(self, bdir, cdir, tmp_path, monkeypatch):
        load_set(bdir, cache_dir=cdir)
        other = tmp_path / "other"
        shutil.copytree(bdir, other)
        calls = Calls(monkeypatch)
        got = load_set(other, cache_dir=cdir)
        assert calls.parse > 0
        assert got[0] is not None and got[0].directory == str(other)
        same(got, load_set(other))


def _fingerprinted(pkg: Path) -> list[Path]:
    return [p for sub in cache._CODE for p in (pkg / sub).rglob("*.py")]


class TestEntries:
    def test_an_invalid_set_writes_no_entry(self, bdir, cdir):
        (bdir / "bad.yaml").write_text(host_baseline("bad", spec="bogus: 1"))
        bset, problems = load_set(bdir, cache_dir=cdir)
        assert bset is None and problems
        assert entries(cdir) == []

    @pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty", "other_key", "symlink", "directory"])
    def test_a_damaged_entry_is_a_miss_and_is_rewritten(self, bdir, cdir, monkeypatch, damage):
        full = load_set(bdir)
        load_set(bdir, cache_dir=cdir)
        [entry] = entries(cdir)
        good = entry.read_bytes()
        if damage == "truncate":
            entry.write_bytes(good[: len(good) - 40])
        elif damage == "flip":  # a byte of a baseline's JSON (a path) that still parses
            i = good.rindex(b"/etc/motd")
            entry.write_bytes(good[:i] + b"/etc/motD" + good[i + 9:])
        elif damage == "garbage":
            entry.write_bytes(b"\x80\x81 not json at all\n\xff")
        elif damage == "empty":
            entry.write_bytes(b"")
        elif damage == "other_key":
            head, body = good.split(b"\n", 1)
            h = json.loads(head)
            h["key"] = "0" * 64
            entry.write_bytes(json.dumps(h).encode() + b"\n" + body)
        elif damage == "symlink":
            real = entry.parent / "elsewhere"
            real.write_bytes(good)
            entry.unlink()
            entry.symlink_to(real)
        else:
            entry.unlink()
            entry.mkdir()
        calls = Calls(monkeypatch)
        same(load_set(bdir, cache_dir=cdir), full)
        assert calls.parse > 0
        if damage != "directory":  # a directory in its place cannot be renamed over: it stays a miss
            assert entry.is_file() and not entry.is_symlink() and entry.read_bytes() == good
            calls.reset()
            same(load_set(bdir, cache_dir=cdir), full)
            assert calls.parse == 0

    def test_an_unwritable_cache_never_fails_a_load(self, bdir, tmp_path):
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        same(load_set(bdir, cache_dir=blocker / "cache"), load_set(bdir))

    def test_only_the_newest_entries_are_kept(self, bdir, cdir):
        for i in range(cache.MAX_ENTRIES + 3):
            (bdir / "host.yaml").write_text(HOST.replace("window: 10m", f"window: {10 + i}m"))  # a new key each time
            assert load_set(bdir, cache_dir=cdir)[0] is not None
            for age, e in enumerate(sorted(entries(cdir), key=lambda p: p.stat().st_mtime_ns, reverse=True)):
                os.utime(e, (1_000_000 - age, 1_000_000 - age))  # strictly ordered mtimes, the one just written newest
            assert len(entries(cdir)) == min(i + 1, cache.MAX_ENTRIES)
        bset, _ = load_set(bdir, cache_dir=cdir)  # the newest (the current set) is still a hit
        assert bset is not None

    def test_no_state_directory_means_no_cache_and_none_is_made(self, bdir, tmp_path):
        same(load_set(bdir, cache_dir=tmp_path / "absent" / "cache"), load_set(bdir))
        assert not (tmp_path / "absent").exists()

    def test_a_stale_temp_file_is_swept(self, bdir, cdir):
        cdir.mkdir()
        stale = cdir / ".tmp-1-dead"
        stale.write_bytes(b"half an entry")
        os.utime(stale, (1, 1))
        fresh = cdir / ".tmp-2-alive"
        fresh.write_bytes(b"another writer")
        load_set(bdir, cache_dir=cdir)
        assert not stale.exists() and fresh.exists()

    def test_a_cached_model_that_would_not_rebuild_exactly_is_not_cached(self, bdir, cdir, monkeypatch):
        monkeypatch.setattr(cache, "_line", lambda model: b'{"kind":"HostBaseline"}')
        same(load_set(bdir, cache_dir=cdir), load_set(bdir))
        assert entries(cdir) == []


class TestSigned:
    def test_a_signed_set_hits_and_a_signature_change_is_a_miss(self, bdir, cdir, tmp_path, capsys, monkeypatch):
        need(shutil.which("ssh-keygen") is not None, "ssh-keygen (openssh-client) is not installed")
        key_a, key_b = tmp_path / "a", tmp_path / "b"
        for k in (key_a, key_b):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", k.name, "-f", str(k)], check=True)
        signers = allowed(tmp_path, ("a", key_a), ("b", key_b))
        sign(capsys, bdir, key_a)
        full = load_set(bdir, allowed_signers=signers)
        assert full[0] is not None and full[0].signed_by is not None and full[0].signed_by.startswith("a ")
        same(load_set(bdir, allowed_signers=signers, cache_dir=cdir), full)
        calls = Calls(monkeypatch)
        same(load_set(bdir, allowed_signers=signers, cache_dir=cdir), full)
        assert calls.parse == 0
        sign(capsys, bdir, key_b)  # only the signature file changes
        got = load_set(bdir, allowed_signers=signers, cache_dir=cdir)
        assert calls.parse > 0 and got[0] is not None and got[0].signed_by is not None
        assert got[0].signed_by.startswith("b ")
        same(got, load_set(bdir, allowed_signers=signers))
        only_a = allowed(tmp_path, ("a", key_a))  # b no longer allowed: refused, cache or not
        got = load_set(bdir, allowed_signers=only_a, cache_dir=cdir)
        assert got[0] is None
        same(got, load_set(bdir, allowed_signers=only_a))
