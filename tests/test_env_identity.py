"""Issue 29, item 2: two manifests with the same `name` do not share one env silently. An env
records its manifest's origin (its `id`, else its path and host); an interactive `sync` of a
manifest of another origin is exit 2 naming both, with the commands that rename or take over;
workers and provisioning pods (a fresh host, a temp file or an image each time) are never
refused; gc keeps each manifest's current snapshot. Real uv, tiny wheels, the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import snapshot_of, volenv, write_manifest


def origin(root: Path, env: str) -> dict[str, object]:
    data = json.loads((root / "envs" / env / "origin.json").read_text())
    assert isinstance(data, dict)
    return data


def manifest(directory: Path, wheelhouse: Path, reqs: list[str] | None = None, extra: str = "") -> Path:
    """A `volenv.toml` naming env 'req' (the folder's name, as `init` names it)."""
    return write_manifest(
        directory,
        "req",
        reqs or ["alpha==1.0"],
        find_links=wheelhouse,
        extra=extra,
        filename="volenv.toml",
        manifest_id=None,
    )


def with_id(path: Path, ident: str) -> Path:
    path.write_text(f"id = {json.dumps(ident)}\n" + path.read_text())
    return path


@pytest.fixture
def elsewhere(root: Path) -> Iterator[Path]:
    """A folder on another filesystem than the root (a laptop's project beside a shared volume),
    where an origin records its host."""
    base = Path("/dev/shm")
    if not base.is_dir() or not os.access(base, os.W_OK):
        pytest.skip("no writable /dev/shm for a second filesystem")
    root.mkdir(parents=True, exist_ok=True)
    if os.stat(base).st_dev == os.stat(root).st_dev:
        pytest.skip("/dev/shm is on the root's filesystem here")
    d = Path(tempfile.mkdtemp(prefix="volenv-identity-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_second_manifest_of_the_same_name_is_refused_until_taken_over(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    first = manifest(tmp_path / "work" / "req", wheelhouse)
    second = manifest(tmp_path / "old" / "req", wheelhouse, ["gamma==1.0"])
    r = volenv("--root", root, "sync", first)
    assert r.returncode == 0, r.stderr
    assert origin(root, "req")["path"] == str(first.resolve())
    before = snapshot_of(root, "req")

    r = volenv("--root", root, "sync", second)
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert str(first.resolve()) in errors[0] and str(second.resolve()) in errors[0], r.stderr
    hint = next(ln.strip() for ln in r.stderr.splitlines() if ln.strip().startswith("hint:"))
    assert 'name = "old-req"' in hint, hint  # a free name to give it: its project's folder
    assert f"volenv --root {root} sync --take-over {second}" in hint, hint
    assert snapshot_of(root, "req") == before  # nothing changed: no build, no switch
    assert origin(root, "req")["path"] == str(first.resolve())
    # a dry run is refused the same way: it says what the sync would do
    assert volenv("--root", root, "sync", "--dry-run", second).returncode == 2

    r = volenv("--root", root, "sync", "--take-over", second)
    assert r.returncode == 0, r.stderr
    assert "now belongs to" in r.stderr and str(first.resolve()) in r.stderr, r.stderr
    assert origin(root, "req")["path"] == str(second.resolve())
    assert snapshot_of(root, "req") != before
    # now the first project is the other one
    r = volenv("--root", root, "sync", first)
    assert r.returncode == 2 and str(second.resolve()) in r.stderr, r.stderr


def test_the_same_manifest_edited_in_place_is_the_same_origin(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    m = manifest(tmp_path / "req", wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    manifest(tmp_path / "req", wheelhouse, ["alpha==2.0"])
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    assert "belongs to" not in r.stderr
    # through a symlinked folder it is the same file too
    (tmp_path / "link").symlink_to(tmp_path / "req")
    assert volenv("--root", root, "sync", tmp_path / "link" / "volenv.toml").returncode == 0


def test_an_env_without_a_recorded_origin_adopts_the_first_sync_silently(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    a = manifest(tmp_path / "a" / "req", wheelhouse)
    b = manifest(tmp_path / "b" / "req", wheelhouse, ["gamma==1.0"])
    assert volenv("--root", root, "sync", a).returncode == 0
    (root / "envs" / "req" / "origin.json").unlink()  # an env made before volenv recorded origins
    r = volenv("--root", root, "sync", b)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr and "belongs to" not in r.stderr, r.stderr
    assert origin(root, "req")["path"] == str(b.resolve())


def test_a_damaged_origin_record_is_exit_4_naming_it(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = manifest(tmp_path / "req", wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    rec = root / "envs" / "req" / "origin.json"
    for damage in ("{not json", '{"schema": 1, "path": 3}', '{"schema": 1, "path": "/x", "host": 7}'):
        rec.write_text(damage)
        r = volenv("--root", root, "sync", m)
        assert r.returncode == 4, (damage, r.stderr)
        assert str(rec) in r.stderr and "damaged" in r.stderr, r.stderr
    rec.unlink()
    rec.symlink_to(tmp_path / "elsewhere.json")  # never read through a link
    (tmp_path / "elsewhere.json").write_text('{"schema": 1, "path": "/x", "host": null}')
    assert volenv("--root", root, "sync", m).returncode == 4


def test_an_explicit_id_is_the_origin_wherever_the_manifest_lies(
    tmp_path: Path, root: Path, wheelhouse: Path, elsewhere: Path
) -> None:
    a = with_id(manifest(tmp_path / "checkout" / "req", wheelhouse), "github.com/acme/req")
    assert volenv("--root", root, "sync", a, env={"VOLENV_HOST_ID": "laptop"}).returncode == 0
    assert origin(root, "req")["id"] == "github.com/acme/req"
    # the same project moved to another folder and read on another host: same origin
    moved = with_id(manifest(elsewhere / "clone" / "req", wheelhouse, ["alpha==2.0"]), "github.com/acme/req")
    r = volenv("--root", root, "sync", moved, env={"VOLENV_HOST_ID": "ci-runner"})
    assert r.returncode == 0, r.stderr
    assert origin(root, "req")["path"] == str(moved.resolve())  # the record follows it
    assert origin(root, "req")["host"] == "ci-runner"
    # another project that declares another id is another origin, whatever its path
    other = with_id(manifest(tmp_path / "other" / "req", wheelhouse), "github.com/someone/req")
    r = volenv("--root", root, "sync", other, env={"VOLENV_HOST_ID": "laptop"})
    assert r.returncode == 2, r.stderr
    assert "id 'github.com/acme/req'" in r.stderr and "id 'github.com/someone/req'" in r.stderr, r.stderr


def test_the_host_counts_only_for_a_manifest_off_the_volume(
    tmp_path: Path, root: Path, wheelhouse: Path, elsewhere: Path
) -> None:
    # a laptop's manifest (another filesystem than the shared root): its host is part of it
    m = manifest(elsewhere / "req", wheelhouse)
    assert volenv("--root", root, "sync", m, env={"VOLENV_HOST_ID": "laptop-1"}).returncode == 0
    assert origin(root, "req")["host"] == "laptop-1"
    r = volenv("--root", root, "sync", m, env={"VOLENV_HOST_ID": "laptop-2"})
    assert r.returncode == 2, r.stderr
    assert f"{m.resolve()} on laptop-1" in r.stderr and f"{m.resolve()} on laptop-2" in r.stderr, r.stderr
    assert volenv("--root", root, "sync", m, env={"VOLENV_HOST_ID": "laptop-1"}).returncode == 0

    # a manifest on the volume itself (RunPod pods syncing /workspace/proj one after another,
    # each with its own host name): every host reads that very file, so the host is left out
    on_volume = manifest(root.parent / "proj", wheelhouse)
    for host in ("pod-a1b2", "pod-c3d4"):
        r = volenv("--root", root, "sync", "--take-over", on_volume, env={"VOLENV_HOST_ID": host})
        assert r.returncode == 0, r.stderr
        assert origin(root, "req")["host"] is None


def test_workers_and_provisioning_pods_on_many_hosts_are_never_refused(
    tmp_path: Path, root: Path, wheelhouse: Path, elsewhere: Path
) -> None:
    laptop = manifest(elsewhere / "req", wheelhouse)
    assert volenv("--root", root, "sync", laptop, env={"VOLENV_HOST_ID": "laptop"}).returncode == 0
    recorded = origin(root, "req")
    # the image's manifest at one path, read by workers on hosts of their own (each a new
    # hostname), building what is missing: never refused, the env's record untouched
    image = manifest(tmp_path / "app", wheelhouse, ["gamma==1.0"])
    for i, host in enumerate(("worker-1", "worker-2")):
        manifest(tmp_path / "app", wheelhouse, ["gamma==1.0", f"alpha=={i + 1}.0"])  # a new image
        r = volenv(
            "--root", root, "run", "--manifest", image, "--on-missing", "build", "--",
            "python", "-c", "import alpha",
            env={"VOLENV_HOST_ID": host},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    # a provisioning pod: the manifest's text in a variable, a temp file on a one-off host
    text = manifest(tmp_path / "prov", wheelhouse, ["beta==1.0"]).read_text()
    for host in ("pod-1", "pod-2"):
        r = volenv(
            "--root", root, "sync", "--from-env", "VOLENV_MANIFEST_TOML",
            env={"VOLENV_HOST_ID": host, "VOLENV_MANIFEST_TOML": text},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "belongs to" not in r.stderr
    assert {k: v for k, v in origin(root, "req").items() if k != "time"} == {
        k: v for k, v in recorded.items() if k != "time"
    }
    # a provisioned manifest that declares an id records it where nothing is recorded yet
    shutil.rmtree(root / "envs" / "req")
    r = volenv(
        "--root", root, "sync", "--from-env", "VOLENV_MANIFEST_TOML",
        env={"VOLENV_HOST_ID": "pod-3", "VOLENV_MANIFEST_TOML": 'id = "acme/req"\n' + text},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert origin(root, "req")["id"] == "acme/req"


def test_gc_keeps_the_snapshot_each_manifest_runs(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    """The issue's case: a second project took env 'req' over; `gc --keep 1 --keep-within 0s`
    must not plan to remove the first project's current snapshot, which its workers run."""
    first = manifest(tmp_path / "work" / "req", wheelhouse)
    second = manifest(tmp_path / "old" / "req", wheelhouse, ["gamma==1.0"])
    assert volenv("--root", root, "sync", first).returncode == 0
    sa = snapshot_of(root, "req")
    assert volenv("--root", root, "sync", "--take-over", second).returncode == 0
    sb = snapshot_of(root, "req")
    assert sa != sb

    def plan(keep: int = 1) -> dict[str, tuple[str, list[str]]]:
        r = volenv("--root", root, "--json", "gc", "--keep", str(keep), "--keep-within", "0s", "--dry-run")
        assert r.returncode == 0, r.stderr
        items = r.json()["result"]["plan"]["items"]  # type: ignore[index]
        assert isinstance(items, list)
        return {Path(i["path"]).name: (i["action"], i["reasons"]) for i in items if i["kind"] == "snapshot"}

    rows = plan()
    assert rows[sa][0] == "keep", rows
    assert rows[sa][1] == [f"current for manifest {first}"], rows
    assert rows[sb][0] == "keep", rows
    r = volenv("--root", root, "gc", "--keep", "1", "--keep-within", "0s", "--dry-run")
    assert f"current for manifest {first}" in r.stdout, r.stdout

    # only a manifest's newest snapshot is its current one: an edit in place frees the older
    manifest(tmp_path / "work" / "req", wheelhouse, ["alpha==2.0"])
    assert volenv("--root", root, "sync", "--take-over", first).returncode == 0
    sc = snapshot_of(root, "req")
    rows = plan()
    assert rows[sa][0] == "remove" and rows[sc][0] == "keep", rows
    assert rows[sb] == ("keep", [f"current for manifest {second}"]), rows
    # reverted in place: its first snapshot is reused, and is that manifest's current again
    manifest(tmp_path / "work" / "req", wheelhouse)
    r = volenv("--root", root, "sync", first)
    assert r.returncode == 0, r.stderr
    assert snapshot_of(root, "req") == sa
    rows = plan(keep=0)
    assert rows[sa][0] == "keep" and rows[sc][0] == "remove", rows
    assert rows[sb][0] == "keep", rows
    # and gc itself (not only the plan) keeps them
    r = volenv("--root", root, "gc", "--keep", "0", "--keep-within", "0s", "--yes")
    assert r.returncode == 0, r.stderr
    left = sorted(p.name for p in (root / "envs" / "req" / "snapshots").iterdir())
    assert left == sorted([sa, sb]), left


def test_the_id_key_is_checked_and_is_no_build_input(tmp_path: Path, wheelhouse: Path) -> None:
    from volenv.manifest.parse import load_manifest

    m = manifest(tmp_path / "req", wheelhouse)
    plain = load_manifest(m)
    with_id(m, "acme/req")
    named = load_manifest(m)
    assert named.id == "acme/req" and plain.id is None
    assert named.digest == plain.digest  # adding an id keeps every index entry and snapshot id
    for bad in ('""', '"a\\u0007b"', "3", '"' + "x" * 201 + '"'):
        m.write_text(f"id = {bad}\n" + m.read_text().split("\n", 1)[1])
        r = volenv("sync", m, env={"VOLENV_ROOT": str(tmp_path / "r")})
        assert r.returncode == 2, (bad, r.stderr)
        assert f"{m}: id:" in r.stderr, r.stderr


def test_manifests_of_one_id_are_one_manifest_to_gc(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    """Two files that declare one `id` are versions of one project: only the newest snapshot
    among them is that manifest's current one (the other is collected like any old version)."""
    old = with_id(manifest(tmp_path / "v1" / "req", wheelhouse), "acme/req")
    new = with_id(manifest(tmp_path / "v2" / "req", wheelhouse, ["alpha==2.0"]), "acme/req")
    worker = manifest(tmp_path / "image" / "req", wheelhouse, ["gamma==1.0"])  # no id: its path
    assert volenv("--root", root, "sync", worker).returncode == 0
    sw = snapshot_of(root, "req")
    assert volenv("--root", root, "sync", "--take-over", old).returncode == 0
    s1 = snapshot_of(root, "req")
    assert volenv("--root", root, "sync", new).returncode == 0
    s2 = snapshot_of(root, "req")
    r = volenv("--root", root, "--json", "gc", "--keep", "0", "--keep-within", "0s", "--dry-run")
    assert r.returncode == 0, r.stderr
    items = r.json()["result"]["plan"]["items"]  # type: ignore[index]
    rows = {Path(i["path"]).name: (i["action"], i["reasons"]) for i in items if i["kind"] == "snapshot"}
    assert rows[s1][0] == "remove", rows
    assert rows[s2] == ("keep", ["current"]), rows
    assert rows[sw] == ("keep", [f"current for manifest {worker}"]), rows
    # the index says which manifest each entry is of
    entries = [json.loads(p.read_text()) for p in (root / "envs" / "req" / "index").iterdir()]
    assert sorted(str(e.get("manifest_id")) for e in entries) == ["None", "acme/req", "acme/req"]
