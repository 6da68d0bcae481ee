"""The reference's layout: every kernel module has a mirror of the same name in
``zeroskip.reference.kernels`` with exactly its kernels' references, and no reference module reaches
for a kernel or for another module's private names.

Two neighbours check the registries as wholes: ``test_kernels_matmul`` (``KERNELS`` and
``REFERENCES`` have the same keys) and ``test_reference_ops`` (every IR op has a reference op).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import zeroskip.kernels
import zeroskip.reference
import zeroskip.reference.kernels


def _public_modules(package) -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(package.__path__)
                  if not info.name.startswith("_"))


KERNEL_MODULES = [name for name in _public_modules(zeroskip.kernels)
                  if hasattr(importlib.import_module(f"zeroskip.kernels.{name}"), "KERNELS")]


@pytest.mark.parametrize("name", KERNEL_MODULES)
def test_each_kernel_module_has_a_mirror_of_the_same_name(name):
    kernels = importlib.import_module(f"zeroskip.kernels.{name}")
    try:
        mirror = importlib.import_module(f"zeroskip.reference.kernels.{name}")
    except ModuleNotFoundError:
        pytest.fail(f"kernels/{name}.py has no mirror zeroskip/reference/kernels/{name}.py")
    references = getattr(mirror, "REFERENCES", {})
    assert set(references) == set(kernels.KERNELS), (
        f"reference/kernels/{name}.py: missing {sorted(set(kernels.KERNELS) - set(references))}, "
        f"not kernels of kernels/{name}.py {sorted(set(references) - set(kernels.KERNELS))}")


def test_every_mirror_has_a_kernel_module():
    stray = set(_public_modules(zeroskip.reference.kernels)) - set(KERNEL_MODULES)
    assert not stray, f"reference/kernels/ modules without a kernel module: {sorted(stray)}"


def _imports(path: Path, package: str):
    """(line, absolute module, imported names) of every import in the file at ``path``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            yield node.lineno, module, [alias.name for alias in node.names]


REFERENCE_FILES = sorted(Path(zeroskip.reference.__file__).parent.rglob("*.py"))


@pytest.mark.parametrize("path", REFERENCE_FILES,
                         ids=lambda p: str(p.relative_to(Path(zeroskip.reference.__file__).parent)))
def test_references_import_no_kernel_and_no_private_name(path):
    root = Path(zeroskip.__file__).parent.parent
    dotted = ".".join(path.relative_to(root).with_suffix("").parts)
    is_package = path.name == "__init__.py"
    package = dotted.removesuffix(".__init__") if is_package else dotted.rsplit(".", 1)[0]
    for line, module, names in _imports(path, package):
        where = f"{path.relative_to(root)}:{line}"
        assert not module.startswith(("zeroskip.kernels", "zeroskip.engine", "zeroskip.formats")), \
            f"{where} imports {module}: references never call kernels, engine or formats"
        private = [n for n in names if n.startswith("_") and module != "__future__"]
        assert not private, f"{where} imports private names {private} from {module}"
