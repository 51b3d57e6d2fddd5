"""Issue 27: every build says where its time went, per step (resolve, stage, install,
post-install, compile, smoke, record, seal), on stderr, in --json and in the build log."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import volenv, write_manifest

STEPS = ["resolve", "stage", "install", "post-install", "compile", "smoke", "record", "seal"]


def test_a_build_prints_and_carries_its_step_timings(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = write_manifest(tmp_path / "m", "app", ["alpha==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    line = next(ln.strip() for ln in r.stderr.splitlines() if ln.strip().startswith("steps: "))
    assert [part.split()[0] for part in line.removeprefix("steps: ").split(", ")] == STEPS, line
    # the volume's build log (the sealed copy is taken at the seal, before its own time is known)
    (log,) = (root / "logs" / "app").glob("build-*.log")
    log = log.read_text()
    assert "# steps: resolve" in log

    m2 = write_manifest(tmp_path / "m2", "app", ["alpha==1.0", "gamma==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "sync", "--json", m2)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert sorted(doc["steps"]) == sorted(STEPS) and all(
        isinstance(v, float) and v >= 0 for v in doc["steps"].values()
    )
    assert sum(doc["steps"].values()) <= doc["seconds"] + 0.01

    r = volenv("--root", root, "sync", m2)  # a reuse builds nothing: no steps line
    assert r.returncode == 0 and "steps: " not in r.stderr, r.stderr
