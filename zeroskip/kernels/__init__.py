"""Numba kernels, one module per (op, weight format), f32 and i8 variants side by side.

Each module defines ``KERNELS = {name: jitted function}`` with names ``<op>_<format>_<dtype>``;
``KERNELS`` here is their union. ``zeroskip.reference.REFERENCES`` has a reference under every key.
Kernels write into caller-allocated outputs and return nothing; they trust their inputs, which the
planner (``zeroskip.engine``) has validated, because Numba does not check bounds.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import numba

# The threading layer (docs/kernels.md, "Threads"). Numba prefers OpenMP, whose worker threads
# must get a core the moment a prange region starts. numpy's OpenBLAS keeps its own threads spinning
# for a while after every sgemm, so in a plan that mixes the two (dense-f32: im2col, sgemm, bias)
# on a machine with few cores the OpenMP workers wait a scheduler tick for a core: on the 2-vCPU
# machine a ResNet-18 ran in 680 ms with 2 threads against 86 ms with 1 (every region 4–36 ms).
# The workqueue layer has no such wait (81 ms), but may not be entered by two threads at once, so
# Session serializes kernel runs under it (``serial_launches``). A user's NUMBA_THREADING_LAYER wins;
# the choice only matters before the first parallel call of the process.
if "NUMBA_THREADING_LAYER" not in os.environ:
    # the environment, not only numba.config: numba re-reads its config from the environment
    os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
    numba.config.reload_config()
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # if OpenMP is used after all: sleeping workers


def serial_launches() -> bool:
    """Whether parallel kernels must not be launched from two Python threads at once."""
    return numba.config.THREADING_LAYER == "workqueue"


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

__all__ = ["KERNELS", "serial_launches"]
