"""`volenv init` on three small realistic projects, the way a new user meets volenv (issue 29,
item 1): a package project with extras (one naming the project itself), an application with a
uv.lock, and a package with a local path dependency that has extras of its own. Each manifest
`init` writes (from pyproject.toml, from uv.lock, and with --lock) syncs, every optional group
installs, and every dependency it wrote imports in the snapshot.

No internet: the projects' dependencies are tiny wheels in a local find-links folder (standing
in for PyPI), and the projects build with a PEP 517 backend kept in their own tree that writes
their dependencies and extras into the wheel's metadata, as hatchling or setuptools would.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import volenv
from volenv.build.uvtool import uv_bin
from wheelfactory import make_wheel

pytestmark = pytest.mark.slow

BACKEND = """
import base64, hashlib, os, tomllib, zipfile

def _project():
    with open("pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]

def _norm(name):
    return name.replace("-", "_").replace(".", "_").lower()

def _h(b):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()

def _metadata():
    p = _project()
    lines = ["Metadata-Version: 2.1", f"Name: {p['name']}", f"Version: {p['version']}"]
    lines += [f"Requires-Dist: {d}" for d in p.get("dependencies", [])]
    for extra, deps in (p.get("optional-dependencies") or {}).items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f"Requires-Dist: {d} ; extra == '{extra}'" for d in deps]
    return "\\n".join(lines) + "\\n"

def _di():
    p = _project()
    return f"{_norm(p['name'])}-{p['version']}.dist-info"

def get_requires_for_build_wheel(config_settings=None):
    return []

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    os.makedirs(os.path.join(metadata_directory, _di()), exist_ok=True)
    with open(os.path.join(metadata_directory, _di(), "METADATA"), "w") as fh:
        fh.write(_metadata())
    return _di()

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    p = _project()
    pkg = _norm(p["name"])
    entries = {}
    for d, _dirs, files in os.walk(pkg):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                with open(path, "rb") as fh:
                    entries[path.replace(os.sep, "/")] = fh.read()
    entries[f"{_di()}/METADATA"] = _metadata().encode()
    entries[f"{_di()}/WHEEL"] = b"Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    rec = [f"{k},{_h(v)},{len(v)}" for k, v in entries.items()] + [f"{_di()}/RECORD,,"]
    entries[f"{_di()}/RECORD"] = ("\\n".join(rec) + "\\n").encode()
    whl = f"{pkg}-{p['version']}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, whl), "w") as zf:
        for k, v in entries.items():
            zf.writestr(k, v)
    return whl
"""

BUILD_SYSTEM = '[build-system]\nrequires = []\nbuild-backend = "tinybackend"\nbackend-path = ["."]\n'

# distribution -> (import name, requirements): the stand-ins for PyPI
WHEELS: dict[str, tuple[str, list[str]]] = {
    "numpy": ("numpy", []),
    "pyyaml": ("yaml", []),
    "soundfile": ("soundfile", ["cffi>=1"]),
    "cffi": ("cffi", []),
    "librosa": ("librosa", ["numpy>=1", "soundfile>=0.12"]),
    "requests": ("requests", ["urllib3>=2", "idna>=3"]),
    "urllib3": ("urllib3", []),
    "idna": ("idna", []),
    "pydantic": ("pydantic", ["pydantic-core==2.27.0", "typing-extensions>=4", "annotated-types>=0.6"]),
    "pydantic-core": ("pydantic_core", []),
    "typing-extensions": ("typing_extensions", []),
    "annotated-types": ("annotated_types", []),
    "uvicorn": ("uvicorn", []),
    "pytest": ("pytest", []),
    "fastthing": ("fastthing", []),
}
VERSIONS = {"soundfile": "0.12.1", "pydantic": "2.10.0", "pydantic-core": "2.27.0", "pyyaml": "6.0.2"}
# the projects themselves
IMPORTS = {"tts-worker": "tts_worker", "asr-worker": "asr_worker", "asr-core": "asr_core"}


def _wheels(folder: Path) -> Path:
    for dist, (module, requires) in WHEELS.items():
        version = VERSIONS.get(dist, "9.0")
        files = {f"{module}/__init__.py": f"NAME = {dist!r}\n"}
        if module == "typing_extensions":
            files = {"typing_extensions.py": "X = 1\n"}  # a single-module wheel
        make_wheel(folder, dist, version, files=files, requires=requires)
    return folder


def _package(folder: Path, pyproject: str) -> Path:
    folder.mkdir(parents=True)
    name = tomllib.loads(pyproject)["project"]["name"]
    (folder / IMPORTS[name]).mkdir()
    (folder / IMPORTS[name] / "__init__.py").write_text("CODE = 1\n")
    (folder / "tinybackend.py").write_text(BACKEND)
    (folder / "pyproject.toml").write_text(pyproject)
    return folder


def _uv(*args: str | Path, cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run([uv_bin(), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _names(reqs: list[str]) -> set[str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return {str(canonicalize_name(Requirement(r).name)) for r in reqs}


def _wrote(manifest: Path) -> tuple[set[str], dict[str, set[str]]]:
    """The distributions the manifest names: its requirements (or its lockfile's packages) and
    each optional group's."""
    data = tomllib.loads(manifest.read_text())
    if "lockfile" in data:
        lock = tomllib.loads((manifest.parent / data["lockfile"]).read_text())
        base = {p["name"] for p in lock["packages"]}
    else:
        base = _names(data["requirements"])
    groups = {g: _names(t["requirements"]) for g, t in data.get("optional", {}).items()}
    return base, groups


def _sync_and_import_all(root: Path, manifest: Path, env: dict[str, str]) -> None:
    r = volenv("--root", root, "sync", manifest, env=env)
    assert r.returncode == 0, r.stderr
    assert "does not resolve" not in r.stderr and "failed" not in r.stderr, r.stderr
    base, groups = _wrote(manifest)
    wanted = sorted(base.union(*groups.values()))
    modules = [IMPORTS.get(d) or WHEELS[d][0] for d in wanted]
    assert modules, manifest.read_text()
    code = f"import {', '.join(modules)}"
    r = volenv("--root", root, "run", "--manifest", manifest, "--", "python", "-c", code, env=env)
    assert r.returncode == 0, (manifest.read_text(), r.stderr)
    data = tomllib.loads(manifest.read_text())
    r = volenv("--root", root, "show", data["name"], "--json", env=env)
    states = {g["name"]: g["state"] for g in json.loads(r.stdout)["groups"]}
    assert states == dict.fromkeys(groups, "installed"), states


def test_init_output_of_three_real_projects_syncs_and_imports_every_dependency(
    tmp_path: Path, root: Path
) -> None:
    wheels = _wheels(tmp_path / "wheels")
    env = {
        **os.environ,
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    index = ["--no-index", "--find-links", str(wheels)]

    # 1. a TTS worker packaged with a pyproject and extras, one extra naming the project itself
    tts = _package(
        tmp_path / "tts-worker",
        '[project]\nname = "tts-worker"\nversion = "0.3.0"\nrequires-python = ">=3.10"\n'
        'dependencies = ["numpy>=1.24", "pyyaml>=6"]\n\n'
        "[project.optional-dependencies]\n"
        'audio = ["soundfile>=0.12"]\n'
        'all = ["tts-worker[audio]", "librosa>=0.10"]\n\n' + BUILD_SYSTEM,
    )
    _uv("lock", *index, cwd=tts, env=env)
    for source, out, name in (
        ("pyproject.toml", "pp.toml", []),
        ("uv.lock", "lock.toml", ["--name", "tts-l"]),
    ):
        r = volenv("--root", root, "init", tts / source, "-o", tts / out, *name, *index, env=env)
        assert r.returncode == 0, r.stderr
        data = tomllib.loads((tts / out).read_text())
        assert data["name"] == (name[1] if name else "tts-worker")
        assert "tts-worker @ ./" in data["requirements"]
        assert data["optional"]["all"]["requirements"][0] == "tts-worker[audio] @ ./"
        _sync_and_import_all(root, tts / out, env)

    # 2. an application (no build system) with a uv.lock and a .python-version
    app = tmp_path / "api-app"
    app.mkdir()
    (app / ".python-version").write_text("3.11\n")
    (app / "pyproject.toml").write_text(
        '[project]\nname = "api-app"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["requests>=2.31", "pydantic>=2.5", "numpy>=1.26"]\n\n'
        "[project.optional-dependencies]\n"
        'serve = ["uvicorn>=0.30"]\n'
        'test = ["pytest>=8", "pyyaml>=6"]\n'
    )
    _uv("lock", *index, cwd=app, env=env)
    r = volenv("--root", root, "init", app / "uv.lock", *index, env=env)
    assert r.returncode == 0, r.stderr
    data = tomllib.loads((app / "volenv.toml").read_text())
    assert data["name"] == "api-app" and data["python"] == "3.11"
    assert "pydantic-core==2.27.0" in data["requirements"]
    _sync_and_import_all(root, app / "volenv.toml", env)

    # 3. a package with a local path dependency that has extras of its own, locked (--lock)
    _package(
        tmp_path / "libs/asr-core",
        '[project]\nname = "asr-core"\nversion = "1.2.0"\ndependencies = ["numpy>=1"]\n\n'
        '[project.optional-dependencies]\nfast = ["fastthing>=1"]\n\n' + BUILD_SYSTEM,
    )
    asr = _package(
        tmp_path / "asr-worker",
        '[project]\nname = "asr-worker"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["asr-core", "requests>=2"]\n\n'
        "[project.optional-dependencies]\n"
        'serve = ["asr-core[fast]", "uvicorn>=0.30"]\n\n'
        + BUILD_SYSTEM
        + '\n[tool.uv.sources]\nasr-core = { path = "../libs/asr-core" }\n',
    )
    _uv("lock", *index, cwd=asr, env=env)
    r = volenv("--root", root, "init", asr / "pyproject.toml", *index, env=env)
    assert r.returncode == 0, r.stderr
    data = tomllib.loads((asr / "volenv.toml").read_text())
    assert data["optional"]["serve"]["requirements"][0] == "asr-core[fast] @ ../libs/asr-core"
    _sync_and_import_all(root, asr / "volenv.toml", env)
    r = volenv(
        "--root",
        root,
        "init",
        asr / "uv.lock",
        "--lock",
        "-o",
        asr / "locked.toml",
        "--name",
        "asr-l",
        *index,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    _sync_and_import_all(root, asr / "locked.toml", env)


DOCKERFILE = """\
# syntax=docker/dockerfile:1
FROM runpod/pytorch:2.1.0-py3.10-cuda11.8.0-devel-ubuntu22.04
WORKDIR /
COPY builder/requirements.txt /requirements.txt
RUN python3.10 -m pip install --upgrade pip && \\
    python3.10 -m pip install -r /requirements.txt --no-cache-dir && \\
    pip install torch==2.1.0 --index-url https://download.pytorch.org/whl/cu118
RUN pip install git+https://github.com/m-bain/whisperx.git runpod==1.7.0
COPY src /src
CMD ["python", "-u", "/src/handler.py"]
"""


def _worker_repo(tmp_path: Path) -> Path:
    """A RunPod worker repository as they come: requirements under builder/, the Python named by
    .python-version and the Dockerfile, a git requirement that cannot be fetched here."""
    repo = tmp_path / "whisper-worker"
    (repo / ".git").mkdir(parents=True)
    (repo / "builder").mkdir()
    (repo / ".python-version").write_text("3.10\n")
    (repo / "Dockerfile").write_text(DOCKERFILE)
    (repo / "builder/requirements.txt").write_text(
        "# the worker's packages\n"
        "beta==1.0\n"
        "gamma==1.0  # pinned\n"
        "scikit-thing\n"
        "git+https://127.0.0.1:9/m-bain/whisperx.git#egg=whisperx\n"
    )
    return repo


def test_init_on_a_worker_repository_guesses_from_its_root(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    """Issue 29, item 11: `init builder/requirements.txt` names the env after the repository and
    takes the Python its .python-version and Dockerfile name; the Dockerfile's pip installs
    that the manifest does not carry are listed as notes (a second index, a git package, other
    packages), never the requirements file it does carry."""
    import shutil

    wheels = tmp_path / "wheels"
    shutil.copytree(wheelhouse, wheels)
    make_wheel(wheels, "scikit-thing", "1.0", files={"skthing/__init__.py": "X = 1\n"})
    repo = _worker_repo(tmp_path)
    index = ["--no-index", "--find-links", str(wheels)]

    r = volenv("--root", root, "init", repo / "builder/requirements.txt", "-o", repo / "a.toml", *index)
    assert r.returncode == 0, r.stderr
    data = tomllib.loads((repo / "a.toml").read_text())
    assert data["name"] == "whisper-worker" and data["python"] == "3.10", data
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("note: ")]
    text = "\n".join(notes)
    assert "index https://download.pytorch.org/whl/cu118" in text and "torch==2.1.0" in text, r.stderr
    assert "URL package git+https://github.com/m-bain/whisperx.git" in text and "runpod==1.7.0" in text
    assert "requirements file" not in text and "upgrade" not in text and len(notes) == 2, notes
    # the Dockerfile's base alone decides when there is no .python-version
    (repo / ".python-version").unlink()
    r = volenv("--root", root, "init", repo / "builder/requirements.txt", "-o", repo / "b.toml", *index)
    assert r.returncode == 0 and tomllib.loads((repo / "b.toml").read_text())["python"] == "3.10"

    # an interpreter's path, as uv takes one; one unfetchable line costs only itself
    python = os.path.realpath(shutil.which("python3.11") or "/usr/bin/python3.11")
    r = volenv(
        "--root",
        root,
        "init",
        repo / "builder/requirements.txt",
        "-o",
        repo / "c.toml",
        "--python",
        python,
        *index,
    )
    assert r.returncode == 0, r.stderr
    data = tomllib.loads((repo / "c.toml").read_text())
    assert data["python"] == python
    assert data["activate"]["smoke-imports"] == ["beta", "gamma", "skthing", "whisperx"], r.stderr
    assert "could not fetch 1 of 4 requirements" in r.stderr and "whisperx" in r.stderr, r.stderr

    # no interpreter for the Python asked: that is the reason given, and the names are guessed
    r = volenv(
        "--root",
        root,
        "init",
        repo / "builder/requirements.txt",
        "-o",
        repo / "d.toml",
        "--python",
        "3.99",
        *index,
    )
    assert r.returncode == 0, r.stderr
    assert "no Python matching '3.99'" in r.stderr and "could not fetch" not in r.stderr, r.stderr
    assert tomllib.loads((repo / "d.toml").read_text())["activate"]["smoke-imports"] == [
        "beta",
        "gamma",
        "scikit_thing",
        "whisperx",
    ]


def test_a_manifest_may_name_an_interpreter_path(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    """`python = "/usr/bin/python3.11"`: uv takes an interpreter's path, and so does a manifest."""
    import shutil

    python = os.path.realpath(shutil.which("python3.11") or "/usr/bin/python3.11")
    m = tmp_path / "m.toml"
    m.write_text(
        f'name = "bypath"\npython = "{python}"\nrequirements = ["beta==1.0"]\n'
        f'[index]\nno-index = true\nfind-links = ["{wheelhouse}"]\n'
    )
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    r = volenv(
        "--root",
        root,
        "run",
        "--manifest",
        m,
        "--",
        "python",
        "-c",
        "import beta, sys; print(sys.version_info[:2])",
    )
    assert r.returncode == 0 and r.stdout.strip() == "(3, 11)", r.stderr
