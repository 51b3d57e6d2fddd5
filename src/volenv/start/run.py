"""`volenv run`: its arguments (parsed without argparse or typer: the entry point reads them on
every container start), the policies around activation (on-missing build, wait or fail;
--diagnose) and the exec. The container's fast path: module level imports only what activation does; building
(`start.provide`), materializing, model copies and the diagnosis are imported on their paths."""

from __future__ import annotations

import os
import sys
import time

from volenv.base.errors import (
    DamagedRecord,
    InterpreterMismatch,
    LockTimeout,
    NoSnapshotError,
    UsageError,
    VerifyError,
    VolenvError,
    VolumeError,
)
from volenv.start.activation import (
    Target,
    _activation_from_seal,
    _contained_snapshot,
    _honour_rollback,
    _verify_deep,
    compute_env,
    find_snapshot,
    mark_used,
    resolve_target,
)
from volenv.store import runpodcache
from volenv.store.rootfind import fix_command
from volenv.store.sealcheck import SealProblem, check_seal, newest_valid_snapshot, read_seal, rollback_hint

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


ON_MISSING = ("build", "wait", "fail")


#: start (the default): the seal, then the files this start reads at stat (start/startcheck.py)
VERIFY_LEVELS = ("seal", "start", "stat", "full")


class RunOptions:
    def __init__(self) -> None:
        self.manifest: str | None = None
        self.env: str | None = None
        self.on_missing = os.environ.get("VOLENV_ON_MISSING", "build")
        self.verify = os.environ.get("VOLENV_VERIFY", "start")
        self.lock_timeout_text = os.environ.get("VOLENV_LOCK_TIMEOUT", "900")  # parsed with the arguments
        self.lock_timeout = 900.0
        self.diagnose = False
        self.materialize = os.environ.get("VOLENV_MATERIALIZE", "never")
        self.materialize_dir: str | None = os.environ.get("VOLENV_MATERIALIZE_DIR") or None
        self.command: list[str] = []
        self.verb = "running"  # `volenv env` runs nothing: it says "using"
        self.diagnose_grace: str | None = None
        self.grace = 60.0


RUN_USAGE = (
    "usage: volenv [--root DIR] run (--manifest M | --env NAME) [--on-missing build|wait|fail]\n"
    "                 [--verify seal|start|stat|full] [--lock-timeout SECONDS] [--diagnose]\n"
    "                 [--materialize auto|always|never] [--materialize-dir DIR]\n"
    "                 [--diagnose-grace SECONDS] -- CMD [ARGS...]"
)


RUN_HELP = (
    RUN_USAGE
    + """

  Activate a verified snapshot and exec CMD in it (no shell, the process is replaced).

Options:
  -m, --manifest FILE     Manifest TOML: its snapshot (by digest), built if missing.
  -e, --env NAME          An env's current snapshot (nothing to build from).
  --on-missing POLICY     build (default), wait (for another builder) or fail (exit 3).
  --verify LEVEL          before exec: seal; start (default: the seal, then the files this start
                          reads and the required models' files, at stat); stat; or full.
                          Damage is rebuilt (or refetched) with --on-missing build, else exit 4.
  --lock-timeout SECONDS  How long to wait for another build's lease (default 900).
  --materialize WHEN      auto, always or never (default): copy a packed snapshot to local disk.
  --materialize-dir DIR   Where materialized snapshots go.
  --diagnose              Never die silently: if activation fails, or CMD fails to start or exits
                          non-zero within the grace period, serve the reason (CMD's last stderr
                          lines, the snapshot's verification) to RunPod jobs instead of exiting.
                          CMD runs as volenv's child (signals passed on, its exit status kept).
  --diagnose-grace SECONDS  How long CMD counts as booting under --diagnose (default 60).
  -h, --help              Show this message and exit.

Environment (options win over these):
  VOLENV_ROOT                      volume root (like --root before `run`)
  VOLENV_ON_MISSING                default for --on-missing
  VOLENV_VERIFY                    default for --verify
  VOLENV_LOCK_TIMEOUT              default for --lock-timeout
  VOLENV_MATERIALIZE               default for --materialize
  VOLENV_MATERIALIZE_DIR           default for --materialize-dir
  VOLENV_DIAGNOSE_GRACE            default for --diagnose-grace
  VOLENV_MATERIALIZE_THRESHOLD_MS  if set, auto materializes when a volume metadata op takes this many ms
  VOLENV_LOCAL_DIR                 where [[models]] local = always|auto copies go

Set in CMD's environment: VIRTUAL_ENV, PATH, VOLENV_ENV, VOLENV_SNAPSHOT, VOLENV_ROOT,
VOLENV_MODEL_<NAME> (an hf model's snapshot directory, a url model's file path), and the
manifest's [activate] variables.

Docs: docs/cli.md#run (docs/ in volenv's source tree)."""
)


TRACE_HELP = """\
usage: volenv [--root DIR] trace (--manifest M | --env NAME) [--on-missing build|wait|fail]
                 [--verify seal|start|stat|full] [--lock-timeout SECONDS] -- CMD [ARGS...]

  Run CMD once in the snapshot and store the files its start opened, in order, as
  .volenv/trace.json (startup pack order); a packed snapshot is re-packed with its startup pack.
  CMD's stdout goes to stderr; stdout carries only volenv's result (--json for a document).

Options:
  -m, --manifest FILE     Manifest TOML: its snapshot (by digest), built if missing.
  -e, --env NAME          An env's current snapshot (nothing to build from).
  --on-missing POLICY     build (default), wait (for another builder) or fail (exit 3).
  --verify LEVEL          seal, start (default), stat or full before CMD runs; a failure is exit 4.
  --lock-timeout SECONDS  How long to wait for another build's lease (default 900).
  -h, --help              Show this message and exit.

--materialize does not apply: a trace runs the snapshot in place. The environment defaults
are run's (VOLENV_ROOT, VOLENV_ON_MISSING, VOLENV_VERIFY, VOLENV_LOCK_TIMEOUT).

Docs: docs/cold-start.md#start-traces-and-the-startup-pack (docs/ in volenv's source tree)."""


#: each command that parses run's arguments, and its help
RUN_LIKE_HELP = {"run": RUN_HELP, "trace": TRACE_HELP}


#: run's options that take a value (globalargs skips their values when it moves global options)
RUN_VALUED = {
    "--manifest",
    "-m",
    "--env",
    "-e",
    "--on-missing",
    "--verify",
    "--lock-timeout",
    "--materialize",
    "--materialize-dir",
    "--diagnose-grace",
}


def parse_run_args(argv: list[str], command: str = "run") -> RunOptions:
    """run's arguments; `command` (run or trace, which shares them) names the help and the errors."""
    hint = f"see `volenv {command} --help`"
    o = RunOptions()
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            o.command = argv[i + 1 :]
            break
        if a in ("-h", "--help"):
            print(RUN_LIKE_HELP[command])
            raise SystemExit(0)
        key, eq, val = a.partition("=")
        if key in RUN_VALUED:
            if not eq:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"{key} needs a value", hint=hint)
                val = argv[i]
            if key in ("--manifest", "-m"):
                o.manifest = val
            elif key in ("--env", "-e"):
                o.env = val
            elif key == "--on-missing":
                o.on_missing = val
            elif key == "--verify":
                o.verify = val
            elif key == "--materialize":
                o.materialize = val
            elif key == "--materialize-dir":
                o.materialize_dir = val
            elif key == "--diagnose-grace":
                o.diagnose_grace = val
            else:
                o.lock_timeout_text = val
        elif a == "--diagnose":
            o.diagnose = True
        elif a.startswith("-"):
            raise UsageError(f"{command}: unknown option {a!r}", hint=hint)
        else:
            o.command = argv[i:]
            break
        i += 1
    try:
        o.lock_timeout = float(o.lock_timeout_text)
    except ValueError:
        raise UsageError(
            f"--lock-timeout (or VOLENV_LOCK_TIMEOUT): {o.lock_timeout_text!r} is not a number of seconds"
        ) from None
    if o.diagnose or o.diagnose_grace is not None:
        from volenv.start.supervise import grace_seconds

        o.grace = grace_seconds(o.diagnose_grace)  # a bad value is exit 2 before anything runs
    if o.on_missing not in ON_MISSING:
        raise UsageError(f"--on-missing: {o.on_missing!r} is not one of {', '.join(ON_MISSING)}")
    if o.materialize not in ("auto", "always", "never"):
        raise UsageError(f"--materialize: {o.materialize!r} is not one of auto, always, never")
    if o.verify not in VERIFY_LEVELS:
        raise UsageError(f"--verify: {o.verify!r} is not one of {', '.join(VERIFY_LEVELS)}")
    if (o.manifest is None) == (o.env is None):
        raise UsageError(f"{command}: give exactly one of --manifest M or --env NAME", hint=hint)
    if not o.command:
        raise UsageError(f"{command}: no command given after --", hint=hint)
    return o


def prepare(root: str, o: RunOptions, *, start_check: bool = True) -> tuple[Target, str, dict[str, Any]]:
    """Find and verify the snapshot, applying the on-missing policy. Returns target, dir, seal.
    `start_check=False`: the start files are checked by whoever runs them (a materialized copy
    is checked against the record as it is extracted; `run` checks in place if auto stays)."""
    from volenv.store.rootfind import root_exists

    present = root_exists(root)
    if not present and (o.on_missing != "build" or o.manifest is None):
        parent = os.path.dirname(os.path.abspath(root))
        if o.on_missing == "fail" and os.path.ismount(parent):
            # the volume is mounted, nothing was ever built on it: a missing snapshot, not volume
            from volenv.base.errors import NoSnapshotError, shq

            what = shq(str(o.manifest)) if o.manifest else "MANIFEST"
            raise NoSnapshotError(
                f"nothing is provisioned on the volume mounted at {parent} ({root} does not exist yet)",
                hint=f"provision it (docs/runpod.md): `volenv --root {shq(root)} sync {what}`",
            )
        raise VolumeError(
            f"volume root {root} does not exist",
            hint="mount the volume, or pass --root / VOLENV_ROOT",
        )
    target = resolve_target(root, o, remember=True)
    deadline = time.monotonic() + o.lock_timeout
    attempts = 0
    while True:
        attempts += 1
        try:
            sid = find_snapshot(root, target) if root_exists(root) else None
        except DamagedRecord:
            # an index entry only caches a resolution: with a manifest to build from, the sync
            # below writes it again (a damaged `current` has no such source: it is the error)
            if not (o.on_missing == "build" and target.digest is not None and attempts <= 2):
                raise
            sid = None
        pinned = _honour_rollback(root, o, target, sid)
        sid = pinned or sid
        problem: SealProblem | VerifyError | None = None
        if sid is not None:
            snap_dir = os.path.join(root, "envs", target.env, "snapshots", sid)
            _contained_snapshot(root, snap_dir)
            # in-flight guard: GC keeps snapshots whose use mark is fresh, so mark before checking
            mark_used(root, target.env, sid)
            try:
                record: list[bytes] = []
                seal = check_seal(snap_dir, sid, keep_record=record)
                if o.verify == "start":
                    if start_check:
                        _verify_start(snap_dir, seal, record[0], o.command)
                elif o.verify != "seal":
                    _verify_deep(snap_dir, o.verify)
                if target.digest is None or pinned:  # a rollback runs as it was built
                    target.activation = _activation_from_seal(seal)
                if o.verify != "seal":
                    damaged = _damaged_models(root, target, o, sid, seal)
                    if damaged is not None and o.on_missing == "build" and o.manifest and attempts <= 2:
                        _build_for(root, o, target, sid, None, models=damaged)
                        continue
                    if damaged is not None:
                        raise damaged
                return target, snap_dir, seal
            except SealProblem as sp:
                problem = sp
            except VerifyError as ve:
                problem = ve
            if pinned:  # never rebuild past a rollback: its target is what must run
                detail = problem.detail if isinstance(problem, SealProblem) else problem.message
                raise VerifyError(
                    f"'{target.env}' is rolled back to {sid}, which is not usable: {detail}",
                    hint=f"{rollback_hint(root, target.env, exclude=sid)}; or end the rollback:"
                    f" {fix_command(root, 'sync', o.manifest or '')}",
                )
        if o.on_missing == "build" and attempts <= 2:
            _build_for(root, o, target, sid, problem)
            continue
        if o.on_missing == "wait" and problem is None:
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"timed out after {o.lock_timeout:.0f}s waiting for a snapshot of '{target.env}'"
                )
            time.sleep(0.5)
            continue
        raise _missing_error(root, o, target, sid, problem)


def _verify_start(snap_dir: str, seal: dict[str, Any], record: bytes, command: list[str]) -> None:
    """`--verify start`: the files this start reads, at stat (start/startcheck.py); a difference
    is a VerifyError naming them, which the on-missing policy handles like any damage."""
    from volenv.start.startcheck import snapshot_problems

    what, checked, problems = snapshot_problems(snap_dir, seal, record, command)
    if problems:
        shown = ", ".join(str(p) for p in problems[:8])
        more = f" and {len(problems) - 8} more" if len(problems) > 8 else ""
        err = VerifyError(
            f"snapshot {os.path.basename(snap_dir)}: {len(problems)} of the {checked} files this start"
            f" reads ({what}) differ from the record: {shown}{more}",
            hint=fix_command(_root_of(snap_dir), "verify", _env_of(snap_dir), "--repair"),
        )
        err.damaged = [p.path for p in problems]  # type: ignore[attr-defined]
        raise err


def _manifest_of(root: str, env: str, sid: str | None) -> str | None:
    """The manifest a snapshot of the env was built from, when it is still where it was (a
    `run --env` has none of its own to name in a hint)."""
    for candidate in (sid, newest_valid_snapshot(root, env)):
        if candidate is None:
            continue
        try:
            path = read_seal(os.path.join(root, "envs", env, "snapshots", candidate)).get("manifest_path")
        except SealProblem:
            continue
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _root_of(snap_dir: str) -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(snap_dir))))


def _env_of(snap_dir: str) -> str:
    return os.path.basename(os.path.dirname(os.path.dirname(snap_dir)))


def _damaged_models(
    root: str, target: Target, o: RunOptions, sid: str, seal: dict[str, Any]
) -> VolenvError | None:
    """The required models' files, present, regular and of their recorded size; a difference
    is a ModelError (exit 9) naming them, unless the policy fetches them again."""
    models = target.activation.get("models", [])
    if not models:
        return None
    from volenv.start.startcheck import model_problems

    problems = model_problems(root, models)
    if not problems:
        return None
    from volenv.base.errors import ModelError

    names = sorted({p.model or "?" for p in problems})
    manifest = o.manifest or seal.get("manifest_path")
    how = fix_command(root, "models", "fetch", manifest) if manifest else None
    absent = [p for p in problems if p.kind == "missing" and p.path.endswith(".json")]
    damaged = [p for p in problems if p not in absent]
    parts = [f"{p.model} was never fetched (no record at {p.path})" for p in absent]
    if damaged:
        parts.append(
            f"{len(damaged)} recorded file(s) damaged on the volume: "
            + ", ".join(str(p) for p in damaged[:5])
            + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
        )
    return ModelError(
        f"required model {', '.join(names)}: " + "; ".join(parts),
        hint=f"fetch it: {how}" if how else None,
    )


def _missing_error(
    root: str, o: RunOptions, target: Target, sid: str | None, problem: SealProblem | VerifyError | None
) -> VolenvError:
    manifest = o.manifest or _manifest_of(root, target.env, sid)
    build_cmd = fix_command(root, "sync", manifest) if manifest else "sync the env's manifest"
    if problem is None:
        what = (
            f"manifest {o.manifest} (digest {target.digest[:16]}…)"
            if target.digest
            else f"env '{target.env}'"
        )
        return NoSnapshotError(f"no snapshot for {what} under {root}", hint=f"build it: {build_cmd}")
    if isinstance(problem, SealProblem) and problem.kind == "interpreter":
        return InterpreterMismatch(
            f"snapshot {sid}: {problem.detail}", hint=f"rebuild for this image: {build_cmd}"
        )
    if isinstance(problem, VerifyError):
        return problem
    return VerifyError(f"snapshot {sid} failed verification: {problem.detail}", hint=f"rebuild: {build_cmd}")


def _build_for(
    root: str,
    o: RunOptions,
    target: Target,
    sid: str | None,
    problem: SealProblem | VerifyError | None,
    *,
    models: VolenvError | None = None,
) -> None:
    """--on-missing build: quarantine a damaged snapshot, then sync (others wait on the lease);
    damaged model files (`models`) are fetched again by that sync (models/cache.py)."""
    from pathlib import Path

    from volenv.base.ui import reporter
    from volenv.build.plan import SyncOptions
    from volenv.manifest.parse import load_manifest
    from volenv.start.provide import provide
    from volenv.store.paths import VolumePaths

    if o.manifest is None and problem is not None:  # nothing to build from: say what is damaged
        raise _missing_error(root, o, target, sid, problem)
    if o.manifest is None:
        raise NoSnapshotError(
            f"env '{target.env}' has no usable snapshot and --env gives nothing to build from",
            hint="use --manifest M so volenv can build it",
        )
    import signal

    # the build waits for its subprocesses: an inherited SIGCHLD=SIG_IGN would reap them first
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    paths = VolumePaths(Path(root))
    if (
        problem is not None
        and sid is not None
        and not (isinstance(problem, SealProblem) and problem.kind == "interpreter")
    ):
        _quarantine_if_still_damaged(paths, target.env, sid, problem, o)
    if models is not None:
        reporter.info(f"{models.message}; fetching again")
    elif problem is None:  # not indexed yet: often an existing snapshot is reused (only [activate] changed)
        reporter.info(f"no snapshot indexed for {o.manifest}; syncing it")
    else:
        reporter.info(f"snapshot {sid} of '{target.env}' is not usable; building it again")
    manifest = load_manifest(o.manifest)
    outcome = provide(paths, manifest, SyncOptions(lock_timeout=o.lock_timeout, refresh=problem is not None))
    from volenv.base.ui import step_summary, sync_summary

    if outcome.steps:
        reporter.info(step_summary(outcome.steps))
    reporter.info(sync_summary(outcome.action, outcome.snapshot, outcome.seconds, outcome.stats))
    target.digest = manifest.digest


def _quarantine_if_still_damaged(
    paths: Any, env: str, sid: str, problem: SealProblem | VerifyError, o: RunOptions
) -> None:
    """Under the env's lease, and only if the snapshot is still damaged: another worker may have
    rebuilt it since this one looked (moving its fresh copy aside would pull the files from
    under the workers already running from it)."""
    from dataclasses import asdict

    from volenv.base.ui import reporter
    from volenv.build.staging import quarantine
    from volenv.store.locks import BuildLease

    snap = paths.snapshot(env, sid)
    with BuildLease(paths, env, timeout=o.lock_timeout, say=reporter.info):
        if not snap.exists():
            return
        try:
            record: list[bytes] = []
            seal = check_seal(str(snap), sid, keep_record=record)
            if o.verify == "start":
                _verify_start(str(snap), seal, record[0], o.command)
            elif o.verify != "seal":
                _verify_deep(str(snap), o.verify)
            return  # whole again: rebuilt by another worker meanwhile
        except (SealProblem, VerifyError):
            pass
        report = getattr(problem, "report", None)
        quarantine(paths, snap, str(problem), asdict(report) if report is not None else None)


def run(root: str, argv: list[str]) -> int:
    """`volenv run`: never returns on success (exec); returns an exit code on failure."""
    o = parse_run_args(argv)
    try:
        materializing = o.materialize != "never"
        # a materialized copy is checked against the record as it is extracted: the volume's
        # files are statted for this start only if it runs in place after all
        target, snap_dir, _seal = prepare(root, o, start_check=not materializing)
        volume_snap = snap_dir
        if materializing:
            from volenv.start.materialize import choose

            level = o.verify if o.verify in ("stat", "full") else "seal"
            local = choose(root, snap_dir, _seal, o.materialize, o.materialize_dir, level)
            if local is not None:
                snap_dir = local
            elif o.verify == "start":  # in place: check what it reads (and rebuild on damage)
                target, snap_dir, _seal = prepare(root, o)
                volume_snap = snap_dir
        env = compute_env(root, snap_dir, target.env, target.activation)
        for line in runpodcache.start_lines(target.activation.get("models", []), env):
            print(f"volenv: {line}", file=sys.stderr, flush=True)
        if any(m.get("local") in ("always", "auto") for m in target.activation.get("models", [])):
            from volenv.start.localcopy import localize_models  # [[models]] local: copies to this disk

            localize_models(root, volume_snap, target.activation["models"], env, o.materialize_dir)
    except Exception as exc:  # every activation failure reaches --diagnose, OSError and bugs too
        if not o.diagnose:
            raise
        from volenv.runpod.diagnose import serve_diagnosis

        return serve_diagnosis(root, o, _as_volenv_error(exc))
    cmd = list(o.command)
    # A program the snapshot provides runs by absolute path: if the snapshot vanished between
    # the check and the exec, that fails loudly instead of falling back to another PATH entry.
    own = os.path.join(snap_dir, "bin", cmd[0])
    if os.sep not in cmd[0] and os.path.exists(own):
        cmd[0] = own
    if o.diagnose:  # CMD as a child for its grace period: a death at boot is diagnosed too
        from volenv.start.supervise import supervise

        return supervise(root, o, cmd, env, volume_snap, o.grace)
    try:
        if os.sep in cmd[0]:
            os.execve(cmd[0], cmd, env)
        else:
            os.execvpe(cmd[0], cmd, env)
    except OSError as exc:
        raise UsageError(f"cannot run {cmd[0]!r}: {exc.strerror}") from exc


def _as_volenv_error(exc: Exception) -> VolenvError:
    if isinstance(exc, VolenvError):
        return exc
    if isinstance(exc, OSError):
        from volenv.base.errors import from_oserror

        return from_oserror(exc, "volume access failed")
    import traceback  # a genuine bug: the container log is the only log there is

    traceback.print_exc()
    return VolenvError(f"internal error: {type(exc).__name__}: {exc}")


def main_fast(root_opt: str | None, argv: list[str], json_out: bool = False) -> int:
    from volenv.store.rootfind import discover_root

    try:
        try:
            parse_run_args(argv)  # `run --help` and bad options first: they need no root
            root, _source = discover_root(root_opt, defer=True)
            return run(root, argv)
        except OSError as exc:
            from volenv.base.errors import from_oserror

            raise from_oserror(exc, "volume access failed") from exc
    except VolenvError as exc:
        from volenv.base.redact import redact_text

        print(f"error: {redact_text(exc.message)}", file=sys.stderr)
        if exc.cause:
            print(f"  cause: {redact_text(exc.cause)}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {redact_text(exc.hint)}", file=sys.stderr)
        if json_out:  # the CLI's --json error document; `json` only on this error path
            import json

            from volenv.base.errors import error_document

            doc = error_document(exc.exit_code, exc.message, exc.cause, exc.hint)
            sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
            sys.stdout.flush()
        return exc.exit_code
