"""`volenv trace (--manifest M | --env E) -- CMD`: run CMD once inside the snapshot under the
audit-hook sitecustomize and store the files its start opened (`start.tracing`); a packed
snapshot is re-packed with its startup pack."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from volenv.base.errors import UsageError
from volenv.start.activation import compute_env
from volenv.start.run import parse_run_args, prepare
from volenv.start.tracing import keep_trace, take_trace
from volenv.store.integrity import load_record
from volenv.store.trace import trace_path


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


def run_trace(root: str, argv: list[str]) -> TraceResult:
    """`volenv trace`: take, store, and (when the snapshot is packed) re-pack with its startup pack."""
    o = parse_run_args(argv, "trace")
    # refused when given: VOLENV_MATERIALIZE, set for the workers' `run`, is no reason to fail
    if o.materialize not in ("never", os.environ.get("VOLENV_MATERIALIZE", "never")):
        raise UsageError("trace: --materialize does not apply (a trace runs the snapshot in place)")
    target, snap, seal = prepare(root, o)
    snap_dir = Path(snap)
    env = compute_env(root, snap, target.env, target.activation)
    trace = take_trace(root, snap_dir, seal, env, list(o.command))
    repacked = keep_trace(root, snap_dir, seal, trace)
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
