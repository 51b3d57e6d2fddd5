"""Activation overhead: `volenv run -- python -c pass` against the snapshot's own
`python -c pass`, median of many alternating runs in one process. Target ratio <= 2.0.

With --baseline-src DIR (another checkout's `src/`, e.g. a `git worktree` of main before a
change), the same `run` with that volenv is timed in the same rounds, alternating, and the
ratio of this volenv's `run` to the baseline's is printed: a change's effect on a start,
measured against the machine's drift.

With --local-package N, a second manifest names a local package of N files (`localpkg @
./localpkg`, what `volenv init` writes for a package project): its start also checks the
package's stat fingerprint (issue 31), and both starts are timed in the same rounds.

Usage: python bench/activation.py [--runs N] [--root DIR] [--baseline-src DIR] [--local-package N]
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


# A PEP 517 backend inside the package (`backend-path`): it builds with no index.
BACKEND = """
import base64, hashlib, os, zipfile

def _h(b):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    di = "localpkg-1.0.dist-info"
    entries = {}
    for d, _dirs, files in os.walk("localpkg"):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                entries[os.path.join(d, f).replace(os.sep, "/")] = fh.read()
    entries[di + "/METADATA"] = b"Metadata-Version: 2.1\\nName: localpkg\\nVersion: 1.0\\n"
    entries[di + "/WHEEL"] = b"Wheel-Version: 1.0\\nGenerator: b\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    rec = [f"{p},{_h(b)},{len(b)}" for p, b in entries.items()] + [di + "/RECORD,,"]
    entries[di + "/RECORD"] = ("\\n".join(rec) + "\\n").encode()
    with zipfile.ZipFile(os.path.join(wheel_directory, "localpkg-1.0-py3-none-any.whl"), "w") as zf:
        for p, b in entries.items():
            zf.writestr(p, b)
    return "localpkg-1.0-py3-none-any.whl"
"""


def local_package_manifest(where: Path, files: int) -> Path:
    """A manifest naming a local package of `files` files (10 per directory)."""
    pkg = where / "localpkg"
    for i in range(files):
        d = pkg / "localpkg" / f"sub{i // 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"m{i}.py").write_text(f"X = {i}\n")
        (d / "__init__.py").touch()
    (pkg / "localpkg" / "__init__.py").touch()
    (pkg / "tinybackend.py").write_text(BACKEND)
    (pkg / "pyproject.toml").write_text(
        '[project]\nname = "localpkg"\nversion = "1.0"\n[build-system]\nrequires = []\n'
        'build-backend = "tinybackend"\nbackend-path = ["."]\n'
    )
    m = where / "loc.toml"
    m.write_text(
        'name = "loc"\npython = "3.11"\nrequirements = ["localpkg @ ./localpkg"]\n[index]\nno-index = true\n'
    )
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--baseline-src", type=Path, default=None, help="another volenv's src/ to compare with")
    ap.add_argument(
        "--local-package",
        type=int,
        default=0,
        metavar="N",
        help="also time a manifest naming a local package of N files",
    )
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
        # by env, not by manifest: an alias one version wrote may not be the other's to read
        by_env = ["--root", str(root), "run", "--env", "demo", "--", "python", "-c", "pass"]
        mine_m = [sys.executable, "-m", "volenv", *by_env]
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
        if args.local_package:
            m = local_package_manifest(Path(tmp), args.local_package)
            subprocess.run([*volenv_cmd(), "--root", str(root), "-q", "sync", str(m)], check=True)
            loc = [*run[: run.index("--manifest") + 1], str(m), *run[run.index("--manifest") + 2 :]]
            for _ in range(5):
                timed(loc, env)
            e, f = [], []
            for _ in range(args.runs):
                e.append(timed(run, env))
                f.append(timed(loc, env))
            me, mf = statistics.median(e), statistics.median(f)
            print(f"run, demo manifest (no local package)          : {me * 1000:.1f} ms")
            print(f"run, a local package of {args.local_package} files       : {mf * 1000:.1f} ms")
            print(
                f"the local package's fingerprint check costs    : {(mf - me) * 1000:+.1f} ms ({mf / me:.2f}x)"
            )
        if base_env is not None:
            mc, md = statistics.median(c), statistics.median(d)
            print(f"python -m volenv run --env, baseline {args.baseline_src}: {mc * 1000:.1f} ms")
            print(f"python -m volenv run --env, this checkout           : {md * 1000:.1f} ms")
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
