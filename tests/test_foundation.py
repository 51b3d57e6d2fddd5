"""Issue 2: manifest -> sealed snapshot -> activation, end to end with real uv and venvs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Index, snapshot_of, staging_left, volenv, volenv_popen, write_manifest


def test_sync_builds_then_reuses(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = write_manifest(tmp_path, "app", ["beta==1.0"], find_links=wheelhouse)
    first = volenv("--root", root, "--json", "sync", m)
    assert first.returncode == 0, first.stderr
    doc = first.json()
    assert doc["action"] == "built" and doc["env"] == "app" and doc["version"] == 1
    sid = doc["snapshot"]
    assert isinstance(sid, str) and sid.startswith("app-") and len(sid) == len("app-") + 12
    snap = Path(str(doc["path"]))
    assert snap == root / "envs" / "app" / "snapshots" / sid
    assert (snap / ".volenv" / "seal.json").is_file()
    assert not staging_left(root)
    # bytecode compiled at build time
    assert list(snap.glob("lib/python3.11/site-packages/beta/__pycache__/*.pyc"))
    second = volenv("--root", root, "--json", "sync", m)
    assert second.returncode == 0, second.stderr
    again = second.json()
    assert again["action"] == "reused" and again["snapshot"] == sid
    assert float(str(again["seconds"])) < 0.5
    hist = (root / "envs" / "app" / "history.jsonl").read_text().splitlines()
    assert len(hist) == 1 and json.loads(hist[0])["snapshot"] == sid
    events = (root / "logs" / "app" / "events.jsonl").read_text()
    assert "build-done" in events


def test_run_is_inside_snapshot_and_passes_exit_code_and_signals(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    m = write_manifest(
        tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse, extra='[activate]\nenv = {GREETING = "hi"}\n'
    )
    assert volenv("--root", root, "sync", m).returncode == 0
    code = (
        "import os, sys; print(sys.prefix); print(os.environ['GREETING']); print(os.environ['VIRTUAL_ENV'])"
    )
    r = volenv("--root", root, "run", "--manifest", m, "--", "python", "-c", code)
    assert r.returncode == 0, r.stderr
    prefix, greeting, venv = r.stdout.split()
    assert Path(prefix).is_relative_to(root / "envs")
    assert greeting == "hi" and venv == prefix
    # console scripts of the snapshot are on PATH
    r = volenv("--root", root, "run", "--manifest", m, "--", "alpha-cli")
    assert r.returncode == 0 and "alpha says hi" in r.stdout
    # exit status is the child's own
    r = volenv("--root", root, "run", "--manifest", m, "--", "python", "-c", "raise SystemExit(7)")
    assert r.returncode == 7
    # exec: same pid, SIGTERM reaches the child's handler
    flag = tmp_path / "got-term"
    child = (
        "import signal, sys, time, pathlib\n"
        f"def h(*a):\n    pathlib.Path({str(flag)!r}).write_text('term')\n    sys.exit(42)\n"
        "signal.signal(signal.SIGTERM, h)\nprint('ready', flush=True)\ntime.sleep(30)\n"
    )
    p = volenv_popen(
        "--root", root, "run", "--manifest", m, "--", "python", "-c", child, stdout=subprocess.PIPE
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 42
    assert flag.read_text() == "term"


def test_incremental_sync_downloads_and_hashes_only_new(
    tmp_path: Path, root: Path, package_index: Index
) -> None:
    old = write_manifest(tmp_path / "old", "app", ["beta==1.0"], index_url=package_index.url)
    r1 = volenv("--root", root, "--json", "sync", old)
    assert r1.returncode == 0, r1.stderr
    first = r1.json()
    downloads = package_index.wheel_downloads()
    assert set(downloads) == {"/files/alpha-2.0-py3-none-any.whl", "/files/beta-1.0-py3-none-any.whl"}
    new = write_manifest(tmp_path / "new", "app", ["beta==1.0", "gamma==1.0"], index_url=package_index.url)
    r2 = volenv("--root", root, "--json", "sync", new)
    assert r2.returncode == 0, r2.stderr
    second = r2.json()
    assert second["action"] == "built" and second["snapshot"] != first["snapshot"]
    after = package_index.wheel_downloads()
    # nothing already in the volume's uv cache is fetched again; gamma is new
    assert set(after - downloads) == {"/files/gamma-1.0-py3-none-any.whl"}, after
    stats = second["stats"]
    assert isinstance(stats, dict)
    # only gamma's files and the per-venv metadata files are hashed; beta's 21 modules and
    # their bytecode are reused from the previous snapshot's record
    assert stats["hash_reused"] >= 40, stats
    assert stats["hashed"] < stats["hash_reused"], stats
    assert stats["bytecode_reused"] >= 21, stats
    # the old snapshot still verifies and is still what the old manifest runs
    v = volenv("--root", root, "verify", str(first["snapshot"]), "--level", "full")
    assert v.returncode == 0, v.stderr
    r = volenv(
        "--root",
        root,
        "run",
        "--manifest",
        old,
        "--",
        "python",
        "-c",
        "import os; print(os.environ['VOLENV_SNAPSHOT'])",
    )
    assert r.stdout.strip() == first["snapshot"]
    r = volenv(
        "--root",
        root,
        "run",
        "--manifest",
        new,
        "--",
        "python",
        "-c",
        "import gamma, os; print(os.environ['VOLENV_SNAPSHOT'])",
    )
    assert r.stdout.strip() == second["snapshot"]


def test_root_moved_to_another_path_still_runs(tmp_path: Path, wheelhouse: Path) -> None:
    a = tmp_path / "workspace" / "volenv"
    m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", a, "sync", m).returncode == 0
    b = tmp_path / "runpod-volume" / "volenv"
    b.parent.mkdir()
    os.rename(a, b)
    r = volenv(
        "--root", b, "run", "--manifest", m, "--", "python", "-c", "import alpha, sys; print(sys.prefix)"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(b))
    r = volenv("--root", b, "run", "--manifest", m, "--", "alpha-cli")
    assert r.returncode == 0 and "alpha says hi" in r.stdout, r.stderr
    # the console script also works called by its path, without activation
    sid = snapshot_of(b, "app")
    out = subprocess.run(
        [b / "envs" / "app" / "snapshots" / sid / "bin" / "alpha-cli"], capture_output=True, text=True
    )
    assert "alpha says hi" in out.stdout
    assert volenv("--root", b, "verify", "--all", "--level", "full").returncode == 0


def test_optional_group_failure_is_recorded_required_is_fatal(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    ok = write_manifest(
        tmp_path / "a",
        "app",
        ["delta==1.0"],
        find_links=wheelhouse,
        extra="""
        [optional.extras]
        requirements = ["gamma==1.0"]

        [optional.impossible]
        requirements = ["needs-new-alpha==1.0"]
        """,
    )
    r = volenv("--root", root, "--json", "sync", ok)
    assert r.returncode == 0, r.stderr
    groups = {g["name"]: g for g in r.json()["groups"]}  # type: ignore[union-attr]
    assert groups["extras"]["state"] == "installed"
    assert groups["impossible"]["state"] == "failed"
    good = snapshot_of(root, "app")
    run = volenv(
        "--root",
        root,
        "run",
        "--manifest",
        ok,
        "--",
        "python",
        "-c",
        "import gamma, alpha; print(alpha.__file__)",
    )
    assert run.returncode == 0, run.stderr
    status = volenv("--root", root, "--json", "status").json()
    snaps = status["envs"][0]["snapshots"]  # type: ignore[index]
    assert {g["name"]: g["state"] for g in snaps[0]["groups"]} == {
        "extras": "installed",
        "impossible": "failed",
    }

    bad = write_manifest(
        tmp_path / "b",
        "app",
        ["delta==1.0"],
        find_links=wheelhouse,
        extra="""
        [optional.must]
        requirements = ["needs-new-alpha==1.0"]
        required = true
        """,
    )
    r = volenv("--root", root, "sync", bad)
    assert r.returncode == 7, r.stderr
    assert "must" in r.stderr
    assert snapshot_of(root, "app") == good
    assert not staging_left(root)


def test_failing_smoke_import_and_post_install(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    good = write_manifest(tmp_path / "g", "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", good).returncode == 0
    before = snapshot_of(root, "app")
    smoke = write_manifest(
        tmp_path / "s",
        "app",
        ["explodes==1.0"],
        find_links=wheelhouse,
        extra='[activate]\nsmoke-imports = ["explodes"]\n',
    )
    r = volenv("--root", root, "sync", smoke)
    assert r.returncode == 7 and "smoke" in r.stderr and "boom at import" in r.stderr, r.stderr
    assert "build log:" in r.stderr
    post = write_manifest(
        tmp_path / "p",
        "app",
        ["gamma==1.0"],
        find_links=wheelhouse,
        extra='[build]\npost-install = ["python -c \\"import gamma\\"", ["sh", "-c", "echo patched > $VIRTUAL_ENV/patched.txt; exit 3"]]\n',
    )
    r = volenv("--root", root, "sync", post)
    assert r.returncode == 7 and "post-install" in r.stderr and "exited 3" in r.stderr, r.stderr
    assert snapshot_of(root, "app") == before
    assert not staging_left(root)
    # a successful post-install step's output is sealed into the snapshot's record
    fine = write_manifest(
        tmp_path / "f",
        "app",
        ["gamma==1.0"],
        find_links=wheelhouse,
        extra='[build]\npost-install = [["sh", "-c", "echo patched > $VIRTUAL_ENV/patched.txt"]]\n',
    )
    r = volenv("--root", root, "--json", "sync", fine)
    assert r.returncode == 0, r.stderr
    snap = Path(str(r.json()["path"]))
    assert (snap / "patched.txt").read_text() == "patched\n"
    assert "\tpatched.txt\n" in (snap / ".volenv" / "record").read_text()


def test_run_imports_nothing_heavy(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "volenv",
            "--root",
            str(root),
            "run",
            "--manifest",
            str(m),
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    imported = {
        line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")
    }
    assert {"volenv.start.run", "volenv.start.activation"} <= imported
    heavy_ones = ("typer", "rich", "runpod", "huggingface_hub", "click", "packaging", "psutil", "filelock")
    # json (via re, enum, functools) and typing were a third of a start: the fast path avoids them
    for heavy in (*heavy_ones, "json", "re", "typing", "hashlib", "volenv.base.ui"):
        assert not any(mod == heavy or mod.startswith(heavy + ".") for mod in imported), heavy


def test_lean_json_matches_json_on_every_record(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    """The fast path parses and digests records with `_json` directly; it must agree with
    `json` byte for byte on everything volenv writes, and reject what json rejects."""
    from volenv.base import leanjson

    m = write_manifest(
        tmp_path,
        "app",
        ["alpha==1.0"],
        find_links=wheelhouse,
        extra='[activate]\nenv = {X = "\u00e9\\"q\\"\u2028"}\n',
    )
    assert volenv("--root", root, "sync", m).returncode == 0
    records = [p for p in root.rglob("*.json") if p.is_file()]
    assert len(records) >= 4, records
    for p in records:
        raw = p.read_bytes()
        ours, theirs = leanjson.loads(raw), json.loads(raw)
        assert ours == theirs, p
        assert leanjson.dumps_canonical(ours) == json.dumps(theirs, sort_keys=True, separators=(",", ":"))
    odd = {"f": [1e300, -0.0, 0.1, float("inf")], "s": "\x00\ud800\U0001f600", "n": None, "b": [True, False]}
    assert leanjson.dumps_canonical(odd) == json.dumps(odd, sort_keys=True, separators=(",", ":"))
    assert repr(leanjson.loads(json.dumps(odd, indent=2))) == repr(json.loads(json.dumps(odd, indent=2)))
    for bad in ("", "{", "{} x", "[1,]", "nul", '{"a" 1}', "\ufeff{}"):
        with pytest.raises(ValueError):
            json.loads(bad)
        with pytest.raises(ValueError):
            leanjson.loads(bad)
    with pytest.raises(TypeError):
        leanjson.dumps_canonical({"x": object()})


def test_on_missing_fail_and_build(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    other = write_manifest(tmp_path / "o", "other", ["gamma==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", other).returncode == 0
    m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "run", "--on-missing", "fail", "--manifest", m, "--", "true")
    assert r.returncode == 3
    from volenv.manifest.parse import load_manifest

    digest = load_manifest(m).digest
    assert digest[:16] in r.stderr and f"sync {m}" in r.stderr
    assert not (root / "envs" / "app").exists()
    r = volenv(
        "--root",
        root,
        "run",
        "--on-missing",
        "build",
        "--manifest",
        m,
        "--",
        "python",
        "-c",
        "import alpha; print('ok')",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
    # a root that does not exist at all is a missing volume (exit 8)
    r = volenv("--root", tmp_path / "nope", "run", "--on-missing", "fail", "--manifest", m, "--", "true")
    assert r.returncode == 8 and "does not exist" in r.stderr


def test_env_command_for_pod_shell(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = write_manifest(
        tmp_path,
        "app",
        ["alpha==1.0"],
        find_links=wheelhouse,
        extra='[activate]\nenv = {QUOTED = "it\'s $HOME"}\n',
    )
    assert volenv("--root", root, "sync", m).returncode == 0
    r = volenv("--root", root, "env", "--env", "app")
    assert r.returncode == 0, r.stderr
    script = (
        r.stdout + "\npython -c \"import alpha, os, sys; print(sys.prefix); print(os.environ['QUOTED'])\"\n"
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    lines = out.stdout.splitlines()
    assert Path(lines[0]).is_relative_to(root), out.stderr
    assert lines[1] == "it's $HOME"
    j = volenv("--root", root, "env", "--manifest", m, "--format", "json").json()
    assert j["snapshot"] == snapshot_of(root, "app")
    assert j["variables"]["VIRTUAL_ENV"] == j["path"]  # type: ignore[index]


def test_interpreter_mismatch_is_named(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    sid = snapshot_of(root, "app")
    seal_path = root / "envs" / "app" / "snapshots" / sid / ".volenv" / "seal.json"
    seal = json.loads(seal_path.read_text())
    # simulate an image whose interpreter is a different build: move the seal's interpreter
    fake = tmp_path / "python3.11"
    shutil.copy(seal["fingerprint"]["executable"], fake)
    with open(fake, "ab") as fh:
        fh.write(b"\0")
    seal["fingerprint"]["executable"] = str(fake)
    from volenv.store.sealcheck import seal_self_digest

    seal["self_sha256"] = seal_self_digest(seal)
    seal_path.write_text(json.dumps(seal))
    r = volenv("--root", root, "run", "--on-missing", "fail", "--manifest", m, "--", "true")
    assert r.returncode == 4
    assert str(fake) in r.stderr and "different build" in r.stderr


def test_status_and_list(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = write_manifest(tmp_path, "app", ["beta==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    volenv("--root", root, "run", "--manifest", m, "--", "true")
    doc = volenv("--root", root, "--json", "status").json()
    env = doc["envs"][0]  # type: ignore[index]
    snap = env["snapshots"][0]
    assert env["name"] == "app" and env["current"] == snap["id"] and snap["current"] is True
    assert snap["valid"] is True and snap["apparent_bytes"] > 0 and snap["last_used"] is not None
    assert snap["link_mode"] == "hardlink" and snap["unique_bytes"] is not None
    assert snap["unique_bytes"] < snap["apparent_bytes"] + 1_000_000
    human = volenv("--root", root, "status")
    assert human.returncode == 0 and snap["id"] in human.stdout and human.stderr == "", human.stderr
    listed = volenv("--root", root, "--json", "list").json()
    assert listed["envs"][0]["snapshots"][0]["unique_bytes"] is None  # type: ignore[index]


def test_sync_then_concurrent_noop_is_fast(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    t0 = time.perf_counter()
    r = volenv("--root", root, "--json", "sync", m)
    assert r.json()["action"] == "reused"
    assert time.perf_counter() - t0 < 5  # a subprocess with typer imported; the figure is in bench/


def test_lockfile_manifest_builds_from_the_lock(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    """A PEP 751 pylock.toml (written by uv itself) replaces resolution."""
    from volenv.build.uvtool import uv_bin

    req = tmp_path / "req.in"
    req.write_text("beta==1.0\n")
    lock = tmp_path / "pylock.toml"
    out = subprocess.run(
        [
            uv_bin(),
            "pip",
            "compile",
            str(req),
            "-o",
            str(lock),
            "--no-index",
            "--find-links",
            str(wheelhouse),
            "--python",
            sys.executable,
            "-q",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "UV_CACHE_DIR": str(tmp_path / "uvc")},
    )
    assert out.returncode == 0, out.stderr
    m = tmp_path / "locked.toml"
    m.write_text(
        f'name = "locked"\nlockfile = "pylock.toml"\n[index]\nno-index = true\nfind-links = ["{wheelhouse}"]\n'
    )
    r = volenv("--root", root, "--json", "sync", m)
    assert r.returncode == 0, r.stderr
    first = r.json()
    assert first["action"] == "built"
    run = volenv(
        "--root",
        root,
        "run",
        "--manifest",
        m,
        "--",
        "python",
        "-c",
        "import beta, alpha; print(alpha.__file__)",
    )
    assert run.returncode == 0, run.stderr
    # a changed lockfile is a different manifest: the bytes alias must not hide it
    lock.write_text(lock.read_text() + "\n")
    r = volenv("--root", root, "run", "--on-missing", "fail", "--manifest", m, "--", "true")
    assert r.returncode == 3, r.stderr
    r = volenv("--root", root, "--json", "sync", m)
    assert r.returncode == 0 and r.json()["manifest_digest"] != first["manifest_digest"]
