"""Issue 29, item 12: `sync --dry-run` before the first build says what it would install: the
resolved packages with their versions, download sizes and installed sizes where known, on
stdout and in --json; on a root that does not exist yet it is no error and creates nothing."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from conftest import volenv, write_manifest
from volenv.base.ui import human_bytes


def _sizes(wheelhouse: Path, name: str, version: str) -> tuple[int, int]:
    wheel = next(wheelhouse.glob(f"{name}-{version}-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        return wheel.stat().st_size, sum(i.file_size for i in zf.infolist())


def test_dry_run_on_a_root_not_made_yet_lists_the_packages(tmp_path: Path, wheelhouse: Path) -> None:
    root = tmp_path / "not-yet"
    extra = '[optional.more]\nrequirements = ["gamma"]\n'
    m = write_manifest(tmp_path / "p", "web", ["beta==1.0"], find_links=wheelhouse, extra=extra)
    r = volenv("--root", root, "sync", "--dry-run", m)
    assert r.returncode == 0, r.stderr
    assert not root.exists(), "a dry run created the root"
    out = r.stdout
    assert re.search(r"^would build web-[0-9a-f]{12}$", out, re.M), out
    assert "3 packages, " in out and " to download, " in out, out
    for name, version, group in (("alpha", "2.0", "-"), ("beta", "1.0", "-"), ("gamma", "1.0", "more")):
        down, inst = _sizes(wheelhouse, name, version)
        row = next(ln.split() for ln in out.splitlines() if ln.split()[:1] == [name])
        assert row[1] == version and row[-1] == group, row
        line = " ".join(row)
        assert f"{human_bytes(down)} {human_bytes(inst)}" in line, (row, down, inst)
    doc = volenv("--root", root, "--json", "sync", "--dry-run", m).json()
    got = {p["name"]: p for p in doc["packages"]}  # type: ignore[union-attr, index]
    assert set(got) == {"alpha", "beta", "gamma"}
    down, inst = _sizes(wheelhouse, "beta", "1.0")
    assert got["beta"]["download_bytes"] == down and got["beta"]["installed_bytes"] == inst, got
    assert got["gamma"]["group"] == "more" and got["alpha"]["version"] == "2.0"
    assert not root.exists()


def test_dry_run_before_the_first_build_on_an_existing_root(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    other = write_manifest(tmp_path / "o", "other", ["gamma==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", other).returncode == 0
    m = write_manifest(tmp_path / "p", "web", ["alpha==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "sync", "--dry-run", m)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^    alpha +1\.0 +[\d.]+ (B|KiB) +[\d.]+ (B|KiB) +-$", r.stdout, re.M), r.stdout
    assert "every package is new" in r.stdout
    assert not (root / "envs" / "web").exists()
