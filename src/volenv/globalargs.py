"""Global options (`--root`, `--json`, `-q`, ...) found in argv without typer: the entry point
reads them before the `run` fast path, and the CLI moves those written after the command word."""

from __future__ import annotations

GLOBAL_FLAGS = {"--json", "-q", "--quiet", "-qq", "-v", "--verbose", "-vv", "--no-progress"}
GLOBAL_VALUED = {"--root", "--color"}


def split_globals(argv: list[str]) -> tuple[list[str], str | None, int]:
    """Index of the command word, --root value, verbosity (-q negative)."""
    i = 0
    root = None
    verbosity = 0
    while i < len(argv):
        a = argv[i]
        key, eq, val = a.partition("=")
        if key in GLOBAL_VALUED:
            if not eq:
                i += 1
                val = argv[i] if i < len(argv) else ""
            if key == "--root":
                root = val
        elif a in GLOBAL_FLAGS:
            if a in ("-q", "--quiet"):
                verbosity -= 1
            elif a == "-qq":
                verbosity -= 2
            elif a in ("-v", "--verbose"):
                verbosity += 1
            elif a == "-vv":
                verbosity += 2
        else:
            break
        i += 1
    return argv[i:], root, verbosity


def hoist_globals(
    args: list[str], *, valued: frozenset[str] | set[str] = frozenset(), stop_at_positional: bool = False
) -> list[str]:
    """Global options written after the command word (`volenv status --json`, as uv allows) move
    before it, where they are read; `--` and everything after it stay put. `valued` names the
    command's own options that take a value, so that a value (`--env -q`) is never taken for a
    global option; `stop_at_positional` leaves everything from the first positional on alone
    (`run`'s command)."""
    rest, _root, _v = split_globals(args)
    if not rest:
        return list(args)
    head = args[: len(args) - len(rest)]
    moved: list[str] = []
    kept: list[str] = [rest[0]]
    i = 1
    while i < len(rest):
        a = rest[i]
        key, eq, _val = a.partition("=")
        if a == "--" or (stop_at_positional and not a.startswith("-")):
            kept += rest[i:]
            break
        if key in GLOBAL_VALUED:
            moved.append(a)
            if not eq and i + 1 < len(rest):
                i += 1
                moved.append(rest[i])
        elif a in GLOBAL_FLAGS:
            moved.append(a)
        else:
            kept.append(a)
            if key in valued and not eq and i + 1 < len(rest):
                i += 1
                kept.append(rest[i])
        i += 1
    return head + moved + kept


def hoist_run_globals(args: list[str], valued: set[str]) -> list[str]:
    """`volenv run --json -m M -- CMD`: global options written after `run`, before `--` or the
    command, move before `run` (as for every other command)."""
    rest, _root, _v = split_globals(args)
    if not rest or rest[0] != "run":
        return list(args)
    return hoist_globals(args, valued=valued, stop_at_positional=True)
