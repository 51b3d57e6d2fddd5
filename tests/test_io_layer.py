"""The volume I/O layer's one rule, enforced (issue 26): outside `store/volio.py` and
`base/leanjson.py`, no module opens, reads, writes or `shutil`s a path with raw calls unless the
call is listed here with the reason it is safe. A new raw call fails this test: route it through
the layer (`read_regular`, `open_regular`, `read_record_bytes`, `atomic_write_*`, `open_append`,
`streamed_write`, `safe_*`, `contained`) or add it with its reason.

Scanned calls: builtin `open(`, `os.open(`, `X.read_text/read_bytes/write_text/write_bytes/open(`
and `shutil.rmtree/copy/copy2/copyfile/copytree/move/copyfileobj(`, keyed by module and enclosing
function (qualified)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "volenv"
LAYER = {"store/volio.py", "base/leanjson.py"}
PATH_METHODS = {"read_text", "read_bytes", "write_text", "write_bytes", "open"}
SHUTIL = {"rmtree", "copy", "copy2", "copyfile", "copytree", "move", "copyfileobj"}
NOT_PATHS = {"tarfile", "io", "gzip", "zstandard", "socket", "sys", "json", "tomllib", "webbrowser"}

# Reasons, by kind of place the call touches:
USER = "a file of the user's project or command line (the manifest, its inputs, an output path), never a path under the root"
TMP = "inside a private temp dir this process made with tempfile.mkdtemp (0700, unique)"
LOCAL = "container-local disk, under the private 0700 per-user base start/localdisk.py checks (owner, mode, no link)"
DIRFD = "relative to a directory fd reached from the root one component at a time with O_NOFOLLOW; the file itself O_NOFOLLOW"
NOFOLLOW = "O_NOFOLLOW | O_NONBLOCK and an fstat regular-file check at the call (the layer's rule, inline for its flags)"
STAGING = "inside this build's own staging dir (unique name, made through safe_mkdirs under the env's lease)"
BENCH = "bench's own scratch paths (a temp root it created, or a file it reads to measure latency), opened read-only or removed whole"
BUCKET = (
    "a file:// bucket: the user's own replication directory, not the root (no root path reaches FileRemote)"
)
DOWNLOAD = "a download's temp file created with O_EXCL | O_NOFOLLOW in a dir reached through contained()"

ALLOWED: dict[str, str] = {
    # a whole module: `init` reads a project (pyproject, uv.lock, requirements, Dockerfile,
    # .python-version) and writes its manifest beside it; it is never given the root
    "commands/init.py:*": USER + " (init takes no root: it reads a project and writes beside it)",
    "build/plan.py:ResolveLog.keep": TMP
    + " (uv's resolve log, before it is written to logs/ through the layer)",
    "build/plan.py:resolve": TMP + " (the constraints file given to uv)",
    "build/plan.py:_compile": TMP + " (uv pip compile's .in/.txt files)",
    "build/plan.py:_requirements_file_index": USER + " (the manifest's requirements-file)",
    "build/plan.py:requirements_file_options": USER
    + " (a requirements file and its -r includes; FIFOs refused by sources)",
    "build/plan.py:_lockfile_pins": USER + " (the manifest's lockfile)",
    "build/uvinputs.py:resolver_args": TMP + " (the overrides/excludes files handed to uv)",
    "build/uvinputs.py:sources_input": TMP + " (the throwaway pyproject that maps packages to named indexes)",
    "build/dryrun.py:_pylock": TMP + " (sync --dry-run's pins and the pylock uv compiles from them)",
    "build/staging.py:probe_filesystem": "a probe file with a unique name in staging/, made by safe_mkdirs just before",
    "build/steps.py:_Build.stage": TMP + " (the resolve log copied into the build log)",
    "build/steps.py:_Build._write_lock": TMP + " (the lock files handed to uv)",
    "build/steps.py:_Build.seal": STAGING + " (the record this build just wrote)",
    "build/venv.py:count_requirements": TMP + " (the lock file this build wrote)",
    "build/venv.py:compile_bytecode": TMP + " (the compile workers' file lists and output)",
    "cli/render.py:_console": "os.devnull for a silenced console",
    "commands/bench.py:measure_latency": BENCH,
    "commands/bench.py:_drop_file_cache": BENCH,
    "commands/bench.py:_read_range": BENCH,
    "commands/bench.py:time_start": BENCH,
    "commands/bench.py:coldstart": BENCH,
    "commands/doctor.py:_writable": "a probe created O_CREAT | O_EXCL | O_NOFOLLOW under a unique name, removed at once",
    "manifest/sources.py:_local_project_name": USER + " (a local package's pyproject.toml)",
    "manifest/sources.py:source_digest": USER + " (a local input file, digested)",
    "manifest/sources.py:_file_sha256": USER + " (a local package's file, O_NOFOLLOW | O_NONBLOCK)",
    "remote/pull.py:_extract_downloaded": DOWNLOAD,
    "remote/push.py:_check_model_file": NOFOLLOW + "; realpath checked inside models/ first",
    "remote/signing.py:write_secret": USER + " (a key file the user names; O_EXCL, 0600)",
    "remote/signing.py:load_signing_key": USER + " (the signing key file)",
    "runpod/provision.py:provision": USER + " (the manifest sent to the pod)",
    "runpod/provision.py:_written": USER + " (the manifest's own text, for the paths as written)",
    "runpod/provision.py:read_inline_manifest": TMP
    + " (sync --from-env's private 0600 file, O_EXCL | O_NOFOLLOW)",
    "start/_tracehook.py:_install": TMP + " (the trace output file handed by `volenv trace`)",
    "start/_tracehook.py:_install.note_maps": "/proc/self/maps of the traced process",
    "start/activation.py:target_from_manifest": USER + " (run --manifest's manifest)",
    "start/activation.py:mark_used": DIRFD + " (run's use mark)",
    "start/auto.py:_probe_ms": "a read-only O_DIRECTORY open for the latency probe's lstat lookups; nothing is read or written",
    "start/auto.py:fs_type": "/proc/self/mountinfo",
    "start/background.py:_lock_progress": DIRFD + " (the local copy's in-progress mark, 0600)",
    "start/background.py:extract_startup_first": LOCAL + "; the volume's packs are read with open_regular",
    "start/background.py:_background": LOCAL,
    "start/localcopy.py:_local_copy.copy": LOCAL,
    "start/localcopy.py:_local_copy": LOCAL,
    "start/localcopy.py:_complete": LOCAL,
    "start/localcopy.py:_ModelsTree.__init__": DIRFD + " (the volume's models tree, read side)",
    "start/localcopy.py:_ModelsTree._dir": DIRFD,
    "start/localcopy.py:_ModelsTree.open": DIRFD,
    "start/localcopy.py:_copy_one": LOCAL,
    "start/localdisk.py:remove_all": LOCAL,
    "start/localdisk.py:detached": LOCAL,
    "start/localdisk.py:alive": "/proc/PID/stat of a local copy's owner",
    "start/localdisk.py:_boot_time": "/proc/stat's boot time (a pid's start time against a copy's age)",
    "start/localdisk.py:in_use_fd": LOCAL,
    "start/materialize.py:_complete": LOCAL,
    "start/materialize.py:_extract": LOCAL + "; the volume's packs are read with open_regular",
    "start/materialize.py:_await_background": LOCAL,
    "start/skeleton.py:write_at": LOCAL,
    "start/skeleton.py:can_exchange": LOCAL,
    "start/skeleton.py:listed_dirs": LOCAL + " (the extracted metadata pack's trace)",
    "start/skeleton.py:Live.__init__": LOCAL,
    "start/startcheck.py:stat_all": DIRFD + " (directories only, for fstatat)",
    "start/startcheck.py:stat_all.open_dir": DIRFD + " (directories only, for fstatat)",
    "start/tracing.py:hook_dir": TMP + " (the tracing sitecustomize.py, copied from volenv's package)",
    "start/tracing.py:take_trace": TMP,
    "store/alias.py:write_alias": USER + " (the manifest whose alias is written)",
    "store/packread.py:_Tree.__init__": DIRFD + " (the extraction target's top)",
    "store/packread.py:_Tree._open_dir": DIRFD,
    "store/packread.py:_extract_member": DIRFD + "; O_CREAT | O_EXCL | O_NOFOLLOW for each member",
    "store/packwrite.py:_open_recorded": NOFOLLOW + "; the parent's realpath checked against the snapshot",
    "store/trace.py:load_trace": NOFOLLOW,
    "transfer/bucketget.py:_Object._whole": DOWNLOAD,
    "transfer/bucketget.py:_Object._range_part.part": DOWNLOAD,
    "transfer/bucketput.py:_Object._start": "a pack blob being uploaded: O_NOFOLLOW, and its stat stamp (inode, size, time) must be the one recorded when it was packed",
    "transfer/buckets.py:FileRemote._open_regular": BUCKET,
    "transfer/buckets.py:FileRemote.size": BUCKET,
    "transfer/buckets.py:FileRemote.open_range": BUCKET,
    "transfer/buckets.py:_FileUpload.__init__": BUCKET,
    "transfer/httpfetch.py:_open_in": DOWNLOAD,
}


def raw_calls(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(enclosing qualified name, call kind, line) of every raw I/O call in a module."""
    out: list[tuple[str, str, int]] = []

    class Visitor(ast.NodeVisitor):
        def __init__(self) -> None:
            self.stack: list[str] = []

        def _scope(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
            self.stack.append(node.name)
            self.generic_visit(node)
            self.stack.pop()

        visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scope  # type: ignore[assignment]

        def visit_Call(self, node: ast.Call) -> None:
            f, kind = node.func, None
            if isinstance(f, ast.Name) and f.id == "open":
                kind = "open"
            elif isinstance(f, ast.Attribute):
                base = f.value.id if isinstance(f.value, ast.Name) else None
                if base == "os":
                    kind = "os.open" if f.attr == "open" else None
                elif base == "shutil":
                    kind = f"shutil.{f.attr}" if f.attr in SHUTIL else None
                elif base not in NOT_PATHS and f.attr in PATH_METHODS:
                    kind = f".{f.attr}"
            if kind:
                out.append((".".join(self.stack) or "<module>", kind, node.lineno))
            self.generic_visit(node)

    Visitor().visit(tree)
    return out


def scan() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        mod = path.relative_to(SRC).as_posix()
        if mod in LAYER:
            continue
        for qual, kind, line in raw_calls(ast.parse(path.read_text(encoding="utf-8"))):
            found.setdefault(f"{mod}:{qual}", []).append(f"{kind} at line {line}")
    return found


def test_no_raw_io_outside_the_layer() -> None:
    found = scan()
    new = {k: v for k, v in found.items() if not allowed(k)}
    assert not new, (
        "raw file I/O outside store/volio.py: route these through the layer, or add each to "
        "ALLOWED with the reason it never touches the root unsafely:\n"
        + "\n".join(f"  {k}: {', '.join(v)}" for k, v in sorted(new.items()))
    )
    print(f"\n{len(found)} functions with raw I/O, each allowed with a reason; {len(LAYER)} layer modules")


def allowed(key: str) -> bool:
    return key in ALLOWED or f"{key.split(':')[0]}:*" in ALLOWED


def test_the_allow_list_has_no_stale_entry() -> None:
    """An entry whose raw call is gone goes too: the list is what the code does, not what it did."""
    found = scan()
    modules = {k.split(":")[0] for k in found}
    stale = sorted(
        k for k in ALLOWED if (k.split(":")[0] not in modules if k.endswith(":*") else k not in found)
    )
    assert not stale, f"ALLOWED entries without a raw call any more: {stale}"


def test_the_scanner_catches_each_kind() -> None:
    """The scanner itself: each forbidden form is found, str.replace-like lookalikes are not."""
    code = (
        "import os, shutil\n"
        "def f(p):\n"
        "    open(p)\n    os.open(p, 0)\n    p.read_text()\n    p.write_bytes(b'')\n    p.open()\n"
        "    shutil.rmtree(p)\n    shutil.copyfile(p, p)\n"
        "    tarfile.open(p)\n    os.path.join(p)\n    'x'.replace('a', 'b')\n"
    )
    kinds = [k for _, k, _ in raw_calls(ast.parse(code))]
    assert kinds == [
        "open",
        "os.open",
        ".read_text",
        ".write_bytes",
        ".open",
        "shutil.rmtree",
        "shutil.copyfile",
    ]
