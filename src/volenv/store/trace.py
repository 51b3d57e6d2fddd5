"""Start traces: `volenv trace (--manifest M | --env E) -- CMD` runs CMD once inside the snapshot
and stores, as metadata of the snapshot, the files of the snapshot (and of the volume's models)
that the start opened, in first-use order, and the snapshot's directories it listed. Packing
puts those files first, in a startup pack of their own (packs.group_entries).

The snapshot is never modified to trace it: the hook is a `sitecustomize.py` in a private temp
dir put first on PYTHONPATH (volenv/start/_tracehook.py, audit hooks). The trace is stored as
`.volenv/trace.json`, outside the record like the seal and the build log, written temp + fsync +
rename (never edited in place), and bound to the seal: it names the record digest it was taken
against, and a trace whose record digest is not the seal's is ignored as stale. It decides only
the order in which recorded files are packed and extracted; every extracted byte is still
checked against the record, so a damaged or edited trace can slow a start, never change what
runs. It travels in the metadata pack (whose id the signed pack list names).

This module is the stored trace (read by packs and build); taking one is the `trace` command
(start/tracing.py), which sits above activation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volenv.base.errors import DamagedRecord
from volenv.store.sealcheck import META_DIR
from volenv.store.volio import has_type

TRACE_NAME = "trace.json"
TRACE_SCHEMA = 1  # `listed` and `hook` are optional keys: older readers ignore them
#: the trace hook's version: 2 records the bytecode of modules imported before it ran and the
#: shared libraries where they were loaded (a traced .py no longer stands for its .pyc)
HOOK_VERSION = 2
RETRACE = "trace the start again (`trace` with the manifest and the start command)"


@dataclass(frozen=True)
class Trace:
    """A stored start trace: snapshot-relative files and models-relative files, in use order,
    and the snapshot-relative directories the start listed (each entry of those is statted by
    the scan, so packing makes them local before exec too)."""

    snapshot: str
    record_sha256: str
    command: tuple[str, ...]
    files: tuple[str, ...]
    models: tuple[str, ...]
    created: float
    listed: tuple[str, ...] = ()
    hook: int = 1  # traces without the key came from the first hook

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": TRACE_SCHEMA,
            "snapshot": self.snapshot,
            "record_sha256": self.record_sha256,
            "command": list(self.command),
            "files": list(self.files),
            "models": list(self.models),
            "listed": list(self.listed),
            "hook": self.hook,
            "created": self.created,
        }


def trace_path(snapshot_dir: Path) -> Path:
    return snapshot_dir / META_DIR / TRACE_NAME


def rel_ok(rel: str) -> bool:
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
        return DamagedRecord(
            f"start trace {where} is damaged: {why}",
            hint=RETRACE,
        )

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
    for key in ("command", "files", "models", "listed"):
        v = data.get(key, [] if key == "listed" else None)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise bad(f"{key!r} is not a list of strings")
        lists[key] = tuple(v)
    for key in ("files", "models", "listed"):
        for rel in lists[key]:
            if not rel_ok(rel):
                raise bad(f"{key} holds {rel!r}, not a relative path")
        if len(set(lists[key])) != len(lists[key]):
            raise bad(f"{key} lists a path twice")
    created: Any = data.get("created")
    if not has_type(created, (int, float)):
        raise bad("'created' is not a number")
    hook: Any = data.get("hook", 1)
    if not has_type(hook, int) or hook < 1:
        raise bad("'hook' is not a positive integer")
    return Trace(
        data["snapshot"],
        data["record_sha256"],
        lists["command"],
        lists["files"],
        lists["models"],
        float(created),
        lists["listed"],
        hook,
    )


def load_trace(snapshot_dir: Path, seal: dict[str, Any]) -> Trace | None:
    """The snapshot's trace, or None when it has none or it was taken against another record."""
    import json
    import os
    import stat

    path = trace_path(snapshot_dir)
    try:  # never through a link, never blocking on a FIFO planted there
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DamagedRecord(
            f"start trace {path} is damaged: {exc.strerror}",
            hint=RETRACE,
        ) from None
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DamagedRecord(
                f"start trace {path} is damaged: not a regular file",
                hint=RETRACE,
            )
        raw = fh.read()
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # deep nesting is damage too, never a traceback
        raise DamagedRecord(
            f"start trace {path} is damaged: {exc}",
            hint=RETRACE,
        ) from None
    trace = parse_trace(data, str(path))
    if trace.snapshot != snapshot_dir.name or trace.record_sha256 != seal.get("record_sha256"):
        return None  # taken against another record (e.g. before `verify --repair` re-sealed it)
    return trace
