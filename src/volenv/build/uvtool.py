"""The uv binary, run as a subprocess with the volume's cache and interpreter store."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from volenv.base.errors import DiskSpaceError
from volenv.base.redact import redact_text
from volenv.manifest.schema import IndexSettings, Manifest
from volenv.store.paths import VolumePaths

TYPE_CHECKING = False
if TYPE_CHECKING:
    from volenv.base.ui import Progress


def uv_bin() -> str:
    """The binary shipped by the `uv` package, else one on PATH."""
    override = os.environ.get("VOLENV_UV")
    if override:
        return override
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
        raise


def uv_env(paths: VolumePaths, *, offline: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    # volenv chooses these itself (link mode, bytecode it compiles and re-links, no project)
    for var in (
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "PYTHONHOME",
        "UV_SYSTEM_PYTHON",
        "UV_COMPILE_BYTECODE",
        "UV_LINK_MODE",
    ):
        env.pop(var, None)
    env["UV_CACHE_DIR"] = str(paths.uv_cache)
    # an image may pin its own interpreter store (see Dockerfile.runpod); else the volume's
    env.setdefault("UV_PYTHON_INSTALL_DIR", str(paths.python))
    env["UV_PYTHON_DOWNLOADS"] = env.get("UV_PYTHON_DOWNLOADS", "never")
    env["UV_NO_PROGRESS"] = "1"
    env["NO_COLOR"] = "1"
    if offline:
        env["UV_OFFLINE"] = "1"
    return env


def index_args(manifest: Manifest, *, torch_backend: bool = True) -> list[str]:
    idx: IndexSettings = manifest.index
    args: list[str] = []
    if idx.no_index:
        args.append("--no-index")
    if idx.url:
        args += ["--index-url", idx.url]
    for url in idx.extra_urls:
        args += ["--extra-index-url", url]
    for link in manifest.find_links_paths():
        args += ["--find-links", link]
    if torch_backend and idx.torch_backend:
        args += ["--torch-backend", idx.torch_backend]
    return args


def run_uv(
    args: Sequence[str],
    paths: VolumePaths,
    log: Path | None,
    *,
    cwd: Path | None = None,
    offline: bool = False,
    on_line: Callable[[str], None] | None = None,
    terminal: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run uv; its output goes to the build log (and is returned for error messages).
    `on_line` sees each line of uv's stderr as it comes (its `Downloading X` and summary
    lines drive the install progress). With `terminal` (someone watches a bar) uv's stderr is a
    pseudo-terminal, so that uv draws its byte bars and `on_line` sees their redraws too
    (VOLENV_NO_PTY=1, or no pty to be had: a pipe, as without a terminal)."""
    cmd = [uv_bin(), *args]
    env = uv_env(paths, offline=offline)
    if on_line is None:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd, check=False)
    else:
        pty_fds = _open_pty() if terminal and os.environ.get("VOLENV_NO_PTY") != "1" else None
        if pty_fds is None:
            proc = _run_streaming(cmd, env, cwd, on_line)
        else:
            env.pop("UV_NO_PROGRESS", None)
            proc = _run_on_pty(cmd, env, cwd, on_line, pty_fds)
    if log is not None:
        from volenv.store.volio import is_within, open_append

        inside = paths.root if is_within(log, paths.root) else None  # the resolve log is in a temp dir
        with os.fdopen(open_append(log, inside), "a", encoding="utf-8") as fh:
            # uv echoes index URLs (with their userinfo) in its own messages: filter everything
            text = f"$ uv {' '.join(args)}\n{proc.stdout}{proc.stderr}[exit {proc.returncode}]\n"
            fh.write(redact_text(text))
    return proc


_BAR_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def _bar_bytes(text: str) -> int:
    """`12.34 MiB` as uv's bars print it (indicatif's binary_bytes)."""
    number, _, unit = text.partition(" ")
    return int(float(number) * _BAR_UNITS.get(unit, 1))


def install_progress(progress: Progress) -> Callable[[str], None]:
    """A line reader for uv's stderr during an install: `Resolved N packages` sets the total,
    `Downloading X (5.0MiB)` / ` Downloaded X` and `Prepared N packages` say the phase, each
    ` + name==1.0` counts one installed (uv prints its summary without a terminal too). On a
    terminal uv draws a bar per download instead (`torch  ---------  1.2 GiB/2.4 GiB`, many on
    one redraw): their byte counts are the step's bytes, so they move while a wheel downloads."""
    import re

    resolved = re.compile(r"^Resolved (\d+) packages?")
    bar = re.compile(r"(\S+) +-+ +(\d+(?:\.\d+)? [KMGT]?i?B)/(\d+(?:\.\d+)? [KMGT]?i?B)")
    downloading: list[str] = []
    fetched: dict[str, tuple[int, int]] = {}  # per download on a bar: bytes so far, its size

    def on_bars(found: list[tuple[str, str, str]]) -> None:
        for name, done, size in found:
            had = fetched.get(name, (0, 0))[0]
            fetched[name] = (max(had, _bar_bytes(done)), _bar_bytes(size))
        progress.reset(sum(d for d, _ in fetched.values()))
        progress.note(f"downloading {', '.join(name for name, _, _ in found[-2:])}")

    def on_line(line: str) -> None:
        if found := bar.findall(line):
            on_bars(found)
        elif m := resolved.match(line):
            progress.set_total(int(m.group(1)))
        elif line.startswith("Downloading "):
            downloading.append(line.removeprefix("Downloading ").strip())
            progress.note(f"downloading {', '.join(downloading[-2:])}")
        elif line.startswith(" Downloaded "):
            name = line.removeprefix(" Downloaded ").strip()
            downloading[:] = [d for d in downloading if d.split(" (")[0] != name]
            progress.note(f"downloading {', '.join(downloading[-2:])}" if downloading else "preparing")
        elif line.startswith("Prepared "):
            if fetched:  # a bar's last redraw may be short of its end: they are all done now
                for name, (_, size) in fetched.items():
                    fetched[name] = (size, size)
                progress.reset(sum(size for _, size in fetched.values()))
            progress.note("linking")
        elif line.startswith(("Installed ", "Uninstalled ")):
            progress.note("")
        elif line.startswith(" + "):
            progress.advance(1)

    return on_line


def _run_streaming(
    cmd: list[str], env: dict[str, str], cwd: Path | None, on_line: Callable[[str], None]
) -> subprocess.CompletedProcess[str]:
    import threading

    with subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as popen:
        assert popen.stdout is not None and popen.stderr is not None
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(popen.stdout.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        err: list[str] = []
        for line in popen.stderr:
            err.append(line)
            on_line(line.rstrip("\n"))
        reader.join()
        code = popen.wait()
    return subprocess.CompletedProcess(cmd, code, "".join(out), "".join(err))


def _open_pty() -> tuple[int, int] | None:
    """A pseudo-terminal wide enough that uv's bars are never cut, and without output
    processing (a newline stays a newline); None where the system has none to give."""
    try:
        import fcntl
        import pty
        import struct
        import termios

        master, slave = pty.openpty()
    except (OSError, ImportError):
        return None
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, PTY_COLUMNS, 0, 0))
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.OPOST
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
    except OSError:
        os.close(master)
        os.close(slave)
        return None
    return master, slave


PTY_COLUMNS = 200
ERASE_LINE = "\x1b[2K"  # what a line held before it is gone (a spinner before uv's `error:`)
# CSI (`ESC [ ... m`, cursor moves, line clears), OSC (`ESC ] 8 ;; url BEL` links), two-byte escapes
_ESCAPES = r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]"


def _settled(piece: str) -> tuple[str, bool]:
    """A line without the bar rows a failing uv left drawn before it: indicatif pads each row
    of its frame with spaces to the terminal's width, and uv's `error:` then follows on the
    next row (the terminal wraps). Whether rows were dropped comes back too."""
    frame = False
    while len(piece) >= PTY_COLUMNS and piece[:PTY_COLUMNS].endswith("  "):
        piece, frame = piece[PTY_COLUMNS:], True
    return piece, frame


def _run_on_pty(
    cmd: list[str],
    env: dict[str, str],
    cwd: Path | None,
    on_line: Callable[[str], None],
    fds: tuple[int, int],
) -> subprocess.CompletedProcess[str]:
    """uv with its stderr on a pseudo-terminal: every redraw (pieces between carriage returns
    and newlines, escapes removed) goes to `on_line`; the returned stderr holds only the lines
    that stay on a terminal (what is left of each line after its last redraw or erase), i.e.
    uv's own messages as a pipe gets them, without bars or escape codes."""
    import codecs
    import re
    import threading

    escapes = re.compile(_ESCAPES)
    master, slave = fds
    try:
        popen = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=slave, text=True)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # uv holds it now: the terminal reads EOF (EIO) when uv and its children end
    with popen:
        assert popen.stdout is not None
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(popen.stdout.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        kept: list[str] = []  # lines as they stay on screen
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        try:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    data = b""
                buf = pending + decoder.decode(data, final=not data)
                held = "\r" if data and buf.endswith("\r") else ""  # a CR LF cut between reads
                buf = buf.removesuffix(held).replace("\r\n", "\n")
                *parts, pending = re.split("([\r\n])", buf)
                pending += held
                for text, sep in zip(parts[0::2], parts[1::2], strict=True):
                    piece = escapes.sub("", text.rsplit(ERASE_LINE, 1)[-1])
                    if sep == "\n":  # the piece before a newline is what stays of its line
                        piece, frame = _settled(piece)
                        if piece or not frame:
                            kept.append(piece + "\n")
                    if piece.strip():
                        on_line(piece.rstrip())
                if not data:
                    break
        finally:
            os.close(master)
        if last := _settled(escapes.sub("", pending.rsplit(ERASE_LINE, 1)[-1]))[0]:
            kept.append(last)
            if last.strip():
                on_line(last.rstrip())
        reader.join()
        code = popen.wait()
    return subprocess.CompletedProcess(cmd, code, "".join(out), "".join(kept))


CAUSE_PREFIXES = ("cause:", "Caused by:", "╰─▶", "├─▶")
#: a cause longer than this many lines keeps its chain and its last lines (the whole is in the log)
CAUSE_LINES = 40
#: the one-line form (a group's reason in a seal, init's warning) is cut past this many characters
LINE_CHARS = 1000


@dataclass(frozen=True)
class UvFailure:
    """uv's error as it wrote it: `message` (its `error:` line), `cause` (the lines under it,
    dedented, each cause on a line of its own and a build backend's traceback still a
    traceback; None where uv gave none) and uv's own `hint`."""

    message: str
    cause: str | None
    hint: str | None


def uv_failure(proc: subprocess.CompletedProcess[str]) -> UvFailure:
    import textwrap

    lines = [redact_text(ln.rstrip()) for ln in (proc.stderr or proc.stdout or "").splitlines()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith(("error:", "×"))), None)
    if start is None:
        start = next((i for i, ln in enumerate(lines) if "No solution" in ln), None)
    if start is None:
        rest = [ln.strip() for ln in lines if ln.strip()]
        return UvFailure(rest[-1] if rest else f"uv exited {proc.returncode}", None, None)
    message = lines[start].strip().lstrip("× ").removeprefix("error: ").strip()
    block: list[str] = []
    hint = None
    for ln in lines[start + 1 :]:
        if ln.startswith(("error:", "warning:")):
            break
        if ln.startswith("hint:"):
            hint = ln.removeprefix("hint:").strip()
            break
        block.append(ln)
    text = textwrap.dedent("\n".join(block))
    out: list[str] = []
    for ln in text.splitlines():
        bare = ln.strip()
        for prefix in CAUSE_PREFIXES:
            if bare.startswith(prefix):
                ln = "cause: " + bare.removeprefix(prefix).strip()
                break
        if ln.strip() or (out and out[-1].strip()):  # no blank runs
            out.append(ln.rstrip())
    while out and not out[-1].strip():
        out.pop()
    if len(out) > CAUSE_LINES:
        chain = [ln for ln in out[: CAUSE_LINES // 4] if ln.startswith("cause:")]
        tail = out[-(CAUSE_LINES - len(chain) - 1) :]
        out = [*chain, f"… {len(out) - len(chain) - len(tail)} lines more in the build log", *tail]
    if out:  # the first cause is the cause: its prefix is the renderer's
        out[0] = out[0].removeprefix("cause: ")
    return UvFailure(message, "\n".join(out) or None, hint)


def last_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """uv's error on one line: its error line, each cause line under it, and where a cause
    goes on for lines (a build backend's traceback) only their last line, the exception; cut
    past LINE_CHARS characters. Enough to act on without the log (a group's reason, a
    warning); errors print the whole cause, multi-line (uv_failure)."""
    f = uv_failure(proc)
    parts: list[tuple[str, list[str]]] = [(f.message, [])]
    for i, ln in enumerate((f.cause or "").splitlines()):
        if ln.startswith("cause:") or i == 0:
            parts.append((ln if ln.startswith("cause:") else f"cause: {ln}", []))
        elif ln.strip() and not ln.startswith("…") and ln.strip() not in ("[stderr]", "[stdout]"):
            parts[-1][1].append(ln.strip())
    import re

    exception = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b")
    joined = []
    for head, more in parts:  # a wrapped sentence joins; a traceback gives its exception
        if len(more) <= 3:
            joined.append(" ".join([head, *more]))
            continue
        at = max((i for i, ln in enumerate(more) if exception.match(ln)), default=len(more) - 1)
        joined.append(f"{head} … {' '.join(more[at:])}")
    line = "; ".join(joined)
    return line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 1] + "…"


def raise_if_disk_full(proc: subprocess.CompletedProcess[str], log: str | None = None) -> None:
    text = (proc.stderr or "") + (proc.stdout or "")
    if "No space left on device" in text or "Disk quota exceeded" in text:
        where = f" (build log: {log})" if log else ""
        raise DiskSpaceError(f"the volume filled up while uv was writing{where}")
