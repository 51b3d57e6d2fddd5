"""The parts of volenv and which may import which (README "Architecture"), read from the source
with a small `ast` walk: every import is an edge, the ones inside functions too, so a lazy import
cannot hide a circle. Each failure names the offending edge (importer -> imported, file:line)."""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PKG_DIR = Path(__file__).resolve().parents[1] / "src" / "volenv"

# The fast path: what `python -m volenv run` imports before it execs: the entry point, activate
# and rootfind (which main() and main_fast() import for `run`) and their module-level imports, all the way down.
FAST_ROOT = "volenv.__main__"
FAST_ROOTS = (FAST_ROOT, "volenv.start.activate", "volenv.store.rootfind")
# Standard modules the fast path must not load: `json` pulls in `re`, `enum` and `functools`, and
# `typing`/`hashlib` are as slow (the C modules _json and _sha256 do the work instead).
FAST_FORBIDDEN_STDLIB = {"json", "re", "typing", "hashlib", "enum", "functools", "dataclasses", "pathlib"}
# The only lazy edges allowed to close a circle: `run --on-missing build` reaches up into the sync
# command (which builds, then takes the start trace through activation again).
CYCLE_EXEMPT = {("volenv.start.activate", "volenv.commands.sync")}
# The fast path's modules (README "Architecture") and the only lazy (function-level) imports each
# may make, exactly as the README lists them: a new lazy import on the `run` path is a decision
# the README has to state first.
FAST_MODULES = (
    "volenv.__main__",
    "volenv.cli.globalargs",
    "volenv.start.activate",
    "volenv.store.rootfind",
    "volenv.store.alias",
    "volenv.store.modelpaths",
    "volenv.base.envvars",
    "volenv.store.sealcheck",
    "volenv.base.leanjson",
    "volenv.base.errors",
    "volenv.base.redact",
)
FAST_LAZY = {
    "volenv.__main__": {"volenv.start.activate", "volenv.base.ui", "volenv.cli.app"},
    "volenv.start.activate": {
        "volenv.start.materialize",
        "volenv.start.localcopy",
        "volenv.runpod.diagnose",
        "volenv.store.integrity",
        "volenv.manifest.parse",
        "volenv.store.paths",
        "volenv.build.sync",
        "volenv.commands.sync",
        "volenv.store.rootfind",
        "volenv.base.ui",
        "volenv.base.redact",
        "volenv.base.errors",
        "json",
        "traceback",
        "dataclasses",
        "pathlib",
    },
    "volenv.store.alias": {"volenv.manifest.parse", "volenv.store.volio"},
    "volenv.store.rootfind": {"volenv.base.ui", "volenv.base.errors", "stat"},
    "volenv.store.sealcheck": {"hashlib", "_sha256"},
    "volenv.base.leanjson": {"json", "_json"},
    "volenv.base.errors": {"volenv.base.redact"},
}
CLI = "volenv.cli.app"
RENDERERS = {"volenv.cli.render", "volenv.base.ui"}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    where: str  # file:line
    lazy: bool  # inside a function

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} ({self.where}{', lazy' if self.lazy else ''})"


def modules(pkg_dir: Path = PKG_DIR) -> dict[str, Path]:
    out = {}
    for path in sorted(pkg_dir.rglob("*.py")):
        parts = ["volenv", *path.relative_to(pkg_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def edges(name: str, path: Path, known: set[str]) -> list[Edge]:
    """Every import in the module, resolved to a volenv module where it names one (`from . import
    store` is an edge to volenv.store), else to the imported top-level name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Edge] = []

    def add(target: str, node: ast.stmt, lazy: bool) -> None:
        rel = path.relative_to(PKG_DIR.parent) if path.is_relative_to(PKG_DIR.parent) else path
        found.append(Edge(name, target, f"{rel}:{node.lineno}", lazy))

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if (
                isinstance(child, ast.If)
                and isinstance(child.test, ast.Name)
                and child.test.id == "TYPE_CHECKING"
            ):
                continue  # annotations only: never imported at run time
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child, lazy)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                for alias in child.names:
                    sub = f"{mod}.{alias.name}"
                    add(sub if sub in known else mod, child, lazy)
            visit(child, inner)

    visit(tree, False)
    return found


def graph() -> dict[str, list[Edge]]:
    mods = modules()
    return {name: edges(name, path, set(mods)) for name, path in mods.items()}


def internal(g: dict[str, list[Edge]]) -> list[Edge]:
    return [e for es in g.values() for e in es if e.dst in g and e.dst != e.src]


def shown(problems: list[str]) -> str:
    """Each offending edge once (`from x import a, b` is one edge)."""
    return "\n  ".join(dict.fromkeys(problems))


def top(name: str) -> str:
    return name.split(".")[0]


def find_cycle(g: dict[str, list[Edge]]) -> list[Edge] | None:
    """One circle of imports (a list of edges), or None."""
    out: dict[str, list[Edge]] = {n: [] for n in g}
    for e in internal(g):
        if (e.src, e.dst) not in CYCLE_EXEMPT:
            out[e.src].append(e)
    state: dict[str, int] = {}
    stack: list[Edge] = []

    def dfs(n: str) -> list[Edge] | None:
        state[n] = 1
        for e in out[n]:
            if state.get(e.dst) == 1:
                start = next(i for i, s in enumerate(stack) if s.src == e.dst) if e.dst != n else len(stack)
                return [*stack[start:], e]
            if e.dst not in state:
                stack.append(e)
                found = dfs(e.dst)
                if found:
                    return found
                stack.pop()
        state[n] = 2
        return None

    for n in sorted(out):
        if n not in state:
            c = dfs(n)
            if c:
                return c
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import circle:\n  " + "\n  ".join(str(e) for e in cycle or [])


def test_fast_path_imports_no_third_party_or_slow_module() -> None:
    """What `run` imports at module level, from the entry point down: standard modules only,
    and none of the slow ones."""
    g = graph()
    seen, todo, bad = set(FAST_ROOTS), list(FAST_ROOTS), []
    while todo:
        for e in g[todo.pop()]:
            if e.lazy:
                continue
            if e.dst in g:
                if e.dst not in seen:
                    seen.add(e.dst)
                    todo.append(e.dst)
            elif top(e.dst) == "__future__":
                continue
            elif top(e.dst) not in sys.stdlib_module_names or top(e.dst) in FAST_FORBIDDEN_STDLIB:
                bad.append(e)
    assert {"volenv.store.sealcheck", "volenv.base.leanjson"} <= seen
    assert not bad, "the fast path (module-level imports from volenv.__main__) imports:\n  " + shown(
        list(map(str, bad))
    )


def lazy_outside(g: dict[str, list[Edge]]) -> list[Edge]:
    """The fast path's function-level imports that the README does not list."""
    return [e for m in FAST_MODULES for e in g[m] if e.lazy and e.dst not in FAST_LAZY.get(m, set())]


def test_fast_path_lazy_imports_are_the_documented_ones() -> None:
    bad = lazy_outside(graph())
    assert not bad, "a fast-path lazy import README's Architecture does not list:\n  " + shown(
        list(map(str, bad))
    )


def test_lazy_import_rule_catches_a_new_one(tmp_path: Path) -> None:
    """The checker itself: a function-level import the list lacks is named."""
    (tmp_path / "rootfind.py").write_text("def f():\n    import hashlib\n    from volenv.base import ui\n")
    g = {m: [] for m in FAST_MODULES}
    g["volenv.store.rootfind"] = edges("volenv.store.rootfind", tmp_path / "rootfind.py", {"volenv.base.ui"})
    assert [e.dst for e in lazy_outside(g)] == ["hashlib"]


def test_only_render_knows_rich_and_only_cli_knows_typer() -> None:
    bad = []
    for es in graph().values():
        for e in es:
            if top(e.dst) == "rich" and e.src not in RENDERERS:
                bad.append(f"{e}: only {sorted(RENDERERS)} may import rich")
            if top(e.dst) in ("typer", "click") and e.src != CLI:
                bad.append(f"{e}: only {CLI} may import typer")
    assert not bad, "\n  " + shown(bad)


def test_layers_import_downwards() -> None:
    """core never imports commands, the CLI or the renderer; commands never the CLI or the
    renderer; nothing imports the CLI but the entry point."""
    bad = []
    for e in internal(graph()):
        if (e.src, e.dst) in CYCLE_EXEMPT:
            continue
        src_cmd, dst_cmd = e.src.startswith("volenv.commands"), e.dst.startswith("volenv.commands")
        if e.dst == CLI and e.src != FAST_ROOT:
            bad.append(f"{e}: only the entry point imports the CLI")
        elif src_cmd and (e.dst == CLI or e.dst in RENDERERS - {"volenv.base.ui"}):
            bad.append(f"{e}: commands return data; the CLI renders it")
        elif not src_cmd and e.src not in (CLI, FAST_ROOT) and (dst_cmd or e.dst == "volenv.cli.render"):
            bad.append(f"{e}: the core is below the commands and the renderer")
    assert not bad, "\n  " + shown(bad)


def test_the_walk_sees_lazy_imports_and_cycles(tmp_path: Path) -> None:
    """The checker itself: a circle closed by a function-level import is found and named."""
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n")
    known = {"volenv.a", "volenv.b"}
    g = {
        "volenv.a": edges("volenv.a", tmp_path / "a.py", known),
        "volenv.b": edges("volenv.b", tmp_path / "b.py", known),
    }
    cycle = find_cycle(g)
    assert cycle is not None and {(e.src, e.dst) for e in cycle} == {
        ("volenv.a", "volenv.b"),
        ("volenv.b", "volenv.a"),
    }
    assert [e.lazy for e in g["volenv.b"]] == [True]
