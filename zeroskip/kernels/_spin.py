"""The busy loop of engine/awake.py: a thread that gives its CPU away whenever anything else wants
it, and otherwise keeps it from going idle, until a flag says stop.

    while flag[0] == 0: sched_yield()

Compiled (``nogil``: it runs beside the run it keeps company, which holds the GIL between steps),
with the flag read by an atomic load each time round (a plain load could be hoisted out of the
loop) and ``sched_yield`` called as the C library's own symbol, so that it caches on disk like the
kernels (a ctypes function in a jitted body cannot be cached). POSIX only: ``SPINS`` says whether
this platform has it. The leading underscore keeps the kernel collector (``kernels/__init__.py``)
from looking here: a helper, not a kernel.
"""

from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

SPINS = os.name == "posix"
"""Whether this platform's C library has ``sched_yield`` (every POSIX one)."""


@intrinsic
def _stopped(typingctx, flag):
    """flag[0] != 0, read with an atomic (monotonic) load: never hoisted out of a loop."""
    if not (isinstance(flag, types.Array) and flag.dtype == types.int64 and flag.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        value = builder.load_atomic(array.data, "monotonic", 8)
        return builder.icmp_signed("!=", value, ir.Constant(ir.IntType(64), 0))

    return types.boolean(flag), codegen


@intrinsic
def _yield_cpu(typingctx):
    """The C library's sched_yield(): this thread goes to the back of its CPU's queue."""
    def codegen(context, builder, signature, args):
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        return builder.call(function, [])

    return types.int32(), codegen


@njit(cache=True, nogil=True)
def spin_until(flag):
    """Yield the CPU over and over until flag[0] != 0; returns how many times it yielded."""
    n = 0
    while not _stopped(flag):
        _yield_cpu()
        n += 1
    return n


def new_flag() -> np.ndarray:
    """A flag for spin_until, raised (1: a spinner given it returns at once)."""
    return np.ones(1, np.int64)


__all__ = ["SPINS", "new_flag", "spin_until"]
