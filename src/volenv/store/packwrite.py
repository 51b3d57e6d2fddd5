"""Packing a sealed snapshot: its record grouped into packs (one per distribution, the venv's rest,
the metadata, and the start trace's files first), each a tar hashed while it streams into zstd,
and the pack manifest written beside the snapshot (`store/packformat.py` has the format)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import stat
import tarfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from volenv.base.errors import VerifyError
from volenv.base.ui import reporter
from volenv.store.integrity import Entry, load_record, owner_distributions
from volenv.store.packformat import (
    FILE_COST,
    LEVEL,
    META_GROUP,
    PACK_SCHEMA,
    PREFETCH_GROUP,
    PYC,
    STARTUP_CHUNKS,
    STARTUP_FILE_MAX,
    STARTUP_GROUP,
    STARTUP_SHARE,
    VENV_GROUP,
    PackInfo,
    PackManifest,
    blob_path,
    file_sha256,
    manifest_path,
    need_zstandard,
    packs_dir,
    startup_chunk,
    verify_blob,
)
from volenv.store.paths import VolumePaths
from volenv.store.rootfind import fix_command
from volenv.store.sealcheck import META_DIR, SealProblem, check_seal
from volenv.store.trace import HOOK_VERSION
from volenv.store.volio import atomic_write_json, real_dir_below, safe_mkdirs, streamed_write


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
            m = PYC.match(path) if e.type == "f" else None
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
        m = PYC.match(path)
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
        weight = [e.size + FILE_COST for e in small]
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
            m = PYC.match(path)
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
    root, env = str(snapshot_dir.parents[3]), snapshot_dir.parent.parent.name
    repair = fix_command(root, "verify", env, "--level", "full", "--repair")
    return VerifyError(f"{snapshot_dir.name}: {e.path} {what}; nothing was packed", hint=f"run `{repair}`")


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


def meta_entries(snapshot_dir: Path) -> list[Entry]:
    out = [Entry(META_DIR, "d", 0o755, 0, "-")]
    for name in sorted(os.listdir(snapshot_dir / META_DIR)):
        p = snapshot_dir / META_DIR / name
        st = p.lstat()  # a planted link to a file outside is not snapshot metadata
        if stat.S_ISREG(st.st_mode) and not name.startswith("."):
            out.append(Entry(f"{META_DIR}/{name}", "f", stat.S_IMODE(st.st_mode), st.st_size, "-"))
    return out


def pack_snapshot(paths: VolumePaths, snapshot_dir: Path) -> PackManifest:
    """Write the snapshot's packs (reusing blobs already present) and its pack manifest."""
    need_zstandard()
    import zstandard

    sid = snapshot_dir.name
    if not real_dir_below(paths.root, snapshot_dir):  # a planted link would pack an outside tree
        raise VerifyError(
            f"cannot pack {sid}: {snapshot_dir} is a link (or below one) inside the root",
            hint="remove the link: volenv never makes one there",
        )
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
            with streamed_write(dest, paths.root) as raw:  # a linked packs/ dir is refused
                cctx = zstandard.ZstdCompressor(level=LEVEL, threads=-1, write_checksum=True)
                with cctx.stream_writer(raw, closefd=False) as zw:
                    _tar_stream(snapshot_dir, entries, zw, ordered=ordered)
        infos.append(
            PackInfo(pack_id, group, file_sha256(dest), dest.stat().st_size, sink.size, len(entries))
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
        file_sha256(snapshot_dir / META_DIR / "seal.json"),
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
