"""Run I/O parts (downloads, ranged reads, pack extractions) on a thread pool, in order, with
at most `streams.current` in flight, feeding each finished part's bytes and time back to the
controller. The first failure stops the rest (each part gets an `Event` to check between
reads), waits for the parts in flight, and is raised: no part is left running behind it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from volenv.base.streams import AdaptiveStreams

#: a part: does its work (checking `stop` between reads) and returns the bytes it moved, or
#: (bytes, seconds) when only some of its time was transfer (the rest: checking, publishing)
Part = Callable[[threading.Event], "int | tuple[int, float]"]


class Stopped(Exception):
    """A part noticed `stop` and gave up (another part failed first)."""


def run_parts(parts: Iterable[Part], streams: AdaptiveStreams, *, name: str = "volenv-io") -> int:
    """Run every part; returns the bytes they moved. Parts start in the given order."""
    todo = list(parts)
    if not todo:
        return 0
    stop = threading.Event()
    moved = 0
    error: BaseException | None = None

    def timed(part: Part) -> tuple[int, float]:
        t0 = time.perf_counter()
        out = part(stop)
        return out if isinstance(out, tuple) else (out, time.perf_counter() - t0)

    inflight: set[Future[tuple[int, float]]] = set()
    with ThreadPoolExecutor(max_workers=max(streams.cap, 1), thread_name_prefix=name) as pool:
        todo.reverse()
        try:
            while todo or inflight:
                while todo and error is None and len(inflight) < streams.current:
                    inflight.add(pool.submit(timed, todo.pop()))
                if not inflight:
                    break
                done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        n, seconds = fut.result()
                    except Stopped:
                        continue
                    except BaseException as exc:  # the first failure wins; the rest stop
                        if error is None:
                            error = exc
                            stop.set()
                        continue
                    moved += n
                    if n:  # a part that moved nothing says nothing about the streams
                        streams.report(n, seconds)
        except BaseException:
            stop.set()
            raise
    if error is not None:
        raise error
    return moved
