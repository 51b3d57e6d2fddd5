"""Where code finds an hf model without volenv: the ref volenv writes next to a fetched hf
model's snapshot (`refs/<ref>`, the pinned commit), and RunPod's model cache on this machine,
whose copy of a model is used in place when it matches the pins (store/runpodcache.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from volenv.base.errors import ModelError
from volenv.base.ui import reporter
from volenv.store import runpodcache
from volenv.store.modelpaths import hf_ref, model_ref_path
from volenv.store.paths import VolumePaths
from volenv.store.volio import atomic_write_bytes, read_regular, safe_mkdirs


def runpod_found(m: dict[str, Any], *, verify: bool, say: bool) -> runpodcache.Found | None:
    """The hf model as RunPod's model cache on this machine holds it, when it does and its files
    match their pins (hashed with verify=True); None otherwise (a copy there that does not
    match is a warning with say=True, and the volume's copy is used)."""
    found = runpodcache.find(m, verify=verify) if m.get("hf") else None
    if found is None:
        return None
    if not found.usable:
        if say:
            reporter.warn(
                f"model '{m['name']}': RunPod's model cache holds {found.snapshot}, not used: {found.problem}"
            )
        return None
    if say:
        reporter.info(
            f"model '{m['name']}': in RunPod's model cache at {found.snapshot}, {how_checked(found)};"
            " used in place (no download, no copy)"
        )
    return found


def how_checked(found: runpodcache.Found) -> str:
    return "verified against its pins" if found.verified else "present"


def read_ref(paths: VolumePaths, m: dict[str, Any]) -> str | None:
    """The commit an hf model's ref names on the volume, or None when there is none (a link, a
    FIFO or a directory in its place reads as none: it is replaced, never read through)."""
    try:
        return read_regular(model_ref_path(str(paths.root), m), 256).decode("ascii", "replace").strip()
    except OSError:
        return None


def write_ref(paths: VolumePaths, m: dict[str, Any]) -> None:
    """Point the hf model's ref at its pinned commit (after its record: a ref never names a
    snapshot that is not whole). Code that loads the repository by name with HF_HUB_OFFLINE=1
    reads `refs/<ref>` to find its snapshot; huggingface_hub writes no ref for a download by
    commit. A ref that named another commit moves, and that is said."""
    if not m.get("hf"):
        return
    rev = m["hf"]["revision"]
    before = read_ref(paths, m)
    if before == rev:
        return
    path = Path(model_ref_path(str(paths.root), m))
    safe_mkdirs(path.parent, paths.root)
    try:
        atomic_write_bytes(path, rev.encode(), root=paths.root)
    except IsADirectoryError:
        raise ModelError(
            f"model '{m['name']}': {path} is a directory, so the ref cannot name the pinned commit",
            hint="remove that directory (volenv never makes one there), then fetch again",
        ) from None
    if before:
        reporter.warn(
            f"model '{m['name']}': refs/{hf_ref(m)} of {m['hf']['repo']} named {before[:12]}, now the"
            f" pinned {rev[:12]}: code that loads the repository by name gets this pin (a manifest on"
            " this volume that pins another commit of it and loads it by name needs its own ref)"
        )
