"""Commands beyond the foundation, registered on the same typer app."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .cli import TRUST_UNSIGNED, _globals, app


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


@app.command("history")
def history_cmd(
    ctx: typer.Context, env: Annotated[str, typer.Argument(metavar="ENV", help="Env name.")]
) -> None:
    """Generations of ENV: every switch of its current pointer."""
    from .commands.versions import history
    from .render import emit_json, render_history

    g = _globals(ctx)
    result = history(g.paths, env)
    emit_json("history", result) if g.json else render_history(result)


@app.command("rollback")
def rollback_cmd(
    ctx: typer.Context,
    env: Annotated[str, typer.Argument(metavar="ENV", help="Env name.")],
    to: Annotated[
        str | None,
        typer.Option("--to", metavar="URL", help="Snapshot id (default: the previous generation)."),
    ] = None,
    lock_timeout: Annotated[
        float, typer.Option("--lock-timeout", metavar="SECONDS", help="Seconds to wait for the env's lock.")
    ] = 60,
) -> None:
    """Switch ENV's current pointer back (one atomic switch; the target must verify at seal)."""
    from .commands.versions import rollback
    from .render import emit_json, render_switch

    g = _globals(ctx)
    result = rollback(g.paths, env, to, lock_timeout=lock_timeout)
    emit_json("rollback", result) if g.json else render_switch(result)


@app.command("pin")
def pin_cmd(
    ctx: typer.Context, snapshot: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot id.")]
) -> None:
    """Keep SNAPSHOT through every gc."""
    from .commands.versions import pin
    from .render import emit_json, render_switch

    g = _globals(ctx)
    result = pin(g.paths, snapshot, on=True)
    emit_json("pin", result) if g.json else render_switch(result)


@app.command("unpin")
def unpin_cmd(
    ctx: typer.Context, snapshot: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot id.")]
) -> None:
    """Let gc consider SNAPSHOT again."""
    from .commands.versions import pin
    from .render import emit_json, render_switch

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
    import sys

    from . import gc
    from .errors import VolumeError
    from .render import emit_json, render_gc
    from .rootfind import root_exists

    g = _globals(ctx)
    if keep < 0:
        from .errors import UsageError

        raise UsageError("--keep must be 0 or more")
    seconds = gc.parse_duration(keep_within)
    if not root_exists(str(g.paths.root)):
        raise VolumeError(f"volume root {g.paths.root} does not exist")
    plan = gc.make_plan(g.paths, keep=keep, keep_within=seconds)
    shown = False
    if dry_run or not plan.removals:
        result = gc.GcResult(plan)
    else:
        if not yes:
            from .errors import UsageError

            if g.json or not (sys.stdin.isatty() and sys.stderr.isatty()):
                # deleting unasked is the surprise: a script says --yes, a person answers
                raise UsageError(
                    f"gc would remove {len(plan.removals)} item(s) and there is no terminal to ask",
                    hint="pass --yes to remove them, or --dry-run to see the plan",
                )
            render_gc(gc.GcResult(plan), g.quiet, g.verbosity > 0)
            shown = True  # the plan stays above the prompt: after it, only what was done
            if not typer.confirm(f"remove {len(plan.removals)} item(s)?", default=False, err=True):
                typer.echo("nothing removed", err=True)
                raise typer.Exit(0)
        result = gc.execute(g.paths, plan)
    if g.json:
        emit_json("gc", {"dry_run": dry_run, "ok": result.ok, "result": result})
    else:
        render_gc(result, g.quiet, g.verbosity > 0, show_plan=not shown)
    if not result.ok:  # something could not be removed (a planted link, EIO, EACCES): exit 8
        from .errors import EXIT_VOLUME

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
    from .manifest import load_manifest
    from .models import fetch_models
    from .render import emit_json, render_models
    from .store import open_volume

    g = _globals(ctx)
    m = load_manifest(manifest)
    open_volume(g.paths, create=True)
    states = fetch_models(g.paths, m, lock_timeout=lock_timeout)
    emit_json("models fetch", {"models": states}) if g.json else render_models(states)


@models_app.command("list")
def models_list_cmd(
    ctx: typer.Context,
    manifest: Annotated[
        str | None, typer.Option("--manifest", "-m", metavar="FILE", help="Only this manifest's models.")
    ] = None,
) -> None:
    """Models on the volume (or a manifest's models and whether they are present)."""
    from .manifest import load_manifest
    from .models import list_models
    from .render import emit_json, render_models

    g = _globals(ctx)
    states = list_models(g.paths, load_manifest(manifest) if manifest else None)
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
    from .errors import EXIT_VERIFY
    from .manifest import load_manifest
    from .models import verify_models
    from .render import emit_json, render_model_verify

    g = _globals(ctx)
    report = verify_models(g.paths, load_manifest(manifest) if manifest else None, level.value)
    if g.json:
        emit_json("models verify", {"ok": report.ok, "report": report})
    else:
        render_model_verify(report)
    if not report.ok:
        raise typer.Exit(EXIT_VERIFY)


@app.command("doctor")
def doctor_cmd(ctx: typer.Context) -> None:
    """Root, mount, space, leases, snapshots, interpreter, GPU/driver vs torch CUDA, last build log."""
    from .commands.doctor import doctor
    from .render import emit_json, render_doctor

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
    from pathlib import Path

    from .provision import ProvisionOptions, provision
    from .render import emit_json, render_switch_generic

    g = _globals(ctx)
    opts = ProvisionOptions(volume_id, Path(manifest), image, gpu_type, data_center, wait, timeout, poll)
    result = provision(opts)
    emit_json("provision", result) if g.json else render_switch_generic(result)


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
    from .render import emit_json
    from .signing import generate, write_secret

    g = _globals(ctx)
    key = generate(name)
    path = Path(out or f"{name}.key")
    write_secret(key, path)
    if g.json:
        emit_json("key", {"name": key.name, "public_key": key.public(), "secret_key_file": str(path)})
    else:
        print(key.public())
        print(
            f"volenv: secret key written to {path}; keep it private; pullers trust the line above",
            file=sys.stderr,
        )


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
    from .remote import open_remote
    from .render import emit_json, render_transfer
    from .replicate import push
    from .signing import signing_key_from

    g = _globals(ctx)
    key = signing_key_from(signing_key)
    result = push(g.paths, open_remote(to, endpoint=endpoint, region=region), target, key)
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
    from .errors import UsageError
    from .remote import open_remote
    from .render import emit_json, render_transfer
    from .replicate import pull
    from .signing import Trust

    g = _globals(ctx)
    if not from_:
        raise UsageError("pull: --from URL is required")
    trust = Trust.from_env(trust_unsigned)
    result = pull(
        g.paths,
        open_remote(from_, endpoint=endpoint, region=region),
        target,
        trust=trust,
        switch=not no_switch,
        lock_timeout=lock_timeout,
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
    from .packs import pack_snapshot
    from .render import emit_json, render_switch_generic
    from .replicate import _select_local

    g = _globals(ctx)
    manifest = pack_snapshot(g.paths, _select_local(g.paths, target))
    summary = {
        "snapshot": manifest.snapshot,
        "packs": len(manifest.packs),
        "bytes": sum(p.blob_size for p in manifest.packs),
        "uncompressed": sum(p.tar_size for p in manifest.packs),
    }
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
    from .commands.init import InitOptions, init
    from .render import emit_json, render_init

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
)
def trace_cmd(ctx: typer.Context) -> None:
    """Run CMD once in the snapshot and store the files its start opened (startup pack order):
    trace (--manifest M | --env NAME) -- CMD."""
    from .render import emit_json, render_switch_generic
    from .trace import run_trace

    g = _globals(ctx)
    result = run_trace(str(g.root.path), list(ctx.args))
    emit_json("trace", result) if g.json else render_switch_generic(result)
