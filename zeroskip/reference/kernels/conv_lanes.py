"""Reference of kernels/conv_lanes.py: unpack the lane-packed weight, then convolve in float64."""

from __future__ import annotations

import numpy as np

from ..ops.conv import conv

BLOCK_LANES = 32
"""Output channels per block of the lane-packed weight (the kernel's LANE_CHANNELS; a test checks
that the two agree)."""


def unpack_lanes(wb, n_out, c_in, kh, kw):
    """The (N, C, kh, kw) weight of a lane-packed one: blocks of BLOCK_LANES output channels (the
    last padded with zero rows), and in a block the BLOCK_LANES weights at each k = c·kh·kw +
    i·kw + j adjacent, block after block."""
    K = c_in * kh * kw
    blocks = -(-n_out // BLOCK_LANES)
    rows = np.asarray(wb).reshape(blocks, K, BLOCK_LANES).transpose(0, 2, 1)
    return rows.reshape(blocks * BLOCK_LANES, K)[:n_out].reshape(n_out, c_in, kh, kw)


def conv2d_lanes_f32(wb, b, x, *, kernel_shape, strides, pads, dilations, lo=-np.inf,
                     hi=np.inf):
    """y [B,N,OH,OW] float64 = clip(Conv(x, w, b), lo, hi), one group, w unpacked from wb
    (N = len(b)); the ONNX-semantics float reference ``reference.ops.conv``, pads = [top, left,
    bottom, right]."""
    x = np.asarray(x, dtype=np.float64)
    kh, kw = kernel_shape
    w = unpack_lanes(wb, len(b), x.shape[1], kh, kw).astype(np.float64)
    y = conv(x, w, np.asarray(b, dtype=np.float64), strides=list(strides), pads=list(pads),
             dilations=list(dilations), group=1)
    return np.clip(y, lo, hi)


REFERENCES = {"conv2d_lanes_f32": conv2d_lanes_f32}
