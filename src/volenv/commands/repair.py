"""`volenv verify --repair`: rebuild a damaged snapshot from the manifest and package set its
seal records, and swap it in only when the rebuild verifies."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from volenv.base.errors import ManifestError, VerifyError
from volenv.base.ui import reporter
from volenv.build.interp import fingerprint_key, probe
from volenv.build.plan import Resolution, SyncOptions, SyncPlan, requirements_file_options
from volenv.build.steps import build_snapshot
from volenv.commands.verify import VerifyResult
from volenv.manifest.parse import manifest_from_seal
from volenv.store.integrity import VerifyReport, verify_snapshot
from volenv.store.locks import BuildLease
from volenv.store.paths import VolumePaths
from volenv.store.rootfind import fix_command
from volenv.store.sealcheck import SealProblem, read_seal


def repair_snapshot(paths: VolumePaths, snapshot_dir: Path, *, lock_timeout: float = 900.0) -> VerifyReport:
    sid = snapshot_dir.name
    try:
        seal = read_seal(str(snapshot_dir))
    except SealProblem as sp:
        raise VerifyError(
            f"cannot repair {sid}: its seal is unusable ({sp.detail})",
            hint="sync its manifest again to build it again",
        ) from None
    where = str(seal.get("manifest_path", snapshot_dir / "manifest.toml"))
    try:
        manifest = manifest_from_seal(seal["manifest"], where)
    except ManifestError as exc:  # the hint it names, with this root
        changed = exc.key in ("lockfile", "requirements-file")
        args = ("sync", "--reinstall-all", where) if changed else ("sync", where)
        exc.hint = fix_command(str(paths.root), *args)
        if not changed:
            exc.hint = f"`{exc.hint}` builds a new snapshot from the tree as it is now"
        raise
    fp = probe(seal["fingerprint"]["executable"])
    if fingerprint_key(fp) != fingerprint_key(seal["fingerprint"]):
        raise VerifyError(
            f"cannot repair {sid} here: it was built for another interpreter",
            hint="repair it in a container with the snapshot's interpreter",
        )
    resolved = seal.get("resolved", {})
    groups = {g["name"]: tuple(resolved.get("groups", {}).get(g["name"], ())) for g in seal.get("groups", [])}
    failed = {
        g["name"]: g.get("error") or "failed" for g in seal.get("groups", []) if g["state"] != "installed"
    }
    res = Resolution(
        python=fp["executable"],
        fingerprint=fp,
        base=tuple(resolved.get("base", ())),
        groups={k: v for k, v in groups.items() if k not in failed},
        unresolvable=failed,
        snapshot_id=sid,
        index_lines=requirements_file_options(manifest) if manifest.requirements_file is not None else (),
    )
    plan = SyncPlan(manifest.name, manifest.digest, "build", sid, None, res)
    reporter.info(f"repairing {sid}: rebuilding from its recorded package set")
    lease = BuildLease(paths, manifest.name, timeout=lock_timeout, say=reporter.info)
    with lease, tempfile.TemporaryDirectory(prefix="volenv-repair-") as tmp:
        build_snapshot(
            paths, manifest, plan, lease, SyncOptions(), Path(tmp), time.perf_counter(), repair=True
        )
        _repack(paths, paths.snapshot(manifest.name, sid))
    return verify_snapshot(paths.snapshot(manifest.name, sid), "full")


def _repack(paths: VolumePaths, snapshot_dir: Path) -> None:
    """A repair re-seals the snapshot (a new record digest under the same id): packs made from
    the old record would make every `run --materialize` refuse them, so they are made again
    (blobs of unchanged groups are reused)."""
    from volenv.store.packformat import manifest_path
    from volenv.store.packwrite import pack_snapshot

    if manifest_path(paths, snapshot_dir.name).exists():
        reporter.info(f"re-packing {snapshot_dir.name} (its record changed)")
        pack_snapshot(paths, snapshot_dir)


def repair_reports(paths: VolumePaths, result: VerifyResult) -> VerifyResult:
    out = []
    for rep in result.reports:
        if rep.ok:
            out.append(rep)
            continue
        out.append(repair_snapshot(paths, Path(rep.path)))
    return VerifyResult("full", tuple(out))
