"""Crash-safe file primitives: unique temp + fsync + rename, strict record reads, safe removal."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import socket
import stat
from pathlib import Path
from typing import Any

from .errors import DamagedRecord, VolenvError, VolumeError
from .leanjson import read_record_bytes

CACHEDIR_TAG = (
    b"Signature: 8a477f597d28d172789f06886806bc55\n"
    b"# This directory is managed by volenv; backup tools may skip it.\n"
)


def unique_suffix() -> str:
    """A name part no other process or host will pick: host, pid and randomness."""
    host = socket.gethostname().split(".")[0][:24] or "host"
    safe_host = "".join(c if c.isalnum() or c in "-_" else "_" for c in host)
    return f"{safe_host}-{os.getpid()}-{secrets.token_hex(4)}"


def fsync_dir(path: Path) -> None:
    """Make a rename durable; some filesystems (FUSE, exFAT) refuse directory fsync, which is fine."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes, *, durable: bool) -> Path:
    """A complete sibling temp of `path` with a name no other writer picks; removed on failure."""
    tmp = path.with_name(f".{path.name}.tmp-{unique_suffix()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Readers see the old content or the new, never half: unique temp, fsync, rename."""
    tmp = _write_temp(path, data, durable=durable)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EXDEV}


def create_once_bytes(path: Path, data: bytes) -> bool:
    """Publish `path` only if nobody has: a complete temp hard-linked into place, so concurrent
    creators never replace each other's file under a reader (on FUSE and network filesystems a
    replace can make a reader that just saw the file get ENOENT). False when it already existed.
    Without hard links (exFAT) it falls back to rename-if-absent, which is racy but equivalent."""
    tmp = _write_temp(path, data, durable=True)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            if path.exists():
                return False
            os.replace(tmp, path)
    finally:
        _unlink_quietly(tmp)  # the link's second name, or what a failure left
    fsync_dir(path.parent)
    return True


def dumps_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_json(path: Path, obj: Any, *, durable: bool = True) -> None:
    atomic_write_bytes(path, dumps_json(obj), durable=durable)


def has_type(value: object, typ: type | tuple[type, ...]) -> bool:
    """isinstance, except that a JSON true/false is not an int or a float."""
    types = typ if isinstance(typ, tuple) else (typ,)
    return isinstance(value, types) and (not isinstance(value, bool) or bool in types)


def read_record(
    path: Path, kind: str, schema: int, fields: dict[str, type | tuple[type, ...]] | None = None
) -> dict[str, Any]:
    """Read a versioned on-volume JSON record strictly: damage is an error, never a default.
    `fields` names the keys the caller uses and their types; a missing or mistyped one is damage."""
    try:
        raw = read_record_bytes(path)
    except FileNotFoundError:
        raise
    except (IsADirectoryError, NotADirectoryError):
        raise DamagedRecord(
            f"{kind} {path} is damaged: a directory where the record should be",
            hint=f"remove {path} (volenv never writes a directory there)",
        ) from None
    except OSError as exc:
        raise VolumeError(f"cannot read {kind} {path}: {exc.strerror}") from exc
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedRecord(f"{kind} {path} is damaged: not valid JSON ({exc})") from None
    except RecursionError:
        raise DamagedRecord(f"{kind} {path} is damaged: JSON nested too deeply") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("schema"), int):
        raise DamagedRecord(f"{kind} {path} is damaged: no integer 'schema' field")
    if obj["schema"] > schema:
        raise VolumeError(
            f"{kind} {path} has schema {obj['schema']}, newer than this volenv understands ({schema})",
            hint="upgrade volenv (pip install -U volenv)",
        )
    for key, typ in (fields or {}).items():
        if not has_type(obj.get(key), typ):
            raise DamagedRecord(f"{kind} {path} is damaged: field {key!r} missing or of the wrong type")
    return obj


def append_line(path: Path, line: str) -> None:
    """Append one JSON line with O_APPEND in a single write, so concurrent appenders never interleave."""
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_cachedir_tag(directory: Path) -> None:
    tag = directory / "CACHEDIR.TAG"
    if not tag.exists():
        create_once_bytes(tag, CACHEDIR_TAG)


def is_within(path: Path, root: Path) -> bool:
    """Lexical containment: `path` is root or below it (no symlink is resolved)."""
    try:
        Path(os.path.normpath(path)).relative_to(os.path.normpath(root))
    except ValueError:
        return False
    return True


def assert_real_parents(path: Path, root: Path) -> None:
    """Refuse a path whose parents (between root and it) include a symlink: deleting through
    one would reach outside the volume root."""
    if not is_within(path, root) or os.path.normpath(path) == os.path.normpath(root):
        raise VolenvError(f"refusing to touch {path}: not strictly inside the volume root {root}")
    rel = Path(os.path.normpath(path)).relative_to(os.path.normpath(root))
    current = Path(os.path.normpath(root))
    for part in rel.parts[:-1]:
        if part in ("..", "."):
            raise VolenvError(f"refusing to touch {path}: '..' in the path")
        current = current / part
        if stat.S_ISLNK(os.lstat(current).st_mode):
            raise VolenvError(f"refusing to touch {path}: {current} is a symlink")


def remove_tree(path: Path, root: Path) -> None:
    """Delete a tree strictly inside root without following any symlink out of it.

    shutil.rmtree walks with O_NOFOLLOW and dir fds (symlink-race safe); a symlink at
    `path` itself is unlinked, never followed.
    """
    assert_real_parents(path, root)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, onerror=_make_writable_and_retry)
    else:
        os.unlink(path)


def _make_writable_and_retry(func: Any, path: str, exc_info: Any) -> None:
    # A read-only directory inside a tree (chmod by a user) would stop rmtree; fix and retry once.
    if func in (os.rmdir, os.unlink) and isinstance(exc_info[1], PermissionError):
        parent = os.path.dirname(path)
        os.chmod(parent, 0o755)
        func(path)
        return
    raise exc_info[1]
