"""References of kernels/depthwise.py: depthwise conv (groups = C, N = C·mult), float64 / int64."""

from __future__ import annotations

import numpy as np

from ..ops.conv import conv
from .im2col import columns
from .quant import requantize_dense_i8


def depthwise_dense_f32(w, b, x, *, kernel_shape, strides, pads, dilations, lo=-np.inf, hi=np.inf):
    """y [B,N,OH,OW] float64 = clip(Conv(x, w viewed (N, 1, kh, kw), b, group=C), lo, hi)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64).reshape(-1, 1, *kernel_shape)
    y = conv(x, w, np.asarray(b, dtype=np.float64), strides=list(strides), pads=list(pads),
             dilations=list(dilations), group=x.shape[1])
    return np.clip(y, lo, hi)


def depthwise_dense_i8(w, bias, x, x_zero_point, *, kernel_shape, strides, pads, dilations):
    """acc [B,N,OH,OW] int64 = bias'[n] + Σ_t q_w[n,t]·cols[n // mult, t, m], pads = x_zero_point.

    Step by step: x padded with x_zp and cut into per-channel columns (B, C, kh·kw, M); channel n
    takes plane n // mult; the integer dot product over the taps; plus bias'[n] (which the plan
    folded as q_b[n] − x_zp·Σ_t q_w[n,t], the full tap sum, because pads hold x_zp).
    """
    x = np.asarray(x, dtype=np.int64)
    B, C = x.shape[:2]
    w = np.asarray(w, dtype=np.int64)
    N = w.shape[0]
    cols, (oh, ow) = columns(x, int(x_zero_point), kernel_shape, strides, pads, dilations, C)
    cols = cols.reshape(B, C, -1, oh * ow)[:, np.arange(N) // (N // C)]    # (B, N, taps, M)
    acc = np.einsum("nt,bntm->bnm", w, cols)
    return acc.reshape(B, N, oh, ow) + np.asarray(bias, dtype=np.int64).reshape(1, N, 1, 1)


def depthwise_nhwc_rq_i8(w_taps, bias, xh, x_zero_point, m0, shift, y_zero_point, lo, hi, *,
                         kernel_shape, strides, pads, dilations):
    """q_y [B,C,OH,OW] int64: depthwise_dense_i8's exact accumulator (multiplier 1) on xh read back
    as NCHW and the taps as (C, kh·kw), then requantize_dense_i8's rounding and clamp."""
    x = np.asarray(xh).transpose(0, 3, 1, 2)
    acc = depthwise_dense_i8(np.asarray(w_taps).T, bias, x, x_zero_point, kernel_shape=kernel_shape,
                             strides=strides, pads=pads, dilations=dilations)
    B, C, OH, OW = acc.shape
    q = [requantize_dense_i8(acc[b].reshape(C, -1), m0, shift, y_zero_point, lo, hi)
         for b in range(B)]
    return np.stack(q).reshape(B, C, OH, OW)


def depthwise_dense_rq_i8(w, bias, x, x_zero_point, m0, shift, y_zero_point, lo, hi, *,
                          kernel_shape, strides, pads, dilations):
    """q_y [B,N,OH,OW] int64: depthwise_dense_i8's exact accumulator, then requantize_dense_i8's
    rounding and clamp, image by image (the fused kernel must give the two kernels' bytes)."""
    acc = depthwise_dense_i8(w, bias, x, x_zero_point, kernel_shape=kernel_shape, strides=strides,
                             pads=pads, dilations=dilations)
    B, N = acc.shape[:2]
    q = [requantize_dense_i8(a.reshape(N, -1), m0, shift, y_zero_point, lo, hi) for a in acc]
    return np.stack(q).reshape(acc.shape)


REFERENCES = {"depthwise_dense_f32": depthwise_dense_f32, "depthwise_dense_i8": depthwise_dense_i8,
              "depthwise_dense_rq_i8": depthwise_dense_rq_i8,
              "depthwise_nhwc_rq_i8": depthwise_nhwc_rq_i8}
