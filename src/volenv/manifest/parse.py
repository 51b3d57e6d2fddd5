"""The manifest: what an environment is, parsed strictly (unknown keys are errors); its shape is
in `schema`, the local sources it names in `sources`.

Kept cheap to import: `volenv run` parses the manifest on every container start.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

from volenv.base.errors import ManifestError, shq
from volenv.base.leanjson import read_regular_file
from volenv.manifest.hubnames import valid_ref
from volenv.manifest.resolver import parse_excludes, parse_named_indexes, parse_sources, refuse_with_lockfile
from volenv.manifest.schema import (
    ENV_NAME,
    HEX40,
    HEX64,
    PYTHON_REQUEST,
    RESERVED_ENV,
    TORCH_BACKEND,
    Checker,
    HfSource,
    IndexSettings,
    Manifest,
    ModelSpec,
    OptionalGroup,
    type_name,
)
from volenv.manifest.sources import lexical, local_sources, lockfile_local_sources, parse_requirements_file

TOP_KEYS = {
    "check",
    "id",
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
    "sources",
    "overrides",
    "excludes",
}


#: a manifest (or its lockfile) past this size is not one
MANIFEST_LIMIT = 64 << 20


def load_manifest(path: str | Path) -> Manifest:
    """Parse and validate; raises ManifestError (exit 2) naming file, key and value."""
    p = Path(path)
    c = Checker(p)
    try:  # never blocking (a FIFO is refused: a seal's manifest_path comes from the volume)
        raw = read_regular_file(p, MANIFEST_LIMIT, follow=True)
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
    if p.suffix != ".toml":  # `sync requirements.txt` of a missing file: never write a manifest there
        return "a manifest is a .toml file: write one with `init` from what you have"
    for source in ("uv.lock", "pyproject.toml", "requirements.txt"):
        if (p.parent / source).is_file():
            return f"write it from {source}: volenv init {shq(p.parent / source)} -o {shq(p)}"
    return "write one with `init` from a requirements.txt, pyproject.toml or uv.lock"


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


def _refuse_foreign(c: Checker, p: Path, kind: str) -> None:
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


def _parse(p: Path, data: dict[str, Any], c: Checker) -> Manifest:
    c.keys(data, TOP_KEYS, "")
    if "name" not in data:
        raise c.fail("name", "missing (every manifest names its environment)")
    name = c.slug(data["name"], "name")
    ident = _parse_id(c, data)
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
    req_file, req_inputs, req_local = parse_requirements_file(c, p, data)
    refuse_with_lockfile(c, data)

    lockfile: Path | None = None
    lock_sha: str | None = None
    if "lockfile" in data:
        rel = c.string(data["lockfile"], "lockfile")
        lockfile = lexical(p.parent / rel)
        if not re.match(r"^pylock\.([^.]+\.)?toml$", lockfile.name):
            raise c.fail("lockfile", f"{rel!r}: expected a pylock.toml or pylock.<name>.toml file (PEP 751)")
        try:
            lock_bytes = read_regular_file(lockfile, MANIFEST_LIMIT, follow=True)
        except OSError as exc:
            raise c.fail("lockfile", f"{rel!r}: cannot read ({exc.strerror})") from None
        try:
            lock_data = tomllib.loads(lock_bytes.decode())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise c.fail("lockfile", f"{rel!r}: not a valid TOML lockfile ({exc})") from None
        lock_sha = hashlib.sha256(lock_bytes).hexdigest()
        req_local = {**req_local, **lockfile_local_sources(c, lockfile, lock_data, p.parent)}

    index = _parse_index(c, data.get("index", {}))
    optional = _parse_optional(c, data.get("optional", {}))
    post_install = _parse_build(c, data.get("build", {}))
    env, smoke = parse_activate(c, data.get("activate", {}))
    trace_cmd = _parse_trace_cmd(c, data.get("activate", {}))
    check = _parse_check(c, data.get("check", {}))
    models = parse_models(c, data.get("models", []))
    sources = parse_sources(c, data.get("sources", {}), index.named, requirements, optional)
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
        import_check=check[0],
        import_ignore=check[1],
        models=models,
        id=ident,
        sources=sources,
        overrides=c.requirements(data.get("overrides", []), "overrides"),
        excludes=parse_excludes(c, data.get("excludes", [])),
        local_sources=tuple(
            sorted({**dict(local_sources(c, p.parent, requirements, optional)), **req_local}.items())
        ),
    )


def _parse_id(c: Checker, data: dict[str, Any]) -> str | None:
    """`id`: the project's identity for the env it names, wherever the file lies (printable
    text without control characters, at most 200 characters)."""
    if "id" not in data:
        return None
    ident = c.string(data["id"], "id")
    if not ident.strip() or len(ident) > 200 or any(ord(ch) < 32 or ord(ch) == 127 for ch in ident):
        raise c.fail(
            "id", f"{ident!r} is not an identity (1 to 200 printable characters, e.g. 'github.com/acme/tts')"
        )
    return ident


def _check_python(c: Checker, python: str) -> None:
    if PYTHON_REQUEST.fullmatch(python):
        return
    if python.startswith("/") and "\0" not in python and "\n" not in python:
        return  # an interpreter's path, as uv takes one (the image's /usr/bin/python3.10)
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        SpecifierSet(python)
    except InvalidSpecifier:
        raise c.fail(
            "python",
            f"{python!r} is not a Python request (e.g. '3.11', '>=3.11,<3.12', '/usr/bin/python3.10')",
        ) from None
    if not python.strip():
        raise c.fail("python", "empty")


def _parse_index(c: Checker, value: Any) -> IndexSettings:
    t = c.table(value, "index")
    c.keys(t, {"url", "extra-urls", "find-links", "no-index", "torch-backend", "named"}, "index.")
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
        if not TORCH_BACKEND.fullmatch(backend):
            raise c.fail(
                "index.torch-backend", f"{backend!r} is not a uv torch backend (auto, cpu, cu126, ...)"
            )
    named = parse_named_indexes(c, t.get("named", []))
    return IndexSettings(url, extra, find_links, no_index, backend, named)


def _parse_optional(c: Checker, value: Any) -> tuple[OptionalGroup, ...]:
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


def _parse_build(c: Checker, value: Any) -> tuple[tuple[str, ...] | str, ...]:
    t = c.table(value, "build")
    c.keys(t, {"post-install"}, "build.")
    cmds = t.get("post-install", [])
    if not isinstance(cmds, list):
        raise c.fail("build.post-install", f"expected a list of commands, got {type_name(cmds)} {cmds!r}")
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


def parse_activate(c: Checker, value: Any) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    t = c.table(value, "activate")
    c.keys(t, {"env", "smoke-imports", "trace-cmd"}, "activate.")
    env_t = c.table(t.get("env", {}), "activate.env")
    env = []
    for k, v in env_t.items():
        key = f"activate.env.{k}"
        if not ENV_NAME.fullmatch(k):
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


def _parse_check(c: Checker, value: Any) -> tuple[bool, tuple[str, ...]]:
    """[check] imports = true: the build imports every top-level module of every installed
    distribution (build/importcheck.py) and fails when a required one cannot load; `ignore`
    names modules (or distributions) a dependency declares but nothing imports, which do not
    import (say why in a comment)."""
    t = c.table(value, "check")
    c.keys(t, {"imports", "ignore"}, "check.")
    imports = t.get("imports", False)
    if not isinstance(imports, bool):
        raise c.fail("check.imports", f"{imports!r} is not true or false")
    ignore = c.strings(t.get("ignore", []), "check.ignore")
    for i, name in enumerate(ignore):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
            raise c.fail(f"check.ignore[{i}]", f"{name!r} is not a module or distribution name")
    return imports, tuple(sorted(set(ignore)))


def _parse_trace_cmd(c: Checker, value: Any) -> tuple[str, ...]:
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


def parse_models(c: Checker, value: Any) -> tuple[ModelSpec, ...]:
    if not isinstance(value, list):
        raise c.fail("models", f"expected an array of tables ([[models]]), got {type_name(value)}")
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
        if not HEX64.fullmatch(sha):
            raise c.fail(f"{key}.sha256", f"{m['sha256']!r} is not 64 hex digits")
        size = m.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            raise c.fail(f"{key}.size", f"expected a positive integer, got {size!r}")
        out.append(ModelSpec(name, url=url, sha256=sha, size=size, optional=optional, local=local))
    return tuple(out)


def _parse_hf(c: Checker, value: Any, key: str) -> HfSource:
    t = c.table(value, key)
    c.keys(t, {"repo", "revision", "files", "allow-patterns", "ref"}, f"{key}.")
    if "repo" not in t:
        raise c.fail(f"{key}.repo", "missing")
    repo = c.string(t["repo"], f"{key}.repo")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$", repo) or ".." in repo:
        raise c.fail(f"{key}.repo", f"{repo!r} is not an 'owner/name' repository id")
    if "revision" not in t:
        raise c.fail(f"{key}.revision", "missing (pin a 40-hex commit for reproducible snapshots)")
    rev = c.string(t["revision"], f"{key}.revision")
    if not HEX40.fullmatch(rev):
        raise c.fail(f"{key}.revision", f"{rev!r} is not a 40-hex commit id (branches and tags move)")
    files = c.strings(t.get("files", []), f"{key}.files")
    patterns = c.strings(t.get("allow-patterns", []), f"{key}.allow-patterns")
    for i, f in enumerate(files):
        if f.startswith("/") or ".." in f.split("/"):
            raise c.fail(f"{key}.files[{i}]", f"{f!r} must be a relative path inside the repository")
    if not files and not patterns:
        raise c.fail(key, "give `files` or `allow-patterns` (never a whole repository by accident)")
    ref = c.string(t.get("ref", "main"), f"{key}.ref")
    if not valid_ref(ref):
        raise c.fail(
            f"{key}.ref",
            f"{ref!r} is not a ref name (a branch or tag such as 'main' or 'v1.0': letters, digits,"
            " '.', '_', '-', segments joined by '/'; not a commit id)",
        )
    return HfSource(repo, rev, files, patterns, ref)


def _resolver_inputs_from_seal(data: dict[str, Any]) -> dict[str, Any]:
    """[sources], overrides and excludes as the manifest wrote them (named indexes are in the
    seal's `index`), each only where the seal has it."""
    raw: dict[str, Any] = {}
    if data.get("sources"):
        raw["sources"] = {k: dict(v) for k, v in data["sources"].items()}
    for key in ("overrides", "excludes"):
        if data.get(key):
            raw[key] = list(data[key])
    return raw


def manifest_from_seal(data: dict[str, Any], path: str) -> Manifest:
    """Rebuild a Manifest from the normalized copy a seal carries (for repair): the build
    inputs are exact; relative find-links resolve against the original manifest's folder."""
    c = Checker(Path(path))
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
                "named": [{"name": k, "url": v} for k, v in idx["named"].items()]
                if idx.get("named")
                else None,
            }.items()
            if v is not None
        },
        "optional": {k: dict(v) for k, v in data.get("optional", {}).items()},
        **_resolver_inputs_from_seal(data),
        "build": {"post-install": data.get("post_install", [])},
        "activate": {"env": data.get("env", {}), "smoke-imports": data.get("smoke_imports", [])},
        "check": {
            "imports": bool((data.get("check") or {}).get("imports", False)),
            "ignore": list((data.get("check") or {}).get("ignore", [])),
        },
    }
    m = _parse(Path(path), raw, c)
    # a plain `sync` would reuse the damaged snapshot (its seal is fine): --reinstall-all builds
    # a fresh one, refreshing any damaged file in uv's cache on the way
    hint = f"volenv sync --reinstall-all {shlex.quote(path)}"
    if data.get("lockfile_sha256") or data.get("requirements_file"):
        # the files beside the manifest are part of what was built: when the manifest there
        # still parses to exactly what the seal records, it is the build input, as it was
        try:
            same = load_manifest(path)
        except ManifestError:
            same = None
        if same is not None and same.normalized() == data:
            return same
    if data.get("lockfile_sha256"):
        problem = "a snapshot built from a lockfile cannot be repaired in place once the lockfile changed"
        raise ManifestError(path, "lockfile", problem, hint=hint)
    if data.get("requirements_file"):
        problem = (
            "a snapshot built from a requirements-file cannot be repaired in place once that file changed"
        )
        raise ManifestError(path, "requirements-file", problem, hint=hint)
    if dict(m.local_sources) != data.get("local_sources", {}):
        raise ManifestError(
            path,
            "requirements",
            "a local source tree changed since this snapshot was built: it cannot be rebuilt as it was",
            hint=f"`volenv sync {shlex.quote(path)}` builds a new snapshot from the tree as it is now",
        )
    return m
