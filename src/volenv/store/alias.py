"""Manifest aliases: the sha256 of a manifest's bytes -> the env, digest and activation
settings a full parse gave at sync, so `run` skips validation. Written by build, read by
activate; a low module (os and the seal helpers) so both import it without a circle."""

from __future__ import annotations

import os

from volenv.store.sealcheck import activation_problem, plain_name, sha256_hex

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ALIAS_SCHEMA = 1


def alias_path(root: str, manifest_bytes: bytes) -> str:
    return os.path.join(root, "aliases", sha256_hex(manifest_bytes) + ".json")


def activation_settings(manifest: Any) -> dict[str, Any]:
    """What activation needs from a parsed Manifest, as plain data."""
    from volenv.manifest.schema import model_dict

    return {"env": dict(manifest.env), "models": [model_dict(m) for m in manifest.models]}


def write_alias(paths: Any, manifest: Any) -> None:
    """Best effort: remember this manifest's bytes so the next start skips validation."""
    from volenv.store.volio import ContainmentError, atomic_write_json, safe_mkdirs

    try:
        raw = manifest.path.read_bytes()
        lock = None
        if manifest.lockfile is not None:
            lock = [os.path.relpath(manifest.lockfile, manifest.path.parent), manifest.lockfile_sha256]
        inputs = [
            [os.path.relpath(f, manifest.path.parent), sha] for f, sha in manifest.requirements_file_inputs
        ]
        dest = alias_path(str(paths.root), raw)
        safe_mkdirs(paths.root / "aliases", paths.root)  # a linked aliases/ is skipped, not used
        atomic_write_json(
            paths.root / "aliases" / os.path.basename(dest),
            {
                "schema": ALIAS_SCHEMA,
                "env": manifest.name,
                "manifest_digest": manifest.digest,
                "lockfile": lock,
                "inputs": inputs,
                "activation": activation_settings(manifest),
            },
            durable=False,
        )
    except (OSError, ContainmentError):
        pass


def alias_ok(alias: Any) -> bool:
    """An alias is used only when it has the shape write_alias gives it (else: full parse)."""
    if not isinstance(alias, dict) or alias.get("schema") != ALIAS_SCHEMA:
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


def lock_matches(alias: dict[str, Any], manifest_path: str) -> bool:
    """The files besides the manifest that its digest covers (lockfile, requirements files)
    still have the bytes the alias saw."""
    lock = alias.get("lockfile")
    files = [lock] if lock is not None else []
    files += alias.get("inputs") or []
    for rel, sha in files:
        path = os.path.join(os.path.dirname(os.path.abspath(manifest_path)), rel)
        try:
            with open(path, "rb") as fh:
                if sha256_hex(fh.read()) != sha:
                    return False
        except OSError:
            return False
    return True
