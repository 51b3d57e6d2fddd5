"""A loopback file server for fetch tests and bench/fetch.py: HTTP Range support (or not), each
connection paced to a byte rate (what object stores and CDNs do per connection), a knob to send
one range's bytes wrong once (or always), and counters of requests, connections in flight and
body bytes served."""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PIECE = 256 << 10


@dataclass
class RangeServer:
    path: Path
    rate: float = 20e6  # bytes per second, per connection
    ranges: bool = True
    corrupt_at: int | None = None  # the first response covering this byte sends it flipped
    corrupt_always: bool = False  # every response covering corrupt_at does
    url: str = ""
    served: int = 0
    requests: int = 0
    connections: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    redirects: int = 0  # requests to /r/<name>, answered 302 to /<name>?sig=N
    sig_uses: int | None = None  # each redirect's signed target answers 403 after this many uses
    sig: int = 0
    sig_left: dict[str, int] = field(default_factory=dict)  # uses left per issued signature
    first_request: float = 0.0  # time.monotonic() of the first request
    first_request_wall: float = 0.0  # ... as time.time(), to compare with records' timestamps
    last_byte: float = 0.0  # ... and of the last body byte sent
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _begin(self) -> None:
        with self.lock:
            self.requests += 1
            self.first_request = self.first_request or time.monotonic()
            self.first_request_wall = self.first_request_wall or time.time()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _end(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def _corrupt(self, start: int, end: int) -> int | None:
        """The byte this response (bytes start..end inclusive) sends flipped, if any."""
        with self.lock:
            at = self.corrupt_at
            if at is None or not start <= at <= end:
                return None
            if not self.corrupt_always:
                self.corrupt_at = None
            return at


def _handler(state: RangeServer) -> type[http.server.BaseHTTPRequestHandler]:
    size = state.path.stat().st_size

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            with state.lock:
                state.connections += 1
            # a token bucket per connection (keep-alive included): `rate` bytes/s, bursts of one
            # piece; `self.due` is when the bucket next holds enough for a piece
            self.due = time.monotonic()

        def do_GET(self) -> None:
            state._begin()
            self.ended = False
            try:
                self._get()
            finally:
                self._done()

        def _done(self) -> None:
            """The request is over for the count as its last piece goes out: the client has it
            then and may send its next request on another connection before this thread
            returns (a race the in-flight count would take for two at once)."""
            if not self.ended:
                self.ended = True
                state._end()

        def _signed(self) -> bool:
            """Redirects and expiring signed targets (what a presigned CDN URL does)."""
            path, _, query = self.path.partition("?")
            if path.startswith("/r/"):
                with state.lock:
                    state.redirects += 1
                    state.sig += 1
                    uses = state.sig_uses if state.sig_uses is not None else 1 << 60
                    state.sig_left[f"sig={state.sig}"] = uses
                    where = f"/{path[3:]}?sig={state.sig}"
                self.send_response(302)
                self.send_header("Location", where)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False
            if state.sig_uses is not None:
                with state.lock:
                    ok = state.sig_left.get(query, 0) > 0
                    if ok:
                        state.sig_left[query] -= 1
                if not ok:
                    self.send_response(403)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return False
            return True

        def _get(self) -> None:
            if not self._signed():
                return
            start, end = 0, size - 1
            rng = self.headers.get("Range") if state.ranges else None
            if rng:
                first, _, last = rng.split("=", 1)[1].partition("-")
                start, end = int(first), min(end, int(last)) if last else end
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Accept-Ranges", "bytes")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            bad = state._corrupt(start, end)
            with open(state.path, "rb") as f:
                pos = start
                while pos <= end:
                    data = os.pread(f.fileno(), min(PIECE, end + 1 - pos), pos)
                    if bad is not None and pos <= bad < pos + len(data):
                        k = bad - pos
                        data = data[:k] + bytes([data[k] ^ 0xFF]) + data[k + 1 :]
                    now = time.monotonic()
                    self.due = max(self.due, now - PIECE / state.rate) + len(data) / state.rate
                    if self.due > now:
                        time.sleep(self.due - now)
                    if pos + len(data) > end:
                        self._done()  # before the last piece: once it lands the client may go on
                    try:
                        self.wfile.write(data)
                    except OSError:
                        return
                    with state.lock:
                        state.served += len(data)
                        state.last_byte = time.monotonic()
                    pos += len(data)

    return Handler


@contextmanager
def serve(state: RangeServer) -> Iterator[RangeServer]:
    """Serve state.path at <url>/<name> on 127.0.0.1 until the block ends."""
    handler = _handler(state)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/{state.path.name}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
