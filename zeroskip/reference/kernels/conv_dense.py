"""Reference of kernels/conv_dense.py: unpack the blocked weight, then convolve in float64."""

from __future__ import annotations

import numpy as np

from ..ops.conv import conv

BLOCK_ROWS = 6
"""Output channels per block of the packed weight (the kernel's FMA_ROWS; a test checks that the
two agree)."""


def unpack_rows(wp, n_out, c_group, kh, kw, groups):
    """The (N, c_group, kh, kw) weight of a packed one: group g's channels in blocks of BLOCK_ROWS
    (the last padded with zero rows), and in a block the BLOCK_ROWS weights at each k = c·kh·kw +
    i·kw + j adjacent, block after block."""
    per, K = n_out // groups, c_group * kh * kw
    blocks = -(-per // BLOCK_ROWS)
    blocked = np.asarray(wp).reshape(groups, blocks, K, BLOCK_ROWS)
    rows = blocked.transpose(0, 1, 3, 2).reshape(groups, blocks * BLOCK_ROWS, K)
    return rows[:, :per].reshape(n_out, c_group, kh, kw)


def conv2d_dense_f32(wp, b, x, *, kernel_shape, strides, pads, dilations, groups, lo=-np.inf,
                     hi=np.inf):
    """y [B,N,OH,OW] float64 = clip(Conv(x, w, b), lo, hi), w unpacked from wp (N = len(b)); the
    ONNX-semantics float reference ``reference.ops.conv``, pads = [top, left, bottom, right]."""
    x = np.asarray(x, dtype=np.float64)
    kh, kw = kernel_shape
    w = unpack_rows(wp, len(b), x.shape[1] // groups, kh, kw, groups).astype(np.float64)
    y = conv(x, w, np.asarray(b, dtype=np.float64), strides=list(strides), pads=list(pads),
             dilations=list(dilations), group=groups)
    return np.clip(y, lo, hi)


REFERENCES = {"conv2d_dense_f32": conv2d_dense_f32}
