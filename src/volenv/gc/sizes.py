"""Sizes as GC reports them: hard-link aware ("freed" counts the blocks of inodes whose every
link is removed; a snapshot's files are hard links into uv's cache and other snapshots)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path


def inode_table(targets: list[Path]) -> dict[str, list[tuple[tuple[int, int], int, int]]]:
    """target -> [(inode key, link count, bytes in blocks)] for every file and dir under it."""
    table: dict[str, list[tuple[tuple[int, int], int, int]]] = {}
    for t in targets:
        table[str(t)] = [
            ((st.st_dev, st.st_ino), 1 if isdir(st) else st.st_nlink, st.st_blocks * 512)
            for st in walk_stats(t, include_dirs=True)
        ]
    return table


def freed_from(table: dict[str, list[tuple[tuple[int, int], int, int]]], removed: set[str]) -> int:
    """Blocks of every inode whose links all lie inside the removed targets."""
    seen: dict[tuple[int, int], list[int]] = {}
    for target, rows in table.items():
        if target not in removed:
            continue
        for key, nlink, blocks in rows:
            entry = seen.setdefault(key, [0, nlink, blocks])
            entry[0] += 1
    return sum(blocks for count, nlink, blocks in seen.values() if count >= nlink)


def freed_bytes(targets: list[Path]) -> int:
    table = inode_table(targets)
    return freed_from(table, set(table))


def isdir(st: os.stat_result) -> bool:
    import stat as _stat

    return _stat.S_ISDIR(st.st_mode)


def walk_stats(path: Path, include_dirs: bool = False) -> Iterator[os.stat_result]:
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return
    if not isdir(top):
        yield top
        return
    if include_dirs:
        yield top
    for dirpath, dirs, files in os.walk(path):
        for name in files + ([d for d in dirs] if include_dirs else []):
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if isdir(st) and not include_dirs:
                continue
            yield st
        # symlinked dirs appear in `dirs` but os.walk does not follow them
        for d in dirs:
            if os.path.islink(os.path.join(dirpath, d)) and not include_dirs:
                yield os.lstat(os.path.join(dirpath, d))


def apparent(path: Path) -> int:
    return sum(st.st_size for st in walk_stats(path))


def real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
