"""Pooling, N-d: max and average over sliding windows, and their global (whole-plane) forms."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..geometry import geometry
from ._windows import pad_for_windows, windows


@dataclass
class _Geometry:
    """One pooling's resolved windows: per spatial axis, input size, kernel, stride, dilation, pads,
    output size."""

    spatial: list
    kernel: list
    strides: list
    dilations: list
    begins: list
    ends: list
    out: list

    @property
    def extents(self) -> list:
        return [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations)]

    @property
    def window_axes(self) -> tuple:
        return tuple(range(-len(self.kernel), 0))


def _pool_geometry(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode) -> _Geometry:
    kernel = [int(k) for k in kernel_shape]
    if x.ndim != len(kernel) + 2:
        raise InputError(f"expected an input [N,C,*spatial] with {len(kernel)} spatial axes "
                         f"(kernel_shape {kernel}), got shape {x.shape}")
    strides = list(strides or [1] * len(kernel))
    dilations = list(dilations or [1] * len(kernel))
    spatial = list(x.shape[2:])
    begins, ends, out = geometry(spatial, kernel, strides, dilations, pads, auto_pad, ceil_mode)
    if any(p >= k for p, k in zip(begins, kernel)) or any(p >= k for p, k in zip(ends, kernel)):
        # A window made of padding only would have no value (onnxruntime refuses these too).
        raise InputError(f"expected pads smaller than the kernel {kernel}, got pads {begins + ends}")
    return _Geometry(spatial, kernel, strides, dilations, begins, ends, out)


def _windows_of(x, g: _Geometry, fill):
    """The windows (N, C, *out, *kernel) of x padded with ``fill``."""
    xp = pad_for_windows(x, g.begins, g.out, g.strides, g.extents, fill)
    return windows(xp, g.kernel, g.strides, g.dilations, g.out)


def max_pool(x, *, auto_pad="NOTSET", kernel_shape, strides=None, pads=None, dilations=None,
             ceil_mode=0):
    """y[n,c,o] = max_j x[n,c, o·s + j·d − pad]  (pads never win: they are −inf).

    x [N,C,*spatial] float64; attributes as ONNX MaxPool (None = 1s / 0s).
    Work: N·C·prod(out)·prod(kernel) comparisons.
    """
    x = np.asarray(x, dtype=np.float64)
    g = _pool_geometry(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode)
    y = np.max(_windows_of(x, g, -np.inf), axis=g.window_axes)
    # A dilated window can still fall on padding only; onnxruntime gives float32's lowest there.
    return np.where(_window_counts(g, 0) == 0, np.finfo(np.float32).min, y)


def _window_counts(g: _Geometry, count_include_pad) -> np.ndarray:
    """What each output window's sum is divided by: [*out] float64.

    count_include_pad=0 counts the input positions in the window; 1 counts input and declared pad
    positions, but not the ceil_mode overhang past the end pads (onnxruntime's rule).
    """
    counted = np.ones(())
    for size, b, e, o, s, extent in zip(g.spatial, g.begins, g.ends, g.out, g.strides, g.extents):
        position = np.arange((o - 1) * s + extent)  # padded coordinate, as far as the windows reach
        lo, hi = (0, size + b + e) if count_include_pad else (b, b + size)
        counted = np.multiply.outer(counted, (position >= lo) & (position < hi))
    per_window = windows(counted[None, None].astype(np.float64), g.kernel, g.strides, g.dilations,
                         g.out)
    return np.sum(per_window, axis=g.window_axes)[0, 0]


def average_pool(x, *, auto_pad="NOTSET", kernel_shape, strides=None, pads=None, dilations=None,
                 ceil_mode=0, count_include_pad=0):
    """y[n,c,o] = Σ_j x[n,c, o·s + j·d − pad] / count[o]  (pads add 0).

    count[o] — the window's input positions (count_include_pad=0), or its input and declared pad
    positions (count_include_pad=1; the ceil_mode overhang past the end pads is never counted).
    Work: N·C·prod(out)·prod(kernel) additions.
    """
    x = np.asarray(x, dtype=np.float64)
    g = _pool_geometry(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode)
    total = np.sum(_windows_of(x, g, 0.0), axis=g.window_axes)
    count = _window_counts(g, count_include_pad)
    # A dilated window on padding only sums nothing; onnxruntime gives 0 there.
    return total / np.maximum(count, 1)


def _check_global(x):
    if np.ndim(x) < 3:
        raise InputError(f"expected an input [N,C,*spatial] with a spatial axis, got shape "
                         f"{np.shape(x)}")
    return tuple(range(2, np.ndim(x)))


def global_average_pool(x):
    """y[n,c,1,..,1] = mean over all spatial positions of x[n,c]."""
    return np.mean(x, axis=_check_global(x), keepdims=True)


def global_max_pool(x):
    """y[n,c,1,..,1] = max over all spatial positions of x[n,c]."""
    return np.max(x, axis=_check_global(x), keepdims=True)


# --- Integer references of kernels/pool.py (int64, step by step; docs/quantization.md §3, §5) ---

def _int_type_range(dtype) -> tuple:
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def maxpool_dense_i8(x, *, kernel_shape, strides=None, pads=None, dilations=None, ceil_mode=0):
    """y [B,C,*out] int64 = max over the window of q, pads never win (filled with the type's lowest).

    x — uint8 or int8 (its dtype fixes the lowest value; a window on pads only gives it).
    """
    lowest = _int_type_range(np.asarray(x).dtype)[0]
    x = np.asarray(x, dtype=np.int64)
    g = _pool_geometry(x, kernel_shape, strides, pads, dilations, "NOTSET", ceil_mode)
    return np.max(_windows_of(x, g, lowest), axis=g.window_axes)


def avgpool_dense_i8(x, x_zero_point, *, kernel_shape, strides=None, pads=None, dilations=None,
                     ceil_mode=0, count_include_pad=0):
    """y [B,C,*out] int64 = round_half_away(s / count), in and out sharing scale and zero point.

    Step by step: s = Σ q over the window's input positions, plus x_zp (real 0) for each counted pad
    position; count as ``_window_counts`` counts it; s ≥ 0: (s + count//2) // count, s < 0:
    −((−s + count//2) // count); a window with count 0 gives x_zp.
    """
    x = np.asarray(x, dtype=np.int64)
    zp = int(x_zero_point)
    g = _pool_geometry(x, kernel_shape, strides, pads, dilations, "NOTSET", ceil_mode)
    inside = _window_counts(g, 0).astype(np.int64)
    count = _window_counts(g, count_include_pad).astype(np.int64)
    s = np.sum(_windows_of(x, g, 0), axis=g.window_axes) + (count - inside) * zp
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


def maxpool_dense_f32(x, *, kernel_shape, strides=None, pads=None, dilations=None, ceil_mode=0):
    """y [B,C,*out] float64: the float reference MaxPool (pads never win; a window on pads only gives
    float32's lowest finite value)."""
    return max_pool(x, kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations,
                    ceil_mode=ceil_mode)


REFERENCES = {"maxpool_dense_f32": maxpool_dense_f32, "maxpool_dense_i8": maxpool_dense_i8, "avgpool_dense_i8": avgpool_dense_i8,
              "global_avgpool_dense_i8": global_avgpool_dense_i8}
