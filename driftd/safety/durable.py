"""Whole-or-nothing I/O loops shared by every writer of durable bytes (snapshots, host files).

Pipeline position: below *act*.  ``os.write`` may write less than asked — the first answer
of a nearly full filesystem — and a caller that ignores the count renames a truncated file
over a good one.  These loops either move every byte or raise.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

CHUNK = 1 << 20


def write_all(fd: int, data: bytes | memoryview, on_chunk: Callable[[int], None] | None = None) -> None:
    """Write every byte of ``data`` to ``fd``, looping over short writes.

    A write that makes no progress is reported as ENOSPC, so a partial file is never taken
    for a written one.  ``on_chunk`` (tests) is called with each chunk's offset.
    """
    view = memoryview(data)
    off = 0
    while off < len(view):
        n = os.write(fd, view[off : off + CHUNK])
        if n <= 0:
            raise OSError(errno.ENOSPC, "no progress writing (device full?)")
        if on_chunk is not None:
            on_chunk(off)
        off += n


def read_all(fd: int, limit: int) -> bytes:
    """Everything readable from ``fd``; EFBIG past ``limit`` bytes."""
    chunks: list[bytes] = []
    total = 0
    while chunk := os.read(fd, CHUNK):
        total += len(chunk)
        if total > limit:
            raise OSError(errno.EFBIG, f"more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
