"""The layering rule of the package, enforced: every import (module level or inside a function) points to a
lower layer or stays inside its own package, and no import cycle exists between modules.

    the C++ extension
      < common (errors, atomic IO, config loading, HF directory IO, itemic formats)
      < rawdata (raw recommendation logs), runtime (process groups, signals, metrics, checkpoint commit, loop)
      < itemic, data, models, tokenizer
      < decoding
      < pretrain, posttrain, convert
      < eval, scaling
      < demo, doctor, the CLI
See docs/architecture.md."""

from __future__ import annotations

import ast
import os
from collections import defaultdict

from conftest import REPO

LAYERS = [
    {"__init__", "_cpp"},  # the package's version string and its C++ extension: they import nothing
    {"common"},
    {"rawdata", "runtime"},
    {"itemic", "data", "models", "tokenizer"},
    {"decoding"},
    {"pretrain", "posttrain", "convert"},
    {"eval", "scaling"},
    {"demo", "doctor", "entry"},
]
RANK = {pkg: rank for rank, layer in enumerate(LAYERS) for pkg in layer}
PACKAGE_ROOT = os.path.join(REPO, "megarec")


def _modules() -> dict[str, str]:
    """dotted module name → file path, for every module of the package."""
    out = {}
    for folder, _, files in os.walk(PACKAGE_ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    out["megarec._cpp"] = os.path.join(PACKAGE_ROOT, "_cpp")  # the C++ extension: imports nothing
    return out


def _imports(path: str, module: str, is_package: bool) -> set[str]:
    """Every megarec module a file imports, resolved to dotted names (relative imports included)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "megarec")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "megarec":
                continue
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return "entry" if parts[1] in ("cli", "__main__") else parts[1]  # the console script and `python -m`


def _graph():
    """(modules, module → imported modules); also the imports naming no module, attribute or package."""
    modules = _modules()
    graph, missing = defaultdict(set), []
    for module, path in modules.items():
        if module == "megarec._cpp":
            continue
        for target in _imports(path, module, path.endswith("__init__.py")):
            name = target
            while target and target not in modules:  # `from pkg import name` where name is not a module
                target = target.rpartition(".")[0]
            if target and target != module:
                graph[module].add(target)
            if target != name and not _defines(modules.get(target), name.rpartition(".")[2]):
                missing.append(f"{module} imports {name}, which does not exist")
    return modules, graph, missing


def _defines(path, name: str) -> bool:
    """Whether module file `path` binds `name` at top level (def, class, assignment or import)."""
    if not path or not os.path.isfile(path):
        return False
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
            if any(isinstance(t, ast.Name) and t.id == name for t in names):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name.split(".")[0]) == name for a in node.names):
                return True
    return False


def test_every_import_names_something_that_exists():
    _, _, missing = _graph()
    assert not missing, "\n".join(sorted(set(missing)))


def test_every_package_has_a_layer():
    modules, _, _ = _graph()
    unplaced = sorted({_package(m) for m in modules} - set(RANK))
    assert not unplaced, f"packages without a layer in tests/test_architecture.py: {unplaced}"


def test_imports_point_down_or_stay_inside_their_package():
    modules, graph, _ = _graph()
    bad = []
    for module, targets in graph.items():
        src = _package(module)
        for target in targets:
            dst = _package(target)
            if dst != src and RANK[dst] >= RANK[src]:
                kind = "sideways" if RANK[dst] == RANK[src] else "upward"
                bad.append(f"{module} -> {target} ({kind}: {src} is in layer {RANK[src]}, {dst} in {RANK[dst]})")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    modules, graph, _ = _graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t) :] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(modules):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
