"""Activation: manifest -> index -> snapshot -> seal check -> environment (`start.run` adds the
policies and the exec).

This module is the container entrypoint's fast path. It imports only os, sys, time and
the C modules _json and _sha256 (plus small volenv modules that do the same; not `json`, whose
import of `re` alone cost a third of a start) so a start costs milliseconds; it needs
no network and no writes. Manifest validation (which needs `packaging`) is skipped through an
alias: the sha256 of the manifest's bytes -> the env and manifest digest that a full parse
gave when the manifest was synced.
"""

from __future__ import annotations

import os
import sys
import time

from volenv.base.envvars import apply_manifest_env
from volenv.base.errors import (
    DamagedRecord,
    UsageError,
    VerifyError,
    VolumeError,
    shq,
)
from volenv.base.leanjson import NOT_A_RECORD, loads, read_record_bytes
from volenv.store import runpodcache
from volenv.store.alias import activation_settings, alias_current, alias_path, inputs_match, write_alias
from volenv.store.modelpaths import hf_ref, model_env_name, model_location, model_record_path
from volenv.store.rootfind import fix_command
from volenv.store.sealcheck import (
    SealProblem,
    is_snapshot_id,
    plain_name,
    read_seal,
    rollback_hint,
    rollback_problem,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from volenv.start.run import RunOptions


class Target:
    """What to activate: env, manifest digest (None for --env) and the activation settings."""

    def __init__(
        self, env: str, digest: str | None, activation: dict[str, Any], manifest_path: str | None
    ) -> None:
        self.env = env
        self.digest = digest
        self.activation = activation
        self.manifest_path = manifest_path


def _read_json(path: str) -> Any:
    """The parsed record, or None when absent. Bytes that are not JSON, or a directory in the
    record's place, raise DamagedRecord naming the file; an unreachable volume is VolumeError,
    never 'absent'."""
    try:
        raw = read_record_bytes(path)
    except FileNotFoundError:
        return None
    except (IsADirectoryError, NotADirectoryError):
        raise DamagedRecord(f"{path} is damaged: not a file", hint=f"remove {path}") from None
    except OSError as exc:
        if exc.errno in NOT_A_RECORD:  # a link, a FIFO, a device: volenv never writes one there
            raise DamagedRecord(f"{path} is damaged: not a regular file", hint=f"remove {path}") from None
        raise VolumeError(
            f"cannot read {path}: {exc.strerror} (errno {exc.errno}); the volume is unreachable",
            hint="check the network volume's mount",
        ) from None
    try:
        return loads(raw)
    except ValueError as exc:
        raise DamagedRecord(f"{path} is damaged: not valid JSON ({exc})", hint=f"remove {path}") from None


def target_from_manifest(root: str, manifest_path: str, *, remember: bool = False) -> Target:
    """The env, digest and activation settings of a manifest: from its alias when every input
    the alias covers is unchanged, else from a full parse. `remember` (run's, not a read-only
    command's): write the alias after a full parse, or its refreshed fingerprints."""
    try:
        with open(manifest_path, "rb") as fh:
            raw = fh.read()
    except OSError:
        raw = None
    if raw is not None:
        alias: Any = None
        try:  # a linked aliases/ holds somebody else's activation: never read through it
            if not os.path.islink(os.path.join(root, "aliases")):
                alias = _read_json(alias_path(root, raw))
        except DamagedRecord:  # a cache of a full parse: when damaged, parse again
            alias = None
        if alias_current(alias) and inputs_match(root, raw, alias, manifest_path, refresh=remember):
            return Target(alias["env"], alias["manifest_digest"], alias["activation"], manifest_path)
    from volenv.manifest.parse import load_manifest  # slow path: full validation

    m = load_manifest(manifest_path)
    if remember and raw is not None and os.path.isfile(os.path.join(root, "volenv.json")):
        write_alias(root, m)  # the next start takes the fast path (best effort: may be read-only)
    return Target(m.name, m.digest, activation_settings(m), manifest_path)


def _pointer(path: str, env: str, hint: str) -> str | None:
    try:
        data = _read_json(path)
    except DamagedRecord as exc:
        exc.hint = hint
        raise
    if data is None:
        return None
    snap = data.get("snapshot") if isinstance(data, dict) else None
    if not isinstance(snap, str) or not is_snapshot_id(snap, env):
        raise DamagedRecord(f"{path} is damaged: it names no snapshot of '{env}'", hint=hint)
    return snap


def rolled_back(root: str, env: str) -> tuple[str, float, float] | None:
    """(snapshot, its seal time, when) if `volenv rollback` set the env's current pointer and no
    switch has happened since (store.write_current). A damaged pointer is no rollback here."""
    path = os.path.join(root, "envs", env, "current")
    try:
        data = _read_json(path)
    except DamagedRecord:
        return None
    rb = data.get("rollback") if isinstance(data, dict) else None
    if not isinstance(rb, dict):
        return None
    snap = data.get("snapshot")
    if not isinstance(snap, str) or not is_snapshot_id(snap, env):
        return None
    problem = rollback_problem(rb, env)
    if problem is not None:  # a rollback the pointer cannot vouch for: never guessed either way
        raise DamagedRecord(f"{path} is damaged: {problem}", hint=rollback_hint(root, env))
    return snap, float(rb["created"]), float(rb["time"])


def _newer_than(root: str, env: str, sid: str | None, created: float) -> bool:
    """Whether `sid` was sealed after `created`; no snapshot, or an unreadable one, counts as newer
    (a rollback is the operator's word: nothing unknown overrides it)."""
    if sid is None:
        return True
    try:
        when = read_seal(os.path.join(root, "envs", env, "snapshots", sid)).get("created")
    except SealProblem:
        return True
    return not isinstance(when, int | float) or when > created


def _honour_rollback(root: str, o: RunOptions, target: Target, sid: str | None) -> str | None:
    """While the env is rolled back to S, `run --manifest M` runs M's own snapshot only when
    that is S or older; otherwise S, saying so on stderr (README, Decisions)."""
    rb = rolled_back(root, target.env) if target.digest is not None else None
    if rb is None or sid == rb[0] or not _newer_than(root, target.env, sid, rb[1]):
        return None
    what = f"instead of {sid}" if sid is not None else "(it has no snapshot yet)"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(rb[2]))
    print(
        f"volenv: '{target.env}' is rolled back to {rb[0]} (at {when}): {o.verb} it for {o.manifest}"
        f" {what}; `volenv sync {shq(o.manifest)}` ends the rollback",
        file=sys.stderr,
    )
    return rb[0]


def find_snapshot(root: str, target: Target) -> str | None:
    env_dir = os.path.join(root, "envs", target.env)
    if target.digest is not None:
        path = os.path.join(env_dir, "index", target.digest)
        how = fix_command(root, "sync", target.manifest_path) if target.manifest_path else "sync its manifest"
        return _pointer(path, target.env, f"`{how}` writes {path} again")
    current = os.path.join(env_dir, "current")
    try:
        return _pointer(current, target.env, "")
    except DamagedRecord as exc:
        exc.hint = rollback_hint(root, target.env)  # only now: it reads every snapshot's seal
        raise


# ---------------------------------------------------------------- environment


def compute_env(
    root: str,
    snapshot_dir: str,
    env_name: str,
    activation: dict[str, Any],
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONHOME", None)
    env.pop("__PYVENV_LAUNCHER__", None)
    bindir = os.path.join(snapshot_dir, "bin")
    old_venv = env.get("VIRTUAL_ENV")
    parts = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p]
    if old_venv:
        parts = [p for p in parts if p != os.path.join(old_venv, "bin")]
    env["PATH"] = os.pathsep.join([bindir, *parts])
    env["VIRTUAL_ENV"] = snapshot_dir
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    env["VOLENV_ROOT"] = root
    env["VOLENV_ENV"] = env_name
    env["VOLENV_SNAPSHOT"] = os.path.basename(snapshot_dir)
    models_dir = os.path.join(root, "models")
    env["HF_HOME"] = os.path.join(models_dir, "hf")
    env["HF_HUB_CACHE"] = os.path.join(models_dir, "hf", "hub")
    env["TORCH_HOME"] = os.path.join(models_dir, "torch")
    env["NLTK_DATA"] = os.path.join(models_dir, "nltk")
    models = activation.get("models", [])
    all_present = True
    in_place = []  # hf models that RunPod's model cache holds, used where they are
    hf_on_volume = False
    for m in models:
        found = runpodcache.find(m, verify=False) if m.get("hf") else None
        if found is not None and found.usable:
            env[model_env_name(m["name"])] = found.snapshot
            in_place.append((m, found))
        elif os.path.exists(model_record_path(root, m)):
            env[model_env_name(m["name"])] = model_location(root, m)
            hf_on_volume = hf_on_volume or bool(m.get("hf"))
        elif not m.get("optional"):
            all_present = False
    if in_place and not hf_on_volume and all(runpodcache.ref_matches(f, m, hf_ref(m)) for m, f in in_place):
        # every hf model is in RunPod's cache and its refs name the pins: loading by name reads there
        env["HF_HUB_CACHE"] = os.path.dirname(os.path.dirname(os.path.dirname(in_place[0][1].snapshot)))
    if models and all_present:
        env["HF_HUB_OFFLINE"] = "1"
    try:
        return apply_manifest_env(env, activation.get("env", {}))
    except ValueError as exc:  # settings from the volume (a seal, an alias) that no parse allowed
        raise DamagedRecord(
            f"the activation settings of {os.path.basename(snapshot_dir)} are damaged: {exc}",
            hint="sync the manifest again (its seal or alias was changed on the volume)",
        ) from None


# ---------------------------------------------------------------- run


def resolve_target(root: str, o: RunOptions, *, remember: bool = False) -> Target:
    if o.manifest is not None:
        return target_from_manifest(root, o.manifest, remember=remember)
    assert o.env is not None
    if not plain_name(o.env):
        raise UsageError(f"--env: {o.env!r} is not an env name")
    return Target(o.env, None, {}, None)


def _contained_snapshot(root: str, snap_dir: str) -> None:
    """volenv only ever writes a snapshot as a real directory inside the root: a link there (or
    a linked envs/ENV) would exec code from outside the volume, so it is refused (exit 4)."""
    top = os.path.realpath(root)
    real = os.path.realpath(snap_dir)
    if os.path.islink(snap_dir) or not real.startswith(top.rstrip("/") + "/"):
        raise VerifyError(
            f"snapshot directory {snap_dir} is a symlink or resolves outside the volume root"
            f" ({real}): unsafe, not run",
            hint="remove the link (volenv never makes one there), then sync the manifest again",
        )


def _verify_deep(snap_dir: str, level: str) -> None:
    from pathlib import Path

    from volenv.store.integrity import verify_snapshot

    report = verify_snapshot(Path(snap_dir), level)
    if not report.ok:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(snap_dir))))
        env = os.path.basename(os.path.dirname(os.path.dirname(snap_dir)))
        repair = fix_command(root, "verify", env, "--repair")
        err = VerifyError(report.summary(), hint=f"{repair}, or run with --on-missing build")
        err.report = report  # type: ignore[attr-defined]
        raise err


def _activation_from_seal(seal: dict[str, Any]) -> dict[str, Any]:
    m = seal.get("manifest", {})
    return {"env": m.get("env", {}), "models": m.get("models", [])}


def mark_used(root: str, env: str, sid: str) -> None:
    """Best effort (a read-only volume still activates). Reached from the root one directory at
    a time with O_NOFOLLOW, and the mark itself opened with O_NOFOLLOW: a planted link at any
    of them is left alone, never written or touched through."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    fds: list[int] = []
    try:
        fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY))
        for part in ("envs", env, "used"):
            fds.append(os.open(part, flags, dir_fd=fds[-1]))
        fd = os.open(sid, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644, dir_fd=fds[-1])
        try:
            os.utime(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    finally:
        for d in fds:
            os.close(d)
