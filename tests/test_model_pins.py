"""Issue 29, item 8: a wrong sha256 pin on a url model says so (the file's sha256 does not match
the pin, both digests named, exit 9) and the weights are downloaded once, not twice; `models
verify` never calls a model that was never fetched ok, with or without the manifest."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from conftest import volenv, write_manifest
from rangeserver import RangeServer, serve

MB = 1 << 20


def test_wrong_pin_is_said_once_and_the_file_is_downloaded_once(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    size = 72 * MB  # above the size that gets a second try
    src = tmp_path / "weights.bin"
    src.write_bytes(os.urandom(size))
    real = hashlib.sha256(src.read_bytes()).hexdigest()
    wrong = hashlib.sha256(b"another file").hexdigest()
    with serve(RangeServer(src, rate=400e6)) as srv:
        extra = f'[[models]]\nname = "w"\nurl = "{srv.url}"\nsha256 = "{wrong}"\nsize = {size}\n'
        m = write_manifest(tmp_path / "m", "pins", ["alpha==1.0"], find_links=wheelhouse, extra=extra)
        r = volenv("--root", root, "models", "fetch", m)
        served = srv.served
    assert r.returncode == 9, r.stderr
    assert "the file's sha256 does not match the pin" in r.stderr, r.stderr
    assert wrong in r.stderr and real in r.stderr and "nothing was published" in r.stderr
    assert "fetching it again" not in r.stderr and "once more" not in r.stderr, r.stderr
    assert served <= size * 1.05, served  # once
    assert not list((root / "models" / "records").glob("*.json"))

    # never fetched: missing, by the manifest and by the env's current snapshot
    r = volenv("--root", root, "models", "verify", "--manifest", m)
    assert r.returncode == 4 and "never fetched" in r.stdout + r.stderr, r.stdout + r.stderr
    r = volenv("--root", root, "sync", "--no-models", m)
    assert r.returncode == 0, r.stderr
    r = volenv("--root", root, "models", "verify")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "models ok" not in r.stdout and "never fetched" in r.stdout, r.stdout


def test_an_optional_model_never_fetched_is_not_called_ok(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    extra = f'[[models]]\nname = "o"\nurl = "http://127.0.0.1:9/o.bin"\nsha256 = "{sha}"\noptional = true\n'
    m = write_manifest(tmp_path / "m", "opt", ["alpha==1.0"], find_links=wheelhouse, extra=extra)
    r = volenv("--root", root, "models", "verify", "--manifest", m)
    assert r.returncode == 0, r.stderr
    assert "o" not in r.stdout.split(":", 1)[-1].replace("none", "").split(), r.stdout
