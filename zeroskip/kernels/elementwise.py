"""Elementwise kernels: the quantized Add, and the float32 steps that no fusion absorbed.

``rounding_shift`` is the one rounding of docs/quantization.md §3 (round half away from zero of
p / 2^r); pool.py shares it.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

ELEMENTWISE_BLOCK = 4096
"""Elements per parallel iteration: large enough that the prange overhead vanishes, small enough to
split a 56×56×256 residual (800 K elements) over every core. Each block's loop indexes slices from
0: an index that starts at blk·ELEMENTWISE_BLOCK may, to LLVM, be negative, and its wraparound test
turned every load and store into single-byte inserts and extracts (4× slower)."""


@njit(cache=True, inline="always")
def rounding_shift(p, r):
    """round(p / 2^r), ties away from zero, for int64 p and 1 ≤ r ≤ 62: (p + 2^(r−1) − [p<0]) >> r."""
    return (p + (np.int64(1) << (r - 1)) - np.int64(p < 0)) >> r


def _add_dense_i8(a, b, y, a_zero_point, b_zero_point, a_multiplier, b_multiplier, shift,
                  y_zero_point, lo, hi):
    # a (L,) + b (L,) -> y (L,), all uint8|int8
    """q_y = clamp(y_zp + round(((q_a − a_zp)·A + (q_b − b_zp)·B) / 2^R), lo, hi)

    real = scale·(q − zero_point), per tensor for a, b and y. A = round(a_scale/y_scale·2^R),
    B = round(b_scale/y_scale·2^R) on one common base 2^R (plan: A, B < 2^44), so the sum is exact
    in int64 (|q − zp| ≤ 255: < 2^53) and is rounded once, half away from zero (§5, §3). Saturates
    to [lo, hi]: the type's range, narrowed by a fused Relu (lo = y_zp) or Relu6/Clip.
    Loop nest: prange over blocks of ELEMENTWISE_BLOCK elements; each block's loop runs on slices
    from index 0, so no index can be negative and the loop vectorizes (8 int64 lanes per AVX-512
    register, vpmullq; AVX2 emulates the 64-bit multiply).
    a, b [L] uint8|int8 — inputs (flat views of equal shapes); y [L] uint8|int8 — output
    a_zero_point, b_zero_point, y_zero_point int; a_multiplier, b_multiplier int64 — A, B;
    shift int — R in [1, 62]; lo, hi int — clamp bounds
    Work: 2 int64 multiplies per element; 3 bytes moved per element. The int64 arithmetic, not the
    memory, bounds it: 200 704 elements (ResNet-18's 64×56×56) in 0.13–0.17 ms on one core of the
    2-vCPU machine (was 0.60), ~0.65 ns per element (bench/test_bench_pool.py).
    """
    L = y.shape[0]
    for blk in prange((L + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK):
        e0 = blk * ELEMENTWISE_BLOCK
        ab, bb = a[e0:e0 + ELEMENTWISE_BLOCK], b[e0:e0 + ELEMENTWISE_BLOCK]
        yb = y[e0:e0 + ELEMENTWISE_BLOCK]
        for e in range(yb.shape[0]):
            p = (np.int64(ab[e]) - a_zero_point) * a_multiplier \
                + (np.int64(bb[e]) - b_zero_point) * b_multiplier
            yb[e] = min(max(rounding_shift(p, shift) + y_zero_point, lo), hi)


add_dense_i8 = njit(cache=True, parallel=True, nogil=True)(_add_dense_i8)


def _bias_act_dense_f32(y, b, lo, hi):
    # y (B,N,M) + b (N) -> y (B,N,M), in place
    """y[i,n,m] = clamp(y[i,n,m] + b[n], lo, hi)

    For the dense f32 path after numpy BLAS (which cannot fuse bias or activation).
    y [B,N,M] float32 — the GEMM output, updated in place; b [N] float32 — bias (zeros if none)
    lo, hi — activation bounds (−inf/inf none, 0/inf Relu, 0/6 Relu6).
    Loop nest: prange over (i, n) rows. Work: 2·B·N·M flops; y read and written once.
    """
    B, N, M = y.shape
    for t in prange(B * N):
        row, bn = y[t // N, t % N], b[t % N]
        for m in range(M):
            row[m] = min(max(row[m] + bn, lo), hi)


bias_act_dense_f32 = njit(cache=True, parallel=True, nogil=True)(_bias_act_dense_f32)


def _clamp_dense_f32(x, y, lo, hi):
    # x (L,) -> y (L,)
    """y = clamp(x, lo, hi): a Relu (0, inf), Relu6 (0, 6) or Clip that no fusion absorbed.

    x, y [L] float32 (may be the same array); lo, hi float. prange over blocks, each looped on
    slices from index 0 (vectorizes, as add_dense_i8). Work: L compares.
    """
    L = y.shape[0]
    for blk in prange((L + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK):
        e0 = blk * ELEMENTWISE_BLOCK
        xb, yb = x[e0:e0 + ELEMENTWISE_BLOCK], y[e0:e0 + ELEMENTWISE_BLOCK]
        for e in range(yb.shape[0]):
            yb[e] = min(max(xb[e], lo), hi)


clamp_dense_f32 = njit(cache=True, parallel=True, nogil=True)(_clamp_dense_f32)


def _add_dense_f32(a, b, y, lo, hi):
    # a (L,) + b (L,) -> y (L,)
    """y = clamp(a + b, lo, hi): a residual Add with its fused Relu (lo = 0) or none (±inf).

    a, b, y [L] float32 (y may alias a or b). prange over blocks, each looped on slices from index 0
    (vectorizes, as add_dense_i8). Work: L flops, 12 bytes/element.
    """
    L = y.shape[0]
    for blk in prange((L + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK):
        e0 = blk * ELEMENTWISE_BLOCK
        ab, bb = a[e0:e0 + ELEMENTWISE_BLOCK], b[e0:e0 + ELEMENTWISE_BLOCK]
        yb = y[e0:e0 + ELEMENTWISE_BLOCK]
        for e in range(yb.shape[0]):
            yb[e] = min(max(ab[e] + bb[e], lo), hi)


add_dense_f32 = njit(cache=True, parallel=True, nogil=True)(_add_dense_f32)

KERNELS = {"add_dense_i8": add_dense_i8, "bias_act_dense_f32": bias_act_dense_f32,
           "clamp_dense_f32": clamp_dense_f32, "add_dense_f32": add_dense_f32}
