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
    """A manifest for `reqs` from a folder of wheels, or from the default index (None). Its
    `id` makes the bench's versions of one env (m1.toml, m2.toml) one project, as sync asks."""
    import json

    index = f'[index]\nno-index = true\nfind-links = ["{wheels}"]\n' if wheels else ""
    head = f'id = "bench/{name}"\nname = "{name}"\npython = "3.11"\n'
    path.write_text(f"{head}requirements = {json.dumps(reqs)}\n{index}")
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


def signing_env(tmp: Path) -> dict[str, str]:
    """A fresh key pair in tmp: push signs with it and pull trusts it, as in production."""
    key = tmp / "bench.key"
    pub = subprocess.run(
        [*volenv_cmd(), "key", "generate", "--name", "bench", "--out", str(key)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {"VOLENV_SIGNING_KEY": str(key), "VOLENV_TRUSTED_KEYS": pub}


def transfer_volume(
    tmp: Path, mib: int, files: int, small: int, *, pack: bool
) -> tuple[dict[str, str], Path]:
    """The bucket benches' source volume (bench/pull.py, bench/push.py): `files` packages of
    random bytes (`mib` MiB in all) and `small` small ones, synced (`pack`: and packed) with a
    signing key. Returns the environment to run volenv with (dummy AWS credentials, the key,
    no progress, no pinned stream count) and the volume root."""
    import os

    v = volenv_cmd()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_REGION": "us-east-1"}
    env["VOLENV_NO_PROGRESS"] = "1"
    env.pop("VOLENV_STREAMS", None)
    wheels = tmp / "wheels"
    reqs = []
    each = mib * 1024 * 1024 // max(files, 1)
    for i in range(files):
        make_wheel(
            wheels, f"big{i}", "1.0", files={f"big{i}/__init__.py": "", f"big{i}/w.bin": os.urandom(each)}
        )
        reqs.append(f"big{i}==1.0")
    for i in range(small):
        mods = {f"small{i}/m{j}.py": f"V = {j}\n" * 40 for j in range(30)}
        make_wheel(wheels, f"small{i}", "1.0", files={f"small{i}/__init__.py": "", **mods})
        reqs.append(f"small{i}==1.0")
    m = manifest(tmp / "m.toml", "bench", reqs, wheels)
    env.update(signing_env(tmp))
    root = tmp / "a" / "volenv"
    sync = [*v, "--root", str(root), "-q", "sync", *(["--pack"] if pack else []), str(m)]
    subprocess.run(sync, check=True, env=env)
    return env, root


def uv_pip_install(venv: Path, cache: Path, args: list[str]) -> float:
    """`uv pip install --compile-bytecode ARGS` into `venv` with `cache`: seconds."""
    env = dict(os.environ, UV_CACHE_DIR=str(cache), UV_NO_PROGRESS="1")
    t0 = time.perf_counter()
    python = str(venv / "bin" / "python")
    subprocess.run(
        [uv_bin(), "pip", "install", "-q", "--python", python, "--compile-bytecode", *args],
        check=True,
        env=env,
    )
    return time.perf_counter() - t0


def plain_uv(
    workdir: Path, cache: Path, reqs: list[str], wheels: Path | None, tag: str
) -> tuple[float, Path]:
    """The baseline volenv's builds are measured against: `uv venv && uv pip install
    --compile-bytecode -r reqs` into a new venv: (seconds, the venv)."""
    venv = workdir / f"plain-{tag}"
    req = workdir / f"req-{tag}.txt"
    req.write_text("\n".join(reqs) + "\n")
    env = dict(os.environ, UV_CACHE_DIR=str(cache), UV_NO_PROGRESS="1")
    t0 = time.perf_counter()
    subprocess.run([uv_bin(), "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env)
    index = ["--no-index", "--find-links", str(wheels)] if wheels else []
    uv_pip_install(venv, cache, [*index, "-r", str(req)])
    return time.perf_counter() - t0, venv
