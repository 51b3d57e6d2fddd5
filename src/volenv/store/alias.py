"""Manifest aliases: the sha256 of a manifest's bytes -> the env, digest and activation
settings a full parse gave, so `run` skips validation. Written by sync (and by `run` after a full
parse), read by activation; a low module (os and the seal helpers) so both import it without a
circle. An alias also holds every other input of the manifest's digest (lockfile, requirements
files, local package trees and files) so that a change to any of them is never missed: see
`inputs_match`."""

from __future__ import annotations

import os

from volenv.store.sealcheck import activation_problem, plain_name, sha256_hex

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# 2: `sources` (each local package tree or file the manifest's digest covers: its path, digest and
# stat fingerprint). A schema-1 alias (no sources) is still read for its models (gc), never by `run`.
ALIAS_SCHEMA = 2


def alias_path(root: str, manifest_bytes: bytes) -> str:
    return os.path.join(root, "aliases", sha256_hex(manifest_bytes) + ".json")


def activation_settings(manifest: Any) -> dict[str, Any]:
    """What activation needs from a parsed Manifest, as plain data."""
    from volenv.manifest.schema import model_dict

    return {"env": dict(manifest.env), "models": [model_dict(m) for m in manifest.models]}


def fingerprint(path: str) -> str:
    """The stat fingerprint of a local source (manifest/tree.py says what it sees and what not)."""
    from volenv.manifest.tree import stat_lines

    return sha256_hex(stat_lines(path))


def write_alias(root: Any, manifest: Any) -> None:
    """Best effort: remember this manifest's bytes so the next start skips validation. Every file
    and tree its digest covers is remembered with it (requirements files and the lockfile by
    sha256, local sources by digest and stat fingerprint), so that a changed one sends `run`
    back to a full parse. A local source that changed while this ran gets no alias at all."""
    from pathlib import Path

    from volenv.manifest.sources import local_source_paths, source_digest
    from volenv.store.volio import ContainmentError, atomic_write_json, safe_mkdirs

    root = str(root)
    try:
        raw = manifest.path.read_bytes()
        lock = None
        if manifest.lockfile is not None:
            lock = [os.path.relpath(manifest.lockfile, manifest.path.parent), manifest.lockfile_sha256]
        inputs = [
            [os.path.relpath(f, manifest.path.parent), sha] for f, sha in manifest.requirements_file_inputs
        ]
        sources = []
        for target, digest in local_source_paths(manifest):
            fp = fingerprint(str(target))  # before the digest: an edit in between shows as a change
            if source_digest(target) != digest:
                return  # edited since the manifest was parsed: whatever was built, no alias for it
            sources.append([os.path.relpath(target, manifest.path.parent), digest, fp])
        safe_mkdirs(Path(root) / "aliases", Path(root))  # a linked aliases/ is skipped, not used
        doc = {
            "schema": ALIAS_SCHEMA,
            "env": manifest.name,
            "manifest_digest": manifest.digest,
            "lockfile": lock,
            "inputs": inputs,
            "sources": sources,
            "activation": activation_settings(manifest),
        }
        atomic_write_json(Path(alias_path(root, raw)), doc, durable=False)
    except (OSError, ValueError, ContainmentError):
        pass


def _hex64(x: Any) -> bool:
    return isinstance(x, str) and len(x) == 64 and all(c in "0123456789abcdef" for c in x)


def alias_ok(alias: Any) -> bool:
    """An alias has the shape write_alias gives it (any schema volenv wrote: gc reads the models
    of older ones); `run` also wants `alias_current`."""
    if not isinstance(alias, dict) or alias.get("schema") not in (1, ALIAS_SCHEMA):
        return False
    act, lock = alias.get("activation"), alias.get("lockfile")
    return (
        plain_name(alias.get("env"))
        and plain_name(alias.get("manifest_digest"))
        and isinstance(act, dict)
        and activation_problem(act.get("env", {}), act.get("models", [])) is None
        and (
            lock is None
            or (isinstance(lock, list) and len(lock) == 2 and all(isinstance(x, str) for x in lock))
        )
    )


def alias_current(alias: Any) -> bool:
    """What `run` trusts: this schema, with the list of local sources (possibly empty)."""
    sources = alias.get("sources") if isinstance(alias, dict) else None
    return (
        alias_ok(alias)
        and alias.get("schema") == ALIAS_SCHEMA
        and isinstance(sources, list)
        and all(
            isinstance(s, list)
            and len(s) == 3
            and isinstance(s[0], str)
            and "\0" not in s[0]
            and _hex64(s[1])
            and _hex64(s[2])
            for s in sources
        )
    )


def inputs_match(root: str, manifest_raw: bytes, alias: dict[str, Any], manifest_path: str) -> bool:
    """Everything besides the manifest's bytes that its digest covers is as the alias saw it:
    the lockfile and requirements files (their sha256), and each local source: its stat
    fingerprint, or when that moved (a new checkout, a new image layer, an edit), its digest
    taken again; when only the fingerprint changed, the alias is refreshed (best effort)."""
    folder = os.path.dirname(os.path.abspath(manifest_path))
    lock = alias.get("lockfile")
    files = [lock] if lock is not None else []
    files += alias.get("inputs") or []
    for rel, sha in files:
        try:
            with open(os.path.join(folder, rel), "rb") as fh:
                if sha256_hex(fh.read()) != sha:
                    return False
        except OSError:
            return False
    moved = []
    for i, (rel, digest, fp) in enumerate(alias.get("sources") or []):
        path = os.path.join(folder, rel)
        try:
            if fingerprint(path) == fp:
                continue
            from pathlib import Path

            from volenv.manifest.sources import source_digest

            now = fingerprint(path)
            if source_digest(Path(path)) != digest:
                return False
        except OSError:
            return False
        moved.append((i, now))
    if moved:
        _refresh(root, manifest_raw, alias, moved)
    return True


def _refresh(root: str, manifest_raw: bytes, alias: dict[str, Any], moved: list[tuple[int, str]]) -> None:
    """The same sources with new fingerprints (same digests): written so the next start is fast."""
    from pathlib import Path

    from volenv.store.volio import ContainmentError, atomic_write_json

    doc = dict(alias)
    doc["sources"] = [list(s) for s in alias["sources"]]
    for i, fp in moved:
        doc["sources"][i][2] = fp
    try:
        atomic_write_json(Path(alias_path(root, manifest_raw)), doc, durable=False)
    except (OSError, ValueError, ContainmentError):
        pass
