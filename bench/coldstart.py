"""Cold start on a slow volume: `volenv run` of a heavy import with the volume behind
tests/slowfs.py (a FUSE passthrough adding a delay to every metadata op, kernel caching off),
at 0, 0.2 and 1 ms per op, page cache dropped before every run, median of 3: in place vs
--materialize always vs auto. Targets: at 1 ms materialize <= 0.5x in place; auto within 10%
of the better of the two at every setting. Needs root (FUSE mount, drop_caches) and libfuse2.

The heavy import is a generated package of thousands of modules; --torch uses the local CPU
torch wheel instead (pip's find-links folder), which takes far longer at 1 ms.

With --trace the package's __init__ imports nothing and the start imports one subpackage
(`--start-fraction` of the modules); `volenv trace` records it, so packing makes a startup pack
and `--materialize` execs once that pack is local while the rest extracts in the background
(the run's time is start-to-exit; the next run waits for the background to finish first).

Usage: sudo python bench/coldstart.py [--modules 3000] [--runs 3] [--torch] [--trace]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, drop_caches, make_wheel, volenv_cmd

from wheelfactory import local_torch_wheels


def heavy_wheel(dest: Path, modules: int, lazy: bool = False) -> str:
    files: dict[str, str | bytes] = {}
    per = 100
    subs = [f"sub{i:02d}" for i in range((modules + per - 1) // per)]
    files["heavy/__init__.py"] = "" if lazy else "".join(f"from . import {s}\n" for s in subs)
    n = 0
    for s in subs:
        names = [f"m{j:03d}" for j in range(per) if n + j < modules]
        n += len(names)
        files[f"heavy/{s}/__init__.py"] = "".join(f"from . import {m}\n" for m in names)
        for m in names:
            files[f"heavy/{s}/{m}.py"] = f"VALUE = {m!r}\n" + "def f(x):\n    return x + 1\n" * 5
    make_wheel(dest, "heavy", "1.0", files=files)
    return "heavy==1.0"


def _wait_background(local: Path) -> None:
    """A startup-pack run leaves its background extraction running: let it finish."""
    deadline = time.monotonic() + 120
    while any(local.glob("*/.volenv/materializing")) and time.monotonic() < deadline:
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--modules", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latencies", default="0,0.2,1")
    ap.add_argument("--torch", action="store_true")
    ap.add_argument("--trace", action="store_true", help="trace a partial start; startup pack")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (FUSE mount, drop_caches)")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="volenv-bench-cold-"))
    src = tmp / "volume"
    root = src / "volenv"
    mnt = tmp / "mnt"
    mnt.mkdir()
    try:
        wheels = tmp / "wheels"
        if args.torch and (tw := local_torch_wheels()):
            reqs, links, code = ["torch==2.13.0"], [str(tw)], "import torch"
        else:
            reqs, links = [heavy_wheel(wheels, args.modules, lazy=args.trace)], [str(wheels)]
            code = "import heavy.sub00" if args.trace else "import heavy"
        m = tmp / "m.toml"
        m.write_text(
            f'name = "cold"\npython = "3.11"\nrequirements = {reqs!r}\n'.replace("'", '"')
            + f"[index]\nno-index = true\nfind-links = {links!r}\n".replace("'", '"')
        )
        v = volenv_cmd()
        subprocess.run([*v, "--root", str(root), "-q", "sync", "--pack", str(m)], check=True)
        if args.trace:
            trace = [*v, "--root", str(root), "-q", "trace", "--manifest", str(m), "--", "python", "-c", code]
            subprocess.run(trace, check=True, stdout=subprocess.DEVNULL)
        print(f"heavy import: `{code}`; packs on the volume; {args.runs} cold runs each (page cache dropped)")
        results: dict[float, dict[str, float]] = {}
        for lat in [float(x) for x in args.latencies.split(",")]:
            fs = subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "tests" / "slowfs.py"),
                    str(src),
                    str(mnt),
                    "--meta-ms",
                    str(lat),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(200):
                if os.path.ismount(mnt):
                    break
                time.sleep(0.05)
            try:
                row = {}
                for mode in ("never", "always", "auto"):
                    times = []
                    for _ in range(args.runs):
                        local = tmp / "local"
                        _wait_background(local)
                        shutil.rmtree(local, ignore_errors=True)
                        drop_caches()
                        t0 = time.perf_counter()
                        subprocess.run(
                            [
                                *v,
                                "--root",
                                str(mnt / "volenv"),
                                "-q",
                                "run",
                                "--materialize",
                                mode,
                                "--materialize-dir",
                                str(local),
                                "--manifest",
                                str(m),
                                "--",
                                "python",
                                "-c",
                                code,
                            ],
                            check=True,
                            stderr=subprocess.DEVNULL,
                        )
                        times.append(time.perf_counter() - t0)
                    _wait_background(tmp / "local")
                    row[mode] = statistics.median(times)
                results[lat] = row
                best = min(row["never"], row["always"])
                print(
                    f"{lat:4.1f} ms/op: in place {row['never']:6.2f} s | materialize {row['always']:6.2f} s"
                    f" ({row['always'] / row['never']:.2f}x) | auto {row['auto']:6.2f} s ({row['auto'] / best:.2f}x best)"
                )
            finally:
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
                fs.wait(timeout=20)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
