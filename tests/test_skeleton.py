"""Issue 17: `run --materialize` execs from a whole skeleton (startup pack local, everything
else a link to the volume's own file or directory), which the background replaces link by link
atomically: every path of the snapshot resolves to the recorded bytes at every instant, for
any access (stat, listdir, open, `python -I`), and a killed background never leaves a tree that
is taken as complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import snapshot_of, volenv, volenv_popen
from test_trace import _traced_and_packed, traced_env  # noqa: F401 - the fixture
from volenv.store.integrity import load_record, verify_snapshot

# the traced start; then, outside the trace, bare stat/exists/listdir and a read of a file that
# is not local yet, and an import of it; prints what it used, snapshot-relative
PROGRAM = r"""
import json, os, sys
prefix = os.path.join(sys.prefix, "")
opened = []

def hook(event, args):
    if event == "open" and isinstance(args[0], str):
        p = os.path.abspath(args[0])
        if p.startswith(prefix):
            opened.append(p[len(prefix):])

sys.addaudithook(hook)
import tracee; tracee.start()
print("traced-ok", flush=True)
late_dir = os.path.join(os.path.dirname(os.path.dirname(tracee.__file__)), "late")
init = os.path.join(late_dir, "__init__.py")
assert os.path.exists(init) and os.path.isdir(late_dir), "missing"
size = os.stat(init).st_size
names = sorted(n for n in os.listdir(late_dir) if n != "__pycache__")
with open(init, "rb") as fh:
    data = fh.read()
import late
print(json.dumps({
    "late": late.LATE, "size": size, "names": names, "data": data.decode(),
    "executable": sys.executable, "prefix": sys.prefix,
    "modules": sorted(sys.modules),
    "files": sorted(m.__file__[len(prefix):] for m in list(sys.modules.values())
                    if (getattr(m, "__file__", None) or "").startswith(prefix)),
    "opened": sorted(set(opened)),
}), flush=True)
"""


def _packed_start(
    tmp_path: Path, env: tuple[Path, Path]
) -> tuple[Path, Path, str, Path, Path, tuple[object, ...]]:
    """The traced env packed, and the `volenv run --materialize always` arguments into
    tmp_path/local: (manifest, root, snapshot id, local dir, its tree, run arguments)."""
    m, root = env
    _traced_and_packed(m, root)
    sid = snapshot_of(root, "app")
    local = tmp_path / "local"
    args = ("--root", root, "run", "--materialize", "always", "--materialize-dir", local, "--manifest", m)
    return m, root, sid, local, local / sid, args


def _wait_mark(tree: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (tree / ".volenv" / "materialized.json").exists():
        assert time.monotonic() < deadline, "the background extraction never completed"
        time.sleep(0.05)


def _links_left(tree: Path) -> list[str]:
    """Links in the tree that the record does not have: skeleton links not yet replaced."""
    record = load_record(tree)
    out = []
    for dirpath, dirnames, filenames in os.walk(tree):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(tree))
            if p.is_symlink() and record[rel].type != "l":
                out.append(rel)
    return out


def test_program_sees_every_file_while_the_background_is_stopped(
    tmp_path: Path,
    traced_env: tuple[Path, Path],  # noqa: F811
) -> None:
    m, root = traced_env
    _traced_and_packed(m, root)
    sid = snapshot_of(root, "app")
    snap = root / "envs" / "app" / "snapshots" / sid
    inplace = volenv("--root", root, "run", "--manifest", m, "--", "python", "-I", "-c", PROGRAM)
    assert inplace.returncode == 0, inplace.stderr
    want = json.loads(inplace.stdout.splitlines()[-1])
    local = tmp_path / "local"
    tree = local / sid
    args = ("--root", root, "run", "--materialize", "always", "--materialize-dir", local, "--manifest", m)
    # the background stops (SIGSTOP) before its first pack: `late` is only a link to the volume
    p = volenv_popen(
        *args,
        "--",
        "python",
        "-I",
        "-c",
        PROGRAM,
        env={"VOLENV_FAULT": "materialize-background:pause"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert "skeleton of" in err and "background" in err
        assert not (tree / ".volenv" / "materialized.json").exists()
        late = next(tree.glob("lib/python*/site-packages/late"))
        assert late.is_symlink()  # not local: it ran from the volume's copy through the link
        assert os.readlink(late) == str(snap.resolve() / late.relative_to(tree))
        assert not next(tree.glob("lib/python*/site-packages/tracee/__init__.py")).is_symlink()
        assert (tree / "bin").is_dir() and not (tree / "bin").is_symlink()
        got = json.loads(out.splitlines()[-1])
        assert got["prefix"] == str(tree) and got["executable"].startswith(str(tree) + "/")
        # the same modules, the same snapshot files opened and imported, the same bytes
        for key in ("late", "size", "names", "data", "modules", "files", "opened"):
            assert got[key] == want[key], key
        # a second start while the background is still stopped runs from the same tree at once
        r = volenv(*args, "--", "python", "-c", "import late; print(late.LATE)")
        assert r.returncode == 0 and r.stdout == "late\n", r.stderr
        assert "another start's background extraction" in r.stderr
    finally:
        pid = int((tree / ".volenv" / "materializing").read_text().split()[0])
        os.kill(pid, signal.SIGCONT)
    _wait_mark(tree)
    assert _links_left(tree) == [] and not late.is_symlink()
    assert verify_snapshot(tree, "full").ok
    assert not list(local.glob(f".{sid}.partial-*"))
    r = volenv(*args, "--", "python", "-I", "-c", PROGRAM)
    assert r.returncode == 0 and "reusing the complete local copy" in r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["opened"] == want["opened"]


def test_reads_during_the_swaps_always_find_the_recorded_bytes(
    tmp_path: Path,
    traced_env: tuple[Path, Path],  # noqa: F811
) -> None:
    """A reader hammering stat/exists/listdir/open on not-yet-local paths while the background
    swaps the links for real files never sees one missing or different."""
    m, root = traced_env
    _traced_and_packed(m, root)
    sid = snapshot_of(root, "app")
    local = tmp_path / "local"
    tree = local / sid
    reader = r"""
import os, signal, sys
sp = os.path.dirname(os.path.dirname(__import__("tracee").__file__))
paths = [os.path.join(sp, "late", "__init__.py"), os.path.join(sp, "tracee", "assets", "spare.txt")]
want = [open(p, "rb").read() for p in paths]
meta = os.path.join(sys.prefix, ".volenv")
seen, n, after = set(), 0, 0
while after < 200:
    for p, w in zip(paths, want):
        seen.add((p, os.path.islink(p) or os.path.islink(os.path.dirname(p))))
        assert os.path.exists(p) and os.stat(p).st_size == len(w), p
        assert os.path.basename(p) in os.listdir(os.path.dirname(p)), p
        with open(p, "rb") as fh:
            assert fh.read() == w, p
    n += 1
    if n == 20:  # let the stopped background go on while this keeps reading
        with open(os.path.join(meta, "materializing")) as fh:
            os.kill(int(fh.read().split()[0]), signal.SIGCONT)
    if os.path.exists(os.path.join(meta, "materialized.json")):
        after += 1
print(sorted(seen))
"""
    args = ("--root", root, "run", "--materialize", "always", "--materialize-dir", local, "--manifest", m)
    r = volenv(
        *args, "--", "python", "-I", "-c", reader, env={"VOLENV_FAULT": "materialize-background:pause"}
    )
    assert r.returncode == 0, r.stderr
    seen = r.stdout.strip()
    # each path was read both through its link and as the real file: the swaps happened meanwhile
    assert "late/__init__.py', False" in seen and "late/__init__.py', True" in seen, seen
    assert "spare.txt', False" in seen and "spare.txt', True" in seen, seen
    _wait_mark(tree)
    assert verify_snapshot(tree, "full").ok


def test_killed_background_resumes_and_is_never_taken_as_complete(
    tmp_path: Path,
    traced_env: tuple[Path, Path],  # noqa: F811
) -> None:
    m, root, sid, local, tree, args = _packed_start(tmp_path, traced_env)
    # SIGKILL right after the background's first swap: the program still runs, whole
    r = volenv(*args, "--", "python", "-c", PROGRAM, env={"VOLENV_FAULT": "materialize-swap:kill"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["late"] == "late"
    time.sleep(0.3)
    assert not (tree / ".volenv" / "materialized.json").exists()
    assert _links_left(tree)  # some links were never replaced
    # the next start does not take it as complete: it runs from the whole skeleton and resumes
    r = volenv(*args, "--", "python", "-c", PROGRAM)
    assert r.returncode == 0, r.stderr
    assert "reusing" not in r.stderr and "resuming the background extraction" in r.stderr
    _wait_mark(tree)
    assert _links_left(tree) == [] and not list(local.glob(f".{sid}.partial-*"))
    assert verify_snapshot(tree, "full").ok
    assert volenv("--root", root, "verify", sid, "--level", "full").returncode == 0
    r = volenv(*args, "--", "python", "-c", "import late")
    assert r.returncode == 0 and "reusing the complete local copy" in r.stderr
    # a skeleton that lost a path is never resumed: it is discarded and extracted again
    other = tmp_path / "other"
    args2 = ("--root", root, "run", "--materialize", "always", "--materialize-dir", other, "--manifest", m)
    r = volenv(*args2, "--", "true", env={"VOLENV_FAULT": "materialize-background:kill"})
    assert r.returncode == 0, r.stderr
    time.sleep(0.3)
    victim = Path(_links_left(other / sid)[0])
    (other / sid / victim).unlink()
    r = volenv(*args2, "--", "python", "-c", PROGRAM)
    assert r.returncode == 0, r.stderr
    assert "resuming" not in r.stderr and "startup pack" in r.stderr
    _wait_mark(other / sid)
    assert verify_snapshot(other / sid, "full").ok


@pytest.mark.mounts
def test_without_rename_exchange_everything_is_extracted_before_exec(
    tmp_path: Path,
    traced_env: tuple[Path, Path],  # noqa: F811
) -> None:
    """A local filesystem that cannot exchange a directory with a link (a FUSE mount here):
    no skeleton, the whole tree is extracted and marked before the program starts."""
    from test_materialize import slowfs

    m, root = traced_env
    _traced_and_packed(m, root)
    sid = snapshot_of(root, "app")
    (tmp_path / "disk").mkdir()
    with slowfs(tmp_path / "disk", tmp_path / "fuse", meta_ms=0) as local:
        args = ("--root", root, "run", "--materialize", "always", "--materialize-dir", local, "--manifest", m)
        r = volenv(*args, "--", "python", "-c", PROGRAM)
        assert r.returncode == 0, r.stderr
        assert "cannot swap a directory" in r.stderr and "startup pack" not in r.stderr
        assert (local / sid / ".volenv" / "materialized.json").exists()
        assert _links_left(local / sid) == []
        assert json.loads(r.stdout.splitlines()[-1])["prefix"] == str(local / sid)


def test_damaged_pack_in_the_background_never_goes_live(
    tmp_path: Path,
    traced_env: tuple[Path, Path],  # noqa: F811
) -> None:
    """A pack outside the startup pack is damaged: nothing of it replaces a link, the program
    runs on (reading the volume's copy), the tree is never marked complete."""
    m, root = traced_env
    man = _traced_and_packed(m, root)
    sid = snapshot_of(root, "app")
    packs = man["packs"]
    assert isinstance(packs, list)
    victim = next(p for p in packs if p["group"].startswith("late"))
    blob = root / "packs" / "blobs" / f"{victim['id']}.tar.zst"
    blob.write_bytes(blob.read_bytes()[:-8] + bytes(8))
    local = tmp_path / "local"
    tree = local / sid
    args = ("--root", root, "run", "--materialize", "always", "--materialize-dir", local, "--manifest", m)
    r = volenv(*args, "--", "python", "-c", PROGRAM)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["data"] == "LATE = 'late'\n"
    deadline = time.monotonic() + 30
    while not (tree / ".volenv" / "materialize-failed").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "damaged" in (tree / ".volenv" / "materialize-failed").read_text()
    assert not (tree / ".volenv" / "materialized.json").exists()
    assert next(tree.glob("lib/python*/site-packages/late")).is_symlink()
    r = volenv(*args, "--", "python", "-c", "import late; print(late.LATE)")
    assert r.returncode == 0 and r.stdout == "late\n", r.stderr
    assert "reusing" not in r.stderr and "resuming" not in r.stderr


def test_a_deep_untraced_package_swaps_in_whole(tmp_path: Path) -> None:
    """A package the start never touches, with more directories than a tree keeps open (like
    botocore/data: hundreds of service folders): its directory link is swapped in whole and the
    tree is marked complete. The swap once used a parent descriptor that the directory cache
    had closed while setting the modes below it (and that a new directory then reused): the
    F5-TTS worker's background failed with ENOENT and its tree was never completed."""
    from conftest import write_manifest
    from wheelfactory import make_wheel

    wheels = tmp_path / "wheels"
    make_wheel(wheels, "starter", "1.0", files={"starter/__init__.py": "OK = 1\n"})
    data = {f"deep/data/svc{i:03d}/2024-01-0{i % 9 + 1}/api.json": f'{{"n": {i}}}' for i in range(120)}
    make_wheel(wheels, "deep", "1.0", files={"deep/__init__.py": "", **data})
    m = write_manifest(tmp_path, "app", ["starter==1.0", "deep==1.0"], find_links=wheels)
    root = tmp_path / "volume" / "volenv"
    assert volenv("--root", root, "sync", m).returncode == 0
    start = "import starter"
    assert volenv("--root", root, "trace", "--manifest", m, "--", "python", "-c", start).returncode == 0
    r = volenv("--root", root, "pack", "app")
    assert r.returncode == 0, r.stderr
    sid = snapshot_of(root, "app")
    local = tmp_path / "local"
    tree = local / sid
    args = ("--root", root, "run", "--materialize", "always", "--materialize-dir", local, "--manifest", m)
    r = volenv(*args, "--", "python", "-c", start)
    assert r.returncode == 0, r.stderr
    assert "skeleton of" in r.stderr, r.stderr
    deadline = time.monotonic() + 60
    while not (tree / ".volenv" / "materialized.json").exists():
        failed = tree / ".volenv" / "materialize-failed"
        assert not failed.exists(), failed.read_text()
        assert time.monotonic() < deadline, "the background extraction never completed"
        time.sleep(0.05)
    assert _links_left(tree) == []
    assert verify_snapshot(tree, level="full").ok


def test_a_second_start_never_discards_a_tree_a_program_runs_from(
    tmp_path: Path,
    traced_env: tuple[Path, Path],  # noqa: F811
) -> None:
    """Start A's background fails (its skeleton stays whole, A keeps running from it); start B
    on the same disk used to discard that tree, and A lost `late` mid-run. B now extracts a
    fresh copy beside it; once A is gone, a later start replaces the tree."""
    _m, _root, _sid, _local, tree, args = _packed_start(tmp_path, traced_env)
    a = volenv_popen(
        *args, "--", "python", "-c", "import time; time.sleep(4); import late; print(late.LATE)",
        env={"VOLENV_FAULT": "materialize-background:fail"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (tree / ".volenv" / "materialize-failed").exists():
            assert a.poll() is None and time.monotonic() < deadline, "A's background never failed"
            time.sleep(0.05)
        b = volenv(*args, "--verify", "stat", "--", "python", "-c", "import sys, late; print(sys.prefix)")
        assert b.returncode == 0, b.stderr
        assert "in use by a running program" in b.stderr and b.stdout.strip() != str(tree), b.stderr
        out, err = a.communicate(timeout=60)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 0 and out == "late\n", err
    assert not (tree / ".volenv" / "materialized.json").exists()  # A's tree, left as it was
    c = volenv(*args, "--", "python", "-c", "import sys, late; print(sys.prefix)")
    assert c.returncode == 0 and c.stdout.strip() == str(tree), c.stderr  # A gone: replaced
    _wait_mark(tree)


def _gone(pattern: str, where: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while list(where.glob(pattern)):
        assert time.monotonic() < deadline, f"{pattern} was never deleted: {list(where.glob(pattern))}"
        time.sleep(0.05)


def test_a_leftover_copy_is_deleted_after_the_new_extraction_not_before(
    tmp_path: Path,
    traced_env: tuple[Path, Path],  # noqa: F811
) -> None:
    """A copy without its completion mark is set aside in one rename and deleted once this
    start's own files exist: by the background after its extraction, or by a detached process
    after a whole extraction. Deleting it first cost the start seconds, and made its own file
    creation slower (ext4 scans past recently deleted inodes)."""
    _m, _root, sid, local, tree, args = _packed_start(tmp_path, traced_env)

    def leftover() -> None:
        assert volenv(*args, "--", "true").returncode == 0
        _wait_mark(tree)
        (tree / ".volenv" / "materialized.json").unlink()  # as if killed before its mark

    leftover()
    r = volenv(
        *args, "--", "python", "-c", "import late", env={"VOLENV_FAULT": "materialize-background:pause"}
    )
    assert r.returncode == 0, r.stderr
    pid = int((tree / ".volenv" / "materializing").read_text().split()[0])
    try:
        time.sleep(0.3)
        assert list(local.glob(f".{sid}.stale-*")), "deleted before the background extracted"
    finally:
        os.kill(pid, signal.SIGCONT)
    _wait_mark(tree)
    _gone(f".{sid}.stale-*", local)
    assert verify_snapshot(tree, "full").ok
    # a whole extraction (--verify stat: no skeleton) deletes it in a detached process after
    leftover()
    r = volenv(*args, "--verify", "stat", "--", "python", "-c", "import late")
    assert r.returncode == 0 and "extracted" in r.stderr, r.stderr
    _gone(f".{sid}.stale-*", local)
    assert not list(local.glob(f".{sid}.partial-*"))
    assert verify_snapshot(tree, "full").ok


def test_leftover_deletion_survives_an_ignored_sigchld_and_holds_no_caller_descriptor(
    tmp_path: Path,
    traced_env: tuple[Path, Path],  # noqa: F811
) -> None:
    """Some inits start their children with SIGCHLD ignored: waiting for the forked process
    then fails with ECHILD, which made a start with a leftover copy exit 1. And the detached
    deletion keeps no inherited descriptor beyond stdio: a caller waiting for EOF on a pipe it
    passed is not held up by a slow deletion."""
    import sys

    from conftest import base_env

    _m, _root, sid, local, tree, args = _packed_start(tmp_path, traced_env)
    assert volenv(*args, "--", "true").returncode == 0
    _wait_mark(tree)
    (tree / ".volenv" / "materialized.json").unlink()
    r, w = os.pipe()
    launcher = (
        "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN);"
        " os.execv(sys.executable, [sys.executable, '-m', 'volenv', *sys.argv[1:]])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", launcher, *map(str, args), "--verify", "stat", "--", "python", "-c", "import late"],
        env=base_env(), capture_output=True, text=True, pass_fds=(w,), timeout=300,
    )  # fmt: skip
    os.close(w)
    try:
        assert proc.returncode == 0, proc.stderr
        t0 = time.monotonic()
        assert os.read(r, 1) == b""  # EOF: nobody else holds the write end
        assert time.monotonic() - t0 < 5
    finally:
        os.close(r)
    _gone(f".{sid}.stale-*", local)
    assert verify_snapshot(tree, "full").ok


def test_the_background_runs_at_idle_priority(
    tmp_path: Path,
    traced_env: tuple[Path, Path],  # noqa: F811
) -> None:
    """The started program comes first: the background extraction runs in the idle classes
    for CPU and disk, at nice 19 (at nice 10 it still slowed the F5-TTS worker's start)."""
    import psutil

    _m, _root, _sid, _local, tree, args = _packed_start(tmp_path, traced_env)
    r = volenv(*args, "--", "true", env={"VOLENV_FAULT": "materialize-background:pause"})
    assert r.returncode == 0, r.stderr
    pid = int((tree / ".volenv" / "materializing").read_text().split()[0])
    try:
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        proc = psutil.Process(pid)
        assert proc.nice() == 19
        assert proc.ionice().ioclass == psutil.IOPRIO_CLASS_IDLE
    finally:
        os.kill(pid, signal.SIGCONT)
    _wait_mark(tree)


def _forge_startup_pack(root: Path, man: dict[str, object], forge: str, marker: Path) -> None:
    """Replace the first startup pack holding a site-packages file with one that also holds a hostile member, and make the
    (unsigned) pack list name it, so that its id, sizes and count are all consistent."""
    import hashlib
    import io
    import tarfile

    import zstandard

    packs = man["packs"]
    assert isinstance(packs, list)
    if forge == "meta":  # the metadata pack, extracted while the startup packs are
        meta = next(p for p in packs if p["group"] == "_meta")
        blob = root / "packs" / "blobs" / f"{meta['id']}.tar.zst"
        blob.write_bytes(blob.read_bytes()[:-8] + bytes(8))
        return
    from volenv.store.packformat import startup_chunk

    for victim in sorted((p for p in packs if startup_chunk(p["group"])), key=lambda p: p["group"]):
        blob = root / "packs" / "blobs" / f"{victim['id']}.tar.zst"
        raw = zstandard.ZstdDecompressor().decompress(blob.read_bytes(), max_output_size=1 << 30)
        members: list[tuple[tarfile.TarInfo, bytes | None]] = []
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            for m in tar:
                fh = tar.extractfile(m) if m.isfile() else None
                members.append((m, fh.read() if fh else None))
        files = [m.name for m, _ in members if m.isfile() and "/site-packages/" in m.name]
        if files:
            break
    first = files[0]
    site = first.partition("/site-packages/")[0] + "/site-packages"
    evil = f"import os; open({str(marker)!r}, 'w')\n".encode()
    if forge == "unrecorded":  # a .pth runs at interpreter start
        info = tarfile.TarInfo(f"{site}/zz-evil.pth")
        members.append((info, evil))
    elif forge == "unwritable":  # a name no filesystem takes: the child's error is not the reason
        info = tarfile.TarInfo(f"{site}/{'x' * 300}.pth")
        members.append((info, evil))
    elif forge == "metadata":  # a forged completion mark and record
        info = tarfile.TarInfo(".volenv/materialized.json")
        members.append((info, b"{}"))
    else:  # a recorded file with other bytes and another size
        i = next(i for i, (m, _) in enumerate(members) if m.name == first)
        info = members[i][0]
        members[i] = (info, b"import os; open(" + repr(str(marker)).encode() + b", 'w')\n" + b"#" * 7)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m, data in members:
            if data is not None:
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data) if data is not None else None)
    raw = out.getvalue()
    packed = zstandard.ZstdCompressor().compress(raw)
    new_id = hashlib.sha256(raw).hexdigest()
    (root / "packs" / "blobs" / f"{new_id}.tar.zst").write_bytes(packed)
    victim.update(
        id=new_id,
        tar_size=len(raw),
        blob_sha256=hashlib.sha256(packed).hexdigest(),
        blob_size=len(packed),
        files=len(members),
    )
    sid = man["snapshot"]
    (root / "packs" / "snapshots" / f"{sid}.json").write_text(json.dumps(man))


@pytest.mark.parametrize("forge", ["unrecorded", "unwritable", "metadata", "resized", "meta"])
def test_a_forged_startup_pack_never_runs_though_it_extracts_before_the_record_is_read(
    tmp_path: Path,
    traced_env: tuple[Path, Path],  # noqa: F811
    forge: str,
) -> None:
    """The startup packs extract in processes forked before the metadata pack brings the record
    (so both run at once), and their members are checked against it afterwards: a member the
    record lacks (a .pth that runs at start; one whose name no filesystem takes, which made the
    start exit 1 on the child's ENAMETOOLONG), one in the metadata directory, or a recorded file
    of another size fails the start (exit 4) before anything runs, and leaves no tree; so does
    a damaged metadata pack, whose failure stops the startup packs' processes."""
    m, root = traced_env
    man = _traced_and_packed(m, root)
    marker = tmp_path / "EXECUTED"
    _forge_startup_pack(root, man, forge, marker)
    local = tmp_path / "local"
    args = ("--root", root, "run", "--materialize", "always", "--materialize-dir", local, "--manifest", m)
    r = volenv(*args, "--", "python", "-c", "print('RAN')")
    assert r.returncode == 4 and "RAN" not in r.stdout and "Traceback" not in r.stderr, r.stderr
    assert ("damaged" if forge == "meta" else "does not match the snapshot's record") in r.stderr, r.stderr
    assert not marker.exists()
    assert [p.name for p in local.iterdir() if not p.name.startswith(".exchange")] == []
    r = volenv("--root", root, "run", "--materialize", "auto", "--materialize-dir", local, "--manifest", m,
               "--", "python", "-c", "print('RAN')", env={"VOLENV_MATERIALIZE_THRESHOLD_MS": "0"})  # fmt: skip
    assert r.returncode == 0 and r.stdout == "RAN\n" and "running in place" in r.stderr, r.stderr
    assert not marker.exists()


@pytest.mark.parametrize("mode", ["always", "auto"])
def test_a_start_that_cannot_fork_ends_instead_of_spinning(
    tmp_path: Path,
    traced_env: tuple[Path, Path],  # noqa: F811
    mode: str,
) -> None:
    """fork fails with EAGAIN (a container's pids limit): the startup packs are extracted by the
    start itself, and with no process for the background it is exit 4 under `always` and in
    place under `auto`. Each failed fork used to put its share back on the list being walked:
    the start spun forever."""
    import sys

    from conftest import base_env

    m, root = traced_env
    _traced_and_packed(m, root)
    local = tmp_path / "local"
    code = (
        "import errno, os, runpy, sys\n"
        "def fork():\n"
        "    raise OSError(errno.EAGAIN, 'Resource temporarily unavailable')\n"
        "os.fork = fork\n"
        f"sys.argv = ['volenv', '--root', {str(root)!r}, 'run', '--materialize', {mode!r},"
        f" '--materialize-dir', {str(local)!r}, '--manifest', {str(m)!r}, '--', 'python', '-c', 'print(1)']\n"
        "runpy.run_module('volenv', run_name='__main__')\n"
    )
    env = {**base_env(), "VOLENV_MATERIALIZE_THRESHOLD_MS": "0"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "did not start" in r.stderr, r.stderr
    if mode == "always":
        assert r.returncode == 4 and r.stdout == "", r.stderr
    else:
        assert r.returncode == 0 and r.stdout == "1\n" and "running in place" in r.stderr, r.stderr
    assert [p.name for p in local.iterdir() if not p.name.startswith(".exchange")] == []


def test_a_copy_beside_an_in_use_tree_is_kept_while_a_child_of_its_program_runs_there(
    tmp_path: Path,
    traced_env: tuple[Path, Path],  # noqa: F811
) -> None:
    """Start B ran beside A's in-use tree, from a copy named after B's pid; B's program left a
    child (which kept the inherited in-use descriptor) and exited. A later start used to delete
    that copy as soon as B's pid was gone, from under the child; it now waits for the copy's
    in-use lock to be free."""
    from volenv.start.localdisk import leftovers

    _m, _root, sid, local, tree, args = _packed_start(tmp_path, traced_env)
    a = volenv_popen(
        *args, "--", "python", "-c", "import time; time.sleep(5)",
        env={"VOLENV_FAULT": "materialize-background:fail"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    child = 0
    try:
        deadline = time.monotonic() + 60
        while not (tree / ".volenv" / "materialize-failed").exists():
            assert a.poll() is None and time.monotonic() < deadline, "A's background never failed"
            time.sleep(0.05)
        err = str(tmp_path / "child.err")
        spawn = (
            "import subprocess, sys\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], close_fds=False,"
            f" start_new_session=True, stdout=subprocess.DEVNULL, stderr=open({err!r}, 'w'))\n"
            "print(sys.prefix, c.pid)\n"
        )
        b = volenv(*args, "--", "python", "-c", spawn)
        assert b.returncode == 0 and "in use by a running program" in b.stderr, b.stderr
        prefix, pid = b.stdout.split()
        child = int(pid)
        partial = Path(prefix).parent
        assert partial.name.startswith(f".{sid}.partial-"), prefix
        assert partial not in leftovers(local)  # B gone, its child still there
        a.communicate(timeout=60)
        c = volenv(*args, "--", "python", "-c", "import late")  # A and B gone: the tree is replaced
        assert c.returncode == 0, c.stderr
        _wait_mark(tree)
        _gone(f".{sid}.stale-*", local)
        assert partial.is_dir() and Path(prefix, "bin").is_dir()  # the child's copy, kept
        assert partial not in leftovers(local)
    finally:
        if a.poll() is None:
            a.kill()
        if child:
            os.kill(child, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while partial not in leftovers(local):  # the child gone: deletable
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_partial_copy_whose_pid_was_reused_is_collected(tmp_path: Path) -> None:
    """A busy machine wraps its pids in minutes: a partial copy named by a pid that a process
    started after the copy was last touched now holds is a dead start's, not a live one's (CI
    saw one kept forever)."""
    import sys

    from volenv.start.localdisk import leftovers

    local = tmp_path / "l"
    local.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        partial = local / f".app-0123456789ab.partial-host-{other.pid}-0000aaaa"
        (partial / "app-0123456789ab").mkdir(parents=True)
        old = time.time() - 3600
        os.utime(partial, (old, old))  # its owner last touched it an hour before `other` started
        assert partial in leftovers(local)
        os.utime(partial, None)  # touched now: `other` may be the owner
        assert partial not in leftovers(local)
    finally:
        other.kill()
        other.wait()
