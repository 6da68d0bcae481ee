"""Depthwise convolution (groups = C, N = C·multiplier): each output channel convolves one input plane.

3×3 kernels (MobileNet's, at every stride and dilation) take a fused row loop: one parallel
iteration per input plane pads it into ``xp`` and, while the plane is in L1, computes its ``mult``
output channels one output row at a time, all nine taps, bias and clamp in one vectorized pass that
writes ``y`` directly (no accumulator workspace, no separate padding pass). Other kernel sizes use
the direct sparse conv's tile loop (``conv_channel`` of kernels/_planes.py) with the dense taps.
See docs/kernels.md.

Indices in the row loops are uint64: Numba skips its negative-index wraparound test for unsigned
indices, and that test (or the reference counting of a slice per row) stops LLVM from vectorizing.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._planes import (ACC_TILE, INT32_MAX, INT32_MIN, accumulator_pitch, conv_channel,
                      conv_channel_rq, pad_plane, pad_planes, tap_offsets)
from ._broadcast import unsigned_bias
from ._dwtile import (LANES, dw3_plane_tile, dw3_tile, fits, permutation, plane_table,
                      row_words)
from ._dwtile import RUNS as DW3_RUNS
from .quant import requantize_one, requantize_row

_U = np.uint64


@njit(cache=True, inline="always")
def sign_flip8(x):
    """The byte that makes x's values unsigned by xor: 0 for uint8 x, −128 (x + 128) for int8 x."""
    return x.dtype.type(-128) if x.dtype.type(-1) < 0 else x.dtype.type(0)


@njit(cache=True, inline="always")
def _rows_3x3(w, b, xq, y, sh, sw, dh, dw, lo, hi):
    """The loops of _plane_3x3 at column step ``sw`` (inlined: a literal step reaches LLVM)."""
    OH, OW = y.shape
    cast = y.dtype.type  # int8 taps widen to int32 (not int64) before the products
    w0, w1, w2, w3, w4 = cast(w[0]), cast(w[1]), cast(w[2]), cast(w[3]), cast(w[4])
    w5, w6, w7, w8 = cast(w[5]), cast(w[6]), cast(w[7]), cast(w[8])
    c1, c2 = _U(dw), _U(2 * dw)                  # column offsets of taps j = 1, 2 (j = 0: 0)
    for oh in range(_U(OH)):
        r0 = oh * _U(sh)
        x0, x1, x2, yr = xq[r0], xq[r0 + _U(dh)], xq[r0 + _U(2 * dh)], y[oh]
        for ow in range(_U(OW)):
            u = ow * sw
            s = b + (w0 * x0[u] + w1 * x0[c1 + u] + w2 * x0[c2 + u] + w3 * x1[u])
            s = s + (w4 * x1[c1 + u] + w5 * x1[c2 + u] + w6 * x2[u] + w7 * x2[c1 + u])
            yr[ow] = min(max(cast(s + w8 * x2[c2 + u]), lo), hi)


@njit(cache=True)
def _plane_3x3(w, b, xq, y, sh, sw, dh, dw, lo, hi):
    """y [OH,OW] = clamp(b + Σ_(i,j) w[3i+j]·xq[oh·sh + i·dh, ow·sw + j·dw], lo, hi), one output
    row per pass over ow, the nine taps in registers. The sum is grouped as the tile loop groups it,
    (b + Σ_{t<4}) + Σ_{4≤t<8} + w[8]·x, so both loops give the same float32 results.
    Stride 2 passes its step as a constant, so the strided loads vectorize as shuffles (int8
    144×56×56: 0.53 → 0.39 ms on one core; float32 unchanged); other strides pass it as a variable."""
    if sw == 2:
        _rows_3x3(w, b, xq, y, sh, _U(2), dh, dw, lo, hi)
    else:
        _rows_3x3(w, b, xq, y, sh, _U(sw), dh, dw, lo, hi)


@njit(cache=True)
def _planes_3x3(w, b, x, xp, y, bi, c, mult, sh, sw, dh, dw, pt, pl, fill, lo, hi):
    """One parallel iteration of the 3×3 loop: pad plane (bi, c) into xp with ``fill`` while it is
    in L1, then its ``mult`` output channels, one output row per pass (_plane_3x3)."""
    pad_plane(x[bi, c], xp[bi, c], pt, pl, fill)
    for n in range(c * mult, (c + 1) * mult):
        _plane_3x3(w[n], b[n], xp[bi, c], y[bi, n], sh, sw, dh, dw, lo, hi)


DW_BLOCK = 16
"""Outputs per block of the float 3×3 depthwise rows (``_plane_3x3_blocks``): one zmm of float32."""

DW_BLOCK_MAX_WIDTH = 28
"""Output rows up to this wide run in blocks (``_plane_3x3_blocks``); wider ones keep the row
loop, whose own vector body then covers most of the row. The sums alone, one thread, ns a plane
(row loop / blocks): 14×14 123 / 101, 7×7 83 / 59, but 56×56 836 / 1033."""


@njit(cache=True, inline="always")
def _tap_sum_3x3(w0, w1, w2, w3, w4, w5, w6, w7, w8, b, xf, r0, r1, r2, u, c1, c2, lo, hi):
    """One output of the 3×3 depthwise conv: the taps at flat rows r0, r1, r2 of xf, column u
    (columns u + c1, u + c2 for j = 1, 2), grouped as _rows_3x3 groups them, biased and clamped."""
    s = b + (w0 * xf[r0 + u] + w1 * xf[r0 + c1 + u] + w2 * xf[r0 + c2 + u] + w3 * xf[r1 + u])
    s = s + (w4 * xf[r1 + c1 + u] + w5 * xf[r1 + c2 + u] + w6 * xf[r2 + u] + w7 * xf[r2 + c1 + u])
    return min(max(s + w8 * xf[r2 + c2 + u], lo), hi)


@njit(cache=True, inline="always")
def _rows_3x3_blocks(w, b, xf, base, Wp, yf, out, OH, OW, sh, sw, dh, dw, lo, hi):
    """The float 3×3 depthwise plane whose padded input starts at xf[base] (rows of Wp) into
    yf[out .. out + OH·OW] (flat, rows of OW), at column step ``sw`` (inlined: a literal step
    reaches LLVM). Each output row runs in blocks of DW_BLOCK outputs, a loop of constant trip
    count whose loads and stores past the row are masked off: it vectorizes whatever OW is, where
    the row loop's own vector body wants 64 outputs or so and a row of 7, 14 or 28 ran in its
    scalar remainder (384 planes of 14×14, one thread: 0.19 ms in-model, where onnxruntime's
    NCHWc kernel takes 0.03). The same sums as _rows_3x3."""
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]
    c1, c2 = _U(dw), _U(2 * dw)
    blocks = (OW + DW_BLOCK - 1) // DW_BLOCK
    n = _U(OW)
    for oh in range(OH):
        r0 = _U(base + oh * sh * Wp)
        r1, r2 = r0 + _U(dh * Wp), r0 + _U(2 * dh * Wp)
        o = _U(out + oh * OW)
        for blk in range(_U(blocks)):
            first = blk * _U(DW_BLOCK)
            for k in range(_U(DW_BLOCK)):
                if first + k < n:
                    yf[o + first + k] = _tap_sum_3x3(w0, w1, w2, w3, w4, w5, w6, w7, w8, b, xf,
                                                     r0, r1, r2, (first + k) * sw, c1, c2, lo, hi)


@njit(cache=True)
def _plane_3x3_blocks(w, b, xf, base, Wp, yf, out, OH, OW, sh, sw, dh, dw, lo, hi):
    """_rows_3x3_blocks with stride 2 as a constant step (its loads vectorize as shuffles), other
    strides as a variable."""
    if sw == 2:
        _rows_3x3_blocks(w, b, xf, base, Wp, yf, out, OH, OW, sh, _U(2), dh, dw, lo, hi)
    else:
        _rows_3x3_blocks(w, b, xf, base, Wp, yf, out, OH, OW, sh, _U(sw), dh, dw, lo, hi)


@njit(cache=True)
def _plane_3x3_split(w, b, xf, base, Wp, yf, out, OH, OW, sh, dh, half, lo, hi):
    """A stride-2 float plane whose padded rows were split into their even columns, then their
    odd ones (``_split_columns``, ``half`` even ones): output ow reads even column ow, odd column
    ow and even column ow + 1 of each row, three runs at column step 1 that vectorize like
    stride 1. The same taps in the same sums as _plane_3x3.

    LLVM does not turn float32 loads at step 2 into vector shuffles as it does int8 ones. One
    thread, MobileNetV2's 96 × 112×112 at stride 2: 1.23 → 0.62 ms. The split is a scalar pass
    over the plane, so rows up to DW_BLOCK_MAX_WIDTH keep their blocks (192 × 28×28: 0.115 ms in
    blocks, 0.143 split; 576 × 14×14: 0.124 against 0.192)."""
    c1 = _U(half)
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]
    for oh in range(OH):
        r0 = _U(base + oh * sh * Wp)
        r1, r2 = r0 + _U(dh * Wp), r0 + _U(2 * dh * Wp)
        o = _U(out + oh * OW)
        for ow in range(_U(OW)):
            yf[o + ow] = _tap_sum_3x3(w0, w1, w2, w3, w4, w5, w6, w7, w8, b, xf, r0, r1, r2, ow,
                                      c1, _U(1), lo, hi)


@njit(cache=True, inline="always")
def _split_columns(xf, base, Hp, Wp, row):
    """Rewrite each of the Hp rows of Wp floats at xf[base] as its even columns, then its odd
    ones (``row``: scratch of Wp); returns the count of even columns."""
    half = (Wp + 1) // 2
    for r in range(_U(Hp)):
        start = _U(base) + r * _U(Wp)
        for i in range(_U(Wp)):
            row[i] = xf[start + i]
        for i in range(_U(half)):
            xf[start + i] = row[2 * i]
        for i in range(_U(Wp // 2)):
            xf[start + _U(half) + i] = row[2 * i + 1]
    return half


@njit(cache=True)
def _planes_3x3_f32(w, b, x, xp, xf, y, yf, bi, c, mult, sh, sw, dh, dw, pt, pl, lo, hi):
    """One parallel iteration of the float 3×3 loop: pad plane (bi, c) into xp (zeros) while it
    is in L1, then its ``mult`` output channels (padded_3x3_f32); xf and yf are xp and y, flat."""
    C, Hp, Wp = xp.shape[1], xp.shape[2], xp.shape[3]
    pad_plane(x[bi, c], xp[bi, c], pt, pl, np.float32(0.0))
    padded_3x3_f32(w, b, xp[bi, c], xf, (bi * C + c) * Hp * Wp, y, yf, bi, c, mult, sh, sw, dh,
                   dw, lo, hi)


@njit(cache=True, inline="always")
def padded_3x3_f32(w, b, xq, xf, base, y, yf, bi, c, mult, sh, sw, dh, dw, lo, hi):
    """The float 3×3 outputs n ∈ [c·mult, (c+1)·mult) of image bi from one padded input plane xq
    [Hp,Wp], which is xf[base : base + Hp·Wp] (flat): in blocks (_plane_3x3_blocks) for rows up to
    DW_BLOCK_MAX_WIDTH outputs, else a row per pass (_plane_3x3; at column stride 2, over the
    plane's columns split in place, _plane_3x3_split); yf is y [B,N,OH,OW], flat."""
    Hp, Wp = xq.shape
    N, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    if sw == 2 and dw == 1 and OW > DW_BLOCK_MAX_WIDTH:  # wide rows: split (_plane_3x3_split)
        half = _split_columns(xf, base, Hp, Wp, np.empty(Wp, np.float32))
        for n in range(c * mult, (c + 1) * mult):
            _plane_3x3_split(w[n], b[n], xf, base, Wp, yf, (bi * N + n) * OH * OW, OH, OW, sh,
                             dh, half, lo, hi)
        return
    for n in range(c * mult, (c + 1) * mult):
        if OW <= DW_BLOCK_MAX_WIDTH:
            _plane_3x3_blocks(w[n], b[n], xf, base, Wp, yf, (bi * N + n) * OH * OW, OH, OW, sh,
                              sw, dh, dw, lo, hi)
        else:
            _plane_3x3(w[n], b[n], xq, y[bi, n], sh, sw, dh, dw, lo, hi)


@njit(cache=True)
def _plane_3x3_rq(w, b, xq, acc, y, sh, sw, dh, dw, m0n, shift_n, y_zero_point, lo, hi):
    """_plane_3x3's int32 plane into the scratch acc [OH,OW], requantized from there (L1/L2) into
    the 8-bit y [OH,OW] (requantize_row, the channel's multiplier) in one call over the flat plane:
    a call per row cost 9 ns an output at 7-wide rows and 1.7 at 28 (the vectorized loop takes 32
    at a time; shorter rows run its scalar tail), against 0.4 from 49 on."""
    _plane_3x3(w, b, xq, acc, sh, sw, dh, dw, INT32_MIN, INT32_MAX)
    OH, OW = y.shape
    requantize_row(acc.reshape(OH * OW), m0n, shift_n, y_zero_point, lo, hi, y.reshape(OH * OW))


@njit(cache=True, inline="always")
def _tile_geometry(OW, Hp, Wp, kh, kw, sh, sw, dh, dw):
    """The tile loop's (accumulator pitch, rows per tile, tap offsets, tap indices) for one plane."""
    P = accumulator_pitch(OW, Wp, sh, sw)
    return P, max(1, ACC_TILE // P), tap_offsets(1, kh, kw, Hp, Wp, dh, dw), np.arange(kh * kw)


def _depthwise_dense_f32(w, b, x, xp, ws, y, kh, kw, sh, sw, dh, dw, pt, pl, lo, hi):
    # w (N, kh·kw) * x (B,C,H,W) -> y (B,N,OH,OW), channel n reads plane n // (N/C)
    """y[b,n,oh,ow] = clamp(b[n] + Σ_(i,j) w[n, i·kw+j]·xp[b, n//mult, oh·sh+i·dh, ow·sw+j·dw], lo, hi)

    Loop nest, 3×3: prange (b,c): pad x[b,c] into xp[b,c]; its mult output channels n; output
    rows oh; one vectorized pass over ow (in blocks of DW_BLOCK outputs for rows up to
    DW_BLOCK_MAX_WIDTH, _rows_3x3_blocks) with the 9 taps, bias and clamp.
    Other sizes: prange (b,c) pad x into xp; prange (b,n): row tiles of ACC_TILE in
    ws; the kh·kw taps; one axpy of the shifted plane into the tile (as conv2d_csr_f32).
    w [N, kh·kw] float32 — taps, row-major (i, j); b [N] float32 — bias (zeros if none)
    x [B,C,H,W] float32; xp [B,C,Hp,Wp] float32, ws [B,N,OH·P] float32 — workspaces as in
    conv2d_csr_f32 (ws unused by 3×3); y [B,N,OH,OW] float32; kh, kw, sh, sw, dh, dw, pt, pl —
    geometry; lo, hi — fused activation bounds (float32)
    Preconditions: N = C·mult; xp, ws, y shaped from the plan's geometry.
    Work: 2·B·N·OH·OW·kh·kw flops; 3×3: x read once, xp written once and read from L1, y written once.
    """
    B, C, Hp, Wp = xp.shape
    N, OW = y.shape[1], y.shape[3]
    mult = N // C
    if kh == 3 and kw == 3:
        xf, yf = xp.reshape(-1), y.reshape(-1)  # once: 40 ns a reshape
        for t in prange(B * C):
            _planes_3x3_f32(w, b, x, xp, xf, y, yf, t // C, t % C, mult, sh, sw, dh, dw, pt, pl,
                            lo, hi)
        return
    pad_planes(x, xp, pt, pl, np.float32(0.0))
    P, rows, offs, taps = _tile_geometry(OW, Hp, Wp, kh, kw, sh, sw, dh, dw)
    for t in prange(B * N):
        bi, n = t // N, t % N
        xf = xp[bi, n // mult].reshape(Hp * Wp)
        conv_channel(ws[bi, n], taps, w[n], offs, xf, b[n], y[bi, n], rows, P, Wp, sh, sw, lo, hi)


depthwise_dense_f32 = njit(cache=True, parallel=True, nogil=True)(_depthwise_dense_f32)


def _depthwise_dense_i8(w, bias, x, x_zero_point, xp, ws, y, kh, kw, sh, sw, dh, dw, pt, pl):
    # w (N, kh·kw) int8 * x (B,C,H,W) uint8|int8 -> acc (B,N,OH,OW) int32
    """acc[b,n,oh,ow] = bias'[n] + Σ_(i,j) q_w[n, i·kw+j]·xp[b, n//mult, oh·sh+i·dh, ow·sw+j·dw]

    real = scale·(q − zero_point); x per tensor, w per output channel with zero point 0.
    Pads are filled with x_zero_point (real 0), so the zero-point correction is the full tap sum,
    folded at plan time: bias'[n] = q_b[n] − x_zp·Σ_(i,j) q_w[n,i,j] (the same rule as conv2d_csr_i8).
    No rounding, no saturation: the int32 accumulator goes to the requantize kernel.
    Loop nest: as depthwise_dense_f32 (3×3: per plane, pad, channels, rows, one pass of 9 taps).
    w [N, kh·kw] int8 — taps, anything in [−128, 127]; bias [N] int32 — bias'; x [B,C,H,W]
    uint8|int8; x_zero_point int; xp [B,C,Hp,Wp] x.dtype, ws [B,N,OH·P] int32 — workspaces;
    y [B,N,OH,OW] int32; geometry ints.
    Overflow: kh·kw terms, each |u8·s8| ≤ 255·128 = 32 640 < 2^15 (|s8·s8| ≤ 2^14): kh·kw ≤ 65 793
    is safe, far beyond any real kernel (the plan still checks |bias'|).
    Work: 2·B·N·OH·OW·kh·kw int ops.
    """
    B, C, Hp, Wp = xp.shape
    N, OW = y.shape[1], y.shape[3]
    mult = N // C
    if kh == 3 and kw == 3:
        for t in prange(B * C):
            _planes_3x3(w, bias, x, xp, y, t // C, t % C, mult, sh, sw, dh, dw, pt, pl,
                        x_zero_point, INT32_MIN, INT32_MAX)
        return
    pad_planes(x, xp, pt, pl, x_zero_point)
    P, rows, offs, taps = _tile_geometry(OW, Hp, Wp, kh, kw, sh, sw, dh, dw)
    for t in prange(B * N):
        bi, n = t // N, t % N
        xf = xp[bi, n // mult].reshape(Hp * Wp)
        conv_channel(ws[bi, n], taps, w[n], offs, xf, bias[n], y[bi, n], rows, P, Wp, sh, sw,
                     INT32_MIN, INT32_MAX)


depthwise_dense_i8 = njit(cache=True, parallel=True, nogil=True)(_depthwise_dense_i8)


def tile_operands(x, w, bias, words, start):
    """(words, start) of the 3×3 row tile for depthwise_dense_rq_i8: the plan's, or, when it
    passes None, made now from w and bias (_dwtile.row_words, _broadcast.unsigned_bias)."""
    if words is None:
        return row_words(w), unsigned_bias(x, w, bias, None)
    return words, start


NO_PLANE_TABLE = (np.zeros((0, 12, 64), np.uint8), np.zeros(0, np.int64))
"""depthwise_dense_rq_i8's ``table`` for a conv that keeps the row tile: no groups."""


def plane_operands(table, H, W, OH, OW, sh, sw, dh, dw, pt, pl):
    """The plane tile's (idx, ws) for depthwise_dense_rq_i8: the plan's ``table``, or, when it
    passes None, made now (_dwtile.plane_table; no groups where the plane tile does not fit)."""
    if table is None:
        return plane_table(H, W, OH, OW, sh, sw, dh, dw, pt, pl)
    return table


@overload(plane_operands, inline="always")
def _plane_operands_compiled(table, H, W, OH, OW, sh, sw, dh, dw, pt, pl):
    if table is None or isinstance(table, (types.NoneType, types.Omitted)):
        return lambda table, H, W, OH, OW, sh, sw, dh, dw, pt, pl: plane_table(
            H, W, OH, OW, sh, sw, dh, dw, pt, pl)
    return lambda table, H, W, OH, OW, sh, sw, dh, dw, pt, pl: table


@overload(tile_operands, inline="always")
def _tile_operands_compiled(x, w, bias, words, start):
    if words is None or isinstance(words, (types.NoneType, types.Omitted)):
        return lambda x, w, bias, words, start: (row_words(w), unsigned_bias(x, w, bias, None))
    return lambda x, w, bias, words, start: (words, start)


def _depthwise_dense_rq_i8(w, bias, x, x_zero_point, xp, ws, m0, shift, y_zero_point, lo, hi, y,
                           kh, kw, sh, sw, dh, dw, pt, pl, words=None, start=None, table=None):
    # w (N, kh·kw) int8 * x (B,C,H,W) uint8|int8, requantized -> y (B,N,OH,OW) uint8|int8
    """y[b,n] = requantize(depthwise_dense_i8's acc[b,n]) (m0, shift, y_zero_point, lo, hi as in
    requantize_dense_i8): the two kernels in turn, the same bytes, in one pass.

    The planar loops of depthwise_dense_i8, with each piece of int32 sums requantized while it is
    in cache: 3×3, one plane at a time (_plane_3x3_rq; on AVX-512 VNNI + VBMI CPUs the row tile of
    _dwtile.py instead, one call per plane, prange over runs of planes, reading x unpadded and
    requantizing in its registers: xp and ws are not used, and may be empty, (B, C, 0, 0) and
    (B, N, 0)); other sizes, one tile of rows at a time (conv_channel_rq). One thread, against the
    two kernels: 32×112×112 0.41 against 0.41 ms, 144×56×56 0.51 against 0.50 (the pass it saves
    was not what cost).
    Arguments as depthwise_dense_i8's, then the requantization's; y [B,N,OH,OW] uint8|int8 —
    output, overwritten; words [N, 3] int32, start [N] int32 — the row tile's tap-row words
    (_dwtile.row_words(w)) and starting sums (_broadcast.unsigned_bias for x's type), made once
    by the plan; None: made here, per call (2–3.5 µs at 960 channels); table — the plane tile's
    (idx, ws) (_dwtile.plane_table: 3×3 outputs at most 8 wide take the plane tile, 64 outputs of
    the flat plane per step, and its table has groups; NO_PLANE_TABLE keeps the row tile), made
    once by the plan, or None: made here. Preconditions as the two kernels'.
    Work: depthwise_dense_i8's, and B·N·OH·OW requantizations; writes 1 byte per output.
    """
    B, C, Hp, Wp = xp.shape
    N, OW = y.shape[1], y.shape[3]
    mult = N // C
    if kh == 3 and kw == 3 and DW3_RUNS and fits(sw, dw):  # the row tile: 3 vpdpbusd per 16
        flip = np.int64(sign_flip8(x)) & 0xFF  # int8 x read as x + 128, sums started 128·Σw lower
        idx = permutation(sw, dw)
        words, start = tile_operands(x, w, bias, words, start)  # start: bias' − 128·Σw for int8
        H, W = x.shape[2], x.shape[3]
        OH, planes = y.shape[2], B * C
        xs = np.ascontiguousarray(x).reshape(x.size)
        y3 = y.reshape((B, N, OH * OW))  # once: a reshape per plane cost 10–20 ns
        blocks = (OW + LANES - 1) // LANES
        tasks = min(planes, DW3_TASKS)
        order, starts = plane_operands(table, H, W, OH, OW, sh, sw, dh, dw, pt, pl)
        if order.shape[0] > 0:  # the plane tile: 64 outputs of the flat plane per group
            ys = y.reshape(y.size)
            for t in prange(tasks):
                for plane in range(t * planes // tasks, (t + 1) * planes // tasks):
                    bi, c = plane // C, plane % C
                    for n in range(c * mult, (c + 1) * mult):
                        dw3_plane_tile(ys, (bi * N + n) * OH * OW, xs, plane * H * W, H * W,
                                       order, starts, words, n, start[n], x_zero_point, flip,
                                       OH * OW, m0[n], shift[n], y_zero_point, lo, hi)
            return
        for t in prange(tasks):  # runs of planes
            for plane in range(t * planes // tasks, (t + 1) * planes // tasks):
                bi, c = plane // C, plane % C
                for n in range(c * mult, (c + 1) * mult):
                    dw3_tile(y3[bi, n], xs, plane * H * W, H, W, idx, words[n], start[n],
                             x_zero_point, flip, blocks, OH, OW, sh, sw, dh, dw, pt, pl, m0[n],
                             shift[n], y_zero_point, lo, hi)
        return
    if kh == 3 and kw == 3:
        for t in prange(B * C):
            bi, c = t // C, t % C
            pad_plane(x[bi, c], xp[bi, c], pt, pl, x_zero_point)
            acc = np.empty((y.shape[2], OW), np.int32)
            for n in range(c * mult, (c + 1) * mult):
                _plane_3x3_rq(w[n], bias[n], xp[bi, c], acc, y[bi, n], sh, sw, dh, dw, m0[n],
                              shift[n], y_zero_point, lo, hi)
        return
    pad_planes(x, xp, pt, pl, x_zero_point)
    P, rows, offs, taps = _tile_geometry(OW, Hp, Wp, kh, kw, sh, sw, dh, dw)
    for t in prange(B * N):
        bi, n = t // N, t % N
        xf = xp[bi, n // mult].reshape(Hp * Wp)
        conv_channel_rq(ws[bi, n], taps, w[n], offs, xf, bias[n], y[bi, n], rows, P, Wp, sh, sw,
                        m0[n], shift[n], y_zero_point, lo, hi)


depthwise_dense_rq_i8 = njit(cache=True, parallel=True, nogil=True)(_depthwise_dense_rq_i8)


DW3_TASKS = 64
"""The row tile's parallel tasks: runs of planes, each allocating one accumulator (per plane, the
allocation and the call cost as much as a 14×14 plane's sums)."""

NHWC_BYTES_PER_TASK = 64
"""depthwise_nhwc_rq_i8: outputs per channel per parallel task, at least a cache line of each
plane, so neighbouring tasks do not write the same lines (a 7×7 plane is one task per block of
channels)."""
NHWC_MIN_TASKS = 8
"""depthwise_nhwc_rq_i8: parallel tasks to aim for. A small plane has few blocks of rows (14×14:
3, 7×7: 1), so its channels are split too, into blocks of at least NHWC_MIN_CHANNELS (a multiple of
16). Splitting channels costs the serial loop 15–20 %, so larger planes keep them whole."""
NHWC_MIN_CHANNELS = 64


def _depthwise_nhwc_rq_i8(w_taps, bias, xh, x_zero_point, m0, shift, y_zero_point, lo, hi, y, kh,
                          kw, sh, sw, dh, dw, pt, pl):
    # w_taps (kh·kw, C) int8 * xh (B,H,W,C) uint8|int8, channels last -> y (B,C,OH,OW) uint8|int8
    """y[b,c,oh,ow] = requantize(bias'[c] + Σ_(i,j) q_w[c,i,j]·x[b, c, oh·sh+i·dh−pt, ow·sw+j·dw−pl])
    with x_zero_point for taps outside x: depthwise_dense_i8 (multiplier 1) and then
    requantize_dense_i8 (m0, shift, y_zero_point, lo, hi as there), the same bytes.

    Channels last, so the channels are the vector lanes: per output pixel, each tap adds
    w_taps[tap, :]·xh[b, h, w, :] to a row of int32 sums, which is requantized, still channels
    last, into a row buffer; each finished output row goes to the NCHW planes a run of OW bytes per
    channel. The planar kernel vectorizes along an output row instead, which at MobileNetV2's small
    planes is 7–28 values long (576×14×14 3×3: 0.67 ms for its sums, against 0.18 ms here with the
    requantization, one thread); at 144×56×56 stride 1 the planar kernel wins, and the planner
    keeps it there (docs/kernels.md has the figures).
    Loop nest: prange over tasks (b; a block of output rows, with at least NHWC_BYTES_PER_TASK
    outputs per channel, so that two threads never write one cache line of a plane; a block of
    channels, all of them unless that leaves fewer than NHWC_MIN_TASKS tasks); per oh, per ow: the
    sums start at bias', one pass over the block's channels per tap, one requantizing pass
    (vectorized, per-channel multipliers in the lanes) into a channels-last row of the block; then
    that row into the NCHW planes, a run of OW bytes per channel.
    w_taps [kh·kw, C] int8 — the taps, tap-major; bias [C] int32 — bias' (as depthwise_dense_i8)
    xh [B,H,W,C] uint8|int8 — the input, channels last; m0, shift [C] int32 — per-channel Q31
    multipliers; y [B,C,OH,OW] — output, overwritten; geometry ints as depthwise_dense_i8.
    Work: 2·B·C·OH·OW·kh·kw int ops and B·C·OH·OW requantizations.
    """
    B, H, W, C = xh.shape
    OH, OW = y.shape[2], y.shape[3]
    zp = np.int32(x_zero_point)
    rows = min(OH, (NHWC_BYTES_PER_TASK + OW - 1) // OW)  # output rows per task
    per_image = (OH + rows - 1) // rows
    # channels per task: all of them, unless the images have fewer than NHWC_MIN_TASKS row blocks
    splits = max(1, min(C // NHWC_MIN_CHANNELS, (NHWC_MIN_TASKS - 1) // (B * per_image) + 1))
    width = ((C + splits - 1) // splits + 15) // 16 * 16
    blocks = (C + width - 1) // width
    for t in prange(B * per_image * blocks):
        c0, r = t % blocks * width, t // blocks
        b, oh0 = r // per_image, r % per_image * rows
        c1 = min(C, c0 + width)
        n = c1 - c0
        sums = np.empty(n, np.int32)
        q = np.empty((OW, n), y.dtype)  # one output row of the block, channels last
        for oh in range(oh0, min(OH, oh0 + rows)):
            for ow in range(OW):
                for c in range(_U(n)):
                    sums[c] = bias[_U(c0) + c]
                for i in range(kh):
                    h = oh * sh + i * dh - pt
                    for j in range(kw):
                        col = ow * sw + j * dw - pl
                        taps = w_taps[i * kw + j]
                        if 0 <= h < H and 0 <= col < W:
                            xs = xh[b, h, col]
                            for c in range(_U(n)):
                                sums[c] += np.int32(xs[_U(c0) + c]) * np.int32(taps[_U(c0) + c])
                        else:  # a pad: x_zero_point, as the planar kernel's padded plane holds
                            for c in range(_U(n)):
                                sums[c] += zp * np.int32(taps[_U(c0) + c])
                qs = q[ow]
                for c in range(_U(n)):  # vectorized: per-channel multipliers in the lanes
                    qs[c] = requantize_one(sums[c], m0[_U(c0) + c], shift[_U(c0) + c],
                                           y_zero_point, lo, hi)
            for c in range(n):  # the row into the planes, one channel's OW bytes at a time
                out = y[b, c0 + c, oh]
                for ow in range(_U(OW)):
                    out[ow] = q[ow, c]


depthwise_nhwc_rq_i8 = njit(cache=True, parallel=True, nogil=True)(_depthwise_nhwc_rq_i8)

KERNELS = {"depthwise_dense_f32": depthwise_dense_f32, "depthwise_dense_i8": depthwise_dense_i8,
           "depthwise_dense_rq_i8": depthwise_dense_rq_i8, "depthwise_nhwc_rq_i8": depthwise_nhwc_rq_i8}
