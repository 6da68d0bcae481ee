"""Sparse matmul: W (N,K) in CSR (rows = output channels) times dense activations xt (K,M).

Loop nest (docs/kernels.md): prange over output channels n; the row's nonzeros, NNZ_UNROLL = 4 at a
time; one contiguous axpy over a slice of M_TILE pixels that takes all four, so the output slice is
loaded and stored once per four nonzeros instead of once per nonzero.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

M_TILE = 512
"""Output-row slice (2 KB of float32/int32) kept in L1 across a row's nonzeros, with the four input
slices it reads. Chosen by bench/test_bench_matmul.py: M ≤ 512 is one slice; ResNet-50's 56×56
(M = 3136) layers are as fast with 512 as with the whole row."""

NNZ_UNROLL = 4
"""Nonzeros per pass over the output slice (documentation: the body below is written for 4)."""


def _matmul_csr_f32(indptr, indices, data, b, xt, yt, lo, hi):
    # W (N,K) csr @ xt (K,M) + b -> yt (N,M)
    """yt[n,m] = clamp(b[n] + Σ_{k ∈ nz(n)} w[n,k]·xt[k,m], lo, hi)

    Loop nest: prange n; slices of M_TILE pixels; nonzeros of row n, 4 per pass; axpy over the slice.
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
        for m0 in range(0, M, M_TILE):
            m1 = min(M, m0 + M_TILE)
            y[m0:m1] = b[n]
            e = start
            while e + 4 <= end:
                v0, v1, v2, v3 = data[e], data[e + 1], data[e + 2], data[e + 3]
                x0, x1 = xt[np.int64(indices[e])], xt[np.int64(indices[e + 1])]
                x2, x3 = xt[np.int64(indices[e + 2])], xt[np.int64(indices[e + 3])]
                for m in range(m0, m1):
                    y[m] += v0 * x0[m] + v1 * x1[m] + v2 * x2[m] + v3 * x3[m]
                e += 4
            for e in range(e, end):
                v, x0 = data[e], xt[np.int64(indices[e])]
                for m in range(m0, m1):
                    y[m] += v * x0[m]
            for m in range(m0, m1):
                y[m] = min(max(y[m], lo), hi)


matmul_csr_f32 = njit(cache=True, parallel=True, fastmath={"contract"})(_matmul_csr_f32)


def _matmul_csr_i8(indptr, indices, data, bias, xt, yt):
    # W (N,K) csr int8 @ xt (K,M) uint8|int8 + bias' -> acc yt (N,M) int32
    """yt[n,m] = bias'[n] + Σ_{k ∈ nz(n)} q_w[n,k]·q_x[k,m]      (the int32 accumulator)

    real = scale·(q − zero_point): w per output channel with zero point 0 (so a skipped zero weight
    is exact), x per tensor; its zero point is folded into bias'[n] = q_b[n] − x_zp·Σ_k q_w[n,k] at plan
    time. No rounding, no saturation here: requantize_dense_i8 turns yt into 8 bits.
    Loop nest: as matmul_csr_f32 (prange n; M_TILE slices; 4 nonzeros per pass; axpy).
    indptr [N+1], indices [nnz] int — CSR of w (uint8, uint16, int32 or int64)
    data [nnz] int8 — the nonzero weights, in [−127, 127]
    bias [N] int32 — the folded bias bias'
    xt [K,M] uint8|int8 — activations, channel-major, C-contiguous
    yt [N,M] int32 — accumulator out, C-contiguous, overwritten
    Preconditions: valid CSR; K·max|q_w·q_x| + max|bias'| < 2^31 (checked by the plan).
    Overflow: |u8·s8| ≤ 255·127 < 2^15, so K ≤ 66 000 is safe (|s8·s8| ≤ 2^14: twice that).
    Work: 2·M·nnz int ops; reads xt nnz·M bytes (from L1/L2), writes yt N·M·4 bytes.
    """
    N, M = yt.shape
    for n in prange(N):
        start, end = np.int64(indptr[n]), np.int64(indptr[n + 1])
        y = yt[n]
        for m0 in range(0, M, M_TILE):
            m1 = min(M, m0 + M_TILE)
            y[m0:m1] = bias[n]
            e = start
            while e + 4 <= end:
                v0, v1 = np.int32(data[e]), np.int32(data[e + 1])
                v2, v3 = np.int32(data[e + 2]), np.int32(data[e + 3])
                x0, x1 = xt[np.int64(indices[e])], xt[np.int64(indices[e + 1])]
                x2, x3 = xt[np.int64(indices[e + 2])], xt[np.int64(indices[e + 3])]
                for m in range(m0, m1):
                    y[m] += np.int32(v0 * np.int32(x0[m]) + v1 * np.int32(x1[m])
                                     + v2 * np.int32(x2[m]) + v3 * np.int32(x3[m]))
                e += 4
            for e in range(e, end):
                v, x0 = np.int32(data[e]), xt[np.int64(indices[e])]
                for m in range(m0, m1):
                    y[m] += np.int32(v * np.int32(x0[m]))


matmul_csr_i8 = njit(cache=True, parallel=True)(_matmul_csr_i8)

KERNELS = {"matmul_csr_f32": matmul_csr_f32, "matmul_csr_i8": matmul_csr_i8}
