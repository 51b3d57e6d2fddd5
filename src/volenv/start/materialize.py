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
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volenv.base import faults
from volenv.base.errors import DamagedRecord, VerifyError, VolenvError, shq
from volenv.base.ui import human_seconds
from volenv.store.integrity import Entry
from volenv.store.packs import (
    META_GROUP,
    PackInfo,
    PackManifest,
    Unpacker,
    _Tree,
    blob_path,
    manifest_path,
    need_zstandard,
    pack_order,
    read_manifest,
    startup_chunk,
    unpack,
)
from volenv.store.paths import VolumePaths
from volenv.store.sealcheck import META_DIR, SealProblem, check_seal
from volenv.store.volio import atomic_write_json, unique_suffix

MARKER = "materialized.json"
IN_PROGRESS = "materializing"  # pid of the background extraction, while there is one
FAILED = "materialize-failed"  # why the background extraction stopped
IN_USE = "in-use"  # flock'd shared by every program running from the tree, exclusive to discard
PROBE_OPS = 12


def _say(msg: str) -> None:
    print(f"volenv: {msg}", file=sys.stderr, flush=True)


def default_dir() -> Path:
    """Private to this user: $XDG_RUNTIME_DIR (per-user, 0700 by spec) when it is usable, else a
    per-user 0700 directory under the temp dir; `private_base` checks either before use."""
    explicit = os.environ.get("VOLENV_MATERIALIZE_DIR")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and _owned_private(runtime):
        return Path(runtime) / "volenv-materialized"
    return Path(tempfile.gettempdir()) / f"volenv-{os.geteuid()}" / "materialized"


def _owned_private(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def owned_alone(path: str | Path, kind: int = stat.S_IFDIR) -> bool:
    """Owned by this user, of `kind` (never a link), and writable by nobody else: what a
    materialize or local directory, a copy and its marks must be before they are trusted."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_IFMT(st.st_mode) == kind and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def checked_base(base: Path, explicit: bool) -> None:
    """A named directory (--materialize-dir, $VOLENV_MATERIALIZE_DIR) is created if missing and
    must then be this user's and writable by nobody else (its parent may be a shared /tmp);
    the default gets `private_base`. Another user's directory could hold a planted copy."""
    if not explicit:
        private_base(base)
        return
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not owned_alone(base):
        raise OSError(
            errno.EPERM,
            f"{base} is not a private directory of this user"
            " (owned, not a link, not writable by group/other)",
        )


def private_base(base: Path) -> None:
    """Create the default materialize directory (and its per-user parent) 0700, then insist
    each is a real directory owned by this user that nobody else can enter: on a shared /tmp
    another user could pre-create the name (or a symlink) to feed us code or steal a copy."""
    for d in (base.parent, base):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        if not _owned_private(str(d)):
            raise OSError(
                errno.EPERM, f"{d} is not a private directory of this user (0700, owned, not a link)"
            )


_PROBED: dict[str, float] = {}


def probe_latency_ms(snapshot_dir: str) -> float:
    """Median time of one metadata operation on the volume (see `_probe_ms`); measured once per
    process (`run` asks again for `[[models]] local = "auto"`, after materialize: on a slow
    volume the probe itself is ~25 round trips)."""
    if snapshot_dir not in _PROBED:
        sp = next(Path(snapshot_dir).glob("lib/python*/site-packages"), Path(snapshot_dir) / "lib")
        _PROBED[snapshot_dir] = _probe_ms(str(sp))
    return _PROBED[snapshot_dir]


def _probe_ms(directory: str) -> float:
    """Median time of a single-component lookup (os.stat relative to an open directory) of a
    few entries of `directory` (the directory itself when it is empty): what each import's
    stat costs there. It stops early once the answer is clear, so it stays cheap on a slow volume."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return 0.0
    times: list[float] = []
    try:
        names = sorted(os.listdir(fd))[:PROBE_OPS] or ["."] * 4
        for name in names:
            t0 = time.perf_counter()
            try:
                os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                pass
            times.append(time.perf_counter() - t0)
            if len(times) >= 4 and _median(times) * 1000 > 20 * MIN_MS:
                break
    finally:
        os.close(fd)
    return _median(times) * 1000 if times else 0.0


#: block and memory filesystems of this machine: never worth extracting from (issue 17: a cold
#: page cache on a local disk measured 0.10-0.19 ms per stat, and extracting was 2.6x slower)
LOCAL_FS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "overlay", "zfs", "f2fs", "bcachefs", "jfs"}
)
#: the volume must be this many times slower per operation than the local disk ...
RATIO = 4.0
#: ... and at least this slow, for extracting to pay off (bench/coldstart.py)
MIN_MS = 0.05


class Decision:
    """What `run --materialize auto` chooses for a snapshot, and the numbers it chose by
    (`volenv bench coldstart` prints it)."""

    __slots__ = ("local_fs", "local_ms", "materialize", "reason", "same_device", "volume_fs", "volume_ms")

    def __init__(
        self,
        materialize: bool,
        reason: str,
        volume_fs: str,
        local_fs: str,
        same_device: bool,
        volume_ms: float | None = None,
        local_ms: float | None = None,
    ) -> None:
        self.materialize = materialize
        self.reason = reason
        self.volume_fs = volume_fs
        self.local_fs = local_fs
        self.same_device = same_device
        self.volume_ms = volume_ms  # None: not measured (the filesystem type decided)
        self.local_ms = local_ms

    def __repr__(self) -> str:
        return f"Decision(materialize={self.materialize}, reason={self.reason!r})"


def fs_type(path: str) -> str:
    """The filesystem type of the mount holding path (/proc/self/mountinfo, by device number),
    '' when unknown."""
    try:
        dev = os.stat(path).st_dev
        want = f"{os.major(dev)}:{os.minor(dev)}"
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 2 and fields[2] == want and " - " in line:
                    return line.split(" - ", 1)[1].split()[0]
    except OSError:
        pass
    return ""


def _existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.isdir(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return p


def decide_auto(root: str, local_dir: str, snapshot_dir: str | None = None) -> Decision:
    """Whether extracting to local_dir would beat running from the volume at root (probing
    snapshot_dir's site-packages when given, else the root's envs/). In place when both are the
    same filesystem or the volume is a local block/memory filesystem (nothing to gain, whatever
    a cold cache measures); otherwise by measured per-operation latency, the volume's against
    the local disk's: extract when the volume is RATIO times slower and at least MIN_MS.
    VOLENV_MATERIALIZE_THRESHOLD_MS, when set, decides by the volume's latency alone."""
    vol = snapshot_dir or os.path.join(root, "envs")
    loc = _existing(local_dir)
    try:
        same = os.stat(vol).st_dev == os.stat(loc).st_dev
    except OSError:
        same = False
    vfs, lfs = fs_type(vol), fs_type(loc)
    explicit = os.environ.get("VOLENV_MATERIALIZE_THRESHOLD_MS")
    if explicit is None:
        if same:
            return Decision(False, f"the volume and {loc} are one filesystem ({vfs or '?'})", vfs, lfs, same)
        if vfs in LOCAL_FS:
            return Decision(False, f"the volume is a local {vfs} filesystem", vfs, lfs, same)
    vms = probe_latency_ms(vol) if snapshot_dir else _probe_ms(vol)
    lms = _probe_ms(loc)
    numbers = f"volume ({vfs or '?'}) {vms:.3f} ms per metadata op, local ({lfs or '?'}) {lms:.3f} ms"
    if explicit is not None:
        limit = float(explicit)
        if vms >= limit:
            return Decision(
                True, f"{numbers}; >= {limit} ms (VOLENV_MATERIALIZE_THRESHOLD_MS)", vfs, lfs, same, vms, lms
            )
        return Decision(
            False, f"{numbers}; < {limit} ms (VOLENV_MATERIALIZE_THRESHOLD_MS)", vfs, lfs, same, vms, lms
        )
    if vms >= MIN_MS and vms >= RATIO * max(lms, 0.001):
        return Decision(
            True, f"{numbers}: the volume is {vms / max(lms, 0.001):.0f}x slower", vfs, lfs, same, vms, lms
        )
    return Decision(False, f"{numbers}: not slow enough to pay for extracting", vfs, lfs, same, vms, lms)


def _median(values: list[float]) -> float:
    # not `statistics`: on a cold start every extra stdlib import is a disk read
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


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
    import json

    try:
        if json.loads(marker.read_bytes()).get("record_sha256") != seal["record_sha256"]:
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
        _say(
            f"materialize: the local copy {dest} differs from its record ({report.summary()}); re-extracting"
        )
    return report.ok


def _discard(dest: Path, garbage: list[Path]) -> bool:
    """Move a stale or edited copy aside (one rename, so no start sees half of it) into
    `garbage`, deleted once this start's own files exist (see `_delete_detached`); False, and
    the copy left alone, while a program runs from it (its IN_USE lock is held)."""
    import fcntl

    try:
        lock = _in_use_fd(dest)
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


def _leftovers(base: Path, sid: str) -> list[Path]:
    """Copies set aside by earlier starts, and partial ones whose process is gone: deleted
    after this start's extraction, not before it (see `_delete_detached`)."""
    out = [p for p in base.glob(f".{sid}.stale-*") if not p.is_symlink()]
    for p in base.glob(f".{sid}.partial-*"):
        pid = p.name.rsplit("-", 2)[-2] if p.name.count("-") >= 2 else ""
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another process on this disk is extracting it now
        if not p.is_symlink() and _in_use(p / sid):
            continue  # the program that started from it is gone, a child it left still runs there
        out.append(p)
    return out


def _in_use(tree: Path) -> bool:
    """Whether a program holds the tree's IN_USE lock (a start ran a program from a copy beside
    an in-use tree, and its children that kept the descriptor outlive it)."""
    import fcntl

    try:
        fd = _in_use_fd(tree)
    except OSError:
        return False  # no metadata dir (or a planted link): nothing ever ran from it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _delete_detached(garbage: list[Path]) -> None:
    """Delete leftover copies in a detached idle-priority process, after this start's own files
    were created: deleting a 37k-file copy takes seconds, and ext4 then scans past the
    recently deleted inodes on every creation for minutes (bench/coldstart.py `fresh_disk`),
    so doing it first made the extraction itself slower too. Where no process can be forked,
    here and now."""
    if garbage and not _detached(lambda: _remove_all(garbage), close_others=True):
        _remove_all(garbage)
    garbage.clear()


def _yield_to_the_program() -> None:
    """The started program comes first; this only has to finish eventually: nice 19, and on
    Linux the idle classes for CPU (SCHED_IDLE) and disk (ioprio idle), so it runs on what the
    program leaves. At nice 10 the background extraction still took a share of both cores and
    of the disk while the F5-TTS worker started: in 3 alternating rounds the worker was ready
    0.5-2.5 s sooner with the idle classes. Where the program keeps every CPU busy, the tree
    stays a skeleton longer (every path still resolves) and a later start resumes it."""
    try:
        os.nice(19)
    except OSError:
        pass
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        pass
    try:
        import psutil

        psutil.Process().ionice(psutil.IOPRIO_CLASS_IDLE)
    except Exception:  # no psutil, no ioprio here: the CPU class is what matters most
        pass


def _remove_all(paths: list[Path]) -> int:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)  # a link raises, ignored: never followed
    return 0


def _detached(work: Callable[[], int], *, close_others: bool = False) -> bool:
    """Run `work` in a grandchild of its own session, at idle priority, its stdio on /dev/null
    (it never holds the program's output pipes open; with close_others, no other inherited
    descriptor either); True once it was forked."""
    try:
        child = os.fork()
    except OSError:
        return False
    if child == 0:  # pragma: no cover - runs in the forked processes
        code = 0
        try:
            if os.fork() == 0:
                os.setsid()
                _yield_to_the_program()
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                if close_others:
                    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                code = work()
        finally:
            os._exit(code)
    try:
        os.waitpid(child, 0)
    except ChildProcessError:  # SIGCHLD ignored (some inits): the kernel reaped it already
        pass
    return True


def _alive(pid: int) -> bool:
    """A running process: not gone, and not a zombie (a killed background, detached, is
    reparented to PID 1, which in a container often never reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def choose(
    root: str, snapshot_dir: str, seal: dict[str, Any], mode: str, mdir: str | None, level: str = "seal"
) -> str | None:
    """The directory to exec from: a materialized copy checked at `level`, or None for in place.
    The program holds the copy's IN_USE lock (shared, inherited across exec) for as long as it
    runs, so no later start discards a tree from under it."""
    tree = _choose(root, snapshot_dir, seal, mode, mdir, level)
    if tree is None or _hold(tree):
        return tree
    _say(f"warning: materialize: {tree} is being replaced by another start; running in place")
    return None


def _in_use_fd(tree: str | Path) -> int:
    """The tree's IN_USE file, reached without following any link (a planted one: OSError)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    top = os.open(tree, flags)
    try:
        meta = os.open(META_DIR, flags, dir_fd=top)
    finally:
        os.close(top)
    try:
        return os.open(IN_USE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=meta)
    finally:
        os.close(meta)


def _hold(tree: str) -> bool:
    """Take the tree's shared IN_USE lock on an fd the exec'd program inherits (never closed
    here): False when a start holds it exclusively to discard the tree."""
    import fcntl

    try:
        fd = _in_use_fd(tree)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    os.set_inheritable(fd, True)
    return True


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
        _say(f"warning: materialize: {base} unusable ({exc.strerror}); running in place")
        return None
    if _complete(dest, seal, level):
        _say(f"materialize: reusing the complete local copy {dest}")
        return str(dest)
    try:
        manifest = read_manifest(manifest_path(paths, sid))
    except FileNotFoundError:
        if mode == "auto":  # packs matter only where auto would have extracted
            d = decide_auto(root, str(base), snapshot_dir)
            if not d.materialize:
                _say(f"materialize auto: in place ({d.reason})")
                return None
        # a complete command: the root it names is this one, wherever it came from
        _say(
            f"warning: materialize: {sid} has no packs (volenv --root {shq(root)} pack {sid});"
            " running in place"
        )
        return None
    except VolenvError as exc:
        _damaged(mode, f"pack manifest unusable: {exc}", paths, sid)
        return None
    if manifest.record_sha256 != seal["record_sha256"]:
        _damaged(mode, "the packs do not belong to this snapshot's record", paths, sid)
        return None
    try:
        need_zstandard()
    except VolenvError as exc:  # a lean install without the 'packs' extra: in place, said once
        _say(f"warning: materialize: {exc} ({exc.hint}); running in place")
        return None
    need = int(sum(p.tar_size for p in manifest.packs) * 1.05)
    try:
        free = shutil.disk_usage(base).free
    except OSError as exc:
        _say(f"warning: materialize: {base} unusable ({exc.strerror}); running in place")
        return None
    if mode == "auto":
        d = decide_auto(root, str(base), snapshot_dir)
        if not d.materialize:
            _say(f"materialize auto: in place ({d.reason})")
            return None
        if free < need:
            _say(
                f"materialize auto: in place ({d.reason}, but local disk has {free} bytes free"
                f" < {need} needed)"
            )
            return None
        _say(f"materialize auto: extracting to {base} ({d.reason})")
    elif free < need:
        _say(
            f"warning: materialize: local disk {base} has {free} bytes free, {need} needed; running in place"
        )
        return None
    try:
        volume = _volume_dir(root, snapshot_dir)
    except VerifyError as exc:
        _damaged(mode, str(exc), paths, sid)
        return None
    garbage = _leftovers(base, sid)
    try:
        return _extract(paths, manifest, base, dest, seal, mode, level, volume, garbage)
    finally:
        _delete_detached(garbage)  # what no background extraction took over


def _damaged(mode: str, why: str, paths: VolumePaths, sid: str) -> None:
    if mode == "always":
        again = f"volenv --root {shq(str(paths.root))} pack {shq(sid)}"
        raise VerifyError(f"materialize: {why}", hint=f"`{again}` again, or run without --materialize")
    _say(f"warning: materialize: {why}; running in place")
    return None


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
    if exchange and not _can_exchange(base):
        exchange = False
        _say(
            f"materialize: {base} cannot swap a directory for a link atomically; extracting everything first"
        )
    if exchange and os.path.lexists(dest):
        resumed = _resume(paths, manifest, base, dest, seal, volume, garbage)
        if resumed is not None:
            return resumed
    if os.path.lexists(dest) and _await_background(dest, seal, level):
        _say(f"materialize: reusing the local copy {dest}, completed by another start")
        return str(dest)
    if os.path.lexists(dest) and not _discard(dest, garbage):  # a killed start's copy, or one that failed
        _say(f"materialize: {dest} is in use by a running program; extracting a fresh copy beside it")
    partial = base / f".{sid}.partial-{unique_suffix()}"
    partial.mkdir()
    staged = partial / sid
    if exchange:
        with _gc_paused():
            return _extract_startup_first(paths, manifest, base, partial, dest, mode, volume, garbage)
    t0 = time.perf_counter()
    tree = dest
    try:
        unpack(manifest, lambda i: open(blob_path(paths, i.id), "rb"), staged)  # noqa: SIM115
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
        _damaged(mode, f"a pack is damaged: {exc}", paths, manifest.snapshot)
        return None
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _say(f"warning: materialize: local disk full while extracting ({exc.strerror}); running in place")
            return None
        raise
    if tree == dest:
        shutil.rmtree(partial, ignore_errors=True)
    _say(f"materialize: extracted {sid} to {tree} in {human_seconds(time.perf_counter() - t0)}")
    return str(tree)


# ---------------------------------------------------------------- startup pack first


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
        if (meta / FAILED).exists() or pid == os.getpid() or not _alive(pid):
            return False
        time.sleep(0.02)


def _write_at(dir_fd: int, name: str, data: bytes) -> None:
    """temp + fsync + rename inside an open directory (the tree may be renamed meanwhile)."""
    tmp = f".{name}.tmp-{os.getpid()}"
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
    )
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


# ---------------------------------------------------------------- the skeleton
#
# Before exec the tree is whole: the startup pack's files are real, every other recorded path
# is a symlink to the same path of the snapshot on the volume (identical bytes), a directory
# with nothing local as ONE link. The background replaces each link with the real thing in one
# atomic step (rename over a file link; RENAME_EXCHANGE of a staged directory with a directory
# link), so whatever a program does (stat, listdir, open, dlopen, `python -I`, non-Python
# code), every path of the snapshot resolves to the recorded bytes at every instant.

_RENAME_EXCHANGE = 2


def _renameat2(src_fd: int, src: str, dst_fd: int, dst: str, flags: int) -> None:
    """renameat2(2) through ctypes (Python has no binding); OSError(ENOSYS) where absent."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    args = (
        ctypes.c_int(src_fd),
        os.fsencode(src),
        ctypes.c_int(dst_fd),
        os.fsencode(dst),
        ctypes.c_uint(flags),
    )
    if fn is not None:
        rc = fn(*args)
    else:  # glibc < 2.28: the raw system call
        import platform

        nr = {"x86_64": 316, "aarch64": 276}.get(platform.machine())
        if nr is None:
            raise OSError(errno.ENOSYS, "renameat2 unavailable")
        rc = libc.syscall(ctypes.c_long(nr), *args)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _can_exchange(base: Path) -> bool:
    """Whether base's filesystem swaps a directory with a symlink atomically (Linux >= 3.15 and
    a filesystem that supports RENAME_EXCHANGE); without it nothing execs before the whole tree."""
    probe = base / f".exchange-probe-{unique_suffix()}"
    try:
        probe.mkdir()
        fd = os.open(probe, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.mkdir("d", dir_fd=fd)
            os.symlink("d", "l", dir_fd=fd)
            _renameat2(fd, "d", fd, "l", _RENAME_EXCHANGE)
            return os.path.islink(probe / "d") and os.path.isdir(probe / "l")
        finally:
            os.close(fd)
    except OSError:
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def _safe_rel(rel: str) -> bool:
    parts = rel.split("/")
    return (
        bool(rel)
        and "\0" not in rel
        and not rel.startswith("/")
        and all(p not in ("", ".", "..") for p in parts)
    )


def _ancestors(rel: str) -> Iterator[str]:
    while "/" in rel:
        rel = rel.rpartition("/")[0]
        yield rel


def _processes() -> int:
    """Extraction processes before exec: one per CPU this process may use, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _listed(tree: Path, sid: str) -> tuple[str, ...]:
    """The directories the snapshot's start trace listed or searched, and those of its traced
    files (so a big one in the prefetch pack is a file link, swapped in as soon as that pack is
    checked, not behind a directory link waiting for its whole distribution). From the trace in
    the checked metadata pack; none without a usable trace. It only shapes the skeleton: every
    path still resolves to the recorded bytes."""
    import json

    from volenv.store.trace import parse_trace, trace_path

    try:
        trace = parse_trace(json.loads(trace_path(tree).read_bytes()), "in the metadata pack")
    except (OSError, ValueError, DamagedRecord):
        return ()
    if trace.snapshot != sid:
        return ()
    return (*trace.listed, *dict.fromkeys(f.rpartition("/")[0] for f in trace.files if "/" in f))


def _volume_dir(root: str, snapshot_dir: str) -> str:
    """The snapshot on the volume, resolved, and checked to lie inside the volume root: what
    the skeleton's links point into."""
    vol = os.path.realpath(snapshot_dir)
    top = os.path.realpath(root)
    if not vol.startswith(top.rstrip("/") + "/"):
        raise VerifyError(f"the snapshot {snapshot_dir} resolves outside the volume root {top}")
    return vol


def _build_skeleton(
    tree: _Tree, record: dict[str, Entry], done: set[str], volume: str, listed: Iterable[str] = ()
) -> dict[str, str]:
    """Every recorded path not extracted yet (`done`), as a link: a file to the volume's file,
    a directory holding nothing local to the volume's directory, a recorded symlink as itself.
    A directory the start listed stays a real one, whose files the startup pack holds (a scan
    stats each entry: through a directory link every stat is a walk down the volume).
    Returns the links to replace, path -> record type ('f' or 'd')."""
    real = {""}
    parents = {rel.rpartition("/")[0] for rel in done}
    parents.update(rel for rel in done if rel in record and record[rel].type == "d")
    for d in parents:
        if d not in real:
            real.add(d)
            real.update(_ancestors(d))
    for d in listed:
        if d in record and record[d].type == "d":
            real.add(d)
            real.update(_ancestors(d))
    if "bin" in record and record["bin"].type == "d":
        real.add("bin")  # the interpreter's own directory stays local: sys.prefix is the local tree
    pending: dict[str, str] = {}
    for rel in sorted(record):
        parent = rel.rpartition("/")[0]
        if rel in done or parent not in real:
            continue  # extracted, or inside a linked directory
        if not _safe_rel(rel):
            raise VerifyError(f"the record names an unsafe path {rel!r}")
        e = record[rel]
        if e.type == "d" and rel in real:
            tree.dir_fd(rel, create=True)
            continue
        pfd = tree.dir_fd(parent, create=False)
        name = rel.rpartition("/")[2]
        if e.type == "l":
            os.symlink(e.digest, name, dir_fd=pfd)  # its final form
            continue
        os.symlink(f"{volume}/{rel}", name, dir_fd=pfd)
        pending[rel] = e.type
    return pending


class _Live(_Tree):
    """An existing tree (a start resuming another start's extraction), opened like a new one."""

    def __init__(self, dest: Path) -> None:  # no mkdir: the tree exists
        self.root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._local = threading.local()
        self._all = []
        self._lock = threading.Lock()
        self.atomic = False


def _scan_skeleton(dest: Path, record: dict[str, Entry], volume: str) -> dict[str, str] | None:
    """The links still to replace in a tree whose extraction stopped, or None when the tree
    is not a whole skeleton (a path missing): it is then discarded, never resumed."""
    real = {""}
    pending: dict[str, str] = {}
    for rel in sorted(record):
        if rel.rpartition("/")[0] not in real:
            continue
        try:
            st = os.lstat(dest / rel)
        except OSError:
            return None
        e = record[rel]
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(dest / rel)
            if e.type == "l" and target == e.digest:
                continue  # a recorded link
            if target != f"{volume}/{rel}":
                return None  # not a link the skeleton made
            pending[rel] = e.type
        elif e.type == "d" and stat.S_ISDIR(st.st_mode):
            real.add(rel)
        elif not (e.type == "f" and stat.S_ISREG(st.st_mode)):
            return None
    return pending


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


def _extract_startup_first(
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
        opener = lambda i: open(blob_path(paths, i.id), "rb")  # noqa: E731, SIM115

        def meta() -> None:  # while the startup packs extract in other processes
            nonlocal listed
            assert u is not None
            u.extract([p for p in first if p.group == META_GROUP], opener)
            check_seal(str(staged), sid)
            listed = _listed(staged, sid)

        u.extract_forked([p for p in first if p.group != META_GROUP], opener, _processes(), during=meta)
        assert u.record is not None
        done = {r for r in u.seen if r in u.record}
        t1 = time.perf_counter()
        pending = _build_skeleton(u.tree, u.record, done, volume, listed)
        t_skel = time.perf_counter() - t1
        lock = _lock_progress(u.tree.dir_fd(META_DIR, create=False), os.getpid())
        assert lock is not None  # a tree of our own
    except (VerifyError, SealProblem) as exc:
        if u is not None:
            u.close()
        shutil.rmtree(partial, ignore_errors=True)
        _damaged(mode, f"a pack is damaged: {exc}", paths, sid)
        return None
    except OSError as exc:
        if u is not None:
            u.close()
        shutil.rmtree(partial, ignore_errors=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _say(f"warning: materialize: local disk full while extracting ({exc.strerror}); running in place")
            return None
        raise
    job = _Job(paths, manifest, u.tree, u.record, done, pending, rest, base, u.dir_modes)
    started = _spawn(job, lock, garbage)
    u.close()
    if not started:
        shutil.rmtree(partial, ignore_errors=True)
        _damaged(mode, "the background extraction did not start", paths, sid)
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
    _say(
        f"materialize: startup pack of {sid} local in {took} ({files} files,"
        f" {before} of {total} bytes; skeleton of {len(pending)} links to the volume in {skel});"
        f" the rest extracts in the background into {tree}"
    )
    return str(tree)


def _resume(
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
        live = _Live(dest)
    except (OSError, SealProblem):
        return None
    lock: int | None = None
    try:
        lock = _lock_progress(live.dir_fd(META_DIR, create=False), os.getpid())
        if lock is None:
            live.close()
            _say(f"materialize: running from {dest} while another start's background extraction completes it")
            return str(dest)
        from volenv.store.integrity import load_record

        record = load_record(dest)
        pending = _scan_skeleton(dest, record, volume)
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
    _say(f"materialize: resuming the background extraction into {dest} ({len(pending)} links left)")
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

    forked = _detached(work)
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
            link = rel if rel in job.pending else next((a for a in _ancestors(rel) if a in job.pending), None)
            if link is not None:
                cover[rel] = link
                remaining[link] += 1
        stage = job.base / f".{job.manifest.snapshot}.partial-{unique_suffix()}"
        su = Unpacker(job.manifest, stage, record=job.record)
        swapped = 0
        for info in job.packs:
            before = set(su.seen)
            su.extract([info], lambda i: open(blob_path(job.paths, i.id), "rb"))  # noqa: SIM115
            for rel in set(su.seen) - before:  # the whole pack checked: its files may go live
                link = cover.get(rel)
                if link is None:
                    continue
                remaining[link] -= 1
                if remaining[link] == 0:
                    _swap(su, live, link, job.pending[link])
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
            rec = json.loads(fh.read())["record_sha256"]
        mark = {"schema": 1, "snapshot": job.manifest.snapshot, "record_sha256": rec, "time": time.time()}
        _write_at(meta_fd, MARKER, json.dumps(mark).encode())
        os.unlink(IN_PROGRESS, dir_fd=meta_fd)
        return 0
    except BaseException as exc:  # whatever stopped it is the reason a later start reports
        try:
            _write_at(meta_fd, FAILED, f"background extraction failed: {exc}".encode())
        except OSError:
            pass
        return 1
    finally:
        if su is not None:
            su.close()
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        live.close()
        _remove_all(job.garbage)


def _swap(su: Unpacker, live: _Tree, rel: str, kind: str) -> None:
    """Replace one skeleton link with its staged file or directory, atomically."""
    parent, _, name = rel.rpartition("/")
    if kind == "d":  # modes first: each dir_fd call may close the least recently used descriptor
        below = rel + "/"
        for r, mode in sorted(su.dir_modes, key=lambda x: x[0].count("/"), reverse=True):
            if r == rel or r.startswith(below):
                os.fchmod(su.tree.dir_fd(r, create=False), mode)
    # the two parents held as our own descriptors: the trees' caches may close theirs
    sfd = os.dup(su.tree.dir_fd(parent, create=False))
    try:
        lfd = os.dup(live.dir_fd(parent, create=False))
    except BaseException:
        os.close(sfd)
        raise
    try:
        _swap_at(sfd, lfd, name, kind)
    finally:
        os.close(sfd)
        os.close(lfd)


def _swap_at(sfd: int, lfd: int, name: str, kind: str) -> None:
    if kind == "f":
        os.rename(name, name, src_dir_fd=sfd, dst_dir_fd=lfd)
        return
    _renameat2(sfd, name, lfd, name, _RENAME_EXCHANGE)
    if stat.S_ISLNK(os.stat(name, dir_fd=sfd, follow_symlinks=False).st_mode):
        os.unlink(name, dir_fd=sfd)  # the link, now in the staging tree
