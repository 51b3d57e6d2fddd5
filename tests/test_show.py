"""`show`, `diff`, `sync --dry-run`'s package diff, `history`'s changes, and rollback against
`run --manifest` (issue 16, items 9, 11 and 12): real builds with uv from tiny local wheels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Result, serve_bytes, snapshot_of, volenv, write_manifest

EXTRA = """
[optional.extra]
requirements = ["gamma"]
"""
MORE = """
[optional.more]
requirements = ["no-such-package"]
"""

PRINT_SNAPSHOT = ["python", "-c", "import os; print(os.environ['VOLENV_SNAPSHOT'])"]


def _ok(r: Result) -> Result:
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> tuple[Path, str, str, Path]:
    """Env 'web': S1 (alpha 1.0, beta; group extra installs gamma), then S2 (alpha 2.0; group
    `more` fails to resolve), S2 current. Read-only tests share it."""
    tmp = tmp_path_factory.mktemp("show")
    root = tmp / "volume" / "volenv"
    m1 = write_manifest(tmp / "m1", "web", ["alpha==1.0", "beta"], find_links=wheelhouse, extra=EXTRA)
    _ok(volenv("--root", root, "sync", m1))
    s1 = snapshot_of(root, "web")
    m2 = write_manifest(tmp / "m2", "web", ["alpha==2.0", "beta"], find_links=wheelhouse, extra=EXTRA + MORE)
    _ok(volenv("--root", root, "sync", m2))
    return root, s1, snapshot_of(root, "web"), m2


def test_show_env_id_and_prefix(two: tuple[Path, str, str, Path]) -> None:
    root, s1, s2, m2 = two
    r = _ok(volenv("--root", root, "show", "web"))
    out = r.stdout
    assert f"snapshot  : {s2} (current)" in out, out
    for expect in ("alpha", "2.0", "gamma", "extra", "link mode : hardlink", f"{m2} (built)", "cpython 3.11"):
        assert expect in out, (expect, out)
    assert "failed" in out and "more" in out  # the group that did not resolve
    size = next(line for line in out.splitlines() if line.startswith("size"))
    unit = size.split()[3]  # "size      : 29.7 KiB apparent, 112.0 KiB unique, ..."
    assert size.count(unit) == 2, size  # apparent and unique in one unit
    # the hex part alone, and a prefix with the env name, both find S1
    for prefix in (s1.split("-")[1][:6], s1[:8]):
        doc = _ok(volenv("--root", root, "--json", "show", prefix)).json()
        assert doc["command"] == "show" and doc["snapshot"] == s1 and doc["current"] is False
        packages = {p["name"]: (p["version"], p["group"]) for p in doc["packages"]}  # type: ignore[union-attr]
        assert packages == {"alpha": ("1.0", None), "beta": ("1.0", None), "gamma": ("1.0", "extra")}
        assert isinstance(doc["apparent_bytes"], int) and isinstance(doc["unique_bytes"], int)
        assert doc["link_mode"] == "hardlink" and isinstance(doc["created"], float)
        assert doc["manifests"][0]["how"] == "built"  # type: ignore[index]


def test_show_and_diff_unknown_or_ambiguous_is_exit_2(two: tuple[Path, str, str, Path]) -> None:
    root, s1, _s2, _m2 = two
    for args in (["show", "nosuch"], ["diff", s1, "nosuch"], ["show", "../web"]):
        r = volenv("--root", root, *args)
        assert r.returncode == 2 and r.stdout == "", (args, r.stdout, r.stderr)
        lines = r.stderr.splitlines()
        assert lines[0].startswith("error: ") and lines[1].startswith("  hint: "), r.stderr
        doc = json.loads(volenv("--root", root, "--json", *args).stdout)
        assert doc["error"]["code"] == 2, doc
    r = volenv("--root", root, "show", "web-")
    assert r.returncode == 2 and "matches 2 snapshots" in r.stderr, r.stderr


def test_diff_packages_groups_and_json(two: tuple[Path, str, str, Path]) -> None:
    root, s1, s2, _m2 = two
    r = _ok(volenv("--root", root, "diff", s1, "web"))
    assert r.stdout.splitlines() == ["~ alpha 1.0 -> 2.0", "+ group more (failed)"], r.stdout
    assert f"{s1} -> {s2}" in r.stderr
    doc = _ok(volenv("--root", root, "--json", "diff", "web", s1[:10])).json()
    assert doc["a"] == s2 and doc["b"] == s1
    changes = doc["changes"]
    assert isinstance(changes, dict)
    assert changes["changed"] == [{"name": "alpha", "old": "2.0", "new": "1.0"}]
    assert changes["added"] == [] and changes["removed"] == []
    assert changes["groups"] == [{"name": "more", "old": "failed", "new": None}]
    assert _ok(volenv("--root", root, "diff", "web", s2)).stdout.strip() == "no changes"


def test_sync_dry_run_prints_the_diff_against_current(
    two: tuple[Path, str, str, Path], tmp_path: Path, wheelhouse: Path
) -> None:
    root, _s1, s2, _m2 = two
    m = write_manifest(tmp_path, "web", ["alpha==1.0", "beta", "gamma"], find_links=wheelhouse)
    before = sorted(os.listdir(root / "envs" / "web" / "snapshots"))
    r = _ok(volenv("--root", root, "sync", "--dry-run", m))
    assert "would build" in r.stdout and f"changes against current {s2}:" in r.stdout, r.stdout
    for line in ("alpha 2.0 -> 1.0", "group -extra", "group -more"):
        assert f"    {line}\n" in r.stdout, (line, r.stdout)
    assert sorted(os.listdir(root / "envs" / "web" / "snapshots")) == before  # nothing built
    doc = _ok(volenv("--root", root, "--json", "sync", "--dry-run", m)).json()
    assert doc["changes"]["changed"] == [{"name": "alpha", "old": "2.0", "new": "1.0"}]  # type: ignore[index]


def test_history_shows_changes_in_80_columns(two: tuple[Path, str, str, Path]) -> None:
    root, s1, s2, _m2 = two
    from ptyrun import run_pty

    tty = run_pty("--root", root, "history", "web", columns=80, stdout_on_tty=True, env={"NO_COLOR": "1"})
    assert all(len(line.rstrip()) <= 80 for line in tty.tty.replace("\r", "").splitlines()), tty.tty
    assert s1 in tty.tty and s2 in tty.tty, tty.tty  # the ids whole
    r = _ok(volenv("--root", root, "history", "web"))  # piped: one whole row a line
    rows = r.stdout.splitlines()
    assert any(s2 in line and "alpha 1.0 -> 2.0" in line for line in rows), r.stdout
    assert any(s1 in line and "+alpha 1.0" in line for line in rows), r.stdout
    doc = _ok(volenv("--root", root, "--json", "history", "web")).json()
    gens = doc["generations"]
    assert isinstance(gens, list)
    assert gens[0]["summary"] == "+alpha 1.0, +beta 1.0, +gamma 1.0, group +extra"
    assert gens[1]["changes"]["changed"] == [{"name": "alpha", "old": "1.0", "new": "2.0"}]


def _run(root: Path, manifest: Path, **kw: object) -> Result:
    return volenv("--root", root, "run", "--manifest", manifest, "--", *PRINT_SNAPSHOT)


def test_rollback_and_run_manifest_agree(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    """m1 -> S1, m2 -> S2, m3 -> S3; `rollback --to S2`: m1 keeps its older S1, m2 runs S2, m3's
    newer S3 and a manifest never built run S2 (saying so, building nothing); `run --env` runs
    S2; history marks one generation; `sync m3` ends the rollback loudly."""
    ms, sids = [], []
    for i, alpha in enumerate(("1.0", "2.0", "2.0"), start=1):
        reqs = ["alpha==" + alpha] + (["gamma"] if i == 3 else [])
        ms.append(write_manifest(tmp_path / f"m{i}", "app", reqs, find_links=wheelhouse))
        _ok(volenv("--root", root, "sync", ms[-1]))
        sids.append(snapshot_of(root, "app"))
    s1, s2, s3 = sids
    r = _ok(volenv("--root", root, "rollback", "app", "--to", s2))
    assert f"rollback: app -> {s2} (was {s3})" in r.stderr, r.stderr
    assert f"run --manifest {ms[0]}: runs {s1} (keeps its snapshot: older" in r.stderr, r.stderr
    assert f"run --manifest {ms[1]}: runs {s2} (built it: the rollback target)" in r.stderr, r.stderr
    assert f"run --manifest {ms[2]}: runs {s2} ({s3} is newer than the rollback target)" in r.stderr
    doc = _ok(volenv("--root", root, "--json", "rollback", "app", "--to", s2)).json()
    assert doc["changed"] is False  # already there: nothing written, the standing rollback's fates
    fates = doc["manifests"]
    assert {f["manifest"]: f["runs"] for f in fates} == {str(ms[0]): s1, str(ms[1]): s2, str(ms[2]): s2}  # type: ignore[union-attr]

    for m, expect, says in ((ms[0], s1, False), (ms[1], s2, False), (ms[2], s2, True)):
        r = _ok(_run(root, m))
        assert r.stdout.strip() == expect, (m, r.stdout, r.stderr)
        assert ("is rolled back to" in r.stderr) == says, r.stderr
    assert f"instead of {s3}; `volenv sync {ms[2]}` ends the rollback" in _run(root, ms[2]).stderr
    # a manifest with no snapshot: the rollback target runs, nothing is built
    new = write_manifest(tmp_path / "m4", "app", ["alpha==2.0", "beta"], find_links=wheelhouse)
    r = _ok(_run(root, new))
    assert r.stdout.strip() == s2 and "(it has no snapshot yet)" in r.stderr, r.stderr
    assert len(os.listdir(root / "envs" / "app" / "snapshots")) == 3
    assert _ok(volenv("--root", root, "run", "--env", "app", "--", *PRINT_SNAPSHOT)).stdout.strip() == s2

    # history: the current snapshot appears twice (gen 2 and the rollback: the second one, to
    # the current snapshot, wrote nothing), one '*'
    hist = _ok(volenv("--root", root, "history", "app")).stdout
    assert hist.count("*") == 1 and hist.splitlines()[-1].split()[:2] == ["4", "*"], hist

    # -qq: nothing but errors, not even that warning
    r = _ok(volenv("--root", root, "sync", "--dry-run", "-qq", ms[2]))
    assert r.stdout == "" and r.stderr == "", (r.stdout, r.stderr)
    # sync: dry run says it would end the rollback; sync does, loudly; m3 runs S3 again
    r = _ok(volenv("--root", root, "sync", "--dry-run", ms[2]))
    assert "this sync would make" in r.stderr and "end the rollback" in r.stderr, r.stderr
    assert "+gamma 1.0" in r.stdout
    r = _ok(volenv("--root", root, "sync", ms[2]))
    assert f"was rolled back to {s2}" in r.stderr and f"makes {s3} current and ends the rollback" in r.stderr
    r = _ok(_run(root, ms[2]))
    assert r.stdout.strip() == s3 and "rolled back" not in r.stderr, r.stderr


def test_a_sync_of_the_rollback_target_keeps_the_rollback(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    m1 = write_manifest(tmp_path / "a", "app", ["alpha==1.0"], find_links=wheelhouse)
    m2 = write_manifest(tmp_path / "b", "app", ["alpha==2.0"], find_links=wheelhouse)
    _ok(volenv("--root", root, "sync", m1))
    s1 = snapshot_of(root, "app")
    _ok(volenv("--root", root, "sync", m2))
    _ok(volenv("--root", root, "rollback", "app"))
    r = _ok(volenv("--root", root, "sync", m1))  # current already: no switch, the rollback stands
    assert "ends the rollback" not in r.stderr, r.stderr
    assert _ok(_run(root, m2)).stdout.strip() == s1
    # a rollback target whose seal broke: exit 4 naming it, and nothing rebuilt past the rollback
    seal = root / "envs" / "app" / "snapshots" / s1 / ".volenv" / "seal.json"
    seal.write_text(seal.read_text().replace('"env"', '"emv"'))
    r = _run(root, m2)
    assert r.returncode == 4 and f"'app' is rolled back to {s1}, which is not usable" in r.stderr, r.stderr
    assert snapshot_of(root, "app") == s1


def test_run_stays_lean_while_rolled_back(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m1 = write_manifest(tmp_path / "a", "app", ["alpha==1.0"], find_links=wheelhouse)
    m2 = write_manifest(tmp_path / "b", "app", ["alpha==2.0"], find_links=wheelhouse)
    _ok(volenv("--root", root, "sync", m1))
    _ok(volenv("--root", root, "sync", m2))
    _ok(volenv("--root", root, "rollback", "app"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "VOLENV_ROOT")}
    argv = ["-X", "importtime", "-m", "volenv", "--root", str(root), "run", "--manifest", str(m2)]
    proc = subprocess.run(
        [sys.executable, *argv, "--", "true"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0 and "is rolled back to" in proc.stderr, proc.stderr
    imported = {ln.split("|")[-1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")}
    for heavy in ("json", "re", "typing", "hashlib", "packaging", "rich", "typer", "volenv.build"):
        assert not any(mod == heavy or mod.startswith(heavy + ".") for mod in imported), heavy


def test_doctor_names_the_default_root(tmp_path: Path) -> None:
    if any(os.path.isdir(m) for m in ("/runpod-volume", "/workspace")):
        pytest.skip("a mount point decides the root on this machine")
    r = volenv("doctor", env={"XDG_DATA_HOME": str(tmp_path), "HOME": str(tmp_path)})
    assert f"{tmp_path / 'volenv'} (from xdg)" in r.stdout, (r.stdout, r.stderr)
    assert "VOLENV_ROOT" not in r.stdout and "--root" not in r.stdout


def test_show_lists_models_and_diff_their_changes(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    import hashlib

    data = b"weights" * 100
    sha = hashlib.sha256(data).hexdigest()
    with serve_bytes(data) as base:
        extra = f'[[models]]\nname = "w"\nurl = "{base}/w.bin"\nsha256 = "{sha}"\nsize = {len(data)}\n'
        m1 = write_manifest(tmp_path / "a", "app", ["alpha==1.0"], find_links=wheelhouse)
        m2 = write_manifest(tmp_path / "b", "app", ["alpha==2.0"], find_links=wheelhouse, extra=extra)
        _ok(volenv("--root", root, "sync", m1))
        s1 = snapshot_of(root, "app")
        _ok(volenv("--root", root, "sync", m2))
    doc = _ok(volenv("--root", root, "--json", "show", "app")).json()
    assert doc["models"] == [
        {"name": "w", "source": f"{base}/w.bin sha256:{sha[:12]}", "optional": False, "present": True}
    ]
    r = _ok(volenv("--root", root, "diff", s1, "app"))
    assert f"+ model w ({base}/w.bin sha256:{sha[:12]})" in r.stdout.splitlines(), r.stdout
