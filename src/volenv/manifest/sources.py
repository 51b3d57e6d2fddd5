"""The local sources a manifest names (a requirements file and its `-r`/`-c` includes, local
package trees, wheel and sdist paths, `file:` URLs), read and digested: what they hold is part
of the manifest's digest, so a changed local package is a new snapshot."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

from volenv.base.leanjson import read_regular_file
from volenv.manifest.schema import GIT_PIN_HINT, Checker, OptionalGroup, git_pin_problem
from volenv.manifest.tree import walk


def parse_requirements_file(
    c: Checker, p: Path, data: dict[str, Any]
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
    top = lexical(p.parent / rel)
    inputs: dict[Path, str] = {}
    local: dict[str, str] = {}
    pending = [(top, rel)]
    while pending:
        path, shown = pending.pop()
        if path in inputs:
            continue
        try:  # a FIFO there is refused, never waited on; a link is followed (a user's own file)
            content = _read_input(path)
        except FileNotFoundError:
            raise c.fail(key, f"{shown!r}: no such file ({path})") from None
        except IsADirectoryError:
            raise c.fail(key, f"{shown!r}: is a directory, expected a requirements file") from None
        except OSError as exc:
            raise c.fail(key, f"{shown!r}: cannot read ({exc.strerror})") from None
        if b"\0" in content:
            raise c.fail(key, f"{shown!r}: holds a NUL byte; a requirements file is text")
        inputs[path] = hashlib.sha256(content).hexdigest()
        for inc in _included_files(content):
            if "://" not in inc:
                pending.append((lexical(path.parent / inc), f"{inc} (included by {path.name})"))
        local.update(_file_local_sources(c, key, path, content, p.parent))
    return top, tuple(sorted(inputs.items())), local


_PATH_START = ("./", "../", "/", "file:")


def _file_local_sources(c: Checker, key: str, path: Path, content: bytes, folder: Path) -> dict[str, str]:
    """`NAME @ path`, `file:` and bare-path lines of a requirements file -> `NAME @ ./path`
    (relative to the manifest's folder) and the digest of what they name; `-e` lines refused.
    A relative path starts where uv (like pip) reads it from: the directory it runs in, which
    for volenv is the manifest's folder, whichever file of the `-r` closure the line is in
    (only `-r`/`-c` paths start at the including file's folder). Other lines are uv's."""
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
            target = local_path(folder, line.split(";")[0].strip())
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
            problem = git_pin_problem(req.url)
            if problem is not None:
                raise c.fail(
                    key,
                    f"{where}: the git requirement {problem}",
                    hint=GIT_PIN_HINT,
                )
            target, name = local_path(folder, req.url), req.name
        else:
            continue
        if target is None:
            continue
        if not target.exists():
            raise c.fail(key, f"{where}: {target} does not exist (paths start at the manifest's folder)")
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


def local_sources(
    c: Checker, folder: Path, requirements: tuple[str, ...], optional: tuple[OptionalGroup, ...]
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


def _read_input(path: Path, limit: int = 16 << 20) -> bytes:
    """A requirements file's bytes: a regular file (links followed), opened without blocking."""
    return read_regular_file(path, limit, follow=True)


def lockfile_local_sources(c: Checker, lockfile: Path, data: dict[str, Any], folder: Path) -> dict[str, str]:
    """The local trees and archives a pylock.toml installs (`directory = { path = ... }`,
    `archive = { path = ... }`, relative to the lockfile's folder) -> `NAME @ ./path` (relative
    to the manifest's folder) and their digests: the lockfile's own bytes do not change when
    such a tree does, so the tree is a build input by itself, as in `requirements`."""
    out: dict[str, str] = {}
    packages = data.get("packages", [])
    for i, pkg in enumerate(packages if isinstance(packages, list) else []):
        if not isinstance(pkg, dict) or not isinstance(pkg.get("name"), str):
            continue
        for kind in ("directory", "archive"):
            entry = pkg.get(kind)
            if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)):
                continue
            target = lexical(lockfile.parent / entry["path"])
            where = f"lockfile: packages[{i}].{kind}.path"
            if not target.exists():
                raise c.fail("lockfile", f"{where}: {target} does not exist")
            try:
                digest = source_digest(target)
            except OSError as exc:
                raise c.fail(
                    "lockfile", f"{where}: cannot read {exc.filename or target}: {exc.strerror}"
                ) from None
            rel = os.path.relpath(target, folder)
            out[f"{pkg['name']} @ {rel if rel.startswith('..') else './' + rel}"] = digest
    return out


def lexical(path: Path) -> Path:
    """An absolute path with `.`/`..` folded, symlinks kept: the path as the manifest names it,
    so that a link retargeted later (a `current -> release-N` deploy) is followed again on every
    check, never remembered as where it pointed once."""
    return Path(os.path.normpath(os.path.abspath(path)))


def local_path(folder: Path, url: str | None) -> Path | None:
    """The local file or directory a requirement's URL names (relative to `folder`), else None."""
    if url is None:
        return None
    if url.startswith("file:"):
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            return None
        return lexical(folder / unquote(parts.path))
    if "://" in url or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*\+", url):  # http(s), git+..., etc.
        return None
    return lexical(folder / url)


def source_digest(path: Path) -> str:
    """sha256 over a source tree's paths, exec bits, link targets and contents (VCS metadata,
    caches and build outputs skipped: `tree.walk`), or over a wheel/sdist file's bytes."""
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    for rel, full, st in walk(str(path)):
        if stat.S_ISLNK(st.st_mode):
            h.update(b"L\0" + rel + b"\0" + os.readlink(full).encode("utf-8", "surrogateescape") + b"\0")
            if os.path.isfile(full):  # what a build copies is the file behind the link: its bytes count
                h.update(_file_sha256(full))
            continue
        if not stat.S_ISREG(st.st_mode):  # a FIFO, socket or device: never opened (it could block)
            h.update(b"O\0" + rel + b"\0")
            continue
        h.update(b"F\0" + rel + b"\0" + (b"x" if st.st_mode & 0o111 else b"-") + b"\0")
        h.update(_file_sha256(full))
    return h.hexdigest()


def _file_sha256(path: str) -> bytes:
    """A regular file's sha256, opened without blocking (a FIFO swapped in is refused)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        h = hashlib.sha256()
        while block := os.read(fd, 1 << 20):
            h.update(block)
        return h.digest()
    finally:
        os.close(fd)


def local_source_paths(manifest: Any) -> list[tuple[Path, str, bool]]:
    """(path, digest, written absolute) of each local source whose digest is part of the
    manifest's: the keys of `local_sources` are requirements (`NAME @ ./path`, `file:` URLs),
    relative to its folder unless written absolute."""
    from urllib.parse import unquote, urlsplit

    from packaging.requirements import Requirement

    out = []
    for text, digest in manifest.local_sources:
        url = Requirement(text).url
        target = local_path(manifest.path.parent, url)
        if target is None or url is None:
            continue
        written = unquote(urlsplit(url).path) if url.startswith("file:") else url
        out.append((target, digest, os.path.isabs(written)))
    return out
