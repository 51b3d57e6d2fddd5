"""The container's own disk, as `run` uses it for local copies (materialized snapshots, models'
local copies): the private directories they live in, the marks that say a copy is in use, and
the leftovers of dead starts, deleted out of the start's way (a detached, idle-priority process)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from volenv.store.sealcheck import META_DIR

IN_USE = "in-use"  # flock'd shared by every program running from the tree, exclusive to discard


def say(msg: str) -> None:
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


def leftovers(base: Path) -> list[Path]:
    """Copies set aside by earlier starts, and partial ones whose process is gone, of every
    snapshot (a start of a newer snapshot collects what starts of the old one left: concurrent
    starts each keep a partial copy they ran from): deleted after this start's extraction, not
    before it (see `delete_detached`), and never one a program still runs from."""
    out: list[Path] = []
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        sid, sep, rest = name[1:].partition(".stale-")
        if not sep:
            sid, sep, rest = name[1:].partition(".partial-")
        if not name.startswith(".") or not sep or not sid:
            continue
        p = base / name
        if not owned_alone(p):
            continue  # a link or another user's plant: never deleted through
        pid = rest.rsplit("-", 2)[-2] if rest.count("-") >= 2 else ""
        try:
            touched = os.lstat(p).st_mtime
        except OSError:
            continue
        if ".partial-" in name and pid.isdigit() and int(pid) != os.getpid() and alive(int(pid), touched):
            continue  # another process on this disk is extracting it now
        if in_use(p / sid) or in_use(p):
            continue  # the program that started from it is gone, a child it left still runs there
        out.append(p)
    return out


def in_use(tree: Path) -> bool:
    """Whether a program holds the tree's IN_USE lock (a start ran a program from a copy beside
    an in-use tree, and its children that kept the descriptor outlive it)."""
    import fcntl

    try:
        fd = in_use_fd(tree)
    except OSError:
        return False  # no metadata dir (or a planted link): nothing ever ran from it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def delete_detached(garbage: list[Path]) -> None:
    """Delete leftover copies in a detached idle-priority process, after this start's own files
    were created: deleting a 37k-file copy takes seconds, and ext4 then scans past the
    recently deleted inodes on every creation for minutes (bench/coldstart.py `fresh_disk`),
    so doing it first made the extraction itself slower too. Where no process can be forked,
    here and now."""
    if garbage and not detached(lambda: remove_all(garbage), close_others=True):
        remove_all(garbage)
    garbage.clear()


def yield_to_the_program() -> None:
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


def remove_all(paths: list[Path]) -> int:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)  # a link raises, ignored: never followed
    return 0


def detached(work: Callable[[], int], *, close_others: bool = False) -> bool:
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
                yield_to_the_program()
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


def alive(pid: int, since: float | None = None) -> bool:
    """A running process: not gone, and not a zombie (a killed background, detached, is
    reparented to PID 1, which in a container often never reaps it). `since`: when what the
    pid names was last touched by its owner; a process with that pid started later is another
    one that reuses the number (a busy machine wraps its pids in minutes), not the owner."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
    except OSError:
        return True
    if not fields or fields[0] == b"Z":
        return False
    if since is not None and len(fields) > 19:
        started = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        if started > since + 2:
            return False
    return True


def _boot_time() -> float:
    try:
        with open("/proc/stat", "rb") as fh:
            for line in fh:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0.0


def in_use_fd(tree: str | Path) -> int:
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


def hold(tree: str) -> bool:
    """Take the tree's shared IN_USE lock on an fd the exec'd program inherits (never closed
    here): False when a start holds it exclusively to discard the tree."""
    import fcntl

    try:
        fd = in_use_fd(tree)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    os.set_inheritable(fd, True)
    return True


def free_bytes(base: str | Path) -> int:
    """What the local disk under `base` can still take: both kinds of local copy check it against
    what they need before copying a byte (a full container disk must not fail a start)."""
    return shutil.disk_usage(base).free
