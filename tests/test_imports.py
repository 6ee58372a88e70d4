"""pynas' modules import one another in one direction: every `import` of `pynas/`, at module level and
inside functions, read with `ast`; no cycle between modules, nothing imports the CLI, and no layer imports
a layer above it (CLI -> runs -> strategies and their parts -> nn, arch, genotype -> functional -> basics)."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "pynas"

# Highest first. A module takes the layer of the longest prefix listed; a package's __init__ its own entry
# (the root's re-exports nn, arch, genotype and functional). A new module must be placed here.
LAYERS = {
    "pynas.cli": 5, "pynas.__main__": 5,
    "pynas.search.run": 4, "pynas.search.distributed": 4, "pynas.select": 4, "pynas.select.pt": 4,
    "pynas.train": 4, "pynas.analysis": 4, "pynas.bench": 4, "pynas.doctor": 4,
    "pynas.search": 3, "pynas.select.rules": 3, "pynas.select.evaluate": 3, "pynas.nb201_benchmark": 3,
    "pynas.nn": 2, "pynas.arch": 2, "pynas.genotype": 2,
    "pynas.functional": 1,
    "pynas": 2, "pynas._build_info": 0, "pynas.errors": 0, "pynas._optional": 0, "pynas.progress": 0, "pynas.io": 0, "pynas.data": 0, "pynas.tensorboard": 0,
}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(name: str, source: str, is_package: bool = False):
    """Every module name the module ``name`` imports in ``source`` (relative imports resolved), anywhere."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            # `from pkg import sub` imports the module pkg.sub; `from mod import name` the module mod.
            yield from (f"{origin}.{alias.name}" for alias in node.names)
            yield origin


def import_graph() -> dict:
    """{module: the pynas modules it imports}, without a module's imports of the packages that hold it
    (a package's own __init__ is excepted: Python imports it before any of its modules anyway)."""
    known = modules()
    graph = {}
    for name, path in known.items():
        targets = set()
        for imported in imported_names(name, path.read_text(), path.name == "__init__.py"):
            while imported and imported not in known:  # pynas.nn.SearchNetwork -> pynas.nn
                imported = imported.rpartition(".")[0]
            if not imported or imported == name:
                continue
            if not name.startswith(imported + "."):
                targets.add(imported)
        graph[name] = targets
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(name: str) -> int:
    prefixes = [p for p in LAYERS if name == p or (p != "pynas" and name.startswith(p + "."))]
    assert prefixes, f"{name} is in no layer: add it to LAYERS in {__file__}"
    return LAYERS[max(prefixes, key=len)]


def test_the_checker_sees_imports_inside_functions_and_finds_cycles():
    source = "import os\ndef f():\n    from ..search.run import SearchRun\n    from . import sibling\n"
    tree_names = set(imported_names("pynas.select.example", source))
    assert {"os", "pynas.search.run.SearchRun", "pynas.select.sibling"} <= tree_names
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_only_the_entry_point_imports_the_cli():
    importers = sorted(m for m, targets in import_graph().items() if "pynas.cli" in targets)
    assert importers == ["pynas.__main__"]


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_module_imports_a_layer_above_it(module):
    above = sorted(t for t in import_graph()[module] if t.startswith("pynas") and layer(t) > layer(module))
    assert not above, f"{module} (layer {layer(module)}) imports {above}"


def test_the_search_run_is_handed_selection_memory_and_drawings():
    """`pynas search`'s run imports nothing of selection, training, analysis or the benchmarks."""
    targets = import_graph()["pynas.search.run"]
    assert not [t for t in targets if t.split(".")[1] in ("select", "train", "analysis", "bench", "cli")]
