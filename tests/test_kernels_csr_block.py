"""The CSR GEMMs' row block, in registers and as loops, against each other and an exact model.

kernels/_rows.py has the block (float32, and int8 summed in int32) as plain loops
(``row_block_loops``: CPUs without AVX2, and Python under NUMBA_DISABLE_JIT=1) and as LLVM IR
(``row_block_avx``: whole blocks unmasked, narrow ones masked). In float32 both round each product
and each sum, in the order of a row's nonzeros, so they must give the same bytes as the NumPy model
below, and so must the whole float32 kernel, parallel or serial, at every shape: pixel counts
around the vector widths, K around K_PER_BLOCK, N around ROWS_PER_TASK, empty rows, every index
dtype. The int8 sums are exact (tests/test_kernels_matmul.py checks the kernels against the integer
reference); here the blocks must agree byte for byte at every count, and neither may touch memory
past the last pixel.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import numba
import numpy as np
import pytest
from numba import njit

from zeroskip.kernels import _rows, serial_kernel
from zeroskip.kernels._rows import LANES, PIXELS_PER_BLOCK, ROW_BLOCKS
from zeroskip.kernels.matmul_csr import K_PER_BLOCK, ROWS_PER_TASK, matmul_csr_f32

INDEX_DTYPES = [np.uint8, np.uint16, np.int32, np.int64]
RUNS_AVX = _rows.HAS_AVX2 and not numba.config.DISABLE_JIT
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
    assert got.dtype == want.dtype and got.shape == want.shape, context
    differ = got.view(np.uint32) != want.view(np.uint32)
    assert not differ.any(), (f"{int(differ.sum())} outputs differ from the model, first at "
                              f"{np.argwhere(differ)[0].tolist()}: {context}")


KINDS = ["f32", "u8", "s8"]
"""The row block's two arithmetics: float32, and int8 weights on uint8 or int8 activations summed
in int32."""


def _block_operands(rng, kind, K, M, nnz, index_type=np.int32):
    """(xt (K,M), sorted indices, data, b, a y maker) for ``kind``: full-range 8-bit values for the
    integer kinds (the largest products), normal floats for f32."""
    indices = np.sort(rng.choice(K, nnz, replace=False)).astype(index_type)
    if kind == "f32":
        return (rng.standard_normal((K, M)).astype(np.float32), indices,
                rng.standard_normal(nnz).astype(np.float32), np.float32(0.125),
                lambda: rng.standard_normal(M).astype(np.float32))
    lo, hi = (0, 255) if kind == "u8" else (-128, 127)
    xt = rng.integers(lo, hi + 1, (K, M)).astype(np.uint8 if kind == "u8" else np.int8)
    data = rng.choice(np.array([-128, 127, -1, 5], np.int8), nnz)
    return (xt, indices, data, np.int32(-123456),
            lambda: rng.integers(-2 ** 20, 2 ** 20, M).astype(np.int32))


SHAPES = [  # (M, K, N): pixel counts around the vector widths, K around K_PER_BLOCK, N around tasks
    (1, 7, 5), (LANES - 1, 40, 9), (LANES, 300, 3), (LANES + 1, K_PER_BLOCK, 17),
    (2 * LANES + 3, K_PER_BLOCK + 1, ROWS_PER_TASK + 1), (4 * LANES + 1, 2 * K_PER_BLOCK, 4),
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
    def call(y, y0, xt, indices, data, start, end, m0, count, first, b):
        block(y, y0, xt, indices, data, start, end, m0, count, first, b)

    return call


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_row_block_every_pixel_count_start_and_continue(variant, kind):
    """Every count from 1 to PIXELS_PER_BLOCK, starting from b or continuing from y, reading xt from
    pixel m0 and writing y from y0 (a scratch's offset): the bytes of the plain Python block, and
    nothing written outside y[y0 : y0+count]."""
    block = _compiled(variant)
    rng = np.random.default_rng(5)
    K, M, m0, y0 = 50, PIXELS_PER_BLOCK + 11, 3, 1
    xt, indices, data, b, fresh_y = _block_operands(rng, kind, K, M, 20)
    for count in range(1, PIXELS_PER_BLOCK + 1):
        for first, (start, end) in ((True, (0, 20)), (False, (4, 17)), (True, (6, 6)), (False, (9, 9))):
            y = fresh_y()
            want = y.copy()
            _rows.row_block_loops(want, y0, xt, indices, data, start, end, m0, count, first, b)
            block(y, y0, xt, indices, data, start, end, m0, count, first, b)
            _same_bytes(y, want, variant=variant, kind=kind, count=count, first=first, start=start,
                        end=end)


@pytest.mark.skipif(not RUNS_AVX, reason="the register block needs AVX2 and the JIT")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lanes", [8] + ([16] if _rows.HAS_AVX512 else []))
@pytest.mark.parametrize("vectors,masked", [(8, False), (1, True), (2, True), (4, True), (8, True)])
def test_each_register_block_at_both_vector_widths(vectors, masked, lanes, kind):
    """Each IR block on its own, with ymm (AVX2's 8 lanes, what CPUs without AVX-512 run) and, on
    an AVX-512 CPU, zmm lanes: the bytes of the plain block for every count it takes."""
    raw = _rows.row_block_ir(vectors, masked, lanes)

    @njit
    def block(y, y0, xt, indices, data, start, end, m0, count, first, b):
        raw(y, y0, xt, indices, data, start, end, m0, count, first, b)

    rng = np.random.default_rng(vectors * 100 + lanes)
    K, M, m0 = 30, vectors * lanes + 9, 5
    xt, indices, data, b, fresh_y = _block_operands(rng, kind, K, M, 12, np.uint16)
    counts = range(1, vectors * lanes + 1) if masked else [vectors * lanes]
    for count in counts:
        for first in (True, False):
            y = fresh_y()
            want = y.copy()
            _rows.row_block_loops(want, m0, xt, indices, data, 1, 11, m0, count, first, b)
            block(y, m0, xt, indices, data, 1, 11, m0, count, first, b)
            _same_bytes(y, want, vectors=vectors, masked=masked, lanes=lanes, kind=kind, count=count)


def _libc():
    return ctypes.CDLL(None, use_errno=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses mprotect (Linux)")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_row_block_never_touches_memory_past_the_last_pixel(variant, kind):
    """xt's last row and y end where an inaccessible page begins: a block that read or wrote one
    value past count would crash this test process (masked loads and stores touch no lane past it)."""
    page = mmap.PAGESIZE
    block = _compiled(variant)
    rng = np.random.default_rng(6)
    keep = []

    def guarded(count, dtype):
        """An array of ``count`` values of ``dtype`` ending at an inaccessible page."""
        buf = mmap.mmap(-1, 2 * page)
        address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        if _libc().mprotect(ctypes.c_void_p(address + page), page, 0) != 0:  # PROT_NONE
            pytest.fail(f"mprotect failed: errno {ctypes.get_errno()}")
        keep.append(buf)
        size = np.dtype(dtype).itemsize
        return np.frombuffer(buf, dtype, count, page - size * count)

    K = 4
    for M in (1, LANES - 3, LANES + 5, PIXELS_PER_BLOCK - 1, PIXELS_PER_BLOCK):
        x_values, _, _, b, fresh_y = _block_operands(rng, kind, K, M, 2)
        xt = guarded(K * M, x_values.dtype).reshape(K, M)
        xt[...] = x_values
        y = guarded(M, fresh_y().dtype)
        y[...] = 0
        indices = np.array([0, K - 1], np.int64)
        data = (np.array([1.5, -2.0], np.float32) if kind == "f32"
                else np.array([-128, 127], np.int8))
        want = np.zeros(M, y.dtype)
        _rows.row_block_loops(want, 0, np.array(xt), indices, data, 0, 2, 0, M, True, b)
        block(y, 0, xt, indices, data, 0, 2, 0, M, True, b)
        _same_bytes(np.array(y), want, variant=variant, kind=kind, M=M)
    del y, xt


def test_the_kernel_runs_the_register_block_where_it_can():
    want = ("loops" if numba.config.DISABLE_JIT or not _rows.HAS_AVX2 else "avx")
    got = {_rows.row_block_loops: "loops", _rows.row_block_avx: "avx",
           ROW_BLOCKS["loops"]: "loops"}[_rows.row_block]
    assert got == want
    assert PIXELS_PER_BLOCK == _rows.ROW_VECTORS * LANES
    assert LANES == (16 if _rows.HAS_AVX512 else 8)
