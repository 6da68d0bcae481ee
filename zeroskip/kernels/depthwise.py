"""Depthwise convolution (groups = C, N = C·multiplier): each output channel convolves one input plane.

Same machinery as the direct sparse conv (kernels/conv_csr.py): the input is padded once into ``xp``,
and each of the channel's kh·kw dense taps is one axpy of the shifted plane into a row tile of the
accumulator (wide rows for stride 1). See docs/kernels.md.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .conv_csr import ACC_TILE, INT32_MAX, INT32_MIN, _channel, _pad_planes, _pitch, _tap_offsets


def _depthwise_dense_f32(w, b, x, xp, ws, y, kh, kw, sh, sw, dh, dw, pt, pl, lo, hi):
    # w (N, kh·kw) * x (B,C,H,W) -> y (B,N,OH,OW), channel n reads plane n // (N/C)
    """y[b,n,oh,ow] = clamp(b[n] + Σ_(i,j) w[n, i·kw+j]·xp[b, n//mult, oh·sh+i·dh, ow·sw+j·dw], lo, hi)

    Loop nest: prange (b,c) pad x into xp; prange (b,n): row tiles of ACC_TILE; the kh·kw taps;
    one axpy of the shifted plane into the tile (contiguous for stride 1).
    w [N, kh·kw] float32 — taps, row-major (i, j); b [N] float32 — bias (zeros if none)
    x [B,C,H,W] float32; xp [B,C,Hp,Wp] float32, ws [B,N,OH·P] float32 — workspaces as in
    conv2d_csr_f32; y [B,N,OH,OW] float32; kh, kw, sh, sw, dh, dw, pt, pl — geometry; lo, hi —
    fused activation bounds
    Preconditions: N = C·mult; xp, ws, y shaped from the plan's geometry.
    Work: 2·B·N·OH·OW·kh·kw flops (stride 1: OH·Wp instead of OH·OW).
    """
    B, C, Hp, Wp = xp.shape
    N, OW = y.shape[1], y.shape[3]
    _pad_planes(x, xp, pt, pl, np.float32(0.0))
    P = _pitch(OW, Wp, sh, sw)
    rows = max(1, ACC_TILE // P)
    offs = _tap_offsets(1, kh, kw, Hp, Wp, dh, dw)
    taps = np.arange(kh * kw)
    for t in prange(B * N):
        bi, n = t // N, t % N
        xf = xp[bi, n // (N // C)].reshape(Hp * Wp)
        _channel(ws[bi, n], taps, w[n], offs, xf, b[n], y[bi, n], rows, P, Wp, sh, sw, lo, hi)


depthwise_dense_f32 = njit(cache=True, parallel=True)(_depthwise_dense_f32)


def _depthwise_dense_i8(w, bias, x, x_zero_point, xp, ws, y, kh, kw, sh, sw, dh, dw, pt, pl):
    # w (N, kh·kw) int8 * x (B,C,H,W) uint8|int8 -> acc (B,N,OH,OW) int32
    """acc[b,n,oh,ow] = bias'[n] + Σ_(i,j) q_w[n, i·kw+j]·xp[b, n//mult, oh·sh+i·dh, ow·sw+j·dw]

    real = scale·(q − zero_point); x per tensor, w per output channel with zero point 0.
    Pads are filled with x_zero_point (real 0), so the zero-point correction is the full tap sum,
    folded at plan time: bias'[n] = q_b[n] − x_zp·Σ_(i,j) q_w[n,i,j] (the same rule as conv2d_csr_i8).
    No rounding, no saturation: the int32 accumulator goes to the requantize kernel.
    w [N, kh·kw] int8 in [−127, 127]; bias [N] int32 — bias'; x [B,C,H,W] uint8|int8; x_zero_point
    int; xp [B,C,Hp,Wp] x.dtype, ws [B,N,OH·P] int32 — workspaces; y [B,N,OH,OW] int32; geometry ints.
    Overflow: kh·kw·127·255 is tiny next to 2^31 (the plan still checks |bias'|).
    Work: 2·B·N·OH·OW·kh·kw int ops.
    """
    B, C, Hp, Wp = xp.shape
    N, OW = y.shape[1], y.shape[3]
    _pad_planes(x, xp, pt, pl, x_zero_point)
    P = _pitch(OW, Wp, sh, sw)
    rows = max(1, ACC_TILE // P)
    offs = _tap_offsets(1, kh, kw, Hp, Wp, dh, dw)
    taps = np.arange(kh * kw)
    for t in prange(B * N):
        bi, n = t // N, t % N
        xf = xp[bi, n // (N // C)].reshape(Hp * Wp)
        _channel(ws[bi, n], taps, w[n], offs, xf, bias[n], y[bi, n], rows, P, Wp, sh, sw,
                 INT32_MIN, INT32_MAX)


depthwise_dense_i8 = njit(cache=True, parallel=True)(_depthwise_dense_i8)

KERNELS = {"depthwise_dense_f32": depthwise_dense_f32, "depthwise_dense_i8": depthwise_dense_i8}
