"""The manifest: what an environment is, parsed strictly (unknown keys are errors).

Kept cheap to import: `volenv run` parses the manifest on every container start.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volenv.base.errors import ManifestError, shq
from volenv.base.redact import redact_url

SCHEMA = 1
SLUG = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!\.)){0,62}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HEX40 = re.compile(r"^[0-9a-f]{40}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
PYTHON_REQUEST = re.compile(r"^(?:(?:cpython|pypy|graalpy)[@-]?)?[0-9]+(?:\.[0-9]+){0,2}t?$")
TORCH_BACKEND = re.compile(r"^(?:auto|cpu|cu[0-9]{2,3}|rocm[0-9.]+|xpu)$")


def is_env_name(text: Any) -> bool:
    """An env name from anywhere (a manifest, a record, a bucket): the manifest's name rule."""
    return isinstance(text, str) and SLUG.fullmatch(text) is not None


def is_snapshot_id(text: Any) -> bool:
    """`<env>-<12 hex>` with a valid env name: safe as one path component."""
    if not isinstance(text, str):
        return False
    env, sep, digest = text.rpartition("-")
    hex12 = len(digest) == 12 and all(c in "0123456789abcdef" for c in digest)
    return bool(sep) and hex12 and is_env_name(env)


RESERVED_ENV = {"VIRTUAL_ENV", "PYTHONHOME", "VOLENV_SNAPSHOT", "VOLENV_ROOT"}


@dataclass(frozen=True)
class IndexSettings:
    url: str | None = None
    extra_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    torch_backend: str | None = None


@dataclass(frozen=True)
class OptionalGroup:
    name: str
    requirements: tuple[str, ...]
    required: bool = False


@dataclass(frozen=True)
class HfSource:
    repo: str
    revision: str
    files: tuple[str, ...] = ()
    allow_patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hf: HfSource | None = None
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    optional: bool = False
    # never | always | auto: copy to the container's disk at `run` (auto: when the volume is slow)
    local: str = "never"


@dataclass(frozen=True)
class Manifest:
    path: Path
    name: str
    python: str
    requirements: tuple[str, ...]
    lockfile: Path | None = None
    lockfile_sha256: str | None = None
    requirements_file: Path | None = None
    # every file of the requirements file's -r/-c closure, with its sha256: build inputs
    requirements_file_inputs: tuple[tuple[Path, str], ...] = ()
    index: IndexSettings = field(default_factory=IndexSettings)
    optional: tuple[OptionalGroup, ...] = ()
    post_install: tuple[tuple[str, ...] | str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    smoke_imports: tuple[str, ...] = ()
    models: tuple[ModelSpec, ...] = ()
    # [activate] trace-cmd: a start that sync traces (trace.py); not a build input, not in the digest
    trace_cmd: tuple[str, ...] = ()
    # requirement -> digest of its local source tree or file (`name @ ./path`): a build input
    local_sources: tuple[tuple[str, str], ...] = ()

    def build_inputs(self) -> dict[str, Any]:
        """Everything that determines the snapshot's content (not activation env, not models)."""
        data: dict[str, Any] = {
            "name": self.name,
            "python": self.python,
            "requirements": sorted(self.requirements),
            "lockfile_sha256": self.lockfile_sha256,
            # without credentials: the seal, the digest and every record only ever see these
            "index": {
                "url": redact_url(self.index.url) if self.index.url else None,
                "extra_urls": [redact_url(u) for u in self.index.extra_urls],
                "find_links": [redact_url(u) for u in self.index.find_links],
                "no_index": self.index.no_index,
                "torch_backend": self.index.torch_backend,
            },
            "optional": {
                g.name: {"requirements": sorted(g.requirements), "required": g.required}
                for g in self.optional
            },
            "post_install": [list(c) if isinstance(c, tuple) else c for c in self.post_install],
            "smoke_imports": list(self.smoke_imports),
            **self._requirements_file_input(),
        }
        if self.local_sources:  # only when present: other manifests keep their digests and ids
            data["local_sources"] = dict(self.local_sources)
        return data

    def _requirements_file_input(self) -> dict[str, Any]:
        """The requirements file's closure by path (relative to the manifest) and content
        digest; absent for manifests without one, so their digests stay what they were."""
        if self.requirements_file is None:
            return {}
        import os

        base = self.path.parent
        return {
            "requirements_file": {
                "path": os.path.relpath(self.requirements_file, base),
                "files": {os.path.relpath(f, base): sha for f, sha in self.requirements_file_inputs},
            }
        }

    def normalized(self) -> dict[str, Any]:
        """The whole manifest as plain data, stable across formatting and key order."""
        data = self.build_inputs()
        data["schema"] = SCHEMA
        data["env"] = dict(self.env)
        data["models"] = [_model_dict(m) for m in self.models]
        return data

    @property
    def digest(self) -> str:
        """The index key: any change to the manifest (or its lockfile) gives a new digest."""
        return hashlib.sha256(canonical_json(self.normalized())).hexdigest()

    def find_links_paths(self) -> list[str]:
        """find-links entries with local paths made absolute against the manifest's folder."""
        out = []
        for entry in self.index.find_links:
            if "://" in entry:
                out.append(entry)
            else:
                out.append(str((self.path.parent / entry).resolve()))
        return out


def _model_dict(m: ModelSpec) -> dict[str, Any]:
    d: dict[str, Any] = {"name": m.name, "optional": m.optional}
    if m.hf is not None:
        d["hf"] = {
            "repo": m.hf.repo,
            "revision": m.hf.revision,
            "files": list(m.hf.files),
            "allow_patterns": list(m.hf.allow_patterns),
        }
    else:
        d["url"] = redact_url(m.url) if m.url else m.url  # identity: sha256 + URL without credentials
        d["sha256"] = m.sha256
        d["size"] = m.size
    if m.local != "never":  # absent when never: manifests without it keep their digests
        d["local"] = m.local
    return d


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class _Checker:
    """Walks a TOML table, naming file and dotted key in every error."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def fail(self, key: str, problem: str, hint: str | None = None) -> ManifestError:
        return ManifestError(self.path, key, problem, hint=hint)

    def keys(self, table: dict[str, Any], allowed: set[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                dotted = f"{prefix}{key}"
                raise self.fail(
                    dotted, f"unknown key {key!r}", hint=f"allowed here: {', '.join(sorted(allowed))}"
                )

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {_type(value)} {value!r}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {_type(value)} {value!r}")
        return value

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_type(value)} {value!r}")
        return value

    def strings(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list of strings, got {_type(value)} {value!r}")
        for i, item in enumerate(value):
            self.string(item, f"{key}[{i}]")
        return tuple(value)

    def slug(self, value: Any, key: str) -> str:
        text = self.string(value, key)
        if not SLUG.match(text):
            raise self.fail(
                key,
                f"{text!r} is not a plain name (letters, digits, '.', '_', '-'; no '/', '..' or spaces;"
                " at most 63 characters)",
            )
        return text

    def requirements(self, value: Any, key: str) -> tuple[str, ...]:
        from packaging.requirements import InvalidRequirement, Requirement

        items = self.strings(value, key)
        out = []
        for i, item in enumerate(items):
            if item.lstrip().startswith(("-e ", "-e.", "-e/", "--editable")):
                raise self.fail(
                    f"{key}[{i}]",
                    f"editable requirement {item!r}: a sealed snapshot cannot point into a source tree",
                    hint="write 'NAME @ ./path' instead: volenv rebuilds the snapshot when that tree changes",
                )
            try:
                req = Requirement(item)
            except InvalidRequirement as exc:
                first = str(exc).splitlines()[0]
                raise self.fail(f"{key}[{i}]", f"invalid requirement {item!r}: {first}") from None
            out.append(str(req))
        return tuple(out)


def _type(value: Any) -> str:
    return {
        str: "string",
        int: "integer",
        float: "float",
        bool: "boolean",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)


TOP_KEYS = {
    "name",
    "python",
    "requirements",
    "requirements-file",
    "lockfile",
    "index",
    "optional",
    "build",
    "activate",
    "models",
}


def load_manifest(path: str | Path) -> Manifest:
    """Parse and validate; raises ManifestError (exit 2) naming file, key and value."""
    p = Path(path)
    c = _Checker(p)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise c.fail("", "no such file", hint=_init_hint(p)) from None
    except IsADirectoryError:
        raise c.fail("", "is a directory, expected a TOML manifest") from None
    except OSError as exc:
        raise c.fail("", f"cannot read: {exc.strerror}") from None
    if p.suffix in (".txt", ".in"):
        _refuse_foreign(c, p, "requirements")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise c.fail("", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        if _looks_like_requirements(raw):
            _refuse_foreign(c, p, "requirements")
        raise c.fail("", f"invalid TOML: {exc}") from None
    kind = _foreign_kind(p, data)
    if kind is not None:
        _refuse_foreign(c, p, kind)
    return _parse(p.absolute(), data, c)


def _init_hint(p: Path) -> str:
    """A missing manifest: the `volenv init` command that writes it, from what lies beside it."""
    for source in ("uv.lock", "pyproject.toml", "requirements.txt"):
        if (p.parent / source).is_file():
            return f"write it from {source}: volenv init {shq(p.parent / source)} -o {shq(p)}"
    return (
        f"write one: volenv init SOURCE -o {shq(p)} (SOURCE: a requirements.txt, pyproject.toml or uv.lock)"
    )


def _foreign_kind(p: Path, data: dict[str, Any]) -> str | None:
    """A TOML file that is some other tool's (a pyproject, a uv.lock, a pylock), not a manifest."""
    ours = "name" in data
    if p.name == "uv.lock" or ({"version", "package"} <= data.keys() and not ours):
        return "uv.lock"
    if "lock-version" in data and not ours:
        return "pylock"
    if "build-system" in data or isinstance(data.get("project"), dict) or ("tool" in data and not ours):
        return "pyproject"
    return None


def _refuse_foreign(c: _Checker, p: Path, kind: str) -> None:
    what = {
        "requirements": "a requirements file",
        "pyproject": "a pyproject.toml",
        "uv.lock": "a uv.lock",
        "pylock": "a pylock.toml lockfile",
    }[kind]
    if kind == "pylock":
        hint = f'use it from a manifest: lockfile = "{p.name}"'
    else:
        hint = f"write a manifest from it: volenv init {shq(p)}"
    raise c.fail("", f"this is {what}, not a volenv manifest", hint=hint)


def _looks_like_requirements(raw: bytes) -> bool:
    """Its first meaningful line is a pip option or a requirement (a cheap sniff, not a parser)."""
    for line in raw.decode("utf-8", "replace").splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        # a TOML `key = value` line never matches: a requirement has `==`, not a lone `=`
        return bool(re.match(r"^(-[a-z-]|[A-Za-z0-9][A-Za-z0-9._-]*\s*(\[|==|[<>!~]=?|;|@|$))", text))
    return False


def _parse(p: Path, data: dict[str, Any], c: _Checker) -> Manifest:
    c.keys(data, TOP_KEYS, "")
    if "name" not in data:
        raise c.fail("name", "missing (every manifest names its environment)")
    name = c.slug(data["name"], "name")
    python = c.string(data.get("python", "3.11"), "python")
    _check_python(c, python)
    if "requirements" not in data and "lockfile" not in data and "requirements-file" not in data:
        raise c.fail("requirements", "missing (give requirements, a requirements-file or a lockfile)")
    if "requirements" in data and "lockfile" in data:
        raise c.fail(
            "requirements",
            "cannot be combined with 'lockfile' (the lockfile is the whole package set)",
            hint="add them to the lockfile (`uv pip compile --format pylock.toml`), or drop `lockfile`",
        )
    requirements = c.requirements(data.get("requirements", []), "requirements")
    req_file, req_inputs, req_local = _parse_requirements_file(c, p, data)

    lockfile: Path | None = None
    lock_sha: str | None = None
    if "lockfile" in data:
        rel = c.string(data["lockfile"], "lockfile")
        lockfile = (p.parent / rel).resolve()
        if not re.match(r"^pylock\.([^.]+\.)?toml$", lockfile.name):
            raise c.fail("lockfile", f"{rel!r}: expected a pylock.toml or pylock.<name>.toml file (PEP 751)")
        try:
            lock_bytes = lockfile.read_bytes()
        except OSError as exc:
            raise c.fail("lockfile", f"{rel!r}: cannot read ({exc.strerror})") from None
        try:
            tomllib.loads(lock_bytes.decode())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise c.fail("lockfile", f"{rel!r}: not a valid TOML lockfile ({exc})") from None
        lock_sha = hashlib.sha256(lock_bytes).hexdigest()

    index = _parse_index(c, data.get("index", {}))
    optional = _parse_optional(c, data.get("optional", {}))
    post_install = _parse_build(c, data.get("build", {}))
    env, smoke = _parse_activate(c, data.get("activate", {}))
    trace_cmd = _parse_trace_cmd(c, data.get("activate", {}))
    models = _parse_models(c, data.get("models", []))
    return Manifest(
        path=p,
        name=name,
        python=python,
        requirements=requirements,
        lockfile=lockfile,
        lockfile_sha256=lock_sha,
        requirements_file=req_file,
        requirements_file_inputs=req_inputs,
        index=index,
        optional=optional,
        post_install=post_install,
        env=env,
        smoke_imports=smoke,
        trace_cmd=trace_cmd,
        models=models,
        local_sources=tuple(
            sorted({**dict(_local_sources(c, p.parent, requirements, optional)), **req_local}.items())
        ),
    )


def _parse_requirements_file(
    c: _Checker, p: Path, data: dict[str, Any]
) -> tuple[Path | None, tuple[tuple[Path, str], ...], dict[str, str]]:
    """A pip requirements file (uv parses it at resolve time); here only its -r/-c closure is
    read, so that editing any file of it changes the digest, and its local packages, whose
    trees are build inputs as in `requirements` (editable ones are refused)."""
    if "requirements-file" not in data:
        return None, (), {}
    key = "requirements-file"
    if "lockfile" in data:
        raise c.fail(
            key,
            "cannot be combined with `lockfile` (a lockfile is the whole package set)",
            hint="drop one of `requirements-file` and `lockfile`",
        )
    rel = c.string(data[key], key)
    if not rel.strip():
        raise c.fail(key, "empty")
    top = (p.parent / rel).resolve()
    inputs: dict[Path, str] = {}
    local: dict[str, str] = {}
    pending = [(top, rel)]
    while pending:
        path, shown = pending.pop()
        if path in inputs:
            continue
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            raise c.fail(key, f"{shown!r}: no such file ({path})") from None
        except IsADirectoryError:
            raise c.fail(key, f"{shown!r}: is a directory, expected a requirements file") from None
        except OSError as exc:
            raise c.fail(key, f"{shown!r}: cannot read ({exc.strerror})") from None
        inputs[path] = hashlib.sha256(content).hexdigest()
        for inc in _included_files(content):
            if "://" not in inc:
                pending.append(((path.parent / inc).resolve(), f"{inc} (included by {path.name})"))
        local.update(_file_local_sources(c, key, path, content, p.parent))
    return top, tuple(sorted(inputs.items())), local


_PATH_START = ("./", "../", "/", "file:")


def _file_local_sources(c: _Checker, key: str, path: Path, content: bytes, folder: Path) -> dict[str, str]:
    """`NAME @ path`, `file:` and bare-path lines of a requirements file -> `NAME @ ./path`
    (relative to the manifest's folder) and the digest of what they name; `-e` lines refused.
    Paths are relative to the requirements file's folder; other lines are uv's to read."""
    from packaging.requirements import InvalidRequirement, Requirement

    out: dict[str, str] = {}
    for line in _logical_lines(content):
        where = f"{path.name}: {line!r}"
        if re.match(r"^(-e|--editable)(\s|=|\.|/|$)", line):
            raise c.fail(
                key,
                f"{where}: editable requirements are refused"
                " (a sealed snapshot cannot point into a source tree)",
                hint="drop `-e`: `NAME @ ./path` installs a copy that volenv rebuilds when the tree changes",
            )
        if not line or line.startswith("-"):
            continue
        if line.startswith(_PATH_START) or line == ".":
            target = local_path(path.parent, line.split(";")[0].strip())
            name = _local_project_name(target) if target is not None else None
            if name is None:
                raise c.fail(
                    key, f"{where}: a local package needs a name here", hint=f"write `NAME @ {line}`"
                )
        elif "@" in line:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue  # uv will say what is wrong with it
            target, name = local_path(path.parent, req.url), req.name
        else:
            continue
        if target is None:
            continue
        if not target.exists():
            raise c.fail(key, f"{where}: {target} does not exist (paths start at the file's folder)")
        try:
            digest = source_digest(target)
        except OSError as exc:
            raise c.fail(key, f"{where}: cannot read {exc.filename or target}: {exc.strerror}") from None
        rel = os.path.relpath(target, folder)
        out[f"{name} @ {rel if rel.startswith('..') else './' + rel}"] = digest
    return out


def _local_project_name(target: Path) -> str | None:
    """The distribution name of a local project folder (its pyproject) or wheel/sdist file."""
    from packaging.utils import (
        InvalidSdistFilename,
        InvalidWheelFilename,
        parse_sdist_filename,
        parse_wheel_filename,
    )

    try:
        if target.is_dir():
            name = tomllib.loads((target / "pyproject.toml").read_text(encoding="utf-8"))["project"]["name"]
            return name if isinstance(name, str) else None
        if target.name.endswith(".whl"):
            return str(parse_wheel_filename(target.name)[0])
        return str(parse_sdist_filename(target.name)[0])
    except (OSError, KeyError, TypeError, ValueError, InvalidWheelFilename, InvalidSdistFilename):
        return None


_INCLUDE = re.compile(r"^(?:-r|-c|--requirement|--constraint)(?:\s*=\s*|\s+|(?<=-[rc]))(\S+)")


def _logical_lines(content: bytes) -> list[str]:
    """A requirements file's lines as pip reads them: continuations joined, comments dropped."""
    text = content.decode("utf-8", "replace").replace("\\\n", "")
    return [re.sub(r"(^|\s)#.*$", "", line).strip() for line in text.splitlines()]


def _included_files(content: bytes) -> list[str]:
    """The paths a requirements file names with -r/-c (pip's line continuation and comment
    rules); everything else in it is uv's to read."""
    out = []
    for line in _logical_lines(content):
        m = _INCLUDE.match(line)
        if m:
            out.append(m.group(1).strip("'\""))
    return out


SOURCE_SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__"}  # anywhere in a source tree
SOURCE_SKIP_TOP = {"build", "dist", ".venv", ".tox", ".nox"}  # at its top only (a subpackage may be `build`)


def _local_sources(
    c: _Checker, folder: Path, requirements: tuple[str, ...], optional: tuple[OptionalGroup, ...]
) -> tuple[tuple[str, str], ...]:
    """Each `name @ path` / `file:` requirement -> digest of what it points at: uv caches a
    local build by path, so without this an edited tree would be 'reused' with the old code."""
    from packaging.requirements import Requirement

    keyed = [("requirements", i, r) for i, r in enumerate(requirements)]
    for g in optional:
        keyed += [(f"optional.{g.name}.requirements", i, r) for i, r in enumerate(g.requirements)]
    out: dict[str, str] = {}
    for key, i, text in keyed:
        if "@" not in text:  # only direct references name a path
            continue
        target = local_path(folder, Requirement(text).url)
        if target is None:
            continue
        if not target.exists():
            raise c.fail(
                f"{key}[{i}]",
                f"{text!r}: {target} does not exist (relative paths start at the manifest's folder)",
            )
        try:
            out[text] = source_digest(target)
        except OSError as exc:
            raise c.fail(
                f"{key}[{i}]", f"{text!r}: cannot read {exc.filename or target}: {exc.strerror}"
            ) from None
    return tuple(sorted(out.items()))


def local_path(folder: Path, url: str | None) -> Path | None:
    """The local file or directory a requirement's URL names (relative to `folder`), else None."""
    if url is None:
        return None
    if url.startswith("file:"):
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            return None
        return (folder / unquote(parts.path)).resolve()
    if "://" in url or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*\+", url):  # http(s), git+..., etc.
        return None
    return (folder / url).resolve()


def source_digest(path: Path) -> str:
    """sha256 over a source tree's paths, exec bits, link targets and contents (VCS metadata,
    caches and build outputs skipped), or over a wheel/sdist file's bytes."""
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    for dirpath, dirs, files in os.walk(path):
        skip = SOURCE_SKIP_DIRS | SOURCE_SKIP_TOP if dirpath == str(path) else SOURCE_SKIP_DIRS
        dirs[:] = sorted(d for d in dirs if d not in skip and not d.endswith(".egg-info"))
        links = [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]  # not walked: hashed
        dirs[:] = [d for d in dirs if d not in links]
        for name in sorted([*files, *links]):
            if name.endswith((".pyc", ".pyo")):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path).encode("utf-8", "surrogateescape")
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                h.update(b"L\0" + rel + b"\0" + os.readlink(full).encode("utf-8", "surrogateescape") + b"\0")
                continue
            h.update(b"F\0" + rel + b"\0" + (b"x" if st.st_mode & 0o111 else b"-") + b"\0")
            with open(full, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def _check_python(c: _Checker, python: str) -> None:
    if PYTHON_REQUEST.match(python):
        return
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        SpecifierSet(python)
    except InvalidSpecifier:
        raise c.fail(
            "python", f"{python!r} is not a Python request (e.g. '3.11', '3.11.7', '>=3.11,<3.12')"
        ) from None
    if not python.strip():
        raise c.fail("python", "empty")


def _parse_index(c: _Checker, value: Any) -> IndexSettings:
    t = c.table(value, "index")
    c.keys(t, {"url", "extra-urls", "find-links", "no-index", "torch-backend"}, "index.")
    url = c.string(t["url"], "index.url") if "url" in t else None
    extra = c.strings(t.get("extra-urls", []), "index.extra-urls")
    for i, u in enumerate((url, *extra) if url else extra):
        if not re.match(r"^(https?|file)://\S+$", u):
            key = "index.url" if (url and i == 0) else "index.extra-urls"
            raise c.fail(key, f"{u!r} is not an http(s):// or file:// URL")
    find_links = c.strings(t.get("find-links", []), "index.find-links")
    no_index = c.boolean(t.get("no-index", False), "index.no-index")
    backend = None
    if "torch-backend" in t:
        backend = c.string(t["torch-backend"], "index.torch-backend")
        if not TORCH_BACKEND.match(backend):
            raise c.fail(
                "index.torch-backend", f"{backend!r} is not a uv torch backend (auto, cpu, cu126, ...)"
            )
    return IndexSettings(url, extra, find_links, no_index, backend)


def _parse_optional(c: _Checker, value: Any) -> tuple[OptionalGroup, ...]:
    t = c.table(value, "optional")
    groups = []
    for gname, gval in t.items():
        key = f"optional.{gname}"
        c.slug(gname, key)
        g = c.table(gval, key)
        c.keys(g, {"requirements", "required"}, f"{key}.")
        if "requirements" not in g:
            raise c.fail(f"{key}.requirements", "missing")
        reqs = c.requirements(g["requirements"], f"{key}.requirements")
        if not reqs:
            raise c.fail(f"{key}.requirements", "empty list")
        required = c.boolean(g.get("required", False), f"{key}.required")
        groups.append(OptionalGroup(gname, reqs, required))
    return tuple(groups)


def _parse_build(c: _Checker, value: Any) -> tuple[tuple[str, ...] | str, ...]:
    t = c.table(value, "build")
    c.keys(t, {"post-install"}, "build.")
    cmds = t.get("post-install", [])
    if not isinstance(cmds, list):
        raise c.fail("build.post-install", f"expected a list of commands, got {_type(cmds)} {cmds!r}")
    out: list[tuple[str, ...] | str] = []
    for i, cmd in enumerate(cmds):
        key = f"build.post-install[{i}]"
        if isinstance(cmd, str):
            if not cmd.strip():
                raise c.fail(key, "empty command")
            out.append(cmd)
        elif isinstance(cmd, list) and cmd:
            out.append(c.strings(cmd, key))
        else:
            raise c.fail(key, f"expected a shell string or a non-empty argv list, got {cmd!r}")
    return tuple(out)


def _parse_activate(c: _Checker, value: Any) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    t = c.table(value, "activate")
    c.keys(t, {"env", "smoke-imports", "trace-cmd"}, "activate.")
    env_t = c.table(t.get("env", {}), "activate.env")
    env = []
    for k, v in env_t.items():
        key = f"activate.env.{k}"
        if not ENV_NAME.match(k):
            raise c.fail(key, f"{k!r} is not a valid environment variable name")
        if k in RESERVED_ENV:
            raise c.fail(key, f"{k} is set by volenv itself and cannot be overridden")
        text = c.string(v, key)
        if "\0" in text:
            raise c.fail(key, "contains a NUL byte, which no environment value can hold")
        from volenv.base.envvars import expand_env_value

        try:
            expand_env_value(text, {})
        except ValueError as exc:
            raise c.fail(
                key, f"{text!r}: {exc}", hint="write ${NAME} for a variable, $$ for a literal $"
            ) from None
        env.append((k, text))
    smoke = c.strings(t.get("smoke-imports", []), "activate.smoke-imports")
    for i, mod in enumerate(smoke):
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", mod):
            raise c.fail(f"activate.smoke-imports[{i}]", f"{mod!r} is not a module name")
    return tuple(sorted(env)), smoke


def _parse_trace_cmd(c: _Checker, value: Any) -> tuple[str, ...]:
    """A command line (split as a shell would, nothing expanded) or a list of arguments."""
    import shlex

    t = c.table(value, "activate")
    raw = t.get("trace-cmd")
    if raw is None:
        return ()
    if isinstance(raw, str):
        try:
            argv = shlex.split(raw)
        except ValueError as exc:
            raise c.fail("activate.trace-cmd", f"{raw!r}: {exc}") from None
    else:
        argv = list(c.strings(raw, "activate.trace-cmd"))
    if not argv or any("\0" in a for a in argv):
        raise c.fail("activate.trace-cmd", "must be a non-empty command without NUL bytes")
    return tuple(argv)


def _parse_models(c: _Checker, value: Any) -> tuple[ModelSpec, ...]:
    if not isinstance(value, list):
        raise c.fail("models", f"expected an array of tables ([[models]]), got {_type(value)}")
    seen: set[str] = set()
    out = []
    for i, item in enumerate(value):
        key = f"models[{i}]"
        m = c.table(item, key)
        c.keys(m, {"name", "hf", "url", "sha256", "size", "optional", "local"}, f"{key}.")
        if "name" not in m:
            raise c.fail(f"{key}.name", "missing")
        name = c.slug(m["name"], f"{key}.name")
        if name in seen:
            raise c.fail(f"{key}.name", f"duplicate model name {name!r}")
        seen.add(name)
        optional = c.boolean(m.get("optional", False), f"{key}.optional")
        local = m.get("local", "never")
        if local not in ("never", "always", "auto"):
            raise c.fail(f"{key}.local", f"{local!r} is not one of never, always, auto")
        if ("hf" in m) == ("url" in m):
            raise c.fail(key, "give exactly one source: `hf = {...}` or `url` + `sha256`")
        if "hf" in m:
            for k in ("sha256", "size"):
                if k in m:
                    raise c.fail(f"{key}.{k}", "only for `url` models (hf files are checked against the Hub)")
            out.append(ModelSpec(name, hf=_parse_hf(c, m["hf"], f"{key}.hf"), optional=optional, local=local))
            continue
        url = c.string(m["url"], f"{key}.url")
        if not re.match(r"^https?://\S+$", url):
            raise c.fail(f"{key}.url", f"{url!r} is not an http(s) URL")
        if "sha256" not in m:
            raise c.fail(f"{key}.sha256", "missing (a url model must be pinned by its checksum)")
        sha = c.string(m["sha256"], f"{key}.sha256").lower()
        if not HEX64.match(sha):
            raise c.fail(f"{key}.sha256", f"{m['sha256']!r} is not 64 hex digits")
        size = m.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            raise c.fail(f"{key}.size", f"expected a positive integer, got {size!r}")
        out.append(ModelSpec(name, url=url, sha256=sha, size=size, optional=optional, local=local))
    return tuple(out)


def _parse_hf(c: _Checker, value: Any, key: str) -> HfSource:
    t = c.table(value, key)
    c.keys(t, {"repo", "revision", "files", "allow-patterns"}, f"{key}.")
    if "repo" not in t:
        raise c.fail(f"{key}.repo", "missing")
    repo = c.string(t["repo"], f"{key}.repo")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$", repo) or ".." in repo:
        raise c.fail(f"{key}.repo", f"{repo!r} is not an 'owner/name' repository id")
    if "revision" not in t:
        raise c.fail(f"{key}.revision", "missing (pin a 40-hex commit for reproducible snapshots)")
    rev = c.string(t["revision"], f"{key}.revision")
    if not HEX40.match(rev):
        raise c.fail(f"{key}.revision", f"{rev!r} is not a 40-hex commit id (branches and tags move)")
    files = c.strings(t.get("files", []), f"{key}.files")
    patterns = c.strings(t.get("allow-patterns", []), f"{key}.allow-patterns")
    for i, f in enumerate(files):
        if f.startswith("/") or ".." in f.split("/"):
            raise c.fail(f"{key}.files[{i}]", f"{f!r} must be a relative path inside the repository")
    if not files and not patterns:
        raise c.fail(key, "give `files` or `allow-patterns` (never a whole repository by accident)")
    return HfSource(repo, rev, files, patterns)


def manifest_from_seal(data: dict[str, Any], path: str) -> Manifest:
    """Rebuild a Manifest from the normalized copy a seal carries (for repair): the build
    inputs are exact; relative find-links resolve against the original manifest's folder."""
    c = _Checker(Path(path))
    idx = data.get("index", {})
    raw: dict[str, Any] = {
        "name": data["name"],
        "python": data["python"],
        "requirements": data["requirements"],
        "index": {
            k: v
            for k, v in {
                "url": idx.get("url"),
                "extra-urls": idx.get("extra_urls", []),
                "find-links": idx.get("find_links", []),
                "no-index": idx.get("no_index", False),
                "torch-backend": idx.get("torch_backend"),
            }.items()
            if v is not None
        },
        "optional": {k: dict(v) for k, v in data.get("optional", {}).items()},
        "build": {"post-install": data.get("post_install", [])},
        "activate": {"env": data.get("env", {}), "smoke-imports": data.get("smoke_imports", [])},
    }
    m = _parse(Path(path), raw, c)
    # a plain `sync` would reuse the damaged snapshot (its seal is fine): --reinstall-all builds
    # a fresh one, refreshing any damaged file in uv's cache on the way
    hint = f"volenv sync --reinstall-all {shlex.quote(path)}"
    if data.get("lockfile_sha256"):
        problem = "a snapshot built from a lockfile cannot be repaired in place"
        raise ManifestError(path, "lockfile", problem, hint=hint)
    if data.get("requirements_file"):
        problem = "a snapshot built from a requirements-file cannot be repaired in place"
        raise ManifestError(path, "requirements-file", problem, hint=hint)
    if dict(m.local_sources) != data.get("local_sources", {}):
        raise ManifestError(
            path,
            "requirements",
            "a local source tree changed since this snapshot was built: it cannot be rebuilt as it was",
            hint="`volenv sync MANIFEST` builds a new snapshot from the tree as it is now",
        )
    return m
