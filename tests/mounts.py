"""Real mounts for fault tests (tmpfs, read-only binds, bindfs, exFAT over FUSE), each undone
by its context manager even when the test fails. Needs root; tests skip otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def need_root_and(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for mount(8)")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (installed by .ci/run via apt)")


def _umount(path: Path) -> None:
    for args in (["umount", str(path)], ["umount", "-l", str(path)]):
        if subprocess.run(args, capture_output=True).returncode == 0:
            return


@contextmanager
def tmpfs(path: Path, size: str, inodes: int | None = None) -> Iterator[Path]:
    need_root_and("mount")
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        _umount(path)


@contextmanager
def readonly_view(src: Path, view: Path) -> Iterator[Path]:
    need_root_and("mount")
    view.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(src), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        yield view
    finally:
        _umount(view)


@contextmanager
def bindfs(src: Path, mnt: Path, *extra: str) -> Iterator[Path]:
    """A FUSE view of src; flock on two such views does not exclude (like a network FS)."""
    need_root_and("bindfs")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["bindfs", *extra, str(src), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        _umount(mnt)


@contextmanager
def exfat(image: Path, mnt: Path, size_mb: int = 64) -> Iterator[Path]:
    need_root_and("mkfs.exfat", "mount.exfat-fuse", "losetup")
    with open(image, "wb") as fh:
        fh.truncate(size_mb * 1024 * 1024)
    subprocess.run(["mkfs.exfat", str(image)], check=True, capture_output=True)
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    if loop.returncode != 0:
        pytest.skip(f"no loop device: {loop.stderr.strip()}")
    dev = loop.stdout.strip()
    mnt.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount.exfat-fuse", dev, str(mnt)], check=True, capture_output=True)
        try:
            yield mnt
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
            _umount(mnt)
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def abort_fuse(mnt: Path) -> None:
    """Abort a FUSE connection: every access then fails with ENOTCONN (a vanished volume)."""
    conn = Path("/sys/fs/fuse/connections")
    if not conn.exists() or not any(conn.iterdir()):
        subprocess.run(["mount", "-t", "fusectl", "none", str(conn)], capture_output=True)
    minor = os.minor(os.stat(mnt).st_dev)
    (conn / str(minor) / "abort").write_text("1")


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill a filesystem to (almost) nothing free; returns the filler to delete afterwards."""
    filler = directory / ".filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as fh:
        try:
            while True:
                free = shutil.disk_usage(directory).free
                if free <= leave:
                    break
                fh.write(chunk if free - leave >= len(chunk) else b"\0" * max(1, free - leave))
                fh.flush()
        except OSError:
            pass
    return filler


def wait_stopped(pid: int, timeout: float = 60) -> None:
    """Wait until a process stopped itself (SIGSTOP at a fault point)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            raise AssertionError(f"process {pid} exited before stopping") from None
        if state == "T":
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not stop within {timeout}s")
