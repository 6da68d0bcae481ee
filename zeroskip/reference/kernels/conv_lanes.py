"""Reference of kernels/conv_lanes.py: unpack the lane-packed weight, then convolve (float64 for the
float conv; int64 and the requantization, the CSR conv's reference, for the int8 one)."""

from __future__ import annotations

import numpy as np

from ..ops.conv import conv
from .conv_csr import dense_conv2d_rq_i8

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


def unpack_lane_words(wl, n_out, channels, kh, kw):
    """The (N, C, kh, kw) int8 weight of lane words: word column k = c4·kh·kw + i·kw + j of
    channel n = 32·blk + l at (blk·K4 + k)·32 + l, byte b the weight on channel 4c4 + b. The
    padding (channels past n_out) must be zero: checked here."""
    K4 = channels // 4 * kh * kw
    blocks = -(-n_out // BLOCK_LANES)
    words = np.ascontiguousarray(np.asarray(wl, np.int32).reshape(blocks, K4, BLOCK_LANES)
                                 .transpose(0, 2, 1)).reshape(blocks * BLOCK_LANES, K4)
    assert not words[n_out:].any(), "padding is not zero"
    taps = words[:n_out].copy().view(np.int8).reshape(n_out, channels // 4, kh * kw, 4)
    return np.ascontiguousarray(taps.transpose(0, 1, 3, 2)).reshape(n_out, channels, kh, kw)


def conv2d_lanes_rq_i8(wl, bias, w_sums, x, x_zero_point, m0, shift, y_zero_point, lo, hi, *,
                       kernel_shape, strides, pads, dilations, residual=None):
    """q_y [B,N,OH,OW] int64: conv2d_csr_rq_i8's reference on the lane words' dense weight
    (N = len(bias), one group)."""
    kh, kw = kernel_shape
    channels = np.asarray(x).shape[1]
    w = unpack_lane_words(wl, len(bias), channels, kh, kw).reshape(len(bias), -1)
    return dense_conv2d_rq_i8(w, bias, w_sums, x, x_zero_point, m0, shift, y_zero_point, lo, hi,
                              kernel_shape=kernel_shape, strides=strides, pads=pads,
                              dilations=dilations, groups=1, residual=residual)


REFERENCES = {"conv2d_lanes_f32": conv2d_lanes_f32, "conv2d_lanes_rq_i8": conv2d_lanes_rq_i8}
