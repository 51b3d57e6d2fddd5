"""Run volenv with its stderr (and, if asked, stdout) on a pseudo terminal of a given size."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from dataclasses import dataclass
from pathlib import Path

from conftest import base_env


@dataclass(frozen=True)
class PtyResult:
    returncode: int
    tty: str  # everything written to the terminal (stderr, and stdout when on it)
    stdout: str  # stdout when it was a pipe


def run_pty(
    *args: str | Path,
    columns: int = 80,
    stdout_on_tty: bool = False,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = 300,
) -> PtyResult:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    full = base_env()
    full.pop("NO_COLOR", None)
    full.pop("VOLENV_NO_PROGRESS", None)
    full.update({"TERM": "xterm-256color", "COLUMNS": str(columns), **(env or {})})
    proc = subprocess.Popen(
        [sys.executable, "-m", "volenv", *map(str, args)],
        stdin=slave,
        stdout=slave if stdout_on_tty else subprocess.PIPE,
        stderr=slave,
        env=full,
    )
    os.close(slave)
    if stdin is not None:
        os.write(master, stdin)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    proc.wait(timeout=timeout)
    os.close(master)
    return PtyResult(proc.returncode, b"".join(chunks).decode(errors="replace"), out)
