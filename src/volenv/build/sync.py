"""`volenv sync`: manifest -> sealed snapshot. Reads top to bottom as the lifecycle:

    plan (index hit? resolve, snapshot id) -> lease -> preflight -> stage -> install ->
    groups -> post-install -> compile -> smoke -> record (+ wheel check) -> seal -> commit

Each step is a named function with a fault point, so tests can kill the builder at any of them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from volenv import __version__
from volenv.base import faults
from volenv.base.errors import (
    BuildError,
    DiskSpaceError,
    UsageError,
    VolenvError,
    VolumeError,
    from_oserror,
    shq,
)
from volenv.base.redact import redact_text
from volenv.base.ui import reporter
from volenv.build.interp import fingerprint_key, probe
from volenv.build.uvtool import index_args, install_progress, last_error_line, run_uv
from volenv.manifest.parse import Manifest, canonical_json
from volenv.store import pointers as store
from volenv.store.integrity import (
    Entry,
    WheelMismatch,
    build_record,
    check_shipped_bytecode,
    encode_record,
    load_record,
)
from volenv.store.paths import VolumePaths
from volenv.store.sealcheck import (
    META_DIR,
    RECORD_NAME,
    SEAL_NAME,
    SEAL_SCHEMA,
    SealProblem,
    check_seal,
    seal_self_digest,
)
from volenv.store.volio import (
    atomic_write_bytes,
    atomic_write_json,
    fsync_dir,
    remove_tree,
    safe_mkdirs,
    safe_rename,
    unique_suffix,
)

if TYPE_CHECKING:  # filelock (and psutil, in _free_bytes) load only when a build really
    from volenv.store.locks import BuildLease  # starts: a no-op sync is one process start, they a tenth of it

DEFAULT_MIN_FREE = 128 * 1024 * 1024
BUILDING_NAME = "building.json"


@dataclass(frozen=True)
class SyncOptions:
    refresh: bool = False
    dry_run: bool = False
    lock_timeout: float = 900.0
    min_free: int | None = None
    offline: bool = False
    models: bool = True
    pack: bool = False
    reinstall: tuple[str, ...] = ()  # packages to rebuild/reinstall from scratch (--reinstall)
    reinstall_all: bool = False

    @property
    def rebuild(self) -> bool:
        """--reinstall*: build a new snapshot even when the index has one for this manifest."""
        return self.reinstall_all or bool(self.reinstall)


@dataclass(frozen=True)
class GroupState:
    name: str
    required: bool
    state: str  # installed | failed
    error: str | None = None


@dataclass(frozen=True)
class Resolution:
    """What resolution decided: the inputs of the snapshot id."""

    python: str
    fingerprint: dict[str, Any]
    base: tuple[str, ...]
    groups: dict[str, tuple[str, ...]]
    unresolvable: dict[str, str]
    snapshot_id: str
    # index options a requirements-file carries (--find-links made absolute), for every uv call
    index_lines: tuple[str, ...] = ()
    reinstall: tuple[str, ...] = ()  # what --reinstall forced ("*" for all), recorded in the seal


@dataclass(frozen=True)
class SyncPlan:
    env: str
    manifest_digest: str
    action: str  # reuse | index | build
    snapshot: str | None
    previous: str | None
    resolution: Resolution | None = None


@dataclass(frozen=True)
class SyncResult:
    env: str
    snapshot: str
    action: str  # built | reused | would-build | would-reuse
    path: str
    manifest_digest: str
    seconds: float
    previous: str | None = None
    groups: tuple[GroupState, ...] = ()
    stats: dict[str, int] = field(default_factory=dict)
    link_mode: str | None = None
    log: str | None = None
    models: tuple[Any, ...] = ()
    changes: Any = None  # --dry-run: contents.Changes against the current snapshot (None: no current)


# ---------------------------------------------------------------- the lifecycle


def sync(paths: VolumePaths, manifest: Manifest, opts: SyncOptions) -> SyncResult:
    """The snapshot, then (unless --no-models) the manifest's models; the start trace of
    `[activate] trace-cmd` is the sync command's (commands/sync.py), above activation."""
    if opts.pack:  # a missing 'packs' extra is said before anything is built
        from volenv.store.packs import need_zstandard

        need_zstandard()
    result = sync_snapshot(paths, manifest, opts)
    if opts.pack and not opts.dry_run:
        from volenv.store.packs import manifest_path, pack_snapshot

        if not manifest_path(paths, result.snapshot).exists():
            pack_snapshot(paths, Path(result.path))  # its own progress and summary line
    if not opts.dry_run and opts.models and manifest.models:
        from dataclasses import replace

        from volenv.models.cache import fetch_models

        result = replace(result, models=tuple(fetch_models(paths, manifest, lock_timeout=opts.lock_timeout)))
    return result


def _warn_secret_env(manifest: Manifest) -> None:
    from volenv.base.redact import secret_like_env

    for name in secret_like_env(dict(manifest.env)):
        reporter.warn(
            f"[activate] env {name} looks like a secret: manifest values are stored in the seal"
            " (and travel with `volenv push`); set it in the container's environment instead,"
            " which `volenv run` passes through"
        )


class _Vanished(Exception):
    """The index's snapshot was removed (by gc) between the unlocked look and the lease."""


def sync_snapshot(paths: VolumePaths, manifest: Manifest, opts: SyncOptions) -> SyncResult:
    t0 = time.perf_counter()
    env = manifest.name
    if opts.offline and (opts.refresh or opts.rebuild):
        raise UsageError(
            "--offline cannot be combined with --refresh or --reinstall (they fetch again)",
            hint="drop --offline, or drop --refresh/--reinstall",
        )
    store.open_volume(paths, create=not opts.dry_run)
    _warn_secret_env(manifest)
    hit = None if opts.refresh or opts.rebuild else valid_index_hit(paths, manifest)
    if hit is not None:
        try:
            return _reuse(paths, manifest, hit[0], t0, opts, seal=hit[1])
        except _Vanished:  # gc collected it between the look and the lease: build it again
            reporter.info(f"snapshot {hit[0]} was removed meanwhile (gc); building it again")
    if opts.dry_run:
        plan = make_plan(paths, manifest, opts, tempfile.gettempdir())
        action = "would-reuse" if plan.action in ("reuse", "index") else "would-build"
        sid = plan.snapshot or "?"
        _note_rollback_end(paths, env, sid, dry_run=True)
        return SyncResult(
            env,
            sid,
            action,
            str(paths.snapshot(env, sid)),
            manifest.digest,
            time.perf_counter() - t0,
            plan.previous,
            changes=_changes_from_current(paths, env, _planned_contents(manifest, plan.resolution)),
        )
    try:
        store.ensure_env_dirs(paths, env)
        check_filesystem(paths)
    except OSError as exc:
        raise from_oserror(exc, f"cannot create the env directories of '{env}'") from exc
    from volenv.store.locks import BuildLease

    lease = BuildLease(paths, env, timeout=opts.lock_timeout, say=reporter.info)
    with lease:
        try:  # again under the lease: gc removes an env dir a failed build left empty
            store.ensure_env_dirs(paths, env)
        except OSError as exc:
            raise from_oserror(exc, f"cannot create the env directories of '{env}'") from exc
        hit = None if opts.refresh or opts.rebuild else valid_index_hit(paths, manifest)
        if hit is not None:
            return _reuse(paths, manifest, hit[0], t0, opts, have_lease=True, seal=hit[1])
        with tempfile.TemporaryDirectory(prefix="volenv-resolve-") as tmp:
            faults.point("resolve")
            rlog = ResolveLog(
                Path(tmp) / "resolve.log",
                paths.env_logs(env) / f"build-{time.strftime('%Y%m%dT%H%M%S')}-{env}-resolve.log",
            )
            try:
                plan = make_plan(paths, manifest, opts, tmp, rlog)
            except BuildError as exc:
                rlog.keep()
                store.log_event(
                    paths,
                    env,
                    "build-failed",
                    step="resolve",
                    error=str(exc),
                    exit_code=exc.exit_code,
                    log=str(rlog.final),
                )
                raise
            assert plan.resolution is not None
            if plan.action == "index":
                _publish_pointers(paths, manifest, plan.resolution.snapshot_id, "index")
                return _reuse(paths, manifest, plan.resolution.snapshot_id, t0, opts, have_lease=True)
            return build_snapshot(paths, manifest, plan, lease, opts, Path(tmp), t0)


def valid_index_hit(paths: VolumePaths, manifest: Manifest) -> tuple[str, dict[str, Any]] | None:
    """The index's snapshot for this manifest and its seal, if it is valid at `seal`."""
    try:
        sid = store.read_index(paths, manifest.name, manifest.digest)
    except VolenvError:
        return None
    if sid is None:
        return None
    try:
        return sid, check_seal(str(paths.snapshot(manifest.name, sid)), sid)
    except SealProblem:
        return None


def _reuse(
    paths: VolumePaths,
    manifest: Manifest,
    sid: str,
    t0: float,
    opts: SyncOptions,
    *,
    have_lease: bool = False,
    seal: dict[str, Any] | None = None,
) -> SyncResult:
    env = manifest.name
    previous = store.read_current(paths, env)
    if previous != sid and not opts.dry_run:
        from volenv.store.locks import BuildLease

        # switching current happens under the env's lease, so GC's root check stays consistent
        faults.point("reuse")  # tests: gc removes the snapshot between the look and the lease
        lease = (
            contextlib.nullcontext()
            if have_lease
            else BuildLease(paths, env, timeout=opts.lock_timeout, say=reporter.info)
        )
        with lease:
            if not have_lease:
                now = valid_index_hit(paths, manifest)
                if now is None or now[0] != sid:
                    raise _Vanished(sid)
            try:
                store.switch_current(paths, env, sid, manifest.digest, "sync")
            except OSError as exc:
                raise from_oserror(exc, "cannot switch the current pointer") from exc
    if not opts.dry_run:
        store.log_event(paths, env, "sync", action="reused", snapshot=sid, manifest_digest=manifest.digest)
    if seal is None:
        seal = check_seal(str(paths.snapshot(env, sid)), sid)
    changes = None
    if opts.dry_run:
        from volenv.store import contents

        if previous != sid:
            _note_rollback_end(paths, env, sid, dry_run=True)
        changes = _changes_from_current(paths, env, contents.from_seal(seal))
    return SyncResult(
        env,
        sid,
        "would-reuse" if opts.dry_run else "reused",
        str(paths.snapshot(env, sid)),
        manifest.digest,
        time.perf_counter() - t0,
        previous,
        groups=tuple(GroupState(**g) for g in seal.get("groups", [])),
        link_mode=seal.get("link_mode"),
        changes=changes,
    )


def _note_rollback_end(paths: VolumePaths, env: str, sid: str, *, dry_run: bool = False) -> None:
    """--dry-run: say that the sync would end a rollback (store.switch_current says it when it does)."""
    note = store.rollback_end_note(paths, env, sid, "this sync would make", "end")
    if note:
        reporter.warn(note)


def _planned_contents(manifest: Manifest, res: Resolution | None) -> Any:
    from volenv.manifest.parse import _model_dict
    from volenv.store import contents

    if res is None:
        return None
    states = {g: "installed" for g in res.groups} | {g: "unresolvable" for g in res.unresolvable}
    return contents.contents_of(res.base, res.groups, states, [_model_dict(m) for m in manifest.models])


def _changes_from_current(paths: VolumePaths, env: str, new: Any) -> Any:
    """What a dry run would change against the env's current snapshot (None: nothing to compare)."""
    from volenv.store import contents

    try:
        cur = store.read_current(paths, env)
        if cur is None or new is None:
            return None
        return contents.diff(contents.from_seal(check_seal(str(paths.snapshot(env, cur)), cur)), new)
    except (VolenvError, SealProblem):
        return None


# ---------------------------------------------------------------- plan / resolve


@dataclass(frozen=True)
class ResolveLog:
    """uv's resolution output: in the temp dir while resolving; kept as a build log under
    logs/<env>/ when resolution fails (the failure names that path), else copied into the
    build's own log."""

    path: Path
    final: Path

    def keep(self) -> None:
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.final, self.path.read_bytes() if self.path.exists() else b"")
        except OSError as exc:
            reporter.warn(f"could not write the resolve log {self.final}: {exc.strerror}")


def make_plan(
    paths: VolumePaths, manifest: Manifest, opts: SyncOptions, tmp: str, log: ResolveLog | None = None
) -> SyncPlan:
    resolution = resolve(paths, manifest, Path(tmp), opts, log)
    sid = resolution.snapshot_id
    target = paths.snapshot(manifest.name, sid)
    action = "build"
    if target.exists():
        try:
            check_seal(str(target), sid)
            action = "index"
        except SealProblem:
            action = "build"
    previous = None
    try:
        previous = store.read_current(paths, manifest.name)
    except VolenvError:
        pass
    return SyncPlan(manifest.name, manifest.digest, action, sid, previous, resolution)


def find_interpreter(paths: VolumePaths, manifest: Manifest, log: ResolveLog | None = None) -> str:
    proc = run_uv(["python", "find", "--system", manifest.python], paths, log.path if log else None)
    if proc.returncode != 0:
        raise BuildError(
            f"no Python matching {manifest.python!r}: {last_error_line(proc)}",
            step="resolve",
            log_path=str(log.final) if log else None,
            hint=f"install it in the image, or `UV_PYTHON_INSTALL_DIR={shq(paths.python)}"
            f" uv python install {shq(manifest.python)}`",
        )
    return proc.stdout.strip().splitlines()[-1]


def resolve(
    paths: VolumePaths, manifest: Manifest, tmp: Path, opts: SyncOptions, log: ResolveLog | None = None
) -> Resolution:
    with reporter.step("resolving"):
        python = find_interpreter(paths, manifest, log)
        fp = probe(python)
        if manifest.lockfile is not None:
            base = tuple(_lockfile_pins(manifest.lockfile))
        else:
            base = _compile(
                paths, manifest, list(manifest.requirements), tmp / "base", None, python, opts, log, base=True
            )
        index_lines: tuple[str, ...] = ()
        if manifest.requirements_file is not None:
            index_lines = _requirements_file_index(manifest, tmp / "base.txt")
        constraints = tmp / "base.constraints.txt"
        constraints.write_text("\n".join(base) + "\n")
        groups: dict[str, tuple[str, ...]] = {}
        unresolvable: dict[str, str] = {}
        for g in manifest.optional:
            try:
                groups[g.name] = _compile(
                    paths,
                    manifest,
                    [*index_lines, *g.requirements],
                    tmp / f"group-{g.name}",
                    constraints,
                    python,
                    opts,
                    log,
                )
            except BuildError as exc:
                if g.required:
                    raise BuildError(
                        f"required group '{g.name}' does not resolve: {exc.message}", step="resolve"
                    ) from exc
                unresolvable[g.name] = exc.message
                reporter.warn(f"optional group '{g.name}' does not resolve; building without it")
    key = {
        "format": 1,
        "inputs": manifest.build_inputs(),
        "base": list(base),
        "groups": {k: list(v) for k, v in sorted(groups.items())},
        "fingerprint": fingerprint_key(fp),
    }
    reinstall = ("*",) if opts.reinstall_all else tuple(sorted(set(opts.reinstall)))
    if reinstall:
        # What --reinstall fixes is exactly what volenv cannot see: the same inputs may now give
        # other files, so the rebuild gets an id of its own (never the old id and its seal).
        import secrets

        key["rebuild"] = {"reinstall": list(reinstall), "nonce": secrets.token_hex(8)}
    sid = f"{manifest.name}-{hashlib.sha256(canonical_json(key)).hexdigest()[:12]}"
    return Resolution(python, fp, base, groups, unresolvable, sid, index_lines, reinstall)


def _compile(
    paths: VolumePaths,
    manifest: Manifest,
    requirements: list[str],
    stem: Path,
    constraints: Path | None,
    python: str,
    opts: SyncOptions,
    log: ResolveLog | None = None,
    *,
    base: bool = False,
) -> tuple[str, ...]:
    src = stem.with_suffix(".in")
    out = stem.with_suffix(".txt")
    src.write_text("\n".join(requirements) + "\n")
    sources = [str(src)]
    if base and manifest.requirements_file is not None:
        # uv parses it (-r, -c, markers, index options) and emits the index options it used
        sources += [str(manifest.requirements_file), "--emit-index-url", "--emit-find-links"]
    args = [
        "pip",
        "compile",
        *sources,
        "-o",
        str(out),
        "--python",
        python,
        "--no-header",
        "--no-annotate",
        "-q",
    ]
    if constraints is not None:
        args += ["-c", str(constraints)]
    if opts.refresh or opts.reinstall_all:
        args.append("--refresh")
    args += refresh_args(manifest, opts.reinstall, reinstall=False)
    args += index_args(manifest)
    # cwd: relative `name @ ./path` requirements start at the manifest's folder (uv keeps them
    # relative in its output, so the snapshot id does not depend on where the folder lives)
    proc = run_uv(args, paths, log.path if log else None, cwd=manifest.path.parent, offline=opts.offline)
    if proc.returncode != 0:
        _raise_if_disk_full(proc)
        raise BuildError(
            f"resolution failed: {last_error_line(proc)}",
            step="resolve",
            log_path=str(log.final) if log else None,
        )
    lines = [ln.strip() for ln in out.read_text().splitlines()]
    return tuple(sorted(ln for ln in lines if ln and not ln.startswith(("#", "-"))))


def _requirements_file_index(manifest: Manifest, compiled: Path) -> tuple[str, ...]:
    """The index options (--index-url, --extra-index-url, --find-links) in effect for the
    requirements file and its includes, as uv emitted them into the compiled base, for the
    install steps (which read pinned lock files, not the user's file). No index URL emitted
    means no index. uv emits a find-links path as written: a relative one is made absolute
    against the first file of the closure where it exists."""
    assert manifest.requirements_file is not None
    dirs = [f.parent for f, _sha in manifest.requirements_file_inputs]
    lines: list[str] = []
    for line in compiled.read_text().splitlines():
        opt, _, value = line.strip().partition(" ")
        if opt == "--find-links" and "://" not in value and not Path(value).is_absolute():
            found = [d / value for d in dirs if (d / value).exists()]
            value = str((found[0] if found else manifest.requirements_file.parent / value).resolve())
        if opt in ("--index-url", "--extra-index-url", "--find-links"):
            lines.append(f"{opt} {value}")
    if not any(ln.startswith("--index-url ") for ln in lines):
        lines.insert(0, "--no-index")
    return tuple(dict.fromkeys(lines))


def refresh_args(manifest: Manifest, packages: tuple[str, ...], *, reinstall: bool) -> list[str]:
    """uv flags that rebuild local-path packages (uv caches their builds by path, not content)
    and the packages given to --reinstall."""
    from packaging.requirements import Requirement

    names = sorted({Requirement(text).name for text, _digest in manifest.local_sources} | set(packages))
    args: list[str] = []
    for name in names:
        args += ["--refresh-package", name]
        if reinstall:
            args += ["--reinstall-package", name]
    return args


def _lockfile_pins(lockfile: Path) -> list[str]:
    """name==version of every package in a pylock.toml: constraints for the optional groups."""
    data = tomllib.loads(lockfile.read_text(encoding="utf-8"))
    pins = []
    for pkg in data.get("packages", []):
        if isinstance(pkg, dict) and "name" in pkg and "version" in pkg:
            pins.append(f"{pkg['name']}=={pkg['version']}")
    return sorted(pins)


# ---------------------------------------------------------------- build


class _Build:
    """State of one build in staging; each method is one step of the lifecycle."""

    def __init__(self, paths: VolumePaths, manifest: Manifest, plan: SyncPlan, tmp: Path) -> None:
        assert plan.resolution is not None
        self.paths = paths
        self.manifest = manifest
        self.res = plan.resolution
        self.plan = plan
        self.tmp = tmp
        self.env = manifest.name
        self.sid = self.res.snapshot_id
        stamp = time.strftime("%Y%m%dT%H%M%S")
        self.staging = paths.staging / f"{self.sid}.{unique_suffix()}"
        self.log = paths.env_logs(self.env) / f"build-{stamp}-{self.sid}.log"
        self.python = self.staging / "bin" / "python"
        self.groups: list[GroupState] = []
        self.stats: dict[str, int] = {}
        self.link_mode = "hardlink"
        self.need = DEFAULT_MIN_FREE
        self.previous = self._previous_snapshots()
        self.shipped_bytecode_damage: list[WheelMismatch] = []

    def _previous_snapshots(self) -> list[Path]:
        """Current first, then the newest others: sources of reusable hashes and bytecode."""
        out: list[Path] = []
        cur = self.plan.previous
        if cur:
            out.append(self.paths.snapshot(self.env, cur))
        others = [
            self.paths.snapshot(self.env, s) for s in store.list_snapshots(self.paths, self.env) if s != cur
        ]
        others.sort(key=lambda p: p.stat().st_mtime if p.exists() else 0, reverse=True)
        out.extend(others[:2])
        valid = []
        for p in out:
            try:
                seal = check_seal(str(p), p.name)
            except SealProblem:
                continue
            if seal.get("fingerprint") == self.res.fingerprint:
                valid.append(p)
        return valid

    def logline(self, text: str) -> None:
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(redact_text(text.rstrip("\n")) + "\n")

    def uv(
        self,
        args: list[str],
        step: str,
        on_line: Callable[[str], None] | None = None,
        terminal: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        proc = run_uv(
            args, self.paths, self.log, cwd=self.manifest.path.parent, on_line=on_line, terminal=terminal
        )
        if proc.returncode != 0:
            _raise_if_disk_full(proc, str(self.log))
            raise BuildError(last_error_line(proc), step=step, log_path=str(self.log))
        return proc

    # -- steps

    def preflight(self, min_free: int | None) -> None:
        faults.point("preflight")
        self.stats["stale_staging_removed"] = clean_stale_staging(self.paths, self.env)
        need = DEFAULT_MIN_FREE if min_free is None else min_free
        if self.previous:
            need = max(need, unique_size(self.previous[0]))
        free = _free_bytes(self.paths)
        self.stats["free_bytes"] = free
        self.stats["needed_bytes"] = need
        self.need = need
        if free < need:
            raise DiskSpaceError(
                f"not enough space on {self.paths.root} for a build: free now {_mib(free)},"
                f" needed at least {_mib(need)}",
                hint="free space with `volenv gc`, or pass --min-free to change the estimate",
            )

    def stage(self) -> None:
        faults.point("stage")
        safe_mkdirs(self.staging.parent, self.paths.root)  # uv writes here: never through a link
        self.logline(
            f"# volenv {__version__} building {self.sid} on {socket.gethostname()} pid {os.getpid()}"
        )
        try:  # the resolution's uv output, so this one log tells the whole build
            self.logline((self.tmp / "resolve.log").read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            pass
        self.uv(
            ["venv", "--relocatable", "--python", self.res.python, "--no-project", str(self.staging)], "stage"
        )
        meta = self.staging / META_DIR
        meta.mkdir()
        atomic_write_json(
            meta / BUILDING_NAME,
            {"schema": 1, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()},
            durable=False,
        )

    def install(self) -> None:
        faults.point("install")
        args = self._sync_args([])
        total = _count_requirements(Path(args[2]))  # the resolved set: what uv installs
        with reporter.progress("installing", total, unit="packages") as progress:
            # a drawn bar: uv on a terminal, so that its download bars move the bytes
            self.uv(args, "install", on_line=install_progress(progress), terminal=progress.live)
            self.link_mode = detect_link_mode(self.staging)
            if self.link_mode != "hardlink":
                reporter.warn(
                    "uv could not hard-link from its cache (different filesystem or no hard links):"
                    " every snapshot holds full copies and uses more disk"
                )

    def _sync_args(self, groups: list[str]) -> list[str]:
        lock = self.manifest.lockfile
        reqs = [str(lock) if lock is not None else self._write_lock("base", self.res.base)]
        reqs += [self._write_lock(f"group-{g}", self.res.groups[g]) for g in groups]
        return [
            "pip",
            "sync",
            *reqs,
            "--python",
            str(self.python),
            "--link-mode",
            "hardlink",
            *self._rebuild_args(),
            *index_args(self.manifest),
        ]

    def _rebuild_args(self) -> list[str]:
        if "*" in self.res.reinstall:
            return ["--reinstall", "--refresh"]
        return refresh_args(self.manifest, self.res.reinstall, reinstall=True)

    def _write_lock(self, name: str, lines: tuple[str, ...]) -> str:
        path = self.tmp / f"{name}.lock.txt"
        path.write_text("\n".join([*self.res.index_lines, *lines]) + "\n")
        return str(path)

    def install_groups(self) -> None:
        faults.point("groups")
        ok: list[str] = []
        for g in self.manifest.optional:
            if g.name in self.res.unresolvable:
                self.groups.append(GroupState(g.name, g.required, "failed", self.res.unresolvable[g.name]))
                continue
            args = [
                "pip",
                "install",
                "-r",
                self._write_lock(f"group-{g.name}", self.res.groups[g.name]),
                "--python",
                str(self.python),
                "--link-mode",
                "hardlink",
                *self._rebuild_args(),
                *index_args(self.manifest),
            ]
            with reporter.step(f"installing optional group '{g.name}'"):
                proc = run_uv(args, self.paths, self.log, cwd=self.manifest.path.parent)
            if proc.returncode == 0:
                ok.append(g.name)
                self.groups.append(GroupState(g.name, g.required, "installed"))
                continue
            _raise_if_disk_full(proc, str(self.log))
            reason = last_error_line(proc)
            if g.required:
                raise BuildError(
                    f"required group '{g.name}': {reason}", step="groups", log_path=str(self.log)
                )
            reporter.warn(
                f"optional group '{g.name}' failed to install ({reason}); snapshot built without it"
            )
            self.groups.append(GroupState(g.name, g.required, "failed", reason))
            # A failed install may have left part of the group behind: restore the exact set.
            self.uv(self._sync_args(ok), "groups")

    def post_install(self) -> None:
        faults.point("post-install")
        env = activation_env_for_build(self.staging)
        for i, cmd in enumerate(self.manifest.post_install):
            argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
            shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
            self.logline(f"$ [post-install {i}] {shown}")
            with reporter.step(f"post-install: {shown}"), open(self.log, "a", encoding="utf-8") as fh:
                try:
                    proc = subprocess.run(
                        argv,
                        env=env,
                        cwd=self.manifest.path.parent,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                        check=False,
                    )
                except OSError as exc:
                    raise BuildError(
                        f"post-install command {i} ({shown}) cannot start: {exc.strerror}",
                        step="post-install",
                        log_path=str(self.log),
                    ) from exc
            if proc.returncode != 0:
                raise BuildError(
                    f"post-install command {i} ({shown}) exited {proc.returncode}",
                    step="post-install",
                    log_path=str(self.log),
                )

    def compile(self) -> None:
        """Bytecode at build time; .pyc of sources unchanged since a previous snapshot (same
        inode, so same bytes and mtime) are hard-linked instead of recompiled."""
        faults.point("compile")
        self.shipped_bytecode_damage = check_shipped_bytecode(self.staging)
        self.stats["bytecode_reused"] = link_previous_bytecode(self.staging, self.previous)
        self._compile_bytecode()

    def _compile_bytecode(self) -> None:
        """compile_file skips .pyc that are already up to date (the re-linked ones)."""
        with reporter.step("compiling bytecode"):
            failed, output = compile_bytecode(self.staging)
        if failed:
            self.logline(output)
            if "No space left" in output:
                raise DiskSpaceError(f"volume full while compiling bytecode (build log: {self.log})")
            reporter.warn("some modules failed to byte-compile (see the build log); they compile at import")

    def smoke(self) -> None:
        faults.point("smoke")
        mods = list(self.manifest.smoke_imports)
        if not mods:
            return
        script = (
            "import importlib, json, sys, traceback\n"
            "bad = {}\n"
            f"for m in {mods!r}:\n"
            "    try:\n        importlib.import_module(m)\n"
            "    except BaseException as e:\n        bad[m] = f'{type(e).__name__}: {e}'\n"
            "        traceback.print_exc()\n"
            "print(json.dumps(bad))\n"
        )
        env = activation_env_for_build(self.staging)
        from volenv.base.envvars import apply_manifest_env

        apply_manifest_env(env, dict(self.manifest.env))
        with reporter.step("smoke imports"):
            proc = subprocess.run(
                [str(self.python), "-c", script],
                capture_output=True,
                text=True,
                env=env,
                check=False,
                timeout=900,
            )
        self.logline(f"$ smoke imports {mods}\n{proc.stdout}{proc.stderr}")
        try:
            bad = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            bad = {"(interpreter)": f"exited {proc.returncode}"}
        if bad:
            first = next(iter(bad.items()))
            raise BuildError(
                f"smoke import {first[0]!r} failed: {first[1]}", step="smoke", log_path=str(self.log)
            )

    def record(self) -> list[Entry]:
        faults.point("record")
        previous_records = []
        for p in self.previous:
            try:
                previous_records.append(load_record(p))
            except (OSError, SealProblem):
                continue
        entries, stats, mismatches = build_record(self.staging, previous_records)  # its own progress
        mismatches = self.shipped_bytecode_damage + mismatches
        if mismatches:
            entries, stats = self._refresh_damaged(mismatches)
        self.stats.update(files=stats.files, hashed=stats.hashed, hash_reused=stats.reused)
        self.stats["bytes_hashed"] = stats.bytes_hashed
        self.stats["bytes_new"] = stats.bytes_new
        # for the one-line summary `sync` leaves on screen: packages, files, bytes
        self.stats["packages"] = sum(e.path.endswith(".dist-info/METADATA") for e in entries)
        self.stats["bytes"] = sum(e.size for e in entries if e.type == "f")
        atomic_write_bytes(self.staging / META_DIR / RECORD_NAME, encode_record(entries))
        return entries

    def _refresh_damaged(self, mismatches: list[Any]) -> tuple[list[Entry], Any]:
        """Inherited damage (a hard-linked cache file edited in place) is never sealed:
        reinstall those distributions from the index with a refreshed cache entry."""
        dists = sorted({m.distribution.rsplit("-", 1)[0] for m in mismatches})
        reporter.warn(
            f"installed files differ from their wheels ({', '.join(m.path for m in mismatches[:3])}…);"
            f" reinstalling {', '.join(dists)} from the index"
        )
        self.logline(f"# wheel RECORD mismatches: {[m.path for m in mismatches]}")
        # The damaged bytes sit in uv's cache entry (hard links share the inode): drop those
        # entries through uv itself (it takes its own cache lock), then reinstall.
        self.uv(["cache", "clean", *dists], "record")
        args = self._sync_args([g.name for g in self.groups if g.state == "installed"])
        for d in dists:
            args += ["--reinstall-package", d, "--refresh-package", d]
        self.uv(args, "record")
        shipped = check_shipped_bytecode(self.staging)
        self._compile_bytecode()
        entries, stats, again = build_record(self.staging, [])
        again = shipped + again
        if again:
            raise BuildError(
                f"files still differ from their wheels after a refresh: {[m.path for m in again[:5]]}",
                step="record",
                log_path=str(self.log),
            )
        self.stats["refreshed_packages"] = len(dists)
        return entries, stats

    def seal(self, entries: list[Entry]) -> None:
        faults.point("seal")
        meta = self.staging / META_DIR
        try:
            os.unlink(meta / BUILDING_NAME)
        except FileNotFoundError:
            pass
        record_sha = hashlib.sha256((meta / RECORD_NAME).read_bytes()).hexdigest()
        seal = {
            "schema": SEAL_SCHEMA,
            "snapshot": self.sid,
            "env": self.env,
            "created": time.time(),
            "volenv_version": __version__,
            "record_sha256": record_sha,
            "record_entries": len(entries),
            "apparent_bytes": sum(e.size for e in entries),
            "fingerprint": self.res.fingerprint,
            "manifest": self.manifest.normalized(),
            "manifest_digest": self.manifest.digest,
            "manifest_path": str(self.manifest.path),
            "resolved": {
                "base": list(self.res.base),
                "groups": {k: list(v) for k, v in self.res.groups.items()},
            },
            "groups": [asdict(g) for g in self.groups],
            "link_mode": self.link_mode,
            "stats": self.stats,
        }
        try:
            (meta / "build.log").write_bytes(self.log.read_bytes())
        except OSError:
            pass
        if self.res.reinstall:  # what `sync --reinstall` forced (its id carries a nonce)
            seal["reinstall"] = list(self.res.reinstall)
        seal["self_sha256"] = seal_self_digest(seal)
        atomic_write_json(meta / SEAL_NAME, seal)
        fsync_dir(meta)

    def commit(self, lease: BuildLease, *, replace: bool = False) -> None:
        faults.point("commit")
        target = self.paths.snapshot(self.env, self.sid)
        lease.fence()
        if target.exists() and replace:
            from volenv.store.integrity import verify_snapshot

            fresh = verify_snapshot(self.staging_as_snapshot(), "full")
            if not fresh.ok:
                raise BuildError(f"the rebuilt snapshot does not verify: {fresh.summary()}", step="commit")
            quarantine(self.paths, target, "replaced by verify --repair")
        elif target.exists():
            try:
                check_seal(str(target), self.sid)
                # Same content committed meanwhile (another manifest resolving to the same set).
                remove_tree(self.staging, self.paths.root)
                return
            except SealProblem as sp:
                quarantine(self.paths, target, f"replaced by a rebuild: {sp.detail}")
        safe_rename(self.staging, target, self.paths.root)
        fsync_dir(target.parent)
        if self.staging.parent.name.startswith(".verify-"):
            os.rmdir(self.staging.parent)
        faults.point("index")
        if not replace:  # a repair keeps the same id: pointers already name it
            _publish_pointers(self.paths, self.manifest, self.sid, "build")

    def staging_as_snapshot(self) -> Path:
        """verify_snapshot checks the directory name against the seal: view staging by its id."""
        view = self.staging.parent / f".verify-{unique_suffix()}" / self.sid
        view.parent.mkdir()
        safe_rename(self.staging, view, self.paths.root)
        self.staging = view
        return view

    def abort(self) -> None:
        try:
            remove_tree(self.staging, self.paths.root)
            if self.staging.parent.name.startswith(".verify-"):
                os.rmdir(self.staging.parent)
        except (OSError, VolenvError):
            reporter.warn(f"could not remove staging {self.staging}; `volenv gc` will collect it")


def build_snapshot(
    paths: VolumePaths,
    manifest: Manifest,
    plan: SyncPlan,
    lease: BuildLease,
    opts: SyncOptions,
    tmp: Path,
    t0: float,
    *,
    repair: bool = False,
) -> SyncResult:
    """Run the build steps in order. With repair=True nothing is reused from earlier snapshots
    (their files may be the damaged ones) and the damaged target is quarantined on commit."""
    b = _Build(paths, manifest, plan, tmp)
    if repair:
        b.previous = []
    reporter.info(f"building {b.sid} for '{b.env}' (log: {b.log})")
    store.log_event(
        paths, b.env, "build-start", snapshot=b.sid, manifest_digest=manifest.digest, log=str(b.log)
    )
    try:
        try:
            b.preflight(opts.min_free)
            b.stage()
            b.install()
            b.install_groups()
            b.post_install()
            b.compile()
            b.smoke()
            entries = b.record()
            b.seal(entries)
            b.commit(lease, replace=repair)
        except OSError as exc:
            raise from_oserror(exc, f"build of {b.sid} failed (build log: {b.log})") from exc
    except DiskSpaceError as exc:
        b.abort()
        err = exc if "free now" in exc.message else _with_space_figures(exc, paths, b.need)
        _log_failure(paths, b, err)
        raise err from exc
    except BaseException as exc:
        b.abort()
        _log_failure(paths, b, exc)
        raise
    store.log_event(paths, b.env, "build-done", snapshot=b.sid, stats=b.stats, link_mode=b.link_mode)
    return SyncResult(
        b.env,
        b.sid,
        "built",
        str(paths.snapshot(b.env, b.sid)),
        manifest.digest,
        time.perf_counter() - t0,
        plan.previous,
        tuple(b.groups),
        dict(b.stats),
        b.link_mode,
        str(b.log),
    )


def _log_failure(paths: VolumePaths, b: _Build, exc: BaseException) -> None:
    """The failure goes into the build log (so every failed step has one) and the events."""
    code = getattr(exc, "exit_code", 1)
    try:
        b.logline(f"# build failed (exit {code}): {exc}")
    except OSError:
        pass
    try:
        store.log_event(
            paths, b.env, "build-failed", snapshot=b.sid, error=str(exc), exit_code=code, log=str(b.log)
        )
    except OSError:
        pass


def _free_bytes(paths: VolumePaths) -> int:
    """Free bytes on the volume; psutil is imported here, so a no-op sync never loads it."""
    import psutil

    return int(psutil.disk_usage(str(paths.root)).free)


def _with_space_figures(exc: VolenvError, paths: VolumePaths, need: int) -> DiskSpaceError:
    try:
        free = _free_bytes(paths)
    except OSError:
        free = -1
    return DiskSpaceError(
        f"{exc.message}; free now {_mib(free)}, needed at least {_mib(need)}",
        hint=exc.hint or "free space with `volenv gc`, or grow the volume",
    )


def clean_stale_staging(paths: VolumePaths, env: str) -> int:
    """Under the env's lease, every staging dir of this env is a dead (or fenced-off) builder's."""
    removed = 0
    try:
        names = os.listdir(paths.staging)
    except FileNotFoundError:
        return 0
    for name in names:
        path = paths.staging / name
        if name.startswith(".verify-"):
            inner = _listdir(path)
            if not any(_staging_env(n) == env for n in inner):
                continue
        elif _staging_env(name) != env:
            continue
        try:
            remove_tree(path, paths.root)
            removed += 1
            reporter.info(f"removed a dead builder's staging {name}")
        except (OSError, VolenvError) as exc:
            reporter.warn(f"could not remove stale staging {name}: {exc}")
    return removed


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _staging_env(name: str) -> str | None:
    """`<env>-<12 hex>.<unique>` -> env (env names may contain '-' and '.')."""
    head = name
    for i in range(len(head)):
        if (
            head[i] == "-"
            and len(head) > i + 13
            and head[i + 13] == "."
            and all(c in "0123456789abcdef" for c in head[i + 1 : i + 13])
        ):
            return head[:i]
    return None


def check_filesystem(paths: VolumePaths) -> None:
    """Refuse, before anything else is written, a filesystem that cannot hold a venv (or a
    staging directory that is a planted link: the build would write through it)."""
    safe_mkdirs(paths.staging, paths.root)
    caps = probe_filesystem(paths.staging)
    if not caps["symlinks"]:
        raise VolumeError(
            f"the filesystem under {paths.root} has no symbolic links (exFAT/FAT?): a venv cannot live there",
            hint="put the volenv root on ext4, xfs, a network volume or another POSIX filesystem",
        )
    if not caps["hardlinks"]:
        reporter.warn(f"{paths.root} has no hard links: packages are copied into every snapshot (more disk)")


def probe_filesystem(directory: Path) -> dict[str, bool]:
    """What the volume's filesystem can do: symlinks (venvs need them), hard links (uv's cache)."""
    directory.mkdir(parents=True, exist_ok=True)
    base = directory / f".probe-{unique_suffix()}"
    caps = {"symlinks": True, "hardlinks": True}
    try:
        base.write_bytes(b"probe")
        try:
            os.symlink(base.name, f"{base}.sym")
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            caps["symlinks"] = False
        try:
            os.link(base, f"{base}.lnk")
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            caps["hardlinks"] = False
    finally:
        for suffix in ("", ".sym", ".lnk"):
            try:
                os.unlink(f"{base}{suffix}")
            except OSError:
                pass
    return caps


def _publish_pointers(paths: VolumePaths, manifest: Manifest, sid: str, action: str) -> None:
    store.write_index(paths, manifest.name, manifest.digest, sid, str(manifest.path))
    faults.point("current")
    if store.read_current(paths, manifest.name) != sid:
        store.switch_current(paths, manifest.name, sid, manifest.digest, action)
    from volenv.store.alias import write_alias

    write_alias(paths, manifest)


# ---------------------------------------------------------------- helpers


def quarantine(
    paths: VolumePaths, snapshot_dir: Path, reason: str, report: dict[str, Any] | None = None
) -> Path:
    """Move a damaged snapshot aside (never delete it silently), report next to it."""
    safe_mkdirs(paths.quarantine, paths.root)
    dest = paths.quarantine / f"{snapshot_dir.name}.{unique_suffix()}"
    safe_rename(snapshot_dir, dest, paths.root)  # neither side through a planted symlink
    atomic_write_json(
        dest.with_name(dest.name + ".report.json"),
        {"schema": 1, "snapshot": snapshot_dir.name, "time": time.time(), "reason": reason, "report": report},
    )
    reporter.warn(f"quarantined {snapshot_dir.name} -> {dest} ({reason})")
    return dest


def _count_requirements(lock: Path) -> int | None:
    """Pinned requirement lines of a lock (`name==1.0`, `name @ url`): the package count."""
    try:
        lines = lock.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    return sum(1 for ln in lines if ln[:1].isalnum() and ("==" in ln or " @ " in ln))


def _installed_count(venv: Path) -> int:
    """Distributions installed so far (uv writes each one's .dist-info as it installs)."""
    return sum(1 for sp in site_packages_dirs(venv) for name in os.listdir(sp) if name.endswith(".dist-info"))


def site_packages_dirs(venv: Path) -> list[str]:
    lib = venv / "lib"
    return [str(p) for p in sorted(lib.glob("python*/site-packages"))]


def detect_link_mode(venv: Path) -> str:
    for sp in site_packages_dirs(venv):
        for dirpath, _dirs, files in os.walk(sp):
            for name in files:
                if name.endswith(".py"):
                    return "hardlink" if os.lstat(os.path.join(dirpath, name)).st_nlink > 1 else "copy"
    return "hardlink"


def link_previous_bytecode(staging: Path, previous: list[Path]) -> int:
    """Hard-link __pycache__/*.pyc from a previous snapshot for every source file that is the
    very same inode there (uv hard-links both from one cache entry)."""
    if not previous:
        return 0
    prev = previous[0]
    linked = 0
    tag = f".{sys.implementation.cache_tag}"
    for sp in site_packages_dirs(staging):
        rel_sp = os.path.relpath(sp, staging)
        for dirpath, _dirs, files in os.walk(sp):
            rel_dir = os.path.relpath(dirpath, staging)
            for name in files:
                if not name.endswith(".py"):
                    continue
                src = os.path.join(dirpath, name)
                old_src = os.path.join(prev, rel_dir, name)
                try:
                    if os.lstat(src).st_ino != os.lstat(old_src).st_ino:
                        continue
                except OSError:
                    continue
                pyc_name = name[:-3] + _cache_tag(prev, rel_sp, tag) + ".pyc"
                old_pyc = os.path.join(prev, rel_dir, "__pycache__", pyc_name)
                new_pyc = os.path.join(dirpath, "__pycache__", pyc_name)
                try:
                    os.makedirs(os.path.join(dirpath, "__pycache__"), exist_ok=True)
                    os.link(old_pyc, new_pyc)
                    linked += 1
                except FileExistsError:
                    continue
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    continue
    return linked


# Runs in the snapshot's interpreter (its magic number, its cache tag): compiles the NUL-separated
# paths on stdin. The embedded source path is made relative to the snapshot (stripdir), so the
# bytes do not depend on where the build staged; imports replace it with the real path anyway.
_COMPILE_DRIVER = """
import compileall, os, sys
ok = True
with open(sys.argv[2], "rb") as fh:
    names = fh.read().split(b"\\0")
for f in names:
    if f:
        ok = bool(compileall.compile_file(os.fsdecode(f), quiet=1, stripdir=sys.argv[1])) and ok
sys.exit(0 if ok else 1)
"""


def compile_bytecode(venv: Path) -> tuple[bool, str]:
    """Byte-compile every module of the venv's site-packages in one worker process per core,
    each given its share of the files at once: `compileall -j` sends files to its pool one at a
    time, and that round trip cost a third of a cold build of a real stack. (failed, output)"""
    files: list[str] = []
    for sp in site_packages_dirs(venv):
        for dirpath, _dirs, names in os.walk(sp):
            files.extend(os.path.join(dirpath, n) for n in names if n.endswith(".py"))
    if not files:
        return False, ""
    workers = max(1, min(os.cpu_count() or 1, len(files) // 200 + 1))
    env = activation_env_for_build(venv)
    with tempfile.TemporaryDirectory(prefix="volenv-compile-") as tmp:
        procs = []
        for i in range(workers):
            listing = os.path.join(tmp, f"files-{i}")
            with open(listing, "wb") as fh:
                fh.write("\0".join(files[i::workers]).encode("utf-8", "surrogateescape"))
            out = open(os.path.join(tmp, f"out-{i}"), "w+b")  # noqa: SIM115 - closed below
            cmd = [str(venv / "bin" / "python"), "-c", _COMPILE_DRIVER, str(venv), listing]
            procs.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env), out))
        failed, output = False, []
        try:
            for proc, out in procs:
                failed = proc.wait() != 0 or failed
                out.seek(0)
                output.append(out.read().decode("utf-8", "replace"))
        except BaseException:  # Ctrl-C: no worker may still write while staging is removed
            for proc, _out in procs:
                proc.kill()
                proc.wait()
            raise
        finally:
            for _proc, out in procs:
                out.close()
    return failed, "".join(output)


def _cache_tag(prev: Path, rel_sp: str, default: str) -> str:
    # lib/pythonX.Y/site-packages -> .cpython-XY (the snapshot's interpreter, not ours)
    ver = rel_sp.split(os.sep)[1].removeprefix("python").replace(".", "")
    return f".cpython-{ver}" if ver.isdigit() else default


def unique_size(snapshot_dir: Path) -> int:
    """Bytes held only by this snapshot (files with one link): the space a rebuild may need."""
    total = 0
    for dirpath, _dirs, files in os.walk(snapshot_dir):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if st.st_nlink == 1:
                total += st.st_size
    return total


def activation_env_for_build(venv: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _raise_if_disk_full(proc: subprocess.CompletedProcess[str], log: str | None = None) -> None:
    text = (proc.stderr or "") + (proc.stdout or "")
    if "No space left on device" in text or "Disk quota exceeded" in text:
        where = f" (build log: {log})" if log else ""
        raise DiskSpaceError(f"the volume filled up while uv was writing{where}")


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB ({n} bytes)"
