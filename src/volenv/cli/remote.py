"""The option declarations of `key generate`, `push`, `pull` and `pack`: snapshots to and from
object storage.

Each command parses its options and calls one function of `commands/`; `cli.app` adds these
to the one typer app in the order `volenv --help` lists them."""

from __future__ import annotations

from typing import Annotated

import typer

from volenv.base import ui
from volenv.cli.common import TRUST_UNSIGNED, Commands, global_options

commands = Commands()


key_app = typer.Typer(help="Signing keys for push/pull (ed25519, Nix's key format).", no_args_is_help=True)
commands.sub_app(key_app, name="key")


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

    g = global_options(ctx)
    key = generate(name, out)
    path = key.secret_key_file
    if g.json:
        emit_json("key", key)
    else:
        print(key.public_key)
        ui.reporter.info(f"secret key written to {path}; keep it private; pullers trust the line above")


@commands.command("push")
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

    g = global_options(ctx)
    result = push(g.paths, target, to, endpoint, region, signing_key)
    emit_json("push", result) if g.json else render_transfer(result, g.quiet)


@commands.command("pull")
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

    g = global_options(ctx)
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


@commands.command("pack")
def pack_cmd(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Argument(metavar="TARGET", help="ENV (its current snapshot) or SNAPSHOT id.")
    ],
) -> None:
    """Store a snapshot as zstd packs beside it (for push and for --materialize)."""
    from volenv.cli.render import emit_json, render_switch_generic
    from volenv.commands.replicate import pack

    g = global_options(ctx)
    summary = pack(g.paths, target)
    emit_json("pack", summary) if g.json else render_switch_generic(summary)
