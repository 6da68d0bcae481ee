"""Busy loops. The one of engine/awake.py: a thread that gives its CPU away whenever anything else
wants it, and otherwise keeps it from going idle, until a flag says stop.

    while flag[0] == 0: sched_yield()

And a volley (``handoff_ns``): two threads hand one word back and forth, to time how long a cache
line written on one CPU takes to reach another.

Compiled (``nogil``: it runs beside the run it keeps company, which holds the GIL between steps),
with the word read by an atomic load each time round (``_load``: a plain load could be hoisted
out of the loop) and ``sched_yield`` called as the C library's own symbol, so that it caches on
disk like the kernels (a ctypes function in a jitted body cannot be cached). POSIX only:
``SPINS`` says whether this platform has it. The leading underscore keeps the kernel collector
(``kernels/__init__.py``) from looking here: a helper, not a kernel.
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
def _yield_cpu(typingctx):
    """The C library's sched_yield(): this thread goes to the back of its CPU's queue."""
    def codegen(context, builder, signature, args):
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        return builder.call(function, [])

    return types.int32(), codegen


@intrinsic
def _load(typingctx, word):
    """word[0], read with an atomic (acquire) load."""
    if not (isinstance(word, types.Array) and word.dtype == types.int64 and word.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.load_atomic(array.data, "acquire", 8)

    return types.int64(word), codegen


@intrinsic
def _store(typingctx, word, value):
    """word[0] = value, written with an atomic (release) store."""
    if not (isinstance(word, types.Array) and word.dtype == types.int64 and word.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        builder.store_atomic(args[1], array.data, "release", 8)
        return context.get_dummy_value()

    return types.void(word, types.int64), codegen


@njit(cache=True, nogil=True)
def _volley(word, side, first, last):
    """Play one side (0 or 1) of exchanges ``first`` to ``last`` − 1 on word[0]: wait for the other
    side's count, answer with the next. Every 256 looks round the wait yields the CPU, so that two
    players on one CPU still finish (then each exchange takes a switch: microseconds)."""
    for hit in range(first, last):
        mine = 2 * hit + side
        looks = 0
        while _load(word) != mine:
            looks += 1
            if looks % 256 == 0:
                _yield_cpu()
        _store(word, mine + 1)


HANDOFF_WARM = 500
"""Untimed exchanges first: the other player's thread starts, and its CPU wakes, meanwhile (a CPU
idle for 150 ms took up to a millisecond, which spread over a volley read 100–900 ns)."""

HANDOFF_HITS = 2000
"""Timed exchanges per volley (two handoffs each): ~0.2 ms where the CPUs share a cache."""


def handoff_ns(volleys: int = 5, hits: int = HANDOFF_HITS) -> float | None:
    """The median over ``volleys`` (of ``hits`` timed exchanges each) of the time one handoff
    took, in ns: a thread writes a word, and a thread on another CPU, spinning on it, sees the
    new value and writes its answer; the two threads held on the first two CPUs this process may
    use (the calling thread's own CPUs are given back after). On the 2-vCPU AMD EPYC (Zen 4) VM: 41–50 ns while the two CPUs were
    in one core complex (a shared L3), 165–178 while the host had them in two
    (docs/benchmarks.md, "When two threads run at one thread's speed"). None with fewer than two
    CPUs, or where nothing is compiled (NUMBA_DISABLE_JIT: the Python loop would hold the GIL)."""
    import threading
    import time

    import numba

    if (os.cpu_count() or 1) < 2 or not SPINS or numba.config.DISABLE_JIT:
        return None
    pinned = hasattr(os, "sched_getaffinity")
    mask = os.sched_getaffinity(0) if pinned else set()
    if pinned and len(mask) < 2:
        return None
    cpus = sorted(mask)[:2]
    _volley(np.ones(1, np.int64), 1, 0, 1)  # JIT compile or cache load
    total = HANDOFF_WARM + hits

    def other_side(word):
        if pinned:
            os.sched_setaffinity(0, {cpus[1]})
        _volley(word, 1, 0, total)

    times = []
    try:
        if pinned:  # the players on two CPUs: Linux may start a new thread on its parent's CPU
            os.sched_setaffinity(0, {cpus[0]})
        for _ in range(volleys):
            raw = np.zeros(16, np.int64)  # the word at the start of a 64-byte line of its own
            skip = (-raw.ctypes.data % 64) // 8
            word = raw[skip:skip + 8]
            other = threading.Thread(target=other_side, args=(word,), daemon=True)
            other.start()
            _volley(word, 0, 0, HANDOFF_WARM)
            start = time.perf_counter()
            _volley(word, 0, HANDOFF_WARM, total)
            times.append((time.perf_counter() - start) / (2 * hits))
            other.join()
    finally:
        if pinned:
            os.sched_setaffinity(0, mask)
    return float(np.median(times)) * 1e9


@njit(cache=True, nogil=True)
def spin_until(flag):
    """Yield the CPU over and over until flag[0] != 0; returns how many times it yielded."""
    n = 0
    while _load(flag) == 0:
        _yield_cpu()
        n += 1
    return n


def new_flag() -> np.ndarray:
    """A flag for spin_until, raised (1: a spinner given it returns at once)."""
    return np.ones(1, np.int64)


__all__ = ["HANDOFF_HITS", "HANDOFF_WARM", "SPINS", "handoff_ns", "new_flag", "spin_until"]
