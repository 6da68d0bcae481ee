"""Reference of kernels/conv_amx.py: unpack the per-tap weight tiles into the dense weight, then the
CSR conv's reference (convolve in int64, requantize)."""

from __future__ import annotations

import numpy as np

from .conv_csr import dense_conv2d_rq_i8


def tiles_to_dense(wt, n_out, channels, kh, kw):
    """The (n_out, channels, kh, kw) int8 weight of pack_tap_weights' tiles: wt[i·kw + j, kb, n, c']
    holds w[n, 64·kb + c', i, j]. The padding (channels past ``channels``, rows past n_out) must be
    zero: checked here."""
    wt = np.asarray(wt, np.int8)
    taps, blocks, n_pad, width = wt.shape
    full = wt.transpose(2, 1, 3, 0).reshape(n_pad, blocks * width, taps)
    assert not full[n_out:].any() and not full[:, channels:].any(), "padding is not zero"
    return np.ascontiguousarray(full[:n_out, :channels].reshape(n_out, channels, kh, kw))


def gathered_to_dense(wt, n_out, channels, kh, kw):
    """The (n_out, channels, kh, kw) int8 weight of pack_gathered_weights' tiles: wt[0, t // 16, n,
    4·(t mod 16) + c] holds w[n, c, i, j] for tap t = i·kw + j. Everything else must be zero:
    checked here."""
    wt = np.array(wt, np.int8)
    w = np.zeros((n_out, channels, kh, kw), np.int8)
    for t in range(kh * kw):
        row = wt[0, t // 16, :n_out, 4 * (t % 16):4 * (t % 16) + channels]
        w[:, :, t // kw, t % kw] = row
        row[:] = 0
    assert not wt.any(), "the gathered tiles hold more than the weight"
    return w


def conv2d_dense_rq_i8(wt, bias, w_sums, x, x_zero_point, m0, shift, y_zero_point, lo, hi, *,
                       kernel_shape, strides, pads, dilations, gathered=False, residual=None):
    """q_y [B,N,OH,OW] int64: conv2d_csr_rq_i8's reference on the tiles' dense weight (N =
    len(bias), one group; ``gathered``: pack_gathered_weights' tiles). For int8 x the kernel starts
    its sums from bias' − 128·w_sums: checked here."""
    kh, kw = kernel_shape
    channels = np.asarray(x).shape[1]
    w = (gathered_to_dense(wt, len(bias), channels, kh, kw) if gathered else
         tiles_to_dense(wt, len(bias), channels, kh, kw)).reshape(len(bias), -1)
    return dense_conv2d_rq_i8(w, bias, w_sums, x, x_zero_point, m0, shift, y_zero_point, lo, hi,
                              kernel_shape=kernel_shape, strides=strides, pads=pads,
                              dilations=dilations, groups=1, residual=residual)


REFERENCES = {"conv2d_dense_rq_i8": conv2d_dense_rq_i8}
