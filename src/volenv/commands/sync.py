"""`volenv sync`: build (or reuse) a manifest's snapshot, make it current, fetch its models,
and take its start trace when `[activate] trace-cmd` asks. `run --on-missing build` calls this
too, the one place activation reaches up into building."""

from __future__ import annotations

from pathlib import Path

from volenv.base.errors import UsageError, VolenvError
from volenv.base.ui import reporter
from volenv.build.sync import SyncOptions, SyncResult
from volenv.build.sync import sync as build_sync
from volenv.manifest.parse import Manifest
from volenv.store.paths import VolumePaths


def sync(paths: VolumePaths, manifest: Manifest, opts: SyncOptions) -> SyncResult:
    """The snapshot, its models, then (when the manifest has a trace-cmd) its start trace."""
    result = build_sync(paths, manifest, opts)
    if manifest.trace_cmd and not opts.dry_run:
        trace_after_build(paths, manifest, Path(result.path))
    return result


def manifest_source(manifest: Path | None, from_env: str | None) -> Path:
    """MANIFEST or --from-env VAR (exactly one): the manifest file to sync."""
    if (manifest is None) == (from_env is None):
        raise UsageError("sync: give a MANIFEST file or --from-env VAR")
    if from_env is not None:
        import tempfile

        from volenv.runpod.provision import read_inline_manifest

        manifest = read_inline_manifest(from_env, Path(tempfile.gettempdir()) / "volenv-inline")
    assert manifest is not None
    return manifest


def reinstall_names(reinstall: list[str] | None) -> tuple[str, ...]:
    """--reinstall PKG values as canonical names; a bad one is a usage error."""
    from packaging.utils import InvalidName, canonicalize_name

    try:
        return tuple(canonicalize_name(p, validate=True) for p in reinstall or [])
    except InvalidName as exc:
        raise UsageError(f"--reinstall: {exc}") from None


def trace_after_build(paths: VolumePaths, manifest: Manifest, snap: Path) -> None:
    """[activate] trace-cmd: trace the start once per snapshot (again when the command changed);
    the trace re-packs a packed snapshot so its startup pack exists."""
    from volenv.base.redact import redact_text
    from volenv.commands.trace import run_trace
    from volenv.store.sealcheck import check_seal
    from volenv.store.trace import load_trace

    have = load_trace(snap, check_seal(str(snap), snap.name))
    if have is not None and have.command == tuple(redact_text(a) for a in manifest.trace_cmd):
        return
    argv = ["--manifest", str(manifest.path), "--on-missing", "fail", "--", *manifest.trace_cmd]
    try:
        with reporter.step("tracing the start"):
            run_trace(str(paths.root), argv)
    except VolenvError as exc:  # the snapshot is built and current: a failed trace only warns
        reporter.warn(f"[activate] trace-cmd: {exc.message}; {snap.name} has no start trace")
