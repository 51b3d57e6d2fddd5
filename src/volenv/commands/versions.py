"""Generations: `history`, `rollback` (one atomic pointer switch), `pin` / `unpin` (GC roots)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from volenv.base.errors import DamagedRecord, UsageError, VerifyError
from volenv.base.ui import reporter
from volenv.store import contents
from volenv.store import pointers as store
from volenv.store.locks import BuildLease
from volenv.store.paths import VolumePaths, env_from_snapshot_id
from volenv.store.rootfind import fix_command
from volenv.store.sealcheck import SealProblem, check_seal, plain_name, read_seal
from volenv.store.volio import atomic_write_json, contained, safe_mkdirs


@dataclass(frozen=True)
class HistoryEntry:
    """A generation (store.Generation's fields) and what it changed against the one before."""

    number: int
    time: float
    snapshot: str
    manifest_digest: str | None
    action: str
    changes: contents.Changes | None  # None: a snapshot of the pair is gone (gc) or unreadable
    summary: str


@dataclass(frozen=True)
class HistoryResult:
    env: str
    current: str | None
    generations: tuple[HistoryEntry, ...]


@dataclass(frozen=True)
class SwitchResult:
    env: str
    snapshot: str
    previous: str | None
    action: str
    manifests: tuple[ManifestFate, ...] = ()  # rollback: what `run --manifest` runs for each
    changed: bool = True  # False: the volume already was so (rollback --to current, unpin unpinned)


@dataclass(frozen=True)
class ManifestFate:
    """After a rollback, what `run --manifest` runs for one indexed manifest, and why."""

    manifest: str  # its path when the index recorded it, else `digest <12 hex>`
    indexed: str  # the snapshot its index entry names
    runs: str
    why: str


def _require_env(paths: VolumePaths, env: str) -> None:
    if not (paths.env_dir(env) / "snapshots").is_dir():
        raise UsageError(f"no env '{env}' under {paths.envs}")


def history(paths: VolumePaths, env: str) -> HistoryResult:
    _require_env(paths, env)
    seen: dict[str, contents.Contents | None] = {}

    def held(sid: str) -> contents.Contents | None:
        if sid not in seen:
            seen[sid] = None
            if not store.is_snapshot_id(sid, env):  # history is volume data: read only our names
                return None
            try:
                seen[sid] = contents.from_seal(read_seal(str(paths.snapshot(env, sid))))
            except SealProblem:
                seen[sid] = None
        return seen[sid]

    out = []
    before: str | None = None
    for g in store.read_history(paths, env):
        old = contents.Contents() if before is None else held(before)
        new = held(g.snapshot)
        changes = contents.diff(old, new) if old is not None and new is not None else None
        gone = ", ".join(s for s in (before, g.snapshot) if s and held(s) is None)
        summary = changes.summary() if changes is not None else f"? ({gone} gone)"
        out.append(HistoryEntry(g.number, g.time, g.snapshot, g.manifest_digest, g.action, changes, summary))
        before = g.snapshot
    return HistoryResult(env, store.read_current(paths, env), tuple(out))


def rollback(paths: VolumePaths, env: str, to: str | None, *, lock_timeout: float) -> SwitchResult:
    """Switch current to `to` (default: the generation before the current one's), which must
    verify at `seal`; the switch is a single temp + rename of the pointer."""
    _require_env(paths, env)
    if to is not None:
        to = _resolve_in(paths, env, to)
    with BuildLease(paths, env, timeout=lock_timeout, say=reporter.info):
        try:
            current = store.read_current(paths, env)
        except DamagedRecord as exc:
            # `--to` is the repair of a damaged pointer file (a directory there is not ours to remove)
            if to is None or paths.current(env).is_dir():
                raise
            reporter.warn(f"{exc.message}; replacing it")
            current = None
        target = to or _previous_generation(paths, env, current)
        if target is None:
            raise _nothing_earlier(paths, env, current)
        if target == current:
            unchanged = _already_at(paths, env, target)
            if unchanged is not None:
                return unchanged
        if not store.is_snapshot_id(target, env):
            raise UsageError(f"{target!r} is not a snapshot id of '{env}' (expected {env}-<12 hex>)")
        snap = paths.snapshot(env, target)
        if not snap.is_dir():
            raise UsageError(f"snapshot {target} no longer exists (collected by gc?)")
        try:
            seal = check_seal(str(snap), target)
        except SealProblem as sp:
            raise VerifyError(f"refusing to roll back to {target}: {sp.detail}") from None
        created = seal.get("created")
        created = float(created) if isinstance(created, int | float) else 0.0
        # the pointer records the rollback: `run --manifest` honours it (start/activation.py's rolled_back)
        mark = {"from": current, "created": created, "time": time.time()}
        store.switch_current(paths, env, target, None, "rollback", rollback=mark)
        store.log_event(paths, env, "rollback", snapshot=target, previous=current)
    return SwitchResult(env, target, current, "rollback", manifest_fates(paths, env, target, created))


def _already_at(paths: VolumePaths, env: str, target: str) -> SwitchResult | None:
    """`rollback --to` the current snapshot writes nothing (a "no changes" generation is noise
    in history) and says what `run --manifest` runs while a rollback stands; None: the pointer's
    rollback mark is damaged, and rewriting the pointer is the repair its hint names."""
    try:
        rb = store.read_rollback(paths, env)
    except DamagedRecord:
        return None
    fates = () if rb is None else manifest_fates(paths, env, target, rb.created)
    return SwitchResult(env, target, target, "rollback", fates, changed=False)


def manifest_fates(paths: VolumePaths, env: str, target: str, created: float) -> tuple[ManifestFate, ...]:
    """The rule `run --manifest` follows while ENV is rolled back to `target` (start/run.py's prepare):
    a manifest whose snapshot is the target or older keeps it; newer, gone or unusable ones run
    the target."""
    out = []
    for entry in _newest_per_path(paths, env):
        name = _shown(entry.manifest_path) or f"digest {entry.manifest_digest[:12]}"
        sid = entry.snapshot
        if sid == target:
            out.append(ManifestFate(name, sid, sid, "built it: the rollback target"))
            continue
        try:
            when = read_seal(str(paths.snapshot(env, sid))).get("created")
        except SealProblem:
            when = None
        if not isinstance(when, int | float):
            out.append(ManifestFate(name, sid, target, f"{sid} is gone or unusable"))
        elif when <= created:
            out.append(ManifestFate(name, sid, sid, "keeps its snapshot: older than the rollback target"))
        else:
            out.append(ManifestFate(name, sid, target, f"{sid} is newer than the rollback target"))
    return tuple(out)


def _newest_per_path(paths: VolumePaths, env: str) -> list[store.IndexEntry]:
    """One index entry per manifest path: a manifest edited in place leaves one entry per
    content, and `run --manifest PATH` reads the file as it is now, i.e. the newest entry."""

    def written(e: store.IndexEntry) -> float:
        try:
            return paths.index_entry(env, e.manifest_digest).stat().st_mtime
        except OSError:
            return 0.0

    newest: dict[str, store.IndexEntry] = {}
    out: list[store.IndexEntry] = []
    for entry in store.list_index(paths, env):
        key = _shown(entry.manifest_path)
        if key is None:
            out.append(entry)
        elif key not in newest or written(entry) >= written(newest[key]):
            newest[key] = entry
    return sorted([*out, *newest.values()], key=lambda e: _shown(e.manifest_path) or "")


PROVISIONED = "(provisioned: sync --from-env)"


def _shown(manifest_path: str | None) -> str | None:
    """A manifest path as a person reads it: every provisioning pod's temp copy (a fresh
    `volenv-inline-*` folder each time) is one manifest, the provisioned one."""
    if manifest_path is not None and os.path.basename(os.path.dirname(manifest_path)).startswith(
        store.INLINE_DIR_PREFIX
    ):
        return PROVISIONED
    return manifest_path


def _resolve_in(paths: VolumePaths, env: str, text: str) -> str:
    """`--to`: a full id as given (a gone one gets its own message below), else the resolver
    of `show`/`diff`: a unique prefix (`web-3f2`) or its hex part alone (`3f2a`)."""
    from volenv.commands.show import resolve

    if store.is_snapshot_id(text, env):
        return text
    if text == env or (plain_name(text) and (paths.env_dir(text) / "snapshots").is_dir()):
        raise UsageError(
            f"{text!r} is an env name, and --to takes a snapshot of '{env}'",
            hint=f"`{fix_command(str(paths.root), 'rollback', env)}` alone goes back one generation; --to"
            f" takes a snapshot id or prefix that `{fix_command(str(paths.root), 'history', env)}` lists",
        )
    found_env, sid = resolve(paths, text)
    if found_env != env:
        raise UsageError(f"{text!r} is a snapshot of '{found_env}', not of '{env}'")
    return sid


def _nothing_earlier(paths: VolumePaths, env: str, current: str | None) -> UsageError:
    """No earlier snapshot exists: say whether gc removed the ones history names."""
    gone = {g.snapshot for g in store.read_history(paths, env) if g.snapshot != current}
    if not gone:
        return UsageError(f"'{env}' has no earlier generation to roll back to")
    n = len(gone)
    return UsageError(
        f"'{env}' has no earlier snapshot to roll back to: gc removed the {n} snapshot"
        f"{'s' if n != 1 else ''} of its earlier generations",
        hint="rebuild an older version: restore its manifest and sync it "
        f"(`{fix_command(str(paths.root), 'history', env)}` lists what each generation changed)",
    )


def _previous_generation(paths: VolumePaths, env: str, current: str | None) -> str | None:
    gens = store.read_history(paths, env)
    # walk back from the newest generation to the first one naming another, existing snapshot
    for g in reversed(gens):
        if (
            g.snapshot != current
            and store.is_snapshot_id(g.snapshot, env)
            and paths.snapshot(env, g.snapshot).is_dir()
        ):
            return g.snapshot
    return None


def pin(paths: VolumePaths, snapshot: str, *, on: bool) -> SwitchResult:
    try:
        env_from_snapshot_id(snapshot)
    except ValueError:  # not a whole id: a unique prefix, as `show` takes
        from volenv.commands.show import resolve

        if not (paths.envs / snapshot / "snapshots").is_dir():  # an env name is no snapshot
            snapshot = resolve(paths, snapshot)[1]
    try:
        env = env_from_snapshot_id(snapshot)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not paths.snapshot(env, snapshot).is_dir():
        raise UsageError(f"snapshot {snapshot} not found under {paths.envs}")
    marker = paths.pin(env, snapshot)
    safe_mkdirs(marker.parent, paths.root)  # a linked envs/<env> or pins/ is refused
    if on:
        if store.is_pinned(paths, env, snapshot):  # say so: "pinned" would claim a change
            return SwitchResult(env, snapshot, None, "already pinned", changed=False)
        atomic_write_json(marker, {"schema": 1, "snapshot": snapshot, "time": time.time()}, root=paths.root)
    else:
        with contained(marker, paths.root) as (fd, name):  # a link above it is refused
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:  # say so: "unpinned" would claim a change that did not happen
                return SwitchResult(env, snapshot, None, "not pinned", changed=False)
    store.log_event(paths, env, "pin" if on else "unpin", snapshot=snapshot)
    return SwitchResult(env, snapshot, None, "pinned" if on else "unpinned")
