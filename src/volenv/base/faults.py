"""Deterministic fault points for tests: VOLENV_FAULT=STEP[:kill|pause|fail][,...].

Never active unless the variable is set. `kill` SIGKILLs this process at the start of STEP,
`pause` stops it (SIGSTOP) so a test can let its lease expire, `fail` raises OSError(EIO).
"""

from __future__ import annotations

import errno
import os
import signal


def point(step: str) -> None:
    spec = os.environ.get("VOLENV_FAULT")
    if not spec:
        return
    for item in spec.split(","):
        name, _, action = item.partition(":")
        if name != step:
            continue
        action = action or "kill"
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "pause":
            os.kill(os.getpid(), signal.SIGSTOP)
        elif action == "fail":
            raise OSError(errno.EIO, f"injected fault at {step}")
