"""Entry point. `run` is dispatched before typer/rich are imported (container fast path)."""

from __future__ import annotations

import sys

from volenv.globalargs import hoist_run_globals, split_globals


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    rest, root, verbosity = split_globals(args)
    if rest and rest[0] == "run":
        from volenv.start.run import RUN_VALUED, main_fast

        args = hoist_run_globals(args, RUN_VALUED)
        rest, root, verbosity = split_globals(args)
        json_out = "--json" in args[: len(args) - len(rest)]
        if verbosity:  # the default reporter is verbosity 0: skip importing ui on the fast path
            from volenv.base import ui

            ui.set_reporter(ui.Reporter(verbosity))
        return main_fast(root, rest[1:], json_out)
    from volenv.cli.app import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
