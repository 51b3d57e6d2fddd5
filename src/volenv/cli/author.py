"""The option declarations of `init` and `trace`: write a manifest from a project, record a
snapshot's start.

Each command parses its options and calls one function of `commands/`; `cli.app` adds these
to the one typer app in the order `volenv --help` lists them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from volenv.cli.common import Commands, global_options

commands = Commands()


@commands.command("init")
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

    g = global_options(ctx)
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


@commands.command(
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

    g = global_options(ctx)
    result = run_trace(str(g.root.path), list(ctx.args))
    emit_json("trace", result) if g.json else render_switch_generic(result)
