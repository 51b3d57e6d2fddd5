"""A pull of many large objects must not hold a descriptor per object up front: with a low
RLIMIT_NOFILE it still completes (the temp file is opened when its first range runs)."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import hashlib, os, sys
    from pathlib import Path
    from volenv.transfer import bucketget
    from volenv.transfer.buckets import FileRemote
    from volenv.base.streams import AdaptiveStreams

    bucketget.RANGE_PART = 4096  # small ranges: 80 "large" objects in a few MB
    bucketget.RANGED_FROM = 4097
    base, root = Path(sys.argv[1]), Path(sys.argv[2])
    wanted = []
    for i in range(80):
        data = os.urandom(3 * 4096 + i)
        (base / f"o{i}").write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()

        def check(p, sha=sha):
            assert hashlib.sha256(p.read_bytes()).hexdigest() == sha

        wanted.append(
            bucketget.Wanted(f"o{i}", root / "got" / f"o{i}", len(data), None, check, RuntimeError)
        )
    n = bucketget.fetch_all(FileRemote("file://x", base), wanted, root, AdaptiveStreams(pinned=4))
    print(n, len(list((root / "got").iterdir())))
    """
)


def _low_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def test_pull_of_80_ranged_objects_under_ulimit_64(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "r").mkdir()
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "b"), str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_low_fds,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[1] == "80"
