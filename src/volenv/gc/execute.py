"""Executing a GC plan, per env under the env's build lease: re-check the roots, remove
references (index entries, use marks) before payloads, rename each payload into trash/ (atomic)
and only then delete it; every item's outcome is returned, no failure is swallowed."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from volenv.base.errors import LockTimeout, VolenvError
from volenv.gc.leases import env_lease, lease_holder
from volenv.gc.plan import (
    IN_FLIGHT_GRACE,
    GcItem,
    GcOutcome,
    GcPlan,
    GcResult,
    env_names,
    listdir,
    orphan_env,
    pack_refs,
    referenced_models,
)
from volenv.gc.sizes import freed_from, inode_table
from volenv.store import pointers as store
from volenv.store.paths import VolumePaths
from volenv.store.volio import (
    ContainmentError,
    open_dir_nofollow,
    remove_tree,
    safe_mkdirs,
    safe_rename,
    safe_unlink,
    unique_suffix,
)


def execute(paths: VolumePaths, plan: GcPlan) -> GcResult:
    """Carry out exactly the plan's removals; report every item; never swallow a failure."""
    from volenv.base import faults
    from volenv.store.volio import fsync_dir

    faults.point("gc-execute")  # tests: a sync runs while gc waits here (its prompt)
    try:
        safe_mkdirs(paths.trash, paths.root)
    except ContainmentError as exc:
        failed = tuple(GcOutcome(i.path, i.kind, False, str(exc)) for i in plan.removals)
        return GcResult(plan, failed, 0, True)
    outcomes: list[GcOutcome] = []
    table = plan._inodes or inode_table([Path(i.path) for i in plan.removals])
    by_env: dict[str | None, list[GcItem]] = {}
    for item in plan.removals:
        by_env.setdefault(item.env if item.kind in ("snapshot", "staging", "env") else None, []).append(item)
    for env, items in by_env.items():
        if env is None:
            continue
        with env_lease(paths, env) as refused:
            if refused is not None:
                # a build in progress is a root: kept on purpose (exit 0, a note); a lease that
                # cannot be taken at all (a linked locks/, I/O) is a failure
                building = isinstance(refused, LockTimeout)
                why = "kept: a build holds the env's lease" if building else f"not removed: {refused}"
                for item in items:
                    outcomes.append(GcOutcome(item.path, item.kind, False, why, kept=building))
                continue
            for item in items:
                outcomes.append(_remove_env_item(paths, plan, item))
    others = [i for i in by_env.get(None, []) if i.kind not in ("uv-archive", "model", "pack")]
    for item in others:
        outcomes.append(_trash_and_delete(paths, Path(item.path), item.kind))
    outcomes.extend(_remove_models(paths, [i for i in by_env.get(None, []) if i.kind == "model"]))
    outcomes.extend(_remove_packs(paths, [i for i in by_env.get(None, []) if i.kind == "pack"]))
    archives = [i for i in by_env.get(None, []) if i.kind == "uv-archive"]
    if archives:
        outcomes.extend(_remove_archives(paths, archives))
    fsync_dir(paths.trash)
    done = {o.path for o in outcomes if o.done}
    return GcResult(plan, tuple(outcomes), freed_from(table, done), True)


def _remove_env_item(paths: VolumePaths, plan: GcPlan, item: GcItem) -> GcOutcome:
    path = Path(item.path)
    env = item.env
    assert env is not None
    if item.kind == "staging":
        return _trash_and_delete(paths, path, "staging")
    if item.kind == "env":  # re-checked under the env's lease: a build may have committed since
        if not orphan_env(paths, env):
            return GcOutcome(item.path, item.kind, False, "kept: holds a snapshot now", kept=True)
        return _trash_and_delete(paths, path, "env")
    sid = path.name
    # the roots again, now under the lease: current, pins, and in-flight activations
    if store.read_current(paths, env) == sid:
        return GcOutcome(item.path, item.kind, False, "kept: became current after the plan", kept=True)
    if store.is_pinned(paths, env, sid):
        return GcOutcome(item.path, item.kind, False, "kept: pinned after the plan", kept=True)
    if _recently_used(paths, env, sid, plan):
        return GcOutcome(item.path, item.kind, False, "kept: activated after the plan", kept=True)
    # references before payload: index entries, then the use mark
    try:
        with _contained_dirs(paths, path.parent, paths.trash):
            pass
    except (ContainmentError, OSError) as exc:
        return GcOutcome(item.path, item.kind, False, f"not removed: {exc}")
    for digest in listdir(paths.env_dir(env) / "index", paths.root):
        entry = paths.index_entry(env, digest)
        try:
            if store.read_index(paths, env, digest) == sid:
                safe_unlink(entry, paths.root)
        except (OSError, VolenvError):
            continue
    dest = paths.trash / f"{sid}.{unique_suffix()}"
    try:
        safe_rename(path, dest, paths.root)
    except (OSError, VolenvError) as exc:
        return GcOutcome(item.path, item.kind, False, f"rename to trash failed: {_why(exc)}")
    if _recently_used(paths, env, sid, plan):
        # an activation slipped in between the check and the rename: give it back
        safe_rename(dest, path, paths.root)
        return GcOutcome(item.path, item.kind, False, "kept: activated while being removed", kept=True)
    try:
        safe_unlink(paths.used_marker(env, sid), paths.root)
    except (OSError, VolenvError):
        pass
    store.log_event(paths, env, "gc-remove", snapshot=sid)
    return _delete(paths, dest, item)


def _recently_used(paths: VolumePaths, env: str, sid: str, plan: GcPlan) -> bool:
    used = store.last_used(paths, env, sid)
    if used is None:
        return False
    return time.time() - used <= max(IN_FLIGHT_GRACE, plan.keep_within) or used > plan.created


def _trash_and_delete(paths: VolumePaths, path: Path, kind: str) -> GcOutcome:
    if path.parent == paths.trash:
        dest = path
    else:
        dest = paths.trash / f"{path.name}.{unique_suffix()}"
        try:
            safe_rename(path, dest, paths.root)  # neither side through a planted symlink
        except FileNotFoundError:
            return GcOutcome(str(path), kind, True, "already gone")
        except (OSError, VolenvError) as exc:
            return GcOutcome(str(path), kind, False, f"rename to trash failed: {_why(exc)}")
    return _delete(paths, dest, GcItem(kind, str(path), None, "remove", (), 0))


def _why(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


@contextlib.contextmanager
def _contained_dirs(paths: VolumePaths, *dirs: Path) -> Iterator[None]:
    """Raise ContainmentError unless every dir's own chain below the root is link-free."""
    for d in dirs:
        rel = Path(os.path.normpath(d)).relative_to(os.path.normpath(paths.root)).parts
        os.close(open_dir_nofollow(paths.root, rel))
    yield


def _remove_models(paths: VolumePaths, items: list[GcItem]) -> list[GcOutcome]:
    """Model roots again, at execution: a sync that ran during the prompt may reference a model
    the plan called unused (kept, with a note); while any env's build holds its lease, a model
    it may be about to reference is kept too. Record before payload."""
    if not items:
        return []
    busy = [e for e in env_names(paths) if lease_holder(paths, e)]
    snaps = [
        paths.snapshot(env, sid)
        for env in env_names(paths)
        for sid in listdir(paths.snapshots(env), paths.root)
        if not sid.startswith(".")
    ]
    referenced = referenced_models(paths, snaps)
    out = []
    for item in items:
        assert item.package is not None
        if item.package in referenced:
            out.append(GcOutcome(item.path, item.kind, False, "kept: referenced after the plan", kept=True))
            continue
        if busy:
            why = f"kept: a build of {', '.join(busy)} is running and may reference it"
            out.append(GcOutcome(item.path, item.kind, False, why, kept=True))
            continue
        try:
            with _contained_dirs(paths, Path(item.path).parent, paths.trash):
                pass
            # reference before payload: without its record the model is "absent" to activation
            safe_unlink(paths.models / "records" / item.package, paths.root)
        except (OSError, VolenvError) as exc:
            out.append(GcOutcome(item.path, item.kind, False, f"record not removed: {_why(exc)}"))
            continue
        out.append(_trash_and_delete(paths, Path(item.path), item.kind))
    return out


def _remove_packs(paths: VolumePaths, items: list[GcItem]) -> list[GcOutcome]:
    """Stale pack manifests first, then blobs no manifest names now (re-read at execution: a
    pack or pull that finished meanwhile keeps its blobs)."""
    if not items:
        return []
    out = [_trash_and_delete(paths, Path(i.path), i.kind) for i in items if i.path.endswith(".json")]
    refs, _stale = pack_refs(paths, set())
    for item in items:
        if item.path.endswith(".json"):
            continue
        if refs is None or Path(item.path).name.split(".", 1)[0] in refs:
            out.append(GcOutcome(item.path, item.kind, False, "kept: a pack names it now", kept=True))
            continue
        out.append(_trash_and_delete(paths, Path(item.path), item.kind))
    return out


def _delete(paths: VolumePaths, dest: Path, item: GcItem) -> GcOutcome:
    try:
        remove_tree(dest, paths.root)
    except (OSError, VolenvError) as exc:
        return GcOutcome(item.path, item.kind, False, f"in trash, delete failed: {exc}")
    return GcOutcome(item.path, item.kind, True, "removed")


def _remove_archives(paths: VolumePaths, archives: list[GcItem]) -> list[GcOutcome]:
    """`uv cache clean PACKAGE` for each package whose archives are all unused."""
    from volenv.build.uvtool import run_uv

    out = []
    packages = sorted({i.package for i in archives if i.package})
    if not packages:
        return []
    proc = run_uv(["cache", "clean", *packages], paths, None)
    for item in archives:
        if proc.returncode == 0 and not Path(item.path).exists():
            done = f"removed by uv cache clean {item.package}"
            out.append(GcOutcome(item.path, item.kind, True, done))
        else:
            detail = "still present after uv cache clean"
            if proc.returncode:
                detail = (proc.stderr.strip().splitlines() or [f"uv exited {proc.returncode}"])[-1]
            out.append(GcOutcome(item.path, item.kind, False, detail))
    return out
