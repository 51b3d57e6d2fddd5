"""What a snapshot holds (packages, optional groups, models) as plain data, and the difference
between two of them: `show`, `diff`, `history` and `sync --dry-run` all read it from here.

A snapshot's contents come from its seal (what resolution pinned, which groups installed, the
manifest's models); a planned build's from its resolution. The seal is volume data: every
field is checked for its type and anything malformed is left out, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from packaging.utils import canonicalize_name


@dataclass(frozen=True)
class Package:
    name: str
    version: str  # "1.2.3", or "@ URL" for a direct reference
    group: str | None = None  # None: a base requirement; else the optional group that added it


@dataclass(frozen=True)
class Contents:
    packages: dict[str, Package] = field(default_factory=dict)  # canonical name -> package
    groups: dict[str, str] = field(default_factory=dict)  # group -> installed | failed | ...
    models: dict[str, str] = field(default_factory=dict)  # model name -> its source, as one string


@dataclass(frozen=True)
class Change:
    name: str
    old: str | None  # None: added
    new: str | None  # None: removed


@dataclass(frozen=True)
class Changes:
    added: tuple[Change, ...] = ()
    removed: tuple[Change, ...] = ()
    changed: tuple[Change, ...] = ()
    groups: tuple[Change, ...] = ()  # old/new are states; None where the group is absent
    models: tuple[Change, ...] = ()  # old/new are sources; None where the model is absent

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.groups or self.models)

    def items(self) -> list[str]:
        """Each change as a short phrase: `+torch 2.3.0`, `-foo 1.0`, `numpy 1.26.4 -> 2.0.0`,
        `group +extra`, `model tts: hf:a@1 -> hf:a@2`."""
        out = [f"+{c.name} {c.new}" for c in self.added]
        out += [f"{c.name} {c.old} -> {c.new}" for c in self.changed]
        out += [f"-{c.name} {c.old}" for c in self.removed]
        out += [_other("group", c) for c in self.groups]
        out += [_other("model", c) for c in self.models]
        return out

    def summary(self, width: int | None = None) -> str:
        """The phrases joined by commas; with `width`, cut at a phrase boundary with `, … (+N)`."""
        items = self.items()
        if not items:
            return "no changes"
        text = ", ".join(items)
        if width is None or len(text) <= width:
            return text
        for n in range(len(items) - 1, 0, -1):
            cut = ", ".join(items[:n]) + f", … (+{len(items) - n})"
            if len(cut) <= width:
                return cut
        return items[0][: max(1, width - 1)] + "…"


def _other(kind: str, c: Change) -> str:
    if c.old is None:
        return f"{kind} +{c.name}" + (f" ({c.new})" if kind == "group" and c.new != "installed" else "")
    if c.new is None:
        return f"{kind} -{c.name}"
    return f"{kind} {c.name}: {c.old} -> {c.new}"


def parse_pin(line: str) -> tuple[str, str] | None:
    """`name==1.0` -> (canonical name, "1.0"); `name @ url` -> (name, "@ url"); else None."""
    text = line.split(";", 1)[0].strip()
    if "==" in text:
        name, _, version = text.partition("==")
    elif " @ " in text:
        name, _, url = text.partition(" @ ")
        version = "@ " + url.strip()
    else:
        return None
    name = name.split("[", 1)[0].strip()
    if not name:
        return None
    return canonicalize_name(name), version.strip()


def _str_list(value: Any) -> list[str]:
    return [x for x in value if isinstance(x, str)] if isinstance(value, list | tuple) else []


def contents_of(base: Any, groups: Any, states: dict[str, str], models: Any) -> Contents:
    """Base pins, then what each installed group added; groups that did not install add nothing."""
    packages: dict[str, Package] = {}
    for line in _str_list(base):
        pin = parse_pin(line)
        if pin is not None:
            packages[pin[0]] = Package(pin[0], pin[1])
    if isinstance(groups, dict):
        for group in sorted(g for g in groups if isinstance(g, str)):
            if states.get(group) != "installed":
                continue
            for line in _str_list(groups[group]):
                pin = parse_pin(line)
                if pin is not None and pin[0] not in packages:
                    packages[pin[0]] = Package(pin[0], pin[1], group)
    return Contents(dict(sorted(packages.items())), dict(sorted(states.items())), model_sources(models))


def from_seal(seal: dict[str, Any]) -> Contents:
    resolved = seal.get("resolved")
    resolved = resolved if isinstance(resolved, dict) else {}
    states: dict[str, str] = {}
    for g in seal.get("groups") or []:
        if isinstance(g, dict) and isinstance(g.get("name"), str) and isinstance(g.get("state"), str):
            states[g["name"]] = g["state"]
    manifest = seal.get("manifest")
    models = manifest.get("models") if isinstance(manifest, dict) else None
    return contents_of(resolved.get("base"), resolved.get("groups"), states, models)


def model_sources(models: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in models if isinstance(models, list) else []:
        if not isinstance(m, dict) or not isinstance(m.get("name"), str):
            continue
        hf = m.get("hf")
        if isinstance(hf, dict):
            out[m["name"]] = f"hf:{hf.get('repo')}@{hf.get('revision')}"
        else:
            sha = m.get("sha256")
            out[m["name"]] = f"{m.get('url')} sha256:{str(sha)[:12]}"
    return dict(sorted(out.items()))


def diff(old: Contents, new: Contents) -> Changes:
    a, b = old.packages, new.packages
    added = tuple(Change(b[n].name, None, b[n].version) for n in sorted(b.keys() - a.keys()))
    removed = tuple(Change(a[n].name, a[n].version, None) for n in sorted(a.keys() - b.keys()))
    changed = tuple(
        Change(b[n].name, a[n].version, b[n].version)
        for n in sorted(a.keys() & b.keys())
        if a[n].version != b[n].version
    )
    return Changes(added, removed, changed, _keyed(old.groups, new.groups), _keyed(old.models, new.models))


def _keyed(old: dict[str, str], new: dict[str, str]) -> tuple[Change, ...]:
    return tuple(
        Change(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)
    )
