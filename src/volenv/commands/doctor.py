"""`volenv doctor`: what a person asks first when a worker will not start, in one report. Each
env's current snapshot is verified at `stat` (every file's type, size and mode against the
record: what `run` would trip over), within a time budget (VOLENV_DOCTOR_BUDGET seconds, 120 by
default, shared by all envs), so a deleted or truncated file is found here, with the command
that repairs it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from volenv.base.leanjson import loads as json_loads  # RecursionError is ValueError there
from volenv.store import pointers as store
from volenv.store.paths import RootChoice, VolumePaths
from volenv.store.sealcheck import SealProblem, check_seal, interpreter_problem
from volenv.store.volio import read_regular, real_dir_below


@dataclass(frozen=True)
class SnapshotHealth:
    env: str
    snapshot: str
    current: bool
    seal: str  # "valid" or the problem
    interpreter: str  # "matches" / the problem
    torch_cuda: str | None
    files: str = "-"  # the current snapshot's files at `stat`: "ok", the differences, or why unknown


@dataclass(frozen=True)
class GpuInfo:
    present: bool
    names: tuple[str, ...] = ()
    driver: str | None = None
    cuda: str | None = None  # the newest CUDA the driver supports
    detail: str = ""


@dataclass(frozen=True)
class BuildFailure:
    """The newest `build-failed` event on the volume: what broke, when, and its log."""

    env: str
    time: float
    error: str
    log: str | None
    snapshot: str | None = None


@dataclass(frozen=True)
class DoctorReport:
    root: str
    root_source: str
    exists: bool
    reachable: bool
    mount_point: str | None
    fs_type: str | None
    writable: bool
    free_bytes: int | None
    total_bytes: int | None
    leases: dict[str, str]
    snapshots: tuple[SnapshotHealth, ...]
    gpu: GpuInfo
    python: str
    build_log: str | None
    build_log_tail: tuple[str, ...]
    problems: tuple[str, ...]
    last_failure: BuildFailure | None = None
    fixes: tuple[str, ...] = ()  # the command that repairs each problem that has one, pasteable

    @property
    def exit_code(self) -> int:
        if not self.exists or not self.reachable:
            return 8
        if any(s.seal != "valid" for s in self.snapshots if s.current):
            return 4
        if self.problems:  # every problem it reports is a reason to exit non-zero (scripts, CI)
            return 8 if not self.writable else 4
        return 0


def _mount_of(path: str) -> tuple[str | None, str | None]:
    import psutil

    best: tuple[str | None, str | None] = (None, None)
    real = os.path.realpath(path)
    for part in psutil.disk_partitions(all=True):
        mp = part.mountpoint
        if (real == mp or real.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best[0] or ""):
            best = (mp, part.fstype)
    return best


def _writable(root: Path) -> bool:
    """A new file of its own, created exclusively and never through a link (a planted
    `.doctor-PID` link must not truncate what it points to), then removed."""
    from volenv.store.volio import unique_suffix

    probe = root / f".doctor-{unique_suffix()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


def gpu_info() -> GpuInfo:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return GpuInfo(False, detail="nvidia-smi not found (no GPU driver in this container)")
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=15).stdout
        names = subprocess.run(
            [exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return GpuInfo(False, detail=f"nvidia-smi failed: {exc}")
    rows = [r.split(",") for r in names.strip().splitlines() if "," in r]
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", out)
    return GpuInfo(
        bool(rows),
        tuple(r[0].strip() for r in rows),
        rows[0][1].strip() if rows else None,
        cuda.group(1) if cuda else None,
    )


def torch_cuda_of(snapshot: Path) -> str | None:
    """torch's CUDA build from its version.py, without importing torch."""
    for version_py in snapshot.glob("lib/python*/site-packages/torch/version.py"):
        text = read_regular(version_py, 1 << 16).decode("utf-8", errors="replace")
        m = re.search(r"^cuda(?:: [^=]+)? = ['\"]([^'\"]+)['\"]", text, re.M)
        return m.group(1) if m else "cpu"
    return None


def _ver(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])


def doctor(paths: VolumePaths, choice: RootChoice) -> DoctorReport:
    root = str(paths.root)
    problems: list[str] = []
    exists = reachable = True
    try:
        st = os.stat(root)
        exists = os.path.isdir(root) and bool(st)
    except FileNotFoundError:
        exists = False
        problems.append(f"volume root {root} does not exist (from {choice.source})")
    except OSError as exc:
        reachable = False
        problems.append(f"volume root {root} is unreachable: {exc.strerror}")
    mount, fstype = _mount_of(root if exists else os.path.dirname(root))
    free = total = None
    if exists and reachable:
        usage = shutil.disk_usage(root)
        free, total = usage.free, usage.total
    writable = exists and reachable and _writable(paths.root)
    if exists and reachable and not writable:
        problems.append(f"{root} is not writable: `run` works, `sync` and `gc` will not")
    leases: dict[str, str] = {}
    snaps: list[SnapshotHealth] = []
    gpu = gpu_info()
    log_path: str | None = None
    tail: tuple[str, ...] = ()
    failure: BuildFailure | None = None
    fixes: list[str] = []
    budget_text = os.environ.get("VOLENV_DOCTOR_BUDGET", "120")
    try:
        budget = float(budget_text)
    except ValueError:
        from volenv.base.errors import UsageError

        raise UsageError(f"VOLENV_DOCTOR_BUDGET: {budget_text!r} is not a number of seconds") from None
    deadline = time.monotonic() + budget
    if exists and reachable:
        from volenv.gc.leases import lease_holder
        from volenv.runpod.diagnose import _last_build_log

        for env in store.list_envs(paths):
            holder = lease_holder(paths, env)
            if holder:
                leases[env] = holder
            try:
                current = store.read_current(paths, env)
            except Exception as exc:
                problems.append(f"{env}: current pointer unreadable: {exc}")
                current = None
            for sid in store.list_snapshots(paths, env, problems):
                snap = paths.snapshot(env, sid)
                seal_state, interp = "valid", "matches"
                try:
                    seal = check_seal(str(snap), sid)
                except SealProblem as sp:
                    seal_state = f"{sp.kind}: {sp.detail}"
                    seal = {}
                    if sp.kind == "interpreter":
                        interp = sp.detail
                if seal:
                    interp = interpreter_problem(seal["fingerprint"]) or _same_python(seal["fingerprint"])
                tc = torch_cuda_of(snap)
                files = "-"
                if sid == current and seal_state == "valid":
                    files = _files_at_stat(paths, env, snap, deadline, problems, fixes)
                snaps.append(SnapshotHealth(env, sid, sid == current, seal_state, interp, tc, files))
                if sid == current and seal_state != "valid":
                    problems.append(f"{env}: current snapshot {sid} is damaged ({seal_state})")
                    fixes.append(_repair_fix(paths, env))
                if sid == current and tc and tc != "cpu" and gpu.cuda and _ver(tc) > _ver(gpu.cuda):
                    problems.append(
                        f"{env}: torch in {sid} needs CUDA {tc}, the driver supports up to {gpu.cuda}"
                    )
        lines, log_path = _last_build_log(root, None)
        tail = tuple(lines[-15:])
        failure = last_build_failure(paths)
    python = f"{sys.implementation.name} {sys.version.split()[0]} at {os.path.realpath(sys.executable)}"
    return DoctorReport(
        root,
        choice.source,
        exists,
        reachable,
        mount,
        fstype,
        writable,
        free,
        total,
        leases,
        tuple(snaps),
        gpu,
        python,
        log_path,
        tail,
        tuple(problems),
        failure,
        tuple(dict.fromkeys(fixes)),
    )


def _repair_fix(paths: VolumePaths, env: str) -> str:
    from volenv.store.rootfind import fix_command

    return fix_command(str(paths.root), "verify", env, "--repair")


def _files_at_stat(
    paths: VolumePaths, env: str, snap: Path, deadline: float, problems: list[str], fixes: list[str]
) -> str:
    """The current snapshot verified at `stat`, with a progress line and within the budget."""
    from volenv.base.ui import reporter
    from volenv.store.integrity import verify_snapshot

    if time.monotonic() > deadline:
        from volenv.store.rootfind import fix_command

        problems.append(f"{env}: {snap.name} was not checked at stat (the time budget ran out)")
        fixes.append(fix_command(str(paths.root), "verify", env, "--level", "stat"))
        return "not checked (time budget spent)"
    with reporter.step(f"verifying {snap.name} at stat"):
        report = verify_snapshot(snap, "stat", deadline=deadline)
    errors = report.errors
    incomplete = any(p.kind == "incomplete" for p in report.problems)
    if incomplete and not errors:
        from volenv.store.rootfind import fix_command

        problems.append(f"{env}: {snap.name} was only partly checked (the time budget ran out)")
        fixes.append(fix_command(str(paths.root), "verify", env, "--level", "stat"))
        return f"incomplete after {report.seconds:.0f} s"
    if not errors:
        return "ok"
    shown = ", ".join(f"{p.path} ({p.kind})" for p in errors[:5]) + (
        f" and {len(errors) - 5} more" if len(errors) > 5 else ""
    )
    problems.append(
        f"{env}: current snapshot {snap.name} is damaged: {len(errors)} file(s) differ from the record:"
        f" {shown}"
    )
    fixes.append(_repair_fix(paths, env))
    return f"{len(errors)} damaged"


def last_build_failure(paths: VolumePaths) -> BuildFailure | None:
    """The newest `build-failed` event of any env (resolve failures included); unreadable
    lines are skipped: events are a diagnostic aid, not a record anything depends on."""

    newest: BuildFailure | None = None
    for env in store.list_envs(paths):
        try:
            if not real_dir_below(paths.root, paths.env_logs(env)):  # a linked logs/<env>: not ours
                continue
            raw = read_regular(paths.events(env), 4 << 20, tail=True, one_name=True)
            text = raw.decode("utf-8", errors="replace")
        except OSError:
            continue
        for line in reversed(text.splitlines()):
            if '"build-failed"' not in line:
                continue
            try:
                ev = json_loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict) or ev.get("event") != "build-failed":
                continue
            t = ev.get("time")
            if not isinstance(t, int | float):
                continue
            if newest is None or t > newest.time:
                log, snap = ev.get("log"), ev.get("snapshot")
                newest = BuildFailure(
                    env,
                    float(t),
                    str(ev.get("error", "")),
                    log if isinstance(log, str) else None,
                    snap if isinstance(snap, str) else None,
                )
            break
    return newest


def _same_python(fp: dict[str, object]) -> str:
    here = os.path.realpath(sys.executable)
    if fp.get("executable") == here:
        return "matches this interpreter"
    return f"built for {fp.get('executable')} (present), this volenv runs on {here}"
