"""Issue 17: what a start trace puts before exec. Directories the start lists are local with
every file in them (a scan stats each entry; through a link each stat is a walk down the
volume), and big traced files beyond the startup share wait in the prefetch pack, read through
the skeleton's links until the background (which extracts that pack first) replaces them."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import snapshot_of, volenv, volenv_popen, write_manifest
from test_trace import startup_names
from volenv.store.integrity import verify_snapshot
from volenv.store.packformat import STARTUP_FILE_MAX, PackInfo, pack_order
from wheelfactory import make_wheel

BIG = STARTUP_FILE_MAX + (1 << 20)

# lists plugins/ and stats each entry without opening any; reads weights/big.bin whole (weights/
# holds nothing else the start uses: only the traced big file puts it in the trace)
START = """
import hashlib, os, scanner
d = os.path.join(os.path.dirname(scanner.__file__), "plugins")
with os.scandir(d) as it:
    names = sorted(e.name for e in it if e.is_file())
try:  # looked for and absent, as importlib.metadata looks for entry_points.txt
    open(os.path.join(os.path.dirname(scanner.__file__), "data", "absent.txt"))
except FileNotFoundError:
    pass
with open(os.path.join(os.path.dirname(scanner.__file__), "weights", "big.bin"), "rb") as fh:
    digest = hashlib.sha256(fh.read()).hexdigest()
print(" ".join(names), digest, flush=True)
"""


@pytest.fixture
def scanned(tmp_path: Path) -> tuple[Path, Path, str]:
    wheels = tmp_path / "wheels"
    big = bytes(range(256)) * (BIG // 256)
    plugins = {f"scanner/plugins/p{i}.txt": f"plugin {i}\n" for i in range(5)}
    files = {
        "scanner/__init__.py": "",
        "scanner/weights/big.bin": big,
        "scanner/weights/spare.bin": b"spare",
        "scanner/data/present.txt": "here\n",
    }
    make_wheel(wheels, "scanner", "1.0", files={**files, **plugins})
    m = write_manifest(tmp_path, "app", ["scanner==1.0"], find_links=wheels)
    root = tmp_path / "volume" / "volenv"
    assert volenv("--root", root, "sync", m).returncode == 0
    r = volenv("--root", root, "trace", "--manifest", m, "--", "python", "-c", START)
    assert r.returncode == 0, r.stderr
    r = volenv("--root", root, "pack", "app")
    assert r.returncode == 0, r.stderr
    return m, root, hashlib.sha256(big).hexdigest()


def _pack_names(root: Path, info: dict[str, object]) -> list[str]:
    import tarfile

    import zstandard

    blob = root / "packs" / "blobs" / f"{info['id']}.tar.zst"
    with (
        open(blob, "rb") as raw,
        zstandard.ZstdDecompressor().stream_reader(raw) as zr,
        tarfile.open(fileobj=zr, mode="r|") as tar,
    ):
        return [t.name for t in tar]


def test_listed_directories_and_big_files_shape_the_packs(scanned: tuple[Path, Path, str]) -> None:
    _m, root, _digest = scanned
    sid = snapshot_of(root, "app")
    snap = root / "envs" / "app" / "snapshots" / sid
    trace = json.loads((snap / ".volenv" / "trace.json").read_text())
    assert trace["schema"] == 1 and "listed" in trace  # an optional key: older readers ignore it
    assert any(d.endswith("site-packages/scanner/plugins") for d in trace["listed"]), trace["listed"]
    # a directory where the start looked for a name that is not there counts as searched
    assert any(d.endswith("site-packages/scanner/data") for d in trace["listed"]), trace["listed"]
    # no plugin file was opened: they are in the startup pack because their directory was listed
    assert not any("/plugins/" in f or "/data/" in f for f in trace["files"])
    man = json.loads((root / "packs" / "snapshots" / f"{sid}.json").read_text())
    groups = {p["group"]: p for p in man["packs"]}
    startup = startup_names(root, man["packs"])
    assert sorted(n.rpartition("/")[2] for n in startup if "/plugins/" in n) == [
        f"p{i}.txt" for i in range(5)
    ]
    assert any(n.endswith("scanner/data/present.txt") for n in startup)
    assert not any(n.endswith("big.bin") for n in startup)
    assert [n.rpartition("/")[2] for n in _pack_names(root, groups["_prefetch"])] == ["big.bin"]


def test_pack_order_puts_the_prefetch_pack_right_after_the_startup_pack() -> None:
    def p(group: str) -> PackInfo:
        return PackInfo(group, group, "", 0, 0, 0)

    groups = ["numpy-2.0", "_venv", "_startup.10", "_prefetch", "_startup.2", "_meta", "_startup", "aaa-1.0"]
    got = [i.group for i in sorted(map(p, groups), key=pack_order)]
    assert got == [
        "_meta",
        "_startup",
        "_startup.2",
        "_startup.10",
        "_prefetch",
        "_venv",
        "aaa-1.0",
        "numpy-2.0",
    ]


def test_before_exec_the_listed_directory_is_local_and_the_big_file_a_link(
    tmp_path: Path, scanned: tuple[Path, Path, str]
) -> None:
    m, root, digest = scanned
    sid = snapshot_of(root, "app")
    snap = root / "envs" / "app" / "snapshots" / sid
    local = tmp_path / "local"
    tree = local / sid
    args = ("--root", root, "run", "--materialize", "always", "--materialize-dir", local, "--manifest", m)
    want = " ".join(f"p{i}.txt" for i in range(5)) + f" {digest}\n"
    # the background stops before its first pack: what the start sees is what exec had
    p = volenv_popen(
        *args,
        "--",
        "python",
        "-c",
        START,
        env={"VOLENV_FAULT": "materialize-background:pause"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    pid = None
    try:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out == want
        pid = int((tree / ".volenv" / "materializing").read_text())
        plugins = next(tree.glob("lib/python*/site-packages/scanner/plugins"))
        assert plugins.is_dir() and not plugins.is_symlink()
        for f in plugins.iterdir():
            assert f.is_file() and not f.is_symlink(), f
        big = plugins.parent / "weights" / "big.bin"
        # a real directory (it holds a traced file), with the big file a link of its own: the
        # background swaps it in right after the prefetch pack, not with its whole distribution
        assert big.parent.is_dir() and not big.parent.is_symlink()
        assert big.is_symlink()  # read through the link, from the volume's own copy
        assert os.readlink(big) == str(snap.resolve() / big.relative_to(tree))
        # let the background go on: it replaces the link with the checked file and marks the tree
        os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while not (tree / ".volenv" / "materialized.json").exists():
            assert time.monotonic() < deadline, "the background extraction never completed"
            time.sleep(0.05)
        pid = None
        assert not big.is_symlink() and hashlib.sha256(big.read_bytes()).hexdigest() == digest
        assert verify_snapshot(tree, level="full").ok
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("chunk", ["_startup", "_startup.2"])
def test_a_damaged_startup_chunk_is_exit_4_whichever_process_extracts_it(
    tmp_path: Path, scanned: tuple[Path, Path, str], chunk: str
) -> None:
    """The startup packs are extracted by several processes at once (packs.STARTUP_CHUNKS,
    materialize.processes): a damaged one, in the parent's share or a child's, stops the start
    with exit 4 and the program never runs."""
    m, root, _digest = scanned
    sid = snapshot_of(root, "app")
    man = json.loads((root / "packs" / "snapshots" / f"{sid}.json").read_text())
    groups = {p["group"]: p for p in man["packs"]}
    assert {"_startup", "_startup.2"} <= set(groups), sorted(groups)
    blob = root / "packs" / "blobs" / f"{groups[chunk]['id']}.tar.zst"
    blob.write_bytes(blob.read_bytes()[:-40])  # cut short
    local = tmp_path / "local"
    r = volenv(
        "--root", root, "run", "--materialize", "always", "--materialize-dir", local, "--manifest", m,
        "--", "python", "-c", "print('RAN')",
    )  # fmt: skip
    assert r.returncode == 4 and "RAN" not in r.stdout and "Traceback" not in r.stderr, r.stderr
    assert not (local.exists() and [p for p in local.iterdir() if ".partial" in p.name])
