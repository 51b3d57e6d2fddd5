"""`volenv push` / `volenv pull`: replicate sealed snapshots (and their models) between
volumes through object storage, as content-addressed packs.

Remote layout (under the URL's prefix):
    packs/<sha256 of tar>.tar.zst     one per distribution / venv rest / metadata
    snapshots/<snapshot>.json         the pack manifest (+ the models it needs)
    refs/<env>.json                   the env's current snapshot on the pushing volume
    models/<record>.json              model records;  model-files/<sha256>  their files
Payload before reference: packs, then the manifest, then the ref. A pull downloads only the
packs its volume lacks (verified by sha256 into packs/blobs), extracts into staging, verifies
every file at `full` against the record, and only then renames the snapshot into place.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import faults, store
from .errors import UsageError, VerifyError
from .fsutil import atomic_write_json, fsync_dir, remove_tree, unique_suffix
from .integrity import hash_file, verify_snapshot
from .locks import BuildLease
from .packs import PackInfo, PackManifest, blob_path, manifest_path, pack_snapshot, read_manifest, unpack
from .paths import VolumePaths, env_from_snapshot_id
from .remote import Remote, RemoteError, get_json
from .sealcheck import SealProblem, check_seal, interpreter_problem
from .ui import reporter


@dataclass(frozen=True)
class TransferResult:
    snapshot: str
    env: str
    url: str
    packs_total: int
    packs_sent: int  # push: uploaded; pull: downloaded
    bytes_sent: int
    models: int
    seconds: float
    action: str  # pushed | pulled | present


def _select_local(paths: VolumePaths, target: str) -> Path:
    return store.snapshot_for(paths, target)


def push(paths: VolumePaths, remote: Remote, target: str) -> TransferResult:
    t0 = time.perf_counter()
    snap = _select_local(paths, target)
    sid = snap.name
    try:
        seal = check_seal(str(snap), sid)
    except SealProblem as sp:
        raise VerifyError(f"refusing to push {sid}: {sp.detail}") from None
    try:
        manifest = read_manifest(manifest_path(paths, sid))
        if any(not blob_path(paths, p.id).exists() for p in manifest.packs):
            raise FileNotFoundError
    except FileNotFoundError:
        with reporter.step(f"packing {sid}"):
            manifest = pack_snapshot(paths, snap)
    sent = sent_bytes = 0
    total = sum(p.blob_size for p in manifest.packs)
    progress = reporter.progress(f"push {sid}", total)
    try:
        for info in manifest.packs:
            key = f"packs/{info.id}.tar.zst"
            if remote.exists(key):
                progress.update(info.blob_size)
                continue
            remote.put_file(key, blob_path(paths, info.id), progress)
            sent += 1
            sent_bytes += info.blob_size
    finally:
        progress.close()
    models = _push_models(paths, remote, seal)
    doc = manifest.to_json()
    doc["models"] = models
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
    )


def _push_models(paths: VolumePaths, remote: Remote, seal: dict[str, Any]) -> list[str]:
    """Records (and their files, content-addressed) of the models the snapshot's manifest names."""
    from .activate import model_files_dir, model_record_path
    from .models import read_model_record

    names = []
    root = str(paths.root)
    for m in seal.get("manifest", {}).get("models", []):
        rec_path = Path(model_record_path(root, m))
        rec = read_model_record(rec_path)
        if rec is None:
            continue
        base_dir = Path(model_files_dir(root, m))
        for f in rec["files"]:
            key = f"model-files/{f['sha256']}"
            if not remote.exists(key):
                remote.put_file(key, (base_dir / f["path"]).resolve())
        remote.put_bytes(f"models/{rec_path.name}", rec_path.read_bytes())
        names.append(rec_path.name)
    return names


def _resolve_remote(remote: Remote, target: str | None) -> str:
    if target is None:
        raise UsageError("pull: name an ENV or a SNAPSHOT to pull")
    try:
        env_from_snapshot_id(target)
        return target
    except ValueError:
        pass
    ref = get_json(remote, f"refs/{target}.json")
    if ref is None:
        raise UsageError(f"{remote.url} has no env '{target}' (see `volenv list --remote {remote.url}`)")
    return str(ref["snapshot"])


def pull(
    paths: VolumePaths, remote: Remote, target: str | None, *, switch: bool = True, lock_timeout: float = 900
) -> TransferResult:
    t0 = time.perf_counter()
    sid = _resolve_remote(remote, target)
    doc = get_json(remote, f"snapshots/{sid}.json")
    if doc is None:
        raise UsageError(f"{remote.url} has no snapshot {sid}")
    manifest = PackManifest.from_json(doc)
    problem = interpreter_problem(manifest.fingerprint)
    if problem:
        raise VerifyError(
            f"refusing to pull {sid}: {problem}", hint="pull onto a volume whose image has that interpreter"
        )
    env = manifest.env
    store.open_volume(paths, create=True)
    store.ensure_env_dirs(paths, env)
    target_dir = paths.snapshot(env, sid)
    with BuildLease(paths, env, timeout=lock_timeout, say=reporter.info) as lease:
        from .build import clean_stale_staging

        clean_stale_staging(paths, env)
        if target_dir.exists():
            try:
                check_seal(str(target_dir), sid)
                models = _pull_models(paths, remote, doc.get("models", []))
                _publish(paths, manifest, switch)
                return TransferResult(
                    sid,
                    env,
                    remote.url,
                    len(manifest.packs),
                    0,
                    0,
                    models,
                    time.perf_counter() - t0,
                    "present",
                )
            except SealProblem:
                raise VerifyError(
                    f"{target_dir} exists but is damaged; `volenv verify --repair` it first"
                ) from None
        fetched, fetched_bytes = _fetch_packs(paths, remote, manifest)
        faults.point("pull-unpack")
        holder = paths.staging / f"{sid}.{unique_suffix()}"
        holder.mkdir(parents=True)
        staging = holder / sid
        try:
            unpack(manifest, lambda i: open(blob_path(paths, i.id), "rb"), staging)  # noqa: SIM115
            faults.point("pull-verify")
            report = verify_snapshot(staging, "full")
            if not report.ok:
                raise VerifyError(f"pulled {sid} does not verify: {report.summary()}")
            lease.fence()
            faults.point("pull-commit")
            os.rename(staging, target_dir)
            fsync_dir(target_dir.parent)
        finally:
            remove_tree(holder, paths.root)
        manifest_path(paths, sid).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(manifest_path(paths, sid), manifest.to_json())
        models = _pull_models(paths, remote, doc.get("models", []))
        _publish(paths, manifest, switch)
    store.log_event(paths, env, "pull", snapshot=sid, url=remote.url, packs_fetched=fetched)
    return TransferResult(
        sid,
        env,
        remote.url,
        len(manifest.packs),
        fetched,
        fetched_bytes,
        models,
        time.perf_counter() - t0,
        "pulled",
    )


def _fetch_packs(paths: VolumePaths, remote: Remote, manifest: PackManifest) -> tuple[int, int]:
    """Download the packs this volume lacks into packs/blobs, each verified before it is kept."""
    fetched = fetched_bytes = 0
    need = [p for p in manifest.packs if not blob_path(paths, p.id).exists()]
    progress = reporter.progress(f"pull {manifest.snapshot}", sum(p.blob_size for p in need))
    try:
        for info in need:
            _download_blob(paths, remote, info, progress)
            fetched += 1
            fetched_bytes += info.blob_size
    finally:
        progress.close()
    return fetched, fetched_bytes


def _download_verified(remote: Remote, key: str, dest: Path, sha256: str, progress: Any = None) -> str | None:
    """Copy a remote object to dest through a unique temp file; publish it only when its
    sha256 matches. Returns None when published, else the digest it had (nothing kept)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{unique_suffix()}")
    try:
        with remote.open(key) as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
                if progress is not None:
                    progress.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        digest = hash_file(str(tmp))
        if digest != sha256:
            return digest
        os.replace(tmp, dest)
        return None
    finally:
        if tmp.exists():
            tmp.unlink()


def _download_blob(paths: VolumePaths, remote: Remote, info: PackInfo, progress: Any) -> None:
    bad = _download_verified(
        remote, f"packs/{info.id}.tar.zst", blob_path(paths, info.id), info.blob_sha256, progress
    )
    if bad is not None:
        raise VerifyError(
            f"pack {info.id[:16]}… ({info.group}) from the bucket is damaged:"
            f" sha256 {bad[:16]}…, expected {info.blob_sha256[:16]}…; nothing was installed"
        )


def _pull_models(paths: VolumePaths, remote: Remote, names: list[str]) -> int:
    from .activate import model_files_dir
    from .fsutil import atomic_write_bytes

    count = 0
    records = paths.models / "records"
    records.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (records / name).exists():
            count += 1
            continue
        raw = remote.get_bytes(f"models/{name}")
        if raw is None:
            raise RemoteError(f"{remote.url}: model record {name} is missing")
        rec = json.loads(raw)
        base_dir = Path(model_files_dir(str(paths.root), rec["spec"]))
        for f in rec["files"]:
            dest = base_dir / f["path"]
            if dest.exists() and hash_file(str(dest)) == f["sha256"]:
                continue
            if _download_verified(remote, f"model-files/{f['sha256']}", dest, f["sha256"]) is not None:
                from .errors import ModelError

                raise ModelError(f"model file {f['path']} of {name} from {remote.url} fails its sha256")
        atomic_write_bytes(records / name, raw)  # the record last: now the model is present
        count += 1
    return count


def _publish(paths: VolumePaths, manifest: PackManifest, switch: bool) -> None:
    env, sid = manifest.env, manifest.snapshot
    if manifest.manifest_digest:
        store.write_index(paths, env, manifest.manifest_digest, sid)
    if switch and store.read_current(paths, env) != sid:
        store.switch_current(paths, env, sid, manifest.manifest_digest, "pull")


@dataclass(frozen=True)
class RemoteListing:
    url: str
    envs: dict[str, str]
    snapshots: tuple[dict[str, Any], ...]
    packs: int
    models: tuple[str, ...]


def list_remote(remote: Remote) -> RemoteListing:
    envs = {}
    for key in remote.list("refs/"):
        ref = get_json(remote, key)
        if ref is not None:
            envs[key.rsplit("/", 1)[1].removesuffix(".json")] = str(ref["snapshot"])
    snaps = []
    for key in remote.list("snapshots/"):
        doc = get_json(remote, key)
        if doc is None:
            continue
        snaps.append(
            {
                "snapshot": doc["snapshot"],
                "env": doc["env"],
                "packs": len(doc["packs"]),
                "bytes": sum(p["blob_size"] for p in doc["packs"]),
                "python": f"{doc['fingerprint'].get('implementation')} {doc['fingerprint'].get('version')}",
                "created": doc.get("created"),
            }
        )
    return RemoteListing(
        remote.url,
        envs,
        tuple(snaps),
        len(remote.list("packs/")),
        tuple(k.rsplit("/", 1)[1] for k in remote.list("models/")),
    )
