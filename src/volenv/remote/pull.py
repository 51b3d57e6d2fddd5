"""`volenv pull`: only the packs this volume lacks, several parts at a time, each extracted into
staging as soon as it is whole (checked against its id), every file verified at `full` against
the signed record, and only then the snapshot renamed into place; its models likewise."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from volenv.base import faults
from volenv.base.errors import UsageError, VerifyError
from volenv.base.iopool import Part
from volenv.base.leanjson import loads as json_loads  # RecursionError is ValueError there
from volenv.base.streams import AdaptiveStreams
from volenv.base.ui import Progress, human_bytes, reporter
from volenv.remote.replicate import TransferResult, believe, model_names, resolve_remote
from volenv.remote.signing import Trust
from volenv.store import pointers as store
from volenv.store.integrity import hash_file, verify_snapshot
from volenv.store.locks import BuildLease
from volenv.store.packformat import (
    META_GROUP,
    PackInfo,
    PackManifest,
    blob_path,
    manifest_path,
    pack_order,
)
from volenv.store.packread import Unpacker, _Seen
from volenv.store.paths import VolumePaths
from volenv.store.rootfind import fix_command
from volenv.store.sealcheck import SealProblem, check_seal, interpreter_problem
from volenv.store.volio import (
    atomic_write_json,
    fsync_dir,
    open_regular,
    remove_tree,
    safe_mkdirs,
    safe_rename,
    unique_suffix,
)
from volenv.transfer.bucketget import RANGED_FROM, Wanted, fetch_all
from volenv.transfer.buckets import Remote, RemoteError, get_json, printable


def pull(
    paths: VolumePaths,
    remote: Remote,
    target: str | None,
    *,
    trust: Trust,
    switch: bool = True,
    lock_timeout: float = 900,
) -> TransferResult:
    t0 = time.perf_counter()
    sid, expected_env = resolve_remote(remote, target)
    doc = get_json(remote, f"snapshots/{sid}.json")
    if doc is None:
        raise UsageError(f"{remote.url} has no snapshot {sid}")
    manifest, signer = believe(doc, sid, expected_env, trust)
    models_wanted = model_names(doc)
    if signer is not None and None in models_wanted.values():
        raise VerifyError(f"{sid}: the signed manifest names a model record without its digest")
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
        from volenv.build.staging import clean_stale_staging

        clean_stale_staging(paths, env)
        if target_dir.exists():
            try:
                check_seal(str(target_dir), sid)
                models = _pull_models(paths, remote, models_wanted)
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
                    signer,
                )
            except SealProblem:
                raise VerifyError(
                    f"{target_dir} exists but is damaged; `volenv verify --repair` it first"
                ) from None
        streams = AdaptiveStreams()
        faults.point("pull-unpack")
        holder = paths.staging / f"{sid}.{unique_suffix()}"
        safe_mkdirs(holder, paths.root)
        staging = holder / sid
        try:
            fetched, fetched_bytes = _fetch_and_unpack(paths, remote, manifest, staging, streams)
            faults.point("pull-verify")
            _check_pulled_seal(staging, manifest)
            report = verify_snapshot(staging, "full")
            if not report.ok:
                raise VerifyError(f"pulled {sid} does not verify: {report.summary()}")
            lease.fence()
            faults.point("pull-commit")
            safe_rename(staging, target_dir, paths.root)  # a linked snapshots/ dir is refused
            fsync_dir(target_dir.parent)
        finally:
            remove_tree(holder, paths.root)
        safe_mkdirs(manifest_path(paths, sid).parent, paths.root)
        atomic_write_json(manifest_path(paths, sid), manifest.to_json(), root=paths.root)
        models = _pull_models(paths, remote, models_wanted, streams)
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
        signer,
    )


def _fetch_and_unpack(
    paths: VolumePaths, remote: Remote, manifest: PackManifest, staging: Path, streams: AdaptiveStreams
) -> tuple[int, int]:
    """Download the packs this volume lacks, in parallel parts (a large pack in ranges), and
    extract each into staging as soon as it is whole: that extraction is its check (the tar
    must hash to the id as it streams), and only a pack that passed it is stored under its id
    in packs/blobs. The metadata pack (the record every other pack is checked against) comes
    first, alone; packs already on the volume are extracted alongside. Returns (packs, bytes)
    downloaded."""
    ordered = sorted(manifest.packs, key=pack_order)
    here = [p for p in ordered if blob_path(paths, p.id).exists()]
    need = [p for p in ordered if p not in here]
    u = Unpacker(manifest, staging)
    progress = reporter.progress(f"pull {manifest.snapshot}", sum(p.blob_size for p in need))
    unpacking = reporter.progress(f"unpacking {manifest.snapshot}", None, unit="files", done_label="unpacked")
    u.seen = _UnpackCount(u, unpacking)
    try:
        fetched_bytes = 0
        for first in (True, False):  # the metadata pack, then the rest
            wanted = [_pack_wanted(paths, i, u) for i in need if (i.group == META_GROUP) == first]
            local = [_extract_local(paths, u, i) for i in here if (i.group == META_GROUP) == first]
            fetched_bytes += fetch_all(remote, wanted, paths.root, streams, progress, also=local)
            if first and u.record is not None:  # the record came with the metadata pack
                unpacking.set_total(sum(1 for e in u.record.values() if e.type == "f"))
        u.finish()
    except BaseException:
        unpacking.close(ok=False)
        raise
    finally:
        progress.close()
        unpacking.close()
        u.close()
    reporter.detail(
        f"pull: {len(need)} packs, {human_bytes(fetched_bytes)}, {streams.current} streams at the end"
    )
    return len(need), fetched_bytes


class _UnpackCount(_Seen):
    """The unpack's progress, fed as members arrive (from every extracting thread): each
    recorded file counts with its recorded size, so the step ends at the snapshot's files and
    bytes; the metadata pack's own files (the record itself) are not in the record."""

    def __init__(self, u: Unpacker, progress: Progress) -> None:
        super().__init__()
        self.u = u
        self.progress = progress
        self.lock = threading.Lock()

    def add_new(self, name: str) -> bool:
        new = super().add_new(name)
        entry = self.u.record.get(name) if new and self.u.record is not None else None
        if entry is not None and entry.type == "f":
            with self.lock:
                self.progress.advance(1, entry.size)
        return new


def _extract_local(paths: VolumePaths, u: Unpacker, info: PackInfo) -> Part:
    """A pack already on the volume, extracted (and checked against its id as it streams)
    among the downloads; it moved nothing over the network, so it tells the streams nothing."""

    def part(stop: threading.Event) -> tuple[int, float]:
        u.extract_one(info, lambda i: open_regular(blob_path(paths, i.id)), stop)
        return 0, 0.0

    return part


def _same_bytes(dest: Path, sha256: str, paths: VolumePaths) -> bool:
    """A model file already on the volume holds the recorded bytes (a Hub-layout link is hashed
    through to its blob inside the volume's Hub cache; anything unreadable is not the same)."""
    target = dest
    if dest.is_symlink():
        target = dest.resolve()
        if not target.is_relative_to((paths.models / "hf").resolve()):
            return False
    try:
        return hash_file(str(target)) == sha256
    except OSError:
        return False


def _extract_downloaded(u: Unpacker, info: PackInfo, tmp: Path) -> None:
    """A downloaded pack, extracted from its complete temp file: the extraction checks that its
    tar hashes to the id at the declared size, and that every member is in the record."""
    try:
        u.extract_one(info, lambda _i: open(tmp, "rb"))  # noqa: SIM115
    except VerifyError as exc:
        if "damaged" in exc.message:
            raise
        raise VerifyError(
            f"{exc.message}: the bucket's copy of the pack is damaged; nothing was installed", hint=exc.hint
        ) from None


def _pack_wanted(paths: VolumePaths, info: PackInfo, unpacker: Unpacker) -> Wanted:
    """A blob is stored under its id only once its uncompressed tar is what the (signed) id
    names: a failed pull leaves no attacker blob under a legitimate id. The compressed bytes
    may differ from the document's blob_sha256 (the same tar compressed at another zstd level
    or version, e.g. a bucket that already held the id when this snapshot was pushed): the id,
    not the compression, is what is signed and what is checked."""
    # zstd never grows data by more than a little: a bound for other compressions of the tar
    limit = max(info.blob_size, info.tar_size + info.tar_size // 64 + (1 << 17))

    def too_big(detail: str) -> Exception:
        return VerifyError(
            f"pack {info.id[:16]}… ({info.group}) from the bucket is damaged: {detail} for a"
            f" {info.tar_size}-byte tar; nothing was installed"
        )

    return Wanted(
        f"packs/{info.id}.tar.zst",
        blob_path(paths, info.id),
        info.blob_size,
        limit,
        lambda tmp: _extract_downloaded(unpacker, info, tmp),
        too_big,
    )


def _check_pulled_seal(staging: Path, manifest: PackManifest) -> None:
    """The seal that came in the metadata pack must be for this snapshot, env and manifest."""
    try:
        seal = check_seal(str(staging), manifest.snapshot)
    except SealProblem as sp:
        raise VerifyError(printable(f"pulled {manifest.snapshot}: {sp.detail}")) from None
    if seal["env"] != manifest.env or seal.get("manifest_digest") != manifest.manifest_digest:
        raise VerifyError(
            f"pulled {manifest.snapshot}: its seal is for env '{seal['env']}' (manifest"
            f" {str(seal.get('manifest_digest'))[:12]}), not what the bucket's manifest says"
        )
    _check_sealed_manifest(seal, manifest.snapshot)


def _check_sealed_manifest(seal: dict[str, Any], sid: str) -> None:
    """What activation and `env --format sh` take from a pulled seal (variable names, model
    names and sources) obeys the manifest's own rules."""
    from volenv.base.errors import ManifestError
    from volenv.manifest.parse import parse_activate, parse_models
    from volenv.manifest.schema import ENV_NAME, Checker

    man = seal.get("manifest", {})
    try:
        if not isinstance(man, dict) or not isinstance(man.get("models", []), list):
            raise VerifyError("no manifest object with a models list")
        c = Checker(Path(f"{sid}/.volenv/seal.json"))
        env, _smoke = parse_activate(
            c, {"env": man.get("env", {}), "smoke-imports": man.get("smoke_imports", [])}
        )
        if not all(ENV_NAME.fullmatch(k) for k, _v in env):
            raise VerifyError("an activation variable name is not a plain name")
        parse_models(c, [_model_table(m) for m in man.get("models", [])])
    except (ManifestError, VerifyError) as exc:
        raise VerifyError(printable(f"pulled {sid}: its sealed manifest is invalid: {exc.message}")) from None


def _model_table(spec: Any) -> dict[str, Any]:
    """A model as a seal or model record stores it -> as a manifest writes it (for its rules)."""
    if not isinstance(spec, dict):
        raise VerifyError(f"model {spec!r} is not an object")
    table: dict[str, Any] = {"name": spec.get("name"), "optional": spec.get("optional", False)}
    hf = spec.get("hf")
    if hf is not None:
        if not isinstance(hf, dict):
            raise VerifyError("'hf' is not an object")
        table["hf"] = {
            "repo": hf.get("repo"),
            "revision": hf.get("revision"),
            "files": hf.get("files", []),
            "allow-patterns": hf.get("allow_patterns", []),
        }
        if "ref" in hf:
            table["hf"]["ref"] = hf["ref"]
    else:
        table.update({k: spec.get(k) for k in ("url", "sha256")})
        if spec.get("size") is not None:
            table["size"] = spec["size"]
    return table


def _pull_models(
    paths: VolumePaths, remote: Remote, wanted: dict[str, str | None], streams: AdaptiveStreams | None = None
) -> int:
    """Every model record the snapshot names, checked; then all their missing files at once
    (in parallel parts, each checked against its sha256); then the records, each after its
    files (a record present means its model is)."""

    from volenv.store.modelpaths import model_files_dir
    from volenv.store.volio import atomic_write_bytes

    count = 0
    records = paths.models / "records"
    safe_mkdirs(records, paths.root)
    todo: list[tuple[str, bytes]] = []
    files: dict[Path, Wanted] = {}
    for name, digest in sorted(wanted.items()):
        if (records / name).exists():
            count += 1
            continue
        raw = remote.get_bytes(f"models/{name}")
        if raw is None:
            raise RemoteError(f"{remote.url}: model record {name} is missing")
        if digest is not None and hashlib.sha256(raw).hexdigest() != digest:
            raise VerifyError(f"{remote.url}: model record {name} is not the one the snapshot names")
        rec = _check_model_record(raw, name)
        base_dir = Path(model_files_dir(str(paths.root), rec["spec"]))
        for f in rec["files"]:
            dest = base_dir / f["path"]
            if dest in files or (dest.exists() and _same_bytes(dest, f["sha256"], paths)):
                continue
            if os.path.lexists(dest):
                # another record's file (or damage): never replaced by the bucket's bytes
                raise VerifyError(
                    f"model record {name} from {remote.url} names {dest}, which holds other bytes;"
                    " nothing was replaced",
                    hint=f"`{fix_command(str(paths.root), 'models', 'verify', '--level', 'full')}`;"
                    " remove the file if it is damaged",
                )
            files[dest] = _model_file_wanted(remote, name, f, dest)
        todo.append((name, raw))
    fetch_all(remote, list(files.values()), paths.root, streams or AdaptiveStreams())
    for name, raw in todo:
        atomic_write_bytes(records / name, raw, root=paths.root)  # the record last: now the model is present
        count += 1
    return count


def _model_file_wanted(remote: Remote, record: str, f: dict[str, Any], dest: Path) -> Wanted:
    from volenv.base.errors import ModelError

    def bad(_detail: str = "") -> Exception:
        return ModelError(f"model file {f['path']} of {record} from {remote.url} fails its sha256")

    def check(tmp: Path) -> None:
        if hash_file(str(tmp)) != f["sha256"]:
            raise bad()

    raw = f.get("size")
    # unknown: asked of the bucket, and fetched in ranges where large
    size: int | None = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
    hint = RANGED_FROM if size is None else size
    return Wanted(f"model-files/{f['sha256']}", dest, hint, size, check, bad)


def _check_model_record(raw: bytes, name: str) -> dict[str, Any]:
    """A model record from the bucket: its spec obeys the manifest's model rules, its name is
    the one that spec gives, and every file path stays below the model's directory."""
    from volenv.base.errors import ManifestError
    from volenv.manifest.parse import parse_models
    from volenv.manifest.schema import Checker
    from volenv.models.cache import file_entry_problem
    from volenv.store.modelpaths import model_key

    def bad(why: str) -> VerifyError:
        return VerifyError(printable(f"model record {name} from the bucket is invalid: {why}"))

    try:
        rec = json_loads(raw)
    except ValueError as exc:
        raise bad(str(exc)) from None
    if not isinstance(rec, dict) or not isinstance(rec.get("spec"), dict):
        raise bad("no 'spec' object")
    if not isinstance(rec.get("files"), list):
        raise bad("no 'spec' object or 'files' list")
    spec = rec["spec"]
    try:
        parse_models(Checker(Path(f"bucket:models/{name}")), [_model_table(spec)])
    except (ManifestError, VerifyError) as exc:
        raise bad(exc.message) from None
    if name != f"{spec['name']}.{model_key(spec)}.json":
        raise bad("its name is not the one its spec gives")
    for f in rec["files"]:
        problem = file_entry_problem(f)
        if problem:
            raise bad(problem)
    if spec.get("url") and [f.get("sha256") for f in rec["files"]] != [spec.get("sha256")]:
        # a url model is one file whose sha256 is the spec's: anything else would put other
        # bytes under the name and key of a model this volume may already hold
        raise bad("a url model's one file must have the sha256 its spec pins")
    return rec


def _publish(paths: VolumePaths, manifest: PackManifest, switch: bool) -> None:
    env, sid = manifest.env, manifest.snapshot
    if manifest.manifest_digest:
        store.write_index(paths, env, manifest.manifest_digest, sid)
    if switch and store.read_current(paths, env) != sid:
        store.switch_current(paths, env, sid, manifest.manifest_digest, "pull")
