"""GC speed: plan (dry run) and execute for 10 snapshots of a >= 10k-file env, against
`rm -rf` of the same trees (an identical copy of the volume, hard links preserved) in the
same run.

Usage: python bench/gc.py [--packages N] [--modules M] [--snapshots K]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import generate_wheels, manifest, volenv_cmd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--packages", type=int, default=40)
    ap.add_argument("--modules", type=int, default=250)
    ap.add_argument("--snapshots", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="volenv-bench-gc-"))
    try:
        wheels = tmp / "wheels"
        base = generate_wheels(wheels, args.packages, args.modules)
        extras = generate_wheels(wheels, args.snapshots + 1, 5, prefix="extra")
        root = tmp / "a" / "volenv"
        v = volenv_cmd()
        for i in range(args.snapshots + 1):  # the last one stays current
            m = manifest(tmp / f"m{i}.toml", "bench", [*base, extras[i]], wheels)
            subprocess.run([*v, "--root", str(root), "-q", "sync", str(m)], check=True)
        snaps = root / "envs" / "bench" / "snapshots"
        files = sum(len(f) for _d, _s, f in os.walk(next(snaps.iterdir())))
        print(f"{len(os.listdir(snaps))} snapshots of {files} files each (hard-linked from the uv cache)")
        subprocess.run(["cp", "-a", str(tmp / "a"), str(tmp / "b")], check=True)
        gc = [*v, "--root", str(root), "--json", "gc", "--keep", "1", "--keep-within", "0s"]
        t0 = time.perf_counter()
        plan = json.loads(subprocess.run([*gc, "--dry-run"], check=True, capture_output=True).stdout)
        t_plan = time.perf_counter() - t0
        victims = [
            Path(i["path"]).name
            for i in plan["result"]["plan"]["items"]
            if i["kind"] == "snapshot" and i["action"] == "remove"
        ]
        t0 = time.perf_counter()
        done = json.loads(subprocess.run([*gc, "--yes"], check=True, capture_output=True).stdout)
        t_exec = time.perf_counter() - t0
        other = tmp / "b" / "volenv" / "envs" / "bench" / "snapshots"
        t0 = time.perf_counter()
        subprocess.run(["rm", "-rf", *[str(other / n) for n in victims]], check=True)
        t_rm = time.perf_counter() - t0
        print(f"gc plan (dry run, whole process)   : {t_plan:.2f} s for {len(victims)} removable snapshots")
        print(
            f"gc execute (plan + remove, process): {t_exec:.2f} s, freed {done['result']['freed_bytes'] / 1e6:.1f} MB"
        )
        print(f"rm -rf of the same {len(victims)} trees     : {t_rm:.2f} s")
        print(
            f"ratio execute / rm -rf             : {t_exec / t_rm:.2f}x; plan / rm -rf: {t_plan / t_rm:.2f}x"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
