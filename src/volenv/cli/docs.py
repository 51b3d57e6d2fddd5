"""Where each command is documented: `volenv --help` ends with the docs' index and every
`volenv COMMAND --help` with its page (tests/test_docs.py checks that each page and heading
exists and that every command has one). `run` and `trace` print their help on the fast path,
without typer: start/run.py's help texts name the same pages."""

from __future__ import annotations

from typing import Any

#: the docs' folder as a user finds it: in volenv's source tree (the wheel ships no docs)
DOCS_HOME = "docs/ in volenv's source tree"

#: command path (a sub-command as "models fetch") -> its page and heading, relative to the
#: source tree's root
DOCS: dict[str, str] = {
    "version": "docs/cli.md#version",
    "init": "docs/manifest.md#volenv-init-a-manifest-from-what-you-have",
    "sync": "docs/cli.md#sync",
    "run": "docs/cli.md#run",
    "env": "docs/cli.md#env",
    "status": "docs/cli.md#status-and-list",
    "list": "docs/cli.md#status-and-list",
    "show": "docs/cli.md#show",
    "diff": "docs/cli.md#diff",
    "verify": "docs/cli.md#verify",
    "history": "docs/cli.md#history-rollback-pin-unpin",
    "rollback": "docs/cli.md#history-rollback-pin-unpin",
    "pin": "docs/cli.md#history-rollback-pin-unpin",
    "unpin": "docs/cli.md#history-rollback-pin-unpin",
    "gc": "docs/cli.md#gc",
    "doctor": "docs/troubleshooting.md",
    "provision": "docs/runpod.md#3-provision-the-volume",
    "push": "docs/replication.md",
    "pull": "docs/replication.md",
    "pack": "docs/cold-start.md#packs",
    "trace": "docs/cold-start.md#start-traces-and-the-startup-pack",
    "models": "docs/models.md",
    "models fetch": "docs/models.md",
    "models list": "docs/models.md",
    "models verify": "docs/models.md",
    "bench": "docs/cold-start.md#measuring-a-volume-volenv-bench-coldstart",
    "bench coldstart": "docs/cold-start.md#measuring-a-volume-volenv-bench-coldstart",
    "key": "docs/replication.md#signatures",
    "key generate": "docs/replication.md#signatures",
}

#: `volenv --help`'s last lines
EPILOG = (
    f"Docs ({DOCS_HOME}): README.md to start; docs/cli.md for every command, its output and exit"
    " codes; docs/runpod.md to deploy on RunPod; docs/troubleshooting.md when something fails."
)


def epilog_of(command: str) -> str:
    return f"Docs: {DOCS[command]} ({DOCS_HOME})."


def add_epilogs(app: Any, prefix: str = "") -> None:
    """Give every registered command and sub-app of a typer app (recursively) its docs line,
    unless it declared an epilog of its own."""
    for info in app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        if _unset(info.epilog):
            info.epilog = epilog_of(f"{prefix}{name}")
    for group in app.registered_groups:
        if _unset(group.epilog):
            group.epilog = epilog_of(f"{prefix}{group.name}")
        add_epilogs(group.typer_instance, f"{prefix}{group.name} ")


def _unset(value: Any) -> bool:
    """None, or typer's placeholder for a default left alone (add_typer's keywords)."""
    return getattr(value, "value", value) is None
