"""Damaged times on the volume (a rollback mark, a seal's `created`, a history line's `time`:
1e300, NaN, Infinity, a bool) are damaged records (exit 4 naming the file) or render as '?',
never a traceback or an internal error (exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import volenv, write_manifest
from volenv.store.sealcheck import seal_self_digest

BAD = ["1e300", "NaN", "-Infinity", "true", "-5"]


@pytest.fixture(scope="module")
def vol(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> tuple[Path, Path, str]:
    d = tmp_path_factory.mktemp("times")
    root = d / "vol" / "volenv"
    m = write_manifest(d / "m", "app", ["alpha==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "--json", "sync", m)
    assert r.returncode == 0, r.stderr
    return root, m, str(r.json()["snapshot"])


@pytest.mark.parametrize("bad", BAD)
def test_damaged_rollback_time_exits_4_naming_the_pointer(vol: tuple[Path, Path, str], bad: str) -> None:
    root, m, _sid = vol
    cur = root / "envs" / "app" / "current"
    good = cur.read_text()
    cur.write_text(
        f'{{"schema":1,"snapshot":"app-000000000000","time":0,"rollback":{{"from":null,"created":0,"time":{bad}}}}}'
    )
    try:
        r = volenv("--root", root, "run", "--manifest", m, "--", "true")
        assert r.returncode == 4 and str(cur) in r.stderr and "Traceback" not in r.stderr, r.stderr
        r = volenv("--root", root, "sync", m)
        assert r.returncode == 4 and str(cur) in r.stderr and "internal error" not in r.stderr, r.stderr
    finally:
        cur.write_text(good)


def test_rollback_from_that_is_no_snapshot_is_damaged(vol: tuple[Path, Path, str]) -> None:
    root, m, sid = vol
    cur = root / "envs" / "app" / "current"
    good = cur.read_text()
    rec = {"schema": 1, "snapshot": sid, "time": 0, "rollback": {"from": "x", "created": 0, "time": 0}}
    cur.write_text(json.dumps(rec))
    try:
        r = volenv("--root", root, "run", "--manifest", m, "--", "true")
        assert r.returncode == 4 and str(cur) in r.stderr, r.stderr
    finally:
        cur.write_text(good)


@pytest.mark.parametrize("bad", ["1e300", "NaN", "true"])
def test_damaged_seal_created_renders_and_history_time_is_damage(
    vol: tuple[Path, Path, str], bad: str
) -> None:
    root, _m, sid = vol
    seal = root / "envs" / "app" / "snapshots" / sid / ".volenv" / "seal.json"
    hist = root / "envs" / "app" / "history.jsonl"
    good_seal, good_hist = seal.read_bytes(), hist.read_bytes()
    seal.chmod(0o644)
    rec = json.loads(seal.read_text())
    rec["created"] = json.loads(bad)
    rec["self_sha256"] = seal_self_digest(rec)  # a forged seal, self-consistent
    seal.write_text(json.dumps(rec))
    try:
        for cmd in (["show", "app"], ["list"], ["status"]):
            r = volenv("--root", root, *cmd)
            assert r.returncode in (0, 4), (cmd, r.returncode, r.stderr)
            assert "internal error" not in r.stderr and "Traceback" not in r.stderr, (cmd, r.stderr)
        hist.write_text(
            hist.read_text() + f'{{"schema": 1, "time": {bad}, "snapshot": "{sid}", "action": "sync"}}\n'
        )
        r = volenv("--root", root, "history", "app")
        assert r.returncode == 4 and str(hist) in r.stderr and "line 2" in r.stderr, r.stderr
    finally:
        seal.write_bytes(good_seal)
        hist.write_bytes(good_hist)
