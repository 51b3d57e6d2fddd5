"""Root discovery (DESIGN.md): --root > VOLENV_ROOT > /runpod-volume > /workspace > XDG.

os-only on purpose: it runs on the entrypoint's fast path.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping


def discover_root(explicit: str | None, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(absolute root, the rule that picked it)."""
    env = os.environ if environ is None else environ
    if explicit:
        return os.path.abspath(explicit), "--root"
    if env.get("VOLENV_ROOT"):
        return os.path.abspath(env["VOLENV_ROOT"]), "VOLENV_ROOT"
    for mount in ("/runpod-volume", "/workspace"):
        if os.path.isdir(mount):
            return os.path.join(mount, "volenv"), mount
    data_home = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data_home, "volenv"), "xdg"
