"""Copied as `sitecustomize.py` into a private temp dir on PYTHONPATH by `volenv trace`, never
into the snapshot (which stays sealed and untouched). It appends, in first-use order, every file
under the traced roots that this process (and any Python child, which inherits PYTHONPATH)
opens, one absolute path a line, written with O_APPEND as it happens so a killed or os._exit'ed
start still leaves what it used.

Audit events (PEP 578) cover: `open` (open(), io.open_code for .py/.pyc reads, os.open, the
main script), `mmap.__new__` (weights mapped with mmap: the fd is resolved through
/proc/self/fd), `ctypes.dlopen`, and `import` for extension modules, whose dlopen raises no
file event: the module's __file__ is recorded as soon as it is in sys.modules. The shared
libraries the dynamic linker loaded with an extension or a dlopen (torch._C brings the 434 MB
libtorch_cpu.so) raise no event either: /proc/self/maps is read right after each, so they
keep their place in the order (read only at exit, they came last, and packing left the
library the start maps first behind). Modules imported before this file ran (by .pth files)
are recorded first, with their bytecode (read before any hook could see it).

Directories the start lists (`os.listdir`, `os.scandir`: os.walk, glob, pkgutil, transformers
scanning its models) are recorded too, as lines `L` + absolute path: a scan stats every entry it
finds without opening it, and a stat the start needs must not be a volume round trip. The
import system's own directory cache (`FileFinder._fill_cache`) is not: it stats only the
modules it then opens, which are recorded anyway.

Standard library only, no volenv import: it runs inside the snapshot's interpreter.
"""

from __future__ import annotations

import atexit
import importlib.machinery
import os
import sys


def _install() -> None:
    out = os.environ.get("VOLENV_TRACE_OUT")
    roots_env = os.environ.get("VOLENV_TRACE_ROOTS", "")
    if not out or not roots_env:
        return
    prefixes: list[str] = []
    for r in roots_env.split(os.pathsep):
        if r:
            prefixes.append(os.path.join(os.path.abspath(r), ""))
            prefixes.append(os.path.join(os.path.realpath(r), ""))
    roots = tuple(prefixes)
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    extensions = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    seen: set[str] = set()
    listed: set[str] = set()
    pending: list[str] = []

    def first_time(path: object, done: set[str]) -> str | None:
        """The absolute path, the first time it is seen; None after, or for a non-path."""
        if not isinstance(path, (str, bytes)):
            return None
        try:
            p = os.path.abspath(os.fsdecode(path))
        except (ValueError, OSError):
            return None
        if p in done:
            return None
        done.add(p)
        return p

    def note(path: object) -> None:
        p = first_time(path, seen)
        if p is not None and p.startswith(roots):
            os.write(fd, p.encode("utf-8", "surrogateescape") + b"\n")

    def note_dir(path: object) -> None:
        if isinstance(path, int):  # os.scandir(fd) / os.listdir(fd)
            try:
                path = os.readlink(f"/proc/self/fd/{path}")
            except OSError:
                return
        p = first_time("." if path is None else path, listed)
        if p is not None and os.path.join(p, "").startswith(roots):
            os.write(fd, b"L" + p.encode("utf-8", "surrogateescape") + b"\n")

    maps_due = [False]

    mapped: set[bytes] = set()

    def note_maps() -> None:
        """Shared libraries mapped so far: what the dynamic linker loaded for an extension or
        a dlopen (libtorch_cpu.so for torch._C) raises no event of its own. Read with os.open,
        not open(), which a program may patch; and never failing the program: a sandboxing
        audit hook of its own may refuse /proc."""
        maps_due[0] = False
        try:
            mfd = os.open("/proc/self/maps", os.O_RDONLY | os.O_CLOEXEC)
            try:
                chunks = []
                while chunk := os.read(mfd, 1 << 16):
                    chunks.append(chunk)
            finally:
                os.close(mfd)
        except Exception:
            return
        for line in b"".join(chunks).splitlines():
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[5].startswith(b"/") and fields[5] not in mapped:
                mapped.add(fields[5])  # each mapping once: a big process maps thousands
                note(fields[5].decode("utf-8", "surrogateescape"))

    def flush_imports() -> None:
        for name in list(pending):
            mod = sys.modules.get(name)
            if mod is not None:
                pending.remove(name)
                path = getattr(mod, "__file__", None)
                note(path)
                if isinstance(path, str) and path.endswith(extensions):
                    maps_due[0] = True
        if maps_due[0]:
            note_maps()

    def hook(event: str, args: tuple[object, ...]) -> None:
        if (pending and event != "import") or maps_due[0]:
            flush_imports()
        if event == "open":
            note(args[0])
        elif event == "import":
            pending.append(str(args[0]))
        elif event in ("os.listdir", "os.scandir"):
            try:  # the import system's directory cache stats only what it then opens: skipped
                caller = sys._getframe(1).f_code.co_name
            except (AttributeError, ValueError):
                caller = ""
            if caller != "_fill_cache":
                note_dir(args[0] if args else None)
        elif event == "mmap.__new__":
            fileno = args[0]
            if isinstance(fileno, int) and fileno >= 0:
                try:
                    note(os.readlink(f"/proc/self/fd/{fileno}"))
                except OSError:
                    pass
        elif event == "ctypes.dlopen":
            name = args[0]
            if isinstance(name, str) and os.sep in name:
                note(name)
            maps_due[0] = True  # its own dependencies: mapped by the time the next event comes

    def at_exit() -> None:
        flush_imports()
        for mod in list(sys.modules.values()):
            note(getattr(mod, "__file__", None))
        note_maps()

    for mod in list(sys.modules.values()):  # imported before this ran: their bytecode too
        note(getattr(mod, "__file__", None))
        note(getattr(mod, "__cached__", None))
    note_maps()
    sys.addaudithook(hook)
    atexit.register(at_exit)


def _chain() -> None:
    """A sitecustomize of the snapshot's own, shadowed by this file, still runs."""
    here = os.path.dirname(os.path.abspath(__file__))
    mine = sys.modules.pop("sitecustomize", None)
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        import sitecustomize  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
        if mine is not None and "sitecustomize" not in sys.modules:
            sys.modules["sitecustomize"] = mine


_install()
_chain()
