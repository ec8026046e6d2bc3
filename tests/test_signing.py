"""Signed baseline sets: `driftd baseline sign` (the real ssh-keygen), in-process verification, the daemon's reload.

Keys are made by the real ``ssh-keygen`` (Debian openssh-client): ed25519, ecdsa (nistp256, 384, 521)
and rsa; signatures are cross-checked with ``ssh-keygen -Y verify``.  Without ssh-keygen these tests
skip locally and fail under ``CI=true`` (``need``).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import host_baseline, poll
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from structlog.testing import capture_logs

from driftd import cli
from driftd.baselines import manifest
from driftd.baselines.loader import fingerprint, load_set
from driftd.engine.daemon import BaselineManager, Daemon
from driftd.engine.once import run_once
from driftd.observability.logging import configure_logging, get_logger
from driftd.settings import load_settings
from driftd.targets.kubernetes.events import KubeEvents

SIG = manifest.SIGNATURE_FILE
MOTD = host_baseline(name="motd", spec="""
    files:
      - path: /etc/motd
        source: files/motd
        mode: "0644"
""")
ISSUE = host_baseline(name="issue", spec="""
    files:
      - path: /etc/issue
        content: "authorised use only\\n"
        mode: "0644"
""")
KEY_TYPES = {"ed25519": ["-t", "ed25519"], "ecdsa-256": ["-t", "ecdsa", "-b", "256"], "ecdsa-384": ["-t", "ecdsa", "-b", "384"],
             "ecdsa-521": ["-t", "ecdsa", "-b", "521"], "rsa": ["-t", "rsa", "-b", "3072"]}


@pytest.fixture(scope="module")
def keygen() -> str:
    path = shutil.which("ssh-keygen")
    if path is None:  # need() skips locally, fails under CI=true (.ci/run installs openssh-client)
        from conftest import need

        need(False, "ssh-keygen (Debian package openssh-client) is not installed")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory, keygen: str) -> Callable[[str], Path]:
    """``keys(kind)``: a private key file of that kind (made once per module, no passphrase)."""
    made: dict[str, Path] = {}
    base = tmp_path_factory.mktemp("keys")

    def get(kind: str, name: str = "") -> Path:
        label = f"{kind}{name}"
        if label not in made:
            path = base / label
            subprocess.run([keygen, "-q", *KEY_TYPES[kind], "-N", "", "-C", label, "-f", str(path)], check=True)
            made[label] = path
        return made[label]

    return get


def allowed(tmp_path: Path, *lines: tuple[str, Path] | str, options: str = 'namespaces="driftd-baselines"') -> Path:
    """An allowed_signers file: ``(principal, key)`` lines with ``options``, or raw lines."""
    out = []
    for line in lines:
        if isinstance(line, str):
            out.append(line)
            continue
        principal, key = line
        pub = " ".join(Path(f"{key}.pub").read_text().split()[:2])
        out.append(f"{principal} {options} {pub}".replace("  ", " "))
    path = tmp_path / f"allowed_signers_{len(list(tmp_path.glob('allowed_signers_*')))}"
    path.write_text("# who may sign driftd baselines\n" + "\n".join(out) + "\n")
    return path


def make_set(root: Path, motd: str = "hello\n") -> Path:
    (root / "files").mkdir(parents=True, exist_ok=True)
    (root / "motd.yaml").write_text(MOTD)
    (root / "files/motd").write_text(motd)
    return root


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def sign(capsys: pytest.CaptureFixture[str], directory: Path, key: Path) -> None:
    rc, _, err = run_cli(capsys, "baseline", "sign", str(directory), "--key", str(key))
    assert rc == 0, err
    assert (directory / SIG).is_file()


def verify(capsys: pytest.CaptureFixture[str], directory: Path, signers: Path) -> tuple[int, str]:
    rc, out, err = run_cli(capsys, "baseline", "verify", str(directory), "--allowed-signers", str(signers))
    if rc == 0:
        assert err == ""
        return rc, out.strip()
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"verify must give one line: {err!r}"
    return rc, lines[0]


def keygen_verify(keygen: str, directory: Path, signers: Path, principal: str) -> bool:
    """What ``ssh-keygen -Y verify`` says about the signature file (manifest = message, armor = signature)."""
    message, armored = manifest.split((directory / SIG).read_bytes())
    sigfile = directory.parent / "split.sig"
    sigfile.write_bytes(armored)
    proc = subprocess.run([keygen, "-Y", "verify", "-f", str(signers), "-I", principal, "-n", manifest.NAMESPACE,
                           "-s", str(sigfile)], input=message, capture_output=True)
    return proc.returncode == 0


def resign_raw(keygen: str, directory: Path, key: Path, namespace: str, message: bytes | None = None) -> None:
    """Replace the signature file with ssh-keygen's own signature over ``message`` (default: the signed manifest)."""
    if message is None:
        message, _ = manifest.split((directory / SIG).read_bytes())
    armored = subprocess.run([keygen, "-Y", "sign", "-n", namespace, "-f", str(key)], input=message,
                             capture_output=True, check=True).stdout
    (directory / SIG).write_bytes(manifest.compose(message, armored))


# --------------------------------------------------------------------------- sign + verify, every key type


@pytest.mark.parametrize("kind", sorted(KEY_TYPES))
def test_signed_set_verifies_and_ssh_keygen_agrees(kind, keys, keygen, tmp_path, capsys):
    """`baseline sign` (ssh-keygen) then `baseline verify` (in-process) passes; ssh-keygen -Y verify agrees."""
    bdir = make_set(tmp_path / "b")
    key = keys(kind)
    sign(capsys, bdir, key)
    signers = allowed(tmp_path, ("release@example.com", key))
    rc, line = verify(capsys, bdir, signers)
    assert rc == 0, line
    assert line.startswith(f"{bdir}: signed by release@example.com (")
    assert keygen_verify(keygen, bdir, signers, "release@example.com")
    bset, problems = load_set(bdir, allowed_signers=signers)
    assert bset is not None, problems
    assert bset.signed_by is not None and bset.signed_by.startswith("release@example.com (")
    assert set(bset.file_digests) == {"motd.yaml", "files/motd"}


def test_manifest_lists_every_file_the_loader_reads(tmp_path, capsys, keys):
    """The signed manifest: sha256 + path of each YAML and source file (sorted), and the set's version."""
    bdir = make_set(tmp_path / "b")
    (bdir / "sub").mkdir()
    (bdir / "sub/issue.yml").write_text(ISSUE)
    (bdir / "README.md").write_text("not read by the loader, not signed\n")
    sign(capsys, bdir, keys("ed25519"))
    message, _ = manifest.split((bdir / SIG).read_bytes())
    bset, _ = load_set(bdir)
    assert bset is not None
    import hashlib

    assert message.decode().splitlines() == [
        "driftd-baselines manifest v1",
        f"version {bset.version}",
        f"{hashlib.sha256(b'hello' + bytes([10])).hexdigest()}  files/motd",
        f"{hashlib.sha256(MOTD.encode()).hexdigest()}  motd.yaml",
        f"{hashlib.sha256(ISSUE.encode()).hexdigest()}  sub/issue.yml",
    ]
    assert manifest.parse(message).digests == bset.file_digests


# --------------------------------------------------------------------------- what is refused


def test_unsigned_set_is_refused(tmp_path, capsys, keys):
    bdir = make_set(tmp_path / "b")
    rc, line = verify(capsys, bdir, allowed(tmp_path, ("a", keys("ed25519"))))
    assert rc == 1
    assert line.startswith(f"driftd: {bdir}: unsigned: no {SIG}")


@pytest.mark.parametrize("changed", ["motd.yaml", "files/motd"])
def test_a_file_altered_after_signing_is_refused_by_name(changed, tmp_path, capsys, keys, keygen):
    """A YAML file or a source file changed after signing: refused, naming the file; ssh-keygen still
    accepts the signature (over the manifest), which is why driftd compares the manifest too."""
    bdir = make_set(tmp_path / "b")
    key = keys("ed25519")
    sign(capsys, bdir, key)
    signers = allowed(tmp_path, ("a", key))
    path = bdir / changed
    path.write_text(path.read_text().replace("hello", "hijacked") if changed == "files/motd" else
                    path.read_text().replace('mode: "0644"', 'mode: "0666"'))
    rc, line = verify(capsys, bdir, signers)
    assert rc == 1
    assert line == f"driftd: {bdir}: altered file {changed}: its content changed after signing"


def test_a_file_added_after_signing_is_refused(tmp_path, capsys, keys):
    bdir = make_set(tmp_path / "b")
    key = keys("ed25519")
    sign(capsys, bdir, key)
    (bdir / "issue.yaml").write_text(ISSUE)
    rc, line = verify(capsys, bdir, allowed(tmp_path, ("a", key)))
    assert rc == 1
    assert line == f"driftd: {bdir}: added file issue.yaml: it is not in the signed manifest"


def test_a_file_removed_after_signing_is_refused(tmp_path, capsys, keys):
    bdir = make_set(tmp_path / "b")
    (bdir / "issue.yaml").write_text(ISSUE)
    key = keys("ed25519")
    sign(capsys, bdir, key)
    (bdir / "issue.yaml").unlink()
    rc, line = verify(capsys, bdir, allowed(tmp_path, ("a", key)))
    assert (rc, line) == (1, f"driftd: {bdir}: removed file issue.yaml: it is in the signed manifest but the set no "
                             "longer reads it")


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa-256", "rsa"])
def test_a_key_not_in_allowed_signers_is_refused(kind, tmp_path, capsys, keys, keygen):
    bdir = make_set(tmp_path / "b")
    sign(capsys, bdir, keys(kind, "-intruder"))
    signers = allowed(tmp_path, ("release", keys("ed25519")), ("ops", keys("rsa")))
    rc, line = verify(capsys, bdir, signers)
    assert rc == 1
    assert line.startswith(f"driftd: {bdir}: signer not allowed: ")
    assert f"is not in {signers}" in line
    assert not keygen_verify(keygen, bdir, signers, "release")


def test_a_signature_for_another_namespace_is_refused(tmp_path, capsys, keys, keygen):
    """ssh-keygen -Y sign -n other: refused as the wrong namespace (ssh-keygen -Y verify -n driftd-baselines agrees)."""
    bdir = make_set(tmp_path / "b")
    key = keys("ed25519")
    sign(capsys, bdir, key)
    resign_raw(keygen, bdir, key, "other")
    signers = allowed(tmp_path, ("a", key), options="")
    rc, line = verify(capsys, bdir, signers)
    assert rc == 1
    assert line == (f"driftd: {bdir}: wrong namespace: signed for 'other', driftd baselines need 'driftd-baselines' "
                    "(ssh-keygen -Y sign -n driftd-baselines)")
    assert not keygen_verify(keygen, bdir, signers, "a")


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa-256", "rsa"])
def test_a_changed_manifest_is_a_bad_signature_for_both_verifiers(kind, tmp_path, capsys, keys, keygen):
    """Editing the manifest in the signature file (to cover an altered file) breaks the signature."""
    bdir = make_set(tmp_path / "b")
    key = keys(kind)
    sign(capsys, bdir, key)
    signers = allowed(tmp_path, ("a", key))
    assert keygen_verify(keygen, bdir, signers, "a")
    (bdir / "files/motd").write_text("hijacked\n")
    bset, _ = load_set(bdir)
    assert bset is not None
    _, armored = manifest.split((bdir / SIG).read_bytes())
    (bdir / SIG).write_bytes(manifest.compose(manifest.render(bset.file_digests, bset.version), armored))
    rc, line = verify(capsys, bdir, signers)
    assert rc == 1
    assert line.startswith(f"driftd: {bdir}: bad signature: the signature does not verify with ")
    assert not keygen_verify(keygen, bdir, signers, "a")


def test_a_corrupted_signature_blob_is_refused(tmp_path, capsys, keys):
    bdir = make_set(tmp_path / "b")
    key = keys("ed25519")
    sign(capsys, bdir, key)
    message, armored = manifest.split((bdir / SIG).read_bytes())
    blob = bytearray(base64.b64decode(b"".join(armored.splitlines()[1:-1])))
    blob[-1] ^= 1  # the last byte of the ed25519 signature
    body = base64.b64encode(bytes(blob))
    armored = b"-----BEGIN SSH SIGNATURE-----\n" + body + b"\n-----END SSH SIGNATURE-----\n"
    (bdir / SIG).write_bytes(manifest.compose(message, armored))
    rc, line = verify(capsys, bdir, allowed(tmp_path, ("a", key)))
    assert rc == 1 and "bad signature" in line
    (bdir / SIG).write_bytes(message + b"-----BEGIN SSH SIGNATURE-----\nnot base64!\n-----END SSH SIGNATURE-----\n")
    rc, line = verify(capsys, bdir, allowed(tmp_path, ("a", key)))
    assert rc == 1 and "malformed signature" in line


# --------------------------------------------------------------------------- allowed_signers semantics, cross-checked


@pytest.mark.parametrize(("options", "accepted", "why"), [
    ('namespaces="driftd-baselines"', True, ""),
    ('namespaces="git,driftd-*"', True, ""),
    ("", True, ""),
    ('namespaces="git"', False, "does not allow namespace 'driftd-baselines'"),
    ('namespaces="*,!driftd-baselines"', False, "does not allow namespace"),
    ('valid-after="20000101",valid-before="29991231Z"', True, ""),
    ('valid-before="20200101"', False, "expired at 2020-01-0"),
    ('valid-after="29990101Z"', False, "is not valid before 2999-01-01T00:00:00Z"),
])
def test_allowed_signers_options_agree_with_ssh_keygen(options, accepted, why, tmp_path, capsys, keys, keygen):
    bdir = make_set(tmp_path / "b")
    key = keys("ed25519")
    sign(capsys, bdir, key)
    signers = allowed(tmp_path, ("a@example.com", key), options=options)
    rc, line = verify(capsys, bdir, signers)
    assert (rc == 0) is accepted, line
    assert why in line
    if not accepted:
        assert "signer not allowed" in line
    assert keygen_verify(keygen, bdir, signers, "a@example.com") is accepted


@pytest.mark.parametrize("line", [
    'a restrict,namespaces="driftd-baselines" {pub}',  # an option driftd does not know (ssh-keygen refuses it too)
    'a namespaces=driftd-baselines {pub}',  # unquoted value
    "a {pub_type}",  # no key
    "a ssh-ed25519 not-base64!",
    'a valid-before="2020" {pub}',
])
def test_an_allowed_signers_file_driftd_does_not_understand_is_refused_whole(line, tmp_path, capsys, keys, keygen):
    bdir = make_set(tmp_path / "b")
    key = keys("ed25519")
    sign(capsys, bdir, key)
    pub = " ".join(Path(f"{key}.pub").read_text().split()[:2])
    signers = allowed(tmp_path, line.format(pub=pub, pub_type=pub.split()[0]))
    rc, out = verify(capsys, bdir, signers)
    assert rc == 1
    assert out.startswith(f"driftd: {bdir}: allowed signers: {signers} line 2: "), out
    assert not keygen_verify(keygen, bdir, signers, "a")


def test_cert_authority_lines_do_not_vouch_for_plain_keys(tmp_path, capsys, keys, keygen):
    bdir = make_set(tmp_path / "b")
    key = keys("ed25519")
    sign(capsys, bdir, key)
    signers = allowed(tmp_path, ("a", key), options='cert-authority,namespaces="driftd-baselines"')
    rc, line = verify(capsys, bdir, signers)
    assert rc == 1 and "signer not allowed" in line
    assert not keygen_verify(keygen, bdir, signers, "a")


def test_quoted_principals_and_several_lines(tmp_path, capsys, keys):
    bdir = make_set(tmp_path / "b")
    key = keys("ecdsa-256")
    sign(capsys, bdir, key)
    pub = " ".join(Path(f"{key}.pub").read_text().split()[:2])
    other = " ".join(Path(f"{keys('rsa')}.pub").read_text().split()[:2])
    signers = allowed(tmp_path, f"ops@example.com {other} ops key", "", f'"ci@example.com,release@example.com" {pub} ci')
    rc, line = verify(capsys, bdir, signers)
    assert rc == 0, line
    assert "signed by ci@example.com,release@example.com (ecdsa-sha2-nistp256 key SHA256:" in line


# --------------------------------------------------------------------------- lint, sign, settings, start-up


def test_lint_verifies_when_given_allowed_signers(tmp_path, capsys, keys):
    bdir = make_set(tmp_path / "b")
    key = keys("ed25519")
    signers = allowed(tmp_path, ("a", key))
    rc, out, _ = run_cli(capsys, "baseline", "lint", str(bdir))
    assert rc == 0  # no --allowed-signers: an unsigned set lints clean
    rc, out, _ = run_cli(capsys, "baseline", "lint", str(bdir), "--allowed-signers", str(signers))
    assert rc == 1
    assert out.startswith(f"{bdir / SIG}:1: (signature): unsigned: ")
    sign(capsys, bdir, key)
    rc, out, _ = run_cli(capsys, "baseline", "lint", str(bdir), "--allowed-signers", str(signers))
    assert rc == 0, out


def test_sign_refuses_an_invalid_set_and_a_failing_ssh_keygen(tmp_path, capsys, keys):
    bdir = make_set(tmp_path / "b")
    (bdir / "motd.yaml").write_text(MOTD.replace("mode:", "mdoe:"))
    rc, _, err = run_cli(capsys, "baseline", "sign", str(bdir), "--key", str(keys("ed25519")))
    assert rc == 1 and "the set is invalid, not signing it" in err and "mdoe: unknown field" in err
    assert not (bdir / SIG).exists()
    make_set(bdir)
    rc, _, err = run_cli(capsys, "baseline", "sign", str(bdir), "--key", str(tmp_path / "no-such-key"))
    assert rc == 1 and "ssh-keygen -Y sign failed" in err
    assert not (bdir / SIG).exists()


def test_verify_of_an_invalid_set_says_so(tmp_path, capsys, keys):
    bdir = make_set(tmp_path / "b")
    key = keys("ed25519")
    sign(capsys, bdir, key)
    (bdir / "motd.yaml").write_text(MOTD.replace("mode:", "mdoe:"))
    rc, line = verify(capsys, bdir, allowed(tmp_path, ("a", key)))
    assert rc == 1 and line.startswith(f"driftd: {bdir}: invalid set: {bdir}/motd.yaml:")


def test_require_signature_needs_allowed_signers(tmp_path):
    with pytest.raises(ValidationError, match="require_signature needs allowed_signers"):
        load_settings(require_signature=True)
    s = load_settings(require_signature=True, allowed_signers=tmp_path / "as")
    assert s.baseline_signers == tmp_path / "as"
    assert load_settings(allowed_signers=tmp_path / "as").baseline_signers is None  # opt-in: require_signature


def test_start_up_refuses_an_unsigned_set(tmp_path, capsys, keys, monkeypatch):
    """`driftd run` with require_signature does not start on an unsigned set; it starts on a signed one."""
    bdir = make_set(tmp_path / "b")
    key = keys("ed25519")
    signers = allowed(tmp_path, ("a", key))
    settings = load_settings(baselines=bdir, require_signature=True, allowed_signers=signers)
    monkeypatch.setattr("driftd.observability.logging._json", {"on": False})  # console logs: problems as text lines
    with pytest.raises(SystemExit) as exc:
        cli._load_baselines(settings)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "are invalid; not starting" in err and f"{bdir / SIG}:1: (signature): unsigned:" in err  # JSON or text
    sign(capsys, bdir, key)
    assert cli._load_baselines(settings).signed_by.startswith("a (ssh-ed25519 key SHA256:")


def test_fingerprint_sees_a_new_signature(tmp_path, capsys, keys):
    """Signing (only the dot-file changes) is a change hot reload sees."""
    bdir = make_set(tmp_path / "b")
    before = fingerprint(bdir)
    sign(capsys, bdir, keys("ed25519"))
    assert fingerprint(bdir) != before


def test_parse_rejects_non_canonical_manifests():
    good = manifest.render({"a.yaml": "0" * 64, "b/c.yml": "1" * 64}, "abc123")
    assert manifest.parse(good).digests == {"a.yaml": "0" * 64, "b/c.yml": "1" * 64}
    for bad in (good.replace(b"  a.yaml", b" a.yaml"), good + b"extra\n", good[:-1],
                manifest.HEADER.encode() + b"\nversion x\n" + b"1" * 64 + b"  b\n" + b"0" * 64 + b"  a\n"):
        with pytest.raises(manifest.ManifestError):
            manifest.parse(bad)
    with pytest.raises(manifest.ManifestError):
        manifest.render({"a\nb": "0" * 64}, "v")


# --------------------------------------------------------------------------- the daemon: hot reload with require_signature


def configmap_update(root: Path, files: dict[str, bytes], generation: int) -> None:
    """Swap a ConfigMap-style mount to ``files``: ``..<gen>/`` holds them, ``..data`` points at it, names link through it."""
    gen = root / f"..{generation}"
    for name, data in files.items():
        (gen / name).parent.mkdir(parents=True, exist_ok=True)
        (gen / name).write_bytes(data)
    tmp = root / "..data_tmp"
    tmp.symlink_to(gen.name)
    os.replace(tmp, root / "..data")
    for top in {name.split("/")[0] for name in files}:
        if not (root / top).is_symlink():
            (root / top).symlink_to(f"..data/{top}")


def signed_files(capsys: pytest.CaptureFixture[str], staging: Path, key: Path, motd: str) -> dict[str, bytes]:
    make_set(staging, motd)
    sign(capsys, staging, key)
    return {name: (staging / name).read_bytes() for name in ("motd.yaml", "files/motd", SIG)}


@pytest.fixture
def _debug_logs() -> None:
    configure_logging("json", "debug")


class _Api:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def __call__(self, method: str, path: str, body: Any = None, **_: Any) -> Any:
        self.calls.append((method, path, body))
        return {}


@pytest.mark.usefixtures("_debug_logs")
def test_manager_rejects_an_altered_set_like_an_invalid_one_and_takes_a_resigned_one(
        tmp_path, host_root, make_runtime, capsys, keys):
    """require_signature: an altered ConfigMap update is rejected (log, metric, node Event), the old set keeps being
    enforced; a properly re-signed update is taken."""
    key = keys("ed25519")
    signers = allowed(tmp_path, ("release", key))
    bdir = tmp_path / "mounted"
    bdir.mkdir()
    configmap_update(bdir, signed_files(capsys, tmp_path / "s1", key, "hello\n"), 1)
    reg = CollectorRegistry()
    rt = make_runtime(bdir, registry=reg, require_signature=True, allowed_signers=signers)
    manager = BaselineManager(rt.settings, rt.engine, rt.metrics, rt.engine.clock)
    manager.prime()
    good = rt.engine.baselines
    api = _Api()
    rt.engine.targets["kubernetes"] = SimpleNamespace(name="kubernetes", events=KubeEvents(
        api, node_name="node-a", target="kubernetes", enabled=True, log=get_logger()))

    # the update: motd changed, the old signature kept (an attacker without the key)
    altered = signed_files(capsys, tmp_path / "s1", key, "hello\n")
    altered["files/motd"] = b"pwned\n"
    configmap_update(bdir, altered, 2)
    with capture_logs() as logs:
        assert manager.check() is False
        assert manager.check() is False  # not re-reported
    assert rt.engine.baselines is good
    assert reg.get_sample_value("driftd_baseline_load_errors_total") == 1.0
    (ev,) = [e for e in logs if e["event"] == "baseline.rejected"]
    assert ev["log_level"] == "error" and ev["kept_version"] == good.version
    assert ev["problems"] == [f"{bdir}/files/motd:1: (signature): altered file files/motd: its content changed after signing"]
    ((method, path, body),) = api.calls
    assert (method, path) == ("POST", "/api/v1/namespaces/default/events")
    assert body["reason"] == "BaselineRejected" and body["involvedObject"]["kind"] == "Node"
    assert "altered file files/motd" in body["message"] and good.version in body["message"]
    del rt.engine.targets["kubernetes"]

    # the old set is still what is enforced
    (host_root / "etc/motd").write_text("pwned\n")
    run_once(rt.engine, rt.queue, attempts=1)
    assert (host_root / "etc/motd").read_text() == "hello\n"

    # an unsigned update is refused too
    unsigned = dict(altered)
    del unsigned[SIG]
    configmap_update(bdir, unsigned, 3)  # the mount's .driftd-baselines.sig link now dangles
    with capture_logs() as logs:
        assert manager.check() is False
    (ev,) = [e for e in logs if e["event"] == "baseline.rejected"]
    assert ev["problems"] == [f"{bdir / SIG}:1: (signature): unsigned: no {SIG} in the directory (sign the set with "
                              "`driftd baseline sign DIR --key KEY`)"]
    assert rt.engine.baselines is good

    # properly re-signed: taken
    configmap_update(bdir, signed_files(capsys, tmp_path / "s2", key, "hello, signed world\n"), 4)
    with capture_logs() as logs:
        assert manager.check() is True
    (ev,) = [e for e in logs if e["event"] == "baseline.loaded"]
    assert ev["signed_by"].startswith("release (ssh-ed25519 key SHA256:")
    run_once(rt.engine, rt.queue, attempts=1)
    assert (host_root / "etc/motd").read_text() == "hello, signed world\n"


def test_manager_retries_a_rejected_set_when_allowed_signers_change(tmp_path, make_runtime, capsys, keys):
    """A set signed by a key not yet allowed is taken once the allowed_signers file (a Secret) lists it."""
    old, new = keys("ed25519"), keys("ecdsa-256")
    signers = allowed(tmp_path, ("old", old))
    bdir = make_set(tmp_path / "b")
    sign(capsys, bdir, old)
    rt = make_runtime(bdir, require_signature=True, allowed_signers=signers)
    manager = BaselineManager(rt.settings, rt.engine, rt.metrics, rt.engine.clock)
    manager.prime()
    (bdir / "files/motd").write_text("rotated\n")
    sign(capsys, bdir, new)
    assert manager.check() is False
    assert manager.check() is False
    tmp = signers.with_name("as.tmp")
    tmp.write_text(signers.read_text() + f"new {' '.join(Path(f'{new}.pub').read_text().split()[:2])}\n")
    os.replace(tmp, signers)
    assert manager.check() is True
    assert rt.engine.desired["host:file:/etc/motd"].content == b"rotated\n"


def test_running_daemon_keeps_the_good_set_and_takes_a_resigned_one(tmp_path, host_root, make_runtime, capsys, keys):
    """A running daemon (scheduler, reload job, workers): an altered set is rejected while the old one is enforced;
    the re-signed set is reloaded and enforced."""
    key = keys("rsa")
    signers = allowed(tmp_path, ("release", key))
    bdir = tmp_path / "mounted"
    bdir.mkdir()
    configmap_update(bdir, signed_files(capsys, tmp_path / "s1", key, "hello\n"), 1)
    reg = CollectorRegistry()
    rt = make_runtime(bdir, registry=reg, require_signature=True, allowed_signers=signers, reload_interval_seconds=0.1,
                      scan={"interval_seconds": 3600, "jitter_seconds": 0, "inotify": False})
    manager = BaselineManager(rt.settings, rt.engine, rt.metrics, rt.engine.clock)
    manager.prime()
    good = rt.engine.baselines.version
    daemon = Daemon(settings=rt.settings, engine=rt.engine, queue=rt.queue, metrics=rt.metrics, manager=manager, api=None)
    stop = threading.Event()
    runner = threading.Thread(target=daemon.run_until, args=(stop,), daemon=True)
    runner.start()
    try:
        poll(lambda: (host_root / "etc/motd").is_file() and (host_root / "etc/motd").read_text() == "hello\n",
             "the first scan to enforce the signed set", 15)
        altered = signed_files(capsys, tmp_path / "s1", key, "hello\n")
        altered["motd.yaml"] = altered["motd.yaml"].replace(b'mode: "0644"', b'mode: "0666"')
        configmap_update(bdir, altered, 2)
        poll(lambda: reg.get_sample_value("driftd_baseline_load_errors_total") == 1.0, "the altered set's rejection", 15)
        assert rt.engine.baselines.version == good
        (host_root / "etc/motd").write_text("pwned\n")
        os.chmod(host_root / "etc/motd", 0o666)
        daemon.scan()
        poll(lambda: (host_root / "etc/motd").read_text() == "hello\n", "the old set's revert", 15)
        assert (host_root / "etc/motd").stat().st_mode & 0o777 == 0o644
        configmap_update(bdir, signed_files(capsys, tmp_path / "s2", key, "hello again\n"), 3)
        poll(lambda: rt.engine.baselines.version != good, "the re-signed set's reload", 15)
        poll(lambda: (host_root / "etc/motd").read_text() == "hello again\n", "the re-signed set's enforcement", 15)
        assert rt.engine.baselines.signed_by is not None
        assert reg.get_sample_value("driftd_baseline_load_errors_total") == 1.0
    finally:
        stop.set()
        runner.join(timeout=30)
    assert not runner.is_alive()


# --------------------------------------------------------------------------- the chart: requireSignature end to end

CHART = Path(__file__).resolve().parents[1] / "charts/driftd"


def helm_template(tmp_path: Path, values: dict[str, Any], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    import yaml
    from conftest import need
    from k8s_support import find_binaries

    binary = find_binaries().get("HELM") or os.environ.get("HELM") or shutil.which("helm")
    need(bool(binary), "helm binary not found: run `bash scripts/k8s-bins.sh`")
    assert binary is not None
    vf = tmp_path / f"values-{len(list(tmp_path.glob('values-*')))}.yaml"
    vf.write_text(yaml.safe_dump(values))
    r = subprocess.run([binary, "template", "driftd", str(CHART), "--namespace", "driftd", "--values", str(vf)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 or not check, r.stderr
    return r


def mounted_baselines(manifest_text: str, target: Path) -> Path:
    """The baselines ConfigMap laid out as the kubelet mounts it (items → ..<stamp>/, ..data, top-level links)."""
    import yaml

    docs = [d for d in yaml.safe_load_all(manifest_text) if d]
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    (vol,) = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "baselines"]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == vol["configMap"]["name"]]
    data = cm.get("data") or {}
    items = vol["configMap"].get("items") or [{"key": k, "path": k} for k in data]
    configmap_update(target, {i["path"]: data[i["key"]].encode() for i in items}, 1)
    return target


def test_chart_signature_values_reach_the_agent(tmp_path):
    """requireSignature → env; allowedSignersSecret → a read-only Secret mount; requireSignature alone is refused."""
    import yaml

    r = helm_template(tmp_path, {"baselines": {"requireSignature": True}}, check=False)
    assert r.returncode != 0 and "baselines.requireSignature needs baselines.allowedSignersSecret" in r.stderr
    docs = [d for d in yaml.safe_load_all(helm_template(tmp_path, {"baselines": {
        "requireSignature": True, "allowedSignersSecret": "driftd-signers"}}).stdout) if d]
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DRIFTD_REQUIRE_SIGNATURE"] == "true"
    assert env["DRIFTD_ALLOWED_SIGNERS"] == "/etc/driftd/allowed-signers/allowed_signers"
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "allowed-signers"]
    assert mount == {"name": "allowed-signers", "mountPath": "/etc/driftd/allowed-signers", "readOnly": True}
    (vol,) = [v for v in spec["volumes"] if v["name"] == "allowed-signers"]
    assert vol["secret"]["secretName"] == "driftd-signers"
    assert vol["secret"]["items"] == [{"key": "allowed_signers", "path": "allowed_signers"}]
    default = [d for d in yaml.safe_load_all(helm_template(tmp_path, {}).stdout) if d]
    (ds,) = [d for d in default if d["kind"] == "DaemonSet"]
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DRIFTD_REQUIRE_SIGNATURE"] == "false" and "DRIFTD_ALLOWED_SIGNERS" not in env
    assert not [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "allowed-signers"]


def test_chart_rendered_set_signed_as_documented_verifies_in_the_pod(tmp_path, capsys, keys):
    """docs/operations.md's recipe: render the ConfigMap, sign it, hand the signature back with
    baselines.signature; the set as the pod mounts it verifies, and one edited value is refused."""
    key = keys("ed25519")
    signers = allowed(tmp_path, ("ci@example.com", key))
    values: dict[str, Any] = {"baselines": {"requireSignature": True, "allowedSignersSecret": "signers"},
                              "extraBaselines": {"motd.yaml": MOTD}, "extraBaselineFiles": {"motd": "hello\n"}}
    unsigned = mounted_baselines(helm_template(tmp_path, values).stdout, tmp_path / "render")
    staging = tmp_path / "set"
    shutil.copytree(unsigned, staging, symlinks=False, ignore=shutil.ignore_patterns("..*"))
    sign(capsys, staging, key)
    values["baselines"]["signature"] = (staging / SIG).read_text()
    pod = mounted_baselines(helm_template(tmp_path, values).stdout, tmp_path / "pod")
    bset, problems = load_set(pod, allowed_signers=signers)
    assert bset is not None, problems
    assert bset.signed_by is not None and bset.signed_by.startswith("ci@example.com")
    values["extraBaselineFiles"]["motd"] = "changed\n"
    pod2 = mounted_baselines(helm_template(tmp_path, values).stdout, tmp_path / "pod2")
    bset, problems = load_set(pod2, allowed_signers=signers)
    assert bset is None
    assert [p.reason for p in problems] == ["altered file files/motd: its content changed after signing"]
