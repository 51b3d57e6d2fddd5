"""`volenv sync`: build (or reuse) a manifest's snapshot, make it current, fetch its models,
and take its start trace when `[activate] trace-cmd` asks (`start.provide`, which `run
--on-missing build` calls too)."""

from __future__ import annotations

from pathlib import Path

from volenv.base.errors import UsageError
from volenv.build.plan import SyncOptions, SyncResult
from volenv.manifest.schema import Manifest
from volenv.start.provide import provide
from volenv.store.paths import VolumePaths


def sync(paths: VolumePaths, manifest: Manifest, opts: SyncOptions) -> SyncResult:
    """The snapshot, its models, then (when the manifest has a trace-cmd) its start trace."""
    return provide(paths, manifest, opts)


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
