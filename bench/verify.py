"""Verification speed on a generated env (>= 15k files, >= 500 MB):
`full` against a plain parallel read of the same files (target <= 1.25x), `stat` against a
plain os.scandir walk with lstat (target <= 1.5x), `seal` in milliseconds. Each pair runs
alternately in one process, with the page cache warm, and (as root) also dropped.

Usage: python bench/verify.py [--packages N] [--modules M] [--big-mib B]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import drop_caches, generate_wheels, manifest, volenv_cmd

from volenv.store.integrity import HASH_WORKERS, verify_snapshot


def files_of(root: Path) -> list[str]:
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                out.append(p)
    return out


def plain_read(paths: list[str]) -> int:
    def read(p: str) -> int:
        n = 0
        with open(p, "rb", buffering=0) as fh:
            while chunk := fh.read(1 << 20):
                n += len(chunk)
        return n

    with ThreadPoolExecutor(HASH_WORKERS) as pool:
        return sum(pool.map(read, paths, chunksize=64))


def plain_walk(root: Path) -> int:
    n = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                n += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                _ = st.st_size
    return n


def best(fn: object, runs: int, cold: bool) -> float:
    times = []
    for _ in range(runs):
        if cold:
            drop_caches()
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--packages", type=int, default=60)
    ap.add_argument("--modules", type=int, default=250)
    ap.add_argument("--big-mib", type=float, default=8.5)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="volenv-bench-verify-"))
    try:
        wheels = tmp / "wheels"
        reqs = generate_wheels(wheels, args.packages, args.modules, big_bytes=int(args.big_mib * 1024 * 1024))
        root = tmp / "root"
        m = manifest(tmp / "m.toml", "bench", reqs, wheels)
        out = subprocess.run(
            [*volenv_cmd(), "--root", str(root), "--json", "-q", "sync", str(m)],
            capture_output=True,
            check=True,
        )
        snap = Path(json.loads(out.stdout)["path"])
        paths = files_of(snap)
        total = sum(os.path.getsize(p) for p in paths)
        print(f"env: {len(paths)} files, {total / 1e6:.0f} MB, {HASH_WORKERS} threads")
        seal_ms = best(lambda: verify_snapshot(snap, "seal"), 20, False) * 1000
        modes = [("warm page cache", False)] + ([("dropped page cache", True)] if drop_caches() else [])
        for label, cold in modes:
            full = best(lambda: verify_snapshot(snap, "full"), args.runs, cold)
            read = best(lambda: plain_read(paths), args.runs, cold)
            stat_v = best(lambda: verify_snapshot(snap, "stat"), args.runs, cold)
            walk = best(lambda: plain_walk(snap), args.runs, cold)
            print(f"[{label}]")
            print(
                f"  full verify {full:.2f} s vs parallel read {read:.2f} s: {full / read:.2f}x (target <= 1.25x)"
            )
            print(
                f"  stat verify {stat_v:.3f} s vs scandir walk {walk:.3f} s: {stat_v / walk:.2f}x (target <= 1.5x)"
            )
        print(f"seal verify: {seal_ms:.2f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
