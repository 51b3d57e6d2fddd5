"""RunPod's model cache: a serverless endpoint can have RunPod put Hugging Face models on the
worker's own disk, at `/runpod-volume/huggingface-cache/hub/models--ORG--NAME/snapshots/REV/`
(the hub cache layout; `VOLENV_RUNPOD_HF_CACHE` moves it, empty turns its use off). An hf model
whose repository and pinned revision are there, with every file the manifest names, is used in
place: no download, no copy, no record on the volume (the cache is this machine's, the volume
everyone's).

Verified against its pins: the snapshot folder is the pinned commit, and each file is a link
into the repository's blobs/ whose name is the hash the Hub gave it (sha256 for an LFS file,
the git blob sha1 for the rest); `verify=True` hashes every byte against that name, otherwise
only presence and shape are checked. One verdict per model per process: what the start check
hashed, activation reuses.

Lean on purpose (os; `hashlib` and `fnmatch` only when a model is found there): `run` imports
it on the fast path.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

ENV_VAR = "VOLENV_RUNPOD_HF_CACHE"
DEFAULT_DIR = "/runpod-volume/huggingface-cache/hub"
READ = 8 << 20


def cache_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """RunPod's hub cache on this machine when there is one, else None."""
    env = os.environ if environ is None else environ
    path = env.get(ENV_VAR, DEFAULT_DIR)
    if not path:
        return None
    return path if os.path.isdir(path) else None


class Found:
    """A model in RunPod's cache: where (`snapshot`), what (`files`: (relative path, size)),
    whether every byte was hashed (`verified`), and why it cannot be used (`problem`, or None)."""

    def __init__(
        self, snapshot: str, files: list[tuple[str, int]], verified: bool, problem: str | None
    ) -> None:
        self.snapshot = snapshot
        self.files = files
        self.verified = verified
        self.problem = problem

    @property
    def usable(self) -> bool:
        return self.problem is None

    @property
    def bytes(self) -> int:
        return sum(size for _rel, size in self.files)


_verdicts: dict[tuple[Any, ...], Found] = {}


def _key(cache: str, m: dict[str, Any]) -> tuple[Any, ...]:
    hf = m["hf"]
    return (
        cache,
        hf["repo"],
        hf["revision"],
        tuple(hf.get("files") or ()),
        tuple(hf.get("allow_patterns") or ()),
    )


def find(m: dict[str, Any], *, verify: bool, environ: Mapping[str, str] | None = None) -> Found | None:
    """The hf model `m` in RunPod's cache (checked; hashed with verify=True), or None when the
    cache is absent or lacks its repository at the pinned revision."""
    hf = m.get("hf")
    if not isinstance(hf, dict):
        return None
    cache = cache_dir(environ)
    if cache is None:
        return None
    key = _key(cache, m)
    known = _verdicts.get(key)
    if known is not None and (known.verified or not verify or not known.usable):
        return known
    repo_dir = os.path.join(cache, "models--" + str(hf["repo"]).replace("/", "--"))
    snapshot = os.path.join(repo_dir, "snapshots", str(hf["revision"]))
    try:
        if not stat.S_ISDIR(os.lstat(snapshot).st_mode):
            return None
    except OSError:
        return None
    found = _check(repo_dir, snapshot, hf, verify)
    _verdicts[key] = found
    return found


def _wanted(snapshot: str, hf: dict[str, Any]) -> list[str]:
    if hf.get("files"):
        return [str(f) for f in hf["files"]]
    from fnmatch import fnmatch

    patterns = [p + "*" if p.endswith("/") else p for p in hf.get("allow_patterns") or ()]
    out = []
    for dirpath, dirs, names in os.walk(snapshot):
        dirs.sort()
        for n in sorted(names):
            rel = os.path.relpath(os.path.join(dirpath, n), snapshot)
            if any(fnmatch(rel, p) for p in patterns):
                out.append(rel)
    return out


def _check(repo_dir: str, snapshot: str, hf: dict[str, Any], verify: bool) -> Found:
    wanted = _wanted(snapshot, hf)
    files: list[tuple[str, int]] = []
    if not wanted:
        return Found(snapshot, files, verify, "no file there matches the manifest's allow-patterns")
    blobs = os.path.join(repo_dir, "blobs")
    for rel in wanted:
        path = os.path.join(snapshot, rel)
        try:
            target = os.readlink(path)
        except FileNotFoundError:
            return Found(snapshot, files, verify, f"{rel} is not there")
        except OSError:
            return Found(snapshot, files, verify, f"{rel} is not a link into the repository's blobs/")
        blob = os.path.normpath(os.path.join(os.path.dirname(path), target))
        if os.path.dirname(blob) != blobs:
            return Found(snapshot, files, verify, f"{rel} links outside the repository's blobs/")
        name = os.path.basename(blob)
        algo = "sha256" if len(name) == 64 else "sha1" if len(name) == 40 else None
        if algo is None or not all(c in "0123456789abcdef" for c in name):
            return Found(snapshot, files, verify, f"{rel}: its blob {name!r} is not named by a hash")
        try:
            st = os.lstat(blob)
        except OSError as exc:
            return Found(snapshot, files, verify, f"{rel}: its blob is unreadable ({exc.strerror})")
        if not stat.S_ISREG(st.st_mode):
            return Found(snapshot, files, verify, f"{rel}: its blob is not a regular file")
        if verify:
            digest = _hash(blob, algo, st.st_size)
            if digest != name:
                return Found(
                    snapshot, files, verify, f"{rel} does not match the hash it is named by ({algo} {digest})"
                )
        files.append((rel, st.st_size))
    return Found(snapshot, files, verify, None)


def _hash(path: str, algo: str, size: int) -> str | None:
    """sha256 of the bytes (an LFS blob), or the git blob sha1 (any other file), or None when
    the file cannot be read."""
    import hashlib

    h = hashlib.sha256() if algo == "sha256" else hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
    from volenv.store.volio import open_regular  # a FIFO or device planted there: refused, not waited on

    try:
        with open_regular(path, buffering=0) as fh:
            while chunk := fh.read(READ):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def ref_matches(found: Found, m: dict[str, Any], ref: str) -> bool:
    """Whether RunPod's cache names the pinned commit under `ref` (what code loading the repo by
    name reads there); a cache volenv does not write can only be read."""
    repo_dir = os.path.dirname(os.path.dirname(found.snapshot))
    from volenv.store.volio import read_regular  # the ref's few bytes, never through a link or FIFO

    try:
        text = read_regular(os.path.join(repo_dir, "refs", *ref.split("/")), 100)
    except OSError:
        return False
    return text.strip() == str(m["hf"]["revision"]).encode()


def start_lines(models: list[dict[str, Any]], env: Mapping[str, str]) -> list[str]:
    """The start's log lines about RunPod's model cache: each hf model found there, used in
    place or not (and why), and where code that loads a repository by name will look."""
    cache = cache_dir()
    if cache is None:
        return []
    out = []
    used = False
    for m in models:
        found = _verdicts.get(_key(cache, m)) if isinstance(m.get("hf"), dict) else None
        if found is None:
            continue
        if found.usable:
            used = True
            how = "verified against its pins" if found.verified else "present (not hashed: --verify seal)"
            out.append(
                f"model '{m['name']}': RunPod's model cache, {how}; used in place (no download, no"
                f" copy): {found.snapshot}"
            )
        else:
            out.append(
                f"warning: model '{m['name']}': RunPod's model cache holds {found.snapshot}, not used:"
                f" {found.problem}"
            )
    if used and env.get("HF_HUB_CACHE") != cache:
        out.append(
            f"HF_HUB_CACHE stays {env.get('HF_HUB_CACHE')}: another hf model is on the volume, or"
            " RunPod's refs do not name the pins; code that loads a repository by name reads the"
            " volume's copy, VOLENV_MODEL_<NAME> names RunPod's"
        )
    return out
