"""References of kernels/conv_csr.py: densify the CSR weight, then convolve (float64 / int64)."""

from __future__ import annotations

import numpy as np

from ..ops.conv import conv
from .im2col import columns
from .elementwise import with_residual
from .quant import requantize_dense_i8


def _dense(indptr, indices, data, n_cols, dtype):
    """The (N, n_cols) matrix of a CSR triple."""
    indptr = np.asarray(indptr, dtype=np.int64)
    w = np.zeros((len(indptr) - 1, n_cols), dtype=dtype)
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    w[rows, np.asarray(indices, dtype=np.int64)] = np.asarray(data, dtype=dtype)
    return w


def conv2d_csr_f32(indptr, indices, data, b, x, *, kernel_shape, strides, pads, dilations, groups,
                   lo=-np.inf, hi=np.inf):
    """y [B,N,OH,OW] float64 = clip(Conv(x, w, b), lo, hi), w (N, C/g, kh, kw) from its CSR rows.

    Uses the ONNX-semantics float reference ``reference.ops.conv``; pads = [top, left, bottom, right].
    """
    x = np.asarray(x, dtype=np.float64)
    kh, kw = kernel_shape
    cg = x.shape[1] // groups
    w = _dense(indptr, indices, data, cg * kh * kw, np.float64).reshape(-1, cg, kh, kw)
    y = conv(x, w, np.asarray(b, dtype=np.float64), strides=list(strides), pads=list(pads),
             dilations=list(dilations), group=groups)
    return np.clip(y, lo, hi)


def conv2d_csr_i8(indptr, indices, data, bias, x, x_zero_point, *, kernel_shape, strides, pads,
                  dilations, groups):
    """acc [B,N,OH,OW] int64 = bias'[n] + Σ_k q_w[n,k]·cols[k,m], with pads = x_zero_point.

    Step by step: q_w dense (N, K) int64; x padded with x_zp and cut into columns (B, g, K, M);
    per group, the integer matmul; then the folded bias bias'[n] = q_b[n] − x_zp·Σ_k q_w[n,k].
    """
    x = np.asarray(x, dtype=np.int64)
    B, N = x.shape[0], len(indptr) - 1
    kh, kw = kernel_shape
    cols, (oh, ow) = columns(x, int(x_zero_point), kernel_shape, strides, pads, dilations, groups)
    w = _dense(indptr, indices, data, cols.shape[2], np.int64)
    w = w.reshape(groups, N // groups, cols.shape[2])                  # (g, N/g, K)
    acc = np.einsum("gnk,bgkm->bgnm", w, cols)                         # int64, exact
    acc = acc.reshape(B, N, oh, ow) + np.asarray(bias, dtype=np.int64).reshape(1, N, 1, 1)
    return acc


def conv2d_csr_rq_i8(indptr, indices, data, bias, x, x_zero_point, m0, shift, y_zero_point, lo, hi,
                     *, kernel_shape, strides, pads, dilations, groups, residual=None):
    """q_y [B,N,OH,OW] int64: conv2d_csr_i8's exact accumulator, then requantize_dense_i8's
    rounding and clamp, image by image (the fused kernel must give the two kernels' bytes), then
    the residual QAdd if any (``with_residual``)."""
    acc = conv2d_csr_i8(indptr, indices, data, bias, x, x_zero_point, kernel_shape=kernel_shape,
                        strides=strides, pads=pads, dilations=dilations, groups=groups)
    B, N = acc.shape[:2]
    q = [requantize_dense_i8(a.reshape(N, -1), m0, shift, y_zero_point, lo, hi) for a in acc]
    return with_residual(np.stack(q).reshape(acc.shape), residual)


REFERENCES = {"conv2d_csr_f32": conv2d_csr_f32, "conv2d_csr_i8": conv2d_csr_i8,
              "conv2d_csr_rq_i8": conv2d_csr_rq_i8}


def dense_conv2d_rq_i8(w, bias, w_sums, x, x_zero_point, m0, shift, y_zero_point, lo, hi, *,
                       kernel_shape, strides, pads, dilations, groups, residual=None):
    """conv2d_csr_rq_i8's reference on a dense (N, K) int8 weight: the kernels that start their sums
    from bias' − 128·w_sums for int8 x (the quad and AMX convs) must be given w's row sums, checked
    here."""
    w = np.asarray(w)
    if np.asarray(x).dtype == np.int8:
        assert np.array_equal(np.asarray(w_sums, np.int64), w.astype(np.int64).sum(axis=1)), \
            "w_sums are not the weight's row sums"
    indptr = np.concatenate([[0], np.cumsum(np.count_nonzero(w, axis=1))])
    rows, cols = np.nonzero(w)
    return conv2d_csr_rq_i8(indptr, cols, w[rows, cols], bias, x, x_zero_point, m0, shift,
                            y_zero_point, lo, hi, kernel_shape=kernel_shape, strides=strides,
                            pads=pads, dilations=dilations, groups=groups, residual=residual)
