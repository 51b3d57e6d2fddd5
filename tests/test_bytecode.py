"""Issue 27: byte-compile failures of files written for another Python (torch ships
`_py312_intrinsics.py`) are counted in the build log, not warned about on every build; a
module that fails to compile for this Python still warns, naming it and the log."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import snapshot_of, volenv, write_manifest
from volenv.build.venv import targets_other_python
from wheelfactory import make_wheel


@pytest.mark.parametrize(
    ("path", "other"),
    [
        ("lib/python3.11/site-packages/torch/_dynamo/_py312_intrinsics.py", True),
        ("lib/python3.11/site-packages/six/compat_py2.py", True),
        ("lib/python3.11/site-packages/jinja2/py2/helpers.py", True),
        ("lib/python3.11/site-packages/x/python3_13_only.py", True),
        ("lib/python3.11/site-packages/x/py311_compat.py", False),
        ("lib/python3.11/site-packages/x/py3.py", False),
        ("lib/python3.11/site-packages/numpy/broken.py", False),
        ("lib/python3.11/site-packages/copy2.py", False),
        ("lib/python3.11/site-packages/happy2.py", False),
    ],
)
def test_which_files_target_another_python(path: str, other: bool) -> None:
    assert targets_other_python(path, (3, 11)) is other


def test_other_pythons_files_are_counted_not_warned(tmp_path: Path, root: Path) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(
        wheels,
        "torchish",
        files={
            "torchish/__init__.py": "X = 1\n",
            "torchish/_py312_intrinsics.py": "type Alias = int\n",  # 3.12 syntax
            "torchish/compat_py2.py": 'print "python 2"\n',
        },
    )
    m = write_manifest(tmp_path / "m", "app", ["torchish==1.0"], find_links=wheels)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    assert "byte-compile" not in r.stderr, r.stderr
    log = (
        root / "envs" / "app" / "snapshots" / snapshot_of(root, "app") / ".volenv" / "build.log"
    ).read_text()
    assert "2 files written for another Python, skipped" in log, log[-2000:]
    assert "_py312_intrinsics.py" in log and "compat_py2.py" in log


def test_a_module_that_fails_to_compile_here_still_warns(tmp_path: Path, root: Path) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "brokenish", files={"brokenish/__init__.py": "", "brokenish/bad.py": "def (:\n"})
    m = write_manifest(tmp_path / "m", "app", ["brokenish==1.0"], find_links=wheels)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stderr.splitlines() if "failed to byte-compile" in ln)
    assert "1 module failed" in line and "brokenish/bad.py" in line and "build" in line, line
