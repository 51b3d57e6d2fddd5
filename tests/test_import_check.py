"""Issue 28: the import check. With `[check] imports = true` a build imports every top-level
module of every installed distribution in the staged snapshot: a distribution whose extension
cannot load (its shared library is missing, as torchcodec 0.17's libnvrtc.so.13 beside torch's
CUDA 12.8) fails the build when required, warns when only an optional group brought it, and is
in the build log and `show`; `verify --imports` runs the same check on an existing snapshot."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import snapshot_of, volenv, write_manifest
from volenv.build.importcheck import _modules_of
from wheelfactory import make_wheel

CHECK = "\n[check]\nimports = true\n"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`cudaish`: an extension linked against libvanish.so, which the wheel does not ship (the
    loader fails before any Python symbol is looked up: no Python headers needed); `fine`."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (.ci/run installs gcc)")
    work = tmp_path_factory.mktemp("cext")
    (work / "vanish.c").write_text("int vanish(void) { return 1; }\n")
    (work / "loader.c").write_text("int vanish(void);\nint PyInit_loader(void) { return vanish(); }\n")
    subprocess.run([cc, "-shared", "-fPIC", "-o", work / "libvanish.so", work / "vanish.c"], check=True)
    subprocess.run(
        [cc, "-shared", "-fPIC", "-o", work / "loader.so", work / "loader.c", f"-L{work}", "-lvanish"],
        check=True,
    )
    out = tmp_path_factory.mktemp("wheels")
    make_wheel(
        out,
        "cudaish",
        files={
            "cudaish/__init__.py": "from . import loader\n",
            "cudaish/loader.abi3.so": (work / "loader.so").read_bytes(),
        },
    )
    make_wheel(out, "fine", files={"fine/__init__.py": "X = 1\n", "fine_extra.py": "Y = 2\n"})
    return out


def test_a_required_distribution_that_cannot_load_fails_the_build(
    tmp_path: Path, root: Path, wheels: Path
) -> None:
    m = write_manifest(tmp_path / "m", "app", ["cudaish==1.0", "fine==1.0"], find_links=wheels, extra=CHECK)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 7, r.stderr
    assert "import check" in r.stderr and "cudaish" in r.stderr and "libvanish.so" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (root / "envs" / "app" / "snapshots").exists() or not list(
        (root / "envs" / "app" / "snapshots").iterdir()
    )


def test_an_optional_groups_failure_warns_and_show_lists_it(tmp_path: Path, root: Path, wheels: Path) -> None:
    extra = CHECK + '\n[optional.gpu]\nrequirements = ["cudaish==1.0"]\n'
    m = write_manifest(tmp_path / "m", "app", ["fine==1.0"], find_links=wheels, extra=extra)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    assert "optional: import cudaish (cudaish) fails" in r.stderr, r.stderr
    show = volenv("--root", root, "show", "app")
    assert "import check: 3 modules" in show.stdout and "1 failed" in show.stdout, show.stdout
    assert "cudaish (cudaish) (optional)" in show.stdout and "libvanish.so" in show.stdout, show.stdout
    seal = json.loads(
        (root / "envs" / "app" / "snapshots" / snapshot_of(root, "app") / ".volenv" / "seal.json").read_text()
    )
    assert seal["imports"]["checked"] == 3 and seal["imports"]["failures"][0]["required"] is False


def test_verify_imports_checks_an_existing_snapshot(tmp_path: Path, root: Path, wheels: Path) -> None:
    m = write_manifest(tmp_path / "m", "app", ["cudaish==1.0", "fine==1.0"], find_links=wheels)
    assert volenv("--root", root, "sync", m).returncode == 0  # no [check]: the build does not look
    r = volenv("--root", root, "verify", "--imports", "app")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "cudaish (cudaish): ImportError" in r.stdout and "libvanish.so" in r.stdout, r.stdout
    r = volenv("--root", root, "--json", "verify", "--imports", "app")
    doc = json.loads(r.stdout)
    (rep,) = doc["imports"].values()
    assert rep["checked"] == 3 and [f["module"] for f in rep["failures"]] == ["cudaish"]
    assert volenv("--root", root, "verify", "app").returncode == 0  # the files themselves are fine

    good = write_manifest(tmp_path / "g", "good", ["fine==1.0"], find_links=wheels, extra=CHECK)
    r = volenv("--root", root, "sync", good)
    assert r.returncode == 0 and "steps: " in r.stderr and "imports" in r.stderr, r.stderr
    assert volenv("--root", root, "verify", "--imports", "good").returncode == 0


def test_check_imports_must_be_a_boolean(tmp_path: Path, root: Path, wheels: Path) -> None:
    m = write_manifest(
        tmp_path / "m", "app", ["fine==1.0"], find_links=wheels, extra='\n[check]\nimports = "yes"\n'
    )
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 2 and "check.imports" in r.stderr, r.stderr


def test_modules_come_from_the_record() -> None:
    rows = [
        "torch/__init__.py", "torch/_C.cpython-311-x86_64-linux-gnu.so", "functorch/__init__.py",
        "nvidia/__init__.py", "google/protobuf/__init__.py", "google/protobuf/message.py",
        "six.py", "_cffi_backend.cpython-311-x86_64-linux-gnu.so", "tests/__init__.py",
        "torch-2.8.0.dist-info/RECORD", "../../bin/torchrun", "distutils-precedence.pth",
    ]  # fmt: skip
    assert _modules_of(rows) == ["_cffi_backend", "functorch", "google.protobuf", "nvidia", "six", "torch"]


def test_ignored_modules_are_not_imported_and_are_listed(tmp_path: Path, root: Path, wheels: Path) -> None:
    """`[check] ignore`: a module a dependency declares and nothing imports (f5-tts's
    transformers_stream_generator) does not fail the build; the report names it as ignored."""
    extra = '\n[check]\nimports = true\nignore = ["cudaish"]\n'
    m = write_manifest(tmp_path / "m", "app", ["cudaish==1.0", "fine==1.0"], find_links=wheels, extra=extra)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    seal = json.loads(
        (root / "envs" / "app" / "snapshots" / snapshot_of(root, "app") / ".volenv" / "seal.json").read_text()
    )
    assert seal["imports"]["ignored"] == ["cudaish"] and seal["imports"]["failures"] == []
    assert volenv("--root", root, "verify", "--imports", "app").returncode == 0
    bad = write_manifest(
        tmp_path / "b", "bad", ["fine==1.0"], find_links=wheels, extra='\n[check]\nignore = ["a b"]\n'
    )
    r = volenv("--root", root, "sync", bad)
    assert r.returncode == 2 and "check.ignore[0]" in r.stderr, r.stderr
