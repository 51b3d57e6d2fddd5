"""Build speed against uv (issue 27), on three real PyPI stacks of different sizes, in the same
run, alternating, medians of --rounds:

- fresh: `volenv sync` of a new env (warm uv cache) against `uv venv && uv pip install
  --compile-bytecode -r reqs` into a new venv (the same cache). Target ratio <= 1.2x.
- +1 package: `volenv sync` of the manifest with one more package (an incremental build next
  to the previous snapshot) against `uv pip install --compile-bytecode PKG` into the venv uv
  built. Target ratio <= 1.2x.

Both sides use one uv cache on the volume's filesystem, warmed first, so the figures compare
the build pipelines, not the network. volenv's per-step seconds (resolve, stage, install,
post-install, compile, smoke, record, seal: `sync --json`'s `steps`) are printed as medians,
so the ratio's cause is visible.

Usage: python bench/buildspeed.py [--rounds N] [--stacks small,medium,large] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import manifest, plain_uv, uv_pip_install, volenv_cmd

STACKS: dict[str, tuple[list[str], str]] = {
    # (the set, the one package the incremental step adds)
    "small": (["requests==2.32.3", "pyyaml==6.0.2"], "tabulate==0.9.0"),
    "medium": (
        ["fastapi==0.115.14", "pydantic==2.10.6", "numpy==2.1.3", "uvicorn==0.34.0", "jinja2==3.1.6"],
        "tabulate==0.9.0",
    ),
    "large": (
        ["pandas==2.2.3", "scipy==1.14.1", "scikit-learn==1.5.2", "numpy==2.1.3", "matplotlib==3.9.2"],
        "tabulate==0.9.0",
    ),
}


def volenv_sync(root: Path, m: Path) -> tuple[float, dict[str, float]]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [*volenv_cmd(), "--root", str(root), "--json", "sync", str(m)], capture_output=True, check=True
    )
    took = time.perf_counter() - t0
    return took, {k: float(v) for k, v in json.loads(out.stdout).get("steps", {}).items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stacks", default="small,medium,large")
    ap.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir, removed)")
    args = ap.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="volenv-bench-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "root"
    cache = root / "cache" / "uv"  # volenv's own uv cache: both sides share it
    try:
        for name in args.stacks.split(","):
            reqs, extra = STACKS[name]
            plain_uv(work, cache, [*reqs, extra], None, f"{name}-warm")  # warm the cache with everything
            fresh_v, fresh_u, add_v, add_u = [], [], [], []
            steps: dict[str, list[float]] = {}
            for i in range(args.rounds):
                env = f"{name}{i}"
                m1 = manifest(work / f"{env}.toml", env, reqs, None)
                order = (0, 1) if i % 2 == 0 else (1, 0)  # alternate who goes first
                for who in order:
                    if who == 0:
                        t, st = volenv_sync(root, m1)
                        fresh_v.append(t)
                        for k, v in st.items():
                            steps.setdefault(k, []).append(v)
                    else:
                        t, venv = plain_uv(work, cache, reqs, None, env)
                        fresh_u.append(t)
                m2 = manifest(work / f"{env}.toml", env, [*reqs, extra], None)  # the same file, edited
                for who in order:
                    if who == 0:
                        add_v.append(volenv_sync(root, m2)[0])
                    else:
                        add_u.append(uv_pip_install(venv, cache, [extra]))
            med = statistics.median
            print(f"== {name}: {' '.join(reqs)} (+{extra})")
            print(
                f"  fresh    volenv {med(fresh_v):6.2f} s   uv --compile-bytecode {med(fresh_u):6.2f} s"
                f"   ratio {med(fresh_v) / med(fresh_u):.2f}x (target <= 1.2x)"
            )
            print(
                f"  +1 pkg   volenv {med(add_v):6.2f} s   uv pip install        {med(add_u):6.2f} s"
                f"   ratio {med(add_v) / med(add_u):.2f}x (target <= 1.2x)"
            )
            print(
                "  volenv fresh steps (median s): " + ", ".join(f"{k} {med(v):.2f}" for k, v in steps.items())
            )
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
