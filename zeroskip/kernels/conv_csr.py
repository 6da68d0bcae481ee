"""Direct sparse convolution: each output channel walks its CSR nonzeros, one axpy over the plane each.

No im2col: the input is copied once into a padded plane ``xp`` (so no loop tests a boundary), and a
nonzero w[n,c,i,j] adds ``w·xp[c]`` shifted by (i·dh, j·dw) to the channel's accumulator. For stride 1
the accumulator rows have the padded pitch Wp, which turns a tap into one contiguous axpy over a whole
tile of rows (see docs/kernels_conv.md). The helpers here are shared with ``depthwise.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

ACC_TILE = 4096
"""Accumulator elements per row tile (16 KB of int32/float32: half of Zen 3's L1D). Chosen by
bench/test_bench_conv.py: 14×14 and 56×56 planes fit one tile; larger tiles slow the 112×112 layers."""


@njit(cache=True)
def _pad_plane(x, xp, pt, pl, fill):
    """xp [Hp,Wp] = x [H,W] shifted by (pt, pl), ``fill`` outside x (xp may crop x's tail)."""
    Hp, Wp = xp.shape
    H, W = x.shape
    for r in range(Hp):
        h = r - pt
        for u in range(Wp):
            xp[r, u] = fill
        if 0 <= h < H:
            u0 = max(pl, 0)
            u1 = min(W + pl, Wp)
            for u in range(u0, u1):
                xp[r, u] = x[h, u - pl]


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


@njit(cache=True)
def _tap_axpy(acc, v, xf, base, r0, r1, OW, Wp, sh, sw):
    """acc[(r−r0)·P + ow] += v·xf[base + r·sh·Wp + ow·sw] for rows r in [r0, r1), ow in [0, OW)."""
    if sh == 1 and sw == 1:  # wide rows: one contiguous run over the whole tile
        start = base + r0 * Wp
        for q in range((r1 - r0 - 1) * Wp + OW):
            acc[q] += v * xf[start + q]
    else:
        for r in range(r0, r1):
            row = base + r * sh * Wp
            a0 = (r - r0) * OW
            for ow in range(OW):
                acc[a0 + ow] += v * xf[row + ow * sw]


@njit(cache=True)
def _store_i32(acc, y, r0, r1, P):
    """y [OH,OW] rows r0..r1 = the accumulator tile (dropping the wide rows' extra columns)."""
    OW = y.shape[1]
    for r in range(r0, r1):
        for ow in range(OW):
            y[r, ow] = acc[(r - r0) * P + ow]


@njit(cache=True)
def _store_f32(acc, y, r0, r1, P, lo, hi):
    """y [OH,OW] rows r0..r1 = clamp(accumulator tile, lo, hi)."""
    OW = y.shape[1]
    for r in range(r0, r1):
        for ow in range(OW):
            y[r, ow] = min(max(acc[(r - r0) * P + ow], lo), hi)


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
    N, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    _pad_planes(x, xp, pt, pl, np.float32(0.0))
    P = _pitch(OW, Wp, sh, sw)
    rows = max(1, ACC_TILE // P)
    taps, Cg, Ng = kh * kw, C // groups, N // groups
    for t in prange(B * N):
        bi, n = t // N, t % N
        xf = xp[bi].reshape(C * Hp * Wp)
        acc = ws[bi, n]
        c0 = (n // Ng) * Cg
        for r0 in range(0, OH, rows):
            r1 = min(OH, r0 + rows)
            acc[:(r1 - r0) * P] = b[n]
            for e in range(indptr[n], indptr[n + 1]):
                k = np.int64(indices[e])
                c, i, j = k // taps, (k % taps) // kw, k % kw
                base = (c0 + c) * Hp * Wp + i * dh * Wp + j * dw
                _tap_axpy(acc, data[e], xf, base, r0, r1, OW, Wp, sh, sw)
            _store_f32(acc, y[bi, n], r0, r1, P, lo, hi)


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
    N, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    _pad_planes(x, xp, pt, pl, x_zero_point)
    P = _pitch(OW, Wp, sh, sw)
    rows = max(1, ACC_TILE // P)
    taps, Cg, Ng = kh * kw, C // groups, N // groups
    for t in prange(B * N):
        bi, n = t // N, t % N
        xf = xp[bi].reshape(C * Hp * Wp)
        acc = ws[bi, n]
        c0 = (n // Ng) * Cg
        for r0 in range(0, OH, rows):
            r1 = min(OH, r0 + rows)
            acc[:(r1 - r0) * P] = bias[n]
            for e in range(indptr[n], indptr[n + 1]):
                k = np.int64(indices[e])
                c, i, j = k // taps, (k % taps) // kw, k % kw
                base = (c0 + c) * Hp * Wp + i * dh * Wp + j * dw
                _tap_axpy(acc, np.int32(data[e]), xf, base, r0, r1, OW, Wp, sh, sw)
            _store_i32(acc, y[bi, n], r0, r1, P)


conv2d_csr_i8 = njit(cache=True, parallel=True)(_conv2d_csr_i8)

KERNELS = {"conv2d_csr_f32": conv2d_csr_f32, "conv2d_csr_i8": conv2d_csr_i8}
