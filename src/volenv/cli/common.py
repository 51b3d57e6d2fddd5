"""What every command family of the CLI shares: the global options (read once, in the callback)
and a list that collects a family's commands for `cli.app` to add in order."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import typer

from volenv.base.errors import UsageError
from volenv.store.paths import RootChoice, VolumePaths, choose_root


class Commands:
    """A family's commands and sub-apps, in declaration order: `cli.app` hands them to the one
    typer app, so each family module declares its options without importing the app (no circle)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, tuple[Any, ...], dict[str, Any], Any]] = []

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def declare(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.items.append(("command", args, kwargs, fn))
            return fn

        return declare

    def sub_app(self, sub: typer.Typer, **kwargs: Any) -> None:
        self.items.append(("typer", (), kwargs, sub))

    def add_to(self, app: typer.Typer) -> None:
        for kind, args, kwargs, what in self.items:
            if kind == "command":
                app.command(*args, **kwargs)(what)
            else:
                app.add_typer(what, **kwargs)


@dataclass(frozen=True)
class GlobalOptions:
    root_opt: str | None
    json: bool
    verbosity: int
    progress: bool

    @functools.cached_property
    def root(self) -> RootChoice:
        """Resolved on first use, not in the callback: `volenv CMD --help` neither looks for a
        root nor announces a fallback one."""
        return choose_root(self.root_opt)

    @property
    def paths(self) -> VolumePaths:
        return VolumePaths(self.root.path)

    @property
    def quiet(self) -> int:
        return max(0, -self.verbosity)


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


def global_options(ctx: typer.Context) -> GlobalOptions:
    obj = ctx.obj
    assert isinstance(obj, GlobalOptions)
    return obj


class Level(str, Enum):
    seal = "seal"
    stat = "stat"
    full = "full"


TRUST_UNSIGNED = typer.Option(
    "--trust-unsigned",
    help="Accept bucket snapshots without a signature from VOLENV_TRUSTED_KEYS (anyone who can"
    " write the bucket then decides what runs).",
)
