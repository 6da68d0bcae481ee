"""Dense float32 direct convolution with the output channels in the vector lanes: what dense-f32
plans run for one-group convs on AVX-512 CPUs (``lanes_pay``).

conv_dense.py puts output positions in the lanes: a tile is 64 consecutive positions at the padded
phases' pitch, and on a 7×7 output (61 positions at pitch 9) or a 14×14 one (222 at pitch 16) a
third of its lanes hold columns past the row or positions past the plane, computed and dropped.
Here a tile is LANE_CHANNELS = 32 output channels (2 zmm vectors) × LANE_PIXELS = 7 positions of
one output row. Per weight k = (c, i, j): the block's 32 weights at k are 2 vector loads (the
weight is packed so, ``_fma.pack_lanes``), each of the 7 input values the row's positions read is
broadcast (a scalar load: any address, so a stride costs nothing), and 14 FMAs add the products
into 14 accumulators, which stay in registers over all K = C·kh·kw weights. Rows of 112, 56, 28,
14 and 7 split into whole tiles; the only waste is a last block of fewer than 32 channels.

The input is copied once into padded planes (``_planes.pad_plane``: no boundary test in any inner
loop); position (oh, ow) reads weight k's input at offsets[k] + oh·sh·Wp + ow·sw. The tile's sums,
a position per vector and a channel per lane, are biased and clamped, transposed in registers, and
stored as one output row's 7 columns per channel (``_fma.lane_tile_ir``). Each output's products are added in the same k order, each rounded once, as
conv2d_dense_f32 adds them: the two kernels give the same bytes. docs/kernels.md,
"conv2d_lanes_f32", has the figures and where plans take it.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._broadcast import sign_flip, unsigned_bias
from ._cpu import HAS_AVX512
from ._fma import HAS_FMA, LANE_CHANNELS, LANE_PIXELS, lane_tile
from ._lanes import LANE_CHANNELS_I8, LANE_PIXELS_I8, lane_tile_i8
from ._planes import pad_plane
from ._quads import QUAD_SLACK, pack_group_jit, used_phases
from ._scratch import zero_tails
from .elementwise import add_residual, has_residual, residual_parts

LANE_TASKS_I8 = 16
"""Tasks that the int8 lanes conv's parallel loop makes at least, where the rows allow
(``_row_groups``): 8 per thread on 2 (a constant, not the thread count: a kernel that asks Numba
for it cannot be cached on disk)."""

LANE_SLACK_PIXELS = LANE_PIXELS - 1
"""Positions past a row's last that its last tile computes and drops: the padded input has
(LANE_PIXELS − 1)·sw zeroed floats past its last plane for their reads."""


LANES_MAX_PADDING = 1 / 8
"""The most zero channels, as a fraction of N, that the weight's last block of LANE_CHANNELS may
hold for plans to take the lanes conv (``lanes_pay``): a block computes all 32 lanes. The two
kernels alone, one thread, ms (conv2d_dense_f32 / conv2d_lanes_f32): N = 24 from 144 channels at
56×56 (a third of the block empty) 0.17 / 0.21, N = 16 from 32 at 112×112 0.16 / 0.20; but N =
144 from 24 at 56×56 (1/9 empty) 0.20 / 0.17, and with whole blocks 3×3 64→64 at 56×56 1.24 /
1.12, the 7×7 stem 1.34 / 1.20, 1×1 16→96 at 112×112 0.42 / 0.33."""

FITS_CPU = HAS_AVX512 and HAS_FMA
"""Whether plans take the lanes conv here: its zmm tile needs AVX-512 (with AVX2's 16 registers
its 14 accumulators would not fit beside the weights). The CPU's flags, not whether the JIT is on:
a plan picks the same kernels under NUMBA_DISABLE_JIT=1, where the plain-loop tile runs."""


def lanes_pay(n_out: int) -> bool:
    """Whether a one-group float conv of ``n_out`` output channels takes the lanes conv: on a CPU
    where it ``FITS_CPU``, and unless its last block of LANE_CHANNELS would be more than
    LANES_MAX_PADDING empty. Every conv of ResNet-18; MobileNetV2's but the 16- and 24-channel
    projections (its depthwise convs have their own kernel)."""
    padding = -n_out % LANE_CHANNELS
    return FITS_CPU and n_out > 0 and padding <= LANES_MAX_PADDING * n_out


def lane_offsets(c_in, kh, kw, hp, wp, dh, dw):
    """offsets [C·kh·kw] int64: where weight k = c·kh·kw + i·kw + j reads output position (0, 0)
    in the flat padded planes (c·hp·wp + i·dh·wp + j·dw), planes of hp × wp. Built by the plan from
    the geometry, once per input shape."""
    c, i, j = np.meshgrid(np.arange(c_in, dtype=np.int64), np.arange(kh, dtype=np.int64),
                          np.arange(kw, dtype=np.int64), indexing="ij")
    return np.ascontiguousarray((c * (hp * wp) + i * (dh * wp) + j * dw).reshape(-1))


def _conv2d_lanes_f32(wb, offsets, b, x, xp, y, kh, kw, sh, sw, dh, dw, pt, pl, lo, hi):
    # W (N, C, kh, kw) lane-packed * x (B,C,H,W) -> y (B,N,OH,OW), float32, one group
    """y[b,n,oh,ow] = clamp(b[n] + Σ_(c,i,j) w[n,c,i,j]·x[b, c, oh·sh + i·dh − pt, ow·sw + j·dw − pl],
    lo, hi) with zeros outside x: conv2d_dense_f32's bytes, for one group.

    Loop nest: prange (image, channel): pad the plane into xp; prange tasks (image, block of
    LANE_CHANNELS channels, output row): per LANE_PIXELS positions of the row, the lane tile over
    all K = C·kh·kw weights in k order, then the sums biased, clamped and stored, transposed.
    Tasks run a block's rows one after another, so its weights (K·128 bytes) stay in L2.
    wb — the weight packed by ``_fma.pack_lanes``; offsets [K] int64 — ``lane_offsets`` for the
    padded planes' shape; b [N] float32 — bias (zeros if none); x [B,C,H,W] float32;
    xp [B, C·Hp·Wp + (LANE_PIXELS−1)·sw] float32 — workspace, Hp = (OH−1)·sh + (kh−1)·dh + 1,
    Wp = (OW−1)·sw + (kw−1)·dw + 1; y [B,N,OH,OW] float32 — output; kh, kw, sh, sw, dh, dw, pt,
    pl — geometry (pads top, left); lo, hi — fused activation bounds (−inf/inf for none).
    Preconditions: offsets = lane_offsets(C, kh, kw, Hp, Wp, dh, dw); shapes as above.
    Work: 2·B·N'·OH·⌈OW/LANE_PIXELS⌉·LANE_PIXELS·K flops, N' = N rounded up to whole blocks;
    reads x once and writes xp once; each tile reads 7 values per k from xp (L1/L2) and its
    block's K·LANE_CHANNELS weights.
    """
    B, C = x.shape[0], x.shape[1]
    N, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    Hp, Wp = (OH - 1) * sh + (kh - 1) * dh + 1, (OW - 1) * sw + (kw - 1) * dw + 1
    S = Hp * Wp
    for t in prange(B * C):
        bi, c = t // C, t % C
        pad_plane(x[bi, c], xp[bi][c * S:(c + 1) * S].reshape((Hp, Wp)), pt, pl,
                  np.float32(0.0))
    zero_tails(xp, C * S)  # read by the dropped positions of the last row's last tile
    K = offsets.shape[0]
    blocks = (N + LANE_CHANNELS - 1) // LANE_CHANNELS
    tiles = (OW + LANE_PIXELS - 1) // LANE_PIXELS
    lo32, hi32 = np.float32(lo), np.float32(hi)
    yf, plane = y.reshape(-1), OH * OW  # once: 40 ns a reshape
    for t in prange(B * blocks * OH):
        bi, rest = t // (blocks * OH), t % (blocks * OH)
        block, oh = rest // OH, rest % OH
        n0 = block * LANE_CHANNELS
        channels = min(LANE_CHANNELS, N - n0)
        for tile in range(tiles):
            ow0 = tile * LANE_PIXELS
            lane_tile(xp[bi], offsets, wb, n0 * K, oh * sh * Wp + ow0 * sw, sw, b, n0, yf,
                      (bi * N + n0) * plane + oh * OW + ow0, plane, lo32, hi32, channels,
                      min(LANE_PIXELS, OW - ow0))


conv2d_lanes_f32 = njit(cache=True, parallel=True, nogil=True)(_conv2d_lanes_f32)


PAD_M0, PAD_SHIFT = 2 ** 30 + 1, 40
"""The multiplier of the padding channels past N, whose outputs are never stored: a tie-free one
(quant.tie_free), so that a block's last vector of 16 channels can still take the tile's short
requantization."""


@njit(cache=True)
def _by_blocks(values, blocks, fill):
    """values [N] int32 padded with ``fill`` to whole blocks of LANE_CHANNELS_I8 (the int8 tile
    loads a block's per-channel values as whole vectors). A serial helper: a slice assignment in
    the parallel kernel's body would be a parallel loop of its own."""
    out = np.full(blocks * LANE_CHANNELS_I8, fill, np.int32)
    for n in range(values.shape[0]):
        out[n] = values[n]
    return out


@njit(cache=True)
def _row_groups(tasks, rows):
    """How many groups of consecutive output rows each of ``tasks`` (image, block of channels)
    splits into: enough for LANE_TASKS_I8 tasks in all, and no more, so that a task runs several
    rows (its fused residual added over one span of each channel's plane, not row by row: rows of
    7 took 0.1 ms more per 512×7×7 conv) and a call makes few tasks."""
    return max(1, min(rows, (LANE_TASKS_I8 + tasks - 1) // tasks))


def _conv2d_lanes_rq_i8(wl, offsets, bias, w_sums, x, x_zero_point, xg, m0, shift, y_zero_point,
                        lo, hi, y, kh, kw, sh, sw, dh, dw, pt, pl, pitch, residual=None):
    # W (N, C, kh, kw) int8 as lane words * x (B,C,H,W) uint8|int8, requantized -> y (B,N,OH,OW)
    """y[b,n] = requantize(bias'[n] + Σ_(c,i,j) q_w[n,c,i,j]·x[b, c, oh·sh+i·dh−pt, ow·sw+j·dw−pl])
    with x_zero_point outside x: conv2d_dense_rq_i8's bytes, one group, with the output channels
    in the vector lanes (_lanes.py).

    Loop nest: pack each 4 planes' padded phases into the words of xg (prange over channel groups,
    _quads.pack_group, the natural pitch); prange tasks (image, block of 32 output channels,
    group of output rows, ``_row_groups``): per 7 positions of a row, the lane tile over every
    weight column (4 channels at one tap), its int32 sums requantized in registers and stored as
    bytes into y; with a residual, then the task's rows of y added to it. Two parallel regions
    per call.
    wl — _lanes.pack_lane_words(w4); offsets [C/4·kh·kw] int64 — where each column's words start
    in xg (_quads.quad_offsets of every column, one copy, the natural pitch); bias [N] int32 —
    bias' (q_b − x_zp·Σ_k q_w); w_sums [N] int64 — Σ_k q_w[n,k] (for int8 x)
    x [B,C,H,W] uint8|int8, C a multiple of 4; x_zero_point; xg [B, C/4·S + QUAD_SLACK] int32 —
    the packed input's workspace, S ≥ sh·sw·Hq·pitch words per 4 channels (as
    conv2d_quad_rq_i8's)
    m0, shift, y_zero_point, lo, hi — as requantize_dense_i8's (m0 and shift may come padded to
    whole blocks of 32 channels, ``lane_multipliers``: the plan pads them once, not every call);
    y [B,N,OH,OW] uint8|int8 — out
    geometry ints as conv2d_csr_i8's; pitch — the packed rows' (OW + (kw−1)·dw // sw); residual —
    None, or a QAdd fused into the epilogue (elementwise.residual_parts).
    Preconditions: K·max|q_w·q_x| + max|bias'| < 2^31 (the sums wrap modulo 2^32 otherwise).
    Work: 2·B·N'·OH·⌈OW/7⌉·7·C·kh·kw int ops, N' = N rounded up to whole blocks of 32.
    """
    B, C = x.shape[0], x.shape[1]
    N, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    Hq, C4 = OH + (kh - 1) * dh // sh, C // 4
    stride = (xg.shape[1] - QUAD_SLACK) // C4
    flip = sign_flip(x)
    used = used_phases(kh, kw, sh, sw, dh, dw)
    for t in prange(B * C4):
        pack_group_jit(x[t // C4], xg[t // C4], t % C4, x_zero_point, flip, sh, sw, pt, pl, Hq,
                       pitch, stride, used)
    zero_tails(xg, C4 * stride)  # read by the dropped positions of the last row's last tile
    blocks = (N + LANE_CHANNELS_I8 - 1) // LANE_CHANNELS_I8
    starts = _by_blocks(unsigned_bias(x, None, bias, w_sums), blocks, 0)
    whole = blocks * LANE_CHANNELS_I8
    m0s = m0 if m0.shape[0] >= whole else _by_blocks(m0, blocks, PAD_M0)
    shifts = shift if shift.shape[0] >= whole else _by_blocks(shift, blocks, PAD_SHIFT)
    r, add = residual_parts(residual, y)
    K = offsets.shape[0]
    tiles = (OW + LANE_PIXELS_I8 - 1) // LANE_PIXELS_I8
    plane = OH * OW
    yf = y.reshape(-1)  # once: 40 ns a reshape
    y2, r2 = y.reshape((B * N, plane)), r.reshape((B * N, plane))
    groups = _row_groups(B * blocks, OH)
    rows = (OH + groups - 1) // groups
    for t in prange(B * blocks * groups):
        b, rest = t // (blocks * groups), t % (blocks * groups)
        n0 = rest // groups * LANE_CHANNELS_I8
        oh0, oh1 = rest % groups * rows, min(OH, (rest % groups + 1) * rows)
        channels = min(LANE_CHANNELS_I8, N - n0)
        for oh in range(oh0, oh1):
            for tile in range(tiles):
                ow0 = tile * LANE_PIXELS_I8
                lane_tile_i8(xg[b], offsets, wl, n0 * K, oh * pitch + ow0, starts, m0s, shifts,
                             n0, y_zero_point, lo, hi, yf, (b * N + n0) * plane + oh * OW + ow0,
                             channels, plane, min(LANE_PIXELS_I8, OW - ow0))
        if has_residual(add):  # over the task's rows of each channel, while they are in cache
            for n in range(b * N + n0, b * N + n0 + channels):
                add_residual(y2[n, oh0 * OW:oh1 * OW], r2[n, oh0 * OW:oh1 * OW], add)


conv2d_lanes_rq_i8 = njit(cache=True, parallel=True, nogil=True)(_conv2d_lanes_rq_i8)


def lane_multipliers(m0, shift):
    """(m0, shift) [N] int32 padded to whole blocks of LANE_CHANNELS_I8 as the int8 lanes conv pads
    them (PAD_M0 and PAD_SHIFT past N), for a plan to pass it once and for all."""
    whole = -(-len(m0) // LANE_CHANNELS_I8) * LANE_CHANNELS_I8
    m0s, shifts = np.full(whole, PAD_M0, np.int32), np.full(whole, PAD_SHIFT, np.int32)
    m0s[:len(m0)], shifts[:len(shift)] = m0, shift
    return m0s, shifts

KERNELS = {"conv2d_lanes_f32": conv2d_lanes_f32, "conv2d_lanes_rq_i8": conv2d_lanes_rq_i8}

__all__ = ["FITS_CPU", "KERNELS", "LANES_MAX_PADDING", "LANE_SLACK_PIXELS", "conv2d_lanes_f32",
           "conv2d_lanes_rq_i8", "lane_multipliers", "lane_offsets", "lanes_pay"]
