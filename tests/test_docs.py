"""Issue 30: the docs are tested. Every shell block of README.md and docs/*.md says what it is by
its fence (docs/contributing.md, "The docs test"): ```sh blocks run against a temp root,
```sh {check} blocks (RunPod, docker, podman, a GPU) must parse as bash and every `volenv`
command in them must parse with volenv's own CLI, ```sh {slow} blocks run in a slow test. A
renamed flag or command breaks this module. Also: links between the pages and the docs page
each `volenv COMMAND --help` names exist."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import test_zz_hints as hints

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)
SHELLS = {"sh", "bash", "shell", "console-sh"}


def blocks(page: Path) -> list[tuple[str, str, int]]:
    """(kind, text, line) of each fenced block whose language is a shell: kind is run, check
    or slow; a bare bash/shell block is 'unmarked'."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        info = m.group(1).strip()
        lang, _, rest = info.partition(" ")
        if lang not in SHELLS:
            continue
        line = text[: m.start()].count("\n") + 1
        if lang != "sh":
            out.append(("unmarked", m.group(2), line))
        elif not rest:
            out.append(("run", m.group(2), line))
        elif rest.strip() in ("{check}", "{slow}"):
            out.append((rest.strip()[1:-1], m.group(2), line))
        else:
            out.append(("unmarked", m.group(2), line))
    return out


def commands(block: str) -> list[str]:
    """The `volenv ...` command lines of a block: continuations joined, comments dropped, and
    each `&&`/`;`/`|` part that starts with volenv (or `.venv/bin/volenv`)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        part: list[str] = []
        redirected = False
        for w in [*words, "&&"]:
            if w in ("&&", "||", ";", "|"):
                if part and part[0].endswith("volenv") and not part[0].startswith("pip"):
                    out.append(shlex.join(["volenv", *part[1:]]))
                part, redirected = [], False
            elif redirected or re.match(r"^\d?(>>?|<)", w):
                redirected = True  # a redirection and its target are the shell's, not volenv's
            elif w.startswith("$(") or w.startswith('"$('):
                part.append("x")
            else:
                part.append(w)
    return out


def _env(root: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOLENV_", "RUNPOD_"))}
    env.update(
        VOLENV_ROOT=str(root),
        HOME=str(home),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        VOLENV_NO_PROGRESS="1",
        COLUMNS="100",
    )
    return env


def _run_block(text: str, cwd: Path, env: dict[str, str], where: str, timeout: float = 120) -> None:
    proc = subprocess.run(
        ["bash", "-c", "set -eo pipefail\n" + text],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    blocks_started = re.findall(r"^@@ (block at line \d+)$", proc.stderr, re.M)
    if blocks_started:
        where += f", {blocks_started[-1]}"
    assert proc.returncode == 0, (
        f"{where} failed (exit {proc.returncode}):\n{text[-3000:]}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    )


def _say(request: pytest.FixtureRequest, line: str) -> None:
    """Printed even with the output captured: .ci/run's log shows how many blocks ran."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capman is None:
        print(line)
        return
    with capman.global_and_fixture_disabled():  # past the capture of the test's output
        reporter.write_line(line)


def test_every_shell_block_is_marked() -> None:
    bad = [
        f"{p.relative_to(REPO)}:{line}" for p in PAGES for kind, _, line in blocks(p) if kind == "unmarked"
    ]
    assert not bad, "shell blocks that say neither sh, sh {check} nor sh {slow}: " + ", ".join(bad)


def test_runnable_blocks_run_against_a_temp_root(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A page's blocks run in order in one shell (an `export` in one holds for the next, as in
    a reader's terminal); the failing block is named by its line."""
    ran = 0
    for page in PAGES:
        todo = [(text, line) for kind, text, line in blocks(page) if kind == "run"]
        if not todo:
            continue
        work = tmp_path / page.stem
        shutil.copytree(REPO / "manifests", work / "manifests")
        env = _env(tmp_path / f"{page.stem}-volume" / "volenv", tmp_path / f"{page.stem}-home")
        script = "".join(f"echo '@@ block at line {line}' >&2\n{text}\n" for text, line in todo)
        _run_block(script, work, env, str(page.relative_to(REPO)))
        ran += len(todo)
    _say(request, f"docs: ran {ran} runnable shell blocks from {len(PAGES)} pages")
    assert ran >= 10


def test_check_blocks_parse(request: pytest.FixtureRequest) -> None:
    """Blocks that need RunPod, docker, podman or a GPU: bash syntax, and each volenv command
    parses with the CLI (an unknown option or command is named)."""
    checked = cmds = 0
    bad = []
    for page in PAGES:
        for _kind, text, line in blocks(page):
            where = f"{page.relative_to(REPO)}:{line}"
            syntax = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
            if syntax.returncode:
                bad.append(f"{where}: bash -n: {syntax.stderr.strip()}")
            for command in commands(text):
                cmds += 1
                # a placeholder (VOLUME_ID) is fine in docs: the checker's placeholder rule is for hints
                problems = [p for p in hints.problems_of(command, [], {}) if not p.startswith("placeholder")]
                bad += [f"{where}: {command!r}: {p}" for p in problems]
            checked += 1
    _say(request, f"docs: checked {checked} shell blocks, {cmds} volenv commands parsed")
    assert not bad, "\n".join(bad)
    assert cmds >= 30


def test_the_block_checker_catches_a_renamed_flag() -> None:
    assert commands("volenv --root x sync \\\n  --dry-run m.toml && echo ok") == [
        "volenv --root x sync --dry-run m.toml"
    ]
    assert hints.problems_of("volenv sync --dry-runn m.toml", [], {})
    assert hints.problems_of("volenv run --manifest m.toml --verfy full -- true", [], {})
    assert not hints.problems_of("volenv run --manifest m.toml --verify full -- true", [], {})


@pytest.mark.slow
@pytest.mark.pypi
def test_slow_blocks_run(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """README's first command, as a new user runs it: a fresh venv in a copy of the checkout."""
    from conftest import pypi_reachable

    if not pypi_reachable():
        pytest.skip("PyPI is not reachable: the quickstart installs volenv's dependencies")
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    work = tmp_path / "checkout"
    for name in files.stdout.splitlines():
        src = REPO / name
        if src.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / name)
    ran = 0
    env = _env(tmp_path / "unused", tmp_path / "home")
    del env["VOLENV_ROOT"]
    for page in PAGES:
        for kind, text, line in blocks(page):
            if kind == "slow":
                _run_block(text, work, env, f"{page.relative_to(REPO)}:{line}", timeout=900)
                ran += 1
    _say(request, f"docs: ran {ran} slow shell blocks")
    assert ran >= 1


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_links_between_pages_exist() -> None:
    bad = []
    for page in PAGES:
        text = FENCE.sub("", page.read_text())
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{page.name}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


def test_each_page_says_what_it_is_for() -> None:
    for page in (REPO / "docs").glob("*.md"):
        head = page.read_text().split("\n\n")[1]
        assert head.startswith("What this page is for"), page.name


def test_readme_is_a_guide_not_a_manual() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 300


def _all_commands() -> list[str]:
    from typer.main import get_command

    from volenv.cli.app import app

    out = []
    for name, cmd in get_command(app).commands.items():  # type: ignore[attr-defined]
        out.append(name)
        out += [f"{name} {sub}" for sub in getattr(cmd, "commands", {})]
    return out


def test_every_command_help_names_its_docs_page() -> None:
    from volenv.cli.docs import DOCS

    names = _all_commands()
    assert sorted(DOCS) == sorted(names), "cli/docs.py's DOCS and the CLI's commands differ"
    for target in DOCS.values():
        path, _, anchor = target.partition("#")
        assert (REPO / path).exists(), target
        assert not anchor or anchor in _anchors(REPO / path), target
    for name in names:
        proc = subprocess.run(
            [sys.executable, "-m", "volenv", *name.split(), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        flat = " ".join(proc.stdout.split())
        assert f"Docs: {DOCS[name]}" in flat, (name, proc.stdout[-300:])
    top = subprocess.run(
        [sys.executable, "-m", "volenv", "--help"], capture_output=True, text=True, timeout=60
    )
    assert "docs/cli.md" in " ".join(top.stdout.split()) and "docs/runpod.md" in top.stdout.replace("\n", " ")
