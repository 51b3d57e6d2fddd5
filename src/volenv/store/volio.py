"""Crash-safe file primitives: unique temp + fsync + rename, strict record reads, safe removal."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import secrets
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from volenv.base.errors import DamagedRecord, VolumeError
from volenv.base.leanjson import NOT_A_RECORD, read_record_bytes
from volenv.base.leanjson import loads as json_loads  # RecursionError is ValueError there

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


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until every byte is out (a write may take fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_temp(path: Path, data: bytes, *, durable: bool) -> Path:
    """A complete sibling temp of `path` with a name no other writer picks; removed on failure."""
    tmp = path.with_name(f".{path.name}.tmp-{unique_suffix()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            write_all(fd, data)
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


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True, root: Path | None = None) -> None:
    """Readers see the old content or the new, never half: unique temp, fsync, rename. With
    `root`, a symlinked directory between root and path is refused (ContainmentError), never
    written through; a link at `path` itself is replaced, as rename does."""
    if root is not None:
        assert_real_parents(path, root)
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


def atomic_write_json(path: Path, obj: Any, *, durable: bool = True, root: Path | None = None) -> None:
    atomic_write_bytes(path, dumps_json(obj), durable=durable, root=root)


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
        if exc.errno in NOT_A_RECORD:  # a link, a FIFO, a directory: volenv never writes one there
            raise DamagedRecord(
                f"{kind} {path} is damaged: not a regular file",
                hint=f"remove {path} (volenv never writes anything but a file there)",
            ) from None
        raise VolumeError(f"cannot read {kind} {path}: {exc.strerror}") from exc
    try:
        obj = json_loads(raw)
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


def append_line(path: Path, line: str, root: Path | None = None) -> None:
    """Append one JSON line with O_APPEND in a single write, so concurrent appenders never
    interleave. Never through a link: not at `path` (O_NOFOLLOW), nor, with `root`, above it."""
    data = (line.rstrip("\n") + "\n").encode()
    if root is not None:
        assert_real_parents(path, root)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ContainmentError(
                f"refusing to append to {path}: it is a symlink", hint="remove the link"
            ) from None
        raise
    try:
        _own_regular(fd, path)
        os.set_blocking(fd, True)
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


class ContainmentError(VolumeError):
    """A path inside the volume root runs through a symlink (or leaves the root): volenv
    refuses to rename, delete, chmod or write through it, whoever planted it."""


def _rel_parts(path: Path, root: Path) -> tuple[str, ...]:
    if not is_within(path, root) or os.path.normpath(path) == os.path.normpath(root):
        raise ContainmentError(f"refusing to touch {path}: not strictly inside {root}")
    parts = Path(os.path.normpath(path)).relative_to(os.path.normpath(root)).parts
    if any(p in ("", ".", "..") for p in parts):
        raise ContainmentError(f"refusing to touch {path}: '..' in the path")
    return parts


def open_dir_nofollow(root: Path, parts: tuple[str, ...] | list[str]) -> int:
    """A descriptor of root/parts opened one component at a time with O_NOFOLLOW, so no
    symlinked component below root is followed (the root itself may be a link: a mount path)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, part in enumerate(parts):
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = os.path.join(root, *parts[: i + 1])
                    raise ContainmentError(
                        f"refusing to go through {where}: a symlink (or not a directory) inside {root}",
                        hint="volenv never follows links inside its root; remove the link",
                    ) from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def contained(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(descriptor of path's parent, path's name), the parent reached from root without
    following any symlinked component: the one containment rule every rename, delete, chmod
    and write inside the root goes through (a link at `path` itself is acted on, not followed)."""
    parts = _rel_parts(path, root)
    fd = open_dir_nofollow(root, parts[:-1])
    try:
        yield fd, parts[-1]
    finally:
        os.close(fd)


def assert_real_parents(path: Path, root: Path) -> None:
    """Refuse a path whose parents (between root and it) include a symlink."""
    with contained(path, root):
        pass


def safe_rename(src: Path, dst: Path, root: Path) -> None:
    """os.rename with both parents reached without following links below root."""
    with contained(src, root) as (sfd, sname), contained(dst, root) as (dfd, dname):
        os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)


def safe_unlink(path: Path, root: Path) -> None:
    """Unlink a file (or a symlink itself) inside root; a missing one is fine."""
    with contained(path, root) as (fd, name):
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass


def safe_mkdirs(path: Path, root: Path, mode: int = 0o777) -> None:
    """mkdir -p below root, refusing any existing symlinked component."""
    parts = _rel_parts(path, root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            try:
                os.mkdir(part, mode, dir_fd=fd)
            except FileExistsError:
                pass
            nfd = open_dir_nofollow_at(fd, part, path)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)


def open_dir_nofollow_at(fd: int, name: str, whole: Path) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ContainmentError(f"refusing to go through {whole}: '{name}' is a symlink") from None
        raise


def remove_tree(path: Path, root: Path) -> None:
    """Delete a tree strictly inside root without following any symlink, neither above it
    (parents reached with O_NOFOLLOW) nor inside (shutil.rmtree on a dir fd does not follow);
    a symlink at `path` itself is unlinked, never followed."""
    with contained(path, root) as (fd, name):
        try:
            st = os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=fd, onerror=_writable_retry(fd))
        else:
            os.unlink(name, dir_fd=fd)


def _writable_retry(top_fd: int) -> Any:
    # A read-only directory inside a tree (chmod by a user) would stop rmtree: make its parent
    # writable (reached without following links) and retry once.
    def handler(func: Any, path: str, exc_info: Any) -> None:
        if func in (os.rmdir, os.unlink) and isinstance(exc_info[1], PermissionError):
            parent = [p for p in os.path.dirname(path).split(os.sep) if p]
            pfd = top_fd
            opened: list[int] = []
            try:
                for part in parent:
                    pfd = open_dir_nofollow_at(pfd, part, Path(path))
                    opened.append(pfd)
                os.chmod(pfd, 0o755)
                func(os.path.basename(path), dir_fd=pfd)
            finally:
                for o in opened:
                    os.close(o)
            return
        raise exc_info[1]

    return handler


def open_append(path: Path, root: Path | None = None, *, exclusive: bool = False) -> int:
    """A descriptor to append to a log: never through a link (not at `path`, O_NOFOLLOW; nor,
    with `root`, above it), never blocking (O_NONBLOCK: a FIFO planted there is refused, not
    waited on), and only ever a regular file. `exclusive`: the file must not exist yet (a
    predictable name someone could have planted)."""
    if root is not None:
        assert_real_parents(path, root)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | (os.O_EXCL if exclusive else 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ContainmentError(
                f"refusing to write {path}: it is a symlink", hint="remove the link"
            ) from None
        raise
    try:
        _own_regular(fd, path)
    except BaseException:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return fd


def _own_regular(fd: int, path: Path) -> None:
    """An append target must be a regular file with no other name: a hard link planted at a
    log's or history's name (to a file outside the root, on the same filesystem) would make
    volenv append to that other file."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ContainmentError(f"refusing to write {path}: not a regular file", hint=f"remove {path}")
    if st.st_nlink != 1:
        raise ContainmentError(
            f"refusing to append to {path}: it has {st.st_nlink} names (a hard link planted there)",
            hint=f"move it away: mv {path} {path}.planted",
        )


def read_regular(
    path: Path | str, limit: int = 1 << 20, *, tail: bool = False, one_name: bool = False
) -> bytes:
    """A file's bytes (at most `limit`: its first, or with `tail` its last), read without
    following a link at `path` and without blocking: a FIFO, a device, a directory or a link in
    its place raises OSError (ELOOP, EINVAL), never hangs and never reads something elsewhere."""
    fd, st = _open_regular_fd(path)
    try:
        if one_name and st.st_nlink != 1:  # a log volenv wrote has one name: a second is a plant
            raise OSError(errno.EINVAL, "a file with several names (a hard link)", str(path))
        if tail and st.st_size > limit:
            os.lseek(fd, st.st_size - limit, os.SEEK_SET)
        chunks, left = [], limit
        while left > 0 and (block := os.read(fd, min(left, 1 << 20))):
            chunks.append(block)
            left -= len(block)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _open_regular_fd(path: Path | str) -> tuple[int, os.stat_result]:
    """The one open of the layer's reads: no link at `path` (O_NOFOLLOW), never blocking
    (O_NONBLOCK: a FIFO is opened, then refused), a regular file only (EINVAL otherwise)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def open_regular(path: Path | str, buffering: int = -1) -> io.BufferedReader | io.FileIO:
    """A file object for streaming a large file of the volume (a pack blob, a snapshot's file):
    the same rules as `read_regular` (no link at `path`, no FIFO or device, never blocking on
    the open), without reading it whole."""
    fd, _st = _open_regular_fd(path)
    try:
        os.set_blocking(fd, True)
        return cast("io.BufferedReader | io.FileIO", os.fdopen(fd, "rb", buffering=buffering))
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def streamed_write(dest: Path, root: Path, *, durable: bool = True) -> Iterator[io.BufferedWriter]:
    """A large file streamed into place (a pack blob): written to a private sibling temp created
    through real parents (O_EXCL | O_NOFOLLOW, so nothing planted is written through), renamed
    over `dest` only when the body completed; the temp is removed on any failure."""
    with contained(dest, root) as (dfd, dname):
        tmp = f".{dname}.tmp-{unique_suffix()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o644, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                if durable:
                    os.fsync(fh.fileno())
            os.rename(tmp, dname, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise


def real_dir_below(root: Path | str, path: Path | str) -> bool:
    """Whether `path` is a directory reached from `root` without any link (itself included):
    what a snapshot, a models/ or a logs/<env> folder must be before volenv reads, packs,
    uploads or writes what is inside (a planted link there would hand it an outside tree)."""
    try:
        parts = _rel_parts(Path(path), Path(root))
        os.close(open_dir_nofollow(Path(root), parts))
    except (ContainmentError, FileNotFoundError, NotADirectoryError):
        return False
    return True
