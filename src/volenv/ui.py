"""Narrative output on stderr. Plain by default (the lean `run` path); the CLI installs a rich
backend with progress spinners. stdout is reserved for data (--json, `env`)."""

from __future__ import annotations

import sys
import time

from .redact import redact_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from types import TracebackType


class _Step:
    def __init__(self, reporter: Reporter, label: str) -> None:
        self.reporter = reporter
        self.label = label
        self.t0 = 0.0

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()
        self.reporter.detail(f"{self.label}…")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.reporter.detail(f"{self.label}: done in {time.perf_counter() - self.t0:.2f}s")


class Progress:
    """A byte counter for a long transfer; the plain backend reports only the end."""

    def __init__(self, reporter: Reporter, label: str, total: int | None) -> None:
        self.reporter = reporter
        self.label = label
        self.total = total
        self.done = 0
        self.t0 = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n

    def reset(self, done: int) -> None:
        self.done = done

    def close(self) -> None:
        secs = max(time.perf_counter() - self.t0, 1e-6)
        self.reporter.detail(
            f"{self.label}: {self.done} bytes in {secs:.1f}s ({self.done / secs / 1e6:.1f} MB/s)"
        )


class Reporter:
    def __init__(self, verbosity: int = 0) -> None:
        self.verbosity = verbosity

    # the same lines as the CLI's reporter (render.RichReporter), without colour
    def info(self, msg: str) -> None:
        if self.verbosity >= 0:
            print(redact_text(msg), file=sys.stderr, flush=True)

    def detail(self, msg: str) -> None:
        if self.verbosity >= 1:
            print(redact_text(msg), file=sys.stderr, flush=True)

    def warn(self, msg: str) -> None:
        if self.verbosity >= -1:
            print(f"warning: {redact_text(msg)}", file=sys.stderr, flush=True)

    def step(self, label: str) -> AbstractContextManager[None]:
        return _Step(self, label)

    def progress(self, label: str, total: int | None) -> Progress:
        return Progress(self, label, total)


class _Proxy:
    """Modules import `reporter` once; the CLI swaps the backend behind it."""

    backend: Reporter = Reporter()

    def __getattr__(self, name: str) -> object:
        return getattr(self.backend, name)


reporter: Reporter = _Proxy()  # type: ignore[assignment]


def set_reporter(r: Reporter) -> None:
    _Proxy.backend = r
