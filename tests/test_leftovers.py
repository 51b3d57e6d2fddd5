"""Issue 29, item 10, the leftovers of a first hour: an env whose first build failed is one line
in status/list (not a table of headers); doctor names an interrupt as one; `pin` of a pinned
snapshot says it already was; a manifest typo gets a "did you mean"; status on a missing root
exits 8 as gc and verify do."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from conftest import snapshot_of, volenv, volenv_popen, write_manifest


def test_a_failed_first_build_is_one_line_in_status_and_list(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    ok = write_manifest(tmp_path / "ok", "fine", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", ok).returncode == 0
    bad = write_manifest(
        tmp_path / "bad",
        "broken",
        ["explodes==1.0"],
        find_links=wheelhouse,
        extra='[activate]\nsmoke-imports = ["explodes"]\n',
    )
    assert volenv("--root", root, "sync", bad).returncode == 7
    for cmd in ("status", "list"):
        r = volenv("--root", root, cmd)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        broken = [ln for ln in lines if "broken" in ln]
        assert len(broken) == 1 and "no snapshots" in broken[0], r.stdout
        heads = [ln for ln in lines if ln.split()[:2] == ["-", "snapshot"]]
        assert len(heads) == 1, r.stdout  # the table of `fine` only


def test_doctor_names_an_interrupted_build(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    extra = '[build]\npost-install = ["sleep 30"]\n'
    m = write_manifest(tmp_path, "slow", ["alpha==1.0"], find_links=wheelhouse, extra=extra)
    proc = volenv_popen("--root", root, "sync", m)
    deadline = time.monotonic() + 60
    logs = root / "logs" / "slow"
    while time.monotonic() < deadline:  # the post-install step has started
        if any("post-install 0" in p.read_text(errors="replace") for p in logs.glob("build-*.log")):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    r = volenv("--root", root, "doctor")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("last failure:"))
    assert line.rstrip().endswith(": interrupted"), line


def test_pin_of_a_pinned_snapshot_says_so(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    sid = snapshot_of(root, "app")
    first = volenv("--root", root, "pin", sid)
    assert first.returncode == 0 and "pinned" in first.stderr and "already" not in first.stderr, first.stderr
    again = volenv("--root", root, "pin", sid)
    assert again.returncode == 0 and f"{sid} is already pinned; nothing changed" in again.stderr, again.stderr
    doc = volenv("--root", root, "--json", "pin", sid).json()
    assert doc["action"] == "already pinned" and doc["changed"] is False, doc


def test_a_manifest_typo_gets_a_did_you_mean(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    text = m.read_text()
    m.write_text(text.replace("requirements =", "requirments ="))
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 2 and "unknown key 'requirments'" in r.stderr, r.stderr
    assert "did you mean 'requirements'?" in r.stderr, r.stderr
    m.write_text(text + "\n[activate]\nsmoke-import = ['alpha']\n")
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 2 and "did you mean 'activate.smoke-imports'?" in r.stderr, r.stderr
    m.write_text(text.replace("requirements =", "zzzz ="))  # nothing close: no guess
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 2 and "did you mean" not in r.stderr, r.stderr


def test_status_on_a_missing_root_exits_8(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for cmd in (["status"], ["list"], ["gc", "--dry-run"], ["verify", "--all"]):
        r = volenv("--root", missing, *cmd)
        assert r.returncode == 8 and "does not exist" in r.stderr, (cmd, r.returncode, r.stderr)
    doc = volenv("--root", missing, "--json", "status")
    assert doc.returncode == 8 and doc.json()["error"]["kind"] == "volume"  # type: ignore[index]
    assert not missing.exists()
