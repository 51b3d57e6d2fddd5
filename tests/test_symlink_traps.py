"""Issue 14: a symlink planted anywhere in the volume layout (DESIGN.md "Volume layout") never
makes gc, repair, quarantine, materialize or a model fetch rename, delete, chmod or write
outside the root. Each test hashes a sentinel tree outside the root before and after."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Result, serve_bytes, snapshot_of, volenv, write_manifest
from test_models import REV, fake_hub  # noqa: F401  (a fixture)

MODEL = b"weights " * 512
SHA = hashlib.sha256(MODEL).hexdigest()
OLD = time.time() - 30 * 86400


@pytest.fixture(scope="module")
def model_url() -> Iterator[str]:
    with serve_bytes(MODEL) as base:
        yield f"{base}/w.bin"


def _model_manifest(d: Path, url: str, wheelhouse: Path, name: str = "weights") -> Path:
    extra = f'[[models]]\nname = "{name}"\nurl = "{url}"\nsha256 = "{SHA}"\nsize = {len(MODEL)}\n'
    return write_manifest(d, "other", ["alpha==1.0"], find_links=wheelhouse, extra=extra)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path, model_url: str) -> Path:
    """A volume where `gc --keep 0 --keep-within 0s` has something of every kind to remove: an
    old snapshot with packs, dead staging, old quarantine, trash, an unused model with a
    killed fetch's .part, an unreferenced blob and its temp."""
    base = tmp_path_factory.mktemp("template")
    root = base / "volenv"
    m1 = write_manifest(base / "m1", "app", ["alpha==1.0"], find_links=wheelhouse)
    m2 = write_manifest(base / "m2", "app", ["alpha==2.0"], find_links=wheelhouse)
    for m in (m1, m2):
        assert volenv("--root", root, "sync", "--pack", m).returncode == 0
    mm = _model_manifest(base / "mm", model_url, wheelhouse)
    r = volenv("--root", root, "models", "fetch", mm)
    assert r.returncode == 0, r.stderr
    (root / "staging" / "app-0123456789ab.deadhost-1-abcd" / "lib").mkdir(parents=True)
    (root / "quarantine" / "app-0123456789ab.deadhost-2-abcd").mkdir(parents=True)
    (root / "trash" / "leftover").mkdir(parents=True)
    part = next((root / "models" / "files" / "weights").iterdir()) / ".w.bin.part-deadhost-3-abcd"
    part.write_bytes(b"half")
    (root / "packs" / "blobs" / ("f" * 64 + ".tar.zst")).write_bytes(b"orphan blob")
    (root / "packs" / "blobs" / (".x.tar.zst.deadhost-4-abcd")).write_bytes(b"temp")
    for p in [root / "quarantine", root / "packs" / "blobs", part.parent]:
        for child in p.iterdir():
            os.utime(child, (OLD, OLD), follow_symlinks=False)
    return root


def _copy(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "vol" / "volenv"
    shutil.copytree(template, root, symlinks=True)
    return root


def tree_hash(top: Path) -> str:
    """Names, types, modes, sizes, mtimes and contents of everything under top."""
    h = hashlib.sha256()
    for dirpath, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(dirs + files):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            h.update(f"{os.path.relpath(p, top)} {st.st_mode:o} {st.st_size} {st.st_mtime_ns}\n".encode())
            if os.path.islink(p):
                h.update(os.readlink(p).encode())
            elif os.path.isfile(p):
                h.update(hashlib.sha256(Path(p).read_bytes()).digest())
    st = os.lstat(top)
    h.update(f"{st.st_mode:o} {st.st_mtime_ns}".encode())
    return h.hexdigest()


def plant(root: Path, rel: str, outside: Path) -> Path:
    """Move a layout directory's real content outside the root and leave a symlink to it:
    everything gc would remove there is now outside, one link away."""
    src = root / rel
    bait = outside / rel.replace("/", "_")
    bait.parent.mkdir(parents=True, exist_ok=True)
    if src.exists():
        shutil.move(str(src), bait)
    else:
        bait.mkdir(parents=True)
        (bait / "precious").write_text("keep me\n")
    src.parent.mkdir(parents=True, exist_ok=True)
    src.symlink_to(bait)
    return bait


def _no_traceback(r: Result) -> None:
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr


LAYOUT = [
    "envs",
    "envs/app",
    "envs/app/snapshots",
    "envs/app/index",
    "envs/app/used",
    "envs/app/pins",
    "staging",
    "quarantine",
    "trash",
    "locks",
    "logs",
    "logs/app",
    "models",
    "models/records",
    "models/files",
    "models/files/weights",
    "packs",
    "packs/blobs",
    "packs/snapshots",
    "cache",
    "cache/uv",
    "cache/uv/archive-v0",
    "aliases",
]


@pytest.mark.parametrize("rel", LAYOUT)
def test_gc_never_acts_through_a_linked_layout_dir(tmp_path: Path, template: Path, rel: str) -> None:
    root = _copy(template, tmp_path)
    outside = tmp_path / "outside"
    plant(root, rel, outside)
    before = tree_hash(outside)
    r = volenv("--root", root, "--json", "gc", "--yes", "--keep", "0", "--keep-within", "0s")
    _no_traceback(r)
    assert r.returncode in (0, 8), r.stderr
    assert tree_hash(outside) == before
    doc = r.json()
    traps = [i for i in doc["result"]["plan"]["items"] if i["kind"] == "trap"]  # type: ignore[index]
    assert any(t["path"] == str(root / rel) for t in traps), traps
    if rel in ("trash", "locks"):  # nothing can be removed safely without them
        assert r.returncode == 8 and not doc["ok"]
    (root / rel).unlink()
    assert tree_hash(outside) == before


def test_gc_checks_links_again_at_execution(tmp_path: Path, template: Path) -> None:
    """Links planted between the plan and its execution (gc's prompt): the renames into trash
    and the deletes are refused, not only the final delete."""
    from volenv.commands import gc  # what `volenv gc` calls: plan, then (after its prompt) execute
    from volenv.store.paths import VolumePaths

    root = _copy(template, tmp_path)
    paths = VolumePaths(root)
    plan = gc.plan(paths, 0, "0s")
    kinds = {i.kind for i in plan.removals}
    assert {"snapshot", "staging", "quarantine", "trash", "model", "pack", "part"} <= kinds, kinds
    outside = tmp_path / "outside"
    for rel in ("envs/app/snapshots", "staging", "quarantine", "models/files", "packs/blobs"):
        plant(root, rel, outside)
    before = tree_hash(outside)
    result = gc.execute(paths, plan)
    assert tree_hash(outside) == before
    failed = {o.kind for o in result.outcomes if not o.done and not o.kept}
    assert {"snapshot", "staging", "quarantine", "model", "part"} <= failed, result.outcomes
    # and a linked trash: nothing is renamed into it
    root2 = _copy(template, tmp_path / "second")
    paths2 = VolumePaths(root2)
    plan2 = gc.plan(paths2, 0, "0s")
    outside2 = tmp_path / "outside2"
    plant(root2, "trash", outside2)
    before2 = tree_hash(outside2)
    result2 = gc.execute(paths2, plan2)
    assert tree_hash(outside2) == before2 and not result2.ok
    assert (root2 / "staging" / "app-0123456789ab.deadhost-1-abcd").is_dir()


@pytest.mark.parametrize(
    "name", ["../../../../outside/victim", "..", "a/../../../../outside/victim", "/abs/outside"]
)
def test_gc_never_follows_a_model_record_name(tmp_path: Path, template: Path, name: str) -> None:
    """A pulled or planted model record whose spec.name climbs out of the root: left alone."""
    root = _copy(template, tmp_path)
    outside = tmp_path / "outside"
    victim = outside / "victim" / SHA[:16]
    victim.mkdir(parents=True)
    (victim / "w.bin").write_text("precious\n")
    rec = json.loads(next((root / "models" / "records").glob("weights.*.json")).read_text())
    rec["spec"]["name"] = name
    rec["name"] = name
    (root / "models" / "records" / "evil.0000000000000000.json").write_text(json.dumps(rec))
    before = tree_hash(outside)
    r = volenv("--root", root, "--json", "gc", "--yes", "--keep", "0", "--keep-within", "0s")
    _no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert tree_hash(outside) == before
    items = r.json()["result"]["plan"]["items"]  # type: ignore[index]
    evil = [i for i in items if i["path"].endswith("evil.0000000000000000.json")]
    assert evil and evil[0]["action"] == "keep" and "damaged" in evil[0]["reasons"][0]


def _damage(root: Path) -> Path:
    snap = root / "envs" / "app" / "snapshots" / snapshot_of(root, "app")
    init = next(snap.glob("lib/python*/site-packages/alpha/__init__.py"))
    init.write_text("print('tampered')\n")
    return snap


@pytest.mark.parametrize("rel", ["quarantine", "envs/app/snapshots", "staging"])
def test_repair_never_renames_through_a_link(tmp_path: Path, template: Path, rel: str) -> None:
    root = _copy(template, tmp_path)
    _damage(root)
    outside = tmp_path / "outside"
    plant(root, rel, outside)
    before = tree_hash(outside)
    r = volenv("--root", root, "verify", "app", "--level", "full", "--repair")
    _no_traceback(r)
    assert r.returncode in (4, 8), r.stderr
    assert tree_hash(outside) == before


def test_quarantine_on_activation_never_renames_through_a_link(
    tmp_path: Path, template: Path, wheelhouse: Path
) -> None:
    """`run --on-missing build` quarantines a damaged snapshot before rebuilding it."""
    root = _copy(template, tmp_path)
    snap = root / "envs" / "app" / "snapshots" / snapshot_of(root, "app")
    (snap / ".volenv" / "record").write_text("#volenv-record 1\n")
    outside = tmp_path / "outside"
    plant(root, "quarantine", outside)
    before = tree_hash(outside)
    m2 = write_manifest(tmp_path / "m2", "app", ["alpha==2.0"], find_links=wheelhouse)
    r = volenv("--root", root, "run", "--manifest", m2, "--", "true")
    _no_traceback(r)
    assert r.returncode == 8, r.stderr
    assert tree_hash(outside) == before
    assert snap.is_dir()


@pytest.mark.parametrize("rel", ["models", "models/files", "models/files/fresh", "models/records"])
def test_model_fetch_never_writes_through_a_link(
    tmp_path: Path, template: Path, wheelhouse: Path, model_url: str, rel: str
) -> None:
    root = _copy(template, tmp_path)
    outside = tmp_path / "outside"
    plant(root, rel, outside)
    before = tree_hash(outside)
    m = _model_manifest(tmp_path / "mm", model_url, wheelhouse, name="fresh")
    r = volenv("--root", root, "models", "fetch", m)
    _no_traceback(r)
    assert r.returncode == 8, r.stderr
    assert tree_hash(outside) == before


def test_materialize_never_follows_a_planted_copy(tmp_path: Path, template: Path) -> None:
    """A symlink where the local copy would be (another user's, or a stale one): replaced by a
    real extraction, the link's target untouched."""
    root = _copy(template, tmp_path)
    sid = snapshot_of(root, "app")
    outside = tmp_path / "outside"
    fake = outside / "fake-copy"
    shutil.copytree(root / "envs" / "app" / "snapshots" / sid, fake, symlinks=True)
    (fake / ".volenv" / "materialized.json").write_text(json.dumps({"record_sha256": "x"}))
    local = tmp_path / "local"
    local.mkdir()
    (local / sid).symlink_to(fake)
    before = tree_hash(outside)
    code = "import sys; print(sys.prefix)"
    r = volenv(
        "--root", root, "run", "--materialize", "always", "--materialize-dir", local, "--env", "app",
        "--", "python", "-c", code,
    )  # fmt: skip
    _no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(local / sid) and (local / sid).is_dir() and not (local / sid).is_symlink()
    assert tree_hash(outside) == before


def _current(root: Path) -> str:
    return str(json.loads((root / "envs/app/current").read_text())["snapshot"])


def _plant_file(root: Path, rel: str, outside: Path) -> Path:
    """Replace a layout file with a link to a file outside (its content moved there)."""
    src = root / rel
    bait = outside / rel.replace("/", "_")
    bait.parent.mkdir(parents=True, exist_ok=True)
    if src.exists():
        shutil.move(str(src), bait)
    else:
        bait.write_text("keep me\n")
    src.symlink_to(bait)
    return bait


@pytest.mark.parametrize(
    ("rel", "kind", "command"),
    [
        ("envs/app", "dir", ["rollback", "app"]),
        ("envs/app", "dir", ["pin", "{sid}"]),
        ("envs/app/pins", "dir", ["pin", "{sid}"]),
        ("envs/app/pins", "dir", ["unpin", "{sid}"]),
        ("envs/app/used", "dir", ["run", "--env", "app", "--", "true"]),
        ("envs/app/used/{sid}", "file", ["run", "--env", "app", "--", "true"]),
        ("envs/app/used/{sid}", "dangling", ["run", "--env", "app", "--", "true"]),
        ("envs/app/history.jsonl", "file", ["rollback", "app"]),
        ("logs/app/events.jsonl", "file", ["pin", "{sid}"]),
        ("aliases", "dir", ["sync", "{m3}"]),
        ("packs", "dir", ["sync", "--pack", "{m3}"]),
        ("packs/blobs", "dir", ["sync", "--pack", "{m3}"]),
        ("packs/snapshots", "dir", ["sync", "--pack", "{m3}"]),
    ],
)
def test_writes_never_go_through_a_planted_link(
    tmp_path: Path, template: Path, wheelhouse: Path, rel: str, kind: str, command: list[str]
) -> None:
    """Pointers, history, events, pins, use marks and aliases: a link planted at the file or at
    a directory above it is refused (exit 8) or left alone (a use mark is best effort), never
    written, touched or deleted through."""
    root = _copy(template, tmp_path)
    sid = _current(root)
    m3 = write_manifest(tmp_path / "m3", "app", ["alpha==1.0", "gamma==1.0"], find_links=wheelhouse)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / sid).write_text("a file named like the snapshot: unpin must not delete it\n")
    rel = rel.format(sid=sid)
    if kind == "dir":
        plant(root, rel, outside)
    elif kind == "file":
        _plant_file(root, rel, outside)
    else:
        (root / rel).unlink(missing_ok=True)
        (root / rel).symlink_to(outside / "created-through-a-link")
    before = tree_hash(outside)
    time.sleep(0.01)  # an mtime touched through the link would show
    argv = [a.format(sid=sid, m3=m3) for a in command]
    r = volenv("--root", root, *argv)
    _no_traceback(r)
    # a history that is a link is not read through either: damage (exit 4), as any record
    allowed = (0, 4, 8) if rel.endswith("history.jsonl") else (0, 8)
    assert r.returncode in allowed, (r.returncode, r.stderr)
    assert tree_hash(outside) == before
    assert not (outside / "created-through-a-link").exists()


def test_hf_fetch_never_deletes_a_linked_file_outside(
    tmp_path: Path,
    root: Path,
    wheelhouse: Path,
    fake_hub: tuple[str, dict[str, bytes], object],  # noqa: F811
) -> None:
    """F2: a planted link in the Hub snapshot to an outside file whose content does not hash to
    its (64-hex) name: the link is damage and removed; its target is never hashed or deleted."""
    endpoint, _files, _hits = fake_hub
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ("a" * 64)).write_bytes(b"precious, not a blob\n")
    before = tree_hash(outside)
    snap = root / "models" / "hf" / "hub" / "models--acme--tiny-model" / "snapshots" / REV
    snap.mkdir(parents=True)
    (snap / "evil").symlink_to(outside / ("a" * 64))
    extra = (
        '[[models]]\nname = "tiny"\n'
        f'hf = {{ repo = "acme/tiny-model", revision = "{REV}", files = ["config.json"] }}\n'
    )
    m = write_manifest(tmp_path / "m", "hub", ["alpha==1.0"], find_links=wheelhouse, extra=extra)
    r = volenv("--root", root, "models", "fetch", m, env={"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1"})
    _no_traceback(r)
    assert r.returncode == 9, r.stderr
    assert "outside" in r.stderr
    assert tree_hash(outside) == before
    assert not (snap / "evil").is_symlink()
    assert not list((root / "models" / "records").glob("tiny.*.json"))


def test_hf_fetch_never_walks_a_linked_snapshot_folder(
    tmp_path: Path,
    root: Path,
    wheelhouse: Path,
    fake_hub: tuple[str, dict[str, bytes], object],  # noqa: F811
) -> None:
    """An attacker's pass: `snapshots/REV` itself a link to an outside folder. os.walk followed
    it and deleted each outside file as "a link out of the Hub cache"; the link is now removed
    before the download, and the outside folder is untouched."""
    endpoint, _files, _hits = fake_hub
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}\n")
    (outside / "secret.txt").write_text("precious\n")
    before = tree_hash(outside)
    snaps = root / "models" / "hf" / "hub" / "models--acme--tiny-model" / "snapshots"
    snaps.mkdir(parents=True)
    (snaps / REV).symlink_to(outside, target_is_directory=True)
    extra = (
        '[[models]]\nname = "tiny"\n'
        f'hf = {{ repo = "acme/tiny-model", revision = "{REV}", files = ["config.json"] }}\n'
    )
    m = write_manifest(tmp_path / "m", "hub", ["alpha==1.0"], find_links=wheelhouse, extra=extra)
    r = volenv("--root", root, "models", "fetch", m, env={"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1"})
    _no_traceback(r)
    assert r.returncode in (0, 9), r.stderr
    assert tree_hash(outside) == before
    assert not (snaps / REV).is_symlink()
