"""Command line: arguments → settings → logging → baselines → :mod:`driftd.runtime` → run.

Pipeline position: outside the pipeline, on top of every layer; the composition root
(:func:`driftd.runtime.build_runtime`) wires the parts, this module only turns a command
into settings and exit codes.  Heavy client libraries are imported only by the target
modules that need them.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

from driftd import __version__
from driftd.exitcodes import ExitCode
from driftd.runtime import Runtime, build_runtime

_OUTPUT_API = "driftd.io/v1"  # the apiVersion of every -o json|yaml document (driftd.presentation.documents)


def _settings(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from driftd.settings import load_settings

    overrides: dict[str, Any] = {
        "host_root": args.host_root,
        "baselines": args.baselines,
        "state_dir": args.state_dir,
        "node_name": getattr(args, "node_name", None),
        "dry_run": True if getattr(args, "dry_run", False) else None,
    }
    nested: dict[str, dict[str, Any]] = {
        "scan": {"interval_seconds": getattr(args, "interval", None)},
        "http": {"address": getattr(args, "listen", None), "api_address": getattr(args, "api_listen", None)},
        "log": {"format": getattr(args, "log_format", None), "level": getattr(args, "log_level", None)},
        "docker": {"enabled": True if getattr(args, "docker", False) else None, "url": getattr(args, "docker_url", None)},
        "kubernetes": {
            "enabled": True if getattr(args, "kubernetes", False) else None,
            "kubeconfig": getattr(args, "kubeconfig", None),
        },
    }
    for section, values in nested.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            overrides[section] = given
    try:
        return load_settings(getattr(args, "config", None), **overrides)
    except ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            print(f"driftd: setting {loc}: {err['msg']}", file=sys.stderr)
        raise SystemExit(ExitCode.USAGE) from None
    except (OSError, ValueError) as e:
        print(f"driftd: {e}", file=sys.stderr)
        raise SystemExit(ExitCode.USAGE) from None


def _load_baselines(settings: Any) -> Any:
    from driftd.baselines import guardrails
    from driftd.baselines.loader import load_set
    from driftd.observability.logging import Event, get_logger, logs_json

    bset, problems = load_set(settings.baselines, max_file_bytes=settings.baseline_file_max_bytes,
                              guardrails=guardrails.configured(settings.guardrails), allowed_signers=settings.baseline_signers,
                              cache_dir=Path(settings.state_dir) / "cache")
    log = get_logger()  # (not engine.daemon's helper: a --once pass imports no prometheus_client)
    if logs_json():  # every line of a JSON log stream is a JSON object: problems too
        if bset is None:
            log.error(Event.BASELINE_REJECTED, directory=str(settings.baselines),
                      reason=f"baselines in {settings.baselines} are invalid; not starting",
                      problems=[{"file": p.file, "line": p.line, "field": p.field, "reason": p.reason, "text": str(p)}
                                for p in problems])
            raise SystemExit(ExitCode.ERROR)
        for p in problems:
            log.warning(Event.BASELINE_WARNING, file=p.file, line=p.line, field=p.field, reason=p.reason,
                        severity=p.severity)
    else:
        if bset is None:
            print(f"driftd: baselines in {settings.baselines} are invalid; not starting:", file=sys.stderr)
            for p in problems:
                print(str(p), file=sys.stderr)
            raise SystemExit(ExitCode.ERROR)
        for p in problems:
            print(str(p), file=sys.stderr)
    for p in bset.warnings:
        if p.severity == "allowed-dangerous":
            log.warning(Event.BASELINE_DANGEROUS_ALLOWED, file=p.file, line=p.line, field=p.field, reason=p.reason,
                        version=bset.version)
    return bset


def _quiet_settings(settings: Any, state_dir: Path, *, dry_run: bool) -> Any:
    """The settings of a pass that must leave no trace outside ``state_dir`` (a throwaway copy): no audit log,
    no Kubernetes Events, no PolicyReport (``plan``, ``state export``)."""
    return settings.model_copy(update={
        "state_dir": state_dir, "dry_run": dry_run,
        "audit": settings.audit.model_copy(update={"enabled": False}),
        "kubernetes": settings.kubernetes.model_copy(update={"events": False, "policy_report": False}),
    })


def cmd_plan(args: argparse.Namespace) -> int:
    """``driftd plan``: what ``run --once`` would do with the ``--baselines`` set here, acting on nothing.

    The set is loaded whole (no start-up cache: the agent's is not touched); the engine runs in plan mode over a
    copy of the state directory with audit, Events and the PolicyReport off.  Exit 0: nothing would change or be
    held; 3: the plan changes or holds something; 1: the set is invalid or a target is down.
    """
    import tempfile

    from driftd.baselines import guardrails
    from driftd.baselines.loader import load_set
    from driftd.engine import preview
    from driftd.engine.once import run_once
    from driftd.engine.state import StateError
    from driftd.observability.logging import configure_logging

    settings = _settings(args)
    configure_logging(settings.log.format, "error")  # the plan is the output; driftd's own lines stay off it
    bset, problems = load_set(settings.baselines, max_file_bytes=settings.baseline_file_max_bytes,
                              guardrails=guardrails.configured(settings.guardrails), allowed_signers=settings.baseline_signers)
    if bset is None:
        print(f"driftd: baselines in {settings.baselines} are invalid; no plan:", file=sys.stderr)
        for p in problems:
            print(str(p), file=sys.stderr)
        return ExitCode.ERROR
    if args.state:
        fleet = _plan_captured(settings, bset, args.state)
        if fleet is None:
            return ExitCode.ERROR
        return _show_plan(args, fleet, down=bool(fleet["summary"]["targets_down"]))
    with tempfile.TemporaryDirectory(prefix="driftd-plan-") as tmp:
        try:
            preview.copy_state(settings.state_dir, Path(tmp))
            planned = _quiet_settings(settings, Path(tmp), dry_run=False)
            rt = build_runtime(planned, metrics_enabled=False, plan_only=True)
        except (StateError, OSError, sqlite3.Error) as e:
            print(f"driftd: cannot plan over the state in {settings.state_dir}: {e}", file=sys.stderr)
            return ExitCode.ERROR
        rt.engine.set_baselines(bset)
        summary = run_once(rt.engine, rt.queue, attempts=1)
        rt.state.close()
    plan = preview.build(summary, node=rt.engine.node.name, baselines=bset.version)
    return _show_plan(args, plan, down=bool(summary.targets_down))


def _show_plan(args: argparse.Namespace, plan: dict[str, Any], *, down: bool) -> int:
    from driftd.engine import preview

    if args.output in ("json", "yaml"):
        from driftd.presentation.render import emit

        emit(plan, args.output)
    elif args.output == "markdown":
        print(preview.render_markdown(plan, max_rows=args.max_rows), end="")
    else:
        print(preview.render_text(plan))
    if down or plan["summary"]["by_outcome"]["error"]:
        return ExitCode.ERROR
    o = plan["summary"]["by_outcome"]
    return ExitCode.DRIFT_REMAINED if any(o[k] for k in ("change", "held", "blocked", "failed", "retired")) else ExitCode.CLEAN


def _plan_captured(settings: Any, bset: Any, files: list[str]) -> dict[str, Any] | None:
    """``plan --state FILE...``: one plan per export (its node, labels and drift records), merged into the fleet's."""
    import tempfile

    from driftd.engine import preview
    from driftd.engine.state import StateError
    from driftd.targets.captured import ExportError, load

    plans: list[dict[str, Any]] = []
    labels: dict[str, dict[str, str]] = {}
    for f in files:
        try:
            doc = load(Path(f).read_text(encoding="utf-8"), source=f)
        except ExportError as e:
            print(f"driftd: {e}", file=sys.stderr)
            return None
        except (OSError, UnicodeDecodeError) as e:
            print(f"driftd: cannot read {f}: {e}", file=sys.stderr)
            return None
        node = str(doc["node"]["name"])
        if node in labels:
            print(f"driftd: {f}: node {node} is in two exports; plan one export per node", file=sys.stderr)
            return None
        if doc.get("baselines") and doc.get("driftd") != __version__:
            print(f"driftd: note: {f} was exported by driftd {doc.get('driftd')} (this is {__version__})", file=sys.stderr)
        labels[node] = dict(doc["node"].get("labels") or {})
        with tempfile.TemporaryDirectory(prefix="driftd-plan-") as tmp:
            try:
                summary = preview.plan_captured(settings, bset, doc, Path(tmp))
            except (StateError, OSError, sqlite3.Error, KeyError, TypeError, ValueError) as e:
                print(f"driftd: cannot plan over {f}: {e}", file=sys.stderr)
                return None
        plans.append(preview.build(summary, node=node, baselines=bset.version))
    return preview.merge(plans, labels=labels)


def cmd_state_export(args: argparse.Namespace) -> int:
    """``driftd state export``: what driftd observes here of the baselines in force, secrets hashed, as one JSON file.

    Read-only: the targets observe (no act, no recovery of an interrupted recreate: they are built in plan mode),
    the state directory is read, never written (the targets get a throwaway one).  Exit 0: written; 1: the set is
    invalid, the file cannot be written, or a target was down (the export is written, without its resources).
    """
    import tempfile
    import time

    from driftd.baselines import guardrails
    from driftd.baselines.loader import load_set
    from driftd.engine import preview
    from driftd.engine.state import StateError
    from driftd.observability.logging import configure_logging
    from driftd.safety.durable import write_all
    from driftd.targets.captured import capture

    settings = _settings(args)
    configure_logging(settings.log.format, "error")
    bset, problems = load_set(settings.baselines, max_file_bytes=settings.baseline_file_max_bytes,
                              guardrails=guardrails.configured(settings.guardrails), allowed_signers=settings.baseline_signers)
    if bset is None:
        print(f"driftd: baselines in {settings.baselines} are invalid; no export:", file=sys.stderr)
        for p in problems:
            print(str(p), file=sys.stderr)
        return ExitCode.ERROR
    now = time.time()
    with tempfile.TemporaryDirectory(prefix="driftd-export-") as tmp:
        try:
            state = preview.read_state(settings.state_dir, now)
            quiet = _quiet_settings(settings, Path(tmp), dry_run=True)
            rt = build_runtime(quiet, metrics_enabled=False, plan_only=True)
        except (StateError, OSError, sqlite3.Error) as e:
            print(f"driftd: cannot read the state in {settings.state_dir}: {e}", file=sys.stderr)
            return ExitCode.ERROR
        doc = capture(rt.engine.targets, bset, rt.engine.node, state=state, now=now, version=__version__)
        rt.state.close()
    text = json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"
    if args.out in (None, "-"):
        sys.stdout.write(text)
    else:
        try:
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                write_all(fd, text.encode())
            finally:
                os.close(fd)
        except OSError as e:
            print(f"driftd: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
            return ExitCode.ERROR
    for name, err in sorted(doc["targets_down"].items()):
        print(f"driftd: target {name} unreachable, its resources are not in the export: {err}", file=sys.stderr)
    return ExitCode.ERROR if doc["targets_down"] else ExitCode.CLEAN


def cmd_run(args: argparse.Namespace) -> int:
    # Start-up (imports, schemas, the baseline set, the desired resources) allocates a lot
    # and frees almost nothing, so the cyclic GC's full collections over it are wasted CPU:
    # a --once pass runs without them; the daemon freezes what start-up built, then collects
    # as usual.  Reference counting frees memory either way.
    was_enabled = gc.isenabled()
    gc.disable()
    if args.once:
        _freeze_heap_at_exit()
    try:
        return _cmd_run(args, gc_was_enabled=was_enabled)
    finally:
        if was_enabled:
            gc.enable()


_freeze_registered = False
_once_finished = False  # a run --once pass completed: console() may exit without interpreter teardown


def _freeze_heap_at_exit() -> None:
    """Skip the interpreter's final full collection over the heap (a sizeable share of a --once run).

    Exiting collects every generation even with the GC disabled; after ``gc.freeze`` (run
    first, as an atexit callback) it finds nothing to traverse.  Nothing of a finished pass
    waits on that collection: the state database is closed and the output flushed by then.
    """
    global _freeze_registered
    if not _freeze_registered:
        atexit.register(gc.freeze)
        _freeze_registered = True


def _cmd_run(args: argparse.Namespace, *, gc_was_enabled: bool) -> int:
    from driftd.baselines.loader import fingerprint
    from driftd.engine.state import StateError
    from driftd.observability.logging import configure_logging

    settings = _settings(args)
    configure_logging(settings.log.format, settings.log.level)
    loaded_from = fingerprint(settings.baselines)  # before loading: a change while loading is reloaded later
    bset = _load_baselines(settings)
    try:
        rt = build_runtime(settings, metrics_enabled=not args.once)
    except StateError as e:
        print(f"driftd: {e}", file=sys.stderr)
        return ExitCode.ERROR
    rt.engine.set_baselines(bset)
    del bset  # the engine holds the set in force: a hot reload must free this one, not keep it for the daemon's life
    if args.once:
        from driftd.engine.once import run_once

        summary = run_once(rt.engine, rt.queue, attempts=settings.retry.attempts_per_pass)
        rt.state.close()
        from driftd.presentation.render import show_pass

        show_pass(summary, rt.engine, output=args.output, color=args.color)
        global _once_finished
        _once_finished = True
        return summary.exit_code
    gc.collect()
    gc.freeze()  # start-up objects live as long as the daemon: keep them out of every full collection
    if gc_was_enabled:
        gc.enable()
    return _daemon(rt, loaded_from)


def api_drifts(rt: Runtime) -> list[dict[str, Any]]:
    """``GET /api/v1/drifts``: the items of ``driftd status -o json`` (live → desired, status words)."""
    from driftd.presentation.documents import dump, record_item

    out = []
    desired = rt.engine.desired
    now = rt.engine.clock.time()
    for r in sorted(rt.state.active().values(), key=lambda r: r.first_seen):
        d = desired.get(r.key)
        shown = d.shown_snapshots(r.snapshots) if d is not None else ["<redacted>"] * len(r.snapshots)
        out.append(dump(record_item(r, now, shown_snapshots=shown)))
    return out


def _daemon(rt: Runtime, loaded_from: str | None = None) -> int:
    from driftd.engine.daemon import BaselineManager, Daemon
    from driftd.runtime import build_api_server

    settings = rt.settings
    manager = BaselineManager(settings, rt.engine, rt.metrics, rt.engine.clock)
    manager.prime(loaded_from)

    def drifts() -> list[dict[str, Any]]:
        return api_drifts(rt)

    daemon: Daemon | None = None
    try:
        api = build_api_server(
            settings,
            registry=rt.metrics.registry,
            healthy=lambda: daemon.healthy() if daemon else (False, "starting"),
            ready=lambda: daemon.ready() if daemon else (False, "starting"),
            drifts=drifts,
            baselines=rt.engine.baseline_set_info,
        )
    except (OSError, ValueError) as e:  # an address in use, a TLS file, no API client for the auth
        print(f"driftd: http: {e}", file=sys.stderr)
        rt.state.close()
        return ExitCode.ERROR
    daemon = Daemon(settings=settings, engine=rt.engine, queue=rt.queue, metrics=rt.metrics, manager=manager, api=api)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.run_until(stop)
    rt.state.close()
    return ExitCode.CLEAN


def cmd_lint(args: argparse.Namespace) -> int:
    loaded = _load_for(args, allowed_signers=args.allowed_signers)
    if isinstance(loaded, ExitCode):
        return loaded
    bset, problems = loaded
    if args.output in ("json", "yaml"):
        from driftd.presentation.render import emit

        emit({"valid": bset is not None, "version": bset.version if bset else None,
              "problems": [p.__dict__ for p in problems]}, args.output)
    else:
        for p in problems:
            print(str(p))
        if bset is not None:
            print(f"{args.directory}: {len(bset.baselines)} baselines valid, version {bset.version}", file=sys.stderr)
    return ExitCode.CLEAN if bset is not None else ExitCode.ERROR


def _load_for(args: argparse.Namespace, **kw: Any) -> tuple[Any, list[Any]] | ExitCode:
    """``load_set(args.directory)`` under the operator's guardrail extensions (--config, $DRIFTD_CONFIG,
    DRIFTD_GUARDRAILS__*), as lint, sign and verify need it; a settings error is a usage error."""
    from driftd.baselines import guardrails
    from driftd.baselines.loader import load_set
    from driftd.settings import load_settings

    try:
        rails = guardrails.configured(load_settings(args.config).guardrails)
    except (OSError, ValueError) as e:
        print(f"driftd: {e}", file=sys.stderr)
        return ExitCode.USAGE
    return load_set(args.directory, guardrails=rails, **kw)


def cmd_sign(args: argparse.Namespace) -> int:
    """Sign a baselines directory: its manifest with ssh-keygen -Y sign -n driftd-baselines (writes .driftd-baselines.sig)."""
    from driftd.baselines.signing import SigningError, sign_set

    loaded = _load_for(args)
    if isinstance(loaded, ExitCode):
        return loaded
    bset, problems = loaded
    if bset is None:
        print(f"driftd: {args.directory}: the set is invalid, not signing it:", file=sys.stderr)
        for p in problems:
            print(str(p), file=sys.stderr)
        return ExitCode.ERROR
    try:
        path = sign_set(bset, args.key)
    except SigningError as e:
        print(f"driftd: {e}", file=sys.stderr)
        return ExitCode.ERROR
    print(f"{path}: signed {len(bset.file_digests)} files, {len(bset.baselines)} baselines, version {bset.version}",
          file=sys.stderr)
    return ExitCode.CLEAN


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a set's signature in-process against an allowed_signers file: exit 0 valid, 1 with one line why not."""
    loaded = _load_for(args, allowed_signers=args.allowed_signers)
    if isinstance(loaded, ExitCode):
        return loaded
    bset, problems = loaded
    if bset is not None:
        print(f"{args.directory}: signed by {bset.signed_by}; {len(bset.baselines)} baselines, version {bset.version}")
        return ExitCode.CLEAN
    errors = [p for p in problems if p.severity == "error"]
    sig = [p for p in errors if p.field == "(signature)"]
    if sig:
        why, more = sig[0].reason, len(sig) - 1
    else:
        why, more = f"invalid set: {errors[0]}", len(errors) - 1
    tail = f" (+{more} more{'' if sig else '; driftd baseline lint'})" if more else ""
    print(f"driftd: {args.directory}: {why}{tail}", file=sys.stderr)
    return ExitCode.ERROR


def cmd_baseline_diff(args: argparse.Namespace) -> int:
    """What changed between two baseline sets (directories or ``REV:PATH`` of a git revision), field by field.

    Each side is loaded whole with ``load_set`` (a git revision from a temporary directory the
    tree ``REV:PATH`` is written into, ``source:`` files and all); a side that does not load is an
    error (its problems, exit 1), never half diffed.  Exit 0: no differences; 3
    (``ExitCode.DRIFT_REMAINED``, differences found); 1: a set does not load; 2: usage.
    """
    import tempfile

    from driftd.baselines import guardrails
    from driftd.baselines.diff import diff_sets, render_text
    from driftd.baselines.loader import load_set
    from driftd.settings import load_settings

    try:
        rails = guardrails.configured(load_settings(args.config).guardrails)
    except (OSError, ValueError) as e:
        print(f"driftd: {e}", file=sys.stderr)
        return ExitCode.USAGE
    repo = args.repo or os.getcwd()
    sets: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="driftd-baseline-diff-") as tmp:
        for side, spec in (("old", args.old), ("new", args.new)):
            directory, label = spec, None
            if not os.path.isdir(spec) and ":" in spec:  # a plain existing directory wins over a revision
                rev, _, path = spec.partition(":")
                if not rev or rev.startswith("-"):
                    print(f"driftd: {side} {spec!r}: expected a directory or REV:PATH (e.g. HEAD~1:baselines)",
                          file=sys.stderr)
                    return ExitCode.USAGE
                directory, label = os.path.join(tmp, side), spec.rstrip("/")
                why = _diff_read_tree(repo, rev, path, directory)
                if why is not None:
                    print(f"driftd: {side} {spec}: {why}", file=sys.stderr)
                    return ExitCode.ERROR
            bset, problems = load_set(directory, guardrails=rails)
            if bset is None:
                print(f"driftd: {side} {spec}: the set does not load, not diffing it:", file=sys.stderr)
                for p in problems:
                    if p.severity != "error":
                        continue
                    text = str(p)
                    if label is not None and text.startswith(directory):
                        text = label + text[len(directory):]
                    print(text, file=sys.stderr)
                return ExitCode.ERROR
            sets.append(bset)
    result = diff_sets(sets[0], sets[1])
    if args.output in ("json", "yaml"):
        from driftd.presentation.render import emit

        emit(result.to_dict(args.old, args.new), args.output)
    else:
        sys.stdout.write(render_text(result, args.old, args.new))
    return ExitCode.DRIFT_REMAINED if result.changed else ExitCode.CLEAN


def _diff_read_tree(repo: str, rev: str, path: str, dest: str) -> str | None:
    """Write the git tree ``REV:PATH`` of ``repo`` (every blob below it, symlinks kept inside) into ``dest``; why not."""
    import subprocess

    def git(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["git", "-C", repo, *argv], input=stdin, capture_output=True, check=False)

    try:
        found = git("rev-parse", "--verify", "--quiet", f"{rev}:{path}")
        if found.returncode != 0:
            return f"no such revision or path in the git repository {repo} ({found.stderr.decode(errors='replace').strip() or 'not found'})"
        oid = found.stdout.decode().strip()
        kind = git("cat-file", "-t", oid).stdout.decode().strip()
        if kind != "tree":
            return f"{rev}:{path} is a {kind or 'missing object'}, not a directory"
        listing = git("ls-tree", "-r", "-z", oid)
        if listing.returncode != 0:
            return f"git ls-tree failed: {listing.stderr.decode(errors='replace').strip()}"
        entries: list[tuple[str, str, str]] = []  # (mode, blob id, relative path)
        for item in listing.stdout.split(b"\0"):
            if not item:
                continue
            meta, _, raw_name = item.partition(b"\t")
            mode, otype, blob = meta.decode().split(" ")
            if otype == "blob":  # submodules (commit) are not part of a set
                entries.append((mode, blob, raw_name.decode("utf-8", "surrogateescape")))
        batch = git("cat-file", "--batch", stdin="".join(f"{b}\n" for _, b, _ in entries).encode())
        if batch.returncode != 0:
            return f"git cat-file failed: {batch.stderr.decode(errors='replace').strip()}"
    except FileNotFoundError:
        return "git is not installed"
    out, pos = batch.stdout, 0
    os.makedirs(dest)
    root = os.path.realpath(dest)
    for mode, _blob, name in entries:
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split(b" ")[2])
        data = out[header_end + 1: header_end + 1 + size]
        pos = header_end + 2 + size
        if name.startswith("/") or ".." in name.split("/"):
            return f"unsafe path in the tree: {name!r}"
        target = os.path.join(dest, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if mode == "120000":  # a symlink: kept when it stays inside the tree (the loader follows links)
            link = data.decode("utf-8", "surrogateescape")
            resolved = os.path.normpath(os.path.join(os.path.dirname(os.path.join(root, name)), link))
            if not link.startswith("/") and (resolved + "/").startswith(root + "/"):
                os.symlink(link, target)
            continue
        with open(target, "wb") as f:
            f.write(data)
    return None


def cmd_schema(args: argparse.Namespace) -> int:
    from driftd.baselines.loader import json_schema

    print(json.dumps(json_schema(), indent=2))
    return ExitCode.CLEAN


def cmd_status(args: argparse.Namespace) -> int:
    """``driftd status``: the open drifts as a table (``-o wide`` adds columns), or the ``DriftList`` as JSON / YAML.

    ``--baseline``, ``--target`` and ``--status`` filter (each may repeat).  Exit 0 when nothing listed is open,
    3 when something is.
    """
    import time

    from driftd.engine.state import StateError, StateStore
    from driftd.presentation import documents, render

    settings = _settings(args)
    try:
        state = StateStore(settings.state_dir, readonly=True)  # a read-only command creates nothing
        active = sorted(state.active().values(), key=lambda r: r.first_seen)
        in_force = state.meta("baseline_set")
        scans = state.meta("scans")
        state.close()
    except StateError as e:
        print(f"driftd: {e}", file=sys.stderr)
        return ExitCode.ERROR
    now = time.time()
    doc = documents.status_document(active, now, in_force=in_force, guards=_guards(settings, now), scans=scans)
    keep = [i for i in doc.items
            if (not args.baseline or i.baseline in args.baseline) and (not args.target or i.target in args.target)
            and (not args.status or i.status in args.status)]
    if len(keep) != len(doc.items):
        doc = doc.model_copy(update={"items": keep, "counts": {
            w: sum(1 for i in keep if i.status == w) for w in documents.RECORD_WORDS}})
    if args.output in ("json", "yaml"):
        render.emit(doc, args.output)
    else:
        from driftd.presentation.terminal import Painter

        print(render.status_text(doc, wide=args.output == "wide", painter=Painter(sys.stdout, args.color)))
    return ExitCode.CLEAN if not doc.items else ExitCode.DRIFT_REMAINED


def cmd_output_schema(args: argparse.Namespace) -> int:
    from driftd.presentation.documents import schema

    print(json.dumps(schema(), indent=2, sort_keys=True))
    return ExitCode.CLEAN


def cmd_completion(args: argparse.Namespace) -> int:
    """A completion script for bash (zsh through ``bashcompinit``), generated from this parser."""
    from driftd.presentation.completion import script

    print(script(parser(), args.shell), end="")
    return ExitCode.CLEAN


def _scope_text(data: dict[str, Any]) -> str:
    from driftd.safety.breakglass import Override

    try:
        return Override.model_validate(data).scope_text()
    except ValueError:
        return "?"


def _guards(settings: Any, now: float) -> list[Any]:
    """Active break-glass overrides, open breakers and quarantined resources, for ``status``."""
    from driftd.engine.state import StateError, StateStore
    from driftd.presentation.documents import Guard
    from driftd.safety.breakglass import OverrideStore

    out: list[Guard] = []
    overrides, problems = OverrideStore(settings.state_dir, max_ttl=settings.safety.break_glass.max_ttl_seconds).load(now)
    for o in overrides:
        out.append(Guard(kind="override", scope=f"{o.id}: {o.scope_text()}", expires_in_seconds=round(o.expires - now),
                         reason=o.reason + (f" (by {o.by})" if o.by else "")))
    out.extend(Guard(kind="override-refused", scope="", reason=str(p)) for p in problems)
    try:
        state = StateStore(settings.state_dir, readonly=True)
        guards = state.guards("", now)
        state.close()
    except StateError:
        return out
    for scope, data in sorted(guards.items()):
        reason = str(data.get("reason"))
        if scope.startswith("breaker:"):
            _, kind, baseline = scope.split(":", 2)
            out.append(Guard(kind="breaker", scope=f"({kind}) for baseline {baseline}", reason=reason))
        elif scope.startswith("flap:"):
            out.append(Guard(kind="flapping", scope=scope.removeprefix("flap:"), reason=reason))
        elif scope.startswith("override:"):  # asked for by a pod's or the node's annotations
            out.append(Guard(kind="override", scope=f"{data.get('id')}: {_scope_text(data)}",
                             expires_in_seconds=round(float(data.get("expires") or 0) - now),
                             reason=reason + (f" (by {data.get('by')})" if data.get("by") else "")))
    return out


def cmd_pause(args: argparse.Namespace) -> int:
    """Break-glass: suspend enforcement of what the selector names, for --ttl, with a --reason."""
    import getpass
    import time

    from driftd.safety.breakglass import OverrideError, OverrideStore, make_override

    settings = _settings(args)
    try:
        o = make_override(reason=args.reason or "", ttl=args.ttl, now=time.time(),
                          max_ttl=settings.safety.break_glass.max_ttl_seconds, by=args.by or getpass.getuser(),
                          key=args.key, baseline=args.baseline_name, target=args.target, all=args.all)
    except OverrideError as e:
        print(f"driftd pause: {e}", file=sys.stderr)
        return ExitCode.USAGE
    path = OverrideStore(settings.state_dir, max_ttl=settings.safety.break_glass.max_ttl_seconds).add(o)
    print(f"override {o.id}: {o.scope_text()} paused until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(o.expires))} "
          f"({path}); `driftd resume {o.id}` ends it early")
    return ExitCode.CLEAN


def cmd_resume(args: argparse.Namespace) -> int:
    from driftd.safety.breakglass import OverrideStore

    settings = _settings(args)
    if not OverrideStore(settings.state_dir, max_ttl=settings.safety.break_glass.max_ttl_seconds).remove(args.id):
        print(f"driftd resume: no override {args.id}", file=sys.stderr)
        return ExitCode.ERROR
    print(f"override {args.id} removed: enforcement resumes at the next reconcile")
    return ExitCode.CLEAN


def _reset_guards(args: argparse.Namespace, prefix: str, match: Any) -> int:
    import time

    from driftd.engine.state import StateError, StateStore

    settings = _settings(args)
    try:
        state = StateStore(settings.state_dir, readonly=True)
        state.close()  # never create a state directory here: a wrong --state-dir is an error
        state = StateStore(settings.state_dir)
        closed = [sc for sc in state.guards(prefix, time.time()) if match(sc)]
        for sc in closed:
            state.clear_guard(sc)
        state.close()
    except StateError as e:
        print(f"driftd: {e}", file=sys.stderr)
        return ExitCode.ERROR
    print("\n".join(f"cleared {sc}" for sc in closed) or "nothing to clear")
    return ExitCode.CLEAN


def cmd_breaker_reset(args: argparse.Namespace) -> int:
    return _reset_guards(args, "breaker:", lambda sc: args.baseline_name is None or sc.split(":", 2)[2] == args.baseline_name)


def cmd_flap_reset(args: argparse.Namespace) -> int:
    return _reset_guards(args, "flap:", lambda sc: args.key is None or sc == f"flap:{args.key}")


def cmd_snapshot(args: argparse.Namespace) -> int:
    from driftd.safety.snapshots import SnapshotError, SnapshotStore

    settings = _settings(args)
    state_dir = Path(settings.state_dir)
    if not (state_dir / "state.db").is_file():
        print(f"driftd: no state at {state_dir} (no state.db; is --state-dir right?)", file=sys.stderr)
        return ExitCode.ERROR
    try:
        data = SnapshotStore(state_dir / "snapshots").get(args.id)
    except KeyError as e:
        print(f"driftd: {e.args[0]}", file=sys.stderr)
        return ExitCode.ERROR
    except SnapshotError as e:
        print(f"driftd: {e}", file=sys.stderr)
        return ExitCode.ERROR
    sys.stdout.buffer.write(data)
    return ExitCode.CLEAN


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Check the audit log's hash chain: exit 0 intact, 1 naming the first broken line, 2 for bad arguments."""
    from driftd.observability.audit import parse_head, verify

    try:
        head = parse_head(args.expect_head) if args.expect_head else None
    except ValueError as e:
        print(f"driftd audit verify: {e}", file=sys.stderr)
        return ExitCode.USAGE
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"driftd audit verify: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        result = verify(args.paths, expect_head=head)
    except OSError as e:
        print(f"driftd audit verify: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return ExitCode.ERROR
    for note in result.notes:
        print(f"note: {note}")
    if result.intact:
        print(result.summary())
        return ExitCode.CLEAN
    print(f"driftd audit verify: {result.summary()}", file=sys.stderr)
    return ExitCode.ERROR


def cmd_demo(args: argparse.Namespace) -> int:
    from driftd.demo import run_demo

    return run_demo(Path(args.dir), baselines=Path(args.baselines) if args.baselines else None)


def _capture_write(args: argparse.Namespace, cap: Any, header: list[str]) -> int:
    """Write a capture under ``-o OUT`` and prove the directory loads: exit 0, or 1 naming the problem."""
    from driftd.baselines.capture import render
    from driftd.targets.capture_io import CaptureIOError, write_capture

    header = [*header, f"enforcement: {args.enforcement} (review this file, then set enforce)"]
    try:
        res = write_capture(args.out, cap, render(cap, header), force=args.force)
    except CaptureIOError as e:
        print(f"driftd: capture: {e}", file=sys.stderr)
        return ExitCode.ERROR
    for what, why in cap.skipped:
        print(f"driftd: capture: left out {what}: {why}", file=sys.stderr)
    for note in cap.notes:
        print(f"driftd: capture: note: {note}", file=sys.stderr)
    if res.errors:
        print(f"driftd: capture: {args.out} would not load; nothing was kept:", file=sys.stderr)
        for err in res.errors:
            print(err, file=sys.stderr)
        return ExitCode.ERROR
    for w in res.warnings:
        print(w, file=sys.stderr)
    print(f"{os.path.join(args.out, cap.name + '.yaml')}: {cap.doc['kind']} {cap.name} captured "
          f"({len(res.written)} files written; the directory loads clean)")
    return ExitCode.CLEAN


def _capture_label_pairs(values: list[str] | None) -> dict[str, str] | None:
    pairs: dict[str, str] = {}
    for v in values or []:
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise ValueError(f"--match-label {v!r}: expected KEY=VALUE")
        pairs[key] = value
    return pairs or None


def cmd_capture_host(args: argparse.Namespace) -> int:
    """``driftd baseline capture host PATH...``: a HostBaseline of the files and directories as they are."""
    from driftd.baselines.capture import CaptureError, host_capture
    from driftd.targets.capture_io import CaptureIOError, observe_host

    try:
        observed, unread, (users, groups) = observe_host(args.host_root, args.paths, recursive=args.recursive,
                                                         max_files=args.max_files)
        for what, why in unread:
            print(f"driftd: capture: left out {what}: {why}", file=sys.stderr)
        cap = host_capture(args.name, observed, users=users, groups=groups, sensitive=args.sensitive or (),
                           inline_max=args.inline_max, allow_dangerous=args.allow_dangerous,
                           enforcement=args.enforcement)
    except (CaptureError, CaptureIOError) as e:
        print(f"driftd: capture: {e}", file=sys.stderr)
        return ExitCode.ERROR
    cap.skipped[:0] = unread
    return _capture_write(args, cap, [f"Captured by `driftd baseline capture host` from {' '.join(args.paths)} "
                                      f"under host root {args.host_root}."])


def cmd_capture_packages(args: argparse.Namespace) -> int:
    """``driftd baseline capture packages NAME...``: a packages rule holding a known-good host's versions as minimums."""
    from driftd.baselines.capture import CaptureError, packages_capture
    from driftd.targets.capture_io import CaptureIOError, read_packages

    if not args.packages and not args.all and not args.absent:
        print("driftd: capture: name packages to hold, --all, or --absent PACKAGE", file=sys.stderr)
        return ExitCode.USAGE
    try:
        db = read_packages(args.host_root)
        cap = packages_capture(args.name, db.format, db.database, db.versions, args.packages, absent=args.absent or (),
                               all_installed=args.all, severity=args.severity, action=args.action,
                               enforcement=args.enforcement, problem=db.problem)
    except (CaptureError, CaptureIOError) as e:
        print(f"driftd: capture: {e}", file=sys.stderr)
        return ExitCode.ERROR
    return _capture_write(args, cap, [f"Captured by `driftd baseline capture packages` from the package database "
                                      f"under host root {args.host_root}."])


def cmd_capture_container(args: argparse.Namespace) -> int:
    """``driftd baseline capture container NAME_OR_ID``: a ContainerBaseline of a running container as it is."""
    from driftd.baselines.capture import CaptureError, container_capture
    from driftd.core.container_engine import leaf_changes, mount_points
    from driftd.targets.base import TargetError
    from driftd.targets.docker import image_config, inspect_container

    try:
        ins, changes = inspect_container(args.docker_url, args.container)
        digests = image_config(args.docker_url, ins["Image"]).get("RepoDigests") or []
        cap = container_capture(args.name, ins, repo_digests=digests, fs_changes=leaf_changes(changes, mount_points(ins)),
                                match_labels=args.match_label or (), enforcement=args.enforcement)
    except (CaptureError, TargetError) as e:
        print(f"driftd: capture: {e}", file=sys.stderr)
        return ExitCode.ERROR
    cname = str(ins.get("Name") or "").lstrip("/")
    return _capture_write(args, cap, [f"Captured by `driftd baseline capture container` from container {cname} "
                                      f"({str(ins.get('Id'))[:12]}) on {args.docker_url}."])


def cmd_capture_image(args: argparse.Namespace) -> int:
    """``driftd baseline capture image REF``: a ContainerBaseline from an image's configuration (+ its files)."""
    from driftd.baselines.capture import CaptureError, image_capture
    from driftd.baselines.loader import DEFAULT_MAX_FILE_BYTES
    from driftd.targets.base import TargetError
    from driftd.targets.docker import image_config, read_image_files

    try:
        labels = _capture_label_pairs(args.match_label)
        doc = image_config(args.docker_url, args.image)
        files = read_image_files(args.docker_url, doc["Id"], args.file, DEFAULT_MAX_FILE_BYTES) if args.file else {}
        cap = image_capture(args.name, doc, files=files, match_labels=labels, names=args.select_name or (),
                            enforcement=args.enforcement)
    except (CaptureError, TargetError, ValueError) as e:
        print(f"driftd: capture: {e}", file=sys.stderr)
        return ExitCode.ERROR
    return _capture_write(args, cap, [f"Captured by `driftd baseline capture image` from image {args.image} "
                                      f"({doc.get('Id')!s}) on {args.docker_url}, without running it."])


def cmd_capture_pod(args: argparse.Namespace) -> int:
    """``driftd baseline capture pod NAMESPACE/NAME``: a PodBaseline whose rules hold for the pod as it is."""
    from driftd.baselines.capture import CaptureError, pod_capture
    from driftd.targets.base import TargetError
    from driftd.targets.kubernetes.client import get_pod

    ns, sep, pod_name = args.pod.partition("/")
    if not sep or not ns or not pod_name:
        print(f"driftd: capture: {args.pod!r}: expected NAMESPACE/NAME", file=sys.stderr)
        return ExitCode.USAGE
    try:
        pod = get_pod(args.kubeconfig, ns, pod_name)
        cap = pod_capture(args.name, pod, enforcement=args.enforcement)
    except (CaptureError, TargetError) as e:
        print(f"driftd: capture: {e}", file=sys.stderr)
        return ExitCode.ERROR
    return _capture_write(args, cap, [f"Captured by `driftd baseline capture pod` from pod {ns}/{pod_name}."])


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (also $DRIFTD_CONFIG)")
    p.add_argument("--host-root", help="where the host filesystem is mounted (default /)")
    p.add_argument("--baselines", help="baselines directory (default /etc/driftd/baselines)")
    p.add_argument("--state-dir", help="state directory (default /var/lib/driftd)")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="colour (auto: on a terminal, unless NO_COLOR is set)")


def _targets(p: argparse.ArgumentParser, *, docker: str, kubernetes: str) -> None:
    """The node and target flags of the commands that observe this node (run, plan, state export)."""
    p.add_argument("--node-name", help="node name for baseline selectors")
    p.add_argument("--docker", action="store_true", help=docker)
    p.add_argument("--docker-url", help="Docker Engine endpoint (default unix:///var/run/docker.sock)")
    p.add_argument("--kubernetes", action="store_true", help=kubernetes)
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service account)")


def _reset_parser(sub: Any, name: str, help_: str, reset_help: str, func: Any) -> argparse.ArgumentParser:
    """``driftd <name> reset``: the parser of a command that clears a safety mark."""
    group = sub.add_parser(name, help=help_).add_subparsers(dest=f"{name}_command", required=True)
    reset: argparse.ArgumentParser = group.add_parser("reset", help=reset_help)
    _common(reset)
    reset.set_defaults(func=func)
    return reset


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="driftd", description="Configuration drift enforcement daemon.")
    ap.add_argument("--version", action="version", version=f"driftd {__version__} (output {_OUTPUT_API})")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="enforce baselines: as a daemon, or one pass with --once")
    _common(run)
    run.add_argument("--once", action="store_true", help="run one pass and exit (see exit codes)")
    run.add_argument("--dry-run", action="store_true", help="change nothing; report what would be done")
    run.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text",
                     help="--once result: text, or the PassResult document (docs/output.md)")
    run.add_argument("--listen", help="metrics/probes address host:port (default 127.0.0.1:9808)")
    run.add_argument("--api-listen", help="drifts API address host:port (default 127.0.0.1:9809)")
    run.add_argument("--interval", type=float, help="seconds between full scans (default 300)")
    _targets(run, docker="enable the Docker target", kubernetes="enable the Kubernetes target (pods on this node)")
    run.add_argument("--log-format", choices=["auto", "json", "console"])
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=cmd_run)

    pl = sub.add_parser("plan", help="what a baseline set would do here: every stage and gate of run, acting on nothing")
    _common(pl)
    _targets(pl, docker="plan for this host's Docker containers too", kubernetes="plan for the pods on this node too")
    pl.add_argument("-o", "--output", choices=["text", "json", "yaml", "markdown"], default="text",
                    help="markdown: a pull-request comment, at most --max-rows rows")
    pl.add_argument("--max-rows", type=int, default=50, help="rows of the markdown table before 'and N more'")
    pl.add_argument("--state", action="append", metavar="FILE",
                    help="plan against a node's `driftd state export` instead of this host (repeat for a fleet)")
    pl.set_defaults(func=cmd_plan)

    stg = sub.add_parser("state", help="the agent's state: export what driftd observes here").add_subparsers(
        dest="state_command", required=True)
    exp = stg.add_parser("export", help="what driftd observes here of the baselines in force (secrets hashed), as JSON "
                                        "for `driftd plan --state`; read-only")
    _common(exp)
    exp.add_argument("-o", "--output", dest="out", metavar="FILE", help="write here (mode 0600) instead of stdout")
    _targets(exp, docker="capture this host's Docker containers too", kubernetes="capture the pods on this node too")
    exp.set_defaults(func=cmd_state_export)

    bl = sub.add_parser("baseline", help="baselines as code: lint, diff, sign, verify, schema")
    blsub = bl.add_subparsers(dest="baseline_command", required=True)
    lint = blsub.add_parser("lint", help="validate a baselines directory (FILE:LINE: field: reason)")
    lint.add_argument("directory")
    lint.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    lint.add_argument("--config", help="settings file whose guardrails.extra_* extend the deny-lists (also $DRIFTD_CONFIG)")
    lint.add_argument("--allowed-signers", metavar="FILE",
                      help="also verify the set's signature against this OpenSSH allowed_signers file")
    lint.set_defaults(func=cmd_lint)
    sign = blsub.add_parser("sign", help="sign a baselines directory with an SSH key (ssh-keygen -Y sign -n driftd-baselines)")
    sign.add_argument("directory")
    sign.add_argument("--key", required=True, help="private key file (or its .pub with the key in ssh-agent), as ssh-keygen -f")
    sign.add_argument("--config", help="settings file whose guardrails.extra_* apply (also $DRIFTD_CONFIG)")
    sign.set_defaults(func=cmd_sign)
    verify = blsub.add_parser("verify", help="verify a signed baselines directory (in-process; exit 0 valid, 1 not)")
    verify.add_argument("directory")
    verify.add_argument("--allowed-signers", required=True, metavar="FILE", help="OpenSSH allowed_signers file")
    verify.add_argument("--config", help="settings file whose guardrails.extra_* apply (also $DRIFTD_CONFIG)")
    verify.set_defaults(func=cmd_verify)
    bdiff = blsub.add_parser(
        "diff", help="what changed between two baseline sets, field by field (exit 0 none, 3 differences, 1 invalid set)",
        description="Compare two baseline sets: baselines added, removed and changed (by metadata.name), and inside "
        "them rules (by what they govern, e.g. 'path /etc/ssh/sshd_config') and fields, as 'field: old -> new'. "
        "Content of sensitive files is never shown.",
        epilog="exit codes: 0 no differences; 3 differences found (driftd's 'drift found' code, not diff(1)'s 1); "
        "1 a set does not load (its problems as FILE:LINE: field: reason) or a revision cannot be read; 2 usage")
    for side in ("old", "new"):
        bdiff.add_argument(side, metavar=side.upper(),
                           help="a baselines directory, or REV:PATH of a git revision (e.g. HEAD~1:baselines, "
                                "origin/main:baselines); an existing directory wins over a revision spelling")
    bdiff.add_argument("--repo", metavar="DIR", help="git repository where REV:PATH is resolved (default: the current directory)")
    bdiff.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    bdiff.add_argument("--config", help="settings file whose guardrails.extra_* apply (also $DRIFTD_CONFIG)")
    bdiff.set_defaults(func=cmd_baseline_diff)
    schema = blsub.add_parser("schema", help="print the JSON Schema of baselines")
    schema.set_defaults(func=cmd_schema)
    capture = blsub.add_parser(
        "capture", help="write a baseline from what runs today: host paths, a container, an image, a pod",
        description="Capture a known-good host tree, container, image or pod as a baseline: OUT/<name>.yaml plus "
        "any OUT/files/... sources. Existing files are never overwritten without --force; the directory is loaded "
        "afterwards and nothing is kept unless it loads without errors (exit 1 naming the problem).")
    capsub = capture.add_subparsers(dest="capture_command", required=True)

    def _capture_common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name", required=True, help="metadata.name of the baseline (a DNS-1123 name)")
        p.add_argument("-o", "--output", dest="out", required=True, metavar="OUT", help="baselines directory to write into")
        p.add_argument("--force", action="store_true", help="replace files that exist")
        p.add_argument("--enforcement", choices=["enforce", "warn", "dryrun"], default="warn",
                       help="spec.enforcement of the capture (default warn: review it, then enforce)")

    cap_host = capsub.add_parser("host", help="files and directories under a host root as they are")
    cap_host.add_argument("paths", nargs="+", metavar="PATH", help="absolute paths on the host")
    cap_host.add_argument("--host-root", default="/", help="where the host filesystem is mounted (default /)")
    cap_host.add_argument("--sensitive", action="append", metavar="GLOB",
                          help="paths whose bytes are secret ('*' crosses '/'): source + sensitive, never inline "
                               "(/etc/shadow, /etc/gshadow, *.key, /etc/ssh/ssh_host_*_key always are)")
    cap_host.add_argument("--inline-max", type=int, default=4096, metavar="BYTES",
                          help="UTF-8 text under this size is inline content, else a source file (default 4096)")
    cap_host.add_argument("--recursive", action="store_true", help="also capture everything below each directory")
    cap_host.add_argument("--max-files", type=int, default=1000, help="files below directories with --recursive at most")
    cap_host.add_argument("--allow-dangerous", metavar="REASON",
                          help="keep rules the guardrails deny, with this allowDangerous reason (else left out)")
    _capture_common(cap_host)
    cap_host.set_defaults(func=cmd_capture_host)
    cap_pkg = capsub.add_parser("packages", help="installed package versions as minimums (and packages that must be absent)")
    cap_pkg.add_argument("packages", nargs="*", metavar="PACKAGE", help="packages to hold at their installed version")
    cap_pkg.add_argument("--all", action="store_true", help="every installed package")
    cap_pkg.add_argument("--absent", action="append", metavar="PACKAGE", help="a package that must not be installed")
    cap_pkg.add_argument("--host-root", default="/", help="where the host filesystem is mounted (default /)")
    cap_pkg.add_argument("--severity", choices=["critical", "high", "medium", "low", "info"], default="medium")
    cap_pkg.add_argument("--action", choices=["report", "retire", "hook"], default="report",
                         help="what an out-of-patch package makes driftd do (default report)")
    _capture_common(cap_pkg)
    cap_pkg.set_defaults(func=cmd_capture_packages)
    cap_ctr = capsub.add_parser("container", help="a Docker container's runtime configuration as it runs")
    cap_ctr.add_argument("container", metavar="NAME_OR_ID")
    cap_ctr.add_argument("--docker-url", default="unix:///var/run/docker.sock", help="Docker Engine endpoint")
    cap_ctr.add_argument("--match-label", action="append", metavar="KEY",
                         help="select by this label with the container's value (repeatable; default: its exact name)")
    _capture_common(cap_ctr)
    cap_ctr.set_defaults(func=cmd_capture_container)
    cap_img = capsub.add_parser("image", help="an image's configuration (and files read from it), without running it")
    cap_img.add_argument("image", metavar="REF")
    cap_img.add_argument("--file", action="append", metavar="PATH",
                         help="copy this file out of the image into OUT/files/<name>/ (repeatable)")
    cap_img.add_argument("--docker-url", default="unix:///var/run/docker.sock", help="Docker Engine endpoint")
    cap_img.add_argument("--match-label", action="append", metavar="KEY=VALUE",
                         help="select containers with this label (repeatable; default driftd.io/baseline=<name>)")
    cap_img.add_argument("--select-name", action="append", metavar="GLOB", help="select containers by name (repeatable)")
    _capture_common(cap_img)
    cap_img.set_defaults(func=cmd_capture_image)
    cap_pod = capsub.add_parser("pod", help="a pod's security, host and image settings as it runs")
    cap_pod.add_argument("pod", metavar="NAMESPACE/NAME")
    cap_pod.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service account)")
    _capture_common(cap_pod)
    cap_pod.set_defaults(func=cmd_capture_pod)

    osch = sub.add_parser("output-schema", help="print the JSON Schema of the -o json|yaml documents (docs/output.schema.json)")
    osch.set_defaults(func=cmd_output_schema)
    comp = sub.add_parser("completion", help="print a shell completion script: eval \"$(driftd completion bash)\"")
    comp.add_argument("shell", choices=["bash", "zsh"])
    comp.set_defaults(func=cmd_completion)

    st = sub.add_parser("status", help="the open drifts, as a table (like kubectl get) or JSON / YAML")
    _common(st)
    st.add_argument("-o", "--output", choices=["text", "wide", "json", "yaml"], default="text",
                    help="wide: more columns; json/yaml: the DriftList document (docs/output.md)")
    st.add_argument("--baseline", action="append", metavar="NAME", help="only this baseline's drifts (repeatable)")
    st.add_argument("--target", action="append", choices=["host", "docker", "kubernetes"],
                    help="only this target's drifts (repeatable)")
    st.add_argument("--status", action="append", choices=["detected", "reported", "held", "blocked", "failed", "retired"],
                    help="only drifts with this status (repeatable)")
    st.set_defaults(func=cmd_status)

    snap = sub.add_parser("snapshot", help="print the bytes of a snapshot (drifted content kept before a revert)")
    _common(snap)
    snap.add_argument("id", help="snapshot id, sha256:<hex> (or a unique prefix of at least 12 hex digits)")
    snap.set_defaults(func=cmd_snapshot)

    pause = sub.add_parser("pause", help="break-glass: suspend enforcement of some resources for a while, with a reason")
    _common(pause)
    pause.add_argument("--reason", required=True, help="why (incident, ticket): recorded and shown")
    pause.add_argument("--ttl", required=True, help="how long, e.g. 30m, 2h (at most safety.break_glass.max_ttl_seconds)")
    pause.add_argument("--key", help="resource key glob, e.g. 'host:file:/etc/ssh/*'")
    pause.add_argument("--baseline", dest="baseline_name", help="every resource of this baseline")
    pause.add_argument("--target", help="every resource of this target (host, docker, kubernetes)")
    pause.add_argument("--all", action="store_true", help="everything on this node")
    pause.add_argument("--by", help="who (default: the current user)")
    pause.set_defaults(func=cmd_pause)
    resume = sub.add_parser("resume", help="end a break-glass override early")
    _common(resume)
    resume.add_argument("id")
    resume.set_defaults(func=cmd_resume)
    _reset_parser(sub, "breaker", "circuit breakers: reset", "close the open breakers (of one baseline)",
                  cmd_breaker_reset).add_argument("--baseline", dest="baseline_name")
    _reset_parser(sub, "flap", "flap quarantine: reset", "end the quarantine of one resource key (or all)",
                  cmd_flap_reset).add_argument("key", nargs="?")

    audit = sub.add_parser("audit", help="the tamper-evident audit log: verify").add_subparsers(dest="audit_command",
                                                                                               required=True)
    averify = audit.add_parser("verify", help="check the hash chain (exit 0 intact, 1 naming the first broken line)")
    averify.add_argument("paths", nargs="+", metavar="PATH",
                         help="audit files in any order, or a directory (<state-dir>/audit): ordered by seq")
    averify.add_argument("--expect-head", metavar="SEQ:HASH",
                         help="the last record's seq and hash as shipped off the node (the `audit` log line's seq and "
                              "hash): also detects a truncated or edited end")
    averify.set_defaults(func=cmd_audit_verify)

    demo = sub.add_parser("demo", help="build a demo host tree, inject drift, enforce once, show the result")
    demo.add_argument("--dir", default="driftd-demo", help="working folder (default ./driftd-demo)")
    demo.add_argument("--baselines", help="baselines to use (default: the shipped examples)")
    demo.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return ExitCode.CLEAN


def console() -> None:
    """The ``driftd`` command (console script, ``python -m driftd``): :func:`main`, then exit.

    After a completed ``run --once`` the process flushes its output and leaves through
    ``os._exit``: tearing the interpreter down would free every module and object one by
    one (tens of milliseconds after a pass, for memory the OS takes back at once), and
    nothing needs it by then: the state database is closed, no other thread runs, and the
    logs went straight to stderr.  Every other command exits the usual way.

    driftd uses no pydantic plugin: without ``PYDANTIC_DISABLE_PLUGINS`` the first model
    built scans every installed distribution's entry points for one (~6 ms a start).
    """
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    code = main()
    if _once_finished and threading.active_count() == 1:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            if "logging" in sys.modules:  # handlers a library may have set up
                import logging

                logging.shutdown()
        except Exception:  # noqa: S110 - a failing flush is reported by the normal exit below
            pass
        else:
            os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    console()
