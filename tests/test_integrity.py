"""Issue 3: verification levels, the corruption matrix, quarantine and repair."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import snapshot_of, volenv, write_manifest

SP = "lib/python3.11/site-packages"


@pytest.fixture
def built(tmp_path: Path, root: Path, wheelhouse: Path) -> tuple[Path, Path, Path]:
    """A fresh snapshot of beta (21 modules) + alpha (console script): (manifest, root, snapshot dir)."""
    m = write_manifest(tmp_path, "app", ["beta==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "--json", "sync", m)
    assert r.returncode == 0, r.stderr
    return m, root, Path(str(r.json()["path"]))


def _flip_byte(path: Path) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


def _detach(path: Path) -> None:
    """Give a hard-linked file its own inode so a damage test does not reach the uv cache."""
    data = path.read_bytes()
    st = path.stat()
    path.unlink()
    path.write_bytes(data)
    os.chmod(path, st.st_mode & 0o7777)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _delete(s: Path) -> None:
    (s / SP / "beta/mod3.py").unlink()


def _truncate(s: Path) -> None:
    p = s / SP / "beta/mod4.py"
    _detach(p)
    with open(p, "r+b") as fh:
        fh.truncate(2)


def _flip(s: Path) -> None:
    p = s / SP / "beta/mod5.py"
    _detach(p)
    _flip_byte(p)


def _extra(s: Path) -> None:
    (s / SP / "beta/injected.py").write_text("print('pwned')\n")


def _pyc(s: Path) -> None:
    (s / SP / "beta/__pycache__/later.cpython-311.pyc").write_bytes(b"\0" * 16)


def _mode(s: Path) -> None:
    p = s / SP / "beta/mod6.py"
    _detach(p)
    os.chmod(p, 0o777)


def _symlink(s: Path) -> None:
    link = s / "bin" / "python3"
    link.unlink()
    link.symlink_to("/bin/sh")


def _seal(s: Path) -> None:
    p = s / ".volenv/seal.json"
    seal = json.loads(p.read_text())
    seal["created"] = 0
    p.write_text(json.dumps(seal))


def _record(s: Path) -> None:
    p = s / ".volenv/record"
    p.write_text(p.read_text().replace("\t", "\t", 1) + "f\t644\t1\t00\t0\t0\tghost.py\n")


def _interpreter(s: Path) -> None:
    p = s / ".volenv/seal.json"
    seal = json.loads(p.read_text())
    seal["fingerprint"]["executable"] = "/nonexistent/python3.11"
    from volenv.store.sealcheck import seal_self_digest

    seal["self_sha256"] = seal_self_digest(seal)
    p.write_text(json.dumps(seal))


# case -> (damage, expected kind, lowest level that sees it)
MATRIX: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "deleted": (_delete, "missing", "stat"),
    "truncated": (_truncate, "size-changed", "stat"),
    "byte-flip": (_flip, "content-changed", "full"),
    "extra-module": (_extra, "extra", "stat"),
    "stray-pyc": (_pyc, "bytecode", "stat"),
    "mode": (_mode, "mode-changed", "stat"),
    "symlink": (_symlink, "symlink-changed", "stat"),
    "seal-edited": (_seal, "seal-damaged", "seal"),
    "record-edited": (_record, "record-mismatch", "seal"),
    "interpreter-missing": (_interpreter, "interpreter", "seal"),
}
ORDER = ["seal", "stat", "full"]


@pytest.mark.parametrize("case", list(MATRIX))
def test_corruption_matrix(case: str, built: tuple[Path, Path, Path]) -> None:
    _m, root, snap = built
    damage, kind, lowest = MATRIX[case]
    for level in ORDER:  # clean at every level first
        assert volenv("--root", root, "verify", snap.name, "--level", level).returncode == 0
    damage(snap)
    for level in ORDER:
        r = volenv("--root", root, "--json", "verify", snap.name, "--level", level)
        report = r.json()["reports"][0]  # type: ignore[index]
        kinds = {p["kind"] for p in report["problems"]}
        if ORDER.index(level) < ORDER.index(lowest):
            assert kinds == set(), (case, level, kinds)
            assert r.returncode == 0
            continue
        assert kind in kinds, (case, level, report["problems"])
        # nothing is reported as anything but what it is
        assert kinds == {kind}, (case, level, kinds)
        if kind == "bytecode":
            assert r.returncode == 0 and report["problems"][0]["severity"] == "warning"
        else:
            assert r.returncode == 4, (case, level, r.stderr)


def test_damaged_file_names_its_package(built: tuple[Path, Path, Path]) -> None:
    _m, root, snap = built
    _flip(snap)
    r = volenv("--root", root, "--json", "verify", snap.name, "--level", "full")
    problems = r.json()["reports"][0]["problems"]  # type: ignore[index]
    assert problems[0]["distribution"] == "beta-1.0"
    human = volenv("--root", root, "verify", snap.name, "--level", "full")
    assert "beta-1.0" in human.stdout and "content-changed" in human.stdout


def test_run_refuses_flipped_snapshot_at_full(built: tuple[Path, Path, Path]) -> None:
    m, root, snap = built
    _flip(snap)
    ok = volenv("--root", root, "run", "--manifest", m, "--", "true")
    assert ok.returncode == 0  # seal level cannot see a byte flip
    r = volenv(
        "--root", root, "run", "--verify", "full", "--on-missing", "fail", "--manifest", m, "--", "true"
    )
    assert r.returncode == 4 and "content-changed" in r.stderr
    env = {"VOLENV_VERIFY": "full"}
    r = volenv("--root", root, "run", "--on-missing", "wait", "--manifest", m, "--", "true", env=env)
    assert r.returncode == 4


def test_run_quarantines_truncated_snapshot_and_rebuilds(built: tuple[Path, Path, Path]) -> None:
    m, root, snap = built
    target = snap / SP / "beta/mod4.py"
    good = target.read_bytes()
    with open(target, "r+b") as fh:  # in place: the uv cache's hard-linked copy is damaged too
        fh.truncate(2)
    r = volenv(
        "--root",
        root,
        "run",
        "--verify",
        "stat",
        "--on-missing",
        "build",
        "--manifest",
        m,
        "--",
        "python",
        "-c",
        "import beta.mod4 as m; print(m.X)",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "4"
    assert "quarantined" in r.stderr
    q = root / "quarantine"
    moved = [p for p in q.iterdir() if p.name.startswith(snap.name) and p.is_dir()]
    assert len(moved) == 1
    report = json.loads((q / (moved[0].name + ".report.json")).read_text())
    assert report["snapshot"] == snap.name
    # the rebuilt snapshot has the wheel's content, not the damaged cache file
    assert target.read_bytes() == good
    assert volenv("--root", root, "verify", "app", "--level", "full").returncode == 0


def test_repair_restores_snapshot_and_refreshes_damaged_cache(built: tuple[Path, Path, Path]) -> None:
    _m, root, snap = built
    target = snap / SP / "beta/mod7.py"
    good = target.read_bytes()
    with open(target, "r+b") as fh:  # damages the uv cache entry too (same inode)
        fh.truncate(1)
    assert target.stat().st_nlink > 1
    (snap / SP / "beta/mod8.py").unlink()
    r = volenv("--root", root, "verify", snap.name, "--level", "full")
    assert r.returncode == 4
    r = volenv("--root", root, "--json", "verify", snap.name, "--level", "full", "--repair")
    assert r.returncode == 0, r.stderr
    assert r.json()["ok"] is True
    assert target.read_bytes() == good
    assert (snap / SP / "beta/mod8.py").exists()
    assert volenv("--root", root, "verify", snap.name, "--level", "full").returncode == 0
    assert snapshot_of(root, "app") == snap.name
    quarantined = [p for p in (root / "quarantine").iterdir() if p.is_dir()]
    assert [p.name.split(".")[0] for p in quarantined] == [snap.name]


def test_verify_all_and_bad_targets(built: tuple[Path, Path, Path]) -> None:
    _m, root, _snap = built
    assert volenv("--root", root, "verify", "--all", "--level", "full").returncode == 0
    assert volenv("--root", root, "verify", "app").returncode == 0
    r = volenv("--root", root, "verify", "nope-000000000000")
    assert r.returncode == 2 and "not found" in r.stderr
    r = volenv("--root", root, "verify")
    assert r.returncode == 2
