"""Issue 14: gc re-checks its roots at execution (models included), reclaims packs and killed
fetches' temps; materialized copies are checked at the --verify level, stale ones are
re-extracted, and the default materialize directory is private."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Result, serve_bytes, snapshot_of, volenv, volenv_popen, write_manifest

MODEL = b"w" * 8192
SHA = hashlib.sha256(MODEL).hexdigest()
OLD = time.time() - 30 * 86400


@pytest.fixture
def model_url() -> Iterator[str]:
    with serve_bytes(MODEL) as base:
        yield f"{base}/w.bin"


def _stopped(proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Wait until the process stopped itself at its fault point (SIGSTOP)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        time.sleep(0.05)
    raise AssertionError("gc never reached its execution")


def _gc_paused(root: Path) -> subprocess.Popen[str]:
    proc = volenv_popen(
        "--root", root, "--json", "gc", "--yes", "--keep", "0", "--keep-within", "0s",
        env={"VOLENV_FAULT": "gc-execute:pause"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _stopped(proc)
    return proc


def _resume(proc: subprocess.Popen[str]) -> Result:
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    return Result(proc.returncode, out, err)


def test_gc_keeps_a_model_that_a_sync_references_during_the_prompt(
    tmp_path: Path, root: Path, wheelhouse: Path, model_url: str
) -> None:
    plain = write_manifest(tmp_path / "p", "app", ["alpha==1.0"], find_links=wheelhouse)
    extra = f'[[models]]\nname = "weights"\nurl = "{model_url}"\nsha256 = "{SHA}"\nsize = {len(MODEL)}\n'
    with_model = write_manifest(tmp_path / "w", "app", ["alpha==1.0"], find_links=wheelhouse, extra=extra)
    assert volenv("--root", root, "sync", plain).returncode == 0
    assert volenv("--root", root, "models", "fetch", with_model).returncode == 0
    dry = volenv("--root", root, "--json", "gc", "--dry-run", "--keep", "0", "--keep-within", "0s").json()
    models = [i for i in dry["result"]["plan"]["items"] if i["kind"] == "model"]  # type: ignore[index]
    assert [m["action"] for m in models] == ["remove"]  # nothing references it yet
    gc = _gc_paused(root)
    r = volenv("--root", root, "sync", with_model)  # during gc's prompt: now it is referenced
    assert r.returncode == 0, r.stderr
    done = _resume(gc)
    assert done.returncode == 0, done.stderr
    outcomes = json.loads(done.stdout)["result"]["outcomes"]
    kept = [o for o in outcomes if o["kind"] == "model"]
    assert kept and kept[0]["kept"] and "referenced after the plan" in kept[0]["detail"]
    assert list((root / "models" / "records").glob("weights.*.json"))
    assert next((root / "models" / "files" / "weights").rglob("w.bin")).read_bytes() == MODEL
    r = volenv("--root", root, "run", "--manifest", with_model, "--", "sh", "-c", "cat $VOLENV_MODEL_WEIGHTS")
    assert r.returncode == 0 and r.stdout.encode() == MODEL, r.stderr


def test_gc_keeps_a_snapshot_that_became_current_with_a_note(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    m1 = write_manifest(tmp_path / "a", "app", ["alpha==1.0"], find_links=wheelhouse)
    m2 = write_manifest(tmp_path / "b", "app", ["alpha==2.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m1).returncode == 0
    first = snapshot_of(root, "app")
    assert volenv("--root", root, "sync", m2).returncode == 0
    gc = _gc_paused(root)
    assert volenv("--root", root, "rollback", "app").returncode == 0
    assert snapshot_of(root, "app") == first
    done = _resume(gc)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"]
    [o] = [o for o in doc["result"]["outcomes"] if o["kind"] == "snapshot"]
    assert o["kept"] and "became current" in o["detail"]
    assert (root / "envs" / "app" / "snapshots" / first / ".volenv" / "seal.json").is_file()
    # the plain renderer says it as a note, not a failure
    text = volenv("--root", root, "gc", "--yes", "--keep", "0", "--keep-within", "0s")
    assert text.returncode == 0, text.stderr


def test_gc_reclaims_packs_and_killed_fetches(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m1 = write_manifest(tmp_path / "a", "app", ["alpha==1.0"], find_links=wheelhouse)
    m2 = write_manifest(tmp_path / "b", "app", ["beta==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", "--pack", m1).returncode == 0
    old_sid = snapshot_of(root, "app")
    assert volenv("--root", root, "sync", "--pack", m2).returncode == 0
    blobs = root / "packs" / "blobs"
    kept_ids = {
        p["id"]
        for p in json.loads((root / "packs" / "snapshots" / f"{snapshot_of(root, 'app')}.json").read_text())[
            "packs"
        ]
    }
    orphan = blobs / ("e" * 64 + ".tar.zst")  # what a failed pull leaves
    orphan.write_bytes(os.urandom(1 << 20))
    fresh = blobs / ("d" * 64 + ".tar.zst")  # maybe a pack about to write its manifest
    fresh.write_bytes(b"new")
    temp = blobs / f".{'c' * 64}.tar.zst.deadhost-7-abcd"
    temp.write_bytes(os.urandom(1 << 19))
    part_dir = root / "models" / "files" / "weights" / SHA[:16]
    part_dir.mkdir(parents=True)
    part = part_dir / ".w.bin.part-deadhost-9-abcd"
    part.write_bytes(os.urandom(1 << 19))
    live_part = part_dir / ".w.bin.part-livehost-9-abcd"
    live_part.write_bytes(b"being written")
    for p in [*blobs.iterdir(), part]:
        if p != fresh:
            os.utime(p, (OLD, OLD))
    dry = volenv("--root", root, "--json", "gc", "--dry-run", "--keep", "0", "--keep-within", "0s")
    plan = dry.json()["result"]["plan"]  # type: ignore[index]
    removes = {i["path"] for i in plan["items"] if i["action"] == "remove"}  # type: ignore[index]
    assert {str(orphan), str(temp), str(part)} <= removes
    assert str(root / "packs" / "snapshots" / f"{old_sid}.json") in removes
    assert str(fresh) not in removes and str(live_part) not in removes
    assert plan["freed_bytes"] >= (1 << 20) + (1 << 20)  # type: ignore[index]
    r = volenv("--root", root, "--json", "gc", "--yes", "--keep", "0", "--keep-within", "0s")
    assert r.returncode == 0, r.stderr
    left = {p.name.split(".")[0] for p in blobs.iterdir() if not p.name.startswith(".")}
    assert kept_ids <= left and orphan.name.split(".")[0] not in left
    assert not temp.exists() and not part.exists() and fresh.exists() and live_part.exists()
    assert not (root / "packs" / "snapshots" / f"{old_sid}.json").exists()
    assert r.json()["result"]["freed_bytes"] >= (1 << 20)  # type: ignore[index]
    # the kept snapshot still materializes from its packs
    r = volenv(
        "--root", root, "run", "--materialize", "always", "--materialize-dir", tmp_path / "l",
        "--env", "app", "--", "python", "-c", "import beta",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- materialize


@pytest.fixture
def packed(tmp_path: Path, root: Path, wheelhouse: Path) -> str:
    m = write_manifest(tmp_path / "m", "app", ["alpha==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "sync", "--pack", m)
    assert r.returncode == 0, r.stderr
    return snapshot_of(root, "app")


def _mat(root: Path, local: Path | None, *extra: str, env: dict[str, str] | None = None) -> Result:
    where = ["--materialize-dir", str(local)] if local else []
    code = "import sys, alpha; print(sys.prefix); alpha.main()"
    return volenv(
        "--root", root, "run", "--materialize", "always", *where, *extra, "--env", "app",
        "--", "python", "-c", code, env=env,
    )  # fmt: skip


def test_edited_copy_is_reextracted_at_the_verify_level(tmp_path: Path, root: Path, packed: str) -> None:
    local = tmp_path / "local"
    r = _mat(root, local)
    assert r.returncode == 0 and r.stdout.split() == [str(local / packed), "alpha", "says", "hi"], r.stderr
    init = next((local / packed).glob("lib/python*/site-packages/alpha/__init__.py"))
    mode = init.stat().st_mode
    text = init.read_text().replace("alpha says hi", "alpha EVIL!!!")  # same size: only full sees it
    init.chmod(0o644)
    init.write_text(text)
    init.chmod(mode & 0o7777)
    os.utime(init, (OLD, OLD))  # not the mtime its bytecode names: the edit is what would run
    r = _mat(root, local, "--verify", "stat")
    # stat checks types, sizes and modes: an equal-size edit passes it, as on the volume
    assert "reusing the complete local copy" in r.stderr and "EVIL" in r.stdout, r.stderr
    r = _mat(root, local, "--verify", "full")
    assert r.returncode == 0, r.stderr
    assert "EVIL" not in r.stdout and "alpha says hi" in r.stdout
    assert "re-extracting" in r.stderr and "extracted" in r.stderr
    init.write_text(text + "# longer\n")
    r = _mat(root, local, "--verify", "stat")
    assert r.returncode == 0 and "EVIL" not in r.stdout and "re-extracting" in r.stderr


def test_a_copy_without_its_mark_is_reextracted(tmp_path: Path, root: Path, packed: str) -> None:
    """A start killed after the copy landed but before its mark (or a copy whose mark was
    lost) was exit 1 "Directory not empty"; it is replaced."""
    local = tmp_path / "local"
    assert _mat(root, local).returncode == 0
    (local / packed / ".volenv" / "materialized.json").unlink()
    r = _mat(root, local)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == str(local / packed) and "extracted" in r.stderr
    assert (local / packed / ".volenv" / "materialized.json").is_file()
    deadline = time.monotonic() + 60  # the old copy is deleted after the new one, detached
    while [p.name for p in local.iterdir()] != [packed]:
        assert time.monotonic() < deadline, sorted(p.name for p in local.iterdir())
        time.sleep(0.05)


def test_default_materialize_dir_is_private(tmp_path: Path, root: Path, packed: str) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir(mode=0o1777)
    env = {"TMPDIR": str(tmp), "XDG_RUNTIME_DIR": ""}
    r = _mat(root, None, env=env)
    assert r.returncode == 0, r.stderr
    base = tmp / f"volenv-{os.geteuid()}"
    assert r.stdout.split()[0] == str(base / "materialized" / packed)
    for d in (base, base / "materialized"):
        st = d.lstat()
        assert st.st_uid == os.geteuid() and (st.st_mode & 0o777) == 0o700, oct(st.st_mode)
    # $XDG_RUNTIME_DIR when it is a private directory of this user
    runtime = tmp_path / "run-user"
    runtime.mkdir(mode=0o700)
    r = _mat(root, None, env={"XDG_RUNTIME_DIR": str(runtime), "TMPDIR": str(tmp)})
    assert r.stdout.split()[0] == str(runtime / "volenv-materialized" / packed), r.stderr


@pytest.mark.parametrize("trap", ["world-writable", "symlink", "other-owner"])
def test_a_planted_default_dir_is_refused(tmp_path: Path, root: Path, packed: str, trap: str) -> None:
    """Someone else pre-created the per-user name in a shared /tmp: never used."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(mode=0o1777)
    planted = tmp / f"volenv-{os.geteuid()}"
    outside = tmp_path / "attacker"
    (outside / "materialized").mkdir(parents=True)
    if trap == "world-writable":
        planted.mkdir()
        planted.chmod(0o777)
    elif trap == "symlink":
        planted.symlink_to(outside)
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to chown")
        planted.mkdir(mode=0o700)
        os.chown(planted, 65534, 65534)
    r = _mat(root, None, env={"TMPDIR": str(tmp), "XDG_RUNTIME_DIR": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].startswith(str(root)), r.stdout  # ran in place
    assert "not a private directory" in r.stderr
    assert not any((outside / "materialized").iterdir())


def test_sync_rebuilds_a_snapshot_gc_removed_between_its_look_and_its_lease(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    """A no-op sync found its snapshot through the index, then gc collected it before the
    sync took the lease to make it current: the sync builds it again (was exit 7)."""
    old = write_manifest(tmp_path / "o", "app", ["alpha==1.0"], find_links=wheelhouse)
    new = write_manifest(tmp_path / "n", "app", ["gamma==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", old).returncode == 0
    assert volenv("--root", root, "sync", new).returncode == 0  # old's snapshot: not current
    sync = volenv_popen(
        "--root", root, "sync", old, env={"VOLENV_FAULT": "reuse:pause"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _stopped(sync)
    gc = volenv("--root", root, "gc", "--yes", "--keep", "0", "--keep-within", "0s")
    assert gc.returncode == 0, gc.stderr
    assert len(list((root / "envs/app/snapshots").iterdir())) == 1  # only the current one left
    done = _resume(sync)
    assert done.returncode == 0, done.stderr
    assert "building it again" in done.stderr
    r = volenv("--root", root, "run", "--env", "app", "--", "alpha-cli")
    assert r.returncode == 0 and "alpha says hi" in r.stdout, r.stderr


def test_an_empty_lease_marker_left_by_a_crash_is_taken_over(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    """A builder that died between creating its lease marker and writing it left an empty file:
    with no heartbeat it never looked stale, and every later sync waited until its timeout."""
    m = write_manifest(tmp_path / "m", "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    marker = root / "locks" / "build-app.lease"
    marker.write_bytes(b"")
    os.utime(marker, (time.time() - 7200, time.time() - 7200))
    m2 = write_manifest(tmp_path / "m2", "app", ["alpha==2.0"], find_links=wheelhouse)
    r = volenv("--root", root, "sync", "--lock-timeout", "30", m2, env={"VOLENV_LEASE_SECONDS": "2"})
    assert r.returncode == 0, r.stderr
    assert "removed the empty build lease marker" in r.stderr


def _plant_evil(local: Path, packed: str) -> None:
    """The attacker's copy: a real extraction whose package code was then replaced (same size,
    so only --verify full would see it); marks and seal as a real start leaves them."""
    init = next((local / packed).glob("lib/python*/site-packages/alpha/__init__.py"))
    mode = init.stat().st_mode
    init.chmod(0o644)
    init.write_text(init.read_text().replace("alpha says hi", "alpha EVIL!!!"))
    init.chmod(mode & 0o7777)
    os.utime(init, (OLD, OLD))


@pytest.mark.parametrize("trap", ["other-owner-dir", "world-writable-dir", "other-owner-copy"])
def test_a_named_materialize_dir_not_ours_is_never_trusted(
    tmp_path: Path, root: Path, packed: str, trap: str
) -> None:
    """VOLENV_MATERIALIZE_DIR=/tmp/shared with another user's planted copy (its marks forged
    right): the copy must not run. A directory that is not ours alone is refused (in place); a
    copy in our directory that is not ours is re-extracted."""
    local = tmp_path / "shared"
    assert _mat(root, local).returncode == 0
    _plant_evil(local, packed)
    assert "EVIL" in _mat(root, local).stdout  # the plant as it stands would run
    if trap == "world-writable-dir":
        local.chmod(0o777)
    elif os.geteuid() != 0:
        pytest.skip("needs root to chown")
    else:
        top = local if trap == "other-owner-dir" else local / packed
        for d, dirs, files in os.walk(top):
            for name in [d, *(os.path.join(d, n) for n in dirs + files)]:
                os.lchown(name, 65534, 65534)
    r = _mat(root, None, env={"VOLENV_MATERIALIZE_DIR": str(local)})
    assert r.returncode == 0 and "EVIL" not in r.stdout, r.stderr
    if trap == "other-owner-copy":
        assert r.stdout.split()[0] == str(local / packed) and "extracted" in r.stderr, r.stderr
        assert (local / packed).lstat().st_uid == os.geteuid()
    else:
        assert r.stdout.split()[0].startswith(str(root)), r.stdout  # ran in place
        assert "not a private directory" in r.stderr


@pytest.mark.parametrize("materialize", ["never", "always"])
def test_a_linked_snapshot_dir_is_refused(tmp_path: Path, root: Path, packed: str, materialize: str) -> None:
    """`ln -s /tmp/outside $R/envs/app/snapshots/$SID`: in place ran the code from outside the
    root (exit 0); now both refuse it, exit 4, naming the path, one prefix per message."""
    snap = root / "envs" / "app" / "snapshots" / packed
    outside = tmp_path / "outside"
    os.rename(snap, outside)
    snap.symlink_to(outside)
    r = volenv(
        "--root", root, "run", "--materialize", materialize, "--materialize-dir", tmp_path / "local",
        "--env", "app", "--", "python", "-c", "import sys; print(sys.prefix)",
    )  # fmt: skip
    assert r.returncode == 4, (r.returncode, r.stdout, r.stderr)
    assert str(snap) in r.stderr and "outside the volume root" in r.stderr
    assert "materialize: materialize:" not in r.stderr and not r.stdout
