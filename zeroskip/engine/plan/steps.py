"""What a plan is made of: ``Step`` (one node's work), ``Plan`` (the steps in graph order) and
``Scratch`` (work arrays a step reuses from run to run)."""

from __future__ import annotations

import functools
import math
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ...model import Node


@dataclass
class Step:
    """One node's work: ``run(values)`` reads ``node.inputs`` and writes ``node.outputs``.

    ``kernel`` names what runs (a kernel of ``zeroskip.kernels``, numpy, or "reference") and
    ``reason`` says why it was chosen; ``Session.explain`` shows both.

    ``replay`` says whether a recorded run may stand for the step (engine/replay.py): "kernels"
    when all its run does, once its calls are prepared for an input's shape and type, is call
    kernels (through ``PlanContext.kernel``) on the arrays it reads, arrays it allocates and
    views of them, with arguments that only shapes decide; "view" when its outputs are views of
    its inputs; "" (the default) otherwise: NumPy arithmetic, data-dependent arguments or checks.
    """

    node: Node
    kernel: str
    reason: str
    run: Callable[[dict], None]
    density: float | None = None
    replay: str = ""


@dataclass
class Plan:
    mode: str
    steps: list[Step] = field(default_factory=list)
    constants: dict = field(default_factory=dict)
    serial: bool = False
    launches: list = field(default_factory=list)  # the steps' Launch objects (parallel kernels)

    @functools.cached_property
    def uses_numba(self) -> bool:
        """Whether a step runs a Numba kernel (a numpy-only plan never needs Numba at all)."""
        kernels = sys.modules.get("zeroskip.kernels")
        if kernels is None:
            return False
        names = set(kernels.KERNELS)
        return any(part in names for step in self.steps
                   for part in step.kernel.replace("+", " ").split())

    @functools.cached_property
    def uses_blas(self) -> bool:
        """Whether a step calls numpy's BLAS: the float sgemm steps, the reference convs and
        matrix products."""
        return any("numpy" in step.kernel or (step.kernel == "reference" and any(
            op in step.node.op for op in ("Conv", "Gemm", "MatMul"))) for step in self.steps)

    @functools.cached_property
    def blas_owns_threads(self) -> bool:
        """Whether BLAS, not Numba, gets the session's threads: the plan calls BLAS and none of
        its weighted layers runs on a Numba compute kernel (a direct conv, CSR, depthwise or
        int8), so its Numba steps (bias and activation, adds, pools) are light. The two must not
        both have threads: OpenBLAS's workers spin for a while after each sgemm and took the
        second core from the Numba kernels that followed (docs/kernels.md, "Threads")."""
        heavy = ("conv2d_", "csr", "depthwise", "_i8")
        return self.uses_blas and not any(h in step.kernel for step in self.steps for h in heavy)

    @functools.cached_property
    def replayable(self) -> bool:
        """Whether every step may be stood for by a recorded run (``Step.replay``)."""
        return self.uses_numba and all(step.replay for step in self.steps)

    def explain(self) -> list[dict]:
        return [dict(node=s.node.name, op=s.node.op,
                     density=None if s.density is None else round(s.density, 4),
                     kernel=s.kernel, reason=s.reason) for s in self.steps]


class Scratch:
    """Work arrays a step reuses from run to run: one set per thread and per shape, never an output.

    Steps allocate their outputs fresh (a caller may keep them), but padded planes, accumulators and
    column matrices come from here, so a Session that runs the same batch shape again allocates
    nothing for them. Per thread, so concurrent ``run`` calls (a threaded Dask scheduler) never share.
    """

    def __init__(self):
        self._local = threading.local()

    def get(self, tag: str, shape: tuple, dtype) -> np.ndarray:
        """The work array ``tag`` of ``shape`` (a tuple of ints) and ``dtype`` for this thread."""
        arrays = getattr(self._local, "arrays", None)
        if arrays is None:
            arrays = self._local.arrays = {}
        key = (tag, shape, dtype)  # as given: hashing it is the whole cost of a repeated call
        array = arrays.get(key)
        if array is None:
            array = arrays[key] = aligned_empty(tuple(int(d) for d in shape), dtype)
        return array


class PreparedCalls:
    """What a step does for each input it has seen, resolved once: per thread and per input
    (shape, dtype), the call ``build(shape, dtype, *extra)`` returns, with its geometry, scratch
    arrays, kernel builds (``launch.pick``) and argument tuples bound. A run then only looks it up
    and calls it. At batch 1 the Python between kernels was 6–14 % of a run (docs/kernels.md,
    "Python between kernels"), more than its warm cost: the kernels evict the interpreter's code
    and data from cache, so every Python line after one runs cold."""

    def __init__(self, build):
        self._build = build
        self._local = threading.local()

    def get(self, x: np.ndarray, *extra):
        calls = getattr(self._local, "calls", None)
        if calls is None:
            calls = self._local.calls = {}
        key = (x.shape, x.dtype)
        call = calls.get(key)
        if call is None:
            call = calls[key] = self._build(x.shape, x.dtype, *extra)
        return call


CACHE_LINE = 64
"""Bytes per cache line, and the alignment of scratch arrays."""


def is_aligned(array: np.ndarray) -> bool:
    """Whether ``array``'s data starts on a cache line."""
    return array.ctypes.data % CACHE_LINE == 0


def aligned_empty(shape: tuple, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` starting on a cache line. NumPy aligns large arrays to 16 bytes
    only, and a kernel whose 64-byte vector loads straddle two lines pays for both: the float32 CSR
    GEMM of bench/test_bench_matmul_session.py ran in 1.07 ms from a 16-byte aligned xt against
    0.64 ms from a 64-byte aligned one (one thread, AVX-512)."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize  # not np.prod: 80 µs when cold (docs/kernels.md)
    raw = np.empty(size + CACHE_LINE, np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + size].view(dtype).reshape(shape)


def aligned_copy(array: np.ndarray) -> np.ndarray:
    """``array`` itself if it is C-contiguous and starts on a cache line, else such a copy: for the
    weights a plan packs once. A small array comes from the heap at whatever multiple of 16 bytes
    the allocator hands out, so a packed weight whose rows the kernel loads 64 bytes at a time
    split cache lines in some processes and not in others: the int8 ResNet-18's AMX stem took
    0.80 ms with its folded weights on a line and 1.20–1.25 ms 16, 32 or 48 bytes off it."""
    if array.flags.c_contiguous and is_aligned(array):
        return array
    out = aligned_empty(array.shape, array.dtype)
    out[...] = array
    return out
