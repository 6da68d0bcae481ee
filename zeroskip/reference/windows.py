"""Window views shared by both halves of the reference: padding, then strided windows.

The Conv and pooling ops (``ops/``) and the im2col and pooling mirrors (``kernels/``) all read
their input through these views. The pads and output sizes come from ``zeroskip.geometry.geometry``.

* ``pad_for_windows`` and ``windows``: any window, for Conv, im2col and pooling alike;
* ``pool_windows``, ``windows_of`` and ``window_counts``: one pooling's resolved windows, their
  values, and how many positions each window's average divides by.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..geometry import geometry


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


@dataclass
class PoolWindows:
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


def pool_windows(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode) -> PoolWindows:
    """The windows of a pooling of x [N,C,*spatial], attributes as ONNX MaxPool / AveragePool.

    Refuses pads as large as the kernel (InputError): such a window could hold padding only.
    """
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
    return PoolWindows(spatial, kernel, strides, dilations, begins, ends, out)


def windows_of(x, g: PoolWindows, fill):
    """The windows (N, C, *out, *kernel) of x padded with ``fill``."""
    xp = pad_for_windows(x, g.begins, g.out, g.strides, g.extents, fill)
    return windows(xp, g.kernel, g.strides, g.dilations, g.out)


def window_counts(g: PoolWindows, count_include_pad) -> np.ndarray:
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
