"""`volenv verify`: check snapshots at a level; problems are data, exit 4 on any error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volenv.base.errors import UsageError
from volenv.build.importcheck import ImportReport
from volenv.store import pointers as store
from volenv.store.integrity import VerifyReport, verify_snapshot
from volenv.store.paths import VolumePaths


@dataclass(frozen=True)
class VerifyResult:
    level: str
    reports: tuple[VerifyReport, ...]
    imports: tuple[tuple[str, ImportReport], ...] = ()  # --imports: (snapshot, its import check)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports) and not any(i.required_failures for _, i in self.imports)


def select_snapshots(paths: VolumePaths, target: str | None, all_: bool) -> list[Path]:
    """ENV -> its current snapshot; SNAPSHOT id -> itself; --all -> every snapshot."""
    if all_:
        return [paths.snapshot(e, s) for e in store.list_envs(paths) for s in store.list_snapshots(paths, e)]
    if target is None:
        raise UsageError("verify: give an ENV, a SNAPSHOT id, or --all")
    return [store.snapshot_for(paths, target)]


def import_check(snapshot: Path) -> ImportReport:
    """The build's import check on an existing snapshot: required and optional distributions
    from its seal (the base and required groups, the installed optional groups), the
    manifest's `[activate] env` set as at the build."""
    from volenv.base.envvars import apply_manifest_env
    from volenv.build.importcheck import check_imports
    from volenv.build.venv import activation_env_for_build
    from volenv.store.sealcheck import check_seal

    seal = check_seal(str(snapshot), snapshot.name)
    resolved: dict[str, Any] = seal["resolved"] if isinstance(seal.get("resolved"), dict) else {}
    required = [x for x in resolved.get("base") or [] if isinstance(x, str)]
    optional: list[str] = []
    groups: dict[str, Any] = resolved["groups"] if isinstance(resolved.get("groups"), dict) else {}
    for g in seal.get("groups") or []:
        if isinstance(g, dict) and g.get("state") == "installed":
            lines = [x for x in groups.get(str(g.get("name")), []) if isinstance(x, str)]
            (required if g.get("required") else optional).extend(lines)
    manifest: dict[str, Any] = seal["manifest"] if isinstance(seal.get("manifest"), dict) else {}
    values: dict[str, Any] = manifest["env"] if isinstance(manifest.get("env"), dict) else {}
    env = apply_manifest_env(activation_env_for_build(snapshot), {str(k): str(v) for k, v in values.items()})
    check: dict[str, Any] = manifest["check"] if isinstance(manifest.get("check"), dict) else {}
    ignore = [x for x in check.get("ignore") or [] if isinstance(x, str)]
    return check_imports(
        snapshot,
        snapshot / "bin" / "python",
        required_lines=required,
        optional_lines=optional,
        env_extra=env,
        ignore=ignore,
    )


def verify(
    paths: VolumePaths, target: str | None, *, all_: bool, level: str, imports: bool = False
) -> VerifyResult:
    from volenv.base.errors import VolumeError
    from volenv.store.rootfind import root_exists

    if not root_exists(str(paths.root)):
        raise VolumeError(f"volume root {paths.root} does not exist")
    snaps = select_snapshots(paths, target, all_)
    reports = tuple(verify_snapshot(s, level) for s in snaps)
    checked = tuple(
        (s.name, import_check(s)) for s, r in zip(snaps, reports, strict=True) if imports and r.ok
    )
    return VerifyResult(level, reports, checked)
