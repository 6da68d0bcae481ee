"""Reference of kernels/conv_quad.py: unpack the quads into the dense weight, then the CSR conv's
reference (densify, convolve in int64, requantize)."""

from __future__ import annotations

import numpy as np

from .conv_csr import dense_conv2d_rq_i8


def quads_to_dense(qptr, qcols, words, c_group, kh, kw):
    """The (N, c_group, kh, kw) int8 weight of a quad triple: quad column q = c4·kh·kw + i·kw + j
    holds w[n, 4c4 + b, i, j] in byte b of its word (little-endian), for b < 4."""
    qptr = np.asarray(qptr, np.int64)
    n_out = len(qptr) - 1
    w = np.zeros((n_out, c_group, kh, kw), np.int8)
    rows = np.repeat(np.arange(n_out), np.diff(qptr))
    word_bytes = np.asarray(words, "<i4").view(np.int8).reshape(-1, 4)
    for (n, q, four) in zip(rows, np.asarray(qcols, np.int64), word_bytes):
        c4, tap = divmod(int(q), kh * kw)
        i, j = divmod(tap, kw)
        w[n, 4 * c4:4 * c4 + 4, i, j] = four
    return w


def conv2d_quad_rq_i8(qptr, qcols, words, bias, w_sums, x, x_zero_point, m0, shift, y_zero_point,
                      lo, hi, *, kernel_shape, strides, pads, dilations, groups, residual=None):
    """q_y [B,N,OH,OW] int64: conv2d_csr_rq_i8's reference on the quads' dense weight. For int8 x
    the kernel starts its sums from bias' − 128·w_sums, so ``w_sums`` must be the weight's row sums:
    checked here."""
    kh, kw = kernel_shape
    c_group = np.asarray(x).shape[1] // groups
    w = quads_to_dense(qptr, qcols, words, c_group, kh, kw).reshape(len(qptr) - 1, -1)
    return dense_conv2d_rq_i8(w, bias, w_sums, x, x_zero_point, m0, shift, y_zero_point, lo, hi,
                              kernel_shape=kernel_shape, strides=strides, pads=pads,
                              dilations=dilations, groups=groups, residual=residual)


REFERENCES = {"conv2d_quad_rq_i8": conv2d_quad_rq_i8}
