"""References of kernels/im2col.py: the column matrices of a convolution, by sliding-window views.

``columns`` is shared by the conv references (conv_csr, depthwise): it pads with a fill value and
gathers every window, in the order the kernels and the weight matrix (N, C/g·kh·kw) use.
"""

from __future__ import annotations

import numpy as np

from ...geometry import geometry
from ..windows import pad_for_windows, windows


def columns(x, fill, kernel_shape, strides, pads, dilations, groups):
    """cols [B, g, C/g·kh·kw, OH·OW] of x padded with ``fill``, and the output size (OH, OW).

    cols[b, g, k, m] = xpad[b, g·C/g + c, oh·sh + i·dh, ow·sw + j·dw], k = c·kh·kw + i·kw + j,
    m = oh·OW + ow. The dtype is x's (callers pass float64 or int64).
    """
    x = np.asarray(x)
    B, C = x.shape[:2]
    kh, kw = kernel_shape
    begins, _, out = geometry(x.shape[2:], [kh, kw], strides, dilations, pads, "NOTSET")
    extents = [(k - 1) * d + 1 for k, d in zip((kh, kw), dilations)]
    xp = pad_for_windows(x, begins, out, strides, extents, fill)
    win = windows(xp, [kh, kw], strides, dilations, out)          # (B, C, OH, OW, kh, kw)
    cg = C // groups
    win = win.reshape(B, groups, cg, out[0] * out[1], kh * kw)     # (B, g, C/g, M, taps)
    cols = win.transpose(0, 1, 2, 4, 3).reshape(B, groups, cg * kh * kw, out[0] * out[1])
    return np.ascontiguousarray(cols), tuple(out)


def im2col_dense_f32(x, *, kernel_shape, strides, pads, dilations, groups):
    """cols [B, g, K, OH, OW] float64 (K-major), pads = 0.0; pads as ONNX (begins then ends)."""
    cols, out = columns(np.asarray(x, dtype=np.float64), 0.0, kernel_shape, strides, pads,
                        dilations, groups)
    return cols.reshape(*cols.shape[:3], *out)


def im2col_dense_i8(x, x_zero_point, *, kernel_shape, strides, pads, dilations, groups):
    """cols [B, g, K, OH, OW] int64 (K-major), pads = x_zero_point (a pad is real 0)."""
    cols, out = columns(np.asarray(x, dtype=np.int64), int(x_zero_point), kernel_shape, strides,
                        pads, dilations, groups)
    return cols.reshape(*cols.shape[:3], *out)


def im2row_dense_i8(xh, x_zero_point, *, kernel_shape, strides, pads, dilations, groups):
    """rows [B, g, OH, OW, K] int64 (pixel-major, K contiguous), pads = x_zero_point, from the
    channels-last xh [B, H, W, C]; K is tap-major: k = (i·kw + j)·C/g + c."""
    x = np.asarray(xh).transpose(0, 3, 1, 2)                       # NCHW
    cols = im2col_dense_i8(x, x_zero_point, kernel_shape=kernel_shape, strides=strides, pads=pads,
                           dilations=dilations, groups=groups)    # (B, g, C/g·kh·kw, OH, OW)
    B, G, _, OH, OW = cols.shape
    kh, kw = kernel_shape
    cols = cols.reshape(B, G, -1, kh * kw, OH, OW).transpose(0, 1, 4, 5, 3, 2)  # (.., OH, OW, taps, c)
    return np.ascontiguousarray(cols.reshape(B, G, OH, OW, -1))


def channels_last_dense_i8(x):
    """xh [B, H, W, C]: x [B, C, H, W] with its channels last."""
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


def transpose_dense_f32(x):
    """xt [K, M]: x [M, K] transposed."""
    return np.ascontiguousarray(np.asarray(x).T)


REFERENCES = {"im2col_dense_f32": im2col_dense_f32, "im2col_dense_i8": im2col_dense_i8,
              "im2row_dense_i8": im2row_dense_i8, "channels_last_dense_i8": channels_last_dense_i8,
              "transpose_dense_f32": transpose_dense_f32}
