"""Tables a person and a script can read (issue 29, item 3): on a terminal of any width the ids
users type are whole (columns are dropped, never ids cut); piped, a table is plain columns
without borders, one row a line, no padding; `show | cat` never cuts a group's error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import snapshot_of, volenv, write_manifest
from ptyrun import run_pty

LONG = "asr-worker-with-a-long-name"  # ids of 40 characters: wider than half of 80 columns
BORDERS = set("│┃━─┏┓┗┛┡┩└┘╇┳┻╋")


@pytest.fixture
def built(tmp_path: Path, root: Path, wheelhouse: Path) -> tuple[Path, str, str]:
    """Two generations of a long-named env, the second with an optional group that fails."""
    m = write_manifest(tmp_path / "p", LONG, ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    first = snapshot_of(root, LONG)
    extra = '[optional.audio]\nrequirements = ["no-such-package==9"]\n'
    m = write_manifest(tmp_path / "p", LONG, ["alpha==2.0", "beta"], find_links=wheelhouse, extra=extra)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    return root, first, snapshot_of(root, LONG)


def _lines(text: str) -> list[str]:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "").split("\n")


@pytest.mark.parametrize("columns", [80, 120])
def test_ids_are_whole_on_a_terminal_at_any_width(built: tuple[Path, str, str], columns: int) -> None:
    root, first, second = built
    for args in (("status",), ("list",), ("history", LONG)):
        r = run_pty("--root", root, *args, columns=columns, stdout_on_tty=True, env={"NO_COLOR": "1"})
        assert r.returncode == 0, r.tty
        lines = _lines(r.tty)
        rows = [ln for ln in lines if BORDERS & set(ln) or LONG in ln]
        assert all(len(ln.rstrip()) <= columns for ln in rows), (args, r.tty)  # no row wraps
        for sid in (first, second):
            assert any(sid in ln for ln in lines), (args, sid, r.tty)  # whole, on one line
        cut = [
            t for ln in lines for t in re.findall(re.escape(LONG) + r"-?\S*", ln) if t not in (first, second)
        ]
        assert not [t for t in cut if t != LONG], (args, cut, r.tty)  # an id is whole or absent


def test_a_narrow_terminal_drops_columns_and_says_so(built: tuple[Path, str, str]) -> None:
    root, _first, second = built
    r = run_pty("--root", root, "status", columns=80, stdout_on_tty=True, env={"NO_COLOR": "1"})
    words = " ".join(r.tty.split())
    assert "not shown at 80 columns: unique, last used" in words and "--json has them" in words, r.tty
    wide = run_pty("--root", root, "status", columns=200, stdout_on_tty=True, env={"NO_COLOR": "1"})
    assert "not shown" not in wide.tty and "last used" in wide.tty and second in wide.tty, wide.tty


def test_piped_tables_are_plain_columns(built: tuple[Path, str, str]) -> None:
    root, first, second = built
    for args in (("status",), ("list",), ("history", LONG), ("show", LONG)):
        r = volenv("--root", root, *args)
        assert r.returncode == 0, r.stderr
        assert not BORDERS & set(r.stdout), (args, r.stdout)
        for ln in r.stdout.splitlines():
            assert ln == ln.rstrip(), (args, repr(ln))  # no padding to a width
    status = volenv("--root", root, "status").stdout.splitlines()
    head = next(ln for ln in status if ln.split()[:2] == ["-", "snapshot"])
    rows = [ln for ln in status if first in ln or second in ln]
    assert len(rows) == 2, status  # one row a line, the id whole
    assert [ln.split()[1] for ln in rows] == [first, second]
    assert "last used" in head and "unique" in head  # every column when piped
    # awk-able: the current row is marked in the first field
    assert next(ln for ln in rows if second in ln).split()[0] == "*"


def test_show_piped_keeps_a_groups_error_whole(built: tuple[Path, str, str]) -> None:
    root = built[0]
    r = volenv("--root", root, "show", LONG)
    doc = volenv("--root", root, "--json", "show", LONG).json()
    error = doc["groups"][0]["error"]  # type: ignore[index]
    assert isinstance(error, str) and len(error) > 80
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("audio"))
    assert " ".join(error.split()) in row, (row, error)
    # and on a terminal it wraps, whole: every word of it is there
    t = run_pty("--root", root, "show", LONG, columns=80, stdout_on_tty=True, env={"NO_COLOR": "1"})
    assert "…" not in t.tty
    assert all(len(ln.rstrip()) <= 80 for ln in _lines(t.tty) if BORDERS & set(ln)), t.tty


def test_json_stays_the_script_interface(built: tuple[Path, str, str]) -> None:
    root, first, second = built
    doc = volenv("--root", root, "--json", "status").json()
    ids = [s["id"] for e in doc["envs"] for s in e["snapshots"]]  # type: ignore[index, union-attr]
    assert ids == [first, second]
