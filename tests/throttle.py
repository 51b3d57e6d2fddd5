"""A loopback TCP proxy that limits EACH connection's download direction to a fixed rate (what
an S3 endpoint or CDN does per connection), and counts connections, bytes and how many
connections were sending at once; with `up_rate`, the upload direction too (counted the same
way). Used by tests/test_pull_parallel.py, tests/test_push_parallel.py, bench/pull.py and
bench/push.py."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler
from types import TracebackType


class ThrottledProxy:
    def __init__(
        self, upstream: str, rate: float, *, cut: int = 0, cut_after: int = 1 << 20, up_rate: float = 0
    ) -> None:
        host, _, port = upstream.removeprefix("http://").rstrip("/").partition(":")
        self.upstream = (host, int(port))
        self.rate = rate  # bytes per second, per connection, server -> client
        self.cut = cut  # this many connections are broken after `cut_after` bytes (a flaky link)
        self.cut_after = cut_after
        self.lock = threading.Lock()
        self.connections = 0
        self.down_bytes = 0
        self.range_requests = 0
        self.sending = 0  # connections inside a throttled send right now
        self.max_sending = 0
        self.first_down = self.last_down = 0.0  # monotonic times of the first and last byte sent
        self.up_rate = up_rate  # bytes per second, per connection, client -> server (0: no limit)
        self.up_bytes = 0
        self.receiving = 0  # connections inside a throttled upload send right now
        self.max_receiving = 0
        self.first_up = self.last_up = 0.0
        self._stop = False
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> ThrottledProxy:
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.server.close()

    def reset(self) -> None:
        with self.lock:
            self.connections = self.down_bytes = self.range_requests = self.max_sending = 0
            self.first_down = self.last_down = 0.0
            self.up_bytes = self.max_receiving = 0
            self.first_up = self.last_up = 0.0

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
            try:
                up = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._up, args=(client, up), daemon=True).start()
            threading.Thread(target=self._down, args=(up, client), daemon=True).start()

    def _up(self, src: socket.socket, dst: socket.socket) -> None:
        pace = _Pace(self.up_rate)
        try:
            while data := src.recv(1 << 16):
                if b"\r\nrange: bytes=" in data.lower():
                    with self.lock:
                        self.range_requests += 1
                if not self.up_rate:
                    dst.sendall(data)
                    continue
                with self.lock:
                    self.receiving += 1
                    self.max_receiving = max(self.max_receiving, self.receiving)
                try:
                    pace.send(dst, data)
                finally:
                    with self.lock:
                        self.receiving -= 1
                        self.up_bytes += len(data)
                        self.last_up = time.monotonic()
                        self.first_up = self.first_up or self.last_up
        except OSError:
            pass
        finally:
            _shut(dst)

    def _down(self, src: socket.socket, dst: socket.socket) -> None:
        """Sends in 64 KiB slices, sleeping so that this connection never beats `rate`."""
        pace = _Pace(self.rate)
        try:
            while data := src.recv(1 << 16):
                with self.lock:
                    self.sending += 1
                    self.max_sending = max(self.max_sending, self.sending)
                try:
                    pace.send(dst, data)
                    with self.lock:
                        broken = self.cut > 0 and pace.sent > self.cut_after
                        self.cut -= broken
                    if broken:
                        _shut(src)
                        return
                finally:
                    with self.lock:
                        self.sending -= 1
                        self.down_bytes += len(data)
                        self.last_down = time.monotonic()
                        self.first_down = self.first_down or self.last_down
        except OSError:
            pass
        finally:
            _shut(dst)


class _Pace:
    """One connection's direction held to `rate` bytes/s: each send waits until the bytes
    before it are due; an idle gap between requests carries no credit over."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.t0 = time.monotonic()
        self.sent = 0

    def send(self, dst: socket.socket, data: bytes) -> None:
        ahead = self.sent / self.rate - (time.monotonic() - self.t0)
        if ahead > 0:
            time.sleep(ahead)
        elif ahead < -0.05:
            self.t0, self.sent = time.monotonic(), 0
        dst.sendall(data)
        self.sent += len(data)


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def relay(handler: BaseHTTPRequestHandler, upstream: str, body: bytes | None) -> None:
    """Forward the request a test's reverse proxy (an http.server handler) received to
    `upstream` (host:port) and send the whole answer back, headers and status as they came."""
    conn = http.client.HTTPConnection(upstream, timeout=60)
    headers = {k: v for k, v in handler.headers.items() if k.lower() != "connection"}
    conn.request(handler.command, handler.path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    handler.send_response(resp.status)
    for k, v in resp.getheaders():
        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
            handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(data)
    conn.close()
