"""`volenv sync`: manifest -> sealed snapshot. Reads top to bottom as the lifecycle:

plan (index hit? resolve, snapshot id: `plan`) -> lease -> preflight -> stage -> install ->
groups -> post-install -> compile -> smoke -> record (+ wheel check) -> seal -> commit
(`steps`, each a named function with a fault point, so tests can kill the builder at any)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from volenv.base import faults
from volenv.base.errors import (
    BuildError,
    UsageError,
    VerifyError,
    VolenvError,
    from_oserror,
)
from volenv.base.ui import reporter
from volenv.build.plan import GroupState, Resolution, ResolveLog, SyncOptions, SyncResult, make_plan
from volenv.build.staging import check_filesystem
from volenv.build.steps import build_snapshot, publish_pointers
from volenv.manifest.schema import Manifest
from volenv.store import pointers as store
from volenv.store.alias import write_alias
from volenv.store.paths import VolumePaths
from volenv.store.rootfind import root_exists
from volenv.store.sealcheck import (
    SealProblem,
    check_seal,
)
from volenv.store.volio import real_dir_below

if TYPE_CHECKING:  # filelock (and psutil, in _free_bytes) load only when a build really
    pass  # starts: a no-op sync is one process start, they a tenth of it

# ---------------------------------------------------------------- the lifecycle


def sync(paths: VolumePaths, manifest: Manifest, opts: SyncOptions) -> SyncResult:
    """The snapshot, then (unless --no-models) the manifest's models; the start trace of
    `[activate] trace-cmd` is the sync command's (commands/sync.py), above activation."""
    if opts.pack:  # a missing 'packs' extra is said before anything is built
        from volenv.store.packformat import need_zstandard

        need_zstandard()
    result = sync_snapshot(paths, manifest, opts)
    if opts.pack and not opts.dry_run:
        from volenv.store.packformat import manifest_path
        from volenv.store.packwrite import pack_snapshot

        if not manifest_path(paths, result.snapshot).exists():
            pack_snapshot(paths, Path(result.path))  # its own progress and summary line
    if not opts.dry_run and opts.models and manifest.models:
        from dataclasses import replace

        from volenv.models.cache import fetch_models

        result = replace(result, models=tuple(fetch_models(paths, manifest, lock_timeout=opts.lock_timeout)))
    return result


def _warn_secret_env(manifest: Manifest) -> None:
    from volenv.base.redact import secret_like_env

    for name in secret_like_env(dict(manifest.env)):
        reporter.warn(
            f"[activate] env {name} looks like a secret: manifest values are stored in the seal"
            " (and travel with `volenv push`); set it in the container's environment instead,"
            " which `volenv run` passes through"
        )


class _Vanished(Exception):
    """The index's snapshot was removed (by gc) between the unlocked look and the lease."""


def sync_snapshot(paths: VolumePaths, manifest: Manifest, opts: SyncOptions) -> SyncResult:
    t0 = time.perf_counter()
    env = manifest.name
    if opts.offline and (opts.refresh or opts.rebuild):
        raise UsageError(
            "--offline cannot be combined with --refresh or --reinstall (they fetch again)",
            hint="drop --offline, or drop --refresh/--reinstall",
        )
    if opts.dry_run and not root_exists(str(paths.root)):
        return _dry_run(paths, manifest, opts, t0, root_missing=True)
    store.open_volume(paths, create=not opts.dry_run)
    _warn_secret_env(manifest)
    hit = None if opts.refresh or opts.rebuild else valid_index_hit(paths, manifest)
    if hit is not None:
        try:
            return _reuse(paths, manifest, hit[0], t0, opts, seal=hit[1])
        except _Vanished:  # gc collected it between the look and the lease: build it again
            reporter.info(f"snapshot {hit[0]} was removed meanwhile (gc); building it again")
    if opts.dry_run:
        return _dry_run(paths, manifest, opts, t0)
    try:
        store.ensure_env_dirs(paths, env)
        check_filesystem(paths)
    except OSError as exc:
        raise from_oserror(exc, f"cannot create the env directories of '{env}'") from exc
    from volenv.store.locks import BuildLease

    lease = BuildLease(paths, env, timeout=opts.lock_timeout, say=reporter.info)
    with lease:
        try:  # again under the lease: gc removes an env dir a failed build left empty
            store.ensure_env_dirs(paths, env)
        except OSError as exc:
            raise from_oserror(exc, f"cannot create the env directories of '{env}'") from exc
        hit = None if opts.refresh or opts.rebuild else valid_index_hit(paths, manifest)
        if hit is not None:
            return _reuse(paths, manifest, hit[0], t0, opts, have_lease=True, seal=hit[1])
        with tempfile.TemporaryDirectory(prefix="volenv-resolve-") as tmp:
            faults.point("resolve")
            rlog = ResolveLog(
                Path(tmp) / "resolve.log",
                paths.env_logs(env) / f"build-{time.strftime('%Y%m%dT%H%M%S')}-{env}-resolve.log",
                paths.root,
            )
            t_resolve = time.perf_counter()
            try:
                plan = make_plan(paths, manifest, opts, tmp, rlog)
            except BuildError as exc:
                rlog.keep()
                store.log_event(
                    paths,
                    env,
                    "build-failed",
                    step="resolve",
                    error=str(exc),
                    exit_code=exc.exit_code,
                    log=str(rlog.final),
                )
                raise
            assert plan.resolution is not None
            if plan.action == "index":
                publish_pointers(paths, manifest, plan.resolution.snapshot_id, "index")
                return _reuse(paths, manifest, plan.resolution.snapshot_id, t0, opts, have_lease=True)
            resolve_s = time.perf_counter() - t_resolve
            return build_snapshot(
                paths, manifest, plan, lease, opts, Path(tmp), t0, resolve_seconds=resolve_s
            )


def valid_index_hit(paths: VolumePaths, manifest: Manifest) -> tuple[str, dict[str, Any]] | None:
    """The index's snapshot for this manifest and its seal, if it is valid at `seal`."""
    try:
        sid = store.read_index(paths, manifest.name, manifest.digest)
    except VolenvError:
        return None
    if sid is None:
        return None
    snap = paths.snapshot(manifest.name, sid)
    if not real_dir_below(paths.root, snap) and os.path.lexists(snap):
        raise VerifyError(
            f"snapshot directory {snap} is a link (or below one) inside the root: not reused",
            hint="remove the link (volenv never makes one there), then sync again",
        )
    try:
        return sid, check_seal(str(snap), sid)
    except SealProblem:
        return None


def _reuse(
    paths: VolumePaths,
    manifest: Manifest,
    sid: str,
    t0: float,
    opts: SyncOptions,
    *,
    have_lease: bool = False,
    seal: dict[str, Any] | None = None,
) -> SyncResult:
    env = manifest.name
    previous = store.read_current(paths, env)
    if previous != sid and not opts.dry_run:
        from volenv.store.locks import BuildLease

        # switching current happens under the env's lease, so GC's root check stays consistent
        faults.point("reuse")  # tests: gc removes the snapshot between the look and the lease
        lease = (
            contextlib.nullcontext()
            if have_lease
            else BuildLease(paths, env, timeout=opts.lock_timeout, say=reporter.info)
        )
        with lease:
            if not have_lease:
                now = valid_index_hit(paths, manifest)
                if now is None or now[0] != sid:
                    raise _Vanished(sid)
            try:
                # written again, so it is this manifest's newest entry: gc keeps each manifest's
                # newest (a manifest reverted in place to earlier contents reuses their snapshot)
                store.write_index(paths, env, manifest.digest, sid, str(manifest.path), manifest.id)
                store.switch_current(paths, env, sid, manifest.digest, "sync")
            except OSError as exc:
                raise from_oserror(exc, "cannot switch the current pointer") from exc
    if not opts.dry_run:
        store.log_event(paths, env, "sync", action="reused", snapshot=sid, manifest_digest=manifest.digest)
        # the alias names the digest just reused: a reverted local package runs its earlier snapshot
        write_alias(paths.root, manifest)
    if seal is None:
        seal = check_seal(str(paths.snapshot(env, sid)), sid)
    changes = None
    if opts.dry_run:
        from volenv.store import contents

        if previous != sid:
            _note_rollback_end(paths, env, sid, dry_run=True)
        changes = _changes_from_current(paths, env, contents.from_seal(seal))
    return SyncResult(
        env,
        sid,
        "would-reuse" if opts.dry_run else "reused",
        str(paths.snapshot(env, sid)),
        manifest.digest,
        time.perf_counter() - t0,
        previous,
        groups=tuple(GroupState(**g) for g in seal.get("groups", [])),
        link_mode=seal.get("link_mode"),
        changes=changes,
    )


def _dry_run(
    paths: VolumePaths, manifest: Manifest, opts: SyncOptions, t0: float, *, root_missing: bool = False
) -> SyncResult:
    """The plan and every package it would install, with sizes where known. A root that does
    not exist yet is no error: it resolves with a temporary cache and creates nothing."""
    from volenv.build.dryrun import planned_packages

    env = manifest.name
    with tempfile.TemporaryDirectory(prefix="volenv-dry-run-") as tmp:
        where = VolumePaths(Path(tmp) / "root") if root_missing else paths  # uv's cache: not the root
        plan = make_plan(where, manifest, opts, tmp)
        assert plan.resolution is not None
        packages = planned_packages(where, manifest, plan.resolution, Path(tmp), opts)
    action = "would-reuse" if plan.action in ("reuse", "index") else "would-build"
    sid = plan.snapshot or "?"
    if not root_missing:
        _note_rollback_end(paths, env, sid, dry_run=True)
    changes = None
    if not root_missing:
        changes = _changes_from_current(paths, env, _planned_contents(manifest, plan.resolution))
    return SyncResult(
        env,
        sid,
        action,
        str(paths.snapshot(env, sid)),
        manifest.digest,
        time.perf_counter() - t0,
        None if root_missing else plan.previous,
        changes=changes,
        packages=packages,
    )


def _note_rollback_end(paths: VolumePaths, env: str, sid: str, *, dry_run: bool = False) -> None:
    """--dry-run: say that the sync would end a rollback (store.switch_current says it when it does)."""
    note = store.rollback_end_note(paths, env, sid, "this sync would make", "end")
    if note:
        reporter.warn(note)


def _planned_contents(manifest: Manifest, res: Resolution | None) -> Any:
    from volenv.manifest.schema import model_dict
    from volenv.store import contents

    if res is None:
        return None
    states = {g: "installed" for g in res.groups} | {g: "unresolvable" for g in res.unresolvable}
    return contents.contents_of(res.base, res.groups, states, [model_dict(m) for m in manifest.models])


def _changes_from_current(paths: VolumePaths, env: str, new: Any) -> Any:
    """What a dry run would change against the env's current snapshot (None: nothing to compare)."""
    from volenv.store import contents

    try:
        cur = store.read_current(paths, env)
        if cur is None or new is None:
            return None
        return contents.diff(contents.from_seal(check_seal(str(paths.snapshot(env, cur)), cur)), new)
    except (VolenvError, SealProblem):
        return None
