"""Reference of kernels/conv_quad.py: unpack the quads (by block and class) into the dense weight,
then the CSR conv's reference (densify, convolve in int64, requantize)."""

from __future__ import annotations

import numpy as np

from .conv_csr import dense_conv2d_rq_i8


def quads_to_dense(cptr, qcols, wptr, words, n_out, groups, c_group, kh, kw):
    """The (N, c_group, kh, kw) int8 weight of the quad conv's block layout (engine/plan/weights.
    quad_blocks): block k is output channels g·N/g + 4j + c (g, j = divmod(k, blocks per group),
    c < 4 and below N/g); entry cptr[15k + m − 1] + i of class m has, for each set bit c of m in
    ascending order, the word words[wptr[15k + m − 1] + i·popcount(m) + rank of c], whose byte b is
    w[channel, 4c4 + b, i, j] at quad column q = c4·kh·kw + i·kw + j."""
    cptr, wptr = np.asarray(cptr, np.int64), np.asarray(wptr, np.int64)
    word_bytes = np.asarray(words, "<i4").view(np.int8).reshape(-1, 4)
    per_group = n_out // groups
    group_blocks = -(-per_group // 4)
    w = np.zeros((n_out, c_group, kh, kw), np.int8)
    for k in range(len(wptr) // 15):
        g, j = divmod(k, group_blocks)
        for m in range(1, 16):
            channels = [c for c in range(4) if m >> c & 1]
            first, end = cptr[15 * k + m - 1], cptr[15 * k + m]
            for i, e in enumerate(range(first, end)):
                c4, tap = divmod(int(qcols[e]), kh * kw)
                for r, c in enumerate(channels):
                    n = g * per_group + 4 * j + c
                    assert 4 * j + c < per_group, "a quad of a channel past the group's last"
                    four = word_bytes[wptr[15 * k + m - 1] + i * len(channels) + r]
                    w[n, 4 * c4:4 * c4 + 4, tap // kw, tap % kw] = four
    return w


def conv2d_quad_rq_i8(cptr, qcols, wptr, words, bias, w_sums, x, x_zero_point, m0, shift,
                      y_zero_point, lo, hi, *, kernel_shape, strides, pads, dilations, groups,
                      residual=None):
    """q_y [B,N,OH,OW] int64: conv2d_csr_rq_i8's reference on the quads' dense weight (N = len(bias)).
    For int8 x the kernel starts its sums from bias' − 128·w_sums, so ``w_sums`` must be the
    weight's row sums: checked here."""
    kh, kw = kernel_shape
    c_group = np.asarray(x).shape[1] // groups
    n_out = len(bias)
    w = quads_to_dense(cptr, qcols, wptr, words, n_out, groups, c_group, kh, kw)
    return dense_conv2d_rq_i8(w.reshape(n_out, -1), bias, w_sums, x, x_zero_point, m0, shift,
                              y_zero_point, lo, hi, kernel_shape=kernel_shape, strides=strides,
                              pads=pads, dilations=dilations, groups=groups, residual=residual)


REFERENCES = {"conv2d_quad_rq_i8": conv2d_quad_rq_i8}
