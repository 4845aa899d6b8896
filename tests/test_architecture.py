"""The architecture's goals, checked on the source: the runtime package has no import cycles, stays
out of the bench harness and torch, keeps its layers (frames at the bottom; sources and layouts never
reach the engine), and no runtime module grows past one screenful of structure (450 lines).

The import graph is read with ``ast`` from the files, so it counts every import: the lazy ones inside
functions and the ``if TYPE_CHECKING:`` ones too (two modules that name each other's types are as
tangled for a reader as two that import each other).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from .conftest import REPO

# The installed edge_thyroid namespace: package name -> folder (pyproject's package-dir).
PACKAGE_DIRS = {"edge_thyroid": REPO / "edge_thyroid", "edge_thyroid.export": REPO / "export",
                "edge_thyroid.kernels": REPO / "kernels"}
RUNTIME = REPO / "edge_thyroid"
MAX_RUNTIME_LINES = 450


def module_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            if package == "edge_thyroid" and parts[:1] in (("export",), ("kernels",)):
                continue  # never shadows the mapped packages; listed for completeness only
            files[name] = path
    return files


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names of everything ``module`` imports (``from X import y`` gives X and X.y)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it makes Python execute (the module and the packages above it)."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges: set[str] = set()
        for target in imported_names(tree, name, path.name == "__init__.py"):
            parts = target.split(".")
            for end in range(1, len(parts) + 1):
                candidate = ".".join(parts[:end])
                # Importing a.b.c runs a and a.b first, unless we are inside them already.
                if candidate in files and candidate != name and not name.startswith(candidate + "."):
                    edges.add(candidate)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_reads_relative_lazy_and_type_checking_imports():
    tree = ast.parse("from .x import y\nfrom ..z import w\ndef f():\n    import q.r\n"
                     "if TYPE_CHECKING:\n    from .types import h\n")
    names = imported_names(tree, "pkg.sub.mod", is_package=False)
    assert {"pkg.sub.x", "pkg.sub.x.y", "pkg.z", "pkg.z.w", "q.r", "pkg.sub.types"} <= names


def test_no_import_cycles_in_the_runtime_namespace():
    graph = import_graph()
    assert "edge_thyroid.stream.pipeline" in graph and "edge_thyroid.export.calibration" in graph
    assert cycles(graph) == []


def test_layers_frames_at_the_bottom_sources_and_layouts_never_reach_the_engine():
    graph = import_graph()
    assert graph["edge_thyroid.frames"] <= {"edge_thyroid.errors"}
    heavy = {"edge_thyroid.engine", "edge_thyroid.backends", "edge_thyroid.bundle", "edge_thyroid.kernels.onnx_graph"}
    for module in ("edge_thyroid.layout", "edge_thyroid.sources", "edge_thyroid.sources.capture",
                   "edge_thyroid.sources.dicom", "edge_thyroid.sources.folder", "edge_thyroid.sources.synthetic"):
        assert not reachable(graph, module) & heavy, module
    # The sinks read the records; they do not import the stream that produces them.
    assert "edge_thyroid.stream.pipeline" not in reachable(graph, "edge_thyroid.sinks")


def test_the_bench_harness_is_outside_the_runtime():
    """Only the thin CLI command names edge_thyroid_bench, and it imports it when it runs."""
    importers = {name for name, path in module_files().items()
                 if any(n.split(".")[0] == "edge_thyroid_bench"
                        for n in imported_names(ast.parse(path.read_text(encoding="utf-8")), name,
                                                path.name == "__init__.py"))}
    assert importers == {"edge_thyroid.commands.bench"}
    source = (RUNTIME / "commands" / "bench.py").read_text(encoding="utf-8")
    assert not re.search(r"^(import|from) edge_thyroid_bench", source, re.M)  # never at module level


def test_no_torch_under_the_runtime_folder():
    """export/ and the bench package may use torch; nothing under edge_thyroid/ imports it."""
    pattern = re.compile(r"^\s*(import|from)\s+(torch|torchvision)\b", re.M)
    offenders = []
    for path in sorted(RUNTIME.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        names = imported_names(ast.parse(text), "m", False)
        if pattern.search(text) or any(n.split(".")[0] in ("torch", "torchvision") for n in names):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_no_runtime_module_over_450_lines():
    sizes = {str(p.relative_to(REPO)): len(p.read_text(encoding="utf-8").splitlines()) for p in RUNTIME.rglob("*.py")}
    assert len(sizes) > 30
    assert {name: n for name, n in sizes.items() if n > MAX_RUNTIME_LINES} == {}
