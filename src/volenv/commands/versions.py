"""Generations: `history`, `rollback` (one atomic pointer switch), `pin` / `unpin` (GC roots)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from .. import store
from ..errors import DamagedRecord, UsageError, VerifyError
from ..fsutil import atomic_write_json, contained, safe_mkdirs
from ..locks import BuildLease
from ..paths import VolumePaths, env_from_snapshot_id
from ..sealcheck import SealProblem, check_seal
from ..ui import reporter


@dataclass(frozen=True)
class HistoryResult:
    env: str
    current: str | None
    generations: tuple[store.Generation, ...]


@dataclass(frozen=True)
class SwitchResult:
    env: str
    snapshot: str
    previous: str | None
    action: str


def _require_env(paths: VolumePaths, env: str) -> None:
    if not (paths.env_dir(env) / "snapshots").is_dir():
        raise UsageError(f"no env '{env}' under {paths.envs}")


def history(paths: VolumePaths, env: str) -> HistoryResult:
    _require_env(paths, env)
    return HistoryResult(env, store.read_current(paths, env), tuple(store.read_history(paths, env)))


def rollback(paths: VolumePaths, env: str, to: str | None, *, lock_timeout: float) -> SwitchResult:
    """Switch current to `to` (default: the generation before the current one's), which must
    verify at `seal`; the switch is a single temp + rename of the pointer."""
    _require_env(paths, env)
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
            raise UsageError(f"'{env}' has no earlier generation to roll back to")
        if not store.is_snapshot_id(target, env):
            raise UsageError(f"{target!r} is not a snapshot id of '{env}' (expected {env}-<12 hex>)")
        snap = paths.snapshot(env, target)
        if not snap.is_dir():
            raise UsageError(f"snapshot {target} no longer exists (collected by gc?)")
        try:
            check_seal(str(snap), target)
        except SealProblem as sp:
            raise VerifyError(f"refusing to roll back to {target}: {sp.detail}") from None
        store.switch_current(paths, env, target, None, "rollback")
        store.log_event(paths, env, "rollback", snapshot=target, previous=current)
    return SwitchResult(env, target, current, "rollback")


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
        env = env_from_snapshot_id(snapshot)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not paths.snapshot(env, snapshot).is_dir():
        raise UsageError(f"snapshot {snapshot} not found under {paths.envs}")
    marker = paths.pin(env, snapshot)
    safe_mkdirs(marker.parent, paths.root)  # a linked envs/<env> or pins/ is refused
    if on:
        atomic_write_json(marker, {"schema": 1, "snapshot": snapshot, "time": time.time()}, root=paths.root)
    else:
        with contained(marker, paths.root) as (fd, name):  # a link above it is refused
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:  # say so: "unpinned" would claim a change that did not happen
                return SwitchResult(env, snapshot, None, "not pinned")
    store.log_event(paths, env, "pin" if on else "unpin", snapshot=snapshot)
    return SwitchResult(env, snapshot, None, "pinned" if on else "unpinned")
