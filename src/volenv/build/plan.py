"""Plan and resolve: the manifest, the resolved package set (or the lockfile) and the interpreter
give the snapshot id; an index hit or an existing snapshot means nothing to build. The options,
plan and result of a sync are data here, so the steps and the lifecycle share them."""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from volenv.base.errors import (
    BuildError,
    UsageError,
    VolenvError,
    shq,
)
from volenv.base.ui import reporter
from volenv.build.interp import fingerprint_key, probe
from volenv.build.uvinputs import resolver_args, sources_input
from volenv.build.uvtool import index_args, last_error_line, raise_if_disk_full, run_uv
from volenv.manifest.schema import Manifest, canonical_json
from volenv.store import pointers as store
from volenv.store.paths import VolumePaths
from volenv.store.sealcheck import (
    SealProblem,
    check_seal,
)
from volenv.store.volio import (
    atomic_write_bytes,
    safe_mkdirs,
)

if TYPE_CHECKING:  # filelock (and psutil, in _free_bytes) load only when a build really
    pass  # starts: a no-op sync is one process start, they a tenth of it


DEFAULT_MIN_FREE = 128 * 1024 * 1024


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
    packages: tuple[Any, ...] = ()  # --dry-run: dryrun.PlannedPackage, each resolved package
    steps: dict[str, float] = field(default_factory=dict)  # a build: seconds per step, in order


@dataclass(frozen=True)
class ResolveLog:
    """uv's resolution output: in the temp dir while resolving; kept as a build log under
    logs/<env>/ when resolution fails (the failure names that path), else copied into the
    build's own log."""

    path: Path
    final: Path
    root: Path

    def keep(self) -> None:
        try:  # logs/<env>/ reached without links (a planted one is refused, never written through)
            safe_mkdirs(self.final.parent, self.root)
            atomic_write_bytes(
                self.final, self.path.read_bytes() if self.path.exists() else b"", root=self.root
            )
        except VolenvError as exc:
            reporter.warn(f"could not write the resolve log {self.final}: {exc.message}")
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
        constraints.write_text("\n".join(constraint_lines(base)) + "\n")
        direct = direct_references(manifest.requirements)
        groups: dict[str, tuple[str, ...]] = {}
        unresolvable: dict[str, str] = {}
        for g in manifest.optional:
            group_reqs = [*index_lines, *(with_direct_reference(r, direct) for r in g.requirements)]
            try:
                groups[g.name] = _compile(
                    paths, manifest, group_reqs, tmp / f"group-{g.name}", constraints, python, opts, log
                )
            except BuildError as exc:
                reason = _group_failure(
                    paths, manifest, group_reqs, tmp / f"alone-{g.name}", python, opts, exc
                )
                if g.required:
                    raise BuildError(
                        f"required group '{g.name}' {reason}", step="resolve", log_path=exc.log_path
                    ) from exc
                unresolvable[g.name] = reason
                reporter.warn(f"optional group '{g.name}' {reason}; building without it")
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


def constraint_lines(pins: tuple[str, ...]) -> list[str]:
    """The base's pins as uv takes constraints: named `name==version` lines only. uv writes a
    local or URL requirement of the base as the bare path or URL (`./`, `file:///...`), and a
    constraints file cannot hold those (uv: "Unnamed requirements are not allowed as
    constraints"); the groups get them as requirements instead (with_direct_reference)."""
    from packaging.requirements import InvalidRequirement, Requirement

    out = []
    for line in pins:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue  # a bare path or URL
        if req.url is None:
            out.append(line)
    return out


def direct_references(requirements: tuple[str, ...]) -> dict[str, str]:
    """canonical name -> the URL or path the base requirements give it (`NAME @ ./path`)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    out: dict[str, str] = {}
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.url is not None:
            out[str(canonicalize_name(req.name))] = req.url
    return out


def with_direct_reference(text: str, direct: dict[str, str]) -> str:
    """A group requirement on a package the base takes from a path or URL (a project's own
    extra, `tts-worker[audio]`) resolved from that same place, never from an index that may
    hold a stranger's package under the name."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    try:
        req = Requirement(text)
    except InvalidRequirement:
        return text
    url = direct.get(str(canonicalize_name(req.name)))
    if url is None or req.url is not None:
        return text
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f" ; {req.marker}" if req.marker else ""
    return f"{req.name}{extras} @ {url}{marker}"


def _group_failure(
    paths: VolumePaths,
    manifest: Manifest,
    requirements: list[str],
    stem: Path,
    python: str,
    opts: SyncOptions,
    exc: BuildError,
) -> str:
    """Why a group does not resolve against the base, said truly: when it resolves on its own,
    its pins conflict with the base's; else uv's own reason for the group alone."""

    def cause(err: BuildError) -> str:
        text = err.message.removeprefix(f"build step '{err.step}' failed: ")
        if err.log_path:
            text = text.removesuffix(f" (build log: {err.log_path})")
        return text.removeprefix("resolution failed: ")

    try:
        _compile(paths, manifest, requirements, stem, None, python, opts)
    except BuildError as alone:
        return f"does not resolve: {cause(alone)}"
    return f"resolves on its own but not together with the base requirements: {cause(exc)}"


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
    # [sources]: the packages pinned to a named index, named here or already pinned by the base
    pinned = constraints.read_text().splitlines() if constraints is not None else []
    sources += sources_input(manifest, [*requirements, *pinned], stem.with_suffix(".sources"))
    sources += resolver_args(manifest, stem.parent)
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
    if opts.offline and manifest.local_sources:
        # uv caches a local package's build by path and refuses --refresh-package offline: a
        # build from its cache could hold the tree's old code under the new tree's digest
        names = ", ".join(sorted(t.split(" @ ")[0] for t, _d in manifest.local_sources))
        raise UsageError(
            f"--offline cannot build {manifest.name}: it names local packages ({names}), which uv"
            " rebuilds only with --refresh-package, refused offline",
            hint="sync without --offline (a snapshot that exists is reused offline as it is)",
        )
    args += refresh_args(manifest, opts.reinstall, reinstall=False)
    args += index_args(manifest)
    # cwd: relative `name @ ./path` requirements start at the manifest's folder (uv keeps them
    # relative in its output, so the snapshot id does not depend on where the folder lives)
    proc = run_uv(args, paths, log.path if log else None, cwd=manifest.path.parent, offline=opts.offline)
    if proc.returncode != 0:
        raise_if_disk_full(proc)
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


def requirements_file_options(manifest: Manifest) -> tuple[str, ...]:
    """The index options the requirements file and its includes carry, read from the files
    themselves (a repair does not resolve again, so there is no compiled file to read them
    from): --index-url/-i, --extra-index-url, --find-links/-f (a relative one made absolute
    against its file's folder) and --no-index; with none of them, the manifest's [index] decides."""
    lines: list[str] = []
    for path, _sha in manifest.requirements_file_inputs:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for raw in text.replace("\\\n", "").splitlines():
            words = raw.split("#", 1)[0].split()
            if not words:
                continue
            opt, _, value = words[0].partition("=")
            if not value and len(words) > 1:
                value = words[1]
            opt = {"-i": "--index-url", "-f": "--find-links"}.get(opt, opt)
            if opt == "--find-links" and value and "://" not in value and not Path(value).is_absolute():
                value = str((path.parent / value).resolve())
            if opt in ("--index-url", "--extra-index-url", "--find-links") and value:
                lines.append(f"{opt} {value}")
            elif opt == "--no-index":
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
