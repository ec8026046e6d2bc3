"""Package versions (pure): each distribution's own ordering, through well-kept libraries.

Pipeline position: used by ``diff`` (the ``$package`` matcher of ``core/matchers.py``) to judge
an installed version against a ``packages`` rule.  dpkg versions (epochs, ``~``, revisions)
compare with python-debian's ``Version``; RPM ``epoch:version-release`` with univers'
``RpmVersion`` (rpmvercmp); Alpine with univers' ``AlpineLinuxVersion`` (apk's rules).
Allowed ranges are vers constraint lists (``>=1.2-1|<2.0``) read by univers' range classes
of the same scheme.  Nothing here is a hand-written comparison; the libraries are imported
on first use (a host without package rules never loads them).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

Format = Literal["deb", "rpm", "apk"]
FORMATS: tuple[Format, ...] = ("deb", "rpm", "apk")
_SCHEME = {"deb": "deb", "rpm": "rpm", "apk": "apk"}


class VersionError(ValueError):
    """A version or range the distribution's rules cannot read."""


@lru_cache(maxsize=4096)
def _key(fmt: str, version: str) -> Any:
    """A comparable object for ``version`` under ``fmt``'s rules."""
    try:
        if fmt == "deb":
            from debian.debian_support import Version

            return Version(version)
        if fmt == "rpm":
            from univers.versions import RpmVersion

            return RpmVersion(version)
        if fmt == "apk":
            from univers.versions import AlpineLinuxVersion

            v = AlpineLinuxVersion(version)
            v < v  # noqa: B015 - apk versions are parsed lazily, on the first comparison
            return v
    except Exception as e:  # the libraries raise ValueError, InvalidVersion, TypeError, ...
        raise VersionError(f"{version!r} is not a valid {fmt} version: {e}") from None
    raise VersionError(f"unknown package format {fmt!r}")


def compare(fmt: str, a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` sorts before, equal to or after ``b`` under ``fmt``'s rules."""
    ka, kb = _key(fmt, a), _key(fmt, b)
    try:
        return -1 if ka < kb else (1 if ka > kb else 0)
    except Exception as e:
        raise VersionError(f"cannot compare {fmt} versions {a!r} and {b!r}: {e}") from None


@lru_cache(maxsize=1024)
def _range(fmt: str, constraints: str) -> Any:
    from univers.version_range import RANGE_CLASS_BY_SCHEMES

    cls = RANGE_CLASS_BY_SCHEMES.get(_SCHEME.get(fmt, ""))
    if cls is None:
        raise VersionError(f"unknown package format {fmt!r}")
    try:
        return cls.from_string(f"vers:{_SCHEME[fmt]}/{constraints}")  # type: ignore[no-untyped-call]
    except Exception as e:
        raise VersionError(f"{constraints!r} is not a valid {fmt} version range: {e}") from None


def in_range(fmt: str, version: str, constraints: str) -> bool:
    """Whether ``version`` satisfies the vers constraint list ``constraints`` under ``fmt``'s rules."""
    r = _range(fmt, constraints)
    try:
        return bool(r.version_class(version) in r)
    except Exception as e:
        raise VersionError(f"cannot test {fmt} version {version!r} against {constraints!r}: {e}") from None


def check_version(fmt: str, version: str) -> None:
    """Raise VersionError when ``version`` is not readable under ``fmt`` (lint of a rule against a format)."""
    _key(fmt, version)


def check_range(fmt: str, constraints: str) -> None:
    _range(fmt, constraints)


__all__ = ["FORMATS", "Format", "VersionError", "check_range", "check_version", "compare", "in_range"]
