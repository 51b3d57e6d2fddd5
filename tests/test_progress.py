"""Issue 16 item 7: progress that says something (counts, bytes, rates) on a terminal, one
summary line that stays, nothing but that line without a terminal, nothing at -qq."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import base_env, volenv, write_manifest
from ptyrun import run_pty
from wheelfactory import make_wheel

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR = "━"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("progwheels")
    make_wheel(d, "many", "1.0", files={f"many/m{i}.py": "X = 1\n" * 50 for i in range(200)})
    make_wheel(d, "other", "1.0", files={"other/__init__.py": "Y = 2\n"})
    return d


def _manifest(tmp_path: Path, wheels: Path, name: str = "prog") -> Path:
    return write_manifest(tmp_path / name, name, ["many==1.0", "other==1.0"], find_links=wheels)


def _plain(text: str) -> str:
    return ANSI.sub("", text).replace("\r", "\n")


SUMMARY = re.compile(
    r"built prog-[0-9a-f]{12} in \d+\.\d s: 2 packages, [\d,]+ files, [\d.]+ \w+ \([\d.]+ \w+ new\)"
)


def test_build_on_a_terminal_shows_counts_then_one_summary(tmp_path: Path, root: Path, wheels: Path) -> None:
    r = run_pty("--root", root, "sync", _manifest(tmp_path, wheels))
    assert r.returncode == 0, r.tty
    shown = _plain(r.tty)
    assert BAR in shown, shown  # a bar was drawn
    assert re.search(r"installing .*2/2 packages", shown), shown
    assert re.search(r"hashing files .*[\d,]+/[\d,]+ files, [\d.]+ \w+, [\d.]+ \w+/s", shown), shown
    assert SUMMARY.search(shown), shown
    # the bars are transient: the last line standing is the summary
    tail = [ln for ln in shown.splitlines() if ln.strip()][-1:]
    assert SUMMARY.search(tail[0]), tail


def test_without_a_terminal_stderr_has_only_the_summary(tmp_path: Path, root: Path, wheels: Path) -> None:
    env = base_env()
    env.pop("VOLENV_NO_PROGRESS")
    env.pop("NO_COLOR")
    r = volenv("--root", root, "sync", _manifest(tmp_path, wheels), env=env)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "\x1b" not in r.stderr and BAR not in r.stderr, repr(r.stderr)
    assert SUMMARY.search(r.stderr), r.stderr
    assert not re.search(r"\d+/\d+ (packages|files)", r.stderr), r.stderr
    # one line stays: where the snapshot is and how it was hashed are -v's (a new user counted three)
    assert SUMMARY.search(r.stderr.strip().splitlines()[-1]), r.stderr
    assert "path:" not in r.stderr and "  files: " not in r.stderr, r.stderr
    r = volenv("--root", root, "-v", "sync", _manifest(tmp_path, wheels), env=env)
    assert "  path: " in r.stderr, r.stderr  # (a reuse: no build statistics to show)
    # -q: not even the summary
    r = volenv("--root", root, "-q", "sync", _manifest(tmp_path, wheels, "other"), env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_qq_prints_nothing_but_errors_and_no_progress_hides_bars(
    tmp_path: Path, root: Path, wheels: Path
) -> None:
    m = _manifest(tmp_path, wheels)
    r = run_pty("--root", root, "-qq", "sync", m, stdout_on_tty=True)
    assert r.returncode == 0 and _plain(r.tty).strip() == "", repr(r.tty)
    r = run_pty("--root", root, "-qq", "sync", tmp_path / "nosuch.toml", stdout_on_tty=True)
    assert r.returncode == 2 and "error:" in r.tty, r.tty
    r = run_pty("--root", root, "--no-progress", "verify", "--level", "full", "prog")
    assert r.returncode == 0 and BAR not in r.tty and "\r\x1b[2K" not in r.tty, repr(r.tty)
    r = run_pty("--root", root, "--no-progress", "sync", _manifest(tmp_path, wheels, "other"))
    assert r.returncode == 0 and BAR not in r.tty, repr(r.tty)
    assert re.search(r"built other-[0-9a-f]{12} in .*: 2 packages", _plain(r.tty)), r.tty


def test_verify_pack_push_pull_say_files_bytes_and_rates(
    tmp_path: Path, root: Path, wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "k.key"
    r = volenv("key", "generate", "--name", "k", "--out", key)
    assert r.returncode == 0, r.stderr
    monkeypatch.setenv("VOLENV_SIGNING_KEY", str(key))
    monkeypatch.setenv("VOLENV_TRUSTED_KEYS", r.stdout.strip())
    assert volenv("--root", root, "sync", _manifest(tmp_path, wheels)).returncode == 0

    r = run_pty("--root", root, "verify", "--level", "full", "prog")
    assert r.returncode == 0, r.tty
    shown = _plain(r.tty)
    assert re.search(r"verifying prog-\w+ .*[\d,]+/[\d,]+ files, [\d.]+ \w+, [\d.]+ \w+/s", shown), shown
    assert re.search(r"ok at level full \([\d,]+ files, [\d.]+ \w+ hashed at [\d.]+ \w+/s in", r.stdout), (
        r.stdout
    )

    r = run_pty("--root", root, "pack", "prog")
    assert r.returncode == 0, r.tty
    shown = _plain(r.tty)
    assert re.search(r"packing prog-\w+ .*/[\d,]+ files", shown), shown
    assert re.search(r"packed prog-\w+: [\d,]+ files, [\d.]+ \w+ in [\d.]+ s \([\d.]+ \w+/s\)", shown), shown

    url = f"file://{tmp_path / 'bucket'}"
    r = volenv("--root", root, "push", "prog", "--to", url)
    assert r.returncode == 0, r.stderr
    assert re.search(
        r"pushed prog-\w+ in [\d.]+ s: \d+/\d+ packs, [\d.]+ \w+ sent \([\d.]+ \w+/s\)", r.stderr
    )
    r = run_pty("--root", tmp_path / "b" / "volenv", "pull", "prog", "--from", url)
    assert r.returncode == 0, r.tty
    shown = _plain(r.tty)
    assert re.search(r"pulled prog-\w+ in [\d.]+ s: \d+/\d+ packs, [\d.]+ \w+ fetched", shown), shown
    assert re.search(r"verifying prog-\w+ .*[\d,]+/[\d,]+ files", shown), shown


def test_uv_install_lines_drive_the_package_count() -> None:
    """uv's stderr as it prints it without a terminal (recorded from `uv pip install` over
    HTTP): the total from `Resolved`, the download note, one count per ` + ` line."""
    from volenv.base import ui
    from volenv.build.uvtool import install_progress

    p = ui.Progress(ui.Reporter(-2), "installing", 7, unit="packages")
    feed = install_progress(p)
    feed("Resolved 2 packages in 231ms")
    assert p.total == 2
    feed("Downloading bigone (5.0MiB)")
    assert p.counts() == "0/2 packages, downloading bigone (5.0MiB)"
    feed(" Downloaded bigone")
    feed("Prepared 2 packages in 139ms")
    assert p.counts().endswith("linking")
    for line in ("Installed 2 packages in 8ms", " + bigone==1.0", " + small==1.0"):
        feed(line)
    assert p.counts() == "2/2 packages"


def test_a_slow_step_without_a_terminal_prints_a_line_every_interval(
    tmp_path: Path, root: Path, wheels: Path
) -> None:
    """Issue 29 item 4: a step that prints nothing for a while (here a post-install command)
    still leaves a line in a piped log every VOLENV_PROGRESS_INTERVAL seconds; a bad value is
    a usage error; 0 turns the lines off."""
    env = base_env()
    env["VOLENV_NO_PROGRESS"] = "0"  # base_env's 1 would come back
    extra = '[build]\npost-install = ["sleep 1.6"]\n'
    m = write_manifest(tmp_path / "s", "slow", ["other==1.0"], find_links=wheels, extra=extra)
    r = volenv("--root", root, "sync", m, env={**env, "VOLENV_PROGRESS_INTERVAL": "0.4"})
    assert r.returncode == 0, r.stderr
    beats = re.findall(r"^post-install: sleep 1\.6: still running \(([\d.]+) s\)$", r.stderr, re.M)
    assert len(beats) >= 2 and float(beats[-1]) >= float(beats[0]) + 0.3, r.stderr
    assert SUMMARY.pattern.split()[0] in r.stderr.splitlines()[-1]  # the summary line still ends it
    r = volenv("--root", root, "sync", m, env={**env, "VOLENV_PROGRESS_INTERVAL": "soon"})
    assert r.returncode == 2 and "VOLENV_PROGRESS_INTERVAL" in r.stderr, r.stderr
    m2 = write_manifest(tmp_path / "s2", "slow2", ["other==1.0"], find_links=wheels, extra=extra)
    r = volenv("--root", root, "sync", m2, env={**env, "VOLENV_PROGRESS_INTERVAL": "0"})
    assert r.returncode == 0 and "still running" not in r.stderr, r.stderr
