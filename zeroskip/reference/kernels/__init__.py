"""Mirrors of the Numba kernels: ``reference/kernels/X.py`` mirrors ``zeroskip/kernels/X.py``.

Each module's ``REFERENCES`` has exactly the keys of its kernel module's ``KERNELS``. A reference
takes the kernel's operands (not its output or scratch buffers) and returns what the kernel writes:

* for an f32 kernel, the same result in float64, often through an op of ``zeroskip.reference.ops``;
* for an i8 kernel, the integer arithmetic spelled out step by step in int64 (accumulate, fold the
  bias, multiply, round, shift, clamp), which the kernel must match bit for bit.

A mirror never calls a kernel or a kernel helper, so a bug they shared could not hide
(docs/quantization.md derives the integer steps). ``REFERENCES`` here is the union of the modules'.
"""

from __future__ import annotations

import importlib
import pkgutil


def _collect_references() -> dict:
    """The union of this package's modules' ``REFERENCES``: kernel name -> reference."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, function in getattr(module, "REFERENCES", {}).items():
            if name in found:
                raise RuntimeError(f"reference {name!r} is defined twice")
            found[name] = function
    return found


REFERENCES = _collect_references()
"""Kernel name -> its reference (same keys as ``zeroskip.kernels.KERNELS``)."""

__all__ = ["REFERENCES"]
