"""The parts of volenv and which may import which (README "Architecture"), read from the source
with a small `ast` walk: every import is an edge, the ones inside functions too, so a lazy import
cannot hide a circle. Each failure names the offending edge (importer -> imported, file:line)."""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PKG_DIR = Path(__file__).resolve().parents[1] / "src" / "volenv"

DESIGN = PKG_DIR.parents[1] / "docs" / "design.md"

# The fast path: what `python -m volenv run` imports before it execs: the entry point, the run
# module and rootfind (which main() imports for `run`) and their module-level imports, all the way down.
FAST_ROOT = "volenv.__main__"
FAST_ROOTS = (FAST_ROOT, "volenv.start.run", "volenv.store.rootfind")
# Standard modules the fast path must not load: `json` pulls in `re`, `enum` and `functools`, and
# `typing`/`hashlib` are as slow (the C modules _json and _sha256 do the work instead).
FAST_FORBIDDEN_STDLIB = {"json", "re", "typing", "hashlib", "enum", "functools", "dataclasses", "pathlib"}
# The fast path's modules (docs/design.md "The fast path") and the only lazy (function-level)
# imports each may make, exactly as the design lists them: a new lazy import on the `run` path is
# a decision the design has to state first.
FAST_MODULES = (
    "volenv.__main__",
    "volenv.globalargs",
    "volenv.start.run",
    "volenv.start.activation",
    "volenv.start.startcheck",
    "volenv.store.rootfind",
    "volenv.store.alias",
    "volenv.store.modelpaths",
    "volenv.store.runpodcache",
    "volenv.manifest.hubnames",
    "volenv.manifest.tree",
    "volenv.base.envvars",
    "volenv.store.sealcheck",
    "volenv.base.leanjson",
    "volenv.base.errors",
    "volenv.base.redact",
)
FAST_LAZY = {
    "volenv.__main__": {"volenv.start.run", "volenv.base.ui", "volenv.cli.app"},
    "volenv.start.run": {
        "volenv.start.materialize",
        "volenv.start.localcopy",
        "volenv.start.provide",
        "volenv.start.startcheck",
        "volenv.start.supervise",
        "volenv.runpod.diagnose",
        "volenv.manifest.parse",
        "volenv.store.paths",
        "volenv.store.rootfind",
        "volenv.build.plan",
        "volenv.build.staging",
        "volenv.store.locks",
        "signal",
        "volenv.base.ui",
        "volenv.base.redact",
        "volenv.base.errors",
        "json",
        "traceback",
        "dataclasses",
        "pathlib",
    },
    "volenv.start.activation": {"volenv.manifest.parse", "volenv.store.integrity", "pathlib"},
    "volenv.store.alias": {
        "volenv.manifest.schema",
        "volenv.manifest.sources",
        "volenv.manifest.tree",
        "volenv.store.volio",
        "volenv.base.ui",
        "pathlib",
    },
    "volenv.start.startcheck": {"threading"},
    "volenv.store.rootfind": {"volenv.base.ui", "volenv.base.errors", "stat"},
    "volenv.store.sealcheck": {"hashlib", "_sha256"},
    "volenv.store.runpodcache": {"hashlib", "fnmatch", "volenv.store.volio"},
    "volenv.base.leanjson": {"json", "_json"},
    "volenv.base.errors": {"volenv.base.redact"},
}
RICH_ONLY = {"volenv.cli.render"}  # the renderer; base/ui.py is its plain stderr backend
TYPER_FOLDER = "volenv.cli."  # the CLI's folder, and only its option declarations
ENTRY = {"volenv", "volenv.__main__", "volenv.globalargs"}  # the package and the entry point
# A module longer than this says why at its top (a docstring paragraph starting "Long:").
MAX_LINES = 600


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
    assert not bad, "a fast-path lazy import docs/design.md does not list:\n  " + shown(list(map(str, bad)))


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
            if top(e.dst) == "rich" and e.src not in RICH_ONLY:
                bad.append(f"{e}: only {sorted(RICH_ONLY)} may import rich")
            if top(e.dst) in ("typer", "click") and not e.src.startswith(TYPER_FOLDER):
                bad.append(f"{e}: only the CLI's folder (volenv/cli/) may import typer")
    assert not bad, "\n  " + shown(bad)


def folder_of(name: str) -> str:
    """`volenv.store.paths` -> `store`; the package itself and the entry point -> `volenv`."""
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and name not in ENTRY) else "volenv"


def folder_table(text: str) -> dict[str, set[str]]:
    """docs/design.md's folder table: `| `folder/` | idea | `a/`, `b/` |` -> {folder: {a, b}}."""
    table: dict[str, set[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].endswith("/`"):
            may = {c.strip().strip("`").rstrip("/") for c in cells[2].split(",") if c.strip().startswith("`")}
            table[cells[0].strip("`").rstrip("/")] = may
    return table


def folder_problems(g: dict[str, list[Edge]], table: dict[str, set[str]]) -> list[str]:
    bad = []
    for name in g:
        f = folder_of(name)
        if f != "volenv" and f not in table:
            bad.append(f"{name}: its folder `{f}/` is not in docs/design.md's table")
    for e in internal(g):
        a, b = folder_of(e.src), folder_of(e.dst)
        if a == b or b == "volenv" or a == "volenv":
            continue  # inside a folder; the package's __version__; the entry point above all
        if b not in table.get(a, set()):
            bad.append(f"{e}: `{a}/` may not import `{b}/` (docs/design.md)")
    return bad


def test_folders_import_only_what_the_design_table_allows() -> None:
    table = folder_table(DESIGN.read_text(encoding="utf-8"))
    assert len(table) >= 10, f"no folder table found in {DESIGN}"
    bad = folder_problems(graph(), table)
    assert not bad, "\n  " + shown(bad)


def test_the_folder_table_is_a_dag() -> None:
    """The table itself: no folder reaches back to itself through the folders it may import."""
    table = folder_table(DESIGN.read_text(encoding="utf-8"))

    def reach(f: str, seen: set[str]) -> set[str]:
        for d in table.get(f, set()):
            if d not in seen:
                seen.add(d)
                reach(d, seen)
        return seen

    loops = [f for f in table if f in reach(f, set())]
    assert not loops, f"folders that import themselves through others: {loops}"


def test_folder_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a lazy import from store/ up into build/ is named."""
    (tmp_path / "x.py").write_text("def f():\n    from volenv.build.sync import sync\n")
    known = {"volenv.store.x", "volenv.build.sync"}
    g = {"volenv.store.x": edges("volenv.store.x", tmp_path / "x.py", known), "volenv.build.sync": []}
    bad = folder_problems(g, {"store": {"base"}, "build": {"store"}})
    assert len(bad) == 1 and "`store/` may not import `build/`" in bad[0] and "lazy" in bad[0], bad


def test_no_module_is_long_without_saying_why() -> None:
    long = []
    for name, path in modules().items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if n > MAX_LINES and "\nLong:" not in "\n" + doc:
            long.append(f"{name} ({n} lines)")
    assert not long, f"modules over {MAX_LINES} lines with no 'Long:' reason at their top: {long}"


def test_commands_never_render_and_nothing_imports_the_cli() -> None:
    """commands return data (never the CLI or the renderer); only the entry point imports the CLI."""
    bad = []
    for e in internal(graph()):
        into_cli = e.dst.startswith(TYPER_FOLDER)
        if into_cli and not e.src.startswith(TYPER_FOLDER) and e.src != FAST_ROOT:
            bad.append(f"{e}: only the entry point imports the CLI")
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
