"""`volenv verify`: check snapshots at a level; problems are data, exit 4 on any error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import store
from ..errors import UsageError
from ..integrity import VerifyReport, verify_snapshot
from ..paths import VolumePaths, env_from_snapshot_id


@dataclass(frozen=True)
class VerifyResult:
    level: str
    reports: tuple[VerifyReport, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports)


def select_snapshots(paths: VolumePaths, target: str | None, all_: bool) -> list[Path]:
    """ENV -> its current snapshot; SNAPSHOT id -> itself; --all -> every snapshot."""
    if all_:
        return [paths.snapshot(e, s) for e in store.list_envs(paths) for s in store.list_snapshots(paths, e)]
    if target is None:
        raise UsageError("verify: give an ENV, a SNAPSHOT id, or --all")
    if (paths.env_dir(target) / "snapshots").is_dir():
        cur = store.read_current(paths, target)
        if cur is None:
            raise UsageError(f"verify: env '{target}' has no current snapshot")
        return [paths.snapshot(target, cur)]
    try:
        env = env_from_snapshot_id(target)
    except ValueError:
        raise UsageError(f"verify: {target!r} is neither an env on {paths.root} nor a snapshot id") from None
    snap = paths.snapshot(env, target)
    if not snap.is_dir():
        raise UsageError(f"verify: snapshot {target} not found under {paths.envs}")
    return [snap]


def verify(paths: VolumePaths, target: str | None, *, all_: bool, level: str) -> VerifyResult:
    from ..errors import VolumeError
    from ..rootfind import root_exists

    if not root_exists(str(paths.root)):
        raise VolumeError(f"volume root {paths.root} does not exist")
    snaps = select_snapshots(paths, target, all_)
    return VerifyResult(level, tuple(verify_snapshot(s, level) for s in snaps))
