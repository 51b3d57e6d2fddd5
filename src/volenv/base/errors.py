"""Typed errors that carry their exit code (DESIGN.md's table); one place maps them to output."""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_NO_SNAPSHOT = 3
EXIT_VERIFY = 4
EXIT_LOCK_TIMEOUT = 5
EXIT_DISK_SPACE = 6
EXIT_BUILD = 7
EXIT_VOLUME = 8
EXIT_MODEL = 9

EXIT_MEANINGS: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "unexpected internal error",
    EXIT_USAGE: "usage error or invalid manifest/arguments (nothing written)",
    EXIT_NO_SNAPSHOT: "no usable snapshot and policy says fail",
    EXIT_VERIFY: "verification failed",
    EXIT_LOCK_TIMEOUT: "timed out waiting for a lock",
    EXIT_DISK_SPACE: "not enough disk space",
    EXIT_BUILD: "build failed (resolve, install, smoke test)",
    EXIT_VOLUME: "volume unavailable (root missing, read-only, I/O error)",
    EXIT_MODEL: "model fetch/verify failed",
}


#: the `kind` of a --json error document, by exit code
ERROR_KINDS = {
    1: "internal",
    2: "usage",
    3: "no-snapshot",
    4: "verify",
    5: "lock-timeout",
    6: "disk-space",
    7: "build",
    8: "volume",
    9: "model",
    130: "interrupted",
}


def error_document(code: int, message: str, cause: str | None, hint: str | None) -> object:
    """The --json error document, redacted: one shape from the CLI and from the `run` fast path."""
    from volenv.base.redact import redact_obj

    error: dict[str, object] = {"code": code, "kind": ERROR_KINDS.get(code, "error"), "message": message}
    error["hint"] = hint
    if cause:
        error["cause"] = cause
    return redact_obj({"version": 1, "error": error})


class VolenvError(Exception):
    """Base of every expected failure: a message, an optional cause and hint, an exit code."""

    exit_code: int = EXIT_INTERNAL

    def __init__(self, message: str, *, hint: str | None = None, cause: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.cause = cause


class UsageError(VolenvError):
    exit_code = EXIT_USAGE


class ManifestError(UsageError):
    """A manifest that does not validate; the message names file, key and value."""

    def __init__(self, path: str, key: str, problem: str, *, hint: str | None = None) -> None:
        # key "": the file as a whole (missing, unreadable, not TOML, another tool's file)
        super().__init__(f"{path}: {key}: {problem}" if key else f"{path}: {problem}", hint=hint)
        self.path = path
        self.key = key


class NoSnapshotError(VolenvError):
    exit_code = EXIT_NO_SNAPSHOT


class VerifyError(VolenvError):
    exit_code = EXIT_VERIFY


class DamagedRecord(VerifyError):
    """A record on the volume (pointer, seal, history line, alias, ...) that does not parse or
    has the wrong shape: exit 4 with the file named, never a traceback, never a default."""


class InterpreterMismatch(VerifyError):
    """The snapshot's base interpreter is not the one this container has."""


class LockTimeout(VolenvError):
    exit_code = EXIT_LOCK_TIMEOUT


class DiskSpaceError(VolenvError):
    exit_code = EXIT_DISK_SPACE


class BuildError(VolenvError):
    """A failed build step: the step and its log named in the message, the tool's own cause
    (multi-line: a build backend's traceback stays one) and a hint that names the log."""

    exit_code = EXIT_BUILD

    def __init__(
        self,
        message: str,
        *,
        step: str,
        log_path: str | None = None,
        hint: str | None = None,
        cause: str | None = None,
    ) -> None:
        where = f" (build log: {log_path})" if log_path else ""
        if log_path:
            look = f"the whole output is in the build log: `tail -n 60 {shq(log_path)}`"
            hint = f"{hint}; {look}" if hint else look
        super().__init__(f"build step '{step}' failed: {message}{where}", hint=hint, cause=cause)
        self.step = step
        self.log_path = log_path


def cause_lines(cause: str) -> list[str]:
    """A cause as printed under its error: `  cause: FIRST`, each further cause on a `cause:`
    line of its own, and the lines under a cause (a traceback) indented below it, as written."""
    out = []
    for i, line in enumerate(cause.splitlines()):
        if i == 0:
            line = line if line.startswith("cause:") else f"cause: {line}"
        elif line and not line.startswith(("cause:", " ")):
            line = " " * 7 + line
        out.append(f"  {line}".rstrip())
    return out


class VolumeError(VolenvError):
    exit_code = EXIT_VOLUME


class ModelError(VolenvError):
    exit_code = EXIT_MODEL


class LeaseLost(BuildError):
    """Fencing: our build lease was taken over before the commit rename."""

    def __init__(self, message: str, *, log_path: str | None = None) -> None:
        super().__init__(message, step="commit", log_path=log_path)


_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_VOLUME_ERRNOS = {
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTCONN,
    errno.EIO,
    errno.ESTALE,
    errno.ENODEV,
    errno.ENXIO,
    errno.ECONNABORTED,
}


def from_oserror(exc: OSError, doing: str) -> VolenvError:
    """Classify an OSError met on the volume: full disk (6), unusable volume (8), else internal (1)."""
    where = f" ({exc.filename})" if exc.filename else ""
    text = f"{doing}: {exc.strerror or exc}{where}"
    if exc.errno in _SPACE_ERRNOS:
        return DiskSpaceError(
            text, hint="free space on the volume (gc removes what no root keeps) or grow it"
        )
    if exc.errno in _VOLUME_ERRNOS:
        hint = None
        if exc.errno == errno.EROFS:
            hint = "the volume is mounted read-only; run sync where it is writable"
        elif exc.errno in (errno.ENOTCONN, errno.EIO, errno.ESTALE):
            hint = "the network volume is unreachable; check the mount"
            text = f"{text} (the volume is unreachable)"
        return VolumeError(text, hint=hint)
    if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
        # a directory where a file belongs, or back (mkdir meeting a file is EEXIST)
        return DamagedRecord(f"{text}: the volume's layout is damaged there")
    if exc.errno == errno.ELOOP:  # an O_NOFOLLOW open met a planted link: refused, not followed
        return VolumeError(f"{text}: a symlink where volenv keeps its own files", hint="remove the link")
    err = VolenvError(text)
    return err


_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_")


def shq(value: object) -> str:
    """shlex.quote without importing re (the `run` fast path builds hints too): a hint that is a
    command must paste into a shell as it reads (`>=3.12,<3.13` is a redirect unquoted)."""
    text = str(value)
    if text and all(c in _SHELL_SAFE for c in text):
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"


def missing_extra(package: str, extra: str, error: type[VolenvError] = UsageError) -> VolenvError:
    """runpod, boto3 and huggingface_hub are optional extras (a lean `pip install volenv`):
    the command that needs one says which extra installs it."""
    return error(
        f"{package} is not installed: it comes with volenv's '{extra}' extra",
        hint=f"pip install 'volenv[{extra}]'",
    )
