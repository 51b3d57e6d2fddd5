"""url model fetch: a loopback HTTP server that paces EACH connection to 20 MB/s (what object
stores and CDNs do per connection) serves a 512 MB file; `volenv models fetch` gets it with one
stream (VOLENV_STREAMS=1) and with adaptive parallel Range requests. Printed in one run: both
rates, the ceiling min(8 x 20 MB/s, what this disk + sha256 sustain, measured here) and the
ratio parallel / ceiling (target >= 0.8).

Usage: python bench/fetch.py [--mib 512] [--single-mib 128] [--rate-mb 20] [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import volenv_cmd  # also puts tests/ on sys.path

from rangeserver import RangeServer, serve

MB = 1e6


def make_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            piece = os.urandom(min(left, 8 << 20))
            f.write(piece)
            h.update(piece)
            left -= len(piece)
    return h.hexdigest()


def disk_and_sha_rate(directory: Path, size: int) -> tuple[float, float]:
    """Bytes/s this filesystem takes with writes + fsync (as the fetcher's pwrite + fsync), and
    bytes/s sha256 hashes reading the file back (as the fetcher's in-order hasher)."""
    p = directory / "disk-probe.bin"
    buf = os.urandom(8 << 20)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    t0 = time.perf_counter()
    try:
        off = 0
        while off < size:
            off += os.pwrite(fd, buf[: min(len(buf), size - off)], off)
            if off % (64 << 20) == 0:
                os.fsync(fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    write = size / (time.perf_counter() - t0)
    h = hashlib.sha256()
    t0 = time.perf_counter()
    with open(p, "rb") as f:
        while data := f.read(4 << 20):
            h.update(data)
    sha = size / (time.perf_counter() - t0)
    p.unlink()
    return write, sha


def fetch(
    src: Path, sha: str, work: Path, rate: float, streams: str | None
) -> tuple[float, float, float, int, float]:
    """(end-to-end seconds of `volenv models fetch` (process start included), first request to
    published record, first request to last byte, the most connections in flight, CPU seconds
    the fetching process used)."""
    root = work / "vol" / "volenv"
    shutil.rmtree(work / "vol", ignore_errors=True)
    with serve(RangeServer(src, rate=rate)) as srv:
        man = work / "m.toml"
        man.write_text(
            f'name = "app"\npython = "3.11"\nrequirements = []\n'
            f'[[models]]\nname = "w"\nurl = "{srv.url}"\nsha256 = "{sha}"\nsize = {src.stat().st_size}\n'
        )
        env = dict(os.environ, VOLENV_NO_PROGRESS="1")
        env.pop("VOLENV_STREAMS", None)
        if streams:
            env["VOLENV_STREAMS"] = streams
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        cmd = [*volenv_cmd(), "--root", str(root), "-q", "models", "fetch", str(man)]
        r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
        wall = time.monotonic() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        if r.returncode != 0:
            raise SystemExit(f"fetch failed (exit {r.returncode})")
        transfer = srv.last_byte - srv.first_request
        rec = next((root / "models" / "records").glob("w.*.json"))
        published = json.loads(rec.read_text())["fetched"] - srv.first_request_wall
        most = srv.max_in_flight
    shutil.rmtree(work / "vol", ignore_errors=True)
    return wall, published, transfer, most, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--single-mib", type=int, default=128, help="file size for the one-stream run")
    ap.add_argument("--rate-mb", type=float, default=20.0, help="MB/s per connection")
    ap.add_argument("--dir", type=Path, default=None, help="where the volume lives (default: a temp dir)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="volenv-bench-fetch-", dir=args.dir))
    rate = args.rate_mb * MB
    try:
        size = args.mib << 20
        write, sha_rate = disk_and_sha_rate(work, size)
        small = work / "small.bin"
        small_sha = make_file(small, args.single_mib << 20)
        wall1, pub1, xfer1, _, _ = fetch(small, small_sha, work, rate, "1")
        small.unlink()
        big = work / "weights.bin"
        big_sha = make_file(big, size)
        wallp, pubp, xferp, most, cpu = fetch(big, big_sha, work, rate, None)
        single = (args.single_mib << 20) / pub1
        parallel = size / pubp
        ceiling = min(8 * rate, write, sha_rate)
        print(f"file: {args.mib} MiB; server: {args.rate_mb:g} MB/s per connection")
        print(f"disk write+fsync: {write / MB:.0f} MB/s; sha256: {sha_rate / MB:.0f} MB/s")
        print("rates: first request to published record (on the wire: to the last byte sent;")
        print("       end to end: the whole `volenv models fetch` process, interpreter start included)")
        print(
            f"single stream ({args.single_mib} MiB): {single / MB:.1f} MB/s"
            f" (wire {(args.single_mib << 20) / xfer1 / MB:.1f}, end to end"
            f" {(args.single_mib << 20) / wall1 / MB:.1f})"
        )
        print(
            f"parallel (adaptive, up to {most} connections): {parallel / MB:.1f} MB/s"
            f" (wire {size / xferp / MB:.1f}, end to end {size / wallp / MB:.1f});"
            f" {parallel / single:.1f}x one stream"
        )
        print(
            f"client CPU {cpu:.1f}s for the parallel fetch;"
            f" load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        print(f"ceiling min(8 x {args.rate_mb:g} MB/s, disk, sha256): {ceiling / MB:.0f} MB/s")
        print(
            f"parallel / ceiling: {parallel / ceiling:.2f} (target >= 0.8);"
            f" end to end / ceiling: {size / wallp / ceiling:.2f}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
