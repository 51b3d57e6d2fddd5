"""Stampede and takeover figures: 12 workers `run --on-missing build` a new manifest at once
(half through each of two bindfs views of one volume when bindfs is available) against one
uncontended build in the same run; and how long the next builder waits after a builder is
SIGKILLed (same host: immediate, the dead pid is probed; another host, simulated with a UTS
namespace: one lease duration).

Usage: sudo python bench/stampede.py [--workers 12] [--lease 5]
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--lease", type=float, default=5.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="volenv-bench-stampede-"))
    mounted: list[Path] = []
    env = dict(os.environ, VOLENV_LEASE_SECONDS=str(args.lease), VOLENV_NO_PROGRESS="1")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        wheels = tmp / "wheels"
        reqs = generate_wheels(wheels, 20, 100)
        m = manifest(tmp / "m.toml", "bench", reqs, wheels)
        v = volenv_cmd()
        cmd = ["run", "--on-missing", "build", "--manifest", str(m), "--", "python", "-c", "pass"]

        t0 = time.perf_counter()
        subprocess.run([*v, "--root", str(tmp / "single"), "-q", *cmd], check=True, env=env)
        single = time.perf_counter() - t0

        src = tmp / "vol"
        src.mkdir()
        views = [src, src]
        if shutil.which("bindfs") and os.geteuid() == 0:
            views = []
            for name in ("m1", "m2"):
                mnt = tmp / name
                mnt.mkdir()
                subprocess.run(["bindfs", str(src), str(mnt)], check=True)
                mounted.append(mnt)
                views.append(mnt)
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen([*v, "--root", str(views[i % 2] / "volenv"), "-q", *cmd], env=env)
            for i in range(args.workers)
        ]
        codes = [p.wait() for p in procs]
        stampede = time.perf_counter() - t0
        builds = (src / "volenv" / "logs" / "bench" / "events.jsonl").read_text().count('"build-start"')
        how = "two bindfs views" if mounted else "one directory (bindfs unavailable)"
        print(f"single uncontended build+run : {single:.2f} s")
        print(
            f"{args.workers} workers at once ({how}): {stampede:.2f} s wall, {stampede / single:.2f}x;"
            f" builds: {builds}; exit codes: {sorted(set(codes))}"
        )

        for label, prefix in (
            ("same host", []),
            (
                "another host (UTS namespace)",
                ["unshare", "--uts", "sh", "-c", 'hostname bench-other && exec "$@"', "sh"],
            ),
        ):
            if prefix and (os.geteuid() != 0 or not shutil.which("unshare")):
                continue
            root = tmp / f"takeover-{len(label)}"
            killed = subprocess.run(
                [*prefix, *v, "--root", str(root), "-q", "sync", str(m)],
                env={**env, "VOLENV_FAULT": "install:kill"},
            )
            assert killed.returncode != 0
            t0 = time.perf_counter()
            subprocess.run([*v, "--root", str(root), "-q", "sync", str(m)], check=True, env=env)
            total = time.perf_counter() - t0
            print(
                f"takeover after SIGKILL, {label}: next sync finished in {total:.2f} s (lease {args.lease:.0f} s)"
            )
    finally:
        for mnt in mounted:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
