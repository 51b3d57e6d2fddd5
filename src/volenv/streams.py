"""How many parallel streams a transfer uses: start at 4, grow while the aggregate throughput
grows, never past 16 (`VOLENV_STREAMS=N` pins N). A per-connection limit (an S3 endpoint, a
CDN, a network volume's per-reader latency) is beaten by more streams; a shared bottleneck
(the link, the disk, the CPU) is not, and more streams there only add overhead.

The controller is fed one report per finished part (`report(nbytes, seconds)`: one stream
moved nbytes in seconds). After a round of `current` reports it estimates the aggregate rate
as `current` streams at their mean rate; when that beat the best round so far by 10% it
grows by half, otherwise it settles on the best count it saw.
"""

from __future__ import annotations

import math
import os
import threading

START = 4
CAP = 16
_GAIN = 1.10  # a round must beat the best by this much to grow again


def pinned_streams() -> int | None:
    """VOLENV_STREAMS=N (1..64): a fixed stream count; unset, empty or invalid: adaptive."""
    raw = os.environ.get("VOLENV_STREAMS", "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        return None
    return n if 1 <= n <= 64 else None


class AdaptiveStreams:
    """Thread-safe stream-count controller; read `.current` before starting a part."""

    def __init__(self, start: int = START, cap: int = CAP, *, pinned: int | None = None) -> None:
        if pinned is None:
            pinned = pinned_streams()
        self.cap = pinned if pinned is not None else max(1, cap)
        self.current = pinned if pinned is not None else max(1, min(start, self.cap))
        self.settled = pinned is not None or self.current >= self.cap
        self._lock = threading.Lock()
        self._bytes = 0
        self._seconds = 0.0
        self._reports = 0
        self._best = 0.0  # best aggregate rate seen (bytes/s)
        self._best_count = self.current

    def report(self, nbytes: int, seconds: float) -> None:
        """One stream finished a part of nbytes in seconds."""
        with self._lock:
            if self.settled:
                return
            self._bytes += nbytes
            self._seconds += max(seconds, 1e-6)
            self._reports += 1
            if self._reports < self.current:
                return
            rate = self.current * self._bytes / self._seconds
            self._bytes, self._seconds, self._reports = 0, 0.0, 0
            if rate > self._best * _GAIN:
                self._best, self._best_count = rate, self.current
                self.current = min(self.cap, math.ceil(self.current * 1.5))
                self.settled = self.current == self._best_count  # at the cap
            else:
                self.current = self._best_count
                self.settled = True
