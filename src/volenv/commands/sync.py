"""`volenv sync`: build (or reuse) a manifest's snapshot, make it current, fetch its models,
and take its start trace when `[activate] trace-cmd` asks (`start.provide`, which `run
--on-missing build` calls too). Before that, the env's origin (store/origin.py): a different
manifest under a taken env name is refused unless `--take-over`."""

from __future__ import annotations

import re
from pathlib import Path

from volenv.base.errors import UsageError
from volenv.base.ui import reporter
from volenv.build.plan import SyncOptions, SyncResult
from volenv.manifest.schema import Manifest
from volenv.start.provide import provide
from volenv.store.origin import Origin, origin_of, read_origin, write_origin
from volenv.store.paths import VolumePaths
from volenv.store.rootfind import fix_command


def sync(
    paths: VolumePaths,
    manifest: Manifest,
    opts: SyncOptions,
    *,
    attended: bool = True,
    take_over: bool = False,
) -> SyncResult:
    """The snapshot, its models, then (when the manifest has a trace-cmd) its start trace.

    `attended` (`sync MANIFEST`, a person at the prompt): a manifest of another origin than the
    env's is refused (exit 2) unless `take_over`, and the origin is recorded. Unattended
    (`sync --from-env`, a provisioning pod's temp file on a one-off host) is never refused:
    it records an origin only for a manifest that declares an `id`, in an env that has none."""
    mine = origin_of(manifest, paths)
    recorded = read_origin(paths, manifest.name)
    if attended and recorded is not None and not take_over and not recorded.same_manifest(mine):
        raise _taken(paths, manifest, recorded, mine)
    if not attended and recorded is not None and not recorded.same_manifest(mine) and manifest.id:
        reporter.warn(
            f"env '{manifest.name}' belongs to {recorded.describe()}; this manifest declares id"
            f" '{manifest.id}': two manifests share one env"
        )
    result = provide(paths, manifest, opts)
    if not opts.dry_run:
        _record(paths, manifest.name, mine, recorded, attended=attended, take_over=take_over)
    return result


def _record(
    paths: VolumePaths, env: str, mine: Origin, recorded: Origin | None, *, attended: bool, take_over: bool
) -> None:
    """Write the env's origin when it changed: the first sync of an env (or of one made before
    volenv recorded origins) adopts its manifest silently; `--take-over` replaces the owner."""
    if not attended and (mine.id is None or recorded is not None):
        return
    now = read_origin(paths, env)
    if now != recorded and now is not None and not now.same_manifest(mine) and not take_over:
        # another manifest claimed the env while this one built (a narrow race): say so, keep theirs
        reporter.warn(f"env '{env}' was claimed by {now.describe()} while this sync ran; its record stays")
        return
    if now == mine:
        return
    write_origin(paths, env, mine)
    if take_over and recorded is not None and not recorded.same_manifest(mine):
        reporter.info(f"env '{env}' now belongs to {mine.describe()} (was {recorded.describe()})")


def _taken(paths: VolumePaths, manifest: Manifest, recorded: Origin, mine: Origin) -> UsageError:
    env = manifest.name
    path = str(manifest.path)
    new_name = _free_name(paths, manifest)
    return UsageError(
        f"env '{env}' belongs to {recorded.describe()}; this manifest is {mine.describe()}:"
        " two manifests would share one env",
        hint=f"give this one its own env (set name = \"{new_name}\" in {path}), or take '{env}' over:"
        f" `{fix_command(str(paths.root), 'sync', '--take-over', path)}`",
    )


def _free_name(paths: VolumePaths, manifest: Manifest) -> str:
    """A name to suggest: the manifest's folder's parent joined to the env name, unused here."""
    parent = re.sub(r"[^A-Za-z0-9_.-]+", "-", manifest.path.parent.parent.name).strip("-.")
    stem = f"{parent}-{manifest.name}"[:63] if parent else manifest.name
    candidates = [stem, *(f"{stem[:60]}-{n}" for n in range(2, 100))]
    return next((c for c in candidates if not paths.env_dir(c).exists()), candidates[-1])


def manifest_source(manifest: Path | None, from_env: str | None) -> Path:
    """MANIFEST or --from-env VAR (exactly one): the manifest file to sync."""
    if (manifest is None) == (from_env is None):
        raise UsageError("sync: give a MANIFEST file or --from-env VAR")
    if from_env is not None:
        import tempfile

        from volenv.runpod.provision import read_inline_manifest

        manifest = read_inline_manifest(from_env, Path(tempfile.gettempdir()))
    assert manifest is not None
    return manifest


def reinstall_names(reinstall: list[str] | None) -> tuple[str, ...]:
    """--reinstall PKG values as canonical names; a bad one is a usage error."""
    from packaging.utils import InvalidName, canonicalize_name

    try:
        return tuple(canonicalize_name(p, validate=True) for p in reinstall or [])
    except InvalidName as exc:
        raise UsageError(f"--reinstall: {exc}") from None
