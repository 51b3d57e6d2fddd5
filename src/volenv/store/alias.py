"""Manifest aliases: the sha256 of a manifest's bytes -> the env, digest and activation
settings a full parse gave, so `run` skips validation. Written by sync (and by `run` after a full
parse), read by activation; a low module (os and the seal helpers) so both import it without a
circle. An alias also holds every other input of the manifest's digest (lockfile, requirements
files, local package trees and files) so that a change to any of them is never missed: see
`inputs_match`."""

from __future__ import annotations

import os

from volenv.base.leanjson import read_regular_file
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
        for target, digest, absolute in local_source_paths(manifest):
            fp = fingerprint(str(target))  # before the digest: an edit in between shows as a change
            if source_digest(target) != digest:
                from volenv.base.ui import reporter

                reporter.warn(
                    f"local package {target} changed while this ran (does its build write into the"
                    " tree?): no alias is kept for it, so each start digests it again"
                )
                return
            # as the manifest names it: relative stays relative (the project may move), absolute
            # stays absolute (a copied project still names the same tree)
            sources.append(
                [str(target) if absolute else os.path.relpath(target, manifest.path.parent), digest, fp]
            )
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


def _path_ok(p: Any) -> bool:
    return isinstance(p, str) and 0 < len(p) < 4096 and "\0" not in p and p.isprintable()


def alias_current(alias: Any) -> bool:
    """What `run` trusts: this schema, every input and local source of the right shape."""
    if not alias_ok(alias) or alias.get("schema") != ALIAS_SCHEMA:
        return False
    sources, inputs, lock = alias.get("sources"), alias.get("inputs"), alias.get("lockfile")
    return (
        isinstance(sources, list)
        and all(
            isinstance(s, list) and len(s) == 3 and _path_ok(s[0]) and _hex64(s[1]) and _hex64(s[2])
            for s in sources
        )
        and isinstance(inputs, list)
        and all(isinstance(i, list) and len(i) == 2 and _path_ok(i[0]) and _hex64(i[1]) for i in inputs)
        and (lock is None or (_path_ok(lock[0]) and _hex64(lock[1])))
    )


def inputs_match(
    root: str, manifest_raw: bytes, alias: dict[str, Any], manifest_path: str, *, refresh: bool = True
) -> bool:
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
            if sha256_hex(_read_regular(os.path.join(folder, rel))) != sha:
                return False
        except (OSError, ValueError):
            return False
    moved = []
    strict = os.environ.get("VOLENV_LOCAL_CHECK") == "digest"
    for i, (rel, digest, fp) in enumerate(alias.get("sources") or []):
        path = os.path.join(folder, rel)
        try:
            if not strict and fingerprint(path) == fp:
                continue
            from pathlib import Path

            from volenv.manifest.sources import source_digest

            now = fingerprint(path)
            if source_digest(Path(path)) != digest:
                return False
        except (OSError, ValueError):
            return False
        if now != fp:
            moved.append((i, now))
    if moved and refresh:
        _refresh(root, manifest_raw, alias, moved)
    return True


def _read_regular(path: str) -> bytes:
    """A small input file's bytes, opened without blocking: a FIFO in its place is an error,
    never a hang (and the start takes the full parse, which says what is wrong)."""
    return read_regular_file(path, 64 << 20, follow=True)


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
