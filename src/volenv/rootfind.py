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


def root_exists(path: str) -> bool:
    """True/False for present/absent; an unreachable volume (ENOTCONN, EIO, ESTALE, EACCES)
    raises VolumeError (exit 8) instead of passing for 'missing'."""
    import stat as _stat

    from .errors import VolumeError

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise VolumeError(
            f"volume root {path} is unreachable: {exc.strerror} (errno {exc.errno})",
            hint="the network volume is not mounted or its connection is gone; check the mount",
        ) from None
    if not _stat.S_ISDIR(st.st_mode):
        raise VolumeError(f"volume root {path} is not a directory")
    return True
