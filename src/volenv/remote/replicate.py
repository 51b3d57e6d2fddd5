"""The remote layout, what push (`push`) and pull (`pull`) share, and `list --remote`: replicate
sealed snapshots (and their models) between volumes through object storage, as content-addressed
packs.

Remote layout (under the URL's prefix):
    packs/<sha256 of tar>.tar.zst     one per distribution / venv rest / metadata
    snapshots/<snapshot>.json         the pack manifest (+ the models it needs)
    refs/<env>.json                   the env's current snapshot on the pushing volume
    models/<record>.json              model records;  model-files/<sha256>  their files
Payload before reference: packs, then the manifest, then the ref. A pull downloads only the
packs its volume lacks, several parts at a time (bucketget.py), extracts each into staging as
soon as it is whole (which checks it against its id; only then is it kept in packs/blobs),
verifies every file at `full` against the record, and only then renames the snapshot into place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from volenv.base.errors import UsageError, VerifyError, shq
from volenv.base.ui import reporter
from volenv.remote.signing import Trust
from volenv.store.packformat import (
    PackManifest,
)
from volenv.store.paths import env_from_snapshot_id
from volenv.transfer.buckets import Remote, get_json, printable


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
    signed_by: str | None = None  # the key that signed it (push) / the trusted key that did (pull)


def resolve_remote(remote: Remote, target: str | None) -> tuple[str, str]:
    """ENV or SNAPSHOT -> (snapshot id, the env it must belong to); a ref from the bucket
    obeys the local name rules and must name a snapshot of its own env."""
    from volenv.manifest.schema import is_env_name, is_snapshot_id

    if target is None:
        raise UsageError(
            "pull: name an ENV or a SNAPSHOT to pull",
            hint=f"`volenv list --remote {shq(remote.url)}` shows what the bucket holds;"
            " see `volenv pull --help`",
        )
    if is_snapshot_id(target):
        return target, env_from_snapshot_id(target)
    if not is_env_name(target):
        raise UsageError(f"pull: {target!r} is neither an env name nor a snapshot id")
    ref = get_json(remote, f"refs/{target}.json")
    if ref is None:
        raise UsageError(f"{remote.url} has no env '{target}' (see `volenv list --remote {remote.url}`)")
    sid = ref.get("snapshot")
    if not isinstance(ref.get("schema"), int) or not isinstance(sid, str) or not is_snapshot_id(sid):
        raise VerifyError(f"{remote.url}/refs/{target}.json is invalid: no snapshot id in it")
    if env_from_snapshot_id(sid) != target:
        raise VerifyError(f"{remote.url}/refs/{target}.json names {sid}, a snapshot of another env")
    return sid, target


def believe(doc: dict[str, Any], sid: str, env: str, trust: Trust) -> tuple[PackManifest, str | None]:
    """The pack manifest, only once its fields are valid, it is the one asked for and a
    trusted key signed it (or the user said --trust-unsigned, loudly)."""
    manifest = PackManifest.from_json(doc)
    if manifest.snapshot != sid or manifest.env != env:
        raise VerifyError(
            f"the bucket's manifest for {sid} describes {manifest.snapshot} of env '{manifest.env}'"
        )
    model_names(doc)
    signer = trust.signer(doc)
    if signer is None:
        reporter.warn(
            f"--trust-unsigned: accepting {sid} WITHOUT a trusted signature; whoever can write"
            " the bucket decides what this volume runs"
        )
    return manifest, signer


def model_names(doc: dict[str, Any]) -> dict[str, str | None]:
    """Model record names (`<model>.<16 hex>.json`) -> the sha256 the signed manifest gives."""
    from volenv.manifest.schema import HEX64, SLUG

    names = doc.get("models", [])
    digests = doc.get("model_records", {})
    if not isinstance(names, list) or not isinstance(digests, dict):
        raise VerifyError("pack manifest is invalid: 'models' is not a list of record names")
    out: dict[str, str | None] = {}
    for name in names:
        if not isinstance(name, str):
            raise VerifyError(f"pack manifest is invalid: model record name {name!r}")
        model, _, key = name.removesuffix(".json").rpartition(".")
        if (
            not name.endswith(".json")
            or not SLUG.fullmatch(model)
            or len(key) != 16
            or not all(c in "0123456789abcdef" for c in key)
        ):
            raise VerifyError(f"pack manifest is invalid: model record name {name!r}")
        digest = digests.get(name)
        if digest is not None and not (isinstance(digest, str) and HEX64.fullmatch(digest)):
            raise VerifyError(f"pack manifest is invalid: model record digest for {name!r}")
        out[name] = digest
    return out


@dataclass(frozen=True)
class RemoteListing:
    url: str
    envs: dict[str, str]
    snapshots: tuple[dict[str, Any], ...]
    packs: int
    models: tuple[str, ...]


def list_remote(remote: Remote, trust: Trust) -> RemoteListing:
    """What the bucket holds that this volume would believe: snapshots whose manifest is valid
    and signed by a trusted key (any valid one with --trust-unsigned), and the refs naming
    them; everything else is left out, with one warning per document."""
    from volenv.manifest.schema import is_env_name

    snaps = []
    believed: dict[str, str] = {}
    for key in remote.list("snapshots/"):
        try:
            doc = get_json(remote, key)
            if doc is None:
                continue
            manifest = PackManifest.from_json(doc)
            if key != f"snapshots/{manifest.snapshot}.json":
                raise VerifyError(f"it describes {manifest.snapshot}")
            model_names(doc)
            signer = trust.signer(doc)
        except VerifyError as exc:
            reporter.warn(printable(f"{remote.url}/{key} left out: {exc.message}"))
            continue
        believed[manifest.snapshot] = manifest.env
        fp = manifest.fingerprint
        snaps.append(
            {
                "snapshot": manifest.snapshot,
                "env": manifest.env,
                "packs": len(manifest.packs),
                "bytes": sum(p.blob_size for p in manifest.packs),
                "python": printable(f"{fp.get('implementation')} {fp.get('version')}"),
                "created": manifest.created,
                "signed_by": signer,
            }
        )
    if trust.allow_unsigned and any(s["signed_by"] is None for s in snaps):
        reporter.warn("--trust-unsigned: listing snapshots that carry no trusted signature")
    envs = {}
    for key in remote.list("refs/"):
        env = key.rsplit("/", 1)[1].removesuffix(".json")
        try:
            ref = get_json(remote, key)
        except VerifyError as exc:
            reporter.warn(printable(f"{remote.url}/{key} left out: {exc.message}"))
            continue
        sid = ref.get("snapshot") if ref is not None else None
        if is_env_name(env) and isinstance(sid, str) and believed.get(sid) == env:
            envs[env] = sid
        elif ref is not None:
            reporter.warn(
                printable(f"{remote.url}/{key} left out: it names no believed snapshot of env '{env}'")
            )
    return RemoteListing(
        remote.url,
        envs,
        tuple(snaps),
        len(remote.list("packs/")),
        tuple(printable(k.rsplit("/", 1)[1]) for k in remote.list("models/")),
    )
