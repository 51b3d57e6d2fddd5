"""`volenv models fetch|list|verify`: the volume's model caches."""

from __future__ import annotations

from volenv.manifest.parse import load_manifest
from volenv.models.cache import ModelState, ModelVerifyReport, fetch_models, list_models, verify_models
from volenv.store.paths import VolumePaths
from volenv.store.pointers import open_volume


def fetch(paths: VolumePaths, manifest: str, lock_timeout: float) -> list[ModelState]:
    """Download and verify MANIFEST's models into the volume (once, under a lease)."""
    m = load_manifest(manifest)
    open_volume(paths, create=True)
    return fetch_models(paths, m, lock_timeout=lock_timeout)


def listing(paths: VolumePaths, manifest: str | None) -> list[ModelState]:
    """Models on the volume, or MANIFEST's models and whether they are present."""
    return list_models(paths, load_manifest(manifest) if manifest else None)


def verify(paths: VolumePaths, manifest: str | None, level: str) -> ModelVerifyReport:
    """Model files against their records (all, or MANIFEST's)."""
    return verify_models(paths, load_manifest(manifest) if manifest else None, level)
