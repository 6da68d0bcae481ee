"""Dense int8 convolution on AMX tiles, with no im2row: the quad conv's packed input (conv_quad.py),
every weight instead of the nonzero quads, and ``tdpbsud`` instead of ``vpdpbusd``.

The input is packed once as the quad conv packs it (``_quads.pack_group``): word t of channel group
c4 holds the 4 channels' bytes at flat position t of their padded phases, so that every tap is a
run of words at a fixed offset from the output position. 16 groups (64 channels) at one tap and 16
consecutive output positions are then one AMX tile of 16 rows × 64 bytes, loaded straight from the
packed input with the groups' stride as the row pitch; the weights of 16 output channels on the
same 64 channels at that tap are another, packed at plan time (``pack_tap_weights``). One
``tdpbsud`` multiplies the two into 16 channels × 16 positions of int32 sums (kernels/_amx.py).
Output positions run at the phases' row pitch, and the columns past OW are computed and dropped, as
in the quad conv. A conv of at most 4 input channels (the stem) has one group; its taps are the x
tile's rows instead, each task copying its chunk's words of every tap into rows of 64 words
(``_amx.gather_taps``), 16 taps per tile (``pack_gathered_weights``).
A CPU with AVX-512 VNNI and no AMX runs the same kernel on a register tile instead
(``_amx.conv_block``: 4 output channels × 64 positions of ``vpdpbusd`` over the same packed input
and weights). docs/kernels.md, "conv2d_dense_rq_i8", has the loop order and the figures.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._amx import (AMX_ROWS, ONE_TAP, TILE_ROWS, amx_tasks, conv_block, gather_taps, pad_weights,
                   start_rows_jit, task_sums)
from ._broadcast import BROADCAST_PIXELS, sign_flip, unsigned_bias
from ._quads import QUAD_SLACK, chunk_rows, pack_group_jit, store_chunk, used_phases
from ._scratch import words_on_lines


def pack_tap_weights(w4):
    """wt (kh·kw, ⌈C/64⌉, N_pad, 64) int8: the weights as the AMX tile reads them.
    wt[i·kw + j, kb, n, 4g + b] = w4[n, 64·kb + 4g + b, i, j], zero past C and past N (N_pad = N
    rounded up to AMX_ROWS). w4 (N, C, kh, kw) int8, C a multiple of 4."""
    N, C, kh, kw = w4.shape
    blocks = -(-C // (4 * TILE_ROWS))
    n_pad = -(-N // AMX_ROWS) * AMX_ROWS
    wt = np.zeros((kh * kw, blocks, n_pad, 4 * TILE_ROWS), np.int8)
    taps_last = np.zeros((n_pad, blocks * 4 * TILE_ROWS, kh * kw), np.int8)
    taps_last[:N, :C] = w4.reshape(N, C, kh * kw)
    wt[:] = taps_last.reshape(n_pad, blocks, 4 * TILE_ROWS, kh * kw).transpose(3, 1, 0, 2)
    return wt


@njit(cache=True)
def tap_offsets(kh, kw, Hq, pitch, sh, sw, dh, dw):
    """offsets [kh·kw] int64: where tap (i, j) starts in a group's words (pack_group's layout, rows
    of ``pitch`` words): phase ((i·dh) mod sh, (j·dw) mod sw), row (i·dh)//sh, column (j·dw)//sw.
    Output position p of the tap reads word offsets[i·kw + j] + p."""
    offsets = np.empty(kh * kw, np.int64)
    for i in range(kh):
        for j in range(kw):
            phase = (i * dh) % sh * sw + (j * dw) % sw
            offsets[i * kw + j] = (phase * Hq + (i * dh) // sh) * pitch + (j * dw) // sw
    return offsets


def gather_fits(channels: int) -> bool:
    """Whether a conv's taps are gathered into the x tile's rows (``pack_gathered_weights``): at
    most 4 input channels, one word per position and tap."""
    return channels <= 4


def pack_gathered_weights(w4):
    """wt (1, ⌈T/16⌉, N_pad, 64) int8 for a conv of at most 4 input channels whose T = kh·kw taps
    are gathered into the x tile's rows: wt[0, t // 16, n, 4·(t mod 16) + c] = w4[n, c, i, j] for
    tap t = i·kw + j, zero past C (each tap's word has 4 bytes), past T and past N (N_pad = N
    rounded up to AMX_ROWS): the GEMM's layout (``_amx.pad_weights``) over 4 bytes per tap."""
    N, C, kh, kw = w4.shape
    taps = np.zeros((N, kh * kw, 4), np.int8)
    taps[:, :, :C] = w4.reshape(N, C, kh * kw).transpose(0, 2, 1)
    return pad_weights(taps.reshape(N, 4 * kh * kw))


def _conv2d_dense_rq_i8(wt, bias, w_sums, x, x_zero_point, xg, m0, shift, y_zero_point, lo, hi,
                        y, kh, kw, sh, sw, dh, dw, pt, pl, pitch, gathered, residual=None):
    # W (N, C, kh, kw) int8 packed per tap * x (B,C,H,W) uint8|int8, requantized -> y (B,N,OH,OW)
    """y[b,n] = requantize(bias'[n] + Σ_(c,i,j) q_w[n,c,i,j]·x[b, c, oh·sh+i·dh−pt, ow·sw+j·dw−pl])
    with x_zero_point outside x: the bytes of im2row + matmul_dense_rq_i8, one group only.

    Loop nest: pack each 4 planes' padded phases into the words of xg (prange over channel groups,
    _quads.pack_group); prange tasks (image, chunk of BROADCAST_PIXELS output positions at the
    phases' pitch, block of output channels): the tile (_amx.conv_block: AMX, VNNI or plain
    loops) over every tap and every 64 input channels into the block's int32 sums, requantized
    into y's rows (_quads.store_chunk: the positions in dropped columns are not stored), a
    residual, if any, added to each value on the way.
    ``gathered`` (at most 4 input channels, ``gather_fits``): one group, its last channel
    repeated up to 4 (the repeats meet zero weights), and each task first copies its chunk's
    words of every tap into rows of 64 words (``_amx.gather_taps``), which the tile reads as the
    GEMM reads its packed chunk: 16 taps per tile, where a tile over channel groups would use one
    row of 16.
    wt — pack_tap_weights(w4), or pack_gathered_weights(w4) when gathered; bias [N] int32 —
    bias'; w_sums [N] int64 — Σ_k q_w[n,k] (int8 x)
    x [B,C,H,W] uint8|int8, C a multiple of 4 (at most 4 when gathered); x_zero_point; xg [B,
    16·⌈C/64⌉·S + QUAD_SLACK] int32 — the packed input's workspace, S ≥ sh·sw·Hq·pitch words per 4
    channels (as conv2d_quad_rq_i8's, with room for whole blocks of 16 groups: the groups past C/4
    meet zero weights and are never written); gathered, [B, S + QUAD_SLACK]
    m0, shift, y_zero_point, lo, hi — as requantize_dense_i8's; y [B,N,OH,OW] uint8|int8 — out
    geometry ints as conv2d_csr_i8's; pitch ≥ OW + (kw−1)·dw // sw; residual — None, or a QAdd
    fused into the epilogue (elementwise.residual_parts).
    Preconditions: K·max|q_w·q_x| + max|bias'| < 2^31 (the sums wrap modulo 2^32 otherwise).
    Work: 2·B·⌈P/64⌉·64·N_pad·16·⌈C/64⌉·kh·kw int ops for P = (OH−1)·pitch + OW positions
    (gathered: 2·B·⌈P/64⌉·64·N_pad·64·⌈kh·kw/16⌉).
    """
    B, C = x.shape[0], x.shape[1]
    N, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    Hq, C4 = OH + (kh - 1) * dh // sh, max(1, C // 4)
    n_pad, blocks = wt.shape[2], wt.shape[1]
    stride = (xg.shape[1] - QUAD_SLACK) // (1 if gathered else blocks * TILE_ROWS)
    flip = sign_flip(x)
    used = used_phases(kh, kw, sh, sw, dh, dw)
    for t in prange(B * C4):
        pack_group_jit(x[t // C4], xg[t // C4], t % C4, x_zero_point, flip, sh, sw, pt, pl, Hq,
                       pitch, stride, used)
    taps = tap_offsets(kh, kw, Hq, pitch, sh, sw, dh, dw)
    if gathered:  # rows of the x tile: taps, 64 words apart (the chunk's copy, xt)
        row_words, groups_used = BROADCAST_PIXELS, kh * kw - TILE_ROWS * (blocks - 1)
    else:  # rows of the x tile: channel groups, ``stride`` words apart
        row_words, groups_used = stride, C4 - TILE_ROWS * (blocks - 1)  # in the last block
    start = unsigned_bias(x, None, bias, w_sums)  # bias' − 128·Σ_k w[n,k] for int8 x
    start_rows = start_rows_jit(start, n_pad)
    positions = (OH - 1) * pitch + OW
    chunks = (positions + BROADCAST_PIXELS - 1) // BROADCAST_PIXELS
    groups, per = amx_tasks(n_pad, B * chunks)
    for t in prange(B * chunks * groups):
        b, rest = t // (chunks * groups), t % (chunks * groups)
        p0, g = rest // groups * BROADCAST_PIXELS, rest % groups
        first, rows = chunk_rows(p0, BROADCAST_PIXELS, pitch, OH)  # the output rows it touches
        n_begin, sums = task_sums(g, per, n_pad)
        if gathered:
            xt = words_on_lines(blocks * TILE_ROWS * BROADCAST_PIXELS)
            gather_taps(xt, xg[b], taps, p0)
            conv_block(sums, xt, wt, start_rows, ONE_TAP, n_begin, 0, row_words, groups_used)
        else:
            conv_block(sums, xg[b], wt, start_rows, taps, n_begin, p0, row_words, groups_used)
        for n in range(n_begin, min(N, n_begin + sums.shape[0])):
            store_chunk(sums, n - n_begin, n, b, p0, first, rows, m0[n], shift[n], y_zero_point,
                        lo, hi, y, pitch, residual)


conv2d_dense_rq_i8 = njit(cache=True, parallel=True, nogil=True)(_conv2d_dense_rq_i8)

KERNELS = {"conv2d_dense_rq_i8": conv2d_dense_rq_i8}

__all__ = ["KERNELS", "conv2d_dense_rq_i8", "gather_fits", "pack_gathered_weights",
           "pack_tap_weights", "tap_offsets"]
