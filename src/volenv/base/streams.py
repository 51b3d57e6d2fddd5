"""How many parallel streams a transfer uses: start at 4, grow while the aggregate throughput
grows, never past 16 (`VOLENV_STREAMS=N` pins N). A per-connection limit (an S3 endpoint, a
CDN, a network volume's per-reader latency) is beaten by more streams; a shared bottleneck
(the link, the disk, the CPU) is not, and more streams there only add overhead.

Two ways to feed it, one rule: `report(nbytes, seconds)` per finished part (one stream moved
nbytes in seconds; after a round of `current` parts the aggregate is estimated as `current`
streams at their mean rate), or `report_total(nbytes, seconds)` with an aggregate measured
over a window. When a round beats the best so far by 10% the count grows by half (4, 6, 9, 14,
16); otherwise it goes back to the best count it saw and stays there.
"""

from __future__ import annotations

import math
import os
import threading

START = 4
CAP = 16
GAIN = 1.10  # a round must beat the best by this much to grow again


def pinned_streams(var: str = "VOLENV_STREAMS") -> int | None:
    """VOLENV_STREAMS=N (1..64): a fixed stream count; unset, empty or 'auto': adaptive.
    Anything else is a usage error (exit 2), not silently the default."""
    raw = os.environ.get(var, "").strip()
    if not raw or raw.lower() == "auto":
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        from volenv.base.errors import UsageError

        raise UsageError(f"{var}={raw!r}: expected a stream count (1 to 64) or 'auto'")
    return int(raw)


class AdaptiveStreams:
    """Thread-safe stream-count controller; read `.current` before starting a part.
    `pinned=None` reads VOLENV_STREAMS; a pinned count makes the reports no-ops."""

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
            self._step(rate)

    def report_total(self, nbytes: int, seconds: float) -> int:
        """All `current` streams together moved nbytes in seconds; returns the count to run."""
        with self._lock:
            if not self.settled and seconds > 0:
                self._step(nbytes / seconds)
            return self.current

    def _step(self, rate: float) -> None:
        if rate > self._best * GAIN:
            self._best, self._best_count = rate, self.current
            self.current = min(self.cap, math.ceil(self.current * 1.5))
            self.settled = self.current == self._best_count  # at the cap
        else:
            self.current = self._best_count
            self.settled = True


def from_env(start: int = START, cap: int = CAP, var: str = "VOLENV_STREAMS") -> AdaptiveStreams:
    """The controller, pinned when `var` names a count."""
    return AdaptiveStreams(start, cap, pinned=pinned_streams(var))
