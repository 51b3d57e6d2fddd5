"""`volenv env`: the activation environment for a pod shell (`eval "$(volenv env --env NAME)"`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from volenv.base.errors import DamagedRecord
from volenv.start.activation import compute_env
from volenv.start.run import RunOptions, prepare
from volenv.store.sealcheck import is_env_var_name


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
    o.verb = "using"
    target, snap_dir, _seal = prepare(root, o)
    # the variables volenv sets, with `${NAME}` in manifest values expanded against this shell's
    variables = compute_env(
        root, snap_dir, target.env, target.activation, base={"PATH": os.environ.get("PATH", "")}
    )
    full = compute_env(root, snap_dir, target.env, target.activation, base=dict(os.environ))
    variables.update({k: full[k] for k in target.activation.get("env", {})})
    # `eval "$(volenv env ...)"` runs what we print: names come from a seal that may have been
    # pulled, so each must be a plain POSIX name (values are shell-quoted by the renderer)
    for name in variables:
        if not is_env_var_name(name):
            raise DamagedRecord(
                f"snapshot {os.path.basename(snap_dir)} sets the environment variable {name!r},"
                " which is not a valid name; refusing to print it for a shell"
            )
    return EnvResult(target.env, os.path.basename(snap_dir), snap_dir, variables, ("PYTHONHOME",))
