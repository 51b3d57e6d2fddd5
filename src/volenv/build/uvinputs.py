"""The manifest's resolver settings as uv's pip interface takes them: `overrides` and `excludes`
as the files `--overrides`/`--excludes` read, and `[sources]` with its named indexes as a
throwaway `pyproject.toml` passed beside the requirements.

uv's pip interface has no flag that ties a package to an index: `[tool.uv.sources]` does, and
uv reads it from a pyproject given as an input (`uv pip compile pyproject.toml x.in`, and as
well `uv pip sync`/`install`), for that pyproject's own dependencies. So the pyproject lists
as its dependencies the pinned packages that the requirements at hand name (bare names: the
versions stay in the requirements and pins), and `[[tool.uv.index]]` declares the named
indexes as explicit. Every step that resolves or installs passes it, so that a pin taken from
the named index is installed from it too, never from an index that also has the name."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from volenv.manifest.schema import Manifest

#: the throwaway project's name (uv installs its dependencies, never the project itself)
PROJECT_NAME = "volenv-sources-input"


def resolver_args(manifest: Manifest, folder: Path) -> list[str]:
    """`--overrides FILE` and `--excludes FILE` (written into `folder`) for a uv resolve or an
    install that resolves (`uv pip sync` does not: it takes the pins as they are)."""
    args: list[str] = []
    for flag, lines in (("--overrides", manifest.overrides), ("--excludes", manifest.excludes)):
        if lines:
            path = folder / f"{flag.lstrip('-')}.txt"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            args += [flag, str(path)]
    return args


def sources_input(manifest: Manifest, lines: Iterable[str], folder: Path) -> list[str]:
    """[the pyproject's path] when a requirement or pin in `lines` names a package `[sources]`
    pins to a named index; [] otherwise (the manifests without [sources] run as before)."""
    if not manifest.sources:
        return []
    named = _names(lines)
    deps = [name for name, _index in manifest.sources if name in named]
    if not deps:
        return []
    used = {index for name, index in manifest.sources if name in deps}
    text = [
        "[project]",
        f"name = {json.dumps(PROJECT_NAME)}",
        'version = "0"',
        f"dependencies = {json.dumps(deps)}",
        "",
    ]
    for index in manifest.index.named:
        if index.name in used:
            text += [
                "[[tool.uv.index]]",
                f"name = {json.dumps(index.name)}",
                f"url = {json.dumps(index.url)}",
                "explicit = true",
                "",
            ]
    text.append("[tool.uv.sources]")
    text += [f"{json.dumps(name)} = {{ index = {json.dumps(index)} }}" for name, index in manifest.sources]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pyproject.toml"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return [str(path)]


def _names(lines: Iterable[str]) -> set[str]:
    """The canonical package names that requirement or pin lines name (options, bare paths and
    URLs skipped)."""
    from packaging.requirements import InvalidRequirement, Requirement

    out = set()
    for line in lines:
        text = line.strip()
        if not text or text.startswith(("#", "-")):
            continue
        try:
            out.add(re.sub(r"[-_.]+", "-", Requirement(text).name).lower())
        except InvalidRequirement:
            continue
    return out
