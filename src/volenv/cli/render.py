"""One renderer: data (tables, reports) on stdout, narrative (progress, hints, warnings, errors)
on stderr, or one versioned JSON document on stdout.

Long: it is the only module that imports rich (tests/test_architecture.py holds that), so every
command's table and report lives here, each a short function; splitting it by command family
would spread rich across the CLI's folder or make a second renderer."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from volenv.base import ui
from volenv.base.errors import cause_lines, error_document, shq
from volenv.base.redact import redact_obj, redact_text
from volenv.base.ui import _unit_of as _unit_of  # the size format is ui's (low modules print sizes too)
from volenv.base.ui import human_bytes as human_bytes
from volenv.base.ui import human_seconds, step_summary, sync_summary
from volenv.store.sealcheck import is_record_time

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
    out_console.print(controls_escaped(text), markup=False, highlight=False, soft_wrap=True)


# C0 but newline and tab, DEL, C1 and the bidi overrides: text read from the volume (a seal, a
# history line, an index entry) must not drive the terminal (ESC sequences, OSC 8, CR)
_CONTROLS = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in [*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
    if c not in (0x0A, 0x09)
}


def controls_escaped(text: str) -> str:
    """`text` with terminal control characters shown as `\\x1b` and the like."""
    return text.translate(_CONTROLS)


def esc(value: object) -> str:
    """Text from the user or the volume, printed through rich: `[/x]` is text, not markup, and
    a control character (ESC, CR, ...) is shown escaped, never sent to the terminal."""
    return escape(controls_escaped(str(value)))


# ---------------------------------------------------------------- tables


@dataclasses.dataclass(frozen=True)
class Col:
    """A table column. `whole`: a value users type (a snapshot id, an env or package name):
    never cut, never dropped. `drop`: where a terminal is too narrow for every column, the
    columns with the highest `drop` go first (0: never dropped); the others wrap."""

    name: str
    whole: bool = False
    drop: int = 0
    justify: str = "left"


def _cell_text(cell: str) -> str:
    """A cell's text as printed: markup resolved, one line (a piped row is one line)."""
    from rich.text import Text

    return " ".join(Text.from_markup(cell).plain.split("\n"))


def print_table(
    cols: list[Col], rows: list[list[str]], title: str | None = None, *, boxed: bool = True
) -> None:
    """One table on stdout. Piped (not a terminal): plain columns two spaces apart, a header
    line, one row a line, no borders and no trailing padding (`volenv status | grep web`, awk).
    On a terminal: a rich table as wide as the terminal, where ids stay whole: while the row
    does not fit unwrapped, columns go in `drop` order (named under the table; --json has
    every field); what still does not fit wraps, ids never. Cells are rich markup."""
    con = _o()
    if not _on_terminal(con):
        _plain_table(cols, [[_cell_text(c) for c in row] for row in rows], title)
        return
    from rich.cells import cell_len

    texts = [[_cell_text(c) for c in row] for row in rows]

    def need(i: int) -> int:  # the room column i takes unwrapped
        return max(cell_len(c) for c in [cols[i].name, *(row[i] for row in texts)])

    keep = list(range(len(cols)))
    width = con.width
    dropped: list[str] = []
    droppable = sorted((i for i, c in enumerate(cols) if c.drop > 0), key=lambda i: -cols[i].drop)

    def overhead(n: int) -> int:  # borders and padding: `│ a │ b │`, or two spaces between
        return 3 * n + 1 if boxed else 2 * (n - 1)

    while sum(need(i) for i in keep) + overhead(len(keep)) > width and droppable:
        i = droppable.pop(0)
        keep.remove(i)
        dropped.append(cols[i].name)
    table = Table(title=title, title_justify="left")
    if not boxed:
        table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for i in keep:
        c = cols[i]
        table.add_column(
            c.name,
            justify=c.justify,  # type: ignore[arg-type]
            no_wrap=c.whole,
            min_width=need(i) if c.whole else None,
            overflow="fold",
        )
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    con.print(table)
    if dropped:
        note = f"not shown at {width} columns: {', '.join(dropped)} (--json has them)"
        con.print(f"[dim]{esc(note)}[/dim]", soft_wrap=True)


def _on_terminal(con: Console) -> bool:
    """A person reads it (a terminal, or --color always): NO_COLOR makes it plain, not piped."""
    if con.is_terminal:
        return True
    try:
        return con.file.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _plain_table(cols: list[Col], rows: list[list[str]], title: str | None) -> None:
    if title is not None:
        out_line(_cell_text(title))
    from rich.cells import cell_len

    heads = [c.name or "-" for c in cols]  # a blank header would shift awk's fields
    widths = [max([cell_len(h), *(cell_len(r[i] or "-") for r in rows)]) for i, h in enumerate(heads)]
    for line in [heads, *rows]:
        cells = []
        for i, text in enumerate(line):
            text = text or "-"
            pad = " " * (widths[i] - cell_len(text))
            cells.append(pad + text if cols[i].justify == "right" else text + pad)
        out_line("  ".join(cells).rstrip())


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


def human_time(ts: float | None) -> str:
    """A record's timestamp; one a damaged record holds (1e300, NaN, a bool) shows as '?'."""
    if ts is None:
        return "-"
    if not is_record_time(ts):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def render_sync(r: Any, quiet: int, verbose: bool = False) -> None:
    if r.action.startswith("would-"):  # a dry run's plan is data, as gc's is: stdout, -qq only
        _render_plan(r)
        return
    if quiet > 0:
        return
    # the summary line that stays on screen after the spinners are gone, its verb in bold
    if r.steps:  # a build: where its time went, just above the line that stays
        _c().print(esc(step_summary(r.steps)))
    line = sync_summary(r.action, r.snapshot, r.seconds, r.stats)
    verb, _, tail = line.partition(f" {r.snapshot} ")
    _c().print(f"[bold]{esc(verb)}[/bold] {esc(r.snapshot)} {esc(tail)}")
    if verbose:  # one summary line stays (-v: where it is and how it was built)
        _c().print(f"  path: {esc(r.path)}")
    for g in r.groups:
        mark = "[green]installed[/green]" if g.state == "installed" else f"[yellow]{esc(g.state)}[/yellow]"
        extra = f": {esc(g.error)}" if g.error else ""
        _c().print(f"  optional group {esc(g.name)}: {mark}{extra}")
    if r.stats and verbose:
        s = r.stats
        _c().print(
            f"  files: {s.get('files', 0)}, hashed {s.get('hashed', 0)},"
            f" reused hashes {s.get('hash_reused', 0)},"
            f" reused bytecode {s.get('bytecode_reused', 0)}, link mode {r.link_mode}"
        )


def _render_plan(r: Any) -> None:
    """sync --dry-run: what it would do, then the package diff against the env's current
    snapshot, one line each."""
    out_line(f"{r.action.replace('-', ' ')} {r.snapshot}")  # would build X / would reuse X
    _render_planned(r.packages)
    if r.changes is None:
        out_line("  no current snapshot to compare with: every package is new")
        return
    against = f"against current {r.previous}" if r.previous else "against current"
    if r.changes.empty:
        out_line(f"  no package changes {against}")
        return
    out_line(f"  changes {against}:")
    for item in r.changes.items():
        out_line(f"    {item}")


def _render_planned(packages: Any) -> None:
    """The resolved packages, one a line: `name  version  download  installed  group`, sizes
    where known (`-` where only the install would tell); --json has the exact bytes."""
    if not packages:
        return

    def total(values: list[int | None]) -> str:
        known = [v for v in values if v is not None]
        return human_bytes(sum(known)) + ("" if len(known) == len(values) else "+") if known else "?"

    down = total([p.download_bytes for p in packages])
    inst = total([p.installed_bytes for p in packages])
    n = len(packages)
    out_line(f"  {n} package{'s' if n != 1 else ''}, {down} to download, {inst} installed:")
    cells = [
        [p.name, p.version, human_bytes(p.download_bytes), human_bytes(p.installed_bytes), p.group or "-"]
        for p in packages
    ]
    heads = ["package", "version", "download", "installed", "group"]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    for row in [heads, *cells]:
        text = "  ".join(
            c.rjust(w) if i in (2, 3) else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        out_line(f"    {text.rstrip()}")


def render_status(r: Any, quiet: int) -> None:
    out_line(f"root: {r.root} (from {r.root_source}), free {human_bytes(r.free_bytes)}")
    if not r.envs:
        out_line("no environments yet")
    cols = [
        Col(""),
        Col("snapshot", whole=True),
        Col("created", drop=3),
        Col("python", drop=4),
        Col("size", justify="right", drop=2),
        Col("unique", justify="right", drop=6),
        Col("last used", drop=5),
        Col("groups", drop=1),
        Col("state"),
    ]
    for e in r.envs:
        title = f"env {esc(e.name)} — {e.generations} generation(s)"
        if not e.snapshots:  # a first build that failed or was interrupted: no table of headers
            _o().print(f"{title}: no snapshots (no build has finished)", highlight=False)
            continue
        rows = []
        for s in e.snapshots:
            flags = ("*" if s.current else "") + ("P" if s.pinned else "")
            groups = esc(", ".join(f"{g.name}:{g.state}" for g in s.groups) or "-")
            state = "valid" if s.valid else f"[red]{esc(s.problem)}[/red]"
            if s.link_mode == "copy":
                state += " [yellow](copied)[/yellow]"
            rows.append(
                [
                    flags,
                    esc(s.id),
                    human_time(s.created),
                    esc(s.python or "-"),
                    human_bytes(s.apparent_bytes),
                    human_bytes(s.unique_bytes, _unit_of(s.apparent_bytes) if s.apparent_bytes else None),
                    human_time(s.last_used),
                    groups,
                    state,
                ]
            )
        print_table(cols, rows, title)
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
        counts = f"{rep.files_checked:,} files"
        if rep.bytes_hashed:
            rate = human_bytes(rep.bytes_hashed / max(rep.seconds, 1e-6))
            counts += f", {human_bytes(rep.bytes_hashed)} hashed at {rate}/s"
        _o().print(f"[{style}]{esc(rep.summary())}[/{style}] ({counts} in {rep.seconds:.2f} s)")
        if rep.problems:
            cols = [
                Col("severity"),
                Col("kind"),
                Col("path", whole=True),
                Col("detail"),
                Col("package", drop=1),
            ]
            rows = [
                [esc(x) for x in (p.severity, p.kind, p.path, p.detail, p.distribution or "")]
                for p in rep.problems[:200]
            ]
            print_table(cols, rows)
            if len(rep.problems) > 200:
                _o().print(f"… and {len(rep.problems) - 200} more (use --json for all)")


def emit_json_error(code: int, message: str, cause: str | None, hint: str | None) -> None:
    """Under --json an error is a document on stdout too: scripts read one shape either way."""
    sys.stdout.write(json.dumps(error_document(code, message, cause, hint), indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


def render_error(message: str, cause: str | None, hint: str | None) -> None:
    """The one error style: `error: WHAT`, then `  cause:` and `  hint: WHAT TO DO` lines."""
    message = redact_text(message)
    cause = redact_text(cause) if cause else cause
    hint = redact_text(hint) if hint else hint
    # escaped: messages quote what the user wrote (`uvicorn[standard]==0.32.1`) and uv's text
    _c().print(f"[bold red]error:[/bold red] {esc(message)}", highlight=False)
    for line in cause_lines(cause) if cause else ():  # a traceback stays multi-line
        head, sep, rest = line.partition("cause:")
        if sep and not head.strip():
            _c().print(f"{head}[bold]cause:[/bold]{esc(rest)}", highlight=False)
        else:
            _c().print(esc(line), highlight=False)
    if hint:
        _c().print(f"  [bold cyan]hint:[/bold cyan] {esc(hint)}", highlight=False)


def render_history(r: Any) -> None:
    """One `*`: the newest generation naming the current snapshot (a rollback repeats an older
    one). On a terminal the snapshot ids stay whole: the time column goes where the changes
    would get less than 24 columns, and the changes are cut to what is left of the row; piped,
    every row is whole on one line. --json has everything."""
    live = next((g.number for g in reversed(r.generations) if g.snapshot == r.current), None)
    rows = [
        [f"{g.number}{' *' if g.number == live else ''}", human_time(g.time), g.action, g.snapshot]
        for g in r.generations
    ]
    cols = [Col("gen", justify="right"), Col("time"), Col("action"), Col("snapshot", whole=True)]
    room: int | None = None
    con = _o()
    if _on_terminal(con):
        widths = [max([len(c.name), *(len(row[i]) for row in rows)]) for i, c in enumerate(cols)]
        left = con.width - sum(widths) - 2 * len(widths)  # box-less: two spaces between columns
        if left < 24:  # the time goes before the changes get unreadable; ids never
            cols.pop(1)
            rows = [[row[0], *row[2:]] for row in rows]
            left += widths[1] + 2
        room = max(24, left)
    cells = []
    for row, g in zip(rows, r.generations, strict=True):
        summary = g.changes.summary(room) if g.changes is not None else _gone_summary(g.summary, room)
        cells.append([*(esc(c) for c in row), esc(summary)])
    print_table([*cols, Col("changes")], cells, f"history of {esc(r.env)}", boxed=False)


def _gone_summary(full: str, room: int | None) -> str:
    """`? (A, B gone)` names whole snapshot ids: on screen it counts them (--json names them)."""
    n = full.count(",") + 1 if "gone" in full else 0
    short = f"? ({n} snapshot{'s' if n != 1 else ''} gone)" if n else full
    return short if room is None or len(short) <= room else short[: max(1, room - 1)] + "…"


def render_switch(r: Any) -> None:
    if r.action in ("not pinned", "already pinned"):
        was = "was not pinned" if r.action == "not pinned" else "is already pinned"
        _c().print(esc(f"{r.snapshot} {was}; nothing changed"))
        return
    before = f" (was {r.previous})" if r.previous else ""
    if r.changed:
        _c().print(esc(f"{r.action}: {r.env} -> {r.snapshot}{before}"))
    else:  # rollback --to the current snapshot; a standing rollback still lists its manifests
        _c().print(esc(f"{r.env} is already at {r.snapshot}; nothing changed"))
    for f in r.manifests:  # rollback: what `run --manifest` runs for each indexed manifest
        _c().print(esc(f"  run --manifest {f.manifest}: runs {f.runs} ({f.why})"), highlight=False)
    if r.action == "rollback" and (r.changed or r.manifests):
        known = sorted({f.manifest for f in r.manifests if not f.manifest.startswith(("digest ", "("))})
        name = shq(known[0]) if len(known) == 1 else "MANIFEST"  # several: any of them does
        _c().print(esc(f"  `volenv sync {name}` moves current on and ends the rollback"), highlight=False)


def _gc_label(item: Any, root: str) -> str:
    """What a plan row names: a snapshot by its id (as `list` shows it), an env by its name,
    anything else by its path below the root (the full path is in --json)."""
    if item.kind == "snapshot":
        return os.path.basename(str(item.path))
    if item.kind == "env" and item.env:
        return str(item.env)
    path = str(item.path)
    return os.path.relpath(path, root) if path.startswith(root.rstrip("/") + "/") else path


def _gc_rows(items: Any, root: str, width: int) -> list[tuple[str, str]]:
    """(style, line) pairs for plan rows: `ACTION KIND SIZE ITEM` then the reasons indented
    below, wrapped to `width`; an item too long for the rest of the line goes whole on its own
    line (a path longer than a line too: a fold mid-name breaks copy and paste), never cut."""
    import textwrap

    out: list[tuple[str, str]] = []
    indent = " " * 8
    for item in items:
        style = "red" if item.action == "remove" else "green"
        head = f"{item.action:<6}  {item.kind:<10}  {human_bytes(item.apparent_bytes):>10}  "
        label = _gc_label(item, root)
        if len(head) + len(label) <= width:
            out.append((style, head + label))
        else:
            out.append((style, head.rstrip()))
            pad = " " * max(0, min(len(indent), width - len(label)))  # a whole id fits at 80
            out.append(("", pad + label))
        why = "; ".join(item.reasons)
        for line in textwrap.wrap(why, max(width, 30), initial_indent=indent, subsequent_indent=indent):
            out.append(("", line))
    return out


def render_gc(
    r: Any, quiet: int, verbose: bool = False, show_plan: bool = True, asking: bool = False
) -> None:
    """The plan in lines that fit the terminal: snapshots by id, the rest by path below the
    root, reasons wrapped under each row; kept uv cache archives fold into one line unless
    --verbose. Header and rows share one duration format. Rows are apparent sizes (bytes of
    the files); the total says both: the rows' sum and the disk space removal frees (hard
    links shared with kept items free nothing; blocks, not bytes). `asking`: a prompt
    follows, so "nothing changed" would be premature."""
    from volenv.base.ui import fmt_duration

    plan = r.plan
    if quiet <= 0 and show_plan:
        width = _o().width
        within = fmt_duration(plan.keep_within)
        head = f"gc plan for {plan.root}: keep newest {plan.keep}, keep used within {within}"
        _o().print(esc(head), highlight=False)
        folded = [i for i in plan.items if i.kind == "uv-archive" and i.action == "keep" and not verbose]
        shown = [i for i in plan.items if i not in folded]
        for style, line in _gc_rows(shown, plan.root, width):
            if style:
                action, rest = line[:6], line[6:]
                _o().print(f"[{style}]{esc(action)}[/{style}]{esc(rest)}", soft_wrap=True, highlight=False)
            else:
                _o().print(line, soft_wrap=True, markup=False, highlight=False)
        if folded:
            n, size = len(folded), sum(i.apparent_bytes for i in folded)
            plural = "" if n == 1 else "s"
            line = f"kept {n:,} uv cache archive{plural} ({human_bytes(size)}); --verbose lists them"
            _o().print(line, highlight=False)
    if r.executed:
        for o in r.outcomes:
            if o.kept:
                _c().print(f"note: {esc(o.path)}: {esc(o.detail)}")
            elif not o.done:
                _c().print(f"[yellow]not removed:[/yellow] {esc(o.path)}: {esc(o.detail)}")
        done = [o.path for o in r.outcomes if o.done]
        size = sum(i.apparent_bytes for i in plan.removals if i.path in done)
        _o().print(f"removed {len(done)}: {human_bytes(size)} apparent (the rows' measure)")
        _o().print(f"freed {human_bytes(r.freed_bytes)} of disk (blocks)")
    else:
        size = sum(i.apparent_bytes for i in plan.removals)
        _o().print(f"{len(plan.removals)} to remove: {human_bytes(size)} apparent (the rows' measure)")
        _o().print(
            f"would free {human_bytes(plan.freed_bytes)} of disk (blocks; links kept elsewhere free none)"
        )
        if not asking:
            _o().print("nothing changed (--dry-run)" if plan.removals else "nothing changed")


def render_models(states: Any) -> None:
    if not states:  # an empty table reads as a rendering fault
        _c().print("no models", highlight=False)
        return
    rows = []
    for s in states:
        mark = (
            "[green]yes[/green]"
            if s.present
            else ("[yellow]no (optional)[/yellow]" if s.optional else "[red]no[/red]")
        )
        rows.append([esc(s.name), esc(s.source), mark, f"{s.files:,}", human_bytes(s.bytes), esc(s.location)])
    cols = [
        Col("name", whole=True),
        Col("source"),
        Col("present"),
        Col("files", justify="right", drop=2),
        Col("size", justify="right", drop=1),
        Col("location", drop=3),
    ]
    print_table(cols, rows, "models")


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
        cols = [
            Col(""),
            Col("snapshot", whole=True),
            Col("seal"),
            Col("files (stat)", drop=1),
            Col("interpreter", drop=2),
            Col("torch CUDA", drop=3),
        ]
        rows = [
            [
                "*" if s.current else "",
                *(esc(x) for x in (s.snapshot, s.seal, s.files, s.interpreter, s.torch_cuda or "-")),
            ]
            for s in r.snapshots
        ]
        print_table(cols, rows, "snapshots")
    if r.build_log:
        _o().print(f"last build log: {esc(r.build_log)}")
        for line in r.build_log_tail:
            _o().print(f"  | {line}", highlight=False, markup=False)
    f = r.last_failure
    if f is not None:
        where = f" ({esc(f.snapshot)})" if f.snapshot else ""
        why = f.error or "interrupted (no reason recorded)"  # an older volenv's Ctrl-C wrote ""
        _o().print(
            f"last failure: {human_time(f.time)} [bold]{esc(f.env)}[/bold]{where}: {esc(why)}",
            highlight=False,
        )
        if f.log:
            _o().print(f"  log: {esc(f.log)}", highlight=False)
    for p in r.problems:
        _o().print(f"[red]problem:[/red] {esc(p)}")
    for f in r.fixes:
        _o().print(f"fix: {esc(f)}", highlight=False)
    if not r.problems:
        _o().print("[green]no problems found[/green]")


def render_bench(r: Any) -> None:
    """`bench coldstart`: one table of measurements, then auto's choice and the notes."""
    _o().print(
        f"volume {esc(r.root)}: snapshot {esc(r.snapshot)} ({r.snapshot_files} files,"
        f" {human_bytes(r.snapshot_bytes)}); start: {esc(shlex.join(r.start_command))}",
        highlight=False,
    )
    rows: list[list[str]] = []
    for op in r.latency:
        rows.append(
            [
                esc(f"{op.op} (per op)"),
                f"{op.median_ms:.3f} ms",
                f"p90 {op.p90_ms:.3f} ms, {op.samples} files",
            ]
        )
    for rd in r.reads:
        what = "sequential read" if rd.threads == 1 else f"parallel read, {rd.threads} threads"
        rows.append(
            [
                what,
                f"{rd.mb_per_s:.0f} MB/s",
                esc(f"{human_bytes(rd.bytes)} in {rd.seconds:.2f}s of one file"),
            ]
        )
    for s in r.starts:
        label = {"never": "start in place", "always": "start materialized"}.get(s.mode, s.mode)
        if s.skipped:
            rows.append([esc(label), "-", esc(s.skipped)])
        else:
            runs = ", ".join(f"{t:.2f}s" for t in s.runs_s)
            rows.append([esc(label), f"{s.median_s:.2f} s", esc(f"median of {len(s.runs_s)}: {runs}")])
    if r.materialized_vs_in_place is not None:
        rows.append(["materialized / in place", f"{r.materialized_vs_in_place:.2f}x", ""])
    print_table([Col("measure"), Col("result"), Col("detail")], rows, "coldstart")
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


def render_transfer(r: Any, quiet: int) -> None:
    """push/pull: the result's fields on stdout, and on stderr the line that stays:
    `pulled SID in 3.1 s: 2/4 packs, 1.2 GiB fetched (400.0 MiB/s)`."""
    moved = "sent" if r.action == "pushed" else "fetched"
    render_switch_generic(r, {"packs_sent": f"packs_{moved}", "bytes_sent": f"bytes_{moved}"})
    if quiet > 0:
        return
    rate = human_bytes(r.bytes_sent / max(r.seconds, 1e-6))
    line = (
        f"{r.action} {r.snapshot} in {r.seconds:.1f} s: {r.packs_sent}/{r.packs_total} packs,"
        f" {human_bytes(r.bytes_sent)} {moved} ({rate}/s)"
    )
    _c().print(esc(line), highlight=False)


def render_switch_generic(r: Any, labels: dict[str, str] | None = None) -> None:
    """Any result as aligned `key: value` lines of data on stdout, in words and units (the
    exact numbers are in `--json`): sizes in KiB/MiB/GiB, seconds as `0.6 s`, counts with
    thousands separators, none as `-`."""
    for key, value in to_data(r).items():
        label = (labels or {}).get(key, key).replace("_", " ")
        out_line(f"{label:20s}: {_human_value(key, value)}")


#: keys whose integers are sizes (the one size format; exact bytes only in --json)
_BYTE_KEYS = {"bytes", "uncompressed", "size", "compressed"}


def _human_value(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and (key in _BYTE_KEYS or key.startswith("bytes_") or key.endswith("_bytes")):
        return human_bytes(value)
    if isinstance(value, (int, float)) and key in ("seconds", "took", "elapsed"):
        return human_seconds(float(value))
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "-"
    return str(value)


def render_show(r: Any) -> None:
    """`volenv show`: key lines, then packages, groups and models as tables, on stdout."""
    marks = ", ".join(m for m, on in (("current", r.current), ("pinned", r.pinned)) if on)
    unit = _unit_of(r.apparent_bytes) if r.apparent_bytes else None
    unique = f", {human_bytes(r.unique_bytes, unit)} unique" if r.unique_bytes is not None else ""
    lines = [
        ("snapshot", f"{r.snapshot}" + (f" ({marks})" if marks else "")),
        ("env", r.env),
        ("path", r.path),
        ("state", "valid" if r.valid else f"INVALID: {r.problem}"),
        ("created", human_time(r.created)),
        ("python", f"{r.python or '-'} ({r.interpreter or '?'})"),
        ("size", f"{human_bytes(r.apparent_bytes, unit)} apparent{unique}, {r.files:,} files"),
        ("link mode", r.link_mode or "-"),
    ]
    for m in r.manifests:
        name = m.path or f"(path not recorded; digest {m.digest[:12]})"
        lines.append(("manifest", f"{name} ({m.how})"))
    for key, value in lines:  # soft-wrapped: a long path stays one piece to copy
        out_line(f"{key:10s}: {value}")
    pkg_cols = [Col("package", whole=True), Col("version", whole=True), Col("group")]
    rows = [[esc(p.name), esc(p.version), esc(p.group or "-")] for p in r.packages]
    print_table(pkg_cols, rows, f"packages ({len(r.packages)})")
    if r.groups:  # the error whole: wrapped on a terminal, on its row's one line when piped
        cols = [Col("group", whole=True), Col("state"), Col("required"), Col("error")]
        rows = [
            [esc(g.name), esc(g.state), "yes" if g.required else "no", esc(g.error or "")] for g in r.groups
        ]
        print_table(cols, rows, "optional groups")
    if r.models:
        rows = []
        for m in r.models:
            present = "yes" if m.present else ("no (optional)" if m.optional else "no")
            rows.append([esc(m.name), esc(m.source), present])
        print_table([Col("model", whole=True), Col("source"), Col("present")], rows, "models")
    for c in r.clashes:
        _o().print(f"shipped by several distributions: {esc(c)}", highlight=False)
    if r.imports:
        _o().print(esc(r.imports[0]), highlight=False)
        for line in r.imports[1:]:
            _o().print(f"  {esc(line)}", highlight=False)


def render_imports(checks: Any) -> None:
    """verify --imports: each snapshot's import check, its failures one line each."""
    for sid, rep in checks:
        style = "red" if rep.required_failures else ("yellow" if rep.failures or rep.unchecked else "green")
        _o().print(f"{esc(sid)}: [{style}]{esc(rep.summary())}[/{style}]", highlight=False)
        for f in rep.failures:
            kind = "" if f.required else " (optional)"
            _o().print(f"  {esc(f.module)} ({esc(f.distribution)}){kind}: {esc(f.error)}", highlight=False)


def render_diff(r: Any, quiet: int = 0) -> None:
    """`volenv diff`: one line per change on stdout (`+name ver`, `-name ver`, `~name a -> b`);
    the `A -> B` header on stderr is information: -q drops it."""
    for p in r.problems:
        _c().print(f"[yellow]warning:[/yellow] {esc(p)}", highlight=False)
    c = r.changes
    if quiet <= 0:
        _c().print(esc(f"{r.a} -> {r.b}"), highlight=False)
    if c.empty:
        _o().print("no changes", highlight=False)
        return
    for x in c.added:
        out_line(f"+ {x.name} {x.new}")
    for x in c.removed:
        out_line(f"- {x.name} {x.old}")
    for x in c.changed:
        out_line(f"~ {x.name} {x.old} -> {x.new}")
    for kind, items in (("group", c.groups), ("model", c.models)):
        for x in items:
            if x.old is None:
                out_line(f"+ {kind} {x.name} ({x.new})")
            elif x.new is None:
                out_line(f"- {kind} {x.name} ({x.old})")
            else:
                out_line(f"~ {kind} {x.name} {x.old} -> {x.new}")


# ---------------------------------------------------------------- progress on a terminal


class RichReporter(ui.Reporter):
    """The CLI's narrative backend: messages through the stderr console, and one live display
    for every step spinner and progress bar (rich allows one live display at a time). Bars
    only on a terminal, without --no-progress, -q or --color never."""

    def __init__(self, verbosity: int, progress: bool) -> None:
        self.progress_bars = progress and err_console.is_terminal and verbosity >= 0
        # no bars drawn (a pipe, RunPod's log, --color never): a line every ~10 s on long steps
        super().__init__(verbosity, heartbeat=progress and not self.progress_bars and verbosity >= 0)
        self.beating  # noqa: B018  # a bad VOLENV_PROGRESS_INTERVAL is a usage error now, not mid-build
        self._live: Any = None
        self._tasks = 0

    # messages are plain text (they quote requirements such as `uvicorn[standard]`): escaped
    def info(self, msg: str) -> None:
        if self.verbosity >= 0:
            err_console.print(esc(msg), highlight=False)

    def detail(self, msg: str) -> None:
        if self.verbosity >= 1:
            err_console.print(f"[dim]{esc(msg)}[/dim]", highlight=False)

    def warn(self, msg: str) -> None:
        if self.verbosity >= -1:
            err_console.print(f"[yellow]warning:[/yellow] {esc(msg)}", highlight=False)

    def progress(
        self,
        label: str,
        total: int | None,
        *,
        unit: str = "bytes",
        summary: bool = False,
        done_label: str | None = None,
    ) -> ui.Progress:
        if not self.progress_bars:
            return super().progress(label, total, unit=unit, summary=summary, done_label=done_label)
        return RichProgress(self, label, total, unit=unit, summary=summary, done_label=done_label)

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        if not self.progress_bars:
            with ui.Step(self, label):  # -v's lines, and the heartbeat's
                yield
            return
        t0 = time.perf_counter()
        task = self.add_task(f"{esc(label)}…", None)
        try:
            yield
        finally:
            self.remove_task(task)
        self.detail(f"{label}: {time.perf_counter() - t0:.2f}s")

    def end(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            self._tasks = 0

    # -- the one live display
    def add_task(self, description: str, total: int | None, counts: str = "") -> Any:
        """A row in the one live display (started with the first row, stopped with the last)."""
        if self._live is None:
            from rich.progress import Progress as Bars
            from rich.progress import SpinnerColumn, TextColumn

            self._live = Bars(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                _Bar(bar_width=24),
                TextColumn("{task.fields[counts]}"),
                console=err_console,
                transient=True,
            )
            self._live.start()
        self._tasks += 1
        return self._live.add_task(description, total=total, counts=counts)

    def remove_task(self, task: Any) -> None:
        if self._live is None:
            return
        self._live.remove_task(task)
        self._tasks -= 1
        if self._tasks <= 0:
            self._live.stop()
            self._live = None
            self._tasks = 0


def _Bar(**kw: Any) -> Any:
    """A bar only where the total is known (a step's spinner row has none)."""
    from rich.progress import BarColumn
    from rich.text import Text

    class Bar(BarColumn):
        def render(self, task: Any) -> Any:
            return super().render(task) if task.total is not None else Text("")

    return Bar(**kw)


class RichProgress(ui.Progress):
    """A row of the live display: label, bar, and the counts with the rate."""

    live = True

    def __init__(self, reporter: RichReporter, label: str, total: int | None, **kw: Any) -> None:
        super().__init__(reporter, label, total, **kw)
        self._owner = reporter
        self._shown = 0.0
        self._task = reporter.add_task(esc(label), total, esc(self.counts()))

    def changed(self) -> None:
        now = time.perf_counter()
        if self._task is None or (now - self._shown < 0.1 and self.total != self._completed()):
            return
        self._shown = now
        live = self._owner._live
        if live is not None:
            live.update(self._task, total=self.total, completed=self._completed(), counts=esc(self.counts()))

    def _completed(self) -> int:
        return self.done if self.unit == "bytes" else self.items

    def stop(self) -> None:
        if self._task is None:
            return
        live = self._owner._live
        if live is not None:  # one frame with the final counts before the row goes
            done = dict(total=self.total, completed=self._completed(), counts=esc(self.counts()))
            live.update(self._task, refresh=True, **done)
        self._owner.remove_task(self._task)
        self._task = None
