"""Window views shared by the Conv and pool references: padding, then strided windows.

The pads and output sizes come from ``zeroskip.geometry.geometry``.
"""

from __future__ import annotations

import numpy as np


def pad_for_windows(x, begins, out, strides, extents, fill):
    """x [N,C,*spatial] padded with ``fill``: ``begins`` before each spatial axis, and after it
    exactly what the last window needs (more than the end pads when ceil_mode overhangs; the tail
    that no window reads is cut off)."""
    n = len(begins)
    widths = [(0, 0), (0, 0)]
    slices = [slice(None), slice(None)]
    for axis in range(n):
        size = x.shape[2 + axis]
        need = (out[axis] - 1) * strides[axis] + extents[axis]
        end = need - size - begins[axis]
        widths.append((begins[axis], max(end, 0)))
        slices.append(slice(0, need))
    return np.pad(x, widths, constant_values=fill)[tuple(slices)]


def windows(xp, kernel, strides, dilations, out):
    """The windows of padded xp as a view (N, C, *out, *kernel): [n,c,o,j] = xp[n,c, o·s + j·d]."""
    n = len(kernel)
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    axes = tuple(range(2, 2 + n))
    view = np.lib.stride_tricks.sliding_window_view(xp, extents, axis=axes)
    take_out = tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out, strides))
    take_kernel = tuple(slice(None, None, d) for d in dilations)
    return view[(slice(None), slice(None)) + take_out + take_kernel]
