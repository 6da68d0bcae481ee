"""Direct sparse convolution: each output channel sums its CSR nonzeros' shifted input runs, in
registers, block by block of output positions.

No im2col: the input is copied once into its padded phases ``xq`` (``pad_phases``: for stride 1 the
padded plane itself; for stride s the s×s planes of every s-th row and column), where every tap of
the conv is one contiguous run of the flat planes at a fixed offset from the output position. So a
block of PIXELS_PER_BLOCK output positions is a row slice of a CSR GEMM whose "rows" are the taps'
starts, and the CSR GEMMs' row block (``_rows.py``) sums it over the channel's nonzeros in vector
registers (docs/kernels.md). The per-plane helpers are in ``_planes.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._planes import pad_phases, row_run
from ._rows import PIXELS_PER_BLOCK, row_block
from .elementwise import add_residual_rows, residual_parts
from .quant import requantize_row


@njit(cache=True, inline="always")
def _pad(x, xq, fill, sh, sw, pt, pl):
    """Pad each plane of x into its phases in xq with ``fill``."""
    B, C = x.shape[0], x.shape[1]
    for t in range(B * C):
        pad_phases(x[t // C, t % C], xq[t // C, t % C], sh, sw, pt, pl, fill)


@njit(cache=True, inline="always")
def _group_planes(xq, bi, n, N, groups):
    """The flat phases of image bi's planes that output channel n reads (its group's), viewed as an
    (L, 1) matrix for the row block."""
    B, C, rows, Wq = xq.shape
    size = C // groups * rows * Wq
    xf = xq[bi].reshape(C * rows * Wq)[n // (N // groups) * size:]
    return xf.reshape(xf.shape[0], 1)


@njit(cache=True, inline="always")
def _block(xf, starts, data, start, end, b, acc, Wq, OH, OW, p0):
    """The channel's sums at output positions p0 .. p0+count (p = oh·Wq + ow, at the phases' pitch
    Wq: columns ow ≥ OW are discarded), in registers over the taps start..end into acc; returns
    count. The positions stop at (OH−1)·Wq + OW, where the last tap of the last phase ends, so no
    tap reads past the group's planes."""
    count = min(PIXELS_PER_BLOCK, (OH - 1) * Wq + OW - p0)
    row_block(acc, 0, xf, starts, data, start, end, p0, count, True, b)
    return count


@njit(cache=True, inline="always")
def _channel(xf, starts, data, start, end, b, acc, y, Wq, lo, hi):
    """One output channel y [OH,OW] = clamp(b + Σ taps, lo, hi), block by block (_block), each
    block's valid columns copied out."""
    OH, OW = y.shape
    for p0 in range(0, (OH - 1) * Wq + OW, PIXELS_PER_BLOCK):
        count = _block(xf, starts, data, start, end, b, acc, Wq, OH, OW, p0)
        for oh in range(p0 // Wq, (p0 + count - 1) // Wq + 1):
            a, z = row_run(p0, count, oh, Wq, OW)
            run, out = acc[a - p0:z - p0], y[oh, a - oh * Wq:z - oh * Wq]
            for i in range(z - a):
                out[i] = min(max(run[i], lo), hi)


@njit(cache=True, inline="always")
def _channel_rq(xf, starts, data, start, end, b, acc, y, Wq, m0n, shift_n, y_zero_point, lo, hi):
    """_channel's int32 sums requantized into the 8-bit y [OH,OW] (requantize_row)."""
    OH, OW = y.shape
    for p0 in range(0, (OH - 1) * Wq + OW, PIXELS_PER_BLOCK):
        count = _block(xf, starts, data, start, end, b, acc, Wq, OH, OW, p0)
        for oh in range(p0 // Wq, (p0 + count - 1) // Wq + 1):
            a, z = row_run(p0, count, oh, Wq, OW)
            requantize_row(acc[a - p0:z - p0], m0n, shift_n, y_zero_point, lo, hi,
                           y[oh, a - oh * Wq:z - oh * Wq])


def _conv2d_csr_f32(indptr, starts, data, b, x, xq, y, kh, kw, sh, sw, dh, dw, pt, pl, groups,
                    lo, hi):
    # W (N, C/g·kh·kw) csr * x (B,C,H,W) -> y (B,N,OH,OW)
    """y[b,n,oh,ow] = clamp(b[n] + Σ_(c,i,j)∈nz(n) w[n,c,i,j]·x[b, g(n)·C/g + c, oh·sh+i·dh−pt, ow·sw+j·dw−pl], lo, hi)
    with zeros outside x.

    Loop nest: pad every plane of x into its phases xq; prange (b,n): blocks of PIXELS_PER_BLOCK
    output positions at the phases' pitch, each summed in registers over row n's nonzeros in CSR
    order (row_block), then its valid columns clamped into y. Each product and sum is rounded to
    float32 in that order.
    indptr [N+1] int, data [nnz] float32 — CSR of w viewed (N, C/g·kh·kw), column k = c·kh·kw +
    i·kw + j, its row pointers and nonzero weights; starts [nnz] int64 — each nonzero's tap start in
    its group's flat phases (_planes.tap_starts of its columns, computed by the plan once per input
    shape); b [N] float32 — bias (zeros if none)
    x [B,C,H,W] float32 — input; xq [B,C,sh·sw·Hq,Wq] float32 — workspace for the phases, with
    Hq = OH + (kh−1)·dh // sh and Wq = OW + (kw−1)·dw // sw (stride 1: the padded plane)
    y [B,N,OH,OW] float32 — output; kh, kw, sh, sw, dh, dw, pt, pl, groups — geometry (pads top, left)
    lo, hi — fused activation bounds (−inf/inf for none, 0/inf for Relu)
    Preconditions: CSR valid with columns < C/g·kh·kw; N and C divisible by groups; shapes as above.
    Work: 2·B·N·((OH−1)·Wq + OW)·nnz/N flops (the columns ow ≥ OW are computed and dropped); reads
    x once and xq once per nonzero per block, from L1/L2.
    """
    _pad(x, xq, np.float32(0.0), sh, sw, pt, pl)
    B, N, Wq = x.shape[0], y.shape[1], xq.shape[3]
    for t in prange(B * N):
        bi, n = t // N, t % N
        _channel(_group_planes(xq, bi, n, N, groups), starts, data, np.int64(indptr[n]),
                 np.int64(indptr[n + 1]), b[n], np.empty(PIXELS_PER_BLOCK, np.float32), y[bi, n],
                 Wq, lo, hi)


conv2d_csr_f32 = njit(cache=True, parallel=True, nogil=True)(_conv2d_csr_f32)


def _conv2d_csr_i8(indptr, starts, data, bias, x, x_zero_point, xq, y, kh, kw, sh, sw, dh, dw,
                   pt, pl, groups):
    # W (N, C/g·kh·kw) csr int8 * x (B,C,H,W) uint8|int8 -> acc (B,N,OH,OW) int32
    """acc[b,n,oh,ow] = bias'[n] + Σ_(c,i,j)∈nz(n) q_w[n,c,i,j]·x[b, g(n)·C/g + c, oh·sh+i·dh−pt, ow·sw+j·dw−pl]
    with x_zero_point outside x.

    real = scale·(q − zero_point); x per tensor (x_zero_point), w per output channel, zero point 0.
    Pads are filled with x_zero_point (real 0), so every tap multiplies an activation and the
    zero-point correction is the full row sum: bias'[n] = q_b[n] − x_zp·Σ_k q_w[n,k] (plan time).
    No rounding and no saturation here: the int32 accumulator goes to the requantize kernel.
    Loop nest: as conv2d_csr_f32 (phases; prange (b,n); blocks summed in int32 registers).
    indptr [N+1], starts [nnz] — as in conv2d_csr_f32
    data [nnz] int8 — weights, anything in [−128, 127]; bias [N] int32 — bias' above
    x [B,C,H,W] uint8|int8; x_zero_point int; xq [B,C,sh·sw·Hq,Wq] x.dtype — workspace as in
    conv2d_csr_f32; y [B,N,OH,OW] int32 — accumulator out; geometry ints as there.
    Preconditions: as conv2d_csr_f32; K·max|q_w·q_x| + max|bias'| < 2^31 (checked by the plan).
    Overflow: a sum has at most K = C/g·kh·kw terms; |u8·s8| ≤ 255·128 = 32 640 < 2^15, so
    K ≤ 65 793 is safe; |s8·s8| ≤ 128·128 = 2^14, so K ≤ 131 071 (the plan checks K).
    Work: as conv2d_csr_f32's, in int ops; 1 byte per xq read.
    """
    _pad(x, xq, x_zero_point, sh, sw, pt, pl)
    B, N, Wq = x.shape[0], y.shape[1], xq.shape[3]
    for t in prange(B * N):
        bi, n = t // N, t % N
        _channel(_group_planes(xq, bi, n, N, groups), starts, data, np.int64(indptr[n]),
                 np.int64(indptr[n + 1]), bias[n], np.empty(PIXELS_PER_BLOCK, np.int32), y[bi, n],
                 Wq, np.int32(-2 ** 31), np.int32(2 ** 31 - 1))


conv2d_csr_i8 = njit(cache=True, parallel=True, nogil=True)(_conv2d_csr_i8)


def _conv2d_csr_rq_i8(indptr, starts, data, bias, x, x_zero_point, xq, m0, shift, y_zero_point,
                      lo, hi, y, kh, kw, sh, sw, dh, dw, pt, pl, groups, residual=None):
    # W (N, C/g·kh·kw) csr int8 * x (B,C,H,W) uint8|int8, requantized -> y (B,N,OH,OW) uint8|int8
    """y[b,n] = requantize(conv2d_csr_i8's acc[b,n]) (m0, shift, y_zero_point, lo, hi as in
    requantize_dense_i8): the two kernels in turn, the same bytes, in one pass.

    Each block of a channel's int32 sums goes from registers to a small scratch (in L1) and is
    requantized from there into y (_channel_rq), so the int32 planes are never stored and read
    back.
    Arguments as conv2d_csr_i8's, then the requantization's; y [B,N,OH,OW] uint8|int8 — output,
    overwritten; residual — None, or a QAdd of y and a (B,N,OH,OW) array fused into the epilogue,
    added once the planes are requantized (elementwise.residual_parts, add_residual_rows).
    Preconditions as the two kernels'.
    Work: conv2d_csr_i8's, and B·N·OH·OW requantizations; writes 1 byte per output.
    """
    _pad(x, xq, x_zero_point, sh, sw, pt, pl)
    B, N, Wq = x.shape[0], y.shape[1], xq.shape[3]
    r, add = residual_parts(residual, y)
    plane = y.shape[2] * y.shape[3]
    for t in prange(B * N):
        bi, n = t // N, t % N
        _channel_rq(_group_planes(xq, bi, n, N, groups), starts, data, np.int64(indptr[n]),
                    np.int64(indptr[n + 1]), bias[n], np.empty(PIXELS_PER_BLOCK, np.int32),
                    y[bi, n], Wq, m0[n], shift[n], y_zero_point, lo, hi)
    add_residual_rows(y.reshape((B * N, plane)), r.reshape((B * N, plane)), add)


conv2d_csr_rq_i8 = njit(cache=True, parallel=True, nogil=True)(_conv2d_csr_rq_i8)

KERNELS = {"conv2d_csr_f32": conv2d_csr_f32, "conv2d_csr_i8": conv2d_csr_i8,
           "conv2d_csr_rq_i8": conv2d_csr_rq_i8}
