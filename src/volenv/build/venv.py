"""Helpers on a venv being built: site-packages, link mode, bytecode (compiled at build time,
reusing the previous snapshot's where the source is the same), sizes, the build-time env."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # filelock (and psutil, in _free_bytes) load only when a build really
    pass  # starts: a no-op sync is one process start, they a tenth of it


def count_requirements(lock: Path) -> int | None:
    """Pinned requirement lines of a lock (`name==1.0`, `name @ url`): the package count."""
    try:
        lines = lock.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    return sum(1 for ln in lines if ln[:1].isalnum() and ("==" in ln or " @ " in ln))


def _installed_count(venv: Path) -> int:
    """Distributions installed so far (uv writes each one's .dist-info as it installs)."""
    return sum(1 for sp in site_packages_dirs(venv) for name in os.listdir(sp) if name.endswith(".dist-info"))


def site_packages_dirs(venv: Path) -> list[str]:
    lib = venv / "lib"
    return [str(p) for p in sorted(lib.glob("python*/site-packages"))]


def detect_link_mode(venv: Path) -> str:
    for sp in site_packages_dirs(venv):
        for dirpath, _dirs, files in os.walk(sp):
            for name in files:
                if name.endswith(".py"):
                    return "hardlink" if os.lstat(os.path.join(dirpath, name)).st_nlink > 1 else "copy"
    return "hardlink"


def link_previous_bytecode(staging: Path, previous: list[Path]) -> int:
    """Hard-link __pycache__/*.pyc from a previous snapshot for every source file that is the
    very same inode there (uv hard-links both from one cache entry)."""
    if not previous:
        return 0
    prev = previous[0]
    linked = 0
    tag = f".{sys.implementation.cache_tag}"
    for sp in site_packages_dirs(staging):
        rel_sp = os.path.relpath(sp, staging)
        for dirpath, _dirs, files in os.walk(sp):
            rel_dir = os.path.relpath(dirpath, staging)
            for name in files:
                if not name.endswith(".py"):
                    continue
                src = os.path.join(dirpath, name)
                old_src = os.path.join(prev, rel_dir, name)
                try:
                    if os.lstat(src).st_ino != os.lstat(old_src).st_ino:
                        continue
                except OSError:
                    continue
                pyc_name = name[:-3] + _cache_tag(prev, rel_sp, tag) + ".pyc"
                old_pyc = os.path.join(prev, rel_dir, "__pycache__", pyc_name)
                new_pyc = os.path.join(dirpath, "__pycache__", pyc_name)
                try:
                    os.makedirs(os.path.join(dirpath, "__pycache__"), exist_ok=True)
                    os.link(old_pyc, new_pyc)
                    linked += 1
                except FileExistsError:
                    continue
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    continue
    return linked


# Runs in the snapshot's interpreter (its magic number, its cache tag): compiles the NUL-separated
# paths on stdin. The embedded source path is made relative to the snapshot (stripdir), so the
# bytes do not depend on where the build staged; imports replace it with the real path anyway.
_COMPILE_DRIVER = """
import compileall, os, sys
with open(sys.argv[2], "rb") as fh:
    names = fh.read().split(b"\\0")
failed = []
for f in names:
    if f and not compileall.compile_file(os.fsdecode(f), quiet=2, stripdir=sys.argv[1]):
        failed.append(os.fsdecode(f))
for path in failed:  # why, one line each: the file's own SyntaxError (or decoding error)
    try:
        with open(path, "rb") as fh:
            compile(fh.read(), path, "exec")
        why = "failed to compile"
    except (SyntaxError, ValueError, UnicodeError) as exc:
        why = f"{type(exc).__name__}: {exc}"
    print(f"{path}\\t{why}".replace("\\n", " "), flush=True)
sys.exit(1 if failed else 0)
"""

# A module named for another Python than the snapshot's (torch's `_py312_intrinsics.py`,
# `compat_py2.py`, a `py2/` folder): imported only under that Python, never under this one.
_OTHER_PYTHON = re.compile(r"(?:^|[^a-z0-9])py(?:thon)?_?([23])(?:[._]?(\d{1,2}))?(?=$|[^0-9])", re.I)


@dataclass(frozen=True)
class CompileResult:
    """Byte-compilation's outcome: files that failed, split into those written for another
    Python (counted, not warned about: they never load here) and the rest (warned about)."""

    other_python: tuple[tuple[str, str], ...] = ()
    failures: tuple[tuple[str, str], ...] = ()
    output: str = ""  # anything else the workers printed (a traceback: disk full, ...)
    crashed: bool = False

    def log_lines(self) -> list[str]:
        lines = []
        if self.other_python:
            lines.append(
                f"# byte-compile: {len(self.other_python)} files written for another Python, skipped:"
            )
            lines += [f"#   {p}: {why}" for p, why in self.other_python]
        if self.failures:
            lines.append(f"# byte-compile: {len(self.failures)} files failed (they fail at import too):")
            lines += [f"#   {p}: {why}" for p, why in self.failures]
        if self.output.strip():
            lines.append(self.output)
        return lines


def targets_other_python(path: str, python: tuple[int, int]) -> bool:
    """A path that names a Python version newer than `python` (or Python 2) in a component."""
    for part in Path(path).parts[-3:]:
        for m in _OTHER_PYTHON.finditer(part):
            major = int(m.group(1))
            minor = int(m.group(2)) if m.group(2) else None
            if major == 2 or (minor is not None and (major, minor) > python):
                return True
    return False


def compile_bytecode(venv: Path) -> CompileResult:
    """Byte-compile every module of the venv's site-packages in one worker process per core,
    each given its share of the files at once: `compileall -j` sends files to its pool one at a
    time, and that round trip cost a third of a cold build of a real stack."""
    files: list[str] = []
    for sp in site_packages_dirs(venv):
        for dirpath, _dirs, names in os.walk(sp):
            files.extend(os.path.join(dirpath, n) for n in names if n.endswith(".py"))
    if not files:
        return CompileResult()
    workers = max(1, min(os.cpu_count() or 1, len(files) // 200 + 1))
    env = activation_env_for_build(venv)
    with tempfile.TemporaryDirectory(prefix="volenv-compile-") as tmp:
        procs = []
        for i in range(workers):
            listing = os.path.join(tmp, f"files-{i}")
            with open(listing, "wb") as fh:
                fh.write("\0".join(files[i::workers]).encode("utf-8", "surrogateescape"))
            out = open(os.path.join(tmp, f"out-{i}"), "w+b")  # noqa: SIM115 - closed below
            cmd = [str(venv / "bin" / "python"), "-c", _COMPILE_DRIVER, str(venv), listing]
            procs.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env), out))
        codes, output = [], []
        try:
            for proc, out in procs:
                codes.append(proc.wait())
                out.seek(0)
                output.append(out.read().decode("utf-8", "replace"))
        except BaseException:  # Ctrl-C: no worker may still write while staging is removed
            for proc, _out in procs:
                proc.kill()
                proc.wait()
            raise
        finally:
            for _proc, out in procs:
                out.close()
    python = _venv_python_version(venv)
    other: list[tuple[str, str]] = []
    failures: list[tuple[str, str]] = []
    rest: list[str] = []
    known = set(files)
    for line in "".join(output).splitlines():
        path, tab, why = line.partition("\t")
        if tab and path in known:
            rel = os.path.relpath(path, venv)
            (other if targets_other_python(rel, python) else failures).append((rel, why))
        elif line.strip():
            rest.append(line)
    return CompileResult(
        tuple(other), tuple(failures), "\n".join(rest), crashed=any(c not in (0, 1) for c in codes)
    )


def _venv_python_version(venv: Path) -> tuple[int, int]:
    """X.Y of the venv's interpreter, from its lib/pythonX.Y folder (no subprocess)."""
    for sp in site_packages_dirs(venv):
        ver = Path(sp).parent.name.removeprefix("python").split(".")
        if len(ver) == 2 and all(v.isdigit() for v in ver):
            return int(ver[0]), int(ver[1])
    return sys.version_info[:2]


def _cache_tag(prev: Path, rel_sp: str, default: str) -> str:
    # lib/pythonX.Y/site-packages -> .cpython-XY (the snapshot's interpreter, not ours)
    ver = rel_sp.split(os.sep)[1].removeprefix("python").replace(".", "")
    return f".cpython-{ver}" if ver.isdigit() else default


def unique_size(snapshot_dir: Path) -> int:
    """Bytes held only by this snapshot (files with one link): the space a rebuild may need."""
    total = 0
    for dirpath, _dirs, files in os.walk(snapshot_dir):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if st.st_nlink == 1:
                total += st.st_size
    return total


def activation_env_for_build(venv: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def mib(n: int) -> str:
    """A size in a message: binary units scaled to it (`9.8 TiB`, never `10485760.0 MiB`), as
    every size volenv prints; exact bytes belong in --json."""
    from volenv.base.ui import human_bytes

    return human_bytes(n)
