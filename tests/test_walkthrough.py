"""Issue 16: a new user's walk through history, gc, rollback, pin and show after gc removed
older snapshots (every line fits 80 columns, the totals add up, prefixes resolve)."""

from __future__ import annotations

from pathlib import Path

from conftest import snapshot_of, volenv, write_manifest

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


def test_gc_prompt_totals_and_long_paths(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    import re

    from ptyrun import run_pty
    from volenv.cli.render import _gc_rows
    from volenv.gc.plan import GcItem

    _edited_in_place(tmp_path, root, wheelhouse)
    r = run_pty("--root", root, "gc", "--keep", "0", "--keep-within", "0s", stdout_on_tty=True, stdin=b"n\n")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", r.tty.replace("\r", ""))
    assert r.returncode == 0, text
    before, _, after = text.partition("item(s)?")
    assert "nothing changed" not in before and "nothing changed" in after, text
    rows = re.findall(r"^remove\s+\S+\s+([\d.]+) (B|KiB)", before, re.M)
    total = re.search(r"^(\d+) to remove: ([\d.]+) (B|KiB) apparent", before, re.M)
    assert total and len(rows) == int(total[1]), before
    unit = {"B": 1, "KiB": 1024}
    assert abs(sum(float(n) * unit[u] for n, u in rows) - float(total[2]) * unit[total[3]]) < 1024, before
    assert re.search(r"^would free .* of disk", before, re.M), before
    dry = volenv("--root", root, "gc", "--keep", "0", "--keep-within", "0s", "--dry-run", env=COLS)
    assert "nothing changed" in dry.stdout, dry.stdout
    # an 88-character pack path stays whole on its own line at 80 columns
    path = str(root / "packs" / "blobs" / ("ab" * 32 + ".tar.zst"))
    item = GcItem("pack", path, None, "remove", ("unreferenced",), 1000)
    lines = [line for _style, line in _gc_rows([item], str(root), 80)]
    assert f"packs/blobs/{'ab' * 32}.tar.zst" in [line.strip() for line in lines], lines


def test_unique_is_bytes_and_at_most_apparent(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    _edited_in_place(tmp_path, root, wheelhouse)
    doc = volenv("--root", root, "--json", "show", "app").json()
    assert 0 <= doc["unique_bytes"] <= doc["apparent_bytes"], doc  # type: ignore[operator]
    assert doc["unique_bytes"] % 4096 != 0, doc  # bytes of the venv's own files, not blocks
    st = volenv("--root", root, "--json", "status", "app").json()
    for snap in st["envs"][0]["snapshots"]:  # type: ignore[index]
        assert snap["unique_bytes"] <= snap["apparent_bytes"], snap


def test_rollback_after_in_place_edits_prefixes_and_gc(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m, sids = _edited_in_place(tmp_path, root, wheelhouse)
    r = volenv("--root", root, "rollback", "app", "--to", sids[0].split("-")[1][:6])  # hex prefix
    assert r.returncode == 0, r.stderr
    assert snapshot_of(root, "app") == sids[0]
    assert r.stderr.count(f"run --manifest {m}:") == 1, r.stderr  # one line per path
    assert f"volenv sync {m}" in r.stderr, r.stderr  # the real manifest, not MANIFEST
    doc = volenv("--root", root, "--json", "rollback", "app", "--to", sids[1][:-4]).json()
    assert doc["snapshot"] == sids[1], doc
    assert [f["manifest"] for f in doc["manifests"]] == [str(m)], doc  # type: ignore[union-attr]
    assert volenv("--root", root, "pin", sids[2][-12:-6]).returncode == 0
    st = volenv("--root", root, "--json", "status").json()
    assert {s["id"]: s["pinned"] for s in st["envs"][0]["snapshots"]}[sids[2]] is True  # type: ignore[index]
    assert volenv("--root", root, "unpin", sids[2][:-5]).returncode == 0
    assert volenv("--root", root, "rollback", "app", "--to", sids[2]).returncode == 0
    assert volenv("--root", root, "gc", "--keep", "0", "--keep-within", "0s", "--yes").returncode == 0
    r = volenv("--root", root, "rollback", "app")
    assert r.returncode == 2 and "gc removed the 2 snapshots" in r.stderr and "hint" in r.stderr, r.stderr


def test_small_wording(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m, sids = _edited_in_place(tmp_path, root, wheelhouse)
    r = volenv("--root", root, "-qq", "diff", "app", "app")
    assert r.returncode == 0 and "->" not in r.stderr, r.stderr
    assert "->" in volenv("--root", root, "diff", "app", "app").stderr
    r = volenv("--root", root, "models", "list", "-m", m)
    assert r.returncode == 0 and "no models" in r.stderr and "name" not in r.stdout, (r.stdout, r.stderr)
    assert volenv("--root", root, "--json", "models", "list", "-m", m).json()["models"] == []
    assert volenv("--root", root, "rollback", "app", "--to", sids[0]).returncode == 0
    r = volenv("--root", root, "env", "--manifest", m)
    assert r.returncode == 0 and "using it for" in r.stderr and "running" not in r.stderr, r.stderr
    fresh = write_manifest(tmp_path / "fresh", "other", ["alpha==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "run", "--manifest", fresh, "--", "true")
    assert r.returncode == 0 and "no snapshot indexed for" in r.stderr and " yet" not in r.stderr, r.stderr


def test_sync_verify_pack_count_the_same_files(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    import re

    m = write_manifest(tmp_path / "one", "app", ["alpha==1.0"], find_links=wheelhouse)
    built = volenv("--root", root, "sync", m).stderr
    checked = volenv("--root", root, "verify", "app").stdout
    packed = volenv("--root", root, "pack", "app", env={"VOLENV_NO_PROGRESS": ""}).stderr
    counts = [re.search(r"([\d,]+) files", text) for text in (built, checked, packed)]
    assert all(counts), (built, checked, packed)
    assert len({c[1] for c in counts if c}) == 1, (built, checked, packed)
