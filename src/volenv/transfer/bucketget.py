"""Verified downloads of bucket objects in parallel parts: each small object is one GET, each
large one a set of ranged GETs written at their offsets into one temp file. An object is
checked whole (the caller's check: a pack's tar hashes to its id, a model file to its sha256)
and only then renamed onto its content-addressed name; a failure, a kill or an object longer
than its bound leaves at most a dot-named temp file (gc removes stale ones), never a file
under a name it does not deserve.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from volenv.base import faults
from volenv.base.errors import VolenvError
from volenv.base.iopool import Part, Stopped, run_parts
from volenv.base.streams import AdaptiveStreams
from volenv.store.volio import safe_mkdirs, unique_suffix
from volenv.transfer.buckets import Remote, RemoteError, printable

RANGE_PART = 8 * 1024 * 1024
RANGED_FROM = RANGE_PART + 1  # objects bigger than one part (by their expected size) come in ranges
_READ = 1 << 20
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


ATTEMPTS = 3  # a connection broken mid-answer (which the S3 client does not retry) is retried


class _Transient(Exception):
    """Reading the bucket failed mid-answer (reset, timeout, short body): worth another try."""


_R = TypeVar("_R")


def _remote(call: Callable[..., _R], *args: Any) -> _R:
    """A read from the bucket; its failures (other than volenv's own verdicts) are transient."""
    try:
        return call(*args)
    except VolenvError:
        raise
    except Exception as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class Wanted:
    """One object to fetch: where it goes, how big it should be, and how it is believed."""

    key: str
    dest: Path
    expected_size: int  # a hint (the bucket's copy may differ); decides whole vs ranges
    limit: int | None  # more bytes than this: refused while streaming
    check: Callable[[Path], None]  # raises on the complete temp file when it is not the object
    fail: Callable[[str], Exception]  # the error for an object that breaks its bound


class _Object:
    def __init__(self, remote: Remote, want: Wanted, root: Path, progress: Any, lock: threading.Lock) -> None:
        self.remote = remote
        self.want = want
        self.root = root
        self.progress = progress
        self.lock = lock  # shared: progress and part counters
        self.tmp = want.dest.with_name(f".{want.dest.name}.{unique_suffix()}")
        self.fd: int | None = None
        self.size = 0
        self.left = 0

    def parts(self) -> list[Part]:
        safe_mkdirs(self.want.dest.parent, self.root)
        if self.want.expected_size < RANGED_FROM:
            return [self._whole]
        size = self.remote.size(self.want.key)
        limit = self.want.limit
        if limit is not None and size > limit:
            raise self.want.fail(f"{size} bytes, more than the {limit} it may have")
        if size == 0:
            return [self._whole]
        self.size = size  # the temp file is opened by the first part that runs, not here:
        # one descriptor per object in flight, not per object pulled (80 big objects, ulimit 64)
        ranges = [(a, min(a + RANGE_PART, size)) for a in range(0, size, RANGE_PART)]
        self.left = len(ranges)
        return [self._range_part(a, b) for a, b in ranges]

    def _tick(self, n: int) -> None:
        if self.progress is not None:
            with self.lock:
                self.progress.update(n)

    def _whole(self, stop: threading.Event) -> tuple[int, float]:
        t0 = time.perf_counter()
        limit = self.want.limit
        fd = os.open(self.tmp, _TMP_FLAGS, 0o644)
        with open(fd, "wb", closefd=True) as out:
            for attempt in range(ATTEMPTS):
                out.seek(0)
                out.truncate()
                size = 0
                try:
                    with _remote(self.remote.open, self.want.key) as src:
                        while chunk := _remote(src.read, _READ):
                            if stop.is_set():
                                raise Stopped
                            size += len(chunk)
                            if limit is not None and size > limit:
                                raise self.want.fail(f"more than the {limit} bytes it may have")
                            out.write(chunk)
                            self._tick(len(chunk))
                    break
                except _Transient as exc:
                    self._retry_or_raise(attempt, exc, size)
            out.flush()
            os.fsync(out.fileno())
        seconds = time.perf_counter() - t0
        faults.point("pull-part")
        self._publish()
        return size, seconds

    def _range_part(self, start: int, end: int) -> Part:
        def part(stop: threading.Event) -> tuple[int, float]:
            t0 = time.perf_counter()
            with self.lock:
                if self.fd is None:
                    self.fd = os.open(self.tmp, _TMP_FLAGS, 0o644)
                    os.ftruncate(self.fd, self.size)
                fd = self.fd
            off = start
            for attempt in range(ATTEMPTS):
                try:  # a broken answer resumes where it stopped
                    with _remote(self.remote.open_range, self.want.key, off, end) as src:
                        while off < end and (chunk := _remote(src.read, min(_READ, end - off))):
                            if stop.is_set():
                                raise Stopped
                            os.pwrite(fd, chunk, off)
                            off += len(chunk)
                            self._tick(len(chunk))
                    if off != end:
                        raise _Transient(f"the answer ended at byte {off}, not {end}")
                    break
                except _Transient as exc:
                    self._retry_or_raise(attempt, exc, 0)
            seconds = time.perf_counter() - t0
            faults.point("pull-part")
            with self.lock:
                self.left -= 1
                last = self.left == 0
            if last:
                os.fsync(fd)
                with self.lock:
                    self.fd = None
                os.close(fd)
                self._publish()
            return end - start, seconds

        return part

    def _retry_or_raise(self, attempt: int, exc: _Transient, undo: int) -> None:
        if undo:
            self._tick(-undo)
        if attempt + 1 >= ATTEMPTS:
            raise RemoteError(
                printable(f"{self.remote.url}: GET {self.want.key} failed {ATTEMPTS} times: {exc}")
            ) from None
        time.sleep(0.2 * (attempt + 1))

    def _publish(self) -> None:
        """Checked whole, then renamed onto its name: nothing unverified is ever published."""
        self.want.check(self.tmp)
        os.replace(self.tmp, self.want.dest)

    def cleanup(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.tmp.unlink(missing_ok=True)


def fetch_all(
    remote: Remote,
    wanted: list[Wanted],
    root: Path,
    streams: AdaptiveStreams,
    progress: Any = None,
    *,
    also: Sequence[Part] = (),
) -> int:
    """Fetch every object (parts in the given order, `streams.current` at a time, then the
    `also` parts); returns the bytes downloaded. The first failure stops the rest and is
    raised; temp files are removed."""
    lock = threading.Lock()
    objects = [_Object(remote, w, root, progress, lock) for w in wanted]
    try:
        parts: list[Part] = []
        for obj in objects:
            parts += obj.parts()
        parts += also
        return run_parts(parts, streams, name="volenv-pull")
    finally:
        for obj in objects:
            obj.cleanup()
