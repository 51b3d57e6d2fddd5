"""Issue 16: a new user's walk through history, gc, rollback, pin and show after gc removed
older snapshots (every line fits 80 columns, the totals add up, prefixes resolve)."""

from __future__ import annotations

from pathlib import Path

from conftest import volenv, write_manifest

COLS = {"COLUMNS": "80"}


def _edited_in_place(tmp_path: Path, root: Path, wheelhouse: Path) -> tuple[Path, list[str]]:
    """One manifest file synced three times with edits in between: three index entries, one path."""
    sids = []
    for reqs in (["alpha==1.0"], ["alpha==2.0"], ["gamma==1.0"]):
        m = write_manifest(tmp_path / "proj", "app", reqs, find_links=wheelhouse)
        r = volenv("--root", root, "--json", "sync", m)
        assert r.returncode == 0, r.stderr
        sids.append(str(r.json()["snapshot"]))
    return m, sids


def test_history_rows_fit_80_columns_after_gc(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    _m, sids = _edited_in_place(tmp_path, root, wheelhouse)
    assert volenv("--root", root, "gc", "--keep", "0", "--keep-within", "0s", "--yes").returncode == 0
    r = volenv("--root", root, "history", "app", env=COLS)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert any("gone" in line for line in lines), lines
    doc = volenv("--root", root, "--json", "history", "app").json()
    gens = doc["generations"]  # type: ignore[index]
    assert sids[0] in gens[1]["summary"] and sids[1] in gens[1]["summary"]  # --json names them
