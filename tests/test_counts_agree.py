"""Issue 29, item 7: one env, four commands, the same numbers. `sync`, `show`, `verify` and
`pack` count the same files (regular files, not directories, links or the seal) and the same
packages (every installed distribution, the project's own local package included: show once
said 12 where sync said 13), and sizes print in one format (binary units; exact bytes only
in --json)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from conftest import volenv, write_manifest

BACKEND = """\
import base64, hashlib, os, zipfile

NAME, VERSION = "tts_worker", "0.1"
DIST = f"{NAME}-{VERSION}.dist-info"


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    files = {
        f"{NAME}/__init__.py": "X = 1\\n",
        f"{NAME}/core.py": "Y = 2\\n",
        f"{DIST}/METADATA": f"Metadata-Version: 2.1\\nName: tts-worker\\nVersion: {VERSION}\\n",
        f"{DIST}/WHEEL": "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{DIST}/RECORD,,")
    files[f"{DIST}/RECORD"] = "\\n".join(record) + "\\n"
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return name


build_editable = build_wheel
"""


def _local_package(where: Path) -> None:
    pkg = where / "tts-worker"
    pkg.mkdir(parents=True)
    (pkg / "backend.py").write_text(BACKEND)
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


def test_sync_show_verify_and_pack_count_alike(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    _local_package(tmp_path)
    m = write_manifest(tmp_path, "tts", ["beta==1.0", "tts-worker @ ./tts-worker"], find_links=wheelhouse)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    said = re.search(
        r"built (\S+) in [\d.]+ s: (\d+) packages, ([\d,]+) files, ([\d.]+ [KMG]?i?B) ", r.stderr
    )
    assert said, r.stderr
    sid, packages, files = said.group(1), int(said.group(2)), int(said.group(3).replace(",", ""))
    assert packages == 3  # alpha, beta and the local tts-worker

    show = volenv("--root", root, "--json", "show", sid).json()
    names = sorted(p["name"] for p in show["packages"])  # type: ignore[union-attr, index]
    assert names == ["alpha", "beta", "tts-worker"], show["packages"]
    assert show["files"] == files, (show["files"], files)
    human = volenv("--root", root, "show", sid).stdout
    assert f"packages ({packages})" in human and f", {files:,} files" in human, human
    assert re.search(r"^tts-worker +0\.1 ", human, re.M), human

    verify = volenv("--root", root, "--json", "verify", "--level", "full", sid).json()
    assert verify["reports"][0]["files_checked"] == files  # type: ignore[index]
    assert f"({files:,} files" in volenv("--root", root, "verify", sid).stdout

    pack = volenv("--root", root, "--json", "pack", sid).json()
    assert pack["files"] == files and pack["packages"] == packages, pack
    text = volenv("--root", root, "pack", sid)
    assert f"packed {sid}: {files:,} files" in text.stderr, text.stderr
    # one size format: every size on the human pack summary in binary units, none in raw bytes
    sizes = {ln.split(":")[0].strip(): ln.split(":", 1)[1].strip() for ln in text.stdout.splitlines()}
    for key in ("bytes", "uncompressed"):
        assert re.fullmatch(r"[\d.]+ (B|KiB|MiB|GiB)", sizes[key]), text.stdout
    assert sizes["files"] == f"{files:,}" and sizes["packages"] == str(packages), text.stdout
