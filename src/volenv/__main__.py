"""Entry point. `run` is dispatched before typer/rich are imported (container fast path)."""

from __future__ import annotations

import sys

GLOBAL_FLAGS = {"--json", "-q", "--quiet", "-qq", "-v", "--verbose", "-vv", "--no-progress"}
GLOBAL_VALUED = {"--root", "--color"}


def _split_globals(argv: list[str]) -> tuple[list[str], str | None, int]:
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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    rest, root, verbosity = _split_globals(args)
    if rest and rest[0] == "run":
        if verbosity:  # the default reporter is verbosity 0: skip importing ui on the fast path
            from . import ui

            ui.set_reporter(ui.Reporter(verbosity))
        from .activate import main_fast

        return main_fast(root, rest[1:])
    from .cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
