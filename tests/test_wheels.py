"""Wheels as PyPI ships them: bytecode inside the wheel (numpy 1.26.4 ships
`numpy/distutils/__pycache__/conv_template.cpython-311.pyc`), checked against its RECORD as
shipped, then replaced by volenv's own compile step and recorded, never called damage."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from conftest import volenv, write_manifest
from wheelfactory import make_wheel

SP = "lib/python3.11/site-packages"
PYC = "shipsbc/__pycache__/helper.cpython-311.pyc"
# What a wheel built elsewhere ships: bytecode whose header names another source mtime (here
# not even a valid header), so the interpreter would ignore it and recompile at every start.
SHIPPED = b"\x00\x00\x00\x00stale bytecode from the wheel's build machine"


def _wheel(d: Path, version: str = "1.0", record_lies: bool = False) -> Path:
    files: dict[str, str | bytes] = {
        "shipsbc/__init__.py": "from .helper import answer\n",
        "shipsbc/helper.py": "def answer():\n    return 42\n",
        PYC: SHIPPED,
    }
    wheel = make_wheel(d, "shipsbc", version, files=files)
    if record_lies:  # the RECORD hash of the shipped .pyc is not what the wheel holds
        import zipfile

        with zipfile.ZipFile(wheel) as zf:
            items = {n: zf.read(n) for n in zf.namelist()}
        items[PYC] = SHIPPED + b" (tampered after RECORD was written)"
        with zipfile.ZipFile(wheel, "w") as zf:
            for n, data in items.items():
                zf.writestr(n, data)
    return wheel


def test_wheel_shipping_bytecode_syncs_and_verifies(tmp_path: Path, root: Path) -> None:
    wheels = tmp_path / "wheels"
    _wheel(wheels)
    m = write_manifest(tmp_path, "bc", ["shipsbc==1.0"], find_links=wheels)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    assert "differ from their wheels" not in r.stderr
    snap = next((root / "envs/bc/snapshots").iterdir())
    pyc = snap / SP / PYC
    # Decision (README): the shipped .pyc is replaced by bytecode compiled for the installed
    # source, so imports use it instead of recompiling in memory at every start.
    assert pyc.read_bytes()[:4] == importlib.util.MAGIC_NUMBER
    assert volenv("--root", root, "verify", "bc", "--level", "full").returncode == 0
    r = volenv(
        "--root", root, "run", "--env", "bc", "--", "python", "-c", "import shipsbc; print(shipsbc.answer())"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "42"


def test_damaged_shipped_bytecode_in_the_cache_is_refreshed(tmp_path: Path, root: Path) -> None:
    """Inherited damage in a shipped .pyc (the uv cache copy edited in place) is still caught:
    shipped files are checked against RECORD before volenv compiles over them."""
    wheels = tmp_path / "wheels"
    _wheel(wheels)
    m = write_manifest(tmp_path, "bc", ["shipsbc==1.0"], find_links=wheels)
    assert volenv("--root", root, "sync", m).returncode == 0
    cached = _cached(root)
    assert cached, "uv's cache holds the unpacked wheel"
    for path in cached:
        with open(path, "r+b") as fh:
            fh.write(b"XXXX")
    m2 = write_manifest(tmp_path, "bc2", ["shipsbc==1.0"], find_links=wheels)
    r = volenv("--root", root, "sync", m2)
    assert r.returncode == 0, r.stderr
    assert "differ from their wheels" in r.stderr and PYC in r.stderr
    assert all(Path(p).read_bytes() == SHIPPED for p in _cached(root)), "the cache entry was refreshed"
    assert volenv("--root", root, "verify", "bc2", "--level", "full").returncode == 0


def _cached(root: Path) -> list[str]:
    return [
        os.path.join(d, f)
        for d, _dirs, files in os.walk(root / "cache/uv")
        for f in files
        if os.path.join(d, f).endswith(PYC)
    ]


def test_shipped_bytecode_that_contradicts_its_record_fails_the_build(tmp_path: Path, root: Path) -> None:
    wheels = tmp_path / "wheels"
    _wheel(wheels, record_lies=True)
    m = write_manifest(tmp_path, "bc", ["shipsbc==1.0"], find_links=wheels)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 7, r.stderr
    assert "still differ from their wheels" in r.stderr and PYC in r.stderr
    assert not (root / "envs/bc/snapshots").exists() or not any((root / "envs/bc/snapshots").iterdir())


def test_bytecode_does_not_depend_on_where_the_build_staged(tmp_path: Path, root: Path) -> None:
    """Two envs built from one cached distribution get byte-identical .pyc files (their packs
    dedupe), and the path compiled into them names no staging directory."""
    import marshal

    wheels = tmp_path / "wheels"
    _wheel(wheels)
    for env in ("one", "two"):
        m = write_manifest(tmp_path, env, ["shipsbc==1.0"], find_links=wheels)
        assert volenv("--root", root, "sync", m).returncode == 0
    rel = f"{SP}/shipsbc/__pycache__/__init__.cpython-311.pyc"
    one, two = (next((root / f"envs/{e}/snapshots").iterdir()) / rel for e in ("one", "two"))
    assert one.read_bytes() == two.read_bytes()
    code = marshal.loads(one.read_bytes()[16:])
    assert code.co_filename == f"{SP}/shipsbc/__init__.py"


def test_a_file_two_wheels_ship_is_what_uv_left_never_damage(tmp_path: Path, root: Path) -> None:
    """Issue 27: fastapi and fastapi-cli both declare a `fastapi` console script. uv lets the last
    installer's stay; its RECORD vouches for it, the other's does not, and that is not damage:
    the build seals, `show` names the clash once, `verify --level full` passes."""
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "clasha", "1.0", files={"clasha/__init__.py": "def main():\n    print('a')\n"},
               scripts={"clashtool": "clasha:main"})  # fmt: skip
    make_wheel(wheels, "clashb", "1.0", files={"clashb/__init__.py": "def main():\n    print('b')\n"},
               scripts={"clashtool": "clashb:main"})  # fmt: skip
    m = write_manifest(tmp_path, "cl", ["clasha==1.0", "clashb==1.0"], find_links=wheels)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    assert "differ from their wheels" not in r.stderr, r.stderr
    r = volenv("--root", root, "show", "cl")
    assert (
        r.returncode == 0
        and "shipped by several distributions: bin/clashtool (clasha-1.0, clashb-1.0; kept clash" in r.stdout
    ), r.stdout
    assert volenv("--root", root, "verify", "cl", "--level", "full").returncode == 0
    log = next((root / "logs" / "cl").glob("build-*.log")).read_text()
    assert log.count("files shipped by several distributions") == 1
