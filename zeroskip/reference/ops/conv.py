"""Convolution, N-d (1-D, 2-D, 3-D) and grouped, by im2col: gather the windows, then matmul."""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...geometry import geometry
from ..windows import pad_for_windows, windows


def conv(x, w, b=None, *, auto_pad="NOTSET", kernel_shape=None, strides=None, pads=None,
         dilations=None, group=1):
    """y[n,m,o] = b[m] + Σ_c Σ_j w[m,c,j]·xpad[n, g(m)·C/G + c, o·s + j·d]  (o, j multi-indices).

    x [N,C,*spatial] float64 — input; w [M,C/G,*kernel] float64 — weights; b [M] — optional bias
    auto_pad, kernel_shape, strides, pads, dilations, group — as ONNX Conv (None = 1s / 0s /
    the weight's kernel)
    Preconditions: C and M divisible by G, w's second axis = C/G, window fits the padded input.
    Work: 2·N·M·(C/G)·prod(kernel)·prod(out) flops; the im2col copy is that over M times the input.
    """
    x, w = np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64)
    if x.ndim < 3 or w.ndim != x.ndim:
        raise InputError(f"expected x [N,C,*spatial] and w [M,C/group,*kernel] of equal rank >= 3, "
                         f"got shapes {x.shape} and {w.shape}")
    n_batch, channels = x.shape[:2]
    m_out, c_group = w.shape[:2]
    kernel = list(w.shape[2:])
    if kernel_shape is not None and list(kernel_shape) != kernel:
        raise InputError(f"expected kernel_shape {list(kernel_shape)} to match the weight's "
                         f"spatial shape {kernel}")
    if group < 1 or channels % group or m_out % group or channels // group != c_group:
        raise InputError(f"expected input channels C = group·(weight's C/group) with M "
                         f"divisible by group; got C = {channels}, weight shape {w.shape}, "
                         f"group = {group}")
    if b is not None and np.shape(b) != (m_out,):
        raise InputError(f"expected a bias of shape ({m_out},), got {np.shape(b)}")
    strides_ = strides or [1] * len(kernel)
    dilations_ = dilations or [1] * len(kernel)
    begins, _, out = geometry(x.shape[2:], kernel, strides_, dilations_, pads, auto_pad)
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations_)]
    xp = pad_for_windows(x, begins, out, strides_, extents, 0.0)
    # im2col: windows (N,C,*out,*kernel) -> cols (N,G,P,C/G·K), P = prod(out), K = prod(kernel);
    # splitting C and moving it are views of the windows, so the last reshape is the one copy
    view = windows(xp, kernel, strides_, dilations_, out)
    pixels, taps = int(np.prod(out)), int(np.prod(kernel))
    spatial = len(kernel)
    view = view.reshape((n_batch, group, c_group) + view.shape[2:])
    order = (0, 1) + tuple(range(3, 3 + spatial)) + (2,) + tuple(range(3 + spatial, 3 + 2 * spatial))
    cols = view.transpose(order).reshape(n_batch, group, pixels, c_group * taps)
    # cols (N,G,P,C/G·K) @ wt (G,C/G·K,M/G) -> y (N,G,P,M/G)
    wt = w.reshape(group, m_out // group, c_group * taps).transpose(0, 2, 1)
    y = cols @ wt
    y = y.transpose(0, 1, 3, 2).reshape(n_batch, m_out, *out)
    if b is not None:
        y = y + np.asarray(b, dtype=np.float64).reshape((m_out,) + (1,) * len(out))
    return y
