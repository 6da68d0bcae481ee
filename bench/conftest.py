"""Shared by the kernel benchmarks: one thread everywhere, shape files, and compile-time measurement."""

from __future__ import annotations

import pathlib
import time

import numba
import pytest
from numba import njit

_COMPILE_S: dict = {}


def read_shapes(name: str) -> list[tuple]:
    """bench/shapes/<name>: one layer per line, a name then integers; '#' starts a comment line."""
    path = pathlib.Path(__file__).parent / "shapes" / name
    out = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            label, *numbers = line.split()
            out.append((label, *map(int, numbers)))
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Numba and the BLAS behind numpy/scipy both on one thread, so ratios compare like with like."""
    from threadpoolctl import threadpool_limits

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    with threadpool_limits(1):
        yield
    numba.set_num_threads(before)


def compile_seconds(name, function, args) -> float:
    """Wall time of a fresh, uncached JIT compile of ``function`` for these argument types."""
    key = (name, tuple(getattr(a, "dtype", type(a)) for a in args))
    if key not in _COMPILE_S:
        fresh = njit(cache=False, parallel=True)(function)
        t0 = time.perf_counter()
        fresh.compile(tuple(numba.typeof(a) for a in args))
        _COMPILE_S[key] = time.perf_counter() - t0
    return _COMPILE_S[key]


def pedantic(benchmark, call, extra: dict, max_rounds: int, time_per_case: float = 0.25):
    """Time ``call`` with pytest-benchmark: one warm-up call (JIT compile or cache load, page
    faults), then as many rounds as fit in ``time_per_case`` seconds (5 to ``max_rounds``), with
    ``extra`` recorded in extra_info. Returns the last call's result."""
    call()
    t0 = time.perf_counter()
    call()
    once = max(time.perf_counter() - t0, 1e-7)
    rounds = int(min(max_rounds, max(5, time_per_case / once)))
    benchmark.extra_info.update(extra)
    return benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)
