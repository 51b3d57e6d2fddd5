"""Build, then make ready to start: the snapshot (`build.sync`: resolve, build or reuse, models),
then its start trace when `[activate] trace-cmd` asks. `volenv sync` and `run --on-missing
build` both call `provide`, so a snapshot a worker built for itself is the one a `sync` would
have made, trace included."""

from __future__ import annotations

from pathlib import Path

from volenv.base.errors import VolenvError
from volenv.base.ui import reporter
from volenv.build.plan import SyncOptions, SyncResult
from volenv.build.sync import sync as build_sync
from volenv.manifest.schema import Manifest
from volenv.store.paths import VolumePaths


def provide(paths: VolumePaths, manifest: Manifest, opts: SyncOptions) -> SyncResult:
    """The snapshot, its models, then (when the manifest has a trace-cmd) its start trace."""
    result = build_sync(paths, manifest, opts)
    if manifest.trace_cmd and not opts.dry_run:
        trace_after_build(paths, manifest, Path(result.path))
    return result


def trace_after_build(paths: VolumePaths, manifest: Manifest, snap: Path) -> None:
    """[activate] trace-cmd: trace the start once per snapshot (again when the command changed);
    the trace re-packs a packed snapshot so its startup pack exists. A failed trace only warns:
    the snapshot is built and current."""
    from volenv.base.redact import redact_text
    from volenv.start.activation import compute_env
    from volenv.start.tracing import keep_trace, take_trace
    from volenv.store.alias import activation_settings
    from volenv.store.sealcheck import SealProblem, check_seal
    from volenv.store.trace import load_trace

    root = str(paths.root)
    try:
        seal = check_seal(str(snap), snap.name)
        have = load_trace(snap, seal)
        if have is not None and have.command == tuple(redact_text(a) for a in manifest.trace_cmd):
            return
        env = compute_env(root, str(snap), manifest.name, activation_settings(manifest))
        with reporter.step("tracing the start"):
            keep_trace(root, snap, seal, take_trace(root, snap, seal, env, list(manifest.trace_cmd)))
    except SealProblem as sp:
        reporter.warn(f"[activate] trace-cmd: {sp.detail}; {snap.name} has no start trace")
    except VolenvError as exc:
        reporter.warn(f"[activate] trace-cmd: {exc.message}; {snap.name} has no start trace")
