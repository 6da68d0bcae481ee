"""Direct sparse convolution: each output channel walks its CSR nonzeros, one axpy over the plane each.

No im2col: the input is copied once into a padded plane ``xp`` (so no loop tests a boundary), and a
nonzero w[n,c,i,j] adds ``w·xp[c]`` shifted by (i·dh, j·dw) to the channel's accumulator. For stride 1
the accumulator rows have the padded pitch Wp, which turns a tap into one contiguous axpy over a whole
tile of rows (see docs/kernels.md). The per-plane helpers, shared with ``depthwise.py``, are in
``_planes.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._planes import (ACC_TILE, INT32_MAX, INT32_MIN, accumulator_pitch, conv_channel,
                      conv_channel_rq, pad_planes, tap_offsets)
from ._rows import PIXELS_PER_BLOCK, row_block
from .quant import requantize_row


@njit(cache=True, inline="always")
def _prepare(x, xp, y, fill, kh, kw, sh, sw, dh, dw, pt, pl, groups):
    """Pad x into xp with ``fill``; (the accumulator pitch P, rows per tile, the taps' offsets)."""
    B, C, Hp, Wp = xp.shape
    pad_planes(x, xp, pt, pl, fill)
    P = accumulator_pitch(y.shape[3], Wp, sh, sw)
    return P, max(1, ACC_TILE // P), tap_offsets(C // groups, kh, kw, Hp, Wp, dh, dw)


@njit(cache=True, inline="always")
def _channel(indptr, indices, data, xp, bi, n, N, groups):
    """Output channel n of image bi: its group's planes of xp (flat), its nonzeros' columns and
    values."""
    B, C, Hp, Wp = xp.shape
    Cg, Ng = C // groups, N // groups
    xf = xp[bi].reshape(C * Hp * Wp)[(n // Ng) * Cg * Hp * Wp:]
    return xf, indices[indptr[n]:indptr[n + 1]], data[indptr[n]:indptr[n + 1]]


@njit(cache=True, inline="always")
def _flat_taps(indices, offs):
    """Each nonzero's start in the flat padded planes of its group (offs[indices[e]], int64): the
    row block reads tap e of output position p at flat[e] + p."""
    flat = np.empty(indices.shape[0], np.int64)
    for e in range(indices.shape[0]):
        flat[e] = offs[np.int64(indices[e])]
    return flat


@njit(cache=True, inline="always")
def _stride1_blocks(xf, flat, data, start, end, b, acc, Wp, OH, OW, p0):
    """Stride 1: the channel's sums at the wide positions p0 .. p0+count (p = oh·Wp + ow, the
    padded pitch: every tap is one contiguous run of xf), in registers over the taps start..end
    (row_block) into acc [PIXELS_PER_BLOCK]; returns count. The positions run to
    (OH−1)·Wp + OW, so no tap reads past the group's last plane."""
    count = min(PIXELS_PER_BLOCK, (OH - 1) * Wp + OW - p0)
    row_block(acc, 0, xf.reshape(xf.shape[0], 1), flat, data, start, end, p0, count, True, b)
    return count


@njit(cache=True, inline="always")
def _channel_stride1(xf, flat, data, start, end, b, acc, y, Wp, lo, hi):
    """One output channel y [OH,OW] of a stride-1 conv: clamp(b + Σ taps, lo, hi), block by block
    of wide positions (_stride1_blocks), each block's valid columns (ow < OW) copied out."""
    OH, OW = y.shape
    for p0 in range(0, (OH - 1) * Wp + OW, PIXELS_PER_BLOCK):
        count = _stride1_blocks(xf, flat, data, start, end, b, acc, Wp, OH, OW, p0)
        for oh in range(p0 // Wp, (p0 + count - 1) // Wp + 1):
            a, z = max(p0, oh * Wp), min(p0 + count, oh * Wp + OW)
            run, out = acc[a - p0:z - p0], y[oh, a - oh * Wp:z - oh * Wp]
            for i in range(z - a):
                out[i] = min(max(run[i], lo), hi)


@njit(cache=True, inline="always")
def _channel_stride1_rq(xf, flat, data, start, end, b, acc, y, Wp, m0n, shift_n, y_zero_point,
                        lo, hi):
    """_channel_stride1's int32 sums requantized into the 8-bit y [OH,OW] (requantize_row)."""
    OH, OW = y.shape
    for p0 in range(0, (OH - 1) * Wp + OW, PIXELS_PER_BLOCK):
        count = _stride1_blocks(xf, flat, data, start, end, b, acc, Wp, OH, OW, p0)
        for oh in range(p0 // Wp, (p0 + count - 1) // Wp + 1):
            a, z = max(p0, oh * Wp), min(p0 + count, oh * Wp + OW)
            requantize_row(acc[a - p0:z - p0], m0n, shift_n, y_zero_point, lo, hi,
                           y[oh, a - oh * Wp:z - oh * Wp])


def _conv2d_csr_f32(indptr, indices, data, b, x, xp, ws, y, kh, kw, sh, sw, dh, dw, pt, pl, groups,
                    lo, hi):
    # W (N, C/g·kh·kw) csr * x (B,C,H,W) -> y (B,N,OH,OW)
    """y[b,n,oh,ow] = clamp(b[n] + Σ_(c,i,j)∈nz(n) w[n,c,i,j]·xp[b, g(n)·C/g + c, oh·sh+i·dh, ow·sw+j·dw], lo, hi)

    Loop nest: prange (b,c) pad x into xp; prange (b,n): stride 1, blocks of PIXELS_PER_BLOCK wide
    positions summed in registers over row n's nonzeros (row_block); other strides, row tiles of
    ACC_TILE, nonzeros of row n in CSR order, one strided axpy of the plane into the tile.
    indptr [N+1], indices [nnz] int — CSR of w viewed (N, C/g·kh·kw), column k = c·kh·kw + i·kw + j
    data [nnz] float32 — the nonzero weights; b [N] float32 — bias (zeros if none)
    x [B,C,H,W] float32 — input; xp [B,C,Hp,Wp] float32 — workspace, Hp = (OH−1)·sh + (kh−1)·dh + 1,
    Wp = (OW−1)·sw + (kw−1)·dw + 1; ws [B,N,OH·OW] float32 — the tile loop's workspace, for strided
    convs (stride 1 sums in registers: ws may have length 0)
    y [B,N,OH,OW] float32 — output; kh, kw, sh, sw, dh, dw, pt, pl, groups — geometry (pads top, left)
    lo, hi — fused activation bounds (−inf/inf for none, 0/inf for Relu)
    Preconditions: CSR valid with columns < C/g·kh·kw; N and C divisible by groups; shapes as above.
    Work: 2·B·OH·OW·nnz flops (stride 1: 2·B·OH·Wp·nnz); reads x and xp once per tile from L1/L2.
    """
    P, rows, offs = _prepare(x, xp, y, np.float32(0.0), kh, kw, sh, sw, dh, dw, pt, pl, groups)
    B, C, Hp, Wp = xp.shape
    N = y.shape[1]
    stride1, flat = sh == 1 and sw == 1, _flat_taps(indices, offs)
    for t in prange(B * N):
        bi, n = t // N, t % N
        xf, cols, vals = _channel(indptr, indices, data, xp, bi, n, N, groups)
        if stride1:
            _channel_stride1(xf, flat, data, np.int64(indptr[n]), np.int64(indptr[n + 1]), b[n],
                             np.empty(PIXELS_PER_BLOCK, np.float32), y[bi, n], Wp, lo, hi)
        else:
            conv_channel(ws[bi, n], cols, vals, offs, xf, b[n], y[bi, n], rows, P, Wp, sh, sw, lo,
                         hi)


conv2d_csr_f32 = njit(cache=True, parallel=True, nogil=True)(_conv2d_csr_f32)


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
    data [nnz] int8 — weights, anything in [−128, 127]; bias [N] int32 — bias' above
    x [B,C,H,W] uint8|int8; x_zero_point int; xp [B,C,Hp,Wp] x.dtype, ws [B,N,OH·P] int32 —
    workspaces as in conv2d_csr_f32; y [B,N,OH,OW] int32 — accumulator out; geometry ints as there.
    Preconditions: as conv2d_csr_f32; K·max|q_w·q_x| + max|bias'| < 2^31 (checked by the plan).
    Overflow: a sum has at most K = C/g·kh·kw terms; |u8·s8| ≤ 255·128 = 32 640 < 2^15, so
    K ≤ 65 793 is safe; |s8·s8| ≤ 128·128 = 2^14, so K ≤ 131 071 (the plan checks K).
    Work: 2·B·OH·OW·nnz int ops (stride 1: 2·B·OH·Wp·nnz); 1 byte per xp read, 4 per acc.
    """
    P, rows, offs = _prepare(x, xp, y, x_zero_point, kh, kw, sh, sw, dh, dw, pt, pl, groups)
    B, C, Hp, Wp = xp.shape
    N = y.shape[1]
    stride1, flat = sh == 1 and sw == 1, _flat_taps(indices, offs)
    for t in prange(B * N):
        bi, n = t // N, t % N
        xf, cols, vals = _channel(indptr, indices, data, xp, bi, n, N, groups)
        if stride1:
            _channel_stride1(xf, flat, data, np.int64(indptr[n]), np.int64(indptr[n + 1]), bias[n],
                             np.empty(PIXELS_PER_BLOCK, np.int32), y[bi, n], Wp, INT32_MIN,
                             INT32_MAX)
        else:
            conv_channel(ws[bi, n], cols, vals, offs, xf, bias[n], y[bi, n], rows, P, Wp, sh, sw,
                         INT32_MIN, INT32_MAX)


conv2d_csr_i8 = njit(cache=True, parallel=True, nogil=True)(_conv2d_csr_i8)


def _conv2d_csr_rq_i8(indptr, indices, data, bias, x, x_zero_point, xp, ws, m0, shift,
                      y_zero_point, lo, hi, y, kh, kw, sh, sw, dh, dw, pt, pl, groups):
    # W (N, C/g·kh·kw) csr int8 * x (B,C,H,W) uint8|int8, requantized -> y (B,N,OH,OW) uint8|int8
    """y[b,n] = requantize(conv2d_csr_i8's acc[b,n]) (m0, shift, y_zero_point, lo, hi as in
    requantize_dense_i8): the two kernels in turn, the same bytes, in one pass.

    Each tile of a channel's int32 sums (ACC_TILE values, in L1) is requantized into y as soon as
    its taps are in (conv_channel_rq), so the int32 planes are never stored and read back.
    Arguments as conv2d_csr_i8's (ws a workspace as there), then the requantization's;
    y [B,N,OH,OW] uint8|int8 — output, overwritten. Preconditions as the two kernels'.
    Work: conv2d_csr_i8's, and B·N·OH·OW requantizations; writes 1 byte per output.
    """
    P, rows, offs = _prepare(x, xp, y, x_zero_point, kh, kw, sh, sw, dh, dw, pt, pl, groups)
    B, C, Hp, Wp = xp.shape
    N = y.shape[1]
    stride1, flat = sh == 1 and sw == 1, _flat_taps(indices, offs)
    for t in prange(B * N):
        bi, n = t // N, t % N
        xf, cols, vals = _channel(indptr, indices, data, xp, bi, n, N, groups)
        if stride1:
            _channel_stride1_rq(xf, flat, data, np.int64(indptr[n]), np.int64(indptr[n + 1]),
                                bias[n], np.empty(PIXELS_PER_BLOCK, np.int32), y[bi, n], Wp,
                                m0[n], shift[n], y_zero_point, lo, hi)
        else:
            conv_channel_rq(ws[bi, n], cols, vals, offs, xf, bias[n], y[bi, n], rows, P, Wp, sh,
                            sw, m0[n], shift[n], y_zero_point, lo, hi)


conv2d_csr_rq_i8 = njit(cache=True, parallel=True, nogil=True)(_conv2d_csr_rq_i8)

KERNELS = {"conv2d_csr_f32": conv2d_csr_f32, "conv2d_csr_i8": conv2d_csr_i8,
           "conv2d_csr_rq_i8": conv2d_csr_rq_i8}
