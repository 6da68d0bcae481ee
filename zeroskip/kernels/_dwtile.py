"""The 3×3 depthwise row tile on AVX-512 VNNI + VBMI CPUs: the output rows of one channel, 16
outputs of a row per step, three ``vpdpbusd`` (one per tap row) where the plain loops spend nine
multiplies.

    s[r, u] = start + Σ_{i<3} Σ_{j<3} w[i,j] · xpad[r·sh + i·dh, u·sw + j·dw]
    y[r·OW + u] = requantize(s[r, u], m0n, shift_n)          for r < OH, u < OW

xpad is the plane as if padded with the zero point (pt rows above, pl columns to the left); the
tile reads the plane itself. Its bytes are taken as unsigned (int8 activations as x + 128, with
``start`` bias' − 128·Σ w, as the broadcast tile does: exact modulo 2^32). For a tap row i and 16
consecutive outputs, the bytes that output u needs, columns 16·v·sw − pl + u·sw + j·dw for
j = 0, 1, 2, all sit in the 64 bytes from column 16·v·sw − pl (15·sw + 2·dw < 64): one masked
load (the bytes outside the row, or all of them for a row outside the plane, come from a vector
of the zero point), then ``vpermb`` (AVX-512 VBMI) moves each output's three bytes into its int32
lane (the 4th byte any one of them, its weight 0), and ``vpdpbusd`` multiplies them by the row's
three weights, broadcast as one word (bytes w[i,0], w[i,1], w[i,2], 0), adding the three products
to the lane with no rounding or saturation. A 16-output step is 3 loads, 3 shuffles and 3 dot
products, where the plain loop (``depthwise._rows_3x3``) widens and multiplies nine times. The
sums are requantized where they are (``_requant``: the short form when the channel's multiplier
is tie-free) and each step's outputs stored as bytes, masked to the row's width.

The loads are shared where rows repeat. At a row step and dilation of 1 the tile rolls down the
input rows: each is loaded, flipped and permuted once, and its taps go into the three outputs that
read it (as tap row 2, 1 and 0), three accumulators in flight; at a row step of 2 an output's
last input row is the next output's first, carried over. Other steps load three rows per output.

``dw3_tile_loops`` is the same arithmetic in plain loops: what the tests compare the tile with, and
the one to read first. docs/kernels.md, "The depthwise row tile", has the figures.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._cpu import HAS_AVX512_VBMI, HAS_AVX512_VNNI
from ._broadcast import declare_dpbusd
from ._requant import (declare_masked_byte_load, declare_masked_byte_store, fold_fits,
                       folded_nudge, lanes_between, lanes_clamped, lanes_up_to, requantized,
                       requantized_bytes, requantized_folded, splat)
from .quant import requantize_one
from ._quads import signed_byte, word

LANES = 16
"""Outputs per step: the int32 lanes of a zmm."""
WINDOW = 64
"""Bytes per load (one zmm), from which ``vpermb`` picks each output's three taps."""


@njit(cache=True)
def fits(sw, dw):
    """Whether a step's 16 outputs find all their taps in one window: 15·sw + 2·dw < 64."""
    return (LANES - 1) * sw + 2 * dw < WINDOW


@njit(cache=True)
def permutation(sw, dw):
    """The ``vpermb`` indices [64] uint8: byte b of lane u takes window byte u·sw + min(b, 2)·dw
    (byte 3 repeats tap 2, whose weight there is 0)."""
    idx = np.empty(4 * LANES, np.uint8)
    for u in range(LANES):
        for b in range(4):
            idx[4 * u + b] = u * sw + min(b, 2) * dw
    return idx


@njit(cache=True)
def row_words(w):
    """The tap-row words [N, 3] int32 of 3×3 kernels w [N, 9] int8: word i of row n holds
    w[n, 3i], w[n, 3i+1], w[n, 3i+2] in bytes 0–2 and 0 in byte 3."""
    words = np.empty((w.shape[0], 3), np.int32)
    for n in range(w.shape[0]):
        for i in range(3):
            words[n, i] = word(w[n, 3 * i], w[n, 3 * i + 1], w[n, 3 * i + 2], 0, np.int32(0))
    return words


def dw3_tile_loops(y, x, base, H, W, idx, words, start, x_fill, flip, blocks, OH, OW, sh, sw, dh,
                   dw, pt, pl, m0n, shift_n, y_zero_point, lo, hi):
    """The tile in plain loops (module docstring): the plane x[base : base + H·W] (flat, unpadded),
    its OH × OW outputs requantized with (m0n, shift_n) into y[oh·OW + u]. Output u of row oh
    reads, for tap row i, the byte at column 16·sw·⌊u/16⌋ − pl + idx[4·(u mod 16) + b] of input row
    oh·sh − pt + i·dh, and x_fill where that is outside the plane; each byte xor ``flip`` (0x80
    for int8 x: read as x + 128), times byte b of words[i]. The int32 sums wrap as vpdpbusd's do."""
    for r in range(OH):
        for u in range(OW):
            v, lane = u // LANES, u % LANES
            s = np.int64(start)
            for i in range(3):
                row = r * sh - pt + i * dh
                for b in range(4):
                    col = v * LANES * sw - pl + np.int64(idx[4 * lane + b])
                    a = x[base + row * W + col] if 0 <= row < H and 0 <= col < W else x_fill
                    s += ((np.int64(a) ^ flip) & 0xFF) * signed_byte(words[i], b)
            s = ((s + 2 ** 31) & 0xFFFFFFFF) - 2 ** 31
            y[r * OW + u] = requantize_one(s, m0n, shift_n, y_zero_point, lo, hi)


dw3_tile_portable = njit(cache=True, inline="always")(dw3_tile_loops)


def _dw3_tile_ir():
    i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
    vec, window = ir.VectorType(i32, LANES), ir.VectorType(i8, WINDOW)
    wide, bytes16 = ir.VectorType(i64, LANES), ir.VectorType(i8, LANES)

    @intrinsic
    def dw3_tile(typingctx, y, x, base, H, W, idx, words, start, x_fill, flip, blocks, OH, OW, sh,
                 sw, dh, dw, pt, pl, m0n, shift_n, y_zero_point, lo, hi):
        if not (all(isinstance(a, types.Array) and a.layout == "C" and a.ndim == 1
                    for a in (y, x, idx, words))
                and y.dtype in (types.uint8, types.int8) and x.dtype in (types.uint8, types.int8)
                and idx.dtype == types.uint8 and words.dtype == types.int32):
            return None
        sig = types.void(y, x, *[types.int64] * 3, idx, words, types.int32,
                         *[types.int64] * 16)

        def codegen(context, builder, signature, args):
            ya, xa, ia, wa = (context.make_array(signature.args[i])(context, builder, args[i])
                              for i in (0, 1, 5, 6))
            base, H, W = args[2:5]
            start, x_fill, flip, blocks, OH, OW, sh, sw, dh, dw, pt, pl = args[7:19]
            m0, shift, y_zero_point, lo, hi = args[19:]
            permute = builder.module.declare_intrinsic(
                "llvm.x86.avx512.permvar.qi.512", fnty=ir.FunctionType(window, [window, window]))
            load = declare_masked_byte_load(builder)
            dpbusd = declare_dpbusd(builder)
            store = declare_masked_byte_store(builder)
            order = builder.load(builder.bitcast(ia.data, window.as_pointer()), align=1)
            weights = [splat(builder, builder.load(builder.gep(wa.data, [i64(i)])))
                       for i in range(3)]
            fill_v, flip_v = (splat(builder, builder.trunc(value, i8), window)
                              for value in (x_fill, flip))
            plane = builder.gep(builder.bitcast(xa.data, i8.as_pointer()), [base])
            y_bytes = builder.bitcast(ya.data, i8.as_pointer())
            first = splat(builder, start)

            def block_columns(v):  # step v's first column, and its window's bytes in a row
                col0 = builder.sub(builder.mul(v, builder.mul(sw, i64(LANES))), pl)
                return col0, lanes_between(builder, builder.neg(col0), builder.sub(W, col0))

            def taps(row, col0, inside):  # each lane's three bytes of input row ``row``
                valid = builder.and_(builder.icmp_signed(">=", row, i64(0)),
                                     builder.icmp_signed("<", row, H))
                at = builder.gep(plane, [builder.add(builder.mul(row, W), col0)])
                loaded = builder.call(load, [at, fill_v, builder.select(valid, inside, i64(0))])
                return builder.bitcast(builder.call(permute, [builder.xor(loaded, flip_v), order]),
                                       vec)

            def store_mask(v):  # the outputs of step v within the row
                left = builder.sub(OW, builder.mul(v, i64(LANES)))
                left = builder.select(builder.icmp_signed(">", left, i64(LANES)), i64(LANES), left)
                return builder.trunc(lanes_up_to(builder, left), i16)

            def store_step(q, r, v, mask):
                out = builder.gep(y_bytes, [builder.add(builder.mul(r, OW),
                                                        builder.mul(v, i64(LANES)))])
                builder.call(store, [out, builder.trunc(q, bytes16), mask])

            def each_step(requantize):  # any stride: three loads per output step
                with cgutils.for_range(builder, OH) as row_loop:
                    r = row_loop.index
                    with cgutils.for_range(builder, blocks) as loop:
                        col0, inside = block_columns(loop.index)
                        acc = first
                        for i in range(3):
                            row = builder.add(builder.sub(builder.mul(r, sh), pt),
                                              builder.mul(dh, i64(i)))
                            acc = builder.call(dpbusd, [acc, taps(row, col0, inside),
                                                        weights[i]])
                        store_step(requantize(acc), r, loop.index, store_mask(loop.index))

            def rolling(requantize):  # sh = dh = 1: one load per input row, for three outputs
                older, old = cgutils.alloca_once(builder, vec), cgutils.alloca_once(builder, vec)
                with cgutils.for_range(builder, blocks) as loop:
                    v = loop.index
                    col0, inside = block_columns(v)
                    mask = store_mask(v)
                    builder.store(first, older)
                    builder.store(first, old)
                    # input row k − pt is tap row 2 of output k − 2, 1 of k − 1 and 0 of k
                    with cgutils.for_range(builder, builder.add(OH, i64(2))) as row_loop:
                        k = row_loop.index
                        t = taps(builder.sub(k, pt), col0, inside)
                        done = builder.call(dpbusd, [builder.load(older), t, weights[2]])
                        builder.store(builder.call(dpbusd, [builder.load(old), t, weights[1]]),
                                      older)
                        builder.store(builder.call(dpbusd, [first, t, weights[0]]), old)
                        with builder.if_then(builder.icmp_signed(">=", k, i64(2)), likely=True):
                            store_step(requantize(done), builder.sub(k, i64(2)), v, mask)

            def carried(requantize):  # sh = 2, dh = 1: an output's last row is the next's first
                shared = cgutils.alloca_once(builder, vec)
                with cgutils.for_range(builder, blocks) as loop:
                    v = loop.index
                    col0, inside = block_columns(v)
                    mask = store_mask(v)
                    builder.store(taps(builder.neg(pt), col0, inside), shared)
                    with cgutils.for_range(builder, OH) as row_loop:
                        r = row_loop.index
                        top = builder.sub(builder.mul(r, i64(2)), pt)
                        middle = taps(builder.add(top, i64(1)), col0, inside)
                        bottom = taps(builder.add(top, i64(2)), col0, inside)
                        acc = builder.call(dpbusd, [first, builder.load(shared), weights[0]])
                        acc = builder.call(dpbusd, [acc, middle, weights[1]])
                        acc = builder.call(dpbusd, [acc, bottom, weights[2]])
                        builder.store(bottom, shared)
                        store_step(requantize(acc), r, v, mask)

            def each_row(requantize):  # by the row step: rolling, carried, or three loads a step
                unit_dilation = builder.icmp_signed("==", dh, i64(1))
                with builder.if_else(builder.and_(builder.icmp_signed("==", sh, i64(1)),
                                                  unit_dilation)) as (unit, other):
                    with unit:
                        rolling(requantize)
                    with other:
                        with builder.if_else(builder.and_(builder.icmp_signed("==", sh, i64(2)),
                                                          unit_dilation)) as (two, strided):
                            with two:
                                carried(requantize)
                            with strided:
                                each_step(requantize)

            with builder.if_else(fold_fits(builder, m0, shift)) as (fast, general):
                with fast:  # the zero point in the nudge (_requant.requantized_folded)
                    nudge, low = folded_nudge(builder, shift, y_zero_point)
                    lo_v, hi_v = (splat(builder, builder.trunc(value, i32)) for value in (lo, hi))
                    each_row(lambda s: requantized_folded(builder, s, m0, nudge, low, lo_v,
                                                          hi_v))
                with general:
                    m0_v, shift_v, zp_v, lo_v, hi_v = (
                        splat(builder, value, wide) for value in (m0, shift, y_zero_point, lo, hi))
                    nudge = builder.shl(ir.Constant(wide, [1] * LANES),
                                        builder.sub(shift_v, ir.Constant(wide, [1] * LANES)))
                    each_row(lambda s: requantized(builder, s, m0_v, shift_v, nudge, zp_v, lo_v,
                                                   hi_v))
            return context.get_dummy_value()

        return sig, codegen

    return dw3_tile


PLANE_OUTPUTS = 4 * LANES
"""Outputs per group of the plane tile: 4 zmm of int32 sums, packed into one 64-byte store."""
PLANE_WINDOW = 2 * WINDOW - 1
"""Input bytes a plane tile group can read: two 64-byte loads, less the last byte, which holds
the fill (the zero point) for the taps outside the plane."""
FILL = PLANE_WINDOW
"""The index of the fill byte in the plane tile's two-register window."""


PLANE_MAX_WIDTH = LANES // 2
"""The widest output rows that take the plane tile: there the row tile leaves at least half of
its 16 lanes empty. One thread, the row tile against the plane tile: 960×7×7 29.4 against 20.4 µs;
384×14×14 20.6 / 25.2, 576×14×14 29.5 / 36.3, 192×28×28 33.7 / 37.1 (the row tile's rows share
their loads between three outputs, where each plane tile group permutes 12 times)."""


@njit(cache=True)
def plane_table(H, W, OH, OW, sh, sw, dh, dw, pt, pl):
    """The plane tile's table for a 3×3 depthwise conv of this geometry, or an empty one (0 groups)
    for outputs wider than PLANE_MAX_WIDTH, or where some group's taps span more than
    PLANE_WINDOW bytes of the plane: (idx [G, 12, 64] uint8,
    ws [G] int64). Group g holds outputs 64g .. 64g + 63 of the flat output plane (oh·OW + ow),
    and reads the window of plane bytes from ws[g]; idx[g, 3v + i] is the ``vpermi2b`` index
    vector of tap row i for outputs 64g + 16v .. 64g + 16v + 15: byte 4l + b of it, tap b of lane
    l's row i (b < 3), the byte's place in the window, or FILL for a tap outside the plane and for
    b = 3 (its weight 0)."""
    if OW > PLANE_MAX_WIDTH:
        return np.zeros((0, 12, 4 * LANES), np.uint8), np.zeros(0, np.int64)
    total = OH * OW
    groups = (total + PLANE_OUTPUTS - 1) // PLANE_OUTPUTS
    idx = np.full((groups, 12, 4 * LANES), FILL, np.uint8)
    ws = np.zeros(groups, np.int64)
    for g in range(groups):
        first, last = H * W, -1
        for p in range(PLANE_OUTPUTS * g, min(total, PLANE_OUTPUTS * (g + 1))):
            oh, ow = p // OW, p % OW
            for i in range(3):
                h = oh * sh - pt + i * dh
                for b in range(3):
                    w = ow * sw - pl + b * dw
                    if 0 <= h < H and 0 <= w < W:
                        first, last = min(first, h * W + w), max(last, h * W + w)
        if last < 0:
            first = 0
        elif last - first >= PLANE_WINDOW:
            return np.zeros((0, 12, 4 * LANES), np.uint8), np.zeros(0, np.int64)
        ws[g] = first
        for p in range(PLANE_OUTPUTS * g, min(total, PLANE_OUTPUTS * (g + 1))):
            oh, ow = p // OW, p % OW
            v, lane = (p % PLANE_OUTPUTS) // LANES, p % LANES
            for i in range(3):
                h = oh * sh - pt + i * dh
                for b in range(3):
                    w = ow * sw - pl + b * dw
                    if 0 <= h < H and 0 <= w < W:
                        idx[g, 3 * v + i, 4 * lane + b] = h * W + w - first
    return idx, ws


def dw3_plane_tile_loops(y, y_base, x, base, HW, idx, ws, words, n, start, x_fill, flip, total,
                         m0n, shift_n, y_zero_point, lo, hi):
    """The plane tile in plain loops: output p of the flat plane y[y_base : y_base + total]
    (group g = p // 64, vector v, lane l) sums, over tap rows i and bytes b, byte b of channel n's
    tap-row word words[n, i] times window byte
    k = idx[g, 3v + i, 4l + b] of group g: the plane's byte x[base + ws[g] + k] if k < FILL and it
    lies in the plane (of HW bytes), else x_fill; each xor ``flip``. Then requantized, as the row
    tile's."""
    for p in range(total):
        g, v, lane = p // PLANE_OUTPUTS, (p % PLANE_OUTPUTS) // LANES, p % LANES
        s = np.int64(start)
        for i in range(3):
            for b in range(4):
                k = np.int64(idx[g, 3 * v + i, 4 * lane + b])
                at = ws[g] + k
                a = x[base + at] if k < FILL and at < HW else x_fill
                s += ((np.int64(a) ^ flip) & 0xFF) * signed_byte(words[n, i], b)
        s = ((s + 2 ** 31) & 0xFFFFFFFF) - 2 ** 31
        y[y_base + p] = requantize_one(s, m0n, shift_n, y_zero_point, lo, hi)


dw3_plane_tile_portable = njit(cache=True, inline="always")(dw3_plane_tile_loops)


@intrinsic
def _dw3_plane_tile_ir(typingctx, y, y_base, x, base, HW, idx, ws, words, n, start, x_fill, flip,
                       total, m0n, shift_n, y_zero_point, lo, hi):
    """dw3_plane_tile_loops on AVX-512 VBMI + VNNI: per group of 64 outputs, two masked 64-byte
    loads of the window (the bytes outside the plane, and the last one, come in as the fill),
    then per 16 outputs and tap row one ``vpermi2b`` (each lane's three taps from 128 bytes) and
    one ``vpdpbusd``; the 4 vectors of sums requantized together (_requant.requantized_bytes) and
    stored as one masked 64-byte run of the output plane. Where an output row is 7 wide, the row
    tile fills 7 of its 16 lanes; here 49 of 64. Offsets, not views: a view of the output plane
    and of the channel's words per call would cost reference counts in the kernel's loop."""
    if not (all(isinstance(a, types.Array) and a.layout == "C" for a in (y, x, idx, ws, words))
            and y.ndim == 1 and x.ndim == 1 and idx.ndim == 3 and ws.ndim == 1 and words.ndim == 2
            and y.dtype in (types.uint8, types.int8) and x.dtype in (types.uint8, types.int8)
            and idx.dtype == types.uint8 and ws.dtype == types.int64
            and words.dtype == types.int32):
        return None
    sig = types.void(y, types.int64, x, types.int64, types.int64, idx, ws, words, types.int64,
                     types.int32, *[types.int64] * 8)

    def codegen(context, builder, signature, args):
        i8, i64 = ir.IntType(8), ir.IntType(64)
        vec, window = ir.VectorType(ir.IntType(32), LANES), ir.VectorType(i8, WINDOW)
        ya, xa, ia, wsa, wa = (context.make_array(signature.args[i])(context, builder, args[i])
                               for i in (0, 2, 5, 6, 7))
        y_base, base, HW, n = args[1], args[3], args[4], args[8]
        start, x_fill, flip, total, m0, shift, y_zero_point, lo, hi = args[9:]
        permute = builder.module.declare_intrinsic(
            "llvm.x86.avx512.vpermi2var.qi.512",
            fnty=ir.FunctionType(window, [window, window, window]))
        load = declare_masked_byte_load(builder)
        dpbusd = declare_dpbusd(builder)
        store = declare_masked_byte_store(builder, PLANE_OUTPUTS)
        weights = [splat(builder, builder.load(builder.gep(wa.data, [
            builder.add(builder.mul(n, i64(3)), i64(i))]))) for i in range(3)]
        fill_v, flip_v = (splat(builder, builder.trunc(value, i8), window)
                          for value in (x_fill, flip))
        plane = builder.gep(builder.bitcast(xa.data, i8.as_pointer()), [base])
        y_bytes = builder.gep(builder.bitcast(ya.data, i8.as_pointer()), [y_base])
        orders = builder.bitcast(ia.data, window.as_pointer())
        first = splat(builder, start)
        signed = signature.args[0].dtype == types.int8

        groups = cgutils.unpack_tuple(builder, ia.shape)[0]
        with cgutils.for_range(builder, groups) as loop:
            g = loop.index
            w0 = builder.load(builder.gep(wsa.data, [g]))
            left = builder.sub(HW, w0)
            low, high = (builder.xor(builder.call(load, [
                builder.gep(plane, [builder.add(w0, i64(offset))]), fill_v,
                lanes_clamped(builder, builder.sub(left, i64(offset)), top)]), flip_v)
                for offset, top in ((0, WINDOW), (WINDOW, WINDOW - 1)))
            p0 = builder.mul(g, i64(PLANE_OUTPUTS))
            accs = []
            for v in range(4):  # a vector past the plane's last output is not summed (7×7: 49)
                acc = cgutils.alloca_once_value(builder, first)
                with builder.if_then(builder.icmp_signed("<", builder.add(p0, i64(LANES * v)),
                                                         total), likely=True):
                    for i in range(3):
                        order = builder.load(builder.gep(orders, [builder.add(
                            builder.mul(g, i64(12)), i64(3 * v + i))]), align=1)
                        taps = builder.bitcast(builder.call(permute, [low, order, high]), vec)
                        builder.store(builder.call(dpbusd, [builder.load(acc), taps,
                                                            weights[i]]), acc)
                accs.append(builder.load(acc))
            q = requantized_bytes(builder, accs, m0, shift, y_zero_point, lo, hi, signed)
            builder.call(store, [builder.gep(y_bytes, [p0]), q,
                                 lanes_clamped(builder, builder.sub(total, p0), PLANE_OUTPUTS)])
        return context.get_dummy_value()

    return sig, codegen


CPU_HAS = HAS_AVX512_VNNI and HAS_AVX512_VBMI
"""Whether this CPU has the tile's instructions: what plans decide by, so that they pick the same
kernels with NUMBA_DISABLE_JIT=1."""
RUNS = CPU_HAS and not numba.config.DISABLE_JIT
"""Whether the tile runs here: the CPU has it, and the JIT is on (LLVM IR does not run as Python;
the kernel then runs its plain planar loops, the same bytes)."""

dw3_tile = _dw3_tile_ir() if RUNS else dw3_tile_portable
"""The tile the depthwise kernel runs: vpermb + vpdpbusd where the CPU has them, plain loops
elsewhere."""

dw3_plane_tile = _dw3_plane_tile_ir if RUNS else dw3_plane_tile_portable
"""The plane tile the depthwise kernel runs where its table has groups (plane_table): vpermi2b +
vpdpbusd where the CPU has them, plain loops elsewhere."""

TILES = {"loops": dw3_tile_portable}
"""The tile variants this CPU runs, by name (the tests compare each with the reference)."""
if RUNS:
    TILES["vnni"] = dw3_tile
