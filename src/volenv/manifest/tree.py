"""A local source tree as the manifest's digest sees it: which files count (VCS metadata, caches,
bytecode and build outputs do not), walked in one fixed order. The digest (`sources`) reads
their bytes; the stat fingerprint here only lstat()s them, so that `run --manifest` can tell in
about a millisecond per few hundred files whether a tree may have changed since its alias was
written (then, and only then, the digest is taken again).

Lean on purpose (os and stat only): `run` imports it when a manifest names a local package.
What a stat fingerprint cannot see: an edit that keeps every file's size, mode and mtime (a
same-length edit followed by `touch -r`, or a clock set back). `volenv sync` always takes the
full digest, so it sees those too.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

# What a build neither reads nor writes as source: VCS metadata and tool caches anywhere, build
# outputs and editor settings at the tree's top only (a subpackage may be called `build`).
SOURCE_SKIP_DIRS = {
    ".git",
    ".hg",
    ".svn",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".ipynb_checkpoints",
}
SOURCE_SKIP_TOP = {"build", "dist", ".venv", ".tox", ".nox", "target", ".idea", ".vscode"}
SOURCE_SKIP_FILES = (".pyc", ".pyo", ".swp", ".swo", "~", ".DS_Store")  # name endings, anywhere


def volenv_own_file(name: str) -> bool:
    """At the tree's top, the files volenv itself writes beside a project (`volenv init`'s
    `volenv.toml`/`volenv-*.toml` and its `pylock.toml`/`pylock.NAME.toml`): inputs of their own
    when a manifest names them, never part of the package; counted, writing a second manifest
    next to a project changed every snapshot of the first."""
    if not name.endswith(".toml"):
        return False
    return name.startswith(("volenv.", "volenv-")) or name == "pylock.toml" or name.startswith("pylock.")


def walk(top: str) -> Iterator[tuple[bytes, str, os.stat_result]]:
    """(path relative to `top` as bytes, full path, lstat) of every counted file or link of a
    tree, in the digest's order: a directory's files and links (names sorted), then its
    subdirectories (sorted), each the same way; links to directories count as links, never
    followed. os.walk's order, with scandir and no relpath: ~2x faster on a start's path."""
    yield from _walk(top, b"", True)


def _walk(path: str, prefix: bytes, is_top: bool) -> Iterator[tuple[bytes, str, os.stat_result]]:
    skip = SOURCE_SKIP_DIRS | SOURCE_SKIP_TOP if is_top else SOURCE_SKIP_DIRS
    dirs: list[tuple[str, os.DirEntry[str]]] = []
    others: list[tuple[str, os.DirEntry[str]]] = []
    with os.scandir(path) as it:
        for e in it:
            try:
                is_dir = e.is_dir()  # follows links, as os.walk does
            except OSError:
                is_dir = False
            if not is_dir:
                others.append((e.name, e))
            elif e.name not in skip and not e.name.endswith(".egg-info"):
                if e.is_symlink():
                    others.append((e.name, e))  # a link to a directory: hashed, not walked
                else:
                    dirs.append((e.name, e))
    for name, e in sorted(others):
        if name.endswith(SOURCE_SKIP_FILES) or (is_top and volenv_own_file(name)):
            continue
        yield prefix + os.fsencode(name), e.path, e.stat(follow_symlinks=False)
    for name, e in sorted(dirs):
        yield from _walk(e.path, prefix + os.fsencode(name) + b"/", False)


def stat_lines(path: str) -> bytes:
    """What the fingerprint is taken over: per counted entry its path, type, size, mtime (ns)
    and mode bits; for a file source (a wheel, an sdist) the file's own. Raises OSError when the
    source is gone or unreadable (the caller then takes the slow path)."""
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        return b"F %d %d %o\n" % (st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    out = [b"D\n"]
    for rel, full, est in walk(path):
        if stat.S_ISLNK(est.st_mode):
            target = os.readlink(full).encode("utf-8", "surrogateescape")
            out.append(b"L " + rel + b"\0" + target + b"\n")
        else:
            mode = stat.S_IMODE(est.st_mode)
            out.append(b"F " + rel + b"\0%d %d %o\n" % (est.st_size, est.st_mtime_ns, mode))
    return b"".join(out)
