"""The quad tile of the block-sparse int8 conv (conv_quad.py): 4 output channels, 64 positions.

    sums[c, p] = start_c + Σ_{quads q of channel n0 + c} Σ_{b<4} byte_b(word_q) · byte_b(xg[offset_q + p0 + p])
    for c < 4, p < QUAD_PIXELS

A *quad* is 4 weights of one output channel that sit on 4 consecutive input channels at the same
tap. A pruned conv keeps the quads that hold any nonzero (about a third of them at 90 % unstructured
sparsity, 1 − 0.9^4), each as one int32 word of its 4 signed bytes. The input is packed the same
way: word t of channel group c4 holds the 4 activation bytes of channels 4·c4 .. 4·c4+3 at flat
position t of their padded phases (``pack_group``). Then a quad's 4 products at one output
position are one 4-byte dot product, which ``vpdpbusd`` (AVX-512 VNNI) does for 16 positions at
once, and a quad at the 64 positions p0 .. p0+63 is 4 contiguous zmm loads at offset_q + p0 (the
tap's shift is part of the offset; docs/kernels.md, "The quad-sparse conv").

The tile takes a *block* of 4 output channels (``QUAD_BLOCK``) at once, so that the 4 loads of a
quad column serve every channel of the block that has a quad there: one channel per column, a load
per ``vpdpbusd``, ran at 1.4 cycles a ``vpdpbusd`` on a Zen 4 core (2.2 when the loads split cache
lines); two or more at 1.0–1.2, the multiplier's own rate. The plan (engine/plan/weights.quad_blocks)
sorts the block's columns by *class*, the set of its channels that have the quad (a 4-bit mask,
15 classes), so that each class is a loop with no branch: per column the offset (a scalar load), 4
zmm loads, and per channel of the class a broadcast word and 4 ``vpdpbusd`` into that channel's 4
accumulators (16 in all). Exact: unsigned activation bytes times signed weight bytes, the 4 products
added to the int32 lane with no saturation; int8 activations go through as x + 128 like the
broadcast tile's (``_broadcast.SIGN_FLIP``). ``quad_tile_loops`` is the same arithmetic in plain
loops: the tile on CPUs without AVX-512 VNNI, and the one to read first.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import config, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._broadcast import LANES, PIXEL_VECTORS, RUNS, declare_dpbusd, word
from ._cpu import HAS_AVX512_VNNI
from ._requant import (QADD_SHIFTS, declare_masked_byte_load, declare_masked_byte_store,
                       lanes_between, lanes_up_to, qadd_bytes, requantized_bytes, splat)
from .elementwise import qadd_value
from .quant import requantize_one

QUAD_PIXELS = LANES * PIXEL_VECTORS
"""Output positions per quad tile: 4 zmm accumulators of 16 int32 lanes."""
QUAD_SLACK = QUAD_PIXELS
"""Words past the last packed plane that a tile may read (the positions of its last chunk past the
plane's valid ones, whose sums are dropped): the packed input is allocated with them, zeroed."""


QUAD_BLOCK = 4
"""Output channels per quad tile: the channels that share each column's activation loads."""
QUAD_CLASSES = (1 << QUAD_BLOCK) - 1
"""A block's classes: the non-empty subsets of its channels, class m holding channel c if bit c of m
is set (m = 1 … 15)."""


@njit(cache=True, inline="always")
def signed_byte(word, b):
    """Byte b of an int32 word as a signed value (−128 .. 127)."""
    return (((word >> (8 * b)) & 0xFF) ^ 0x80) - 0x80


@njit(cache=True, inline="always")
def block_starts(start, n0, count):
    """The tile's 4 starting sums of the block of ``count`` channels from n0: start[n0 + c], 0 past
    the block's channels (their sums are computed from no quad and dropped)."""
    return (start[n0], start[n0 + 1] if count > 1 else np.int32(0),
            start[n0 + 2] if count > 2 else np.int32(0), start[n0 + 3] if count > 3 else np.int32(0))


def quad_tile_loops(sums, xg, offsets, wptr, words, cptr, k, p0, s0, s1, s2, s3):
    """The quad tile in plain loops: sums [QUAD_BLOCK, QUAD_PIXELS] int32 ← s_c + block k's quads
    of channel c (module docstring; the layout is engine/plan/weights.quad_blocks'). Each
    activation word's bytes are unsigned, each weight word's signed; the int32 sums wrap as
    vpdpbusd's do (the plan's bound keeps the true sums within int32)."""
    starts = (s0, s1, s2, s3)
    for c in range(QUAD_BLOCK):
        for p in range(QUAD_PIXELS):
            sums[c, p] = starts[c]
    for m in range(1, QUAD_CLASSES + 1):
        first, end = cptr[k * QUAD_CLASSES + m - 1], cptr[k * QUAD_CLASSES + m]
        w = wptr[k * QUAD_CLASSES + m - 1]
        for e in range(first, end):
            base = offsets[e] + p0
            for c in range(QUAD_BLOCK):
                if not (m >> c) & 1:
                    continue
                word_ = words[w]
                w += 1
                w0, w1, w2, w3 = (signed_byte(word_, 0), signed_byte(word_, 1),
                                  signed_byte(word_, 2), signed_byte(word_, 3))
                for p in range(QUAD_PIXELS):
                    a = xg[base + p]
                    sums[c, p] += ((a & 0xFF) * w0 + ((a >> 8) & 0xFF) * w1
                                   + ((a >> 16) & 0xFF) * w2 + ((a >> 24) & 0xFF) * w3)


quad_tile_portable = njit(cache=True, inline="always")(quad_tile_loops)


def _quad_tile_ir():
    i32, i64 = ir.IntType(32), ir.IntType(64)
    vec = ir.VectorType(i32, LANES)

    def is_array(t, dtype, layout="A"):
        return isinstance(t, types.Array) and t.dtype == dtype and layout in ("A", t.layout)

    @intrinsic
    def quad_tile(typingctx, sums, xg, offsets, wptr, words, cptr, k, p0, s0, s1, s2, s3):
        if not (is_array(sums, types.int32, "C") and sums.ndim == 2
                and is_array(xg, types.int32, "C") and is_array(offsets, types.int64)
                and is_array(wptr, types.int64) and is_array(words, types.int32)
                and is_array(cptr, types.int64)):
            return None
        sig = types.void(sums, xg, offsets, wptr, words, cptr, types.intp, types.intp,
                         types.int32, types.int32, types.int32, types.int32)

        def codegen(context, builder, signature, args):
            sa, xa, oa, pa, wa, ca = (context.make_array(signature.args[i])(context, builder,
                                                                            args[i])
                                      for i in range(6))
            k, p0 = args[6:8]
            dpbusd = declare_dpbusd(builder)

            def element(array, index, ty):  # array[index] of a 1-D array, by its stride
                stride = cgutils.unpack_tuple(builder, array.strides)[0]
                at = builder.gep(builder.bitcast(array.data, ir.IntType(8).as_pointer()),
                                 [builder.mul(index, stride)])
                return builder.load(builder.bitcast(at, ty.as_pointer()))

            # accs[c][v]: positions 16v .. 16v+15 of channel c, in registers (16 zmm)
            accs = [[cgutils.alloca_once_value(builder, splat(builder, start))
                     for _ in range(PIXEL_VECTORS)] for start in args[8:12]]
            for m in range(1, QUAD_CLASSES + 1):
                channels = [c for c in range(QUAD_BLOCK) if (m >> c) & 1]
                at = builder.add(builder.mul(k, i64(QUAD_CLASSES)), i64(m - 1))
                first = element(ca, at, i64)
                count = builder.sub(element(ca, builder.add(at, i64(1)), i64), first)
                w0 = element(pa, at, i64)
                with cgutils.for_range(builder, count) as loop:
                    offset = element(oa, builder.add(first, loop.index), i64)
                    vectors = builder.bitcast(builder.gep(xa.data, [builder.add(offset, p0)]),
                                              vec.as_pointer())
                    xs = [builder.load(builder.gep(vectors, [i64(v)]), align=4)
                          for v in range(PIXEL_VECTORS)]
                    w = builder.add(w0, builder.mul(loop.index, i64(len(channels))))
                    for r, c in enumerate(channels):
                        weights = splat(builder, element(wa, builder.add(w, i64(r)), i32))
                        for v in range(PIXEL_VECTORS):
                            builder.store(builder.call(dpbusd, [builder.load(accs[c][v]), xs[v],
                                                                weights]), accs[c][v])
            out = builder.bitcast(sa.data, vec.as_pointer())
            for c in range(QUAD_BLOCK):
                for v in range(PIXEL_VECTORS):
                    builder.store(builder.load(accs[c][v]),
                                  builder.gep(out, [i64(c * PIXEL_VECTORS + v)]), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return quad_tile


quad_tile = _quad_tile_ir() if RUNS else quad_tile_portable
"""The tile the quad conv runs: vpdpbusd where the CPU has AVX-512 VNNI, plain loops elsewhere (and
as Python under NUMBA_DISABLE_JIT=1, where LLVM IR cannot run)."""

TILES = {"loops": quad_tile_portable}
"""The tile variants this CPU runs, by name (the tests compare each with the reference)."""
if RUNS:
    TILES["vnni"] = quad_tile


@njit(cache=True, inline="always")
def pack_run(out, o, r0, r1, r2, r3, first, last, step, shift, flip):
    """out[o + v] = the word of r0..r3 at column v·step + shift (xor ``flip``), for v in
    [first, last): one row of a phase (pack_group). Inlined where it is called, so that a literal
    ``step`` is a constant in the loop; the indices are unsigned (no negative-index checks), so
    that the loop vectorizes."""
    if last <= first:
        return
    to, src, u_step = np.uint64(o + first), np.uint64(first * step + shift), np.uint64(step)
    for k in range(np.uint64(last - first)):
        w = src + u_step * k
        out[to + k] = word(r0[w], r1[w], r2[w], r3[w], flip)


@njit(cache=True, inline="always")
def _deal_run(xg, to, row, src, count, step):
    """xg[to + k] = row[src + step·k] for k < count (unsigned offsets); inlined, so that a literal
    ``step`` is a constant in the loop."""
    for k in range(count):
        xg[to + k] = row[src + step * k]


@njit(cache=True)
def _pack_strided(p0, p1, p2, p3, xg, at, pad, flip, sh, sw, pt, pl, Hq, Wq, used):
    """pack_group for a column stride sw ≥ 2: each input row is packed once, contiguously, into a
    row of words (``pack_run`` with step 1), and each column phase b then takes every sw-th word
    of it from b − pl on. Reading every other byte of the 4 planes for each phase did not
    vectorize as well: packing 64×56×56 for a 3×3 stride-2 conv took 0.056 ms that way, 0.027
    this way."""
    H, W = p0.shape
    size = Hq * Wq
    row = np.empty(W, np.int32)  # one input row's words
    for a in range(sh):
        if not (used >> (a * sw)) & ((1 << sw) - 1):
            continue  # no phase of this row phase is read (a 1×1 stride-2 conv reads one of 4)
        for u in range(Hq):
            h, o = u * sh + a - pt, u * Wq
            inside = 0 <= h < H
            if inside:
                pack_run(row, 0, p0[h], p1[h], p2[h], p3[h], 0, W, 1, 0, flip)
            for b in range(sw):
                if not (used >> (a * sw + b)) & 1:
                    continue
                start = at + (a * sw + b) * size + o      # the row's first word in xg
                first = max(0, -((b - pl) // sw))         # the first v with v·sw + b − pl ≥ 0
                last = max(first, min(Wq, (W - 1 - b + pl) // sw + 1))  # past the last inside x
                if not inside:
                    first = last = 0
                for v in range(first):
                    xg[start + v] = pad
                if last > first:
                    to, src = np.uint64(start + first), np.uint64(first * sw + b - pl)
                    count = np.uint64(last - first)
                    if sw == 2:  # the common stride as a constant step
                        _deal_run(xg, to, row, src, count, np.uint64(2))
                    else:
                        _deal_run(xg, to, row, src, count, np.uint64(sw))
                for v in range(last, Wq):
                    xg[start + v] = pad


def pack_group(x, xg, c4, fill, flip, sh, sw, pt, pl, Hq, Wq, stride, used):
    """Words c4·stride .. c4·stride + sh·sw·Hq·Wq of xg: the padded phases of the 4 planes
    x[4c4 .. 4c4+3] ([C,H,W], uint8 or int8), interleaved, each word's byte b from plane 4c4+b and
    xor-ed with ``flip`` (0 for uint8; _broadcast.SIGN_FLIP for int8, which makes each byte
    x + 128). Phase (a, b) holds, at row u and column v, x[., u·sh + a − pt, v·sw + b − pl], and
    the byte ``fill`` (the input's zero point) outside x: _planes.pad_phases's layout, here with the
    4 channels in one word (the stride-1 phase is the padded plane itself). Only the phases whose
    bit a·sw + b is set in ``used`` are written (``used_phases``: a 1×1 stride-2 conv reads one of
    its four); the others' words are left as they were, read only for dropped positions. A column
    stride above 1 goes through ``_pack_strided`` (each row packed once, then dealt to the
    phases)."""
    H, W = x.shape[1], x.shape[2]
    f = np.int64(fill) & 0xFF
    pad = np.int32((f | (f << 8) | (f << 16) | (f << 24)) ^ np.int64(flip) & 0xFFFFFFFF)
    # a group of fewer than 4 planes (a folded conv's 1–3 channels) repeats its last: the repeats
    # meet zero weights
    last_plane = x.shape[0] - 1
    p0, p1 = x[min(4 * c4, last_plane)], x[min(4 * c4 + 1, last_plane)]
    p2, p3 = x[min(4 * c4 + 2, last_plane)], x[min(4 * c4 + 3, last_plane)]
    size = Hq * Wq
    if sw > 1:
        _pack_strided(p0, p1, p2, p3, xg, c4 * stride, pad, flip, sh, sw, pt, pl, Hq, Wq, used)
        return
    for a in range(sh):
        for b in range(sw):
            if not (used >> (a * sw + b)) & 1:
                continue
            first = max(0, -((b - pl) // sw))             # the first v with v·sw + b − pl ≥ 0
            last = max(first, min(Wq, (W - 1 - b + pl) // sw + 1))  # past the last inside x
            at = c4 * stride + (a * sw + b) * size
            out = xg[at:at + size]
            # plain indexed loops, no slices per row: a row's slices (an array view each, with
            # its reference count) cost more than its words on 14×14 and 7×7 planes
            for u in range(Hq):
                h, o = u * sh + a - pt, u * Wq
                if h < 0 or h >= H:
                    for v in range(Wq):
                        out[o + v] = pad
                    continue
                for v in range(first):
                    out[o + v] = pad
                r0, r1, r2, r3 = p0[h], p1[h], p2[h], p3[h]
                # the column step as the constant 1 (sw is 1 here): a run-time step kept the
                # loop from vectorizing, 3× slower (64×56×56: 0.066 against 0.023 ms)
                pack_run(out, o, r0, r1, r2, r3, first, last, 1, b - pl, flip)
                for v in range(last, Wq):
                    out[o + v] = pad


pack_group_jit = njit(cache=True)(pack_group)


@njit(cache=True)
def used_phases(kh, kw, sh, sw, dh, dw):
    """The phases a conv's taps read, as bits a·sw + b (pack_group's ``used``): tap (i, j) reads
    phase ((i·dh) mod sh, (j·dw) mod sw)."""
    used = 0
    for i in range(kh):
        for j in range(kw):
            used |= 1 << ((i * dh) % sh * sw + (j * dw) % sw)
    return used


QUAD_ALIGN = LANES
"""Words per zmm load: a quad's 4 loads are aligned (no cache-line splits) when its offset is a
multiple of this."""


def quad_layout(OH, OW, kh, kw, sh, sw, dh, dw, C4, aligned):
    """(Hq, pitch, stride, copies, copy_words): where the packed input's words sit, for a conv of
    output OH×OW and C4 groups of 4 channels (per image: ``copies`` copies of copy_words words each,
    copy 0 the C4 groups ``stride`` words apart and QUAD_SLACK zeroed words).

    Each phase has Hq rows of ``pitch`` words. The natural pitch is Wq = OW + (kw−1)·dw // sw, the
    columns the taps reach. ``aligned`` rounds it up to QUAD_ALIGN words and adds copies of the
    packed input shifted by 1, 2, … words (one per tap column offset mod QUAD_ALIGN): then every
    row, phase and group starts on a cache line, and a tap at column offset s reads copy s at an
    aligned offset (``quad_offsets``). Aligned loads take 1.2 ns a quad tile where loads that split
    cache lines take 1.9–2.6 (docs/kernels.md), for (pitch − Wq)/Wq more positions and the
    copies' writes. ``stride`` is a whole number of cache lines, one more when that number is a
    multiple of 8: groups 8·2^k lines apart fall in a few of L1's 64 sets, and at 14×14 (256
    words, 16 lines) the 64 windows a chunk of 256 channels reads evicted each other (2.6 ns a
    quad tile against 1.7 at 17 lines). Other counts keep the groups packed: at 7×7, 6 lines a
    group put 128 groups' windows in 48 KB, and 7 lines made that layer 10 % slower."""
    Hq, Wq = OH + (kh - 1) * dh // sh, OW + (kw - 1) * dw // sw
    pitch = -(-Wq // QUAD_ALIGN) * QUAD_ALIGN if aligned else Wq
    lines = -(-sh * sw * Hq * pitch // QUAD_ALIGN)
    stride = (lines + (lines % 8 == 0)) * QUAD_ALIGN
    copies = min(QUAD_ALIGN, (kw - 1) * dw // sw + 1) if aligned else 1
    return Hq, pitch, stride, copies, C4 * stride + QUAD_SLACK


ALIGNED_MIN_LOADS = 320
"""Quad-column loads per group of 4 input channels (entries / (C/4)) from which the aligned
layout's copies pay (``aligned_pays``)."""


def aligned_pays(OH, OW, kh, kw, sh, sw, dh, dw, loads=ALIGNED_MIN_LOADS) -> bool:
    """Whether the aligned layout (``quad_layout``) is worth its extra positions and copies, for a
    conv whose tile loads each group of 4 input channels' words ``loads`` times per chunk (its
    entries over C/4): when it needs at most 1.4 times the chunks of the natural pitch (a 7×7 plane,
    pitch 9 → 16, stays natural: 2 chunks where 1 does), and the loads are enough to pay for
    writing the copies. Measured on a Zen 4 core with the 4-channel tile (one thread, 90 %
    unstructured): 64→64 at 56×56 (118 loads a group) and 128→128 at 28×28 (234) 9–13 % faster
    natural, 256→256 at 14×14 (468) even, 128→256 stride 2 (467) 5 % faster aligned."""
    def chunks(aligned):
        pitch = quad_layout(OH, OW, kh, kw, sh, sw, dh, dw, 1, aligned)[1]
        return -(-((OH - 1) * pitch + OW) // QUAD_PIXELS)
    return loads >= ALIGNED_MIN_LOADS and chunks(True) <= 1.4 * chunks(False)


@njit(cache=True)
def quad_offsets(qcols, kh, kw, Hq, pitch, sh, sw, dh, dw, stride, copies=1, copy_words=0):
    """offsets [nq] int64: where quad column q = c4·kh·kw + i·kw + j starts in its group's words
    of xg (pack_group's layout, ``stride`` words per 4 channels, rows of ``pitch`` words): phase
    ((i·dh) mod sh, (j·dw) mod sw), row (i·dh)//sh, column (j·dw)//sw. The quad at output position
    p reads word offsets[q] + p. With copies > 1 (quad_layout's aligned layout) the offset o is
    taken from copy s = o mod QUAD_ALIGN, shifted by s: s·copy_words + o − s, a multiple of
    QUAD_ALIGN (the plan makes copies cover every s that occurs)."""
    offsets = np.empty(qcols.shape[0], np.int64)
    for e in range(qcols.shape[0]):
        c4, tap = qcols[e] // (kh * kw), qcols[e] % (kh * kw)
        i, j = tap // kw, tap % kw
        phase = (i * dh) % sh * sw + (j * dw) % sw
        o = c4 * stride + (phase * Hq + (i * dh) // sh) * pitch + (j * dw) // sw
        s = o % QUAD_ALIGN if copies > 1 else 0
        offsets[e] = s * copy_words + o - s
    return offsets


SHIFT_PIECE = 4096
"""Words per task of the shifted copies (16 KB): a 56×56 layer's copy is 59,000 words, one task
per copy left a thread with half the copying (64→64 at 56×56, two threads)."""


def shift_copy(xg, s, copy_words, first=0, end=-1):
    """Words first .. end − 1 (all, by default) of copy s of one image's packed input: copy 0's
    words from s on, zeros for its last s words, so that a word at offset o of copy 0 sits at
    o − s of copy s."""
    end = copy_words if end < 0 else min(end, copy_words)
    src, dst = xg[s:copy_words], xg[s * copy_words:(s + 1) * copy_words]
    for t in range(first, min(end, copy_words - s)):  # a slice assignment checks for overlap
        dst[t] = src[t]
    for t in range(max(first, copy_words - s), end):
        dst[t] = 0


shift_copy_jit = njit(cache=True)(shift_copy)


# -- the epilogue of the convs over the packed input (conv_quad.py, conv_amx.py) --------------------
@njit(cache=True, inline="always")
def chunk_rows(p0, width, pitch, OH):
    """(first row, rows) of the output that positions p0 .. p0 + width − 1 at ``pitch`` touch,
    rows past OH left out: computed once per task, so that the epilogue divides by nothing."""
    first = p0 // pitch
    return first, max(0, min(OH, (p0 + width - 1) // pitch + 1) - first)


def store_chunk_loops(sums, j, n, b, p0, first, rows, m0n, shift_n, y_zero_point, lo, hi, y,
                      pitch, residual=None):
    """One output channel's sums (row j of sums) over a chunk of positions p0 .. p0 + L − 1 at the
    phases' row ``pitch``, requantized (channel n's m0n, shift_n; requantize_one) into y[b, n]
    ([B, N, OH, OW]): position p is row p // pitch, column p mod pitch, and the columns from OW
    on, and the rows from OH on, are dropped. (first, rows): ``chunk_rows``. With a residual
    (elementwise.residual_parts' tuple: r, of y's shape, and the QAdd's parameters), each value
    is then added to r's as the QAdd would add them (elementwise.qadd_value). Scalars, not the
    tuple (m0, shift, …): a tuple of arrays unpacked once per tile cost its arrays' reference
    counts each time (25–30 ns a call). The plain loops, the one to read first; ``store_chunk``
    is what the kernels call."""
    OW = y.shape[3]
    for p in range(sums.shape[1]):
        r, ow = (p0 + p) // pitch, (p0 + p) % pitch
        if first <= r < first + rows and ow < OW:
            q = requantize_one(sums[j, p], m0n, shift_n, y_zero_point, lo, hi)
            if residual is None:
                y[b, n, r, ow] = q
            else:
                y[b, n, r, ow] = qadd_value(q, residual[0][b, n, r, ow], residual[1],
                                            residual[2], residual[3], residual[4], residual[5],
                                            residual[6], residual[7], residual[8])


def _no_residual(residual) -> bool:
    return residual is None or isinstance(residual, (types.NoneType, types.Omitted))


NARROW_ADD_SHIFTS = (24, 53)
"""The QAdd shifts R for which _qadd_ir rounds in 32-bit lanes (_qadd_round_narrow); quantmath.
add_multipliers gives R = 43 − ⌊log₂ max(a_scale, b_scale)/y_scale⌋: 42–44 for a residual add of
like scales."""


def _qadd_round_narrow(builder, high, low, shift):
    """LLVM IR: round_half_away(p / 2^R) for p = high·2^22 + low (vectors of 16 int32 lanes, as
    _qadd_ir makes them) and 24 ≤ R ≤ 53, in 32-bit lanes. With H = high + (low >> 22) and
    l₀ = low mod 2^22, p = H·2^22 + l₀ (0 ≤ l₀ < 2^22), so p < 0 exactly when H < 0, and for
    s = R − 22 ≥ 2 the rounding's floor((p + 2^(R−1) − [p < 0]) / 2^R) is
    floor((H − δ + 2^(s−1)) / 2^s), δ = [H < 0 and l₀ = 0] (the −1 borrows from H only when l₀
    is 0), taken as ((H − δ) >> 1 + 2^(s−2)) >> (s − 1) so that no sum leaves int32: |H| ≤
    2·255·2^22 + 2^9 < 2^31 − 2^23, and 2^(s−2) ≤ 2^29 for R ≤ 53. The 64-bit lanes of the
    general form take twice the registers and µops for each of six steps."""
    i32 = ir.IntType(32)
    vec = high.type
    s = builder.trunc(builder.sub(shift, ir.IntType(64)(22)), i32)
    big = builder.add(high, builder.ashr(low, splat(builder, i32(22))))
    spare = builder.and_(low, splat(builder, i32((1 << 22) - 1)))
    zero = ir.Constant(vec, [0] * LANES)
    borrow = builder.and_(builder.icmp_signed("<", big, zero),
                          builder.icmp_signed("==", spare, zero))
    halved = builder.ashr(builder.sub(big, builder.zext(borrow, vec)), splat(builder, i32(1)))
    half = builder.shl(splat(builder, i32(1)), splat(builder, builder.sub(s, i32(2))))
    return builder.ashr(builder.add(halved, half), splat(builder, builder.sub(s, i32(1))))


def _qadd_ir(builder, qa, qb, params):
    """LLVM IR: elementwise.qadd_value on vectors of 16 int32 lanes qa (the conv's requantized
    values) and qb (the residual's): clamp(y_zp + round_half_away(p / 2^R), lo, hi) for
    p = (qa − a_zp)·A + (qb − b_zp)·B, as int32. params: the 8 int64 scalars of residual_parts'
    tuple after r (a_zp, b_zp, A, B, R, y_zp, lo, hi), with 0 ≤ A, B ≤ 2^44 (quantmath.
    add_multipliers). The products are made in 32-bit lanes, 16 at a time: with A = A₁·2^22 + A₀
    (A₀ < 2^22) and d = q − zp (|d| ≤ 255), p = (d_a·A₁ + d_b·B₁)·2^22 + (d_a·A₀ + d_b·B₀), each
    sum within ±2·255·2^22 < 2^31; only the sum, the rounding and the shift take 64-bit lanes.
    qadd_value's 64-bit products (vpmullq, 3 µops each) had made the fused add slower than the
    separate pass over the plane."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    vec, wide = qa.type, ir.VectorType(i64, LANES)
    a_zp, b_zp, a_mult, b_mult, shift, y_zp, lo, hi = params
    low_bits = i64((1 << 22) - 1)

    def halves(m):  # (m >> 22, m & (2^22 − 1)) in every 32-bit lane
        return (splat(builder, builder.trunc(builder.lshr(m, i64(22)), i32)),
                splat(builder, builder.trunc(builder.and_(m, low_bits), i32)))

    (a1, a0), (b1, b0) = halves(a_mult), halves(b_mult)
    da = builder.sub(qa, splat(builder, builder.trunc(a_zp, i32)))
    db = builder.sub(qb, splat(builder, builder.trunc(b_zp, i32)))
    high = builder.add(builder.mul(da, a1), builder.mul(db, b1))
    low = builder.add(builder.mul(da, a0), builder.mul(db, b0))
    narrow = builder.and_(builder.icmp_signed(">=", shift, i64(NARROW_ADD_SHIFTS[0])),
                          builder.icmp_signed("<=", shift, i64(NARROW_ADD_SHIFTS[1])))
    with builder.if_else(narrow, likely=True) as (then, otherwise):
        with then:
            t_narrow = _qadd_round_narrow(builder, high, low, shift)
            narrow_block = builder.block
        with otherwise:
            p = builder.add(builder.shl(builder.sext(high, wide), splat(builder, i64(22), wide)),
                            builder.sext(low, wide))
            one = splat(builder, i64(1), wide)
            r = splat(builder, shift, wide)
            negative = builder.zext(builder.icmp_signed("<", p, ir.Constant(wide, [0] * LANES)),
                                    wide)
            t_wide = builder.trunc(builder.ashr(builder.sub(builder.add(
                p, builder.shl(one, builder.sub(r, one))), negative), r), vec)
            wide_block = builder.block
    t = builder.phi(vec)
    t.add_incoming(t_narrow, narrow_block)
    t.add_incoming(t_wide, wide_block)
    t = builder.add(t, splat(builder, builder.trunc(y_zp, i32)))
    lo_v, hi_v = splat(builder, builder.trunc(lo, i32)), splat(builder, builder.trunc(hi, i32))
    t = builder.select(builder.icmp_signed("<", t, lo_v), lo_v, t)
    return builder.select(builder.icmp_signed(">", t, hi_v), hi_v, t)


@intrinsic
def _store_chunk_ir(typingctx, sums, j, n, b, p0, first, rows, m0n, shift_n, y_zero_point, lo, hi,
                    y, pitch, residual):
    """store_chunk_loops in LLVM IR for chunks of 64 sums: the 64 requantized and packed to bytes
    at once (_requant.requantized_bytes: a scalar branch between its short and general forms),
    then for each output row the chunk touches, one masked 64-byte store (lane l is position
    p0 + l; the lanes outside the row's OW columns are masked off, and are not touched wherever
    they point); a plane with no dropped columns (pitch = OW) takes the chunk as one run. With a
    residual, the residual's bytes at the same lanes are loaded first (one masked load a row,
    merged into one register) and added as the QAdd adds (_requant.qadd_bytes for shifts in
    QADD_SHIFTS, else ``_qadd_ir`` per vector; A, B ≤ 2^44). No array views, no branch
    in the kernel's loop, no division, no wide-row workspace and no pass over y afterwards: the
    sums go straight to y. sums [rows, 64] int32, C-contiguous; y [B, N, OH, OW] 8-bit,
    C-contiguous; residual None or residual_parts' tuple, r C-contiguous of y's shape.

    Why IR: a kernel's serial build (the one a one-thread run takes) keeps the reference counts
    of the arrays handed to an inlined helper inside its loop. Through a helper with a view of
    each channel's sums and output row, the stores took 0.66 of the AMX stem's 1.0 ms (13 000
    calls a run; 0.2–0.3 in the parallel build); called as an intrinsic, the stem's serial build
    went 1.07 → 0.68 ms. Writing y's rows here, where the sums went to wide rows of the phases'
    pitch and a parallel loop then copied each row's valid columns and added the residual, saves
    that pass and, at two threads, its parallel region (docs/kernels.md, "The epilogue")."""
    plain = _no_residual(residual)
    arrays = [sums, y] + ([] if plain else [residual[0]])
    if not (all(isinstance(a, types.Array) and a.layout == "C" for a in arrays)
            and sums.dtype == types.int32 and sums.ndim == 2 and y.ndim == 4
            and all(a.dtype in (types.uint8, types.int8) for a in arrays[1:])
            and (plain or (residual[0].ndim == 4 and len(residual) == 9))):
        return None
    sig = types.void(sums, j, n, b, p0, first, rows, m0n, shift_n, y_zero_point, lo, hi, y, pitch,
                     residual)

    def codegen(context, builder, signature, args):
        i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
        vec, out = ir.VectorType(i32, LANES), ir.VectorType(i8, LANES)
        sa = context.make_array(signature.args[0])(context, builder, args[0])
        ya = context.make_array(signature.args[12])(context, builder, args[12])
        j_v, n_v, b_v, p0_v, first_v, rows_v, m0_v, shift_v, zp_v, lo_v, hi_v = (
            context.cast(builder, args[i], signature.args[i], types.int64) for i in range(1, 12))
        pitch_v = context.cast(builder, args[13], signature.args[13], types.int64)
        _, n_out, oh_v, ow_v = cgutils.unpack_tuple(builder, ya.shape)
        plane_start = builder.mul(builder.add(builder.mul(b_v, n_out), n_v),
                                  builder.mul(oh_v, ow_v))
        plane = builder.gep(ya.data, [plane_start])
        if not plain:
            rt = signature.args[14]
            ra = context.make_array(rt[0])(context, builder, builder.extract_value(args[14], 0))
            r_plane = builder.gep(ra.data, [plane_start])
            params = [context.cast(builder, builder.extract_value(args[14], i), rt[i],
                                   types.int64) for i in range(1, 9)]
            r_signed = rt[0].dtype == types.int8
        y_signed = signature.args[12].dtype == types.int8
        src = builder.bitcast(builder.gep(sa.data, [builder.mul(j_v, i64(QUAD_PIXELS))]),
                              vec.as_pointer())
        held = ir.ArrayType(out, PIXEL_VECTORS)
        chunk = ir.VectorType(i8, QUAD_PIXELS)
        kept_chunk = cgutils.alloca_once(builder, chunk)  # the chunk's 64 bytes, 64-byte aligned
        kept_all = builder.bitcast(kept_chunk, held.as_pointer())  # as 4 vectors of 16

        def slot(array, v):  # &array[v], v an int or an i64 value
            return builder.gep(array, [i32(0), v if isinstance(v, ir.Value) else i32(v)])

        kept = [slot(kept_all, v) for v in range(PIXEL_VECTORS)]
        builder.store(requantized_bytes(
            builder, [builder.load(builder.gep(src, [i64(v)]), align=4)
                      for v in range(PIXEL_VECTORS)],
            m0_v, shift_v, zp_v, lo_v, hi_v, y_signed), kept_chunk)

        def widened(bytes_, signed):
            return (builder.sext if signed else builder.zext)(bytes_, vec)

        def each_row(body):
            """body(mask, at) for each output row the chunk touches: mask, the i64 mask of the
            chunk's lanes in the row's OW columns; at, where in the plane lane 0 would go (the
            row's column 0 less its lane; masked-off lanes are not touched, wherever they
            point). One masked 64-byte access a row, where 16-byte ones per vector had cost a
            loop, a mask each and, for the residual, a 64-byte load waiting on four 16-byte
            stores."""
            with cgutils.for_range(builder, rows_v) as row:
                r = builder.add(first_v, row.index)
                begin = builder.sub(builder.mul(r, pitch_v), p0_v)  # the chunk's lane of column 0
                body(lanes_between(builder, begin, builder.add(begin, ow_v)),
                     builder.sub(builder.mul(r, ow_v), begin))

        # no dropped columns (pitch = OW: a 1×1 stride-2 downsample, a GEMM): one run of y
        direct = builder.icmp_signed("==", pitch_v, ow_v)
        left = builder.sub(builder.mul(oh_v, ow_v), p0_v)  # positions from p0 to the plane's end
        load64, store64 = declare_masked_byte_load(builder), declare_masked_byte_store(builder,
                                                                                       QUAD_PIXELS)
        if not plain:  # the residual's bytes at the same lanes, row by row; then the QAdd
            gathered_at = cgutils.alloca_once_value(builder, ir.Constant(chunk, None))
            with builder.if_else(direct) as (run, rows_apart):
                with run:  # one masked load of 64 bytes
                    builder.store(builder.call(load64, [
                        builder.gep(r_plane, [p0_v]), ir.Constant(chunk, None),
                        lanes_up_to(builder, left)]), gathered_at)
                with rows_apart:  # one masked load a row, merged into the lanes before
                    each_row(lambda mask, at: builder.store(builder.call(load64, [
                        builder.gep(r_plane, [at]), builder.load(gathered_at), mask]),
                        gathered_at))
            gathered = builder.load(gathered_at)
            with builder.if_else(builder.and_(
                    builder.icmp_signed(">=", params[4], i64(QADD_SHIFTS[0])),
                    builder.icmp_signed("<=", params[4], i64(QADD_SHIFTS[1]))),
                    likely=True) as (fast, other):
                with fast:  # all 64 at once, 16-bit products (_requant.qadd_bytes)
                    builder.store(qadd_bytes(builder, builder.load(kept_chunk), gathered,
                                             y_signed, r_signed, y_signed, params), kept_chunk)
                with other:
                    others = builder.bitcast(gathered_at, held.as_pointer())
                    for v in range(PIXEL_VECTORS):
                        total = _qadd_ir(builder, widened(builder.load(kept[v]), y_signed),
                                         widened(builder.load(slot(others, v)), r_signed),
                                         params)
                        builder.store(builder.trunc(total, out), kept[v])

        with builder.if_else(direct) as (run, rows_apart):
            with run:  # one store of the chunk's 64 bytes, masked past the plane's end
                builder.call(declare_masked_byte_store(builder, QUAD_PIXELS), [
                    builder.gep(plane, [p0_v]),
                    builder.load(kept_chunk),
                    lanes_up_to(builder, left)])
            with rows_apart:  # one masked store a row
                each_row(lambda mask, at: builder.call(store64, [
                    builder.gep(plane, [at]), builder.load(kept_chunk), mask]))
        return context.get_dummy_value()

    return sig, codegen


store_chunk = (_store_chunk_ir if HAS_AVX512_VNNI and not config.DISABLE_JIT
               else njit(cache=True)(store_chunk_loops))
"""The epilogue of the quad and AMX convs' tiles (store_chunk_loops' bytes): the IR form on
AVX-512 CPUs (its masked byte loads and stores are AVX-512 BW's), else the loops."""
