"""Uploads of checked local files to a bucket in parallel parts (push): each object of at most
one part is one PUT, a larger one a multipart upload whose parts go several at a time; every
object and part shares one pool whose size adapts (streams.py), as pull's downloads do.

The caller checks each file first (a pack's tar hashes to its id, a model file to its sha256)
and hands over its identity (device, inode, size, mtime, ctime) at that moment: the upload
opens the file once, refuses it if it is not that same unchanged file, and reads every part
from that one descriptor. An object becomes visible only whole (a PUT, a completed multipart
upload, a renamed temp file); a failure aborts what was started, a kill leaves at most an
unfinished multipart upload or a dot-named temp file, which no listing shows.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volenv.base import faults
from volenv.base.errors import VerifyError
from volenv.base.iopool import Part, Stopped, run_parts
from volenv.base.streams import AdaptiveStreams
from volenv.transfer.buckets import Remote, Upload

UPLOAD_PART = 8 * 1024 * 1024  # bytes per part (S3 allows 5 MiB to 5 GiB, RunPod <= 500 MB)
MAX_PARTS = 10_000  # S3's limit per multipart upload: huge files get bigger parts


def part_size(size: int) -> int:
    """At least UPLOAD_PART, and large enough that no object needs more than MAX_PARTS parts."""
    need = -(-size // MAX_PARTS)
    mib = 1024 * 1024
    return max(UPLOAD_PART, -(-need // mib) * mib)


Stamp = tuple[int, int, int, int, int]


def stamp_of(st: os.stat_result) -> Stamp:
    """What makes a checked file the same file later: a replaced or rewritten one differs."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class Outgoing:
    """One checked file to upload under `key`."""

    key: str
    path: Path  # opened without following a final symlink
    stamp: Stamp  # the file as it was when checked
    what: str  # for messages: `pack 1a2b… (torch-2.3.0)`, `model file w.bin (voc.….json)`

    @property
    def size(self) -> int:
        return self.stamp[2]


class _Object:
    def __init__(self, remote: Remote, out: Outgoing, progress: Any, lock: threading.Lock) -> None:
        self.remote = remote
        self.out = out
        self.progress = progress
        self.lock = lock  # shared: progress
        self.own = threading.Lock()  # this object's descriptor, upload and part count
        self.fd: int | None = None
        self.upload: Upload | None = None
        self.done = False
        self.part_size = part_size(out.size)
        self.ranges = [(a, min(a + self.part_size, out.size)) for a in range(0, out.size, self.part_size)]
        self.ranges = self.ranges or [(0, 0)]
        self.left = len(self.ranges)

    def parts(self) -> list[Part]:
        return [self._part(i, a, b) for i, (a, b) in enumerate(self.ranges)]

    def _start(self) -> tuple[int, Upload]:
        """The first part to run opens the file (checking it is the one that was checked) and
        starts the upload: one descriptor per object in flight, not per object pushed."""
        with self.own:
            if self.fd is None or self.upload is None:
                fd = os.open(self.out.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                if stamp_of(os.fstat(fd)) != self.out.stamp:
                    os.close(fd)
                    raise VerifyError(
                        f"{self.out.what} changed after it was checked ({self.out.path});"
                        " nothing of it was pushed",
                        hint="run the push again",
                    )
                self.fd = fd
                self.upload = self.remote.begin_upload(self.out.key, self.out.size, self.part_size)
            return self.fd, self.upload

    def _part(self, index: int, start: int, end: int) -> Part:
        def part(stop: threading.Event) -> tuple[int, float]:
            if stop.is_set():
                raise Stopped
            fd, upload = self._start()
            data = _pread_exactly(fd, start, end, self.out)
            if stop.is_set():
                raise Stopped
            t0 = time.perf_counter()
            upload.send(index + 1, data)
            seconds = time.perf_counter() - t0
            self._tick(len(data), 0)
            faults.point("push-part")
            with self.own:
                self.left -= 1
                last = self.left == 0
            if last:
                upload.complete()
                with self.own:
                    self.done = True
                    self._close()
                self._tick(0, 1)
            return len(data), seconds

        return part

    def _tick(self, nbytes: int, items: int) -> None:
        if self.progress is not None:
            with self.lock:
                self.progress.advance(items, nbytes)

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def cleanup(self) -> None:
        with self.own:
            self._close()
            if self.upload is not None and not self.done:
                self.upload.abort()


def _pread_exactly(fd: int, start: int, end: int, out: Outgoing) -> bytes:
    chunks = []
    off = start
    while off < end:
        chunk = os.pread(fd, end - off, off)
        if not chunk:
            raise VerifyError(
                f"{out.what} shrank after it was checked ({out.path}); nothing of it was pushed"
            )
        chunks.append(chunk)
        off += len(chunk)
    return b"".join(chunks)


def put_all(remote: Remote, outgoing: list[Outgoing], streams: AdaptiveStreams, progress: Any = None) -> int:
    """Upload every object (parts in the given order, `streams.current` at a time); returns the
    bytes sent. The first failure stops the rest, aborts every unfinished upload and is raised."""
    lock = threading.Lock()
    objects = [_Object(remote, o, progress, lock) for o in outgoing]
    try:
        parts: list[Part] = []
        for obj in objects:
            parts += obj.parts()
        return run_parts(parts, streams, name="volenv-push")
    finally:
        for obj in objects:
            obj.cleanup()


def check_all(checks: list[Callable[[], None]], workers: int = 4) -> None:
    """Run the checks (presence in the bucket, hashing) several at a time; the first failure
    stops the rest and is raised. They move nothing, so they tell no stream controller anything."""

    def as_part(check: Callable[[], None]) -> Part:
        def part(stop: threading.Event) -> int:
            if stop.is_set():
                raise Stopped
            check()
            return 0

        return part

    pool = AdaptiveStreams(workers, workers, pinned=workers)
    run_parts([as_part(c) for c in checks], pool, name="volenv-check")
