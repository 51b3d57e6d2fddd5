"""Every location on the volume, from one object (DESIGN.md's layout), and root discovery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from volenv.store.rootfind import discover_root

FORMAT_VERSION = 1


@dataclass(frozen=True)
class RootChoice:
    """Where the root is and why (doctor and errors say which rule picked it)."""

    path: Path
    source: str  # "--root", "VOLENV_ROOT", "/runpod-volume", "/workspace", "xdg"


def choose_root(explicit: str | None) -> RootChoice:
    path, source = discover_root(explicit)
    return RootChoice(Path(path), source)


@dataclass(frozen=True)
class VolumePaths:
    root: Path

    @property
    def meta(self) -> Path:
        return self.root / "volenv.json"

    @property
    def envs(self) -> Path:
        return self.root / "envs"

    @property
    def uv_cache(self) -> Path:
        return self.root / "cache" / "uv"

    @property
    def python(self) -> Path:
        return self.root / "python"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def trash(self) -> Path:
        return self.root / "trash"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def env_dir(self, env: str) -> Path:
        return self.envs / env

    def snapshots(self, env: str) -> Path:
        return self.envs / env / "snapshots"

    def snapshot(self, env: str, snapshot_id: str) -> Path:
        return self.envs / env / "snapshots" / snapshot_id

    def index_entry(self, env: str, manifest_digest: str) -> Path:
        return self.envs / env / "index" / manifest_digest

    def current(self, env: str) -> Path:
        return self.envs / env / "current"

    def history(self, env: str) -> Path:
        return self.envs / env / "history.jsonl"

    def used_marker(self, env: str, snapshot_id: str) -> Path:
        return self.envs / env / "used" / snapshot_id

    def pin(self, env: str, snapshot_id: str) -> Path:
        return self.envs / env / "pins" / snapshot_id

    def build_lease(self, env: str) -> Path:
        return self.locks / f"build-{env}.lease"

    def env_logs(self, env: str) -> Path:
        return self.logs / env

    def events(self, env: str) -> Path:
        return self.logs / env / "events.jsonl"

    def top_dirs(self) -> list[Path]:
        return [
            self.envs,
            self.uv_cache,
            self.python,
            self.models,
            self.staging,
            self.trash,
            self.quarantine,
            self.locks,
            self.logs,
        ]


def env_from_snapshot_id(snapshot_id: str) -> str:
    """`<env>-<12 hex>` -> env; the hex part never contains '-'."""
    env, sep, digest = snapshot_id.rpartition("-")
    if not sep or len(digest) != 12 or not all(c in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a snapshot id: {snapshot_id!r} (expected <env>-<12 hex>)")
    return env
