"""`volenv init SOURCE`: write a manifest (and, with --lock, a pylock.toml via uv) from what a
user already has: a requirements.txt, a pyproject.toml project or a uv.lock.

uv does all the parsing of requirements and lockfiles; this module only reads TOML tables
(tomllib) and the RECORD files of the wheels it installs into a throwaway folder to learn the
import names for the smoke test.

Long: one command over three source kinds (requirements, pyproject, uv.lock) that all end in the
same manifest text; the reading of each kind is a few short functions, kept beside the one
writer they feed.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from volenv.base.errors import ManifestError, UsageError, shq
from volenv.base.ui import reporter
from volenv.manifest.parse import load_manifest
from volenv.manifest.schema import SLUG

DEFAULT_PYTHON = "3.11"

# distribution name -> import name, for the fallback guess (when the wheels cannot be fetched)
KNOWN_IMPORTS = {
    "attrs": "attr",
    "beautifulsoup4": "bs4",
    "dnspython": "dns",
    "faiss-cpu": "faiss",
    "faiss-gpu": "faiss",
    "grpcio": "grpc",
    "llama-cpp-python": "llama_cpp",
    "onnxruntime-gpu": "onnxruntime",
    "openai-whisper": "whisper",
    "opencv-contrib-python": "cv2",
    "opencv-contrib-python-headless": "cv2",
    "opencv-python": "cv2",
    "opencv-python-headless": "cv2",
    "pillow": "PIL",
    "protobuf": "google.protobuf",
    "pycryptodome": "Crypto",
    "pyjwt": "jwt",
    "pymupdf": "fitz",
    "pyopenssl": "OpenSSL",
    "python-dateutil": "dateutil",
    "python-dotenv": "dotenv",
    "python-multipart": "multipart",
    "pyyaml": "yaml",
    "pyzmq": "zmq",
    "scikit-image": "skimage",
    "scikit-learn": "sklearn",
    "tensorflow-cpu": "tensorflow",
    "websocket-client": "websocket",
}
_NOT_IMPORTS = {"test", "tests", "testing", "docs", "doc", "examples", "benchmarks", "scripts", "bin"}


@dataclass(frozen=True)
class InitOptions:
    source: Path
    name: str | None = None
    python: str | None = None
    output: Path | None = None
    force: bool = False
    lock: bool = False
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False


@dataclass(frozen=True)
class InitResult:
    manifest: str
    lockfile: str | None
    source: str
    kind: str  # requirements | pyproject | uv.lock
    name: str
    python: str
    smoke_imports: tuple[str, ...]
    imports_from: str  # wheels (their RECORD) | guessed (from the names) | none
    notes: tuple[str, ...] = ()  # what the project's Dockerfile installs that the manifest does not


@dataclass(frozen=True)
class _Index:
    url: str | None = None
    extra_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()  # absolute paths or URLs
    no_index: bool = False

    def args(self) -> list[str]:
        out = ["--no-index"] if self.no_index else []
        if self.url:
            out += ["--index-url", self.url]
        for u in self.extra_urls:
            out += ["--extra-index-url", u]
        for f in self.find_links:
            out += ["--find-links", f]
        return out

    def empty(self) -> bool:
        return not (self.url or self.extra_urls or self.find_links or self.no_index)


@dataclass(frozen=True)
class _Project:
    """What the source says, before anything is written."""

    kind: str
    source: Path
    name: str
    python: str
    requirements: tuple[str, ...] = ()  # inline requirements (pyproject deps, uv.lock pins)
    direct: tuple[str, ...] = ()  # the direct dependencies (smoke imports come from these)
    optional: dict[str, tuple[str, ...]] = field(default_factory=dict)
    index: _Index = _Index()
    root: Path | None = None  # the project's root folder (.git, pyproject.toml or Dockerfile)
    steer: _UvSteering = field(default_factory=lambda: _UvSteering())


@dataclass(frozen=True)
class _UvSteering:
    """What a uv project tells its resolver beyond the dependencies, as the manifest says it:
    `[tool.uv.sources]` index entries with their `[[tool.uv.index]]`, override-dependencies,
    exclude-dependencies."""

    sources: tuple[tuple[str, str], ...] = ()  # package -> index name
    named: tuple[tuple[str, str], ...] = ()  # index name -> url
    overrides: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()


def init(opts: InitOptions) -> InitResult:
    """Read the source, learn the import names, then write (validated, temp + rename)."""
    source = _locate(opts.source)
    out = (opts.output or source.parent / "volenv.toml").absolute()
    lock = out.parent / "pylock.toml" if opts.lock else None
    for target in (out, lock):
        if target is not None and target.exists() and not opts.force:
            raise UsageError(f"{target} already exists", hint="pass --force to overwrite it")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent} is not a directory")
    project = _read(source, opts)
    with tempfile.TemporaryDirectory(prefix="volenv-init-") as tmp:
        imports, how = _smoke_imports(project, Path(tmp))
    notes = dockerfile_notes(project)
    with _Staged(out, lock) as staged:
        if lock is not None:
            _write_lock(project, staged.lock_path, staged.dir)
        text = _manifest_text(project, out, imports, lock)
        staged.write_manifest(text)
    for note in notes:
        reporter.info(f"note: {note}")
    return InitResult(
        str(out),
        str(lock) if lock else None,
        str(source),
        project.kind,
        project.name,
        project.python,
        imports,
        how,
        notes,
    )


# ---------------------------------------------------------------- reading the source


def _locate(source: Path) -> Path:
    if source.is_dir():
        for name in ("uv.lock", "pyproject.toml", "requirements.txt"):
            if (source / name).is_file():
                return (source / name).absolute()
        raise UsageError(f"{source}: no uv.lock, pyproject.toml or requirements.txt in this folder")
    if not source.is_file():
        raise UsageError(f"{source}: no such file")
    return source.absolute()


def _read(source: Path, opts: InitOptions) -> _Project:
    cli_index = _Index(
        opts.index_url,
        tuple(opts.extra_index_urls),
        tuple(f if "://" in f else str(Path(f).absolute()) for f in opts.find_links),
        opts.no_index,
    )
    if source.name == "uv.lock":
        return _read_uv_lock(source, opts, cli_index)
    if source.suffix == ".toml":
        data = _toml(source)
        if "project" in data:
            return _read_pyproject(source, data, opts, cli_index)
        raise UsageError(
            f"{source}: no [project] table (expected a pyproject.toml, a uv.lock or a requirements file)"
        )
    root = project_root(source.parent)
    pyproject: dict[str, Any] = {}
    if (root / "pyproject.toml").is_file():
        try:
            pyproject = _toml(root / "pyproject.toml").get("project") or {}
        except UsageError:
            pyproject = {}
    requires = pyproject.get("requires-python") if isinstance(pyproject, dict) else None
    return _Project(
        kind="requirements",
        source=source,
        name=_name(opts.name, pyproject.get("name") if isinstance(pyproject, dict) else None, root / "x"),
        python=_interpreter(opts.python)
        or _python_version_file(source.parent, root)
        or (requires if isinstance(requires, str) else None)
        or dockerfile_python(source.parent, root)
        or DEFAULT_PYTHON,
        index=cli_index,
        root=root,
    )


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it as TOML: {exc}") from None


_TYPE_NAMES: dict[type, str] = {dict: "table", list: "list", str: "string", bool: "boolean"}


def _shape(source: Path, key: str, value: Any, typ: type, item: type | None = None) -> None:
    """One clear line (exit 2) for a key of the wrong type, where uv itself would refuse the
    file: never an AttributeError further down."""
    if not isinstance(value, typ) or (
        item is not None and not all(isinstance(v, item) for v in cast(list[Any], value))
    ):
        want = _TYPE_NAMES[typ] + (f" of {_TYPE_NAMES[item]}s" if item else "")
        raise UsageError(f"{source}: {key} is not a {want} (found {type(value).__name__} {value!r:.60})")


def check_pyproject_shapes(source: Path, data: dict[str, Any]) -> None:
    """The keys init reads, each of the type PEP 621 and uv's settings give it."""
    project = data.get("project")
    if project is not None:
        _shape(source, "[project]", project, dict)
        for key in ("name", "requires-python"):
            if key in project:
                _shape(source, f"project.{key}", project[key], str)
        for key in ("dynamic", "dependencies"):
            if key in project:
                _shape(source, f"project.{key}", project[key], list, str)
        extras = project.get("optional-dependencies")
        if extras is not None:
            _shape(source, "project.optional-dependencies", extras, dict)
            for name, reqs in extras.items():
                _shape(source, f"project.optional-dependencies.{name}", reqs, list, str)
    tool = data.get("tool")
    if tool is None:
        return
    _shape(source, "[tool]", tool, dict)
    uv = tool.get("uv")
    if uv is None:
        return
    _shape(source, "[tool.uv]", uv, dict)
    shapes: tuple[tuple[str, type, type | None], ...] = (
        ("index", list, dict),
        ("find-links", list, str),
        ("extra-index-url", list, str),
        ("index-url", str, None),
        ("no-index", bool, None),
        ("package", bool, None),
        ("sources", dict, None),
        ("override-dependencies", list, str),
        ("exclude-dependencies", list, str),
    )
    for key, typ, item in shapes:
        if key in uv:
            _shape(source, f"tool.uv.{key}", uv[key], typ, item)
    for n, entry in enumerate(uv.get("index") or []):
        _shape(source, f"tool.uv.index[{n}].url", entry.get("url"), str)
        entry_shapes: tuple[tuple[str, type], ...] = (("name", str), ("default", bool), ("explicit", bool))
        for key, want in entry_shapes:
            if key in entry:
                _shape(source, f"tool.uv.index[{n}].{key}", entry[key], want)
    for name, src in (uv.get("sources") or {}).items():
        if isinstance(src, list):
            _shape(source, f"tool.uv.sources.{name}", src, list, dict)
        else:
            _shape(source, f"tool.uv.sources.{name}", src, dict)


def _read_pyproject(source: Path, data: dict[str, Any], opts: InitOptions, cli_index: _Index) -> _Project:
    check_pyproject_shapes(source, data)
    project = data["project"]
    if "dependencies" in (project.get("dynamic") or []):
        raise UsageError(
            f"{source}: its dependencies are dynamic (computed by the build backend)",
            hint=f"uv pip compile {shq(source)} -o requirements.txt, then volenv init requirements.txt",
        )
    deps = _string_list(project.get("dependencies", []), source, "project.dependencies")
    extras = project.get("optional-dependencies", {}) or {}
    optional = {
        str(k): _string_list(v, source, f"project.optional-dependencies.{k}") for k, v in extras.items() if v
    }
    tool_uv = (data.get("tool") or {}).get("uv") or {}
    local: dict[str, Path | str] = {**_path_sources(source, tool_uv), **_git_sources(source, tool_uv)}
    package = _is_package(data, tool_uv) and isinstance(project.get("name"), str)
    if package:
        # an extra that names the project itself (`all = ["tts-worker[audio]"]`) means this tree
        from packaging.utils import canonicalize_name

        local.setdefault(str(canonicalize_name(project["name"])), source.parent)
    deps = tuple(_with_local(d, local) for d in deps)
    optional = {k: tuple(_with_local(d, local) for d in v) for k, v in optional.items()}
    if package:
        # as `uv sync` does: the project's own code is installed (a copy; its tree is an input)
        deps = (f"{project['name']} @ {source.parent.as_uri()}", *deps)
    index = cli_index if not cli_index.empty() else _uv_indexes(tool_uv, source.parent)
    if index.empty() and (source.parent / "uv.lock").is_file():
        index = _lock_registries(source.parent / "uv.lock")
    requires = project.get("requires-python")
    return _Project(
        kind="pyproject",
        source=source,
        name=_name(opts.name, project.get("name"), source),
        python=_interpreter(opts.python)
        or _python_version_file(source.parent, project_root(source.parent))
        or (requires if isinstance(requires, str) else None)
        or dockerfile_python(source.parent, project_root(source.parent))
        or DEFAULT_PYTHON,
        requirements=deps,
        direct=deps,
        optional=optional,
        index=index,
        root=project_root(source.parent),
        steer=_steering(source, tool_uv, [*deps, *(r for v in optional.values() for r in v)]),
    )


def _read_uv_lock(source: Path, opts: InitOptions, cli_index: _Index) -> _Project:
    """The locked set, exported by uv (markers kept), pinned inline; names and Python from the
    pyproject.toml beside it."""
    pyproject = source.parent / "pyproject.toml"
    if not pyproject.is_file():
        raise UsageError(f"{source}: no pyproject.toml beside it (uv export needs the project)")
    base = _read_pyproject(pyproject, _toml(pyproject), opts, cli_index)
    proc = _uv(
        [
            "export",
            "--frozen",
            "--no-dev",
            "--no-emit-project",
            "--no-hashes",
            "--no-header",
            "--no-annotate",
            "--format",
            "requirements-txt",
        ],
        cwd=source.parent,
    )
    if proc.returncode != 0:
        raise UsageError(f"{source}: uv export failed: {_uv_error(proc)}")
    by_path = {str(p): n for n, p in _path_sources(pyproject, _tool_uv(pyproject)).items()}
    pins = []
    for raw in proc.stdout.splitlines():
        ln = raw.strip().removeprefix("-e ").strip()
        if not ln or ln.startswith(("#", "-")):
            continue
        if ln.startswith(("./", "../", "/", "file:")):  # a path source, exported without its name
            path = str((source.parent / ln.split(";")[0].strip().removeprefix("file://")).resolve())
            if path not in by_path:
                raise UsageError(f"{source}: uv export gave a local path {ln!r} that names no package")
            ln = f"{by_path[path]} @ {Path(path).as_uri()}"
        pins.append(ln)
    own = [r for r in base.requirements if r.startswith(f"{base_project_name(pyproject)} @ ")]
    pins = own + pins
    return _Project(
        kind="uv.lock",
        source=source,
        name=base.name,
        python=base.python,
        requirements=tuple(pins),
        direct=base.direct,
        optional=base.optional,
        index=base.index,
        root=base.root,
        steer=base.steer,
    )


def _path_sources(source: Path, tool_uv: dict[str, Any]) -> dict[str, Path]:
    """[tool.uv.sources] path entries (canonical name -> absolute path). Those become
    `NAME @ path` requirements: written bare, the name would resolve to whatever an index
    holds under it. Other kinds (git, url, index, workspace) are said, not carried over."""
    from packaging.utils import canonicalize_name

    out: dict[str, Path] = {}
    other = []
    sources = tool_uv.get("sources") or {}
    for name, src in sources.items() if isinstance(sources, dict) else ():
        if isinstance(src, dict) and isinstance(src.get("path"), str):
            out[str(canonicalize_name(name))] = (source.parent / src["path"]).resolve()
        elif not (isinstance(src, dict) and ("git" in src or "index" in src)):  # those: below
            other.append(str(name))
    if other:
        reporter.warn(
            f"{source.name}: [tool.uv.sources] for {', '.join(sorted(other))} not carried over"
            " (path, git and index sources are); volenv resolves those names from the index"
        )
    return out


def _git_sources(source: Path, tool_uv: dict[str, Any]) -> dict[str, str]:
    """[tool.uv.sources] git entries -> `git+URL@COMMIT` (a branch or tag: the commit the
    uv.lock beside records; without one it is said and left out, never written moving)."""
    from packaging.utils import canonicalize_name

    from volenv.manifest.schema import GIT_COMMIT

    locked = _locked_git_commits(source.parent / "uv.lock")
    out: dict[str, str] = {}
    sources = tool_uv.get("sources") or {}
    for name, src in sources.items() if isinstance(sources, dict) else ():
        if not (isinstance(src, dict) and isinstance(src.get("git"), str)):
            continue
        key = str(canonicalize_name(name))
        rev = next((src[k] for k in ("rev", "tag", "branch") if isinstance(src.get(k), str)), "")
        commit = rev if GIT_COMMIT.fullmatch(rev) else locked.get(key)
        if commit is None:
            reporter.warn(
                f"{source.name}: [tool.uv.sources] {name} = git {src['git']} {rev or '(default branch)'}"
                " not carried over: a manifest pins a full commit (`uv lock` records it, then init again)"
            )
            continue
        sub = src.get("subdirectory")
        frag = f"#subdirectory={sub}" if isinstance(sub, str) else ""
        out[key] = f"git+{src['git']}@{commit}{frag}"
    return out


def _locked_git_commits(lock: Path) -> dict[str, str]:
    """package -> the commit a uv.lock resolved its git source to (`git = "URL?rev=X#COMMIT"`)."""
    from packaging.utils import canonicalize_name

    try:
        data = tomllib.loads(lock.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    out = {}
    for pkg in data.get("package") or []:
        src = pkg.get("source") if isinstance(pkg, dict) else None
        git = src.get("git") if isinstance(src, dict) else None
        if isinstance(git, str) and isinstance(pkg.get("name"), str) and "#" in git:
            out[str(canonicalize_name(pkg["name"]))] = git.rpartition("#")[2]
    return out


def _steering(source: Path, tool_uv: dict[str, Any], requirements: list[str]) -> _UvSteering:
    """[tool.uv.sources] index entries (for the packages the manifest names: uv applies a source
    to a direct dependency only) with the indexes they name, override- and exclude-dependencies."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    named_here = set()
    for text in requirements:
        try:
            named_here.add(str(canonicalize_name(Requirement(text).name)))
        except InvalidRequirement:
            continue
    indexes = {
        e["name"]: e["url"]
        for e in tool_uv.get("index") or []
        if isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("url"), str)
    }
    pinned: dict[str, str] = {}
    sources = tool_uv.get("sources") or {}
    for name, src in sources.items() if isinstance(sources, dict) else ():
        index = src.get("index") if isinstance(src, dict) else None
        if not isinstance(index, str):
            continue
        key = str(canonicalize_name(name))
        if index in indexes and key in named_here:
            pinned[key] = index
        else:
            reporter.warn(f"{source.name}: [tool.uv.sources] {name} = index {index!r} not carried over")
    used = {i for i in pinned.values()}
    return _UvSteering(
        sources=tuple(sorted(pinned.items())),
        named=tuple(sorted((n, u) for n, u in indexes.items() if n in used)),
        overrides=tuple(tool_uv.get("override-dependencies") or ()),
        excludes=tuple(tool_uv.get("exclude-dependencies") or ()),
    )


def _with_local(dep: str, local: dict[str, Path | str]) -> str:
    """A dependency that [tool.uv.sources] points at a local path or a git commit, as
    `NAME[extras] @ file:...` or `NAME[extras] @ git+...`."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    try:
        req = Requirement(dep)
    except InvalidRequirement:
        return dep
    path = local.get(str(canonicalize_name(req.name)))
    if path is None:
        return dep
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f" ; {req.marker}" if req.marker else ""
    url = path.as_uri() if isinstance(path, Path) else path
    return f"{req.name}{extras} @ {url}{marker}"


def _is_package(data: dict[str, Any], tool_uv: dict[str, Any]) -> bool:
    """uv's rule: a project is installed when it has a build system, unless `package = false`."""
    if tool_uv.get("package") is not None:
        return bool(tool_uv.get("package"))
    return "build-system" in data


def _tool_uv(pyproject: Path) -> dict[str, Any]:
    data = _toml(pyproject)
    check_pyproject_shapes(pyproject, data)
    tool_uv = (data.get("tool") or {}).get("uv") or {}
    return tool_uv if isinstance(tool_uv, dict) else {}


def base_project_name(pyproject: Path) -> str:
    name = (_toml(pyproject).get("project") or {}).get("name")
    return name if isinstance(name, str) else "\0"


def _uv_indexes(tool_uv: dict[str, Any], folder: Path) -> _Index:
    """[[tool.uv.index]] (the default one is the index URL, the others extra URLs), plus
    tool.uv.find-links (relative to the project) / no-index."""
    url = None
    extra: list[str] = []
    for entry in tool_uv.get("index") or []:
        if isinstance(entry, dict) and isinstance(entry.get("url"), str):
            if entry.get("default") and url is None:
                url = entry["url"]
            elif not entry.get("explicit"):
                extra.append(entry["url"])
    if isinstance(tool_uv.get("index-url"), str):
        url = url or tool_uv["index-url"]
    extra += [u for u in tool_uv.get("extra-index-url") or [] if isinstance(u, str)]
    links = tuple(
        f if "://" in f else str((folder / f).resolve())
        for f in tool_uv.get("find-links") or []
        if isinstance(f, str)
    )
    return _Index(url, tuple(extra), links, bool(tool_uv.get("no-index", False)))


def _lock_registries(lock: Path) -> _Index:
    """The registries a uv.lock's packages came from: URLs become index URLs, local folders
    find-links (then no index, as the lock was made without one)."""
    try:
        data = tomllib.loads(lock.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return _Index()
    urls: list[str] = []
    links: list[str] = []
    for pkg in data.get("package") or []:
        reg = (pkg.get("source") or {}).get("registry") if isinstance(pkg, dict) else None
        if not isinstance(reg, str):
            continue
        if "://" in reg:
            if reg not in urls:
                urls.append(reg)
        else:
            path = str((lock.parent / reg).resolve())
            if path not in links:
                links.append(path)
    if not links and set(urls) <= {"https://pypi.org/simple", "https://pypi.org/simple/"}:
        return _Index()  # PyPI alone (or nothing): the manifest's default
    return _Index(urls[0] if urls else None, tuple(urls[1:]), tuple(links), no_index=not urls)


def _string_list(value: Any, source: Path, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{source}: {key} is not a list of strings")
    return tuple(value)


def _python_version_file(folder: Path, root: Path | None = None) -> str | None:
    """uv's .python-version pin (its first line), from the source's folder up to the project's
    root (uv looks in parent folders too)."""
    for d in _folders_up(folder, root):
        try:
            text = (d / ".python-version").read_text(encoding="utf-8")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                return line
    return None


def _folders_up(folder: Path, root: Path | None) -> list[Path]:
    """folder, its parents, ..., up to root (just folder when root is not above it)."""
    out = [folder]
    if root is not None and root != folder and root in folder.parents:
        for parent in folder.parents:
            out.append(parent)
            if parent == root:
                break
    return out


ROOT_MARKERS = (".git", "pyproject.toml", "Dockerfile")


def manifest_id(project: _Project) -> str:
    """The project's id, and below a repository root (a monorepo's `services/a/requirements.txt`)
    the folder's path in it: two such folders are two projects, never one env by accident."""
    root = project.root or project.source.parent
    base = project_id(root)
    rel = os.path.relpath(project.source.parent.absolute(), root.absolute())
    return base if rel in (".", "") or rel.startswith("..") else f"{base}/{Path(rel).as_posix()}"


def project_id(root: Path) -> str:
    """The project's identity for `id`: its git remote (`github.com/acme/tts`, credentials and
    scheme dropped), else its root folder's absolute path. Read from .git/config, no subprocess."""
    import configparser

    config = root / ".git" / "config"
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        parser.read_string(config.read_text(encoding="utf-8", errors="replace"))
        url = parser.get('remote "origin"', "url", fallback="").strip()
    except (OSError, configparser.Error):
        url = ""
    if url:
        url = re.sub(r"^[a-z+]+://", "", url)  # https://, ssh://, git://
        url = url.split("@", 1)[-1]  # user:token@host
        url = re.sub(r"^([^/:]+):(?!\d+/)", r"\1/", url)  # git@github.com:acme/tts -> github.com/acme/tts
        url = url.removesuffix("/").removesuffix(".git")
        if url and len(url) <= 200 and url.isprintable():
            return url
    path = str(root.absolute())
    return path if len(path) <= 200 else path[-200:]


def project_root(folder: Path) -> Path:
    """The project's root: the nearest folder from `folder` up that holds .git, a
    pyproject.toml or a Dockerfile (`builder/requirements.txt` belongs to the repository
    above it); the folder itself when none does."""
    folder = folder.absolute()
    for d in (folder, *folder.parents):
        if any((d / m).exists() for m in ROOT_MARKERS):
            return d
    return folder


_DOCKER_PY = (
    re.compile(r"^python:(\d+\.\d+)", re.I),  # FROM python:3.10-slim
    re.compile(r"[-_:]py(?:thon)?(3\.\d+)(?:\b|[-_.])", re.I),  # runpod/pytorch:2.1.0-py3.10-cuda11.8
)


def dockerfile_python(folder: Path, root: Path | None) -> str | None:
    """The Python a Dockerfile (from the source's folder up to the root) builds on: its last
    FROM's python tag (`python:3.10-slim`, `...-py3.10-...`), else the `python3.X` its RUN
    steps install or call."""
    for d in _folders_up(folder, root):
        steps = _dockerfile_steps(d / "Dockerfile")
        if not steps:
            continue
        froms = [args.split()[0] for word, args, _n in steps if word == "FROM" and args.split()]
        for image in reversed(froms):
            name = image.rsplit("/", 1)[-1]
            for pattern in _DOCKER_PY:
                if m := pattern.search(name):
                    return m.group(1)
        for word, args, _n in steps:
            if word == "RUN" and (m := re.search(r"\bpython(3\.\d+)\b", args)):
                return m.group(1)
    return None


def _dockerfile_steps(path: Path) -> list[tuple[str, str, int]]:
    """(INSTRUCTION, arguments, line number) of a Dockerfile, continuation lines joined."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    steps: list[tuple[str, str, int]] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf.append(line[:-1])
            continue
        buf.append(line)
        joined = " ".join(b.strip() for b in buf)
        buf = []
        word, _, args = joined.partition(" ")
        steps.append((word.upper(), args.strip(), start))
    return steps


_PIP_INSTALL = re.compile(r"(?:^|\s)(?:uv\s+pip|pip3?(?:\.\d+)?|python[\d.]*\s+-m\s+pip)\s+install\s+(.*)$")
_TOOLS = {"pip", "setuptools", "wheel", "uv", "volenv"}


def dockerfile_notes(project: _Project) -> tuple[str, ...]:
    """The `pip install` steps of the project's Dockerfile that the manifest does not carry
    over: another requirements file, a second index (torch's), a git or URL package, packages
    named there and not in the manifest. Said, never guessed into the manifest."""
    import shlex

    root = project.root or project.source.parent
    dockerfile = root / "Dockerfile"
    carried = {_req_name(r) for r in (*project.requirements, *project.direct)}
    if project.kind == "requirements":
        carried |= {_req_name(r) or _egg_name(r) for r in requirement_lines(project.source)[1]}
    for reqs in project.optional.values():
        carried |= {_req_name(r) for r in reqs}
    notes: list[str] = []
    copies: list[tuple[str, Path]] = []  # (path in the image, path in the build context)
    workdir = "/"
    for word, args, line in _dockerfile_steps(dockerfile):
        if word == "WORKDIR" and args:
            workdir = os.path.normpath(os.path.join(workdir, args.split()[0]))
        if word in ("COPY", "ADD"):
            copies += _copied(args, workdir, root)
        if word != "RUN":
            continue
        for part in re.split(r"&&|;|\|\|", args):
            m = _PIP_INSTALL.search(part.strip())
            if not m:
                continue
            try:
                words = shlex.split(m.group(1))
            except ValueError:
                words = m.group(1).split()
            in_context = _in_context(copies, workdir, root)
            missing = _not_carried(words, project, in_context, carried)
            if missing:
                shown = os.path.relpath(dockerfile)
                where = f"{shown if not shown.startswith('..') else dockerfile}:{line}"
                notes.append(
                    f"{where} `pip install {' '.join(words)}` not carried over: {'; '.join(missing)}"
                )
    return tuple(notes)


def _copied(args: str, workdir: str, root: Path) -> list[tuple[str, Path]]:
    """A COPY/ADD step's (path in the image, path in the build context) pairs."""
    words = [w for w in args.split() if not w.startswith("--")]
    if len(words) < 2 or words[0].startswith("["):
        return []
    *srcs, dest = words
    dest = os.path.normpath(os.path.join(workdir, dest))
    if len(srcs) == 1 and not args.rstrip().endswith("/"):
        return [(dest, root / srcs[0])]
    return [(os.path.join(dest, os.path.basename(src.rstrip("/"))), root / src) for src in srcs]


def _in_context(copies: list[tuple[str, Path]], workdir: str, root: Path) -> Callable[[str], Path]:
    """A path a RUN step names, as the file of the build context it is a copy of (the last COPY
    that covers it), else as a path in the context itself."""

    def find(value: str) -> Path:
        image = os.path.normpath(os.path.join(workdir, value))
        for dest, src in reversed(copies):
            if image == dest:
                return src.resolve()
            if image.startswith(dest.rstrip("/") + "/"):
                return (src / os.path.relpath(image, dest)).resolve()
        return (root / value.lstrip("/")).resolve()

    return find


def _not_carried(
    words: list[str], project: _Project, in_context: Callable[[str], Path], carried: set[str]
) -> list[str]:
    what: list[str] = []
    packages: list[str] = []
    it = iter(words)
    for w in it:
        opt, eq, value = w.partition("=")
        if opt in (
            "-r",
            "--requirement",
            "-c",
            "--constraint",
            "-i",
            "--index-url",
            "--extra-index-url",
            "-f",
            "--find-links",
            "-e",
            "--editable",
        ):
            value = value if eq else next(it, "")
            if opt in ("-r", "--requirement"):
                if in_context(value) != project.source.resolve():
                    what.append(f"requirements file {value}")
            elif opt in ("-i", "--index-url", "--extra-index-url"):
                what.append(f"index {value}")
            elif opt in ("-f", "--find-links"):
                what.append(f"find-links {value}")
            elif opt in ("-e", "--editable") and value not in (".", "./"):
                what.append(f"editable {value}")
            continue
        if w.startswith("-"):
            continue
        if w in (".", "./") or w.startswith((".[", "./[")):
            if project.kind == "requirements":
                what.append(f"the project itself ({w})")
            continue
        if "://" in w or w.startswith("git+"):
            what.append(f"URL package {w}")
            continue
        name = _req_name(w)
        if name and name not in carried and name not in _TOOLS:
            packages.append(w)
    if packages:
        what.insert(0, f"packages {', '.join(packages)}")
    return what


def _name(given: str | None, project_name: Any, source: Path) -> str:
    """--name, else the project's name, else the source's folder, made a valid env name."""
    if given is not None:
        return given  # validated (exit 2) by the manifest parser like any manifest
    raw = project_name if isinstance(project_name, str) and project_name else source.parent.name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip(".-_")[:63].replace("..", ".")
    return slug if slug and SLUG.fullmatch(slug) else "env"


# ---------------------------------------------------------------- smoke imports


def _smoke_imports(project: _Project, tmp: Path) -> tuple[tuple[str, ...], str]:
    """Install the direct dependencies alone (no deps) into a throwaway folder and read each
    wheel's RECORD for its top-level module. When that fails, each requirement is tried on its
    own (one unfetchable git line does not cost the others), and the rest guessed from names;
    with no interpreter to install for, all are guessed, and that is the reason given."""
    if project.kind == "requirements":
        options, lines = requirement_lines(project.source)
        sources = ["-r", str(project.source)]
    else:
        options, lines = [], _direct_pins(project)
        if not lines:
            return (), "none"
        (tmp / "direct.in").write_text("\n".join(lines) + "\n")
        sources = ["-r", str(tmp / "direct.in")]
    missing = _missing_interpreter(project)
    if missing is not None:
        reporter.warn(f"{missing}; smoke imports are guessed from the requirement names")
        return _guessed(lines), "guessed"
    proc = _install_target(project, sources, tmp / "t")
    if proc.returncode == 0:
        return _read_imports(tmp / "t"), "wheels"
    reason = _uv_error(proc)
    found: set[str] = set()
    failed: list[str] = []
    for i, line in enumerate(lines):
        one = tmp / f"line-{i}.in"
        one.write_text("\n".join([*options, line]) + "\n")
        if _install_target(project, ["-r", str(one)], tmp / f"t{i}").returncode == 0:
            found |= set(_read_imports(tmp / f"t{i}"))
        else:
            failed.append(line)
    guessed = _guessed(failed)
    if failed:
        shown = ", ".join(failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        reporter.warn(
            f"could not fetch {len(failed)} of {len(lines)} requirements to learn their import names"
            f" ({shown}: {reason}); those are guessed from their names"
        )
    if not found and not guessed:
        return (), "none"
    return tuple(sorted(found | set(guessed))), "wheels" if not failed else "guessed"


def _install_target(project: _Project, sources: list[str], target: Path) -> subprocess.CompletedProcess[str]:
    return _uv(
        [
            "pip",
            "install",
            "--no-deps",
            "--target",
            str(target),
            "--python",
            project.python,
            "-q",
            *project.index.args(),
            *sources,
        ],
        cwd=project.source.parent,
    )


def _read_imports(target: Path) -> tuple[str, ...]:
    return tuple(sorted({n for d in sorted(target.glob("*.dist-info")) if (n := _record_import(d))}))


def _guessed(lines: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted({guess_import(n) for r in lines if (n := _req_name(r) or _egg_name(r))}))


def _egg_name(line: str) -> str:
    """The name a bare URL requirement gives in its `#egg=` fragment."""
    m = re.search(r"[#&]egg=([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    return m.group(1) if m else ""


def _missing_interpreter(project: _Project) -> str | None:
    """Why no wheel can be installed for the project's Python here (none matches), or None."""
    proc = _uv(["python", "find", project.python], cwd=project.source.parent)
    if proc.returncode == 0:
        return None
    why = _uv_error(proc)
    return f"no Python matching {project.python!r} on this machine to fetch the requirements for ({why})"


def requirement_lines(path: Path, seen: set[Path] | None = None) -> tuple[list[str], list[str]]:
    """A requirements file's index options (--index-url, --extra-index-url, --find-links,
    --no-index, as written, relative find-links made absolute) and its requirement lines, -r
    includes followed; comments, hashes and other options dropped."""
    seen = seen if seen is not None else set()
    path = path.resolve()
    if path in seen:
        return [], []
    seen.add(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return [], []
    options: list[str] = []
    lines: list[str] = []
    for raw in text.replace("\\\n", " ").splitlines():
        line = re.split(r"(?:^|\s)#(?!egg=)", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        if not line.startswith("-"):
            lines.append(re.sub(r"\s--hash[= ]\S+", "", line).strip())
            continue
        opt, _, value = line.replace("=", " ", 1).partition(" ")
        value = value.strip()
        opt = {"-i": "--index-url", "-f": "--find-links", "-r": "--requirement"}.get(opt, opt)
        if opt == "--requirement" and value:
            more_opts, more = requirement_lines(path.parent / value, seen)
            options += more_opts
            lines += more
        elif opt == "--find-links" and value:
            target = value if "://" in value else str((path.parent / value).resolve())
            options.append(f"--find-links {target}")
        elif opt in ("--index-url", "--extra-index-url") and value:
            options.append(f"{opt} {value}")
        elif opt == "--no-index":
            options.append(opt)
    return list(dict.fromkeys(options)), lines


def _interpreter(python: str | None) -> str | None:
    """--python as uv takes it: a version request, or an interpreter's path (made absolute)."""
    if python is None or ("/" not in python and not python.startswith(".")):
        return python
    path = Path(python).expanduser().absolute()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise UsageError(f"--python {python}: no executable interpreter there")
    return str(path)


def _direct_pins(project: _Project) -> list[str]:
    """The direct dependencies, pinned to the locked versions where a uv.lock gave them."""
    names = {_req_name(r) for r in project.direct}
    if project.kind == "uv.lock":
        return [r for r in project.requirements if _req_name(r) in names]
    return list(project.direct)


def _req_name(req: str) -> str:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    try:
        return str(canonicalize_name(Requirement(req).name))
    except InvalidRequirement:
        return ""


def guess_import(dist: str) -> str:
    """The import name of a distribution from its name alone: the known mismatches, else the
    normalized name with '-' and '.' as '_'."""
    from packaging.utils import canonicalize_name

    name = str(canonicalize_name(dist))
    return KNOWN_IMPORTS.get(name, name.replace("-", "_"))


def _record_import(dist_info: Path) -> str | None:
    """The one module to import for a wheel: from its RECORD, the top-level module named like
    the distribution, else the known mismatch, else the first public one; a namespace package
    gives its first subpackage (google -> google.protobuf)."""
    try:
        with open(dist_info / "RECORD", newline="", encoding="utf-8") as fh:
            paths = [row[0] for row in csv.reader(fh) if row]
    except OSError:
        return None
    packages: set[str] = set()
    modules: set[str] = set()
    for path in paths:
        parts = path.split("/")
        top = parts[0]
        if top.startswith("..") or top.endswith((".dist-info", ".data")) or top == "__pycache__":
            continue
        if len(parts) == 1:
            if top.endswith(".py"):
                modules.add(top[:-3])
            elif top.endswith((".so", ".pyd")):
                modules.add(top.split(".")[0])
        elif parts[-1].endswith((".py", ".so", ".pyd")):
            packages.add(top)
    found = {n for n in packages | modules if n.isidentifier()}
    if not found:
        return None
    dist = dist_info.name.split("-")[0]
    want = [dist.lower().replace(".", "_"), guess_import(dist).split(".")[0]]
    public = sorted(n for n in found if not n.startswith("_") and n.lower() not in _NOT_IMPORTS)
    by_lower = {n.lower(): n for n in found}
    choice = next((by_lower[w.lower()] for w in want if w.lower() in by_lower), None)
    choice = choice or (public or sorted(found))[0]
    if choice in packages and f"{choice}/__init__.py" not in paths:
        subs = sorted(
            p.split("/")[1]
            for p in paths
            if p.startswith(f"{choice}/") and p.count("/") >= 2 and p.endswith("/__init__.py")
        )
        if subs and subs[0].isidentifier():
            return f"{choice}.{subs[0]}"
    return choice


# ---------------------------------------------------------------- writing


class _Staged:
    """Files are written beside the output under private names (the lock at its final folder,
    since uv writes its local paths relative to it), the manifest validated there by the real
    manifest parser, then renamed into place; nothing is left behind on failure."""

    def __init__(self, out: Path, lock: Path | None) -> None:
        self.out = out
        self.lock = lock
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=".volenv-init-", dir=out.parent))
        except OSError as exc:
            raise UsageError(f"cannot write in {out.parent}: {exc.strerror}") from None
        # PEP 751's `pylock.NAME.toml`, in the folder the lock ends up in
        self.lock_path = out.parent / f"pylock.{self.dir.name.lstrip('.')}.toml"
        self.manifest_path: Path | None = None

    def __enter__(self) -> _Staged:
        return self

    def write_manifest(self, text: str) -> None:
        # validated at its final folder (requirements-file, find-links and `NAME @ ../path` are
        # relative to it), naming the staged lock
        staged = self.out.parent / f"{self.dir.name}.toml"
        check = text
        if self.lock is not None:
            named = f"lockfile = {json.dumps(self.lock.name)}\n"
            check = text.replace(named, f"lockfile = {json.dumps(self.lock_path.name)}\n", 1)
        staged.write_text(check, encoding="utf-8")
        self.manifest_path = staged
        try:
            load_manifest(staged)
        except ManifestError as exc:
            problem = exc.message.removeprefix(f"{staged}: ")
            raise UsageError(
                f"the manifest written from the source does not validate: {problem}", hint=exc.hint
            ) from None
        staged.write_text(text, encoding="utf-8")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        try:
            if kind is None and self.manifest_path is not None:
                if self.lock is not None:
                    os.replace(self.lock_path, self.lock)
                os.replace(self.manifest_path, self.out)
        finally:
            for left in (self.manifest_path, self.lock_path):
                if left is not None and left.exists():
                    left.unlink()
            shutil.rmtree(self.dir, ignore_errors=True)


def _write_lock(project: _Project, dest: Path, scratch: Path) -> None:
    """A pylock.toml (PEP 751) made by uv: exported from the uv.lock, else resolved."""
    if project.kind == "uv.lock":
        args = [
            "export",
            "--frozen",
            "--no-dev",
            "--no-editable",  # the project itself (a package) as a copy, as `NAME @ ./` is
            "--format",
            "pylock.toml",
            "-o",
            str(dest),
        ]
    else:
        if project.kind == "requirements":
            src = project.source
        else:
            src = scratch / "requirements.in"
            src.write_text("\n".join(project.requirements) + "\n")
        args = [
            "pip",
            "compile",
            str(src),
            "--format",
            "pylock.toml",
            "-o",
            str(dest),
            "--python",
            project.python,
            "--no-header",
            *project.index.args(),
        ]
    proc = _uv([*args, "-q"], cwd=project.source.parent)
    if proc.returncode != 0:
        raise UsageError(f"{project.source}: uv could not write the lockfile: {_uv_error(proc)}")


def _relative_local(req: str, folder: Path) -> str:
    """`NAME @ file:///abs` -> `NAME @ ./rel` (from the manifest's folder), so the manifest and
    the tree it names can move together."""
    head, sep, rest = req.partition(" @ file://")
    if not sep:
        return req
    path, sep2, marker = rest.partition(" ; ")
    from urllib.parse import unquote

    rel = os.path.relpath(unquote(path), folder)
    rel = "./" if rel == "." else rel if rel.startswith("..") else "./" + rel
    return f"{head} @ {rel}" + (f" ; {marker}" if sep2 else "")


def _manifest_text(project: _Project, out: Path, imports: Sequence[str], lock: Path | None) -> str:
    q = json.dumps  # a JSON string is a valid TOML basic string
    lines = [
        f"# Written by `volenv init` from {os.path.relpath(project.source, out.parent)}; edit freely.",
        "# id: which project the env belongs to; every manifest init writes for it carries the same",
        f"id = {q(manifest_id(project))}",
        f"name = {q(project.name)}",
        f"python = {q(project.python)}",
    ]
    if lock is not None:
        lines.append(f"lockfile = {q(lock.name)}")
    elif project.kind == "requirements":
        lines.append(f"requirements-file = {q(os.path.relpath(project.source, out.parent))}")
    else:
        lines.append("requirements = [")
        lines += [f"    {q(_relative_local(r, out.parent))}," for r in project.requirements]
        lines.append("]")
    steer = project.steer if lock is None else _UvSteering()  # a lockfile has them resolved
    for key, values in (("overrides", steer.overrides), ("excludes", steer.excludes)):
        if values:
            lines.append(f"{key} = [{', '.join(q(v) for v in values)}]")
    idx = project.index
    if not idx.empty():
        lines += ["", "[index]"]
        if idx.url:
            lines.append(f"url = {q(idx.url)}")
        if idx.extra_urls:
            lines.append(f"extra-urls = [{', '.join(q(u) for u in idx.extra_urls)}]")
        if idx.find_links:
            rel = [f if "://" in f else os.path.relpath(f, out.parent) for f in idx.find_links]
            lines.append(f"find-links = [{', '.join(q(f) for f in rel)}]")
        if idx.no_index:
            lines.append("no-index = true")
    for name, url in steer.named:
        lines += ["", "[[index.named]]", f"name = {q(name)}", f"url = {q(url)}"]
    if steer.sources:
        lines += ["", "[sources]"] + [f"{q(n)} = {{ index = {q(i)} }}" for n, i in steer.sources]
    for group, reqs in project.optional.items():
        listed = ", ".join(q(_relative_local(r, out.parent)) for r in reqs)
        lines += ["", f"[optional.{q(group)}]", f"requirements = [{listed}]"]
    lines += ["", "[activate]", f"smoke-imports = [{', '.join(q(m) for m in imports)}]"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- uv


def _uv(args: list[str], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    """uv with the user's own cache and settings (init never touches the volume)."""
    from volenv.build.uvtool import uv_bin

    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "UV_SYSTEM_PYTHON")
    }
    env.update({"UV_NO_PROGRESS": "1", "NO_COLOR": "1"})
    return subprocess.run([uv_bin(), *args], env=env, cwd=cwd, capture_output=True, text=True, check=False)


def _uv_error(proc: subprocess.CompletedProcess[str]) -> str:
    from volenv.build.uvtool import last_error_line

    return last_error_line(proc)
