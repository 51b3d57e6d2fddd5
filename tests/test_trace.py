"""Issue 17: start traces (`volenv trace`) and the startup pack that packing builds from them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import snapshot_of, volenv, write_manifest
from volenv.store.integrity import verify_snapshot
from wheelfactory import make_wheel

# A start that imports a pure package (and its submodule), a C extension that lives inside the
# snapshot, opens a data file with open(), maps a weights file with mmap and opens a model file
# on the volume; `tracee.unused` and `late` are never touched by it.
TRACEE_INIT = """\
import mmap, os
from . import sub

def start():
    from . import _csv as ext
    assert ext.QUOTE_ALL == 1
    here = os.path.dirname(__file__)
    with open(os.path.join(here, "data.txt")) as fh:
        assert fh.read() == "data"
    with open(os.path.join(here, "assets", "used.txt")) as fh:  # assets/ is opened in, never listed
        assert fh.read() == "used"
    with open(os.path.join(here, "weights.bin"), "rb") as fh:
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            assert mm[:7] == b"weights"
    with open(os.path.normpath(os.path.join(os.environ["HF_HOME"], "..", "files", "w.bin")), "rb") as fh:
        fh.read()
    print("started")
"""

START = "import tracee; tracee.start()"


def _extension() -> tuple[str, bytes]:
    """A real C extension for the snapshot, offline: this interpreter's own _csv module, shipped
    inside the wheel as tracee/_csv*.so (its PyInit__csv matches the name)."""
    import _csv

    path = getattr(_csv, "__file__", None)
    if path is None or sys.version_info[:2] != (3, 11):
        pytest.skip("needs a 3.11 interpreter whose _csv is a shared library")
    return os.path.basename(path), Path(path).read_bytes()


@pytest.fixture
def traced_env(tmp_path: Path) -> tuple[Path, Path]:
    wheels = tmp_path / "wheels"
    so_name, so = _extension()
    make_wheel(
        wheels,
        "tracee",
        "1.0",
        files={
            "tracee/__init__.py": TRACEE_INIT,
            "tracee/sub.py": "X = 1\n",
            "tracee/unused.py": "Y = 2\n",
            f"tracee/{so_name}": so,
            "tracee/data.txt": "data",
            "tracee/assets/used.txt": "used",
            "tracee/assets/spare.txt": "spare",
            "tracee/weights.bin": b"weights" + bytes(4096),
        },
    )
    make_wheel(wheels, "late", "1.0", files={"late/__init__.py": "LATE = 'late'\n"})
    m = write_manifest(tmp_path, "app", ["tracee==1.0", "late==1.0"], find_links=wheels)
    root = tmp_path / "volume" / "volenv"
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    (root / "models" / "files").mkdir(parents=True, exist_ok=True)
    (root / "models" / "files" / "w.bin").write_bytes(b"model")
    return m, root


def _sp(root: Path, sid: str) -> str:
    snap = root / "envs" / "app" / "snapshots" / sid
    return str(next(snap.glob("lib/python*/site-packages")).relative_to(snap))


def test_trace_records_imports_extensions_open_and_mmap_in_first_use_order(
    traced_env: tuple[Path, Path],
) -> None:
    m, root = traced_env
    sid = snapshot_of(root, "app")
    snap = root / "envs" / "app" / "snapshots" / sid
    seal_before = (snap / ".volenv" / "seal.json").read_bytes()
    r = volenv("--root", root, "--json", "trace", "--manifest", m, "--", "python", "-c", START)
    assert r.returncode == 0, r.stderr
    out = r.json()
    assert "started" in r.stderr and out["snapshot"] == sid  # the command's stdout is on stderr
    trace = json.loads((snap / ".volenv" / "trace.json").read_text())
    sp = _sp(root, sid)
    files = trace["files"]
    assert out["files"] == len(files)
    pos = {}
    for want in ("tracee/__init__", "tracee/__pycache__/sub.", "tracee/_csv.", "data.txt", "weights.bin"):
        hits = [i for i, f in enumerate(files) if want in f and f.startswith(f"{sp}/tracee/")]
        assert hits, f"{want} missing from the trace: {files}"
        pos[want] = hits[0]
    # first-use order: package, submodule (at import), then the extension, data, weights
    assert list(pos.values()) == sorted(pos.values()), files
    assert not any("unused" in f or "/late/" in f for f in files)
    assert trace["models"] == ["files/w.bin"]
    assert trace["record_sha256"] == json.loads(seal_before)["record_sha256"]
    # the seal and the record are untouched, and the snapshot verifies in full
    assert (snap / ".volenv" / "seal.json").read_bytes() == seal_before
    assert verify_snapshot(snap, "full").ok
    # no sitecustomize or anything else was written into the snapshot
    assert not list(snap.rglob("sitecustomize*"))


def test_failed_start_stores_no_trace(traced_env: tuple[Path, Path]) -> None:
    m, root = traced_env
    sid = snapshot_of(root, "app")
    r = volenv(
        "--root", root, "trace", "--manifest", m, "--", "python", "-c", "import tracee; raise SystemExit(3)"
    )
    assert r.returncode == 7 and "exited with 3" in r.stderr
    assert not (root / "envs" / "app" / "snapshots" / sid / ".volenv" / "trace.json").exists()


def test_damaged_trace_is_an_error_when_packing(traced_env: tuple[Path, Path]) -> None:
    m, root = traced_env
    sid = snapshot_of(root, "app")
    assert volenv("--root", root, "trace", "--manifest", m, "--", "python", "-c", START).returncode == 0
    t = root / "envs" / "app" / "snapshots" / sid / ".volenv" / "trace.json"
    t.write_text('{"schema": 1, "files": "nope"}')
    r = volenv("--root", root, "pack", "app")
    assert r.returncode == 4 and "trace" in r.stderr


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_trace_that_is_not_a_regular_file_is_damaged_and_never_blocks(
    tmp_path: Path, traced_env: tuple[Path, Path], kind: str
) -> None:
    """A FIFO planted as trace.json made `pack` wait forever; a link was followed out of the
    snapshot. Both: exit 4 at once."""
    _m, root = traced_env
    sid = snapshot_of(root, "app")
    t = root / "envs" / "app" / "snapshots" / sid / ".volenv" / "trace.json"
    if kind == "fifo":
        os.mkfifo(t)
    else:
        outside = tmp_path / "elsewhere.json"
        outside.write_text('{"schema": 1}')
        t.symlink_to(outside)
    r = volenv("--root", root, "pack", "app", timeout=60)
    assert r.returncode == 4 and "trace" in r.stderr, r.stderr


# the traced start, a line, then an import outside the trace; prints the snapshot modules it used
LATER = """
import os, sys
import tracee; tracee.start()
print("traced-ok", flush=True)
import late
print(late.LATE, flush=True)
prefix = os.path.join(sys.prefix, "")
print(sorted(m.__file__[len(prefix):] for m in list(sys.modules.values())
             if (getattr(m, "__file__", None) or "").startswith(prefix)), flush=True)
"""


def _traced_and_packed(m: Path, root: Path) -> dict[str, object]:
    assert volenv("--root", root, "trace", "--manifest", m, "--", "python", "-c", START).returncode == 0
    r = volenv("--root", root, "pack", "app")
    assert r.returncode == 0, r.stderr
    sid = snapshot_of(root, "app")
    data = json.loads((root / "packs" / "snapshots" / f"{sid}.json").read_text())
    assert isinstance(data, dict)
    return data


def startup_names(root: Path, packs: list[dict[str, Any]]) -> list[str]:
    """The members of the startup packs (`_startup`, `_startup.2`, ...), in extraction order."""
    import tarfile

    import zstandard

    from volenv.store.packformat import startup_chunk

    chunks = sorted((n, p["id"]) for p in packs if (n := startup_chunk(p["group"])) is not None)
    assert [n for n, _ in chunks] == list(range(1, len(chunks) + 1)), chunks
    names: list[str] = []
    for _n, pack_id in chunks:
        blob = root / "packs" / "blobs" / f"{pack_id}.tar.zst"
        with (
            open(blob, "rb") as raw,
            zstandard.ZstdDecompressor().stream_reader(raw) as zr,
            tarfile.open(fileobj=zr, mode="r|") as tar,
        ):
            names += [t.name for t in tar]
    return names


def test_startup_pack_holds_the_traced_files_first_in_trace_order(traced_env: tuple[Path, Path]) -> None:
    m, root = traced_env
    man = _traced_and_packed(m, root)
    sid = snapshot_of(root, "app")
    trace = json.loads((root / "envs" / "app" / "snapshots" / sid / ".volenv" / "trace.json").read_text())
    packs = man["packs"]
    assert isinstance(packs, list)
    names = startup_names(root, packs)
    traced = [n for n in names if n in trace["files"]]
    assert traced == trace["files"]  # every traced file, in trace order
    assert names.index(trace["files"][0]) > names.index("pyvenv.cfg")  # what starts python comes first
    assert not any("/late/" in n or "unused" in n for n in names)
    # the import system listed tracee/ (its directory cache), which stats only what it opens:
    # not recorded as a listed directory, so its untouched files stay out of the startup pack
    assert not any(d.endswith("site-packages/tracee") for d in trace["listed"])
    # the traced files left their distribution's pack; every recorded file is in exactly one pack
    total = sum(p["files"] for p in packs if p["group"] != "_meta")
    record_lines = (root / "envs" / "app" / "snapshots" / sid / ".volenv" / "record").read_text().splitlines()
    assert total == len([ln for ln in record_lines if ln and not ln.startswith("#")])


def test_sync_traces_the_manifest_trace_cmd_and_packs_its_startup_pack(
    tmp_path: Path, traced_env: tuple[Path, Path]
) -> None:
    _m, root = traced_env
    m = write_manifest(
        tmp_path,
        "app",
        ["tracee==1.0", "late==1.0"],
        find_links=tmp_path / "wheels",
        extra="\n[activate]\ntrace-cmd = \"python -c 'import tracee; tracee.start()'\"\n",
        filename="traced.toml",
    )
    r = volenv("--root", root, "sync", "--pack", m)
    assert r.returncode == 0, r.stderr
    sid = snapshot_of(root, "app")
    trace = json.loads((root / "envs" / "app" / "snapshots" / sid / ".volenv" / "trace.json").read_text())
    assert trace["command"] == ["python", "-c", "import tracee; tracee.start()"]
    assert any(f.endswith("weights.bin") for f in trace["files"])
    man = json.loads((root / "packs" / "snapshots" / f"{sid}.json").read_text())
    assert [p["group"] for p in man["packs"]].count("_startup") == 1
    # a second sync neither re-traces nor changes anything
    before = (root / "envs" / "app" / "snapshots" / sid / ".volenv" / "trace.json").read_bytes()
    assert volenv("--root", root, "sync", "--pack", m).returncode == 0
    assert (root / "envs" / "app" / "snapshots" / sid / ".volenv" / "trace.json").read_bytes() == before
    bad = write_manifest(
        tmp_path,
        "app",
        ["tracee==1.0"],
        find_links=tmp_path / "wheels",
        extra='\n[activate]\ntrace-cmd = ""\n',
        filename="bad.toml",
    )
    r = volenv("--root", root, "sync", bad)
    assert r.returncode == 2 and "trace-cmd" in r.stderr


NATIVE_START = """\
import ctypes, os, native
here = os.path.dirname(native.__file__)
lib = ctypes.CDLL(os.path.join(here, "libs", "libfront.so"))  # brings libdep.so by itself
assert lib.front() == 42
with open(os.path.join(here, "later.txt")) as fh:
    fh.read()
with open(os.path.join(here, "text_only.py")) as fh:  # read as text, never imported
    fh.read()
from native import mod
print("started")
"""


def _shared_libs(out: Path) -> dict[str, bytes]:
    """libfront.so, which needs libdep.so (found next to it through $ORIGIN): the dynamic
    linker loads libdep.so without any audit event, like libtorch_cpu.so for torch._C."""
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler (apt install gcc) to build two shared libraries")
    (out / "dep.c").write_text("int dep(void) { return 41; }\n")
    (out / "front.c").write_text("int dep(void);\nint front(void) { return dep() + 1; }\n")
    subprocess.run([cc, "-shared", "-fPIC", "-o", out / "libdep.so", out / "dep.c"], check=True)
    subprocess.run(
        [
            cc,
            "-shared",
            "-fPIC",
            "-o",
            out / "libfront.so",
            out / "front.c",
            f"-L{out}",
            "-ldep",
            "-Wl,-rpath,$ORIGIN",
        ],
        check=True,
    )
    return {f"native/libs/{n}": (out / n).read_bytes() for n in ("libfront.so", "libdep.so")}


def test_libraries_the_dynamic_linker_loads_keep_their_place_and_text_reads_bring_no_bytecode(
    tmp_path: Path,
) -> None:
    """A library loaded as a dependency is recorded where it was loaded, not at exit (packing
    picks the startup pack's big files by size and the prefetch order by trace order: at the
    end, libtorch_cpu.so came last). A source read as text brings no bytecode into the startup
    pack; an imported module brings both its bytecode and its source (which the import stats)."""
    libs = tmp_path / "libs"
    libs.mkdir()
    wheels = tmp_path / "wheels"
    make_wheel(
        wheels,
        "native",
        "1.0",
        files={
            "native/__init__.py": "",
            "native/mod.py": "M = 1\n",
            "native/text_only.py": "T = 1\n",
            "native/later.txt": "later",
            **_shared_libs(libs),
        },
    )
    m = write_manifest(tmp_path, "app", ["native==1.0"], find_links=wheels)
    root = tmp_path / "volume" / "volenv"
    assert volenv("--root", root, "sync", m).returncode == 0
    r = volenv("--root", root, "trace", "--manifest", m, "--", "python", "-c", NATIVE_START)
    assert r.returncode == 0 and "started" in r.stderr, r.stderr
    sid = snapshot_of(root, "app")
    files = json.loads((root / "envs" / "app" / "snapshots" / sid / ".volenv" / "trace.json").read_text())[
        "files"
    ]

    def at(suffix: str) -> int:
        hits = [i for i, f in enumerate(files) if f.endswith(suffix)]
        assert hits, f"{suffix} missing from the trace: {files}"
        return hits[0]

    assert at("/libfront.so") < at("/libdep.so") < at("/later.txt"), files
    assert not any("text_only" in f and f.endswith(".pyc") for f in files)
    r = volenv("--root", root, "pack", "app")
    assert r.returncode == 0, r.stderr
    man = json.loads((root / "packs" / "snapshots" / f"{sid}.json").read_text())
    names = startup_names(root, man["packs"])
    assert any(n.endswith("native/text_only.py") for n in names)
    assert not any("text_only" in n and n.endswith(".pyc") for n in names), names
    mod_pyc = [n for n in names if "native/__pycache__/mod." in n]
    assert mod_pyc and any(n.endswith("native/mod.py") for n in names), names


def test_a_first_hook_trace_still_brings_the_bytecode_of_its_sources() -> None:
    """Traces of the first hook (no `hook` key) listed modules imported by .pth files as their
    .py only: their bytecode still goes with them. A trace of this hook lists the bytecode it
    saw read, so a .py read as text brings none."""
    from volenv.store.integrity import Entry
    from volenv.store.packwrite import startup_paths
    from volenv.store.trace import HOOK_VERSION, Trace, parse_trace

    record = {
        p: Entry(p, "f", 0o644, 10, "x" * 64)
        for p in (
            "sp/early.py",
            "sp/__pycache__/early.cpython-311.pyc",
            "sp/text.py",
            "sp/__pycache__/text.cpython-311.pyc",
        )
    }
    old = parse_trace(
        {"schema": 1, "snapshot": "s", "record_sha256": "r", "command": [], "files": ["sp/early.py"],
         "models": [], "created": 1.0},
        "old",
    )  # fmt: skip
    assert old.hook == 1
    assert "sp/__pycache__/early.cpython-311.pyc" in startup_paths(record, old.files, hook=old.hook)
    new = Trace("s", "r", (), ("sp/text.py",), (), 1.0, (), HOOK_VERSION)
    assert parse_trace(json.loads(json.dumps(new.to_json())), "new") == new
    assert startup_paths(record, new.files, hook=new.hook) == ["sp/text.py"]


def test_the_hook_never_fails_the_program_when_its_own_audit_hook_refuses_proc(tmp_path: Path) -> None:
    """The trace hook reads /proc/self/maps after an extension import; a program whose own
    audit hook refuses /proc (a sandbox) must not see that refusal in its imports."""
    import shutil
    import subprocess

    hookdir = tmp_path / "hook"
    hookdir.mkdir()
    shutil.copy(
        Path(__file__).resolve().parents[1] / "src" / "volenv" / "start" / "_tracehook.py",
        hookdir / "sitecustomize.py",
    )
    program = (
        "import sys\n"
        "def deny(event, args):\n"
        "    if event == 'open' and isinstance(args[0], str) and args[0].startswith('/proc/'):\n"
        "        raise RuntimeError('sandbox: /proc denied')\n"
        "sys.addaudithook(deny)\n"
        "import _decimal, json\n"
        "print('ok')\n"
    )
    out = tmp_path / "trace.out"
    env = {
        **os.environ,
        "PYTHONPATH": str(hookdir),
        "VOLENV_TRACE_OUT": str(out),
        "VOLENV_TRACE_ROOTS": os.path.dirname(os.__file__),
    }
    r = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
    assert "RuntimeError" not in r.stderr
