"""Copied as `sitecustomize.py` into the private materialize dir and put first on PYTHONPATH
by `run --materialize` when it execs before the background extraction has finished (never
written into the tree itself, which must match its record).

While the tree's completion mark is absent, the program must never see a file as missing
that the snapshot has: files appear whole (the background writes each one under a temp name
and links it into place), and before anything that could observe a not-yet-extracted file
proceeds, this hook waits for the whole tree:
- an import (meta-path finder, first on sys.meta_path: also importlib.util.find_spec) that
  the normal finders cannot yet satisfy with a file, or only as a namespace package;
- `open` (open(), os.open, io.open_code, hence mmap and dlopen of files opened first) of a
  path in the tree that does not exist yet;
- a directory listing in the tree (os.listdir, os.scandir), except importlib's own;
- ctypes.dlopen of a path in the tree.
Once the mark is seen, import caches are invalidated once and the hook does nothing more. If
the background extraction failed or died, the program stops with exit 4 (verification failed)
rather than run on an incomplete tree. A bare os.stat/os.path.exists of a file not yet local
raises no audit event and is the one access this cannot cover (README: Decisions).
Standard library only: it runs inside the snapshot's interpreter.
"""

from __future__ import annotations

import os
import sys


def _install() -> None:
    tree = os.environ.get("VOLENV_MATERIALIZING")
    if not tree:
        return
    tree = os.path.join(os.path.abspath(tree), "")
    meta = os.path.join(tree, ".volenv")
    done_mark = os.path.join(meta, "materialized.json")
    failed_mark = os.path.join(meta, "materialize-failed")
    pid_mark = os.path.join(meta, "materializing")
    state = {"done": False}
    names: dict[str, set[str]] = {}

    def recorded() -> dict[str, set[str]]:
        """The record's paths, and each path's 'dir/stem' (name up to its first dot): what the
        tree will hold, so a miss the record cannot fill never waits."""
        if not names:
            paths: set[str] = set()
            stems: set[str] = set()
            try:
                with open(os.path.join(meta, "record"), encoding="utf-8") as fh:
                    next(fh, None)
                    for line in fh:
                        rel = line.rstrip("\n").rsplit("\t", 1)[-1]
                        if "\\" in rel:
                            rel = rel.replace("\\t", "\t").replace("\\n", "\n").replace("\\\\", "\\")
                        paths.add(rel)
                        head, _, last = rel.rpartition("/")
                        stems.add(f"{head}/{last.split('.', 1)[0]}" if head else last.split(".", 1)[0])
            except OSError:
                pass
            names["paths"] = paths
            names["stems"] = stems
        return names

    def rel_of(path: object) -> str | None:
        if not isinstance(path, (str, bytes)):
            return None
        try:
            p = os.path.abspath(os.fsdecode(path))
        except (ValueError, OSError):
            return None
        return p[len(tree) :] if p.startswith(tree) else None

    def done() -> bool:
        if state["done"]:
            return True
        if os.path.exists(done_mark):
            state["done"] = True
            import importlib

            importlib.invalidate_caches()
            return True
        return False

    def alive() -> bool:
        try:
            with open(pid_mark, encoding="ascii") as fh:
                pid = int(fh.read().split()[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except (OSError, ValueError, IndexError):
            return True
        return True

    def wait() -> None:
        import time

        while not done():
            if os.path.exists(failed_mark) or not alive():
                if done():
                    return
                try:
                    with open(failed_mark, encoding="utf-8") as fh:
                        why = fh.read().strip()
                except OSError:
                    why = "the background extraction stopped"
                sys.stderr.write(f"volenv: materialize: {why}; the local copy is incomplete\n")
                sys.stderr.flush()
                os._exit(4)
            time.sleep(0.005)

    def in_tree(path: object) -> bool:
        if not isinstance(path, (str, bytes)):
            return False
        try:
            return os.path.abspath(os.fsdecode(path)).startswith(tree)
        except (ValueError, OSError):
            return False

    def hook(event: str, args: tuple[object, ...]) -> None:
        if state["done"]:
            return
        if event in ("open", "ctypes.dlopen"):
            rel = rel_of(args[0])
            if (
                rel
                and not rel.startswith(".volenv")
                and rel in recorded()["paths"]
                and not os.path.lexists(tree + rel)
                and not done()
            ):
                wait()
        elif event in ("os.listdir", "os.scandir") and in_tree(args[0]) and not done():
            caller = sys._getframe(1)
            if caller.f_globals.get("__name__") not in (
                "importlib._bootstrap_external",
                "_frozen_importlib_external",
            ):
                wait()

    class _Guard:
        """First on sys.meta_path: lets an import through only when a file satisfies it now."""

        @classmethod
        def find_spec(cls, fullname: str, path: object = None, target: object = None) -> None:
            if done():
                return None
            for finder in list(sys.meta_path):
                find = getattr(finder, "find_spec", None)
                if finder is cls or find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is None:
                    continue
                namespace = spec.origin in (None, "namespace") and spec.submodule_search_locations is not None
                if namespace and any(in_tree(p) for p in spec.submodule_search_locations or ()):
                    break  # perhaps only its __init__ is not local yet
                return None  # a file (or a built-in) satisfies it now: the normal import proceeds
            last = fullname.rpartition(".")[2]
            stems = recorded()["stems"]
            for loc in path if path is not None else sys.path:  # type: ignore[attr-defined]
                rel = rel_of(loc or ".")
                if rel is not None and (f"{rel.rstrip('/')}/{last}" if rel else last) in stems:
                    wait()  # the record has it: it is on its way
                    break
            return None

    sys.meta_path.insert(0, _Guard)
    sys.addaudithook(hook)


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
