"""`run --materialize`: extract a snapshot's packs onto the container's own disk and exec from
there, when the network volume's per-operation latency makes in-place imports slow.

A start imports thousands of modules: each uncached open/stat on a network volume is a round
trip, while a few large sequential pack reads are not. `auto` times a handful of metadata
operations on the volume and picks (`decide_auto`); a complete local copy (its marker names the
record digest) is reused by later starts, a partial one (killed mid-extract) never is. With a
startup pack, the program starts from a whole skeleton of the tree while the rest is extracted
behind it (see "the skeleton" below).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from volenv.base import faults
from volenv.base.errors import VerifyError, VolenvError, shq
from volenv.base.leanjson import loads as json_loads  # RecursionError is ValueError there
from volenv.base.ui import human_bytes, human_seconds
from volenv.start.auto import decide_auto
from volenv.start.background import (
    FAILED,
    IN_PROGRESS,
    MARKER,
    damaged,
    extract_startup_first,
    resume,
)
from volenv.start.localdisk import (
    alive,
    checked_base,
    default_dir,
    delete_detached,
    free_bytes,
    hold,
    in_use_fd,
    leftovers,
    owned_alone,
    say,
)
from volenv.start.skeleton import (
    can_exchange,
    volume_dir,
)
from volenv.store.packformat import (
    PackManifest,
    blob_path,
    manifest_path,
    need_zstandard,
    read_manifest,
    startup_chunk,
)
from volenv.store.packread import unpack
from volenv.store.paths import VolumePaths
from volenv.store.sealcheck import META_DIR, SealProblem, check_seal
from volenv.store.volio import atomic_write_json, open_regular, unique_suffix


def _complete(dest: Path, seal: dict[str, Any], level: str = "seal") -> bool:
    """A reusable copy: its completion mark, its own seal naming the volume seal's record, and
    (at --verify stat/full) every file matching that record, checked as on the volume."""
    marker = dest / META_DIR / MARKER
    if not (owned_alone(dest) and owned_alone(dest / META_DIR) and owned_alone(marker, stat.S_IFREG)):
        return False  # missing, or not this user's alone: never trusted (another user's plant)
    try:
        own = check_seal(str(dest), dest.name)
    except SealProblem:
        return False

    try:
        if json_loads(marker.read_bytes()).get("record_sha256") != seal["record_sha256"]:
            return False
    except (OSError, ValueError, AttributeError):  # a damaged marker: not complete
        return False
    if own.get("record_sha256") != seal["record_sha256"]:
        return False
    if level == "seal":
        return True
    from volenv.store.integrity import verify_snapshot

    report = verify_snapshot(dest, level)
    if not report.ok:
        say(f"materialize: the local copy {dest} differs from its record ({report.summary()}); re-extracting")
    return report.ok


def _discard(dest: Path, garbage: list[Path]) -> bool:
    """Move a stale or edited copy aside (one rename, so no start sees half of it) into
    `garbage`, deleted once this start's own files exist (see `delete_detached`); False, and
    the copy left alone, while a program runs from it (its IN_USE lock is held)."""
    import fcntl

    try:
        lock = in_use_fd(dest)
    except FileNotFoundError:
        lock = None  # no metadata dir: no program ever ran from it
    except OSError:
        lock = None  # a planted link (ELOOP) or not a directory: removed below, never followed
    try:
        if lock is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False
        aside = dest.with_name(f".{dest.name}.stale-{unique_suffix()}")
        try:
            os.rename(dest, aside)
        except FileNotFoundError:
            return True
        if os.path.islink(aside):  # a planted link: the link goes, never what it points to
            os.unlink(aside)
        else:
            garbage.append(aside)
        return True
    finally:
        if lock is not None:
            os.close(lock)


def choose(
    root: str, snapshot_dir: str, seal: dict[str, Any], mode: str, mdir: str | None, level: str = "seal"
) -> str | None:
    """The directory to exec from: a materialized copy checked at `level`, or None for in place.
    The program holds the copy's IN_USE lock (shared, inherited across exec) for as long as it
    runs, so no later start discards a tree from under it."""
    tree = _choose(root, snapshot_dir, seal, mode, mdir, level)
    if tree is None or hold(tree):
        return tree
    say(f"warning: materialize: {tree} is being replaced by another start; running in place")
    return None


def _choose(
    root: str, snapshot_dir: str, seal: dict[str, Any], mode: str, mdir: str | None, level: str
) -> str | None:
    paths = VolumePaths(Path(root))
    sid = os.path.basename(snapshot_dir)
    base = Path(mdir) if mdir else default_dir()
    dest = base / sid
    try:
        checked_base(base, bool(mdir or os.environ.get("VOLENV_MATERIALIZE_DIR")))
    except OSError as exc:
        say(f"warning: materialize: {base} unusable ({exc.strerror}); running in place")
        return None
    if _complete(dest, seal, level):
        say(f"materialize: reusing the complete local copy {dest}")
        delete_detached(leftovers(base))  # what earlier starts left (their partial copies)
        return str(dest)
    try:
        manifest = read_manifest(manifest_path(paths, sid))
    except FileNotFoundError:
        if mode == "auto":  # packs matter only where auto would have extracted
            d = decide_auto(root, str(base), snapshot_dir)
            if not d.materialize:
                say(f"materialize auto: in place ({d.reason})")
                return None
        # a complete command: the root it names is this one, wherever it came from
        say(
            f"warning: materialize: {sid} has no packs (volenv --root {shq(root)} pack {sid});"
            " running in place"
        )
        return None
    except VolenvError as exc:
        damaged(mode, f"pack manifest unusable: {exc}", paths, sid)
        return None
    if manifest.record_sha256 != seal["record_sha256"]:
        damaged(mode, "the packs do not belong to this snapshot's record", paths, sid)
        return None
    try:
        need_zstandard()
    except VolenvError as exc:  # a lean install without the 'packs' extra: in place, said once
        say(f"warning: materialize: {exc} ({exc.hint}); running in place")
        return None
    need = int(sum(p.tar_size for p in manifest.packs) * 1.05)
    try:
        free = free_bytes(base)
    except OSError as exc:
        say(f"warning: materialize: {base} unusable ({exc.strerror}); running in place")
        return None
    if mode == "auto":
        d = decide_auto(root, str(base), snapshot_dir)
        if not d.materialize:
            say(f"materialize auto: in place ({d.reason})")
            return None
        if free < need:
            say(
                f"materialize auto: in place ({d.reason}, but local disk has {human_bytes(free)} free"
                f" < {need} needed)"
            )
            return None
        say(f"materialize auto: extracting to {base} ({d.reason})")
    elif free < need:
        say(
            f"warning: materialize: local disk {base} has {human_bytes(free)} free,"
            f" {human_bytes(need)} needed; running in place"
        )
        return None
    try:
        volume = volume_dir(root, snapshot_dir)
    except VerifyError as exc:
        damaged(mode, str(exc), paths, sid)
        return None
    garbage = leftovers(base)
    try:
        return _extract(paths, manifest, base, dest, seal, mode, level, volume, garbage)
    finally:
        delete_detached(garbage)  # what no background extraction took over


#: what opening a pack blob raises when it is gone, a link (O_NOFOLLOW), a FIFO or a directory
_NOT_A_BLOB = (errno.ENOENT, errno.ELOOP, errno.EINVAL, errno.ENOTDIR, errno.EISDIR)


def _extract(
    paths: VolumePaths,
    manifest: PackManifest,
    base: Path,
    dest: Path,
    seal: dict[str, Any],
    mode: str,
    level: str,
    volume: str,
    garbage: list[Path],
) -> str | None:
    sid = manifest.snapshot
    exchange = level == "seal" and any(startup_chunk(p.group) is not None for p in manifest.packs)
    if exchange and not can_exchange(base):
        exchange = False
        say(f"materialize: {base} cannot swap a directory for a link atomically; extracting everything first")
    if exchange and os.path.lexists(dest):
        resumed = resume(paths, manifest, base, dest, seal, volume, garbage)
        if resumed is not None:
            return resumed
    if os.path.lexists(dest) and _await_background(dest, seal, level):
        say(f"materialize: reusing the local copy {dest}, completed by another start")
        return str(dest)
    if os.path.lexists(dest) and not _discard(dest, garbage):  # a killed start's copy, or one that failed
        say(f"materialize: {dest} is in use by a running program; extracting a fresh copy beside it")
    partial = base / f".{sid}.partial-{unique_suffix()}"
    partial.mkdir()
    staged = partial / sid
    if exchange:
        with _gc_paused():
            try:
                return extract_startup_first(paths, manifest, base, partial, dest, mode, volume, garbage)
            except OSError as exc:
                if exc.errno not in _NOT_A_BLOB:
                    raise
                shutil.rmtree(partial, ignore_errors=True)
                damaged(mode, f"a pack blob is missing or not a plain file: {exc}", paths, sid)
                return None
    t0 = time.perf_counter()
    tree = dest
    try:
        unpack(manifest, lambda i: open_regular(blob_path(paths, i.id)), staged)
        faults.point("materialize")
        check_seal(str(staged), sid)
        if level != "seal":  # the copy is what runs: check it at the level asked for
            from volenv.store.integrity import verify_snapshot

            report = verify_snapshot(staged, level)
            if not report.ok:
                raise VerifyError(f"the extracted copy does not match the record: {report.summary()}")
        atomic_write_json(
            staged / META_DIR / MARKER,
            {"schema": 1, "snapshot": sid, "record_sha256": seal["record_sha256"], "time": time.time()},
        )
        try:
            os.rename(staged, dest)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            if not _complete(dest, seal, level):  # a copy in use is in the way: run from ours
                tree = staged
    except (VerifyError, SealProblem) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        damaged(mode, f"a pack is damaged: {exc}", paths, manifest.snapshot)
        return None
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if exc.errno in _NOT_A_BLOB:  # removed, a link or a FIFO in its place: the packs are damaged
            damaged(mode, f"a pack blob is missing or not a plain file: {exc}", paths, manifest.snapshot)
            return None
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            say(f"warning: materialize: local disk full while extracting ({exc.strerror}); running in place")
            return None
        raise
    if tree == dest:
        shutil.rmtree(partial, ignore_errors=True)
    say(f"materialize: extracted {sid} to {tree} in {human_seconds(time.perf_counter() - t0)}")
    return str(tree)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while the startup packs extract: each full collection walks
    the whole record (65k entries for F5-TTS), and in a forked process it writes to every
    inherited object's page (copy-on-write). `_background` turns it back on."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _await_background(dest: Path, seal: dict[str, Any], level: str) -> bool:
    """Another start's copy whose background extraction is still running: wait for it to be
    complete (True) or to stop (False: the caller discards it)."""
    meta = dest / META_DIR
    while True:
        if _complete(dest, seal, level):
            return True
        try:
            pid = int((meta / IN_PROGRESS).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        if (meta / FAILED).exists() or pid == os.getpid() or not alive(pid):
            return False
        time.sleep(0.02)
