"""Narrative output on stderr. Plain by default (the lean `run` path); the CLI installs a rich
backend with progress spinners. stdout is reserved for data (--json, `env`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Reporter:
    def __init__(self, verbosity: int = 0) -> None:
        self.verbosity = verbosity

    def info(self, msg: str) -> None:
        if self.verbosity >= 0:
            print(f"volenv: {msg}", file=sys.stderr, flush=True)

    def detail(self, msg: str) -> None:
        if self.verbosity >= 1:
            print(f"volenv: {msg}", file=sys.stderr, flush=True)

    def warn(self, msg: str) -> None:
        if self.verbosity >= -1:
            print(f"volenv: warning: {msg}", file=sys.stderr, flush=True)

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        t0 = time.perf_counter()
        self.detail(f"{label}…")
        yield
        self.detail(f"{label}: done in {time.perf_counter() - t0:.2f}s")


reporter: Reporter = Reporter()


def set_reporter(r: Reporter) -> None:
    global reporter
    reporter = r
