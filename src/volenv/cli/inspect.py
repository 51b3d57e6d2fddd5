"""The option declarations of `status`, `list`, `show`, `diff` and `verify`: read what the volume
holds; nothing changes.

Each command parses its options and calls one function of `commands/`; `cli.app` adds these
to the one typer app in the order `volenv --help` lists them."""

from __future__ import annotations

from typing import Annotated

import typer

from volenv.cli import render
from volenv.cli.common import TRUST_UNSIGNED, Commands, Level, global_options

commands = Commands()


def _status(ctx: typer.Context, env: str | None, sizes: bool, command: str) -> None:
    from volenv.cli.render import emit_json, render_status
    from volenv.commands.status import scan

    g = global_options(ctx)
    report = scan(g.paths, g.root.source, env_filter=env, sizes=sizes)
    if g.json:
        emit_json(command, report)
    else:
        render_status(report, g.quiet)


@commands.command()
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


@commands.command("list")
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
        emit_json("list", listing) if global_options(ctx).json else render_switch_generic(listing)
        return
    _status(ctx, env, False, "list")


@commands.command("show")
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

    result = show(global_options(ctx).paths, target, sizes=sizes)
    render.emit_json("show", result) if global_options(ctx).json else render.render_show(result)


@commands.command("diff")
def diff_cmd(
    ctx: typer.Context,
    a: Annotated[str, typer.Argument(metavar="A", help="ENV, SNAPSHOT id or unique prefix (the old side).")],
    b: Annotated[str, typer.Argument(metavar="B", help="ENV, SNAPSHOT id or unique prefix (the new side).")],
) -> None:
    """Packages added, removed and changed from A to B, and their groups' and models' changes."""
    from volenv.commands.diff import diff

    result = diff(global_options(ctx).paths, a, b)
    render.emit_json("diff", result) if global_options(ctx).json else render.render_diff(
        result, global_options(ctx).quiet
    )


@commands.command("verify")
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
    imports: Annotated[
        bool,
        typer.Option(
            "--imports",
            help="Also import every top-level module of every distribution (the build's import check).",
        ),
    ] = False,
) -> None:
    """Check snapshots against their record; exit 4 on any error-level problem (or, with
    --imports, a required distribution whose module fails to import)."""
    from volenv.base.errors import EXIT_VERIFY
    from volenv.cli.render import emit_json, render_verify
    from volenv.commands.verify import verify

    g = global_options(ctx)
    result = verify(g.paths, target, all_=all_, level=level.value, imports=imports)
    if repair and not result.ok:
        from volenv.commands.repair import repair_reports

        result = repair_reports(g.paths, result)
    if g.json:
        doc: dict[str, object] = {"level": result.level, "ok": result.ok, "reports": result.reports}
        if imports:
            doc["imports"] = {sid: rep.to_data() for sid, rep in result.imports}
        emit_json("verify", doc)
    else:
        render_verify(result.reports, g.quiet)
        if imports:
            from volenv.cli.render import render_imports

            render_imports(result.imports)
    if not result.ok:
        raise typer.Exit(EXIT_VERIFY)
