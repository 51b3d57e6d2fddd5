"""Issue 25, item 2: `run --diagnose` survives the handler. CMD runs as volenv's child for a grace
period: a command that is not found (127) or not executable (126), or a handler that raises at
import, is diagnosed (its last stderr lines, the snapshot's verification) and the diagnosis
answers every job; signals pass through and the exit status is kept; after the grace period a
crash is logged and passed on for the platform to restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import base_env, volenv, write_manifest
from test_image import FakeQueue, job_queue  # noqa: F401  (a fixture: RunPod's job API on 127.0.0.1)

CRASH = "import sys\nprint('loading the model', file=sys.stderr)\nraise OSError('libnvrtc.so.13: cannot open shared object file')\n"


@pytest.fixture
def app(tmp_path: Path, root: Path, wheelhouse: Path) -> Path:
    m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    return m


def _report(stderr: str) -> dict[str, object]:
    line = next(ln for ln in stderr.splitlines() if ln.startswith("volenv-diagnosis "))
    return json.loads(line.split(" ", 1)[1])  # type: ignore[no-any-return]


def test_a_command_not_found_or_not_executable_is_diagnosed(tmp_path: Path, root: Path, app: Path) -> None:
    r = volenv("--root", root, "run", "--diagnose", "--manifest", app, "--", "nosuchcmd", "--flag")
    assert r.returncode == 127, r.stderr
    assert "DIAGNOSIS: the worker failed at boot: the worker command 'nosuchcmd' is not found" in r.stderr
    assert _report(r.stderr)["phase"] == "boot"
    script = tmp_path / "handler.py"
    script.write_text("print('hi')\n")
    script.chmod(0o644)
    r = volenv("--root", root, "run", "--diagnose", "--manifest", app, "--", str(script))
    assert r.returncode == 126 and "not executable" in r.stderr, r.stderr


def test_a_handler_that_raises_at_import_is_diagnosed_with_its_traceback_tail(
    tmp_path: Path, root: Path, app: Path
) -> None:
    handler = tmp_path / "handler.py"
    handler.write_text(CRASH)
    r = volenv("--root", root, "run", "--diagnose", "--manifest", app, "--", "python", str(handler))
    assert r.returncode == 1, r.stderr
    assert "OSError: libnvrtc.so.13" in r.stderr.split("DIAGNOSIS")[0], (
        "the worker's own stderr came through first"
    )
    rep = _report(r.stderr)
    assert rep["phase"] == "boot" and rep["exit_code"] == 1
    assert any("libnvrtc.so.13" in ln for ln in rep["stderr_tail"])  # type: ignore[union-attr]
    assert rep["verify"]["ok"] is True and "Traceback" in "\n".join(rep["stderr_tail"])  # type: ignore[index, arg-type]
    assert "libnvrtc.so.13" in rep["failed"]  # type: ignore[operator]


def test_the_diagnosis_answers_every_job_and_the_worker_keeps_polling(
    tmp_path: Path,
    root: Path,
    app: Path,
    job_queue: FakeQueue,  # noqa: F811
) -> None:
    """The SDK's production loop, against a fake RunPod queue: the worker's handler dies at
    import, and both queued jobs still get an answer naming why."""
    handler = tmp_path / "handler.py"
    handler.write_text(CRASH)
    env = base_env()
    env.update(job_queue.env("pod-crash"))
    env["HOME"] = str(tmp_path)
    first, second = job_queue.put(text="a"), job_queue.put(text="b")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "volenv",
            "--root",
            str(root),
            "run",
            "--diagnose",
            "--manifest",
            str(app),
            "--",
            "python",
            str(handler),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for jid in (first, second):
            body = job_queue.result(jid, timeout=60)["body"]
            report = body.get("volenv_diagnosis") or (body.get("output") or {}).get("volenv_diagnosis")
            assert report and report["phase"] == "boot", body
            assert any("libnvrtc" in ln for ln in report["stderr_tail"])
        time.sleep(1)
        assert proc.poll() is None, "the diagnostic worker stopped polling"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_signals_pass_through_and_the_exit_status_is_kept(tmp_path: Path, root: Path, app: Path) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = base_env()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "volenv",
            "--root",
            str(root),
            "run",
            "--diagnose",
            "--manifest",
            str(app),
            "--",
            "python",
            "-c",
            code,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 7
    assert "DIAGNOSIS" not in (proc.stderr.read() if proc.stderr else "")


def test_after_the_grace_period_a_crash_is_logged_and_passed_on(
    tmp_path: Path, root: Path, app: Path
) -> None:
    code = "import sys, time\ntime.sleep(1.5)\nprint('late trouble', file=sys.stderr)\nsys.exit(3)\n"
    r = volenv(
        "--root",
        root,
        "run",
        "--diagnose",
        "--diagnose-grace",
        "0.5",
        "--manifest",
        app,
        "--",
        "python",
        "-c",
        code,
    )
    assert r.returncode == 3, r.stderr
    assert "DIAGNOSIS" not in r.stderr and "past the 0.5 s grace period" in r.stderr
    assert "exited with 3 after" in r.stderr and "volenv:   | late trouble" in r.stderr, r.stderr
    r = volenv("--root", root, "run", "--diagnose", "--manifest", app, "--", "python", "-c", "print('fine')")
    assert r.returncode == 0 and r.stdout.strip() == "fine" and "DIAGNOSIS" not in r.stderr


def test_without_diagnose_run_still_execs(tmp_path: Path, root: Path, app: Path) -> None:
    """The fast path is unchanged: the program replaces volenv, so its parent is whoever started
    volenv (this test); under --diagnose its parent is volenv, which supervises it."""
    probe = ("--", "python", "-c", "import os; print(os.getppid())")
    r = volenv("--root", root, "run", "--manifest", app, *probe)
    assert r.returncode == 0 and int(r.stdout.strip()) == os.getpid(), r.stderr
    r = volenv("--root", root, "run", "--diagnose", "--manifest", app, *probe)
    assert r.returncode == 0 and int(r.stdout.strip()) != os.getpid(), r.stderr


# ---------------------------------------------------------------- from an attacker's pass


def test_a_sigterm_right_at_the_start_reaches_the_worker(tmp_path: Path, root: Path, app: Path) -> None:
    """Handlers are in place before the child starts and signals never land on the stderr
    thread: each SIGTERM reaches the worker, whose own exit status comes back."""
    # os._exit, not sys.exit: a second SIGTERM landing while the worker's interpreter shuts
    # down (its handlers already reset to the default) would kill it with 143 by itself.
    code = "import os, signal, time\nsignal.signal(signal.SIGTERM, lambda *a: os._exit(7))\nprint('ready', flush=True)\ntime.sleep(30)\n"
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-m", "volenv", "--root", str(root), "run", "--diagnose", "--manifest", str(app), "--", "python", "-c", code],
            env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for _ in range(3):
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 7


def test_the_served_tail_masks_the_workers_secrets(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = write_manifest(
        tmp_path, "sec", ["alpha==1.0"], find_links=wheelhouse,
        extra='[activate]\nenv = { MY_TOKEN = "tok_activate_SECRET123" }\n',
    )  # fmt: skip
    assert volenv("--root", root, "sync", m).returncode == 0
    handler = tmp_path / "h.py"
    handler.write_text(
        "import os, sys\n"
        "print('token', os.environ['MY_TOKEN'], 'pat', os.environ['GITHUB_PAT'], file=sys.stderr)\n"
        "print('Authorization: Bearer abcdefghijklmnop', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    r = volenv(
        "--root",
        root,
        "run",
        "--diagnose",
        "--manifest",
        m,
        "--",
        "python",
        str(handler),
        env={"GITHUB_PAT": "ghp_0123456789abcdef"},
    )
    assert r.returncode == 3
    report = _report(r.stderr)
    served = json.dumps(report)
    for secret in ("tok_activate_SECRET123", "ghp_0123456789abcdef", "abcdefghijklmnop"):
        assert secret not in served, (secret, report["stderr_tail"])


def test_the_grace_period_is_measured_to_the_exit_not_to_a_grandchilds_stderr(
    tmp_path: Path, root: Path, app: Path
) -> None:
    code = "import subprocess, sys\nsubprocess.Popen(['sleep', '8'])\nsys.exit(2)\n"
    r = volenv(
        "--root",
        root,
        "run",
        "--diagnose",
        "--diagnose-grace",
        "2",
        "--manifest",
        app,
        "--",
        "python",
        "-c",
        code,
    )
    assert r.returncode == 2 and "DIAGNOSIS" in r.stderr and "past the" not in r.stderr, r.stderr


def test_bad_run_settings_from_the_environment_are_usage_errors(
    tmp_path: Path, root: Path, app: Path
) -> None:
    for var in ("VOLENV_LOCK_TIMEOUT", "VOLENV_DIAGNOSE_GRACE"):
        r = volenv("--root", root, "run", "--diagnose", "--manifest", app, "--", "true", env={var: "abc"})
        assert r.returncode == 2 and var in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_an_inherited_ignored_sigchld_does_not_break_a_build(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    m = write_manifest(tmp_path, "chld", ["alpha==1.0"], find_links=wheelhouse)
    code = (
        "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
        f"os.execv(sys.executable, [sys.executable, '-m', 'volenv', '--root', {str(root)!r}, 'run', "
        f"'--manifest', {str(m)!r}, '--', 'python', '-c', 'import alpha'])"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=base_env(), timeout=300
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_a_traced_snapshot_still_checks_what_every_start_reads(tmp_path: Path, root: Path, app: Path) -> None:
    assert (
        volenv("--root", root, "trace", "--manifest", app, "--", "python", "-c", "import alpha").returncode
        == 0
    )
    snap = next((root / "envs" / "app" / "snapshots").iterdir())
    (snap / "pyvenv.cfg").unlink()
    r = volenv(
        "--root", root, "run", "--on-missing", "fail", "--manifest", app, "--", "python", "-c", "import alpha"
    )
    assert r.returncode == 4 and "pyvenv.cfg" in r.stderr, r.stderr
