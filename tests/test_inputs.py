"""Build inputs as users write them (issue 13, items 2, 3, 5-8): local path dependencies whose
edits make new snapshots, `--reinstall`, requirements beside a lockfile, resolve failures that
say why (log + doctor), extras kept in output, `${NAME}` in activation env, NUL rejected."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from conftest import snapshot_of, volenv, write_manifest
from volenv.manifest.sources import source_digest
from wheelfactory import make_wheel

# A PEP 517 backend kept inside the source tree (`backend-path`), so a local package builds with
# no index and no setuptools: name and version come from pyproject's [project] table.
BACKEND = """
import base64, hashlib, os, tomllib, zipfile

def _meta():
    with open("pyproject.toml", "rb") as fh:
        p = tomllib.load(fh)["project"]
    return p["name"], p["version"]

def _h(b):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()

def _metadata():
    name, version = _meta()
    return f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n"

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    name, version = _meta()
    di = f"{name}-{version}.dist-info"
    os.makedirs(os.path.join(metadata_directory, di), exist_ok=True)
    with open(os.path.join(metadata_directory, di, "METADATA"), "w") as fh:
        fh.write(_metadata())
    return di

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name, version = _meta()
    di = f"{name}-{version}.dist-info"
    entries = {}
    for d, _dirs, files in os.walk(name):
        for f in files:
            if f.endswith(".py"):
                p = os.path.join(d, f)
                with open(p, "rb") as fh:
                    entries[p.replace(os.sep, "/")] = fh.read()
    entries[f"{di}/METADATA"] = _metadata().encode()
    entries[f"{di}/WHEEL"] = b"Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    rec = [f"{p},{_h(b)},{len(b)}" for p, b in entries.items()] + [f"{di}/RECORD,,"]
    entries[f"{di}/RECORD"] = ("\\n".join(rec) + "\\n").encode()
    whl = f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, whl), "w") as zf:
        for p, b in entries.items():
            zf.writestr(p, b)
    return whl
"""


def source_tree(folder: Path, name: str = "mypkg", version: str = "1.0", code: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\nversion = "{version}"\n\n'
        '[build-system]\nrequires = []\nbuild-backend = "tinybackend"\nbackend-path = ["."]\n'
    )
    (folder / "tinybackend.py").write_text(BACKEND)
    (folder / name).mkdir(exist_ok=True)
    (folder / name / "__init__.py").write_text(f"CODE = {code}\n")
    return folder


def run_py(root: Path, manifest: Path, code: str, cwd: Path | None = None) -> str:
    r = volenv("--root", root, "run", "--manifest", manifest, "--", "python", "-c", code, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path]:
    """A manifest next to a local package `mypkg @ ./mypkg`, and a cwd somewhere else."""
    proj = tmp_path / "proj"
    source_tree(proj / "mypkg")
    manifest = write_manifest(proj, "loc", ["mypkg @ ./mypkg"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return manifest, elsewhere


# ---------------------------------------------------------------- item 2: local path dependencies


def test_relative_path_resolves_against_the_manifest_folder(root: Path, project: tuple[Path, Path]) -> None:
    manifest, elsewhere = project
    r = volenv("--root", root, "sync", manifest, cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert run_py(root, manifest, "import mypkg; print(mypkg.CODE)", cwd=elsewhere) == "1"
    # the id does not depend on where the folder lives: uv keeps `./mypkg` relative
    seal = json.loads(
        (root / "envs/loc/snapshots" / snapshot_of(root, "loc") / ".volenv/seal.json").read_text()
    )
    assert seal["resolved"]["base"] == ["./mypkg"]


def test_editing_a_local_source_builds_a_new_snapshot(root: Path, project: tuple[Path, Path]) -> None:
    manifest, elsewhere = project
    assert volenv("--root", root, "sync", manifest, cwd=elsewhere).returncode == 0
    first = snapshot_of(root, "loc")
    (manifest.parent / "mypkg/mypkg/__init__.py").write_text("CODE = 2\n")
    r = volenv("--root", root, "--json", "sync", manifest, cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert r.json()["action"] == "built"
    assert snapshot_of(root, "loc") != first
    assert run_py(root, manifest, "import mypkg; print(mypkg.CODE)") == "2"
    # caches and build outputs are not inputs; an unchanged tree is a no-op
    (manifest.parent / "mypkg/build").mkdir()
    (manifest.parent / "mypkg/build/junk.py").write_text("x = 1\n")
    assert volenv("--root", root, "--json", "sync", manifest).json()["action"] == "reused"


def test_bumping_a_local_version_builds_a_new_snapshot(root: Path, project: tuple[Path, Path]) -> None:
    manifest, _ = project
    assert volenv("--root", root, "sync", manifest).returncode == 0
    first = snapshot_of(root, "loc")
    pyproject = manifest.parent / "mypkg/pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "1.0"', 'version = "1.1"'))
    r = volenv("--root", root, "--json", "sync", manifest)
    assert r.returncode == 0, r.stderr
    assert r.json()["action"] == "built" and snapshot_of(root, "loc") != first
    assert run_py(root, manifest, "import importlib.metadata as m; print(m.version('mypkg'))") == "1.1"


def test_file_url_and_wheel_path_are_local_sources(tmp_path: Path, root: Path) -> None:
    proj = tmp_path / "proj"
    tree = source_tree(tmp_path / "abs" / "other", "other")
    wheel = make_wheel(proj / "dist", "wpkg", "1.0", files={"wpkg/__init__.py": "W = 1\n"})
    manifest = write_manifest(proj, "urls", [f"other @ {tree.as_uri()}", f"wpkg @ ./dist/{wheel.name}"])
    assert volenv("--root", root, "sync", manifest).returncode == 0
    first = snapshot_of(root, "urls")
    make_wheel(proj / "dist", "wpkg", "1.0", files={"wpkg/__init__.py": "W = 2\n"})  # same name, new bytes
    r = volenv("--root", root, "--json", "sync", manifest)
    assert r.returncode == 0, r.stderr
    assert r.json()["action"] == "built" and snapshot_of(root, "urls") != first
    assert run_py(root, manifest, "import wpkg; print(wpkg.W)") == "2"


def test_source_digest_skips_outputs_but_not_a_subpackage_named_build(tmp_path: Path) -> None:
    tree = source_tree(tmp_path / "t")
    before = source_digest(tree)
    for junk in ("build/lib/x.py", "dist/x.whl", ".git/HEAD", "mypkg/__pycache__/a.pyc", "x.egg-info/PKG"):
        (tree / junk).parent.mkdir(parents=True, exist_ok=True)
        (tree / junk).write_text("junk")
    assert source_digest(tree) == before
    (tree / "mypkg/build").mkdir()
    (tree / "mypkg/build/__init__.py").write_text("X = 1\n")
    assert source_digest(tree) != before


def test_editable_and_missing_paths_are_refused(tmp_path: Path, root: Path) -> None:
    m = write_manifest(tmp_path, "ed", ["-e ./mypkg"])
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 2 and "editable" in r.stderr and "@ ./path" in r.stderr
    m = write_manifest(tmp_path, "gone", ["mypkg @ ./not-there"])
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 2 and "not-there" in r.stderr
    assert not root.exists()


def test_reinstall_builds_a_fresh_snapshot_with_what_changed_unseen(tmp_path: Path, root: Path) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "alpha", "1.0", files={"alpha/__init__.py": "V = 'old'\n"})
    m = write_manifest(tmp_path / "m", "re", ["alpha==1.0"], find_links=wheels)
    assert volenv("--root", root, "sync", m).returncode == 0
    first = snapshot_of(root, "re")
    # the same file name with other bytes: nothing volenv hashes has changed
    make_wheel(wheels, "alpha", "1.0", files={"alpha/__init__.py": "V = 'new'\n"})
    assert volenv("--root", root, "--json", "sync", m).json()["action"] == "reused"
    r = volenv("--root", root, "--json", "sync", m, "--reinstall", "alpha")
    assert r.returncode == 0, r.stderr
    second = r.json()["snapshot"]
    assert r.json()["action"] == "built" and second != first
    assert run_py(root, m, "import alpha; print(alpha.V)") == "new"
    seal = json.loads((root / "envs/re/snapshots" / second / ".volenv/seal.json").read_text())
    assert seal["reinstall"] == ["alpha"]
    # --reinstall-all: again a new id; the previous snapshots keep theirs and still verify
    r = volenv("--root", root, "--json", "sync", m, "--reinstall-all")
    assert r.returncode == 0, r.stderr
    third = r.json()["snapshot"]
    assert len({first, second, third}) == 3
    for sid in (first, second, third):
        assert volenv("--root", root, "verify", sid, "--level", "full").returncode == 0
    r = volenv("--root", root, "--json", "sync", m)
    assert r.json()["action"] == "reused" and r.json()["snapshot"] == third
    r = volenv("--root", root, "sync", m, "--reinstall", "not a name!")
    assert r.returncode == 2 and "--reinstall" in r.stderr


# ---------------------------------------------------------------- item 3: requirements + lockfile


def test_requirements_beside_a_lockfile_is_refused(tmp_path: Path, root: Path) -> None:
    (tmp_path / "pylock.toml").write_text(
        'lock-version = "1.0"\ncreated-by = "t"\n[[packages]]\nname = "a"\n'
    )
    m = tmp_path / "both.toml"
    m.write_text('name = "both"\nrequirements = ["alpha==1.0"]\nlockfile = "pylock.toml"\n')
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 2
    assert "requirements" in r.stderr and "lockfile" in r.stderr
    assert not root.exists()


# ---------------------------------------------------------------- item 5: resolve failures say why


@pytest.mark.skipif(shutil.which("git") is None, reason="uv needs git for a git dependency")
def test_offline_git_dependency_says_why_logs_and_doctor_shows_it(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    ok = write_manifest(tmp_path, "fine", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", ok).returncode == 0  # an older success
    m = write_manifest(tmp_path, "gitdep", [f"foo @ git+https://git.invalid/x/foo.git@{'f' * 40}"])
    r = volenv("--root", root, "sync", m, timeout=120)
    assert r.returncode == 7, r.stderr
    assert "Could not resolve host" in r.stderr
    logs = sorted((root / "logs/gitdep").glob("build-*.log"))
    assert len(logs) == 1 and str(logs[0]) in r.stderr.replace("\n", "")
    assert "Could not resolve host" in logs[0].read_text()
    r = volenv("--root", root, "--json", "doctor")
    failure = r.json()["report"]["last_failure"]
    assert failure["env"] == "gitdep" and "Could not resolve host" in failure["error"]
    assert failure["log"] == str(logs[0])
    r = volenv("--root", root, "doctor")
    assert "last failure" in r.stdout and "gitdep" in r.stdout, r.stdout


# ---------------------------------------------------------------- item 6: output keeps extras


def test_requirement_extras_are_printed(tmp_path: Path, root: Path) -> None:
    m = write_manifest(tmp_path, "web", ["uvicorn[standard]==0.32.1"])
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 7
    assert "uvicorn[standard]==0.32.1" in r.stderr.replace("\n", "")
    bad = write_manifest(tmp_path, "bad", ["uvicorn[standard]==0.32.1 ; nonsense"])
    r = volenv("--root", root, "sync", bad)
    assert r.returncode == 2 and "uvicorn[standard]==0.32.1 ; nonsense" in r.stderr


# ---------------------------------------------------------------- items 7, 8: activation env


def test_env_values_expand_names_of_the_activation_environment(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    extra = """
    [activate]
    env = { PATH = "/opt/x/bin:${PATH}", GREETING = "$$HOME is ${HOME} $5", NOPE = "[${VOLENV_TEST_UNSET}]" }
    """
    m = write_manifest(tmp_path, "exp", ["alpha==1.0"], find_links=wheelhouse, extra=textwrap.dedent(extra))
    assert volenv("--root", root, "sync", m).returncode == 0
    out = run_py(
        root,
        m,
        "import os; print(os.environ['PATH']); print(os.environ['GREETING']); print(os.environ['NOPE'])",
    )
    path, greeting, nope = out.splitlines()
    snap_bin = str(root / "envs/exp/snapshots" / snapshot_of(root, "exp") / "bin")
    assert path.startswith(f"/opt/x/bin:{snap_bin}:")
    assert greeting == f"$HOME is {Path.home()} $5"
    assert nope == "[]"
    r = volenv("--root", root, "env", "--manifest", m)
    assert r.returncode == 0, r.stderr
    assert f"export PATH=/opt/x/bin:{snap_bin}:" in r.stdout
    assert "${" not in r.stdout


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ('"${PATH"', "not closed"),
        ('"${1X}"', "does not name"),
        ('"a\\u0000b"', "NUL"),
        ('"x", "A=B" = "y"', "A=B"),
    ],
)
def test_bad_env_values_exit_2_at_validation(tmp_path: Path, root: Path, value: str, needle: str) -> None:
    m = write_manifest(tmp_path, "badenv", ["alpha==1.0"], extra=f"[activate]\nenv = {{ X = {value} }}\n")
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 2, r.stderr
    assert "activate.env." in r.stderr and needle in r.stderr
    assert "Traceback" not in r.stderr
    assert not root.exists()
    r = volenv("--root", root, "run", "--manifest", m, "--", "true")
    assert r.returncode == 2 and "Traceback" not in r.stderr


@pytest.mark.parametrize("line", ["mypkg @ ./mypkg", "./mypkg", "mypkg @ file:{abs}"])
def test_local_package_in_a_requirements_file_is_a_build_input(tmp_path: Path, root: Path, line: str) -> None:
    """A local tree named in a requirements file is a build input too (it was 'reused' with the
    old code): every spelling pip accepts, named or bare (a bare path takes its project name)."""
    proj = tmp_path / "proj"
    source_tree(proj / "mypkg")
    (proj / "requirements.txt").write_text(f"# the app\n{line.format(abs=proj / 'mypkg')}\n")
    m = proj / "app.toml"
    m.write_text(
        'name = "rf"\npython = "3.11"\nrequirements-file = "requirements.txt"\n[index]\nno-index = true\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert volenv("--root", root, "sync", m, cwd=elsewhere).returncode == 0
    first = snapshot_of(root, "rf")
    assert run_py(root, m, "import mypkg; print(mypkg.CODE)") == "1"
    (proj / "mypkg/mypkg/__init__.py").write_text("CODE = 2\n")
    r = volenv("--root", root, "--json", "sync", m, cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert r.json()["action"] == "built" and snapshot_of(root, "rf") != first
    assert run_py(root, m, "import mypkg; print(mypkg.CODE)") == "2"


@pytest.mark.parametrize("line", ["-e ./mypkg", "--editable=./mypkg", "-e."])
def test_editable_line_in_a_requirements_file_is_refused(tmp_path: Path, root: Path, line: str) -> None:
    proj = tmp_path / "proj"
    source_tree(proj / "mypkg")
    (proj / "requirements.txt").write_text(f"six==1.0\n{line}\n")
    m = proj / "app.toml"
    m.write_text('name = "rf"\npython = "3.11"\nrequirements-file = "requirements.txt"\n')
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 2, r.stderr
    assert "editable" in r.stderr and "requirements-file" in r.stderr and "Traceback" not in r.stderr
    assert not root.exists()


def test_secret_looking_activation_env_is_warned_about(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    """[activate] env values are stored in the seal and pushed: a literal token or a credentialed
    URL there gets a warning naming the variable; a reference to the environment does not."""
    extra = (
        "[activate]\nenv = { HF_TOKEN = 'hf_literal_value_1234', "
        "API_URL = 'https://a:pw@x.example/v?X-Amz-Signature=abc', "
        "OTHER_TOKEN = '${OTHER_TOKEN}', PLAIN = 'x' }\n"
    )
    m = write_manifest(tmp_path, "sec", ["alpha==1.0"], find_links=wheelhouse, extra=extra)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    warned = [ln for ln in r.stderr.splitlines() if "looks like a secret" in ln]
    assert len(warned) == 2, r.stderr
    assert any("HF_TOKEN" in ln for ln in warned) and any("API_URL" in ln for ln in warned)
