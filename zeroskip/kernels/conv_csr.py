"""Direct sparse convolution: each output channel walks its CSR nonzeros, one axpy over the plane each.

No im2col: the input is copied once into a padded plane ``xp`` (so no loop tests a boundary), and a
nonzero w[n,c,i,j] adds ``w·xp[c]`` shifted by (i·dh, j·dw) to the channel's accumulator. For stride 1
the accumulator rows have the padded pitch Wp, which turns a tap into one contiguous axpy over a whole
tile of rows (see docs/kernels.md). The helpers here are shared with ``depthwise.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

INT32_MIN, INT32_MAX = np.int32(-2 ** 31), np.int32(2 ** 31 - 1)
"""The int32 kernels' clamp bounds: no clamp (requantization saturates later)."""

ACC_TILE = 4096
"""Accumulator elements per row tile: 16 KB of int32/float32, half of Zen 3's 32 KB L1D, so the tile
stays in L1 while every tap of the channel streams over it. Sized from the cache, not yet swept:
bench/test_bench_conv.py's 14×14, 28×28 and 56×56 layers fit in one tile; the 112×112 layers
(resnet50-conv1, stride 2: pitch 112) use 36-row tiles."""


TAPS_UNROLL = 4
"""Nonzeros (taps) added per pass over the accumulator: each pass loads and stores acc once for four
products. bench/test_bench_conv.py (ResNet-50 3×3, 14×14): ~2× faster than one tap per pass for int8,
neutral for float32; a dense tap loop would vectorize the same way."""


_U = np.uint64


@njit(cache=True)
def _pad_plane(x, xq, pt, pl, fill):
    """xq [Hp,Wp] = x [H,W] shifted by (pt, pl), ``fill`` outside x (xq may crop x's tail).

    No slice per row (Numba reference-counts each one) and uint64 indices (no wraparound test), so
    the copies vectorize; the column ranges are computed once per plane.
    """
    Hp, Wp = xq.shape
    H, W = x.shape
    r0 = min(max(pt, 0), Hp)                     # xq rows r0..r1 hold x rows r0−pt..r1−pt
    r1 = max(r0, min(pt + H, Hp))
    u0 = min(max(pl, 0), Wp)                     # xq columns u0..u1 hold x columns u0−pl..u1−pl
    u1 = max(u0, min(pl + W, Wp))
    for r in range(_U(Hp)):
        if r < r0 or r >= r1:
            for u in range(_U(Wp)):
                xq[r, u] = fill
    src, m = _U(u0 - pl), _U(u1 - u0)
    for r in range(_U(r0), _U(r1)):
        xr = r - _U(pt)
        for u in range(_U(u0)):
            xq[r, u] = fill
        for k in range(m):
            xq[r, _U(u0) + k] = x[xr, src + k]
        for u in range(_U(u1), _U(Wp)):
            xq[r, u] = fill


@njit(cache=True)
def _pad_planes(x, xp, pt, pl, fill):
    """xp [B,C,Hp,Wp] = x [B,C,H,W] padded, one (b, c) plane per parallel iteration."""
    B, C = x.shape[0], x.shape[1]
    for t in prange(B * C):
        _pad_plane(x[t // C, t % C], xp[t // C, t % C], pt, pl, fill)


@njit(cache=True)
def _pitch(OW, Wp, sh, sw):
    """Row pitch of the accumulator: the padded width Wp for stride 1 (wide rows), else OW."""
    return Wp if sh == 1 and sw == 1 else OW


@njit(cache=True, inline="always")
def _axpy4(acc, v0, v1, v2, v3, xf, b0, b1, b2, b3, r0, r1, OW, Wp, sh, sw):
    """acc[(r−r0)·P + ow] += Σ_t v_t·xf[b_t + r·sh·Wp + ow·sw] for rows r0..r1, ow < OW, 4 taps.

    Stride 1: the tile is one contiguous run (wide rows, P = Wp); else one strided run per row.
    The slices make every index provably in range, which is what lets LLVM vectorize the loop.
    """
    if sh == 1 and sw == 1:
        L, s = (r1 - r0 - 1) * Wp + OW, r0 * Wp
        x0, x1 = xf[b0 + s:b0 + s + L], xf[b1 + s:b1 + s + L]
        x2, x3 = xf[b2 + s:b2 + s + L], xf[b3 + s:b3 + s + L]
        for q in range(L):
            acc[q] += v0 * x0[q] + v1 * x1[q] + v2 * x2[q] + v3 * x3[q]
    else:
        span = (OW - 1) * sw + 1
        for r in range(r0, r1):
            a, s = acc[(r - r0) * OW:(r - r0 + 1) * OW], r * sh * Wp
            x0, x1 = xf[b0 + s:b0 + s + span:sw], xf[b1 + s:b1 + s + span:sw]
            x2, x3 = xf[b2 + s:b2 + s + span:sw], xf[b3 + s:b3 + s + span:sw]
            for ow in range(OW):
                a[ow] += v0 * x0[ow] + v1 * x1[ow] + v2 * x2[ow] + v3 * x3[ow]


@njit(cache=True, inline="always")
def _axpy1(acc, v, xf, base, r0, r1, OW, Wp, sh, sw):
    """acc[(r−r0)·P + ow] += v·xf[base + r·sh·Wp + ow·sw]: one tap, as _axpy4."""
    if sh == 1 and sw == 1:
        L, s = (r1 - r0 - 1) * Wp + OW, base + r0 * Wp
        x0 = xf[s:s + L]
        for q in range(L):
            acc[q] += v * x0[q]
    else:
        for r in range(r0, r1):
            a, s = acc[(r - r0) * OW:(r - r0 + 1) * OW], base + r * sh * Wp
            x0 = xf[s:s + (OW - 1) * sw + 1:sw]
            for ow in range(OW):
                a[ow] += v * x0[ow]


@njit(cache=True)
def _tap_offsets(Cg, kh, kw, Hp, Wp, dh, dw):
    """offs [Cg·kh·kw] int64: where tap k = c·kh·kw + i·kw + j starts in the flat padded planes.

    Built once per call (K entries), so the hot loop does a gather instead of four divisions.
    """
    offs = np.empty(Cg * kh * kw, dtype=np.int64)
    for c in range(Cg):
        for i in range(kh):
            for j in range(kw):
                offs[(c * kh + i) * kw + j] = c * Hp * Wp + i * dh * Wp + j * dw
    return offs


@njit(cache=True)
def _taps_into_tile(acc, cols, vals, offs, xf, r0, r1, OW, Wp, sh, sw):
    """acc tile += Σ_e vals[e]·xf shifted by offs[cols[e]], TAPS_UNROLL taps per pass."""
    T = len(cols)
    T4 = T - T % TAPS_UNROLL
    cast = acc.dtype.type  # int8 weights widen to int32 (not int64) before the products
    for e in range(0, T4, TAPS_UNROLL):
        _axpy4(acc, cast(vals[e]), cast(vals[e + 1]), cast(vals[e + 2]), cast(vals[e + 3]), xf,
               offs[cols[e]], offs[cols[e + 1]], offs[cols[e + 2]], offs[cols[e + 3]],
               r0, r1, OW, Wp, sh, sw)
    for e in range(T4, T):
        _axpy1(acc, cast(vals[e]), xf, offs[cols[e]], r0, r1, OW, Wp, sh, sw)


@njit(cache=True)
def _store(acc, y, r0, r1, P, lo, hi):
    """y [OH,OW] rows r0..r1 = clamp(accumulator tile, lo, hi), dropping the wide rows' extra
    columns (int32 accumulators pass the type's own bounds: no clamp)."""
    OW = y.shape[1]
    for r in range(r0, r1):
        a, yr = acc[(r - r0) * P:(r - r0) * P + OW], y[r]
        for ow in range(OW):
            yr[ow] = min(max(a[ow], lo), hi)


@njit(cache=True)
def _channel(acc, cols, vals, offs, xf, b, y, rows, P, Wp, sh, sw, lo, hi):
    """One output channel y [OH,OW] = clamp(b + Σ_e vals[e]·(xf shifted by offs[cols[e]]), lo, hi),
    accumulated tile by tile of ``rows`` output rows in ``acc`` (shared by the f32 and i8 convs and
    the depthwise kernels; Numba compiles it once per dtype)."""
    OH, OW = y.shape
    for r0 in range(0, OH, rows):
        r1 = min(OH, r0 + rows)
        acc[:(r1 - r0) * P] = b
        _taps_into_tile(acc, cols, vals, offs, xf, r0, r1, OW, Wp, sh, sw)
        _store(acc, y, r0, r1, P, lo, hi)


def _conv2d_csr_f32(indptr, indices, data, b, x, xp, ws, y, kh, kw, sh, sw, dh, dw, pt, pl, groups,
                    lo, hi):
    # W (N, C/g·kh·kw) csr * x (B,C,H,W) -> y (B,N,OH,OW)
    """y[b,n,oh,ow] = clamp(b[n] + Σ_(c,i,j)∈nz(n) w[n,c,i,j]·xp[b, g(n)·C/g + c, oh·sh+i·dh, ow·sw+j·dw], lo, hi)

    Loop nest: prange (b,c) pad x into xp; prange (b,n): row tiles of ACC_TILE; nonzeros of row n in
    CSR order; one axpy of the shifted plane into the tile (contiguous for stride 1).
    indptr [N+1], indices [nnz] int — CSR of w viewed (N, C/g·kh·kw), column k = c·kh·kw + i·kw + j
    data [nnz] float32 — the nonzero weights; b [N] float32 — bias (zeros if none)
    x [B,C,H,W] float32 — input; xp [B,C,Hp,Wp] float32 — workspace, Hp = (OH−1)·sh + (kh−1)·dh + 1,
    Wp = (OW−1)·sw + (kw−1)·dw + 1; ws [B,N,OH·P] float32 — workspace, P = Wp if sh = sw = 1 else OW
    y [B,N,OH,OW] float32 — output; kh, kw, sh, sw, dh, dw, pt, pl, groups — geometry (pads top, left)
    lo, hi — fused activation bounds (−inf/inf for none, 0/inf for Relu)
    Preconditions: CSR valid with columns < C/g·kh·kw; N and C divisible by groups; shapes as above.
    Work: 2·B·OH·OW·nnz flops (stride 1: 2·B·OH·Wp·nnz); reads x and xp once per tile from L1/L2.
    """
    B, C, Hp, Wp = xp.shape
    N, OW = y.shape[1], y.shape[3]
    _pad_planes(x, xp, pt, pl, np.float32(0.0))
    P = _pitch(OW, Wp, sh, sw)
    rows = max(1, ACC_TILE // P)
    Cg, Ng = C // groups, N // groups
    offs = _tap_offsets(Cg, kh, kw, Hp, Wp, dh, dw)
    for t in prange(B * N):
        bi, n = t // N, t % N
        xf = xp[bi].reshape(C * Hp * Wp)[(n // Ng) * Cg * Hp * Wp:]
        cols, vals = indices[indptr[n]:indptr[n + 1]], data[indptr[n]:indptr[n + 1]]
        _channel(ws[bi, n], cols, vals, offs, xf, b[n], y[bi, n], rows, P, Wp, sh, sw, lo, hi)


conv2d_csr_f32 = njit(cache=True, parallel=True)(_conv2d_csr_f32)


def _conv2d_csr_i8(indptr, indices, data, bias, x, x_zero_point, xp, ws, y, kh, kw, sh, sw, dh, dw,
                   pt, pl, groups):
    # W (N, C/g·kh·kw) csr int8 * x (B,C,H,W) uint8|int8 -> acc (B,N,OH,OW) int32
    """acc[b,n,oh,ow] = bias'[n] + Σ_(c,i,j)∈nz(n) q_w[n,c,i,j]·xp[b, g(n)·C/g + c, oh·sh+i·dh, ow·sw+j·dw]

    real = scale·(q − zero_point); x per tensor (x_zero_point), w per output channel, zero point 0.
    Pads are filled with x_zero_point (real 0), so every tap multiplies an activation and the
    zero-point correction is the full row sum: bias'[n] = q_b[n] − x_zp·Σ_k q_w[n,k] (plan time).
    No rounding and no saturation here: the int32 accumulator goes to the requantize kernel.
    Loop nest: as conv2d_csr_f32 (prange (b,n), row tiles, nonzeros, axpy).
    indptr [N+1], indices [nnz] int — CSR of w viewed (N, C/g·kh·kw), column k = c·kh·kw + i·kw + j
    data [nnz] int8 — weights in [−127, 127]; bias [N] int32 — bias' above
    x [B,C,H,W] uint8|int8; x_zero_point int; xp [B,C,Hp,Wp] x.dtype, ws [B,N,OH·P] int32 —
    workspaces as in conv2d_csr_f32; y [B,N,OH,OW] int32 — accumulator out; geometry ints as there.
    Preconditions: as conv2d_csr_f32; K·32385 + max|bias'| < 2^31 (checked by the plan).
    Overflow: |q_w·q_x| ≤ 127·255 < 2^15 and a sum has at most K = C/g·kh·kw terms, so int32 holds.
    Work: 2·B·OH·OW·nnz int ops (stride 1: 2·B·OH·Wp·nnz); 1 byte per xp read, 4 per acc.
    """
    B, C, Hp, Wp = xp.shape
    N, OW = y.shape[1], y.shape[3]
    _pad_planes(x, xp, pt, pl, x_zero_point)
    P = _pitch(OW, Wp, sh, sw)
    rows = max(1, ACC_TILE // P)
    Cg, Ng = C // groups, N // groups
    offs = _tap_offsets(Cg, kh, kw, Hp, Wp, dh, dw)
    for t in prange(B * N):
        bi, n = t // N, t % N
        xf = xp[bi].reshape(C * Hp * Wp)[(n // Ng) * Cg * Hp * Wp:]
        cols, vals = indices[indptr[n]:indptr[n + 1]], data[indptr[n]:indptr[n + 1]]
        _channel(ws[bi, n], cols, vals, offs, xf, bias[n], y[bi, n], rows, P, Wp, sh, sw,
                 INT32_MIN, INT32_MAX)


conv2d_csr_i8 = njit(cache=True, parallel=True)(_conv2d_csr_i8)

KERNELS = {"conv2d_csr_f32": conv2d_csr_f32, "conv2d_csr_i8": conv2d_csr_i8}
