"""Package versions (pure): each distribution's own ordering, through well-kept libraries.

Pipeline position: used by ``diff`` (the ``$package`` matcher of ``core/matchers.py``) to judge
an installed version against a ``packages`` rule.  dpkg versions (epochs, ``~``, revisions)
compare with python-debian's ``Version``; RPM ``epoch:version-release`` with univers'
``RpmVersion`` (rpmvercmp); Alpine by apk-tools' own algorithm (univers' Gentoo-based
``AlpineLinuxVersion`` refuses real Alpine versions, see below).
Allowed ranges are vers constraint lists (``>=1.2-1|<2.0``) read and evaluated by univers' range
classes of the same scheme (for dpkg with python-debian's ordering inside).  The libraries are imported on first use (a host without package rules never
loads them).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, lru_cache
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
            return _ApkKey(version)
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


# ------------------------------------------------------------------ apk
# univers' AlpineLinuxVersion applies Gentoo's rules, which refuse what every Alpine host has installed
# (gcc 13.2.1_git20240309-r0: apk's post-release suffixes _cvs, _svn, _git, _hg; leading zeros such as 006),
# so apk versions are ordered by a transcription of apk-tools' own comparison (src/version.c, 2.x), held
# to apk-tools' whole test/version.data in tests/fixtures/versions/apk.txt.  Ranges still go through univers.
_DIGIT_OR_ZERO, _DIGIT, _LETTER, _SUFFIX, _SUFFIX_NO, _REVISION_NO, _END, _INVALID = 0, 1, 2, 3, 4, 5, 6, -1
_PRE_SUFFIXES = ("alpha", "beta", "pre", "rc")
_POST_SUFFIXES = ("cvs", "svn", "git", "hg", "p")


def _apk_next(t: int, s: str, i: int) -> tuple[int, int]:
    """apk-tools' next_token: the type of the token starting at ``s[i]`` (separators consumed)."""
    n = _INVALID
    if i >= len(s):
        n = _END
    elif t in (_DIGIT, _DIGIT_OR_ZERO) and s[i].islower():
        n = _LETTER
    elif t == _LETTER and s[i].isdigit():
        n = _DIGIT
    elif t == _SUFFIX and s[i].isdigit():
        n = _SUFFIX_NO
    else:
        c = s[i]
        if c == ".":
            n = _DIGIT_OR_ZERO
        elif c == "_":
            n = _SUFFIX
        elif c == "-" and s[i + 1:i + 2] == "r":
            n = _REVISION_NO
            i += 1
        i += 1
    if n < t and not ((n == _DIGIT_OR_ZERO and t == _DIGIT) or (n == _SUFFIX and t == _SUFFIX_NO)
                      or (n == _DIGIT and t == _LETTER)):
        n = _INVALID
    return n, i


def _apk_token(t: int, s: str, i: int) -> tuple[int, int, int]:
    """apk-tools' get_token: (value, next type, next index)."""
    if i >= len(s):
        return 0, _END, i
    v, j, nt = 0, i, _INVALID
    if t == _DIGIT_OR_ZERO and s[j] == "0":  # leading zeros count against the component
        while j < len(s) and s[j] == "0":
            j += 1
        v, nt = -(j - i), _DIGIT
    elif t in (_DIGIT_OR_ZERO, _DIGIT, _SUFFIX_NO, _REVISION_NO):
        while j < len(s) and s[j].isdigit():
            v = v * 10 + int(s[j])
            j += 1
    elif t == _LETTER:
        v, j = ord(s[j]), j + 1
    elif t == _SUFFIX:
        for k, suf in enumerate(_PRE_SUFFIXES):
            if s.startswith(suf, j):
                return k - len(_PRE_SUFFIXES), *_apk_after(_SUFFIX_NO, s, j + len(suf))
        for k, suf in enumerate(_POST_SUFFIXES):
            if s.startswith(suf, j):
                return k, *_apk_after(_SUFFIX_NO, s, j + len(suf))
        return -1, _INVALID, j
    else:
        return -1, _INVALID, j
    return v, *_apk_after(nt, s, j, t)


def _apk_after(nt: int, s: str, j: int, t: int = _SUFFIX) -> tuple[int, int]:
    """The type after a token.  Before a suffix (``0_pre1``, ``_alpha_pre2``) no empty number token comes between:
    the suffix decides at once, as the current apk-tools does (version.data's ``6.0_pre1 < 6.0``)."""
    if j >= len(s):
        return _END, j
    if nt != _INVALID and s[j] != "_":
        return nt, j
    return _apk_next(t if nt == _INVALID else nt, s, j)


def apk_compare(a: str, b: str) -> int:
    """-1, 0, 1: apk-tools' apk_version_compare (without its fuzzy mode)."""
    at = bt = _DIGIT
    av = bv = 0
    i = j = 0
    while at == bt and at not in (_END, _INVALID) and av == bv:
        av, at, i = _apk_token(at, a, i)
        bv, bt, j = _apk_token(bt, b, j)
    if av != bv:
        return -1 if av < bv else 1
    if at == bt:
        return 0
    if at == _SUFFIX and _apk_token(at, a, i)[0] < 0:
        return -1
    if bt == _SUFFIX and _apk_token(bt, b, j)[0] < 0:
        return 1
    if at > bt:
        return -1
    if bt > at:
        return 1
    return 0


def apk_valid(v: str) -> bool:
    """apk-tools' apk_version_validate: the tokens run to the end without an invalid one."""
    t, i = _DIGIT, 0
    while t not in (_END, _INVALID):
        _, t, i = _apk_token(t, v, i)
    return t == _END and bool(v)


class _ApkKey:
    """A comparable apk version (apk_compare), the value inside univers' range machinery."""

    __slots__ = ("v",)

    def __init__(self, v: str) -> None:
        if not apk_valid(v):
            raise ValueError(f"invalid apk version {v!r}")
        self.v = v

    def __lt__(self, o: _ApkKey) -> bool:
        return apk_compare(self.v, o.v) < 0

    def __gt__(self, o: _ApkKey) -> bool:
        return apk_compare(self.v, o.v) > 0

    def __le__(self, o: _ApkKey) -> bool:
        return apk_compare(self.v, o.v) <= 0

    def __ge__(self, o: _ApkKey) -> bool:
        return apk_compare(self.v, o.v) >= 0

    def __eq__(self, o: object) -> bool:
        return isinstance(o, _ApkKey) and apk_compare(self.v, o.v) == 0

    def __hash__(self) -> int:
        return 0  # equal spellings (1.06 / 1.6 are not, 1.0 / 1.0 are) must hash alike


# ------------------------------------------------------------------ ranges
def _own_range_class(base: Any, value: Callable[[str], Any]) -> Any:
    """A univers range class of ``base``'s scheme whose versions are ordered by ``value(string)`` (ValueError: not
    a version): univers' vers logic with the ordering of python-debian (which univers' DebianVersion gets wrong for
    colons in the upstream version and equal spellings such as 1.09 = 1.9) or of apk-tools."""
    from univers.versions import Version

    class OwnVersion(Version):
        @classmethod
        def build_value(cls, string: str) -> Any:
            return value(string)

        @classmethod
        def is_valid(cls, string: str) -> bool:
            try:
                value(string)
            except ValueError:
                return False
            return True

    class OwnRange(base):  # type: ignore[misc]
        version_class = OwnVersion

    return OwnRange


@cache
def _range_class(fmt: str) -> tuple[Any, bool]:
    """(the range class of ``fmt``, whether it is ours: built from constraints, not looked up by scheme name)."""
    from univers.version_range import RANGE_CLASS_BY_SCHEMES, AlpineLinuxVersionRange, DebianVersionRange

    if fmt == "deb":
        from debian.debian_support import Version as Dpkg

        return _own_range_class(DebianVersionRange, Dpkg), True
    if fmt == "apk":
        return _own_range_class(AlpineLinuxVersionRange, _ApkKey), True
    return RANGE_CLASS_BY_SCHEMES.get(_SCHEME.get(fmt, "")), False


@lru_cache(maxsize=1024)
def _range(fmt: str, constraints: str) -> Any:
    from univers.version_constraint import VersionConstraint

    cls, own = _range_class(fmt)
    if cls is None:
        raise VersionError(f"unknown package format {fmt!r}")
    try:
        if not own:
            return cls.from_string(f"vers:{_SCHEME[fmt]}/{constraints}")
        # from_string looks the version class up by scheme name; build the constraints as it does, with ours
        parsed = sorted(VersionConstraint.from_string(string=c, version_class=cls.version_class)  # type: ignore[no-untyped-call]
                        for c in constraints.strip("|").split("|"))
        return cls(tuple(parsed))
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


__all__ = ["FORMATS", "Format", "VersionError", "apk_compare", "apk_valid", "check_range", "check_version", "compare", "in_range"]
