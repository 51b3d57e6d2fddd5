"""GC and the build lease: an env being built is left alone; execution takes each env's lease
(`store/locks.py`) so a build and a removal never overlap."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from volenv.base.errors import VolenvError
from volenv.store.paths import VolumePaths


def lease_holder(paths: VolumePaths, env: str) -> str | None:
    """Who holds an env's build lease, if anyone live does."""
    from volenv.store.locks import describe_holder

    marker = paths.build_lease(env)
    if not marker.exists():
        return None
    try:
        from filelock import SoftFileLease

        probe = SoftFileLease(str(marker), lease_duration=_lease_seconds(), is_singleton=False)
        probe.acquire(timeout=0)
    except Exception:
        return describe_holder(marker) or "another process"
    probe.release(force=True)
    return None


def _lease_seconds() -> float:
    from volenv.store.locks import lease_seconds

    return lease_seconds()


@contextlib.contextmanager
def env_lease(paths: VolumePaths, env: str) -> Iterator[VolenvError | None]:
    """Hold the env's build lease without waiting: None when held, else why not (LockTimeout
    when a build holds it)."""
    from volenv.store.locks import BuildLease

    lease = BuildLease(paths, env, timeout=0, say=lambda _m: None)
    try:
        lease.acquire()
    except VolenvError as exc:
        yield exc
        return
    try:
        yield None
    finally:
        lease.release()
