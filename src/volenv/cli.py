"""The typer CLI: declares options and calls one function per command; nothing else lives here."""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from . import __version__, render, ui
from .errors import EXIT_INTERNAL, UsageError, VolenvError
from .paths import RootChoice, VolumePaths, choose_root
from .render import render_error

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
    root: RootChoice
    json: bool
    verbosity: int
    progress: bool

    @property
    def paths(self) -> VolumePaths:
        return VolumePaths(self.root.path)

    @property
    def quiet(self) -> int:
        return max(0, -self.verbosity)


class RichReporter(ui.Reporter):
    def __init__(self, verbosity: int, progress: bool) -> None:
        super().__init__(verbosity)
        self.progress_bars = progress and render.err_console.is_terminal

    # messages are plain text (they quote requirements such as `uvicorn[standard]`): escaped
    def info(self, msg: str) -> None:
        if self.verbosity >= 0:
            render.err_console.print(render.esc(msg), highlight=False)

    def detail(self, msg: str) -> None:
        if self.verbosity >= 1:
            render.err_console.print(f"[dim]{render.esc(msg)}[/dim]", highlight=False)

    def warn(self, msg: str) -> None:
        if self.verbosity >= -1:
            render.err_console.print(f"[yellow]warning:[/yellow] {render.esc(msg)}", highlight=False)

    def progress(self, label: str, total: int | None) -> ui.Progress:
        if self.progress_bars and self.verbosity >= 0:
            return RichProgress(self, label, total)
        return ui.Progress(self, label, total)

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        t0 = time.perf_counter()
        if self.progress_bars and self.verbosity >= 0:
            with render.err_console.status(f"{render.esc(label)}…"):
                yield
        else:
            self.detail(f"{label}…")
            yield
        self.detail(f"{label}: {time.perf_counter() - t0:.2f}s")


class RichProgress(ui.Progress):
    """Sizes and rates on stderr (rich), for downloads and uploads."""

    def __init__(self, reporter: ui.Reporter, label: str, total: int | None) -> None:
        super().__init__(reporter, label, total)
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=render.err_console,
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(render.esc(label), total=total)

    def update(self, n: int) -> None:
        super().update(n)
        self._bar.update(self._task, advance=n)

    def reset(self, done: int) -> None:
        super().reset(done)
        self._bar.update(self._task, completed=done)

    def close(self) -> None:
        self._bar.stop()
        super().close()


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
    ctx.obj = GlobalOptions(choose_root(root), json_out, verbose - quiet, not no_progress)
    ui.set_reporter(RichReporter(verbosity, not no_progress))


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
    from .build import SyncOptions
    from .build import sync as do_sync
    from .manifest import load_manifest
    from .render import emit_json, render_sync

    g = _globals(ctx)
    if (manifest is None) == (from_env is None):
        raise UsageError("sync: give a MANIFEST file or --from-env VAR")
    if from_env is not None:
        import tempfile

        from .provision import read_inline_manifest

        manifest = read_inline_manifest(from_env, Path(tempfile.gettempdir()) / "volenv-inline")
    assert manifest is not None
    from packaging.utils import InvalidName, canonicalize_name

    try:
        reinstall = [canonicalize_name(p, validate=True) for p in reinstall or []]
    except InvalidName as exc:
        raise UsageError(f"--reinstall: {exc}") from None
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
        from .fsutil import atomic_write_json
        from .render import to_data

        result.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(result, {"version": 1, "command": "sync", **to_data(outcome)})
    if g.json:
        emit_json("sync", outcome)
    else:
        render_sync(outcome, g.quiet)


@app.command(
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "allow_interspersed_args": False,
    },
)
def run(ctx: typer.Context) -> None:
    """Activate a verified snapshot and exec CMD in it: run (--manifest M | --env NAME) -- CMD."""
    from .activate import run as do_run

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
    from .commands.envcmd import activation_env
    from .render import render_env

    g = _globals(ctx)
    if (manifest is None) == (env is None):
        raise UsageError("env: give exactly one of --manifest M or --env NAME")
    result = activation_env(str(g.root.path), manifest, env, verify)
    render_env(result, "json" if g.json else fmt.value)


def _status(ctx: typer.Context, env: str | None, sizes: bool, command: str) -> None:
    from .commands.status import scan
    from .render import emit_json, render_status

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
        bool, typer.Option("--sizes/--no-sizes", help="Compute unique (hard-link aware) sizes.")
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
        from .remote import FileRemote, open_remote
        from .render import emit_json, render_switch_generic
        from .replicate import list_remote
        from .signing import Trust

        bucket = open_remote(remote)
        if isinstance(bucket, FileRemote) and not bucket.base.is_dir():
            raise UsageError(f"no bucket at {remote}: {bucket.base} does not exist")
        listing = list_remote(bucket, Trust.from_env(trust_unsigned))
        emit_json("list", listing) if _globals(ctx).json else render_switch_generic(listing)
        return
    _status(ctx, env, False, "list")


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
                from .redact import redact_text

                fh.write(redact_text(f"--- {time.ctime()} pid {os.getpid()} argv {sys.argv}\n{text}\n"))
            return str(path)
        except OSError:
            continue
    return None


def hoist_globals(args: list[str]) -> list[str]:
    """Global options written after the command word (`volenv status --json`, as uv allows) move
    before it, where the typer callback reads them; `--` and everything after it stay put, and
    `run` is left alone (its arguments are the command's)."""
    from .__main__ import GLOBAL_FLAGS, GLOBAL_VALUED, _split_globals

    rest, _root, _v = _split_globals(args)
    head = args[: len(args) - len(rest)]
    if not rest or rest[0] == "run":
        return list(args)
    moved: list[str] = []
    kept: list[str] = []
    i = 0
    while i < len(rest):
        a = rest[i]
        if a == "--":
            kept += rest[i:]
            break
        key, eq, _val = a.partition("=")
        if key in GLOBAL_VALUED:
            moved.append(a)
            if not eq and i + 1 < len(rest):
                i += 1
                moved.append(rest[i])
        elif a in GLOBAL_FLAGS:
            moved.append(a)
        else:
            kept.append(a)
        i += 1
    return head + moved + kept


def _wants_json(args: list[str]) -> bool:
    from .__main__ import _split_globals

    rest, _root, _v = _split_globals(args)
    return "--json" in args[: len(args) - len(rest)]


class _Failure:
    """Renders an error once: on stderr always, and as a JSON document on stdout under --json."""

    def __init__(self, json_out: bool) -> None:
        self.json_out = json_out

    def __call__(self, code: int, message: str, cause: str | None, hint: str | None) -> int:
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
    _register_optional_commands()
    args = hoist_globals(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("VOLENV_DEBUG") == "1" or "-vv" in args
    fail = _Failure(_wants_json(args))
    try:
        code = app(args=args, prog_name="volenv", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except typer.Abort:
        return fail(130, "interrupted", None, None)
    except VolenvError as exc:
        fail(exc.exit_code, exc.message, exc.cause, exc.hint)
        if debug:
            traceback.print_exc()
        return exc.exit_code
    except OSError as exc:
        from .errors import from_oserror

        mapped = from_oserror(exc, "volume access failed")
        if mapped.exit_code == EXIT_INTERNAL:
            where = _log_traceback(_root_from_args(args))
            hint = f"traceback in {where}" if where else None
            return fail(EXIT_INTERNAL, f"internal error: {exc}", None, hint)
        return fail(mapped.exit_code, mapped.message, mapped.cause, mapped.hint)
    except KeyboardInterrupt:
        return fail(130, "interrupted", None, None)
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
    from .__main__ import _split_globals

    _rest, root, _v = _split_globals(args)
    try:
        return choose_root(root).path
    except Exception:
        return None


def _register_optional_commands() -> None:
    """Commands that live in their own modules register themselves on the app."""
    from . import cli_extra  # noqa: F401
    from .commands import bench

    bench.register(app)
