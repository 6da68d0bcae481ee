"""The float32 CSR GEMM's row block, in registers and as loops, against an exact float32 model.

kernels/matmul_csr.py has the block as plain loops (``_row_block_loops``: CPUs without AVX2, and
Python under NUMBA_DISABLE_JIT=1) and as LLVM IR (``_row_block_avx``: whole blocks unmasked, narrow
ones masked). Both round each product and each sum to float32, in the order of a row's nonzeros,
so they must give the same bytes as the NumPy model below, and so must the whole kernel, parallel
or serial, at every shape: pixel counts around the vector widths, K around K_PER_BLOCK, N around
ROWS_PER_TASK, empty rows, every index dtype.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import numba
import numpy as np
import pytest
from numba import njit

from zeroskip.kernels import matmul_csr, serial_kernel
from zeroskip.kernels.matmul_csr import (K_PER_BLOCK, LANES_F32, PIXELS_PER_BLOCK, ROW_BLOCKS,
                                         ROWS_PER_TASK, matmul_csr_f32)

INDEX_DTYPES = [np.uint8, np.uint16, np.int32, np.int64]
RUNS_AVX = matmul_csr.HAS_AVX2 and not numba.config.DISABLE_JIT
"""The register block is LLVM IR: it needs the JIT, and an AVX2 CPU (the kernel's own test)."""
VARIANTS = ["loops"] + (["avx"] if RUNS_AVX else [])


def _model(indptr, indices, data, b, xt, lo, hi):
    """yt as the kernel defines it: b[n], then + data[e]·xt[k] per nonzero in order, every product
    and every sum rounded to float32 (NumPy float32 arithmetic), then the clamp."""
    N, M = len(indptr) - 1, xt.shape[1]
    yt = np.empty((N, M), np.float32)
    for n in range(N):
        y = np.full(M, b[n], np.float32)
        for e in range(int(indptr[n]), int(indptr[n + 1])):
            y = y + data[e] * xt[int(indices[e])]
        yt[n] = np.minimum(np.maximum(y, lo), hi)
    return yt


def _csr(rng, N, K, density, index_type):
    """A random CSR triple with sorted indices; a few rows empty, and values whose sums round."""
    w = rng.standard_normal((N, K)).astype(np.float32) * (rng.random((N, K)) < density)
    w[rng.random(N) < 0.1] = 0  # empty rows
    indptr = np.concatenate([[0], np.cumsum(np.count_nonzero(w, axis=1))]).astype(np.int64)
    rows, cols = np.nonzero(w)
    return indptr, cols.astype(index_type), w[rows, cols].astype(np.float32)


def _same_bytes(got, want, **context):
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape, context
    differ = got.view(np.uint32) != want.view(np.uint32)
    assert not differ.any(), (f"{int(differ.sum())} outputs differ from the float32 model, first at "
                              f"{np.argwhere(differ)[0].tolist()}: {context}")


SHAPES = [  # (M, K, N): pixel counts around the vector widths, K around K_PER_BLOCK, N around tasks
    (1, 7, 5), (LANES_F32 - 1, 40, 9), (LANES_F32, 300, 3), (LANES_F32 + 1, K_PER_BLOCK, 17),
    (2 * LANES_F32 + 3, K_PER_BLOCK + 1, ROWS_PER_TASK + 1), (4 * LANES_F32 + 1, 2 * K_PER_BLOCK, 4),
    (PIXELS_PER_BLOCK - 1, 70, ROWS_PER_TASK), (PIXELS_PER_BLOCK, 3 * K_PER_BLOCK - 5, 33),
    (PIXELS_PER_BLOCK + 1, 130, 2), (2 * PIXELS_PER_BLOCK + 5, K_PER_BLOCK - 1, 2 * ROWS_PER_TASK + 3),
]


CASES = [(M, K, N, t) for M, K, N in SHAPES for t in INDEX_DTYPES if np.iinfo(t).max >= K - 1]
"""Every shape with every index dtype that can hold its K (the planner picks no narrower one)."""


@pytest.mark.parametrize("M,K,N,index_type", CASES)
def test_kernel_gives_the_float32_models_bytes(M, K, N, index_type):
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    indptr, indices, data = _csr(rng, N, K, 0.3, index_type)
    xt = rng.standard_normal((K, M)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    lo, hi = np.float32(-1.5), np.float32(np.inf)
    want = _model(indptr, indices, data, b, xt, lo, hi)
    for name, kernel in (("parallel", matmul_csr_f32), ("serial", serial_kernel("matmul_csr_f32"))):
        yt = np.full((N, M), np.nan, np.float32)
        kernel(indptr, indices, data, b, xt, yt, lo, hi)
        _same_bytes(yt, want, kernel=name, M=M, K=K, N=N, index_type=np.dtype(index_type).name)


def _compiled(variant: str):
    """A jitted caller of ROW_BLOCKS[variant] (the IR form exists only inside compiled code)."""
    block = ROW_BLOCKS[variant]

    @njit
    def call(y, xt, indices, data, start, end, m0, count, first, b):
        block(y, xt, indices, data, start, end, m0, count, first, b)

    return call


@pytest.mark.parametrize("variant", VARIANTS)
def test_row_block_every_pixel_count_start_and_continue(variant):
    """Every count from 1 to PIXELS_PER_BLOCK, starting from b or continuing from y: the bytes of
    the plain Python block, and nothing written outside y[m0 : m0+count]."""
    block = _compiled(variant)
    rng = np.random.default_rng(5)
    K, M, m0 = 50, PIXELS_PER_BLOCK + 11, 3
    xt = rng.standard_normal((K, M)).astype(np.float32)
    indices = np.sort(rng.choice(K, 20, replace=False)).astype(np.int32)
    data = rng.standard_normal(20).astype(np.float32)
    for count in range(1, PIXELS_PER_BLOCK + 1):
        for first, (start, end) in ((True, (0, 20)), (False, (4, 17)), (True, (6, 6)), (False, (9, 9))):
            y = np.full(M, np.float32(0.75)) + rng.standard_normal(M).astype(np.float32)
            want = y.copy()
            matmul_csr._row_block_loops(want, xt, indices, data, start, end, m0, count, first,
                                        np.float32(0.125))
            block(y, xt, indices, data, start, end, m0, count, first, np.float32(0.125))
            _same_bytes(y, want, variant=variant, count=count, first=first, start=start, end=end)


@pytest.mark.skipif(not RUNS_AVX, reason="the register block needs AVX2 and the JIT")
@pytest.mark.parametrize("lanes", [8] + ([16] if matmul_csr.HAS_AVX512 else []))
@pytest.mark.parametrize("vectors,masked", [(8, False), (1, True), (2, True), (4, True), (8, True)])
def test_each_register_block_at_both_vector_widths(vectors, masked, lanes):
    """Each IR block on its own, with ymm (AVX2's 8 lanes, what CPUs without AVX-512 run) and, on
    an AVX-512 CPU, zmm lanes: the bytes of the plain block for every count it takes."""
    raw = matmul_csr._row_block_ir(vectors, masked, lanes)

    @njit
    def block(y, xt, indices, data, start, end, m0, count, first, b):
        raw(y, xt, indices, data, start, end, m0, count, first, b)

    rng = np.random.default_rng(vectors * 100 + lanes)
    K, M, m0 = 30, vectors * lanes + 9, 5
    xt = rng.standard_normal((K, M)).astype(np.float32)
    indices = np.sort(rng.choice(K, 12, replace=False)).astype(np.uint16)
    data = rng.standard_normal(12).astype(np.float32)
    counts = range(1, vectors * lanes + 1) if masked else [vectors * lanes]
    for count in counts:
        for first in (True, False):
            y = rng.standard_normal(M).astype(np.float32)
            want = y.copy()
            matmul_csr._row_block_loops(want, xt, indices, data, 1, 11, m0, count, first,
                                        np.float32(-0.5))
            block(y, xt, indices, data, 1, 11, m0, count, first, np.float32(-0.5))
            _same_bytes(y, want, vectors=vectors, masked=masked, lanes=lanes, count=count)


def _libc():
    return ctypes.CDLL(None, use_errno=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses mprotect (Linux)")
@pytest.mark.parametrize("variant", VARIANTS)
def test_row_block_never_touches_memory_past_the_last_pixel(variant):
    """xt's last row and y end where an inaccessible page begins: a block that read or wrote one
    float past count would crash this test process (masked loads and stores touch no lane past it)."""
    page = mmap.PAGESIZE
    block = _compiled(variant)
    rng = np.random.default_rng(6)
    keep = []

    def guarded(count_floats):
        """float32 array of count_floats ending at an inaccessible page."""
        buf = mmap.mmap(-1, 2 * page)
        address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        if _libc().mprotect(ctypes.c_void_p(address + page), page, 0) != 0:  # PROT_NONE
            pytest.fail(f"mprotect failed: errno {ctypes.get_errno()}")
        keep.append(buf)
        return np.frombuffer(buf, np.float32, count_floats, page - 4 * count_floats)

    K = 4
    for M in (1, LANES_F32 - 3, LANES_F32 + 5, PIXELS_PER_BLOCK - 1, PIXELS_PER_BLOCK):
        xt = guarded(K * M).reshape(K, M)
        xt[...] = rng.standard_normal((K, M))
        y = guarded(M)
        y[...] = 0
        indices, data = np.array([0, K - 1], np.int64), np.array([1.5, -2.0], np.float32)
        want = np.float32(0.25) + data[0] * xt[0] + data[1] * xt[K - 1]
        block(y, xt, indices, data, 0, 2, 0, M, True, np.float32(0.25))
        _same_bytes(np.array(y), want.astype(np.float32), variant=variant, M=M)
    del y, xt


def test_the_kernel_runs_the_register_block_where_it_can():
    want = ("loops" if numba.config.DISABLE_JIT or not matmul_csr.HAS_AVX2 else "avx")
    got = {matmul_csr._row_block_loops: "loops", matmul_csr._row_block_avx: "avx",
           ROW_BLOCKS["loops"]: "loops"}[matmul_csr._row_block]
    assert got == want
    assert PIXELS_PER_BLOCK == matmul_csr.ROW_VECTORS * LANES_F32
    assert LANES_F32 == (16 if matmul_csr.HAS_AVX512 else 8)
