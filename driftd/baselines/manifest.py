"""The manifest of a baseline set: what a signature covers (pure, stdlib only).

Pipeline position: baseline loading.  The loader (:mod:`driftd.baselines.loader`) records the
sha256 of every file it reads — each ``*.yaml``/``*.yml`` and each ``source:`` file, as the
bytes it parsed — and the set's version; :func:`render` turns them into one canonical text,
the message ``driftd baseline sign`` signs and :mod:`driftd.baselines.signing` verifies.  Sign
and verify both take it from the loader, so they cannot disagree about what a set is::

    driftd-baselines manifest v1
    version 3f2a9c0d1e7b
    9b1e…(64 hex)  files/sshd_config
    c03d…(64 hex)  sshd.yaml

Paths are relative to the baselines directory, ``/``-separated, sorted, one per line (two
spaces after the digest, as ``sha256sum`` prints).  The signature file sits in the directory as
:data:`SIGNATURE_FILE`, a dot-file the loader never reads as a baseline: the manifest text
followed by the armored SSHSIG signature (``-----BEGIN SSH SIGNATURE-----``) over exactly
those manifest bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

SIGNATURE_FILE = ".driftd-baselines.sig"
NAMESPACE = "driftd-baselines"
HEADER = "driftd-baselines manifest v1"
ARMOR_BEGIN = b"-----BEGIN SSH SIGNATURE-----"
ARMOR_END = b"-----END SSH SIGNATURE-----"
_ENTRY = re.compile(r"([0-9a-f]{64})  (.+)")
_VERSION = re.compile(r"version ([0-9A-Za-z._-]+)")


class ManifestError(ValueError):
    """A manifest (or signature file) that is not in the format above."""


@dataclass(frozen=True)
class Manifest:
    version: str
    digests: dict[str, str]  # relative path -> sha256 hex


def check_path(rel: str) -> str | None:
    """Why ``rel`` cannot be a manifest line (None: it can)."""
    if not rel or any(c in rel for c in "\n\r\0"):
        return "its name holds a line break or NUL"
    if rel != rel.strip():
        return "its name starts or ends with whitespace"
    return None


def render(digests: Mapping[str, str], version: str) -> bytes:
    """The canonical manifest text of a set (UTF-8 bytes, one trailing newline)."""
    lines = [HEADER, f"version {version}"]
    for rel in sorted(digests):
        why = check_path(rel)
        if why is not None:
            raise ManifestError(f"{rel!r} cannot be listed in a manifest: {why}")
        lines.append(f"{digests[rel]}  {rel}")
    return ("\n".join(lines) + "\n").encode()


def parse(raw: bytes) -> Manifest:
    """The manifest :func:`render` wrote; anything else is a :class:`ManifestError`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError("manifest is not UTF-8") from e
    if not text.endswith("\n"):
        raise ManifestError("manifest does not end with a newline")
    lines = text[:-1].split("\n")
    if lines[0] != HEADER:
        raise ManifestError(f"manifest does not start with {HEADER!r}")
    m = _VERSION.fullmatch(lines[1]) if len(lines) > 1 else None
    if m is None:
        raise ManifestError("manifest line 2 is not 'version <version>'")
    digests: dict[str, str] = {}
    last = ""
    for n, line in enumerate(lines[2:], start=3):
        entry = _ENTRY.fullmatch(line)
        if entry is None:
            raise ManifestError(f"manifest line {n} is not '<sha256>  <path>'")
        if digests and entry.group(2) <= last:
            raise ManifestError(f"manifest line {n}: paths are not sorted and unique")
        last = entry.group(2)
        digests[last] = entry.group(1)
    if render(digests, m.group(1)) != raw:
        raise ManifestError("manifest is not in canonical form")
    return Manifest(m.group(1), digests)


def compose(manifest: bytes, armored: bytes) -> bytes:
    """The signature file: the manifest, then the armored signature over it."""
    return manifest + armored.strip() + b"\n"


def split(raw: bytes) -> tuple[bytes, bytes]:
    """(manifest bytes, armored signature) of a signature file."""
    at = raw.find(ARMOR_BEGIN)
    if at < 0:
        raise ManifestError(f"no {ARMOR_BEGIN.decode()} block")
    if raw.count(ARMOR_BEGIN) != 1:
        raise ManifestError("more than one signature block")
    end = raw.find(ARMOR_END, at)
    if end < 0 or raw[end + len(ARMOR_END):].strip():
        raise ManifestError(f"the signature block does not end with {ARMOR_END.decode()} (or text follows it)")
    if at and not raw[:at].endswith(b"\n"):
        raise ManifestError("the signature block does not start on a line of its own")
    return raw[:at], raw[at:]


def differences(signed: Manifest, current: Manifest) -> list[tuple[str, str]]:
    """``(path, what)`` for every file altered, added or removed since signing, sorted by path."""
    out: list[tuple[str, str]] = []
    for rel in sorted(set(signed.digests) | set(current.digests)):
        s, c = signed.digests.get(rel), current.digests.get(rel)
        if s == c:
            continue
        if s is None:
            out.append((rel, "added"))
        elif c is None:
            out.append((rel, "removed"))
        else:
            out.append((rel, "altered"))
    return out


__all__ = ["NAMESPACE", "SIGNATURE_FILE", "Manifest", "ManifestError", "compose", "differences", "parse", "render", "split"]
