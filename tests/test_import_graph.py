"""The import graph of poold points one way (docs/DESIGN.md, package map).

Every module under poold/ is parsed (ast, no import executed) and every import is collected:
module-level, function-level ("lazy") and those under `if TYPE_CHECKING:`. Then:

- no cycle among modules through imports that run (module- or function-level; an import only
  under `if TYPE_CHECKING:` never runs, so it cannot close a cycle);
- no forbidden edge, counting every import, typing-only ones included (a type is a dependency):
  `bitcoin` imports nothing of poold but itself and the error base (poold.errors); `node` builds
  on `bitcoin` and imports no pool logic (`work`, `stratum`, `ledger`, `fleet`); `work` imports
  neither `ledger`, `node` nor `stratum`, and `stratum` (built on `work`) imports neither
  `ledger`, `node` nor `fleet`; the fleet does not import the simulator, and the
  simulator imports the fleet only in its documented seams (`SIM_SEAMS`); no package imports
  the daemon or the CLI;
- the pure modules import no asyncio, aiohttp, zmq or database driver.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "poold"

# sim/ modules that bind emulated miners to the fleet on purpose: they may import poold.fleet.
SIM_SEAMS: Mapping[str, str] = {
    "poold.sim.simsite": "an emulated site as a fleet inventory (racks, miners, credentials)",
    "poold.sim.fleet_demo": "the demo's emulated fleet on the fleet's clocks",
    "poold.sim.driver": "SimDriver: the fleet's MinerDriver protocol over a SimAsic, no sockets",
}

# (importer prefix, imported prefix, why not). A prefix matches the module and its submodules.
FORBIDDEN: tuple[tuple[str, str, str], ...] = (
    ("poold.work", "poold.ledger", "work/ produces shares and blocks; the ledger consumes them"),
    ("poold.work", "poold.node", "work/ takes templates (poold.bitcoin.template), not nodes"),
    ("poold.work", "poold.stratum", "stratum/ is built on work/, not the reverse"),
    ("poold.node", "poold.work", "node/ is bitcoind I/O on bitcoin/; pool logic is above it"),
    ("poold.node", "poold.stratum", "node/ is bitcoind I/O on bitcoin/; pool logic is above it"),
    ("poold.node", "poold.ledger", "node/ is bitcoind I/O on bitcoin/; the ledger is above it"),
    ("poold.node", "poold.fleet", "node/ knows nothing of the fleet"),
    ("poold.fleet", "poold.sim", "the fleet controls real firmware; the simulator is a test part"),
    ("poold.fleet", "poold.api", "the fleet raises its own errors; the API maps them to HTTP"),
    ("poold.stratum", "poold.ledger", "the Stratum side hands shares to a sink (work/)"),
    ("poold.stratum", "poold.node", "the Stratum side gets templates through work/, not nodes"),
    ("poold.stratum", "poold.fleet", "the fleet marks sessions through their own seam"),
)
TOP_ONLY = ("poold.daemon", "poold.cli")  # wiring and entry points: imported by no package

# Modules that do no I/O (docs/DESIGN.md: "I/O lives at the edges").
PURE = ("poold.bitcoin", "poold.work", "poold.stratum.framing", "poold.stratum.messages",
        "poold.stratum.codec", "poold.fleet.policy", "poold.ledger.payouts")
IO_LIBRARIES = ("asyncio", "aiohttp", "zmq", "asyncpg", "sqlite3", "socket")


@dataclass(frozen=True, slots=True)
class Import:
    source: str  # importing module
    target: str  # imported module (poold.* resolved to a module; others: the top-level name)
    line: int
    typing_only: bool  # under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        kind = " (TYPE_CHECKING)" if self.typing_only else ""
        return f"{self.source}:{self.line} imports {self.target}{kind}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(source: str, module: str, is_package: bool,
               modules: Iterable[str]) -> list[Import]:
    """Every import statement of one module's source, wherever it sits."""
    known = set(modules)

    def resolve(name: str) -> str:
        if not name.startswith("poold"):
            return name.partition(".")[0]
        while name not in known and "." in name:
            name = name.rpartition(".")[0]
        return name

    found: list[Import] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, typing_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, resolve(alias.name), node.lineno, typing_only))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                target = sub if sub in known else base
                found.append(Import(module, resolve(target), node.lineno, typing_only))
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only)

    visit(ast.parse(source), False)
    return [i for i in found if i.target != module]


def all_imports(root: Path = ROOT) -> list[Import]:
    paths = sorted((root / "poold").rglob("*.py"))
    modules = {module_name(p, root): p for p in paths}
    out: list[Import] = []
    for name, path in modules.items():
        out += imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py",
                          modules)
    return out


def cycles(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start, targets in graph.items():
        if start in index:
            continue
        work = [(start, iter(targets))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(imports: Iterable[Import]) -> list[str]:
    """Every forbidden edge, as a line naming the importing module, the line and the rule."""
    out: list[str] = []
    for imp in imports:
        s, t = imp.source, imp.target
        for src, dst, why in FORBIDDEN:
            if _within(s, src) and _within(t, dst):
                out.append(f"{imp}: {why}")
        if _within(s, "poold.bitcoin") and t.startswith("poold") and not (
                _within(t, "poold.bitcoin") or t == "poold.errors"):
            out.append(f"{imp}: bitcoin/ is the pure base; it imports nothing above it")
        if _within(s, "poold.sim") and _within(t, "poold.fleet") and s not in SIM_SEAMS:
            out.append(f"{imp}: only the seams in SIM_SEAMS may import the fleet")
        if any(_within(t, top) for top in TOP_ONLY) and s.count(".") > 1:
            out.append(f"{imp}: no package imports the daemon or the CLI")
        if any(_within(s, p) for p in PURE) and t in IO_LIBRARIES:
            out.append(f"{imp}: a pure module does no I/O")
    return list(dict.fromkeys(out))


# -- the checker checks (a test that cannot fail proves nothing)


def test_parser_sees_lazy_typing_and_relative_imports() -> None:
    src = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "from poold.work import jobs\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n"
        "    from poold.ledger.records import Credit\n"
        "def f() -> None:\n"
        "    import poold.node.rpc\n"
        "    from asyncio import sleep\n"
    )
    modules = ["poold.x.y", "poold.x.sibling", "poold.work.jobs", "poold.ledger.records",
               "poold.node.rpc"]
    got = {(i.target, i.typing_only) for i in imports_of(src, "poold.x.y", False, modules)}
    assert got == {("__future__", False), ("typing", False), ("poold.work.jobs", False),
                   ("poold.x.sibling", False), ("poold.ledger.records", True),
                   ("poold.node.rpc", False), ("asyncio", False)}


def test_checker_finds_a_cycle_and_a_forbidden_edge() -> None:
    assert cycles([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]) == [["a", "b", "c"]]
    assert cycles([("a", "b"), ("b", "c")]) == []
    bad = [Import("poold.work.jobs", "poold.node.rpc", 3, True),
           Import("poold.sim.driver", "poold.fleet.clock", 4, False),
           Import("poold.sim.miner", "poold.fleet.clock", 5, False),
           Import("poold.bitcoin.tx", "poold.metrics", 6, False),
           Import("poold.bitcoin.tx", "poold.errors", 6, False),
           Import("poold.fleet.other", "poold.sim.simsite", 10, False),
           Import("poold.ledger.cli", "poold.cli", 7, False),
           Import("poold.bitcoin.hashes", "asyncio", 8, False)]
    found = violations(bad)
    assert len(found) == 6, found
    assert not any("poold.sim.driver" in v for v in found)  # a documented seam


# -- poold itself


def test_the_real_graph_is_parsed() -> None:
    edges = {(i.source, i.target) for i in all_imports()}
    # A function-level import in the daemon and a module-level one in the pool core.
    assert ("poold.daemon", "poold.api") in edges
    assert ("poold.work.jobs", "poold.bitcoin.template") in edges
    assert len(edges) > 300


def test_no_import_cycles() -> None:
    runtime = [i for i in all_imports() if not i.typing_only]
    found = cycles((i.source, i.target) for i in runtime if i.target.startswith("poold"))
    detail = [
        f"cycle {' <-> '.join(c)}: " + "; ".join(
            str(i) for i in runtime if i.source in c and i.target in c)
        for c in found
    ]
    assert not found, "\n".join(detail)


def test_no_forbidden_edges() -> None:
    found = violations(all_imports())
    assert not found, "\n".join(found)


def test_sim_seams_exist() -> None:
    def path(m: str) -> Path:
        return (PACKAGE / Path(*m.split(".")[1:])).with_suffix(".py")

    missing = [m for m in SIM_SEAMS if not path(m).exists()]
    assert not missing, missing
