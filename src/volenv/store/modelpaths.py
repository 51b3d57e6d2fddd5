"""Where manifest models live on the volume: one place for activate (env vars), models
(fetch), replicate and gc. Lean: os and the seal helpers only (the `run` fast path uses it)."""

from __future__ import annotations

import os

from volenv.base.leanjson import dumps_canonical
from volenv.manifest.hubnames import DEFAULT_REF
from volenv.store.sealcheck import sha256_hex

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def hf_repo_folder(repo: str) -> str:
    """A Hub repository's folder name in the hub cache layout: models--ORG--NAME."""
    return "models--" + repo.replace("/", "--")


def hf_ref(model: dict[str, Any]) -> str:
    """The ref an hf model stands for (`hf.ref`; absent means main): volenv writes it to the
    pinned commit so that code asking for the repository by name finds the pinned snapshot."""
    ref = model["hf"].get("ref")
    return ref if isinstance(ref, str) and ref else DEFAULT_REF


def model_ref_path(root: str, model: dict[str, Any]) -> str:
    """`models--ORG--NAME/refs/<ref>` of an hf model in the volume's hub cache."""
    hf = model["hf"]
    return os.path.join(
        root, "models", "hf", "hub", hf_repo_folder(hf["repo"]), "refs", *hf_ref(model).split("/")
    )


def model_location(root: str, model: dict[str, Any]) -> str:
    """Where a manifest model lives on the volume (the models module writes exactly here)."""
    if model.get("hf"):
        hf = model["hf"]
        repo_dir = hf_repo_folder(hf["repo"])
        return os.path.join(root, "models", "hf", "hub", repo_dir, "snapshots", hf["revision"])
    url = model["url"]
    filename = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "model.bin"
    return os.path.join(root, "models", "files", model["name"], model["sha256"][:16], filename)


def model_files_dir(root: str, model: dict[str, Any]) -> str:
    """The directory a model record's file paths are relative to."""
    loc = model_location(root, model)
    return loc if model.get("hf") else os.path.dirname(loc)


def model_key(model: dict[str, Any]) -> str:
    """Digest of a model's source spec: a changed spec is a different model record."""
    spec = {k: v for k, v in model.items() if k not in ("name", "optional", "local")}
    if isinstance(spec.get("hf"), dict) and "ref" in spec["hf"]:  # the ref names, it holds no file
        spec["hf"] = {k: v for k, v in spec["hf"].items() if k != "ref"}
    return sha256_hex(dumps_canonical(spec).encode())[:16]


def model_record_path(root: str, model: dict[str, Any]) -> str:
    """Written last by a fetch, after every file verified: its presence means 'model present'."""
    return os.path.join(root, "models", "records", f"{model['name']}.{model_key(model)}.json")


def model_env_name(name: str) -> str:
    return "VOLENV_MODEL_" + "".join(c.upper() if c.isalnum() else "_" for c in name)
