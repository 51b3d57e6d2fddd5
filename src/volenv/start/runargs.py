"""`volenv run`'s (and `trace`'s and `env`'s) arguments, parsed without argparse or typer: the
entry point reads them on every container start, before anything else is imported."""

from __future__ import annotations

import os

from volenv.base.errors import UsageError

ON_MISSING = ("build", "wait", "fail")


VERIFY_LEVELS = ("seal", "stat", "full")


class RunOptions:
    def __init__(self) -> None:
        self.manifest: str | None = None
        self.env: str | None = None
        self.on_missing = os.environ.get("VOLENV_ON_MISSING", "build")
        self.verify = os.environ.get("VOLENV_VERIFY", "seal")
        self.lock_timeout = float(os.environ.get("VOLENV_LOCK_TIMEOUT", "900"))
        self.diagnose = False
        self.materialize = os.environ.get("VOLENV_MATERIALIZE", "never")
        self.materialize_dir: str | None = os.environ.get("VOLENV_MATERIALIZE_DIR") or None
        self.command: list[str] = []
        self.verb = "running"  # `volenv env` runs nothing: it says "using"


RUN_USAGE = (
    "usage: volenv [--root DIR] run (--manifest M | --env NAME) [--on-missing build|wait|fail]\n"
    "                 [--verify seal|stat|full] [--lock-timeout SECONDS] [--diagnose]\n"
    "                 [--materialize auto|always|never] [--materialize-dir DIR] -- CMD [ARGS...]"
)


RUN_HELP = (
    RUN_USAGE
    + """

  Activate a verified snapshot and exec CMD in it (no shell, the process is replaced).

Options:
  -m, --manifest FILE     Manifest TOML: its snapshot (by digest), built if missing.
  -e, --env NAME          An env's current snapshot (nothing to build from).
  --on-missing POLICY     build (default), wait (for another builder) or fail (exit 3).
  --verify LEVEL          seal (default), stat or full before exec; a failure is exit 4.
  --lock-timeout SECONDS  How long to wait for another build's lease (default 900).
  --materialize WHEN      auto, always or never (default): copy a packed snapshot to local disk.
  --materialize-dir DIR   Where materialized snapshots go.
  --diagnose              If activation fails, serve the reason to RunPod jobs instead of exiting.
  -h, --help              Show this message and exit.

Environment (options win over these):
  VOLENV_ROOT                      volume root (like --root before `run`)
  VOLENV_ON_MISSING                default for --on-missing
  VOLENV_VERIFY                    default for --verify
  VOLENV_LOCK_TIMEOUT              default for --lock-timeout
  VOLENV_MATERIALIZE               default for --materialize
  VOLENV_MATERIALIZE_DIR           default for --materialize-dir
  VOLENV_MATERIALIZE_THRESHOLD_MS  if set, auto materializes when a volume metadata op takes this many ms
  VOLENV_LOCAL_DIR                 where [[models]] local = always|auto copies go

Set in CMD's environment: VIRTUAL_ENV, PATH, VOLENV_ENV, VOLENV_SNAPSHOT, VOLENV_ROOT,
VOLENV_MODEL_<NAME> (an hf model's snapshot directory, a url model's file path), and the
manifest's [activate] variables."""
)


TRACE_HELP = """\
usage: volenv [--root DIR] trace (--manifest M | --env NAME) [--on-missing build|wait|fail]
                 [--verify seal|stat|full] [--lock-timeout SECONDS] -- CMD [ARGS...]

  Run CMD once in the snapshot and store the files its start opened, in order, as
  .volenv/trace.json (startup pack order); a packed snapshot is re-packed with its startup pack.
  CMD's stdout goes to stderr; stdout carries only volenv's result (--json for a document).

Options:
  -m, --manifest FILE     Manifest TOML: its snapshot (by digest), built if missing.
  -e, --env NAME          An env's current snapshot (nothing to build from).
  --on-missing POLICY     build (default), wait (for another builder) or fail (exit 3).
  --verify LEVEL          seal (default), stat or full before CMD runs; a failure is exit 4.
  --lock-timeout SECONDS  How long to wait for another build's lease (default 900).
  -h, --help              Show this message and exit.

--materialize does not apply: a trace runs the snapshot in place. The environment defaults
are run's (VOLENV_ROOT, VOLENV_ON_MISSING, VOLENV_VERIFY, VOLENV_LOCK_TIMEOUT)."""


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
            else:
                try:
                    o.lock_timeout = float(val)
                except ValueError:
                    raise UsageError(f"--lock-timeout: {val!r} is not a number of seconds") from None
        elif a == "--diagnose":
            o.diagnose = True
        elif a.startswith("-"):
            raise UsageError(f"{command}: unknown option {a!r}", hint=hint)
        else:
            o.command = argv[i:]
            break
        i += 1
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
