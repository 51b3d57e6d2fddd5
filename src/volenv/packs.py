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

import hashlib
import io
import os
import re
import stat
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import DamagedRecord, VerifyError, VolenvError
from .fsutil import atomic_write_json, fsync_dir, unique_suffix
from .integrity import Entry, load_record, owner_distributions
from .paths import VolumePaths
from .sealcheck import META_DIR, SealProblem, check_seal

PACK_SCHEMA = 1
LEVEL = int(os.environ.get("VOLENV_ZSTD_LEVEL", "3"))
META_GROUP = "_meta"
VENV_GROUP = "_venv"
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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> PackManifest:
        if not isinstance(data, dict) or data.get("schema", 0) > PACK_SCHEMA:
            raise VolenvError("pack manifest is damaged or newer than this volenv")
        return PackManifest(
            data["schema"],
            data["snapshot"],
            data["env"],
            data["record_sha256"],
            data.get("manifest_digest"),
            data["fingerprint"],
            tuple(PackInfo(**p) for p in data["packs"]),
            float(data.get("created", 0)),
        )


def packs_dir(paths: VolumePaths) -> Path:
    return paths.root / "packs"


def blob_path(paths: VolumePaths, pack_id: str) -> Path:
    return packs_dir(paths) / "blobs" / f"{pack_id}.tar.zst"


def manifest_path(paths: VolumePaths, snapshot: str) -> Path:
    return packs_dir(paths) / "snapshots" / f"{snapshot}.json"


# ---------------------------------------------------------------- grouping


def group_entries(snapshot_dir: Path, record: dict[str, Entry]) -> dict[str, list[Entry]]:
    owners = owner_distributions(snapshot_dir)
    groups: dict[str, list[Entry]] = {}
    for path, e in record.items():
        group = owners.get(path)
        if group is None and e.type == "f":
            m = _PYC.match(path)
            if m:
                group = owners.get(f"{m['dir']}/{m['stem']}.py")
        if group is None or e.type == "d":
            group = VENV_GROUP
        groups.setdefault(group, []).append(e)
    return groups


def _tar_stream(snapshot_dir: Path, entries: Iterable[Entry], sink: Any) -> None:
    """A deterministic tar of the entries: sorted, owner 0, mtimes only on sources."""
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for e in sorted(entries, key=lambda x: x.path):
            full = snapshot_dir / e.path
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
                st = os.lstat(full)
                info.size = st.st_size
                # only sources keep their mtime (their .pyc check it); everything else is 0 so
                # an unchanged distribution is byte-identical, i.e. the same pack, everywhere
                info.mtime = int(st.st_mtime) if e.path.endswith(".py") else 0
                with open(full, "rb") as fh:
                    tar.addfile(info, fh)


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
        if p.is_file() and not name.startswith("."):
            st = p.stat()
            out.append(Entry(f"{META_DIR}/{name}", "f", stat.S_IMODE(st.st_mode), st.st_size, "-"))
    return out


def pack_snapshot(paths: VolumePaths, snapshot_dir: Path) -> PackManifest:
    """Write the snapshot's packs (reusing blobs already present) and its pack manifest."""
    import zstandard

    sid = snapshot_dir.name
    try:
        seal = check_seal(str(snapshot_dir), sid)
    except SealProblem as sp:
        raise VerifyError(f"cannot pack {sid}: {sp.detail}") from None
    record = load_record(snapshot_dir)
    groups = group_entries(snapshot_dir, record)
    groups[META_GROUP] = meta_entries(snapshot_dir)
    blobs = packs_dir(paths) / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    infos = []
    for group, entries in sorted(groups.items()):
        sink = _HashSink()
        _tar_stream(snapshot_dir, entries, sink)  # pass 1: the content address
        pack_id = sink.h.hexdigest()
        dest = blob_path(paths, pack_id)
        if not dest.exists():
            tmp = dest.with_name(f".{dest.name}.{unique_suffix()}")
            try:
                with open(tmp, "wb") as raw:
                    cctx = zstandard.ZstdCompressor(level=LEVEL, threads=-1, write_checksum=True)
                    with cctx.stream_writer(raw, closefd=False) as zw:
                        _tar_stream(snapshot_dir, entries, zw)
                    raw.flush()
                    os.fsync(raw.fileno())
                os.rename(tmp, dest)
            finally:
                if tmp.exists():
                    tmp.unlink()
        infos.append(
            PackInfo(pack_id, group, _file_sha256(dest), dest.stat().st_size, sink.size, len(entries))
        )
    manifest = PackManifest(
        PACK_SCHEMA,
        sid,
        seal["env"],
        seal["record_sha256"],
        seal.get("manifest_digest"),
        seal["fingerprint"],
        tuple(infos),
        time.time(),
    )
    out = manifest_path(paths, sid)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, manifest.to_json())
    return manifest


def _file_sha256(path: Path) -> str:
    from .integrity import hash_file

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
    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.h = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.inner.read(len(b))
        n = len(data)
        b[:n] = data
        self.h.update(data)
        return n


def unpack(
    manifest: PackManifest,
    open_blob: Callable[[PackInfo], BinaryIO],
    dest: Path,
    *,
    record: dict[str, Entry] | None = None,
) -> None:
    """Extract every pack into dest (which must not exist yet as a snapshot): meta first, then
    the rest checked against the record it carries; blob hashes checked as they stream."""
    import zstandard

    dest.mkdir(parents=True, exist_ok=False)
    order = sorted(manifest.packs, key=lambda p: (p.group != META_GROUP, p.group != VENV_GROUP, p.group))
    seen: set[str] = set()
    dir_modes: list[tuple[Path, int]] = []
    for info in order:
        allowed = None if info.group == META_GROUP else record
        with open_blob(info) as raw:
            hr = _HashReader(raw)
            dctx = zstandard.ZstdDecompressor()
            try:
                with dctx.stream_reader(hr) as zr, tarfile.open(fileobj=zr, mode="r|") as tar:  # type: ignore[arg-type]
                    for member in tar:
                        _extract_member(tar, member, dest, allowed, info, seen, dir_modes)
            except (zstandard.ZstdError, tarfile.TarError, EOFError) as exc:
                raise VerifyError(f"pack {info.id[:16]}… ({info.group}) is damaged: {exc}") from None
            while hr.read(1 << 16):  # hash any trailing bytes too
                pass
        if hr.h.hexdigest() != info.blob_sha256:
            raise VerifyError(
                f"pack {info.id[:16]}… ({info.group}) is damaged: blob sha256 {hr.h.hexdigest()[:16]}…,"
                f" expected {info.blob_sha256[:16]}…"
            )
        if info.group == META_GROUP and record is None:
            record = load_record(dest)
            rec_sha = _file_sha256(dest / META_DIR / "record")
            if rec_sha != manifest.record_sha256:
                raise VerifyError("the packed record does not match the pack manifest")
    assert record is not None
    missing = [p for p in record if p not in seen]
    if missing:
        raise VerifyError(f"packs lack {len(missing)} recorded entries (e.g. {missing[0]})")
    for d, mode in sorted(dir_modes, key=lambda x: len(str(x[0])), reverse=True):
        os.chmod(d, mode)
    fsync_dir(dest)


def _extract_member(
    tar: tarfile.TarFile,
    m: tarfile.TarInfo,
    dest: Path,
    record: dict[str, Entry] | None,
    info: PackInfo,
    seen: set[str],
    dir_modes: list[tuple[Path, int]],
) -> None:
    name = m.name
    if name.startswith("/") or ".." in name.split("/") or not name:
        raise VerifyError(f"pack {info.group}: unsafe member name {name!r}")
    if record is not None:
        e = record.get(name)
        kind = "d" if m.isdir() else "l" if m.issym() else "f" if m.isfile() else "?"
        if (
            e is None
            or e.type != kind
            or (kind == "l" and m.linkname != e.digest)
            or (kind == "f" and m.size != e.size)
        ):
            raise VerifyError(f"pack {info.group}: member {name!r} does not match the snapshot's record")
        seen.add(name)
    elif not name.startswith(META_DIR):
        raise VerifyError(f"metadata pack holds {name!r}")
    target = dest / name
    if m.isdir():
        target.mkdir(parents=True, exist_ok=True)
        dir_modes.append((target, m.mode))
        os.chmod(target, 0o755)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if m.issym():
        os.symlink(m.linkname, target)
        return
    if not m.isfile():
        raise VerifyError(f"pack {info.group}: unsupported member type for {name!r}")
    src = tar.extractfile(m)
    assert src is not None
    with open(target, "xb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    os.chmod(target, m.mode)
    os.utime(target, (m.mtime, m.mtime))
