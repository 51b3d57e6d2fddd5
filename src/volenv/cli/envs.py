"""The option declarations of `sync`, `run` and `env`: build a manifest's snapshot, start a command
in it, print its environment.

Each command parses its options and calls one function of `commands/`; `cli.app` adds these
to the one typer app in the order `volenv --help` lists them."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from volenv.base.errors import UsageError
from volenv.cli.common import Commands, global_options, parse_size

commands = Commands()


@commands.command()
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
            "--result",
            metavar="FILE",
            help="Also write the JSON result to this file (provisioning pods; $VARS in it are expanded,"
            " so an exec-form start command can name $RUNPOD_POD_ID).",
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
    take_over: Annotated[
        bool,
        typer.Option(
            "--take-over", help="Sync even though the env belongs to another manifest; it becomes this one's."
        ),
    ] = False,
) -> None:
    """Build (or reuse) the snapshot for MANIFEST, make it current, fetch its models."""
    from volenv.build.plan import SyncOptions
    from volenv.cli.render import emit_json, render_sync
    from volenv.commands.sync import manifest_source, reinstall_names
    from volenv.commands.sync import sync as do_sync
    from volenv.manifest.parse import load_manifest

    g = global_options(ctx)
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
        attended=from_env is None,  # --from-env: a provisioning pod's temp file on a one-off host
        take_over=take_over,
    )
    if result is not None:
        # a pod's start command reaches volenv without a shell: $RUNPOD_POD_ID is expanded here
        result = Path(os.path.expandvars(str(result)))
        from volenv.cli.render import to_data
        from volenv.store.volio import atomic_write_json

        result.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(result, {"version": 1, "command": "sync", **to_data(outcome)})
    if g.json:
        emit_json("sync", outcome)
    else:
        render_sync(outcome, g.quiet, g.verbosity > 0)


@commands.command(
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "allow_interspersed_args": False,
    },
)
def run(ctx: typer.Context) -> None:
    """Activate a verified snapshot and exec CMD in it: run (--manifest M | --env NAME) -- CMD."""
    from volenv.start.run import run as do_run

    g = global_options(ctx)
    raise typer.Exit(do_run(str(g.root.path), list(ctx.args)))


class EnvFormat(str, Enum):
    sh = "sh"
    json = "json"


@commands.command("env")
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

    g = global_options(ctx)
    if (manifest is None) == (env is None):
        raise UsageError("env: give exactly one of --manifest M or --env NAME")
    result = activation_env(str(g.root.path), manifest, env, verify)
    render_env(result, "json" if g.json else fmt.value)
