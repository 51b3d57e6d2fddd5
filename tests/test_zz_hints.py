"""Issue 25, item 4: every `hint:` and `fix:` line the test suite made volenv print names commands
that work when pasted: each `volenv ...` command in it parses with volenv's own CLI as printed
(options, arguments, quoting), holds no placeholder (MANIFEST, ENV, ...) where the state that
produced it knew the value, and carries the `--root` that was used when that root was not the
default. Collected by conftest.volenv() over the whole session; this module runs last (its
name sorts last), so it sees them all. Run alone it checks what the other modules it runs with
collected (and skips with none)."""

from __future__ import annotations

import os
import re
import shlex

import pytest

import conftest

# what a hint may hold where no value could be known (a manifest's path when none was given)
PLACEHOLDERS = re.compile(r"^[A-Z][A-Z_]+$")
SEPARATORS = re.compile(r"`|;|, or |, then | then | \(|\)$")


def _command_names() -> set[str]:
    from typer.main import get_command

    from volenv.cli.app import app

    return set(get_command(app).commands)  # type: ignore[attr-defined]


def commands_in(hint: str) -> list[str]:
    """The volenv command lines in a hint: backticked ones, else one running from `volenv` to
    the end of the clause, when what follows is a command (prose that names volenv is not)."""
    quoted = re.findall(r"`(volenv [^`]*)`", hint)
    if quoted:
        return quoted
    out = []
    for found in re.finditer(r"(?:^|(?<=[ :]))volenv ", hint):
        rest = hint[found.start() :]
        cut = SEPARATORS.search(rest)
        line = rest[: cut.start()] if cut else rest
        words = line.split()
        i = 1
        while i < len(words) and words[i].startswith("-"):  # global options before the command
            i += 2 if words[i] == "--root" else 1
        if i < len(words) and words[i] in _command_names():
            out.append(line)
    return out


def _protected(ctx: object) -> list[str]:
    """A group's subcommand and its arguments, as click keeps them (the name moved in 8.2)."""
    return list(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", None) or [])


def problems_of(command: str, argv: list[str], env: dict[str, str]) -> list[str]:
    from typer.main import get_command

    from volenv.cli.app import app
    from volenv.globalargs import hoist_globals
    from volenv.start.run import parse_run_args

    try:
        words = shlex.split(command)
    except ValueError as exc:
        return [f"does not split as a shell would: {exc}"]
    out = []
    placeholders = [w for w in words[1:] if PLACEHOLDERS.match(w)]
    if placeholders:
        out.append(f"placeholder {placeholders} where a value was known")
    used_root = None
    if "--root" in argv:
        used_root = os.path.abspath(argv[argv.index("--root") + 1])
    default = os.path.abspath(env["VOLENV_ROOT"]) if env.get("VOLENV_ROOT") else None
    # help, `init` (a manifest beside the project), `key` and `list --remote` use no root
    needs_root = not {"--help", "-h", "--remote", "init", "key"} & set(words)
    if (
        needs_root
        and used_root is not None
        and used_root != default
        and used_root not in [os.path.abspath(w) for w in words]
    ):
        out.append(f"no --root {used_root} (the root used)")
    args = hoist_globals([w if not PLACEHOLDERS.match(w) else "x" for w in words[1:]])
    cmd = get_command(app)
    try:
        ctx = cmd.make_context("volenv", list(args), resilient_parsing=False)
        rest = [*_protected(ctx), *ctx.args]
        group = cmd
        while rest:
            name, sub, rest = group.resolve_command(ctx, rest)  # type: ignore[attr-defined]
            if name in ("run", "trace"):
                parse_run_args(rest, name)
                break
            ctx = sub.make_context(name, list(rest), parent=ctx, resilient_parsing=False)  # type: ignore[union-attr]
            rest = [*_protected(ctx), *ctx.args]
            if not hasattr(sub, "resolve_command"):
                break
            group = sub
    except SystemExit as exc:  # run's --help: printed, exit 0
        if exc.code not in (0, None):
            out.append(f"does not parse: exit {exc.code}")
    except Exception as exc:  # click's usage errors and volenv's own; --help is an Exit(0)
        if type(exc).__name__ == "Exit" and getattr(exc, "exit_code", None) == 0:
            return out  # typer vendors click: its Exit is matched by name, as cli/app.py does
        out.append(f"does not parse: {type(exc).__name__}: {getattr(exc, 'message', exc)}")
    return out


def test_every_hint_and_fix_line_the_suite_saw_is_a_command_that_works_pasted() -> None:
    seen = conftest.HINTS
    if not seen:
        pytest.skip("no hints collected: run with the rest of the suite")
    checked, bad = set(), []
    for hint, argv, env in seen:
        for command in commands_in(hint):
            key = (command, tuple(argv[:2]))
            if key in checked:
                continue
            checked.add(key)
            for p in problems_of(command, argv, env):
                bad.append(f"{p}: {command!r}\n      (hint {hint!r}, from volenv {shlex.join(argv)[:160]})")
    print(f"\nhints: {len(seen)} printed, {len(checked)} distinct commands checked")
    assert not bad, f"{len(bad)} hint command(s) that do not work pasted:\n  " + "\n  ".join(
        dict.fromkeys(bad)
    )


def test_the_checker_catches_what_it_should() -> None:
    """The checker itself: a missing --root, a placeholder, a bad option are each named."""
    argv = ["--root", "/tmp/r", "verify", "app"]
    assert problems_of("volenv --root /tmp/r verify app --repair", argv, {}) == []
    assert any("no --root" in p for p in problems_of("volenv verify app --repair", argv, {}))
    assert any("placeholder" in p for p in problems_of("volenv --root /tmp/r sync MANIFEST", argv, {}))
    assert any("does not parse" in p for p in problems_of("volenv --root /tmp/r verify --no-such", argv, {}))
    assert commands_in("free space with `volenv gc`, or grow it") == ["volenv gc"]
    assert commands_in("fetch it: volenv models fetch m.toml") == ["volenv models fetch m.toml"]
    assert commands_in("use --manifest M so volenv can build it") == []
    assert problems_of("volenv status --help", argv, {}) == []
