"""References of kernels/pool.py: max pooling in float64, as ONNX MaxPool; the int8 pools step by
step in int64 (docs/quantization.md §3 for the global average's requantization, §5 for the average's
rounding)."""

from __future__ import annotations

import numpy as np

from ..ops.pool import max_pool
from ..windows import pool_windows, window_counts, windows_of


def maxpool_dense_f32(x, *, kernel_shape, strides=None, pads=None, dilations=None, ceil_mode=0):
    """y [B,C,*out] float64: the float reference MaxPool (pads never win; a window on pads only gives
    float32's lowest finite value)."""
    return max_pool(x, kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations,
                    ceil_mode=ceil_mode)


def _int_type_range(dtype) -> tuple:
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def maxpool_dense_i8(x, *, kernel_shape, strides=None, pads=None, dilations=None, ceil_mode=0):
    """y [B,C,*out] int64 = max over the window of q, pads never win (filled with the type's lowest).

    x — uint8 or int8 (its dtype fixes the lowest value; a window on pads only gives it).
    """
    lowest = _int_type_range(np.asarray(x).dtype)[0]
    x = np.asarray(x, dtype=np.int64)
    g = pool_windows(x, kernel_shape, strides, pads, dilations, "NOTSET", ceil_mode)
    return np.max(windows_of(x, g, lowest), axis=g.window_axes)


def avgpool_dense_i8(x, x_zero_point, *, kernel_shape, strides=None, pads=None, dilations=None,
                     ceil_mode=0, count_include_pad=0):
    """y [B,C,*out] int64 = round_half_away(s / count), in and out sharing scale and zero point.

    Step by step: s = Σ q over the window's input positions, plus x_zp (real 0) for each counted pad
    position; count as ``window_counts`` counts it; s ≥ 0: (s + count//2) // count, s < 0:
    −((−s + count//2) // count); a window with count 0 gives x_zp.
    """
    x = np.asarray(x, dtype=np.int64)
    zp = int(x_zero_point)
    g = pool_windows(x, kernel_shape, strides, pads, dilations, "NOTSET", ceil_mode)
    inside = window_counts(g, 0).astype(np.int64)
    count = window_counts(g, count_include_pad).astype(np.int64)
    s = np.sum(windows_of(x, g, 0), axis=g.window_axes) + (count - inside) * zp
    safe = np.maximum(count, 1)
    half = safe // 2
    q = np.where(s >= 0, (s + half) // safe, -((-s + half) // safe))
    return np.where(count == 0, zp, q)


def global_avgpool_dense_i8(x, x_zero_point, multiplier, shift, y_zero_point, lo, hi):
    """y [B,C,1,1] int64 = clip(y_zp + round(Σ(q − x_zp)·m0 / 2^r), lo, hi), ties away from zero.

    (m0, r) encode x_scale / (y_scale·H·W); one rounding of the exact int64 product (§3).
    """
    x = np.asarray(x, dtype=np.int64)
    acc = np.sum(x - int(x_zero_point), axis=(2, 3), keepdims=True)
    p = acc * int(multiplier)
    r = int(shift)
    t = (p + (1 << (r - 1)) - (p < 0)) >> r
    return np.clip(t + int(y_zero_point), lo, hi)


def global_avgpool_dense_f32(x):
    """y [B,C,1,1] float64 = the mean of each plane of x, in float64."""
    return np.mean(np.asarray(x, dtype=np.float64), axis=(2, 3), keepdims=True)


REFERENCES = {
    "global_avgpool_dense_f32": global_avgpool_dense_f32,
    "maxpool_dense_f32": maxpool_dense_f32,
    "maxpool_dense_i8": maxpool_dense_i8,
    "avgpool_dense_i8": avgpool_dense_i8,
    "global_avgpool_dense_i8": global_avgpool_dense_i8,
}
