"""A passthrough FUSE filesystem that adds latency: a fixed delay on every metadata operation
(getattr, readdir, open, readlink, access, statfs) and on every read, with an optional
bandwidth cap, mounted with the kernel's attribute/entry caching off — a stand-in for a
network volume where each uncached lookup is a round trip.

    python tests/slowfs.py SRC MOUNTPOINT --meta-ms 1.0 [--read-ms 0] [--mbps 0] [--cache-s 0]

Runs in the foreground until unmounted (fusermount -u / umount). Counts operations into
MOUNTPOINT's sibling file `<mountpoint>.ops` on exit when --stats is given.
"""

from __future__ import annotations

import argparse
import errno
import os
import threading
import time
from typing import Any

from fuse import FUSE, FuseOSError, Operations  # fusepy, over libfuse2


class SlowPassthrough(Operations):  # type: ignore[misc]
    def __init__(self, root: str, meta: float, read: float, mbps: float) -> None:
        self.root = os.path.realpath(root)
        self.meta = meta
        self.read_delay = read
        self.bytes_per_s = mbps * 1e6 if mbps else 0.0
        self.ops = 0
        self._count_lock = threading.Lock()

    def _p(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _wait(self, seconds: float) -> None:
        with self._count_lock:
            self.ops += 1
        if seconds > 0:
            time.sleep(seconds)

    # -- metadata (delayed)
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        self._wait(self.meta)
        try:
            st = os.lstat(self._p(path))
        except OSError as exc:
            raise FuseOSError(exc.errno) from None
        keys = (
            "st_atime",
            "st_ctime",
            "st_gid",
            "st_mode",
            "st_mtime",
            "st_nlink",
            "st_size",
            "st_uid",
            "st_ino",
        )
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path: str, fh: Any) -> list[str]:
        self._wait(self.meta)
        return [".", "..", *os.listdir(self._p(path))]

    def readlink(self, path: str) -> str:
        self._wait(self.meta)
        return os.readlink(self._p(path))

    def access(self, path: str, mode: int) -> None:
        self._wait(self.meta)
        if not os.access(self._p(path), mode):
            raise FuseOSError(errno.EACCES)

    def statfs(self, path: str) -> dict[str, Any]:
        self._wait(self.meta)
        sv = os.statvfs(self._p(path))
        keys = (
            "f_bavail",
            "f_bfree",
            "f_blocks",
            "f_bsize",
            "f_favail",
            "f_ffree",
            "f_files",
            "f_flag",
            "f_frsize",
            "f_namemax",
        )
        return {k: getattr(sv, k) for k in keys}

    def open(self, path: str, flags: int) -> int:
        self._wait(self.meta)
        return os.open(self._p(path), flags)

    # -- data
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        cost = self.read_delay + (size / self.bytes_per_s if self.bytes_per_s else 0.0)
        self._wait(cost)
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    # -- writes pass through without delay (the tests mostly read)
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(self._p(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def truncate(self, path: str, length: int, fh: Any = None) -> None:
        os.truncate(self._p(path), length)

    def unlink(self, path: str) -> None:
        os.unlink(self._p(path))

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._p(path), mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._p(path))

    def rename(self, old: str, new: str) -> None:
        os.rename(self._p(old), self._p(new))

    def symlink(self, target: str, source: str) -> None:
        os.symlink(source, self._p(target))

    def link(self, target: str, source: str) -> None:
        os.link(self._p(source), self._p(target))

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._p(path), mode)

    def utimens(self, path: str, times: Any = None) -> None:
        os.utime(self._p(path), times)

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        os.fsync(fh)

    def flush(self, path: str, fh: int) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("mountpoint")
    ap.add_argument("--meta-ms", type=float, default=1.0)
    ap.add_argument("--read-ms", type=float, default=0.0)
    ap.add_argument("--mbps", type=float, default=0.0)
    ap.add_argument("--cache-s", type=float, default=0.0, help="kernel attr/entry cache seconds (0: off)")
    ap.add_argument("--stats", action="store_true")
    args = ap.parse_args()
    ops = SlowPassthrough(args.src, args.meta_ms / 1000, args.read_ms / 1000, args.mbps)
    try:
        FUSE(
            ops,
            args.mountpoint,
            foreground=True,
            nothreads=False,
            allow_other=True,
            attr_timeout=args.cache_s,
            entry_timeout=args.cache_s,
            negative_timeout=args.cache_s,
        )
    finally:
        if args.stats:
            with open(args.mountpoint.rstrip("/") + ".ops", "w") as fh:
                fh.write(str(ops.ops))


if __name__ == "__main__":
    main()
