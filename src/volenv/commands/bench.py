"""`volenv bench coldstart [MANIFEST]`: what a cold start costs on *this* volume, measured by the
user where the workers run: per-operation latency, sequential and parallel read rates, the
manifest's start in place vs materialized, and what `run --materialize auto` would choose.

It only reads the volume (plus the use mark every `volenv run` writes); the materialized copies
go to a temporary local directory that is deleted afterwards.
"""

from __future__ import annotations

import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from volenv.base.errors import NoSnapshotError, UsageError
from volenv.store.rootfind import fix_command

if TYPE_CHECKING:
    from volenv.store.integrity import Entry
    from volenv.store.paths import VolumePaths

#: small files timed per metadata operation (each a different, never-listed path)
LATENCY_SAMPLES = 100
SMALL_FILE = 64 * 1024
READ_CHUNK = 4 << 20
START_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class OpLatency:
    op: str  # "stat" or "open+read"
    samples: int
    median_ms: float
    p90_ms: float


@dataclass(frozen=True)
class ReadRate:
    kind: str  # "sequential" or "parallel"
    threads: int
    file: str
    bytes: int
    seconds: float
    mb_per_s: float


@dataclass(frozen=True)
class StartTiming:
    mode: str  # the --materialize value
    runs_s: tuple[float, ...]
    median_s: float | None
    exit_code: int
    skipped: str | None  # why this mode was not run


@dataclass(frozen=True)
class AutoChoice:
    choice: str  # "in-place" or "materialize"
    reason: str
    probe_ms: float | None
    threshold_ms: float | None


@dataclass(frozen=True)
class ColdstartReport:
    root: str
    snapshot: str
    snapshot_files: int
    snapshot_bytes: int
    packed: bool
    start_command: tuple[str, ...]
    runs: int
    latency: tuple[OpLatency, ...]
    reads: tuple[ReadRate, ...]
    starts: tuple[StartTiming, ...]
    materialized_vs_in_place: float | None
    auto: AutoChoice
    notes: tuple[str, ...]


# ---------------------------------------------------------------- auto's decision (adapter)


def auto_would_choose(paths: VolumePaths, snapshot_dir: str, seal: dict[str, Any]) -> AutoChoice:
    """What `run --materialize auto` would decide for this snapshot, and why.

    The one place this command calls materialize's decision: when that decision moves into a
    single function, re-point this adapter at it and nothing else changes here."""
    from volenv.base.errors import VolenvError
    from volenv.start.auto import decide_auto
    from volenv.start.localdisk import default_dir
    from volenv.store.packformat import manifest_path, read_manifest

    sid = os.path.basename(snapshot_dir)
    threshold = _explicit_threshold()
    try:
        packs = read_manifest(manifest_path(paths, sid))
    except FileNotFoundError:
        return AutoChoice("in-place", f"{sid} has no packs (`volenv pack {sid}`)", None, threshold)
    except (VolenvError, OSError) as exc:
        return AutoChoice("in-place", f"pack manifest unusable: {exc}", None, threshold)
    if packs.record_sha256 != seal["record_sha256"]:
        return AutoChoice("in-place", "the packs do not belong to this snapshot's record", None, threshold)
    base = default_dir()
    probe_at = next((p for p in (base, *base.parents) if p.exists()), Path("/"))
    d = decide_auto(str(paths.root), str(probe_at), snapshot_dir)
    if not d.materialize:
        return AutoChoice("in-place", d.reason, d.volume_ms, threshold)
    need = int(sum(p.tar_size for p in packs.packs) * 1.05)
    free = shutil.disk_usage(probe_at).free
    if free < need:
        why = f"{d.reason}, but local disk has {free} bytes free < {need} needed"
        return AutoChoice("in-place", why, d.volume_ms, threshold)
    return AutoChoice("materialize", d.reason, d.volume_ms, threshold)


def _explicit_threshold() -> float | None:
    """VOLENV_MATERIALIZE_THRESHOLD_MS when set (auto then decides by volume latency alone)."""
    raw = os.environ.get("VOLENV_MATERIALIZE_THRESHOLD_MS")
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


# ---------------------------------------------------------------- measurements


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _spread(items: list[Entry], n: int) -> list[Entry]:
    """n entries evenly spread over the list (all packages, not the first one's files)."""
    if len(items) <= n:
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def measure_latency(snapshot_dir: str, record: dict[str, Entry], samples: int) -> list[OpLatency]:
    """stat, then open+read+close, each on its own set of small files named by the record (so
    no directory listing warmed them first): one uncached lookup chain per sample."""
    small = [e for e in record.values() if e.type == "f" and e.size <= SMALL_FILE]
    picked = _spread(sorted(small, key=lambda e: e.path), 2 * samples)
    stat_set, open_set = picked[0::2], picked[1::2]
    out = []
    times: list[float] = []
    for e in stat_set:
        path = os.path.join(snapshot_dir, e.path)
        t0 = time.perf_counter()
        os.stat(path, follow_symlinks=False)
        times.append((time.perf_counter() - t0) * 1000)
    if times:
        out.append(OpLatency("stat", len(times), statistics.median(times), _percentile(times, 0.9)))
    times = []
    for e in open_set:
        path = os.path.join(snapshot_dir, e.path)
        t0 = time.perf_counter()
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.read(fd, 4096)
        finally:
            os.close(fd)
        times.append((time.perf_counter() - t0) * 1000)
    if times:
        out.append(OpLatency("open+read", len(times), statistics.median(times), _percentile(times, 0.9)))
    return out


def _drop_file_cache(path: str) -> None:
    """Evict the file's clean pages (no root needed), so a read rate is the volume's, not RAM's."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_range(path: str, start: int, end: int, done: list[int]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pos = start
        while pos < end:
            data = os.pread(fd, min(READ_CHUNK, end - pos), pos)
            if not data:
                break
            pos += len(data)
        done.append(pos - start)
    finally:
        os.close(fd)


def measure_reads(path: str, size: int, limit: int, threads: tuple[int, ...] = (1, 4, 8)) -> list[ReadRate]:
    """Read `min(size, limit)` bytes of one big file: one sequential reader, then N threads each
    pread-ing its own contiguous range; the page cache of the file is dropped before each."""
    total = min(size, limit)
    rates = []
    for n in threads:
        _drop_file_cache(path)
        done: list[int] = []
        bounds = [total * i // n for i in range(n + 1)]
        workers = [
            threading.Thread(target=_read_range, args=(path, bounds[i], bounds[i + 1], done))
            for i in range(n)
        ]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - t0
        got = sum(done)
        rates.append(
            ReadRate(
                "sequential" if n == 1 else "parallel",
                n,
                path,
                got,
                seconds,
                got / seconds / 1e6 if seconds > 0 else 0.0,
            )
        )
    return rates


def _wait_background(local: Path, timeout: float = 600) -> None:
    """A startup-pack start leaves its background extraction running: let it finish before
    the copy is deleted (or timed again)."""
    from volenv.start.background import IN_PROGRESS

    deadline = time.monotonic() + timeout
    while any(local.glob(f"*/.volenv/{IN_PROGRESS}")) and time.monotonic() < deadline:
        time.sleep(0.05)


def _drop_pack_cache(paths: VolumePaths, sid: str) -> None:
    from volenv.store.packformat import blob_path, manifest_path, read_manifest

    try:
        for p in read_manifest(manifest_path(paths, sid)).packs:
            _drop_file_cache(str(blob_path(paths, p.id)))
    except OSError:
        pass


def time_start(
    root: str,
    manifest: str,
    command: list[str],
    mode: str,
    runs: int,
    scratch: Path,
    paths: VolumePaths,
    sid: str,
) -> StartTiming:
    """`volenv run --materialize MODE` of the command as a subprocess, timed to its exit; each
    materialized run extracts into a fresh local directory (deleted afterwards)."""
    times = []
    for i in range(runs):
        local = scratch / f"{mode}-{i}"
        if mode != "never":
            _drop_pack_cache(paths, sid)
        argv = [sys.executable, "-m", "volenv", "--root", root, "-q", "run", "--on-missing", "fail"]
        argv += ["--materialize", mode, "--materialize-dir", str(local), "--manifest", manifest, "--"]
        t0 = time.perf_counter()
        proc = subprocess.run(
            argv + command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=START_TIMEOUT_S,
        )
        elapsed = time.perf_counter() - t0
        _wait_background(local)
        shutil.rmtree(local, ignore_errors=True)
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise UsageError(
                f"bench: `{shlex.join(command)}` exited {proc.returncode} under --materialize {mode}",
                cause=" / ".join(tail) or None,
                hint="give a start command that exits 0 after `--`, or set [activate] trace-cmd",
            )
        times.append(elapsed)
    return StartTiming(mode, tuple(times), statistics.median(times), 0, None)


def pick_command(manifest: Any, given: list[str]) -> list[str]:
    """The start to time: the one given after `--`, else [activate] trace-cmd, else importing
    the smoke imports, else an empty interpreter start."""
    if given:
        return given
    if manifest.trace_cmd:
        return list(manifest.trace_cmd)
    if manifest.smoke_imports:
        return ["python", "-c", "import " + ", ".join(manifest.smoke_imports)]
    return ["python", "-c", "pass"]


def coldstart(
    paths: VolumePaths,
    manifest_file: str,
    command: list[str],
    *,
    runs: int,
    read_limit: int,
    samples: int = LATENCY_SAMPLES,
) -> ColdstartReport:
    from volenv.manifest.parse import load_manifest
    from volenv.start.activation import find_snapshot, target_from_manifest
    from volenv.store.integrity import load_record
    from volenv.store.packformat import manifest_path
    from volenv.store.sealcheck import SealProblem, check_seal

    if runs < 1:
        raise UsageError(f"--runs: {runs} is not a positive number of runs")
    root = str(paths.root)
    m = load_manifest(manifest_file)
    target = target_from_manifest(root, manifest_file)
    sid = find_snapshot(root, target) if os.path.isdir(root) else None
    if sid is None:
        raise NoSnapshotError(
            f"bench: no snapshot of {manifest_file} on {root}",
            hint=f"build it first: {fix_command(root, 'sync', manifest_file)}",
        )
    snap_dir = os.path.join(root, "envs", target.env, "snapshots", sid)
    try:
        seal = check_seal(snap_dir, sid)
    except SealProblem as exc:
        from volenv.base.errors import VerifyError

        raise VerifyError(
            f"bench: {sid}: {exc.detail}", hint=fix_command(root, "verify", target.env, "--repair")
        ) from None
    cmd = pick_command(m, command)
    notes: list[str] = []
    # auto's probe first: it is the first thing a real start does on a cold volume
    auto = auto_would_choose(paths, snap_dir, seal)
    record = load_record(Path(snap_dir))
    files = [e for e in record.values() if e.type == "f"]
    latency = measure_latency(snap_dir, record, samples)
    big = max(files, key=lambda e: e.size, default=None)
    reads: list[ReadRate] = []
    if big is not None and big.size > 0:
        reads = measure_reads(os.path.join(snap_dir, big.path), big.size, read_limit)
        if big.size < 64 << 20:
            notes.append(f"the largest file is {big.size} bytes: read rates of a small file are noisy")
    packed = manifest_path(paths, sid).is_file()
    scratch = Path(tempfile.mkdtemp(prefix="volenv-bench-"))
    try:
        starts = [time_start(root, manifest_file, cmd, "never", runs, scratch, paths, sid)]
        if packed:
            starts.append(time_start(root, manifest_file, cmd, "always", runs, scratch, paths, sid))
        else:
            why = f"no packs (`volenv pack {sid}` makes them)"
            starts.append(StartTiming("always", (), None, 0, why))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    notes.append("run 1 of in place reads through whatever page cache the volume's files still have")
    ratio = None
    if starts[0].median_s and len(starts) > 1 and starts[1].median_s is not None:
        ratio = starts[1].median_s / starts[0].median_s
    return ColdstartReport(
        root=root,
        snapshot=sid,
        snapshot_files=len(files),
        snapshot_bytes=sum(e.size for e in files),
        packed=packed,
        start_command=tuple(cmd),
        runs=runs,
        latency=tuple(latency),
        reads=tuple(reads),
        starts=tuple(starts),
        materialized_vs_in_place=ratio,
        auto=auto,
        notes=tuple(notes),
    )
