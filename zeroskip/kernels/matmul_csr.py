"""Sparse matmul: W (N,K) in CSR (rows = output channels) times dense activations xt (K,M).

Loop nest (docs/kernels.md): prange over output channels n; the row's nonzeros, NNZ_UNROLL = 8 at a
time; one contiguous axpy over a slice of PIXELS_PER_TILE pixels that takes all eight, so the output
slice is loaded and stored once per eight nonzeros instead of once per nonzero.

Float32 arithmetic is rounded op by op, as written (no fused multiply-add contraction), so the
kernel gives the same bytes compiled and as plain Python under NUMBA_DISABLE_JIT=1.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

PIXELS_PER_TILE = 512
"""Pixels (values of m) per slice of an output row: 2 KB of float32/int32, kept in L1 across the
row's nonzeros with the input slices it reads. Chosen by bench/test_bench_matmul.py: M ≤ 512 is one slice; ResNet-50's 56×56
(M = 3136) layers run in 7 slices."""

NNZ_UNROLL = 8
"""Nonzeros per pass over the output slice (the body of _axpy8_* is written for 8). Chosen by
bench/test_bench_matmul.py at M=128, K=N=1024, 10 % density: 8 beat 4 by 1.3× (f32); 1 is scipy's."""


@njit(cache=True, inline="always")
def _axpy8_f32(y, xt, indices, data, e, m0, m1):
    """y[m0:m1] += Σ_{j<8} data[e+j]·xt[indices[e+j], m0:m1] (one load and store of y per 8 nonzeros)."""
    ys = y[m0:m1]
    x0, x1 = xt[np.int64(indices[e])][m0:m1], xt[np.int64(indices[e + 1])][m0:m1]
    x2, x3 = xt[np.int64(indices[e + 2])][m0:m1], xt[np.int64(indices[e + 3])][m0:m1]
    x4, x5 = xt[np.int64(indices[e + 4])][m0:m1], xt[np.int64(indices[e + 5])][m0:m1]
    x6, x7 = xt[np.int64(indices[e + 6])][m0:m1], xt[np.int64(indices[e + 7])][m0:m1]
    v0, v1, v2, v3 = data[e], data[e + 1], data[e + 2], data[e + 3]
    v4, v5, v6, v7 = data[e + 4], data[e + 5], data[e + 6], data[e + 7]
    for i in range(m1 - m0):  # slices start at 0: no wraparound test, so LLVM vectorizes
        ys[i] += (v0 * x0[i] + v1 * x1[i] + v2 * x2[i] + v3 * x3[i]) + \
                 (v4 * x4[i] + v5 * x5[i] + v6 * x6[i] + v7 * x7[i])


@njit(cache=True, inline="always")
def _axpy8_i8(y, xt, indices, data, e, m0, m1):
    """As _axpy8_f32 in int32: products of int8 weights and 8-bit activations widened to int32."""
    ys = y[m0:m1]
    x0, x1 = xt[np.int64(indices[e])][m0:m1], xt[np.int64(indices[e + 1])][m0:m1]
    x2, x3 = xt[np.int64(indices[e + 2])][m0:m1], xt[np.int64(indices[e + 3])][m0:m1]
    x4, x5 = xt[np.int64(indices[e + 4])][m0:m1], xt[np.int64(indices[e + 5])][m0:m1]
    x6, x7 = xt[np.int64(indices[e + 6])][m0:m1], xt[np.int64(indices[e + 7])][m0:m1]
    v0, v1, v2, v3 = np.int32(data[e]), np.int32(data[e + 1]), np.int32(data[e + 2]), np.int32(data[e + 3])
    v4, v5, v6, v7 = np.int32(data[e + 4]), np.int32(data[e + 5]), np.int32(data[e + 6]), np.int32(data[e + 7])
    for i in range(m1 - m0):
        ys[i] = np.int32(ys[i] + (v0 * np.int32(x0[i]) + v1 * np.int32(x1[i]) + v2 * np.int32(x2[i])
                                  + v3 * np.int32(x3[i]) + v4 * np.int32(x4[i]) + v5 * np.int32(x5[i])
                                  + v6 * np.int32(x6[i]) + v7 * np.int32(x7[i])))


@njit(cache=True, inline="always")
def _axpy1(y, x, v, m0, m1):
    """y[m0:m1] += v·x[m0:m1] (in y's type; int8/uint8 x is widened first)."""
    ys, xs = y[m0:m1], x[m0:m1]
    for i in range(m1 - m0):
        ys[i] = ys[i] + v * xs[i]


def _matmul_csr_f32(indptr, indices, data, b, xt, yt, lo, hi):
    # W (N,K) csr @ xt (K,M) + b -> yt (N,M)
    """yt[n,m] = clamp(b[n] + Σ_{k ∈ nz(n)} w[n,k]·xt[k,m], lo, hi)

    Loop nest: prange n; slices of PIXELS_PER_TILE pixels; nonzeros of row n, 8 per pass (then one
    at a time); one axpy over the slice per pass.
    indptr [N+1] int — CSR row pointers (uint8, uint16, int32 or int64)
    indices [nnz] int — column k of each nonzero (same choices of dtype)
    data [nnz] float32 — the nonzero weights
    b [N] float32 — bias (zeros if none)
    xt [K,M] float32 — activations, channel-major (a 1×1 conv's x[b] as (C, H·W)), C-contiguous
    yt [N,M] float32 — output, C-contiguous, overwritten
    lo, hi float32 — fused activation bounds (−inf/inf none, 0/inf ReLU, 0/6 ReLU6)
    Preconditions: valid CSR (indptr[0] = 0, non-decreasing, indices < K); shapes as above.
    Work: 2·M·nnz flops; reads xt nnz·M times 4 bytes (from L1/L2), writes yt N·M·4 bytes.
    """
    N, M = yt.shape
    for n in prange(N):
        start, end = np.int64(indptr[n]), np.int64(indptr[n + 1])
        y = yt[n]
        for m0 in range(0, M, PIXELS_PER_TILE):
            m1 = min(M, m0 + PIXELS_PER_TILE)
            y[m0:m1] = b[n]
            e = start
            while e + NNZ_UNROLL <= end:
                _axpy8_f32(y, xt, indices, data, e, m0, m1)
                e += NNZ_UNROLL
            while e < end:
                _axpy1(y, xt[np.int64(indices[e])], data[e], m0, m1)
                e += 1
            for m in range(m0, m1):
                y[m] = min(max(y[m], lo), hi)


matmul_csr_f32 = njit(cache=True, parallel=True, nogil=True)(_matmul_csr_f32)


def _matmul_csr_i8(indptr, indices, data, bias, xt, yt):
    # W (N,K) csr int8 @ xt (K,M) uint8|int8 + bias' -> acc yt (N,M) int32
    """yt[n,m] = bias'[n] + Σ_{k ∈ nz(n)} q_w[n,k]·q_x[k,m]      (the int32 accumulator)

    real = scale·(q − zero_point): w per output channel with zero point 0 (so a skipped zero weight
    is exact), x per tensor; its zero point is folded into bias'[n] = q_b[n] − x_zp·Σ_k q_w[n,k] at plan
    time. No rounding, no saturation here: requantize_dense_i8 turns yt into 8 bits.
    Loop nest: as matmul_csr_f32 (prange n; PIXELS_PER_TILE slices; 8 nonzeros per pass; axpy).
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
    for n in prange(N):
        start, end = np.int64(indptr[n]), np.int64(indptr[n + 1])
        y = yt[n]
        for m0 in range(0, M, PIXELS_PER_TILE):
            m1 = min(M, m0 + PIXELS_PER_TILE)
            y[m0:m1] = bias[n]
            e = start
            while e + NNZ_UNROLL <= end:
                _axpy8_i8(y, xt, indices, data, e, m0, m1)
                e += NNZ_UNROLL
            while e < end:
                _axpy1(y, xt[np.int64(indices[e])], np.int32(data[e]), m0, m1)
                e += 1


matmul_csr_i8 = njit(cache=True, parallel=True, nogil=True)(_matmul_csr_i8)

KERNELS = {"matmul_csr_f32": matmul_csr_f32, "matmul_csr_i8": matmul_csr_i8}
