"""The build lease: one builder per env across hosts, without relying on flock.

filelock's SoftFileLease claims with an O_EXCL marker, refreshes it from a heartbeat thread,
and lets peers take over a marker that stayed unchanged for the lease duration (or whose
owner is a dead process on this host). Fencing: right before the commit rename the builder
re-reads the marker and checks it still carries its own token.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from filelock import SoftFileLease, Timeout

from volenv.base.errors import LeaseLost, LockTimeout, from_oserror
from volenv.store.paths import VolumePaths
from volenv.store.volio import atomic_write_json, read_record, read_regular, unique_suffix

DEFAULT_LEASE_SECONDS = 60.0


def lease_seconds() -> float:
    """All contenders must agree on the duration; tests shorten it through the environment."""
    return float(os.environ.get("VOLENV_LEASE_SECONDS", DEFAULT_LEASE_SECONDS))


def describe_holder(marker: Path) -> str | None:
    """'host H pid P since T (heartbeat Ns ago)' from the marker and our info file."""
    try:
        text = read_regular(marker, 1 << 16).decode("utf-8", errors="replace")
        age = time.time() - marker.stat().st_mtime
    except OSError:
        return None
    fields = dict(line.split("=", 1) for line in text.splitlines()[1:] if "=" in line)
    if "host" not in fields:
        return None  # caught between the marker's creation and its first write
    since = ""
    try:
        info = read_record(marker.with_suffix(".info"), "lease info", 1)
        if info.get("token") == fields.get("token"):
            since = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(info['since'])))}"
    except Exception:
        pass
    return f"host {fields.get('host', '?')} pid {fields.get('pid', '?')}{since} (heartbeat {age:.0f}s ago)"


class BuildLease:
    def _break_empty_marker(self) -> None:
        """A marker left empty (its creator died between the O_EXCL create and the first write,
        or the disk filled) carries no heartbeat that could ever go stale: filelock waits on it
        forever. One unchanged and empty for twice the lease is moved aside, re-checked by inode
        after the move (a fresh marker caught by the move is put back), then removed."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return
        age = time.time() - st.st_mtime
        if not stat.S_ISREG(st.st_mode) or st.st_size != 0 or age < 2 * self.duration:
            return
        aside = self.path.with_name(f"{self.path.name}.stale-{unique_suffix()}")
        try:
            os.rename(self.path, aside)
            moved = os.lstat(aside)
            if moved.st_ino != st.st_ino or moved.st_size:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
            else:
                self.say(f"removed the empty build lease marker {self.path} (left {age:.0f}s ago)")
            os.unlink(aside)
        except OSError:
            return

    def __init__(
        self,
        paths: VolumePaths,
        env: str,
        *,
        timeout: float,
        say: Callable[[str], None],
        duration: float | None = None,
    ) -> None:
        self.path = paths.build_lease(env)
        self.root = paths.root
        self.env = env
        self.timeout = timeout
        self.say = say
        self.duration = duration or lease_seconds()
        self._lease = SoftFileLease(str(self.path), lease_duration=self.duration, is_singleton=False)
        self.waited = 0.0

    def acquire(self) -> None:
        from volenv.store.volio import safe_mkdirs

        safe_mkdirs(self.path.parent, self.root)  # lease files are writes: never through a link
        start = time.monotonic()
        deadline = start + self.timeout if self.timeout >= 0 else None
        announced: float | None = None
        step = 0.0  # first attempt does not wait, so a waiter says at once whom it waits for
        while True:
            try:
                self._lease.acquire(timeout=step, poll_interval=0.05)
                break
            except Timeout:
                self._break_empty_marker()
            except OSError as exc:
                raise from_oserror(exc, f"cannot take the build lease {self.path}") from exc
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                holder = describe_holder(self.path) or "another builder"
                raise LockTimeout(
                    f"timed out after {self.timeout:.0f}s waiting for the build lease of"
                    f" '{self.env}' ({holder})",
                    hint="raise --lock-timeout, or wait for that build to finish",
                )
            if announced is None or now - announced >= 10:
                holder = describe_holder(self.path) or "another builder"
                self.say(f"waiting for the build lease of '{self.env}', held by {holder}")
                announced = now
            step = 2.0 if deadline is None else max(0.0, min(2.0, deadline - now))
        self.waited = time.monotonic() - start
        try:
            atomic_write_json(
                self.path.with_suffix(".info"),
                {
                    "schema": 1,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "since": time.time(),
                    "token": self._lease.token,
                },
                durable=False,
            )
        except OSError:
            pass

    @property
    def token(self) -> str | None:
        return self._lease.token

    def fence(self) -> None:
        """Raise LeaseLost unless the marker on the volume still carries our token."""
        if self._lease.compromise is not None:
            raise LeaseLost(f"build lease lost ({self._lease.compromise.reason}); another builder took over")
        token = self._lease.token
        try:
            text = read_regular(self.path, 1 << 16).decode("utf-8", errors="replace")
        except OSError as exc:
            raise LeaseLost(f"build lease marker unreadable before commit: {exc}") from exc
        if token is None or f"token={token}\n" not in text:
            raise LeaseLost("build lease was taken over by another builder before the commit")

    def release(self) -> None:
        try:
            self._lease.release(force=True)
        except OSError:
            pass

    def __enter__(self) -> BuildLease:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
