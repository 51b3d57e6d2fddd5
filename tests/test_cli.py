"""The command line's surface (issue 16): data on stdout and narrative on stderr, --json for
every command and for errors, global options after the command word, one error style with
shell-quoted hints, no escape codes under --color never / NO_COLOR (checked on a real pseudo
terminal), -qq, help texts, sizes with units, and messages that say what is true."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Result, base_env, snapshot_of, volenv, write_manifest
from ptyrun import run_pty

ESC = "\x1b"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> tuple[Path, Path]:
    """One volume with env 'web' built once (read-only tests share it)."""
    tmp = tmp_path_factory.mktemp("cli")
    root = tmp / "volume" / "volenv"
    manifest = write_manifest(tmp, "web", ["alpha==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "sync", manifest)
    assert r.returncode == 0, r.stderr
    return root, manifest


def _json_error(r: Result, code: int) -> dict[str, object]:
    assert r.returncode == code, (r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    assert doc["version"] == 1 and set(doc) == {"version", "error"}, doc
    err = doc["error"]
    assert isinstance(err, dict) and err["code"] == code
    assert {"code", "kind", "message", "hint"} <= set(err), err
    return err


def test_data_on_stdout_narrative_on_stderr(built: tuple[Path, Path]) -> None:
    root, manifest = built
    sid = snapshot_of(root, "web")
    for args, expect in [
        (["status"], sid),
        (["list"], sid),
        (["status", "web"], sid),
        (["history", "web"], sid),
        (["gc", "--dry-run"], "gc plan"),
        (["doctor"], "no problems found"),
        (["verify", "web"], sid),
        (["version"], "0."),
    ]:
        r = volenv("--root", root, *args)
        assert r.returncode == 0, (args, r.stderr)
        assert expect in r.stdout, (args, r.stdout)
        assert expect not in r.stderr, (args, r.stderr)
    # no models on the volume: no data rows on stdout, the fact said on stderr
    r = volenv("--root", root, "models", "list")
    assert r.returncode == 0 and r.stdout == "" and "no models" in r.stderr, (r.stdout, r.stderr)
    # narrative: a sync that reuses says so on stderr and prints no data
    r = volenv("--root", root, "sync", manifest)
    assert r.returncode == 0 and "reused" in r.stderr and r.stdout == "", (r.stdout, r.stderr)
    # `volenv list | grep web` finds the env's row
    cmd = f"{shlex.quote(sys.executable)} -m volenv --root {shlex.quote(str(root))} list | grep web"
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, env=base_env(), timeout=120)
    assert p.returncode == 0 and sid in p.stdout, (p.stdout, p.stderr)


def test_json_everywhere_and_errors_as_json(built: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = built
    r = volenv("version", "--json")
    assert r.returncode == 0 and r.json()["command"] == "version" and r.json()["volenv"], r.stdout
    for args in (
        ["status"],
        ["list"],
        ["history", "web"],
        ["doctor"],
        ["verify", "web"],
        ["gc", "--dry-run"],
    ):
        r = volenv("--root", root, *args, "--json")  # --json after the command word
        assert r.returncode == 0, (args, r.stderr)
        assert r.json()["version"] == 1, args
    # an error of volenv's own: exit 2, a document on stdout, the human line on stderr
    err = _json_error(volenv("--root", root, "status", "nosuch", "--json"), 2)
    assert err["kind"] == "usage" and "no env named 'nosuch'" in str(err["message"])
    # typer's usage errors too
    err = _json_error(volenv("--json", "status", "--bogus"), 2)
    assert "--bogus" in str(err["message"]) and "volenv status --help" in str(err["hint"])
    # a volume error (8)
    err = _json_error(volenv("--root", tmp_path / "nowhere", "gc", "--json"), 8)
    assert err["kind"] == "volume"


def test_version_flag_and_globals_after_the_command(built: tuple[Path, Path]) -> None:
    root, _ = built
    r = volenv("--version")
    assert r.returncode == 0 and r.stdout.startswith("volenv "), r.stdout
    after = volenv("status", "--root", str(root), "-q", "--color", "never", "--no-progress", "--json")
    before = volenv("--root", str(root), "--json", "status")
    assert after.returncode == 0 and after.json()["envs"] == before.json()["envs"]
    r = volenv("status", f"--root={root}", "-v")
    assert r.returncode == 0 and snapshot_of(root, "web") in r.stdout
    help_text = volenv("--help").stdout
    assert "-q, --quiet" in help_text and "-v, --verbose" in help_text
    assert "INTEGER" not in help_text and "[default: 0]" not in help_text
    assert "--version" in help_text


def test_one_error_style_and_quoted_hints(tmp_path: Path, wheelhouse: Path) -> None:
    root = tmp_path / "vol ume" / "volenv"  # a space: the hint must quote it
    manifest = write_manifest(tmp_path / "my dir", "app", ["alpha==1.0"], find_links=wheelhouse)
    root.mkdir(parents=True)
    for r in (
        volenv("--root", root, "run", "--manifest", manifest, "--on-missing", "fail", "--", "true"),
        volenv("--root", root, "run", "--env", "app", "--", "true"),
        volenv("status", "--bogus"),
        volenv("--root", root, "status", "nosuch"),
    ):
        assert r.returncode != 0
        first = r.stderr.strip().splitlines()
        errors = [line for line in first if line.startswith("error: ")]
        assert len(errors) == 1, r.stderr
        assert "volenv: error" not in r.stderr and "╭" not in r.stderr and "│" not in r.stderr, r.stderr
        assert any(line.startswith("  hint: ") for line in first), r.stderr
    # the build hint of `run` pastes into a shell: root and manifest survive shlex
    r = volenv("--root", root, "run", "--manifest", manifest, "--on-missing", "fail", "--", "true")
    assert r.returncode == 3, r.stderr
    hint = next(line for line in r.stderr.splitlines() if "hint:" in line)
    words = shlex.split(hint.split("build it: ", 1)[1])
    assert words == ["volenv", "--root", str(root), "sync", str(manifest)], words


def _pty_run(args: list[str], env: dict[str, str]) -> str:
    """Run volenv with stdout and stderr on a 200-column pseudo terminal (rich sees a tty),
    progress bars off: all output."""
    return run_pty(
        *args, columns=200, stdout_on_tty=True, env={"VOLENV_NO_PROGRESS": "1", **env}, timeout=60
    ).tty


def test_color_never_and_no_color_emit_no_escapes_on_a_tty(built: tuple[Path, Path]) -> None:
    root, _ = built
    env: dict[str, str] = {}  # run_pty: TERM=xterm-256color, no NO_COLOR
    # the control: on a terminal, colour is on by default (the check below can fail)
    assert ESC in _pty_run(["--root", str(root), "--color", "always", "status"], env)
    for args, extra in [
        (["--color", "never", "status"], {}),
        (["status", "--color", "never"], {}),
        (["status"], {"NO_COLOR": "1"}),
        (["--color", "never", "status", "nosuch"], {}),
        (["--color", "never", "doctor"], {}),
        (["--color", "never", "verify", "web"], {}),
        (["--color", "never", "gc", "--dry-run"], {}),
    ]:
        out = _pty_run(["--root", str(root), *args], {**env, **extra})
        assert ESC not in out, (args, out)
        assert "root" in out or "error" in out or "ok" in out or "gc plan" in out, (args, out)


def test_qq_prints_only_errors(built: tuple[Path, Path]) -> None:
    root, _ = built
    for args in (["status"], ["list"], ["doctor"], ["verify", "web"], ["version"], ["history", "web"]):
        r = volenv("--root", root, "-qq", *args)
        assert r.returncode == 0 and r.stdout == "" and r.stderr == "", (args, r.stdout, r.stderr)
    r = volenv("--root", root, "-qq", "status", "nosuch")
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("error: "), r.stderr


def test_help_texts_and_metavars() -> None:
    import typer.main

    from volenv.cli.app import app

    missing: list[str] = []

    def walk(cmd: object, path: str) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")
        for p in getattr(cmd, "params", []):
            if p.param_type_name == "option" and not p.help and "--help" not in p.opts:
                missing.append(f"{path} {p.opts[0]}")
            # a value's metavar is a word (SECONDS, FILE, ENV), not <str>/{env}; choices list themselves
            takes_value = not (p.param_type_name == "option" and (p.is_flag or p.count))
            if takes_value and not p.metavar and getattr(p.type, "name", "") != "choice":
                missing.append(f"{path} {p.name}: no metavar")

    walk(typer.main.get_command(app), "volenv")
    assert not missing, missing
    r = volenv("status", "--help")
    assert "[ENV]" in r.stdout and "{env}" not in r.stdout and "[env]" not in r.stdout, r.stdout
    r = volenv("run", "--help")
    assert r.returncode == 0
    for word in ("--manifest", "--env", "--on-missing", "--verify", "--lock-timeout", "--materialize"):
        assert word in r.stdout, word
    for var in (
        "VOLENV_ROOT",
        "VOLENV_ON_MISSING",
        "VOLENV_VERIFY",
        "VOLENV_LOCK_TIMEOUT",
        "VOLENV_MATERIALIZE",
    ):
        assert var in r.stdout, var


def test_min_free_takes_units(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    from volenv.cli.common import parse_size

    assert parse_size("10G", "x") == 10 * 1024**3 and parse_size("2GB", "x") == 2 * 10**9
    assert parse_size("1.5GiB", "x") == 1536 * 1024**2 and parse_size("4096", "x") == 4096
    manifest = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "sync", "--min-free", "10X", manifest)
    assert r.returncode == 2 and "--min-free: '10X' is not a size" in r.stderr, r.stderr
    r = volenv("--root", root, "sync", "--min-free", "900000T", manifest)
    assert r.returncode == 6, r.stderr
    r = volenv("--root", root, "sync", "--min-free", "1M", manifest)
    assert r.returncode == 0, r.stderr
    # item 7's summary line: what was built, how long, packages, files, bytes
    assert re.search(r"^built app-[0-9a-f]+ in [\d.]+ s: 1 package, \d+ files, [\d.]+ KiB", r.stderr, re.M), (
        r.stderr
    )


def test_status_sizes_share_a_unit(built: tuple[Path, Path]) -> None:
    root, _ = built
    r = volenv("--root", root, "status")
    row = next(line for line in r.stdout.splitlines() if snapshot_of(root, "web") in line)
    units = re.findall(r"\d+(?:\.\d+)? (B|KiB|MiB|GiB|TiB)\b", row)
    assert len(units) == 2 and units[0] == units[1], row


def test_doctor_exits_nonzero_on_a_problem(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    manifest = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", manifest).returncode == 0
    assert volenv("--root", root, "doctor").returncode == 0
    (root / "envs" / "app" / "current").write_text("{not json")
    r = volenv("--root", root, "doctor")
    assert r.returncode == 4 and "problem:" in r.stdout, (r.stdout, r.stderr)


def test_messages_that_are_true(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    manifest = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", manifest).returncode == 0
    sid = snapshot_of(root, "app")
    # status of an env that does not exist
    r = volenv("--root", root, "status", "nosuch")
    assert r.returncode == 2 and "no env named 'nosuch'" in r.stderr, r.stderr
    # unpin of a snapshot that was never pinned
    r = volenv("--root", root, "unpin", sid)
    assert r.returncode == 0 and "was not pinned" in r.stderr, r.stderr
    assert volenv("--root", root, "pin", sid).returncode == 0
    r = volenv("--root", root, "unpin", sid)
    assert r.returncode == 0 and "unpinned" in r.stderr, r.stderr
    # a bucket that is not there
    r = volenv("--root", root, "list", "--remote", f"file://{tmp_path}/nonexistent")
    assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr
    # where the root came from
    r = volenv("doctor", env={"VOLENV_ROOT": str(root)})
    assert f"{root} (from VOLENV_ROOT)" in r.stdout, r.stdout
    r = volenv("--root", root, "doctor")
    assert f"{root} (from --root)" in r.stdout, r.stdout
    # only [activate] changed: re-indexed (the snapshot is reused), not "no usable snapshot"
    changed = write_manifest(
        tmp_path / "b",
        "app",
        ["alpha==1.0"],
        find_links=wheelhouse,
        extra='[activate]\nenv = { FOO = "bar" }\n',
    )
    r = volenv(
        "--root",
        root,
        "run",
        "--manifest",
        changed,
        "--",
        "python",
        "-c",
        "import os; print(os.environ['FOO'])",
    )
    assert r.returncode == 0 and r.stdout.strip() == "bar", r.stderr
    assert "no usable snapshot" not in r.stderr and f"reused {sid}" in r.stderr, r.stderr


def test_one_hoisting_function_serves_run_and_the_other_commands() -> None:
    """globalargs.hoist_globals is the one loop: the CLI's and run's entry point both use it."""
    from volenv.cli.app import hoist_globals
    from volenv.globalargs import hoist_run_globals
    from volenv.start.run import RUN_VALUED

    assert hoist_globals(["status", "web", "--json", "--root", "/r", "--", "-q"]) == [
        "--json", "--root", "/r", "status", "web", "--", "-q"
    ]  # fmt: skip
    assert hoist_globals(["run", "--json", "x"]) == ["run", "--json", "x"]  # run hoists its own
    assert hoist_run_globals(["run", "--env", "-q", "-v", "cmd", "--json"], set(RUN_VALUED)) == [
        "-v", "run", "--env", "-q", "cmd", "--json"
    ]  # fmt: skip
