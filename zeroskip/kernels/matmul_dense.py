"""Dense int8 GEMM: x (M,K) and w (N,K), both contiguous along K, into the int32 accumulator yt (N,M).

Register tile (docs/kernels.md): M_TILE = 2 rows of x times N_TILE = 4 rows of w give 8 int32
dot products over K at once; LLVM vectorizes the K loop, so each loaded vector of x (w) is used
4 (2) times and the 8 accumulators stay in ymm registers. Edge rows and columns use a single dot.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

M_TILE = 2
"""Rows of x per register tile. With N_TILE = 4: 8 vector accumulators + 6 loaded vectors ≤ 16 ymm.
Chosen by bench/test_bench_matmul.py (2×4 beat 1×1, 1×2, 1×4 and 2×2 at M=128, K=N=1024;
see docs/kernels.md for why LLVM emits vpmulld here, not vpmaddwd)."""
N_TILE = 4
"""Rows of w per register tile (and per parallel iteration); see M_TILE."""


@njit(cache=True)
def _dot(xm, wn, K):
    """Σ_k int32(xm[k])·int32(wn[k]) in int32 (one output)."""
    s = np.int32(0)
    for k in range(K):
        s = np.int32(s + np.int32(xm[k]) * np.int32(wn[k]))
    return s


@njit(cache=True)
def _tile_2x4(x0, x1, w0, w1, w2, w3, K):
    """The 8 dot products of rows x0, x1 with rows w0..w3, in int32, one pass over K."""
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.int32(0)
    for k in range(K):
        p0, p1 = np.int32(x0[k]), np.int32(x1[k])
        q0, q1, q2, q3 = np.int32(w0[k]), np.int32(w1[k]), np.int32(w2[k]), np.int32(w3[k])
        s00 = np.int32(s00 + p0 * q0)
        s01 = np.int32(s01 + p0 * q1)
        s02 = np.int32(s02 + p0 * q2)
        s03 = np.int32(s03 + p0 * q3)
        s10 = np.int32(s10 + p1 * q0)
        s11 = np.int32(s11 + p1 * q1)
        s12 = np.int32(s12 + p1 * q2)
        s13 = np.int32(s13 + p1 * q3)
    return (s00, s01, s02, s03), (s10, s11, s12, s13)


def _matmul_dense_i8(x, w, bias, yt):
    # w (N,K) int8 @ x (M,K)ᵀ uint8|int8 + bias' -> acc yt (N,M) int32
    """yt[n,m] = bias'[n] + Σ_k q_w[n,k]·q_x[m,k]      (the int32 accumulator)

    real = scale·(q − zero_point): w per output channel with zero point 0, x per tensor; the x zero
    point is folded into bias'[n] = q_b[n] − x_zp·Σ_k q_w[n,k] at plan time. No rounding and no
    saturation here: requantize_dense_i8 turns yt into 8 bits.
    Loop nest: prange panels of N_TILE rows of w; pairs of rows of x; the 2×4 tile's 8 dot products
    over k (vectorized); edges by single dot products.
    x [M,K] uint8|int8 — activations, pixel-major (a Gemm input, or im2row rows), C-contiguous
    w [N,K] int8 — weights in [−127, 127], C-contiguous
    bias [N] int32 — the folded bias bias'
    yt [N,M] int32 — accumulator out (channel-major, NCHW for a conv), overwritten
    Preconditions: K·max|q_w·q_x| + max|bias'| < 2^31 (checked by the plan).
    Overflow: |u8·s8| ≤ 255·127 < 2^15, so K ≤ 66 000 is safe (|s8·s8| ≤ 2^14: twice that).
    Work: 2·M·N·K int ops; reads w once and x N/N_TILE times (from L2), writes yt N·M·4 bytes.
    """
    M, K = x.shape
    N = w.shape[0]
    for p in prange((N + N_TILE - 1) // N_TILE):
        n = p * N_TILE
        if n + N_TILE <= N:
            for m in range(0, M - 1, M_TILE):
                s0, s1 = _tile_2x4(x[m], x[m + 1], w[n], w[n + 1], w[n + 2], w[n + 3], K)
                for j in range(N_TILE):
                    yt[n + j, m] = bias[n + j] + s0[j]
                    yt[n + j, m + 1] = bias[n + j] + s1[j]
            if M % M_TILE:
                for j in range(n, n + N_TILE):
                    yt[j, M - 1] = bias[j] + _dot(x[M - 1], w[j], K)
        else:
            for j in range(n, N):
                for m in range(M):
                    yt[j, m] = bias[j] + _dot(x[m], w[j], K)


matmul_dense_i8 = njit(cache=True, parallel=True)(_matmul_dense_i8)

KERNELS = {"matmul_dense_i8": matmul_dense_i8}
