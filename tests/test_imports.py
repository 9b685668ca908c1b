"""The import graph of fedlabel/, server/, clients/ and benchmarks/: no cycles between modules or
between fedlabel's subpackages, and nothing but ``python -m fedlabel`` imports the CLI.

Every import statement counts, function-level ones included (a lazy import is still a
dependency); imports under ``if TYPE_CHECKING:`` do not (they never run). Importing ``a.b.c``
also runs ``a.b``'s ``__init__``, so it is an edge to ``a.b`` too, unless ``a.b`` is the
importer's own package. At the package level each subpackage (fedlabel.data, fedlabel.llp, ...)
is one node, each top-level module another, and server, clients and benchmarks one each.
Benchmarks are scripts run from their folder: ``benchmarks/throughput.py`` is ``throughput``.
``python tests/test_imports.py`` prints the cycles it finds (nothing when there are none).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedlabel", "server", "clients")
SCRIPTS = ("benchmarks",)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, for every .py file of PACKAGES and SCRIPTS."""
    found = {}
    for top in PACKAGES:
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for top in SCRIPTS:
        found |= {path.stem: path for path in sorted((root / top).glob("*.py"))}
    return found


def _parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]
) -> set[str]:
    """What an import statement loads: modules, and for `from x import y` x.y if that is a
    module, else x (y is then a name defined in x)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = node.module or ""
    if node.level:
        package = module.split(".")[: len(module.split(".")) + is_package - node.level]
        base = ".".join([*package, *([node.module] if node.module else [])])
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules of :func:`modules` it imports."""
    files = modules(root)
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        guards = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
        ]
        typing_only = {id(n) for guard in guards for n in ast.walk(guard)}
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in typing_only:
                targets = _targets(node, module, path.name == "__init__.py", files.keys())
                deps |= {d for t in targets for d in {t} | (_parents(t) - _parents(module))}
        graph[module] = (deps & files.keys()) - {module}
    return graph


def package_of(module: str) -> str:
    """fedlabel.data.bags -> fedlabel.data; server.server_app -> server; throughput ->
    benchmarks."""
    parts = module.split(".")
    if parts[0] == "fedlabel":
        return ".".join(parts[:2])
    return parts[0] if parts[0] in PACKAGES else SCRIPTS[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {package_of(m): set() for m in graph}
    for module, deps in graph.items():
        packages[package_of(module)] |= {package_of(d) for d in deps} - {package_of(module)}
    return packages


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = [stack.pop()]
            while component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_imports_and_skips_type_checking_ones() -> None:
    graph = import_graph()
    assert "fedlabel.engines.flower" in graph["fedlabel.api"]  # imported inside run()
    assert graph["fedlabel"] == {"fedlabel.api"} and "fedlabel" in graph["attacks"]
    assert (
        "fedlabel.config" in graph["server.server_app"] and "throughput" in graph["client_overhead"]
    )
    assert "fedlabel.config" not in graph["fedlabel.privacy.noise"]  # under TYPE_CHECKING
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]


def test_no_module_cycles() -> None:
    assert cycles(import_graph()) == []


def test_no_package_cycles() -> None:
    assert cycles(package_graph(import_graph())) == []


def test_nothing_imports_the_cli() -> None:
    """The CLI is a thin layer over fedlabel.api; only `python -m fedlabel` starts it."""
    graph = import_graph()
    assert [m for m, deps in graph.items() if "fedlabel.cli" in deps] == ["fedlabel.__main__"]


if __name__ == "__main__":
    graph = import_graph()
    for level, g in (("module", graph), ("package", package_graph(graph))):
        for component in cycles(g):
            print(f"{level} cycle: {' '.join(component)}")
            for v in component:
                print(f"    {v} -> {' '.join(sorted(g[v] & set(component)))}")
    print("imports of fedlabel.cli:", " ".join(m for m, d in graph.items() if "fedlabel.cli" in d))
