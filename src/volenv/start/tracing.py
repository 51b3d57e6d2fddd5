"""Taking a start trace: run a command once inside a snapshot under the audit-hook sitecustomize
(`_tracehook.py`), and store the files its start opened as the snapshot's sealed metadata (see
`store.trace` for the stored form). Both `volenv trace` and `sync`'s `[activate] trace-cmd` use it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from volenv.base.errors import BuildError, DamagedRecord, UsageError
from volenv.base.ui import reporter
from volenv.store.integrity import Entry, load_record
from volenv.store.sealcheck import SealProblem, check_seal
from volenv.store.trace import HOOK_VERSION, Trace, load_trace, rel_ok, trace_path
from volenv.store.volio import atomic_write_json

_HOOK = Path(__file__).parent / "_tracehook.py"


def hook_dir() -> Path:
    """A private temp dir holding only the tracing sitecustomize.py."""
    d = Path(tempfile.mkdtemp(prefix="volenv-trace-"))
    shutil.copyfile(_HOOK, d / "sitecustomize.py")
    return d


def trace_env(env: dict[str, str], hook: Path, out: Path, roots: list[str]) -> dict[str, str]:
    env = dict(env)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([str(hook), *([old] if old else [])])
    env["VOLENV_TRACE_OUT"] = str(out)
    env["VOLENV_TRACE_ROOTS"] = os.pathsep.join(roots)
    return env


def relativize(
    lines: list[str], snapshot_dir: Path, models_dir: Path, record: dict[str, Entry]
) -> tuple[list[str], list[str], list[str]]:
    """The hook's lines -> (recorded snapshot files, model files, recorded snapshot
    directories the start listed or searched: opened a name that is not there, as
    importlib.metadata does for each distribution's entry_points.txt), first use first, each
    once."""
    snap_prefixes = {os.path.join(str(snapshot_dir), ""), os.path.join(os.path.realpath(snapshot_dir), "")}
    model_prefixes = {os.path.join(str(models_dir), ""), os.path.join(os.path.realpath(models_dir), "")}
    files: dict[str, None] = {}  # ordered sets: a trace can hold many thousands of paths
    models: dict[str, None] = {}
    listed: dict[str, None] = {}
    seen: set[str] = set()
    for line in lines:
        p = line.rstrip("\n")
        if not p or p in seen:
            continue
        seen.add(p)
        if p.startswith("L/"):
            d = os.path.join(p[1:], "")
            for pre in snap_prefixes:
                if d.startswith(pre):
                    rel = d[len(pre) :].rstrip("/")
                    e = record.get(rel)
                    if e is not None and e.type == "d":
                        listed.setdefault(rel)
                    break
            continue
        for pre in snap_prefixes:
            if p.startswith(pre):
                rel = p[len(pre) :]
                e = record.get(rel)
                if e is not None and e.type == "f":
                    files.setdefault(rel)
                elif e is None:  # looked for and not there: its directory was searched
                    d = rel.rpartition("/")[0]
                    parent = record.get(d)
                    if parent is not None and parent.type == "d":
                        listed.setdefault(d)
                break
        else:
            for pre in model_prefixes:
                if p.startswith(pre):
                    rel = p[len(pre) :]
                    if rel_ok(rel) and os.path.isfile(p):
                        models.setdefault(rel)
                    break
    return list(files), list(models), list(listed)


def take_trace(
    root: str, snapshot_dir: Path, seal: dict[str, Any], env: dict[str, str], command: list[str]
) -> Trace:
    """Run the command in the (verified) snapshot with the hook, in the activation environment
    `env`; the files its start opened, as a Trace of that snapshot's record."""
    models_dir = Path(root) / "models"
    record = load_record(snapshot_dir)
    hook = hook_dir()
    try:
        out = hook / "trace.txt"
        env = trace_env(env, hook, out, [str(snapshot_dir), str(models_dir)])
        cmd = list(command)
        own = os.path.join(snapshot_dir, "bin", cmd[0])
        if os.sep not in cmd[0] and os.path.exists(own):
            cmd[0] = own
        try:
            # the command's stdout goes to stderr: stdout carries only volenv's result
            proc = subprocess.run(cmd, env=env, stdout=2, check=False)
        except OSError as exc:
            raise UsageError(f"cannot run {cmd[0]!r}: {exc.strerror}") from exc
        if proc.returncode != 0:
            raise BuildError(
                f"the traced command exited with {proc.returncode}; no trace stored",
                step="trace",
                hint="a trace records a successful start: fix the command, then trace again",
            )
        lines = out.read_text("utf-8", "surrogateescape").splitlines() if out.exists() else []
    finally:
        shutil.rmtree(hook, ignore_errors=True)
    files, models, listed = relativize(lines, snapshot_dir, models_dir, record)
    from volenv.base.redact import redact_text

    return Trace(
        snapshot_dir.name,
        str(seal["record_sha256"]),
        tuple(redact_text(a) for a in command),
        tuple(files),
        tuple(models),
        time.time(),
        tuple(listed),
        HOOK_VERSION,
    )


def store_trace(snapshot_dir: Path, trace: Trace, root: Path) -> None:
    """Temp + fsync + rename into .volenv; the seal is re-checked first so a trace is only ever
    stored beside the record it was taken against."""
    try:
        seal = check_seal(str(snapshot_dir), snapshot_dir.name)
    except SealProblem as sp:
        raise DamagedRecord(f"cannot store the trace of {snapshot_dir.name}: {sp.detail}") from None
    if seal["record_sha256"] != trace.record_sha256:
        raise DamagedRecord(f"{snapshot_dir.name} was re-sealed while it was traced; trace it again")
    # the snapshot's .volenv reached without a link from the root (a linked one is refused)
    atomic_write_json(trace_path(snapshot_dir), trace.to_json(), root=root)


def _stored_files(snapshot_dir: Path, seal: dict[str, Any]) -> int | None:
    """How many files the trace a new one replaces recorded (None: none usable is stored)."""
    try:
        old = load_trace(snapshot_dir, seal)
    except DamagedRecord:
        return None  # a damaged trace is what a new one repairs
    return None if old is None else len(old.files)


def keep_trace(root: str, snapshot_dir: Path, seal: dict[str, Any], trace: Trace) -> bool:
    """Store the trace, and re-pack a packed snapshot so that its startup pack follows it.
    Returns whether it re-packed."""
    from volenv.store.packformat import manifest_path
    from volenv.store.packwrite import pack_snapshot
    from volenv.store.paths import VolumePaths

    replaced = _stored_files(snapshot_dir, seal)
    store_trace(snapshot_dir, trace, Path(root))
    if replaced is not None and len(trace.files) < replaced / 2:
        # stored all the same (the user asked for it), but a `python -c pass` by mistake would
        # quietly empty the startup pack of a snapshot whose real start was traced
        reporter.warn(
            f"this trace recorded {len(trace.files)} files, the one it replaces {replaced}: the startup "
            "pack shrinks accordingly; trace the real start again if this was not it"
        )
    paths = VolumePaths(Path(root))
    if manifest_path(paths, snapshot_dir.name).exists():
        pack_snapshot(paths, snapshot_dir)
        return True
    return False
