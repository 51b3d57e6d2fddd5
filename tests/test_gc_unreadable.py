"""gc keeps an env it cannot read: a `snapshots/` that fails to list (EACCES here, EIO on a
sick volume) is never taken as empty, so a live env without `current` is not an orphan."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import base_env, volenv, write_manifest

# root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH obeys permission bits like anyone else
NO_DAC = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs setpriv as root")
def test_env_with_unreadable_snapshots_is_kept(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = write_manifest(tmp_path / "m", "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    env = root / "envs" / "app"
    os.unlink(env / "current")  # snapshots but no current pointer (a crash, a hand edit)
    (env / "snapshots").chmod(0)
    try:
        cmd = [*NO_DAC, sys.executable, "-m", "volenv", "--root", str(root), "--json", "gc", "--dry-run"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=base_env(), timeout=120)
        assert r.returncode == 0, r.stderr
        items = json.loads(r.stdout)["result"]["plan"]["items"]
        envs = [(i["env"], i["action"]) for i in items if i["kind"] == "env"]
        assert envs == [("app", "keep")], envs
        why = next(i["reasons"] for i in items if i["kind"] == "env")
        assert "cannot read snapshots/" in why[0], why
        cmd = [*NO_DAC, sys.executable, "-m", "volenv", "--root", str(root), "gc", "--yes"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=base_env(), timeout=120)
    finally:
        (env / "snapshots").chmod(0o755)
    assert env.is_dir() and any((env / "snapshots").iterdir()), r.stderr
