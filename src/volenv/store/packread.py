"""Unpacking: packs extracted into a tree under a directory fd, trusting nothing in the tar (each
member must be an entry of the snapshot's record, same type and target; sizes checked; every
blob hashed while it streams), several packs at a time (`Unpacker`), startup packs first."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from volenv.base.errors import VerifyError
from volenv.base.iopool import Part, Stopped, run_parts
from volenv.base.streams import AdaptiveStreams
from volenv.store.integrity import Entry, load_record
from volenv.store.packformat import (
    META_GROUP,
    HashReader,
    PackInfo,
    PackManifest,
    check_tar_digest,
    file_sha256,
    need_zstandard,
    pack_name,
    pack_order,
)
from volenv.store.sealcheck import META_DIR, SealProblem
from volenv.store.volio import write_all

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


_KEEP_OPEN = 32  # per extracting thread (up to 16): well under a 1024-descriptor limit


class _Tree:
    """The extraction root as a directory descriptor: every directory below it is created by
    us and opened component by component with O_NOFOLLOW, so no member can be written
    through a symlink (planted or packed) to anywhere outside the root. Each thread keeps its
    own open directories (packs extract in parallel into one tree)."""

    def __init__(self, dest: Path) -> None:
        dest.mkdir(exist_ok=False)
        self.root_fd = os.open(dest, _DIR_FLAGS)
        self._local = threading.local()
        self._all: list[dict[str, int]] = []
        self._lock = threading.Lock()
        # while a program already runs from the tree, each file appears whole or not at all
        self.atomic = False

    @property
    def open(self) -> dict[str, int]:
        """This thread's open directories (rel -> fd), most recently used last."""
        cache: dict[str, int] | None = getattr(self._local, "open", None)
        if cache is None:
            cache = self._local.open = {}
            with self._lock:
                self._all.append(cache)
        return cache

    def dir_fd(self, rel: str, *, create: bool) -> int:
        """The descriptor of directory rel ('' = the root), walking from the nearest one open."""
        if not rel:
            return self.root_fd
        fd = self.open.pop(rel, None)
        if fd is None:
            parent, _, name = rel.rpartition("/")
            pfd = self.dir_fd(parent, create=create)
            try:
                fd = self._open_dir(pfd, name, create)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST, errno.ENOENT):
                    raise VerifyError(f"unsafe pack: {rel!r} is not a directory the pack created") from None
                raise
        self.open[rel] = fd  # most recent last
        while len(self.open) > _KEEP_OPEN:
            oldest = next(iter(self.open))
            os.close(self.open.pop(oldest))
        return fd

    @staticmethod
    def _open_dir(pfd: int, name: str, create: bool) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=pfd)
        except FileNotFoundError:
            if not create:
                raise
        with contextlib.suppress(FileExistsError):  # another thread's pack made it just now
            os.mkdir(name, 0o700, dir_fd=pfd)
        return os.open(name, _DIR_FLAGS, dir_fd=pfd)  # still only a real directory, never a link

    def close(self) -> None:
        with self._lock:
            for cache in self._all:
                for fd in cache.values():
                    os.close(fd)
                cache.clear()
        os.close(self.root_fd)


def unpack(
    manifest: PackManifest,
    open_blob: Callable[[PackInfo], BinaryIO],
    dest: Path,
    *,
    record: dict[str, Entry] | None = None,
    workers: AdaptiveStreams | int | None = None,
) -> None:
    """Extract every pack into dest (which must not exist yet): meta first, then the rest
    checked against the record it carries, several packs at a time (`workers`: a stream
    controller or a fixed count; by default adaptive, VOLENV_STREAMS pins it) in pack order,
    so the startup pack starts first. Blob and tar hashes are checked as they stream, each tar
    stops at its declared size, and nothing is written through a symlink."""
    u = Unpacker(manifest, dest, record=record)
    try:
        u.extract(sorted(manifest.packs, key=pack_order), open_blob, workers=workers or AdaptiveStreams())
        u.finish()
    finally:
        u.close()


class Unpacker:
    """An extraction in steps (materialize extracts the startup pack, execs, and lets a
    background process extract the rest into the same tree): `extract` some packs, then
    `finish` checks that every recorded entry arrived and sets directory modes."""

    def __init__(self, manifest: PackManifest, dest: Path, *, record: dict[str, Entry] | None = None) -> None:
        metas = [p for p in manifest.packs if p.group == META_GROUP]
        if len(metas) != 1 and record is None:
            raise VerifyError(f"the pack list has {len(metas)} metadata packs, not one")
        self.manifest = manifest
        self.dest = dest
        self.record = record
        self.seen = _Seen()
        self.dir_modes: list[tuple[str, int]] = []
        self.tree = _Tree(dest)

    def extract(
        self,
        infos: Iterable[PackInfo],
        open_blob: Callable[[PackInfo], BinaryIO],
        *,
        workers: AdaptiveStreams | int | None = None,
    ) -> None:
        """Extract packs in order; with `workers` (a stream controller or a count above 1),
        the metadata pack alone first, then the rest several at a time, in order."""
        todo = list(infos)
        if workers is None or workers == 1:
            for info in todo:
                self.extract_one(info, open_blob)
            return
        for info in [i for i in todo if i.group == META_GROUP]:
            self.extract_one(info, open_blob)
        streams = AdaptiveStreams(pinned=workers) if isinstance(workers, int) else workers

        def part(info: PackInfo) -> Part:
            def run(stop: threading.Event) -> int:
                self.extract_one(info, open_blob, stop)
                return info.tar_size

            return run

        run_parts([part(i) for i in todo if i.group != META_GROUP], streams, name="volenv-unpack")

    def extract_forked(
        self,
        infos: list[PackInfo],
        open_blob: Callable[[PackInfo], BinaryIO],
        procs: int,
        during: Callable[[], None] | None = None,
    ) -> None:
        """Extract packs (not the metadata pack) in up to `procs` processes at once: children
        are forked, extract their share into the same tree and report what they extracted, or
        why they failed (a damaged pack stays a VerifyError, a full disk an OSError with its
        errno). With `during`, every share goes to a child and this process runs `during`
        meanwhile: the metadata pack's extraction, which brings the record. Children forked
        before the record exists check their members against it only here, after they end:
        the tree is private and nothing runs from it before this returns, and a member that is
        not recorded fails the whole extraction as it would have before it was written."""
        import json

        n = max(1, min(procs, len(infos)))
        shares = [infos[i::n] for i in range(n)]
        mine_first = during is None
        children: list[tuple[int, int]] = []
        try:
            for share in list(shares[1:] if mine_first else shares):  # appended to below
                r, w = os.pipe()
                try:
                    pid = os.fork()
                except OSError:
                    os.close(r)
                    os.close(w)
                    if mine_first:
                        shares[0] += share  # no process to spare: this one does it
                    else:
                        shares.append(share)  # done here, after `during`
                    continue
                if pid == 0:  # pragma: no cover - runs in the child
                    try:
                        os.close(r)
                        write_all(w, json.dumps(self._child_extract(share, open_blob)).encode())
                    finally:
                        os._exit(0)  # the report says how it went
                os.close(w)
                children.append((pid, r))
            if during is not None:
                during()
                if self.record is None:
                    raise VerifyError("the pack list has no metadata pack")
                spared = shares[n:]  # shares no child could be forked for
            else:
                spared = shares[:1]
            for share in spared:
                for info in share:
                    self.extract_one(info, open_blob)
        except BaseException:
            for pid, _ in children:  # stop them now: the tree is discarded
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            raise
        finally:
            reports = []
            for pid, r in children:
                chunks = []
                while chunk := os.read(r, 1 << 20):
                    chunks.append(chunk)
                os.close(r)
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:  # SIGCHLD ignored: reaped already; the report counts
                    pass
                reports.append(b"".join(chunks))
        msgs = []
        for raw in reports:
            try:
                msgs.append(json.loads(raw))
            except ValueError:
                raise VerifyError("an extraction process stopped without a report") from None
        for msg in msgs:  # a forged member is the reason, whatever else its writing caused
            for pack, members in msg.get("unchecked", {}).items():
                for name, kind, size, link in members:
                    _check_member(self.record, str(pack), str(name), str(kind), int(size), str(link))
        for msg in msgs:
            if "errno" in msg:
                raise OSError(int(msg["errno"]), str(msg["strerror"]))
            if "verify" in msg:
                raise VerifyError(str(msg["verify"]))
            for name in msg["seen"]:
                if not self.seen.add_new(name):
                    raise VerifyError(f"member {name!r} appears twice")
            self.dir_modes += [(str(rel), int(mode)) for rel, mode in msg["dir_modes"]]

    def _child_extract(
        self, share: list[PackInfo], open_blob: Callable[[PackInfo], BinaryIO]
    ) -> dict[str, Any]:
        """A forked child's work and report: names and directory modes it extracted, with each
        member's type, size and link target while the record was not there to check them."""
        before = len(self.dir_modes)
        mine: list[str] = []
        self.seen = _Seen(record_into=mine)
        unchecked: dict[str, list[tuple[str, str, int, str]]] = {}
        try:
            for info in share:
                deferred = unchecked.setdefault(pack_name(info), []) if self.record is None else None
                self.extract_one(info, open_blob, unchecked=deferred)
            return {"seen": mine, "dir_modes": self.dir_modes[before:], "unchecked": unchecked}
        except VerifyError as exc:
            return {"verify": str(exc), "unchecked": unchecked}
        except OSError as exc:
            return {"errno": exc.errno or 0, "strerror": exc.strerror or str(exc), "unchecked": unchecked}
        except BaseException as exc:
            return {"verify": f"extraction failed: {exc!r}", "unchecked": unchecked}

    def extract_one(
        self,
        info: PackInfo,
        open_blob: Callable[[PackInfo], BinaryIO],
        stop: threading.Event | None = None,
        *,
        unchecked: list[tuple[str, str, int, str]] | None = None,
    ) -> None:
        """One pack (any thread; the metadata pack must have been extracted before the others,
        or, with `unchecked`, its members are listed there to be checked later: see
        `extract_forked`)."""
        allowed = None if info.group == META_GROUP else self.record
        if info.group != META_GROUP and allowed is None and unchecked is None:
            raise VerifyError("the pack list has no metadata pack")
        with open_blob(info) as raw:
            _extract_pack(raw, info, self.tree, allowed, self.seen, self.dir_modes, stop, unchecked)
        if info.group == META_GROUP and self.record is None:
            self.record = _packed_record(self.manifest, self.dest)

    def finish(self) -> None:
        if self.record is None:
            raise VerifyError("the pack list has no metadata pack")
        missing = [p for p in self.record if p not in self.seen]
        if missing:
            raise VerifyError(f"packs lack {len(missing)} recorded entries (e.g. {missing[0]})")
        for rel, mode in sorted(self.dir_modes, key=lambda x: x[0].count("/"), reverse=True):
            os.fchmod(self.tree.dir_fd(rel, create=False), mode)
        try:
            os.fsync(self.tree.root_fd)
        except OSError:
            pass

    def close(self) -> None:
        self.tree.close()


class _Seen:
    """Members extracted so far, across the threads extracting into one tree (and, in a
    forked extraction process, the names it adds, in `record_into`)."""

    def __init__(self, record_into: list[str] | None = None) -> None:
        self._names: set[str] = set()
        self._lock = threading.Lock()
        self._record = record_into

    def add_new(self, name: str) -> bool:
        """Record name; False when it was already there."""
        with self._lock:
            if name in self._names:
                return False
            self._names.add(name)
            if self._record is not None:
                self._record.append(name)
            return True

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        """A snapshot of the names (safe while other threads add)."""
        with self._lock:
            return iter(list(self._names))


def _extract_pack(
    raw: BinaryIO,
    info: PackInfo,
    tree: _Tree,
    record: dict[str, Entry] | None,
    seen: _Seen,
    dir_modes: list[tuple[str, int]],
    stop: threading.Event | None = None,
    unchecked: list[tuple[str, str, int, str]] | None = None,
) -> None:
    """One pack: blob hash, tar hash and declared sizes checked while it streams. With
    `unchecked` (no record yet: see `Unpacker.extract_forked`), each member's type, size and
    link target are listed there to be checked against the record afterwards."""
    need_zstandard()
    import zstandard

    try:
        with zstandard.ZstdDecompressor().stream_reader(raw, closefd=False) as zr:
            tar_hash = HashReader(zr, info.tar_size, pack_name(info))
            with tarfile.open(fileobj=tar_hash, mode="r|") as tar:
                for count, member in enumerate(tar, start=1):
                    if count > info.files:
                        raise VerifyError(f"{pack_name(info)} holds more than {info.files} files")
                    if stop is not None and stop.is_set():
                        raise Stopped
                    _extract_member(tar, member, tree, record, info, seen, dir_modes, unchecked)
            tar_hash.drain()
    except (zstandard.ZstdError, tarfile.TarError, EOFError, ValueError, OverflowError) as exc:
        # ValueError/OverflowError: header values tarfile or os.utime cannot take (a pax
        # `GNU.sparse.realsize=abc`, `mtime=1e300`): a damaged pack like any other
        raise VerifyError(f"{pack_name(info)} is damaged: {exc}") from None
    while raw.read(1 << 16):  # read any trailing bytes too
        pass
    # the tar's sha256 is the (signed) id: a blob compressed otherwise than the one the pack
    # list describes (another zstd level or version) is the same pack; its blob_sha256 is not
    # checked here, the id is
    check_tar_digest(info, tar_hash)


def _packed_record(manifest: PackManifest, dest: Path) -> dict[str, Entry]:
    """The record and seal the metadata pack brought, checked against the pack manifest (whose
    signature, where there is one, the caller has checked)."""
    rec_sha = file_sha256(dest / META_DIR / "record")
    if rec_sha != manifest.record_sha256:
        raise VerifyError("the packed record does not match the pack manifest")
    seal = dest / META_DIR / "seal.json"
    expected = manifest.seal_sha256
    if expected is not None and (not seal.is_file() or file_sha256(seal) != expected):
        raise VerifyError("the packed seal does not match the pack manifest")
    try:
        return load_record(dest)
    except (SealProblem, ValueError) as exc:
        raise VerifyError(f"the packed record is damaged: {exc}") from None


def _member_name(m: tarfile.TarInfo, info: PackInfo) -> str:
    name = m.name
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\0" in name
        or len(name) > 4096
        or len(parts) > 128
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise VerifyError(f"{pack_name(info)}: unsafe member name {name!r}")
    if m.mode & (stat.S_ISUID | stat.S_ISGID):
        raise VerifyError(f"{pack_name(info)}: member {name!r} is setuid/setgid")
    if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE):
        what = "a hard link" if m.islnk() else "a device, fifo or other special file"
        raise VerifyError(f"{pack_name(info)}: member {name!r} is {what}")
    return name


def _check_member(
    record: dict[str, Entry] | None, pack: str, name: str, kind: str, size: int, link: str
) -> None:
    """A member of a snapshot pack must be a recorded entry of the same type, size (files) and
    target (links)."""
    e = record.get(name) if record is not None else None
    if e is None or e.type != kind or (kind == "l" and link != e.digest) or (kind == "f" and size != e.size):
        raise VerifyError(f"{pack}: member {name!r} does not match the snapshot's record")


def _extract_member(
    tar: tarfile.TarFile,
    m: tarfile.TarInfo,
    tree: _Tree,
    record: dict[str, Entry] | None,
    info: PackInfo,
    seen: _Seen,
    dir_modes: list[tuple[str, int]],
    unchecked: list[tuple[str, str, int, str]] | None = None,
) -> None:
    name = _member_name(m, info)
    kind = "d" if m.isdir() else "l" if m.issym() else "f"
    if unchecked is not None:  # checked against the record once it is there
        if name == META_DIR or name.startswith(META_DIR + "/"):
            raise VerifyError(f"{pack_name(info)}: member {name!r} does not match the snapshot's record")
        unchecked.append((name, kind, m.size, m.linkname))
    elif record is not None:
        _check_member(record, pack_name(info), name, kind, m.size, m.linkname)
    elif not (
        (name == META_DIR and m.isdir())
        or (name.startswith(META_DIR + "/") and name.count("/") == 1 and m.isfile())
    ):
        raise VerifyError(f"metadata pack holds {name!r}")
    if not seen.add_new(name):
        raise VerifyError(f"{pack_name(info)}: member {name!r} appears twice")
    mode = m.mode & 0o7777
    if m.isdir():
        tree.dir_fd(name, create=True)
        dir_modes.append((name, mode))
        return
    parent, _, base = name.rpartition("/")
    pfd = tree.dir_fd(parent, create=True)
    collides = VerifyError(f"{pack_name(info)}: member {name!r} collides with an earlier one")
    part = f".{base}.volenv-part-{os.getpid()}" if tree.atomic else base
    try:
        if m.issym():
            os.symlink(m.linkname, base, dir_fd=pfd)
            return
        fd = os.open(part, _FILE_FLAGS, 0o600, dir_fd=pfd)
    except (FileExistsError, IsADirectoryError, NotADirectoryError):
        raise collides from None
    try:  # straight from the tar stream (which hashes it): no file object per member
        stream = tar.fileobj
        assert stream is not None
        left = m.size
        while left:
            chunk = stream.read(min(left, 1 << 20))
            if not chunk:
                raise VerifyError(f"{pack_name(info)}: member {name!r} is cut short")
            left -= len(chunk)
            write_all(fd, chunk)
        os.fchmod(fd, mode)
        os.utime(fd, (m.mtime, m.mtime))
    finally:
        os.close(fd)
    if part != base:
        try:  # a link, not a rename: an existing name is a collision, never replaced
            os.link(part, base, src_dir_fd=pfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileExistsError:
            raise collides from None
        finally:
            os.unlink(part, dir_fd=pfd)
