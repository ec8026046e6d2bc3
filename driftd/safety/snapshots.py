"""Content-addressed snapshots of drifted state (effectful edge, safety net of *act*).

Pipeline position: called by adapters during **act**, before anything is overwritten
or removed.  A snapshot id is ``sha256:<hex>`` of the bytes; the same bytes are stored
once.  Writes are atomic, so a snapshot either exists whole or not at all, and an
adapter that cannot snapshot must not overwrite.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path


class SnapshotError(Exception):
    """The drifted state could not be saved; the caller must not overwrite it."""


class SnapshotStore:
    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.count = 0

    def _path(self, hexdigest: str) -> Path:
        return self.root / "sha256" / hexdigest[:2] / hexdigest

    def put(self, data: bytes) -> str:
        """Store ``data`` (idempotent) and return its id."""
        if len(data) > self.max_bytes:
            raise SnapshotError(
                f"drifted content is {len(data)} bytes, over the snapshot cap of {self.max_bytes}; refusing to overwrite it"
            )
        digest = hashlib.sha256(data).hexdigest()
        final = self._path(digest)
        if final.exists():
            return f"sha256:{digest}"
        try:
            final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = final.with_name(f".{digest}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except OSError as e:
            with contextlib.suppress(Exception):
                os.unlink(tmp)
            raise SnapshotError(f"cannot save snapshot: {e}") from e
        self.count += 1
        return f"sha256:{digest}"

    def get(self, snapshot_id: str) -> bytes:
        algo, _, digest = snapshot_id.partition(":")
        if algo != "sha256" or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise KeyError(f"not a snapshot id: {snapshot_id!r}")
        try:
            data = self._path(digest).read_bytes()
        except FileNotFoundError:
            raise KeyError(f"no snapshot {snapshot_id}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise SnapshotError(f"snapshot {snapshot_id} is corrupt")
        return data
