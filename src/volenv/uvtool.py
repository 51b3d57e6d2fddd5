"""The uv binary, run as a subprocess with the volume's cache and interpreter store."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from .manifest import IndexSettings, Manifest
from .paths import VolumePaths
from .redact import redact_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .ui import Progress


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
) -> subprocess.CompletedProcess[str]:
    """Run uv; its output goes to the build log (and is returned for error messages).
    `on_line` sees each line of uv's stderr as it comes (its `Downloading X` and summary
    lines drive the install progress)."""
    cmd = [uv_bin(), *args]
    env = uv_env(paths, offline=offline)
    if on_line is None:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd, check=False)
    else:
        proc = _run_streaming(cmd, env, cwd, on_line)
    if log is not None:
        with open(log, "a", encoding="utf-8") as fh:
            # uv echoes index URLs (with their userinfo) in its own messages: filter everything
            text = f"$ uv {' '.join(args)}\n{proc.stdout}{proc.stderr}[exit {proc.returncode}]\n"
            fh.write(redact_text(text))
    return proc


def install_progress(progress: Progress) -> Callable[[str], None]:
    """A line reader for uv's stderr during an install: `Resolved N packages` sets the total,
    `Downloading X (5.0MiB)` / ` Downloaded X` and `Prepared N packages` say the phase, each
    ` + name==1.0` counts one installed (uv prints its summary without a terminal too)."""
    import re

    resolved = re.compile(r"^Resolved (\d+) packages?")
    downloading: list[str] = []

    def on_line(line: str) -> None:
        if m := resolved.match(line):
            progress.set_total(int(m.group(1)))
        elif line.startswith("Downloading "):
            downloading.append(line.removeprefix("Downloading ").strip())
            progress.note(f"downloading {', '.join(downloading[-2:])}")
        elif line.startswith(" Downloaded "):
            name = line.removeprefix(" Downloaded ").strip()
            downloading[:] = [d for d in downloading if d.split(" (")[0] != name]
            progress.note(f"downloading {', '.join(downloading[-2:])}" if downloading else "preparing")
        elif line.startswith("Prepared "):
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


CAUSE_PREFIXES = ("cause:", "Caused by:", "╰─▶")


def last_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """uv's error line plus every cause line under it (with their continuation lines, e.g. git's
    "Could not resolve host"), joined on one line: enough to act on without the log."""
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines()]
    start = next((i for i, ln in enumerate(lines) if ln.startswith(("error:", "×"))), None)
    if start is None:
        start = next((i for i, ln in enumerate(lines) if "No solution" in ln), None)
    if start is None:
        rest = [ln for ln in lines if ln]
        return redact_text(rest[-1]) if rest else f"uv exited {proc.returncode}"
    parts = [lines[start].lstrip("× ").removeprefix("error: ").strip()]
    for ln in lines[start + 1 :]:
        if ln.startswith(("error:", "warning:", "hint:")):
            break
        if not ln or ln == "--- stderr":
            continue
        if ln.startswith(CAUSE_PREFIXES):
            for prefix in CAUSE_PREFIXES:
                ln = ln.removeprefix(prefix)
            parts.append("cause: " + ln.strip())
        else:
            parts[-1] += " " + ln
    return redact_text("; ".join(parts))
