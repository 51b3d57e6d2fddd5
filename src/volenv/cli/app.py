"""The typer CLI: the app and its global options, the command families added in order, and the
one place that maps every exception to a message and an exit code. The options of each command
are declared in its family's module (`envs`, `inspect`, `generations`, `models`, `pod`,
`remote`, `author`)."""

from __future__ import annotations

import os
import sys
import time
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from volenv import __version__
from volenv.base import ui
from volenv.base.errors import EXIT_INTERNAL, VolenvError
from volenv.cli import author, envs, generations, inspect, models, pod, remote, render
from volenv.cli.common import GlobalOptions, global_options
from volenv.cli.docs import EPILOG, add_epilogs
from volenv.cli.render import render_error
from volenv.globalargs import hoist_globals as _hoist
from volenv.globalargs import split_globals
from volenv.store.paths import choose_root


def _plain_required_metavars() -> None:
    """Usage lines say `volenv history [OPTIONS] ENV`, as click, uv and pipx do: typer >= 0.20
    writes a required argument as `{ENV}`, which reads like a placeholder to fill with braces."""
    from typer.core import TyperArgument

    shown = TyperArgument.make_metavar

    def make_metavar(self: TyperArgument, ctx: typer.Context, *, usage: bool = False) -> str:
        var = shown(self, ctx, usage=usage)
        if usage and var.startswith("{") and "}" in var:
            head, _, tail = var[1:].partition("}")
            return head + tail
        return var

    TyperArgument.make_metavar = make_metavar  # type: ignore[method-assign, assignment]


_plain_required_metavars()

app = typer.Typer(
    name="volenv",
    help="Sealed, versioned Python environments and model caches on a shared network volume.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help and usage errors: no boxed panels, no escape codes
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
    ui.set_reporter(render.RichReporter(verbosity, not no_progress))  # before the root: -qq hides its notice
    ctx.obj = GlobalOptions(root, json_out, verbose - quiet, not no_progress)


@app.command()
def version(ctx: typer.Context) -> None:
    """Print volenv's version."""
    if global_options(ctx).json:
        render.emit_json("version", {"volenv": __version__})
    else:
        render.out_line(__version__)


# The families, in the order `volenv --help` lists their commands.
for _family in (envs, inspect, generations, models, pod, remote, author):
    _family.commands.add_to(app)
add_epilogs(app)  # each `volenv COMMAND --help` ends with its docs page (cli/docs.py)


def _log_traceback(root: Path | None) -> str | None:
    """Tracebacks always go to a log file: the root's logs/ when writable, else the temp dir."""
    from volenv.base.redact import redact_text
    from volenv.store.volio import open_append

    text = traceback.format_exc()
    candidates: list[tuple[Path, Path | None]] = []
    if root is not None and (root / "logs").is_dir():
        candidates.append((root / "logs" / "volenv-errors.log", root))
    # the temp dir is shared: a per-user name, and never through a link someone planted there
    candidates.append((Path(os.environ.get("TMPDIR", "/tmp")) / f"volenv-errors-{os.geteuid()}.log", None))
    for path, inside in candidates:
        try:
            with os.fdopen(open_append(path, inside), "a", encoding="utf-8") as fh:
                fh.write(redact_text(f"--- {time.ctime()} pid {os.getpid()} argv {sys.argv}\n{text}\n"))
            return str(path)
        except (OSError, VolenvError):
            continue
    return None


def hoist_globals(args: list[str]) -> list[str]:
    """Global options after the command word move before it (globalargs.hoist_globals); `run`
    is left alone here (its arguments are the command's: the entry point hoists its own)."""
    rest, _root, _v = split_globals(args)
    if not rest or rest[0] == "run":
        return list(args)
    return _hoist(args)


def _wants_json(args: list[str]) -> bool:
    rest, _root, _v = split_globals(args)
    return "--json" in args[: len(args) - len(rest)]


# every step is crash-safe: what finished stays, and the same command picks up from there
INTERRUPTED_HINT = "nothing half-done was kept; run the same command again to finish"


class _Failure:
    """Renders an error once: on stderr always, and as a JSON document on stdout under --json."""

    def __init__(self, json_out: bool) -> None:
        self.json_out = json_out

    def __call__(self, code: int, message: str, cause: str | None, hint: str | None) -> int:
        ui.reporter.end()  # bars of the step that failed go first: the error stays readable
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
    args = hoist_globals(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("VOLENV_DEBUG") == "1" or "-vv" in args
    fail = _Failure(_wants_json(args))
    try:
        code = app(args=args, prog_name="volenv", standalone_mode=False)
        if code == 130:  # typer's own answer to Ctrl-C: silent, so say it
            return fail(130, "interrupted", None, INTERRUPTED_HINT)
        return code if isinstance(code, int) else 0
    except SystemExit as exc:
        code = exc.code
        if code == 130:
            return fail(130, "interrupted", None, INTERRUPTED_HINT)
        return code if isinstance(code, int) else (0 if code is None else 1)
    except typer.Abort:
        return fail(130, "interrupted", None, INTERRUPTED_HINT)
    except VolenvError as exc:
        fail(exc.exit_code, exc.message, exc.cause, exc.hint)
        if debug:
            traceback.print_exc()
        return exc.exit_code
    except OSError as exc:
        from volenv.base.errors import from_oserror

        mapped = from_oserror(exc, "volume access failed")
        if mapped.exit_code == EXIT_INTERNAL:
            where = _log_traceback(_root_from_args(args))
            hint = f"traceback in {where}" if where else None
            return fail(EXIT_INTERNAL, f"internal error: {exc}", None, hint)
        return fail(mapped.exit_code, mapped.message, mapped.cause, mapped.hint)
    except KeyboardInterrupt:
        return fail(130, "interrupted", None, INTERRUPTED_HINT)
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
    _rest, root, _v = split_globals(args)
    try:
        return choose_root(root).path
    except Exception:
        return None
