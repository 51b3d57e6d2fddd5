"""Interpreter/platform fingerprint: part of the snapshot id and checked at every activation."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from volenv.base.errors import BuildError

FINGERPRINT_KEYS = ("implementation", "version", "abi", "platform", "libc", "executable")

_PROBE = r"""
import json, os, platform, sys, sysconfig
exe = os.path.realpath(sys.executable)
print(json.dumps({
    "implementation": sys.implementation.name,
    "version": platform.python_version(),
    "abi": sysconfig.get_config_var("SOABI") or "",
    "platform": sysconfig.get_platform(),
    "libc": "-".join(platform.libc_ver()),
    "executable": exe,
    "executable_size": os.stat(exe).st_size,
}))
"""


def probe(python: str) -> dict[str, Any]:
    """Ask the interpreter itself (not its path or name) what it is."""
    try:
        out = subprocess.run(
            [python, "-I", "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"cannot run interpreter {python}: {exc}", step="resolve") from exc
    data: dict[str, Any] = json.loads(out)
    return data


def fingerprint_key(fp: dict[str, Any]) -> dict[str, Any]:
    """The part of the fingerprint that goes into the snapshot id."""
    return {k: fp[k] for k in FINGERPRINT_KEYS}
