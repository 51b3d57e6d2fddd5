"""Commands beyond the foundation, registered on the same typer app."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from .cli import _globals, app


class Level(str, Enum):
    seal = "seal"
    stat = "stat"
    full = "full"


@app.command("verify")
def verify_cmd(
    ctx: typer.Context,
    target: Annotated[str | None, typer.Argument(help="ENV (its current snapshot) or SNAPSHOT id.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every snapshot on the volume.")] = False,
    level: Annotated[Level, typer.Option("--level", "-l", help="seal, stat or full.")] = Level.stat,
    repair: Annotated[
        bool, typer.Option("--repair", help="Rebuild damaged snapshots from their recorded manifest.")
    ] = False,
) -> None:
    """Check snapshots against their record; exit 4 on any error-level problem."""
    from .commands.verify import verify
    from .errors import EXIT_VERIFY
    from .render import emit_json, render_verify

    g = _globals(ctx)
    result = verify(g.paths, target, all_=all_, level=level.value)
    if repair and not result.ok:
        from .commands.repair import repair_reports

        result = repair_reports(g.paths, result)
    if g.json:
        emit_json("verify", {"level": result.level, "ok": result.ok, "reports": result.reports})
    else:
        render_verify(result.reports, g.quiet)
    if not result.ok:
        raise typer.Exit(EXIT_VERIFY)
