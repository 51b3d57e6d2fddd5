"""A hostile model server must not fill the volume: an endless body, or a Range answer whose
total is far past the pinned size, ends the fetch with exit 9 and nothing kept."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import volenv, write_manifest

MB = 1 << 20
SHA = hashlib.sha256(b"x").hexdigest()


def _handler(mode: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            block = b"\0" * (1 << 16)
            rng = self.headers.get("Range")
            if mode == "endless" or rng is None:
                self.send_response(200)
                self.end_headers()
                t_end = time.monotonic() + 10
                try:
                    while time.monotonic() < t_end:
                        self.wfile.write(block)
                except OSError:
                    pass
                return
            start, _, end = rng.removeprefix("bytes=").partition("-")
            a, b = int(start), int(end)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{b}/{1 << 62 if mode == 'huge' else 10**10}")
            self.send_header("Content-Length", str(b - a + 1))
            self.end_headers()
            try:
                left = b - a + 1
                while left > 0:
                    n = min(left, len(block))
                    self.wfile.write(block[:n])
                    left -= n
            except OSError:
                pass

    return Handler


@contextmanager
def _serve(mode: str) -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(mode))
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/weights.bin"
    finally:
        srv.shutdown()
        srv.server_close()


def _largest_file(root: Path) -> int:
    return max((p.stat().st_size for p in root.rglob("*") if p.is_file()), default=0)


@pytest.mark.parametrize(
    ("mode", "size"),
    [("endless", 2 * MB), ("total", 2 * MB), ("huge", 2 * MB), ("huge", None)],
)
def test_hostile_server_cannot_fill_the_volume(
    tmp_path: Path, root: Path, wheelhouse: Path, mode: str, size: int | None
) -> None:
    with _serve(mode) as url:
        extra = f'[[models]]\nname = "w"\nurl = "{url}"\nsha256 = "{SHA}"\n'
        if size is not None:
            extra += f"size = {size}\n"
        m = write_manifest(tmp_path / "m", "app", ["alpha==1.0"], find_links=wheelhouse, extra=extra)
        t0 = time.monotonic()
        r = volenv("--root", root, "models", "fetch", m, timeout=60)
        took = time.monotonic() - t0
    assert r.returncode == 9, (r.returncode, r.stderr)
    assert "internal error" not in r.stderr
    assert "more than" in r.stderr, r.stderr
    if size is not None:
        assert took < 8, took  # refused as soon as it went past the pin, not after 10 s of bytes
        assert _largest_file(root) <= size
    assert not list((root / "models").rglob("*.part-chunks*")), "the .part outlived the refusal"


def test_redirect_to_file_is_refused_once_not_retried(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    hits: list[str] = []

    class Redirect(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.send_header("Content-Length", "0")
            self.end_headers()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/weights.bin"
        extra = f'[[models]]\nname = "w"\nurl = "{url}"\nsha256 = "{SHA}"\nsize = 1\n'
        m = write_manifest(tmp_path / "m", "app", ["alpha==1.0"], find_links=wheelhouse, extra=extra)
        t0 = time.monotonic()
        r = volenv("--root", root, "models", "fetch", m, timeout=60)
        took = time.monotonic() - t0
    finally:
        srv.shutdown()
        srv.server_close()
    assert r.returncode == 9, r.stderr
    assert len(hits) == 1 and took < 10, (hits, took)  # no retries with back-off


def test_hard_link_planted_at_the_part_is_not_truncated(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    from rangeserver import RangeServer, serve

    data = bytes(range(256)) * 4096
    src = tmp_path / "weights.bin"
    src.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    d = root / "models" / "files" / "w" / sha[:16]
    d.mkdir(parents=True)
    os.link(victim, d / ".weights.bin.part-chunks")
    os.link(victim, d / ".weights.bin.part-chunks.journal")
    with serve(RangeServer(src)) as srv:
        extra = f'[[models]]\nname = "w"\nurl = "{srv.url}"\nsha256 = "{sha}"\nsize = {len(data)}\n'
        m = write_manifest(tmp_path / "m", "app", ["alpha==1.0"], find_links=wheelhouse, extra=extra)
        r = volenv("--root", root, "models", "fetch", m)
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "precious\n"
    assert (d / "weights.bin").read_bytes() == data
