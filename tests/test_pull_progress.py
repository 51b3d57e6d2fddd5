"""Issue 16 item 7, pull's unpack step: besides its download's bytes, a pull shows the files
and bytes it has unpacked, ending at the snapshot's totals (the record's files and sizes)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from conftest import snapshot_of, volenv, write_manifest
from ptyrun import run_pty
from volenv.base import ui
from volenv.store.integrity import load_record
from volenv.store.paths import VolumePaths


class RecordingProgress(ui.Progress):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.seen: list[tuple[int, int, int | None]] = []

    def changed(self) -> None:
        self.seen.append((self.items, self.done, self.total))


class Recording(ui.Reporter):
    """The reporter's calls: every progress a step opened, by label."""

    def __init__(self) -> None:
        super().__init__(-2)
        self.bars: dict[str, RecordingProgress] = {}

    def progress(self, label: str, total: int | None, **kw: Any) -> ui.Progress:
        self.bars[label] = RecordingProgress(self, label, total, **kw)
        return self.bars[label]


@pytest.fixture
def bucket(tmp_path: Path, wheelhouse: Path) -> tuple[str, str]:
    root = tmp_path / "a"
    m = write_manifest(tmp_path, "app", ["beta==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    url = f"file://{tmp_path / 'bucket'}"
    r = volenv("--root", root, "push", "app", "--to", url)
    assert r.returncode == 0, r.stderr
    return url, snapshot_of(root, "app")


def test_pull_unpack_counts_files_and_bytes_to_the_snapshot_totals(
    tmp_path: Path, bucket: tuple[str, str]
) -> None:
    from volenv.commands.replicate import pull

    url, sid = bucket
    rec = Recording()
    old = ui._Proxy.backend
    ui.set_reporter(rec)
    try:
        paths = VolumePaths(tmp_path / "b")
        pull(paths, "app", url, None, None, switch=True, lock_timeout=30, trust_unsigned=True)
    finally:
        ui.set_reporter(old)
    unpack = rec.bars[f"unpacking {sid}"]
    record = load_record(paths.snapshot("app", sid))
    files = [e for e in record.values() if e.type == "f"]
    assert unpack.unit == "files" and unpack.closed
    assert (unpack.items, unpack.done, unpack.total) == (len(files), sum(e.size for e in files), len(files))
    # it moved: counts in between, never backwards, the total known before the last file
    items = [i for i, _, _ in unpack.seen]
    assert items == sorted(items) and len(set(items)) > 10, unpack.seen
    assert any(t == len(files) and i < len(files) for i, _, t in unpack.seen), unpack.seen
    assert rec.bars[f"pull {sid}"].done > 0  # the download's bytes, as before


def test_pull_on_a_terminal_shows_the_unpack(tmp_path: Path, bucket: tuple[str, str]) -> None:
    url, sid = bucket
    r = run_pty("--root", tmp_path / "b", "pull", "app", "--from", url, "--trust-unsigned")
    assert r.returncode == 0, r.tty
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", r.tty).replace("\r", "\n")
    assert re.search(rf"unpacking {sid} .*[\d,]+/[\d,]+ files, [\d.]+ \w+", shown), shown
