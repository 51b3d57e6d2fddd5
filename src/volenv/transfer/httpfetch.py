"""One file over HTTP as parallel Range requests into a `.part` file, with a chunk journal so a
killed fetch resumes where it was: what pget and hf_xet do for weights, with stdlib urllib.

The `.part` is preallocated to the file's size; each worker thread fetches whole chunks and
writes them in place with pwrite. A chunk counts as done only once its bytes are fsynced AND
its line (index + sha256 of the bytes as received) is appended and fsynced in the journal, a
sibling file. On resume the journal's claims are re-hashed from the `.part`; chunks that do not
match (or were never journaled) are fetched again. The whole-file sha256 is computed in file
order as chunks become durable, so it is ready when the last chunk lands; the caller compares
it with the pinned sha256 before anything is published.

A server that answers a Range request with 200 (no range support) gets one stream, as before;
a dropped connection inside a chunk resumes inside that chunk. How many streams run adapts
(streams.AdaptiveStreams); VOLENV_STREAMS pins it, VOLENV_FETCH_CHUNK sets the chunk size.

Long: one protocol (plan, journal, workers, ordered hash, resume) whose parts share the `.part`
file's invariants; split, each piece would have to restate them.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import http.client
import json
import os
import re
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volenv.base.errors import UsageError
from volenv.base.leanjson import loads as json_loads  # RecursionError is ValueError there
from volenv.base.streams import AdaptiveStreams, from_env
from volenv.store.volio import contained, write_all

JOURNAL_SCHEMA = 1
CHUNK_MIN = 128 << 10
CHUNK_MAX = 16 << 20
CHUNKS_TARGET = 512  # chunks per file: a kill loses about half a chunk per stream in flight
RUN_MAX = 16 << 20  # one request covers a run of consecutive chunks up to this many bytes
RUNS_PER_STREAM = 4  # ... and about 1/(cap x 4) of the file, so the last runs end together
READ = 1 << 20
WINDOW = 0.3  # seconds per throughput sample for the stream controller
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


class HTTPRefused(Exception):
    """The server refused the request for good (a 4xx other than 416): no retry helps."""

    def __init__(self, code: int) -> None:
        super().__init__(f"HTTP {code}")
        self.code = code


class TooLarge(Exception):
    """The server offers (or sends) more bytes than the manifest pins or the volume has free: a
    hostile or wrong server must not fill the volume, so this is never retried."""


class RetriesExhausted(Exception):
    """A chunk (or the single stream) failed on every attempt."""


@dataclass(frozen=True)
class FetchResult:
    size: int
    sha256: str
    ranged: bool  # parallel Range requests (False: one stream)
    streams: int  # the most streams that ran
    resumed_chunks: int  # chunks a previous, killed fetch had already made durable
    fetched_bytes: int  # body bytes this call received


@dataclass(frozen=True)
class Options:
    attempts: int
    timeout: float
    say: Callable[[str], None]
    progress: Any  # ui.Progress: update(n), reset(n)


def chunk_size(total: int) -> int:
    """~CHUNKS_TARGET chunks per file, between 128 KiB and 16 MiB (64 KiB aligned)."""
    raw = os.environ.get("VOLENV_FETCH_CHUNK", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 4096:
            raise UsageError(f"VOLENV_FETCH_CHUNK={raw!r}: expected a chunk size in bytes (>= 4096)")
        return int(raw)
    want = -(-total // CHUNKS_TARGET)
    want = -(-want // (64 << 10)) * (64 << 10)
    return max(CHUNK_MIN, min(CHUNK_MAX, want))


def _request(url: str, start: int | None = None, end: int | None = None) -> urllib.request.Request:
    """A GET of `url`; its userinfo (`https://user:token@host/...`, what private model servers
    take) becomes a Basic Authorization header: urllib cannot send it in the URL."""
    auth = None
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None or parts.password is not None:
        import base64

        user = urllib.parse.unquote(parts.username or "")
        secret = urllib.parse.unquote(parts.password or "")
        auth = "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{parts.port}" if parts.port else ""
        url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    req = urllib.request.Request(url, headers={"User-Agent": "volenv", "Accept-Encoding": "identity"})
    if auth is not None:  # to this host only: a redirect (to a CDN) never carries it along
        req.add_unredirected_header("Authorization", auth)
    if start is not None:
        req.add_header("Range", f"bytes={start}-" + ("" if end is None else str(end)))
    return req


def _content_range(resp: Any) -> tuple[int, int, int | None] | None:
    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
    if not m:
        return None
    return int(m[1]), int(m[2]), None if m[3] == "*" else int(m[3])


def _retryable(exc: BaseException) -> bool:
    """Network trouble is retried; a refusal (4xx but 416) and a full disk are not."""
    if isinstance(exc, urllib.error.HTTPError):
        # a redirect urllib refused (to file:// and the like) is a 3xx error: as final as a 4xx
        return not (300 <= exc.code < 500 and exc.code != 416)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
        return False
    return isinstance(exc, (urllib.error.URLError, http.client.HTTPException, OSError, ValueError))


class _Journal:
    """The chunk journal: a header line (what is being fetched, how it is cut) and one line per
    durable chunk. Appends are single writes followed by fsync; a torn last line is dropped."""

    def __init__(self, fd: int, header: dict[str, Any]) -> None:
        self.fd = fd
        self.header = header

    @staticmethod
    def header_for(sha256: str, total: int, chunk: int) -> dict[str, Any]:
        return {
            "schema": JOURNAL_SCHEMA,
            "kind": "volenv-fetch-journal",
            "sha256": sha256,
            "size": total,
            "chunk": chunk,
        }

    @staticmethod
    def read(fd: int) -> tuple[dict[str, Any] | None, dict[int, str]]:
        """(header, {chunk: sha256}) from the journal; (None, {}) when it has no valid header."""
        data = b""
        while piece := os.pread(fd, 1 << 20, len(data)):
            data += piece
        lines = data.split(b"\n")
        if data and not data.endswith(b"\n"):  # a torn append: cut it so the next one starts clean
            os.ftruncate(fd, len(data) - len(lines[-1]))
        lines = lines[:-1]
        if not lines:
            return None, {}
        try:
            header = json_loads(lines[0])
        except ValueError:
            return None, {}
        if not isinstance(header, dict) or header.get("kind") != "volenv-fetch-journal":
            return None, {}
        claims: dict[int, str] = {}
        for line in lines[1:]:
            try:
                entry = json_loads(line)
                i, sha = entry["i"], entry["sha256"]
            except (ValueError, KeyError, TypeError):
                continue  # a damaged claim is just not believed: that chunk is fetched again
            if isinstance(i, int) and isinstance(sha, str):
                claims[i] = sha
        return header, claims

    def reset(self) -> None:
        os.ftruncate(self.fd, 0)
        self._append([self.header])

    def commit(self, entries: list[tuple[int, str]]) -> None:
        self._append([{"i": i, "sha256": sha} for i, sha in entries])

    def _append(self, objs: list[dict[str, Any]]) -> None:
        # one O_APPEND write per batch: even a second writer (a lease taken over from a frozen
        # fetcher) cannot overwrite a line, and the same bytes land in the .part either way
        data = b"".join(json.dumps(o, sort_keys=True).encode() + b"\n" for o in objs)
        write_all(self.fd, data)
        os.fsync(self.fd)


def _open_in(path: Path, root: Path, extra: int = 0) -> int:
    """Open (create) a file below root read-write, never through a symlinked component or a
    link at the file itself."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | extra
    with contained(path, root) as (dfd, name):
        fd = os.open(name, flags, 0o644, dir_fd=dfd)
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            return fd
        # a hard link planted at our name (truncating it would truncate the other name's
        # file) or not a plain file: drop the name and start a fresh file of our own
        os.close(fd)
        os.unlink(name, dir_fd=dfd)
        return os.open(name, flags | os.O_EXCL, 0o644, dir_fd=dfd)


def discard(part: Path, journal: Path, root: Path) -> None:
    """Forget a fetch's progress (both files), e.g. after its bytes failed the whole-file check."""
    from volenv.store.volio import safe_unlink

    safe_unlink(journal, root)  # the journal first: a part without one is never believed
    safe_unlink(part, root)


class Plan:
    def __init__(self, total: int, chunk: int) -> None:
        self.total = total
        self.chunk = chunk
        self.count = max(1, -(-total // chunk))

    def span(self, i: int) -> tuple[int, int]:
        start = i * self.chunk
        return start, min(self.total, start + self.chunk)


def fetch(
    url: str, part: Path, journal: Path, root: Path, *, sha256: str, size: int | None, opts: Options
) -> FetchResult:
    """Fetch `url` into `part` (resuming from `journal`) and return its size and sha256.

    The caller holds the model's lease (one fetcher per file across hosts) and checks the
    result against the pinned sha256 before publishing."""
    jfd = _open_in(journal, root, os.O_APPEND)
    try:
        pfd = _open_in(part, root)
        try:
            return _Fetch(url, pfd, jfd, sha256, size, opts).run()
        finally:
            os.close(pfd)
    finally:
        os.close(jfd)


class _Fetch:
    def __init__(self, url: str, pfd: int, jfd: int, sha256: str, size: int | None, opts: Options) -> None:
        self.url = url
        self.pfd = pfd
        self.jfd = jfd
        self.sha256 = sha256
        self.size = size
        self.opts = opts
        self.final_url = url
        self.received = 0  # body bytes received by this call (all streams)
        self.resumed = 0

    # ------------------------------------------------------------ plan and probe

    def run(self) -> FetchResult:
        header, claims = _Journal.read(self.jfd)
        total = self.size
        if (
            total is None
            and header
            and header.get("sha256") == self.sha256
            and isinstance(header.get("size"), int)
        ):
            total = header["size"]
        probe_chunk = chunk_size(total) if total is not None else CHUNK_MIN
        plan = Plan(total, probe_chunk) if total is not None else None
        done: dict[int, str] = {}
        if plan is not None and header == _Journal.header_for(self.sha256, plan.total, plan.chunk):
            done = self._verify_claims(plan, claims)
        first = next((i for i in range(plan.count) if i not in done), None) if plan else 0
        if plan is not None and first is None:  # everything is already here
            self.resumed = len(done)
            return self._finish(plan, done)
        start, end = plan.span(first or 0) if plan else (0, CHUNK_MIN)
        resp = self._open(start, end - 1)
        self.final_url = resp.geturl() or self.url  # where redirects led: workers keep-alive there
        rng = _content_range(resp) if resp.status == 206 else None
        if rng is None or rng[0] != start or rng[2] is None:
            if resp.status != 200:  # a range we cannot place: start one plain stream instead
                resp.close()
                resp = None
            return self._single_stream(resp)
        real_total = rng[2]
        if real_total > self._cap():
            resp.close()
            raise TooLarge(self._too_large(f"the server says the file is {real_total} bytes"))
        if plan is None or plan.total != real_total:
            plan = Plan(real_total, chunk_size(real_total))
            done = {}
        want = _Journal.header_for(self.sha256, plan.total, plan.chunk)
        jr = _Journal(self.jfd, want)
        if header != want or not done:
            done = {}
            jr.reset()
        if os.fstat(self.pfd).st_size != plan.total:
            os.ftruncate(self.pfd, plan.total)
        self.resumed = len(done)
        self.opts.progress.reset(sum(plan.span(i)[1] - plan.span(i)[0] for i in done))
        if self.resumed:
            self.opts.say(f"resuming: {self.resumed} of {plan.count} chunks verified from the journal")
        first = start // plan.chunk
        handover = None
        if start % plan.chunk == 0 and first not in done and rng[1] + 1 >= plan.span(first)[1]:
            handover = (first, resp)  # the probe's answer is exactly a chunk we need: keep it
        else:
            resp.close()
        streams, digest = self._parallel(plan, done, jr, handover)
        return FetchResult(plan.total, digest, True, streams, self.resumed, self.received)

    def _cap(self) -> int:
        """The most bytes the .part may hold: the pinned size, else what the volume has free
        (plus what the .part already holds)."""
        if self.size is not None:
            return self.size
        st = os.fstatvfs(self.pfd)
        return st.f_bavail * st.f_frsize + os.fstat(self.pfd).st_size

    def _too_large(self, what: str) -> str:
        if self.size is not None:
            return f"{what}, more than the {self.size} the manifest pins; nothing kept"
        return f"{what}, more than the volume has free ({self._cap()} bytes); nothing kept"

    def _open(self, start: int, end: int | None) -> Any:
        """The first request, retried like any chunk."""
        delay = 0.5
        for attempt in range(1, self.opts.attempts + 1):
            try:
                try:
                    return urllib.request.urlopen(_request(self.url, start, end), timeout=self.opts.timeout)
                except urllib.error.HTTPError as exc:
                    if exc.code != 416:
                        raise
                    # nothing at that range (an empty file, a size that changed): a plain GET
                    return urllib.request.urlopen(_request(self.url), timeout=self.opts.timeout)
            except Exception as exc:
                if not _retryable(exc) or attempt == self.opts.attempts:
                    _give_up(exc, "the first request", attempt)
                self.opts.say(f"{exc}; retrying in {delay:.1f}s")
                time.sleep(delay)
                delay = min(delay * 2, 15)
        raise AssertionError("unreachable")

    def _verify_claims(self, plan: Plan, claims: dict[int, str]) -> dict[int, str]:
        """The journal's chunks whose bytes in the .part still hash to what was received."""
        good: dict[int, str] = {}
        todo = collections.deque(sorted(i for i in claims if 0 <= i < plan.count))
        lock = threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.popleft()
                s, e = plan.span(i)
                h = hashlib.sha256()
                pos = s
                while pos < e:
                    data = os.pread(self.pfd, min(READ * 4, e - pos), pos)
                    if not data:
                        break
                    h.update(data)
                    pos += len(data)
                if pos == e and h.hexdigest() == claims[i]:
                    with lock:
                        good[i] = claims[i]

        threads = [threading.Thread(target=work, daemon=True) for _ in range(min(4, len(todo)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bad = len([i for i in claims if i not in good])
        if bad:
            self.opts.say(f"{bad} journaled chunk(s) did not match the .part; fetching them again")
        return good

    # ------------------------------------------------------------ one stream

    def _single_stream(self, resp: Any) -> FetchResult:
        """No usable Range support: one stream from the start, as volenv always did; a dropped
        connection is resumed with Range when the server honours it, else started over."""
        os.ftruncate(self.jfd, 0)
        os.ftruncate(self.pfd, 0)
        cap = self._cap()
        have = 0
        h = hashlib.sha256()
        delay = 0.5
        attempt = 1
        while True:
            try:
                if resp is None:
                    resp = urllib.request.urlopen(
                        _request(self.url, have if have else None), timeout=self.opts.timeout
                    )
                with resp:
                    if have and resp.status != 206:  # the server ignored Range: start over
                        have = 0
                        h = hashlib.sha256()
                        os.ftruncate(self.pfd, 0)
                        self.opts.progress.reset(0)
                    expected = resp.headers.get("Content-Length")
                    if expected is not None and expected.strip().isdigit() and have + int(expected) > cap:
                        raise TooLarge(self._too_large(f"the server offers {have + int(expected)} bytes"))
                    got = 0
                    while data := resp.read(min(READ, cap + 1 - have)):
                        if have + len(data) > cap:
                            raise TooLarge(self._too_large(f"the server sent more than {cap} bytes"))
                        _pwrite_all(self.pfd, data, have)
                        h.update(data)
                        have += len(data)
                        got += len(data)
                        self.received += len(data)
                        self.opts.progress.update(len(data))
                    if expected is not None and got < int(expected):
                        raise ConnectionError(f"connection dropped after {got} of {expected} bytes")
                break
            except Exception as exc:
                resp = None
                if not _retryable(exc) or attempt >= self.opts.attempts:
                    _give_up(exc, "the download", attempt)
                self.opts.say(f"{exc}; resuming at byte {have} in {delay:.1f}s")
                time.sleep(delay)
                delay = min(delay * 2, 15)
                attempt += 1
        os.fsync(self.pfd)
        return FetchResult(have, h.hexdigest(), False, 1, 0, self.received)

    # ------------------------------------------------------------ parallel

    def _parallel(
        self, plan: Plan, done: dict[int, str], jr: _Journal, handover: tuple[int, Any] | None
    ) -> tuple[int, str]:
        """Run workers over the missing chunks; journal what becomes durable; return the most
        streams that ran and the whole file's sha256."""
        skip = handover[0] if handover else -1
        state = _Shared(collections.deque(i for i in range(plan.count) if i not in done and i != skip))
        ctrl: AdaptiveStreams = from_env()
        state.target = ctrl.current
        run_bytes = min(RUN_MAX, plan.total // (ctrl.cap * RUNS_PER_STREAM))
        state.run_chunks = max(1, run_bytes // plan.chunk)
        hasher = OrderedHasher(self.pfd, plan, done)
        threads: list[threading.Thread] = []

        def spawn(first: tuple[int, Any] | None = None) -> None:
            state.live += 1
            t = threading.Thread(target=self._worker, args=(plan, state, first), daemon=True)
            threads.append(t)
            t.start()

        with state.cond:
            spawn(handover)
            while state.live < state.target and state.pending:
                spawn()
            most = state.live
        t_mark, b_mark, reported = time.monotonic(), 0, 0
        try:
            while True:
                with state.cond:
                    if not state.completed and state.live > 0 and not state.errors:
                        state.cond.wait(WINDOW)
                    batch, state.completed = state.completed, []
                    received, failed = state.received, state.errors[:1]
                if batch:  # the bytes first, then the claims: a journal line always means durable bytes
                    os.fsync(self.pfd)
                    jr.commit(batch)
                    hasher.add(batch)
                self.opts.progress.update(received - reported)
                reported = received
                if failed:
                    raise failed[0]
                now = time.monotonic()
                with state.cond:
                    if now - t_mark >= WINDOW:
                        state.target = ctrl.report_total(received - b_mark, now - t_mark)
                        t_mark, b_mark = now, received
                    if state.live == 0 and not state.pending and not state.completed:
                        break
                    while state.live < state.target and state.pending:
                        spawn()
                    if state.live == 0 and state.pending:  # every worker left on a shrink
                        spawn()
                    most = max(most, state.live)
            return most, hasher.result()
        finally:
            with state.cond:
                state.stop = True
                state.cond.notify_all()
            hasher.cancel()
            deadline = time.monotonic() + 5
            for t in threads:  # workers write through their own fd; bounded wait for stragglers
                t.join(max(0.0, deadline - time.monotonic()))
            self.received += state.received

    def _worker(self, plan: Plan, state: _Shared, first: tuple[int, Any] | None) -> None:
        fd = os.dup(self.pfd)  # its own descriptor: a straggler never writes through a reused number
        getter = _Getter(self.url, self.final_url, self.opts.timeout)
        left = False
        try:
            if first is not None:
                self._run(fd, getter, plan, (first[0], first[0]), state, first[1])
            while True:
                with state.cond:
                    if state.stop or state.live > state.target or not state.pending:
                        state.live -= 1  # in the same hold as the check: no two leave for one
                        left = True
                        state.cond.notify_all()
                        break
                    i = last = state.pending.popleft()
                    while state.pending and state.pending[0] == last + 1 and last - i + 1 < state.run_chunks:
                        last = state.pending.popleft()
                self._run(fd, getter, plan, (i, last), state, None)
        except BaseException as exc:
            with state.cond:
                state.errors.append(exc)
                state.stop = True
        finally:
            getter.close()
            os.close(fd)
            if not left:
                with state.cond:
                    state.live -= 1
                    state.cond.notify_all()

    def _run(
        self, fd: int, getter: _Getter, plan: Plan, run: tuple[int, int], state: _Shared, resp: Any
    ) -> None:
        """Fetch chunks run[0]..run[1] (consecutive) with one Range request into the .part, each
        chunk reported complete (for the journal) as soon as its last byte is written; after a
        dropped connection the request resumes at the byte where it stopped."""
        first, last = run
        pos, e = plan.span(first)[0], plan.span(last)[1]
        i = first
        chunk_end = plan.span(i)[1]
        h = hashlib.sha256()
        view = memoryview(bytearray(READ))
        delay = 0.5
        attempt = 1
        while pos < e:
            try:
                if resp is None:
                    resp = getter.get(pos, e - 1)
                with resp:
                    rng = _content_range(resp) if resp.status == 206 else None
                    if rng is None or rng[0] != pos or rng[1] < e - 1:
                        raise ConnectionError(f"the server answered a Range request with {resp.status} {rng}")
                    while pos < e:
                        if state.stop:
                            getter.close()  # a half-read response: the connection is unusable
                            return
                        n = resp.readinto(view[: min(READ, chunk_end - pos)])
                        if not n:
                            raise ConnectionError(f"connection dropped at byte {pos} (chunk {i})")
                        _pwrite_all(fd, view[:n], pos)
                        h.update(view[:n])
                        pos += n
                        with state.cond:
                            state.received += n
                            if pos == chunk_end:
                                state.completed.append((i, h.hexdigest()))
                                state.cond.notify_all()
                        if pos == chunk_end and i < last:
                            i += 1
                            chunk_end = plan.span(i)[1]
                            h = hashlib.sha256()
                resp = None
            except Exception as exc:
                resp = None
                getter.close()
                if state.stop:
                    return
                if not _retryable(exc) or attempt >= self.opts.attempts:
                    _give_up(exc, f"chunk {i}", attempt)
                self.opts.say(f"chunk {i}: {exc}; resuming at byte {pos} in {delay:.1f}s")
                time.sleep(delay)
                delay = min(delay * 2, 15)
                attempt += 1

    def _finish(self, plan: Plan, done: dict[int, str]) -> FetchResult:
        hasher = OrderedHasher(self.pfd, plan, done)
        try:
            return FetchResult(plan.total, hasher.result(), True, 0, self.resumed, self.received)
        finally:
            hasher.cancel()


class _Getter:
    """Range GETs for one worker over one keep-alive connection to where the first request's
    redirects led (a TLS handshake per chunk would cost more than the chunk on a far server).
    Where a plain connection would change how the URL is reached (a proxy from the environment,
    userinfo in the URL) or the direct target stops answering (an expired signed redirect),
    each request goes through urllib with the original URL, exactly as a one-stream fetch."""

    def __init__(self, url: str, final_url: str, timeout: float) -> None:
        self.url = url
        self.final_url = final_url
        self.timeout = timeout
        self.parts = urllib.parse.urlsplit(final_url)
        host = self.parts.hostname or ""
        proxied = self.parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host)
        self.direct = self.parts.scheme in ("http", "https") and "@" not in self.parts.netloc and not proxied
        self.conn: http.client.HTTPConnection | None = None

    def get(self, start: int, end: int) -> Any:
        if not self.direct:
            return urllib.request.urlopen(_request(self.url, start, end), timeout=self.timeout)
        reused = self.conn is not None
        try:
            resp = self._send(start, end)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            self.close()
            if not reused:
                raise
            resp = self._send(start, end)  # the server dropped an idle keep-alive: reconnect once
        if resp.status in (301, 302, 303, 307, 308) or (
            resp.status in (401, 403, 404, 410) and self.final_url != self.url
        ):
            self.close()
            self.direct = False  # follow the original URL through urllib from now on
            return urllib.request.urlopen(_request(self.url, start, end), timeout=self.timeout)
        if resp.status >= 400:
            resp.read()
            raise urllib.error.HTTPError(self.url, resp.status, resp.reason, resp.headers, None)
        return resp

    def _send(self, start: int, end: int) -> Any:
        if self.conn is None:
            cls = http.client.HTTPSConnection if self.parts.scheme == "https" else http.client.HTTPConnection
            self.conn = cls(self.parts.hostname or "", self.parts.port, timeout=self.timeout)
        path = self.parts.path or "/"
        if self.parts.query:
            path += "?" + self.parts.query
        headers = {"User-Agent": "volenv", "Accept-Encoding": "identity", "Range": f"bytes={start}-{end}"}
        self.conn.request("GET", path, headers=headers)
        return self.conn.getresponse()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class _Shared:
    def __init__(self, pending: collections.deque[int]) -> None:
        self.cond = threading.Condition()
        self.pending = pending
        self.target = 1
        self.run_chunks = 1
        self.live = 0
        self.stop = False
        self.received = 0
        self.completed: list[tuple[int, str]] = []
        self.errors: list[BaseException] = []


class OrderedHasher:
    """The whole file's sha256, fed in file order from the .part as chunks become durable, so
    the check costs (almost) nothing after the last chunk lands."""

    def __init__(self, pfd: int, plan: Plan, done: dict[int, str]) -> None:
        self.fd = os.dup(pfd)
        self.plan = plan
        self.ready = set(done)
        self.cancelled = False
        self.h = hashlib.sha256()
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def add(self, batch: list[tuple[int, str]]) -> None:
        with self.cond:
            self.ready.update(i for i, _ in batch)
            self.cond.notify_all()

    def cancel(self) -> None:
        with self.cond:
            self.cancelled = True
            self.cond.notify_all()

    def _run(self) -> None:
        try:
            for i in range(self.plan.count):
                with self.cond:
                    while i not in self.ready and not self.cancelled:
                        self.cond.wait()
                    if self.cancelled and i not in self.ready:
                        return
                s, e = self.plan.span(i)
                pos = s
                while pos < e:
                    data = os.pread(self.fd, min(READ * 4, e - pos), pos)
                    if not data:
                        raise OSError(errno.EIO, f"short read of the .part at byte {pos}")
                    self.h.update(data)
                    pos += len(data)
        except BaseException as exc:
            self.error = exc
        finally:
            os.close(self.fd)

    def result(self) -> str:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.h.hexdigest()


def _give_up(exc: BaseException, what: str, attempts: int) -> None:
    """Raise the final error: a refusal as HTTPRefused, network trouble as RetriesExhausted."""
    if isinstance(exc, urllib.error.HTTPError) and 300 <= exc.code < 500 and exc.code != 416:
        raise HTTPRefused(exc.code) from None
    if _retryable(exc):
        raise RetriesExhausted(f"{what} failed after {attempts} attempts: {exc}") from None
    raise exc


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        offset += n
        view = view[n:]
