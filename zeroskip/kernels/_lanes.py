"""The int8 lane tile of conv_lanes.py: 32 output channels in the vector lanes × 7 positions of an
output row, over the quad conv's packed input (``_quads.pack_group``: 4 channels' bytes per word),
requantized in registers.

    s[l, r] = starts[n0 + l] + Σ_{k} dot4(xg[offsets[k] + base + r], wl[w0 + 32k + l])
    y[at + l·plane + r] = requantize(s[l, r], m0s[n0 + l], shifts[n0 + l])     l < channels, r < count

Weight column k = c4·kh·kw + i·kw + j is 4 input channels at one tap. A block's 32 output channels'
words at column k are adjacent (``pack_lane_words``): 2 zmm loads. Each of the row's 7 positions
reads one word of the packed input, broadcast, and ``vpdpbusd`` adds its 4 unsigned bytes times
each channel's 4 signed weight bytes into the channel's int32 lane: 14 accumulators, 2 loads, 7
broadcasts and 14 ``vpdpbusd`` per column. The epilogue requantizes the accumulators where they
are, a channel per lane (each lane's multiplier and shift are one vector load per 16 channels):
quant.requantize_row's arithmetic (``_requant``: the short form where all 16 channels are
tie-free, else in 64-bit lanes), the zero point added and the clamp applied;
then the values, a position per vector, are transposed in registers (``_fma.transposed_pairs``)
and each channel's positions stored as bytes with one masked store. The int32 sums never leave
the registers: an earlier version stored them into an int32 plane that a third parallel loop
requantized (4 bytes written and read again per output, and one more parallel region per conv).

Exact: unsigned activation bytes times signed weight bytes, added in int32 with no saturation;
int8 activations are packed as x + 128 and the sums start from bias' − 128·Σ w (the quad conv's
trick, exact modulo 2³², and the true sums are within int32 by the plan's bound).
``lane_tile_i8_loops`` is the same arithmetic in plain loops: the tile on CPUs without AVX-512
VNNI, and the one to read first. The leading underscore keeps the kernel collector
(``kernels/__init__.py``) from looking here: helpers only.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._broadcast import RUNS, declare_dpbusd
from ._requant import (declare_masked_byte_store, lanes_below, requantized,
                       requantized_tie_free, splat, tie_free)
from ._fma import lane_products, transposed_pairs
from ._quads import signed_byte
from .quant import requantize_one

LANE_PIXELS_I8 = 7
"""Output positions of one row per int8 lane tile (a row of 56, 28, 14 or 7 splits into whole
tiles), as the float lane tile's."""

LANE_CHANNELS_I8 = 32
"""Output channels per int8 lane tile: 2 zmm of 16 int32 lanes."""


def lane_tile_i8_loops(xg, offsets, wl, w0, base, starts, m0s, shifts, n0, y_zero_point, lo, hi,
                       y, at, channels, plane, count):
    """The int8 lane tile in plain loops (module docstring): channel n0 + l's sum at position r,
    wrapped to int32 as vpdpbusd's sums wrap (the plan's bound keeps the true sums within int32),
    requantized into y[at + l·plane + r], for l < channels and r < count."""
    for l in range(channels):
        for r in range(count):
            s = np.int64(starts[n0 + l])
            for k in range(offsets.shape[0]):
                a = np.int64(xg[offsets[k] + base + r])
                w = np.int64(wl[w0 + k * LANE_CHANNELS_I8 + l])
                s += ((a & 0xFF) * signed_byte(w, 0) + ((a >> 8) & 0xFF) * signed_byte(w, 1)
                      + ((a >> 16) & 0xFF) * signed_byte(w, 2)
                      + ((a >> 24) & 0xFF) * signed_byte(w, 3))
            s = ((s + 2 ** 31) & 0xFFFFFFFF) - 2 ** 31
            y[at + l * plane + r] = requantize_one(s, m0s[n0 + l], shifts[n0 + l], y_zero_point,
                                                   lo, hi)


lane_tile_i8_portable = njit(cache=True, inline="always")(lane_tile_i8_loops)


def _lane_tile_i8_ir(pixels: int = LANE_PIXELS_I8, vectors: int = LANE_CHANNELS_I8 // 16):
    i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
    lanes = 16
    vec, wide = ir.VectorType(i32, lanes), ir.VectorType(i64, lanes)
    bytes16 = ir.VectorType(i8, 16)

    @intrinsic
    def lane_tile_i8(typingctx, xg, offsets, wl, w0, base, starts, m0s, shifts, n0, y_zero_point,
                     lo, hi, y, at, channels, plane, count):
        arrays = (xg, offsets, wl, starts, m0s, shifts, y)
        if not (all(isinstance(a, types.Array) and a.layout == "C" and a.ndim == 1
                    for a in arrays) and offsets.dtype == types.int64
                and all(a.dtype == types.int32 for a in (xg, wl, starts, m0s, shifts))
                and y.dtype in (types.uint8, types.int8)):
            return None
        sig = types.void(xg, offsets, wl, types.intp, types.intp, starts, m0s, shifts, types.intp,
                         types.int64, types.int64, types.int64, y, types.intp, types.intp,
                         types.intp, types.intp)

        def codegen(context, builder, signature, args):
            xa, oa, wa, sa, ma, ha, ya = (
                context.make_array(signature.args[i])(context, builder, args[i])
                for i in (0, 1, 2, 5, 6, 7, 12))
            w0, base, n0 = args[3], args[4], args[8]
            y_zero_point, lo, hi = args[9], args[10], args[11]
            at, channels, plane, count = args[13:]
            dpbusd = declare_dpbusd(builder)
            undef = ir.Constant(vec, ir.Undefined)

            def block(array, v):  # the block's vector v of a per-channel array (whole blocks)
                first = builder.bitcast(builder.gep(array.data, [n0]), vec.as_pointer())
                return builder.load(builder.gep(first, [i64(v)]), align=4)

            accs = [[cgutils.alloca_once_value(builder, block(sa, v)) for v in range(vectors)]
                    for r in range(pixels)]
            lane_products(builder, oa, xa.data, builder.gep(wa.data, [w0]), base, i64(1), accs,
                          lambda acc, x, w: builder.call(dpbusd, [acc, x, w]))
            store = declare_masked_byte_store(builder)
            out = builder.bitcast(builder.gep(ya.data, [at]), i8.as_pointer())
            mask = builder.trunc(lanes_below(builder, count), i16)
            zp_v, lo_v, hi_v = (splat(builder, value, wide) for value in (y_zero_point, lo, hi))
            zp_n, lo_n, hi_n = (splat(builder, builder.trunc(value, i32))
                                for value in (y_zero_point, lo, hi))
            one = ir.Constant(wide, [1] * lanes)

            def store_rows(v, rows):  # rows[r]: position r's bytes of the vector's 16 channels
                rows = rows + [undef] * (8 - pixels)
                for j, pair in enumerate(transposed_pairs(builder, rows, lanes)):
                    for h in range(2):
                        l = lanes * v + 2 * j + h
                        part = builder.trunc(builder.shuffle_vector(pair, undef, ir.Constant(
                            ir.VectorType(i32, 16), list(range(8 * h, 8 * h + 8)) + [16] * 8)),
                            bytes16)
                        with builder.if_then(builder.icmp_signed("<", i64(l), channels)):
                            builder.call(store, [builder.gep(out, [builder.mul(i64(l), plane)]),
                                                 part, mask])

            for v in range(vectors):
                m0, shift = block(ma, v), block(ha, v)
                every = builder.icmp_unsigned("==", builder.bitcast(tie_free(
                    builder, builder.sext(m0, wide), builder.sext(shift, wide)), i16), i16(-1))
                with builder.if_else(every) as (fast, general):
                    with fast:  # all 16 channels tie-free: the short form
                        store_rows(v, [requantized_tie_free(builder, builder.load(accs[r][v]), m0,
                                                            shift, zp_n, lo_n, hi_n)
                                       for r in range(pixels)])
                    with general:
                        m0_w, shift_w = builder.sext(m0, wide), builder.sext(shift, wide)
                        nudge = builder.shl(one, builder.sub(shift_w, one))
                        store_rows(v, [requantized(builder, builder.load(accs[r][v]), m0_w,
                                                   shift_w, nudge, zp_v, lo_v, hi_v)
                                       for r in range(pixels)])
            return context.get_dummy_value()

        return sig, codegen

    return lane_tile_i8


LANE_TILES_I8 = {"loops": lane_tile_i8_portable}
"""The int8 lane tile variants this CPU runs, by name (the tests compare each with the reference)."""
if RUNS:
    LANE_TILES_I8["vnni"] = _lane_tile_i8_ir()

lane_tile_i8 = LANE_TILES_I8.get("vnni", lane_tile_i8_portable)
"""The tile the int8 lanes conv runs: vpdpbusd where the CPU has AVX-512 VNNI, plain loops
elsewhere (where plans do not take it) and as Python under NUMBA_DISABLE_JIT=1."""


def pack_lane_words(w4):
    """wl [blocks·K4·32] int32: the int8 weight w4 (N, C, kh, kw), C a multiple of 4, as the lane
    tile reads it. Word column k = c4·kh·kw + i·kw + j holds channel n's weights on input channels
    4c4 .. 4c4+3 at tap (i, j), byte b on channel 4c4 + b; blocks of 32 output channels (zero words
    past N), and in a block the 32 channels' words at each column adjacent: channel n = 32·blk + l
    at (blk·K4 + k)·32 + l."""
    n_out, channels, kh, kw = w4.shape
    words = np.ascontiguousarray(np.asarray(w4, np.int8).reshape(
        n_out, channels // 4, 4, kh * kw).transpose(0, 1, 3, 2)).view("<i4").reshape(n_out, -1)
    blocks = -(-n_out // LANE_CHANNELS_I8)
    rows = np.zeros((blocks * LANE_CHANNELS_I8, words.shape[1]), np.int32)
    rows[:n_out] = words
    return np.ascontiguousarray(
        rows.reshape(blocks, LANE_CHANNELS_I8, -1).transpose(0, 2, 1)).reshape(-1)
