"""Issue 16 item 10: the gc plan names snapshot ids, fits the terminal, folds kept uv cache
archives, uses one duration format, and removes env dirs that failed builds left empty."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import volenv, write_manifest
from ptyrun import run_pty

LONG = "a-very-long-environment-name-that-goes-on-and-on-and-on-and-on"  # 62 characters
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> tuple[Path, list[str]]:
    """Three snapshots of a long-named env (one current) and one env a failed build left."""
    d = tmp_path_factory.mktemp("gcplan")
    root = d / "vol" / "volenv"
    sids = []
    for reqs in (["alpha==1.0"], ["alpha==2.0"], ["gamma==1.0"]):
        m = write_manifest(d / reqs[0], LONG, reqs, find_links=wheelhouse)
        r = volenv("--root", root, "--json", "sync", m)
        assert r.returncode == 0, r.stderr
        sids.append(str(r.json()["snapshot"]))
    bad = write_manifest(d / "bad", "failed", ["nosuchpkg==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", bad).returncode == 7
    assert (root / "envs" / "failed" / "snapshots").is_dir()
    return root, sids


def _rows(stdout: str, kind: str) -> list[list[str]]:
    """Plan rows of one kind (reason lines are indented, rows start with the action)."""
    return [
        ln.split()
        for ln in stdout.splitlines()
        if ln.split()[:1] in (["keep"], ["remove"]) and ln.split()[1:2] == [kind]
    ]


def test_plan_names_ids_and_fits_80_columns(volume: tuple[Path, list[str]]) -> None:
    root, sids = volume
    r = run_pty(
        "--root", root, "gc", "--dry-run", "--keep", "0", "--keep-within", "1d12h", stdout_on_tty=True
    )
    assert r.returncode == 0, r.tty
    lines = [ANSI.sub("", ln) for ln in r.tty.replace("\r", "").splitlines()]
    assert lines and all(len(ln) <= 80 for ln in lines), "\n".join(ln for ln in lines if len(ln) > 80)
    text = "\n".join(lines)
    for sid in sids:  # each id whole on a line of its own (too long to share one at 80 columns)
        assert any(ln.strip() == sid for ln in lines), text
    assert "/envs/" not in text and "snapshots/" not in text, text
    # one duration format: the header and the rows say 36h (the header said 129600s)
    header = " ".join(" ".join(lines[:2]).split())  # wrapped where a long root path makes it so
    assert "keep used within 36h" in header and "129600" not in text, text


def test_plan_piped_keeps_one_row_per_item(volume: tuple[Path, list[str]]) -> None:
    root, sids = volume
    r = volenv("--root", root, "gc", "--dry-run", "--keep", "0", "--keep-within", "0s")
    assert r.returncode == 0, r.stderr
    rows = {row[-1]: row[0] for row in _rows(r.stdout, "snapshot")}
    assert rows == {sids[0]: "remove", sids[1]: "remove", sids[2]: "keep"}, r.stdout


def test_kept_uv_archives_fold_into_one_line(volume: tuple[Path, list[str]]) -> None:
    root, _ = volume
    r = volenv("--root", root, "gc", "--dry-run", "--keep", "5")
    assert r.returncode == 0, r.stderr
    folded = [ln for ln in r.stdout.splitlines() if ln.startswith("kept ") and "uv cache archive" in ln]
    archives = len(os.listdir(root / "cache" / "uv" / "archive-v0"))
    assert folded and folded[0].startswith(f"kept {archives} uv cache archives ("), r.stdout
    assert "uv-archive" not in r.stdout, r.stdout
    r = volenv("--root", root, "-v", "gc", "--dry-run", "--keep", "5")
    listed = _rows(r.stdout, "uv-archive")
    assert len(listed) == archives and listed[0][-1].startswith("cache/uv/archive-v0/"), r.stdout
    assert not any("uv cache archives (" in ln for ln in r.stdout.splitlines())


def test_env_dir_left_by_a_failed_build_is_removed(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    from volenv.store.locks import BuildLease
    from volenv.store.paths import VolumePaths

    bad = write_manifest(tmp_path / "bad", "failed", ["nosuchpkg==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", bad).returncode == 7
    good = write_manifest(tmp_path / "good", "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", good).returncode == 0
    # a linked env dir is a trap: listed, never followed nor removed
    outside = tmp_path / "outside"
    (outside / "snapshots").mkdir(parents=True)
    os.symlink(outside, root / "envs" / "linked")

    # while a build holds the env's lease, its empty dir is a build in progress: kept
    lease = BuildLease(VolumePaths(root), "failed", timeout=0, say=lambda _m: None)
    with lease:
        doc = volenv("--root", root, "--json", "gc", "--dry-run").json()
        envs = [i for i in doc["result"]["plan"]["items"] if i["kind"] == "env"]  # type: ignore[index]
        assert [(i["env"], i["action"]) for i in envs] == [("failed", "keep")], envs
        r = volenv("--root", root, "gc", "--yes")
        assert r.returncode == 0 and (root / "envs" / "failed").is_dir(), r.stderr

    r = volenv("--root", root, "gc", "--dry-run")
    row = _rows(r.stdout, "env")
    assert len(row) == 1 and row[0][0] == "remove" and row[0][-1] == "failed", r.stdout
    assert (root / "envs" / "failed").is_dir()  # dry run: nothing changed
    r = volenv("--root", root, "gc", "--yes")
    assert r.returncode == 0, r.stderr
    assert not (root / "envs" / "failed").exists()
    assert (root / "envs" / "app" / "current").exists()  # a real env is untouched
    assert os.path.islink(root / "envs" / "linked") and (outside / "snapshots").is_dir()
    assert (root / "logs" / "failed").is_dir()  # its build logs stay for doctor
    # the env works again afterwards
    again = write_manifest(tmp_path / "again", "failed", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", again).returncode == 0


def test_prompted_gc_prints_the_plan_once(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    for reqs in (["alpha==1.0"], ["alpha==2.0"]):
        m = write_manifest(tmp_path / reqs[0], "app", reqs, find_links=wheelhouse)
        assert volenv("--root", root, "sync", m).returncode == 0
    r = run_pty("--root", root, "gc", "--keep", "0", "--keep-within", "0s", stdout_on_tty=True, stdin=b"y\n")
    assert r.returncode == 0, r.tty
    assert r.tty.count("gc plan for") == 1 and "remove 1 item(s)?" in r.tty, r.tty
    assert "freed " in r.tty and len(os.listdir(root / "envs" / "app" / "snapshots")) == 1, r.tty
