"""Issue 4: leases, stampedes, kill -9 at every step, full disks, read-only and vanished
volumes, filesystems without links. Real mounts, real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mounts
from conftest import base_env, snapshot_of, staging_left, volenv, volenv_popen, write_manifest

pytestmark = pytest.mark.mounts

STEPS = [
    "resolve",
    "preflight",
    "stage",
    "install",
    "groups",
    "post-install",
    "compile",
    "smoke",
    "record",
    "seal",
    "commit",
    "index",
    "current",
]


def _events(root: Path, env: str, kind: str) -> list[dict[str, object]]:
    path = root / "logs" / env / "events.jsonl"
    if not path.exists():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == kind]


def _all_snapshots_verify(root: Path) -> None:
    r = volenv("--root", root, "verify", "--all", "--level", "full")
    assert r.returncode == 0, r.stderr


def test_stampede_across_two_bindfs_mounts(tmp_path: Path, wheelhouse: Path) -> None:
    """12 workers, half through each of two FUSE views where flock does not exclude:
    exactly one build, every worker runs the same snapshot, none fails."""
    src = tmp_path / "volume"
    src.mkdir()
    m = write_manifest(
        tmp_path, "app", ["beta==1.0"], find_links=wheelhouse, extra='[activate]\nsmoke-imports = ["beta"]\n'
    )
    with mounts.bindfs(src, tmp_path / "m1") as m1, mounts.bindfs(src, tmp_path / "m2") as m2:
        procs = []
        for i in range(12):
            root = (m1 if i % 2 == 0 else m2) / "volenv"
            procs.append(
                volenv_popen(
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
                    "import os, beta; print(os.environ['VOLENV_SNAPSHOT'])",
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            )
        outs = [p.communicate(timeout=300) for p in procs]
        codes = [p.returncode for p in procs]
        failed = {i: (codes[i], outs[i][1]) for i in range(12) if codes[i] != 0}
        assert not failed, failed
        snaps = {o[0].strip() for o in outs}
        assert len(snaps) == 1, snaps
        root = src / "volenv"
        assert len(_events(root, "app", "build-start")) == 1
        assert len(_events(root, "app", "build-done")) == 1
        assert any("waiting for the build lease" in o[1] for o in outs)
        assert staging_left(root) == []


_CREATE_ONCE = """
import sys, time
from pathlib import Path
from volenv.store.volio import create_once_bytes
path, me, start = Path(sys.argv[1]), sys.argv[2].encode(), float(sys.argv[3])
while time.time() < start:
    pass
won = create_once_bytes(path, me)
seen = {path.read_bytes() for _ in range(300)}
print(int(won), *sorted(s.decode() for s in seen))
"""


def test_create_once_through_two_fuse_views_never_replaces(tmp_path: Path) -> None:
    """The volume format file and CACHEDIR tags are created by whoever comes first; a later
    creator must not replace it, or a reader on another FUSE view that just looked it up gets
    ENOENT (seen in CI: a stampede worker failing on volenv.json)."""
    src = tmp_path / "volume"
    src.mkdir()
    with mounts.bindfs(src, tmp_path / "m1") as m1, mounts.bindfs(src, tmp_path / "m2") as m2:
        start = time.time() + 1.0
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _CREATE_ONCE, str((m1 if i % 2 else m2) / "f"), f"w{i}", str(start)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(10)
        ]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0] * 10, [o[1] for o in outs]
        results = [o[0].split() for o in outs]
        winners = [r for r in results if r[0] == "1"]
        assert len(winners) == 1, results
        final = (src / "f").read_text()
        assert {tuple(r[1:]) for r in results} == {(final,)}, results
        assert sorted(p.name for p in src.iterdir()) == ["f"]  # no temp left behind


@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_every_build_step(tmp_path: Path, root: Path, wheelhouse: Path, step: str) -> None:
    old = write_manifest(tmp_path / "old", "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", old).returncode == 0
    before = snapshot_of(root, "app")
    new = write_manifest(
        tmp_path / "new",
        "app",
        ["beta==1.0"],
        find_links=wheelhouse,
        extra='[optional.extra]\nrequirements = ["gamma==1.0"]\n[build]\npost-install = ["true"]\n[activate]\nsmoke-imports = ["beta"]\n',
    )
    r = volenv("--root", root, "sync", new, env={"VOLENV_FAULT": f"{step}:kill"})
    assert r.returncode == -signal.SIGKILL, (step, r.returncode, r.stderr)
    # the previous snapshot is still current; nothing half-built is visible as a snapshot
    if step != "current":
        assert snapshot_of(root, "app") == before
    _all_snapshots_verify(root)
    run = volenv("--root", root, "run", "--env", "app", "--", "python", "-c", "import alpha")
    assert run.returncode == 0
    # the next sync takes the dead builder's lease over, builds, and leaves no staging behind
    t0 = time.perf_counter()
    r = volenv("--root", root, "--json", "sync", new, env={"VOLENV_LEASE_SECONDS": "5"})
    assert r.returncode == 0, r.stderr
    assert time.perf_counter() - t0 < 60
    assert snapshot_of(root, "app") == r.json()["snapshot"]
    assert staging_left(root) == []
    _all_snapshots_verify(root)


def _paused_sync(root: Path, m: Path, step: str, **kw: object) -> subprocess.Popen[str]:
    p = volenv_popen(
        "--root", root, "sync", m, env={"VOLENV_FAULT": f"{step}:pause"}, stderr=subprocess.PIPE, **kw
    )
    mounts.wait_stopped(p.pid)
    return p


@pytest.mark.parametrize("step", ["install", "record", "seal"])
def test_full_disk_mid_build(tmp_path: Path, wheelhouse: Path, step: str) -> None:
    vol = tmp_path / "vol"
    with mounts.tmpfs(vol, "48m"):
        root = vol / "volenv"
        old = write_manifest(tmp_path / "old", "app", ["alpha==1.0"], find_links=wheelhouse)
        assert volenv("--root", root, "sync", old, "--min-free", "0").returncode == 0
        before = snapshot_of(root, "app")
        new = write_manifest(tmp_path / "new", "app", ["beta==1.0", "gamma==1.0"], find_links=wheelhouse)
        p = volenv_popen(
            "--root",
            root,
            "sync",
            new,
            "--min-free",
            "0",
            env={"VOLENV_FAULT": f"{step}:pause"},
            stderr=subprocess.PIPE,
        )
        mounts.wait_stopped(p.pid)
        filler = mounts.fill(vol)
        os.kill(p.pid, signal.SIGCONT)
        _out, err = p.communicate(timeout=120)
        assert p.returncode in (6, 7), err
        if p.returncode == 6 or step != "install":
            assert p.returncode == 6, err
            assert "free now" in err and "needed at least" in err, err
        filler.unlink()
        assert snapshot_of(root, "app") == before
        assert staging_left(root) == []
        _all_snapshots_verify(root)
        assert volenv("--root", root, "sync", new, "--min-free", "0").returncode == 0


def test_preflight_refuses_before_writing(tmp_path: Path, wheelhouse: Path) -> None:
    vol = tmp_path / "vol"
    with mounts.tmpfs(vol, "16m"):
        root = vol / "volenv"
        m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
        r = volenv("--root", root, "sync", m)  # default estimate: 128 MiB free
        assert r.returncode == 6, r.stderr
        assert "free now" in r.stderr and "needed at least 128.0 MiB" in r.stderr
        assert r.stderr.count("free now") == 1
        assert not (root / "envs" / "app" / "snapshots").exists() or not os.listdir(
            root / "envs" / "app" / "snapshots"
        )
        assert staging_left(root) == []


def test_read_only_volume_runs_but_does_not_sync(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    with mounts.readonly_view(root.parent, tmp_path / "ro") as view:
        ro_root = view / root.name
        r = volenv(
            "--root",
            ro_root,
            "run",
            "--manifest",
            m,
            "--",
            "python",
            "-c",
            "import alpha, sys; print(sys.prefix)",
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().startswith(str(ro_root))
        r = volenv("--root", ro_root, "run", "--env", "app", "--verify", "full", "--", "true")
        assert r.returncode == 0, r.stderr
        new = write_manifest(tmp_path / "n", "app", ["gamma==1.0"], find_links=wheelhouse)
        r = volenv("--root", ro_root, "sync", new)
        assert r.returncode == 8, r.stderr
        assert "read-only" in r.stderr.lower()
        r = volenv("--root", ro_root, "run", "--on-missing", "build", "--manifest", new, "--", "true")
        assert r.returncode == 8


def test_exfat_without_links_is_refused_up_front(tmp_path: Path, wheelhouse: Path) -> None:
    with mounts.exfat(tmp_path / "x.img", tmp_path / "ex") as mnt:
        root = mnt / "volenv"
        m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
        r = volenv("--root", root, "sync", m, "--min-free", "0")
        assert r.returncode == 8, r.stderr
        assert "symbolic links" in r.stderr
        # the format file still got created, by the no-hard-link fallback
        assert json.loads((root / "volenv.json").read_text())["format"] >= 1
        assert not (root / "envs" / "app" / "snapshots").exists() or not os.listdir(
            root / "envs" / "app" / "snapshots"
        )
        assert staging_left(root) == []


def test_cache_on_another_filesystem_copies_and_status_warns(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    """No hard links between the uv cache and the snapshots (EXDEV): uv copies; status says so."""
    m = write_manifest(tmp_path, "app", ["beta==1.0"], find_links=wheelhouse)
    (root / "cache" / "uv").mkdir(parents=True)
    with mounts.tmpfs(root / "cache" / "uv", "64m"):
        r = volenv("--root", root, "--json", "sync", m)
        assert r.returncode == 0, r.stderr
        assert r.json()["link_mode"] == "copy"
        doc = volenv("--root", root, "--json", "status").json()
        assert doc["envs"][0]["snapshots"][0]["link_mode"] == "copy"  # type: ignore[index]
        assert any("copying" in w for w in doc["warnings"])  # type: ignore[union-attr]
        human = volenv("--root", root, "status")
        assert "(copied)" in human.stdout and "warning" in human.stderr, (human.stdout, human.stderr)
        _all_snapshots_verify(root)


def test_vanished_fuse_volume_exits_8_quickly(tmp_path: Path, wheelhouse: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", src / "volenv", "sync", m).returncode == 0
    with mounts.bindfs(src, tmp_path / "mnt") as mnt:
        root = mnt / "volenv"
        assert volenv("--root", root, "run", "--manifest", m, "--", "true").returncode == 0
        mounts.abort_fuse(mnt)
        for args in (
            ["run", "--manifest", m, "--", "true"],
            ["run", "--on-missing", "build", "--manifest", m, "--", "true"],
            ["sync", m],
            ["status"],
            ["verify", "--all"],
        ):
            t0 = time.perf_counter()
            r = volenv("--root", root, *args, timeout=60)
            assert r.returncode == 8, (args, r.returncode, r.stderr)
            assert time.perf_counter() - t0 < 30
            assert "unreachable" in r.stderr or "not connected" in r.stderr.lower(), r.stderr


def _other_host(*args: str | Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """A volenv process in its own UTS namespace: another host name, as a second machine."""
    mounts.need_root_and("unshare")
    full = base_env()
    full.update(env)
    cmd = [
        "unshare",
        "--uts",
        "sh",
        "-c",
        'hostname other-host && exec "$@"',
        "sh",
        sys.executable,
        "-m",
        "volenv",
        *map(str, args),
    ]
    return subprocess.Popen(cmd, env=full, text=True, stderr=subprocess.PIPE)


def test_paused_builder_is_fenced_off(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    """A builder on another host stops past its lease; another takes over and commits; when the
    first wakes it must notice before its commit rename and abort."""
    lease = {"VOLENV_LEASE_SECONDS": "3"}
    x = write_manifest(tmp_path / "x", "app", ["alpha==1.0"], find_links=wheelhouse)
    y = write_manifest(tmp_path / "y", "app", ["gamma==1.0"], find_links=wheelhouse)
    a = _other_host("--root", root, "sync", x, env={**lease, "VOLENV_FAULT": "commit:pause"})
    mounts.wait_stopped(a.pid)
    t0 = time.perf_counter()
    b = volenv("--root", root, "--json", "sync", y, env=lease)
    waited = time.perf_counter() - t0
    assert b.returncode == 0, b.stderr
    assert waited >= 2.5, waited  # took over only after the lease expired
    assert "other-host" in b.stderr  # the waiter named the holder
    os.kill(a.pid, signal.SIGCONT)
    _out, err = a.communicate(timeout=60)
    assert a.returncode == 7, err
    assert "lease" in err and "commit" in err
    assert snapshot_of(root, "app") == b.json()["snapshot"]
    assert len(os.listdir(root / "envs" / "app" / "snapshots")) == 1
    assert staging_left(root) == []


def test_lock_timeout_names_holder(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    x = write_manifest(tmp_path / "x", "app", ["alpha==1.0"], find_links=wheelhouse)
    y = write_manifest(tmp_path / "y", "app", ["gamma==1.0"], find_links=wheelhouse)
    a = _paused_sync(root, x, "install")
    try:
        r = volenv("--root", root, "sync", y, "--lock-timeout", "1")
        assert r.returncode == 5, r.stderr
        assert f"pid {a.pid}" in r.stderr and "timed out" in r.stderr
        r = volenv(
            "--root",
            root,
            "run",
            "--on-missing",
            "build",
            "--lock-timeout",
            "1",
            "--manifest",
            y,
            "--",
            "true",
        )
        assert r.returncode == 5
    finally:
        a.kill()
        a.wait()


def test_takeover_after_sigkill_on_another_host(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    lease = {"VOLENV_LEASE_SECONDS": "3"}
    x = write_manifest(tmp_path / "x", "app", ["alpha==1.0"], find_links=wheelhouse)
    a = _other_host("--root", root, "sync", x, env={**lease, "VOLENV_FAULT": "install:kill"})
    a.communicate(timeout=60)
    assert a.returncode == -signal.SIGKILL
    t0 = time.perf_counter()
    r = volenv("--root", root, "sync", x, env=lease)
    delay = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    # a dead pid on another host cannot be probed: the marker must age one lease duration
    assert 2.5 <= delay < 30, delay
    assert staging_left(root) == []
