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
from .packs import PackManifest, blob_path, manifest_path, read_manifest, unpack
from .paths import VolumePaths
from .sealcheck import META_DIR, SealProblem, check_seal

MARKER = "materialized.json"
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
    if os.path.lexists(dest):  # a killed start's copy without its mark, or one that failed its check
        _discard(dest)
    partial = base / f".{sid}.partial-{unique_suffix()}"
    partial.mkdir()
    staged = partial / sid
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
