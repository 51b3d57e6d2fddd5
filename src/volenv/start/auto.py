"""`--materialize auto` (and models' `local = "auto"`): time a handful of metadata operations on
the volume and on the local disk, and decide whether copying to local disk pays."""

from __future__ import annotations

import os
import time
from pathlib import Path

PROBE_OPS = 12


_PROBED: dict[str, float] = {}


def probe_latency_ms(snapshot_dir: str) -> float:
    """Median time of one metadata operation on the volume (see `_probe_ms`); measured once per
    process (`run` asks again for `[[models]] local = "auto"`, after materialize: on a slow
    volume the probe itself is ~25 round trips)."""
    if snapshot_dir not in _PROBED:
        sp = next(Path(snapshot_dir).glob("lib/python*/site-packages"), Path(snapshot_dir) / "lib")
        _PROBED[snapshot_dir] = _probe_ms(str(sp))
    return _PROBED[snapshot_dir]


def _probe_ms(directory: str) -> float:
    """Median time of a single-component lookup (os.stat relative to an open directory) of a
    few entries of `directory` (the directory itself when it is empty): what each import's
    stat costs there. It stops early once the answer is clear, so it stays cheap on a slow volume."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return 0.0
    times: list[float] = []
    try:
        names = sorted(os.listdir(fd))[:PROBE_OPS] or ["."] * 4
        for name in names:
            t0 = time.perf_counter()
            try:
                os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                pass
            times.append(time.perf_counter() - t0)
            if len(times) >= 4 and _median(times) * 1000 > 20 * MIN_MS:
                break
    finally:
        os.close(fd)
    return _median(times) * 1000 if times else 0.0


#: block and memory filesystems of this machine: never worth extracting from (issue 17: a cold
#: page cache on a local disk measured 0.10-0.19 ms per stat, and extracting was 2.6x slower)
LOCAL_FS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "overlay", "zfs", "f2fs", "bcachefs", "jfs"}
)


#: the volume must be this many times slower per operation than the local disk ...
RATIO = 4.0


#: ... and at least this slow, for extracting to pay off (bench/coldstart.py)
MIN_MS = 0.05


class Decision:
    """What `run --materialize auto` chooses for a snapshot, and the numbers it chose by
    (`volenv bench coldstart` prints it)."""

    __slots__ = ("local_fs", "local_ms", "materialize", "reason", "same_device", "volume_fs", "volume_ms")

    def __init__(
        self,
        materialize: bool,
        reason: str,
        volume_fs: str,
        local_fs: str,
        same_device: bool,
        volume_ms: float | None = None,
        local_ms: float | None = None,
    ) -> None:
        self.materialize = materialize
        self.reason = reason
        self.volume_fs = volume_fs
        self.local_fs = local_fs
        self.same_device = same_device
        self.volume_ms = volume_ms  # None: not measured (the filesystem type decided)
        self.local_ms = local_ms

    def __repr__(self) -> str:
        return f"Decision(materialize={self.materialize}, reason={self.reason!r})"


def fs_type(path: str) -> str:
    """The filesystem type of the mount holding path (/proc/self/mountinfo, by device number),
    '' when unknown."""
    try:
        dev = os.stat(path).st_dev
        want = f"{os.major(dev)}:{os.minor(dev)}"
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 2 and fields[2] == want and " - " in line:
                    return line.split(" - ", 1)[1].split()[0]
    except OSError:
        pass
    return ""


def _existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.isdir(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return p


def decide_auto(root: str, local_dir: str, snapshot_dir: str | None = None) -> Decision:
    """Whether extracting to local_dir would beat running from the volume at root (probing
    snapshot_dir's site-packages when given, else the root's envs/). In place when both are the
    same filesystem or the volume is a local block/memory filesystem (nothing to gain, whatever
    a cold cache measures); otherwise by measured per-operation latency, the volume's against
    the local disk's: extract when the volume is RATIO times slower and at least MIN_MS.
    VOLENV_MATERIALIZE_THRESHOLD_MS, when set, decides by the volume's latency alone."""
    vol = snapshot_dir or os.path.join(root, "envs")
    loc = _existing(local_dir)
    try:
        same = os.stat(vol).st_dev == os.stat(loc).st_dev
    except OSError:
        same = False
    vfs, lfs = fs_type(vol), fs_type(loc)
    explicit = os.environ.get("VOLENV_MATERIALIZE_THRESHOLD_MS")
    if explicit is None:
        if same:
            return Decision(False, f"the volume and {loc} are one filesystem ({vfs or '?'})", vfs, lfs, same)
        if vfs in LOCAL_FS:
            return Decision(False, f"the volume is a local {vfs} filesystem", vfs, lfs, same)
    vms = probe_latency_ms(vol) if snapshot_dir else _probe_ms(vol)
    lms = _probe_ms(loc)
    numbers = f"volume ({vfs or '?'}) {vms:.3f} ms per metadata op, local ({lfs or '?'}) {lms:.3f} ms"
    if explicit is not None:
        limit = float(explicit)
        if vms >= limit:
            return Decision(
                True, f"{numbers}; >= {limit} ms (VOLENV_MATERIALIZE_THRESHOLD_MS)", vfs, lfs, same, vms, lms
            )
        return Decision(
            False, f"{numbers}; < {limit} ms (VOLENV_MATERIALIZE_THRESHOLD_MS)", vfs, lfs, same, vms, lms
        )
    if vms >= MIN_MS and vms >= RATIO * max(lms, 0.001):
        return Decision(
            True, f"{numbers}: the volume is {vms / max(lms, 0.001):.0f}x slower", vfs, lfs, same, vms, lms
        )
    return Decision(False, f"{numbers}: not slow enough to pay for extracting", vfs, lfs, same, vms, lms)


def _median(values: list[float]) -> float:
    # not `statistics`: on a cold start every extra stdlib import is a disk read
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
