"""The option declarations of `models fetch|list|verify`: the volume's model caches.

Each command parses its options and calls one function of `commands/`; `cli.app` adds these
to the one typer app in the order `volenv --help` lists them."""

from __future__ import annotations

from typing import Annotated

import typer

from volenv.cli.common import Commands, Level, global_options

commands = Commands()


models_app = typer.Typer(help="Model caches on the volume: fetch, verify, list.", no_args_is_help=True)
commands.sub_app(models_app, name="models")


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

    g = global_options(ctx)
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

    g = global_options(ctx)
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

    g = global_options(ctx)
    report = models.verify(g.paths, manifest, level.value)
    if g.json:
        emit_json("models verify", {"ok": report.ok, "report": report})
    else:
        render_model_verify(report)
    if not report.ok:
        raise typer.Exit(EXIT_VERIFY)
