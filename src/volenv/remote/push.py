"""`volenv push`: a sealed snapshot's packs, then its pack manifest (signed), then the env's ref,
and its models' records and files: payload before reference, each object checked before it
goes (`replicate` has the remote layout)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from volenv.base import faults
from volenv.base.errors import VerifyError
from volenv.base.leanjson import read_record_bytes
from volenv.base.streams import AdaptiveStreams
from volenv.base.ui import human_bytes, reporter
from volenv.remote.replicate import TransferResult
from volenv.remote.signing import SigningKey
from volenv.store import pointers as store
from volenv.store.integrity import hash_file
from volenv.store.packformat import (
    PackInfo,
    PackManifest,
    blob_path,
    manifest_path,
    read_manifest,
    verify_blob,
)
from volenv.store.packwrite import pack_snapshot
from volenv.store.paths import VolumePaths
from volenv.store.rootfind import fix_command
from volenv.store.sealcheck import META_DIR, SEAL_NAME, SealProblem, check_seal
from volenv.store.volio import real_dir_below
from volenv.transfer.bucketput import Outgoing, check_all, put_all, stamp_of
from volenv.transfer.buckets import Remote


def _select_local(paths: VolumePaths, target: str) -> Path:
    return store.snapshot_for(paths, target)


def push(paths: VolumePaths, remote: Remote, target: str, key: SigningKey | None = None) -> TransferResult:
    t0 = time.perf_counter()
    streams = AdaptiveStreams()  # a bad VOLENV_STREAMS is exit 2 before anything is packed
    snap = _select_local(paths, target)
    sid = snap.name
    try:
        seal = check_seal(str(snap), sid)
    except SealProblem as sp:
        raise VerifyError(f"refusing to push {sid}: {sp.detail}") from None
    seal_sha = hash_file(str(snap / META_DIR / SEAL_NAME))
    try:
        manifest = read_manifest(manifest_path(paths, sid))
        if (
            manifest.snapshot != sid
            or manifest.record_sha256 != seal["record_sha256"]
            or manifest.seal_sha256 != seal_sha
            or any(not blob_path(paths, p.id).exists() for p in manifest.packs)
        ):
            raise FileNotFoundError
    except (FileNotFoundError, VerifyError):
        with reporter.step(f"packing {sid}"):
            manifest = pack_snapshot(paths, snap)
    outgoing = _packs_outgoing(paths, remote, manifest)
    model_files, records = _models_outgoing(paths, remote, seal)
    todo = outgoing + model_files
    with reporter.progress(f"push {sid}", sum(o.size for o in todo)) as progress:
        sent_bytes = put_all(remote, todo, streams, progress)
    reporter.detail(
        f"push: {len(todo)} objects, {human_bytes(sent_bytes)}, {streams.current} streams at the end"
    )
    sent = len(outgoing)
    models = _put_model_records(remote, records)
    doc = manifest.to_json()
    doc["models"] = sorted(models)
    doc["model_records"] = models
    if key is not None:
        doc["signatures"] = [key.sign(doc)]
    else:
        reporter.warn(
            f"pushing {sid} unsigned (no --signing-key or VOLENV_SIGNING_KEY):"
            " pulls will refuse it unless given --trust-unsigned"
        )
    faults.point("push-manifest")  # every pack and model object is complete: now the document
    remote.put_bytes(f"snapshots/{sid}.json", json.dumps(doc, sort_keys=True).encode())
    remote.put_bytes(
        f"refs/{manifest.env}.json",
        json.dumps({"schema": 1, "snapshot": sid, "time": time.time()}).encode(),
    )
    store.log_event(paths, manifest.env, "push", snapshot=sid, url=remote.url, packs_sent=sent)
    return TransferResult(
        sid,
        manifest.env,
        remote.url,
        len(manifest.packs),
        sent,
        sent_bytes,
        len(models),
        time.perf_counter() - t0,
        "pushed",
        key.name if key is not None else None,
    )


def _packs_outgoing(paths: VolumePaths, remote: Remote, manifest: PackManifest) -> list[Outgoing]:
    """The packs the bucket lacks (presence is what push asks: an id's object may be another
    compression of the same tar), each checked to be its id first: never upload a blob that is
    not its id. Asked and checked several at a time."""
    found: dict[str, Outgoing] = {}
    lock = threading.Lock()

    def check(info: PackInfo) -> Callable[[], None]:
        def run() -> None:
            key = f"packs/{info.id}.tar.zst"
            if remote.exists(key):
                return
            path = blob_path(paths, info.id)
            st = os.stat(path, follow_symlinks=False)
            verify_blob(path, info)
            with lock:
                found[info.id] = Outgoing(key, path, stamp_of(st), f"pack {info.id[:16]}… ({info.group})")

        return run

    check_all([check(i) for i in manifest.packs])
    return [found[i.id] for i in manifest.packs if i.id in found]


def _models_outgoing(
    paths: VolumePaths, remote: Remote, seal: dict[str, Any]
) -> tuple[list[Outgoing], list[Path]]:
    """The files (content-addressed) of the models the snapshot's manifest names that the
    bucket lacks, each checked against its recorded sha256; and those models' records."""
    from volenv.models.cache import read_model_record
    from volenv.store.modelpaths import model_files_dir, model_record_path

    root = str(paths.root)
    records: list[Path] = []
    checks: list[Callable[[], None]] = []
    found: dict[str, Outgoing] = {}
    lock = threading.Lock()

    def check(path: Path, f: dict[str, Any], record: str) -> Callable[[], None]:
        def run() -> None:
            key = f"model-files/{f['sha256']}"
            if key in found or remote.exists(key):
                return
            real, st = _check_model_file(paths, path, f, record)
            with lock:
                found[key] = Outgoing(key, real, stamp_of(st), f"model file {path.name} ({record})")

        return run

    order: list[str] = []
    for m in seal.get("manifest", {}).get("models", []):
        rec_path = Path(model_record_path(root, m))
        rec = read_model_record(rec_path)
        if rec is None:
            continue
        base_dir = Path(model_files_dir(root, m))
        for f in rec["files"]:
            key = f"model-files/{f['sha256']}"
            if key not in order:
                order.append(key)
                checks.append(check(base_dir / f["path"], f, rec_path.name))
        records.append(rec_path)
    check_all(checks)
    return [found[k] for k in order if k in found], records


def _put_model_records(remote: Remote, records: list[Path]) -> dict[str, str]:
    """Each model record, after all its files are in the bucket (a record there means its
    model is); returns record name -> sha256 of its bytes (signed with the pack manifest)."""
    names: dict[str, str] = {}
    for rec_path in records:
        raw = read_record_bytes(rec_path, 64 << 20)
        remote.put_bytes(f"models/{rec_path.name}", raw)
        names[rec_path.name] = hashlib.sha256(raw).hexdigest()
    return names


def _check_model_file(
    paths: VolumePaths, path: Path, f: dict[str, Any], record: str
) -> tuple[Path, os.stat_result]:
    """A recorded model file checked for upload: inside the volume's models directory (a Hub
    snapshot's links into its blobs are fine, a link out of the root is not), a regular file,
    and hashing to its recorded sha256; returns its real path and its identity then (the upload
    refuses it if it is not that same unchanged file). Push skips keys the bucket has, so one
    wrong object under a sha256 key would poison every later pull: nothing unverified is uploaded."""

    def damaged(why: str) -> VerifyError:
        return VerifyError(
            f"model file {path} ({record}) {why}; nothing of it was pushed",
            hint=f"run `{fix_command(str(paths.root), 'models', 'verify', '--level', 'full')}` and fetch the"
            " model again",
        )

    if not real_dir_below(paths.root, paths.models):  # realpath(models) is outside then
        raise damaged("is below a models/ directory that is a link")
    top = os.path.realpath(paths.models)
    real = os.path.realpath(path)
    if os.path.commonpath([top, real]) != top:
        raise damaged("resolves outside the volume's models directory")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise damaged(f"cannot be read ({exc.strerror})") from None
    with open(fd, "rb", closefd=True) as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise damaged("is not a regular file")
        h = hashlib.sha256()
        while chunk := fh.read(1 << 20):
            h.update(chunk)
        if h.hexdigest() != f["sha256"]:
            raise damaged("does not match its recorded sha256")
    return Path(real), st
