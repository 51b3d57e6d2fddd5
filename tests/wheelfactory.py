"""Build tiny, valid wheels by hand so tests never need an index or a build backend."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def make_wheel(
    dest: Path,
    name: str,
    version: str = "1.0",
    *,
    files: Mapping[str, str | bytes] | None = None,
    requires: Iterable[str] = (),
    scripts: Mapping[str, str] | None = None,
) -> Path:
    """Write `name-version-py3-none-any.whl` into dest; files default to one module."""
    dest.mkdir(parents=True, exist_ok=True)
    norm = name.replace("-", "_").lower()
    if files is None:
        files = {f"{norm}/__init__.py": f"__version__ = {version!r}\nNAME = {name!r}\n"}
    dist_info = f"{norm}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    entries: dict[str, bytes] = {}
    for path, content in files.items():
        entries[path] = content.encode() if isinstance(content, str) else content
    entries[f"{dist_info}/METADATA"] = ("\n".join(meta) + "\n").encode()
    entries[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: volenv-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    if scripts:
        lines = ["[console_scripts]"] + [f"{k} = {v}" for k, v in scripts.items()]
        entries[f"{dist_info}/entry_points.txt"] = ("\n".join(lines) + "\n").encode()
    record_lines = [f"{p},{_record_hash(d)},{len(d)}" for p, d in entries.items()]
    record_lines.append(f"{dist_info}/RECORD,,")
    entries[f"{dist_info}/RECORD"] = ("\n".join(record_lines) + "\n").encode()
    wheel = dest / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, data in entries.items():
            zf.writestr(path, data)
    return wheel


def local_torch_wheels(version: str = "") -> Path | None:
    """The folder pip's configuration names as find-links when it holds a torch wheel (this
    machine's CPU torch; never a download), else None."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        if "find-links" in line:
            d = Path(line.split("=", 1)[1].strip().strip("'\""))
            if list(d.glob(f"torch-{version}*.whl")):
                return d
    return None
