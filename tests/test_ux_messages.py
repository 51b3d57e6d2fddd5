"""A new user's findings: `trace --help` lists trace's options and trace's errors name trace, a
much smaller trace replacing a stored one warns, and `rollback --to` the current snapshot
changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import snapshot_of, volenv, write_manifest
from test_trace import START, traced_env

__all__ = ["traced_env"]  # the fixture, shared with test_trace


def test_trace_help_lists_its_options_and_its_errors_name_trace(tmp_path: Path, root: Path) -> None:
    for flag in ("--help", "-h"):
        r = volenv("--root", root, "trace", flag)
        assert r.returncode == 0, r.stderr
        for opt in ("--manifest FILE", "--env NAME", "--on-missing", "--verify", "--lock-timeout", "-- CMD"):
            assert opt in r.stdout, r.stdout
        assert "--materialize does not apply" in r.stdout, r.stdout
    hint = "  hint: see `volenv trace --help`"
    r = volenv("--root", root, "trace")
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["error: trace: give exactly one of --manifest M or --env NAME", hint]
    r = volenv("--root", root, "trace", "--manifest", tmp_path / "m.toml")
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["error: trace: no command given after --", hint]
    r = volenv("--root", root, "trace", "--bogus")
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["error: trace: unknown option '--bogus'", hint]
    assert not root.exists()  # nothing written
    # run's own messages are unchanged
    r = volenv("--root", root, "run")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "error: run: give exactly one of --manifest M or --env NAME",
        "  hint: see `volenv run --help`",
    ]
    assert "--materialize WHEN" in volenv("--root", root, "run", "--help").stdout


def test_a_much_smaller_trace_is_stored_with_a_warning(traced_env: tuple[Path, Path]) -> None:
    m, root = traced_env
    snap = root / "envs" / "app" / "snapshots" / snapshot_of(root, "app")

    def trace(code: str) -> tuple[int, str]:
        r = volenv("--root", root, "--json", "trace", "--manifest", m, "--", "python", "-c", code)
        assert r.returncode == 0, r.stderr
        assert json.loads((snap / ".volenv" / "trace.json").read_text())["command"][-1] == code
        return int(r.json()["files"]), r.stderr

    real, err = trace(START)
    assert real >= 5 and "warning" not in err, err  # the first trace replaces none
    empty, err = trace("pass")  # stored all the same, with one warning line
    assert empty < real / 2
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: this trace recorded {empty} files, the one it replaces {real}: the startup pack "
        "shrinks accordingly; trace the real start again if this was not it"
    ], err
    _, err = trace("pass")  # not smaller than the one it replaces
    assert "warning" not in err, err
    _, err = trace(START)  # larger
    assert "warning" not in err, err


def test_trace_ignores_volenv_materialize_and_refuses_the_option(traced_env: tuple[Path, Path]) -> None:
    """VOLENV_MATERIALIZE is set for the workers' `run`; it is no `--materialize` given to trace."""
    m, root = traced_env
    r = volenv(
        "--root",
        root,
        "trace",
        "--manifest",
        m,
        "--",
        "python",
        "-c",
        START,
        env={"VOLENV_MATERIALIZE": "auto"},
    )
    assert r.returncode == 0, r.stderr
    r = volenv("--root", root, "trace", "--materialize", "always", "--manifest", m, "--", "true")
    assert r.returncode == 2 and "trace: --materialize does not apply" in r.stderr, r.stderr


def test_rollback_to_the_current_snapshot_changes_nothing(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    sid = snapshot_of(root, "app")
    env_dir = root / "envs" / "app"

    def state() -> dict[str, bytes]:
        """Every file of the env outside its snapshots (pointer, history, index, events)."""
        return {
            str(p.relative_to(env_dir)): p.read_bytes()
            for p in sorted(env_dir.rglob("*"))
            if p.is_file() and "snapshots" not in p.relative_to(env_dir).parts
        }

    before = state()
    generations = len(volenv("--root", root, "--json", "history", "app").json()["generations"])
    for to in (sid, sid[: len("app-") + 6]):  # the id, and a prefix of it
        r = volenv("--root", root, "rollback", "app", "--to", to, "--lock-timeout", "5")
        assert r.returncode == 0, r.stderr
        assert r.stderr.strip() == f"app is already at {sid}; nothing changed", r.stderr
        assert r.stdout == ""
    r = volenv("--root", root, "--json", "rollback", "app", "--to", sid)
    assert r.returncode == 0, r.stderr
    doc = r.json()
    assert doc["changed"] is False and doc["snapshot"] == sid == doc["previous"], doc
    assert len(volenv("--root", root, "--json", "history", "app").json()["generations"]) == generations
    assert state() == before
    # a damaged rollback mark: `--to` the current snapshot is the repair its hint names, so it writes
    cur = env_dir / "current"
    cur.write_text(
        json.dumps(
            {"schema": 1, "snapshot": sid, "time": 0, "rollback": {"from": "x", "created": 0, "time": 0}}
        )
    )
    assert volenv("--root", root, "run", "--manifest", m, "--", "true").returncode == 4
    r = volenv("--root", root, "rollback", "app", "--to", sid, "--lock-timeout", "5")
    assert r.returncode == 0 and f"rollback: app -> {sid}" in r.stderr, r.stderr
    r = volenv("--root", root, "run", "--manifest", m, "--", "true")
    assert r.returncode == 0, r.stderr
