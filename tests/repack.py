"""Turn installed distributions of the test interpreter back into wheels, so a snapshot can
install real libraries (huggingface_hub and its dependencies) with no index at all."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from importlib.metadata import Distribution, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(*names: str) -> list[Distribution]:
    seen: dict[str, Distribution] = {}
    todo = list(names)
    while todo:
        d = distribution(todo.pop())
        key = canonicalize_name(d.metadata["Name"])
        if key in seen:
            continue
        seen[key] = d
        for r in d.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def repack(dist: Distribution, dest: Path) -> Path:
    name = canonicalize_name(dist.metadata["Name"]).replace("-", "_")
    version = dist.version
    wheel_meta = dist.read_text("WHEEL") or ""
    tag = next(
        (ln.split(":", 1)[1].strip() for ln in wheel_meta.splitlines() if ln.startswith("Tag:")),
        "py3-none-any",
    )
    base = Path(str(dist.locate_file("")))
    entries: dict[str, bytes] = {}
    for f in dist.files or []:
        rel = str(f)
        if (
            rel.startswith("..")
            or "__pycache__" in rel
            or rel.endswith((".pyc", "/RECORD", "/INSTALLER", "/REQUESTED", "/direct_url.json"))
        ):
            continue
        path = base / rel
        if path.is_file():
            entries[rel] = path.read_bytes()
    dist_info = next(k.split("/")[0] for k in entries if k.split("/")[0].endswith(".dist-info"))
    lines = []
    for rel, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{rel},sha256={digest},{len(data)}")
    lines.append(f"{dist_info}/RECORD,,")
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel, data in entries.items():
            zf.writestr(rel, data)
        zf.writestr(f"{dist_info}/RECORD", "\n".join(lines) + "\n")
    return wheel


def repack_closure(dest: Path, *names: str) -> list[str]:
    """Wheels for names and their dependencies; returns pinned requirement strings."""
    pins = []
    for d in closure(*names):
        repack(d, dest)
        pins.append(f"{d.metadata['Name']}=={d.version}")
    return pins
