"""Numba kernels, one module per (op, weight format), f32 and i8 variants side by side.

Each module defines ``KERNELS = {name: jitted function}`` with names ``<op>_<format>_<dtype>``;
``KERNELS`` here is their union. ``zeroskip.reference.REFERENCES`` has a reference under every key.
Kernels write into caller-allocated outputs and return nothing; they trust their inputs, which the
planner (``zeroskip.engine``) has validated, because Numba does not check bounds.
"""

from __future__ import annotations

import importlib
import pkgutil

KERNELS: dict = {}
"""Kernel name -> jitted kernel."""


def _collect() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, kernel in getattr(module, "KERNELS", {}).items():
            if name in KERNELS:
                raise RuntimeError(f"kernel {name!r} is defined twice")
            KERNELS[name] = kernel


_collect()

__all__ = ["KERNELS"]
