"""Model caches on the volume: fetch (HTTP with resume, or the Hugging Face Hub), checksum,
record, verify. One fetcher per model across hosts (a lease); the others wait and find it.

Layout: url models under models/files/<name>/<sha256[:16]>/<file>; hf models in the hub
cache layout under models/hf/hub (so libraries find them through HF_HUB_CACHE); and for each
fetched model a record models/records/<name>.<key>.json, written last, listing every file
with size and sha256: its presence is what "present" means to activation. After the record, an
hf model's ref is written to its pinned commit; an hf model that RunPod's model cache holds at
its pin is verified there and used in place (models/hubrefs.py).

Long: one model's whole life on the volume (fetch per source, record, verify, list) reads top
to bottom in one place; split by source, the record and verify rules every source shares
would be repeated or scattered.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volenv.base.errors import (
    DamagedRecord,
    ModelError,
    VolenvError,
    VolumeError,
    from_oserror,
    missing_extra,
)
from volenv.base.leanjson import NOT_A_RECORD, read_record_bytes
from volenv.base.leanjson import loads as json_loads  # RecursionError is ValueError there
from volenv.base.redact import redact_url
from volenv.base.ui import human_bytes, reporter
from volenv.manifest.schema import Manifest, ModelSpec, model_dict
from volenv.models.hubrefs import how_checked, read_ref, runpod_found, write_ref
from volenv.store import runpodcache
from volenv.store.integrity import hash_file
from volenv.store.locks import BuildLease
from volenv.store.modelpaths import (
    hf_ref,
    model_files_dir,
    model_key,
    model_location,
    model_record_path,
    model_ref_path,
)
from volenv.store.paths import VolumePaths
from volenv.store.sealcheck import activation_problem
from volenv.store.volio import (
    ContainmentError,
    atomic_write_json,
    fsync_dir,
    open_dir_nofollow,
    safe_mkdirs,
    safe_rename,
    safe_unlink,
)
from volenv.transfer import httpfetch

RECORD_SCHEMA = 1
CHUNK = 1 << 20
ATTEMPTS = int(os.environ.get("VOLENV_FETCH_ATTEMPTS", "6"))
TIMEOUT = float(os.environ.get("VOLENV_FETCH_TIMEOUT", "60"))
# a file whose sha256 does not match its pin is fetched once more only up to this size (damage
# in transit is rare; a wrong pin is not, and a second download of multi-GB weights is costly)
REFETCH_MAX = 64 << 20


@dataclass(frozen=True)
class ModelState:
    name: str
    source: str
    location: str
    present: bool
    optional: bool
    files: int = 0
    bytes: int = 0
    action: str = ""  # fetch: fetched | present | in-place | failed (optional)
    detail: str = ""
    # volume: the volume's copy; runpod-cache: RunPod's model cache on this machine, used in place
    where: str = "volume"


@dataclass(frozen=True)
class ModelProblem:
    name: str
    kind: str  # missing | size-changed | content-changed | record-damaged
    path: str
    detail: str


@dataclass(frozen=True)
class ModelVerifyReport:
    level: str
    checked: tuple[str, ...]
    problems: tuple[ModelProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _source(m: dict[str, Any]) -> str:
    if m.get("hf"):
        return f"hf:{m['hf']['repo']}@{m['hf']['revision'][:12]}"
    return str(m["url"])


# ---------------------------------------------------------------- fetch


def fetch_models(paths: VolumePaths, manifest: Manifest, *, lock_timeout: float = 3600) -> list[ModelState]:
    out = []
    for spec in manifest.models:
        m = model_dict(spec)
        try:
            out.append(fetch_model(paths, spec, lock_timeout=lock_timeout))
        except ModelError as exc:
            if not spec.optional:
                raise
            reporter.warn(f"optional model '{spec.name}' not fetched: {exc.message}")
            out.append(
                ModelState(
                    spec.name,
                    _source(m),
                    model_location(str(paths.root), m),
                    False,
                    True,
                    action="failed",
                    detail=exc.message,
                )
            )
    return out


def fetch_model(paths: VolumePaths, spec: ModelSpec, *, lock_timeout: float = 3600) -> ModelState:
    m = model_dict(spec)
    root = str(paths.root)
    record = Path(model_record_path(root, m))
    loc = model_location(root, m)
    in_place = in_runpod_cache(m, verify=True, say=True)
    if in_place is not None:
        return in_place
    if record.exists() and not _damaged_files(paths, m):
        write_ref(paths, m)
        return _state(paths, m, "present")
    safe_mkdirs(record.parent, paths.root)  # no write through a planted link below the root
    lease = BuildLease(paths, f"model-{spec.name}.{model_key(m)}", timeout=lock_timeout, say=reporter.info)
    with lease:
        damaged = _damaged_files(paths, m) if record.exists() else []
        if record.exists() and not damaged:  # another worker fetched (or repaired) it meanwhile
            write_ref(paths, m)
            return _state(paths, m, "present")
        if damaged:
            _set_aside(paths, m, record, damaged)
        files = _fetch_url(paths, spec, Path(loc)) if spec.url else _fetch_hf(paths, spec, Path(loc))
        atomic_write_json(
            record,
            {
                "schema": RECORD_SCHEMA,
                "name": spec.name,
                "key": model_key(m),
                "spec": m,
                "location": os.path.relpath(loc, root),
                "files": files,
                "fetched": time.time(),
            },
        )
        write_ref(paths, m)
    store_event(paths, spec.name, files)
    return _state(paths, m, "fetched")


def in_runpod_cache(m: dict[str, Any], *, verify: bool, say: bool) -> ModelState | None:
    """The model's state as RunPod's model cache holds it (used in place), or None."""
    found = runpod_found(m, verify=verify, say=say)
    if found is None:
        return None
    return ModelState(
        m["name"],
        _source(m),
        found.snapshot,
        True,
        bool(m.get("optional")),
        len(found.files),
        found.bytes,
        "in-place",
        f"RunPod model cache, {how_checked(found)}",
        "runpod-cache",
    )


def _damaged_files(paths: VolumePaths, m: dict[str, Any]) -> list[Path]:
    """The recorded files of a fetched model that are missing, not regular files or not of
    their recorded size (what `run`'s start check finds): a fetch repairs them."""
    try:
        rec = read_model_record(Path(model_record_path(str(paths.root), m)))
    except DamagedRecord:
        return [Path(model_record_path(str(paths.root), m))]
    if rec is None:
        return []
    base = Path(model_files_dir(str(paths.root), m))
    out = []
    for f in rec["files"]:
        p = base / f["path"]
        try:
            st = p.stat()
        except OSError:
            out.append(p)
            continue
        if not (os.path.isfile(p) and st.st_size == f["size"]):
            out.append(p)
    return out


def _set_aside(paths: VolumePaths, m: dict[str, Any], record: Path, damaged: list[Path]) -> None:
    """Before fetching a damaged model again: its record goes first (a crash in between leaves a
    model that is simply absent), then each damaged file and, for a Hub file, the blob its
    snapshot link names inside the repo, so that the download writes them afresh."""
    reporter.warn(
        f"model '{m['name']}': {len(damaged)} recorded file(s) damaged on the volume"
        f" ({', '.join(str(p) for p in damaged[:3])}{', ...' if len(damaged) > 3 else ''}); fetching again"
    )
    safe_unlink(record, paths.root)
    for p in damaged:
        if p == record:
            continue
        target = None
        if p.is_symlink():  # lexically: the link's text, never where the file system says it goes
            target = Path(os.path.normpath(os.path.join(p.parent, os.readlink(p))))
        safe_unlink(p, paths.root)
        repo = Path(model_location(str(paths.root), m)).parent.parent  # models--ORG--NAME for a Hub model
        if target is not None and m.get("hf") and target.parent == repo / "blobs":
            safe_unlink(target, paths.root)


def store_event(paths: VolumePaths, name: str, files: list[dict[str, Any]]) -> None:
    from volenv.store import pointers as store

    store.log_event(
        paths, "_models", "model-fetched", model=name, files=len(files), bytes=sum(f["size"] for f in files)
    )


def _state(paths: VolumePaths, m: dict[str, Any], action: str) -> ModelState:
    root = str(paths.root)
    rec = read_model_record(Path(model_record_path(root, m)))
    files = rec.get("files", []) if rec else []
    return ModelState(
        m["name"],
        _source(m),
        model_location(root, m),
        rec is not None,
        bool(m.get("optional")),
        len(files),
        sum(int(f["size"]) for f in files),
        action,
    )


def read_model_record(path: Path) -> dict[str, Any] | None:
    """A model record, validated (spec and file list) before any use; None when absent."""
    try:
        data = json_loads(read_record_bytes(path, 64 << 20))
    except FileNotFoundError:
        return None
    except (IsADirectoryError, NotADirectoryError):
        raise DamagedRecord(f"model record {path} is damaged: not a file") from None
    except OSError as exc:
        if exc.errno in NOT_A_RECORD:
            raise DamagedRecord(f"model record {path} is damaged: not a regular file") from None
        raise from_oserror(exc, f"cannot read model record {path}") from exc
    except (ValueError, RecursionError) as exc:
        raise DamagedRecord(f"model record {path} is damaged: not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("schema"), int) and data["schema"] > RECORD_SCHEMA:
        raise VolumeError(f"model record {path} is newer than this volenv", hint="upgrade volenv")
    problem = _record_problem(data)
    if problem:
        raise DamagedRecord(f"model record {path} is damaged: {problem}")
    return data  # type: ignore[no-any-return]


def _record_problem(data: object) -> str | None:
    if not isinstance(data, dict):
        return "not a JSON object"
    spec = data.get("spec")
    if not isinstance(spec, dict):
        return "no 'spec'"
    problem = activation_problem({}, [spec])
    if problem:
        return problem
    files = data.get("files")
    if not isinstance(files, list):
        return "no 'files' list"
    for f in files:
        if not (
            isinstance(f, dict) and isinstance(f.get("size"), int) and not isinstance(f.get("size"), bool)
        ):
            return f"file entry {f!r:.80} is malformed"
        problem = file_entry_problem(f)
        if problem:
            return problem
    return None


def file_entry_problem(f: object) -> str | None:
    """A record's file entry, local or from a bucket: a relative path that stays below the
    model's directory (no '..', no absolute path) and a sha256; None when it is one."""
    from volenv.manifest.schema import HEX64

    path = f.get("path") if isinstance(f, dict) else None
    if (
        not isinstance(f, dict)
        or not isinstance(path, str)
        or not path
        or path.startswith("/")
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path)
        or any(part in ("", ".", "..") for part in path.split("/"))
        or not (isinstance(f.get("sha256"), str) and HEX64.fullmatch(f["sha256"]))
        or not (f.get("size") is None or (isinstance(f["size"], int) and f["size"] >= 0))
    ):
        return f"file entry {f!r:.120} is not a relative path with a sha256"
    return None


def _fetch_url(paths: VolumePaths, spec: ModelSpec, dest: Path) -> list[dict[str, Any]]:
    """Download into the model's `.part` as parallel Range requests with a chunk journal
    (httpfetch), so a killed fetch resumes from its durable chunks; publish by rename only
    when the size and sha256 match. Bytes that fail the whole-file check are dropped and
    fetched once more (a chunk a server garbled once); twice wrong fails, nothing published."""
    assert spec.url and spec.sha256
    safe_mkdirs(dest.parent, paths.root)
    part = dest.with_name(f".{dest.name}.part-chunks")
    journal = dest.with_name(f".{dest.name}.part-chunks.journal")
    reporter.info(f"fetching model '{spec.name}' from {redact_url(spec.url)}")

    def say(msg: str) -> None:
        reporter.warn(f"model '{spec.name}': {msg}")

    for round_ in (1, 2):
        progress = reporter.progress(spec.name, spec.size)
        opts = httpfetch.Options(ATTEMPTS, TIMEOUT, say, progress)
        try:
            got = httpfetch.fetch(
                spec.url, part, journal, paths.root, sha256=spec.sha256, size=spec.size, opts=opts
            )
        except httpfetch.HTTPRefused as exc:
            raise ModelError(
                f"model '{spec.name}': {redact_url(spec.url)} answered HTTP {exc.code}"
            ) from None
        except httpfetch.TooLarge as exc:
            httpfetch.discard(part, journal, paths.root)
            raise ModelError(f"model '{spec.name}': {redact_url(spec.url)}: {exc}") from None
        except httpfetch.RetriesExhausted as exc:
            raise ModelError(
                f"model '{spec.name}': {exc}",
                hint="check the URL and the network, then fetch again (a `sync` or `models fetch` of the"
                " manifest resumes from the chunks it has)",
            ) from None
        finally:
            progress.close()
        if spec.size is not None and got.size != spec.size:
            httpfetch.discard(part, journal, paths.root)
            raise ModelError(f"model '{spec.name}': got {got.size} bytes, the manifest says {spec.size}")
        if got.sha256 == spec.sha256:
            break
        httpfetch.discard(part, journal, paths.root)
        if round_ == 2 or got.size > REFETCH_MAX:
            # a large file is never downloaded twice on a guess: a wrong pin (or a file that
            # changed at its URL) is far likelier than bytes damaged in transit
            again = " (fetched twice, the same both times)" if round_ == 2 else ""
            raise ModelError(
                f"model '{spec.name}': the file's sha256 does not match the pin{again}: the manifest"
                f" pins {spec.sha256}, the {human_bytes(got.size)} at {redact_url(spec.url)} hash to"
                f" {got.sha256}; nothing was published",
                hint=f'if that file is the one you want, pin it: sha256 = "{got.sha256}"',
            )
        say(
            f"the file's sha256 does not match the pin ({human_bytes(got.size)}); fetching it once"
            " more in case bytes arrived damaged"
        )
    try:
        safe_rename(part, dest, paths.root)
    except FileNotFoundError:  # a fetcher that took our lease over published the same bytes
        if not dest.is_file() or dest.stat().st_size != got.size:
            raise
    fsync_dir(dest.parent)
    safe_unlink(journal, paths.root)
    return [{"path": dest.name, "size": got.size, "sha256": got.sha256}]


def _fetch_hf(paths: VolumePaths, spec: ModelSpec, snapshot_dir: Path) -> list[dict[str, Any]]:
    """huggingface_hub downloads into the hub cache layout (its own locks and resume); we then
    check every LFS file against its sha256 and record sizes and hashes."""
    assert spec.hf is not None
    try:
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        raise missing_extra("huggingface_hub", "hf", ModelError) from None
    cache = paths.models / "hf" / "hub"
    # the repo's own directories made (or found) real before huggingface_hub writes a byte: a
    # link planted at models--ORG--NAME (or its blobs/, snapshots/) is refused, never written through
    repo_dir = cache / ("models--" + spec.hf.repo.replace("/", "--"))
    for sub_dir in (repo_dir / "blobs", repo_dir / "snapshots", repo_dir / "refs"):
        safe_mkdirs(sub_dir, paths.root)
    if os.path.islink(snapshot_dir):  # a planted snapshots/REV link: removed, never walked or written
        safe_unlink(snapshot_dir, paths.root)
    reporter.info(f"fetching model '{spec.name}' from the Hub: {spec.hf.repo}@{spec.hf.revision[:12]}")
    try:
        if spec.hf.files:
            for f in spec.hf.files:
                huggingface_hub.hf_hub_download(
                    spec.hf.repo, f, revision=spec.hf.revision, cache_dir=str(cache)
                )
        else:
            huggingface_hub.snapshot_download(
                spec.hf.repo,
                revision=spec.hf.revision,
                allow_patterns=list(spec.hf.allow_patterns),
                cache_dir=str(cache),
            )
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelError(f"model '{spec.name}': Hub download failed: {str(exc).splitlines()[0]}") from None
    hf_top = (paths.models / "hf").resolve()
    try:  # the snapshot folder itself reached without a link (os.walk would follow one at its top)
        os.close(open_dir_nofollow(paths.root, Path(os.path.relpath(snapshot_dir, paths.root)).parts))
    except ContainmentError as exc:
        raise ModelError(f"model '{spec.name}': {exc.message}", hint=exc.hint) from None
    files = []
    for dirpath, _dirs, names in os.walk(snapshot_dir):
        for n in names:
            p = Path(dirpath) / n
            blob = p.resolve()
            if not blob.is_relative_to(hf_top) or not blob.is_file():
                # a link planted out of the Hub cache: damage; remove the link, never its target
                with contextlib.suppress(FileNotFoundError):
                    safe_unlink(p, paths.root)
                raise ModelError(
                    f"model '{spec.name}': {p.relative_to(snapshot_dir)} points outside {hf_top};"
                    " the link was removed",
                    hint="fetch it again (a `sync` or `models fetch` of the manifest)",
                )
            digest = hash_file(str(blob))
            if len(blob.name) == 64 and blob.name != digest:  # LFS blobs are named by their sha256
                lexical_blob = paths.models / "hf" / blob.relative_to(hf_top)  # the root may be a link
                for victim in (p, lexical_blob):
                    with contextlib.suppress(FileNotFoundError):
                        safe_unlink(victim, paths.root)
                raise ModelError(
                    f"model '{spec.name}': {p.relative_to(snapshot_dir)} does not match its sha256"
                    f" ({blob.name}); removed"
                )
            files.append(
                {"path": str(p.relative_to(snapshot_dir)), "size": blob.stat().st_size, "sha256": digest}
            )
    if not files:
        raise ModelError(f"model '{spec.name}': nothing matched in {spec.hf.repo}@{spec.hf.revision}")
    return sorted(files, key=lambda f: f["path"])


# ---------------------------------------------------------------- list / verify


def _hub_blob(p: Path, root: str) -> str:
    """What a model file's bytes are: the file, or for the Hub layout (snapshots/REV/NAME is a
    link into blobs/) the blob it names, which must lie inside the volume's Hub cache (a link
    out of it is not followed: hashing it then fails, and the file is reported)."""
    if not p.is_symlink():
        return str(p)
    real = p.resolve()
    top = (Path(root) / "models" / "hf").resolve()
    return str(real) if real.is_relative_to(top) else str(p)


def list_models(paths: VolumePaths, manifest: Manifest | None) -> list[ModelState]:
    root = str(paths.root)
    if manifest is not None:
        out = []
        for s in manifest.models:
            m = model_dict(s)
            out.append(in_runpod_cache(m, verify=False, say=False) or _state(paths, m, ""))
        return out
    out = []
    for rec_path in sorted((paths.models / "records").glob("*.json")):
        try:
            rec = read_model_record(rec_path)
        except DamagedRecord as exc:  # listed as a warning; the intact records still are
            reporter.warn(exc.message)
            continue
        if rec is None:
            continue
        m = rec["spec"]
        files = rec.get("files", [])
        out.append(
            ModelState(
                m["name"],
                _source(m),
                model_location(root, m),
                True,
                bool(m.get("optional")),
                len(files),
                sum(int(f["size"]) for f in files),
            )
        )
    return out


def verify_models(paths: VolumePaths, manifest: Manifest | None, level: str) -> ModelVerifyReport:
    """seal: record and files exist; stat: + sizes; full: + sha256 of every file."""
    root = str(paths.root)
    problems: list[ModelProblem] = []
    if manifest is not None:
        specs = [model_dict(s) for s in manifest.models]
        records = [(m, Path(model_record_path(root, m))) for m in specs]
    else:
        records = []
        for rec_path in sorted((paths.models / "records").glob("*.json")):
            try:
                rec = read_model_record(rec_path)
            except DamagedRecord as exc:
                problems.append(ModelProblem(rec_path.stem, "record-damaged", str(rec_path), exc.message))
                continue
            if rec is not None:
                records.append((rec["spec"], rec_path))
        known = {str(p) for _m, p in records}
        for m, env in _current_models(paths):
            rec_path = Path(model_record_path(root, m))
            if str(rec_path) not in known and not m.get("optional"):
                known.add(str(rec_path))
                problems.append(
                    ModelProblem(m["name"], "missing", str(rec_path), f"never fetched (env '{env}' needs it)")
                )
    checked = []
    for m, rec_path in records:
        if manifest is not None and m.get("hf"):
            found = runpodcache.find(m, verify=level == "full")
            if found is not None and found.usable:  # used in place on this machine: checked there
                checked.append(m["name"])
                continue
            if found is not None:
                problems.append(
                    ModelProblem(m["name"], "content-changed", found.snapshot, str(found.problem))
                )
                continue
        try:
            rec = read_model_record(rec_path)
        except VolenvError as exc:
            problems.append(ModelProblem(m["name"], "record-damaged", str(rec_path), str(exc)))
            continue
        if rec is None:
            if not m.get("optional"):
                problems.append(ModelProblem(m["name"], "missing", str(rec_path), "never fetched"))
            continue  # an optional model never fetched is not checked, so never said to be ok
        checked.append(m["name"])
        base_dir = Path(model_files_dir(root, m))
        for f in rec["files"]:
            p = base_dir / f["path"]
            try:
                size = p.stat().st_size
            except OSError:
                problems.append(ModelProblem(m["name"], "missing", str(p), "recorded but not found"))
                continue
            if level in ("stat", "full") and size != f["size"]:
                problems.append(
                    ModelProblem(m["name"], "size-changed", str(p), f"{size} bytes, recorded {f['size']}")
                )
            elif level == "full" and hash_file(_hub_blob(p, root)) != f["sha256"]:
                problems.append(
                    ModelProblem(m["name"], "content-changed", str(p), "sha256 differs from the record")
                )
        if m.get("hf"):
            named = read_ref(paths, m)
            if named != m["hf"]["revision"]:
                problems.append(
                    ModelProblem(
                        m["name"],
                        "ref-changed",
                        model_ref_path(root, m),
                        f"refs/{hf_ref(m)} names {named[:12] if named else 'nothing'}, not the pinned"
                        f" {m['hf']['revision'][:12]}: code that loads {m['hf']['repo']} by name offline"
                        " does not get it (a fetch of the manifest writes the ref)",
                    )
                )
    return ModelVerifyReport(level, tuple(checked), tuple(problems))


def _current_models(paths: VolumePaths) -> list[tuple[dict[str, Any], str]]:
    """(model spec, env) for every model the manifest sealed into an env's current snapshot
    names: what its workers will ask for, fetched or not."""
    from volenv.store import pointers
    from volenv.store.sealcheck import SealProblem, read_seal

    out = []
    for env in pointers.list_envs(paths):
        try:
            sid = pointers.read_current(paths, env)
            if sid is None:
                continue
            models = read_seal(str(paths.snapshot(env, sid))).get("manifest", {}).get("models", [])
        except (VolenvError, SealProblem, OSError, ValueError, AttributeError):
            continue
        for m in models if isinstance(models, list) else []:
            if isinstance(m, dict) and isinstance(m.get("name"), str):
                try:
                    model_record_path(str(paths.root), m)
                except (KeyError, TypeError, ValueError):
                    continue
                out.append((m, env))
    return out
