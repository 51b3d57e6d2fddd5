"""Issue 17 item 4: `volenv bench coldstart` measures a real volume (a tiny-wheel env here, and
the same env behind the latency FUSE) without changing it, and prints one JSON document."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import snapshot_of, volenv, write_manifest
from test_materialize import slowfs

TRACE = "[activate]\ntrace-cmd = \"python -c 'import beta.mod3'\"\n"


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path of the volume with size and mtime, but the use marks every `run` writes."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if "used" in Path(rel).parts or rel.startswith("logs/"):
                continue
            st = p.lstat()
            out[rel] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def synced(tmp_path: Path, wheelhouse: Path) -> tuple[Path, Path]:
    root = tmp_path / "volume" / "volenv"
    m = write_manifest(tmp_path, "app", ["beta==1.0"], find_links=wheelhouse, extra=TRACE)
    r = volenv("--root", root, "sync", "--pack", m)
    assert r.returncode == 0, r.stderr
    return m, root


def _bench(root: Path, m: Path, tmp: Path, *extra: str) -> dict[str, object]:
    scratch = tmp / "tmpdir"
    scratch.mkdir(exist_ok=True)
    r = volenv(
        "--root",
        root,
        "bench",
        "coldstart",
        m,
        "--runs",
        "1",
        "--read-mb",
        "1",
        "--json",
        *extra,
        env={"TMPDIR": str(scratch)},
    )
    assert r.returncode == 0, r.stderr
    assert list(scratch.iterdir()) == [], "the temporary local copies are deleted"
    return r.json()


def test_coldstart_json_measures_without_changing_the_volume(
    tmp_path: Path, synced: tuple[Path, Path]
) -> None:
    m, root = synced
    before = _tree(root)
    doc = _bench(root, m, tmp_path)
    assert _tree(root) == before
    assert doc["command"] == "bench coldstart" and doc["snapshot"] == snapshot_of(root, "app")
    assert doc["start_command"] == ["python", "-c", "import beta.mod3"]  # [activate] trace-cmd
    for key in (
        "latency",
        "reads",
        "starts",
        "auto",
        "snapshot_files",
        "snapshot_bytes",
        "materialized_vs_in_place",
    ):
        assert key in doc, key
    ops = {op["op"]: op for op in doc["latency"]}  # type: ignore[union-attr]
    assert set(ops) == {"stat", "open+read"} and all(op["samples"] > 10 for op in ops.values())
    reads = doc["reads"]
    assert [(x["kind"], x["threads"]) for x in reads] == [  # type: ignore[union-attr]
        ("sequential", 1),
        ("parallel", 4),
        ("parallel", 8),
    ]
    assert all(x["bytes"] > 0 and x["mb_per_s"] > 0 for x in reads)  # type: ignore[union-attr]
    starts = {s["mode"]: s for s in doc["starts"]}  # type: ignore[union-attr]
    assert set(starts) == {"never", "always"}
    assert all(len(s["runs_s"]) == 1 and s["median_s"] > 0 and not s["skipped"] for s in starts.values())
    # a local disk: in place without timing anything (one filesystem, or a local block fs)
    assert doc["auto"]["choice"] == "in-place", doc["auto"]  # type: ignore[index]
    assert "filesystem" in doc["auto"]["reason"]  # type: ignore[index]
    assert isinstance(doc["materialized_vs_in_place"], float)


def test_coldstart_human_table_given_command_and_unpacked(tmp_path: Path, wheelhouse: Path) -> None:
    root = tmp_path / "volume" / "volenv"
    m = write_manifest(tmp_path, "app", ["beta==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    r = volenv(
        "--root",
        root,
        "bench",
        "coldstart",
        m,
        "--runs",
        "1",
        "--read-mb",
        "1",
        "--",
        "python",
        "-c",
        "import beta.mod1",
    )
    assert r.returncode == 0, r.stderr
    for text in (
        "stat (per op)",
        "sequential read",
        "parallel read, 8 threads",
        "start in place",
        "no packs",
        "auto would run in place",
        "import beta.mod1",
    ):
        assert text in r.stdout, (text, r.stdout)


def test_coldstart_refuses_without_a_snapshot_or_a_working_command(
    tmp_path: Path, synced: tuple[Path, Path], wheelhouse: Path
) -> None:
    m, root = synced
    other = write_manifest(tmp_path / "o", "other", ["gamma==1.0"], find_links=wheelhouse)
    before = _tree(root)
    r = volenv("--root", root, "bench", "coldstart", other, "--json")
    assert r.returncode == 3 and "sync" in r.json()["error"]["hint"]  # type: ignore[index]
    r = volenv(
        "--root", root, "bench", "coldstart", m, "--runs", "1", "--", "python", "-c", "raise SystemExit(5)"
    )
    assert r.returncode == 2 and "exited 5" in r.stderr
    r = volenv("--root", root, "bench", "coldstart", m, "--runs", "0")
    assert r.returncode == 2
    assert _tree(root) == before


@pytest.mark.mounts
def test_coldstart_behind_a_slow_volume_says_auto_materializes(
    tmp_path: Path, synced: tuple[Path, Path]
) -> None:
    m, root = synced
    with slowfs(root.parent, tmp_path / "slow", meta_ms=1.0) as slow:
        doc = _bench(slow / "volenv", m, tmp_path)
    ops = {op["op"]: op for op in doc["latency"]}  # type: ignore[union-attr]
    assert ops["stat"]["median_ms"] >= 1.0  # at least one delayed lookup per stat
    assert doc["auto"]["choice"] == "materialize", doc["auto"]  # type: ignore[index]
    starts = {s["mode"]: s for s in doc["starts"]}  # type: ignore[union-attr]
    assert starts["always"]["median_s"] > 0 and starts["never"]["median_s"] > 0
