"""`run --materialize`: extract a snapshot's packs onto the container's own disk and exec from
there, when the network volume's per-operation latency makes in-place imports slow.

A start imports thousands of modules: each uncached open/stat on a network volume is a round
trip, while a few large sequential pack reads are not. `auto` times a handful of metadata
operations on the volume and picks; a complete local copy (its marker names the record digest)
is reused by later starts, a partial one (killed mid-extract) never is.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import faults
from .errors import VerifyError, VolenvError
from .fsutil import atomic_write_json, unique_suffix
from .packs import (
    META_GROUP,
    STARTUP_GROUP,
    PackInfo,
    PackManifest,
    Unpacker,
    blob_path,
    manifest_path,
    need_zstandard,
    pack_order,
    read_manifest,
    unpack,
)
from .paths import VolumePaths
from .sealcheck import META_DIR, SealProblem, check_seal

MARKER = "materialized.json"
IN_PROGRESS = "materializing"  # pid of the background extraction, while there is one
FAILED = "materialize-failed"  # why the background extraction stopped
#: per-operation latency above which extracting beats running in place (bench/coldstart.py)
THRESHOLD_MS = float(os.environ.get("VOLENV_MATERIALIZE_THRESHOLD_MS", "0.15"))
PROBE_OPS = 12


def _say(msg: str) -> None:
    print(f"volenv: {msg}", file=sys.stderr, flush=True)


def default_dir() -> Path:
    """Private to this user: $XDG_RUNTIME_DIR (per-user, 0700 by spec) when it is usable, else a
    per-user 0700 directory under the temp dir; `private_base` checks either before use."""
    explicit = os.environ.get("VOLENV_MATERIALIZE_DIR")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and _owned_private(runtime):
        return Path(runtime) / "volenv-materialized"
    return Path(tempfile.gettempdir()) / f"volenv-{os.geteuid()}" / "materialized"


def _owned_private(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def private_base(base: Path) -> None:
    """Create the default materialize directory (and its per-user parent) 0700, then insist
    each is a real directory owned by this user that nobody else can enter: on a shared /tmp
    another user could pre-create the name (or a symlink) to feed us code or steal a copy."""
    for d in (base.parent, base):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        if not _owned_private(str(d)):
            raise OSError(
                errno.EPERM, f"{d} is not a private directory of this user (0700, owned, not a link)"
            )


def probe_latency_ms(snapshot_dir: str) -> float:
    """Median time of one metadata operation on the volume: a single-component lookup
    (os.stat relative to an open directory), so the probe itself stays cheap on a slow volume;
    it stops early once the answer is clear."""
    sp = next(Path(snapshot_dir).glob("lib/python*/site-packages"), Path(snapshot_dir) / "lib")
    try:
        fd = os.open(sp, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return 0.0
    times: list[float] = []
    try:
        names = sorted(os.listdir(fd))[:PROBE_OPS]
        for name in names:
            t0 = time.perf_counter()
            try:
                os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                pass
            times.append(time.perf_counter() - t0)
            if len(times) >= 4 and _median(times) * 1000 > 4 * THRESHOLD_MS:
                break
    finally:
        os.close(fd)
    return _median(times) * 1000 if times else 0.0


def _median(values: list[float]) -> float:
    # not `statistics`: on a cold start every extra stdlib import is a disk read
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _complete(dest: Path, seal: dict[str, Any], level: str = "seal") -> bool:
    """A reusable copy: its completion mark, its own seal naming the volume seal's record, and
    (at --verify stat/full) every file matching that record, checked as on the volume."""
    marker = dest / META_DIR / MARKER
    if not marker.exists():
        return False
    try:
        own = check_seal(str(dest), dest.name)
    except SealProblem:
        return False
    import json

    try:
        if json.loads(marker.read_bytes()).get("record_sha256") != seal["record_sha256"]:
            return False
    except (OSError, ValueError, AttributeError):  # a damaged marker: not complete
        return False
    if own.get("record_sha256") != seal["record_sha256"]:
        return False
    if level == "seal":
        return True
    from .integrity import verify_snapshot

    report = verify_snapshot(dest, level)
    if not report.ok:
        _say(
            f"materialize: the local copy {dest} differs from its record ({report.summary()}); re-extracting"
        )
    return report.ok


def _discard(dest: Path) -> None:
    """Move a stale or edited copy aside (one rename, so no start sees half of it), then delete."""
    aside = dest.with_name(f".{dest.name}.stale-{unique_suffix()}")
    try:
        os.rename(dest, aside)
    except FileNotFoundError:
        return
    if os.path.islink(aside):  # a planted link: the link goes, never what it points to
        os.unlink(aside)
    else:
        shutil.rmtree(aside, ignore_errors=True)


def _clean_partials(base: Path, sid: str) -> None:
    for p in [*base.glob(f".{sid}.partial-*"), *base.glob(f".{sid}.stale-*")]:
        pid = p.name.rsplit("-", 2)[-2] if p.name.count("-") >= 2 else ""
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another process on this disk is extracting it now
        shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def choose(
    root: str, snapshot_dir: str, seal: dict[str, Any], mode: str, mdir: str | None, level: str = "seal"
) -> str | None:
    """The directory to exec from: a materialized copy checked at `level`, or None for in place."""
    paths = VolumePaths(Path(root))
    sid = os.path.basename(snapshot_dir)
    base = Path(mdir) if mdir else default_dir()
    dest = base / sid
    if _complete(dest, seal, level):
        _say(f"materialize: reusing the complete local copy {dest}")
        return str(dest)
    try:
        manifest = read_manifest(manifest_path(paths, sid))
    except FileNotFoundError:
        _say(f"warning: materialize: {sid} has no packs (`volenv pack {sid}`); running in place")
        return None
    except VolenvError as exc:
        _damaged(mode, f"pack manifest unusable: {exc}")
        return None
    if manifest.record_sha256 != seal["record_sha256"]:
        _damaged(mode, "the packs do not belong to this snapshot's record")
        return None
    try:
        need_zstandard()
    except VolenvError as exc:  # a lean install without the 'packs' extra: in place, said once
        _say(f"warning: materialize: {exc} ({exc.hint}); running in place")
        return None
    need = int(sum(p.tar_size for p in manifest.packs) * 1.05)
    try:
        if mdir or os.environ.get("VOLENV_MATERIALIZE_DIR"):
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
        else:
            private_base(base)
        free = shutil.disk_usage(base).free
    except OSError as exc:
        _say(f"warning: materialize: {base} unusable ({exc.strerror}); running in place")
        return None
    if mode == "auto":
        latency = probe_latency_ms(snapshot_dir)
        if latency < THRESHOLD_MS:
            _say(
                f"materialize auto: in place (volume metadata op {latency:.3f} ms"
                f" < {THRESHOLD_MS} ms threshold)"
            )
            return None
        if free < need:
            _say(
                f"materialize auto: in place (volume metadata op {latency:.3f} ms, but local disk has"
                f" {free} bytes free < {need} needed)"
            )
            return None
        _say(
            f"materialize auto: extracting to {base} (volume metadata op {latency:.3f} ms"
            f" >= {THRESHOLD_MS} ms)"
        )
    elif free < need:
        _say(
            f"warning: materialize: local disk {base} has {free} bytes free, {need} needed; running in place"
        )
        return None
    return _extract(paths, manifest, base, dest, seal, mode, level)


def _damaged(mode: str, why: str) -> None:
    if mode == "always":
        raise VerifyError(
            f"materialize: {why}", hint="`volenv pack SNAPSHOT` again, or run without --materialize"
        )
    _say(f"warning: materialize: {why}; running in place")
    return None


def _extract(
    paths: VolumePaths,
    manifest: PackManifest,
    base: Path,
    dest: Path,
    seal: dict[str, Any],
    mode: str,
    level: str = "seal",
) -> str | None:
    sid = manifest.snapshot
    _clean_partials(base, sid)
    if os.path.lexists(dest) and _await_background(dest, seal, level):
        _say(f"materialize: reusing the local copy {dest}, completed by another start")
        return str(dest)
    if os.path.lexists(dest):  # a killed start's copy without its mark, or one that failed its check
        _discard(dest)
    partial = base / f".{sid}.partial-{unique_suffix()}"
    partial.mkdir()
    staged = partial / sid
    if level == "seal" and any(p.group == STARTUP_GROUP for p in manifest.packs):
        return _extract_startup_first(paths, manifest, base, partial, dest, mode)
    t0 = time.perf_counter()
    try:
        unpack(manifest, lambda i: open(blob_path(paths, i.id), "rb"), staged)  # noqa: SIM115
        faults.point("materialize")
        check_seal(str(staged), sid)
        if level != "seal":  # the copy is what runs: check it at the level asked for
            from .integrity import verify_snapshot

            report = verify_snapshot(staged, level)
            if not report.ok:
                raise VerifyError(f"the extracted copy does not match the record: {report.summary()}")
        atomic_write_json(
            staged / META_DIR / MARKER,
            {"schema": 1, "snapshot": sid, "record_sha256": seal["record_sha256"], "time": time.time()},
        )
        try:
            os.rename(staged, dest)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not _complete(dest, seal, level):
                raise
    except (VerifyError, SealProblem) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        _damaged(mode, f"a pack is damaged: {exc}")
        return None
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _say(f"warning: materialize: local disk full while extracting ({exc.strerror}); running in place")
            return None
        raise
    shutil.rmtree(partial, ignore_errors=True)
    _say(f"materialize: extracted {sid} to {dest} in {time.perf_counter() - t0:.2f}s")
    return str(dest)


# ---------------------------------------------------------------- startup pack first


def _await_background(dest: Path, seal: dict[str, Any], level: str) -> bool:
    """Another start's copy whose background extraction is still running: wait for it to be
    complete (True) or to stop (False: the caller discards it)."""
    meta = dest / META_DIR
    while True:
        if _complete(dest, seal, level):
            return True
        try:
            pid = int((meta / IN_PROGRESS).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        if (meta / FAILED).exists() or pid == os.getpid() or not _alive(pid):
            return False
        time.sleep(0.02)


def _write_at(dir_fd: int, name: str, data: bytes) -> None:
    """temp + fsync + rename inside an open directory (the tree may be renamed meanwhile)."""
    tmp = f".{name}.tmp-{os.getpid()}"
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
    )
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _guard_dir(base: Path) -> Path:
    """The start guard as sitecustomize.py in a dir of the (private) materialize base."""
    guard = base / ".volenv-guard"
    guard.mkdir(mode=0o700, exist_ok=True)
    src = (Path(__file__).with_name("_startguard.py")).read_bytes()
    target = guard / "sitecustomize.py"
    try:
        same = target.read_bytes() == src
    except OSError:
        same = False
    if not same:
        from .fsutil import atomic_write_bytes

        atomic_write_bytes(target, src)
    return guard


def _extract_startup_first(
    paths: VolumePaths, manifest: PackManifest, base: Path, partial: Path, dest: Path, mode: str
) -> str | None:
    """Extract the metadata and startup packs, then hand the rest to a background process that
    extracts into the same tree, and exec at once: `_startguard.py` (on PYTHONPATH) makes the
    program wait for the whole tree before it could observe a file that is not local yet."""
    sid = manifest.snapshot
    staged = partial / sid
    t0 = time.perf_counter()
    order = sorted(manifest.packs, key=pack_order)
    first = [p for p in order if p.group in (META_GROUP, STARTUP_GROUP)]
    rest = [p for p in order if p.group not in (META_GROUP, STARTUP_GROUP)]
    u: Unpacker | None = None
    try:
        u = Unpacker(manifest, staged)
        u.extract(first, lambda i: open(blob_path(paths, i.id), "rb"))  # noqa: SIM115
        check_seal(str(staged), sid)
        _write_at(u.tree.dir_fd(META_DIR, create=False), IN_PROGRESS, f"{os.getpid()}\n".encode())
        guard = _guard_dir(base)
    except (VerifyError, SealProblem) as exc:
        if u is not None:
            u.close()
        shutil.rmtree(partial, ignore_errors=True)
        _damaged(mode, f"a pack is damaged: {exc}")
        return None
    except OSError as exc:
        if u is not None:
            u.close()
        shutil.rmtree(partial, ignore_errors=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _say(f"warning: materialize: local disk full while extracting ({exc.strerror}); running in place")
            return None
        raise
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked processes
        code = 0
        try:
            os.close(r)
            if os.fork() == 0:
                os.setsid()
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):  # never hold the program's output pipes open
                    os.dup2(null, fd)
                code = _background(paths, u, rest, base, w)
        finally:
            os._exit(code)
    os.close(w)
    os.waitpid(child, 0)
    started = os.read(r, 32)
    os.close(r)
    u.close()
    if not started:
        shutil.rmtree(partial, ignore_errors=True)
        _damaged(mode, "the background extraction did not start")
        return None
    tree = staged
    try:
        os.rename(staged, dest)
        tree = dest
        shutil.rmtree(partial, ignore_errors=True)
    except OSError as exc:  # another start put a copy there meanwhile: run from ours where it is
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    before = sum(p.tar_size for p in first)
    total = sum(p.tar_size for p in manifest.packs)
    files = sum(p.files for p in first)
    _say(
        f"materialize: startup pack of {sid} local in {time.perf_counter() - t0:.2f}s ({files} files,"
        f" {before} of {total} bytes); the rest extracts in the background into {tree}"
    )
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(guard), *([old] if old else [])])
    os.environ["VOLENV_MATERIALIZING"] = str(tree)
    return str(tree)


def _background(paths: VolumePaths, u: Unpacker, rest: list[PackInfo], base: Path, ready: int) -> int:
    """The rest of the packs, each blob copied to local disk and checked against its sha256
    before any byte of it lands in the tree (a program is already running from it); each file
    appears whole. Then the completion mark, or FAILED with the reason."""
    import hashlib
    import json

    meta_fd = u.tree.dir_fd(META_DIR, create=False)
    meta_fd = os.dup(meta_fd)
    try:
        _write_at(meta_fd, IN_PROGRESS, f"{os.getpid()}\n".encode())
        os.write(ready, str(os.getpid()).encode())
        os.close(ready)
        u.tree.atomic = True
        faults.point("materialize-background")
        for info in rest:
            local = base / f".{info.id}.blob-{unique_suffix()}"
            try:
                h = hashlib.sha256()
                with open(blob_path(paths, info.id), "rb") as src, open(local, "wb") as out:
                    while chunk := src.read(1 << 20):
                        h.update(chunk)
                        out.write(chunk)
                if h.hexdigest() != info.blob_sha256:
                    raise VerifyError(f"pack {info.id[:16]}… ({info.group}) is damaged: blob sha256 mismatch")
                u.extract([info], lambda _i, f=local: open(f, "rb"))  # type: ignore[misc]  # noqa: SIM115
            finally:
                local.unlink(missing_ok=True)
        u.finish()
        assert u.record is not None
        seal_fd = os.open("seal.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=meta_fd)
        with open(seal_fd, "rb") as fh:
            rec = json.loads(fh.read())["record_sha256"]
        mark = {"schema": 1, "snapshot": u.manifest.snapshot, "record_sha256": rec, "time": time.time()}
        _write_at(meta_fd, MARKER, json.dumps(mark).encode())
        os.unlink(IN_PROGRESS, dir_fd=meta_fd)
        return 0
    except BaseException as exc:  # whatever stopped it is the reason the guard prints
        try:
            _write_at(meta_fd, FAILED, f"background extraction failed: {exc}".encode())
        except OSError:
            pass
        return 1
    finally:
        u.close()
