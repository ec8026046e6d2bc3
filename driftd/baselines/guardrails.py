"""Guardrails (pure): what a baseline may not manage without saying why.

Pipeline position: baseline loading, before anything compiles.  A baseline is root on every
node, so some rules turn a merged pull request into a backdoor: the content of the account
databases (an empty root password), sudo rules, ``authorized_keys``, the dynamic loader's
preload, cron and systemd units, PAM, the cluster's own credentials and kubelet config,
sysctls that run or load code (``kernel.core_pattern`` with a pipe, ``kernel.modprobe``,
``kernel.usermodehelper.*``, ``fs.binfmt_misc.*``) and set-uid/set-gid modes.  Each such rule
is refused — by ``baseline lint`` with FILE:LINE and by the daemon, which keeps its last good
set — unless the rule carries ``allowDangerous: "<reason>"``; an allowed one is reported on
every load so it is seen and audited.  The operator extends the list (settings
``guardrails.extra_paths`` / ``guardrails.extra_sysctls``, chart values); a baseline never can.

What counts on a denied path: managing its content (``content``/``source``) or its absence,
an owner other than root, a group other than root/shadow, or a mode granting write to
group/other.  Tightening the mode and ownership of ``/etc/shadow`` (a CIS rule) is not
dangerous and needs no reason.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from driftd.models.baseline import HostBaseline, ManagedDirectory, ManagedFile, Rule, Sysctl
from driftd.settings import GuardrailSettings

# (pattern, what it is); ``*`` matches across '/', a trailing ``/**`` also matches the directory itself
DENIED_PATHS: tuple[tuple[str, str], ...] = (
    ("/etc/passwd", "the account database"), ("/etc/passwd-", "the account database's backup"),
    ("/etc/shadow", "the password database"), ("/etc/shadow-", "the password database's backup"),
    ("/etc/group", "the group database"), ("/etc/group-", "the group database's backup"),
    ("/etc/gshadow", "the group password database"), ("/etc/gshadow-", "the group password database's backup"),
    ("/etc/sudoers", "sudo rules"), ("/etc/sudoers.d/**", "sudo rules"), ("/etc/doas.conf", "doas rules"),
    ("*/.ssh/**", "SSH keys and authorized_keys"), ("/etc/ssh/authorized_keys*", "SSH authorized keys"),
    ("/etc/ld.so.preload", "a library loaded into every process"),
    ("/etc/ld.so.conf", "the dynamic loader's search path"), ("/etc/ld.so.conf.d/**", "the dynamic loader's search path"),
    ("/etc/cron*", "cron jobs run as root"), ("/var/spool/cron/**", "cron jobs"), ("/etc/anacrontab", "cron jobs"),
    ("/etc/systemd/**", "systemd units run as root"), ("/lib/systemd/**", "systemd units run as root"),
    ("/usr/lib/systemd/**", "systemd units run as root"), ("/run/systemd/**", "systemd units run as root"),
    ("/etc/pam.d/**", "PAM: who may log in"), ("/etc/security/**", "PAM and login limits"),
    ("/etc/profile", "run by every login shell"), ("/etc/profile.d/**", "run by every login shell"),
    ("/etc/modprobe.d/**", "kernel module loading"), ("/etc/modules-load.d/**", "kernel module loading"),
    ("/etc/udev/rules.d/**", "udev rules run programs as root"),
    ("/etc/kubernetes/**", "the cluster's credentials and static pods"),
    ("/var/lib/kubelet/**", "the kubelet's config and credentials"),
    ("/etc/default/kubelet", "the kubelet's flags"), ("/etc/sysconfig/kubelet", "the kubelet's flags"),
)
# sysctl keys (dotted) that run or load code; core_pattern only when it pipes to a program
DENIED_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("kernel.modprobe", "the program the kernel runs to load modules"),
    ("kernel.usermodehelper.*", "what the kernel may run as root"),
    ("fs.binfmt_misc.*", "interpreters the kernel runs for binaries"),
    ("kernel.hotplug", "the program the kernel runs on hotplug"),
    ("kernel.poweroff_cmd", "the program the kernel runs to power off"),
)
_OWNERS = {"root", 0}
_GROUPS = {"root", 0, "shadow"}


@dataclass(frozen=True)
class Guardrails:
    """The deny-lists in force: the built-in ones plus what the operator added."""

    paths: tuple[tuple[str, str], ...] = DENIED_PATHS
    sysctls: tuple[tuple[str, str], ...] = DENIED_SYSCTLS

    def extended(self, paths: Iterable[str] = (), sysctls: Iterable[str] = ()) -> Guardrails:
        return Guardrails(self.paths + tuple((p, "denied by the operator") for p in paths),
                          self.sysctls + tuple((k, "denied by the operator") for k in sysctls))

    def path_reason(self, path: str) -> str | None:
        return _first(_compiled(self.paths, subtree=True), path)

    def sysctl_reason(self, key: str, value: str) -> str | None:
        key = key.replace("/", ".")
        if key == "kernel.core_pattern" and value.lstrip().startswith("|"):
            return "a pipe in kernel.core_pattern runs that program as root on every crash"
        return _first(_compiled(self.sysctls, subtree=False), key)


@functools.lru_cache(maxsize=16)
def _compiled(entries: tuple[tuple[str, str], ...], *, subtree: bool) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """One regex for a whole list (10,000 rules x 40 patterns one by one cost a second); group i = entry i.

    ``*`` matches across '/' (fnmatch); with ``subtree`` a trailing ``/**`` also matches the directory itself.
    """
    parts = []
    for i, (pattern, _) in enumerate(entries):
        body = fnmatch.translate(pattern)  # anchored at the end itself
        if subtree and pattern.endswith("/**"):
            body = f"{body}|{re.escape(pattern[:-3])}\\Z"
        parts.append(f"(?P<g{i}>{body})")
    return re.compile("|".join(parts)), tuple(what for _, what in entries)


def _first(compiled: tuple[re.Pattern[str], tuple[str, ...]], text: str) -> str | None:
    rx, whats = compiled
    m = rx.match(text)
    return whats[int(m.lastgroup[1:])] if m is not None and m.lastgroup else None


DEFAULT = Guardrails()


def configured(settings: GuardrailSettings) -> Guardrails:
    """The built-in lists plus what the operator's settings add."""
    return DEFAULT.extended(settings.extra_paths, settings.extra_sysctls)


@dataclass(frozen=True)
class Finding:
    """One rule the guardrails deny: where (field path), why, and the rule's allowDangerous reason if any."""

    loc: tuple[str | int, ...]
    reason: str
    allowed: str | None


def _setid(mode: str | None) -> list[str]:
    bits = int(mode, 8) if mode else 0
    return [name for bit, name in ((0o4000, "set-uid"), (0o2000, "set-gid")) if bits & bit]


def _path_rule(rule: ManagedFile | ManagedDirectory, g: Guardrails) -> Iterator[tuple[str, str]]:
    """(field, reason) for each dangerous thing one file/directory rule asks."""
    bits = _setid(rule.mode)
    if bits:
        yield "mode", f"mode {rule.mode} sets {' and '.join(bits)} on {rule.path}: a privileged program on every node"
    what = g.path_reason(rule.path)
    if what is None:
        return
    if isinstance(rule, ManagedFile):
        if rule.content is not None or rule.source is not None:
            yield ("content" if rule.content is not None else "source"), f"{rule.path} is {what}: its content is denied"
        if rule.absent:
            yield "absent", f"{rule.path} is {what}: removing it is denied"
    if rule.owner is not None and rule.owner not in _OWNERS:
        yield "owner", f"{rule.path} is {what}: owner {rule.owner!r} other than root is denied"
    if rule.group is not None and rule.group not in _GROUPS:
        yield "group", f"{rule.path} is {what}: group {rule.group!r} other than root or shadow is denied"
    if rule.mode is not None and int(rule.mode, 8) & 0o022:
        yield "mode", f"{rule.path} is {what}: mode {rule.mode} lets group or others write it"


def findings(b: HostBaseline, g: Guardrails = DEFAULT) -> Iterator[Finding]:
    """Every dangerous thing a host baseline asks, with where it is and whether the rule allows it."""
    for alias, i, rule in b.spec.rules():
        base: tuple[str | int, ...] = ("spec", alias) if i is None else ("spec", alias, i)
        for field, reason in _rule(rule, g):
            yield Finding((*base, field), reason, rule.allow_dangerous)


def _rule(rule: Rule, g: Guardrails) -> Iterator[tuple[str, str]]:
    if isinstance(rule, ManagedFile | ManagedDirectory):
        yield from _path_rule(rule, g)
    elif isinstance(rule, Sysctl):
        why = g.sysctl_reason(rule.key, rule.value)
        if why is not None:
            yield "value", f"sysctl {rule.key}: {why}"
