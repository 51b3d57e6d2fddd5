"""`run --diagnose` after activation: the worker command runs as volenv's child for a grace
period instead of replacing it, so that a handler that dies at boot (a damaged file it imports,
a missing native library, a wrong path, a command that does not exist) is diagnosed and the
diagnosis served to every job, as activation failures are: never a container that exits 1 with
its reason scrolled away.

- The child inherits stdin and stdout; its stderr passes through volenv line by line (to the
  container log, as it comes) and the last lines are kept for the diagnosis, redacted.
- SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are passed on to it; volenv reaps every
  child (it may be the container's PID 1) and exits with the child's status (128 + N for a
  signal), as a shell does.
- A child that exits non-zero (or dies of a signal nobody sent it) before the grace period
  ends (`--diagnose-grace`, VOLENV_DIAGNOSE_GRACE, default 60 s) is diagnosed: its last stderr
  lines, a `verify --level stat` of the snapshot, and what to do. A command that is not found or
  not executable is diagnosed the same way, with the shell's 127 / 126.
- After the grace period the worker is up: a later crash is the platform's to restart; volenv
  logs the last lines and exits with the child's status.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from volenv.base.errors import VolenvError
from volenv.base.redact import redact_text

TAIL = 40
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class BootFailure(VolenvError):
    """The worker command could not start, or died in its grace period: the exit code is the
    child's (or the shell's 127/126)."""

    def __init__(self, message: str, code: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = code


def grace_seconds(value: str | None) -> float:
    from volenv.base.errors import UsageError

    text = value if value is not None else os.environ.get("VOLENV_DIAGNOSE_GRACE", "60")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 1e7:
        raise UsageError(f"--diagnose-grace (or VOLENV_DIAGNOSE_GRACE): {text!r} is not a number of seconds")
    return seconds


class _Tee(threading.Thread):
    """The child's stderr to ours, unchanged, as it comes; its last lines kept."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL)
        self._partial = b""

    def run(self) -> None:
        # process-directed signals go to the main thread, whose wait they must interrupt to be
        # handled (a handler only runs there): this thread never takes one
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            try:
                os.write(2, chunk)
            except OSError:
                pass
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            for line in lines:
                self.tail.append(line.decode("utf-8", "replace"))
            self._partial = self._partial[-65536:]
        if self._partial:
            self.tail.append(self._partial.decode("utf-8", "replace"))
        os.close(self.fd)

    def lines(self, env: dict[str, str]) -> list[str]:
        """The tail, with what the worker's environment holds secret masked (its own secrets:
        an [activate] env value, a token the container was given), and auth headers."""
        return [_redact_worker(redact_text(line), env) for line in self.tail]


def supervise(root: str, o: Any, cmd: list[str], env: dict[str, str], snap_dir: str, grace: float) -> int:
    """Run CMD as a child; on a boot failure serve the diagnosis (runpod/diagnose.py)."""
    from volenv.runpod.diagnose import serve_diagnosis

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # an inherited SIG_IGN would reap it for us
    sent: list[int] = []
    child: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: object) -> None:
        sent.append(signum)  # before the child exists: passed on as soon as it does
        for p in child:
            try:
                p.send_signal(signum)
            except OSError:
                pass

    for sig in FORWARDED:  # installed first: a signal in the start window is never lost
        signal.signal(sig, forward)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, close_fds=True)
    except OSError as exc:
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        what = "not found" if code == 127 else f"not executable ({exc.strerror})"
        err = BootFailure(
            f"the worker command {cmd[0]!r} is {what}",
            code,
            hint="fix the image's CMD (or the path in it): the command runs inside the snapshot, "
            f"whose bin/ comes first on PATH ({os.path.join(snap_dir, 'bin')})",
        )
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        return serve_diagnosis(root, o, err, extra={"phase": "boot", "meaning": what})
    child.append(proc)
    for signum in sent:  # what arrived while it was being started
        try:
            proc.send_signal(signum)
        except OSError:
            pass
    assert proc.stderr is not None
    tee = _Tee(os.dup(proc.stderr.fileno()))
    proc.stderr.close()
    tee.start()
    status = _wait(proc.pid)
    took = time.monotonic() - t0  # before the tee's wait: a grandchild may hold stderr open
    tee.join(timeout=5)
    for sig in FORWARDED:  # the worker is gone: a late signal must not kill the exit status
        signal.signal(sig, signal.SIG_IGN)
    code = os.waitstatus_to_exitcode(status)
    exit_code = code if code >= 0 else 128 - code
    if code == 0 or sent:
        return exit_code  # finished, or stopped because the platform (or a person) asked
    how = (
        f"exited with {code}" if code > 0 else f"was killed by signal {-code} ({signal.Signals(-code).name})"
    )
    lines = tee.lines(env)
    if took >= grace:
        print(
            f"volenv: the worker command {how} after {took:.0f} s (past the {grace:g} s grace period:"
            " the platform restarts it); its last stderr lines:",
            file=sys.stderr,
        )
        for line in lines[-15:]:
            print(f"volenv:   | {line}", file=sys.stderr)
        sys.stderr.flush()
        return exit_code
    err = BootFailure(
        f"the worker command {how} {took:.1f} s after it started (within the {grace:g} s grace"
        f" period): {lines[-1] if lines else 'no stderr output'}",
        exit_code,
        hint="read the worker's last stderr lines and the snapshot's verification in this report;"
        " damage in the snapshot is repaired with the `fix` command it names",
    )
    for sig in FORWARDED:  # the diagnostic worker stops as any worker does
        signal.signal(sig, signal.SIG_DFL)
    return serve_diagnosis(
        root,
        o,
        err,
        extra={
            "phase": "boot",
            "meaning": "the worker command failed at boot",
            "stderr_tail": lines,
            "verify": _verify_stat(root, snap_dir),
        },
    )


def _wait(pid: int) -> int:
    """Our child's wait status; any other child (volenv may be PID 1) is reaped on the way."""
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            _, status = os.waitpid(pid, 0)
            return status
        if got == pid:
            return status


def _verify_stat(root: str, snap_dir: str) -> dict[str, Any]:
    """What `volenv verify --level stat` says of the snapshot the worker ran from."""
    from pathlib import Path

    from volenv.store.integrity import verify_snapshot
    from volenv.store.rootfind import fix_command

    try:
        report = verify_snapshot(Path(snap_dir), "stat")
    except Exception as exc:  # the diagnosis must survive what it reports
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    env = os.path.basename(os.path.dirname(os.path.dirname(snap_dir)))
    out: dict[str, Any] = {
        "ok": report.ok,
        "snapshot": os.path.basename(snap_dir),
        "summary": report.summary(),
        "problems": [f"{p.path}: {p.kind} ({p.detail})" for p in report.problems if p.severity == "error"][
            :20
        ],
    }
    if not report.ok:
        out["fix"] = fix_command(root, "verify", env, "--repair")
    return out


def _redact_worker(line: str, env: dict[str, str]) -> str:
    """Mask the values of the worker's secret-sounding variables and Authorization headers:
    the diagnosis answers every job, so nothing the worker printed of its secrets goes out."""
    from volenv.base.redact import MASK, _secret_name

    for name, value in env.items():
        if len(value) >= 8 and _secret_name(name) and value in line:
            line = line.replace(value, MASK)
    low = line.lower()
    for head in ("authorization:", "bearer "):
        i = low.find(head)
        if i >= 0:
            line = line[: i + len(head)] + " " + MASK
            low = line.lower()
    return line
