"""The option declarations of `doctor`, `provision` and `bench coldstart`: the volume as a pod or
worker sees it.

Each command parses its options and calls one function of `commands/`; `cli.app` adds these
to the one typer app in the order `volenv --help` lists them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from volenv.base.errors import UsageError
from volenv.cli.common import Commands, global_options

commands = Commands()


@commands.command("doctor")
def doctor_cmd(ctx: typer.Context) -> None:
    """Root, mount, space, leases, snapshots, interpreter, GPU/driver vs torch CUDA, last build log."""
    from volenv.cli.render import emit_json, render_doctor
    from volenv.commands.doctor import doctor

    g = global_options(ctx)
    report = doctor(g.paths, g.root)
    if g.json:
        emit_json("doctor", {"exit_code": report.exit_code, "report": report})
    else:
        render_doctor(report)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


@commands.command("provision")
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

    g = global_options(ctx)
    opts = ProvisionOptions(volume_id, Path(manifest), image, gpu_type, data_center, wait, timeout, poll)
    result = provision(opts)
    emit_json("provision", result) if g.json else render_switch_generic(result)


bench_app = typer.Typer(help="Measure this volume: cold-start costs.", no_args_is_help=True)
commands.sub_app(bench_app, name="bench")


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
    from volenv.cli.render import emit_json, render_bench
    from volenv.commands.bench import coldstart

    g = global_options(ctx)
    if read_mb < 1:
        raise UsageError(f"--read-mb: {read_mb} is not a positive number of MB")
    report = coldstart(g.paths, manifest, list(ctx.args), runs=runs, read_limit=read_mb * 1_000_000)
    emit_json("bench coldstart", report) if g.json else render_bench(report)
