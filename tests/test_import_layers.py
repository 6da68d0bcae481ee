"""The package's import graph follows DESIGN.md's data path, has no cycles, and no module imports
another module's private names.

Every import statement of every module counts, lazy ones (inside functions) included: a cycle that
only a lazy import hides is still a cycle for the reader.

The data path, top to bottom (DESIGN.md, "The way data flows")::

    formats.onnx -> compress -> formats.zsk -> engine -> kernels, reference

A module may import modules of its own stage or of a stage below it, never one above it, and
``kernels`` and ``reference`` never import each other. The foundation (errors, the IR in model and
ops, window geometry, quantization math, shape inference, the memory budget, the version) sits
beside the path: every stage may import it, and it imports nothing but itself. The public API (the
package root, the CLI, bench, demo, report) sits above the path and may import anything.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import pytest

import zeroskip

ROOT = Path(zeroskip.__file__).parent

FOUNDATION = ("zeroskip._version", "zeroskip.budget", "zeroskip.errors", "zeroskip.geometry",
              "zeroskip.model", "zeroskip.ops", "zeroskip.quantmath", "zeroskip.shapes")
API = ("zeroskip", "zeroskip.__main__", "zeroskip.bench", "zeroskip.cli", "zeroskip.dask",
       "zeroskip.demo", "zeroskip.report", "zeroskip.sweep")
STAGES = (  # top of the data path first
    ("formats.onnx", ("zeroskip.formats.onnx", "zeroskip.formats.onnx_quant",
                      "zeroskip.formats.onnx_common")),
    ("compress", ("zeroskip.compress",)),
    ("formats.zsk", ("zeroskip.formats", "zeroskip.formats.zsk")),
    ("engine", ("zeroskip.engine",)),
    ("kernels", ("zeroskip.kernels",)),
    ("reference", ("zeroskip.reference",)),
)
BESIDE = {("kernels", "reference"), ("reference", "kernels")}
"""Stage pairs at the same depth that must not import each other."""

EXCEPTIONS = {
    ("zeroskip.engine.session", "zeroskip.formats.zsk"):
        "Session(path) loads a .zsk file, and a pickled Session travels as .zsk bytes (DESIGN.md, "
        "'Scaling out')",
    ("zeroskip.engine.session", "zeroskip.formats.onnx"):
        "Session('model.onnx') imports the file first",
}
"""(importer, imported) pairs that go up the path on purpose, with the reason."""


def _modules() -> dict[str, Path]:
    found = {"zeroskip": ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix="zeroskip."):
        path = ROOT.joinpath(*info.name.split(".")[1:])
        found[info.name] = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
    return found


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    parts = package.split(".")
    base = parts[:len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, str | None]]:
    """(imported module, name taken from it or None) for every import statement of ``module``
    that reaches into zeroskip."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub, None) if sub in MODULES else (target, alias.name))
    return [(target, name) for target, name in found if target.split(".")[0] == "zeroskip"]


GRAPH = {module: sorted({target for target, _ in _imports(module)} - {module}) for module in MODULES}


def _stage(module: str) -> str | None:
    """The data-path stage of ``module`` ("foundation", "api", a stage name), by longest prefix."""
    if module in FOUNDATION:
        return "foundation"
    if module in API:
        return "api"
    best, best_len = None, -1
    for stage, prefixes in STAGES:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = stage, len(prefix)
    return best


def test_every_module_has_a_place_on_the_path():
    assert [m for m in MODULES if _stage(m) is None] == []


def test_no_module_imports_one_above_it():
    depth = {stage: i for i, (stage, _) in enumerate(STAGES)}
    wrong = []
    for module, targets in GRAPH.items():
        here = _stage(module)
        for target in targets:
            there = _stage(target)
            if (module, target) in EXCEPTIONS or here == "api" or there == "foundation":
                continue
            if here == "foundation" or there == "api":
                wrong.append(f"{module} ({here}) imports {target} ({there})")
            elif depth[there] < depth[here] or (here, there) in BESIDE:
                wrong.append(f"{module} ({here}) imports {target} ({there})")
    assert wrong == []


def test_the_exceptions_are_still_needed():
    """An exception nobody uses any more is removed, so the list stays a true account."""
    assert [pair for pair in EXCEPTIONS if pair[1] not in GRAPH[pair[0]]] == []


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph: every one is a single module."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in MODULES:
                continue
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
                cycles.append(sorted(component))

    for module in sorted(MODULES):
        if module not in index:
            visit(module)
    assert cycles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_across_modules(module):
    """``from x import _name`` only within one module's own package-private helpers: a name with a
    leading underscore belongs to the module that defines it."""
    taken = [(target, name) for target, name in _imports(module)
             if name is not None and name.startswith("_") and not name.startswith("__")]
    assert taken == []
