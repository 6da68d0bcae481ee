"""Sparse matmul: W (N,K) in CSR (rows = output channels) times dense activations xt (K,M).

Loop nest (docs/kernels.md): a slice of up to PIXELS_PER_BLOCK pixels of an output row is summed in
vector registers across the row's nonzeros (the row block: LLVM IR where the CPU has AVX2, else
plain loops), then stored once. float32 rounds each product and sum as written, in the order of the
row's nonzeros (no fused multiply-add), so it gives the same bytes compiled, as plain loops and as
Python under NUMBA_DISABLE_JIT=1; int8 sums in int32, exactly, in any order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._batch import as_images, as_rows
from ._rows import PIXELS_PER_BLOCK, row_block
from .elementwise import add_residual_rows, residual_parts
from .quant import requantize_row

# ---------------------------------------------------------------- float32

K_PER_BLOCK = 256
"""Values of k per pass over a task's rows: the rows of xt that a pass reads (256 rows of one
PIXELS_PER_BLOCK slice) stay in L1/L2 and within few pages. Chosen by bench/test_bench_matmul_session.py's
layer (M = 128, K = N = 1024, 90 % sparse, AVX-512): 256 beat 128, 1024 (no blocking) and 64."""
ROWS_PER_TASK = 64
"""Output channels per parallel task (with one PIXELS_PER_BLOCK slice of pixels), at most."""
MIN_TASKS = 16
"""Fewer rows per task (down to MIN_ROWS_PER_TASK) when a call would have fewer tasks than this:
a pointwise conv's few pixels made one to three tasks of 64 rows (MobileNetV2's 960 → 160 at 7×7:
three, so two threads split them two to one)."""
MIN_ROWS_PER_TASK = 8

DOT_BELOW_PIXELS_F32 = 2
"""float32: below this many pixels (a Gemm at batch 1), matmul_csr_f32 computes each output as a dot
product over its row's nonzeros, the sum in a register, in the same order as the row block (the
same bytes). K = 1280, N = 1000, one thread, against the row block: 1.85 → 1.04 ms dense, 0.22 →
0.11 ms at 10 % density; at M = 2 the dot products were 0.87–1.36× the row block's speed, and
slower from 3 on."""


@njit(cache=True, inline="always")
def _dot_f32(indices, data, xt, start, end, m, b):
    """b + Σ_{e=start}^{end−1} data[e]·xt[indices[e], m], each product and sum rounded to float32,
    in order."""
    s = np.float32(b)
    for e in range(start, end):
        s = np.float32(s + np.float32(data[e] * xt[np.int64(indices[e]), m]))
    return s


def _matmul_csr_f32(indptr, indices, data, b, xt, yt, lo, hi):
    # W (N,K) csr @ xt (K,M) + b -> yt (N,M)
    """yt[n,m] = clamp(b[n] + Σ_{k ∈ nz(n)} w[n,k]·xt[k,m], lo, hi)

    Loop nest: prange tasks of ROWS_PER_TASK rows n (fewer, in even groups, when that would make
    fewer than MIN_TASKS tasks) × one slice of PIXELS_PER_BLOCK pixels; passes over K_PER_BLOCK
    values of k; per row, its nonzeros in the pass, summed into the slice in
    registers (row_block), one after another; then the clamp. One pixel (a Gemm at batch 1):
    prange n, one dot product per output, the sum in a register (_dot_f32, DOT_BELOW_PIXELS_F32).
    Every output is b[n] plus its products in the order of the row's nonzeros, each product and
    sum rounded to float32, on either path.
    indptr [N+1] int — CSR row pointers (uint8, uint16, int32 or int64)
    indices [nnz] int — column k of each nonzero, sorted within a row (same choices of dtype)
    data [nnz] float32 — the nonzero weights
    b [N] float32 — bias (zeros if none)
    xt [K,M] float32 — activations, channel-major (a Gemm's x transposed), C-contiguous
    yt [N,M] float32 — output, C-contiguous, overwritten
    lo, hi float32 — fused activation bounds (−inf/inf none, 0/inf ReLU, 0/6 ReLU6)
    A batch of images goes in one call: xt (B, K, M), yt (B, N, M) (a sparse 1×1 conv's images,
    each its planar (C, H·W)), every image's tasks in the one parallel loop.
    Preconditions: valid CSR (indptr[0] = 0, non-decreasing, indices < K and sorted within a row);
    shapes as above.
    Work: 2·B·M·nnz flops; reads xt nnz·M times 4 bytes (from L1/L2), writes yt B·N·M·4 bytes
    (and reads it back once per pass after the first).
    """
    xt3, yt3 = as_images(xt), as_images(yt)
    B, N, M = yt3.shape
    K = xt3.shape[1]
    if M < DOT_BELOW_PIXELS_F32:
        for t in prange(B * N):
            bi, n = t // N, t % N
            y = yt3[bi, n]
            for m in range(M):
                s = _dot_f32(indices, data, xt3[bi], np.int64(indptr[n]),
                             np.int64(indptr[n + 1]), m, b[n])
                y[m] = min(max(s, lo), hi)
        return
    slices = (M + PIXELS_PER_BLOCK - 1) // PIXELS_PER_BLOCK
    groups = max(-(-N // ROWS_PER_TASK),  # more groups when a call has few tasks, evenly sized
                 min(-(-MIN_TASKS // (B * slices)), -(-N // MIN_ROWS_PER_TASK)))
    rows = -(-N // groups)
    groups = -(-N // rows)  # no group left empty
    for task in prange(B * groups * slices):
        bi, group = task // (groups * slices), task // slices % groups
        n0, m0 = group * rows, task % slices * PIXELS_PER_BLOCK
        xb, yb = xt3[bi], yt3[bi]
        n1, count = min(N, n0 + rows), min(PIXELS_PER_BLOCK, M - m0)
        cursor = np.empty(n1 - n0, np.int64)  # per row: its first nonzero not yet summed
        for n in range(n0, n1):
            cursor[n - n0] = indptr[n]
        for k1 in range(K_PER_BLOCK, max(K, 1) + K_PER_BLOCK, K_PER_BLOCK):
            first = k1 == K_PER_BLOCK
            for n in range(n0, n1):
                start, end = cursor[n - n0], np.int64(indptr[n + 1])
                stop = start
                while stop < end and indices[stop] < k1:
                    stop += 1
                if first or stop > start:
                    row_block(yb[n], m0, xb, indices, data, start, stop, m0, count, first, b[n])
                cursor[n - n0] = stop
        for n in range(n0, n1):
            y = yb[n][m0:m0 + count]
            for i in range(count):
                y[i] = min(max(y[i], lo), hi)


matmul_csr_f32 = njit(cache=True, parallel=True, nogil=True)(_matmul_csr_f32)


# ---------------------------------------------------------------- int8

DOT_BELOW_PIXELS = 3
"""int8: below this many pixels (a Gemm at batch 1 or 2), matmul_csr_i8 computes each output as a dot
product over its row's nonzeros, the sum in a register: a vector block holding one pixel pays a
whole vector op per nonzero. K = 1280, N = 1000, 10 % density, one thread, against the earlier
axpy loop: M = 1 241 → 118 µs, M = 2 270 → 231 µs; at M = 3 the axpy was faster (306 against
339 µs)."""


def _matmul_csr_i8(indptr, indices, data, bias, xt, yt):
    # W (N,K) csr int8 @ xt (K,M) uint8|int8 + bias' -> acc yt (N,M) int32
    """yt[n,m] = bias'[n] + Σ_{k ∈ nz(n)} q_w[n,k]·q_x[k,m]      (the int32 accumulator)

    real = scale·(q − zero_point): w per output channel with zero point 0 (so a skipped zero weight
    is exact), x per tensor; its zero point is folded into bias'[n] = q_b[n] − x_zp·Σ_k q_w[n,k] at plan
    time. No rounding, no saturation here: requantize_dense_i8 turns yt into 8 bits.
    Loop nest: prange n; slices of PIXELS_PER_BLOCK pixels; the row's nonzeros summed into the
    slice in int32 registers (row_block). Fewer than DOT_BELOW_PIXELS pixels: prange n; one dot
    product per output (_dot_i8).
    indptr [N+1], indices [nnz] int — CSR of w (uint8, uint16, int32 or int64)
    data [nnz] int8 — the nonzero weights, anything in [−128, 127]
    bias [N] int32 — the folded bias bias'
    xt [K,M] uint8|int8 — activations, channel-major, C-contiguous
    yt [N,M] int32 — accumulator out, C-contiguous, overwritten
    Preconditions: valid CSR; K·max|q_w·q_x| + max|bias'| < 2^31 (checked by the plan).
    Overflow: |u8·s8| ≤ 255·128 = 32 640 < 2^15, so K ≤ 65 793 is safe; |s8·s8| ≤ 128·128 = 2^14,
    so K ≤ 131 071 (the plan checks K).
    Work: 2·M·nnz int ops; reads xt nnz·M bytes (from L1/L2), writes yt N·M·4 bytes.
    """
    N, M = yt.shape
    if M < DOT_BELOW_PIXELS:  # a few pixels (a small batch of a Gemm): one dot product each
        for n in prange(N):
            start, end = np.int64(indptr[n]), np.int64(indptr[n + 1])
            for m in range(M):
                yt[n, m] = _dot_i8(indices, data, xt, start, end, m, bias[n])
        return
    for n in prange(N):
        start, end = np.int64(indptr[n]), np.int64(indptr[n + 1])
        for m0 in range(0, M, PIXELS_PER_BLOCK):
            row_block(yt[n], m0, xt, indices, data, start, end, m0,
                       min(PIXELS_PER_BLOCK, M - m0), True, bias[n])


@njit(cache=True, inline="always")
def _dot_i8(indices, data, xt, start, end, m, b):
    """b + Σ_{e=start}^{end−1} data[e]·xt[indices[e], m] in int32, the sum in a register."""
    s = np.int32(b)
    for e in range(start, end):
        s = np.int32(s + np.int32(data[e]) * np.int32(xt[np.int64(indices[e]), m]))
    return s


matmul_csr_i8 = njit(cache=True, parallel=True, nogil=True)(_matmul_csr_i8)

ROWS_PER_RQ_TASK = 8
"""Output channels per parallel task of matmul_csr_rq_i8 (each task allocates one scratch)."""


def _matmul_csr_rq_i8(indptr, indices, data, bias, xt, m0, shift, y_zero_point, lo, hi, yt,
                      residual=None):
    # W (N,K) csr int8 @ xt (K,M) uint8|int8 + bias', requantized -> yt (N,M) uint8|int8
    """yt[n,m] = requantize(bias'[n] + Σ_{k ∈ nz(n)} q_w[n,k]·q_x[k,m]): matmul_csr_i8 and then
    requantize_dense_i8 (m0, shift, y_zero_point, lo, hi as there) in one pass, the same bytes.

    The int32 sums never reach memory: per output channel, PIXELS_PER_BLOCK pixels at a time, they
    are summed in registers (row_block) into a scratch that stays in L1 and requantized from there
    into yt. A pointwise
    (1×1) conv is this GEMM on its planar input, x[b] as (C, H·W): MobileNetV2's expand convs have
    K = 16–24, so at 10 % density a row holds 2 nonzeros, and writing and reading back 4 bytes
    per output cost more than the products.
    Loop nest: prange tasks of ROWS_PER_RQ_TASK rows n × one PIXELS_PER_BLOCK slice (so that a
    layer with few output channels and many rows, such as a classifier at a large batch, still
    has tasks for every thread); per row, the slice's sums (as matmul_csr_i8), then
    requantize_row. The xt columns of the slice stay in cache for the task's rows.
    Preconditions as matmul_csr_i8's and requantize_dense_i8's; yt [N,M] uint8|int8, C-contiguous.
    A batch of images goes in one call: xt (B, K, M), yt (B, N, M), the residual's r like yt,
    every image's tasks in the one parallel loop (a call per image had been eight launches per
    layer at batch 8, as the planar GEMM's).
    residual — None, or a QAdd of yt and an array of yt's shape fused into the epilogue, added
    once the rows are requantized (elementwise.residual_parts, add_residual_rows).
    Work: 2·B·M·nnz int ops and B·N·M requantizations; reads xt nnz·M bytes per image, writes yt
    B·N·M bytes.
    """
    r, add = residual_parts(residual, yt)
    xt3, yt3 = as_images(xt), as_images(yt)
    B, N, M = yt3.shape
    groups = (N + ROWS_PER_RQ_TASK - 1) // ROWS_PER_RQ_TASK
    slices = (M + PIXELS_PER_BLOCK - 1) // PIXELS_PER_BLOCK
    for task in prange(B * groups * slices):
        b, group = task // (groups * slices), task // slices % groups
        p0 = task % slices * PIXELS_PER_BLOCK
        xb, yb = xt3[b], yt3[b]
        count = min(PIXELS_PER_BLOCK, M - p0)
        sums = np.empty(PIXELS_PER_BLOCK, np.int32)
        for n in range(group * ROWS_PER_RQ_TASK, min(N, (group + 1) * ROWS_PER_RQ_TASK)):
            start, end = np.int64(indptr[n]), np.int64(indptr[n + 1])
            if count < DOT_BELOW_PIXELS:  # a Gemm at batch 1 or 2
                for m in range(count):
                    sums[m] = _dot_i8(indices, data, xb, start, end, p0 + m, bias[n])
            else:
                row_block(sums, 0, xb, indices, data, start, end, p0, count, True, bias[n])
            requantize_row(sums[:count], m0[n], shift[n], y_zero_point, lo, hi,
                           yb[n, p0:p0 + count])
    add_residual_rows(as_rows(yt), as_rows(r), add)


matmul_csr_rq_i8 = njit(cache=True, parallel=True, nogil=True)(_matmul_csr_rq_i8)

KERNELS = {"matmul_csr_f32": matmul_csr_f32, "matmul_csr_i8": matmul_csr_i8,
           "matmul_csr_rq_i8": matmul_csr_rq_i8}
