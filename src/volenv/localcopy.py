"""`[[models]] local = "always" | "auto"`: at `volenv run`, copy a fetched model from the volume
to the container's own disk and point VOLENV_MODEL_<NAME> there.

Weights are read with mmap or small reads, and on a network volume each uncached read is a
round trip; a copy made with a few threads each reading large ranges (os.pread) moves the same
bytes at the volume's streaming rate, once per container. `auto` copies only when the volume is
slow, as `run --materialize auto` decides (materialize.decide_auto against
VOLENV_MATERIALIZE_THRESHOLD_MS). The copy is checked against the model's record (size and
sha256, hashed in file order while it is written) and published by one directory rename with a
completion mark; a later start reuses a complete copy and never a partial one. Anything that
stops the copy (no space, a damaged volume file) leaves the worker on the volume's copy, with a
warning: a local copy is an optimisation, never a reason not to start.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .errors import VolenvError
from .fsutil import unique_suffix
from .httpfetch import OrderedHasher, Plan
from .modelpaths import model_env_name, model_files_dir, model_key, model_location, model_record_path
from .ui import human_bytes, human_seconds

MARK = ".volenv-local.json"
RANGE = 16 << 20  # one thread's share of a file at a time
READ = 4 << 20


def _say(msg: str) -> None:
    print(f"volenv: {msg}", file=sys.stderr, flush=True)


def local_base() -> Path:
    """$VOLENV_LOCAL_DIR, else `_models` in the directory `run --materialize` uses; either must
    be this user's alone (OSError otherwise): weights in another user's directory could be a
    planted pickle, which is code."""
    from .materialize import checked_base, default_dir

    explicit = os.environ.get("VOLENV_LOCAL_DIR")
    if explicit:
        base = Path(explicit)
        checked_base(base, True)
        return base
    checked_base(default_dir(), bool(os.environ.get("VOLENV_MATERIALIZE_DIR")))
    base = default_dir() / "_models"
    checked_base(base, True)
    return base


def localize_models(
    root: str, volume_snapshot: str, models: list[dict[str, Any]], env: dict[str, str]
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
    for m in wanted:
        if m["local"] == "auto":
            if slow is None:
                from .materialize import decide_auto

                try:
                    where = str(local_base())
                except OSError as exc:
                    _say(f"warning: models local: no local copies ({exc}); reading from the volume")
                    return
                decision = decide_auto(root, where, volume_snapshot)
                slow = decision.materialize
                _say(
                    f"models local auto: {decision.reason}:"
                    f" {'copying to local disk' if slow else 'reading from the volume'}"
                )
            if not slow:
                continue
        try:
            path = _local_copy(root, m)
        except (OSError, ValueError, VolenvError) as exc:  # a damaged record included
            _say(f"warning: model '{m['name']}': no local copy ({exc}); reading it from the volume")
            continue
        if path is not None:
            env[model_env_name(m["name"])] = path


def _local_copy(root: str, m: dict[str, Any]) -> str | None:
    from .models import read_model_record

    rec = read_model_record(Path(model_record_path(root, m)))
    if rec is None:
        return None
    files = rec["files"]
    src_dir = Path(model_files_dir(root, m))
    loc = Path(model_location(root, m))
    rel = os.path.relpath(loc, src_dir)  # "." for an hf snapshot dir, the file name for a url model
    base = local_base()
    dest = base / f"{m['name']}.{model_key(m)}"
    if _complete(dest, files):
        _say(f"model '{m['name']}': reusing the local copy {dest}")
        return str(dest / rel)
    need = sum(int(f["size"]) for f in files)
    free = shutil.disk_usage(base).free
    if free < need * 1.05:
        raise OSError(f"{base} has {free} bytes free, {need} needed")
    tmp = base / f".{dest.name}.partial-{unique_suffix()}"
    t0 = time.perf_counter()
    try:
        os.mkdir(tmp, 0o700)
        models_top = os.path.realpath(os.path.join(root, "models"))
        for f in files:
            _copy_one(src_dir / f["path"], tmp / f["path"], int(f["size"]), f["sha256"], models_top)
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
    _say(f"model '{m['name']}': copied {human_bytes(need)} to {dest} in {human_seconds(secs)} ({rate}/s)")
    return str(dest / rel)


def _complete(dest: Path, files: list[dict[str, Any]]) -> bool:
    """A copy counts only with its mark naming exactly these files, each of the recorded size,
    and all of it (directories, mark, files) this user's alone: never another user's plant."""
    from .materialize import owned_alone

    try:
        if not owned_alone(dest) or not owned_alone(dest / MARK, stat.S_IFREG):
            return False
        mark = json.loads((dest / MARK).read_bytes())
        if mark.get("files") != files:
            return False
        dirs: set[str] = set()
        for f in files:
            rel = str(f["path"])
            parent = os.path.dirname(rel)
            while parent and parent not in dirs:
                if not owned_alone(dest / parent):
                    return False
                dirs.add(parent)
                parent = os.path.dirname(parent)
            st = os.lstat(dest / rel)
            if not owned_alone(dest / rel, stat.S_IFREG) or st.st_size != f["size"]:
                return False
        return True
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def _copy_one(src: Path, dst: Path, size: int, sha256: str, models_top: str) -> None:
    """Copy with several threads each reading large ranges; hash in file order as ranges land."""
    real = os.path.realpath(src)
    if not (real == models_top or real.startswith(models_top + os.sep)):
        raise ValueError(f"{src} resolves outside the volume's models directory")
    dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    sfd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
    try:
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


def _parallel_copy(sfd: int, dfd: int, plan: Plan, hasher: OrderedHasher) -> None:
    todo = collections.deque(range(plan.count))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        buf = memoryview(bytearray(READ))
        try:
            while True:
                with lock:
                    if errors or not todo:
                        return
                    i = todo.popleft()
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
        except BaseException as exc:
            with lock:
                errors.append(exc)

    raw = os.environ.get("VOLENV_STREAMS", "")
    streams = int(raw) if raw.isdigit() and int(raw) > 0 else 8
    threads = [threading.Thread(target=work, daemon=True) for _ in range(min(streams, plan.count))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
