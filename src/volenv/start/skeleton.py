"""The skeleton: a whole tree before exec, made real behind the running program.

Before exec the tree is whole: the startup pack's files are real, every other recorded path
is a symlink to the same path of the snapshot on the volume (identical bytes), a directory
with nothing local as ONE link. The background replaces each link with the real thing in one
atomic step (rename over a file link; RENAME_EXCHANGE of a staged directory with a directory
link), so whatever a program does (stat, listdir, open, dlopen, `python -I`, non-Python
code), every path of the snapshot resolves to the recorded bytes at every instant."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from volenv.base.errors import DamagedRecord, VerifyError
from volenv.base.leanjson import loads as json_loads  # RecursionError is ValueError there
from volenv.store.integrity import Entry
from volenv.store.packread import Unpacker, _Tree
from volenv.store.volio import unique_suffix


def write_at(dir_fd: int, name: str, data: bytes) -> None:
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


def can_exchange(base: Path) -> bool:
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


def ancestors(rel: str) -> Iterator[str]:
    while "/" in rel:
        rel = rel.rpartition("/")[0]
        yield rel


def processes() -> int:
    """Extraction processes before exec: one per CPU this process may use, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def listed_dirs(tree: Path, sid: str) -> tuple[str, ...]:
    """The directories the snapshot's start trace listed or searched, and those of its traced
    files (so a big one in the prefetch pack is a file link, swapped in as soon as that pack is
    checked, not behind a directory link waiting for its whole distribution). From the trace in
    the checked metadata pack; none without a usable trace. It only shapes the skeleton: every
    path still resolves to the recorded bytes."""

    from volenv.store.trace import parse_trace, trace_path

    try:
        trace = parse_trace(json_loads(trace_path(tree).read_bytes()), "in the metadata pack")
    except (OSError, ValueError, DamagedRecord):
        return ()
    if trace.snapshot != sid:
        return ()
    return (*trace.listed, *dict.fromkeys(f.rpartition("/")[0] for f in trace.files if "/" in f))


def volume_dir(root: str, snapshot_dir: str) -> str:
    """The snapshot on the volume, resolved, and checked to lie inside the volume root: what
    the skeleton's links point into."""
    vol = os.path.realpath(snapshot_dir)
    top = os.path.realpath(root)
    if not vol.startswith(top.rstrip("/") + "/"):
        raise VerifyError(f"the snapshot {snapshot_dir} resolves outside the volume root {top}")
    return vol


def build_skeleton(
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
            real.update(ancestors(d))
    for d in listed:
        if d in record and record[d].type == "d":
            real.add(d)
            real.update(ancestors(d))
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


class Live(_Tree):
    """An existing tree (a start resuming another start's extraction), opened like a new one."""

    def __init__(self, dest: Path) -> None:  # no mkdir: the tree exists
        self.root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._local = threading.local()
        self._all = []
        self._lock = threading.Lock()
        self.atomic = False


def scan_skeleton(dest: Path, record: dict[str, Entry], volume: str) -> dict[str, str] | None:
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


def swap(su: Unpacker, live: _Tree, rel: str, kind: str) -> None:
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
