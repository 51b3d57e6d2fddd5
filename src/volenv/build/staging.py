"""The staging directory of a build and the volume's file-system checks: stale builds of dead
builders are removed, a damaged snapshot is quarantined (set aside, never deleted in place)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from volenv.base.errors import (
    DiskSpaceError,
    VolenvError,
    VolumeError,
)
from volenv.base.ui import reporter
from volenv.build.venv import mib
from volenv.store.paths import VolumePaths
from volenv.store.rootfind import fix_command
from volenv.store.volio import (
    atomic_write_json,
    remove_tree,
    safe_mkdirs,
    safe_rename,
    unique_suffix,
)

if TYPE_CHECKING:  # filelock (and psutil, in free_bytes) load only when a build really
    pass  # starts: a no-op sync is one process start, they a tenth of it


BUILDING_NAME = "building.json"


def clean_stale_staging(paths: VolumePaths, env: str) -> int:
    """Under the env's lease, every staging dir of this env is a dead (or fenced-off) builder's."""
    removed = 0
    try:
        names = os.listdir(paths.staging)
    except FileNotFoundError:
        return 0
    for name in names:
        path = paths.staging / name
        if name.startswith(".verify-"):
            inner = _listdir(path)
            if not any(staging_env(n) == env for n in inner):
                continue
        elif staging_env(name) != env:
            continue
        try:
            remove_tree(path, paths.root)
            removed += 1
            reporter.info(f"removed a dead builder's staging {name}")
        except (OSError, VolenvError) as exc:
            reporter.warn(f"could not remove stale staging {name}: {exc}")
    return removed


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def staging_env(name: str) -> str | None:
    """`<env>-<12 hex>.<unique>` -> env (env names may contain '-' and '.')."""
    head = name
    for i in range(len(head)):
        if (
            head[i] == "-"
            and len(head) > i + 13
            and head[i + 13] == "."
            and all(c in "0123456789abcdef" for c in head[i + 1 : i + 13])
        ):
            return head[:i]
    return None


def check_filesystem(paths: VolumePaths) -> None:
    """Refuse, before anything else is written, a filesystem that cannot hold a venv (or a
    staging directory that is a planted link: the build would write through it)."""
    safe_mkdirs(paths.staging, paths.root)
    caps = probe_filesystem(paths.staging)
    if not caps["symlinks"]:
        raise VolumeError(
            f"the filesystem under {paths.root} has no symbolic links (exFAT/FAT?): a venv cannot live there",
            hint="put the volenv root on ext4, xfs, a network volume or another POSIX filesystem",
        )
    if not caps["hardlinks"]:
        reporter.warn(f"{paths.root} has no hard links: packages are copied into every snapshot (more disk)")


def probe_filesystem(directory: Path) -> dict[str, bool]:
    """What the volume's filesystem can do: symlinks (venvs need them), hard links (uv's cache)."""
    directory.mkdir(parents=True, exist_ok=True)
    base = directory / f".probe-{unique_suffix()}"
    caps = {"symlinks": True, "hardlinks": True}
    try:
        base.write_bytes(b"probe")
        try:
            os.symlink(base.name, f"{base}.sym")
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            caps["symlinks"] = False
        try:
            os.link(base, f"{base}.lnk")
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            caps["hardlinks"] = False
    finally:
        for suffix in ("", ".sym", ".lnk"):
            try:
                os.unlink(f"{base}{suffix}")
            except OSError:
                pass
    return caps


def quarantine(
    paths: VolumePaths, snapshot_dir: Path, reason: str, report: dict[str, Any] | None = None
) -> Path:
    """Move a damaged snapshot aside (never delete it silently), report next to it."""
    safe_mkdirs(paths.quarantine, paths.root)
    dest = paths.quarantine / f"{snapshot_dir.name}.{unique_suffix()}"
    safe_rename(snapshot_dir, dest, paths.root)  # neither side through a planted symlink
    atomic_write_json(
        dest.with_name(dest.name + ".report.json"),
        {"schema": 1, "snapshot": snapshot_dir.name, "time": time.time(), "reason": reason, "report": report},
    )
    reporter.warn(f"quarantined {snapshot_dir.name} -> {dest} ({reason})")
    return dest


def free_bytes(paths: VolumePaths) -> int:
    """Free bytes on the volume; psutil is imported here, so a no-op sync never loads it."""
    import psutil

    return int(psutil.disk_usage(str(paths.root)).free)


def with_space_figures(exc: VolenvError, paths: VolumePaths, need: int) -> DiskSpaceError:
    try:
        free = free_bytes(paths)
    except OSError:
        free = -1
    return DiskSpaceError(
        f"{exc.message}; free now {mib(free)}, needed at least {mib(need)}",
        hint=f"free space with `{fix_command(str(paths.root), 'gc')}`, or grow the volume",
    )
