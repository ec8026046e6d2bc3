"""Signed baseline sets: SSHSIG signatures over the set's manifest, verified in-process.

Pipeline position: baseline loading, after the set is read and checked, before it is returned.
With ``require_signature`` the loader (:func:`driftd.baselines.loader.load_set`, given
``allowed_signers``) calls :func:`verify_set` over the digests of exactly the bytes it parsed;
any failure is a problem of the set like a schema error, so start-up refuses it and hot reload
keeps the last good set.  ``driftd baseline sign`` (:func:`sign_set`) runs the real
``ssh-keygen -Y sign -n driftd-baselines`` on the manifest (:mod:`driftd.baselines.manifest`)
and writes :data:`~driftd.baselines.manifest.SIGNATURE_FILE`; verifying needs no ssh-keygen.

The format is OpenSSH's PROTOCOL.sshsig (what git uses for SSH-signed commits): an armored
blob ``"SSHSIG" uint32(1) string(publickey) string(namespace) string(reserved)
string(hash_algorithm) string(signature)`` whose signature covers ``"SSHSIG"
string(namespace) string(reserved) string(hash_algorithm) string(H(message))``.  Keys:
Ed25519, ECDSA nistp256/384/521, RSA >= 2048 bits with rsa-sha2-256/512 (never SHA-1);
certificates and security keys (sk-*) are refused.  Signers come from an OpenSSH
``allowed_signers`` file (``principals [options] keytype base64 [comment]``); options
``namespaces=``, ``valid-after=``, ``valid-before=`` and ``cert-authority`` are honoured as
ssh-keygen does, any other option makes the whole file invalid (ssh-keygen refuses it too),
and so does any malformed line, wherever it is.

The only importer of ``cryptography`` (an import-linter contract in ``pyproject.toml``).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import os
import re
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from driftd.baselines.manifest import (
    NAMESPACE,
    SIGNATURE_FILE,
    Manifest,
    ManifestError,
    compose,
    differences,
    parse,
    render,
    split,
)

if TYPE_CHECKING:
    from driftd.baselines.loader import BaselineSet

MAGIC = b"SSHSIG"
MAX_SIGNATURE_FILE_BYTES = 16 * 1024 * 1024  # a manifest of ~150,000 files
MAX_ALLOWED_SIGNERS_BYTES = 1024 * 1024
MIN_RSA_BITS = 2048
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"sha256": hashes.SHA256, "sha512": hashes.SHA512}
_CURVES: dict[str, tuple[type[ec.EllipticCurve], type[hashes.HashAlgorithm]]] = {
    "nistp256": (ec.SECP256R1, hashes.SHA256),
    "nistp384": (ec.SECP384R1, hashes.SHA384),
    "nistp521": (ec.SECP521R1, hashes.SHA512),
}
_RSA_SIGS: dict[str, type[hashes.HashAlgorithm]] = {"rsa-sha2-256": hashes.SHA256, "rsa-sha2-512": hashes.SHA512}
KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})


class SignatureError(Exception):
    """Why a set's signature is not accepted: ``(file, reason)`` pairs, the first the main one.

    Each reason is one line and starts with what went wrong: ``unsigned``, ``altered file X``,
    ``added file X``, ``removed file X``, ``signer not allowed``, ``bad signature``,
    ``wrong namespace``, ``malformed signature``, ``allowed signers``.
    """

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        super().__init__(problems[0][1])
        self.problems = list(problems)


class SigningError(Exception):
    """``driftd baseline sign`` could not produce a signature (ssh-keygen failed, or its output is unusable)."""


# --------------------------------------------------------------------------- SSH wire format


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"{self.what} is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def string(self) -> bytes:
        return self.take(self.u32())

    def text(self) -> str:
        try:
            return self.string().decode("ascii")
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.what} holds a name that is not ASCII") from e

    def mpint(self) -> int:
        raw = self.string()
        if raw and raw[0] & 0x80:
            raise ValueError(f"{self.what} holds a negative integer")
        return int.from_bytes(raw, "big")

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ValueError(f"{self.what} has trailing bytes")


def _string(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def fingerprint(key_blob: bytes) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key_blob).digest()).decode().rstrip("=")


def key_type(key_blob: bytes) -> str:
    try:
        return _Reader(key_blob, "public key").text()
    except ValueError:
        return "unknown"


def describe_key(key_blob: bytes) -> str:
    return f"{key_type(key_blob)} key {fingerprint(key_blob)}"


@dataclass(frozen=True)
class Sshsig:
    """A parsed SSHSIG blob (nothing verified yet)."""

    publickey: bytes
    namespace: str
    reserved: bytes
    hash_algorithm: str
    signature: bytes

    def signed_data(self, message: bytes) -> bytes:
        h = hashlib.new(self.hash_algorithm, message).digest()
        return MAGIC + b"".join(_string(x) for x in (self.namespace.encode(), self.reserved,
                                                      self.hash_algorithm.encode(), h))


def parse_armored(armored: bytes) -> Sshsig:
    """The SSHSIG inside ``-----BEGIN SSH SIGNATURE-----`` ... ``-----END SSH SIGNATURE-----``; ValueError if malformed."""
    lines = armored.strip().splitlines()
    if len(lines) < 3 or lines[0].strip() != b"-----BEGIN SSH SIGNATURE-----" or lines[-1].strip() != b"-----END SSH SIGNATURE-----":
        raise ValueError("not an armored SSH signature")
    try:
        blob = base64.b64decode(b"".join(line.strip() for line in lines[1:-1]), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError("the armored signature is not valid base64") from e
    r = _Reader(blob, "signature")
    if r.take(6) != MAGIC:
        raise ValueError("not an SSHSIG signature (no SSHSIG magic)")
    version = r.u32()
    if version != 1:
        raise ValueError(f"SSHSIG version {version} (driftd reads version 1)")
    sig = Sshsig(publickey=r.string(), namespace=r.text(), reserved=r.string(), hash_algorithm=r.text(), signature=r.string())
    r.done()
    if sig.hash_algorithm not in _HASHES:
        raise ValueError(f"hash algorithm {sig.hash_algorithm!r} (SSHSIG allows sha256 and sha512)")
    return sig


def verify_signature(key_blob: bytes, signature: bytes, data: bytes) -> None:
    """Check an SSH signature blob over ``data`` with an SSH public key blob.

    Raises :class:`InvalidSignature` when it does not verify, ValueError when the key or
    signature is malformed or of a type driftd does not accept.
    """
    k = _Reader(key_blob, "public key")
    ktype = k.text()
    s = _Reader(signature, "signature blob")
    stype, sig = s.text(), s.string()
    s.done()
    if ktype == "ssh-ed25519":
        raw = k.string()
        k.done()
        if stype != ktype or len(raw) != 32:
            raise ValueError(f"an {stype} signature from an {ktype} key")
        Ed25519PublicKey.from_public_bytes(raw).verify(sig, data)
    elif ktype.startswith("ecdsa-sha2-"):
        curve_name, point = k.text(), k.string()
        k.done()
        if curve_name not in _CURVES or ktype != f"ecdsa-sha2-{curve_name}" or stype != ktype:
            raise ValueError(f"an {stype} signature from an {ktype} key on curve {curve_name!r}")
        curve, digest = _CURVES[curve_name]
        public = ec.EllipticCurvePublicKey.from_encoded_point(curve(), point)
        rs = _Reader(sig, "ECDSA signature")
        r_, s_ = rs.mpint(), rs.mpint()
        rs.done()
        public.verify(encode_dss_signature(r_, s_), data, ec.ECDSA(digest()))
    elif ktype == "ssh-rsa":
        e, n = k.mpint(), k.mpint()
        k.done()
        if stype not in _RSA_SIGS:
            raise ValueError(f"RSA signature algorithm {stype!r} (only rsa-sha2-256 and rsa-sha2-512; never SHA-1)")
        if n.bit_length() < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {n.bit_length()} bits (at least {MIN_RSA_BITS})")
        rsa.RSAPublicNumbers(e, n).public_key().verify(sig, data, padding.PKCS1v15(), _RSA_SIGS[stype]())
    else:
        raise ValueError(f"key type {ktype} is not supported (Ed25519, ECDSA, RSA; no certificates or security keys)")


# --------------------------------------------------------------------------- allowed signers


@dataclass(frozen=True)
class AllowedSigner:
    line: int
    principals: str
    key_type: str
    key: bytes
    cert_authority: bool = False
    namespaces: str | None = None
    valid_after: float | None = None
    valid_before: float | None = None


def _token(s: str) -> tuple[str, str]:
    """First whitespace-delimited token (a leading double quote runs to the closing one) and the rest."""
    if s.startswith('"'):
        end = s.find('"', 1)
        if end < 0:
            raise ValueError("unterminated quote")
        return s[1:end], s[end + 1:].lstrip(" \t")
    m = re.match(r"[^ \t]+", s)
    tok = m.group(0) if m else ""
    return tok, s[len(tok):].lstrip(" \t")


def _split_options(s: str) -> tuple[list[str], str]:
    """Comma-separated options up to the first unquoted blank, and the rest of the line."""
    opts, cur, quoted, i = [], "", False, 0
    while i < len(s):
        c = s[i]
        if c == '"':
            quoted = not quoted
        elif c in " \t" and not quoted:
            break
        elif c == "," and not quoted:
            opts.append(cur)
            cur = ""
            i += 1
            continue
        cur += c
        i += 1
    if quoted:
        raise ValueError("unterminated quote in the options")
    opts.append(cur)
    if any(not o for o in opts):
        raise ValueError("empty option")
    return opts, s[i:].lstrip(" \t")


def _absolute_time(v: str) -> float:
    """ssh-keygen's YYYYMMDD[HHMM[SS]] with an optional Z (UTC); local time without it."""
    utc = v[-1:] in ("Z", "z")
    digits = v[:-1] if utc else v
    fmt = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}.get(len(digits))
    if fmt is None or not digits.isdigit():
        raise ValueError(f"time {v!r} is not YYYYMMDD[HHMM[SS]][Z]")
    tm = time.strptime(digits, fmt)
    return float(calendar.timegm(tm)) if utc else time.mktime(tm)


def _parse_option(opt: str, fields: dict[str, object]) -> None:
    name, eq, value = opt.partition("=")
    name = name.lower()
    if name == "cert-authority" and not eq:
        fields["cert_authority"] = True
        return
    if name not in ("namespaces", "valid-after", "valid-before") or not eq:
        raise ValueError(f"option {opt!r} is not understood (driftd knows namespaces, valid-after, valid-before, "
                         "cert-authority); refused, as ssh-keygen refuses it")
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        raise ValueError(f"option {name} needs a double-quoted value")
    key = name.replace("-", "_")
    if key in fields:
        raise ValueError(f"option {name} given twice")
    fields[key] = value[1:-1] if name == "namespaces" else _absolute_time(value[1:-1])


def _parse_signer_line(n: int, line: str) -> AllowedSigner | None:
    s = line.strip(" \t\r\n")
    if not s or s.startswith("#"):
        return None
    principals, rest = _token(s)
    if not principals or not rest:
        raise ValueError("expected: principals [options] keytype base64-key [comment]")
    fields: dict[str, object] = {}
    first, _ = _token(rest)
    if first not in KEY_TYPES and not first.endswith("-cert-v01@openssh.com"):
        opts, rest = _split_options(rest)
        for o in opts:
            _parse_option(o, fields)
    ktype, rest = _token(rest)
    b64, _comment = _token(rest)
    if ktype not in KEY_TYPES and not ktype.endswith("-cert-v01@openssh.com"):
        raise ValueError(f"unknown key type {ktype!r}" if ktype else "missing key")
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError("the key is not valid base64") from e
    if key_type(blob) != ktype:
        raise ValueError(f"the key is not a {ktype} key")
    after, before, namespaces = fields.get("valid_after"), fields.get("valid_before"), fields.get("namespaces")
    after = after if isinstance(after, float) else None
    before = before if isinstance(before, float) else None
    if after is not None and before is not None and before <= after:
        raise ValueError('"valid-before" is not after "valid-after"')
    return AllowedSigner(line=n, principals=principals, key_type=ktype, key=blob, cert_authority=bool(fields.get("cert_authority")),
                         namespaces=namespaces if isinstance(namespaces, str) else None, valid_after=after, valid_before=before)


def parse_allowed_signers(text: str, path: str = "allowed_signers") -> list[AllowedSigner]:
    """Every signer of an OpenSSH allowed_signers file; ValueError naming the line at the first bad one."""
    out: list[AllowedSigner] = []
    for n, line in enumerate(text.splitlines(), start=1):
        try:
            signer = _parse_signer_line(n, line)
        except ValueError as e:
            raise ValueError(f"{path} line {n}: {e}") from None
        if signer is not None:
            out.append(signer)
    return out


def _pattern_matches(s: str, pattern: str) -> bool:
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, s, re.DOTALL) is not None


def match_pattern_list(s: str, patterns: str) -> bool:
    """OpenSSH's pattern-list: comma-separated ``*``/``?`` globs, a ``!`` pattern that matches vetoes."""
    positive = False
    for p in patterns.split(","):
        if p.startswith("!"):
            if _pattern_matches(s, p[1:]):
                return False
        elif _pattern_matches(s, p):
            positive = True
    return positive


def _fmt_time(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def find_signer(allowed: Sequence[AllowedSigner], key_blob: bytes, namespace: str, now: float) -> AllowedSigner:
    """The allowed-signers entry that lets ``key_blob`` sign in ``namespace`` at ``now``.

    LookupError: no line lists the key; ValueError: the lines that list it do not allow it (why).
    """
    why: list[str] = []
    for a in allowed:
        if a.cert_authority or a.key != key_blob:
            continue  # a cert-authority line vouches for certificates only (ssh-keygen)
        if a.namespaces is not None and not match_pattern_list(namespace, a.namespaces):
            why.append(f"line {a.line} ({a.principals}) does not allow namespace {namespace!r} (namespaces=\"{a.namespaces}\")")
        elif a.valid_after is not None and now < a.valid_after:
            why.append(f"line {a.line} ({a.principals}) is not valid before {_fmt_time(a.valid_after)}")
        elif a.valid_before is not None and now > a.valid_before:
            why.append(f"line {a.line} ({a.principals}) expired at {_fmt_time(a.valid_before)}")
        else:
            return a
    if why:
        raise ValueError("; ".join(why))
    raise LookupError("not listed")


# --------------------------------------------------------------------------- a set's signature


@dataclass(frozen=True)
class Signer:
    principals: str
    key: str  # "<keytype> key SHA256:..."
    line: int

    def __str__(self) -> str:
        return f"{self.principals} ({self.key})"


def _read_bounded(path: Path, limit: int) -> bytes:
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path} is over {limit} bytes")
    return data


def load_allowed_signers(path: str | os.PathLike[str]) -> list[AllowedSigner]:
    """Read and parse an allowed_signers file; SignatureError if it cannot be used."""
    p = Path(path)
    try:
        text = _read_bounded(p, MAX_ALLOWED_SIGNERS_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SignatureError([(str(p), f"allowed signers: cannot read {p}: {getattr(e, 'strerror', None) or e}")]) from None
    try:
        signers = parse_allowed_signers(text, str(p))
    except ValueError as e:
        raise SignatureError([(str(p), f"allowed signers: {e}")]) from None
    if not signers:
        raise SignatureError([(str(p), f"allowed signers: {p} lists no key, so no set can be accepted")])
    return signers


def verify_set(directory: str | os.PathLike[str], digests: dict[str, str], version: str,
               allowed_signers: str | os.PathLike[str], *, now: float | None = None) -> Signer:
    """Check the signature of a set whose files the loader read as ``digests`` (relative path -> sha256).

    Returns who signed it; raises :class:`SignatureError` when the set is unsigned, the
    signature is malformed, made for another namespace, by a key ``allowed_signers`` does not
    allow (then), does not verify, or when a file was altered, added or removed since signing.
    """
    root = Path(directory)
    sig_path = root / SIGNATURE_FILE
    shown = str(sig_path)
    allowed = load_allowed_signers(allowed_signers)
    try:
        raw = _read_bounded(sig_path, MAX_SIGNATURE_FILE_BYTES)
    except FileNotFoundError:
        raise SignatureError([(shown, f"unsigned: no {SIGNATURE_FILE} in the directory (sign the set with "
                                      "`driftd baseline sign DIR --key KEY`)")]) from None
    except OSError as e:
        raise SignatureError([(shown, f"unsigned: cannot read {SIGNATURE_FILE}: {e.strerror or e}")]) from None
    try:
        message, armored = split(raw)
        sig = parse_armored(armored)
    except ValueError as e:
        raise SignatureError([(shown, f"malformed signature: {e}")]) from None
    if sig.namespace != NAMESPACE:
        raise SignatureError([(shown, f"wrong namespace: signed for {sig.namespace!r}, driftd baselines need {NAMESPACE!r} "
                                      f"(ssh-keygen -Y sign -n {NAMESPACE})")])
    key = describe_key(sig.publickey)
    try:
        entry = find_signer(allowed, sig.publickey, sig.namespace, time.time() if now is None else now)
    except LookupError:
        raise SignatureError([(shown, f"signer not allowed: {key} is not in {allowed_signers}")]) from None
    except ValueError as e:
        raise SignatureError([(shown, f"signer not allowed: {key}: {allowed_signers} {e}")]) from None
    try:
        verify_signature(sig.publickey, sig.signature, sig.signed_data(message))
    except InvalidSignature:
        raise SignatureError([(shown, f"bad signature: the signature does not verify with {key} "
                                      f"(the manifest in {SIGNATURE_FILE} was changed after signing)")]) from None
    except ValueError as e:
        raise SignatureError([(shown, f"bad signature: {e}")]) from None
    try:
        signed = parse(message)
    except ManifestError as e:
        raise SignatureError([(shown, f"malformed signature: the signed manifest: {e}")]) from None
    diffs = differences(signed, Manifest(version, digests))
    if diffs:
        what = {"altered": "its content changed after signing", "added": "it is not in the signed manifest",
                "removed": "it is in the signed manifest but the set no longer reads it"}
        raise SignatureError([(str(root / rel), f"{kind} file {rel}: {what[kind]}") for rel, kind in diffs])
    if signed.version != version:
        raise SignatureError([(shown, f"bad signature: signed version {signed.version}, the set is version {version}")])
    return Signer(principals=entry.principals, key=key, line=entry.line)


def sign_set(bset: BaselineSet, key: str | os.PathLike[str], *, keygen: str = "ssh-keygen") -> Path:
    """Sign a loaded set with ``ssh-keygen -Y sign -n driftd-baselines -f KEY``; write and return the signature file.

    The signature is checked in-process (parsed, namespace, verified with the key it names)
    before it replaces the old one, atomically.
    """
    message = render(bset.file_digests, bset.version)
    try:
        proc = subprocess.run([keygen, "-Y", "sign", "-n", NAMESPACE, "-f", str(key)], input=message,
                              capture_output=True, check=False)
    except OSError as e:
        raise SigningError(f"cannot run {keygen}: {e.strerror or e}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SigningError(f"{keygen} -Y sign failed (exit {proc.returncode}): {err[-1] if err else 'no message'}")
    try:
        sig = parse_armored(proc.stdout)
        if sig.namespace != NAMESPACE:
            raise ValueError(f"namespace {sig.namespace!r}")
        verify_signature(sig.publickey, sig.signature, sig.signed_data(message))
    except (ValueError, InvalidSignature) as e:
        raise SigningError(f"{keygen} wrote a signature driftd cannot verify: {e or 'does not verify'}") from None
    target = Path(bset.directory) / SIGNATURE_FILE
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=SIGNATURE_FILE + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(compose(message, proc.stdout))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


__all__ = ["AllowedSigner", "SignatureError", "Signer", "SigningError", "find_signer", "load_allowed_signers",
           "parse_allowed_signers", "parse_armored", "sign_set", "verify_set", "verify_signature"]
