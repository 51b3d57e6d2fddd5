"""Root discovery (DESIGN.md): --root > VOLENV_ROOT > /runpod-volume > /workspace > XDG.

Inside a RunPod container (RUNPOD_POD_ID or RUNPOD_ENDPOINT_ID set) there is no XDG fallback:
with no network volume attached, a build there would fill the container disk (the seed's
failure), so discovery raises VolumeError instead. os-only on purpose: it runs on the
entrypoint's fast path.

RunPod's model cache lives at /runpod-volume/huggingface-cache on the worker's own disk: a
/runpod-volume that holds only that cache (and is no mount point) is not a network volume, and
volenv never makes its root there.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from volenv.base.errors import VolumeError


MOUNTS = ("/runpod-volume", "/workspace")
RUNPOD_CACHE_ONLY = frozenset({"huggingface-cache"})  # what RunPod's model cache puts there
NO_VOLUME_ROOT = "/runpod-volume/volenv"  # what `run` reports as its root when there is none
_told_fallback = False


def is_volume(mount: str) -> bool:
    """Whether a mount path is a network volume to keep the root on: a directory, and not one
    that holds only RunPod's model cache (unless it is a mount point of its own)."""
    if not os.path.isdir(mount):
        return False
    if os.path.isdir(os.path.join(mount, "volenv")):  # the common case, one stat: volenv's root is there
        return True
    try:
        names = set(os.listdir(mount))
    except OSError:
        return True  # unreadable: root_exists says why, never a silent move elsewhere
    return not (names and names <= RUNPOD_CACHE_ONLY) or os.path.ismount(mount)


def in_runpod(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("RUNPOD_POD_ID") or environ.get("RUNPOD_ENDPOINT_ID"))


def no_volume_error() -> VolumeError:
    from volenv.base.errors import VolumeError

    cache_only = os.path.isdir(MOUNTS[0]) and not is_volume(MOUNTS[0])
    return VolumeError(
        "no network volume is attached at /runpod-volume (nor at /workspace)"
        + (" (it holds only RunPod's model cache)" if cache_only else "")
        + "; volenv does not build on the container disk",
        hint="attach a network volume to this endpoint or pod, "
        "or set VOLENV_ROOT to choose a root on the container disk",
    )


def discover_root(
    explicit: str | None, environ: Mapping[str, str] | None = None, *, defer: bool = False
) -> tuple[str, str]:
    """(absolute root, the rule that picked it). In a RunPod container with no volume this
    raises no_volume_error(); with defer=True (the `run` fast path, whose --diagnose must
    answer jobs with that error) it returns (NO_VOLUME_ROOT, "no-volume") and root_exists
    raises it instead, inside `run`'s error handling."""
    env = os.environ if environ is None else environ
    if explicit:
        return os.path.abspath(explicit), "--root"
    if env.get("VOLENV_ROOT"):
        return os.path.abspath(env["VOLENV_ROOT"]), "VOLENV_ROOT"
    for mount in MOUNTS:
        if is_volume(mount):
            return os.path.join(mount, "volenv"), mount
    if in_runpod(env):
        if defer:
            return NO_VOLUME_ROOT, "no-volume"
        raise no_volume_error()
    data_home = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    root = os.path.join(data_home, "volenv")
    global _told_fallback
    if not _told_fallback:  # once per process: the fallback is never silent, but -qq is
        _told_fallback = True
        from volenv.base.ui import reporter

        reporter.warn(
            f"no --root, VOLENV_ROOT or network volume (/runpod-volume, /workspace): "
            f"using the local fallback root {root}"
        )
    return root, "xdg"


def root_exists(path: str) -> bool:
    """True/False for present/absent; an unreachable volume (ENOTCONN, EIO, ESTALE, EACCES)
    raises VolumeError (exit 8) instead of passing for 'missing'."""
    import stat as _stat

    from volenv.base.errors import VolumeError

    if path == NO_VOLUME_ROOT and in_runpod(os.environ) and not any(is_volume(m) for m in MOUNTS):
        raise no_volume_error()
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


def default_root(environ: Mapping[str, str] | None = None) -> str | None:
    """The root a plain `volenv` command would use here (discover_root without --root), or None
    in a RunPod container with no volume; says nothing (no fallback warning)."""
    env = os.environ if environ is None else environ
    if env.get("VOLENV_ROOT"):
        return os.path.abspath(env["VOLENV_ROOT"])
    for mount in MOUNTS:
        if is_volume(mount):
            return os.path.join(mount, "volenv")
    if in_runpod(env):
        return None
    data_home = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data_home, "volenv")


def fix_command(root: str | None, *args: str) -> str:
    """A volenv command line to paste: each argument shell-quoted, with `--root ROOT` when the
    root in use is not the one a plain `volenv` would find here (every hint and fix line that
    names a command is built here, so it works as printed)."""
    from volenv.base.errors import shq

    words = ["volenv"]
    if root is not None and os.path.abspath(root) != default_root():
        words += ["--root", shq(root)]
    return " ".join([*words, *(shq(a) for a in args)])
