"""Activation overhead: `volenv run -- python -c pass` against the snapshot's own
`python -c pass`, median of many alternating runs in one process. Target ratio <= 2.0.

With --baseline-src DIR (another checkout's `src/`, e.g. a `git worktree` of main before a
change), the same `run` with that volenv is timed in the same rounds, alternating, and the
ratio of this volenv's `run` to the baseline's is printed: a change's effect on a start,
measured against the machine's drift.

Usage: python bench/activation.py [--runs N] [--root DIR] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "manifests" / "demo.toml"


def volenv_cmd() -> list[str]:
    exe = shutil.which("volenv", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "volenv"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--baseline-src", type=Path, default=None, help="another volenv's src/ to compare with")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="volenv-bench-act-")
    root = args.root or Path(tmp) / "root"
    env = dict(os.environ)
    try:
        subprocess.run([*volenv_cmd(), "--root", str(root), "-q", "sync", str(DEMO)], check=True)
        current = (root / "envs" / "demo" / "current").read_text()
        import json

        sid = json.loads(current)["snapshot"]
        py = str(root / "envs" / "demo" / "snapshots" / sid / "bin" / "python")
        run = [
            *volenv_cmd(),
            "--root",
            str(root),
            "run",
            "--manifest",
            str(DEMO),
            "--",
            "python",
            "-c",
            "pass",
        ]
        direct = [py, "-c", "pass"]
        # the baseline runs as `python -m volenv` from its own src/ (PYTHONPATH wins over the
        # editable install); this volenv the same way, so both pay the same entry point
        base_env = None
        mine_m = [sys.executable, "-m", "volenv", *run[len(volenv_cmd()) :]]
        if args.baseline_src is not None:
            base_env = dict(env, PYTHONPATH=str(args.baseline_src.resolve()))
            mine_env = dict(env, PYTHONPATH=str(HERE.parent / "src"))
        for _ in range(5):  # warm the page cache for both
            timed(run, env)
            timed(direct, env)
            if base_env is not None:
                timed(mine_m, base_env)
        a, b, c, d = [], [], [], []
        for _ in range(args.runs):
            a.append(timed(run, env))
            b.append(timed(direct, env))
            if base_env is not None:
                c.append(timed(mine_m, base_env))
                d.append(timed(mine_m, mine_env))
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"volenv run -- python -c pass : {ma * 1000:.1f} ms (median of {args.runs})")
        print(f"snapshot python -c pass      : {mb * 1000:.1f} ms")
        print(f"ratio                        : {ma / mb:.2f}  (target <= 2.0)")
        if base_env is not None:
            mc, md = statistics.median(c), statistics.median(d)
            print(f"python -m volenv run, baseline {args.baseline_src}: {mc * 1000:.1f} ms")
            print(f"python -m volenv run, this checkout           : {md * 1000:.1f} ms")
            print(f"this / baseline                               : {md / mc:.3f}")
        script = volenv_cmd()[0]
        if script != sys.executable and "import re" in Path(script).read_text(errors="replace"):
            print("note: this volenv script imports re itself (pip's template, ~6 ms);")
            print("      the image installs with uv, whose script does not: measure in such a venv")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
