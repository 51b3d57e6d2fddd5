"""The manifest's shape: its name rules, the frozen dataclasses a parse yields, the canonical
JSON its digest is taken over, and the checker that names the file and key of a bad value."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volenv.base.errors import ManifestError
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
class NamedIndex:
    """An `[[index.named]]` entry: explicit, as uv's `explicit = true` (only the packages
    `[sources]` pins to it come from it)."""

    name: str
    url: str


@dataclass(frozen=True)
class IndexSettings:
    url: str | None = None
    extra_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    torch_backend: str | None = None
    named: tuple[NamedIndex, ...] = ()


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
    ref: str = "main"  # the ref volenv writes to `revision` (code loading the repo by name reads it)


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
    import_check: bool = False  # [check] imports: import every distribution's modules at build
    import_ignore: tuple[str, ...] = ()  # [check] ignore: modules (or distributions) never imported
    # requirement -> digest of its local source tree or file (`name @ ./path`): a build input
    local_sources: tuple[tuple[str, str], ...] = ()
    # [sources]: (canonical package name, the [[index.named]] entry it comes from)
    sources: tuple[tuple[str, str], ...] = ()
    overrides: tuple[str, ...] = ()  # uv's --overrides: requirements that replace any other's pin
    excludes: tuple[str, ...] = ()  # uv's --excludes: package names left out of every resolution
    # `id`: which project this manifest is, wherever it lies (store/origin.py); not in the digest
    id: str | None = None

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
        if self.index.named:  # as the other resolver inputs: only when set
            data["index"]["named"] = {n.name: redact_url(n.url) for n in self.index.named}
        data.update(self._resolver_inputs())
        return data

    def _resolver_inputs(self) -> dict[str, Any]:
        """[sources], overrides and excludes: each only when set, so that the
        manifests without them keep their digests and snapshot ids."""
        out: dict[str, Any] = {}
        if self.sources:
            out["sources"] = {name: {"index": index} for name, index in self.sources}
        if self.overrides:
            out["overrides"] = sorted(self.overrides)
        if self.excludes:
            out["excludes"] = sorted(self.excludes)
        return out

    def _requirements_file_input(self) -> dict[str, Any]:
        """The requirements file's closure by path (relative to the manifest) and content
        digest; absent for manifests without one, so their digests stay what they were."""
        if self.requirements_file is None:
            return {}

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
        data["models"] = [model_dict(m) for m in self.models]
        if self.import_check or self.import_ignore:  # only when set: other manifests keep their digests
            data["check"] = {"imports": self.import_check}
            if self.import_ignore:
                data["check"]["ignore"] = list(self.import_ignore)
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


def model_dict(m: ModelSpec) -> dict[str, Any]:
    d: dict[str, Any] = {"name": m.name, "optional": m.optional}
    if m.hf is not None:
        d["hf"] = {
            "repo": m.hf.repo,
            "revision": m.hf.revision,
            "files": list(m.hf.files),
            "allow_patterns": list(m.hf.allow_patterns),
        }
        if m.hf.ref != "main":  # absent when main: manifests without it keep their digests
            d["hf"]["ref"] = m.hf.ref
    else:
        d["url"] = redact_url(m.url) if m.url else m.url  # identity: sha256 + URL without credentials
        d["sha256"] = m.sha256
        d["size"] = m.size
    if m.local != "never":  # absent when never: manifests without it keep their digests
        d["local"] = m.local
    return d


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class Checker:
    """Walks a TOML table, naming file and dotted key in every error."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def fail(self, key: str, problem: str, hint: str | None = None) -> ManifestError:
        return ManifestError(self.path, key, problem, hint=hint)

    def keys(self, table: dict[str, Any], allowed: set[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                import difflib  # only on this error path: `run` parses manifests on every start

                dotted = f"{prefix}{key}"
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
                guess = f"did you mean '{prefix}{close[0]}'? " if close else ""
                raise self.fail(
                    dotted,
                    f"unknown key {key!r}",
                    hint=f"{guess}allowed here: {', '.join(sorted(allowed))}",
                )

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {type_name(value)} {value!r}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {type_name(value)} {value!r}")
        return value

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {type_name(value)} {value!r}")
        return value

    def strings(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list of strings, got {type_name(value)} {value!r}")
        for i, item in enumerate(value):
            self.string(item, f"{key}[{i}]")
        return tuple(value)

    def slug(self, value: Any, key: str) -> str:
        text = self.string(value, key)
        if not SLUG.fullmatch(text):
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
            problem = git_pin_problem(req.url)
            if problem is not None:
                raise self.fail(
                    f"{key}[{i}]",
                    f"{item!r}: the git requirement {problem}",
                    hint=GIT_PIN_HINT,
                )
            out.append(str(req))
        return tuple(out)


GIT_COMMIT = re.compile(r"^[0-9a-fA-F]{40}$")

GIT_PIN_HINT = "pin the full 40-hex commit (`git ls-remote URL REF` prints it): NAME @ git+URL@COMMIT"


def git_pin_problem(url: str | None) -> str | None:
    """Why a requirement's git URL is not pinned to a full commit (a branch or tag moves: the
    same manifest would build other code); None when it is, or when the URL is not git's."""
    if url is None or not url.startswith("git+"):
        return None
    from urllib.parse import urlsplit

    path = urlsplit(url[4:]).path  # `git@host` userinfo is in the netloc, the `@rev` in the path
    _repo, at, rev = path.rpartition("@")
    if not at:
        return "names no commit (the repository's default branch moves)"
    if not GIT_COMMIT.fullmatch(rev):
        return f"pins {rev!r}, a branch, a tag or a short commit id, which can move"
    return None


def type_name(value: Any) -> str:
    return {
        str: "string",
        int: "integer",
        float: "float",
        bool: "boolean",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)
