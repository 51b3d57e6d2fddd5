"""Seal-level verification, kept free of heavy imports: it runs on every container start.

A seal is valid when it parses, names this snapshot, its record digest matches the record
file, and the base interpreter it was built for is present (DESIGN.md, level `seal`).
"""

from __future__ import annotations

import os

from volenv.base.envvars import expand_env_value
from volenv.base.leanjson import NOT_A_RECORD, dumps_canonical, loads, read_record_bytes
from volenv.manifest.hubnames import valid_ref
from volenv.store.rootfind import fix_command

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SEAL_SCHEMA = 1
META_DIR = ".volenv"
SEAL_NAME = "seal.json"
RECORD_NAME = "record"


class SealProblem(Exception):
    """What is wrong with a seal; `kind` is one of the verify report's kinds."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def seal_self_digest(seal: dict[str, Any]) -> str:
    """Digest of the seal's own content (without this field): an edited seal is detected."""
    body = {k: v for k, v in seal.items() if k != "self_sha256"}
    return sha256_hex(dumps_canonical(body).encode())


def read_seal(snapshot_dir: str) -> dict[str, Any]:
    path = os.path.join(snapshot_dir, META_DIR, SEAL_NAME)
    meta_is_link(snapshot_dir)
    try:
        raw = read_record_bytes(path, 64 << 20)
    except FileNotFoundError:
        raise SealProblem("seal-missing", f"no seal at {path}: the snapshot was never completed") from None
    except (IsADirectoryError, NotADirectoryError):
        raise SealProblem("seal-damaged", f"{path} is not a file") from None
    except OSError as exc:
        if exc.errno not in NOT_A_RECORD:
            raise
        raise SealProblem("seal-damaged", f"{path} is not a regular file ({exc.strerror})") from None
    try:
        seal = loads(raw)
    except ValueError as exc:
        raise SealProblem("seal-damaged", f"{path} is not valid JSON: {exc}") from None
    if not isinstance(seal, dict) or not isinstance(seal.get("schema"), int):
        raise SealProblem("seal-damaged", f"{path} has no integer schema")
    if seal["schema"] > SEAL_SCHEMA:
        raise SealProblem("seal-newer", f"{path} has seal schema {seal['schema']}; upgrade volenv")
    for key, typ in (("snapshot", str), ("record_sha256", str), ("fingerprint", dict), ("env", str)):
        if not isinstance(seal.get(key), typ):
            raise SealProblem("seal-damaged", f"{path}: field {key!r} missing or of the wrong type")
    problem = _shape_problem(seal)
    if problem:
        raise SealProblem("seal-damaged", f"{path}: {problem}")
    if seal.get("self_sha256") != seal_self_digest(seal):
        raise SealProblem("seal-damaged", f"{path} was edited after sealing (its self digest does not match)")
    return seal


def _is(value: object, *types: type) -> bool:
    """isinstance where a JSON true/false is not a number."""
    return isinstance(value, types) and (not isinstance(value, bool) or bool in types)


#: optional seal fields that readers use, and their types (a crafted seal is damage, not a crash)
_SEAL_OPTIONAL: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("created", (int, float)),
    ("apparent_bytes", (int,)),
    ("record_entries", (int,)),
    ("link_mode", (str,)),
    ("manifest_digest", (str,)),
    ("manifest", (dict,)),
    ("groups", (list,)),
)


def _shape_problem(seal: dict[str, Any]) -> str | None:
    for key, types in _SEAL_OPTIONAL:
        if key in seal and not _is(seal[key], *types):
            return f"field {key!r} has the wrong type"
    fp = seal["fingerprint"]
    if not _is(fp.get("executable"), str) or not _is(fp.get("executable_size"), int, type(None)):
        return "field 'fingerprint' is malformed"
    for g in seal.get("groups", []):
        if not (
            isinstance(g, dict)
            and _is(g.get("name"), str)
            and _is(g.get("state"), str)
            and _is(g.get("required", False), bool)
        ):
            return "field 'groups' is malformed"
    m = seal.get("manifest", {})
    return activation_problem(m.get("env", {}), m.get("models", []))


_NAME_START = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"
_NAME_CHARS = frozenset(_NAME_START + "0123456789")


def is_env_var_name(name: object) -> bool:
    """POSIX `[A-Za-z_][A-Za-z0-9_]*` without `re` (the fast path)."""
    return isinstance(name, str) and name[:1] in _NAME_START and bool(name) and set(name) <= _NAME_CHARS


def is_snapshot_id(name: str, env: str) -> bool:
    """`<env>-<12 hex>`: the only names a pointer may give and the only ones a scan lists."""
    digest = name[len(env) + 1 :]
    return name.startswith(env + "-") and len(digest) == 12 and all(c in "0123456789abcdef" for c in digest)


TIME_MAX = 253402300799  # 9999-12-31 23:59:59 UTC: time.localtime fails past it (1e300, inf)


def is_record_time(value: object) -> bool:
    """A timestamp a record may hold: seconds from 0 to year 9999, not a bool, not NaN."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= TIME_MAX


def rollback_problem(rb: dict[str, object], env: str) -> str | None:
    """What is wrong with a current pointer's rollback mark ({"from", "created", "time"})."""
    prev = rb.get("from")
    if prev is not None and not (isinstance(prev, str) and is_snapshot_id(prev, env)):
        return "its rollback names no snapshot it came from"
    if not is_record_time(rb.get("created")) or not is_record_time(rb.get("time")):
        return "its rollback times are not times"
    return None


def plain_name(name: object) -> bool:
    """A name used as one path component: no separator, no NUL, not '.', '..' or hidden."""
    return isinstance(name, str) and bool(name) and "/" not in name and "\0" not in name and name[0] != "."


def activation_problem(env: object, models: object) -> str | None:
    """What is wrong with activation settings read from a seal or an alias, or None. The
    manifest allowed only these shapes; anything else was damaged or crafted on the volume."""
    if not isinstance(env, dict):
        return "activation env is not a table"
    for k, v in env.items():
        if not is_env_var_name(k):
            return f"activation env sets {k!r}, which is not a valid variable name"
        if not isinstance(v, str) or "\0" in v:
            return f"activation env {k}: the value is not a string"
        try:
            expand_env_value(v, {})  # an unclosed `${` would fail every start that applies it
        except ValueError as exc:
            return f"activation env {k}: {exc}"
    if not isinstance(models, list):
        return "activation models is not a list"
    for m in models:
        if not isinstance(m, dict) or not plain_name(m.get("name")):
            return f"activation model {m!r:.80} has no valid name"
        hf = m.get("hf")
        if hf:
            ok = isinstance(hf, dict) and _is(hf.get("repo"), str) and plain_name(hf.get("revision"))
            ok = ok and ".." not in hf["repo"] and "\0" not in hf["repo"]
            ok = ok and ("ref" not in hf or valid_ref(hf["ref"]))
        else:
            ok = _is(m.get("url"), str) and _is(m.get("sha256"), str) and len(m["sha256"]) >= 16
        if not ok:
            return f"activation model {m['name']!r} has no valid source"
    return None


def sha256_hex(data: bytes) -> str:
    """sha256 of small data without paying OpenSSL's ~2 ms initialisation on the fast path."""
    if len(data) < 512 * 1024:
        try:
            import _sha256  # type: ignore[import-not-found]  # CPython's builtin: cheap to import

            return str(_sha256.sha256(data).hexdigest())
        except ImportError:
            pass
    import hashlib

    return hashlib.sha256(data).hexdigest()


def record_sha256(snapshot_dir: str, keep: list[bytes] | None = None) -> str:
    """The record's digest; `keep` receives the bytes hashed (a caller that reads the record next
    uses exactly the bytes the seal vouched for, and reads them once)."""
    path = os.path.join(snapshot_dir, META_DIR, RECORD_NAME)
    try:
        data = read_record_bytes(path, 1 << 30)
        if keep is not None:
            keep.append(data)
        return sha256_hex(data)
    except FileNotFoundError:
        raise SealProblem("record-missing", f"no record at {path}") from None
    except (IsADirectoryError, NotADirectoryError):
        raise SealProblem("record-damaged", f"{path} is not a file") from None
    except OSError as exc:
        if exc.errno not in NOT_A_RECORD:
            raise
        raise SealProblem("record-damaged", f"{path} is not a regular file ({exc.strerror})") from None


def meta_is_link(snapshot_dir: str) -> None:
    """A `.volenv` that is a link is damage: volenv always writes it as a directory, and reading
    the seal or record by full path would follow one to an outside copy (one lstat)."""
    meta = os.path.join(snapshot_dir, META_DIR)
    if os.path.islink(meta):  # missing: the seal read says so
        raise SealProblem("seal-damaged", f"{meta} is a link: volenv writes it as a directory")


def check_seal(
    snapshot_dir: str, snapshot_id: str | None = None, *, keep_record: list[bytes] | None = None
) -> dict[str, Any]:
    """Return the seal if the snapshot is valid at level `seal`; raise SealProblem otherwise.
    `keep_record` receives the record's bytes the seal's digest was checked against."""
    seal = read_seal(snapshot_dir)
    expected = snapshot_id or os.path.basename(os.path.normpath(snapshot_dir))
    if seal["snapshot"] != expected:
        raise SealProblem("seal-mismatch", f"seal names {seal['snapshot']!r}, the directory is {expected!r}")
    actual = record_sha256(snapshot_dir, keep_record)
    if actual != seal["record_sha256"]:
        raise SealProblem(
            "record-mismatch",
            f"record digest {actual[:16]}… does not match the seal's {seal['record_sha256'][:16]}…",
        )
    problem = interpreter_problem(seal["fingerprint"])
    if problem:
        raise SealProblem("interpreter", problem)
    return seal


def interpreter_problem(fp: dict[str, Any]) -> str | None:
    """No subprocess: the base interpreter the venv links to is present and the same build (size)."""
    exe = fp.get("executable", "")
    desc = f"{fp.get('implementation')} {fp.get('version')} ({fp.get('abi')}, {fp.get('platform')}) at {exe}"
    try:
        st = os.stat(exe)
    except OSError:
        return f"the snapshot needs {desc}, which this container does not have"
    if fp.get("executable_size") not in (None, st.st_size):
        return (
            f"the snapshot was built for {desc} ({fp['executable_size']} bytes), "
            f"but {exe} here is a different build ({st.st_size} bytes)"
        )
    return None


def newest_valid_snapshot(root: str, env: str, exclude: str | None = None) -> str | None:
    """The env's most recently sealed snapshot whose seal checks (other than `exclude`): what a
    hint can name for `rollback --to` when a pointer is damaged. An error path only: it reads
    every snapshot's seal."""
    snaps = os.path.join(root, "envs", env, "snapshots")
    try:
        names = os.listdir(snaps)
    except OSError:
        return None
    best: tuple[float, str] | None = None
    for sid in names:
        if sid == exclude or not is_snapshot_id(sid, env):
            continue
        try:
            seal = check_seal(os.path.join(snaps, sid), sid)
        except (SealProblem, OSError):
            continue
        created = seal.get("created")
        when = float(created) if isinstance(created, int | float) else 0.0
        if best is None or when > best[0]:
            best = (when, sid)
    return best[1] if best else None


def rollback_hint(root: str, env: str, exclude: str | None = None) -> str:
    """A damaged `current` (or rollback) pointer: the command that points it at a snapshot that
    is there and valid, or what to do when none is left."""
    sid = newest_valid_snapshot(root, env, exclude)
    if sid is None:
        return f"no valid snapshot of '{env}' is left to point at: sync its manifest again"
    return f"point it at a valid snapshot: {fix_command(root, 'rollback', env, '--to', sid)}"
