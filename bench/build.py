"""Build times: cold build, no-op sync and incremental (+1 package) sync, against plain
`uv venv && uv pip install` of the same set in the same run.
Targets: incremental sync <= 1.5x plain uv; no-op sync <= 0.3 s.

`--real` measures a real PyPI stack instead (pandas + scipy + scikit-learn, exact pins): cold
sync <= 1.3x plain uv, incremental (+1 package) <= 1.5x, no-op <= 0.3 s. Both sides share one
uv cache warmed first on the same filesystem, so the figures compare the build pipelines
(resolve, install, compile bytecode; volenv also hashes, records and seals), not the network.

Usage: python bench/build.py [--packages N] [--modules M] [--real]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import generate_wheels, manifest, plain_uv, timed, volenv_cmd

REAL_STACK = ["pandas==2.2.3", "scipy==1.14.1", "scikit-learn==1.5.2", "numpy==2.1.3"]
REAL_EXTRA = ["tabulate==0.9.0"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--packages", type=int, default=40)
    ap.add_argument("--modules", type=int, default=150)
    ap.add_argument("--real", action="store_true", help="pandas/scipy/scikit-learn from PyPI")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="volenv-bench-build-"))
    try:
        root = tmp / "root"
        wheels: Path | None
        if args.real:
            wheels, reqs, extra = None, REAL_STACK, REAL_EXTRA
            print(f"set: {' '.join(reqs)} from PyPI (+{extra[0]} for the incremental step)")
            # one shared cache on the volume's filesystem, warmed with every wheel both sides need
            uv_cache = root / "cache" / "uv"
            plain_uv(tmp, uv_cache, reqs + extra, None, "warmup")
        else:
            wheels = tmp / "wheels"
            reqs = generate_wheels(wheels, args.packages, args.modules)
            extra = generate_wheels(wheels, 1, args.modules, prefix="extra")
            files = args.packages * (args.modules + 1)
            print(f"set: {args.packages} packages, ~{files} modules (+1 package for the incremental step)")
            uv_cache = tmp / "uv-cache"

        # plain uv: cold (empty cache, or warm downloads for --real), then +1 package into a
        # fresh venv with a warm cache
        uv_cold = plain_uv(tmp, uv_cache, reqs, wheels, "cold")[0]
        uv_incr = plain_uv(tmp, uv_cache, reqs + extra, wheels, "incr")[0]

        m1 = manifest(tmp / "m1.toml", "bench", reqs, wheels)
        m2 = manifest(tmp / "m2.toml", "bench", reqs + extra, wheels)
        v = volenv_cmd()
        cold = timed([*v, "--root", str(root), "-q", "sync", str(m1)])
        noop_runs = []
        for _ in range(5):
            noop_runs.append(timed([*v, "--root", str(root), "-q", "sync", str(m1)]))
        noop_internal = json.loads(
            subprocess.run(
                [*v, "--root", str(root), "--json", "sync", str(m1)], capture_output=True, check=True
            ).stdout
        )["seconds"]
        incr_out = subprocess.run(
            [*v, "--root", str(root), "--json", "sync", str(m2)], capture_output=True, check=True
        )
        incr_doc = json.loads(incr_out.stdout)
        incr = float(incr_doc["seconds"])
        noop = sorted(noop_runs)[len(noop_runs) // 2]

        print(f"plain uv cold (venv + install + compile) : {uv_cold:.2f} s")
        target = " (target <= 1.3x)" if args.real else ""
        print(
            f"volenv cold sync                         : {cold:.2f} s   ratio {cold / uv_cold:.2f}x{target}"
        )
        print(f"plain uv +1 package (warm cache)         : {uv_incr:.2f} s")
        print(
            f"volenv incremental sync (+1 package)     : {incr:.2f} s   ratio {incr / uv_incr:.2f}x (target <= 1.5x)"
        )
        s = incr_doc["stats"]
        print(
            f"  hashed {s['hashed']} files, reused {s['hash_reused']} hashes, "
            f"re-linked {s['bytecode_reused']} .pyc"
        )
        print(f"volenv no-op sync, whole process (median): {noop:.3f} s (target <= 0.3 s)")
        print(f"volenv no-op sync, inside the command    : {float(noop_internal) * 1000:.1f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
