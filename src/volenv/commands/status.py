"""`volenv status` / `volenv list`: a scan of the volume into frozen data; nothing is changed."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from volenv.base.errors import UsageError, VolenvError
from volenv.store import pointers as store
from volenv.store.paths import VolumePaths
from volenv.store.rootfind import fix_command
from volenv.store.sealcheck import SealProblem, check_seal


@dataclass(frozen=True)
class GroupInfo:
    name: str
    state: str
    required: bool


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    env: str
    path: str
    created: float | None
    apparent_bytes: int
    unique_bytes: int | None
    files: int
    last_used: float | None
    current: bool
    pinned: bool
    valid: bool
    problem: str | None
    link_mode: str | None
    python: str | None
    groups: tuple[GroupInfo, ...]


@dataclass(frozen=True)
class EnvInfo:
    name: str
    current: str | None
    snapshots: tuple[SnapshotInfo, ...]
    generations: int


@dataclass(frozen=True)
class StatusReport:
    root: str
    root_source: str
    exists: bool
    free_bytes: int | None
    envs: tuple[EnvInfo, ...]
    warnings: tuple[str, ...]


def scan(
    paths: VolumePaths, root_source: str, *, env_filter: str | None = None, sizes: bool = False
) -> StatusReport:
    from volenv.store.rootfind import root_exists

    if not root_exists(str(paths.root)):  # exit 8, as gc and verify: a script sees no root
        from volenv.base.errors import VolumeError

        raise VolumeError(
            f"volume root {paths.root} (from {root_source}) does not exist",
            hint="pass --root (or VOLENV_ROOT) where the volume is mounted, or sync a manifest"
            " there to make it",
        )
    import psutil

    free = psutil.disk_usage(str(paths.root)).free
    warnings: list[str] = []
    envs = []
    for env in store.list_envs(paths):
        if env_filter and env != env_filter:
            continue
        try:
            current = store.read_current(paths, env)
        except Exception as exc:  # a damaged pointer is reported, not fatal
            warnings.append(f"{env}: current pointer unreadable: {exc}")
            current = None
        snaps = []
        for sid in store.list_snapshots(paths, env, warnings):
            snaps.append(_snapshot_info(paths, env, sid, current, sizes))
        copies = [s.id for s in snaps if s.link_mode == "copy"]
        if copies:
            warnings.append(
                f"{env}: {len(copies)} snapshot(s) were installed by copying (no hard links on this"
                " filesystem): each holds a full copy of every package"
            )
        snaps.sort(key=lambda s: s.created or 0)
        try:
            generations = len(store.read_history(paths, env))
        except VolenvError as exc:  # a damaged history is reported; the snapshots still are listed
            warnings.append(f"{env}: {exc.message}")
            generations = 0
        envs.append(EnvInfo(env, current, tuple(snaps), generations))
    if env_filter and not envs:  # a typo is not "no environments yet"
        raise UsageError(
            f"no env named {env_filter!r} under {paths.root}",
            hint=f"`{fix_command(str(paths.root), 'list')}` shows the envs",
        )
    return StatusReport(str(paths.root), root_source, True, free, tuple(envs), tuple(warnings))


def _snapshot_info(paths: VolumePaths, env: str, sid: str, current: str | None, sizes: bool) -> SnapshotInfo:
    path = paths.snapshot(env, sid)
    try:
        seal = check_seal(str(path), sid)
        valid, problem = True, None
    except SealProblem as sp:
        valid, problem = False, f"{sp.kind}: {sp.detail}"
        seal = {}
        try:
            from volenv.store.sealcheck import read_seal

            seal = read_seal(str(path))
        except SealProblem:
            pass
    fp = seal.get("fingerprint") or {}
    groups = tuple(GroupInfo(g["name"], g["state"], g["required"]) for g in seal.get("groups", []))
    unique = _unique_bytes(str(path)) if sizes else None
    return SnapshotInfo(
        id=sid,
        env=env,
        path=str(path),
        created=seal.get("created"),
        apparent_bytes=int(seal.get("apparent_bytes", 0)),
        unique_bytes=unique,
        files=int(seal.get("record_entries", 0)),
        last_used=store.last_used(paths, env, sid),
        current=sid == current,
        pinned=store.is_pinned(paths, env, sid),
        valid=valid,
        problem=problem,
        link_mode=seal.get("link_mode"),
        python=f"{fp.get('implementation', '?')} {fp.get('version', '?')}" if fp else None,
        groups=groups,
    )


def _unique_bytes(path: str) -> int:
    """Bytes (st_size, the unit of `apparent`) of the recorded files whose every hard link is
    inside this snapshot: what no other snapshot or cache shares, so unique <= apparent.
    Disk blocks would mix units (a 1-byte file takes 4 KiB) and exceed apparent."""
    counts: dict[int, list[int]] = {}
    for dirpath, dirs, files in os.walk(path):
        if dirpath == path and ".volenv" in dirs:
            dirs.remove(".volenv")  # the seal and record: not counted in apparent either
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if not stat.S_ISREG(st.st_mode):
                continue
            entry = counts.setdefault(st.st_ino, [0, st.st_nlink, st.st_size])
            entry[0] += 1
    return sum(size for seen, nlink, size in counts.values() if seen >= nlink)
