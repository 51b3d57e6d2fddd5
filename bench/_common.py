"""Shared bench helpers: generated wheel sets and the volenv/uv command lines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from wheelfactory import make_wheel


def volenv_cmd() -> list[str]:
    exe = shutil.which("volenv", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "volenv"]


def uv_bin() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def generate_wheels(
    dest: Path, count: int, modules: int, *, big_bytes: int = 0, prefix: str = "pkg"
) -> list[str]:
    """`count` wheels with `modules` small modules each and optionally one big data file."""
    names = []
    for i in range(count):
        name = f"{prefix}{i:03d}"
        files: dict[str, str | bytes] = {f"{name}/__init__.py": f"N = {i}\n"}
        for j in range(modules):
            files[f"{name}/m{j:04d}.py"] = f"# module {j} of {name}\nVALUE = {j}\n" + "x = 1\n" * (j % 40)
        if big_bytes:
            files[f"{name}/data.bin"] = os.urandom(big_bytes)
        make_wheel(dest, name, "1.0", files=files)
        names.append(f"{name}==1.0")
    return names


def timed(cmd: list[str], **kw: object) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - t0


def manifest(path: Path, name: str, reqs: list[str], wheels: Path | None) -> Path:
    """A manifest for `reqs` from a folder of wheels, or from the default index (None)."""
    import json

    index = f'[index]\nno-index = true\nfind-links = ["{wheels}"]\n' if wheels else ""
    path.write_text(f'name = "{name}"\npython = "3.11"\nrequirements = {json.dumps(reqs)}\n{index}')
    return path


def drop_caches() -> bool:
    """Drop the page cache (root only); False where not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False
