"""`volenv verify`: check snapshots at a level; problems are data, exit 4 on any error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from volenv.base.errors import UsageError
from volenv.store import pointers as store
from volenv.store.integrity import VerifyReport, verify_snapshot
from volenv.store.paths import VolumePaths


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
    return [store.snapshot_for(paths, target)]


def verify(paths: VolumePaths, target: str | None, *, all_: bool, level: str) -> VerifyResult:
    from volenv.base.errors import VolumeError
    from volenv.store.rootfind import root_exists

    if not root_exists(str(paths.root)):
        raise VolumeError(f"volume root {paths.root} does not exist")
    snaps = select_snapshots(paths, target, all_)
    return VerifyResult(level, tuple(verify_snapshot(s, level) for s in snaps))
