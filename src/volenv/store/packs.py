"""Packs: a sealed snapshot as a few content-addressed, zstd-compressed tar streams — one per
installed distribution (its RECORD files plus their bytecode), one for the rest of the venv,
one for the snapshot's metadata (.volenv). The same format travels to object storage
(push/pull) and is extracted onto a container's local disk (materialize).

A pack's id is the sha256 of its uncompressed tar, so an unchanged distribution is the same
pack in every snapshot and is stored and sent once. Extraction trusts nothing in the tar: each
member must be an entry of the snapshot's record (same type, same symlink target), sizes are
checked, and every compressed blob is hashed while it streams.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import signal
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from volenv.base.errors import DamagedRecord, VerifyError, missing_extra
from volenv.base.iopool import Part, Stopped, run_parts
from volenv.base.streams import AdaptiveStreams
from volenv.base.ui import reporter
from volenv.store.integrity import Entry, load_record, owner_distributions
from volenv.store.paths import VolumePaths
from volenv.store.sealcheck import META_DIR, SealProblem, check_seal
from volenv.store.trace import HOOK_VERSION
from volenv.store.volio import atomic_write_json, safe_mkdirs, unique_suffix, write_all

PACK_SCHEMA = 1
LEVEL = int(os.environ.get("VOLENV_ZSTD_LEVEL", "3"))
META_GROUP = "_meta"
VENV_GROUP = "_venv"
STARTUP_GROUP = "_startup"  # a start trace's files, in trace order (trace.py)
PREFETCH_GROUP = "_prefetch"  # traced files too big for the startup pack, in trace order
# Traced files up to STARTUP_FILE_MAX always go into the startup pack; bigger ones, smallest
# first, while the pack stays within STARTUP_SHARE of the snapshot's bytes. The rest wait in the
# prefetch pack, which the background extracts first: meanwhile the start reads them through the
# skeleton's links, where their cost is bandwidth, not round trips (a few big libraries, such as
# libtorch, are most of a snapshot's bytes and few of its files).
STARTUP_FILE_MAX = 1 << 20
STARTUP_SHARE = 0.24
# The startup pack is cut, in trace order, into this many packs (`_startup`, `_startup.2`, ...)
# of about equal extraction cost, so that materialize extracts them in several processes at
# once (tarfile's work holds the GIL: threads do not help; creating files is most of the cost).
STARTUP_CHUNKS = 4
_FILE_COST = 64 << 10  # what creating one file costs, as bytes written


def startup_chunk(group: str) -> int | None:
    """1 for `_startup`, n for `_startup.n`; None for any other group."""
    if group == STARTUP_GROUP:
        return 1
    head, dot, n = group.partition(".")
    if head == STARTUP_GROUP and dot and n.isdigit() and n[0] != "0" and int(n) > 1:
        return int(n)
    return None


_PYC = re.compile(r"^(?P<dir>.*)/__pycache__/(?P<stem>[^/.]+)\.[^/]+\.pyc$")


@dataclass(frozen=True)
class PackInfo:
    id: str  # sha256 of the uncompressed tar
    group: str  # distribution (name-version), _venv or _meta
    blob_sha256: str  # sha256 of the compressed blob
    blob_size: int
    tar_size: int
    files: int


@dataclass(frozen=True)
class PackManifest:
    schema: int
    snapshot: str
    env: str
    record_sha256: str
    manifest_digest: str | None
    fingerprint: dict[str, Any]
    packs: tuple[PackInfo, ...]
    created: float
    seal_sha256: str | None = None  # the sealed seal.json's bytes (signed with the pack list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: Any) -> PackManifest:
        """Strict: a pack manifest may come from a bucket, so every field is checked by the
        rules local values obey (names, ids, digests, sizes) before anything uses it."""
        from volenv.manifest.parse import HEX64, is_env_name, is_snapshot_id

        def bad(why: str) -> VerifyError:
            return VerifyError(f"pack manifest is invalid: {why}")

        if not isinstance(data, dict):
            raise bad("not a JSON object")
        schema: Any = data.get("schema")
        if not _is_int(schema) or schema < 1:
            raise bad("no integer 'schema'")
        if schema > PACK_SCHEMA:
            raise VerifyError(f"pack manifest schema {schema} is newer than this volenv ({PACK_SCHEMA})")
        sid: Any = data.get("snapshot")
        env: Any = data.get("env")
        if not is_snapshot_id(sid):
            raise bad(f"'snapshot' {sid!r} is not a snapshot id (<env>-<12 hex>)")
        if not is_env_name(env) or not sid.startswith(f"{env}-") or len(sid) != len(env) + 13:
            raise bad(f"'env' {env!r} is not the env of snapshot {sid!r}")
        for key, optional in (("record_sha256", False), ("seal_sha256", True), ("manifest_digest", True)):
            v = data.get(key)
            if not (v is None and optional) and not (isinstance(v, str) and HEX64.fullmatch(v)):
                raise bad(f"{key!r} is not a sha256 hex digest")
        fp = data.get("fingerprint")
        if (
            not isinstance(fp, dict)
            or not isinstance(fp.get("executable", ""), str)
            or "\0" in fp.get("executable", "")
        ):
            raise bad("'fingerprint' is not an object")
        created = data.get("created", 0)
        if not isinstance(created, int | float) or isinstance(created, bool):
            raise bad("'created' is not a number")
        packs = data.get("packs")
        if not isinstance(packs, list):
            raise bad("'packs' is not a list")
        infos = tuple(_pack_info(p, bad) for p in packs)
        if len({i.id for i in infos}) != len(infos):
            raise bad("a pack is listed twice")
        return PackManifest(
            schema,
            sid,
            env,
            data["record_sha256"],
            data.get("manifest_digest"),
            fp,
            infos,
            float(created),
            data.get("seal_sha256"),
        )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_PACK_KEYS = {"id", "group", "blob_sha256", "blob_size", "tar_size", "files"}


def _pack_info(p: Any, bad: Callable[[str], VerifyError]) -> PackInfo:
    from volenv.manifest.parse import HEX64

    if not isinstance(p, dict) or set(p) != _PACK_KEYS:
        raise bad(f"a pack entry is not an object with keys {sorted(_PACK_KEYS)}")
    for key in ("id", "blob_sha256"):
        if not isinstance(p[key], str) or not HEX64.fullmatch(p[key]):
            raise bad(f"pack {key} {p[key]!r} is not a sha256 hex digest")
    for key in ("blob_size", "tar_size", "files"):
        if not _is_int(p[key]) or p[key] < 0:
            raise bad(f"pack {key} {p[key]!r} is not a size")
    group = p["group"]
    if not isinstance(group, str) or not group or len(group) > 200 or not group.isprintable():
        raise bad(f"pack group {group!r} is not a name")
    return PackInfo(**p)


def packs_dir(paths: VolumePaths) -> Path:
    return paths.root / "packs"


def blob_path(paths: VolumePaths, pack_id: str) -> Path:
    return packs_dir(paths) / "blobs" / f"{pack_id}.tar.zst"


def manifest_path(paths: VolumePaths, snapshot: str) -> Path:
    return packs_dir(paths) / "snapshots" / f"{snapshot}.json"


# ---------------------------------------------------------------- grouping


def startup_paths(
    record: dict[str, Entry], traced: Iterable[str], listed: Iterable[str] = (), *, hook: int = HOOK_VERSION
) -> list[str]:
    """The startup pack's members, in order: what the interpreter reads before any hook can see
    it (top-level files such as pyvenv.cfg, every symlink, site-packages' .pth files), then the
    traced files in trace order, each bytecode file with its source (an import stats the
    source and reads the .pyc), then the files directly inside each directory the start listed
    (a scan stats every entry it finds: transformers stats each model's modular_*.py)."""
    # a traced .pyc brings its source, which the import stats; not the other way: a traced .py
    # whose bytecode the start never read was read as text (transformers reads ~1,700 model
    # sources that way), and the trace records the bytecode of what it imported. A trace of the
    # first hook (`hook` 1) did not record the bytecode of modules imported before it ran
    # (by .pth files): there a traced .py still brings its bytecode.
    bytecode: dict[str, list[str]] = {}
    if hook < 2:
        for path, e in record.items():
            m = _PYC.match(path) if e.type == "f" else None
            if m:
                bytecode.setdefault(f"{m['dir']}/{m['stem']}.py", []).append(path)
    out: list[str] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        e = record.get(path)
        if e is not None and e.type != "d" and path not in seen:
            seen.add(path)
            out.append(path)

    for path, e in sorted(record.items()):
        parent = path.rpartition("/")[0]
        if e.type == "l" or "/" not in path or (path.endswith(".pth") and parent.endswith("/site-packages")):
            add(path)
    for path in traced:
        add(path)
        m = _PYC.match(path)
        if m:
            add(f"{m['dir']}/{m['stem']}.py")
        for pyc in sorted(bytecode.get(path, ())):
            add(pyc)
    dirs = set(listed)
    if dirs:  # their small files: a scan stats each entry; a big one costs one walk, its bytes more
        for path, e in sorted(record.items()):
            if e.type == "f" and e.size <= STARTUP_FILE_MAX and path.rpartition("/")[0] in dirs:
                add(path)
    return out


def startup_cap(record: dict[str, Entry], first: list[str]) -> int:
    """The largest file size the startup pack takes (see STARTUP_SHARE)."""
    budget = STARTUP_SHARE * sum(e.size for e in record.values() if e.type == "f")
    sizes = sorted(record[p].size for p in first)
    used = sum(s for s in sizes if s <= STARTUP_FILE_MAX)
    cap = STARTUP_FILE_MAX
    for size in (s for s in sizes if s > STARTUP_FILE_MAX):
        if used + size > budget:
            break
        used += size
        cap = size
    return cap


def group_entries(
    snapshot_dir: Path, record: dict[str, Entry], startup: Iterable[str] = ()
) -> dict[str, list[Entry]]:
    """Entries by pack: each distribution's files, the rest of the venv, and (with a start
    trace) the startup pack, whose files leave their distribution's pack and keep their order;
    its files above startup_cap go, in the same order, to the prefetch pack."""
    owners = owner_distributions(snapshot_dir)
    groups: dict[str, list[Entry]] = {}
    first = list(startup)
    cap = startup_cap(record, first)
    small = [record[p] for p in first if record[p].size <= cap]
    big = [record[p] for p in first if record[p].size > cap]
    if small:
        weight = [e.size + _FILE_COST for e in small]
        share = sum(weight) / STARTUP_CHUNKS
        chunk, acc = 1, 0
        for e, w in zip(small, weight, strict=True):
            if acc >= share * chunk and chunk < STARTUP_CHUNKS:
                chunk += 1
            acc += w
            groups.setdefault(STARTUP_GROUP if chunk == 1 else f"{STARTUP_GROUP}.{chunk}", []).append(e)
    if big:
        groups[PREFETCH_GROUP] = big
    taken = set(first)
    for path, e in record.items():
        if path in taken:
            continue
        group = owners.get(path)
        if group is None and e.type == "f":
            m = _PYC.match(path)
            if m:
                group = owners.get(f"{m['dir']}/{m['stem']}.py")
        if group is None or e.type == "d":
            group = VENV_GROUP
        groups.setdefault(group, []).append(e)
    return groups


def _tar_stream(snapshot_dir: Path, entries: Iterable[Entry], sink: Any, *, ordered: bool = False) -> None:
    """A deterministic tar of the entries: sorted (or in the given order, for the startup pack),
    owner 0, mtimes only on sources."""
    real_top = os.path.realpath(snapshot_dir)
    dirs_ok: set[str] = set()  # parent directories already found link-free (one realpath each)
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for e in entries if ordered else sorted(entries, key=lambda x: x.path):
            info = tarfile.TarInfo(e.path)
            info.mode = e.mode
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if e.type == "d":
                info.type = tarfile.DIRTYPE
                info.mtime = 0
                tar.addfile(info)
            elif e.type == "l":
                info.type = tarfile.SYMTYPE
                info.linkname = e.digest
                info.mtime = 0
                tar.addfile(info)
            else:
                with _open_recorded(snapshot_dir, real_top, dirs_ok, e) as (fh, st):
                    info.size = st.st_size
                    # only sources keep their mtime (their .pyc check it); everything else is 0
                    # so an unchanged distribution is byte-identical, i.e. the same pack, everywhere
                    info.mtime = int(st.st_mtime) if e.path.endswith(".py") else 0
                    tar.addfile(info, fh)


@contextlib.contextmanager
def _open_recorded(
    snapshot_dir: Path, real_top: str, dirs_ok: set[str], e: Entry
) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """Open a recorded file without following a link (a file swapped for a symlink to a secret
    outside the root must never reach a pack or a bucket) and check it is what the record says."""
    full = snapshot_dir / e.path
    parent = os.path.dirname(e.path)
    if parent not in dirs_ok:
        if os.path.realpath(full.parent) != os.path.normpath(os.path.join(real_top, parent)):
            raise _damaged(snapshot_dir, e, "is below a directory that is a link")
        dirs_ok.add(parent)
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | os.O_CLOEXEC)
    except OSError as exc:
        what = "is a link" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror})"
        raise _damaged(snapshot_dir, e, what) from None
    with open(fd, "rb", closefd=True) as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _damaged(snapshot_dir, e, "is not a regular file")
        if st.st_size != e.size:
            raise _damaged(snapshot_dir, e, f"has {st.st_size} bytes, the record says {e.size}")
        yield fh, st


def _damaged(snapshot_dir: Path, e: Entry, what: str) -> VerifyError:
    return VerifyError(
        f"{snapshot_dir.name}: {e.path} {what}; nothing was packed",
        hint=f"run `volenv verify {snapshot_dir.parent.parent.name} --level full --repair`",
    )


class _HashSink(io.RawIOBase):
    def __init__(self, inner: BinaryIO | None = None) -> None:
        self.h = hashlib.sha256()
        self.size = 0
        self.inner = inner

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.h.update(data)
        self.size += len(data)
        if self.inner is not None:
            self.inner.write(data)
        return len(data)


# ---------------------------------------------------------------- pack


def meta_entries(snapshot_dir: Path) -> list[Entry]:
    out = [Entry(META_DIR, "d", 0o755, 0, "-")]
    for name in sorted(os.listdir(snapshot_dir / META_DIR)):
        p = snapshot_dir / META_DIR / name
        st = p.lstat()  # a planted link to a file outside is not snapshot metadata
        if stat.S_ISREG(st.st_mode) and not name.startswith("."):
            out.append(Entry(f"{META_DIR}/{name}", "f", stat.S_IMODE(st.st_mode), st.st_size, "-"))
    return out


def need_zstandard() -> None:
    """zstandard is the 'packs' extra (it alone is a third of a core install): packing, push,
    pull and materialize say which extra to install instead of failing on the import."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        raise missing_extra("zstandard", "packs") from None


def pack_snapshot(paths: VolumePaths, snapshot_dir: Path) -> PackManifest:
    """Write the snapshot's packs (reusing blobs already present) and its pack manifest."""
    need_zstandard()
    import zstandard

    sid = snapshot_dir.name
    try:
        seal = check_seal(str(snapshot_dir), sid)
    except SealProblem as sp:
        raise VerifyError(f"cannot pack {sid}: {sp.detail}") from None
    record = load_record(snapshot_dir)
    from volenv.store.trace import load_trace

    trace = load_trace(snapshot_dir, seal)
    startup = startup_paths(record, trace.files, trace.listed, hook=trace.hook) if trace is not None else []
    groups = group_entries(snapshot_dir, record, startup)
    groups[META_GROUP] = meta_entries(snapshot_dir)
    blobs = packs_dir(paths) / "blobs"
    safe_mkdirs(blobs, paths.root)  # a linked packs/ or blobs/ is refused, never written through
    infos = []

    # the snapshot's files, as `sync` and `verify` count them (not dirs, links or the seal)
    def nfiles(group: str, entries: list[Entry]) -> int:
        return 0 if group == META_GROUP else sum(e.type == "f" for e in entries)

    files = sum(nfiles(g, entries) for g, entries in groups.items())
    progress = reporter.progress(
        f"packing {sid}", files, unit="files", summary=True, done_label=f"packed {sid}"
    )
    for group, entries in sorted(groups.items()):
        progress.advance(0)  # draws the bar before the first (maybe long) group
        sink = _HashSink()
        ordered = group == PREFETCH_GROUP or startup_chunk(group) is not None
        _tar_stream(snapshot_dir, entries, sink, ordered=ordered)  # pass 1: the content address
        pack_id = sink.h.hexdigest()
        dest = blob_path(paths, pack_id)
        if not _reusable(dest, pack_id, sink.size):
            tmp = dest.with_name(f".{dest.name}.{unique_suffix()}")
            try:
                with open(tmp, "wb") as raw:
                    cctx = zstandard.ZstdCompressor(level=LEVEL, threads=-1, write_checksum=True)
                    with cctx.stream_writer(raw, closefd=False) as zw:
                        _tar_stream(snapshot_dir, entries, zw, ordered=ordered)
                    raw.flush()
                    os.fsync(raw.fileno())
                os.rename(tmp, dest)
            finally:
                if tmp.exists():
                    tmp.unlink()
        infos.append(
            PackInfo(pack_id, group, _file_sha256(dest), dest.stat().st_size, sink.size, len(entries))
        )
        progress.advance(nfiles(group, entries), sink.size)
    manifest = PackManifest(
        PACK_SCHEMA,
        sid,
        seal["env"],
        seal["record_sha256"],
        seal.get("manifest_digest"),
        seal["fingerprint"],
        tuple(infos),
        time.time(),
        _file_sha256(snapshot_dir / META_DIR / "seal.json"),
    )
    out = manifest_path(paths, sid)
    safe_mkdirs(out.parent, paths.root)
    atomic_write_json(out, manifest.to_json(), root=paths.root)
    progress.close()
    return manifest


def _reusable(dest: Path, pack_id: str, tar_size: int) -> bool:
    """An existing blob is reused only when it verifies against its id (a blob left by an
    older volenv, or planted, is rewritten rather than trusted)."""
    if not dest.exists():
        return False
    try:
        verify_blob(dest, PackInfo(pack_id, "", "", 0, tar_size, 0))
    except VerifyError:
        return False
    return True


def _file_sha256(path: Path) -> str:
    from volenv.store.integrity import hash_file

    return hash_file(str(path))


def read_manifest(path: Path) -> PackManifest:
    import json

    try:
        return PackManifest.from_json(json.loads(path.read_bytes()))
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise DamagedRecord(f"pack manifest {path} is damaged: {exc}") from None


# ---------------------------------------------------------------- unpack


class _HashReader(io.RawIOBase):
    """Hashes what passes through; with a limit, refuses to pass more than that many bytes
    (a pack's declared tar size: a tiny zstd blob cannot expand into a volume-filling bomb)."""

    def __init__(self, inner: BinaryIO, limit: int | None = None, what: str = "") -> None:
        self.inner = inner
        self.h = hashlib.sha256()
        self.size = 0
        self.limit = limit
        self.what = what

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        want = len(b)
        if self.limit is not None:
            want = min(want, self.limit + 1 - self.size)
        data = self.inner.read(want) if want > 0 else b""
        n = len(data)
        self.size += n
        if self.limit is not None and self.size > self.limit:
            raise VerifyError(f"{self.what} expands past its declared size of {self.limit} bytes")
        b[:n] = data
        self.h.update(data)
        return n

    def drain(self) -> None:
        while self.read(1 << 16):
            pass


def _pack_name(info: PackInfo) -> str:
    return f"pack {info.id[:16]}… ({info.group})"


def _check_tar_digest(info: PackInfo, tar_hash: _HashReader) -> None:
    if tar_hash.size != info.tar_size or tar_hash.h.hexdigest() != info.id:
        raise VerifyError(
            f"{_pack_name(info)} is damaged: its content is {tar_hash.size} bytes with sha256"
            f" {tar_hash.h.hexdigest()[:16]}…, not the {info.tar_size} bytes its id names"
        )


def verify_blob(path: Path, info: PackInfo) -> None:
    """A blob is kept (or reused) under its id only when it is what the id names: its
    uncompressed tar hashes to the id, at exactly the declared size."""
    need_zstandard()
    import zstandard

    try:
        with open(path, "rb") as raw:
            zr = zstandard.ZstdDecompressor().stream_reader(raw)
            tar_hash = _HashReader(zr, info.tar_size, _pack_name(info))
            tar_hash.drain()
    except zstandard.ZstdError as exc:
        raise VerifyError(f"{_pack_name(info)} is damaged: {exc}") from None
    _check_tar_digest(info, tar_hash)


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


def pack_order(p: PackInfo) -> tuple[bool, int, bool, bool, str]:
    """Extraction order: metadata, the startup packs in order, the prefetch pack, the rest of
    the venv, distributions."""
    n = startup_chunk(p.group)
    return (
        p.group != META_GROUP,
        n if n is not None else 1 << 30,
        p.group != PREFETCH_GROUP,
        p.group != VENV_GROUP,
        p.group,
    )


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
                deferred = unchecked.setdefault(_pack_name(info), []) if self.record is None else None
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
            tar_hash = _HashReader(zr, info.tar_size, _pack_name(info))
            with tarfile.open(fileobj=tar_hash, mode="r|") as tar:
                for count, member in enumerate(tar, start=1):
                    if count > info.files:
                        raise VerifyError(f"{_pack_name(info)} holds more than {info.files} files")
                    if stop is not None and stop.is_set():
                        raise Stopped
                    _extract_member(tar, member, tree, record, info, seen, dir_modes, unchecked)
            tar_hash.drain()
    except (zstandard.ZstdError, tarfile.TarError, EOFError, ValueError, OverflowError) as exc:
        # ValueError/OverflowError: header values tarfile or os.utime cannot take (a pax
        # `GNU.sparse.realsize=abc`, `mtime=1e300`): a damaged pack like any other
        raise VerifyError(f"{_pack_name(info)} is damaged: {exc}") from None
    while raw.read(1 << 16):  # read any trailing bytes too
        pass
    # the tar's sha256 is the (signed) id: a blob compressed otherwise than the one the pack
    # list describes (another zstd level or version) is the same pack; its blob_sha256 is not
    # checked here, the id is
    _check_tar_digest(info, tar_hash)


def _packed_record(manifest: PackManifest, dest: Path) -> dict[str, Entry]:
    """The record and seal the metadata pack brought, checked against the pack manifest (whose
    signature, where there is one, the caller has checked)."""
    rec_sha = _file_sha256(dest / META_DIR / "record")
    if rec_sha != manifest.record_sha256:
        raise VerifyError("the packed record does not match the pack manifest")
    seal = dest / META_DIR / "seal.json"
    expected = manifest.seal_sha256
    if expected is not None and (not seal.is_file() or _file_sha256(seal) != expected):
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
        raise VerifyError(f"{_pack_name(info)}: unsafe member name {name!r}")
    if m.mode & (stat.S_ISUID | stat.S_ISGID):
        raise VerifyError(f"{_pack_name(info)}: member {name!r} is setuid/setgid")
    if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE):
        what = "a hard link" if m.islnk() else "a device, fifo or other special file"
        raise VerifyError(f"{_pack_name(info)}: member {name!r} is {what}")
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
            raise VerifyError(f"{_pack_name(info)}: member {name!r} does not match the snapshot's record")
        unchecked.append((name, kind, m.size, m.linkname))
    elif record is not None:
        _check_member(record, _pack_name(info), name, kind, m.size, m.linkname)
    elif not (
        (name == META_DIR and m.isdir())
        or (name.startswith(META_DIR + "/") and name.count("/") == 1 and m.isfile())
    ):
        raise VerifyError(f"metadata pack holds {name!r}")
    if not seen.add_new(name):
        raise VerifyError(f"{_pack_name(info)}: member {name!r} appears twice")
    mode = m.mode & 0o7777
    if m.isdir():
        tree.dir_fd(name, create=True)
        dir_modes.append((name, mode))
        return
    parent, _, base = name.rpartition("/")
    pfd = tree.dir_fd(parent, create=True)
    collides = VerifyError(f"{_pack_name(info)}: member {name!r} collides with an earlier one")
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
                raise VerifyError(f"{_pack_name(info)}: member {name!r} is cut short")
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
