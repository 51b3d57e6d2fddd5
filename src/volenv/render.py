"""One renderer: data (tables, reports) on stdout, narrative (progress, hints, warnings, errors)
on stderr, or one versioned JSON document on stdout."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import shq
from .redact import redact_obj, redact_text

JSON_VERSION = 1

# wide when not a terminal: a table piped to grep keeps one row per line
_PIPE_WIDTH = 250


def _console(stderr: bool, color: str = "auto", silent: bool = False) -> Console:
    """--color never and NO_COLOR: no escape codes at all (rich's no_color still emits bold and
    italic; color_system=None emits none). No highlighter: "0.00s" stays one piece of text."""
    stream = sys.stderr if stderr else sys.stdout
    force = True if color == "always" else None
    plain = color == "never" or (color != "always" and bool(os.environ.get("NO_COLOR")))
    return Console(
        file=open(os.devnull, "w") if silent else None,
        stderr=stderr,
        soft_wrap=stderr,
        force_terminal=False if plain else force,
        color_system=None if plain else "auto",
        highlight=False,
        emoji=False,  # a path or a package named `:x:` is text
        width=None if (stream.isatty() or force) else _PIPE_WIDTH,
    )


err_console = _console(stderr=True)
out_console = _console(stderr=False)


def configure_console(color: str, quiet: int = 0) -> None:
    """--color auto|always|never (NO_COLOR honoured); -qq silences the data on stdout too (only
    errors remain). Rebinds the shared consoles."""
    global err_console, out_console
    err_console = _console(True, color)
    out_console = _console(False, color, silent=quiet >= 2)


def _c() -> Console:
    """Narrative: stderr."""
    return err_console


def _o() -> Console:
    """Data: stdout (`volenv list | grep web`)."""
    return out_console


def out_line(text: str) -> None:
    """A plain line of data on stdout (paths, versions, keys): silenced by -qq like the tables."""
    out_console.print(text, markup=False, highlight=False, soft_wrap=True)


def esc(value: object) -> str:
    """Text from the user or the volume, printed through rich: `[/x]` is text, not markup."""
    return escape(str(value))


def to_data(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = [f.name for f in dataclasses.fields(obj) if not f.name.startswith("_")]
        return {name: to_data(getattr(obj, name)) for name in fields}
    if isinstance(obj, dict):
        return {str(k): to_data(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_data(v) for v in obj]
    return obj


def emit_json(command: str, result: Any) -> None:
    doc = {"version": JSON_VERSION, "command": command}
    data = redact_obj(to_data(result))
    if isinstance(data, dict):
        doc.update(data)
    else:
        doc["result"] = data
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def _unit_of(n: int) -> str:
    value = float(n)
    for unit in _BYTE_UNITS:
        if value < 1024 or unit == "TiB":
            return unit
        value /= 1024
    return "TiB"


def human_bytes(n: int | None, unit: str | None = None) -> str:
    """`n` in binary units; `unit` forces one (status prints apparent and unique alike)."""
    if n is None:
        return "-"
    forced = unit is not None
    unit = unit or _unit_of(n)
    value = n / 1024 ** _BYTE_UNITS.index(unit)
    if unit == "B":
        return f"{value:.0f} {unit}"
    return f"{value:.2f} {unit}" if forced and value < 1 else f"{value:.1f} {unit}"


def human_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def render_sync(r: Any, quiet: int) -> None:
    if quiet > 0:
        return
    verb = {"built": "built", "reused": "reused", "would-build": "would build", "would-reuse": "would reuse"}
    head = f"[bold]{esc(verb.get(r.action, r.action))}[/bold] {esc(r.snapshot)} in {r.seconds:.1f} s"
    s = r.stats or {}
    if "packages" in s:  # the summary line that stays on screen after the spinners are gone
        head += (
            f": {s['packages']:,} package{'' if s['packages'] == 1 else 's'}, {s.get('files', 0):,} files,"
            f" {human_bytes(s.get('bytes'))} ({human_bytes(s.get('bytes_hashed'))} hashed)"
        )
    _c().print(head)
    _c().print(f"  path: {esc(r.path)}")
    for g in r.groups:
        mark = "[green]installed[/green]" if g.state == "installed" else f"[yellow]{esc(g.state)}[/yellow]"
        extra = f": {esc(g.error)}" if g.error else ""
        _c().print(f"  optional group {esc(g.name)}: {mark}{extra}")
    if r.stats:
        s = r.stats
        _c().print(
            f"  files: {s.get('files', 0)}, hashed {s.get('hashed', 0)},"
            f" reused hashes {s.get('hash_reused', 0)},"
            f" reused bytecode {s.get('bytecode_reused', 0)}, link mode {r.link_mode}"
        )


def render_status(r: Any, quiet: int) -> None:
    if not r.exists:
        _o().print(f"volume root {esc(r.root)} (from {r.root_source}) does not exist yet")
        return
    _o().print(f"root: {esc(r.root)} (from {r.root_source}), free {human_bytes(r.free_bytes)}")
    if not r.envs:
        _o().print("no environments yet")
    for e in r.envs:
        table = Table(title=f"env {esc(e.name)} — {e.generations} generation(s)", title_justify="left")
        for col in ("", "snapshot", "created", "python", "size", "unique", "last used", "groups", "state"):
            table.add_column(col)
        for s in e.snapshots:
            flags = ("*" if s.current else "") + ("P" if s.pinned else "")
            groups = esc(", ".join(f"{g.name}:{g.state}" for g in s.groups) or "-")
            state = "valid" if s.valid else f"[red]{esc(s.problem)}[/red]"
            if s.link_mode == "copy":
                state += " [yellow](copied)[/yellow]"
            table.add_row(
                flags,
                esc(s.id),
                human_time(s.created),
                esc(s.python or "-"),
                human_bytes(s.apparent_bytes),
                human_bytes(s.unique_bytes, _unit_of(s.apparent_bytes) if s.apparent_bytes else None),
                human_time(s.last_used),
                groups,
                state,
            )
        _o().print(table)
    for w in r.warnings:
        _c().print(f"[yellow]warning:[/yellow] {esc(w)}")


def render_env(r: Any, fmt: str) -> None:
    if fmt == "json":
        emit_json("env", r)
        return
    lines = [f"unset {name}" for name in r.unset]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(r.variables.items())]
    sys.stdout.write("\n".join(lines) + "\n")


def render_verify(reports: Any, quiet: int) -> None:
    for rep in reports:
        style = "green" if rep.ok and not rep.problems else ("yellow" if rep.ok else "red")
        if quiet > 0 and rep.ok:
            continue
        _o().print(f"[{style}]{esc(rep.summary())}[/{style}] ({rep.seconds:.2f}s)")
        if rep.problems:
            table = Table(show_header=True)
            for col in ("severity", "kind", "path", "detail", "package"):
                table.add_column(col)
            for p in rep.problems[:200]:
                table.add_row(*(esc(x) for x in (p.severity, p.kind, p.path, p.detail, p.distribution or "")))
            _o().print(table)
            if len(rep.problems) > 200:
                _o().print(f"… and {len(rep.problems) - 200} more (use --json for all)")


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


def emit_json_error(code: int, message: str, cause: str | None, hint: str | None) -> None:
    """Under --json an error is a document on stdout too: scripts read one shape either way."""
    error = {"code": code, "kind": ERROR_KINDS.get(code, "error"), "message": message, "hint": hint}
    if cause:
        error["cause"] = cause
    doc = redact_obj({"version": JSON_VERSION, "error": error})
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


def render_error(message: str, cause: str | None, hint: str | None) -> None:
    """The one error style: `error: WHAT`, then `  cause:` and `  hint: WHAT TO DO` lines."""
    message = redact_text(message)
    cause = redact_text(cause) if cause else cause
    hint = redact_text(hint) if hint else hint
    # escaped: messages quote what the user wrote (`uvicorn[standard]==0.32.1`) and uv's text
    _c().print(f"[bold red]error:[/bold red] {esc(message)}", highlight=False)
    if cause:
        _c().print(f"  [bold]cause:[/bold] {esc(cause)}", highlight=False)
    if hint:
        _c().print(f"  [bold cyan]hint:[/bold cyan] {esc(hint)}", highlight=False)


def render_history(r: Any) -> None:
    table = Table(title=f"history of {esc(r.env)}", title_justify="left")
    for col in ("gen", "time", "action", "snapshot", ""):
        table.add_column(col)
    for g in r.generations:
        table.add_row(
            str(g.number),
            human_time(g.time),
            esc(g.action),
            esc(g.snapshot),
            "*" if g.snapshot == r.current else "",
        )
    _o().print(table)


def render_switch(r: Any) -> None:
    if r.action == "not pinned":
        _c().print(esc(f"{r.snapshot} was not pinned; nothing changed"))
        return
    before = f" (was {r.previous})" if r.previous else ""
    _c().print(esc(f"{r.action}: {r.env} -> {r.snapshot}{before}"))


def render_gc(r: Any, quiet: int) -> None:
    plan = r.plan
    if quiet <= 0:
        table = Table(
            title=f"gc plan (keep {plan.keep}, keep-within {plan.keep_within:g}s)", title_justify="left"
        )
        for col in ("action", "kind", "path", "size", "why"):
            table.add_column(col)
        for item in plan.items:
            style = "red" if item.action == "remove" else "green"
            table.add_row(
                f"[{style}]{item.action}[/{style}]",
                item.kind,
                esc(item.path),
                human_bytes(item.apparent_bytes),
                esc("; ".join(item.reasons)),
            )
        _o().print(table)
    if r.executed:
        for o in r.outcomes:
            if o.kept:
                _c().print(f"note: {esc(o.path)}: {esc(o.detail)}")
            elif not o.done:
                _c().print(f"[yellow]not removed:[/yellow] {esc(o.path)}: {esc(o.detail)}")
        _o().print(f"freed {human_bytes(r.freed_bytes)} ({sum(o.done for o in r.outcomes)} removed)")
    else:
        _o().print(
            f"would free {human_bytes(plan.freed_bytes)} ({len(plan.removals)} to remove); nothing changed"
        )


def render_models(states: Any) -> None:
    table = Table(title="models", title_justify="left")
    for col in ("name", "source", "present", "files", "size", "location"):
        table.add_column(col)
    for s in states:
        mark = (
            "[green]yes[/green]"
            if s.present
            else ("[yellow]no (optional)[/yellow]" if s.optional else "[red]no[/red]")
        )
        table.add_row(esc(s.name), esc(s.source), mark, str(s.files), human_bytes(s.bytes), esc(s.location))
    _o().print(table)


def render_model_verify(report: Any) -> None:
    if report.ok:
        _o().print(
            f"[green]models ok at level {report.level}[/green]: {esc(', '.join(report.checked) or 'none')}"
        )
        return
    for p in report.problems:
        _o().print(f"[red]{esc(p.name)}: {esc(p.kind)}[/red] {esc(p.path)}: {esc(p.detail)}")


def render_doctor(r: Any) -> None:
    ok = "[green]ok[/green]"
    _o().print(f"root       : {esc(r.root)} (from {r.root_source})")
    no = "[red]no[/red]"
    _o().print(f"exists     : {ok if r.exists else no}   reachable: {ok if r.reachable else no}")
    _o().print(
        esc(f"filesystem : {r.fs_type or '?'} mounted at {r.mount_point or '?'}; writable: {r.writable}")
    )
    _o().print(f"space      : {human_bytes(r.free_bytes)} free of {human_bytes(r.total_bytes)}")
    _o().print(f"python     : {esc(r.python)}")
    g = r.gpu
    gpu = f"{', '.join(g.names)} driver {g.driver} (CUDA <= {g.cuda})" if g.present else g.detail
    _o().print(f"gpu        : {esc(gpu)}")
    for env, holder in r.leases.items():
        _o().print(f"lease      : {esc(env)} held by {esc(holder)}")
    if r.snapshots:
        table = Table(title="snapshots", title_justify="left")
        for col in ("", "snapshot", "seal", "interpreter", "torch CUDA"):
            table.add_column(col)
        for s in r.snapshots:
            table.add_row(
                "*" if s.current else "",
                *(esc(x) for x in (s.snapshot, s.seal, s.interpreter, s.torch_cuda or "-")),
            )
        _o().print(table)
    if r.build_log:
        _o().print(f"last build log: {esc(r.build_log)}")
        for line in r.build_log_tail:
            _o().print(f"  | {line}", highlight=False, markup=False)
    f = r.last_failure
    if f is not None:
        where = f" ({esc(f.snapshot)})" if f.snapshot else ""
        _o().print(
            f"last failure: {human_time(f.time)} [bold]{esc(f.env)}[/bold]{where}: {esc(f.error)}",
            highlight=False,
        )
        if f.log:
            _o().print(f"  log: {esc(f.log)}", highlight=False)
    for p in r.problems:
        _o().print(f"[red]problem:[/red] {esc(p)}")
    if not r.problems:
        _o().print("[green]no problems found[/green]")


def render_bench(r: Any) -> None:
    """`bench coldstart`: one table of measurements, then auto's choice and the notes."""
    _o().print(
        f"volume {esc(r.root)}: snapshot {esc(r.snapshot)} ({r.snapshot_files} files,"
        f" {human_bytes(r.snapshot_bytes)}); start: {esc(shlex.join(r.start_command))}",
        highlight=False,
    )
    table = Table(title="coldstart", title_justify="left")
    for col in ("measure", "result", "detail"):
        table.add_column(col)
    for op in r.latency:
        table.add_row(
            esc(f"{op.op} (per op)"), f"{op.median_ms:.3f} ms", f"p90 {op.p90_ms:.3f} ms, {op.samples} files"
        )
    for rd in r.reads:
        what = "sequential read" if rd.threads == 1 else f"parallel read, {rd.threads} threads"
        table.add_row(
            what, f"{rd.mb_per_s:.0f} MB/s", esc(f"{human_bytes(rd.bytes)} in {rd.seconds:.2f}s of one file")
        )
    for s in r.starts:
        label = {"never": "start in place", "always": "start materialized"}.get(s.mode, s.mode)
        if s.skipped:
            table.add_row(esc(label), "-", esc(s.skipped))
        else:
            runs = ", ".join(f"{t:.2f}s" for t in s.runs_s)
            table.add_row(esc(label), f"{s.median_s:.2f} s", esc(f"median of {len(s.runs_s)}: {runs}"))
    if r.materialized_vs_in_place is not None:
        table.add_row("materialized / in place", f"{r.materialized_vs_in_place:.2f}x", "")
    _o().print(table)
    choice = "materialize" if r.auto.choice == "materialize" else "run in place"
    _o().print(f"auto would {choice}: {esc(r.auto.reason)}", highlight=False)
    for note in r.notes:
        _o().print(f"note: {esc(note)}", highlight=False)


def render_init(r: Any, quiet: int) -> None:
    """The files written on stdout; where the smoke imports came from, and what next, on stderr."""
    out_line(str(r.manifest))
    if r.lockfile:
        out_line(str(r.lockfile))
    if quiet > 0:
        return
    how = {"wheels": "read from the wheels", "guessed": "guessed from the names", "none": "none found"}
    imports = ", ".join(r.smoke_imports) or "-"
    _c().print(f"smoke imports ({how[r.imports_from]}): {esc(imports)}", highlight=False)
    _c().print(f"next: volenv sync {esc(shq(r.manifest))}", highlight=False)


def render_switch_generic(r: Any) -> None:
    """Any result as aligned `key: value` lines on stderr."""
    for key, value in to_data(r).items():
        _o().print(esc(f"{key:20s}: {value}"), highlight=False)
