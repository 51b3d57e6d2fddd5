"""Which manifest an env belongs to: its origin, recorded in `envs/<env>/origin.json`, so that a
second manifest that happens to carry the same `name` does not share the env silently.

An origin is the manifest's explicit `id` when it declares one, else where the manifest is: its
absolute path (symlinks resolved) and the host that read it. The host is left out when the
manifest lies on the volume's own filesystem (every host that mounts the volume sees that very
file: RunPod pods that sync `/workspace/proj/volenv.toml` one after another have different host
names). Two origins are the same manifest when both declare an id and the ids are equal, or
otherwise when path and host are equal. `host_id()` is the one place the host comes from
(`VOLENV_HOST_ID` overrides it: tests and machines whose host names change).

Only an interactive `volenv sync MANIFEST` is refused over a different origin (commands/sync.py);
unattended syncs (a provisioning pod's `sync --from-env`, a worker's `run --on-missing build`)
read their manifest from a temp file or an image on a fresh host each time, so path and host say
nothing there.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volenv.base.errors import DamagedRecord
from volenv.store.paths import VolumePaths
from volenv.store.volio import atomic_write_json, has_type, read_record

ORIGIN_SCHEMA = 1


def host_id() -> str:
    """This machine's name as origins record it (`VOLENV_HOST_ID` overrides the host name)."""
    return os.environ.get("VOLENV_HOST_ID") or socket.gethostname() or "?"


@dataclass(frozen=True)
class Origin:
    id: str | None  # the manifest's `id`, when it declares one
    path: str  # the manifest's absolute path, symlinks resolved
    host: str | None  # None: the manifest lies on the volume's filesystem (every host sees it)

    def same_manifest(self, other: Origin) -> bool:
        if self.id is not None and other.id is not None:
            return self.id == other.id
        return self.path == other.path and self.host == other.host

    def where(self) -> str:
        return self.path if self.host is None else f"{self.path} on {self.host}"

    def describe(self) -> str:
        return f"id '{self.id}' ({self.where()})" if self.id is not None else self.where()

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": ORIGIN_SCHEMA,
            "id": self.id,
            "path": self.path,
            "host": self.host,
            "time": time.time(),
        }


def origin_of(manifest: Any, paths: VolumePaths) -> Origin:
    """Where this sync's manifest comes from (a parsed Manifest: its `id` and `path`)."""
    path = Path(os.path.realpath(manifest.path))
    return Origin(manifest.id, str(path), None if _on_volume(path, paths.root) else host_id())


def _on_volume(path: Path, root: Path) -> bool:
    """The manifest is on the root's filesystem (the root, or its nearest existing parent)."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return os.stat(path).st_dev == os.stat(probe).st_dev
    except OSError:
        return False


def origin_file(paths: VolumePaths, env: str) -> Path:
    return paths.env_dir(env) / "origin.json"


def read_origin(paths: VolumePaths, env: str) -> Origin | None:
    """The env's recorded origin; None for an env that has none (made before volenv recorded
    one, or not yet built). A damaged record is DamagedRecord (exit 4), never a guess."""
    path = origin_file(paths, env)
    if not paths.env_dir(env).is_dir():
        return None
    try:
        rec = read_record(path, "origin record", ORIGIN_SCHEMA, {"path": str})
    except FileNotFoundError:
        return None
    except DamagedRecord as exc:
        exc.hint = exc.hint or f"remove it (the next sync of this env's manifest records it again): rm {path}"
        raise
    ident, host = rec.get("id"), rec.get("host")
    if not (has_type(ident, (str, type(None))) and has_type(host, (str, type(None)))):
        raise DamagedRecord(
            f"origin record {path} is damaged: 'id' or 'host' is neither text nor null",
            hint=f"remove it (the next sync of this env's manifest records it again): rm {path}",
        )
    return Origin(ident, rec["path"], host)


def write_origin(paths: VolumePaths, env: str, origin: Origin) -> None:
    """Temp + fsync + rename, never through a link inside the root."""
    atomic_write_json(origin_file(paths, env), origin.to_json(), root=paths.root)
