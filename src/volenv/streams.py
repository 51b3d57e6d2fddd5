"""How many parallel streams a transfer should use: start at a few, add more while the
aggregate throughput keeps growing, stop (and fall back to the best count seen) once it does
not. One line of a network path often caps each connection (per-connection limits of object
stores and CDNs) while the link and the disk have room: only measuring tells."""

from __future__ import annotations

import os

GAIN = 1.10  # a step must raise the aggregate rate by 10% to count as growth


class AdaptiveStreams:
    """A tiny hill climber over the stream count.

    The caller runs `current` streams, measures the aggregate bytes moved over some wall time,
    and calls `report(bytes, seconds)`; the answer is the count to run next. Growth is
    multiplicative-ish (+max(1, current // 2)) so 4 reaches 16 in three steps; the first step
    that does not gain GAIN settles back on the best count and stays there. `pinned` fixes the
    count (the VOLENV_STREAMS knob) and makes `report` a no-op.
    """

    def __init__(self, start: int = 4, cap: int = 16, *, pinned: int | None = None) -> None:
        if pinned is not None:
            start = cap = max(1, pinned)
        self.cap = max(1, cap)
        self.current = max(1, min(start, self.cap))
        self.settled = pinned is not None or self.current >= self.cap
        self._best_rate = 0.0
        self._best_count = self.current

    def report(self, nbytes: int, seconds: float) -> int:
        """One measurement at the current count; returns the count to use from now on."""
        if self.settled or seconds <= 0:
            return self.current
        rate = nbytes / seconds
        if rate > self._best_rate * GAIN:
            self._best_rate = rate
            self._best_count = self.current
            if self.current >= self.cap:
                self.settled = True
            else:
                self.current = min(self.cap, self.current + max(1, self.current // 2))
        else:
            # no real gain from the last step: go back to the best count and keep it
            self.current = self._best_count
            self.settled = True
        return self.current


def from_env(start: int = 4, cap: int = 16, var: str = "VOLENV_STREAMS") -> AdaptiveStreams:
    """The controller, pinned when VOLENV_STREAMS names a count (1 = one stream); anything but
    a count or 'auto' is a usage error (exit 2), not silently the default."""
    raw = os.environ.get(var, "").strip()
    if raw and raw.lower() != "auto":
        if not raw.isdigit() or int(raw) < 1:
            from .errors import UsageError

            raise UsageError(f"{var}={raw!r}: expected a stream count (1 or more) or 'auto'")
        return AdaptiveStreams(start, cap, pinned=int(raw))
    return AdaptiveStreams(start, cap)
