"""The store on the volume: format file, index, current pointer, generations, use and pin marks.

Every pointer is a small versioned JSON record written temp + fsync + rename.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volenv import __version__
from volenv.base.errors import DamagedRecord, VolumeError, from_oserror, shq
from volenv.base.leanjson import NOT_A_RECORD
from volenv.base.leanjson import loads as json_loads  # RecursionError is ValueError there
from volenv.base.redact import redact_obj
from volenv.store.paths import FORMAT_VERSION, VolumePaths
from volenv.store.rootfind import root_exists
from volenv.store.sealcheck import is_record_time, rollback_problem
from volenv.store.sealcheck import is_snapshot_id as is_snapshot_id  # re-exported for the commands
from volenv.store.volio import (
    ContainmentError,
    append_line,
    assert_real_parents,
    atomic_write_json,
    create_once_bytes,
    dumps_json,
    has_type,
    read_record,
    read_regular,
    safe_mkdirs,
    write_cachedir_tag,
)

POINTER_SCHEMA = 1
HISTORY_SCHEMA = 1


def open_volume(paths: VolumePaths, *, create: bool) -> None:
    """Check (and with create=True, make) the root and its layout; refuse a newer format."""
    root = paths.root
    if not root_exists(str(root)):
        if not create:
            raise VolumeError(
                f"volume root {root} does not exist",
                hint=f"build something first: volenv --root {shq(root)} sync MANIFEST",
            )
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise from_oserror(exc, f"cannot create volume root {root}") from exc
    if create and not paths.meta.exists():
        try:
            create_once_bytes(
                paths.meta,
                dumps_json(
                    {
                        "schema": 1,
                        "format": FORMAT_VERSION,
                        "created_by": f"volenv {__version__}",
                        "created": time.time(),
                    }
                ),
            )
        except OSError as exc:
            raise from_oserror(exc, f"cannot initialise volume root {root}") from exc
    try:
        meta = read_record(paths.meta, "volume format file", FORMAT_VERSION)
    except FileNotFoundError:
        meta = None
    if meta is not None:
        fmt = meta.get("format")
        if not isinstance(fmt, int):
            raise DamagedRecord(f"{paths.meta} is damaged: no integer 'format'")
        if fmt > FORMAT_VERSION:
            raise VolumeError(
                f"{root} uses volume format {fmt}; this volenv understands format {FORMAT_VERSION}",
                hint="upgrade volenv in this image",
            )
    if create:
        try:
            for d in paths.top_dirs():
                safe_mkdirs(d, paths.root)  # a planted link in the layout is refused, not used
            for d in (paths.root / "cache", paths.staging, paths.trash, paths.logs):
                write_cachedir_tag(d)
        except OSError as exc:
            raise from_oserror(exc, f"cannot create the layout under {root}") from exc


def ensure_env_dirs(paths: VolumePaths, env: str) -> None:
    base = paths.env_dir(env)
    for sub in ("snapshots", "index", "used", "pins"):
        safe_mkdirs(base / sub, paths.root)
    safe_mkdirs(paths.env_logs(env), paths.root)


# ---------------------------------------------------------------- pointers


def _read_pointer(path: Path, kind: str, env: str, hint: str) -> str | None:
    try:
        rec = read_record(path, kind, POINTER_SCHEMA, {"snapshot": str})
    except FileNotFoundError:
        return None
    except DamagedRecord as exc:
        exc.hint = exc.hint or hint
        raise
    snap = str(rec["snapshot"])
    if not is_snapshot_id(snap, env):
        raise DamagedRecord(f"{kind} {path} is damaged: {snap!r} is not a snapshot id of '{env}'", hint=hint)
    return snap


def read_index(paths: VolumePaths, env: str, manifest_digest: str) -> str | None:
    path = paths.index_entry(env, manifest_digest)
    return _read_pointer(path, "index entry", env, f"syncing its manifest again writes {path} again")


def write_index(
    paths: VolumePaths,
    env: str,
    manifest_digest: str,
    snapshot_id: str,
    manifest_path: str | None = None,
    manifest_id: str | None = None,
) -> None:
    """`manifest_path` (where the manifest was read) is for people: show and rollback name it.
    It and `manifest_id` (the manifest's `id`) say which manifest the entry is of: gc keeps each
    manifest's newest entry's snapshot."""
    rec: dict[str, Any] = {"schema": POINTER_SCHEMA, "snapshot": snapshot_id, "time": time.time()}
    if manifest_path is not None:
        rec["manifest_path"] = manifest_path
    if manifest_id is not None:
        rec["manifest_id"] = manifest_id
    atomic_write_json(paths.index_entry(env, manifest_digest), rec, root=paths.root)


@dataclass(frozen=True)
class IndexEntry:
    manifest_digest: str
    snapshot: str
    manifest_path: str | None  # None in entries written before volenv recorded it
    time: float = 0.0  # when the entry was written (its "time", else the file's mtime)
    manifest_id: str | None = None  # the manifest's `id`, when it declares one


def list_index(paths: VolumePaths, env: str) -> list[IndexEntry]:
    """Every readable index entry of an env (a damaged one is skipped: it only caches a
    resolution, and the next sync of its manifest writes it again)."""
    try:
        names = sorted(os.listdir(paths.env_dir(env) / "index"))
    except OSError:
        return []
    out = []
    for name in names:
        if name.startswith("."):
            continue
        try:
            rec = read_record(paths.index_entry(env, name), "index entry", POINTER_SCHEMA, {"snapshot": str})
        except (OSError, DamagedRecord, VolumeError):
            continue
        where = rec.get("manifest_path")
        stamp = rec.get("time")
        ok = isinstance(stamp, int | float) and not isinstance(stamp, bool) and is_record_time(stamp)
        written = float(stamp) if ok else 0.0  # type: ignore[arg-type]
        if not written:
            try:
                written = paths.index_entry(env, name).stat().st_mtime
            except OSError:
                pass
        ident = rec.get("manifest_id")
        if is_snapshot_id(rec["snapshot"], env):
            out.append(
                IndexEntry(
                    name,
                    rec["snapshot"],
                    where if isinstance(where, str) else None,
                    written,
                    ident if isinstance(ident, str) else None,
                )
            )
    return out


#: `sync --from-env` reads its manifest from a fresh temp folder of this prefix each time
#: (runpod/provision.py's read_inline_manifest): every such path is one manifest, "provisioned"
INLINE_DIR_PREFIX = "volenv-inline-"


def manifest_key(entry: IndexEntry) -> str:
    """Which manifest an index entry is of, for "a manifest's current snapshot": its `id` when
    it declares one (wherever it was read), else its path; the temp files of provisioning pods
    count as one manifest per env, and so do the entries written before volenv recorded paths."""
    if entry.manifest_id is not None:
        return f"id {entry.manifest_id!r}"
    if entry.manifest_path is None:
        return "(manifest path not recorded)"
    if os.path.basename(os.path.dirname(entry.manifest_path)).startswith(INLINE_DIR_PREFIX):
        return "(provisioned: sync --from-env)"
    return entry.manifest_path


def manifest_label(entry: IndexEntry) -> str:
    """The manifest an entry is of, for people: its path, and its id when it declares one."""
    key = manifest_key(entry)
    return f"{entry.manifest_path} ({key})" if entry.manifest_id and entry.manifest_path else key


def live_index_entries(paths: VolumePaths, env: str) -> list[IndexEntry]:
    """Each manifest's newest index entry: the snapshot `run --manifest` of that manifest, as
    the file is now, activates. A manifest edited in place leaves one entry per content; only
    the newest is that manifest's current snapshot (gc keeps those: roots)."""
    newest: dict[str, IndexEntry] = {}
    for entry in list_index(paths, env):
        key = manifest_key(entry)
        if key not in newest or entry.time >= newest[key].time:
            newest[key] = entry
    return [newest[k] for k in sorted(newest)]


def read_current(paths: VolumePaths, env: str) -> str | None:
    try:
        return _read_pointer(paths.current(env), "current pointer", env, "")
    except DamagedRecord as exc:
        from volenv.store.sealcheck import rollback_hint

        exc.hint = rollback_hint(str(paths.root), env)  # only now: it reads every snapshot's seal
        raise


def write_current(
    paths: VolumePaths, env: str, snapshot_id: str, rollback: dict[str, Any] | None = None
) -> None:
    """`rollback` ({"from", "created", "time"}) marks a pointer set by `volenv rollback`: while
    it stands, `run --manifest` runs no snapshot newer than this one (start/activation.py's rolled_back);
    any other switch writes the pointer without it, which ends the rollback."""
    rec: dict[str, Any] = {"schema": POINTER_SCHEMA, "snapshot": snapshot_id, "time": time.time()}
    if rollback is not None:
        rec["rollback"] = rollback
    atomic_write_json(paths.current(env), rec, root=paths.root)


@dataclass(frozen=True)
class Rollback:
    snapshot: str  # rolled back to (current)
    previous: str | None  # rolled back from
    created: float  # the seal time of `snapshot`: manifests whose snapshot is newer run this one
    time: float


def rollback_end_note(paths: VolumePaths, env: str, snapshot_id: str, doing: str, end: str) -> str | None:
    """What to say when a switch to `snapshot_id` ends the env's rollback (None: it does not)."""
    rb = read_rollback(paths, env)
    if rb is None or rb.snapshot == snapshot_id:
        return None
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(rb.time))
    return (
        f"'{env}' was rolled back to {rb.snapshot} at {when}; {doing} {snapshot_id} current and"
        f" {end} the rollback (`run --manifest` runs each manifest's own snapshot again)"
    )


def read_rollback(paths: VolumePaths, env: str) -> Rollback | None:
    """The rollback that set `current`, or None (a damaged pointer is no rollback here: the
    commands that need `current` report it)."""
    try:
        rec = read_record(paths.current(env), "current pointer", POINTER_SCHEMA, {"snapshot": str})
    except (OSError, DamagedRecord, VolumeError):
        return None
    rb = rec.get("rollback")
    if not isinstance(rb, dict) or not is_snapshot_id(rec["snapshot"], env):
        return None
    created, when, prev = rb.get("created"), rb.get("time"), rb.get("from")
    problem = rollback_problem(rb, env)
    if problem is not None:
        path = paths.current(env)
        from volenv.store.sealcheck import rollback_hint

        raise DamagedRecord(f"{path} is damaged: {problem}", hint=rollback_hint(str(paths.root), env))
    assert isinstance(created, int | float) and isinstance(when, int | float)
    return Rollback(rec["snapshot"], prev if isinstance(prev, str) else None, float(created), float(when))


@dataclass(frozen=True)
class Generation:
    number: int
    time: float
    snapshot: str
    manifest_digest: str | None
    action: str


#: a history of 64 MiB is ~300,000 generations; beyond that it is not ours
HISTORY_LIMIT = 64 << 20


def read_history(paths: VolumePaths, env: str) -> list[Generation]:
    path = paths.history(env)
    try:
        text = read_regular(path, HISTORY_LIMIT).decode("utf-8")
    except FileNotFoundError:
        return []
    except (IsADirectoryError, NotADirectoryError):
        raise DamagedRecord(f"history {path} is damaged: a directory where the file should be") from None
    except OSError as exc:
        if exc.errno not in NOT_A_RECORD:
            raise
        raise DamagedRecord(
            f"history {path} is damaged: not a regular file ({exc.strerror})",
            hint=f"it is not volenv's (a link or a FIFO planted there): mv {shq(str(path))} /tmp/",
        ) from None
    except UnicodeDecodeError:
        raise DamagedRecord(f"history {path} is damaged: not UTF-8 text") from None
    out: list[Generation] = []
    lines = text.splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json_loads(line)
        except (ValueError, RecursionError):
            # A torn final line (crash mid-append) is skipped; anything else is damage.
            if n == len(lines):
                continue
            raise DamagedRecord(f"history {path}: line {n} is not valid JSON") from None
        if not isinstance(rec, dict):
            raise DamagedRecord(f"history {path}: line {n} is not a JSON object")
        if has_type(rec.get("schema"), int) and rec["schema"] > HISTORY_SCHEMA:
            raise VolumeError(f"{path}: line {n} has a newer schema; upgrade volenv")
        for key, typ in _HISTORY_FIELDS.items():
            if not has_type(rec.get(key), typ):
                raise DamagedRecord(f"history {path}: line {n}: field {key!r} missing or of the wrong type")
        if not is_record_time(rec["time"]) or not is_snapshot_id(rec["snapshot"], env):
            raise DamagedRecord(f"history {path}: line {n}: its time or snapshot is not one")
        out.append(
            Generation(
                len(out) + 1, float(rec["time"]), rec["snapshot"], rec.get("manifest_digest"), rec["action"]
            )
        )
    return out


_HISTORY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "time": (int, float),
    "snapshot": str,
    "manifest_digest": (str, type(None)),
    "action": str,
}


def append_history(
    paths: VolumePaths, env: str, snapshot_id: str, manifest_digest: str | None, action: str
) -> None:
    rec = {
        "schema": HISTORY_SCHEMA,
        "time": time.time(),
        "snapshot": snapshot_id,
        "manifest_digest": manifest_digest,
        "action": action,
    }
    append_line(paths.history(env), json.dumps(rec, sort_keys=True), paths.root)


def switch_current(
    paths: VolumePaths,
    env: str,
    snapshot_id: str,
    manifest_digest: str | None,
    action: str,
    rollback: dict[str, Any] | None = None,
) -> None:
    """The one pointer switch: current then history (a crash between leaves a valid current).
    A switch past a rollback (sync, pull) ends it, and says so."""
    if rollback is None:
        doing = "this pull makes" if action == "pull" else "this sync makes"
        note = rollback_end_note(paths, env, snapshot_id, doing, "ends")
        if note:
            from volenv.base.ui import reporter

            reporter.warn(note)
    _history_appendable(paths, env)  # checked first: a refused append must not follow a switch
    write_current(paths, env, snapshot_id, rollback)
    append_history(paths, env, snapshot_id, manifest_digest, action)


def _history_appendable(paths: VolumePaths, env: str) -> None:
    """What append_line will refuse (a link, a FIFO, a second name), refused before anything moves."""
    path = paths.history(env)
    assert_real_parents(path, paths.root)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        what = "a hard link" if stat.S_ISREG(st.st_mode) else "not a regular file"
        raise DamagedRecord(
            f"history {path} is damaged: {what}; nothing was switched",
            hint=f"it is not volenv's (planted there): mv {shq(str(path))} /tmp/",
        )


def last_used(paths: VolumePaths, env: str, snapshot_id: str) -> float | None:
    try:
        return paths.used_marker(env, snapshot_id).stat().st_mtime
    except OSError:
        return None


def is_pinned(paths: VolumePaths, env: str, snapshot_id: str) -> bool:
    return paths.pin(env, snapshot_id).exists()


def list_envs(paths: VolumePaths) -> list[str]:
    try:
        return sorted(p.name for p in paths.envs.iterdir() if p.is_dir() and not p.name.startswith("."))
    except FileNotFoundError:
        return []


def list_snapshots(paths: VolumePaths, env: str, warnings: list[str] | None = None) -> list[str]:
    """Snapshot ids of an env. Anything else in snapshots/ (a stray file, a symlink, a name that
    is not `<env>-<12 hex>`) is skipped with a warning (into `warnings`, else on stderr), never
    fatal and never touched: volenv did not make it."""
    directory = paths.snapshots(env)
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if is_snapshot_id(entry.name, env) and entry.is_dir(follow_symlinks=False):
            out.append(entry.name)
            continue
        msg = f"{directory / entry.name}: not a snapshot (skipped; volenv did not create it)"
        if warnings is not None:
            warnings.append(msg)
        else:
            from volenv.base.ui import reporter

            reporter.warn(msg)
    return out


def log_event(paths: VolumePaths, env: str, event: str, **fields: Any) -> None:
    """JSON-lines events per env; never lets logging break the operation it describes."""
    rec = {"time": time.time(), "event": event, "pid": os.getpid(), **fields}
    try:
        safe_mkdirs(paths.env_logs(env), paths.root)  # a linked logs/ is skipped, not written through
        line = json.dumps(redact_obj(rec), sort_keys=True, default=str)
        append_line(paths.events(env), line, paths.root)
    except ContainmentError:
        return
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM):
            raise


def snapshot_for(paths: VolumePaths, target: str) -> Path:
    """ENV -> its current snapshot's directory; SNAPSHOT id -> its directory (must exist); one
    reached through a link (at it or above it) is damage: verify, show and push never read an
    outside copy."""
    snap = _snapshot_for(paths, target)
    from volenv.store.volio import real_dir_below

    if os.path.lexists(snap) and not real_dir_below(paths.root, snap):
        raise DamagedRecord(
            f"snapshot directory {snap} is a link (or below one) inside the root: not read",
            hint="remove the link: volenv never makes one there",
        )
    return snap


def _snapshot_for(paths: VolumePaths, target: str) -> Path:
    from volenv.base.errors import UsageError
    from volenv.store.paths import env_from_snapshot_id

    if (paths.env_dir(target) / "snapshots").is_dir():
        cur = read_current(paths, target)
        if cur is None:
            raise UsageError(f"env '{target}' has no current snapshot")
        return paths.snapshot(target, cur)
    try:
        env = env_from_snapshot_id(target)
    except ValueError:
        raise UsageError(f"{target!r} is neither an env on {paths.root} nor a snapshot id") from None
    snap = paths.snapshot(env, target)
    if not snap.is_dir():
        raise UsageError(f"snapshot {target} not found under {paths.envs}")
    return snap
