"""`run --diagnose`: when activation fails, say why in the first log lines and keep answering
RunPod jobs with the report instead of exiting 1 with nothing logged.

`runpod` is imported only here. Its start-up fitness checks (GPU, CUDA, memory, disk, network)
call os._exit(1) on failure, which would turn a diagnosis into the silent crash loop this
exists to prevent, so they are switched off for the diagnostic worker. Outside RunPod with no
test input and no local API server the SDK would exit 1 ("test_input.json not found"), so
there the diagnosis is printed and volenv exits with its own code.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time
from typing import Any

from volenv.base.errors import EXIT_MEANINGS, VolenvError
from volenv.base.leanjson import read_regular_file

TAIL_LINES = 30


def build_report(root: str, target_env: str | None, manifest: str | None, exc: VolenvError) -> dict[str, Any]:
    report: dict[str, Any] = {
        "failed": exc.message,
        "exit_code": exc.exit_code,
        "meaning": EXIT_MEANINGS.get(exc.exit_code, "unknown"),
        "fix": exc.hint,
        "root": root,
        "root_exists": os.path.isdir(root),
        "manifest": manifest,
        "env": target_env,
        "time": time.time(),
    }
    probe_dir = root if os.path.isdir(root) else os.path.dirname(root.rstrip("/")) or "/"
    try:
        usage = shutil.disk_usage(probe_dir)
        report["volume_free_bytes"] = usage.free
        report["volume_total_bytes"] = usage.total
    except OSError as err:
        report["volume_free_bytes"] = None
        report["volume_error"] = str(err)
    report["snapshots"] = _snapshots(root)
    report["build_log_tail"], report["build_log"] = _last_build_log(root, target_env)
    from volenv.base.redact import redact_obj

    # every RunPod job gets this report back: nothing secret in it (an old log, an error text)
    redacted: dict[str, Any] = redact_obj(report)  # type: ignore[assignment]
    return redacted


def _snapshots(root: str) -> list[dict[str, Any]]:
    from volenv.store.sealcheck import SealProblem, check_seal

    out: list[dict[str, Any]] = []
    envs_dir = os.path.join(root, "envs")
    try:
        envs = sorted(os.listdir(envs_dir))
    except OSError:
        return out
    for env in envs:
        snaps_dir = os.path.join(envs_dir, env, "snapshots")
        try:
            snaps = sorted(os.listdir(snaps_dir))
        except OSError:
            continue
        for sid in snaps:
            try:
                check_seal(os.path.join(snaps_dir, sid), sid)
                state = "valid"
            except SealProblem as sp:
                state = f"{sp.kind}: {sp.detail}"
            except OSError as err:  # the diagnosis must survive the fault it reports
                state = f"unreadable: {err.strerror} ({err.filename})"
            out.append({"env": env, "snapshot": sid, "seal": state})
    return out


def _last_build_log(root: str, env: str | None) -> tuple[list[str], str | None]:
    from volenv.store.volio import real_dir_below

    logs = os.path.join(root, "logs")
    candidates: list[str] = []
    for d in [os.path.join(logs, env)] if env else [os.path.join(logs, e) for e in _listdir(logs)]:
        if not real_dir_below(root, d):  # a linked logs/ or logs/<env>: an outside folder's files
            continue
        candidates += [
            os.path.join(d, n) for n in _listdir(d) if n.startswith("build-") and n.endswith(".log")
        ]
    logs_of: list[tuple[float, str]] = []
    for p in candidates:  # lstat: a link planted as the newest log is neither followed nor shown
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:  # a hard link's other name is elsewhere
            logs_of.append((st.st_mtime, p))
    if not logs_of:
        return [], None
    newest = max(logs_of)[1]
    from volenv.store.volio import read_regular

    try:  # never blocking, never through a link, the tail only
        lines = (
            read_regular(newest, 256 << 10, tail=True, one_name=True)
            .decode("utf-8", "replace")
            .splitlines()[-TAIL_LINES:]
        )
    except OSError:
        return [], newest
    from volenv.base.redact import redact_text

    # a log written by an older volenv (or by hand) may hold what this one never writes
    return [redact_text(line) for line in lines], newest


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def print_report(report: dict[str, Any]) -> None:
    """The first log lines of the container: human lines, then one JSON line for log search."""
    p = sys.stderr
    phase = "the worker failed at boot" if report.get("phase") == "boot" else "activation failed"
    print(f"volenv: DIAGNOSIS: {phase}: {report['failed']}", file=p)
    print(f"volenv: exit code {report['exit_code']} ({report['meaning']})", file=p)
    if report.get("fix"):
        print(f"volenv: fix: {report['fix']}", file=p)
    for line in report.get("stderr_tail", [])[-15:]:
        print(f"volenv:   worker| {line}", file=p)
    verify = report.get("verify")
    if isinstance(verify, dict):
        print(f"volenv: verify --level stat: {verify.get('summary') or verify.get('error')}", file=p)
        for line in verify.get("problems", [])[:10]:
            print(f"volenv:   {line}", file=p)
        if verify.get("fix"):
            print(f"volenv: fix the snapshot: {verify['fix']}", file=p)
    free = report.get("volume_free_bytes")
    print(
        f"volenv: root {report['root']} ({'present' if report['root_exists'] else 'MISSING'}),"
        f" free {free if free is not None else '?'} bytes",
        file=p,
    )
    for s in report["snapshots"]:
        print(f"volenv: snapshot {s['snapshot']}: {s['seal']}", file=p)
    if report.get("build_log"):
        print(f"volenv: last build log {report['build_log']}:", file=p)
        for line in report["build_log_tail"][-10:]:
            print(f"volenv:   | {line}", file=p)
    print("volenv-diagnosis " + json.dumps(report, sort_keys=True, default=str), file=p, flush=True)


def _sdk_would_run(command: list[str]) -> bool:
    on_runpod = bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB"))
    local_job = any(a.startswith(("--test_input", "--rp_serve_api")) for a in command)
    return on_runpod or local_job or os.path.exists("test_input.json")


def serve_diagnosis(root: str, opts: Any, exc: VolenvError, extra: dict[str, Any] | None = None) -> int:
    """Print the report, then answer every job with it (or, outside RunPod, exit with its code).
    `extra` adds to the report what the caller knows (a boot failure: the worker's last stderr
    lines, the snapshot's verification)."""
    target_env = getattr(opts, "env", None)
    manifest = getattr(opts, "manifest", None)
    if target_env is None and manifest is not None:
        target_env = _env_name_of(manifest)
    report = build_report(root, target_env, manifest, exc)
    if extra:
        from volenv.base.redact import redact_obj

        extra_redacted: dict[str, Any] = redact_obj(extra)  # type: ignore[assignment]
        report.update(extra_redacted)
    print_report(report)
    command: list[str] = list(getattr(opts, "command", []))
    if not _sdk_would_run(command):
        print(
            "volenv: not on RunPod and no --test_input/--rp_serve_api: exiting with the diagnosis above",
            file=sys.stderr,
        )
        return exc.exit_code
    os.environ["RUNPOD_SKIP_GPU_CHECK"] = "true"
    os.environ["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"] = "true"
    # The SDK reads its flags from sys.argv; hand it the worker command's own arguments.
    sys.argv = ["volenv-diagnose", *command[1:]]

    def handler(job: dict[str, Any]) -> dict[str, Any]:
        return {"error": f"volenv: environment unavailable: {report['failed']}", "volenv_diagnosis": report}

    try:
        import runpod
    except ImportError:
        print(
            "volenv: the diagnostic worker needs runpod, which is not installed (volenv's 'runpod' extra):"
            " pip install 'volenv[runpod]' in the image",
            file=sys.stderr,
            flush=True,
        )
        return exc.exit_code
    try:
        runpod.serverless.start({"handler": handler})
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 0
        print(f"volenv: diagnostic worker stopped (SDK exit {code})", file=sys.stderr, flush=True)
        return exc.exit_code if code else 0
    except BaseException as err:  # never a silent exit: say what broke the diagnostic worker too
        print(f"volenv: diagnostic worker failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return exc.exit_code
    return exc.exit_code


def _env_name_of(manifest: str) -> str | None:
    try:
        import tomllib

        # the worker's own manifest (beside its code or on the volume): never a FIFO's hang
        name = tomllib.loads(read_regular_file(manifest, 16 << 20, follow=True).decode()).get("name")
        return name if isinstance(name, str) else None
    except (OSError, ValueError):
        return None
