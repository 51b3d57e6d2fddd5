"""Start traces: `volenv trace (--manifest M | --env E) -- CMD` runs CMD once inside the snapshot
and stores, as metadata of the snapshot, the files of the snapshot (and of the volume's models)
that the start opened, in first-use order. Packing puts those files first, in a startup pack
of their own (packs.group_entries).

The snapshot is never modified to trace it: the hook is a `sitecustomize.py` in a private temp
dir put first on PYTHONPATH (volenv/_tracehook.py, audit hooks). The trace is stored as
`.volenv/trace.json`, outside the record like the seal and the build log, written temp + fsync +
rename (never edited in place), and bound to the seal: it names the record digest it was taken
against, and a trace whose record digest is not the seal's is ignored as stale. It decides only
the order in which recorded files are packed and extracted; every extracted byte is still
checked against the record, so a damaged or edited trace can slow a start, never change what
runs. It travels in the metadata pack (whose id the signed pack list names).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BuildError, DamagedRecord, UsageError
from .fsutil import atomic_write_json, has_type
from .integrity import Entry, load_record
from .sealcheck import META_DIR, SealProblem, check_seal

TRACE_NAME = "trace.json"
TRACE_SCHEMA = 1
_HOOK = Path(__file__).with_name("_tracehook.py")


@dataclass(frozen=True)
class Trace:
    """A stored start trace: snapshot-relative files and models-relative files, in use order."""

    snapshot: str
    record_sha256: str
    command: tuple[str, ...]
    files: tuple[str, ...]
    models: tuple[str, ...]
    created: float

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": TRACE_SCHEMA,
            "snapshot": self.snapshot,
            "record_sha256": self.record_sha256,
            "command": list(self.command),
            "files": list(self.files),
            "models": list(self.models),
            "created": self.created,
        }


@dataclass(frozen=True)
class TraceResult:
    snapshot: str
    trace: str
    files: int
    bytes: int
    models: int
    snapshot_files: int
    snapshot_bytes: int
    repacked: bool


def trace_path(snapshot_dir: Path) -> Path:
    return snapshot_dir / META_DIR / TRACE_NAME


def _rel_ok(rel: str) -> bool:
    parts = rel.split("/")
    return (
        bool(rel)
        and not rel.startswith("/")
        and "\0" not in rel
        and all(p not in ("", ".", "..") for p in parts)
    )


def parse_trace(data: Any, where: str) -> Trace:
    """Strict: every field checked; a bad trace is an error (exit 4), never a default."""

    def bad(why: str) -> DamagedRecord:
        return DamagedRecord(f"start trace {where} is damaged: {why}", hint="run `volenv trace` again")

    if not isinstance(data, dict):
        raise bad("not a JSON object")
    schema: Any = data.get("schema")
    if not has_type(schema, int) or schema < 1:
        raise bad("no integer 'schema'")
    if schema > TRACE_SCHEMA:
        raise DamagedRecord(
            f"start trace {where} has schema {schema}, newer than this volenv ({TRACE_SCHEMA})"
        )
    for key in ("snapshot", "record_sha256"):
        if not isinstance(data.get(key), str):
            raise bad(f"{key!r} is not a string")
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("command", "files", "models"):
        v = data.get(key)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise bad(f"{key!r} is not a list of strings")
        lists[key] = tuple(v)
    for key in ("files", "models"):
        for rel in lists[key]:
            if not _rel_ok(rel):
                raise bad(f"{key} holds {rel!r}, not a relative path")
        if len(set(lists[key])) != len(lists[key]):
            raise bad(f"{key} lists a path twice")
    created: Any = data.get("created")
    if not has_type(created, (int, float)):
        raise bad("'created' is not a number")
    return Trace(
        data["snapshot"],
        data["record_sha256"],
        lists["command"],
        lists["files"],
        lists["models"],
        float(created),
    )


def load_trace(snapshot_dir: Path, seal: dict[str, Any]) -> Trace | None:
    """The snapshot's trace, or None when it has none or it was taken against another record."""
    import json

    path = trace_path(snapshot_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise DamagedRecord(
            f"start trace {path} is damaged: {exc}", hint="run `volenv trace` again"
        ) from None
    trace = parse_trace(data, str(path))
    if trace.snapshot != snapshot_dir.name or trace.record_sha256 != seal.get("record_sha256"):
        return None  # taken against another record (e.g. before `verify --repair` re-sealed it)
    return trace


# ---------------------------------------------------------------- taking a trace


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
) -> tuple[list[str], list[str]]:
    """Opened paths -> (recorded snapshot files, model files), first use first, each once."""
    snap_prefixes = {os.path.join(str(snapshot_dir), ""), os.path.join(os.path.realpath(snapshot_dir), "")}
    model_prefixes = {os.path.join(str(models_dir), ""), os.path.join(os.path.realpath(models_dir), "")}
    files: list[str] = []
    models: list[str] = []
    seen: set[str] = set()
    for line in lines:
        p = line.rstrip("\n")
        if not p or p in seen:
            continue
        seen.add(p)
        for pre in snap_prefixes:
            if p.startswith(pre):
                rel = p[len(pre) :]
                e = record.get(rel)
                if e is not None and e.type == "f" and rel not in files:
                    files.append(rel)
                break
        else:
            for pre in model_prefixes:
                if p.startswith(pre):
                    rel = p[len(pre) :]
                    if _rel_ok(rel) and os.path.isfile(p) and rel not in models:
                        models.append(rel)
                    break
    return files, models


def take_trace(root: str, argv: list[str]) -> tuple[Path, dict[str, Any], Trace]:
    """Run the command in the snapshot with the hook; return the snapshot, its seal, the trace."""
    from .activate import compute_env, parse_run_args, prepare

    o = parse_run_args(argv)
    if o.materialize != "never":
        raise UsageError("trace: --materialize does not apply (a trace runs the snapshot in place)")
    target, snap, seal = prepare(root, o)
    snap_dir = Path(snap)
    models_dir = Path(root) / "models"
    record = load_record(snap_dir)
    env = compute_env(root, snap, target.env, target.activation)
    hook = hook_dir()
    try:
        out = hook / "trace.txt"
        env = trace_env(env, hook, out, [snap, str(models_dir)])
        cmd = list(o.command)
        own = os.path.join(snap, "bin", cmd[0])
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
    files, models = relativize(lines, snap_dir, models_dir, record)
    from .redact import redact_text

    trace = Trace(
        snap_dir.name,
        str(seal["record_sha256"]),
        tuple(redact_text(a) for a in o.command),
        tuple(files),
        tuple(models),
        time.time(),
    )
    return snap_dir, seal, trace


def store_trace(snapshot_dir: Path, trace: Trace) -> None:
    """Temp + fsync + rename into .volenv; the seal is re-checked first so a trace is only ever
    stored beside the record it was taken against."""
    try:
        seal = check_seal(str(snapshot_dir), snapshot_dir.name)
    except SealProblem as sp:
        raise DamagedRecord(f"cannot store the trace of {snapshot_dir.name}: {sp.detail}") from None
    if seal["record_sha256"] != trace.record_sha256:
        raise DamagedRecord(f"{snapshot_dir.name} was re-sealed while it was traced; trace it again")
    atomic_write_json(trace_path(snapshot_dir), trace.to_json())


def run_trace(root: str, argv: list[str]) -> TraceResult:
    """`volenv trace`: take, store, and (when the snapshot is packed) re-pack with its startup pack."""
    from .packs import manifest_path, pack_snapshot
    from .paths import VolumePaths

    snap_dir, _seal, trace = take_trace(root, argv)
    store_trace(snap_dir, trace)
    paths = VolumePaths(Path(root))
    repacked = False
    if manifest_path(paths, snap_dir.name).exists():
        pack_snapshot(paths, snap_dir)
        repacked = True
    record = load_record(snap_dir)
    return TraceResult(
        snapshot=snap_dir.name,
        trace=str(trace_path(snap_dir)),
        files=len(trace.files),
        bytes=sum(record[f].size for f in trace.files),
        models=len(trace.models),
        snapshot_files=sum(1 for e in record.values() if e.type == "f"),
        snapshot_bytes=sum(e.size for e in record.values() if e.type == "f"),
        repacked=repacked,
    )
