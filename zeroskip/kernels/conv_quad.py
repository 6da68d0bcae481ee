"""Block-sparse int8 convolution over quads: 4 weights of one output channel on 4 consecutive input
channels at the same tap, run as 4-byte dot products (``vpdpbusd`` on AVX-512 VNNI CPUs).

A pruned conv's weight keeps, per output channel, the quads that hold a nonzero, each as one int32
word of 4 signed bytes, and takes the output channels 4 at a time (a block), each column of quads
once for all the block's channels that have it (``quad_blocks`` in engine/plan/weights.py builds
them from any int8 weight at plan time: nothing in the file needs to be block-pruned). The input
is packed once (``_quads.pack_group``): each plane padded into its phases, as the direct sparse
conv does (``_planes.pad_phases``), so that every tap is a contiguous run of the flat phases at a
fixed offset from the output position, and each 4 channels' phases interleaved into int32 words:
word t of channel group c4 holds the 4 channels' bytes at flat position t.

Then a quad column at 64 consecutive output positions is 4 contiguous zmm loads at its offset (its
channel group's words, shifted by its tap) and 4 ``vpdpbusd`` per channel of the block that has
it, against the channel's broadcast weight word: no im2row, and the 3×3 taps are shifted loads
over the same packed grid (``_quads.quad_tile``). Output
positions run at the phases' row pitch: OW plus the taps' reach, or that rounded up to 16 words,
with shifted copies of the packed input, so that every load is aligned (``_quads.quad_layout``).
The columns past OW are computed and dropped. docs/kernels.md, "The quad-sparse conv", has the
loop order and the figures.
"""

from __future__ import annotations

from numba import njit, prange

from ._broadcast import channel_groups, sign_flip, unsigned_bias
from ._quads import (QUAD_BLOCK, QUAD_PIXELS, QUAD_SLACK, SHIFT_PIECE, block_starts, chunk_rows,
                     pack_group_jit, quad_tile, shift_copy_jit, store_chunk, used_phases)
from ._scratch import words_on_lines, zero_tails

WAVE_WORDS = 1 << 17
"""Packed words (512 KB) per wave of images: a batch is packed and run a wave at a time, so that the
words a wave's tasks read are still in L2 (packing every image first, at batch 8, had put several
MB of words between a pack and its reads)."""


def _conv2d_quad_rq_i8(cptr, offsets, wptr, words, bias, w_sums, x, x_zero_point, xg, m0, shift,
                       y_zero_point, lo, hi, y, kh, kw, sh, sw, dh, dw, pt, pl, groups,
                       pitch, copies, residual=None):
    # W (N, C/g·kh·kw) quads of int8 * x (B,C,H,W) uint8|int8, requantized -> y (B,N,OH,OW) 8-bit
    """y[b,n] = requantize(bias'[n] + Σ_(c,i,j) q_w[n,c,i,j]·x[b, g(n)·C/g + c, oh·sh+i·dh−pt, ow·sw+j·dw−pl])
    with x_zero_point outside x: conv2d_csr_rq_i8's bytes, from the weight's nonzero quads.

    Loop nest: per wave of images (as many as fit in WAVE_WORDS packed words, at least one):
    pack each 4 planes' padded phases into the words of xg (prange over the wave's channel
    groups, _quads.pack_group), and its shifted copies when the layout has them
    (_quads.quad_layout); prange tasks (image, run of blocks of 4 output channels, chunk of
    QUAD_PIXELS output positions at the phases' pitch, _chunk_blocks): per block, the quad tile
    over its quad columns into 4 × 64 int32 sums, each channel's requantized into y's rows
    (_quads.store_chunk: the positions in dropped columns are not stored), a residual, if any,
    added to each value on the way. The runs are MIN_TASKS (or one a block), and a run's chunks
    are consecutive tasks, so a thread writes few output planes at a time, each front to back,
    and at two threads each writes whole planes, which a depthwise conv next reads on the same
    core (tasks by chunk, then run, had written every plane's next 64 bytes per task: MobileNetV2's
    16 → 96 expand at 112×112 took 1.0 / 0.60 ms at one / two threads in the whole model's
    sequence, 0.55 / 0.37 by run).
    cptr, wptr [blocks·15(+1)] int64, words [nq] int32 — the quads by block and class
    (engine/plan/weights.quad_blocks: a block is 4 output channels of one group, the last of a
    group may have fewer; each word holds 4 weights, byte b the weight on input channel
    4·c4 + b); offsets [entries] int64 — where each entry's words start in its group's part of
    xg (``_quads.quad_offsets`` of the entries' columns, by the plan once per input shape)
    bias [N] int32 — bias' (q_b − x_zp·Σ_k q_w); w_sums [N] int64 — Σ_k q_w[n,k] (for int8 x)
    x [B,C,H,W] uint8|int8; x_zero_point; xg [B, copies·(C/4·S + QUAD_SLACK)] int32 — the packed
    input's workspace, S ≥ sh·sw·Hq·pitch words per 4 channels (Hq = OH + (kh−1)·dh // sh rows of
    the phases of conv2d_csr_i8, each of pitch ≥ OW + (kw−1)·dw // sw words)
    m0, shift, y_zero_point, lo, hi — as requantize_dense_i8's; y [B,N,OH,OW] uint8|int8 — out
    geometry ints as conv2d_csr_i8's; pitch, copies — the layout of xg (_quads.quad_layout: the
    offsets must be quad_offsets' for it); residual — None, or a QAdd fused into the epilogue
    (elementwise.residual_parts).
    Preconditions: C/g % 4 == 0; offsets within a group's words; K·max|q_w·q_x| + max|bias'| <
    2^31 (the plan checks them).
    Work: 2·B·⌈P/64⌉·64·4·nq int ops for P = (OH−1)·pitch + OW positions; reads x once, writes
    xg once per copy, reads xg once per entry per chunk (from L1: a chunk's window of every channel
    group).
    """
    B, C = x.shape[0], x.shape[1]
    N, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    Hq, C4 = OH + (kh - 1) * dh // sh, C // 4
    copy_words = xg.shape[1] // copies
    stride = (copy_words - QUAD_SLACK) // C4
    flip = sign_flip(x)
    used = used_phases(kh, kw, sh, sw, dh, dw)
    start = unsigned_bias(x, None, bias, w_sums)  # bias' − 128·Σ_k w[n,k] for int8 x
    positions = (OH - 1) * pitch + OW
    chunks = (positions + QUAD_PIXELS - 1) // QUAD_PIXELS
    per_group = N // groups
    group_blocks = (per_group + QUAD_BLOCK - 1) // QUAD_BLOCK
    group_words = C4 // groups * stride
    pieces = (copy_words + SHIFT_PIECE - 1) // SHIFT_PIECE
    wave = max(1, min(B, WAVE_WORDS // xg.shape[1]))  # images packed, then run, at a time
    for b0 in range(0, B, wave):
        images = min(wave, B - b0)
        for t in prange(images * C4):
            b = b0 + t // C4
            pack_group_jit(x[b], xg[b], t % C4, x_zero_point, flip, sh, sw, pt, pl, Hq, pitch,
                           stride, used)
        zero_tails(xg[b0:b0 + images, :copy_words], C4 * stride)  # the slack dropped columns read
        if copies > 1:  # an empty parallel loop still costs a launch
            for t in prange(images * (copies - 1) * pieces):
                b, rest = b0 + t // ((copies - 1) * pieces), t % ((copies - 1) * pieces)
                first = rest % pieces * SHIFT_PIECE
                shift_copy_jit(xg[b], rest // pieces + 1, copy_words, first, first + SHIFT_PIECE)
        runs, per = channel_groups(groups * group_blocks, 1)  # MIN_TASKS runs, whatever the chunks
        for t in prange(images * runs * chunks):  # (image, run, chunk): a thread's channels
            b, rest = b0 + t // (runs * chunks), t % (runs * chunks)
            run = rest // chunks
            _chunk_blocks(cptr, offsets, wptr, words, start, xg[b], m0, shift, y_zero_point, lo,
                          hi, y, residual, b, rest % chunks * QUAD_PIXELS, run * per,
                          min(groups * group_blocks, (run + 1) * per), per_group, group_blocks,
                          group_words, pitch, OH)


@njit(cache=True)
def _chunk_blocks(cptr, offsets, wptr, words, start, xb, m0, shift, y_zero_point, lo, hi, y,
                  residual, b, p0, k_begin, k_end, per_group, group_blocks, group_words, pitch,
                  OH):
    """One task's work: blocks k_begin .. k_end of output channels (4 each, numbered across the
    groups) at the chunk of QUAD_PIXELS positions from p0 of image b, whose packed words are xb:
    per block the quad tile into 4 × 64 int32 sums, each channel's requantized into y's rows
    (_quads.store_chunk), a residual, if any, added on the way.

    A function of its own, not inlined into the parallel loop: the parallel build, loaded from
    Numba's disk cache (as every run after the first loads it), ran this body inlined 1.4–1.8×
    slower than the same kernel compiled in the process (MobileNetV2's 16 → 96 expand at
    112×112, one thread: 0.60–0.64 against 0.33 ms, with nearly the same machine code: the same
    832 vpdpbusd, 5 % fewer instructions in the cached build), and 1.08× slower on the
    ResNet-18's quad convs. Called, the cached build runs nearly as fast as a fresh one
    (MobileNetV2's 17 quad convs in the model's sequence, both builds from the cache, one / two
    threads: 2.94 / 1.67 ms inlined, 2.16 / 1.41 called; the serial build, which never showed
    the difference, within 3 %). Why the loaded parallel build is slower is not known
    (docs/kernels.md, "The quad-sparse conv")."""
    first, rows = chunk_rows(p0, QUAD_PIXELS, pitch, OH)  # the output rows it touches
    sums = words_on_lines(QUAD_BLOCK * QUAD_PIXELS).reshape((QUAD_BLOCK, QUAD_PIXELS))
    for k in range(k_begin, k_end):
        g, j = k // group_blocks, k % group_blocks
        n0, count = g * per_group + QUAD_BLOCK * j, min(QUAD_BLOCK, per_group - QUAD_BLOCK * j)
        s = block_starts(start, n0, count)
        quad_tile(sums, xb, offsets, wptr, words, cptr, k, p0 + g * group_words, s[0], s[1], s[2],
                  s[3])
        for c in range(count):
            n = n0 + c
            store_chunk(sums, c, n, b, p0, first, rows, m0[n], shift[n], y_zero_point, lo, hi, y,
                        pitch, residual)


conv2d_quad_rq_i8 = njit(cache=True, parallel=True, nogil=True)(_conv2d_quad_rq_i8)

KERNELS = {"conv2d_quad_rq_i8": conv2d_quad_rq_i8}

__all__ = ["KERNELS", "QUAD_SLACK", "conv2d_quad_rq_i8"]
