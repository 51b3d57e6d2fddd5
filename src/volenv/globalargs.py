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
