"""`volenv push`, `pull`, `pack` and `list --remote`: snapshots to and from object storage."""

from __future__ import annotations

from typing import Any

from volenv.base.errors import UsageError
from volenv.store.paths import VolumePaths
from volenv.store.rootfind import fix_command


def push(
    paths: VolumePaths,
    target: str,
    to: str,
    endpoint: str | None,
    region: str | None,
    signing_key: str | None,
) -> Any:
    """Send a sealed snapshot (and its models) to TO as content-addressed packs."""
    from volenv.remote.push import push as do_push
    from volenv.remote.signing import signing_key_from
    from volenv.transfer.buckets import open_remote

    key = signing_key_from(signing_key)
    return do_push(paths, open_remote(to, endpoint=endpoint, region=region), target, key)


def pull(
    paths: VolumePaths,
    target: str | None,
    from_: str,
    endpoint: str | None,
    region: str | None,
    *,
    switch: bool,
    lock_timeout: float,
    trust_unsigned: bool,
) -> Any:
    """Fetch a snapshot into this volume, verified at full before it becomes visible."""
    from volenv.remote.pull import pull as do_pull
    from volenv.remote.signing import Trust
    from volenv.transfer.buckets import open_remote

    if not from_:
        raise UsageError(
            "pull: --from URL is required",
            hint=f"`{fix_command(str(paths.root), 'pull', target or 'ENV', '--from', 's3://bucket/prefix')}`"
            " (or file:///path); see `volenv pull --help`",
        )
    trust = Trust.from_env(trust_unsigned)
    return do_pull(
        paths,
        open_remote(from_, endpoint=endpoint, region=region),
        target,
        trust=trust,
        switch=switch,
        lock_timeout=lock_timeout,
    )


def pack(paths: VolumePaths, target: str) -> dict[str, Any]:
    """Store a snapshot as zstd packs beside it; a summary of what was written."""
    from volenv.commands.show import installed_counts
    from volenv.remote.push import _select_local
    from volenv.store.packwrite import pack_snapshot

    snapshot = _select_local(paths, target)
    manifest = pack_snapshot(paths, snapshot)
    counts = installed_counts(snapshot)  # as sync, show and verify count them
    return {
        "snapshot": manifest.snapshot,
        "files": counts.files if counts else None,
        "packages": len(counts.distributions) if counts else None,
        "packs": len(manifest.packs),
        "bytes": sum(p.blob_size for p in manifest.packs),
        "uncompressed": sum(p.tar_size for p in manifest.packs),
    }


def list_remote(remote: str, trust_unsigned: bool) -> Any:
    """What a bucket holds; a file:// bucket that does not exist is an error, not an empty list."""
    from volenv.remote.replicate import list_remote as do_list
    from volenv.remote.signing import Trust
    from volenv.transfer.buckets import FileRemote, open_remote

    bucket = open_remote(remote)
    if isinstance(bucket, FileRemote) and not bucket.base.is_dir():
        raise UsageError(f"no bucket at {remote}: {bucket.base} does not exist")
    return do_list(bucket, Trust.from_env(trust_unsigned))
