"""Text read from the volume (a seal's link_mode and manifest_path, a history line's action)
never reaches the terminal as control characters: show, list, status and history print ESC
as `\\x1b`, on a pipe and on a terminal (--json keeps the value as it is)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import volenv, write_manifest
from ptyrun import run_pty
from volenv.store.sealcheck import seal_self_digest

EVIL = "x\x1b]0;PWNED\x07\x1b[2J\r"


@pytest.fixture(scope="module")
def vol(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Path:
    d = tmp_path_factory.mktemp("esc")
    root = d / "vol" / "volenv"
    m = write_manifest(d / "m", "app", ["alpha==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "--json", "sync", m)
    assert r.returncode == 0, r.stderr
    sid = str(r.json()["snapshot"])
    seal = root / "envs" / "app" / "snapshots" / sid / ".volenv" / "seal.json"
    rec = json.loads(seal.read_text())
    rec["link_mode"] = "hardlink" + EVIL
    rec["manifest_path"] = "/m" + EVIL
    rec["groups"] = [{"name": "g" + EVIL, "required": False, "state": "failed", "error": "e" + EVIL}]
    rec["self_sha256"] = seal_self_digest(rec)  # a forged seal, self-consistent
    seal.chmod(0o644)
    seal.write_text(json.dumps(rec))
    hist = root / "envs" / "app" / "history.jsonl"
    hist.write_text(
        hist.read_text() + json.dumps({"schema": 1, "time": 1.0, "snapshot": sid, "action": EVIL}) + "\n"
    )
    return root


COMMANDS = [["show", "app"], ["list"], ["status"], ["history", "app"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c[0])
def test_volume_text_is_escaped_on_a_pipe(vol: Path, cmd: list[str]) -> None:
    r = volenv("--root", vol, *cmd)
    out = r.stdout + r.stderr
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in out and "\r" not in out, repr(out)
    assert "PWNED" in out, out  # shown, escaped


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c[0])
def test_volume_text_is_escaped_on_a_terminal(vol: Path, cmd: list[str]) -> None:
    r = run_pty("--root", vol, *cmd, stdout_on_tty=True, columns=200)
    assert "\x1b]0;PWNED" not in r.tty and "\x1b[2J" not in r.tty, repr(r.tty)
