"""What a manifest tells uv's resolver beyond its requirements, where a Dockerfile would say it
with pip or uv flags: named indexes (`[[index.named]]`) and the packages `[sources]` pins to
them (uv's `[[tool.uv.index]]` with `explicit = true` and `[tool.uv.sources]`), `overrides` and
`excludes` (uv's `--overrides` and `--excludes`). (That a git requirement names a full commit
is `schema.Checker.requirements`' rule: every requirement list is checked there.)"""

from __future__ import annotations

import re
from typing import Any

from volenv.manifest.schema import Checker, NamedIndex, OptionalGroup

#: a distribution name as PEP 508 spells one (what an `excludes` entry is)
DIST_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")


def canonical(name: str) -> str:
    """PEP 503's normal form: `Torch_Audio` and `torch-audio` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_named_indexes(c: Checker, value: Any) -> tuple[NamedIndex, ...]:
    """`[[index.named]]`: name + url, explicit as uv's `explicit = true` (only the packages
    `[sources]` pins to it come from it; an index every package may come from is `extra-urls`)."""
    if not isinstance(value, list):
        raise c.fail("index.named", "expected an array of tables ([[index.named]])")
    out: list[NamedIndex] = []
    for i, item in enumerate(value):
        key = f"index.named[{i}]"
        t = c.table(item, key)
        c.keys(t, {"name", "url", "explicit"}, f"{key}.")
        for k in ("name", "url"):
            if k not in t:
                raise c.fail(f"{key}.{k}", "missing")
        name = c.slug(t["name"], f"{key}.name")
        if any(n.name == name for n in out):
            raise c.fail(f"{key}.name", f"duplicate index name {name!r}")
        url = c.string(t["url"], f"{key}.url")
        if not re.match(r"^(https?|file)://\S+$", url):
            raise c.fail(f"{key}.url", f"{url!r} is not an http(s):// or file:// URL")
        if not c.boolean(t.get("explicit", True), f"{key}.explicit"):
            raise c.fail(
                f"{key}.explicit",
                "a named index is explicit: only the packages [sources] pins to it come from it",
                hint="for an index any package may come from, list its URL in [index] extra-urls",
            )
        out.append(NamedIndex(name, url))
    return tuple(sorted(out, key=lambda n: n.name))


def parse_sources(
    c: Checker,
    value: Any,
    named: tuple[NamedIndex, ...],
    requirements: tuple[str, ...],
    optional: tuple[OptionalGroup, ...],
) -> tuple[tuple[str, str], ...]:
    """`[sources] NAME = { index = "INDEX" }` -> (canonical name, index name). As in uv, a
    source applies to a requirement the manifest names itself (a dependency's dependency is
    resolved from the indexes every package comes from), so it must name one."""
    from packaging.requirements import Requirement

    t = c.table(value, "sources")
    named_here = {canonical(Requirement(r).name) for r in requirements}
    for g in optional:
        named_here |= {canonical(Requirement(r).name) for r in g.requirements}
    out: dict[str, str] = {}
    for pkg, src in t.items():
        key = f"sources.{pkg}"
        if not DIST_NAME.fullmatch(pkg):
            raise c.fail(key, f"{pkg!r} is not a package name")
        s = c.table(src, key)
        c.keys(s, {"index"}, f"{key}.")
        if "index" not in s:
            raise c.fail(f"{key}.index", "missing (the name of an [[index.named]] entry)")
        index = c.string(s["index"], f"{key}.index")
        if not any(n.name == index for n in named):
            known = ", ".join(n.name for n in named) or "none"
            raise c.fail(
                f"{key}.index",
                f"no [[index.named]] entry is named {index!r} (named: {known})",
                hint=f'add it: [[index.named]] name = "{index}", url = "https://..."',
            )
        name = canonical(pkg)
        if name in out:
            raise c.fail(key, f"{pkg!r} is given twice (names compare as PEP 503 normalizes them)")
        if name not in named_here:
            raise c.fail(
                key,
                f"{pkg!r} is not in requirements or an [optional] group: a source applies only to"
                " a package the manifest names itself (as in uv)",
                hint=f"add {pkg!r} to requirements",
            )
        out[name] = index
    return tuple(sorted(out.items()))


def parse_excludes(c: Checker, value: Any) -> tuple[str, ...]:
    """`excludes`: package names uv leaves out of every resolution (a dependency's dependency
    the environment never needs)."""
    names = c.strings(value, "excludes")
    for i, name in enumerate(names):
        if not DIST_NAME.fullmatch(name):
            raise c.fail(f"excludes[{i}]", f"{name!r} is not a package name (no versions here)")
    return tuple(sorted(set(names)))


def refuse_with_lockfile(c: Checker, data: dict[str, Any]) -> None:
    """A lockfile is the whole package set, resolved already: nothing is left to steer."""
    if "lockfile" not in data:
        return
    for key in ("sources", "overrides", "excludes"):
        if key in data:
            raise c.fail(
                key,
                "cannot be combined with `lockfile` (the lockfile is the resolved set)",
                hint="give it to the tool that writes the lockfile (uv pip compile), or drop `lockfile`",
            )
