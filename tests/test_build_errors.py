"""Build errors a person can read (issue 29, item 5): a local package whose build backend fails
(hatchling's "Unable to determine which files to ship" traceback, played by an in-tree backend
so no build dependency is fetched) arrives as uv wrote it: the error line, then each cause on a
`cause:` line and the traceback multi-line under it, never flattened into one multi-KB line;
the failed step names its log and prints a `hint:`. A group's reason (one line, kept in the
seal) is the cause chain and the exception, not the whole traceback."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from conftest import volenv, write_manifest

MESSAGE = "Unable to determine which files to ship inside the wheel using the following heuristics"


def _local_package(where: Path) -> Path:
    pkg = where / "tts-worker"
    pkg.mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = []
            build-backend = "backend"
            backend-path = ["."]

            [project]
            name = "tts-worker"
            version = "0.1"
            """
        )
    )
    frames = "".join(f"def f{i}():\n    f{i + 1}()\n" for i in range(12))  # a deep traceback
    (pkg / "backend.py").write_text(
        frames
        + "def f12():\n"
        + f"    raise ValueError({MESSAGE + ':'!r} + chr(10) + 'The most likely cause is no directory'"
        " ' named tts_worker. ' + 'x' * 300)\n"
        "def get_requires_for_build_wheel(c=None):\n    return []\n"
        "def build_wheel(d, c=None, m=None):\n    f0()\n"
        "def build_editable(d, c=None, m=None):\n    f0()\n"
    )
    return pkg


def test_a_failed_local_build_keeps_its_traceback_multi_line(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    _local_package(tmp_path)
    m = write_manifest(tmp_path, "tts", ["alpha==1.0", "tts-worker @ ./tts-worker"], find_links=wheelhouse)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 7, r.stderr
    lines = r.stderr.splitlines()
    error = next(ln for ln in lines if ln.startswith("error:"))
    assert "build step 'install' failed: Failed to build `tts-worker @ file://" in error, r.stderr
    log = re.search(r"\(build log: (\S+\.log)\)", error)
    assert log and Path(log.group(1)).is_file(), error
    assert len(error) < 400, error  # the error line is one line, not the traceback
    assert "  cause: The build backend returned an error" in lines, r.stderr
    assert any(ln.startswith("  cause: Call to `backend.build_wheel` failed") for ln in lines), r.stderr
    # the traceback: its lines, indented under the causes, in order, the exception last
    tb = [ln for ln in lines if ln.startswith("         ")]
    assert any("Traceback (most recent call last):" in ln for ln in tb), r.stderr
    assert any(ln.strip().startswith("ValueError: " + MESSAGE) for ln in tb), r.stderr
    assert sum('File "' in ln for ln in tb) >= 5, r.stderr
    assert max(len(ln) for ln in lines) < 1000, max(lines, key=len)
    hint = next(ln for ln in lines if ln.startswith("  hint:"))
    assert log.group(1) in hint and "tail -n 60" in hint, hint
    # --json: the same cause, multi-line, in the error document
    doc = volenv("--root", root, "--json", "sync", m).json()
    err = doc["error"]
    assert isinstance(err, dict)
    assert err["kind"] == "build" and "\n" in err["cause"] and "ValueError: " + MESSAGE in err["cause"]


def test_a_groups_reason_is_one_short_line(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    _local_package(tmp_path)
    extra = '[optional.audio]\nrequirements = ["tts-worker @ ./tts-worker"]\n'
    m = write_manifest(tmp_path, "tts2", ["alpha==1.0"], find_links=wheelhouse, extra=extra)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    doc = volenv("--root", root, "--json", "show", "tts2").json()
    groups = doc["groups"]
    assert isinstance(groups, list)
    reason = groups[0]["error"]
    assert "\n" not in reason and len(reason) <= 1000, reason
    assert "ValueError: " + MESSAGE in reason and 'File "' not in reason, reason
    for ln in r.stderr.splitlines():
        assert len(ln) <= 1200, ln


def test_a_failed_smoke_import_shows_its_traceback(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = write_manifest(
        tmp_path,
        "smk",
        ["explodes==1.0"],
        find_links=wheelhouse,
        extra='[activate]\nsmoke-imports = ["explodes"]\n',
    )
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 7, r.stderr
    lines = r.stderr.splitlines()
    assert "  cause: the import's traceback:" in lines, r.stderr
    assert any(ln.strip() == "RuntimeError: boom at import" for ln in lines), r.stderr
    assert any(ln.startswith("  hint:") and "build log" in ln for ln in lines), r.stderr
