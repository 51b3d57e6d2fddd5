"""Startup pack first: extract the packs the start needs, exec, and let a forked background
process extract the rest behind the program (`skeleton`), at idle priority; the marks in the
copy's metadata say whether it is complete, in progress (pid) or failed (why)."""

from __future__ import annotations

import errno
import gc
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volenv.base import faults
from volenv.base.errors import VerifyError, shq
from volenv.base.leanjson import loads as json_loads  # RecursionError is ValueError there
from volenv.base.ui import human_bytes, human_seconds
from volenv.start.localdisk import detached, owned_alone, remove_all, say
from volenv.start.skeleton import (
    Live,
    ancestors,
    build_skeleton,
    listed_dirs,
    processes,
    scan_skeleton,
    swap,
    write_at,
)
from volenv.store.integrity import Entry
from volenv.store.packformat import META_GROUP, PackInfo, PackManifest, blob_path, pack_order, startup_chunk
from volenv.store.packread import Unpacker, _Tree
from volenv.store.paths import VolumePaths
from volenv.store.sealcheck import META_DIR, SealProblem, check_seal
from volenv.store.volio import open_regular, unique_suffix

MARKER = "materialized.json"


IN_PROGRESS = "materializing"  # pid of the background extraction, while there is one


FAILED = "materialize-failed"  # why the background extraction stopped


def damaged(mode: str, why: str, paths: VolumePaths, sid: str) -> None:
    if mode == "always":
        again = f"volenv --root {shq(str(paths.root))} pack {shq(sid)}"
        raise VerifyError(f"materialize: {why}", hint=f"`{again}` again, or run without --materialize")
    say(f"warning: materialize: {why}; running in place")
    return None


def _lock_progress(meta_fd: int, pid: int) -> int | None:
    """The in-progress file, created or reused, locked (flock) for as long as the returned fd is
    open anywhere (the background keeps it): a start that gets the lock knows nobody is
    extracting into this tree. None when another process holds it."""
    import fcntl

    fd = os.open(IN_PROGRESS, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=meta_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    _set_pid(fd, pid)
    return fd


def _set_pid(fd: int, pid: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid}\n".encode(), 0)


def extract_startup_first(
    paths: VolumePaths,
    manifest: PackManifest,
    base: Path,
    partial: Path,
    dest: Path,
    mode: str,
    volume: str,
    garbage: list[Path],
) -> str | None:
    """Extract the metadata and startup packs, link everything else to the volume (the
    skeleton), hand the rest (and the leftover copies to delete) to a background process and
    exec at once."""
    sid = manifest.snapshot
    staged = partial / sid
    t0 = time.perf_counter()
    order = sorted(manifest.packs, key=pack_order)
    first: list[PackInfo] = []
    rest: list[PackInfo] = []
    for p in order:
        (first if p.group == META_GROUP or startup_chunk(p.group) is not None else rest).append(p)
    u: Unpacker | None = None
    listed: tuple[str, ...] = ()
    try:
        u = Unpacker(manifest, staged)
        opener = lambda i: open_regular(blob_path(paths, i.id))  # noqa: E731

        def meta() -> None:  # while the startup packs extract in other processes
            nonlocal listed
            assert u is not None
            u.extract([p for p in first if p.group == META_GROUP], opener)
            check_seal(str(staged), sid)
            listed = listed_dirs(staged, sid)

        u.extract_forked([p for p in first if p.group != META_GROUP], opener, processes(), during=meta)
        assert u.record is not None
        done = {r for r in u.seen if r in u.record}
        t1 = time.perf_counter()
        pending = build_skeleton(u.tree, u.record, done, volume, listed)
        t_skel = time.perf_counter() - t1
        lock = _lock_progress(u.tree.dir_fd(META_DIR, create=False), os.getpid())
        assert lock is not None  # a tree of our own
    except (VerifyError, SealProblem) as exc:
        if u is not None:
            u.close()
        shutil.rmtree(partial, ignore_errors=True)
        damaged(mode, f"a pack is damaged: {exc}", paths, sid)
        return None
    except OSError as exc:
        if u is not None:
            u.close()
        shutil.rmtree(partial, ignore_errors=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            say(f"warning: materialize: local disk full while extracting ({exc.strerror}); running in place")
            return None
        raise
    job = _Job(paths, manifest, u.tree, u.record, done, pending, rest, base, u.dir_modes)
    started = _spawn(job, lock, garbage)
    u.close()
    if not started:
        shutil.rmtree(partial, ignore_errors=True)
        damaged(mode, "the background extraction did not start", paths, sid)
        return None
    tree = staged
    try:
        os.rename(staged, dest)
        tree = dest
        shutil.rmtree(partial, ignore_errors=True)
    except OSError as exc:  # another start put a copy there meanwhile: run from ours where it is
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    before = sum(p.tar_size for p in first)
    total = sum(p.tar_size for p in manifest.packs)
    files = sum(p.files for p in first)
    took, skel = human_seconds(time.perf_counter() - t0), human_seconds(t_skel)
    say(
        f"materialize: startup pack of {sid} local in {took} ({files} files,"
        f" {human_bytes(before)} of {human_bytes(total)};"
        f" skeleton of {len(pending)} links to the volume in {skel});"
        f" the rest extracts in the background into {tree}"
    )
    return str(tree)


def resume(
    paths: VolumePaths,
    manifest: PackManifest,
    base: Path,
    dest: Path,
    seal: dict[str, Any],
    volume: str,
    garbage: list[Path],
) -> str | None:
    """A skeleton whose background extraction stopped (killed, or its container restarted):
    it is still whole, so this start runs from it at once and a new background finishes it.
    A skeleton another process is still completing is used at once too. None: not resumable."""
    try:
        meta = dest / META_DIR
        if not (owned_alone(dest) and owned_alone(meta)):
            return None  # not this user's alone: discarded, never run
        if (meta / FAILED).exists() or not (meta / IN_PROGRESS).exists():
            return None
        if check_seal(str(dest), dest.name).get("record_sha256") != seal["record_sha256"]:
            return None
        live = Live(dest)
    except (OSError, SealProblem):
        return None
    lock: int | None = None
    try:
        lock = _lock_progress(live.dir_fd(META_DIR, create=False), os.getpid())
        if lock is None:
            live.close()
            say(f"materialize: running from {dest} while another start's background extraction completes it")
            return str(dest)
        from volenv.store.integrity import load_record

        record = load_record(dest)
        pending = scan_skeleton(dest, record, volume)
    except (OSError, SealProblem, ValueError):
        pending = None
    if pending is None or lock is None:
        if lock is not None:
            os.close(lock)
        live.close()
        return None
    packs = sorted((p for p in manifest.packs if p.group != META_GROUP), key=pack_order)
    job = _Job(paths, manifest, live, record, set(), pending, packs, base, [])
    started = _spawn(job, lock, garbage)
    live.close()
    if not started:
        return None
    say(f"materialize: resuming the background extraction into {dest} ({len(pending)} links left)")
    return str(dest)


@dataclass
class _Job:
    """What a background extraction needs: the live tree, the record, what is local already,
    the links to replace, and the packs to extract."""

    paths: VolumePaths
    manifest: PackManifest
    live: _Tree
    record: dict[str, Entry]
    done: set[str]
    pending: dict[str, str]
    packs: list[PackInfo]
    base: Path
    dir_modes: list[tuple[str, int]]
    garbage: list[Path] = field(default_factory=list)  # deleted once the extraction is done


def _spawn(job: _Job, lock: int, garbage: list[Path]) -> bool:
    """Start the detached background extraction (it keeps the lock, and deletes `garbage`,
    which is handed over and emptied here once it runs); True once it runs."""
    job.garbage = list(garbage)
    r, w = os.pipe()

    def work() -> int:
        os.close(r)
        return _background(job, lock, w)

    forked = detached(work)
    os.close(w)
    os.close(lock)  # the background holds the lock now
    started = os.read(r, 32) if forked else b""
    os.close(r)
    if started:
        garbage.clear()
    return bool(started)


def _background(job: _Job, lock: int, ready: int) -> int:
    """Extract the packs into a private staging tree and, as soon as everything below one of
    the skeleton's links has arrived (and its pack checked whole), replace that link in one
    atomic step. Then directory modes, and the completion mark after the last swap; on failure
    FAILED with the reason (the skeleton stays whole: programs keep running from it)."""
    import json

    gc.freeze()  # what it inherited stays out of the collections (and its pages shared)
    gc.enable()
    live = job.live
    meta_fd = os.dup(live.dir_fd(META_DIR, create=False))
    stage: Path | None = None
    su: Unpacker | None = None
    try:
        _set_pid(lock, os.getpid())
        os.write(ready, str(os.getpid()).encode())
        os.close(ready)
        faults.point("materialize-background")
        # which link each entry arrives under, and how many entries each link waits for
        cover: dict[str, str] = {}
        remaining = dict.fromkeys(job.pending, 0)
        for rel in job.record:
            if rel in job.done:
                continue
            link = rel if rel in job.pending else next((a for a in ancestors(rel) if a in job.pending), None)
            if link is not None:
                cover[rel] = link
                remaining[link] += 1
        stage = job.base / f".{job.manifest.snapshot}.partial-{unique_suffix()}"
        su = Unpacker(job.manifest, stage, record=job.record)
        swapped = 0
        for info in job.packs:
            before = set(su.seen)
            su.extract([info], lambda i: open_regular(blob_path(job.paths, i.id)))
            for rel in set(su.seen) - before:  # the whole pack checked: its files may go live
                link = cover.get(rel)
                if link is None:
                    continue
                remaining[link] -= 1
                if remaining[link] == 0:
                    swap(su, live, link, job.pending[link])
                    swapped += 1
                    if swapped == 1:
                        faults.point("materialize-swap")
        missing = [r for r in job.record if r not in job.done and r not in su.seen]
        left = [link for link, n in remaining.items() if n]
        if missing or left:
            raise VerifyError(
                f"packs lack {len(missing) + len(left)} recorded entries (e.g. {(missing + left)[0]})"
            )
        modes = [*job.dir_modes, *((r, m) for r, m in su.dir_modes if r not in cover)]
        for rel, mode in sorted(modes, key=lambda x: x[0].count("/"), reverse=True):
            os.fchmod(live.dir_fd(rel, create=False), mode)
        os.fsync(live.root_fd)
        su.close()
        su = None
        shutil.rmtree(stage, ignore_errors=True)  # before the mark: a marked tree leaves nothing behind
        stage = None
        seal_fd = os.open("seal.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=meta_fd)
        with open(seal_fd, "rb") as fh:
            rec = json_loads(fh.read())["record_sha256"]
        mark = {"schema": 1, "snapshot": job.manifest.snapshot, "record_sha256": rec, "time": time.time()}
        write_at(meta_fd, MARKER, json.dumps(mark).encode())
        os.unlink(IN_PROGRESS, dir_fd=meta_fd)
        return 0
    except BaseException as exc:  # whatever stopped it is the reason a later start reports
        try:
            write_at(meta_fd, FAILED, f"background extraction failed: {exc}".encode())
        except OSError:
            pass
        return 1
    finally:
        if su is not None:
            su.close()
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        live.close()
        remove_all(job.garbage)
