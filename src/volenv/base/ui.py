"""Narrative output on stderr. Plain by default (the lean `run` path); the CLI installs a rich
backend with progress spinners. stdout is reserved for data (--json, `env`)."""

from __future__ import annotations

import sys
import time

from volenv.base.redact import redact_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from types import TracebackType
    from typing import Any


class Step:
    """A named step: -v's lines before and after, and the heartbeat's while it runs."""

    def __init__(self, reporter: Reporter, label: str) -> None:
        self.reporter = reporter
        self.label = label
        self.t0 = 0.0

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()
        self.reporter.detail(f"{self.label}…")
        self.reporter.beat_start(self)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.reporter.beat_stop(self)
        if exc is None:
            self.reporter.detail(f"{self.label}: done in {time.perf_counter() - self.t0:.2f}s")

    def beat_line(self) -> str:
        return f"{self.label}: still running ({human_seconds(time.perf_counter() - self.t0)})"


DEFAULT_PROGRESS_INTERVAL = 10.0


def progress_interval() -> float:
    """VOLENV_PROGRESS_INTERVAL: seconds between the lines a long step prints where no bar is
    drawn (a pipe, RunPod's log); 0 turns them off. Unset: 10. Anything else is a usage error."""
    import os

    raw = os.environ.get("VOLENV_PROGRESS_INTERVAL", "").strip()
    if not raw:
        return DEFAULT_PROGRESS_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e6:
        from volenv.base.errors import UsageError

        raise UsageError(f"VOLENV_PROGRESS_INTERVAL={raw!r}: expected seconds (0 turns the lines off)")
    return value


class Heartbeat:
    """Where no bar is drawn, a long step still says it is alive: one line every `interval`
    seconds while any step or progress runs, naming the innermost one with its counts, bytes
    and rate (`installing: 3/12 packages, 1.2 GiB, 80.1 MiB/s, downloading torch (40.2 s)`).
    One daemon thread, started with the first step and gone with the last."""

    def __init__(self, reporter: Reporter, interval: float) -> None:
        import threading

        self.reporter = reporter
        self.interval = interval
        self.active: list[Any] = []  # _Step or Progress, innermost last
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.last = 0.0

    def start(self, item: Any) -> None:
        import threading

        with self.cond:
            if not self.active:
                self.last = time.perf_counter()
            self.active.append(item)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="volenv-heartbeat", daemon=True)
                self.thread.start()
            self.cond.notify_all()

    def stop(self, item: Any) -> None:
        with self.cond:
            if item in self.active:
                self.active.remove(item)
            self.cond.notify_all()

    def _run(self) -> None:
        while True:
            with self.cond:
                if not self.active:
                    self.thread = None
                    return
                wait = self.last + self.interval - time.perf_counter()
                if wait > 0:
                    self.cond.wait(wait)
                    continue
                self.last = time.perf_counter()
                line = self.active[-1].beat_line()
            self.reporter.info(line)


_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def _unit_of(n: int) -> str:
    value = float(n)
    for unit in _BYTE_UNITS:
        if value < 1024 or unit == "TiB":
            return unit
        value /= 1024
    return "TiB"


def human_bytes(n: int | float | None, unit: str | None = None) -> str:
    """`n` in binary units; `unit` forces one (status prints apparent and unique alike)."""
    if n is None:
        return "-"
    forced = unit is not None
    unit = unit or _unit_of(int(n))
    value = n / 1024 ** _BYTE_UNITS.index(unit)
    if unit == "B":
        return f"{value:.0f} {unit}"
    return f"{value:.2f} {unit}" if forced and value < 1 else f"{value:.1f} {unit}"


def human_seconds(seconds: float) -> str:
    """The one elapsed-time format of every summary line: `0.5 s`, `12.3 s`, `0.04 s`."""
    return f"{seconds:.1f} s" if seconds >= 0.1 else f"{seconds:.2f} s"


def sync_summary(action: str, snapshot: str, seconds: float, stats: dict[str, Any] | None) -> str:
    """The line a sync ends with (`built X in 0.5 s: 1 package, 23 files, 29.2 KiB (28.0 KiB new)`),
    from `volenv sync` and from `run --on-missing build` alike."""
    verb = {"would-build": "would build", "would-reuse": "would reuse"}.get(action, action)
    line = f"{verb} {snapshot} in {human_seconds(seconds)}"
    s = stats or {}
    if "packages" in s:
        line += (
            f": {s['packages']:,} package{'' if s['packages'] == 1 else 's'}, {s.get('files', 0):,} files,"
            f" {human_bytes(s.get('bytes'))} ({human_bytes(s.get('bytes_new', s.get('bytes_hashed')))} new)"
        )
    return line


def step_summary(steps: dict[str, float]) -> str:
    """Where a build's time went, one line (`steps: resolve 1.2 s, install 3.4 s, ...`): the
    figures to compare with `uv pip install` (bench/buildspeed.py)."""
    return "steps: " + ", ".join(f"{name} {human_seconds(s)}" for name, s in steps.items())


def fmt_duration(seconds: float) -> str:
    """The one duration format of policies (gc's plan, its header and its rows): 7d, 12h, 90m, 30s."""
    for unit, n in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{int(seconds // n)}{unit}"
    return f"{seconds:g}s"


class Progress:
    """The one progress protocol: a long step's counts (items such as files or packages, and
    bytes) and its rate. Low modules call advance()/update() and close(); they never draw.
    The plain backend draws nothing while it runs; the CLI's backend (render.RichReporter)
    draws a bar on a terminal. close() leaves one line: at the info level when `summary`
    (it stays on screen, even without a terminal), else only at -v."""

    live = False  # a backend that draws it as it runs says so (uv then gets a terminal: its bars)

    def __init__(
        self,
        reporter: Reporter,
        label: str,
        total: int | None,
        *,
        unit: str = "bytes",
        summary: bool = False,
        done_label: str | None = None,
    ) -> None:
        self.reporter = reporter
        self.done_label = done_label or label  # `packing X` runs, `packed X` stays
        self.label = label
        self.total = total  # in `unit`: bytes, or items ("files", "packages")
        self.unit = unit
        self.summary = summary
        self.items = 0
        self.done = 0  # bytes
        self.now = ""  # a note: what it does right now
        self.t0 = time.perf_counter()
        self.closed = False

    # -- what low modules call
    def update(self, n: int) -> None:
        """n more bytes."""
        self.done += n
        self.changed()

    def advance(self, items: int = 1, nbytes: int = 0) -> None:
        """`items` more done, carrying `nbytes` bytes."""
        self.items += items
        self.done += nbytes
        self.changed()

    def set_items(self, items: int) -> None:
        """An absolute count, where the step learns its total done rather than each item."""
        self.items = items
        self.changed()

    def reset(self, done: int) -> None:
        self.done = done
        self.changed()

    def note(self, text: str) -> None:
        """What the step does right now (`downloading torch (800.0MiB)`), shown beside the counts."""
        self.now = text
        self.changed()

    def set_total(self, total: int | None) -> None:
        self.total = total
        self.changed()

    def close(self, ok: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        self.reporter.beat_stop(self)
        self.stop()
        if not ok:
            return
        if self.summary:
            self.reporter.info(self.line())
        else:
            self.reporter.detail(self.line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(ok=exc is None)

    # -- what backends use
    def changed(self) -> None:
        """A backend redraws here."""

    def beat_line(self) -> str:
        """The heartbeat's line: `installing: 3/12 packages, 1.2 GiB, 80.1 MiB/s (40.2 s)`."""
        counts = self.counts()
        return f"{self.label}: {counts + ' ' if counts else ''}({human_seconds(self.seconds)})"

    def stop(self) -> None:
        """A backend removes its bar here."""

    @property
    def seconds(self) -> float:
        return max(time.perf_counter() - self.t0, 1e-6)

    def counts(self) -> str:
        """`12/143 packages`, `3,012/37,012 files, 1.2 GiB, 610.3 MiB/s`, `1.2 GiB, 88.0 MiB/s`."""
        parts = []
        if self.unit != "bytes":
            of = f"/{self.total:,}" if self.total is not None else ""
            parts.append(f"{self.items:,}{of} {self.unit}")
        if self.done or self.unit == "bytes":
            of = f"/{human_bytes(self.total)}" if self.unit == "bytes" and self.total else ""
            parts.append(f"{human_bytes(self.done)}{of}")
            parts.append(f"{human_bytes(self.done / self.seconds)}/s")
        if self.now:
            parts.append(self.now)
        return ", ".join(parts)

    def line(self) -> str:
        """The line that stays: `pulled X: 1.2 GiB in 3.1 s (400.0 MiB/s)`."""
        rate = (
            f"{human_bytes(self.done / self.seconds)}/s"
            if self.done
            else f"{self.items / self.seconds:,.0f} {self.unit}/s"
        )
        what = f"{self.items:,} {self.unit}" if self.unit != "bytes" else ""
        if self.done:
            what = f"{what}, {human_bytes(self.done)}" if what else human_bytes(self.done)
        return f"{self.done_label}: {what} in {human_seconds(self.seconds)} ({rate})"


class Reporter:
    def __init__(self, verbosity: int = 0, *, heartbeat: bool | None = None) -> None:
        """`heartbeat`: lines every VOLENV_PROGRESS_INTERVAL seconds on long steps (default:
        at the info level, where no backend draws bars)."""
        self.verbosity = verbosity
        self.heartbeat = verbosity >= 0 if heartbeat is None else heartbeat
        self._beat: Heartbeat | None = None

    @property
    def beating(self) -> bool:
        """Whether long steps print heartbeat lines (the interval is read on first use)."""
        if self.heartbeat and self._beat is None:
            interval = progress_interval()
            if interval <= 0:
                self.heartbeat = False
                return False
            self._beat = Heartbeat(self, interval)
        return self.heartbeat

    def beat_start(self, item: Any) -> None:
        if self.beating and self._beat is not None:
            self._beat.start(item)

    def beat_stop(self, item: Any) -> None:
        if self._beat is not None:
            self._beat.stop(item)

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

    def end(self) -> None:
        """Remove whatever a backend still draws (an error is about to be printed)."""

    def step(self, label: str) -> AbstractContextManager[None]:
        return Step(self, label)

    def progress(
        self,
        label: str,
        total: int | None,
        *,
        unit: str = "bytes",
        summary: bool = False,
        done_label: str | None = None,
    ) -> Progress:
        kind = _BeatingProgress if self.beating else Progress
        p = kind(self, label, total, unit=unit, summary=summary, done_label=done_label)
        self.beat_start(p)
        return p


class _BeatingProgress(Progress):
    """Counted by the heartbeat, not drawn; `live` so that uv runs on a terminal and its byte
    counts reach the heartbeat's line while a wheel downloads (a pipe gets none from uv)."""

    live = True


class _Proxy:
    """Modules import `reporter` once; the CLI swaps the backend behind it."""

    backend: Reporter = Reporter()

    def __getattr__(self, name: str) -> object:
        return getattr(self.backend, name)


reporter: Reporter = _Proxy()  # type: ignore[assignment]


def set_reporter(r: Reporter) -> None:
    _Proxy.backend = r
