"""Garbage collection as plan, then execute (huggingface_hub's cache manager, Nix's roots).

The scan produces a frozen GcPlan: every snapshot, staging dir, quarantine and trash entry
and uv cache archive, each kept for a named reason or removed. Execution, per env under the
env's build lease, re-checks the roots, removes references (index entries, use marks) before
payloads, renames each payload into trash/ (atomic) and only then deletes it. Sizes are
hard-link aware: "freed" counts the blocks of inodes whose every link is removed.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from volenv.base.errors import UsageError, VolenvError
from volenv.base.leanjson import loads as json_loads  # RecursionError is ValueError there
from volenv.base.leanjson import read_record_bytes
from volenv.base.ui import fmt_duration, reporter
from volenv.gc.leases import lease_holder
from volenv.gc.sizes import apparent, freed_from, inode_table, isdir, real_dir, walk_stats
from volenv.store import pointers as store
from volenv.store.paths import VolumePaths
from volenv.store.sealcheck import SealProblem, read_seal
from volenv.store.volio import (
    open_dir_nofollow,
)

#: an activation touches its snapshot's use mark before checking and exec'ing it; GC never
#: removes a snapshot touched this recently, whatever --keep-within says (in-flight guard)
IN_FLIGHT_GRACE = 60.0
DEFAULT_KEEP = 2
DEFAULT_KEEP_WITHIN = "7d"
#: a temp file (a killed fetch's `.part`, a pack or pull's blob temp) untouched this long has no
#: live writer (writers touch it as bytes arrive), and an unreferenced blob this old is not one
#: whose pack manifest is about to be written
STALE_TEMP = 600.0

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'0s', '90m', '12h', '7d', '2w', '1d12h' -> seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise UsageError(f"--keep-within: {text!r} is not a duration like 0s, 90m, 12h, 7d, 2w or 1d12h")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass(frozen=True)
class GcItem:
    kind: str  # snapshot | env | staging | quarantine | trash | model | pack | part | uv-archive | trap
    path: str
    env: str | None
    action: str  # keep | remove
    reasons: tuple[str, ...]
    apparent_bytes: int
    created: float | None = None
    last_used: float | None = None
    package: str | None = None  # uv-archive: its distribution; model: its record file


@dataclass(frozen=True)
class GcPlan:
    root: str
    keep: int
    keep_within: float
    created: float
    items: tuple[GcItem, ...]
    freed_bytes: int  # hard-link aware estimate of what removal frees
    envs_busy: tuple[str, ...] = ()
    # target -> inode rows, from the scan; execution reuses it (never printed)
    _inodes: dict[str, list[tuple[tuple[int, int], int, int]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def removals(self) -> list[GcItem]:
        return [i for i in self.items if i.action == "remove"]


@dataclass(frozen=True)
class GcOutcome:
    path: str
    kind: str
    done: bool
    detail: str
    kept: bool = False  # a root appeared after the plan: kept on purpose, not a failure


@dataclass(frozen=True)
class GcResult:
    plan: GcPlan
    outcomes: tuple[GcOutcome, ...] = ()
    freed_bytes: int = 0
    executed: bool = False

    @property
    def ok(self) -> bool:
        return all(o.done or o.kept for o in self.outcomes)


# ---------------------------------------------------------------- scan -> plan


def make_plan(paths: VolumePaths, *, keep: int, keep_within: float, now: float | None = None) -> GcPlan:
    now = time.time() if now is None else now
    items: list[GcItem] = list(_plan_traps(paths))
    busy: list[str] = []
    for env in env_names(paths):
        held = lease_holder(paths, env)
        if held:
            busy.append(env)
        items.extend(_plan_env(paths, env, keep, keep_within, now, held))
        items.extend(_plan_orphan_env(paths, env, held))
    items.extend(_plan_staging(paths, busy))
    items.extend(_plan_dir(paths, paths.quarantine, "quarantine", keep_within, now))
    items.extend(_plan_dir(paths, paths.trash, "trash", 0.0, now))
    kept = [Path(i.path) for i in items if i.kind == "snapshot" and i.action == "keep"]
    items.extend(_plan_models(paths, kept))
    items.extend(_plan_parts(paths, now))
    removed_snapshots = [Path(i.path) for i in items if i.kind == "snapshot" and i.action == "remove"]
    items.extend(_plan_packs(paths, {p.name for p in removed_snapshots}, now))
    table = inode_table(removed_snapshots)
    if not any(i.kind == "trap" and i.path.startswith(str(paths.root / "cache")) for i in items):
        items.extend(_plan_uv_archives(paths, table))
    table.update(inode_table([Path(i.path) for i in items if i.action == "remove" and i.path not in table]))
    freed = freed_from(table, set(table))
    return GcPlan(str(paths.root), keep, keep_within, now, tuple(items), freed, tuple(busy), table)


def _plan_env(
    paths: VolumePaths, env: str, keep: int, keep_within: float, now: float, busy: str | None
) -> list[GcItem]:
    unknown_current = False
    try:
        current = store.read_current(paths, env)
    except VolenvError:  # damaged: any snapshot may be the current one, so none is collected
        current, unknown_current = None, True
    infos = []
    for sid in listdir(paths.snapshots(env), paths.root):
        if sid.startswith("."):
            continue
        path = paths.snapshot(env, sid)
        if not (store.is_snapshot_id(sid, env) and real_dir(path)):
            # a stray file, a link or a foreign name: volenv did not make it, gc never touches it
            reporter.warn(f"{path}: not a snapshot (skipped; volenv did not create it)")
            continue
        try:
            seal = read_seal(str(path))
            created = float(seal.get("created", 0.0))
            size = int(seal.get("apparent_bytes", 0))  # the record's sum: no walk needed
        except SealProblem:
            created = path.stat().st_mtime
            size = apparent(path)
        infos.append((sid, path, created, store.last_used(paths, env, sid), size))
    newest = {sid for sid, *_ in sorted(infos, key=lambda x: x[2], reverse=True)[:keep]}
    live = manifest_roots(paths, env)
    out = []
    for sid, path, created, used, size in infos:
        reasons = []
        if sid == current:
            reasons.append("current")
        elif sid in live:  # another manifest of this env runs it (`run --manifest` reads the index)
            reasons.append(f"current for manifest {', '.join(live[sid])}")
        if unknown_current:
            reasons.append("the current pointer is damaged")
        if store.is_pinned(paths, env, sid):
            reasons.append("pinned")
        if sid in newest:
            reasons.append(f"newest {keep}")
        if used is not None and now - used <= keep_within:
            reasons.append(f"used within {fmt_duration(keep_within)}")
        elif used is not None and now - used <= IN_FLIGHT_GRACE:
            reasons.append("activated in the last minute")
        if busy:
            reasons.append(f"being built ({busy})")
        action = "keep" if reasons else "remove"
        if not reasons:
            reasons = ["not current, not pinned, not among the newest, not used recently"]
        out.append(GcItem("snapshot", str(path), env, action, tuple(reasons), size, created, used))
    return out


def manifest_roots(paths: VolumePaths, env: str) -> dict[str, list[str]]:
    """snapshot id -> the manifests whose newest index entry names it: what `run --manifest`
    of each runs, so a root like `current` (an env can hold several manifests' snapshots)."""
    out: dict[str, list[str]] = {}
    for entry in store.live_index_entries(paths, env):
        out.setdefault(entry.snapshot, []).append(store.manifest_label(entry))
    return out


def orphan_env(paths: VolumePaths, env: str) -> bool:
    """An env directory a failed first build left: no snapshot (nor anything else) under
    snapshots/, no current pointer, no pin. Read without following links: a linked part of
    the env is a trap (reported, never touched), so such an env is never an orphan."""
    env_dir = paths.env_dir(env)
    for sub in ("snapshots", "pins", "index", "used"):
        try:
            if not isdir(os.lstat(env_dir / sub)):
                return False
        except FileNotFoundError:
            continue
        except OSError:
            return False
    for sub in ("snapshots", "pins"):
        try:
            if _listdir_strict(env_dir / sub, paths.root):
                return False
        except (OSError, VolenvError):
            return False  # cannot tell what it holds (EIO, EACCES): kept, never guessed empty
    return not os.path.lexists(paths.current(env)) and real_dir(env_dir)


def _listdir_strict(path: Path, root: Path) -> list[str]:
    """Names in a directory below root (no symlinked component); only a missing directory
    lists as empty: any other failure is raised, so nothing is removed on a guess."""
    rel = Path(os.path.normpath(path)).relative_to(os.path.normpath(root)).parts
    try:
        fd = open_dir_nofollow(root, rel)
    except FileNotFoundError:
        return []
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def unreadable_env(paths: VolumePaths, env: str) -> str | None:
    """Why an env's snapshots/ or pins/ cannot be listed (gc keeps it and says so), or None."""
    for sub in ("snapshots", "pins"):
        try:
            _listdir_strict(paths.env_dir(env) / sub, paths.root)
        except (OSError, VolenvError) as exc:
            return f"cannot read {sub}/ ({getattr(exc, 'strerror', None) or exc}): kept"
    return None


def _plan_orphan_env(paths: VolumePaths, env: str, busy: str | None) -> list[GcItem]:
    if not orphan_env(paths, env):
        why_kept = unreadable_env(paths, env)
        if why_kept and not os.path.lexists(paths.current(env)):
            return [GcItem("env", str(paths.env_dir(env)), env, "keep", (why_kept,), 0)]
        return []
    path = paths.env_dir(env)
    if busy:
        return [GcItem("env", str(path), env, "keep", (f"being built ({busy})",), apparent(path))]
    why = "no snapshot and no current pointer (left by a failed build)"
    return [GcItem("env", str(path), env, "remove", (why,), apparent(path))]


def _plan_staging(paths: VolumePaths, busy: list[str]) -> list[GcItem]:
    from volenv.build.staging import staging_env

    out = []
    for name in listdir(paths.staging, paths.root):
        if name == "CACHEDIR.TAG" or name.startswith(".probe-"):
            continue
        path = paths.staging / name
        env = staging_env(name)
        if env is None and name.startswith(".verify-"):
            env = next((e for e in map(staging_env, listdir(path)) if e), None)
        if env is not None and env in busy:
            out.append(
                GcItem("staging", str(path), env, "keep", ("being built (lease held)",), apparent(path))
            )
        else:
            out.append(
                GcItem("staging", str(path), env, "remove", ("dead builder (no lease)",), apparent(path))
            )
    return out


def _plan_dir(paths: VolumePaths, directory: Path, kind: str, keep_within: float, now: float) -> list[GcItem]:
    out = []
    for name in listdir(directory, paths.root):
        if name == "CACHEDIR.TAG":
            continue
        path = directory / name
        age = now - path.lstat().st_mtime
        if kind == "trash" or age > keep_within:
            why = (
                "left by an interrupted gc" if kind == "trash" else f"older than {fmt_duration(keep_within)}"
            )
            out.append(GcItem(kind, str(path), None, "remove", (why,), apparent(path)))
        else:
            out.append(
                GcItem(
                    kind,
                    str(path),
                    None,
                    "keep",
                    (f"newer than {fmt_duration(keep_within)}",),
                    apparent(path),
                )
            )
    return out


def referenced_models(paths: VolumePaths, kept: list[Path]) -> dict[str, dict[str, object]]:
    """model record file name -> spec, for every model a kept snapshot's manifest names: the
    manifest sealed into it, and every manifest whose index entry points at it (aliases)."""

    from volenv.store.alias import alias_ok
    from volenv.store.modelpaths import model_record_path

    root = str(paths.root)
    kept_ids = {p.name for p in kept}
    specs: list[dict[str, object]] = []
    for snap in kept:
        try:
            specs.extend(read_seal(str(snap)).get("manifest", {}).get("models", []))
        except SealProblem:
            continue
    for alias in listdir(paths.root / "aliases", paths.root):
        try:
            data = json_loads(read_record_bytes(paths.root / "aliases" / alias, 16 << 20))
            if not alias_ok(data):
                continue
            sid = store.read_index(paths, data["env"], data["manifest_digest"])
        except (OSError, ValueError, KeyError, VolenvError):
            continue
        if sid in kept_ids:
            specs.extend(data.get("activation", {}).get("models", []))
    return {os.path.basename(model_record_path(root, m)): m for m in specs if _valid_model(m)}


def _valid_model(m: object) -> bool:
    """A model spec read from the volume (a record, a seal, an alias: any of them may have been
    pulled or planted) obeys the manifest's own rules before it names a path to delete."""
    from volenv.manifest.schema import HEX40, HEX64, SLUG

    if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not SLUG.fullmatch(m["name"]):
        return False
    hf = m.get("hf")
    if hf:
        repo, rev = (hf.get("repo"), hf.get("revision")) if isinstance(hf, dict) else (None, None)
        return (
            isinstance(repo, str)
            and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", repo) is not None
            and ".." not in repo
            and isinstance(rev, str)
            and HEX40.fullmatch(rev) is not None
        )
    url, sha = m.get("url"), m.get("sha256")
    if not (isinstance(url, str) and isinstance(sha, str) and HEX64.fullmatch(sha)):
        return False
    filename = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "model.bin"
    return filename not in (".", "..")


def _plan_models(paths: VolumePaths, kept: list[Path]) -> list[GcItem]:
    """Model records (and their files) that no kept snapshot's manifest references."""
    from volenv.models.cache import read_model_record
    from volenv.store.modelpaths import model_location

    records = paths.models / "records"
    names = [n for n in listdir(records, paths.root) if n.endswith(".json") and not n.startswith(".")]
    if not names:
        return []
    referenced = referenced_models(paths, kept)
    kept_repos = {
        "models--" + str(m["hf"]["repo"]).replace("/", "--")  # type: ignore[index]
        for m in referenced.values()
        if m.get("hf")
    }
    kept_locations = {model_location(str(paths.root), m) for m in referenced.values()}
    out = []
    for name in names:
        rec_path = records / name
        try:
            rec = read_model_record(rec_path)
        except VolenvError as exc:
            why = f"record damaged ({exc.message}): left alone"
            out.append(GcItem("model", str(rec_path), None, "keep", (why,), 0))
            continue
        if rec is None:  # gone since the listing
            continue
        spec = rec["spec"]
        if not _valid_model(spec):
            why = "record damaged (its name or source breaks the manifest rules): left alone"
            out.append(GcItem("model", str(rec_path), None, "keep", (why,), 0))
            continue
        loc = Path(model_location(str(paths.root), spec))
        payload = loc.parent if not spec.get("hf") else loc
        if spec.get("hf"):
            repo_dir = loc.parent.parent
            if repo_dir.name not in kept_repos:
                payload = repo_dir
        size = apparent(payload)
        if name in referenced or str(loc) in kept_locations:
            why = (
                "referenced by a kept snapshot" if name in referenced else "its files are a kept model's too"
            )
            out.append(GcItem("model", str(payload), None, "keep", (why,), size, package=name))
        else:
            out.append(
                GcItem(
                    "model",
                    str(payload),
                    None,
                    "remove",
                    ("no kept snapshot references it",),
                    size,
                    package=name,
                )
            )
    return out


def _plan_traps(paths: VolumePaths) -> Iterator[GcItem]:
    """Directories of the layout that are symlinks: gc never lists, renames or deletes through
    them (nor lets `uv cache clean` loose on a linked cache); reported and left alone."""
    dirs = [*paths.top_dirs(), paths.root / "cache", paths.root / "aliases", paths.root / "packs"]
    dirs += [paths.root / "packs" / d for d in ("blobs", "snapshots")] + [paths.uv_cache / "archive-v0"]
    dirs += [paths.models / d for d in ("records", "files", "hf", "hf/hub")]
    dirs += [paths.models / "files" / n for n in listdir(paths.models / "files", paths.root)]
    dirs += [paths.models / "hf" / "hub" / n for n in listdir(paths.models / "hf" / "hub", paths.root)]
    for env in listdir(paths.envs, paths.root):
        if env.startswith("."):
            continue
        dirs += [paths.env_dir(env), paths.env_logs(env)]
        dirs += [paths.env_dir(env) / d for d in ("snapshots", "index", "used", "pins")]
    for d in dirs:
        try:
            st = os.lstat(d)
        except OSError:
            continue
        if not isdir(st):
            why = "a symlink inside the volume root: left alone (volenv never follows one)"
            if not os.path.islink(d):
                why = "not a directory: left alone"
            yield GcItem("trap", str(d), None, "keep", (why,), 0)


def env_names(paths: VolumePaths) -> list[str]:
    return [
        e
        for e in listdir(paths.envs, paths.root)
        if not e.startswith(".") and isdir(os.lstat(paths.env_dir(e)))
    ]


def _plan_parts(paths: VolumePaths, now: float) -> list[GcItem]:
    """`.part` files a killed model fetch left (the fetcher removes its own on any error)."""
    out = []
    files = paths.models / "files"
    for name in listdir(files, paths.root):
        for key in listdir(files / name, paths.root):
            for entry in listdir(files / name / key, paths.root):
                if entry.startswith(".") and ".part-" in entry:
                    out.append(_temp_item(files / name / key / entry, "part", now))
    return out


def _temp_item(path: Path, kind: str, now: float) -> GcItem:
    st = os.lstat(path)
    if now - st.st_mtime > STALE_TEMP:
        why = f"a killed writer's temp file (untouched for over {fmt_duration(STALE_TEMP)})"
        return GcItem(kind, str(path), None, "remove", (why,), st.st_size)
    return GcItem(kind, str(path), None, "keep", ("may be being written",), st.st_size)


def pack_refs(paths: VolumePaths, dropped: set[str]) -> tuple[set[str] | None, list[Path]]:
    """Blob ids the pack manifests of surviving snapshots name (None: one is unreadable, so
    no blob is provably unused), and the manifests of snapshots that no longer exist."""
    from volenv.store.packformat import packs_dir, read_manifest

    pdir = packs_dir(paths) / "snapshots"
    refs: set[str] | None = set()
    stale = []
    for name in listdir(pdir, paths.root):
        if name.startswith(".") or not name.endswith(".json"):
            continue
        sid = name[: -len(".json")]
        try:
            from volenv.store.paths import env_from_snapshot_id

            env = env_from_snapshot_id(sid)
        except ValueError:
            refs = None
            continue
        if sid in dropped or not os.path.lexists(paths.snapshot(env, sid)):
            stale.append(pdir / name)
            continue
        try:
            manifest = read_manifest(pdir / name)
        except (OSError, VolenvError):
            refs = None
            continue
        if refs is not None:
            refs.update(p.id for p in manifest.packs)
    return refs, stale


def _plan_packs(paths: VolumePaths, dropped: set[str], now: float) -> list[GcItem]:
    """Pack manifests of snapshots that are gone (or go now), blobs no surviving manifest
    names (a failed pull's, an old pack's), and blob temps of killed packs and pulls."""
    from volenv.store.packformat import packs_dir

    out = []
    refs, stale = pack_refs(paths, dropped)
    for m in stale:
        out.append(GcItem("pack", str(m), None, "remove", ("its snapshot is gone",), os.lstat(m).st_size))
    blobs = packs_dir(paths) / "blobs"
    for name in listdir(blobs, paths.root):
        path = blobs / name
        if name.startswith("."):
            out.append(_temp_item(path, "part", now))
            continue
        pack_id = name.split(".", 1)[0]
        st = os.lstat(path)
        if refs is None:
            why = "a pack manifest is unreadable"
            out.append(GcItem("pack", str(path), None, "keep", (why,), st.st_size))
        elif pack_id in refs:
            out.append(GcItem("pack", str(path), None, "keep", ("in a kept snapshot's packs",), st.st_size))
        elif now - st.st_mtime <= STALE_TEMP:
            why = "unreferenced but new (a pack or pull may be writing its manifest)"
            out.append(GcItem("pack", str(path), None, "keep", (why,), st.st_size))
        else:
            why = "no kept snapshot's packs name it"
            out.append(GcItem("pack", str(path), None, "remove", (why,), st.st_size))
    return out


def _plan_uv_archives(
    paths: VolumePaths, removed: dict[str, list[tuple[tuple[int, int], int, int]]]
) -> list[GcItem]:
    """uv cache archives (unpacked wheels) that no retained snapshot hard-links into.

    Removal goes through `uv cache clean PACKAGE` (uv's own command and lock, and it drops
    uv's pointers with the archives), so an archive is only removed when every archive of its
    package is unused; otherwise it is left to uv."""
    archive_root = paths.uv_cache / "archive-v0"
    names = listdir(archive_root, paths.root)
    if not names:
        return []
    in_removed: dict[tuple[int, int], int] = {}
    for inode_rows in removed.values():
        for key, _nlink, _blocks in inode_rows:
            in_removed[key] = in_removed.get(key, 0) + 1
    rows = []
    for name in names:
        path = archive_root / name
        used = False
        size = 0
        for st in walk_stats(path):
            size += st.st_size
            if st.st_nlink - 1 - in_removed.get((st.st_dev, st.st_ino), 0) > 0:
                used = True
        rows.append((path, _archive_package(path), used, size))
    used_packages = {pkg for _p, pkg, used, _s in rows if used or pkg is None}
    out = []
    for path, pkg, used, size in rows:
        if used:
            reasons = ("linked from a kept snapshot",)
            item = GcItem("uv-archive", str(path), None, "keep", reasons, size, package=pkg)
        elif pkg is None or pkg in used_packages:
            why = "another archive of its package is in use (left to uv)" if pkg else "not a wheel archive"
            item = GcItem("uv-archive", str(path), None, "keep", (why,), size, package=pkg)
        else:
            item = GcItem(
                "uv-archive", str(path), None, "remove", ("no kept snapshot links it",), size, package=pkg
            )
        out.append(item)
    return out


def _archive_package(path: Path) -> str | None:
    for name in listdir(path):
        if name.endswith(".dist-info"):
            dist = name[: -len(".dist-info")].rsplit("-", 1)[0]
            return re.sub(r"[-_.]+", "-", dist).lower()
    return None


def listdir(path: Path, root: Path | None = None) -> list[str]:
    """Names in a directory; below `root`, reached without following a symlinked component
    (a linked layout directory lists as empty: `_plan_traps` reports it)."""
    if root is None:
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []
    try:
        rel = Path(os.path.normpath(path)).relative_to(os.path.normpath(root)).parts
        fd = open_dir_nofollow(root, rel)
    except (ValueError, OSError, VolenvError):
        return []
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)
