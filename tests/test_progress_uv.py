"""Issue 16 item 7, the install's bytes: with a bar drawn, uv runs on a pseudo-terminal and its
download bars move the install's byte count while a large wheel downloads (without a terminal
uv prints no byte progress, so the count jumped only with its ` + pkg` lines). Real uv against
a local index throttled so that a 4 MiB wheel takes about 2 s."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Index, write_manifest
from ptyrun import run_pty
from throttle import ThrottledProxy
from volenv.base import ui
from volenv.build.uvtool import install_progress, last_error_line, run_uv, uv_bin
from volenv.store.paths import VolumePaths
from wheelfactory import make_wheel

SIZE = 4 << 20
RATE = 2 << 20  # bytes/s: the download takes ~2 s


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What conftest's package_index serves in this module: one padded wheel (random bytes, so
    the zip does not shrink them) and a small one."""
    d = tmp_path_factory.mktemp("padded")
    make_wheel(d, "padded", "1.0", files={"padded/__init__.py": "", "padded/blob.bin": os.urandom(SIZE)})
    make_wheel(d, "small", "1.0")
    return d


@pytest.fixture
def slow_index(package_index: Index) -> Iterator[str]:
    with ThrottledProxy(package_index.url.removesuffix("/simple"), RATE) as proxy:
        yield proxy.url + "/simple"


class Recording(ui.Progress):
    """A drawn bar (so uv gets a terminal) that records every change: (packages, bytes)."""

    live = True

    def __init__(self) -> None:
        super().__init__(ui.Reporter(-2), "installing", 2, unit="packages")
        self.seen: list[tuple[int, int]] = []

    def changed(self) -> None:
        self.seen.append((self.items, self.done))


def _venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([uv_bin(), "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    return venv


def test_uv_download_bars_move_the_bytes_before_the_install_ends(tmp_path: Path, slow_index: str) -> None:
    paths = VolumePaths(tmp_path / "root")
    log = tmp_path / "build.log"
    progress = Recording()
    args = ["pip", "install", "--python", str(_venv(tmp_path)), "--index-url", slow_index, "padded", "small"]
    proc = run_uv(args, paths, log, on_line=install_progress(progress), terminal=True)
    assert proc.returncode == 0, proc.stderr
    wheel = SIZE  # uv's bar counts the download (its size is the wheel's, about 4.00 MiB)
    during = [done for items, done in progress.seen if items == 0 and 0 < done < wheel * 0.95]
    assert len(set(during)) >= 3, progress.seen  # several counts in between, before any install
    assert progress.items == 2 and abs(progress.done - wheel) < wheel * 0.01, progress.seen
    # uv's own messages as a pipe gets them: no bar, no escape, no carriage return
    assert "\x1b" not in proc.stderr and "\r" not in proc.stderr and "---" not in proc.stderr, proc.stderr
    assert re.search(r"^Resolved 2 packages in ", proc.stderr, re.M), proc.stderr
    assert " + padded==1.0\n + small==1.0\n" in proc.stderr, proc.stderr
    text = log.read_text()
    assert "\x1b" not in text and "\r" not in text and "+ padded==1.0" in text and "[exit 0]" in text, text


def test_volenv_no_pty_keeps_the_pipe(
    tmp_path: Path, slow_index: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VOLENV_NO_PTY=1: uv on a pipe as before (its `Downloading` lines, no bytes in between)."""
    monkeypatch.setenv("VOLENV_NO_PTY", "1")
    progress = Recording()
    args = ["pip", "install", "--python", str(_venv(tmp_path)), "--index-url", slow_index, "padded"]
    proc = run_uv(
        args, VolumePaths(tmp_path / "root"), None, on_line=install_progress(progress), terminal=True
    )
    assert proc.returncode == 0 and "Downloading padded" in proc.stderr, proc.stderr
    assert all(done == 0 for _, done in progress.seen), progress.seen


@pytest.mark.parametrize("case", ["no such package", "index down"])
def test_uv_errors_on_the_terminal_read_as_through_a_pipe(
    tmp_path: Path, slow_index: str, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing install: the same exit code and error message, pty or pipe (the spinner that
    was drawn when uv failed is not part of it)."""
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    paths = VolumePaths(tmp_path / "root")
    venv = _venv(tmp_path)
    url, want = (
        (slow_index, "nosuchpkg") if case == "no such package" else ("http://127.0.0.1:9/simple", "refused")
    )
    # one package where the index is down: which of two fetches fails first is uv's race
    wanted = ["padded", "nosuchpkg"] if case == "no such package" else ["nosuchpkg"]
    args = ["pip", "install", "--python", str(venv), "--index-url", url, *wanted]
    got = {}
    for terminal in (True, False):
        progress = Recording()
        proc = run_uv(args, paths, tmp_path / "log", on_line=install_progress(progress), terminal=terminal)
        assert "\x1b" not in proc.stderr and "\r" not in proc.stderr and "⠋" not in proc.stderr, proc.stderr
        got[terminal] = (proc.returncode, re.sub(r"in [\d.]+m?s", "in …", last_error_line(proc)))
    assert got[True] == got[False] and got[True][0] != 0 and want in got[True][1], got
    assert "\x1b" not in (tmp_path / "log").read_text()


def test_a_sync_on_a_terminal_shows_the_bytes_while_uv_downloads(
    tmp_path: Path, root: Path, slow_index: str
) -> None:
    """The whole chain: the CLI draws a bar, uv runs on a terminal, the bar shows the bytes
    before the package count moves; the build log holds uv's lines without escapes."""
    m = write_manifest(tmp_path / "m", "big", ["padded==1.0"], index_url=slow_index)
    r = run_pty("--root", root, "sync", m, columns=120)
    assert r.returncode == 0, r.tty
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", r.tty).replace("\r", "\n")
    during = re.findall(r"installing .*0/1 packages, ([\d.]+) (KiB|MiB)", shown)
    assert any(0 < float(n) * (1024 if u == "MiB" else 1) < 3.8 * 1024 for n, u in during), shown
    logs = list((root / "logs").rglob("build-*.log")) or list(root.rglob("build-*.log"))
    text = logs[0].read_text()
    assert "\x1b" not in text and "\r" not in text and "+ padded==1.0" in text, text


def test_a_piped_sync_says_every_interval_what_it_downloads(
    tmp_path: Path, root: Path, slow_index: str
) -> None:
    """Issue 29 item 4: without a terminal (RunPod's log) a long step prints a line every
    VOLENV_PROGRESS_INTERVAL seconds (10 by default) with its counts, bytes and rate, so the
    log shows the build is alive while a large wheel downloads."""
    from conftest import base_env, volenv

    env = base_env()
    env["VOLENV_NO_PROGRESS"] = "0"  # base_env's 1 would come back
    env["VOLENV_PROGRESS_INTERVAL"] = "0.3"
    m = write_manifest(tmp_path / "m", "big", ["padded==1.0"], index_url=slow_index)
    r = volenv("--root", root, "sync", m, env=env)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "\x1b" not in r.stderr, repr(r.stderr)
    beats = re.findall(
        r"^installing: 0/1 packages, ([\d.]+) (KiB|MiB), [\d.]+ \w+/s.*\(([\d.]+) s\)$", r.stderr, re.M
    )
    moving = {float(n) * (1024 if u == "MiB" else 1) for n, u, _ in beats}
    assert len(beats) >= 3 and len(moving - {0.0}) >= 2, r.stderr  # the bytes move between lines
    # --no-progress and -q: none of these lines
    for flag in ("--no-progress", "-q"):
        other = write_manifest(
            tmp_path / flag, f"big{flag.strip('-')}", ["padded==1.0", "small"], index_url=slow_index
        )
        r = volenv("--root", root, flag, "sync", other, env=env)
        assert r.returncode == 0 and "installing:" not in r.stderr, (flag, r.stderr)


# what uv 0.x wrote on a 200-column terminal (recorded): a spinner left drawn, padded to the
# width, then its error on the row the terminal wraps to; a bar redraw; its summary lines
PAD = " " * 173
RECORDED = (
    "Using Python 3.11.7 environment at: /v\n"
    f"\u280b Resolving dependencies...{PAD}\r\x1b[2K\u2819 Preparing packages... (0/1){PAD[:-2]}"
    f"  padded               ------------------------------ 1.03 MiB/4.00 MiB{' ' * 130}"
    "\x1b[1A\r\x1b[2K\x1b[1B\r\x1b[2K\x1b[1APrepared 1 package in 1.98s\n"
    "\r\x1b[2KInstalled 1 package in 1ms\r\n + padded==1.0\n"
    f"\u2819 Resolving dependencies...{PAD}error: Failed to fetch: http://127.0.0.1:9/simple/zzzq/\n"
    "  cause: Connection refused (os error 111)\n"
)


def test_the_terminal_stream_in_any_cut(tmp_path: Path) -> None:
    """Read in 7-byte pieces (escapes, CR LF and UTF-8 cut anywhere): the same lines kept."""
    from volenv.build.uvtool import PTY_COLUMNS, _open_pty, _run_on_pty

    assert PTY_COLUMNS == 200 and len(f"\u280b Resolving dependencies...{PAD}") == 200
    script = tmp_path / "fake_uv.py"
    script.write_text(
        "import sys, time\n"
        f"data = {RECORDED.encode()!r}\n"
        "for i in range(0, len(data), 7):\n"
        "    sys.stderr.buffer.write(data[i:i + 7]); sys.stderr.flush(); time.sleep(0.001)\n"
        "sys.exit(2)\n"
    )
    fds = _open_pty()
    assert fds is not None
    lines: list[str] = []
    proc = _run_on_pty([sys.executable, str(script)], dict(os.environ), None, lines.append, fds)
    assert proc.returncode == 2
    assert proc.stderr == (
        "Using Python 3.11.7 environment at: /v\nPrepared 1 package in 1.98s\nInstalled 1 package in 1ms\n"
        " + padded==1.0\nerror: Failed to fetch: http://127.0.0.1:9/simple/zzzq/\n"
        "  cause: Connection refused (os error 111)\n"
    ), repr(proc.stderr)
    assert any("padded" in ln and "1.03 MiB/4.00 MiB" in ln for ln in lines), lines
    p = Recording()
    feed = install_progress(p)
    for ln in lines:
        feed(ln)
    assert (p.items, p.done) == (1, 4 << 20), p.seen  # `Prepared`: every download at its size
    assert (1, 0) not in p.seen and (0, int(1.03 * (1 << 20))) in p.seen, p.seen
