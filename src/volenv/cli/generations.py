"""The option declarations of `history`, `rollback`, `pin`, `unpin` and `gc`: generations, roots
and garbage collection.

Each command parses its options and calls one function of `commands/`; `cli.app` adds these
to the one typer app in the order `volenv --help` lists them."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from volenv.cli.common import Commands, global_options

commands = Commands()


@commands.command("history")
def history_cmd(
    ctx: typer.Context, env: Annotated[str, typer.Argument(metavar="ENV", help="Env name.")]
) -> None:
    """Generations of ENV: every switch of its current pointer."""
    from volenv.cli.render import emit_json, render_history
    from volenv.commands.versions import history

    g = global_options(ctx)
    result = history(g.paths, env)
    emit_json("history", result) if g.json else render_history(result)


@commands.command("rollback")
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

    g = global_options(ctx)
    result = rollback(g.paths, env, to, lock_timeout=lock_timeout)
    emit_json("rollback", result) if g.json else render_switch(result)


@commands.command("pin")
def pin_cmd(
    ctx: typer.Context, snapshot: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot id.")]
) -> None:
    """Keep SNAPSHOT through every gc."""
    from volenv.cli.render import emit_json, render_switch
    from volenv.commands.versions import pin

    g = global_options(ctx)
    result = pin(g.paths, snapshot, on=True)
    emit_json("pin", result) if g.json else render_switch(result)


@commands.command("unpin")
def unpin_cmd(
    ctx: typer.Context, snapshot: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot id.")]
) -> None:
    """Let gc consider SNAPSHOT again."""
    from volenv.cli.render import emit_json, render_switch
    from volenv.commands.versions import pin

    g = global_options(ctx)
    result = pin(g.paths, snapshot, on=False)
    emit_json("unpin", result) if g.json else render_switch(result)


@commands.command("gc")
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

    g = global_options(ctx)
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
