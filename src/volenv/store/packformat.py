"""The pack format (writing: `packwrite`; reading: `packread`). Packs: a sealed snapshot as a few
content-addressed, zstd-compressed tar streams — one per installed distribution (its RECORD
files plus their bytecode), one for the rest of the venv, one for the snapshot's metadata
(.volenv). The same format travels to object storage (push/pull) and is extracted onto a
container's local disk (materialize).

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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from volenv.base.errors import DamagedRecord, VerifyError, missing_extra
from volenv.store.paths import VolumePaths
from volenv.store.volio import open_regular

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
FILE_COST = 64 << 10  # what creating one file costs, as bytes written


def startup_chunk(group: str) -> int | None:
    """1 for `_startup`, n for `_startup.n`; None for any other group."""
    if group == STARTUP_GROUP:
        return 1
    head, dot, n = group.partition(".")
    if head == STARTUP_GROUP and dot and n.isdigit() and n[0] != "0" and int(n) > 1:
        return int(n)
    return None


PYC = re.compile(r"^(?P<dir>.*)/__pycache__/(?P<stem>[^/.]+)\.[^/]+\.pyc$")


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
        from volenv.manifest.schema import HEX64, is_env_name, is_snapshot_id

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
    from volenv.manifest.schema import HEX64

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


def need_zstandard() -> None:
    """zstandard is the 'packs' extra (it alone is a third of a core install): packing, push,
    pull and materialize say which extra to install instead of failing on the import."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        raise missing_extra("zstandard", "packs") from None


def file_sha256(path: Path) -> str:
    from volenv.store.integrity import hash_file

    return hash_file(str(path))


def read_manifest(path: Path) -> PackManifest:
    import json

    from volenv.base.leanjson import NOT_A_RECORD, read_record_bytes

    try:
        return PackManifest.from_json(json.loads(read_record_bytes(path, 64 << 20)))
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno not in NOT_A_RECORD:
            raise
        raise DamagedRecord(f"pack manifest {path} is damaged: not a regular file") from None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise DamagedRecord(f"pack manifest {path} is damaged: {exc}") from None


class HashReader(io.RawIOBase):
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


def pack_name(info: PackInfo) -> str:
    return f"pack {info.id[:16]}… ({info.group})"


def check_tar_digest(info: PackInfo, tar_hash: HashReader) -> None:
    if tar_hash.size != info.tar_size or tar_hash.h.hexdigest() != info.id:
        raise VerifyError(
            f"{pack_name(info)} is damaged: its content is {tar_hash.size} bytes with sha256"
            f" {tar_hash.h.hexdigest()[:16]}…, not the {info.tar_size} bytes its id names"
        )


def verify_blob(path: Path, info: PackInfo) -> None:
    """A blob is kept (or reused) under its id only when it is what the id names: its
    uncompressed tar hashes to the id, at exactly the declared size."""
    need_zstandard()
    import zstandard

    try:
        with open_regular(path) as raw:
            zr = zstandard.ZstdDecompressor().stream_reader(raw)
            tar_hash = HashReader(zr, info.tar_size, pack_name(info))
            tar_hash.drain()
    except zstandard.ZstdError as exc:
        raise VerifyError(f"{pack_name(info)} is damaged: {exc}") from None
    check_tar_digest(info, tar_hash)


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
