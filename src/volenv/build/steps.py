"""The build's steps, in order, each a named method with a fault point (tests can kill the builder
at any of them): preflight -> stage -> install -> groups -> post-install -> compile -> smoke ->
record (+ wheel check) -> seal -> commit.

Long: the steps read top to bottom as one builder (STYLE.md, item 8), each with the error it
raises (its cause and log named); splitting the class would scatter that one lifecycle."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from volenv import __version__
from volenv.base import faults
from volenv.base.errors import (
    BuildError,
    DiskSpaceError,
    VolenvError,
    from_oserror,
)
from volenv.base.redact import redact_text
from volenv.base.ui import reporter, step_summary
from volenv.build.plan import DEFAULT_MIN_FREE, GroupState, SyncOptions, SyncPlan, SyncResult, refresh_args
from volenv.build.staging import (
    BUILDING_NAME,
    clean_stale_staging,
    free_bytes,
    quarantine,
    with_space_figures,
)
from volenv.build.uvinputs import resolver_args, sources_input
from volenv.build.uvtool import (
    index_args,
    install_progress,
    last_error_line,
    raise_if_disk_full,
    run_uv,
    uv_failure,
)
from volenv.build.venv import (
    activation_env_for_build,
    compile_bytecode,
    count_requirements,
    detect_link_mode,
    link_previous_bytecode,
    mib,
    unique_size,
)
from volenv.manifest.schema import Manifest
from volenv.store import pointers as store
from volenv.store.integrity import (
    Entry,
    WheelMismatch,
    build_record,
    check_shipped_bytecode,
    clashes,
    encode_record,
    load_record,
)
from volenv.store.paths import VolumePaths
from volenv.store.rootfind import fix_command
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
    open_append,
    read_regular,
    remove_tree,
    safe_mkdirs,
    safe_rename,
    unique_suffix,
)

if TYPE_CHECKING:  # filelock (and psutil, in free_bytes) load only when a build really
    from volenv.store.locks import BuildLease  # starts: a no-op sync is one process start, they a tenth of it


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
        self._log_made = False
        self.python = self.staging / "bin" / "python"
        self.groups: list[GroupState] = []
        self.import_report: dict[str, Any] | None = None
        self.stats: dict[str, int] = {}
        self.link_mode = "hardlink"
        self.need = DEFAULT_MIN_FREE
        self.previous = self._previous_snapshots()
        self.shipped_bytecode_damage: list[WheelMismatch] = []
        self.clashes: list[dict[str, Any]] = []

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

    def log_file(self) -> Any:
        """The build log, appended to without following a link (its name is predictable: a
        damaged snapshot makes the next start build the same id): created exclusively the first
        time, under a new name when something already sits at the planned one."""
        if not self._log_made:
            try:
                fd = open_append(self.log, self.paths.root, exclusive=True)
            except FileExistsError:
                self.log = self.log.with_name(f"{self.log.stem}.{unique_suffix()}.log")
                fd = open_append(self.log, self.paths.root, exclusive=True)
            self._log_made = True
        else:
            fd = open_append(self.log, self.paths.root)
        return os.fdopen(fd, "a", encoding="utf-8")

    def logline(self, text: str) -> None:
        with self.log_file() as fh:
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
            raise_if_disk_full(proc, str(self.log))
            f = uv_failure(proc)
            raise BuildError(f.message, step=step, log_path=str(self.log), cause=f.cause, hint=f.hint)
        return proc

    # -- steps

    def preflight(self, min_free: int | None) -> None:
        faults.point("preflight")
        self.stats["stale_staging_removed"] = clean_stale_staging(self.paths, self.env)
        need = DEFAULT_MIN_FREE if min_free is None else min_free
        if self.previous:
            need = max(need, unique_size(self.previous[0]))
        free = free_bytes(self.paths)
        self.stats["free_bytes"] = free
        self.stats["needed_bytes"] = need
        self.need = need
        if free < need:
            raise DiskSpaceError(
                f"not enough space on {self.paths.root} for a build: free now {mib(free)},"
                f" needed at least {mib(need)}",
                hint=f"free space with `{fix_command(str(self.paths.root), 'gc')}`, or pass --min-free"
                " to change the estimate",
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
        total = count_requirements(Path(args[2]))  # the resolved set: what uv installs
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
        pins = [*self.res.base, *(p for g in groups for p in self.res.groups[g])]
        if lock is None:  # the packages [sources] pins come from their index here too
            reqs += sources_input(self.manifest, pins, self.tmp / "sync.sources")
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

    def _resolver_inputs(self, group: str) -> list[str]:
        """[sources] (its pyproject, when the group's pins name a package pinned to a named
        index), overrides and excludes: `pip install` resolves the group's dependencies again."""
        pins = self.res.groups[group]
        project = sources_input(self.manifest, pins, self.tmp / f"group-{group}.sources")
        return [*(a for src in project for a in ("-r", src)), *resolver_args(self.manifest, self.tmp)]

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
                *self._resolver_inputs(g.name),
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
            raise_if_disk_full(proc, str(self.log))
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
            with reporter.step(f"post-install: {shown}"), self.log_file() as fh:
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
            result = compile_bytecode(self.staging)
        for line in result.log_lines():
            self.logline(line)
        if "No space left" in result.output:
            raise DiskSpaceError(f"volume full while compiling bytecode (build log: {self.log})")
        self.stats["bytecode_other_python"] = len(result.other_python)
        if result.failures or result.crashed:
            # files written for another Python (torch's _py312_intrinsics.py) never load here:
            # counted in the build log, not warned about on every build
            named = ", ".join(p for p, _ in result.failures[:3]) + (
                " ..." if len(result.failures) > 3 else ""
            )
            what = named or "a compile worker crashed"
            reporter.warn(
                f"{len(result.failures)} module{'' if len(result.failures) == 1 else 's'} failed to"
                f" byte-compile ({what}); importing them fails too:"
                f" see {self.log}"
            )

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
            tb = proc.stderr.strip().splitlines()[-20:]  # the import's traceback, its end
            raise BuildError(
                f"smoke import {first[0]!r} failed: {first[1]}",
                step="smoke",
                log_path=str(self.log),
                cause="\n".join(["the import's traceback:", *(" " * 7 + ln for ln in tb)]) if tb else None,
            )

    def imports(self) -> None:
        """The manifest's import check: every top-level module of every installed distribution
        imported in the staged snapshot (build/importcheck.py); a required distribution's
        failure fails the build, an optional group's warns; both go to the log and the seal."""
        if not self.manifest.import_check:
            return
        from volenv.base.envvars import apply_manifest_env
        from volenv.build.importcheck import check_imports

        required: list[str] = list(self.res.base)
        optional: list[str] = []
        for g in self.groups:
            if g.state == "installed":
                (required if g.required else optional).extend(self.res.groups.get(g.name, ()))
        env = apply_manifest_env(activation_env_for_build(self.staging), dict(self.manifest.env))
        with reporter.step("import check"):
            report = check_imports(
                self.staging,
                self.python,
                required_lines=required,
                optional_lines=optional,
                env_extra=env,
                ignore=self.manifest.import_ignore,
            )
        for line in report.log_lines():
            self.logline(line)
        self.import_report = report.to_data()
        reporter.detail(report.summary())
        if report.unchecked:
            reporter.warn(f"{report.summary()}: raise VOLENV_IMPORT_CHECK_BUDGET to check them all")
        for f in report.failures:
            if not f.required:
                reporter.warn(f"optional: import {f.module} ({f.distribution}) fails: {f.error}")
        bad = report.required_failures
        if bad:
            raise BuildError(
                f"import check: {len(bad)} module{'' if len(bad) == 1 else 's'} of required distributions"
                f" fail to import; {bad[0].module} ({bad[0].distribution}): {bad[0].error}",
                step="imports",
                log_path=str(self.log),
                cause="\n".join(f"{f.module} ({f.distribution}): {f.error}" for f in bad[1:10]) or None,
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
        self.clashes = [
            {"path": rel, "distributions": dists, "kept": kept} for rel, dists, kept in clashes(self.staging)
        ]
        if self.clashes:  # what uv accepts: the last installer's file stays; said once, never damage
            self.logline(
                f"# files shipped by several distributions (uv kept the last installer's): {self.clashes}"
            )
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
        # only the reinstalled distributions ship fresh bytecode now: the others' was compiled
        # by volenv already (numpy's shipped .pyc is volenv's own by this point)
        reinstalled = {m.distribution for m in mismatches}
        shipped = check_shipped_bytecode(self.staging, only=reinstalled)
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
            # our own log, read back without following a link (a planted one is never copied)
            atomic_write_bytes(meta / "build.log", read_regular(self.log, 8 << 20, tail=True))
        except OSError:
            pass
        if self.import_report is not None:  # the manifest's import check: `show` prints it
            seal["imports"] = self.import_report
        if self.clashes:  # files two distributions ship: `show` lists them (only when there are)
            seal["clashes"] = self.clashes
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
            publish_pointers(self.paths, self.manifest, self.sid, "build")

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
    resolve_seconds: float | None = None,
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
    steps: dict[str, float] = {} if resolve_seconds is None else {"resolve": resolve_seconds}

    def timed(name: str, *calls: Any) -> Any:
        t = time.perf_counter()
        out = None
        for call in calls:
            out = call()
        steps[name] = steps.get(name, 0.0) + time.perf_counter() - t
        return out

    try:
        try:
            b.preflight(opts.min_free)
            timed("stage", b.stage)
            timed("install", b.install, b.install_groups)
            timed("post-install", b.post_install)
            timed("compile", b.compile)
            timed("smoke", b.smoke)
            if manifest.import_check:
                timed("imports", b.imports)
            entries = timed("record", b.record)
            timed("seal", lambda: b.seal(entries), lambda: b.commit(lease, replace=repair))
        except OSError as exc:
            raise from_oserror(exc, f"build of {b.sid} failed (build log: {b.log})") from exc
    except DiskSpaceError as exc:
        b.abort()
        err = exc if "free now" in exc.message else with_space_figures(exc, paths, b.need)
        _log_failure(paths, b, err)
        raise err from exc
    except BaseException as exc:
        b.abort()
        _log_failure(paths, b, exc)
        raise
    b.logline(f"# {step_summary(steps)}")
    store.log_event(
        paths, b.env, "build-done", snapshot=b.sid, stats=b.stats, link_mode=b.link_mode, steps=steps
    )
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
        steps=steps,
    )


def _log_failure(paths: VolumePaths, b: _Build, exc: BaseException) -> None:
    """The failure goes into the build log (so every failed step has one) and the events."""
    interrupted = isinstance(exc, KeyboardInterrupt)  # Ctrl-C, SIGTERM: no message of its own
    code = 130 if interrupted else getattr(exc, "exit_code", 1)
    error = "interrupted" if interrupted else (str(exc) or type(exc).__name__)
    try:
        b.logline(f"# build failed (exit {code}): {error}")
    except OSError:
        pass
    try:
        store.log_event(
            paths, b.env, "build-failed", snapshot=b.sid, error=error, exit_code=code, log=str(b.log)
        )
    except OSError:
        pass


def publish_pointers(paths: VolumePaths, manifest: Manifest, sid: str, action: str) -> None:
    store.write_index(paths, manifest.name, manifest.digest, sid, str(manifest.path), manifest.id)
    faults.point("current")
    if store.read_current(paths, manifest.name) != sid:
        store.switch_current(paths, manifest.name, sid, manifest.digest, action)
    from volenv.store.alias import write_alias

    write_alias(paths.root, manifest)
