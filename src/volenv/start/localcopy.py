"""`[[models]] local = "always" | "auto"`: at `volenv run`, copy a fetched model from the volume
to the container's own disk and point VOLENV_MODEL_<NAME> there.

Weights are read with mmap or small reads, and on a network volume each uncached read is a
round trip; a copy made with a few threads each reading large ranges (os.pread) moves the same
bytes at the volume's streaming rate, once per container. `auto` copies only when the volume is
slow, as `run --materialize auto` decides (auto.decide_auto against
VOLENV_MATERIALIZE_THRESHOLD_MS). The copy is checked against the model's record (size and
sha256, hashed in file order while it is written) and published by one directory rename with a
completion mark; a later start reuses a complete copy and never a partial one. Anything that
stops the copy (no space, a damaged volume file) leaves the worker on the volume's copy, with a
warning: a local copy is an optimisation, never a reason not to start.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from volenv.base.errors import VolenvError
from volenv.base.iopool import Part, run_parts
from volenv.base.leanjson import loads as json_loads  # RecursionError is ValueError there
from volenv.base.streams import AdaptiveStreams, pinned_streams
from volenv.base.ui import human_bytes, human_seconds
from volenv.start.localdisk import (
    alive,
    checked_base,
    default_dir,
    delete_detached,
    free_bytes,
    owned_alone,
    say,
)
from volenv.store.modelpaths import (
    model_env_name,
    model_files_dir,
    model_key,
    model_location,
    model_record_path,
)
from volenv.store.volio import unique_suffix
from volenv.transfer.httpfetch import OrderedHasher, Plan

MARK = ".volenv-local.json"
# the copy's files live here, below the mark: VOLENV_MODEL_<NAME> points into it, so the program
# listing its model directory never sees volenv's mark (a Hub snapshot is listed by loaders)
FILES = "files"
RANGE = 16 << 20  # one thread's share of a file at a time
READ = 4 << 20


def local_base(mdir: str | None = None) -> Path:
    """$VOLENV_LOCAL_DIR, else `_models` in the directory `run --materialize` uses (its
    --materialize-dir when given); either must be this user's alone (OSError otherwise):
    weights in another user's directory could be a planted pickle, which is code."""

    explicit = os.environ.get("VOLENV_LOCAL_DIR")
    if explicit:
        base = Path(explicit)
        checked_base(base, True)
        return base
    top = Path(mdir) if mdir else default_dir()
    checked_base(top, bool(mdir or os.environ.get("VOLENV_MATERIALIZE_DIR")))
    base = top / "_models"
    checked_base(base, True)
    return base


def localize_models(
    root: str,
    volume_snapshot: str,
    models: list[dict[str, Any]],
    env: dict[str, str],
    mdir: str | None = None,
) -> None:
    """Point env's VOLENV_MODEL_<NAME> at a local copy for each present model that asks for one."""
    wanted = [
        m
        for m in models
        if m.get("local") in ("always", "auto") and env.get(model_env_name(m["name"])) is not None
    ]
    if not wanted:
        return
    slow: bool | None = None
    todo: list[dict[str, Any]] = []
    for m in wanted:
        if m["local"] == "auto":
            if slow is None:
                from volenv.start.auto import decide_auto

                try:
                    where = str(local_base(mdir))
                except OSError as exc:
                    say(f"warning: models local: no local copies ({exc}); reading from the volume")
                    return
                decision = decide_auto(root, where, volume_snapshot)
                slow = decision.materialize
                say(
                    f"models local auto: {decision.reason}:"
                    f" {'copying to local disk' if slow else 'reading from the volume'}"
                )
            if not slow:
                continue
        todo.append(m)
    paths: dict[str, str | None] = {}

    def one(m: dict[str, Any]) -> None:
        try:
            paths[m["name"]] = _local_copy(root, m, mdir)
        except (OSError, ValueError, VolenvError) as exc:  # a damaged record included
            say(f"warning: model '{m['name']}': no local copy ({exc}); reading it from the volume")

    _all_at_once(one, todo)
    for m in todo:  # in manifest order, whichever copy ended first
        path = paths.get(m["name"])
        if path is not None:
            env[model_env_name(m["name"])] = path


def _local_copy(root: str, m: dict[str, Any], mdir: str | None = None) -> str | None:
    from volenv.models.cache import read_model_record

    rec = read_model_record(Path(model_record_path(root, m)))
    if rec is None:
        return None
    files = rec["files"]
    src_dir = Path(model_files_dir(root, m))
    loc = Path(model_location(root, m))
    rel = os.path.relpath(loc, src_dir)  # "." for an hf snapshot dir, the file name for a url model
    base = local_base(mdir)
    dest = base / f"{m['name']}.{model_key(m)}"
    garbage = model_leftovers(base, dest.name)
    if garbage:  # partial copies of starts killed mid-copy: they would hold the disk for good
        delete_detached(garbage)
    if _complete(dest, files):
        say(f"model '{m['name']}': reusing the local copy {dest}")
        return str(dest / FILES / rel)
    need = sum(int(f["size"]) for f in files)
    free = free_bytes(base)
    if free < need * 1.05:
        raise OSError(f"{base} has {human_bytes(free)} free, {human_bytes(need)} needed")
    tmp = base / f".{dest.name}.partial-{unique_suffix()}"
    t0 = time.perf_counter()
    try:
        os.mkdir(tmp, 0o700)
        os.mkdir(tmp / FILES, 0o700)
        tree = _ModelsTree(root)
        where = os.path.relpath(src_dir, os.path.join(root, "models"))

        def copy(f: dict[str, Any]) -> None:
            src = tree.open(f"{where}/{f['path']}", src_dir / f["path"])
            _copy_one(src, src_dir / f["path"], tmp / FILES / f["path"], int(f["size"]), f["sha256"])

        try:
            _all_at_once(copy, files)
        finally:
            tree.close()
        (tmp / MARK).write_text(json.dumps({"files": files}, sort_keys=True))
        os.chmod(tmp / MARK, 0o600)  # writable by us alone whatever the umask: see _complete
        try:
            os.rename(tmp, dest)
        except OSError:
            if not _complete(dest, files):  # a stale partial in the way: replace it
                shutil.rmtree(dest, ignore_errors=True)
                os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    secs = max(time.perf_counter() - t0, 1e-6)
    rate = human_bytes(need / secs)
    say(f"model '{m['name']}': copied {human_bytes(need)} to {dest} in {human_seconds(secs)} ({rate}/s)")
    return str(dest / FILES / rel)


def model_leftovers(base: Path, name: str) -> list[Path]:
    """`.NAME.partial-HOST-PID-RAND` copies whose process is gone (a start killed mid-copy):
    collected by the next start, in the background, never one a live process is writing."""
    out = []
    for p in base.glob(f".{name}.partial-*"):
        pid = p.name.rsplit("-", 2)[-2] if p.name.count("-") >= 2 else ""
        if pid.isdigit() and int(pid) != os.getpid() and alive(int(pid)):
            continue
        if not p.is_symlink():
            out.append(p)
    return out


def _complete(dest: Path, files: list[dict[str, Any]]) -> bool:
    """A copy counts only with its mark naming exactly these files, each of the recorded size,
    and all of it (directories, mark, files) this user's alone: never another user's plant."""

    try:
        if (
            not owned_alone(dest)
            or not owned_alone(dest / MARK, stat.S_IFREG)
            or not owned_alone(dest / FILES)
        ):
            return False
        mark = json_loads((dest / MARK).read_bytes())
        if mark.get("files") != files:
            return False
        dirs: set[str] = set()
        for f in files:
            rel = str(f["path"])
            parent = os.path.dirname(rel)
            while parent and parent not in dirs:
                if not owned_alone(dest / FILES / parent):
                    return False
                dirs.add(parent)
                parent = os.path.dirname(parent)
            st = os.lstat(dest / FILES / rel)
            if not owned_alone(dest / FILES / rel, stat.S_IFREG) or st.st_size != f["size"]:
                return False
        return True
    except (OSError, ValueError, AttributeError, TypeError):
        return False


class _ModelsTree:
    """The volume's models directory, opened once: a file is reached from it one component at a
    time (O_NOFOLLOW), each directory opened once and shared by the copying threads, and a
    link (an HF cache's snapshot file points into its blobs/) followed by hand, lexically,
    never above the models directory. Walking each file's absolute path instead cost ~30 round
    trips per file on a network volume (realpath's lstat of every component, then the open's
    own walk). Anything else (a linked directory) takes the old way: the path resolved, then
    checked to lie inside the models directory."""

    def __init__(self, root: str) -> None:
        self.top = os.path.realpath(os.path.join(root, "models"))
        self._dirs: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()
        self._dirs[()] = os.open(self.top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _dir(self, parts: tuple[str, ...]) -> int:
        with self._lock:
            fd = self._dirs.get(parts)
        if fd is not None:
            return fd
        parent = self._dir(parts[:-1])
        fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        with self._lock:
            kept = self._dirs.setdefault(parts, fd)
        if kept != fd:  # another thread opened it meanwhile
            os.close(fd)
        return kept

    def open(self, rel: str, path: Path) -> int:
        """A read descriptor of the regular file at rel (relative to the models directory)."""
        try:
            parts = _inside(rel)
            for _hop in range(8):
                d = self._dir(tuple(parts[:-1]))
                try:
                    return _regular(os.open(parts[-1], _FILE_FLAGS | os.O_NOFOLLOW, dir_fd=d), path)
                except OSError as exc:
                    if exc.errno != errno.ELOOP:
                        raise
                target = os.readlink(parts[-1], dir_fd=d)
                if target.startswith("/"):
                    break
                parts = _inside("/".join([*parts[:-1], target]))
        except FileNotFoundError:
            raise
        except (OSError, ValueError):
            pass  # a linked directory, a link chain, an absolute target: the old way
        real = os.path.realpath(path)  # the old way, for any other shape
        if not (real == self.top or real.startswith(self.top + os.sep)):
            raise ValueError(f"{path} resolves outside the volume's models directory")
        return _regular(os.open(real, _FILE_FLAGS), path)

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# a planted fifo never blocks the start, nor does a tty become its terminal
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _inside(rel: str) -> list[str]:
    """rel's components, `..` resolved lexically; ValueError when it climbs out."""
    norm = os.path.normpath(rel)
    if norm in (".", "..") or norm.startswith(("../", "/")):
        raise ValueError(f"{rel!r} leaves the models directory or names no file")
    return norm.split("/")


def _regular(fd: int, path: Path) -> int:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path} is not a regular file")
    return fd


def _copy_one(sfd: int, src: Path, dst: Path, size: int, sha256: str) -> None:
    """Copy (from sfd, which this closes) with several threads each reading large ranges; hash
    in file order as ranges land."""
    try:
        dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.fstat(sfd).st_size != size:
            raise ValueError(f"{src} has {os.fstat(sfd).st_size} bytes, the record says {size}")
        dfd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(dfd, size)
            plan = Plan(size, RANGE)
            hasher = OrderedHasher(dfd, plan, {})
            try:
                _parallel_copy(sfd, dfd, plan, hasher)
                digest = hasher.result()
            finally:
                hasher.cancel()
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    if digest != sha256:
        raise ValueError(
            f"{src} does not match its recorded sha256 (run `volenv models verify --level full`)"
        )


def _all_at_once(work: Callable[[Any], None], items: list[Any], width: int = 8) -> None:
    """work(item) for every item, `width` at a time (iopool.run_parts: the first failure stops
    the rest and is raised): on a network volume each model file costs round trips before its
    bytes move, and the F5-TTS models' 25 files took 1.5 s one after another at 1 ms per
    operation."""

    def part(item: Any) -> Part:
        def run(stop: threading.Event) -> int:
            work(item)
            return 0

        return run

    run_parts([part(i) for i in items], AdaptiveStreams(pinned=width), name="volenv-local")


def _parallel_copy(sfd: int, dfd: int, plan: Plan, hasher: OrderedHasher) -> None:
    """The file's ranges, several threads each reading large ones (`VOLENV_STREAMS`, else 8)."""
    local = threading.local()

    def copy_range(i: int) -> None:
        buf: memoryview | None = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = memoryview(bytearray(READ))
        pos, end = plan.span(i)
        while pos < end:
            n = os.preadv(sfd, [buf[: min(READ, end - pos)]], pos)
            if n <= 0:
                raise OSError(f"short read at byte {pos}")
            view = buf[:n]
            while view:
                w = os.pwrite(dfd, view, pos)
                pos += w
                view = view[w:]
        hasher.add([(i, "")])

    _all_at_once(copy_range, list(range(plan.count)), pinned_streams() or 8)
