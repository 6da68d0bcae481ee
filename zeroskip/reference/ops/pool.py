"""Pooling, N-d: max and average over sliding windows, and their global (whole-plane) forms."""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ..windows import pool_windows, window_counts, windows_of


def max_pool(x, *, auto_pad="NOTSET", kernel_shape, strides=None, pads=None, dilations=None,
             ceil_mode=0):
    """y[n,c,o] = max_j x[n,c, o·s + j·d − pad]  (pads never win: they are −inf).

    x [N,C,*spatial] float64; attributes as ONNX MaxPool (None = 1s / 0s).
    Work: N·C·prod(out)·prod(kernel) comparisons.
    """
    x = np.asarray(x, dtype=np.float64)
    g = pool_windows(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode)
    y = np.max(windows_of(x, g, -np.inf), axis=g.window_axes)
    # A dilated window can still fall on padding only; onnxruntime gives float32's lowest there.
    return np.where(window_counts(g, 0) == 0, np.finfo(np.float32).min, y)


def average_pool(x, *, auto_pad="NOTSET", kernel_shape, strides=None, pads=None, dilations=None,
                 ceil_mode=0, count_include_pad=0):
    """y[n,c,o] = Σ_j x[n,c, o·s + j·d − pad] / count[o]  (pads add 0).

    count[o] — the window's input positions (count_include_pad=0), or its input and declared pad
    positions (count_include_pad=1; the ceil_mode overhang past the end pads is never counted).
    Work: N·C·prod(out)·prod(kernel) additions.
    """
    x = np.asarray(x, dtype=np.float64)
    g = pool_windows(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode)
    total = np.sum(windows_of(x, g, 0.0), axis=g.window_axes)
    count = window_counts(g, count_include_pad)
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
