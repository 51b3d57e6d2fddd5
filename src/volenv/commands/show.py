"""`volenv show SNAPSHOT|ENV`: one snapshot's packages, groups, models, size, link mode,
interpreter, creation time and the manifests it was built from or indexed for. Read only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volenv.base.errors import DamagedRecord, UsageError
from volenv.store import contents
from volenv.store import pointers as store
from volenv.store.paths import VolumePaths
from volenv.store.sealcheck import SealProblem, check_seal, plain_name, read_seal


def _hint(paths: VolumePaths) -> str:
    from volenv.store.rootfind import fix_command

    return f"`{fix_command(str(paths.root), 'list')}` shows the envs and their snapshot ids"


@dataclass(frozen=True)
class ManifestRef:
    path: str | None  # None where the index entry predates volenv recording it
    digest: str
    how: str  # "built" (the seal's manifest) | "indexed" (an index entry names this snapshot)


@dataclass(frozen=True)
class GroupView:
    name: str
    state: str
    required: bool
    error: str | None


@dataclass(frozen=True)
class ModelView:
    name: str
    source: str
    optional: bool
    present: bool


@dataclass(frozen=True)
class ShowResult:
    snapshot: str
    env: str
    path: str
    current: bool
    pinned: bool
    valid: bool
    problem: str | None
    created: float | None
    python: str | None
    interpreter: str | None
    link_mode: str | None
    apparent_bytes: int
    unique_bytes: int | None
    files: int
    packages: tuple[contents.Package, ...]
    groups: tuple[GroupView, ...]
    models: tuple[ModelView, ...]
    manifests: tuple[ManifestRef, ...]
    clashes: tuple[str, ...] = ()  # files several distributions ship: "path (a, b; kept b)"
    imports: tuple[str, ...] = ()  # the build's import check: its summary, then each failure


def resolve(paths: VolumePaths, text: str) -> tuple[str, str]:
    """ENV (its current snapshot), a snapshot id, or a unique prefix of one (`web-3f2`, or the
    hex part alone, `3f2a`) -> (env, snapshot id). Unknown or ambiguous: exit 2 with a hint."""
    store.open_volume(paths, create=False)
    if not plain_name(text):
        raise UsageError(f"{text!r} is neither an env name nor a snapshot id", hint=_hint(paths))
    if (paths.env_dir(text) / "snapshots").is_dir():
        cur = store.read_current(paths, text)
        if cur is None:
            raise UsageError(f"env '{text}' has no current snapshot", hint=f"name a snapshot; {_hint(paths)}")
        return text, cur
    hex_only = len(text) >= 4 and all(c in "0123456789abcdef" for c in text)
    found: list[tuple[str, str]] = []
    for env in store.list_envs(paths):
        for sid in store.list_snapshots(paths, env, []):
            if sid == text:
                return env, sid
            if sid.startswith(text) or (hex_only and sid[len(env) + 1 :].startswith(text)):
                found.append((env, sid))
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(sid for _env, sid in found[:5]) + (", …" if len(found) > 5 else "")
        raise UsageError(f"{text!r} matches {len(found)} snapshots: {names}", hint="give more of the id")
    raise UsageError(f"no env or snapshot matches {text!r} under {paths.root}", hint=_hint(paths))


def load_seal(paths: VolumePaths, env: str, sid: str) -> tuple[dict[str, Any], str | None]:
    """The seal and None when valid; else what can be read of it and the problem."""
    snap = str(paths.snapshot(env, sid))
    try:
        return check_seal(snap, sid), None
    except SealProblem as sp:
        problem = f"{sp.kind}: {sp.detail}"
    try:
        return read_seal(snap), problem
    except SealProblem:
        return {}, problem


@dataclass(frozen=True)
class InstalledCounts:
    """What a snapshot holds as `sync`, `verify` and `pack` count it, from its record: regular
    files (not directories, links or the seal), their bytes, and the installed distributions
    (each `.dist-info/METADATA`: a local package counts, as sync counted it)."""

    files: int
    bytes: int
    distributions: dict[str, str]  # canonical name -> version


def installed_counts(snapshot: Path) -> InstalledCounts | None:
    """None where the record cannot be read (the seal's figures stand in)."""
    from packaging.utils import canonicalize_name

    from volenv.store.integrity import load_record

    try:
        record = load_record(snapshot)
    except (OSError, SealProblem, ValueError):
        return None
    dists = {}
    for rel in record:
        if rel.endswith(".dist-info/METADATA") and rel.count(".dist-info/") == 1:
            folder = rel.rsplit("/", 2)[-2].removesuffix(".dist-info")
            name, _, version = folder.partition("-")
            dists[str(canonicalize_name(name))] = version
    regular = [e for e in record.values() if e.type == "f"]
    return InstalledCounts(len(regular), sum(e.size for e in regular), dict(sorted(dists.items())))


def _packages(held: contents.Contents, counts: InstalledCounts | None) -> tuple[contents.Package, ...]:
    """The installed distributions, each with its pin and group where the resolution named it
    (a local package `NAME @ ./path` resolves to a bare path: its version is the wheel's)."""
    if counts is None:
        return tuple(held.packages.values())
    out = []
    for name, version in counts.distributions.items():
        pin = held.packages.get(name)
        if pin is None:
            out.append(contents.Package(name, version))
        elif pin.version.startswith("@"):  # a direct reference: its URL says more than a version
            out.append(pin)
        else:  # what is installed, not the resolution's last line (a pylock lists one per marker)
            out.append(contents.Package(name, version, pin.group))
    return tuple(out)


def show(paths: VolumePaths, target: str, *, sizes: bool = True) -> ShowResult:
    from volenv.commands.status import _unique_bytes
    from volenv.store.modelpaths import model_record_path

    env, sid = resolve(paths, target)
    store.snapshot_for(paths, sid)  # one reached through a link is damage: its seal is not shown
    seal, problem = load_seal(paths, env, sid)
    held = contents.from_seal(seal)
    fp = seal.get("fingerprint")
    fp = fp if isinstance(fp, dict) else {}
    manifest = seal.get("manifest")
    manifest = manifest if isinstance(manifest, dict) else {}
    models = []
    for m in manifest.get("models") or []:
        if isinstance(m, dict) and m.get("name") in held.models:
            try:  # the seal is volume data: a malformed model entry is "not present", not a crash
                present = os.path.exists(model_record_path(str(paths.root), m))
            except (KeyError, TypeError, AttributeError, ValueError):
                present = False
            models.append(ModelView(m["name"], held.models[m["name"]], bool(m.get("optional")), present))
    groups = tuple(
        GroupView(g["name"], g["state"], bool(g.get("required")), _str(g.get("error")))
        for g in seal.get("groups") or []
        if isinstance(g, dict) and isinstance(g.get("name"), str) and isinstance(g.get("state"), str)
    )
    refs = []
    built_digest = seal.get("manifest_digest")
    if isinstance(built_digest, str):
        refs.append(ManifestRef(_str(seal.get("manifest_path")), built_digest, "built"))
    for entry in store.list_index(paths, env):
        if entry.snapshot == sid and entry.manifest_digest != built_digest:
            refs.append(ManifestRef(entry.manifest_path, entry.manifest_digest, "indexed"))
    try:
        current = store.read_current(paths, env)
    except DamagedRecord:
        current = None
    snap = paths.snapshot(env, sid)
    counts = installed_counts(snap)
    return ShowResult(
        snapshot=sid,
        env=env,
        path=str(snap),
        current=sid == current,
        pinned=store.is_pinned(paths, env, sid),
        valid=problem is None,
        problem=problem,
        created=_num(seal.get("created")),
        python=f"{fp.get('implementation', '?')} {fp.get('version', '?')}" if fp else None,
        interpreter=_str(fp.get("executable")),
        link_mode=_str(seal.get("link_mode")),
        apparent_bytes=int(_num(seal.get("apparent_bytes")) or 0),
        unique_bytes=_unique_bytes(str(snap)) if sizes else None,
        files=counts.files if counts else int(_num(seal.get("record_entries")) or 0),
        packages=_packages(held, counts),
        groups=groups,
        models=tuple(models),
        manifests=tuple(refs),
        clashes=tuple(
            f"{c['path']} ({', '.join(map(str, c['distributions']))}; kept {c.get('kept') or '?'})"
            for c in seal.get("clashes") or []
            if isinstance(c, dict)
            and isinstance(c.get("path"), str)
            and isinstance(c.get("distributions"), list)
        ),
        imports=_imports(seal.get("imports")),
    )


def _imports(doc: Any) -> tuple[str, ...]:
    """The seal's import check as lines: `import check: N modules ... ; K failed`, then each."""
    if not isinstance(doc, dict):
        return ()
    fails = [f for f in doc.get("failures") or [] if isinstance(f, dict)]
    checked, seconds = _num(doc.get("checked")) or 0, _num(doc.get("seconds")) or 0
    head = f"import check: {checked:.0f} modules in {seconds:.1f} s"
    head += f"; {len(fails)} failed" if fails else ", all imported"
    lines = [head]
    for f in fails:
        kind = "" if f.get("required") else " (optional)"
        lines.append(f"{f.get('module')} ({f.get('distribution')}){kind}: {f.get('error')}")
    return tuple(lines)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
