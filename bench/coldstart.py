"""Cold start on a slow volume: `volenv run` of a start with the volume behind tests/slowfs.py
(a FUSE passthrough adding a delay to every metadata op, kernel caching off), at each
`--latencies` ms per op, page cache dropped before every run, median of `--runs`: from local
disk (the same volume without the FUSE: the baseline), in place, `--materialize always` and
`auto`, as ratios against local disk. The runs alternate (one of each per round), so the
machine's drift over minutes weighs on the baseline as on the modes. Each materializing run extracts to a fresh ext4
filesystem (a loop image, like a new container's disk; see `fresh_disk`). Needs root (FUSE
mount, loop mount, drop_caches) and libfuse2.

Cases (`--case`):
- heavy: a generated package of `--modules` modules (with --trace the package's __init__
  imports nothing and the start imports one subpackage, which `volenv trace` records, so
  packing makes a startup pack and `--materialize` execs once that pack is local while the
  rest extracts in the background);
- torch: `import torch` from the local CPU torch wheel (pip's find-links folder);
- sympy: `import sympy` from the default index (traced);
- f5tts: the F5-TTS worker (worker/handler.py) in the e2e volume tests/test_worker_e2e.py
  keeps (`--source`, default /var/tmp/volenv-e2e/volenv: real f5-tts, local CPU torch, tiny
  random-weight models). That volume is never modified: it is copied once to `--work`
  (default /var/tmp/h-bench-f5), traced there (`volenv trace` of a worker start that answers
  one job) and packed; later runs reuse the prepared copy. The time is start-to-ready: until
  the worker prints `f5-tts-worker: ready` (models loaded), then it is stopped.

Targets (issue 17): auto <= 1.3x local disk at 1 ms/op; auto never worse than in place by
more than 10% at 0 ms/op; bytes copied before exec <= 25% of the snapshot's packed bytes.

A mode may name the verify level of its starts (`never@seal`, `auto@seal`): the default level
(`start`: the files the start reads, at stat) against `seal` alone is what the default check
costs (issue 25).

Usage: sudo python bench/coldstart.py [--case heavy|torch|sympy|f5tts] [--latencies 0,0.2,1]
           [--runs 3] [--modes never,always,auto,never@seal] [--modules 3000] [--trace] [--json-out FILE]
           [--start-timeout 900] [--untraced (f5tts: no startup pack)] [--work DIR] [--source ROOT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, drop_caches, make_wheel, volenv_cmd

from wheelfactory import local_torch_wheels

E2E_SOURCE = Path("/var/tmp/volenv-e2e/volenv")
F5_WORK = Path("/var/tmp/h-bench-f5")
READY_F5 = "f5-tts-worker: ready"
FAILED_F5 = "f5-tts-worker: model unavailable"
PROBE_LINE = re.compile(r"materialize auto: .*volume (?:metadata op|\(\S*\)) ([\d.]+) ms")
STARTUP_LINE = re.compile(
    r"startup pack of \S+ local in ([\d.]+) ?s \((\d+) files, ([\d.]+) ([KMGT]?i?B) of ([\d.]+) ([KMGT]?i?B)[;)]"
)
EXTRACTED_LINE = re.compile(r"materialize: extracted \S+ to ")
MODEL_LINE = re.compile(r"model '[^']+': copied ([\d.]+) ([KMGT]?i?B) to ")
_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


@dataclass
class Case:
    """What to start and how to tell it is up: `ready` is a line of its stderr, or None for exit."""

    name: str
    root: Path  # the volume root (not mounted); root.parent is what the FUSE mounts
    manifest: Path
    command: list[str]
    ready: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    failed: str | None = None  # a stderr line that means the start failed (the worker keeps serving)


@dataclass
class Start:
    seconds: float
    before_exec_files: int | None = None  # what was local before exec (startup pack), if any
    before_exec_bytes: int | None = None
    total_bytes: int | None = None
    extracted_all: bool = False  # materialized without a startup pack: everything before exec
    probe_ms: float | None = None  # what auto's probe measured
    startup_local_s: float | None = None  # when the startup pack was local (exec followed)
    models_copied_bytes: int = 0  # `[[models]] local`: model files copied to local disk before exec


class StartFailed(Exception):
    """A start that did not come up: the mode's figure is the failure, the bench goes on."""


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


def _manifest(path: Path, name: str, reqs: list[str], links: list[str], extra: str = "") -> Path:
    index = f"[index]\nno-index = true\nfind-links = {json.dumps(links)}\n" if links else ""
    path.write_text(f'name = "{name}"\npython = "3.11"\nrequirements = {json.dumps(reqs)}\n{index}{extra}')
    return path


def _volenv(root: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*volenv_cmd(), "--root", str(root), *args], check=True, **kw)  # type: ignore[call-overload, no-any-return]


def simple_case(args: argparse.Namespace, tmp: Path) -> Case:
    """heavy, torch or sympy: a fresh volume in tmp, synced and packed (traced where asked)."""
    root = tmp / "volume" / "volenv"
    wheels = tmp / "wheels"
    trace = args.trace
    if args.case == "torch":
        tw = local_torch_wheels()
        if tw is None:
            raise SystemExit("no local CPU torch wheel (pip config find-links)")
        reqs, links, code = ["torch==2.13.0"], [str(tw)], "import torch"
    elif args.case == "sympy":
        reqs, links, code, trace = ["sympy"], [], "import sympy", True
    else:
        reqs, links = [heavy_wheel(wheels, args.modules, lazy=trace)], [str(wheels)]
        code = "import heavy.sub00" if trace else "import heavy"
    m = _manifest(tmp / "m.toml", "cold", reqs, links)
    _volenv(root, "-q", "sync", "--pack", str(m))
    if trace:
        _volenv(
            root, "-q", "trace", "--manifest", str(m), "--", "python", "-c", code, stdout=subprocess.DEVNULL
        )
    return Case(args.case, root, m, ["python", "-c", code])


def f5_manifest(dest: Path, local: str | None = "auto") -> Path:
    """The e2e test's manifest (same build inputs, so the same snapshot) with its three models,
    each `local = "auto"` as manifests/f5-tts.toml has them (copied to the container's disk
    when the volume is slow: loading them from the volume walked its HF cache ~1,100 times at
    1 ms each); `local=None`: the e2e test's manifest exactly, to find its snapshot."""
    from test_worker_e2e import POST_INSTALL, REV

    wheels = local_torch_wheels("2.13.0")
    if wheels is None:
        raise SystemExit("no local CPU torch 2.13.0 wheel (pip config find-links): the e2e volume needs it")
    models = "".join(
        f'[[models]]\nname = "{name}"\nhf = {{ repo = "acme/{d}", revision = "{REV}", allow-patterns = ["*"] }}\n'
        + (f'local = "{local}"\n' if local else "")
        for name, d in (("f5tts-v1-base", "f5"), ("vocos-mel-24khz", "vocos"), ("ctc-aligner", "ctc"))
    )
    dest.write_text(
        'name = "f5-cpu"\npython = "3.11"\n'
        'requirements = ["torch==2.13.0", "f5-tts==1.1.22", "soundfile", "runpod>=1.10,<1.12", "boto3", "pyyaml"]\n'
        f'[index]\nfind-links = ["{wheels}"]\n[build]\npost-install = {json.dumps(POST_INSTALL)}\n'
        '[activate]\nsmoke-imports = ["torch", "f5_tts.infer.utils_infer", "soundfile", "runpod"]\n' + models
    )
    return dest


def f5_case(args: argparse.Namespace) -> Case:
    """The e2e volume, copied (never touched), traced (unless --untraced) and packed once in
    --work (default F5_WORK, or F5_WORK-untraced)."""
    from volenv.start.activation import find_snapshot, target_from_manifest

    source: Path = args.source
    work: Path = args.work or (F5_WORK.with_name(F5_WORK.name + "-untraced") if args.untraced else F5_WORK)
    work.mkdir(parents=True, exist_ok=True)
    m = f5_manifest(work / "worker.toml")
    e2e = f5_manifest(work / "worker-e2e.toml", local=None)
    sid = find_snapshot(str(source), target_from_manifest(str(source), str(e2e)))
    if sid is None:
        raise SystemExit(f"{source} has no snapshot of the e2e manifest: run tests/test_worker_e2e.py first")
    root = work / "volume" / "volenv"
    env = {
        "RUNPOD_SKIP_GPU_CHECK": "true",
        "WORKER_DATA_DIR": str(work / "worker-data"),
        "HOME": str(work),
        "MPLCONFIGDIR": str(work / "mpl"),
    }
    start = ["python", "-u", str(REPO / "worker" / "handler.py")]
    prepared = work / "prepared.json"
    want = {"snapshot": sid, "traced": not args.untraced}
    if prepared.exists() and root.is_dir():
        done = json.loads(prepared.read_text())
        if {k: done.get(k) for k in want} == want:
            if find_snapshot(str(root), target_from_manifest(str(root), str(m))) is None:
                _volenv(root, "-q", "sync", str(m), stdout=subprocess.DEVNULL)  # a copy from before
            return Case("f5tts", root, m, start, READY_F5, env, FAILED_F5)
        raise SystemExit(f"{work} was prepared differently ({done}): remove it or pass another --work")
    if not root.is_dir():
        partial = work / "volume" / ".volenv-copy-partial"
        shutil.rmtree(partial, ignore_errors=True)  # a killed copy is never used
        print(f"copying {source} to {root} (once; the source is never modified)", flush=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(source), str(partial)], check=True)
        os.rename(partial, root)
    t0 = time.perf_counter()
    _volenv(root, "-q", "sync", str(m), stdout=subprocess.DEVNULL)  # the same snapshot, indexed for m
    if not args.untraced:
        print("tracing a worker start that answers one job (once)", flush=True)
        _trace_worker(root, m, start, env)
    print("packing (once)", flush=True)
    _volenv(root, "-q", "pack", "f5-cpu", stdout=subprocess.DEVNULL)
    prepared.write_text(json.dumps({**want, "seconds": time.perf_counter() - t0}))
    return Case("f5tts", root, m, start, READY_F5, env, FAILED_F5)


def _trace_worker(root: Path, m: Path, start: list[str], env: dict[str, str]) -> None:
    job = json.dumps({"input": {"endpoint": "list_voices"}})
    _volenv(
        root,
        "-q",
        "trace",
        "--manifest",
        str(m),
        "--",
        *start,
        "--test_input",
        job,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
    )


@contextmanager
def slow_mount(src: Path, mnt: Path, latency: float) -> Iterator[Path]:
    mnt.mkdir(parents=True, exist_ok=True)
    fs = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "slowfs.py"), str(src), str(mnt), "--meta-ms", str(latency)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(400):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        else:
            raise SystemExit(f"slowfs did not mount at {mnt}")
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        try:
            fs.wait(timeout=20)
        except subprocess.TimeoutExpired:
            fs.kill()
            fs.wait()


def _wait_background(local: Path) -> None:
    """A startup-pack run leaves its background extraction running: let it finish."""
    deadline = time.monotonic() + 600
    while any(local.glob("*/.volenv/materializing")) and time.monotonic() < deadline:
        time.sleep(0.05)


def _can_loop_mount() -> bool:
    return bool(shutil.which("mkfs.ext4")) and os.path.exists("/dev/loop-control")


@contextmanager
def fresh_disk(where: Path) -> Iterator[Path]:
    """A new ext4 filesystem for one run's local copy (a sparse loop image): a new container's
    disk. Not a directory of this machine's long-lived root filesystem: after the previous
    run's 37k-file copy is deleted, ext4 skips the recently deleted inodes (5 s after deletion,
    305 s while their inode-table block is dirty) and scans past each one on every creation;
    perf showed `recently_deleted` first, and extracting the startup pack there took 3.4-5 s
    against 2.1-2.6 s on a fresh ext4 or a tmpfs. Deleting the image afterwards frees one
    inode. Without mkfs.ext4 or loop devices: a plain directory under `where`."""
    where.mkdir(parents=True, exist_ok=True)
    if not _can_loop_mount():
        yield where
        return
    img, mnt = where / "disk.img", where / "disk"
    mnt.mkdir(exist_ok=True)
    with open(img, "wb") as fh:
        fh.truncate(16 << 30)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        _wait_background(mnt / "local")
        subprocess.run(["umount", str(mnt)], check=False)
        img.unlink()


def start_once(case: Case, root: Path, mode: str, local: Path, timeout: float = 900) -> Start:
    """One cold start: caches dropped, `volenv run --materialize MODE`, timed to exit or to the
    ready line (stopped, and a failure, after `timeout` s); what materialize copied before exec
    parsed from its own narrative."""
    if mode.partition("@")[0] == "never":
        return _start(case, root, mode, local, timeout)
    with fresh_disk(local.parent / "disk") as disk:
        return _start(case, root, mode, disk / "local", timeout)


def _start(case: Case, root: Path, mode: str, local: Path, timeout: float) -> Start:
    import threading

    _wait_background(local)
    shutil.rmtree(local, ignore_errors=True)
    drop_caches()
    mode, _, level = mode.partition("@")  # `never@seal`: the same start, verified at `seal` only
    cmd = [*volenv_cmd(), "--root", str(root), "run", "--materialize", mode, "--materialize-dir", str(local)]
    cmd += ["--verify", level] if level else []
    cmd += ["--on-missing", "fail", "--manifest", str(case.manifest), "--", *case.command]
    env = {**os.environ, **case.env}
    lines: list[str] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        if case.ready is None:
            lines = proc.stderr.read().splitlines()
            code = proc.wait()
        else:
            code = None
            for line in proc.stderr:
                lines.append(line.rstrip("\n"))
                if case.ready in line:
                    break
                if case.failed and case.failed in line:
                    code = -1
                    break
            else:
                code = proc.wait()
        seconds = time.perf_counter() - t0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    _wait_background(local)
    shutil.rmtree(local, ignore_errors=True)
    out = Start(seconds)
    for line in lines:
        if hit := PROBE_LINE.search(line):
            out.probe_ms = float(hit.group(1))
        if hit := STARTUP_LINE.search(line):
            out.startup_local_s = float(hit.group(1))
            g = hit.groups()
            out.before_exec_files = int(g[1])
            out.before_exec_bytes = int(float(g[2]) * _UNITS.get(g[3], 1))  # sizes are printed to 2-3 digits
            out.total_bytes = int(float(g[4]) * _UNITS.get(g[5], 1))
        elif EXTRACTED_LINE.search(line):
            out.extracted_all = True
        if hit := MODEL_LINE.search(line):
            out.models_copied_bytes += int(float(hit.group(1)) * _UNITS.get(hit.group(2), 1))
    if seconds >= timeout:
        code = code or -9
        lines.append(f"timed out after {timeout:.0f}s (--start-timeout)")
    if code not in (None, 0):
        why = next(
            (ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else ""
        )
        why = f"{why.strip()} ({_copied([out])})"
        print(f"      {mode}: start FAILED after {seconds:.2f}s (exit {code}): {why}", flush=True)
        for ln in lines[-12:]:
            print(f"        | {ln}")
        raise StartFailed(why)
    return out


def interleaved(
    case: Case, root: Path, modes: list[str], runs: int, local: Path, timeout: float
) -> dict[str, list[Start] | str]:
    """`runs` rounds, each one start from local disk (the baseline: the same volume without
    the FUSE) and one per mode, in turn: this machine's speed drifts by tens of percent over
    minutes (the local F5-TTS start measured 9.0-11.6 s in separate runs), so a baseline
    measured before all the modes' runs skewed every ratio. A mode whose start fails is not
    run again; its entry is why."""
    out: dict[str, list[Start] | str] = {"local": [], **{m: [] for m in modes}}
    for _ in range(runs):
        for m in out:
            starts = out[m]
            if isinstance(starts, str):
                continue
            try:
                if m == "local":
                    starts.append(start_once(case, case.root, "never", local, timeout))
                else:
                    starts.append(start_once(case, root, m, local, timeout))
            except StartFailed as exc:
                out[m] = f"FAILED: {exc}"
    return out


def _median(starts: list[Start]) -> float:
    return statistics.median(s.seconds for s in starts)


def _copied(starts: list[Start]) -> str:
    s = starts[-1]
    models = f"; models copied {s.models_copied_bytes / 1e6:.1f} MB" if s.models_copied_bytes else ""
    if s.before_exec_bytes is not None and s.total_bytes:
        share = s.before_exec_bytes / s.total_bytes
        return (
            f"before exec {s.before_exec_files} files, {s.before_exec_bytes / 1e6:.1f} of"
            f" {s.total_bytes / 1e6:.1f} MB ({share:.0%}; target <= 25%), local after {s.startup_local_s}s"
            + models
        )
    return (
        "before exec: everything (no startup pack)" if s.extracted_all else "in place (nothing copied)"
    ) + models


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=("heavy", "torch", "sympy", "f5tts"), default="heavy")
    ap.add_argument("--modules", type=int, default=3000, help="heavy: modules in the package")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latencies", default="0,0.2,1", help="ms per metadata op, comma separated")
    ap.add_argument("--modes", default=None, help="of never,always,auto (f5tts default: never,auto)")
    ap.add_argument("--torch", action="store_true", help="same as --case torch")
    ap.add_argument("--trace", action="store_true", help="heavy: trace a partial start; startup pack")
    ap.add_argument("--source", type=Path, default=E2E_SOURCE, help="f5tts: the e2e volume root (read only)")
    ap.add_argument(
        "--work", type=Path, default=None, help=f"f5tts: where its prepared copy lives ({F5_WORK})"
    )
    ap.add_argument(
        "--untraced",
        action="store_true",
        help="f5tts: no start trace (no startup pack: all packs before exec)",
    )
    ap.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    ap.add_argument(
        "--command",
        default=None,
        help="start this instead of the case's command (e.g. `true`: what activation alone costs, "
        "its checks included; with never,never@seal it isolates the default check's cost)",
    )
    ap.add_argument(
        "--start-timeout", type=float, default=900, help="seconds before a start counts as failed"
    )
    args = ap.parse_args()
    if args.torch:
        args.case = "torch"
    modes = (args.modes or ("never,auto" if args.case == "f5tts" else "never,always,auto")).split(",")
    if not {m.partition("@")[0] for m in modes} <= {"never", "always", "auto"} or not {
        m.partition("@")[2] for m in modes
    } <= {"", "seal", "start", "stat", "full"}:
        ap.error(f"--modes: {args.modes!r}")
    latencies = [float(x) for x in args.latencies.split(",")]
    if os.geteuid() != 0:
        print("needs root (FUSE mount, drop_caches)")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="volenv-bench-cold-"))
    mnt = tmp / "mnt"
    local = tmp / "local"
    results: dict[str, object] = {"case": args.case, "runs": args.runs, "latencies": {}}
    try:
        case = f5_case(args) if args.case == "f5tts" else simple_case(args, tmp)
        if args.command:
            import shlex

            case = Case(case.name, case.root, case.manifest, shlex.split(args.command), None, case.env)
        print(f"{case.name}: `{' '.join(case.command)}`; {args.runs} cold runs each (page cache dropped)")
        base_labels = {"never": "in place", "always": "materialize", "auto": "auto"}
        labels = {
            m: base_labels[m.partition("@")[0]] + (f" --verify {m.partition('@')[2]}" if "@" in m else "")
            for m in modes
        }
        local_all: list[Start] = []
        for lat in latencies:
            with slow_mount(case.root.parent, mnt, lat):
                rounds = interleaved(case, mnt / case.root.name, modes, args.runs, local, args.start_timeout)
            base = rounds.pop("local")
            if isinstance(base, str):
                print(f"local disk: {base}")
                return 1
            local_all += base
            base_s = _median(base)
            results["local_s"] = _median(local_all)
            results["local_runs_s"] = [s.seconds for s in local_all]
            print(f"local disk (in place, no FUSE), in the same rounds: {base_s:6.2f} s", flush=True)
            row = rounds
            figures: dict[str, dict[str, object]] = {}
            parts = [f"{lat:4.1f} ms/op:"]
            for m, starts in row.items():
                if isinstance(starts, str):
                    parts.append(f"{labels[m]} {starts[:60]}")
                    figures[m] = {"error": starts}
                    continue
                med = _median(starts)
                parts.append(f"{labels[m]} {med:6.2f} s ({med / base_s:.2f}x local)")
                last = starts[-1]
                figures[m] = {
                    "median_s": med,
                    "vs_local": med / base_s,
                    "runs_s": [x.seconds for x in starts],
                    "probe_ms": last.probe_ms,
                    "before_exec_files": last.before_exec_files,
                    "before_exec_bytes": last.before_exec_bytes,
                    "packed_bytes": last.total_bytes,
                    "extracted_all": last.extracted_all,
                    "startup_local_s": last.startup_local_s,
                    "models_copied_bytes": last.models_copied_bytes,
                }
            a, n = figures.get("auto", {}), figures.get("never", {})
            if "median_s" in a and "median_s" in n:
                parts.append(f"auto/in place {float(a['median_s']) / float(n['median_s']):.2f}x")  # type: ignore[arg-type]
            for m in modes:  # the default check's cost: MODE against MODE@seal, same rounds
                plain, _, level = m.partition("@")
                if level == "seal" and "median_s" in figures.get(plain, {}) and "median_s" in figures[m]:
                    cost = float(figures[plain]["median_s"]) - float(figures[m]["median_s"])  # type: ignore[arg-type]
                    parts.append(f"{base_labels[plain]}: --verify start costs {cost:+.2f} s over seal")
            print(parts[0], " | ".join(parts[1:]), flush=True)
            for m, starts in row.items():
                if m != "never" and not isinstance(starts, str):
                    probe = (
                        f" (auto's probe: {starts[-1].probe_ms} ms/op)"
                        if starts[-1].probe_ms is not None
                        else ""
                    )
                    print(f"      {labels[m]}: {_copied(starts)}{probe}", flush=True)
            figures["local"] = {"median_s": base_s, "runs_s": [x.seconds for x in base]}
            results["latencies"][str(lat)] = figures  # type: ignore[index]
            if args.json_out:  # after every row: a long run stopped midway keeps what it measured
                args.json_out.write_text(json.dumps(results, indent=2))
        _targets(results, latencies)
        if args.json_out:
            args.json_out.write_text(json.dumps(results, indent=2))
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        _wait_background(local)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _targets(results: dict[str, object], latencies: list[float]) -> None:
    """Issue 17's targets, each printed as met or missed with the figure."""
    rows: dict[str, dict[str, dict[str, float]]] = results["latencies"]  # type: ignore[assignment]
    checks = []
    for lat, row in rows.items():
        for m, fig in row.items():
            if "error" in fig:
                print(f"target: {m} at {lat} ms/op did not start: {fig['error']}")
    one = rows.get("1.0", {})
    if "vs_local" in one.get("auto", {}):
        checks.append(("auto <= 1.3x local at 1 ms/op", one["auto"]["vs_local"], 1.3))
    zero = rows.get("0.0", {})
    if "median_s" in zero.get("auto", {}) and "median_s" in zero.get("never", {}):
        checks.append(
            ("auto <= 1.1x in place at 0 ms/op", zero["auto"]["median_s"] / zero["never"]["median_s"], 1.1)
        )
    for lat in ("1.0", *(str(x) for x in latencies)):
        a = rows.get(lat, {}).get("auto", {})
        if a.get("before_exec_bytes") is not None and a.get("packed_bytes"):
            checks.append(
                ("bytes before exec <= 25% of the snapshot", a["before_exec_bytes"] / a["packed_bytes"], 0.25)
            )
            break
    for what, value, limit in checks:
        print(f"target {what}: {value:.2f} -> {'met' if value <= limit else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
