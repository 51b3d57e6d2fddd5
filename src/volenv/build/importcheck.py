"""The import check: every top-level module of every installed distribution imported once in
the snapshot's own interpreter, in worker processes under a time budget. What `pip check` is to
metadata, this is to loading: a missing shared library (torchcodec 0.17's `libnvrtc.so.13`
beside torch's CUDA 12.8), an extension built for another ABI, shows at build time (or in
`volenv verify --imports`), not in the worker's first job."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from volenv.base.errors import UsageError
from volenv.build.venv import activation_env_for_build, site_packages_dirs
from volenv.store.volio import read_regular

#: top-level names that are a project's own scaffolding, never an importable API
SKIP = frozenset({"tests", "test", "testing", "docs", "doc", "examples", "benchmarks", "setup", "conftest"})
DEFAULT_BUDGET = 600.0  # seconds for the whole check (VOLENV_IMPORT_CHECK_BUDGET)
MODULE_TIMEOUT = 120.0  # one module's import at most

# Runs in the snapshot's interpreter: imports the modules named on stdin (JSON), one result line
# each on a private copy of stdout (the modules' own prints go to stderr with the rest).
_DRIVER = r"""
import importlib, json, os, sys
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr
for m in json.loads(sys.stdin.read()):
    out.write(json.dumps({"start": m}) + "\n"); out.flush()
    try:
        importlib.import_module(m)
        err = None
    except BaseException as e:
        err = " ".join(f"{type(e).__name__}: {e}".split())[:800]  # a multi-line reason, on one line
    out.write(json.dumps({"module": m, "error": err}) + "\n"); out.flush()
"""


@dataclass(frozen=True)
class ImportFailure:
    distribution: str
    module: str
    error: str
    required: bool


@dataclass(frozen=True)
class ImportReport:
    checked: int
    seconds: float
    failures: tuple[ImportFailure, ...] = ()
    unchecked: tuple[str, ...] = ()  # modules the time budget did not reach
    distributions: int = 0
    ignored: tuple[str, ...] = ()  # [check] ignore: modules the manifest says are never imported

    @property
    def required_failures(self) -> tuple[ImportFailure, ...]:
        return tuple(f for f in self.failures if f.required)

    def to_data(self) -> dict[str, object]:
        return {
            "checked": self.checked,
            "distributions": self.distributions,
            "seconds": round(self.seconds, 2),
            "failures": [asdict(f) for f in self.failures],
            "unchecked": list(self.unchecked),
            "ignored": list(self.ignored),
        }

    def summary(self) -> str:
        line = f"import check: {self.checked} modules of {self.distributions} distributions"
        line += f" in {self.seconds:.1f} s"
        if self.failures:
            line += f"; {len(self.failures)} failed"
        if self.unchecked:
            line += f"; {len(self.unchecked)} not reached within the time budget"
        if self.ignored:
            line += f"; {len(self.ignored)} ignored ([check] ignore)"
        return line

    def log_lines(self) -> list[str]:
        lines = [f"# {self.summary()}"]
        lines += [
            f"#   {f.module} ({f.distribution}{'' if f.required else ', optional'}): {f.error}"
            for f in self.failures
        ]
        if self.unchecked:
            lines.append(f"#   not reached: {', '.join(self.unchecked)}")
        return lines


def budget_from_env() -> float:
    raw = os.environ.get("VOLENV_IMPORT_CHECK_BUDGET", "").strip()
    if not raw:
        return DEFAULT_BUDGET
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UsageError(f"VOLENV_IMPORT_CHECK_BUDGET={raw!r} is not a positive number of seconds")
    return value


def top_level_modules(venv: Path) -> dict[str, list[str]]:
    """distribution name -> the modules it puts at the top of site-packages, from its RECORD
    (top_level.txt names a namespace like `google` or `nvidia` that checks nothing): a
    package with `__init__.py`, a module file, an extension; below a namespace folder, its
    packages (`nvidia.cublas`)."""
    out: dict[str, list[str]] = {}
    for sp in site_packages_dirs(venv):
        for name in sorted(os.listdir(sp)):
            if not name.endswith(".dist-info"):
                continue
            dist = name[: -len(".dist-info")].rsplit("-", 1)[0]
            try:
                text = read_regular(os.path.join(sp, name, "RECORD"), 256 << 20).decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            rows = [line.split(",", 1)[0] for line in text.splitlines()]
            mods = _modules_of(rows)
            if mods:
                out[dist] = mods
    return out


def _modules_of(paths: Iterable[str]) -> list[str]:
    inits: set[tuple[str, ...]] = set()
    files: set[str] = set()
    for p in paths:
        parts = tuple(p.strip().split("/"))
        if not parts or parts[0] in ("", "..") or parts[0].endswith((".dist-info", ".data")):
            continue
        if parts[-1] == "__init__.py":
            inits.add(parts[:-1])
        elif len(parts) == 1:
            files.add(parts[0])
    mods: set[str] = set()
    for f in files:
        stem = f.split(".")[0]
        if f.endswith(".py") or (f.endswith(".so") and "." in f):
            mods.add(stem)
    tops = {p[0] for p in inits if len(p) >= 1}
    for top in tops:
        if (top,) in inits:
            mods.add(top)
    for pkg in inits:  # namespace folders: their first real packages
        if len(pkg) == 2 and (pkg[0],) not in inits:
            mods.add(".".join(pkg))
    return sorted(m for m in mods if all(p.isidentifier() for p in m.split(".")) and m not in SKIP)


def _names(lines: Iterable[str]) -> set[str]:
    from packaging.utils import canonicalize_name

    out = set()
    for line in lines:
        head = line.split(";")[0].split(" @ ")[0].split("==")[0].split("[")[0].strip()
        if head:
            out.add(str(canonicalize_name(head)))
    return out


def check_imports(
    venv: Path,
    python: Path,
    *,
    required_lines: Iterable[str] = (),
    optional_lines: Iterable[str] = (),
    env_extra: dict[str, str] | None = None,
    budget: float | None = None,
    ignore: Iterable[str] = (),
) -> ImportReport:
    """Import everything, in up to 4 worker processes (distributions dealt round-robin); a
    module that hangs past MODULE_TIMEOUT or kills its worker is a failure and the worker is
    restarted with the rest. Distributions only an optional group brought are `required=False`."""
    from packaging.utils import canonicalize_name

    t0 = time.perf_counter()
    budget = budget_from_env() if budget is None else budget
    by_dist = top_level_modules(venv)
    skip = {str(canonicalize_name(n)) for n in ignore} | set(ignore)
    ignored = sorted(
        m for d, mods in by_dist.items() for m in mods if m in skip or str(canonicalize_name(d)) in skip
    )
    by_dist = {d: [m for m in mods if m not in ignored] for d, mods in by_dist.items()}
    by_dist = {d: mods for d, mods in by_dist.items() if mods}
    optional_only = _names(optional_lines) - _names(required_lines)
    owner = {m: d for d, mods in by_dist.items() for m in mods}
    workers = max(1, min(4, os.cpu_count() or 1, len(by_dist)))
    shares: list[list[str]] = [[] for _ in range(workers)]
    for i, dist in enumerate(sorted(by_dist)):
        shares[i % workers].extend(by_dist[dist])
    env = activation_env_for_build(venv)
    env.update(env_extra or {})
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the check leaves the snapshot as it found it
    results: dict[str, str | None] = {}
    unchecked: list[str] = []
    deadline = t0 + budget
    _run_all(python, env, [s for s in shares if s], results, unchecked, deadline)
    failures = tuple(
        ImportFailure(owner[m], m, err, str(canonicalize_name(owner[m])) not in optional_only)
        for m, err in sorted(results.items())
        if err is not None
    )
    return ImportReport(
        checked=len(results),
        seconds=time.perf_counter() - t0,
        failures=failures,
        unchecked=tuple(sorted(unchecked)),
        distributions=len(by_dist),
        ignored=tuple(ignored),
    )


@dataclass
class _Worker:
    todo: list[str]
    proc: subprocess.Popen[bytes] | None = None
    current: str | None = None
    since: float = 0.0
    buf: bytes = b""
    done: set[str] = field(default_factory=set)


def _start(python: Path, env: dict[str, str], w: _Worker) -> None:
    w.proc = subprocess.Popen(
        [str(python), "-c", _DRIVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    assert w.proc.stdin is not None
    w.proc.stdin.write(json.dumps(w.todo).encode())
    w.proc.stdin.close()
    w.current, w.since, w.buf = None, time.perf_counter(), b""


def _kill(w: _Worker) -> None:
    if w.proc is not None and w.proc.poll() is None:
        try:
            os.killpg(w.proc.pid, 9)
        except OSError:
            w.proc.kill()
    if w.proc is not None:
        w.proc.wait()
        if w.proc.stdout is not None:
            w.proc.stdout.close()


def _run_all(
    python: Path,
    env: dict[str, str],
    shares: list[list[str]],
    results: dict[str, str | None],
    unchecked: list[str],
    deadline: float,
) -> None:
    sel = selectors.DefaultSelector()
    live: list[_Worker] = []
    for share in shares:
        w = _Worker(list(share))
        _start(python, env, w)
        assert w.proc is not None and w.proc.stdout is not None
        sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        live.append(w)
    try:
        while live:
            now = time.perf_counter()
            for w in list(live):  # a module that hangs: a failure, the rest in a fresh worker
                if w.current is None:
                    continue
                if now >= deadline:
                    unchecked.append(w.current)
                elif now - w.since > MODULE_TIMEOUT:
                    results[w.current] = f"the import did not finish in {MODULE_TIMEOUT:.0f} s"
                else:
                    continue
                _restart(python, env, w, sel, live, results, unchecked, deadline, skip=w.current)
            for key, _ in sel.select(timeout=0.5):
                w = key.data
                assert w.proc is not None and w.proc.stdout is not None
                chunk = os.read(w.proc.stdout.fileno(), 65536)
                if not chunk:  # the worker exited: finished, or killed by the module it imported
                    code = w.proc.wait()
                    if w.current is not None:
                        results[w.current] = f"the interpreter exited while importing it (status {code})"
                        _restart(python, env, w, sel, live, results, unchecked, deadline, skip=w.current)
                    else:
                        sel.unregister(w.proc.stdout)
                        w.proc.stdout.close()
                        live.remove(w)
                        unchecked.extend(m for m in w.todo if m not in w.done and m not in results)
                    continue
                w.buf += chunk
                *lines, w.buf = w.buf.split(b"\n")
                for line in lines:
                    msg = json.loads(line)
                    if "start" in msg:
                        w.current, w.since = msg["start"], time.perf_counter()
                    else:
                        results[msg["module"]] = msg["error"]
                        w.done.add(msg["module"])
                        w.current = None
    finally:
        for w in live:
            _kill(w)
        sel.close()


def _restart(
    python: Path,
    env: dict[str, str],
    w: _Worker,
    sel: selectors.BaseSelector,
    live: list[_Worker],
    results: dict[str, str | None],
    unchecked: list[str],
    deadline: float,
    *,
    skip: str,
) -> None:
    assert w.proc is not None and w.proc.stdout is not None
    sel.unregister(w.proc.stdout)
    _kill(w)
    w.done.add(skip)
    rest = [m for m in w.todo if m not in w.done and m not in results]
    live.remove(w)
    if not rest:
        return
    if time.perf_counter() >= deadline:
        unchecked.extend(rest)
        return
    fresh = _Worker(rest)
    _start(python, env, fresh)
    assert fresh.proc is not None and fresh.proc.stdout is not None
    sel.register(fresh.proc.stdout, selectors.EVENT_READ, fresh)
    live.append(fresh)
