"""Issue 31: `run --manifest` never starts a stale snapshot. Whatever the manifest's digest covers
(local package trees, wheel and sdist paths, `file:` URLs, requirements files and their
includes, lockfiles) the alias that lets `run` skip validation covers too: an edit makes the
next start rebuild and run the new code; a revert plus `sync` runs the earlier snapshot again.
Each start is the container's: `run --manifest M` with the default `--on-missing build`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import snapshot_of, volenv, write_manifest
from test_inputs import source_tree
from wheelfactory import make_wheel

CODE = "import mypkg; print(mypkg.CODE)"


def start(root: Path, manifest: Path, code: str = CODE) -> tuple[str, str]:
    """(what the program printed, the snapshot it ran in), started as a container starts."""
    r = volenv(
        "--root",
        root,
        "run",
        "--manifest",
        manifest,
        "--",
        "python",
        "-c",
        code + "; import os; print(os.environ['VOLENV_SNAPSHOT'])",
    )
    assert r.returncode == 0, r.stderr
    out, sid = r.stdout.strip().splitlines()
    return out, sid


def aliases(root: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((root / "aliases").glob("*.json"))]


def _edit_revert(root: Path, manifest: Path, init_py: Path, env: str) -> None:
    """edit -> start rebuilds and runs the new code; revert -> sync (reuses) -> start runs the
    earlier snapshot; each start's snapshot is the one the index names for the tree it saw."""
    assert volenv("--root", root, "sync", manifest).returncode == 0
    first = snapshot_of(root, env)
    assert start(root, manifest) == ("1", first)
    init_py.write_text("CODE = 2\n")
    out, second = start(root, manifest)
    assert (out, second != first) == ("2", True), "the edited package must rebuild, not run the old code"
    assert start(root, manifest) == ("2", second)  # and the next start takes the fast path to it
    init_py.write_text("CODE = 1\n")
    r = volenv("--root", root, "--json", "sync", manifest)
    assert r.returncode == 0, r.stderr
    assert r.json()["action"] == "reused" and r.json()["snapshot"] == first
    assert start(root, manifest) == ("1", first), "after the revert the earlier snapshot runs"


def test_local_tree_edit_rebuilds_and_revert_runs_the_earlier_snapshot(tmp_path: Path, root: Path) -> None:
    proj = tmp_path / "proj"
    source_tree(proj / "mypkg")
    m = write_manifest(proj, "loc", ["mypkg @ ./mypkg"])
    _edit_revert(root, m, proj / "mypkg/mypkg/__init__.py", "loc")
    (alias,) = [a for a in aliases(root) if a["env"] == "loc"]  # one manifest, one alias
    (source,) = alias["sources"]
    assert source[0] == "mypkg" and len(source[1]) == len(source[2]) == 64


@pytest.mark.parametrize("line", ["mypkg @ ./mypkg", "./mypkg"])
def test_requirements_file_include_and_bare_path(tmp_path: Path, root: Path, line: str) -> None:
    """The package named in a `-r` include (in a subfolder) of the manifest's requirements file, by
    name or as a bare path: the same edit/revert cycle. Its path starts at the manifest's folder,
    where uv reads it from (as pip does from its working directory), not at the include's."""
    proj = tmp_path / "proj"
    source_tree(proj / "mypkg")
    (proj / "reqs").mkdir()
    (proj / "reqs" / "local.txt").write_text(f"{line}\n")
    (proj / "requirements.txt").write_text("# the app\n-r reqs/local.txt\n")
    m = proj / "rf.toml"
    m.write_text(
        'name = "rf"\npython = "3.11"\nrequirements-file = "requirements.txt"\n[index]\nno-index = true\n'
    )
    _edit_revert(root, m, proj / "mypkg/mypkg/__init__.py", "rf")


def test_wheel_path_and_file_url(tmp_path: Path, root: Path) -> None:
    """A wheel replaced by one of the same name, and a tree named by a `file:` URL."""
    proj = tmp_path / "proj"
    tree = source_tree(tmp_path / "abs" / "mypkg")
    wheel = make_wheel(proj / "dist", "wpkg", "1.0", files={"wpkg/__init__.py": "W = 1\n"})
    m = write_manifest(proj, "urls", [f"mypkg @ {tree.as_uri()}", f"wpkg @ ./dist/{wheel.name}"])
    assert volenv("--root", root, "sync", m).returncode == 0
    first = snapshot_of(root, "urls")
    both = "import mypkg, wpkg; print(mypkg.CODE * 10 + wpkg.W)"
    assert start(root, m, both) == ("11", first)
    make_wheel(proj / "dist", "wpkg", "1.0", files={"wpkg/__init__.py": "W = 2\n"})  # same name, new bytes
    out, sid = start(root, m, both)
    assert out == "12" and sid != first
    (tree / "mypkg/__init__.py").write_text("CODE = 3\n")
    out, third = start(root, m, both)
    assert out == "32" and third not in (first, sid)


def test_lockfile_and_requirements_file_edits_are_seen(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    """The files beside the manifest: a requirements file edited in place is a new snapshot."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "requirements.txt").write_text("alpha==1.0\n")
    m = proj / "rq.toml"
    m.write_text(
        'name = "rq"\npython = "3.11"\nrequirements-file = "requirements.txt"\n'
        f'[index]\nno-index = true\nfind-links = ["{wheelhouse}"]\n'
    )
    assert volenv("--root", root, "sync", m).returncode == 0
    first = snapshot_of(root, "rq")
    (proj / "requirements.txt").write_text("alpha==1.0\nbeta==1.0\n")
    out, sid = start(root, m, "import beta; print('b')")
    assert out == "b" and sid != first


def test_mtime_kept_edit_is_caught_by_size_and_a_same_size_one_by_sync(tmp_path: Path, root: Path) -> None:
    """`touch -r` after an edit keeps the mtime: the fingerprint still sees a size change. An edit
    that keeps size and mtime is what a stat fingerprint cannot see (manifest/tree.py, README):
    `run` keeps the snapshot it has, and `sync`, which always digests, builds the new one."""
    proj = tmp_path / "proj"
    source_tree(proj / "mypkg")
    m = write_manifest(proj, "mt", ["mypkg @ ./mypkg"])
    init = proj / "mypkg/mypkg/__init__.py"
    assert volenv("--root", root, "sync", m).returncode == 0
    first = snapshot_of(root, "mt")
    st = init.stat()
    init.write_text("CODE = 22\n")  # one byte longer
    os.utime(init, ns=(st.st_atime_ns, st.st_mtime_ns))
    out, second = start(root, m)
    assert out == "22" and second != first
    st = init.stat()
    init.write_text("CODE = 33\n")  # the same size
    os.utime(init, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert start(root, m) == ("22", second)  # the documented blind spot of a stat fingerprint
    r = volenv("--root", root, "--json", "sync", m)
    assert r.returncode == 0 and r.json()["action"] == "built", r.stderr
    assert start(root, m)[0] == "33"


def test_a_copied_tree_with_new_mtimes_reuses_the_snapshot_and_refreshes_the_alias(
    tmp_path: Path, root: Path
) -> None:
    """A new checkout (or image layer) of the same code: the fingerprint moved, the digest did not.
    The start runs the same snapshot without a build, and writes the new fingerprint so the next
    start is fast again."""
    proj = tmp_path / "proj"
    source_tree(proj / "mypkg")
    m = write_manifest(proj, "cp", ["mypkg @ ./mypkg"])
    assert volenv("--root", root, "sync", m).returncode == 0
    first = snapshot_of(root, "cp")
    (old,) = [a for a in aliases(root) if a["env"] == "cp"]
    shutil.copytree(proj / "mypkg", tmp_path / "copy")
    shutil.rmtree(proj / "mypkg")
    shutil.copytree(tmp_path / "copy", proj / "mypkg", copy_function=shutil.copy)  # new mtimes
    for p in (proj / "mypkg").rglob("*"):
        os.utime(p, (1_000_000_000, 1_000_000_000))
    r = volenv("--root", root, "run", "--manifest", m, "--", "python", "-c", CODE)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
    assert "syncing" not in r.stderr and "building" not in r.stderr, r.stderr
    assert snapshot_of(root, "cp") == first
    (new,) = [a for a in aliases(root) if a["env"] == "cp"]
    assert new["sources"][0][1] == old["sources"][0][1]  # same digest
    assert new["sources"][0][2] != old["sources"][0][2]  # refreshed fingerprint


def test_an_alias_of_the_previous_schema_is_not_trusted_by_run(tmp_path: Path, root: Path) -> None:
    """A volume upgraded from a volenv whose aliases did not cover local sources: its alias is
    parsed past (full validation), so an edit made before the upgrade is still seen."""
    proj = tmp_path / "proj"
    source_tree(proj / "mypkg")
    m = write_manifest(proj, "old", ["mypkg @ ./mypkg"])
    assert volenv("--root", root, "sync", m).returncode == 0
    first = snapshot_of(root, "old")
    (path,) = [p for p in (root / "aliases").glob("*.json") if json.loads(p.read_text())["env"] == "old"]
    doc = json.loads(path.read_text())
    doc["schema"] = 1
    del doc["sources"]
    path.write_text(json.dumps(doc))
    (proj / "mypkg/mypkg/__init__.py").write_text("CODE = 2\n")
    out, sid = start(root, m)
    assert out == "2" and sid != first
    assert json.loads(path.read_text())["schema"] == 2  # the start wrote it again, whole


# ---------------------------------------------------------------- found by an attacker's pass


def test_a_retargeted_symlink_is_followed_again(tmp_path: Path, root: Path) -> None:
    """`proj/mypkg -> releases/v1` then `-> releases/v2` (a current -> release deploy), and the
    same for the requirements file: the alias names the link, never where it pointed once."""
    rel = tmp_path / "releases"
    source_tree(rel / "v1")
    source_tree(rel / "v2", code=2)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "mypkg").symlink_to(rel / "v1")
    (proj / "r1.txt").write_text("mypkg @ ./mypkg\n")
    (proj / "r2.txt").write_text("mypkg @ ./mypkg\n# v2\n")
    (proj / "requirements.txt").symlink_to(proj / "r1.txt")
    m = proj / "sl.toml"
    m.write_text(
        'name = "sl"\npython = "3.11"\nrequirements-file = "requirements.txt"\n[index]\nno-index = true\n'
    )
    assert volenv("--root", root, "sync", m).returncode == 0
    out, first = start(root, m)
    assert out == "1"
    (proj / "mypkg").unlink()
    (proj / "mypkg").symlink_to(rel / "v2")
    out, second = start(root, m)
    assert out == "2" and second != first
    (proj / "requirements.txt").unlink()
    (proj / "requirements.txt").symlink_to(proj / "r2.txt")
    out, third = start(root, m)
    assert out == "2" and third not in (first, second)  # a new requirements file: a new digest


def test_an_absolute_file_url_names_the_same_tree_from_a_copied_project(tmp_path: Path, root: Path) -> None:
    tree = source_tree(tmp_path / "abs" / "mypkg")
    a = tmp_path / "a"
    write_manifest(a, "ab", [f"mypkg @ {tree.as_uri()}"])
    shutil.copytree(a, tmp_path / "b")
    m = tmp_path / "b" / "ab.toml"
    assert volenv("--root", root, "sync", m).returncode == 0
    assert start(root, m)[0] == "1"
    (tree / "mypkg/__init__.py").write_text("CODE = 5\n")
    assert start(root, m)[0] == "5"


def test_a_local_package_inside_a_pylock_is_a_build_input(tmp_path: Path, root: Path) -> None:
    """`lockfile = "pylock.toml"` whose package is `directory = { path = "mypkg" }`: the lock's
    bytes stay the same when the tree changes, so the tree counts by itself (sync and run)."""
    proj = tmp_path / "proj"
    source_tree(proj / "mypkg")
    (proj / "pylock.toml").write_text(
        'lock-version = "1.0"\ncreated-by = "test"\nrequires-python = ">=3.11"\n\n'
        '[[packages]]\nname = "mypkg"\nversion = "1.0"\ndirectory = { path = "mypkg" }\n'
    )
    m = proj / "pl.toml"
    m.write_text('name = "pl"\npython = "3.11"\nlockfile = "pylock.toml"\n[index]\nno-index = true\n')
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    first = snapshot_of(root, "pl")
    assert start(root, m) == ("1", first)
    (proj / "mypkg/mypkg/__init__.py").write_text("CODE = 2\n")
    out, sid = start(root, m)
    assert out == "2" and sid != first


def test_a_link_to_a_file_outside_the_package_counts_with_its_content(tmp_path: Path, root: Path) -> None:
    proj = tmp_path / "proj"
    source_tree(proj / "mypkg")
    (proj / "shared.py").write_text("V = 1\n")
    (proj / "mypkg/mypkg/shared.py").symlink_to(proj / "shared.py")
    m = write_manifest(proj, "ln", ["mypkg @ ./mypkg"])
    assert volenv("--root", root, "sync", m).returncode == 0
    probe = "import mypkg.shared as s; print(s.V)"
    first = start(root, m, probe)
    (proj / "shared.py").write_text("V = 22\n")
    r = volenv("--root", root, "--json", "sync", m)
    assert r.returncode == 0 and r.json()["action"] == "built", r.stderr
    assert start(root, m, probe)[0] == "22" and start(root, m, probe)[1] != first[1]


@pytest.mark.parametrize(
    "field",
    [
        ("inputs", 5),
        ("inputs", [[1, 2]]),
        ("inputs", [["a"]]),
        ("inputs", [["a\u0000b", "0" * 64]]),
        ("inputs", [["\ud800", "0" * 64]]),
        ("lockfile", ["x\u0000", "0" * 64]),
        ("sources", [["\ud800", "0" * 64, "0" * 64]]),
    ],
    ids=["int", "ints", "short", "nul", "surrogate", "lock-nul", "source-surrogate"],
)
def test_a_planted_alias_of_any_shape_is_parsed_past(
    tmp_path: Path, root: Path, field: tuple[str, object]
) -> None:
    proj = tmp_path / "proj"
    source_tree(proj / "mypkg")
    m = write_manifest(proj, "pa", ["mypkg @ ./mypkg"])
    assert volenv("--root", root, "sync", m).returncode == 0
    (path,) = list((root / "aliases").glob("*.json"))
    doc = json.loads(path.read_text())
    doc[field[0]] = field[1]
    path.write_text(json.dumps(doc))
    r = volenv("--root", root, "run", "--manifest", m, "--", "python", "-c", CODE)
    assert r.returncode == 0 and r.stdout.strip() == "1" and "Traceback" not in r.stderr, r.stderr


def test_a_fifo_in_the_package_never_hangs_and_caches_never_rebuild(tmp_path: Path, root: Path) -> None:
    proj = tmp_path / "proj"
    source_tree(proj / "mypkg")
    m = write_manifest(proj, "ff", ["mypkg @ ./mypkg"])
    os.mkfifo(proj / "mypkg" / "a-fifo")
    r = volenv("--root", root, "sync", m, timeout=120)
    assert r.returncode == 0, r.stderr
    first = snapshot_of(root, "ff")
    for cache in (".pytest_cache", ".mypy_cache", ".ruff_cache", "mypkg/__pycache__"):
        (proj / "mypkg" / cache).mkdir(parents=True, exist_ok=True)
        (proj / "mypkg" / cache / "x").write_text(str(cache))
    (proj / "mypkg" / "mypkg" / ".module.py.swp").write_text("editor")
    assert start(root, m) == ("1", first)


def test_a_second_manifest_beside_a_project_does_not_change_its_snapshot(tmp_path: Path) -> None:
    """A new user's walkthrough: a project that is its own local package (`mypkg @ ./`, what
    init writes for a package project) counted volenv's own files in its tree, so `init uv.lock
    -o volenv-lock.toml` (or `--lock`'s pylock.toml) beside it changed every snapshot of the
    first manifest. Those files are not the package; any other file still counts."""
    from volenv.manifest.parse import load_manifest

    proj = source_tree(tmp_path / "proj")
    m = proj / "volenv.toml"
    m.write_text('id = "acme/mypkg"\nname = "app"\npython = "3.11"\nrequirements = ["mypkg @ ./"]\n')
    before = load_manifest(m).digest
    (proj / "volenv-lock.toml").write_text(m.read_text())
    (proj / "pylock.toml").write_text('lock-version = "1.0"\n')
    (proj / "pylock.dev.toml").write_text('lock-version = "1.0"\n')
    assert load_manifest(m).digest == before
    (proj / "mypkg" / "extra.py").write_text("X = 1\n")
    assert load_manifest(m).digest != before


def test_offline_sync_of_a_changed_local_package_says_why(tmp_path: Path, root: Path) -> None:
    """A new user's walkthrough: `sync --offline` after editing a local package failed with uv's
    'UV_OFFLINE cannot be used with --refresh' as a build error (exit 7). uv rebuilds a local
    package only with --refresh-package, which it refuses offline (from its cache it could give
    the old code): a usage error naming the package, exit 2; the unchanged snapshot is reused."""
    proj = source_tree(tmp_path / "proj")
    m = tmp_path / "app.toml"
    m.write_text('id = "t/app"\nname = "app"\npython = "3.11"\nrequirements = ["mypkg @ ./proj"]\n')
    assert volenv("--root", root, "sync", m).returncode == 0
    assert volenv("--root", root, "sync", "--offline", m).returncode == 0  # reused: nothing to build
    (proj / "mypkg" / "__init__.py").write_text("CODE = 2\n")
    r = volenv("--root", root, "sync", "--offline", m)
    assert r.returncode == 2, r.stderr
    assert "--offline cannot build app" in r.stderr and "mypkg" in r.stderr and "Traceback" not in r.stderr
