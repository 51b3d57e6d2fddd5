"""The default check of `run` (`--verify start`): beyond the seal, the files this start will read,
at `stat` (type, size, mode), several in flight at once, so that a deleted or truncated file is
found by volenv before the program dies of it (an ImportError and exit 1: the seed's failure).

Which files: the snapshot's start trace when it has one (the files a real start opened); else
what the start is known to execute: `pyvenv.cfg`, every `.pth` file of site-packages (the site
module runs them), the command's own script when the snapshot provides it, and the packages of
the manifest's smoke imports, whole. And every required model's files: present, regular, of
the recorded size (a model record names them); an hf model that RunPod's model cache holds at
its pin is hashed there instead (store/runpodcache.py) and needs no record.

Lean on purpose (os and the C modules the seal check uses): it runs on every container start.
A snapshot's record is read once (the bytes the seal check hashed) and only the wanted lines
are parsed. Missing in this module's view is never "fine": an unreadable trace means the
fallback set, an unreadable model record is a problem.
"""

from __future__ import annotations

import os
import stat

from volenv.base.leanjson import loads, read_record_bytes
from volenv.store import runpodcache
from volenv.store.modelpaths import model_files_dir, model_record_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Files statted one after another below this; above it, STAT_STREAMS threads each take a share
# (lstat releases the GIL: on a network volume each is a round trip, and they overlap).
INLINE_MAX = 64
STAT_STREAMS = 16


class StartProblem:
    """One difference: what (`missing`, `size-changed`, ...), where (snapshot- or model-relative
    path) and the detail; `model` names the model for a model file."""

    def __init__(self, kind: str, path: str, detail: str, model: str | None = None) -> None:
        self.kind = kind
        self.path = path
        self.detail = detail
        self.model = model

    def __str__(self) -> str:
        return f"{self.path} ({self.kind}: {self.detail})"


def _trace_files(snapshot_dir: str, seal: dict[str, Any]) -> list[str] | None:
    """The stored trace's files when it belongs to this seal, else None (no trace, a stale or
    unreadable one: the fallback set is checked instead)."""
    try:
        data = loads(read_record_bytes(os.path.join(snapshot_dir, ".volenv", "trace.json")))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("record_sha256") != seal.get("record_sha256"):
        return None
    files = data.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return files


def _site_packages(record_text: str) -> str | None:
    """`lib/pythonX.Y/site-packages/`, as the record has it."""
    i = record_text.find("/site-packages/")
    if i < 0:
        return None
    start = record_text.rfind("\t", 0, i) + 1
    return record_text[start : i + len("/site-packages/")]


def wanted_paths(
    snapshot_dir: str, seal: dict[str, Any], record_text: str, command: list[str]
) -> tuple[str, set[str], tuple[str, ...]]:
    """(what was chosen, exact paths, path prefixes) for this start: what every start reads
    (pyvenv.cfg, the .pth files the site module runs, the command's own script), then the
    trace's files, or without a trace the smoke imports' packages whole."""
    exact = {"pyvenv.cfg"}
    prefixes: list[str] = []
    if command and os.sep not in command[0]:
        exact.add("bin/" + command[0])
    sp = _site_packages(record_text)
    if sp is not None:
        prefixes.append(sp + "\0pth")  # marker: every .pth right under site-packages
    traced = _trace_files(snapshot_dir, seal)
    if traced is not None:
        return "trace", exact | set(traced), tuple(prefixes)
    if sp is not None:
        smoke = seal.get("manifest", {}).get("smoke_imports", [])
        for mod in smoke if isinstance(smoke, list) else []:
            top = str(mod).split(".")[0]
            if top:
                prefixes.append(sp + top + "/")
                exact.add(sp + top + ".py")
                prefixes.append(sp + top + ".cpython-")  # an extension module at the top
    return "smoke imports and .pth files", exact, tuple(prefixes)


def record_subset(
    record_text: str, exact: set[str], prefixes: tuple[str, ...]
) -> dict[str, tuple[str, int, int]]:
    """path -> (type, mode, size) for the record lines wanted (the record's format: integrity.py)."""
    pth_dirs = tuple(p[: -len("\0pth")] for p in prefixes if p.endswith("\0pth"))
    plain = tuple(p for p in prefixes if not p.endswith("\0pth"))
    out: dict[str, tuple[str, int, int]] = {}
    for line in record_text.split("\n")[1:]:
        if not line:
            continue
        path = line[line.rfind("\t") + 1 :]
        if "\\" in path:  # an escaped name (tab, newline, backslash): never a start file we look for
            continue
        if not (
            path in exact
            or (plain and path.startswith(plain))
            or (
                pth_dirs
                and path.endswith(".pth")
                and "/" not in path[len(pth_dirs[0]) :]
                and path.startswith(pth_dirs)
            )
        ):
            continue
        parts = line.split("\t")
        if len(parts) != 7:
            continue
        try:
            out[path] = (parts[0], int(parts[1], 8), int(parts[2]))
        except ValueError:
            continue
    return out


def _kind(mode: int) -> str:
    return "d" if stat.S_ISDIR(mode) else "l" if stat.S_ISLNK(mode) else "f" if stat.S_ISREG(mode) else "?"


def _judge(rel: str, st: os.stat_result, want: tuple[str, int, int]) -> StartProblem | None:
    kind = _kind(st.st_mode)
    if kind != want[0]:
        return StartProblem("type-changed", rel, f"recorded as {want[0]}, found {kind}")
    if kind == "l":
        return None
    if stat.S_IMODE(st.st_mode) != want[1]:
        return StartProblem("mode-changed", rel, f"mode {stat.S_IMODE(st.st_mode):o}, recorded {want[1]:o}")
    if kind == "f" and st.st_size != want[2]:
        return StartProblem("size-changed", rel, f"{st.st_size} bytes, recorded {want[2]}")
    return None


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _in_parallel(work: Any, items: list[Any]) -> None:
    """work(item) for every item, STAT_STREAMS at a time when there are many (lstat and open
    release the GIL: on a network volume each is a round trip, and they overlap)."""
    if len(items) <= INLINE_MAX:
        for item in items:
            work(item)
        return
    import threading

    n = min(STAT_STREAMS, len(items))

    def share(part: list[Any]) -> None:
        for item in part:
            work(item)

    threads = [threading.Thread(target=share, args=(items[k::n],), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def stat_all(base: str, items: list[tuple[str, tuple[str, int, int]]]) -> list[StartProblem]:
    """Each item compared with its lstat. Each directory on the way is opened once, from its
    parent's descriptor (O_NOFOLLOW: a link planted for a directory is a difference, never
    followed), and each file statted relative to its directory: one lookup per file, where a
    path stat costs one per component (on a volume without kernel caching, ~8 round trips for a
    site-packages file). Directories a level at a time, then the files, all in parallel."""
    found: list[StartProblem] = []
    fds: dict[str, int] = {}
    broken: dict[str, str] = {}  # directory -> why it cannot be opened
    dirs = {rel.rpartition("/")[0] for rel, _want in items}
    wanted_dirs: set[str] = set()
    for d in dirs:
        while d:
            wanted_dirs.add(d)
            d = d.rpartition("/")[0]
    try:
        fds[""] = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for depth in sorted({d.count("/") for d in wanted_dirs}):
            level = sorted(d for d in wanted_dirs if d.count("/") == depth)

            def open_dir(d: str) -> None:
                parent, _, name = d.rpartition("/")
                if parent in broken or parent not in fds:
                    broken[d] = broken.get(parent, "its parent is missing")
                    return
                try:
                    fds[d] = os.open(name, _DIR_FLAGS, dir_fd=fds[parent])
                except FileNotFoundError:
                    broken[d] = "missing"
                except OSError as exc:
                    broken[d] = exc.strerror or str(exc)

            _in_parallel(open_dir, level)

        def check(item: tuple[str, tuple[str, int, int]]) -> None:
            rel, want = item
            parent, _, name = rel.rpartition("/")
            if parent in broken or parent not in fds:
                found.append(
                    StartProblem("missing", rel, f"its directory {parent}: {broken.get(parent, '?')}")
                )
                return
            try:
                st = os.stat(name, dir_fd=fds[parent], follow_symlinks=False)
            except FileNotFoundError:
                found.append(StartProblem("missing", rel, "recorded but not found"))
                return
            except OSError as exc:
                found.append(StartProblem("unreadable", rel, exc.strerror or str(exc)))
                return
            problem = _judge(rel, st, want)
            if problem is not None:
                found.append(problem)

        _in_parallel(check, items)
    finally:
        for fd in fds.values():
            os.close(fd)
    return sorted(found, key=lambda p: p.path)


def snapshot_problems(
    snapshot_dir: str, seal: dict[str, Any], record_bytes: bytes, command: list[str]
) -> tuple[str, int, list[StartProblem]]:
    """(what was checked, how many files, the differences) for the snapshot's own files."""
    text = record_bytes.decode("utf-8", "replace")
    what, exact, prefixes = wanted_paths(snapshot_dir, seal, text, command)
    subset = record_subset(text, exact, prefixes)
    problems = stat_all(snapshot_dir, sorted(subset.items()))
    if what == "trace":
        traced = set(_trace_files(snapshot_dir, seal) or [])
        for rel in sorted(traced - subset.keys()):  # traced, yet not recorded: the trace is not ours
            problems.append(StartProblem("not-recorded", rel, "the trace names a file the record lacks"))
    return what, len(subset), problems


def model_problems(root: str, models: list[dict[str, Any]]) -> list[StartProblem]:
    """Each required model: its record present (a model never fetched, or set aside by a fetch
    that then failed, is missing: the program would find no VOLENV_MODEL_<NAME>), and every
    recorded file present, regular (links are followed: a Hub snapshot's files link to its
    blobs) and of the recorded size."""
    out: list[StartProblem] = []
    for m in models:
        # RunPod's model cache first: what it holds at the pin is hashed against the names the Hub
        # gave its blobs, and used in place; one that fails falls back to the volume's copy
        found = runpodcache.find(m, verify=True) if m.get("hf") else None
        if (found is not None and found.usable) or m.get("optional"):
            continue
        rec_path = model_record_path(root, m)
        try:
            rec = loads(read_record_bytes(rec_path))
        except FileNotFoundError:
            out.append(StartProblem("missing", rec_path, "never fetched (no model record)", m.get("name")))
            continue
        except (OSError, ValueError, RecursionError) as exc:
            out.append(StartProblem("record-damaged", rec_path, str(exc), m.get("name")))
            continue
        files = rec.get("files") if isinstance(rec, dict) else None
        if not isinstance(files, list):
            out.append(StartProblem("record-damaged", rec_path, "no file list", m.get("name")))
            continue
        base = model_files_dir(root, m)
        for f in files:
            rel, size = (f.get("path"), f.get("size")) if isinstance(f, dict) else (None, None)
            if (
                not isinstance(rel, str)
                or not isinstance(size, int)
                or rel.startswith("/")
                or ".." in rel.split("/")
            ):
                out.append(
                    StartProblem("record-damaged", rec_path, f"bad file entry {f!r:.80}", m.get("name"))
                )
                continue
            try:
                st = os.stat(os.path.join(base, rel))
            except OSError as exc:
                out.append(
                    StartProblem(
                        "missing", os.path.join(base, rel), exc.strerror or "not found", m.get("name")
                    )
                )
                continue
            if not stat.S_ISREG(st.st_mode):
                out.append(
                    StartProblem("type-changed", os.path.join(base, rel), "not a regular file", m.get("name"))
                )
            elif st.st_size != size:
                out.append(
                    StartProblem(
                        "size-changed",
                        os.path.join(base, rel),
                        f"{st.st_size} bytes, recorded {size}",
                        m.get("name"),
                    )
                )
    return out
