"""Issue 16, new-user walkthrough (run, help, errors, formats): the CLI behaves alike on the
`run` fast path and elsewhere."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import snapshot_of, volenv, write_manifest


@pytest.mark.parametrize(
    "args",
    [
        ("--json", "run", "--env", "nosuch", "--", "true"),  # global option before `run`
        ("run", "--json", "--env", "nosuch", "--", "true"),  # ... and after it, as for other commands
        ("run", "--env", "nosuch", "--json", "-q", "--", "true"),
    ],
)
def test_run_json_error_document(root: Path, args: tuple[str, ...]) -> None:
    root.mkdir(parents=True)
    r = volenv("--root", root, *args)
    assert r.returncode == 3, r.stderr
    doc = json.loads(r.stdout)
    assert doc["version"] == 1
    assert set(doc["error"]) >= {"code", "kind", "message", "hint"}
    assert doc["error"]["code"] == 3 and doc["error"]["kind"] == "no-snapshot"
    assert "nosuch" in doc["error"]["message"]
    assert "error:" in r.stderr


def test_run_global_root_after_run_word(root: Path, tmp_path: Path) -> None:
    """`--root` after `run` is the root; a run option's value is never taken for a global."""
    root.mkdir(parents=True)
    r = volenv("run", "--root", root, "--json", "--env", "nosuch", "--", "true", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert json.loads(r.stdout)["error"]["kind"] == "no-snapshot"
    r = volenv("--root", root, "run", "--env", "--json", "--", "true")  # an env named "--json"
    assert r.returncode in (2, 3) and not r.stdout, r.stdout


def test_run_without_json_prints_nothing_on_stdout(root: Path) -> None:
    root.mkdir(parents=True)
    r = volenv("--root", root, "run", "--env", "nosuch", "--", "true")
    assert r.returncode == 3 and r.stdout == ""


@pytest.mark.parametrize("cmd", [("sync",), ("status",), ("run",), ("models", "fetch"), ("gc",)])
def test_help_neither_resolves_nor_announces_the_root(tmp_path: Path, cmd: tuple[str, ...]) -> None:
    """`volenv CMD --help` with no root anywhere: the help, and no fallback-root warning."""
    if any(os.path.isdir(m) for m in ("/runpod-volume", "/workspace")):
        pytest.skip("a network volume mount exists here: no fallback root")
    r = volenv(*cmd, "--help", env={"XDG_DATA_HOME": str(tmp_path / "xdg"), "RUNPOD_POD_ID": ""})
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout or "usage" in r.stdout
    assert r.stderr == ""
    assert not (tmp_path / "xdg").exists()


@pytest.mark.parametrize("cmd", [("sync",), ("run", "--manifest")])
def test_missing_manifest_says_so_plainly_with_an_init_hint(
    root: Path, tmp_path: Path, cmd: tuple[str, ...]
) -> None:
    root.mkdir(parents=True)
    args = (*cmd, "nosuch.toml") if cmd == ("sync",) else (*cmd, "nosuch.toml", "--", "true")
    r = volenv("--root", root, *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "error: nosuch.toml: no such file\n" in r.stderr
    assert "(file)" not in r.stderr
    assert "hint: write one with `init` from a requirements.txt, pyproject.toml or uv.lock" in r.stderr
    (tmp_path / "requirements.txt").write_text("six\n")
    r = volenv("--root", root, *args, cwd=tmp_path)
    assert "hint: write it from requirements.txt: volenv init requirements.txt -o nosuch.toml" in r.stderr


def test_invalid_toml_has_no_placeholder_key(root: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("x=\n")
    r = volenv("--root", root, "sync", tmp_path / "bad.toml")
    assert r.returncode == 2 and f"error: {tmp_path / 'bad.toml'}: invalid TOML" in r.stderr, r.stderr


def test_auto_without_packs_mentions_packs_only_where_it_would_extract(
    tmp_path: Path, wheelhouse: Path
) -> None:
    """One filesystem: auto runs in place anyway, so the missing packs are no news. Where auto
    would have extracted, the warning names the complete pack command, this root included."""
    root = tmp_path / "volume" / "volenv"
    m = write_manifest(tmp_path, "app", ["beta==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    sid = snapshot_of(root, "app")
    run = ("--root", root, "run", "--materialize", "auto", "--materialize-dir", tmp_path / "local", "-m", m)
    r = volenv(*run, "--", "true")
    assert r.returncode == 0, r.stderr
    assert "no packs" not in r.stderr and "materialize auto: in place" in r.stderr, r.stderr
    r = volenv(*run, "--", "true", env={"VOLENV_MATERIALIZE_THRESHOLD_MS": "0"})
    assert r.returncode == 0, r.stderr
    assert f"{sid} has no packs (volenv --root {root} pack {sid}); running in place" in r.stderr, r.stderr


def test_materialize_and_summary_durations_use_the_one_format(tmp_path: Path, wheelhouse: Path) -> None:
    """`extracted ... in 0.01 s` like `built ... in 0.5 s`: one elapsed-time format everywhere."""
    root = tmp_path / "volume" / "volenv"
    m = write_manifest(tmp_path, "app", ["beta==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "sync", "--pack", m)
    assert r.returncode == 0 and re.search(r" in \d+\.\d+ s: ", r.stdout + r.stderr), (r.stdout, r.stderr)
    run = ("--root", root, "run", "--materialize", "always", "--materialize-dir", tmp_path / "local", "-m", m)
    r = volenv(*run, "--", "true")
    assert r.returncode == 0, r.stderr
    assert re.search(r"materialize: (extracted \S+|startup pack of \S+ local) .*in \d+\.\d+ s\b", r.stderr), (
        r.stderr
    )
    assert not re.search(r"\d\.\d+s\b", r.stderr), r.stderr


def test_duration_helpers() -> None:
    from volenv.base.ui import fmt_duration, human_seconds

    assert (
        human_seconds(0.5) == "0.5 s"
        and human_seconds(0.012) == "0.01 s"
        and human_seconds(12.34) == "12.3 s"
    )
    assert fmt_duration(7 * 86400) == "1w" and fmt_duration(90) == "90s" and fmt_duration(5400) == "90m"


def test_run_on_missing_build_ends_with_the_sync_summary(tmp_path: Path, wheelhouse: Path) -> None:
    root = tmp_path / "volume" / "volenv"
    m = write_manifest(tmp_path, "app", ["beta==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "run", "--on-missing", "build", "-m", m, "--", "true")
    assert r.returncode == 0, r.stderr
    sid = snapshot_of(root, "app")
    assert re.search(
        rf"built {sid} in \d+\.\d+ s: \d+ packages?, \d+ files, [\d.]+ KiB \([\d.]+ KiB new\)", r.stderr
    ), r.stderr
    r = volenv("--root", root, "sync", m)  # sync's own line is unchanged in shape
    assert re.search(rf"reused {sid} in \d+\.\d+ s", r.stdout + r.stderr), (r.stdout, r.stderr)


def test_run_help_says_what_a_url_models_variable_names() -> None:
    r = volenv("run", "--help")
    assert r.returncode == 0 and "a url model's file path" in " ".join(r.stdout.split()), r.stdout
