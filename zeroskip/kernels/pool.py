"""Pooling: max on float32, and max, average, global average on uint8/int8 activations.

Geometry (kernel, strides, dilations, pads, ceil_mode) is resolved at plan time by
``zeroskip.geometry.geometry``; the output size is y's shape. Each parallel iteration owns
one (b, c) plane.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._planes import out_range
from .elementwise import rounding_shift


@njit(cache=True)
def _lowest(y):
    """The smallest value of y's integer type: 0 for uint8, −128 for int8."""
    return y.dtype.type(np.iinfo(y.dtype).min)


@njit(cache=True)
def _maxpool_plane(xc, yc, kh, kw, sh, sw, dh, dw, pt, pl, lowest):
    """yc [OH,OW] = max over each window of the plane xc [H,W]; ``lowest`` where only pads lie.

    Per output row: row = lowest; per tap (i, j) whose input row is inside, the valid output columns
    [lo, hi) once, then a (strided) elementwise max over them.
    """
    H, W = xc.shape
    OH, OW = yc.shape
    for oh in range(OH):
        yr = yc[oh]
        yr[:] = lowest
        for i in range(kh):
            h = oh * sh + i * dh - pt
            if h < 0 or h >= H:
                continue
            xr = xc[h]
            for j in range(kw):
                lo, hi = out_range(j, dw, pl, sw, W, OW)
                for ow in range(lo, hi):
                    yr[ow] = max(yr[ow], xr[ow * sw + j * dw - pl])


def _maxpool_dense_i8(x, y, kh, kw, sh, sw, dh, dw, pt, pl):
    # x (B,C,H,W) -> y (B,C,OH,OW), uint8|int8
    """y[b,c,oh,ow] = max_(i,j) x[b,c, oh·sh + i·dh − pt, ow·sw + j·dw − pl] over taps inside x

    Max commutes with real = scale·(q − zero_point) (an increasing map), so in and out share scale
    and zero point (per tensor) and there is no rounding or saturation. Pads never win; a window on
    pads only (dilation) gives the type's lowest value, as the float reference gives float32's.
    Loop nest: prange (b,c); per output row: row = lowest; per tap (i,j) whose input row is inside,
    the valid output columns [lo, hi) once, then a (strided) elementwise max over them.
    x [B,C,H,W] uint8|int8; y [B,C,OH,OW] x.dtype; kh, kw, sh, sw, dh, dw, pt, pl — geometry.
    Work: B·C·OH·OW·kh·kw compares; x read kh·kw times from cache, y written once.
    """
    C = x.shape[1]
    lowest = _lowest(y)
    for t in prange(x.shape[0] * C):
        _maxpool_plane(x[t // C, t % C], y[t // C, t % C], kh, kw, sh, sw, dh, dw, pt, pl, lowest)


maxpool_dense_i8 = njit(cache=True, parallel=True)(_maxpool_dense_i8)


@njit(cache=True)
def _any_tap(o, s, d, p, k, n):
    """Whether output o's window (taps t < k at o·s + t·d − p) reaches inside [0, n)."""
    for t in range(k):
        if 0 <= o * s + t * d - p < n:
            return True
    return False


def _maxpool_dense_f32(x, y, kh, kw, sh, sw, dh, dw, pt, pl):
    # x (B,C,H,W) -> y (B,C,OH,OW), float32
    """y[b,c,oh,ow] = max_(i,j) x[b,c, oh·sh + i·dh − pt, ow·sw + j·dw − pl] over taps inside x

    The same loop as maxpool_dense_i8 with −inf as the start value; a window on pads only (a
    dilation or pad wider than the kernel) gives float32's lowest finite value, as onnxruntime does.
    NaN inputs are not propagated (max keeps the running value), unlike np.max.
    x [B,C,H,W] float32; y [B,C,OH,OW] float32; kh, kw, sh, sw, dh, dw, pt, pl — geometry.
    Work: B·C·OH·OW·kh·kw compares.
    """
    B, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    finite_lowest = np.float32(np.finfo(np.float32).min)
    for t in prange(B * C):
        yc = y[t // C, t % C]
        _maxpool_plane(x[t // C, t % C], yc, kh, kw, sh, sw, dh, dw, pt, pl, np.float32(-np.inf))
        for oh in range(OH):  # a window reaches x iff its rows do and its columns do
            rows_inside = _any_tap(oh, sh, dh, pt, kh, H)
            for ow in range(OW):
                if not (rows_inside and _any_tap(ow, sw, dw, pl, kw, W)):
                    yc[oh, ow] = finite_lowest


maxpool_dense_f32 = njit(cache=True, parallel=True)(_maxpool_dense_f32)


@njit(cache=True)
def _taps_in(o, s, d, p, k, n, declared):
    """Taps t < k of output o inside [0, n) (the input), and how many lie inside the declared pads.

    Input position o·s + t·d − p; the declared padded range is [−p, n + declared) where ``declared``
    is the end pad (the ceil_mode overhang beyond it is never counted). Returns (lo, hi, counted).
    """
    lo = min(k, max(0, (p - o * s + d - 1) // d))
    hi = max(lo, min(k, (n - 1 + p - o * s) // d + 1))
    counted = max(0, min(k, (n + p + declared - 1 - o * s) // d + 1))
    return lo, hi, counted


def _avgpool_dense_i8(x, y, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, count_include_pad,
                      x_zero_point):
    # x (B,C,H,W) -> y (B,C,OH,OW), uint8|int8, same scale and zero point
    """y = round(s / count), ties away from zero; s = Σ_window q (+ x_zp per counted pad position)

    real = scale·(q − zero_point), per tensor, shared by x and y. count = the window's input
    positions (count_include_pad = 0), or input and declared pad positions (= 1; never the ceil_mode
    overhang), as reference.windows.window_counts counts it; a pad is real 0, i.e. x_zp. Rounding (§5):
    floor((s + ⌊count/2⌋)/count) for s ≥ 0, −floor((−s + ⌊count/2⌋)/count) for s < 0. A window of
    count 0 (dilation on pads only) gives x_zp (real 0). The mean of in-range values needs no clamp.
    Loop nest: prange (b,c); per output pixel, the valid tap ranges, then the window sum.
    x [B,C,H,W] uint8|int8; y [B,C,OH,OW] x.dtype; kh, kw, sh, sw, dh, dw — kernel, strides,
    dilations; pt, pl, pb, pr — declared pads (top, left, bottom, right); count_include_pad 0|1.
    Overflow: |s| ≤ kh·kw·255 in int64. Work: B·C·OH·OW·kh·kw additions, one division per output.
    """
    B, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    for t in prange(B * C):
        xc, yc = x[t // C, t % C], y[t // C, t % C]
        for oh in range(OH):
            i0, i1, ci = _taps_in(oh, sh, dh, pt, kh, H, pb)
            for ow in range(OW):
                j0, j1, cj = _taps_in(ow, sw, dw, pl, kw, W, pr)
                s = np.int64(0)
                for i in range(i0, i1):
                    for j in range(j0, j1):
                        s += xc[oh * sh + i * dh - pt, ow * sw + j * dw - pl]
                inside = (i1 - i0) * (j1 - j0)
                count = ci * cj if count_include_pad else inside
                s += (count - inside) * np.int64(x_zero_point)
                if count == 0:
                    yc[oh, ow] = x_zero_point
                elif s >= 0:
                    yc[oh, ow] = (s + count // 2) // count
                else:
                    yc[oh, ow] = -((-s + count // 2) // count)


avgpool_dense_i8 = njit(cache=True, parallel=True)(_avgpool_dense_i8)


def _global_avgpool_dense_i8(x, y, x_zero_point, multiplier, shift, y_zero_point, lo, hi):
    # x (B,C,H,W) -> y (B,C,1,1), uint8|int8, other scale/zero point out
    """q_y = clamp(y_zp + round(acc·m0 / 2^r), lo, hi),  acc = Σ_(h,w) (q_x − x_zp)

    real = scale·(q − zero_point), per tensor. (m0, r) encode M = x_scale / (y_scale·H·W) (§3), so
    the mean and the change of scale are one rounding, half away from zero; saturates to [lo, hi]
    (the type's range, narrowed by a fused activation). With equal in/out parameters the planner
    uses avgpool_dense_i8 with the whole plane as the window instead (exact division, §5).
    Loop nest: prange (b,c); the plane's sum; one requantization.
    x [B,C,H,W] uint8|int8; y [B,C,1,1] uint8|int8; x_zero_point, y_zero_point int; multiplier int
    — m0 < 2^31; shift int — r in [1, 62]; lo, hi int.
    Overflow: |acc| ≤ H·W·255 < 2^31 for H·W < 8·10^6, and |acc·m0| < 2^62 in int64.
    Work: B·C·H·W additions; x read once.
    """
    B, C, H, W = x.shape
    for t in prange(B * C):
        xc = x[t // C, t % C]
        acc = np.int64(0)
        for h in range(H):
            for w in range(W):
                acc += xc[h, w]
        acc -= np.int64(H * W) * x_zero_point
        q = rounding_shift(acc * np.int64(multiplier), shift) + y_zero_point
        y[t // C, t % C, 0, 0] = min(max(q, lo), hi)


global_avgpool_dense_i8 = njit(cache=True, parallel=True)(_global_avgpool_dense_i8)

KERNELS = {"maxpool_dense_f32": maxpool_dense_f32, "maxpool_dense_i8": maxpool_dense_i8,
           "avgpool_dense_i8": avgpool_dense_i8, "global_avgpool_dense_i8": global_avgpool_dense_i8}
