"""The typer CLI: declares options and calls one function per command; nothing else lives here."""

from __future__ import annotations

import functools
import os
import sys
import time
import traceback
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from volenv import __version__
from volenv.base import ui
from volenv.base.errors import EXIT_INTERNAL, UsageError, VolenvError
from volenv.cli import render
from volenv.cli.globalargs import hoist_globals as _hoist
from volenv.cli.globalargs import split_globals
from volenv.cli.render import render_error
from volenv.store.paths import RootChoice, VolumePaths, choose_root


def _plain_required_metavars() -> None:
    """Usage lines say `volenv history [OPTIONS] ENV`, as click, uv and pipx do: typer >= 0.20
    writes a required argument as `{ENV}`, which reads like a placeholder to fill with braces."""
    from typer.core import TyperArgument

    shown = TyperArgument.make_metavar

    def make_metavar(self: TyperArgument, ctx: typer.Context, *, usage: bool = False) -> str:
        var = shown(self, ctx, usage=usage)
        if usage and var.startswith("{") and "}" in var:
            head, _, tail = var[1:].partition("}")
            return head + tail
        return var

    TyperArgument.make_metavar = make_metavar  # type: ignore[method-assign, assignment]


_plain_required_metavars()

app = typer.Typer(
    name="volenv",
    help="Sealed, versioned Python environments and model caches on a shared network volume.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help and usage errors: no boxed panels, no escape codes
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass(frozen=True)
class GlobalOptions:
    root_opt: str | None
    json: bool
    verbosity: int
    progress: bool

    @functools.cached_property
    def root(self) -> RootChoice:
        """Resolved on first use, not in the callback: `volenv CMD --help` neither looks for a
        root nor announces a fallback one."""
        return choose_root(self.root_opt)

    @property
    def paths(self) -> VolumePaths:
        return VolumePaths(self.root.path)

    @property
    def quiet(self) -> int:
        return max(0, -self.verbosity)


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str, option: str) -> int:
    """`10G`, `500M`, `1.5GiB` (powers of 1024), `2GB` (powers of 1000), or plain bytes."""
    value = text.strip().upper().replace(" ", "")
    binary_suffix = value.endswith("IB")
    value = value[:-2] if binary_suffix else value.removesuffix("B")
    unit = value[-1:] if value[-1:] in ("K", "M", "G", "T") else ""
    decimal = bool(unit) and not binary_suffix and text.strip().upper().endswith("B")
    try:
        amount = float(value[: len(value) - len(unit)])
    except ValueError:
        amount = -1.0
    if not 0 <= amount < 1e30 or (binary_suffix and not unit):
        raise UsageError(
            f"{option}: {text!r} is not a size", hint="write bytes or a size such as 500M or 10G"
        )
    factor = 1000 ** "_KMGT".index(unit) if decimal else _SIZE_UNITS[unit]
    return int(amount * factor)


def _globals(ctx: typer.Context) -> GlobalOptions:
    obj = ctx.obj
    assert isinstance(obj, GlobalOptions)
    return obj


class Color(str, Enum):
    auto = "auto"
    always = "always"
    never = "never"


def _print_version(value: bool) -> None:
    if value:
        print(f"volenv {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    ctx: typer.Context,
    root: Annotated[
        str | None,
        typer.Option(
            "--root",  # VOLENV_ROOT is read by discover_root, which reports where the root came from
            metavar="DIR",
            help="Volume root (default: VOLENV_ROOT, else discovered).",
        ),
    ] = None,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="One JSON document on stdout (errors too), nothing else there."),
    ] = False,
    quiet: Annotated[
        int,
        typer.Option("--quiet", "-q", count=True, show_default=False, help="Less output (-qq: only errors)."),
    ] = 0,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose", "-v", count=True, show_default=False, help="More output (-vv: tracebacks)."
        ),
    ] = 0,
    color: Annotated[
        Color,
        typer.Option("--color", metavar="WHEN", help="Colour: auto, always or never (NO_COLOR: never)."),
    ] = Color.auto,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", envvar="VOLENV_NO_PROGRESS", help="No spinners or progress bars.")
    ] = False,
    _version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print volenv's version and exit."
        ),
    ] = False,
) -> None:
    # global options go before or after the command word (`volenv status --json`): see main()
    render.configure_console(color.value, quiet - verbose)
    verbosity = verbose - quiet
    ui.set_reporter(render.RichReporter(verbosity, not no_progress))  # before the root: -qq hides its notice
    ctx.obj = GlobalOptions(root, json_out, verbose - quiet, not no_progress)


@app.command()
def version(ctx: typer.Context) -> None:
    """Print volenv's version."""
    if _globals(ctx).json:
        render.emit_json("version", {"volenv": __version__})
    else:
        render.out_line(__version__)


@app.command()
def sync(
    ctx: typer.Context,
    manifest: Annotated[Path | None, typer.Argument(metavar="MANIFEST", help="Manifest TOML file.")] = None,
    refresh: Annotated[bool, typer.Option("--refresh", help="Re-resolve unpinned requirements.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
    lock_timeout: Annotated[
        float, typer.Option("--lock-timeout", metavar="SECONDS", help="Seconds to wait for the build lease.")
    ] = 900,
    min_free: Annotated[
        str | None,
        typer.Option(
            "--min-free",
            metavar="SIZE",
            help="Space that must be free on the volume before a build: bytes or 500M, 10G, 1.5GiB, 2GB.",
        ),
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", envvar="VOLENV_OFFLINE", help="Resolve from cache only.")
    ] = False,
    no_models: Annotated[
        bool, typer.Option("--no-models", help="Do not fetch the manifest's models.")
    ] = False,
    pack: Annotated[
        bool, typer.Option("--pack", help="Also store the snapshot as zstd packs (materialize, push).")
    ] = False,
    from_env: Annotated[
        str | None,
        typer.Option(
            "--from-env", metavar="VAR", help="Read the manifest's text from this environment variable."
        ),
    ] = None,
    result: Annotated[
        Path | None,
        typer.Option(
            "--result", metavar="FILE", help="Also write the JSON result to this file (provisioning pods)."
        ),
    ] = None,
    reinstall: Annotated[
        list[str] | None,
        typer.Option(
            "--reinstall",
            metavar="PKG",
            help="Rebuild and reinstall PKG from scratch into a new snapshot (repeatable).",
        ),
    ] = None,
    reinstall_all: Annotated[
        bool, typer.Option("--reinstall-all", help="Rebuild and reinstall every package into a new snapshot.")
    ] = False,
) -> None:
    """Build (or reuse) the snapshot for MANIFEST, make it current, fetch its models."""
    from volenv.build.sync import SyncOptions
    from volenv.cli.render import emit_json, render_sync
    from volenv.commands.sync import manifest_source, reinstall_names
    from volenv.commands.sync import sync as do_sync
    from volenv.manifest.parse import load_manifest

    g = _globals(ctx)
    manifest = manifest_source(manifest, from_env)
    reinstall = list(reinstall_names(reinstall))
    m = load_manifest(manifest)
    outcome = do_sync(
        g.paths,
        m,
        SyncOptions(
            refresh=refresh,
            dry_run=dry_run,
            lock_timeout=lock_timeout,
            min_free=None if min_free is None else parse_size(min_free, "--min-free"),
            offline=offline,
            models=not no_models,
            pack=pack,
            reinstall=tuple(reinstall),
            reinstall_all=reinstall_all,
        ),
    )
    if result is not None:
        from volenv.cli.render import to_data
        from volenv.store.volio import atomic_write_json

        result.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(result, {"version": 1, "command": "sync", **to_data(outcome)})
    if g.json:
        emit_json("sync", outcome)
    else:
        render_sync(outcome, g.quiet, g.verbosity > 0)


@app.command(
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "allow_interspersed_args": False,
    },
)
def run(ctx: typer.Context) -> None:
    """Activate a verified snapshot and exec CMD in it: run (--manifest M | --env NAME) -- CMD."""
    from volenv.start.run import run as do_run

    g = _globals(ctx)
    raise typer.Exit(do_run(str(g.root.path), list(ctx.args)))


class EnvFormat(str, Enum):
    sh = "sh"
    json = "json"


@app.command("env")
def env_cmd(
    ctx: typer.Context,
    manifest: Annotated[
        str | None, typer.Option("--manifest", "-m", metavar="FILE", help="Manifest TOML file.")
    ] = None,
    env: Annotated[
        str | None, typer.Option("--env", "-e", metavar="NAME", help="Env name (uses its current snapshot).")
    ] = None,
    fmt: Annotated[EnvFormat, typer.Option("--format", help="sh (for eval) or json.")] = EnvFormat.sh,
    verify: Annotated[str, typer.Option("--verify", metavar="LEVEL", help="seal, stat or full.")] = "seal",
) -> None:
    """Print the activation environment: eval "$(volenv env --env NAME)"."""
    from volenv.cli.render import render_env
    from volenv.commands.envcmd import activation_env

    g = _globals(ctx)
    if (manifest is None) == (env is None):
        raise UsageError("env: give exactly one of --manifest M or --env NAME")
    result = activation_env(str(g.root.path), manifest, env, verify)
    render_env(result, "json" if g.json else fmt.value)


def _status(ctx: typer.Context, env: str | None, sizes: bool, command: str) -> None:
    from volenv.cli.render import emit_json, render_status
    from volenv.commands.status import scan

    g = _globals(ctx)
    report = scan(g.paths, g.root.source, env_filter=env, sizes=sizes)
    if g.json:
        emit_json(command, report)
    else:
        render_status(report, g.quiet)


@app.command()
def status(
    ctx: typer.Context,
    env: Annotated[str | None, typer.Argument(metavar="ENV", help="Only this env.")] = None,
    sizes: Annotated[
        bool,
        typer.Option(
            "--sizes/--no-sizes", help="Compute unique sizes (bytes of files not hard-linked elsewhere)."
        ),
    ] = True,
) -> None:
    """Envs and snapshots on the volume: current, created, sizes, last used, groups, validity."""
    _status(ctx, env, sizes, "status")


TRUST_UNSIGNED = typer.Option(
    "--trust-unsigned",
    help="Accept bucket snapshots without a signature from VOLENV_TRUSTED_KEYS (anyone who can"
    " write the bucket then decides what runs).",
)


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    env: Annotated[str | None, typer.Argument(metavar="ENV", help="Only this env.")] = None,
    remote: Annotated[
        str | None, typer.Option("--remote", metavar="URL", help="List what a bucket holds instead.")
    ] = None,
    trust_unsigned: Annotated[bool, TRUST_UNSIGNED] = False,
) -> None:
    """Like status, without the (slower) unique size computation; --remote URL for a bucket."""
    if remote is not None:
        from volenv.cli.render import emit_json, render_switch_generic
        from volenv.commands.replicate import list_remote

        listing = list_remote(remote, trust_unsigned)
        emit_json("list", listing) if _globals(ctx).json else render_switch_generic(listing)
        return
    _status(ctx, env, False, "list")


@app.command("show")
def show_cmd(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(metavar="TARGET", help="ENV (its current snapshot), SNAPSHOT id or unique prefix."),
    ],
    sizes: Annotated[
        bool,
        typer.Option(
            "--sizes/--no-sizes", help="Compute the unique size (bytes of files not hard-linked elsewhere)."
        ),
    ] = True,
) -> None:
    """One snapshot: packages and versions, groups, models, size, link mode, interpreter, manifests."""
    from volenv.commands.show import show

    result = show(_globals(ctx).paths, target, sizes=sizes)
    render.emit_json("show", result) if _globals(ctx).json else render.render_show(result)


@app.command("diff")
def diff_cmd(
    ctx: typer.Context,
    a: Annotated[str, typer.Argument(metavar="A", help="ENV, SNAPSHOT id or unique prefix (the old side).")],
    b: Annotated[str, typer.Argument(metavar="B", help="ENV, SNAPSHOT id or unique prefix (the new side).")],
) -> None:
    """Packages added, removed and changed from A to B, and their groups' and models' changes."""
    from volenv.commands.diff import diff

    result = diff(_globals(ctx).paths, a, b)
    render.emit_json("diff", result) if _globals(ctx).json else render.render_diff(
        result, _globals(ctx).quiet
    )


class Level(str, Enum):
    seal = "seal"
    stat = "stat"
    full = "full"


@app.command("verify")
def verify_cmd(
    ctx: typer.Context,
    target: Annotated[
        str | None, typer.Argument(metavar="TARGET", help="ENV (its current snapshot) or SNAPSHOT id.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every snapshot on the volume.")] = False,
    level: Annotated[Level, typer.Option("--level", "-l", help="seal, stat or full.")] = Level.stat,
    repair: Annotated[
        bool, typer.Option("--repair", help="Rebuild damaged snapshots from their recorded manifest.")
    ] = False,
) -> None:
    """Check snapshots against their record; exit 4 on any error-level problem."""
    from volenv.base.errors import EXIT_VERIFY
    from volenv.cli.render import emit_json, render_verify
    from volenv.commands.verify import verify

    g = _globals(ctx)
    result = verify(g.paths, target, all_=all_, level=level.value)
    if repair and not result.ok:
        from volenv.commands.repair import repair_reports

        result = repair_reports(g.paths, result)
    if g.json:
        emit_json("verify", {"level": result.level, "ok": result.ok, "reports": result.reports})
    else:
        render_verify(result.reports, g.quiet)
    if not result.ok:
        raise typer.Exit(EXIT_VERIFY)


@app.command("history")
def history_cmd(
    ctx: typer.Context, env: Annotated[str, typer.Argument(metavar="ENV", help="Env name.")]
) -> None:
    """Generations of ENV: every switch of its current pointer."""
    from volenv.cli.render import emit_json, render_history
    from volenv.commands.versions import history

    g = _globals(ctx)
    result = history(g.paths, env)
    emit_json("history", result) if g.json else render_history(result)


@app.command("rollback")
def rollback_cmd(
    ctx: typer.Context,
    env: Annotated[str, typer.Argument(metavar="ENV", help="Env name.")],
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="SNAPSHOT",
            help="Snapshot id or unique prefix (`volenv history ENV`; default: the previous generation).",
        ),
    ] = None,
    lock_timeout: Annotated[
        float, typer.Option("--lock-timeout", metavar="SECONDS", help="Seconds to wait for the env's lock.")
    ] = 60,
) -> None:
    """Switch ENV's current pointer back (one atomic switch; the target must verify at seal)."""
    from volenv.cli.render import emit_json, render_switch
    from volenv.commands.versions import rollback

    g = _globals(ctx)
    result = rollback(g.paths, env, to, lock_timeout=lock_timeout)
    emit_json("rollback", result) if g.json else render_switch(result)


@app.command("pin")
def pin_cmd(
    ctx: typer.Context, snapshot: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot id.")]
) -> None:
    """Keep SNAPSHOT through every gc."""
    from volenv.cli.render import emit_json, render_switch
    from volenv.commands.versions import pin

    g = _globals(ctx)
    result = pin(g.paths, snapshot, on=True)
    emit_json("pin", result) if g.json else render_switch(result)


@app.command("unpin")
def unpin_cmd(
    ctx: typer.Context, snapshot: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot id.")]
) -> None:
    """Let gc consider SNAPSHOT again."""
    from volenv.cli.render import emit_json, render_switch
    from volenv.commands.versions import pin

    g = _globals(ctx)
    result = pin(g.paths, snapshot, on=False)
    emit_json("unpin", result) if g.json else render_switch(result)


@app.command("gc")
def gc_cmd(
    ctx: typer.Context,
    keep: Annotated[
        int, typer.Option("--keep", metavar="N", help="Keep the newest N snapshots per env.")
    ] = 2,
    keep_within: Annotated[
        str,
        typer.Option(
            "--keep-within",
            metavar="DURATION",
            help="Keep snapshots used within this long (0s, 12h, 7d, 2w).",
        ),
    ] = "7d",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before removing.")] = False,
) -> None:
    """Remove what no root keeps: snapshots, dead staging, old quarantine, unused uv cache."""
    from volenv.cli.render import emit_json, render_gc
    from volenv.commands import gc

    g = _globals(ctx)
    plan = gc.plan(g.paths, keep, keep_within)
    shown = False
    if dry_run or not plan.removals:
        result = gc.unchanged(plan)
    else:
        if not yes:
            if g.json or not (sys.stdin.isatty() and sys.stderr.isatty()):
                raise gc.unasked(plan)
            render_gc(gc.unchanged(plan), g.quiet, g.verbosity > 0, asking=True)
            shown = True  # the plan stays above the prompt: after it, only what was done
            if not typer.confirm(f"remove {len(plan.removals)} item(s)?", default=False, err=True):
                typer.echo("nothing removed; nothing changed", err=True)
                raise typer.Exit(0)
        result = gc.execute(g.paths, plan)
    if g.json:
        emit_json("gc", {"dry_run": dry_run, "ok": result.ok, "result": result})
    else:
        render_gc(result, g.quiet, g.verbosity > 0, show_plan=not shown)
    if not result.ok:  # something could not be removed (a planted link, EIO, EACCES): exit 8
        from volenv.base.errors import EXIT_VOLUME

        raise typer.Exit(EXIT_VOLUME)


models_app = typer.Typer(help="Model caches on the volume: fetch, verify, list.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("fetch")
def models_fetch_cmd(
    ctx: typer.Context,
    manifest: Annotated[str, typer.Argument(metavar="MANIFEST", help="Manifest TOML file.")],
    lock_timeout: Annotated[
        float, typer.Option("--lock-timeout", metavar="SECONDS", help="Seconds to wait for the models lease.")
    ] = 3600,
) -> None:
    """Download and verify the manifest's models into the volume (once, under a lease)."""
    from volenv.cli.render import emit_json, render_models
    from volenv.commands import models

    g = _globals(ctx)
    states = models.fetch(g.paths, manifest, lock_timeout)
    emit_json("models fetch", {"models": states}) if g.json else render_models(states)


@models_app.command("list")
def models_list_cmd(
    ctx: typer.Context,
    manifest: Annotated[
        str | None, typer.Option("--manifest", "-m", metavar="FILE", help="Only this manifest's models.")
    ] = None,
) -> None:
    """Models on the volume (or a manifest's models and whether they are present)."""
    from volenv.cli.render import emit_json, render_models
    from volenv.commands import models

    g = _globals(ctx)
    states = models.listing(g.paths, manifest)
    emit_json("models list", {"models": states}) if g.json else render_models(states)


@models_app.command("verify")
def models_verify_cmd(
    ctx: typer.Context,
    manifest: Annotated[
        str | None, typer.Option("--manifest", "-m", metavar="FILE", help="Only this manifest's models.")
    ] = None,
    level: Annotated[Level, typer.Option("--level", "-l", help="seal, stat or full.")] = Level.stat,
) -> None:
    """Check model files against their records; exit 4 on any problem."""
    from volenv.base.errors import EXIT_VERIFY
    from volenv.cli.render import emit_json, render_model_verify
    from volenv.commands import models

    g = _globals(ctx)
    report = models.verify(g.paths, manifest, level.value)
    if g.json:
        emit_json("models verify", {"ok": report.ok, "report": report})
    else:
        render_model_verify(report)
    if not report.ok:
        raise typer.Exit(EXIT_VERIFY)


@app.command("doctor")
def doctor_cmd(ctx: typer.Context) -> None:
    """Root, mount, space, leases, snapshots, interpreter, GPU/driver vs torch CUDA, last build log."""
    from volenv.cli.render import emit_json, render_doctor
    from volenv.commands.doctor import doctor

    g = _globals(ctx)
    report = doctor(g.paths, g.root)
    if g.json:
        emit_json("doctor", {"exit_code": report.exit_code, "report": report})
    else:
        render_doctor(report)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


@app.command("provision")
def provision_cmd(
    ctx: typer.Context,
    volume_id: Annotated[str, typer.Option("--volume-id", metavar="ID", help="RunPod network volume id.")],
    manifest: Annotated[
        str, typer.Option("--manifest", "-m", metavar="FILE", help="Manifest TOML file (sent to the pod).")
    ],
    image: Annotated[
        str,
        typer.Option(
            "--image",
            metavar="IMAGE",
            envvar="VOLENV_PROVISION_IMAGE",
            help="Image built from Dockerfile.runpod.",
        ),
    ],
    gpu_type: Annotated[
        str | None, typer.Option("--gpu-type", metavar="TYPE", help="GPU type id (default: a CPU pod).")
    ] = None,
    data_center: Annotated[
        str | None, typer.Option("--data-center", metavar="ID", help="e.g. EU-RO-1 (default: the volume's).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Poll until the sync finished, then terminate.")
    ] = True,
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="SECONDS", help="Seconds to wait for the pod.")
    ] = 3600,
    poll: Annotated[
        float, typer.Option("--poll", metavar="SECONDS", help="Seconds between status polls.")
    ] = 10,
) -> None:
    """Build a manifest's snapshot on a network volume from a one-off RunPod pod."""
    from volenv.cli.render import emit_json, render_switch_generic
    from volenv.runpod.provision import ProvisionOptions, provision

    g = _globals(ctx)
    opts = ProvisionOptions(volume_id, Path(manifest), image, gpu_type, data_center, wait, timeout, poll)
    result = provision(opts)
    emit_json("provision", result) if g.json else render_switch_generic(result)


bench_app = typer.Typer(help="Measure this volume: cold-start costs.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("coldstart", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def bench_coldstart_cmd(
    ctx: typer.Context,
    manifest: Annotated[
        str, typer.Argument(metavar="MANIFEST", help="Manifest TOML (its snapshot must exist).")
    ],
    runs: Annotated[int, typer.Option("--runs", metavar="N", help="Timed starts per mode (median).")] = 3,
    read_mb: Annotated[
        int, typer.Option("--read-mb", metavar="MB", help="At most this many MB read per read-rate test.")
    ] = 512,
) -> None:
    """Per-op latency, read rates and the manifest's start in place vs materialized, and what
    `run --materialize auto` would choose: bench coldstart MANIFEST [-- CMD]."""
    from volenv.base.errors import UsageError
    from volenv.cli.render import emit_json, render_bench
    from volenv.commands.bench import coldstart

    g = _globals(ctx)
    if read_mb < 1:
        raise UsageError(f"--read-mb: {read_mb} is not a positive number of MB")
    report = coldstart(g.paths, manifest, list(ctx.args), runs=runs, read_limit=read_mb * 1_000_000)
    emit_json("bench coldstart", report) if g.json else render_bench(report)


key_app = typer.Typer(help="Signing keys for push/pull (ed25519, Nix's key format).", no_args_is_help=True)
app.add_typer(key_app, name="key")


@key_app.command("generate")
def key_generate_cmd(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Option("--name", metavar="NAME", help="Key name (recorded in each signature).")
    ] = "volenv",
    out: Annotated[
        str | None,
        typer.Option("--out", metavar="FILE", help="Secret key file to create (default: NAME.key)."),
    ] = None,
) -> None:
    """Create a signing key: writes the secret key file (0600), prints the public key for
    VOLENV_TRUSTED_KEYS."""
    from volenv.cli.render import emit_json
    from volenv.commands.key import generate

    g = _globals(ctx)
    key = generate(name, out)
    path = key.secret_key_file
    if g.json:
        emit_json("key", key)
    else:
        print(key.public_key)
        ui.reporter.info(f"secret key written to {path}; keep it private; pullers trust the line above")


@app.command("push")
def push_cmd(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Argument(metavar="TARGET", help="ENV (its current snapshot) or SNAPSHOT id.")
    ],
    to: Annotated[str, typer.Option("--to", metavar="URL", help="s3://BUCKET/PREFIX or file:///DIR")],
    endpoint: Annotated[
        str | None,
        typer.Option("--endpoint", metavar="URL", envvar="AWS_ENDPOINT_URL", help="S3 endpoint URL."),
    ] = None,
    region: Annotated[
        str | None, typer.Option("--region", metavar="REGION", envvar="AWS_REGION", help="S3 region.")
    ] = None,
    signing_key: Annotated[
        str | None,
        typer.Option(
            "--signing-key", metavar="FILE", help="ed25519 secret key file (default: $VOLENV_SIGNING_KEY)."
        ),
    ] = None,
) -> None:
    """Send a sealed snapshot (and its models) to object storage as content-addressed packs."""
    from volenv.cli.render import emit_json, render_transfer
    from volenv.commands.replicate import push

    g = _globals(ctx)
    result = push(g.paths, target, to, endpoint, region, signing_key)
    emit_json("push", result) if g.json else render_transfer(result, g.quiet)


@app.command("pull")
def pull_cmd(
    ctx: typer.Context,
    target: Annotated[
        str | None, typer.Argument(metavar="TARGET", help="ENV (the remote's current) or SNAPSHOT id.")
    ] = None,
    from_: Annotated[
        str, typer.Option("--from", metavar="URL", help="s3://BUCKET/PREFIX or file:///DIR")
    ] = "",
    endpoint: Annotated[
        str | None,
        typer.Option("--endpoint", metavar="URL", envvar="AWS_ENDPOINT_URL", help="S3 endpoint URL."),
    ] = None,
    region: Annotated[
        str | None, typer.Option("--region", metavar="REGION", envvar="AWS_REGION", help="S3 region.")
    ] = None,
    no_switch: Annotated[
        bool, typer.Option("--no-switch", help="Do not make it the env's current snapshot.")
    ] = False,
    lock_timeout: Annotated[
        float, typer.Option("--lock-timeout", metavar="SECONDS", help="Seconds to wait for the env's lease.")
    ] = 900,
    trust_unsigned: Annotated[bool, TRUST_UNSIGNED] = False,
) -> None:
    """Fetch a snapshot into this volume, verified at full before it becomes visible."""
    from volenv.cli.render import emit_json, render_transfer
    from volenv.commands.replicate import pull

    g = _globals(ctx)
    result = pull(
        g.paths,
        target,
        from_,
        endpoint,
        region,
        switch=not no_switch,
        lock_timeout=lock_timeout,
        trust_unsigned=trust_unsigned,
    )
    emit_json("pull", result) if g.json else render_transfer(result, g.quiet)


@app.command("pack")
def pack_cmd(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Argument(metavar="TARGET", help="ENV (its current snapshot) or SNAPSHOT id.")
    ],
) -> None:
    """Store a snapshot as zstd packs beside it (for push and for --materialize)."""
    from volenv.cli.render import emit_json, render_switch_generic
    from volenv.commands.replicate import pack

    g = _globals(ctx)
    summary = pack(g.paths, target)
    emit_json("pack", summary) if g.json else render_switch_generic(summary)


@app.command("init")
def init_cmd(
    ctx: typer.Context,
    source: Annotated[
        Path,
        typer.Argument(
            metavar="SOURCE", help="A requirements.txt, a pyproject.toml, a uv.lock, or a folder with one."
        ),
    ],
    name: Annotated[
        str | None, typer.Option("--name", metavar="NAME", help="Env name (default: the project's).")
    ] = None,
    python: Annotated[
        str | None, typer.Option("--python", metavar="VERSION", help="Python request (e.g. 3.11).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", metavar="FILE", help="Manifest to write (default: volenv.toml beside SOURCE)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing manifest/lockfile.")] = False,
    lock: Annotated[
        bool, typer.Option("--lock", help="Also write a pylock.toml with uv; the manifest uses it.")
    ] = False,
    index_url: Annotated[
        str | None, typer.Option("--index-url", metavar="URL", help="Package index for the manifest.")
    ] = None,
    extra_index_url: Annotated[
        list[str] | None,
        typer.Option("--extra-index-url", metavar="URL", help="More package indexes (repeatable)."),
    ] = None,
    find_links: Annotated[
        list[str] | None,
        typer.Option("--find-links", metavar="PATH", help="Wheel folders or pages (repeatable)."),
    ] = None,
    no_index: Annotated[bool, typer.Option("--no-index", help="Only --find-links, no index.")] = False,
) -> None:
    """Write a manifest from what you have: a requirements.txt, a pyproject.toml project or a uv.lock."""
    from volenv.cli.render import emit_json, render_init
    from volenv.commands.init import InitOptions, init

    g = _globals(ctx)
    result = init(
        InitOptions(
            source=source,
            name=name,
            python=python,
            output=output,
            force=force,
            lock=lock,
            index_url=index_url,
            extra_index_urls=tuple(extra_index_url or ()),
            find_links=tuple(find_links or ()),
            no_index=no_index,
        )
    )
    emit_json("init", result) if g.json else render_init(result, g.quiet)


@app.command(
    "trace",
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "allow_interspersed_args": False,
    },
    add_help_option=False,  # -h/--help reach parse_run_args, which prints trace's options as run's
)
def trace_cmd(ctx: typer.Context) -> None:
    """Run CMD once in the snapshot and store the files its start opened (startup pack order):
    trace (--manifest M | --env NAME) -- CMD."""
    from volenv.cli.render import emit_json, render_switch_generic
    from volenv.commands.trace import run_trace

    g = _globals(ctx)
    result = run_trace(str(g.root.path), list(ctx.args))
    emit_json("trace", result) if g.json else render_switch_generic(result)


def _log_traceback(root: Path | None) -> str | None:
    """Tracebacks always go to a log file: the root's logs/ when writable, else the temp dir."""
    text = traceback.format_exc()
    candidates = []
    if root is not None and (root / "logs").is_dir():
        candidates.append(root / "logs" / "volenv-errors.log")
    candidates.append(Path(os.environ.get("TMPDIR", "/tmp")) / "volenv-errors.log")
    for path in candidates:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                from volenv.base.redact import redact_text

                fh.write(redact_text(f"--- {time.ctime()} pid {os.getpid()} argv {sys.argv}\n{text}\n"))
            return str(path)
        except OSError:
            continue
    return None


def hoist_globals(args: list[str]) -> list[str]:
    """Global options after the command word move before it (globalargs.hoist_globals); `run`
    is left alone here (its arguments are the command's: the entry point hoists its own)."""
    rest, _root, _v = split_globals(args)
    if not rest or rest[0] == "run":
        return list(args)
    return _hoist(args)


def _wants_json(args: list[str]) -> bool:
    rest, _root, _v = split_globals(args)
    return "--json" in args[: len(args) - len(rest)]


# every step is crash-safe: what finished stays, and the same command picks up from there
INTERRUPTED_HINT = "nothing half-done was kept; run the same command again to finish"


class _Failure:
    """Renders an error once: on stderr always, and as a JSON document on stdout under --json."""

    def __init__(self, json_out: bool) -> None:
        self.json_out = json_out

    def __call__(self, code: int, message: str, cause: str | None, hint: str | None) -> int:
        ui.reporter.end()  # bars of the step that failed go first: the error stays readable
        render_error(message, cause, hint)
        if self.json_out:
            render.emit_json_error(code, message, cause, hint)
        return code


def _usage_error(exc: Exception) -> tuple[int, str, str] | None:
    """typer's own usage errors (unknown option, missing argument, bad value) in the house style,
    recognised by the documented shape of click's exceptions (typer vendors click, so their class
    is not public): exit code, message, and a complete help command as the hint."""
    code = getattr(exc, "exit_code", None)
    format_message = getattr(exc, "format_message", None)
    if not isinstance(code, int) or not callable(format_message):
        return None
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "volenv"
    return code, str(format_message()), f"see `{path} --help`"


def main(argv: list[str] | None = None) -> int:
    """The one place that maps exceptions to messages and exit codes, typer's usage errors
    included (exit 2, same style, JSON under --json)."""
    args = hoist_globals(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("VOLENV_DEBUG") == "1" or "-vv" in args
    fail = _Failure(_wants_json(args))
    try:
        code = app(args=args, prog_name="volenv", standalone_mode=False)
        if code == 130:  # typer's own answer to Ctrl-C: silent, so say it
            return fail(130, "interrupted", None, INTERRUPTED_HINT)
        return code if isinstance(code, int) else 0
    except SystemExit as exc:
        code = exc.code
        if code == 130:
            return fail(130, "interrupted", None, INTERRUPTED_HINT)
        return code if isinstance(code, int) else (0 if code is None else 1)
    except typer.Abort:
        return fail(130, "interrupted", None, INTERRUPTED_HINT)
    except VolenvError as exc:
        fail(exc.exit_code, exc.message, exc.cause, exc.hint)
        if debug:
            traceback.print_exc()
        return exc.exit_code
    except OSError as exc:
        from volenv.base.errors import from_oserror

        mapped = from_oserror(exc, "volume access failed")
        if mapped.exit_code == EXIT_INTERNAL:
            where = _log_traceback(_root_from_args(args))
            hint = f"traceback in {where}" if where else None
            return fail(EXIT_INTERNAL, f"internal error: {exc}", None, hint)
        return fail(mapped.exit_code, mapped.message, mapped.cause, mapped.hint)
    except KeyboardInterrupt:
        return fail(130, "interrupted", None, INTERRUPTED_HINT)
    except Exception as exc:
        usage = _usage_error(exc)
        if usage is not None and type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]  # `volenv` alone: the help (exit 2), as before
            return usage[0]
        if usage is not None:
            return fail(*usage[:2], None, usage[2])
        where = _log_traceback(_root_from_args(args))
        hint = f"traceback in {where}" if where else None
        fail(EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {exc}", None, hint)
        if debug:
            traceback.print_exc()
        return EXIT_INTERNAL


def _root_from_args(args: list[str]) -> Path | None:
    _rest, root, _v = split_globals(args)
    try:
        return choose_root(root).path
    except Exception:
        return None
