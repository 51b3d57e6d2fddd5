"""`volenv env`: the activation environment for a pod shell (`eval "$(volenv env --env NAME)"`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..activate import RunOptions, compute_env, prepare


@dataclass(frozen=True)
class EnvResult:
    env: str
    snapshot: str
    path: str
    variables: dict[str, str]
    unset: tuple[str, ...]


def activation_env(root: str, manifest: str | None, env: str | None, verify: str) -> EnvResult:
    o = RunOptions()
    o.manifest, o.env, o.on_missing, o.verify, o.command = manifest, env, "fail", verify, ["true"]
    target, snap_dir, _seal = prepare(root, o)
    # the variables volenv sets, with `${NAME}` in manifest values expanded against this shell's
    variables = compute_env(
        root, snap_dir, target.env, target.activation, base={"PATH": os.environ.get("PATH", "")}
    )
    full = compute_env(root, snap_dir, target.env, target.activation, base=dict(os.environ))
    variables.update({k: full[k] for k in target.activation.get("env", {})})
    return EnvResult(target.env, os.path.basename(snap_dir), snap_dir, variables, ("PYTHONHOME",))
