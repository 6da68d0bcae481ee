"""Quantize, dequantize and requantize: the integer edges of an int8 graph (docs/quantization.md §3, §5)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

ELEMENTWISE_BLOCK = 4096
"""Elements per parallel iteration of the flat kernels (16 KB of float32, half of Zen 3's L1D).
Not tuned by a benchmark yet: these kernels are O(size) and run once per graph edge."""


def _requantize_dense_i8(acc, m0, shift, y_zero_point, lo, hi, y):
    # acc (N,M) int32, per-channel (m0, shift) -> y (N,M) uint8|int8
    """y[n,m] = clamp(y_zp + round_half_away(acc[n,m]·m0[n]·2^−shift[n]), lo, hi)

    real = scale·(q − zero_point); acc has scale x_scale·w_scale[n] and zero point 0, y has y_scale,
    y_zero_point; M[n] = x_scale·w_scale[n] / y_scale ≈ m0[n]·2^−shift[n] (quantmath).
    Granularity: per output channel (axis 0); per tensor is the same m0, shift repeated.
    Rounding: one rounding of the exact int64 product p = acc·m0, to nearest, ties away from zero:
    t = (p + 2^(r−1) − [p < 0]) >> r (arithmetic shift). Saturation: clamp to [lo, hi] ⊆ the type's
    range ([0, 255] or [−128, 127], narrowed by a fused ReLU/ReLU6/Clip: quantmath.clamp_bounds).
    acc [N,M] int32 — accumulators; m0 [N] int32 — Q31 mantissas in [2^30, 2^31) or 0
    shift [N] int — right shifts r in [1, 62]; y_zero_point, lo, hi int
    y [N,M] uint8|int8 — output, overwritten
    Overflow: |acc| < 2^31 and m0 < 2^31, so |p| < 2^62 and p + 2^(r−1) < 2^63: int64 holds.
    Work: N·M multiply-shift-clamps; reads 4·N·M bytes, writes N·M.
    """
    for n in prange(acc.shape[0]):
        requantize_row(acc[n], m0[n], shift[n], y_zero_point, lo, hi, y[n])


@njit(cache=True, inline="always")
def tie_free(m0n, shift_n):
    """Whether no int32 sum can fall on a rounding tie of requantize_row with (m0n, shift_n), so
    that round half up gives the same as round half away from zero (docs/quantization.md §3,
    "Tie-free multipliers"). A tie needs acc·m0 ≡ 2^(r−1) mod 2^r; with m0 = odd·2^z that makes
    acc an odd multiple of 2^(r−z−1), impossible for −2^31 ≤ acc < 2^31 once r − z ≥ 33, that is
    once m0 has a set bit among its lowest r − 32. (r − z = 32 is not enough: acc = −2^31.) Then
    also r > 32, which the fast forms need (they shift by 32, then by r − 32). Typical layers
    (M < 2^−2, m0 a rounding to 31 bits) are tie-free; m0 = 2^30 rarely is."""
    r = np.int64(shift_n)
    return r >= 33 and (np.int64(m0n) & ((np.int64(2) << (r - 33)) - 1)) != 0


@njit(cache=True, inline="always")
def requantize_row(acc_n, m0n, shift_n, y_zero_point, lo, hi, y_n):
    """y_n[m] = clamp(y_zp + round_half_away(acc_n[m]·m0n·2^−shift_n), lo, hi) for one output
    channel's row: requantize_dense_i8's loop, and the epilogue of every int8 kernel that
    requantizes a row of sums. The rows are indexed from 0: no negative-index check, so the loops
    vectorize. A tie-free multiplier (tie_free) takes the shorter form, the same bytes: no sign
    term, and 32-bit values after the shift by 32.

    An LLVM IR form of this loop (16 sums per step, the tile's short form, a masked tail) was
    tried and left out: behind a call or inlined, it made the serial build of MobileNetV2's stem
    conv (kernels.serial_kernel, one thread) 0.25–0.35 ms slower (0.5–0.8 → 0.8–1.2 ms), for 1–3 %
    on the depthwise convs; the tiles that requantize in their registers keep it."""
    m0n, r = np.int64(m0n), np.int64(shift_n)
    nudge = np.int64(1) << (r - 1)
    if tie_free(m0n, r):
        low, zp, lo32, hi32 = np.int32(r - 32), np.int32(y_zero_point), np.int32(lo), np.int32(hi)
        for m in range(acc_n.shape[0]):
            t = np.int32((np.int64(acc_n[m]) * m0n + nudge) >> 32) >> low
            y_n[m] = min(max(t + zp, lo32), hi32)
        return
    for m in range(acc_n.shape[0]):
        p = np.int64(acc_n[m]) * m0n
        t = (p + nudge - (p < 0)) >> r
        y_n[m] = min(max(t + y_zero_point, lo), hi)


@njit(cache=True, inline="always")
def requantize_one(acc, m0n, shift_n, y_zero_point, lo, hi):
    """One value of requantize_row, for a kernel whose multiplier changes from value to value
    (channels last: depthwise_nhwc_rq_i8)."""
    r = np.int64(shift_n)
    p = np.int64(acc) * np.int64(m0n)
    t = (p + (np.int64(1) << (r - 1)) - (p < 0)) >> r
    return min(max(t + y_zero_point, lo), hi)


requantize_dense_i8 = njit(cache=True, parallel=True, nogil=True)(_requantize_dense_i8)


def _quantize_dense_f32(x, y_scale, y_zero_point, y):
    # x (L,) float32 -> y (L,) uint8|int8
    """y[i] = clamp(round_half_even(x[i] / y_scale) + y_zero_point, type range), in float32

    real = scale·(q − zero_point), per tensor. As ONNX QuantizeLinear: a true float32 division (not a
    multiply by 1/scale), rounding half to even, saturation to the output type's range.
    x [L] float32 — flat input; y_scale float32 > 0; y_zero_point int in the type's range
    y [L] uint8|int8 — flat output, overwritten
    Preconditions: x has no NaN (its integer is undefined, as in C).
    Work: L divisions; reads 4·L bytes, writes L.
    """
    lo = np.float32(np.iinfo(y.dtype).min)
    hi = np.float32(np.iinfo(y.dtype).max)
    zp, scale = np.float32(y_zero_point), np.float32(y_scale)
    L = x.shape[0]
    for blk in prange((L + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK):
        e0 = blk * ELEMENTWISE_BLOCK  # the block's slices run from index 0: the loop vectorizes
        xb, yb = x[e0:e0 + ELEMENTWISE_BLOCK], y[e0:e0 + ELEMENTWISE_BLOCK]
        for e in range(yb.shape[0]):
            q = np.float32(np.rint(np.float32(xb[e] / scale)) + zp)
            yb[e] = min(max(q, lo), hi)


quantize_dense_f32 = njit(cache=True, parallel=True, nogil=True)(_quantize_dense_f32)


def _dequantize_dense_i8(q, x_scale, x_zero_point, y):
    # q (L,) uint8|int8 -> y (L,) float32
    """y[i] = x_scale·(q[i] − x_zero_point), in float32 (one rounding: q − zp is exact)

    real = scale·(q − zero_point), per tensor.
    q [L] uint8|int8 — flat input; x_scale float32; x_zero_point int; y [L] float32 — flat output
    Work: L multiplies; reads L bytes, writes 4·L.
    """
    scale, zp = np.float32(x_scale), np.int32(x_zero_point)
    L = q.shape[0]
    for blk in prange((L + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK):
        e0 = blk * ELEMENTWISE_BLOCK  # the block's slices run from index 0: the loop vectorizes
        qb, yb = q[e0:e0 + ELEMENTWISE_BLOCK], y[e0:e0 + ELEMENTWISE_BLOCK]
        for e in range(yb.shape[0]):
            yb[e] = scale * np.float32(np.int32(qb[e]) - zp)


dequantize_dense_i8 = njit(cache=True, parallel=True, nogil=True)(_dequantize_dense_i8)

KERNELS = {
    "requantize_dense_i8": requantize_dense_i8,
    "quantize_dense_f32": quantize_dense_f32,
    "dequantize_dense_i8": dequantize_dense_i8,
}
