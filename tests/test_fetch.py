"""Issue 17: url models fetched as parallel HTTP Range requests into a `.part` with a chunk
journal: correct bytes over several connections, SIGKILLed fetches resume at chunk granularity
(bytes served stay near the file's size), a file up to 64 MiB whose bytes the server garbles once is fetched again, a
server that always lies publishes nothing, a server without Range support still works; and the
stream-count controller. The server paces each connection to 20 MB/s (tests/rangeserver.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import volenv, volenv_popen, write_manifest
from rangeserver import RangeServer, serve
from volenv.base.errors import UsageError
from volenv.base.streams import AdaptiveStreams, from_env
from volenv.transfer.httpfetch import chunk_size

MB = 1 << 20


def _file(tmp: Path, size: int) -> tuple[Path, str]:
    p = tmp / "weights.bin"
    data = os.urandom(size)
    p.write_bytes(data)
    return p, hashlib.sha256(data).hexdigest()


def _manifest(tmp: Path, wheelhouse: Path, url: str, sha: str, size: int | None) -> Path:
    extra = f'[[models]]\nname = "w"\nurl = "{url}"\nsha256 = "{sha}"\n'
    if size is not None:
        extra += f"size = {size}\n"
    return write_manifest(tmp / "m", "app", ["alpha==1.0"], find_links=wheelhouse, extra=extra)


def _published(root: Path, sha: str) -> Path:
    return root / "models" / "files" / "w" / sha[:16] / "weights.bin"


def _assert_published(root: Path, src: Path, sha: str) -> None:
    dest = _published(root, sha)
    assert dest.read_bytes() == src.read_bytes()
    rec = json.loads(next((root / "models" / "records").glob("w.*.json")).read_text())
    assert rec["files"] == [{"path": "weights.bin", "size": src.stat().st_size, "sha256": sha}]
    left = [p.name for p in dest.parent.iterdir() if p.name.startswith(".")]
    assert not left, left  # neither the .part nor its journal outlive the publish


def test_parallel_fetch_correct_bytes_over_several_connections(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    src, sha = _file(tmp_path, 32 * MB)
    with serve(RangeServer(src)) as srv:
        m = _manifest(tmp_path, wheelhouse, srv.url, sha, None)  # size learnt from the server
        r = volenv("--root", root, "models", "fetch", m)
    assert r.returncode == 0, r.stderr
    _assert_published(root, src, sha)
    assert srv.max_in_flight > 1, "one connection at a time: not parallel"
    assert srv.connections < srv.requests / 2  # the workers keep their connections alive
    assert srv.served <= src.stat().st_size + chunk_size(
        src.stat().st_size
    )  # the probe's chunk twice at most


def _journal_fraction(journal: Path, size: int, chunk: int) -> float:
    try:
        lines = journal.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0.0
    return max(0, lines - 1) * chunk / size


def test_sigkill_at_30_60_90_percent_resumes_by_chunks(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    size = 64 * MB
    src, sha = _file(tmp_path, size)
    chunk = chunk_size(size)
    journal = _published(root, sha).with_name(".weights.bin.part-chunks.journal")
    part = journal.with_name(".weights.bin.part-chunks")
    with serve(RangeServer(src)) as srv:
        m = _manifest(tmp_path, wheelhouse, srv.url, sha, size)
        resumed = []
        for i, target in enumerate((0.3, 0.6, 0.9)):
            p = volenv_popen("--root", root, "models", "fetch", m, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 60
            while _journal_fraction(journal, size, chunk) < target:
                assert p.poll() is None, p.communicate()[1]
                assert time.monotonic() < deadline
                time.sleep(0.005)
            p.send_signal(signal.SIGKILL)
            err = p.communicate()[1]
            assert p.returncode == -signal.SIGKILL
            if i:
                resumed.append(err)
            if i == 0:
                # damage a journaled chunk on disk: the resume must notice and fetch it again
                with open(part, "r+b") as f:
                    f.seek(chunk + 7)
                    b = f.read(1)
                    f.seek(chunk + 7)
                    f.write(bytes([b[0] ^ 0xFF]))
        r = volenv("--root", root, "models", "fetch", m)
        assert r.returncode == 0, r.stderr
        resumed.append(r.stderr)
    _assert_published(root, src, sha)
    assert all("resuming:" in e for e in resumed), resumed
    assert "did not match the .part" in resumed[0]
    print(f"served {srv.served / size:.3f}x the file")
    assert srv.served <= 1.15 * size, f"served {srv.served / size:.2f}x the file"


def test_chunk_garbled_once_is_refetched_and_a_liar_publishes_nothing(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    size = 16 * MB
    src, sha = _file(tmp_path, size)
    with serve(RangeServer(src, corrupt_at=size // 2 + 12345)) as srv:
        m = _manifest(tmp_path, wheelhouse, srv.url, sha, size)
        r = volenv("--root", root, "models", "fetch", m)
    assert r.returncode == 0, r.stderr
    assert "does not match the pin" in r.stderr and "fetching it once more" in r.stderr
    assert srv.corrupt_at is None  # the garbled response was really sent
    _assert_published(root, src, sha)

    root2 = tmp_path / "vol2" / "volenv"
    with serve(RangeServer(src, corrupt_at=123, corrupt_always=True)) as srv:
        m = _manifest(tmp_path / "2", wheelhouse, srv.url, sha, size)
        r = volenv("--root", root2, "models", "fetch", m)
    # exit 9 (model fetch/verify failed, DESIGN.md's table), not 4: 4 is a snapshot/record check
    assert r.returncode == 9, r.stderr
    assert "does not match the pin (fetched twice" in r.stderr and "nothing was published" in r.stderr
    assert not list((root2 / "models" / "records").glob("*.json"))
    wdir = root2 / "models" / "files" / "w"
    assert not [p for p in wdir.rglob("*") if p.is_file()]  # no model, no .part, no journal


def test_server_without_range_support_gets_one_stream(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    size = 8 * MB
    src, sha = _file(tmp_path, size)
    with serve(RangeServer(src, ranges=False)) as srv:
        m = _manifest(tmp_path, wheelhouse, srv.url, sha, size)
        r = volenv("--root", root, "models", "fetch", m)
    assert r.returncode == 0, r.stderr
    _assert_published(root, src, sha)
    assert srv.requests == 1 and srv.max_in_flight == 1
    assert srv.served == size


def test_pinned_streams_use_exactly_that_many_connections(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    size = 8 * MB
    src, sha = _file(tmp_path, size)
    with serve(RangeServer(src)) as srv:
        m = _manifest(tmp_path, wheelhouse, srv.url, sha, size)
        r = volenv("--root", root, "models", "fetch", m, env={"VOLENV_STREAMS": "1"})
    assert r.returncode == 0, r.stderr
    _assert_published(root, src, sha)
    assert srv.max_in_flight == 1 and srv.requests > 1  # chunked, one at a time


def test_redirects_followed_once_and_expired_targets_re_resolved(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    """Workers keep-alive to where the first request's redirect led (one redirect for the
    whole fetch); a signed target that starts answering 403 sends them back through the
    original URL's redirect, and the fetch still completes."""
    size = 8 * MB
    src, sha = _file(tmp_path, size)
    with serve(RangeServer(src)) as srv:
        url = srv.url.replace("/weights.bin", "/r/weights.bin")
        m = _manifest(tmp_path, wheelhouse, url, sha, size)
        r = volenv("--root", root, "models", "fetch", m)
        assert r.returncode == 0, r.stderr
        assert srv.redirects == 1 and srv.requests > 8, (srv.redirects, srv.requests)
        assert srv.connections < srv.requests / 2
    _assert_published(root, src, sha)
    root2 = tmp_path / "vol2" / "volenv"
    with serve(RangeServer(src, sig_uses=5)) as srv:
        url = srv.url.replace("/weights.bin", "/r/weights.bin")
        m = _manifest(tmp_path / "2", wheelhouse, url, sha, size)
        r = volenv("--root", root2, "models", "fetch", m)
        assert r.returncode == 0, r.stderr
        assert srv.redirects > 1
    _assert_published(root2, src, sha)


def test_adaptive_streams_grow_while_throughput_grows_and_settle() -> None:
    s = AdaptiveStreams(start=4, cap=16)
    assert s.current == 4
    # each stream moves 20 MB/s until the link saturates at 150 MB/s
    for _ in range(10):
        rate = min(20e6 * s.current, 150e6)
        s.report_total(int(rate * 0.5), 0.5)
    assert s.current == 9  # 4 -> 6 -> 9 -> 13 gained nothing: back to 9
    assert s.settled
    capped = AdaptiveStreams(start=4, cap=16)
    for _ in range(10):
        capped.report_total(int(20e6 * capped.current), 1.0)
    assert capped.current == 16  # every step gained: stops at the cap
    flat = AdaptiveStreams(start=4, cap=16)
    flat.report_total(80_000_000, 1.0)
    flat.report_total(80_000_000, 1.0)  # 6 streams bought nothing: back to 4
    assert flat.current == 4


def test_streams_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLENV_STREAMS", "3")
    s = from_env()
    assert s.current == 3
    s.report_total(1, 1.0)
    s.report_total(10**9, 1.0)
    assert s.current == 3
    monkeypatch.setenv("VOLENV_STREAMS", "auto")
    assert from_env().current == 4
    monkeypatch.setenv("VOLENV_STREAMS", "many")
    with pytest.raises(UsageError):
        from_env()


PRINT_MODEL = "import os; print(os.environ['VOLENV_MODEL_W'])"


@pytest.mark.slow
def test_local_model_copy_always_auto_and_damaged(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    """`local = "always"` copies the model to the container's disk with parallel reads and the
    worker sees that copy; a complete copy is reused; `auto` follows the volume's measured
    latency; a volume file that no longer matches its record is never copied (warning, the
    worker stays on the volume); a bad value is a manifest error."""
    size = 8 * MB
    src, sha = _file(tmp_path, size)
    local = tmp_path / "local"
    with serve(RangeServer(src)) as srv:
        m = _manifest(tmp_path, wheelhouse, srv.url, sha, size)
        m.write_text(m.read_text() + 'local = "always"\n')
        r = volenv("--root", root, "sync", m)
        assert r.returncode == 0, r.stderr
    env = {"VOLENV_LOCAL_DIR": str(local)}
    r = volenv("--root", root, "run", "--manifest", m, "--", "python", "-c", PRINT_MODEL, env=env)
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path.is_relative_to(local) and path.read_bytes() == src.read_bytes(), path
    # the CLI's one size/rate/duration format (issue 16)
    assert re.search(r"copied 8\.0 MiB to \S+ in \d+\.\d+ s \(\d+\.\d [KMG]iB/s\)", r.stderr), r.stderr
    r = volenv("--root", root, "run", "--manifest", m, "--", "python", "-c", PRINT_MODEL, env=env)
    assert r.returncode == 0 and Path(r.stdout.strip()) == path and "reusing the local copy" in r.stderr

    m.write_text(m.read_text().replace('local = "always"', 'local = "auto"'))
    fresh = {"VOLENV_LOCAL_DIR": str(tmp_path / "local2")}
    r = volenv(
        "--root", root, "run", "--manifest", m, "--", "python", "-c", PRINT_MODEL,
        env={**fresh, "VOLENV_MATERIALIZE_THRESHOLD_MS": "1000"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == _published(root, sha) and "reading from the volume" in r.stderr
    r = volenv(
        "--root", root, "run", "--manifest", m, "--", "python", "-c", PRINT_MODEL,
        env={**fresh, "VOLENV_MATERIALIZE_THRESHOLD_MS": "0"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).is_relative_to(tmp_path / "local2") and "copying to local disk" in r.stderr

    with open(_published(root, sha), "r+b") as f:  # the volume's copy rots after the fetch
        f.seek(size // 3)
        b = f.read(1)
        f.seek(size // 3)
        f.write(bytes([b[0] ^ 1]))
    m.write_text(m.read_text().replace('local = "auto"', 'local = "always"'))
    bad = {"VOLENV_LOCAL_DIR": str(tmp_path / "local3")}
    r = volenv("--root", root, "run", "--manifest", m, "--", "python", "-c", PRINT_MODEL, env=bad)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == _published(root, sha)
    assert "does not match its recorded sha256" in r.stderr
    assert not [p for p in (tmp_path / "local3").rglob("*") if p.is_file()]  # no partial left

    m.write_text(m.read_text().replace('local = "always"', 'local = "sometimes"'))
    r = volenv("--root", root, "models", "fetch", m)
    assert r.returncode == 2 and "local" in r.stderr, r.stderr


@pytest.mark.parametrize("trap", ["world-writable-dir", "other-owner-copy"])
def test_a_planted_local_model_copy_is_never_trusted(
    tmp_path: Path, root: Path, wheelhouse: Path, trap: str
) -> None:
    """VOLENV_LOCAL_DIR in a place another user can write, or holding a copy that is not ours:
    a copy of the right sizes there (pickled weights are code) is never handed to the worker."""
    if trap == "other-owner-copy" and os.geteuid() != 0:
        pytest.skip("needs root to chown")
    size = MB
    src, sha = _file(tmp_path, size)
    local = tmp_path / "local"
    with serve(RangeServer(src)) as srv:
        m = _manifest(tmp_path, wheelhouse, srv.url, sha, size)
        m.write_text(m.read_text() + 'local = "always"\n')
        assert volenv("--root", root, "sync", m).returncode == 0
    env = {"VOLENV_LOCAL_DIR": str(local)}
    run = ("--root", root, "run", "--manifest", m, "--", "python", "-c", PRINT_MODEL)
    r = volenv(*run, env=env)
    path = Path(r.stdout.strip())
    assert r.returncode == 0 and path.is_relative_to(local), r.stderr
    path.write_bytes(b"E" * size)  # the plant: same size, other bytes
    if trap == "world-writable-dir":
        local.chmod(0o777)
    else:
        for d, dirs, files in os.walk(local):
            for name in [*(os.path.join(d, n) for n in dirs + files)]:
                os.lchown(name, 65534, 65534)
    r = volenv(*run, env=env)
    assert r.returncode == 0, r.stderr
    used = Path(r.stdout.strip())
    assert used.read_bytes() == src.read_bytes(), r.stderr
    if trap == "world-writable-dir":
        assert used == _published(root, sha) and "not a private directory" in r.stderr
    else:
        assert used == path and "copied" in r.stderr and path.lstat().st_uid == os.geteuid()
