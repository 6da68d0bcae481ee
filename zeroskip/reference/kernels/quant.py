"""References of kernels/quant.py: requantization spelled out in int64, (de)quantization in float32."""

from __future__ import annotations

import numpy as np


def requantize_dense_i8(acc, m0, shift, y_zero_point, lo, hi):
    """q_y [N,M] int64 = clamp(y_zp + round_half_away(acc·m0·2^−shift), lo, hi), per channel (axis 0).

    Step by step, as docs/quantization.md §3, in int64:
      p = acc·m0                         exact: |acc| < 2^31, m0 < 2^31
      t = (p + 2^(r−1) − [p < 0]) >> r   arithmetic shift; ties away from zero
      q = clamp(t + y_zp, lo, hi)
    """
    acc = np.asarray(acc, dtype=np.int64)
    m0 = np.asarray(m0, dtype=np.int64)[:, None]
    r = np.asarray(shift, dtype=np.int64)[:, None]
    p = acc * m0
    nudge = np.left_shift(np.int64(1), r - 1) - (p < 0).astype(np.int64)
    t = np.right_shift(p + nudge, r)
    return np.clip(t + np.int64(y_zero_point), int(lo), int(hi))


def quantize_dense_f32(x, y_scale, y_zero_point, dtype):
    """q [L] int64 = clip(round_half_even(x / y_scale) + y_zp, range of dtype), in float32.

    float32 on purpose: ONNX QuantizeLinear divides in float32, and the kernel must reproduce that
    division (a float64 division would round differently next to a .5 tie).
    """
    x = np.asarray(x, dtype=np.float32)
    info = np.iinfo(np.dtype(dtype))
    q = np.rint(x / np.float32(y_scale)).astype(np.float64) + int(y_zero_point)
    return np.clip(q, info.min, info.max).astype(np.int64)


def dequantize_dense_i8(q, x_scale, x_zero_point):
    """x [L] float64 = x_scale·(q − x_zp); exact in float64 (a float32 times a 9-bit integer)."""
    q = np.asarray(q, dtype=np.int64)
    return np.float64(np.float32(x_scale)) * (q - int(x_zero_point)).astype(np.float64)


REFERENCES = {
    "requantize_dense_i8": requantize_dense_i8,
    "quantize_dense_f32": quantize_dense_f32,
    "dequantize_dense_i8": dequantize_dense_i8,
}
