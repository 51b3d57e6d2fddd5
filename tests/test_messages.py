"""Issue 16 leftovers, messages: materialize's damaged-pack hint is a complete command, an env
name given to `rollback --to` says what to type instead, `sync --dry-run --json` is the plan
and the diff as one document on stdout (and -qq leaves nothing)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import snapshot_of, volenv, write_manifest


@pytest.fixture
def spaced_root(tmp_path: Path) -> Path:
    return tmp_path / "my volume" / "volenv"  # a root the shell must quote


def test_damaged_pack_hint_is_a_command_that_repacks(
    tmp_path: Path, spaced_root: Path, wheelhouse: Path
) -> None:
    root = spaced_root
    m = write_manifest(tmp_path, "app", ["beta==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", "--pack", m).returncode == 0
    sid = snapshot_of(root, "app")
    doc = json.loads((root / "packs" / "snapshots" / f"{sid}.json").read_text())
    victim = next(p for p in doc["packs"] if p["group"].startswith("beta"))
    blob = root / "packs" / "blobs" / f"{victim['id']}.tar.zst"
    data = bytearray(blob.read_bytes())
    data[len(data) // 3] ^= 0xFF
    blob.write_bytes(bytes(data))
    run = (
        "run",
        "--materialize",
        "always",
        "--materialize-dir",
        tmp_path / "l",
        "--manifest",
        m,
        "--",
        "true",
    )
    r = volenv("--root", root, *run)
    assert r.returncode == 4, r.stderr
    hint = re.search(r"hint: `([^`]+)` again, or run without --materialize", r.stderr)
    assert hint, r.stderr
    assert hint.group(1) == f"volenv --root {shlex.quote(str(root))} pack {sid}", hint.group(1)
    # pasted into a shell, it is the repair
    argv = shlex.split(hint.group(1))
    assert argv[:3] == ["volenv", "--root", str(root)]
    repaired = volenv(*argv[1:])
    assert repaired.returncode == 0, repaired.stderr
    r = volenv("--root", root, *run)
    assert r.returncode == 0, r.stderr


def test_rollback_to_an_env_name_says_what_to_type(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    for name in ("app", "other"):
        m = write_manifest(tmp_path / name, name, ["alpha==1.0"], find_links=wheelhouse)
        assert volenv("--root", root, "sync", m).returncode == 0
    for target in ("app", "other"):  # its own name, another env's
        r = volenv("--root", root, "rollback", "app", "--to", target, "--lock-timeout", "5")
        assert r.returncode == 2, r.stderr
        assert f"error: {target!r} is an env name, and --to takes a snapshot of 'app'" in r.stderr, r.stderr
        assert f"`volenv --root {root} rollback app` alone goes back one generation" in r.stderr, r.stderr
        assert f"`volenv --root {root} history app`" in r.stderr and "not a snapshot id" not in r.stderr
    assert volenv("--root", root, "rollback", "--help").stdout.count("--to SNAPSHOT") == 1


def test_sync_dry_run_json_is_one_document_with_the_plan_and_the_diff(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    m = write_manifest(tmp_path, "app", ["alpha==1.0", "beta==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    current = snapshot_of(root, "app")
    m = write_manifest(tmp_path, "app", ["alpha==2.0", "gamma==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "--json", "sync", "--dry-run", m)
    assert r.returncode == 0, r.stderr
    doc = r.json()  # one document: json.loads refuses anything before or after it
    assert doc["version"] == 1 and doc["command"] == "sync" and doc["action"] == "would-build", doc
    assert doc["previous"] == current and doc["snapshot"].startswith("app-"), doc
    changes = doc["changes"]
    assert isinstance(changes, dict), doc
    assert [(c["name"], c["new"]) for c in changes["added"]] == [("gamma", "1.0")], changes
    assert [(c["name"], c["old"], c["new"]) for c in changes["changed"]] == [("alpha", "1.0", "2.0")], changes
    assert [(c["name"], c["old"]) for c in changes["removed"]] == [("beta", "1.0")], changes
    assert "\n  changes against" not in r.stderr  # the plan is in the document, not repeated
    # without --json the plan is data on stdout, as gc's is (two new users expected it there):
    # -q keeps it, -qq prints nothing at all
    r = volenv("--root", root, "sync", "--dry-run", m)
    assert r.returncode == 0 and "alpha 1.0 -> 2.0" in r.stdout and "alpha" not in r.stderr, r
    assert r.stdout.startswith("would build "), r.stdout
    r = volenv("--root", root, "-q", "sync", "--dry-run", m)
    assert r.returncode == 0 and "alpha 1.0 -> 2.0" in r.stdout, r.stdout
    r = volenv("--root", root, "-qq", "sync", "--dry-run", m)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", (r.stdout, r.stderr)
    assert snapshot_of(root, "app") == current  # nothing changed


def test_pack_push_and_pull_results_read_in_units_and_words(tmp_path: Path, wheelhouse: Path) -> None:
    """`bytes_sent : 39526949`, `seconds : 0.5897934349995921`, `signed_by : None` and a pull
    that "sent" were what a new user read: sizes in units, seconds as `0.6 s`, none as `-`,
    and a pull fetches (the exact numbers stay in --json)."""
    root = tmp_path / "volume" / "volenv"
    m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    units = re.compile(r"^\d[\d,]*(\.\d)? (B|KiB|MiB|GiB)$")
    r = volenv("--root", root, "pack", "app")
    assert r.returncode == 0, r.stderr
    fields = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    assert units.match(fields["bytes               "]), fields
    bucket = f"file://{tmp_path / 'bucket'}"
    r = volenv("--root", root, "push", "app", "--to", bucket)
    assert r.returncode == 0, r.stderr
    fields = {k.strip(): v for k, v in (line.split(": ", 1) for line in r.stdout.splitlines())}
    assert units.match(fields["bytes sent"]) and re.match(r"^[\d.]+ m?s$", fields["seconds"]), fields
    assert fields.get("signed by", "-") == "-" and "None" not in r.stdout, r.stdout
    other = tmp_path / "other" / "volenv"
    r = volenv("--root", other, "pull", "app", "--from", bucket, "--trust-unsigned")
    assert r.returncode == 0, r.stderr
    fields = {k.strip(): v for k, v in (line.split(": ", 1) for line in r.stdout.splitlines())}
    assert "bytes fetched" in fields and "bytes sent" not in fields, fields
    assert units.match(fields["bytes fetched"]), fields
    doc = volenv("--root", other, "--json", "pull", "app", "--from", bucket, "--trust-unsigned").json()
    assert isinstance(doc["bytes_sent"], int)  # the data keeps its exact numbers and names


def test_ctrl_c_says_interrupted_and_how_to_finish(tmp_path: Path, wheelhouse: Path) -> None:
    """Ctrl-C was a silent exit 130 (typer answers it without a word): one error line and the
    way on."""
    import signal
    import time

    from conftest import volenv_popen

    root = tmp_path / "volume" / "volenv"
    m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", "--pack", m).returncode == 0
    # SIGINT at its default in the child even when this test runs as a background job, which
    # inherits it ignored (Python then installs no KeyboardInterrupt handler)
    p = volenv_popen(
        "--root", root, "push", "app", "--to", f"file://{tmp_path / 'bucket'}",
        env={"VOLENV_FAULT": "push-part:pause"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _stopped(p.pid):
            assert time.monotonic() < deadline and p.poll() is None, "push never reached its pause"
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while p.poll() is None:  # every part stops at the fault point: let each one go on
            assert time.monotonic() < deadline, "push never ended after Ctrl-C"
            p.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        _out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert "error: interrupted" in err and "run the same command again" in err, err


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "T"


def test_pull_without_a_target_or_a_bucket_says_what_to_type(tmp_path: Path) -> None:
    root = tmp_path / "volume" / "volenv"
    r = volenv("--root", root, "pull", "--from", f"file://{tmp_path}/bucket", "--trust-unsigned")
    assert r.returncode == 2 and f"hint: `volenv list --remote file://{tmp_path}/bucket`" in r.stderr, (
        r.stderr
    )
    r = volenv("--root", root, "pull", "web", "--trust-unsigned")
    assert r.returncode == 2 and f"hint: `volenv --root {root} pull web --from s3://" in r.stderr, r.stderr


@pytest.mark.parametrize("command", ["history", "diff", "show", "rollback", "pack"])
def test_usage_lines_name_required_arguments_in_words(command: str) -> None:
    """typer writes a required argument `{ENV}`; the usage line says `ENV`, as click/uv do."""
    r = volenv(command, "--help", env={"COLUMNS": "120"})
    usage = next(line for line in r.stdout.splitlines() if line.startswith("Usage:"))
    assert "{" not in usage and "}" not in usage, usage
