"""Issue 16 (the house): every notice in the CLI's one style (no `volenv:` prefix, warnings as
`warning: ...`), on the `run` fast path too; the fallback-root notice obeys -qq; the CLI's public
functions (commands/) are what the typer layer calls."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import volenv, write_manifest


def _fallback_env(tmp_path: Path) -> dict[str, str]:
    env = {"HOME": str(tmp_path / "home"), "XDG_DATA_HOME": ""}
    for var in ("RUNPOD_POD_ID", "RUNPOD_ENDPOINT_ID"):
        assert var not in os.environ
    return env


def test_key_generate_notice_has_no_prefix(tmp_path: Path) -> None:
    r = volenv("--root", tmp_path / "r", "key", "generate", "--name", "k1", "--out", tmp_path / "k1.key")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("k1:") and r.stdout.count("\n") == 1, r.stdout
    assert r.stderr.startswith(f"secret key written to {tmp_path / 'k1.key'}"), r.stderr
    assert "volenv:" not in r.stderr
    r = volenv(
        "-qq", "key", "generate", "--name", "k2", "--out", tmp_path / "k2.key", env=_fallback_env(tmp_path)
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_fallback_root_notice_is_a_warning_that_qq_silences(tmp_path: Path) -> None:
    if any(os.path.isdir(m) for m in ("/runpod-volume", "/workspace")):
        import pytest

        pytest.skip("a network volume mount exists here: no fallback root")
    env = _fallback_env(tmp_path)
    fallback = tmp_path / "home" / ".local" / "share" / "volenv"
    fallback.mkdir(parents=True)  # status on a root that does not exist is exit 8 (as gc, verify)
    r = volenv("status", env=env)
    assert r.returncode == 0, r.stderr
    assert (
        f"warning: no --root, VOLENV_ROOT or network volume (/runpod-volume, /workspace): using the local fallback root {fallback}"
        in r.stderr
    ), r.stderr
    assert "volenv:" not in r.stderr
    for args in (("-qq", "status"), ("status", "-qq"), ("-qq", "run", "--env", "nosuch", "--", "true")):
        r = volenv(*args, env=env)
        assert "local fallback root" not in r.stderr, (args, r.stderr)
    r = volenv("-q", "status", env=env)
    assert "using the local fallback root" in r.stderr, r.stderr


def test_fast_path_notices_share_the_cli_style(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "run", "--manifest", m, "--on-missing", "build", "--", "true")
    assert r.returncode == 0, r.stderr
    assert f"no snapshot indexed for {m}; syncing it" in r.stderr.splitlines(), r.stderr
    assert not [ln for ln in r.stderr.splitlines() if ln.startswith("volenv:")], r.stderr


def test_a_mounted_volume_with_nothing_provisioned_is_no_snapshot_not_no_volume(
    tmp_path: Path, wheelhouse: Path
) -> None:
    """A new user's walkthrough: an endpoint with `VOLENV_ON_MISSING=fail` on a volume that is
    attached but never provisioned answered "volume root ... does not exist" (exit 8, "mount the
    volume"); the volume is mounted: it is a missing snapshot (exit 3), and the fix provisions."""
    import mounts
    from conftest import write_manifest

    mounts.need_root_and("mount")
    m = write_manifest(tmp_path / "m", "app", ["alpha==1.0"], find_links=wheelhouse)
    with mounts.tmpfs(tmp_path / "vol", "16m") as vol:
        r = volenv("--root", vol / "volenv", "run", "--on-missing", "fail", "--manifest", m, "--", "true")
        assert r.returncode == 3, r.stderr
        assert "nothing is provisioned on the volume mounted at" in r.stderr and f"sync {m}" in r.stderr, (
            r.stderr
        )
        assert not (vol / "volenv").exists()
    (tmp_path / "plain").mkdir()  # not a mount: the volume itself is missing, as before
    r = volenv(
        "--root", tmp_path / "plain" / "volenv", "run", "--on-missing", "fail", "--manifest", m, "--", "true"
    )
    assert r.returncode == 8 and "mount the volume" in r.stderr, r.stderr
