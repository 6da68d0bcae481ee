"""The FMA tile of the dense float32 direct conv (conv_dense.py): FMA_ROWS output channels ×
FMA_PIXELS output positions, summed in vector registers.

    sums[j, p] = Σ_{k < K} wp[w0 + k·FMA_ROWS + j] · xq[offsets[k] + base + p]
    for j < FMA_ROWS, p < FMA_PIXELS

The conv's input sits in its padded phases, flat (``_planes.pad_phases``, as the sparse convs
read it), so that weight k = (c, i, j) of every output channel reads output position p at
offsets[k] + p: one contiguous run per k, whatever the stride (``_planes.phase_offsets``). A tile
is then an outer product per k: the run's FMA_PIXELS activations (FMA_VECTORS vector loads) times
the FMA_ROWS channels' weights (each broadcast from memory), FMA_ROWS·FMA_VECTORS fused
multiply-adds into as many accumulators, which stay in registers from the first k to the last.
The weights are packed so that a block's FMA_ROWS weights at one k are adjacent (``pack_rows``).

With AVX-512 a tile is 6 channels × 64 positions: 24 zmm accumulators, and per k 4 loads, 6
broadcasts and 24 FMAs (the FMA ports, not the loads, set the pace). With AVX2 it is 6 × 16: 12 ymm
accumulators, 2 loads and 6 broadcasts per 12 FMAs, within the 16 ymm registers. ``fma_tile_loops``
is the same sum in plain loops (the tile on other CPUs, and the one to read first), each
multiply-add rounded once as the vector FMAs round it (``fma32``), so every variant gives the same
bytes, and so does the kernel run as Python. docs/kernels.md, "conv2d_dense_f32", has the loop
order and the figures. The leading underscore keeps the kernel collector (``kernels/__init__.py``)
from looking here: helpers only.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._broadcast import store_accumulators
from ._cpu import FEATURES, HAS_AVX2, HAS_AVX512

FMA_ROWS = 6
"""Output channels per tile (weights broadcast per k). Six, not four: with AVX-512, 6 × 4 zmm
accumulators ran at 49.6 GMAC/s where 4 × 4 ran at 43.2 (the tile alone, one thread, K = 576,
interleaved rounds; 8 × 3 ran at 49.4 but its 48-position chunks waste more of a 7×7 plane)."""

HAS_FMA = HAS_AVX2 and bool(FEATURES.get("fma", False))
"""FMA3: a fused multiply-add in one instruction (every AVX2 CPU so far has it)."""

SHAPES = {"zmm": (16, 4), "ymm": (8, 2)}
"""Vector tile shapes by register width: (float32 lanes per vector, vectors per channel)."""

NATIVE = "zmm" if HAS_AVX512 else "ymm"
"""The register width this CPU's tile uses."""

FMA_LANES, FMA_VECTORS = SHAPES[NATIVE]
FMA_PIXELS = FMA_LANES * FMA_VECTORS
"""Output positions per tile: 64 with AVX-512, 16 with AVX2 (and in the plain-loop tile)."""

FMA_SLACK = max(lanes * vectors for lanes, vectors in SHAPES.values())
"""Floats past the last packed plane that a tile may read (the positions of the last chunk past
the valid ones, whose sums are dropped): the workspace has them, zeroed."""


def fma32(a, b, c):
    """float32(a·b + c) rounded once, as a fused multiply-add does, for float32 a, b, c.

    As Python (NUMBA_DISABLE_JIT=1), exactly, through float64: a·b is exact there (24 + 24
    significant bits), and the sum is rounded to odd (TwoSum gives its rounding error; an inexact
    sum with an even last bit moves one step toward the exact value), after which rounding to
    float32 is correct (Boldo and Melquiond, "Emulation of FMA and correctly rounded sums: proved
    algorithms using rounding to odd", 2008). Compiled, the ``llvm.fma.f32`` intrinsic (overload
    below): one instruction on FMA CPUs, a correctly rounded libm call elsewhere. So every tile
    variant, compiled or not, gives the same bytes."""
    p, c = float(a) * float(b), float(c)
    s = p + c
    if not math.isfinite(s):
        return np.float32(s)
    t = s - p
    error = (p - (s - t)) + (c - t)  # p + c = s + error, exactly
    if error != 0.0 and not np.array(s).view(np.int64) & 1:
        s = float(np.nextafter(s, math.inf if error > 0 else -math.inf))
    return np.float32(s)


@intrinsic
def _fma32_ir(typingctx, a, b, c):
    if not (a == b == c == types.float32):
        return None

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fma = builder.module.declare_intrinsic("llvm.fma.f32",
                                               fnty=ir.FunctionType(f32, [f32, f32, f32]))
        return builder.call(fma, list(args))

    return types.float32(types.float32, types.float32, types.float32), codegen


@overload(fma32, inline="always")
def _fma32_compiled(a, b, c):
    return lambda a, b, c: _fma32_ir(np.float32(a), np.float32(b), np.float32(c))


def fma_tile_loops(sums, xq, offsets, wp, w0, base):
    """The tile in plain loops: sums [FMA_ROWS, P] = Σ_k wp[w0 + k·FMA_ROWS + j]·xq[offsets[k] +
    base + p], one k after another, each product added with one rounding (fma32), as the vector
    tiles' FMAs do: the same bytes."""
    rows, pixels = sums.shape
    for j in range(rows):
        for p in range(pixels):
            sums[j, p] = 0
    for k in range(offsets.shape[0]):
        run = offsets[k] + base
        at = w0 + k * rows
        for j in range(rows):
            w = wp[at + j]
            for p in range(pixels):
                sums[j, p] = fma32(w, xq[run + p], sums[j, p])


def fma_tile_ir(lanes: int, vectors: int, rows: int = FMA_ROWS):
    """An intrinsic computing fma_tile_loops for a sums [rows, lanes·vectors] array, with
    rows·vectors accumulators of ``lanes`` float32 lanes, from zero, held in registers over
    every k (``llvm.fma``: one rounding per product and sum) and stored once."""
    i64, f32 = ir.IntType(64), ir.FloatType()
    vec = ir.VectorType(f32, lanes)

    @intrinsic
    def fma_tile(typingctx, sums, xq, offsets, wp, w0, base):
        if not (isinstance(sums, types.Array) and sums.dtype == types.float32
                and sums.layout == "C" and sums.ndim == 2
                and isinstance(xq, types.Array) and xq.dtype == types.float32
                and xq.layout == "C" and xq.ndim == 1
                and isinstance(offsets, types.Array) and offsets.dtype == types.int64
                and offsets.layout == "C" and offsets.ndim == 1
                and isinstance(wp, types.Array) and wp.dtype == types.float32
                and wp.layout == "C" and wp.ndim == 1):
            return None
        sig = types.void(sums, xq, offsets, wp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            sa, xa, oa, wa = (context.make_array(signature.args[i])(context, builder, args[i])
                              for i in range(4))
            w0, base = args[4], args[5]
            fma = builder.module.declare_intrinsic(
                f"llvm.fma.v{lanes}f32", fnty=ir.FunctionType(vec, [vec, vec, vec]))
            undef = ir.Constant(vec, ir.Undefined)
            spread = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            out = builder.bitcast(sa.data, vec.as_pointer())
            zero = ir.Constant(vec, [0.0] * lanes)
            accs = [[cgutils.alloca_once_value(builder, zero) for v in range(vectors)]
                    for j in range(rows)]
            count = cgutils.unpack_tuple(builder, oa.shape)[0]
            with cgutils.for_range(builder, count) as loop:
                k = loop.index
                run = builder.add(builder.load(builder.gep(oa.data, [k])), base)
                xs = builder.bitcast(builder.gep(xa.data, [run]), vec.as_pointer())
                x = [builder.load(builder.gep(xs, [i64(v)]), align=4) for v in range(vectors)]
                at = builder.add(w0, builder.mul(k, i64(rows)))
                for j in range(rows):
                    w = builder.load(builder.gep(wa.data, [builder.add(at, i64(j))]))
                    w = builder.shuffle_vector(builder.insert_element(undef, w, i64(0)), undef,
                                               spread)
                    for v in range(vectors):
                        acc = accs[j][v]
                        builder.store(builder.call(fma, [w, x[v], builder.load(acc)]), acc)
            store_accumulators(builder, accs, out)
            return context.get_dummy_value()

        return sig, codegen

    return fma_tile


RUNS = HAS_FMA and not numba.config.DISABLE_JIT
"""Whether the vector tiles run here (LLVM IR cannot run as Python under NUMBA_DISABLE_JIT=1)."""

fma_tile_portable = njit(cache=True, inline="always")(fma_tile_loops)

TILES = {"loops": (fma_tile_portable, FMA_PIXELS)}
"""The tile variants this CPU runs, by name, each with its positions per tile (the tests run the
conv around every one of them against the reference)."""
if RUNS:
    for _name, (_lanes, _vectors) in SHAPES.items():
        if _name == "ymm" or HAS_AVX512:
            TILES[_name] = (fma_tile_ir(_lanes, _vectors), _lanes * _vectors)

fma_tile = TILES[NATIVE][0] if RUNS else fma_tile_portable
"""The tile the dense float conv runs: vector FMAs where the CPU has them, plain loops elsewhere."""


# -- the lane tile: output channels in the vector lanes (conv_lanes.py) ----------------------------
LANE_PIXELS = 7
"""Output positions of one row per lane tile, each an activation broadcast per k. Seven: a row of
ResNet's 56, 28, 14 and 7 splits into whole tiles. The kernel alone, one thread, in one run against
other shapes of the same tile, with the epilogue still a loop over the values (ms, ResNet-18's 3×3
layers at 28×28 / 14×14 / 7×7): 7 × 2 vectors
1.14 / 1.08 / 1.09, 8 × 2 1.27 / 1.20 / 1.21, 6 × 2 1.23 / 1.38 / 1.96, 4 × 4 1.14 / 1.30 / 1.62,
7 × 3 1.25 / 1.20 / 1.16, 14 × 2 (31 registers: it spilled) 2.76 / 2.73 / 5.35."""

LANE_VECTORS = 2
"""zmm vectors of 16 output channels per lane tile: 14 accumulators, 2 weight loads and 7
broadcasts per 14 FMAs."""

LANE_CHANNELS = 16 * LANE_VECTORS
"""Output channels per lane tile, and per block of the lane-packed weight (``pack_lanes``)."""


def lane_tile_loops(xp, offsets, wb, w0, base, step, b, n0, yf, at, plane, lo, hi, channels,
                    count):
    """The lane tile in plain loops. First the sums [LANE_PIXELS, LANE_CHANNELS] (its own scratch:
    the vector tile keeps them in registers, and the kernel allocates nothing per task for it),
    sums[r, l] = Σ_k wb[w0 + k·LANE_CHANNELS + l] · xp[offsets[k] + base + r·step], one k after
    another, each product added with one rounding (fma32), as the vector tile's FMAs do, and as
    the positions' tile adds the same products for the same output: the same bytes. Then the
    epilogue: channel n0 + l's sum at position r, biased and clamped, min(max(s + b[n0 + l], lo),
    hi), to yf[at + l·plane + r] for l < channels and r < count (yf is the flat output)."""
    pixels, lanes = LANE_PIXELS, LANE_CHANNELS
    sums = np.zeros((pixels, lanes), np.float32)
    for k in range(offsets.shape[0]):
        run = offsets[k] + base
        w = w0 + k * lanes
        for r in range(pixels):
            x = xp[run + r * step]
            for l in range(lanes):
                sums[r, l] = fma32(wb[w + l], x, sums[r, l])
    for l in range(channels):
        v, o = b[n0 + l], at + l * plane
        for r in range(count):
            yf[o + r] = min(max(sums[r, l] + v, lo), hi)


def transposed_pairs(builder, rows, lanes):
    """LLVM IR: 8 vectors of ``lanes`` (16) floats, a position per row and a channel per lane, as
    8 vectors each holding two channels' 8 positions: vector j = [rows[0..8][2j], rows[0..8][2j+1]].
    Three rounds of two-source shuffles (24 in all), each built from what its sources hold."""
    def combine(a, b, want):
        (va, la), (vb, lb) = a, b
        mask = [la.index(w) if w in la else lanes + lb.index(w) for w in want]
        return builder.shuffle_vector(va, vb, ir.Constant(ir.VectorType(ir.IntType(32), lanes),
                                                          mask)), want

    held = [(row, [(r, l) for l in range(lanes)]) for r, row in enumerate(rows)]
    half, quarter = lanes // 2, lanes // 4
    pairs = [[combine(held[2 * k], held[2 * k + 1],
                      [(2 * k + i % 2, p * half + i // 2) for i in range(lanes)])
              for p in range(2)] for k in range(4)]         # rows 2k, 2k+1 × 8 channels
    quads = [[[combine(pairs[2 * h][p], pairs[2 * h + 1][p],
                       [(4 * h + i % 4, p * half + q * quarter + i // 4) for i in range(lanes)])
               for q in range(2)] for p in range(2)] for h in range(2)]  # 4 rows × 4 channels
    out = []
    for j in range(lanes // 2):
        c = 2 * j
        p, q = c // half, c % half // quarter
        out.append(combine(quads[0][p][q], quads[1][p][q],
                           [(i % 8, c + i // 8) for i in range(lanes)])[0])
    return out


def lane_products(builder, offsets, xs, weights, base, step, accs, add_product):
    """LLVM IR: a lane tile's loop over its weights k (``offsets``, the array of where each k's
    inputs start): per k, the block's len(accs[0]) weight vectors loaded from ``weights`` (a
    pointer to the block's first, the k's vectors adjacent), and for each position r the input
    element xs[offsets[k] + base + r·step] broadcast and added into accs[r][v] by
    ``add_product(acc, x, w)`` (an FMA for float, vpdpbusd for int8). The float and int8 lane
    tiles' shared loop."""
    i64 = ir.IntType(64)
    vec = accs[0][0].type.pointee
    lanes, vectors = vec.count, len(accs[0])
    undef = ir.Constant(vec, ir.Undefined)
    spread = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
    count = cgutils.unpack_tuple(builder, offsets.shape)[0]
    with cgutils.for_range(builder, count) as loop:
        k = loop.index
        run = builder.add(builder.load(builder.gep(offsets.data, [k])), base)
        ws = builder.bitcast(builder.gep(weights, [builder.mul(k, i64(lanes * vectors))]),
                             vec.as_pointer())
        w = [builder.load(builder.gep(ws, [i64(v)]), align=4) for v in range(vectors)]
        for r, row in enumerate(accs):
            x = builder.load(builder.gep(xs, [builder.add(run, builder.mul(step, i64(r)))]))
            x = builder.shuffle_vector(builder.insert_element(undef, x, i64(0)), undef, spread)
            for v, acc in enumerate(row):
                builder.store(add_product(builder.load(acc), x, w[v]), acc)


def lane_tile_ir(pixels: int = LANE_PIXELS, vectors: int = LANE_VECTORS, lanes: int = 16):
    """An intrinsic computing lane_tile_loops (the same arguments): pixels·vectors
    accumulators of ``lanes`` float32 lanes (output channels), from zero, in registers over every
    k, with per k ``vectors`` loads of the block's weights and one broadcast per position; then the
    bias (a masked load) and the clamp on the accumulators, a transpose in registers
    (``transposed_pairs``: each channel's positions in 8 lanes), and one masked store of ``count``
    values per channel. The epilogue had been a loop over the tile's 224 values, one at a time:
    on short K it took longer than the sums (1×1 16→96 at 112×112, one thread: 1.24 ms)."""
    i1, i8, i16, i32, i64, f32 = (ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32),
                                  ir.IntType(64), ir.FloatType())
    vec, half = ir.VectorType(f32, lanes), ir.VectorType(f32, 8)
    assert pixels <= 8 and lanes == 16

    @intrinsic
    def lane_tile(typingctx, xp, offsets, wb, w0, base, step, b, n0, yf, at, plane, lo, hi,
                  channels, count):
        arrays = (xp, offsets, wb, b, yf)
        if not (all(isinstance(a, types.Array) and a.layout == "C" and a.ndim == 1
                    for a in arrays) and offsets.dtype == types.int64
                and all(a.dtype == types.float32 for a in (xp, wb, b, yf))
                and lo == hi == types.float32):
            return None
        sig = types.void(xp, offsets, wb, types.intp, types.intp, types.intp, b, types.intp, yf,
                         types.intp, types.intp, types.float32, types.float32, types.intp,
                         types.intp)

        def codegen(context, builder, signature, args):
            xa, oa, wa, ba, ya = (context.make_array(signature.args[i])(context, builder, args[i])
                                  for i in (0, 1, 2, 6, 8))
            w0, base, step, n0, at, plane, lo, hi, channels, count = (args[3], args[4], args[5],
                                                                     args[7], *args[9:])
            fma = builder.module.declare_intrinsic(
                f"llvm.fma.v{lanes}f32", fnty=ir.FunctionType(vec, [vec, vec, vec]))
            undef = ir.Constant(vec, ir.Undefined)
            spread = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)

            def splat(x):
                return builder.shuffle_vector(builder.insert_element(undef, x, i64(0)), undef,
                                              spread)

            zero = ir.Constant(vec, [0.0] * lanes)
            accs = [[cgutils.alloca_once_value(builder, zero) for v in range(vectors)]
                    for r in range(pixels)]
            lane_products(builder, oa, xa.data, builder.gep(wa.data, [w0]), base, step, accs,
                          lambda acc, x, w: builder.call(fma, [w, x, acc]))
            # the epilogue: bias (masked: the block's channels past N are not read), clamp as
            # min(max(s + b, lo), hi) with Python's select semantics, transpose, masked stores
            load_ps = builder.module.declare_intrinsic(
                "llvm.x86.avx512.mask.loadu.ps.512",
                fnty=ir.FunctionType(vec, [f32.as_pointer(), vec, i16]))
            store_ps = builder.module.declare_intrinsic(
                "llvm.x86.avx512.mask.storeu.ps.256",
                fnty=ir.FunctionType(ir.VoidType(), [f32.as_pointer(), half, i8]))
            lo_v, hi_v = splat(lo), splat(hi)
            out = builder.gep(ya.data, [at])
            store_mask = builder.trunc(builder.sub(builder.shl(i64(1), count), i64(1)), i8)
            for v in range(vectors):
                first = i64(lanes * v)
                inside = builder.sub(channels, first)  # this vector's channels below N
                inside = builder.select(builder.icmp_signed(">", inside, i64(lanes)), i64(lanes),
                                        inside)
                inside = builder.select(builder.icmp_signed("<", inside, i64(0)), i64(0), inside)
                bias = builder.call(load_ps, [builder.gep(ba.data, [builder.add(n0, first)]),
                                              zero, builder.trunc(builder.sub(
                                                  builder.shl(i64(1), inside), i64(1)), i16)])
                rows = []
                for r in range(pixels):
                    s = builder.fadd(builder.load(accs[r][v]), bias)
                    s = builder.select(builder.fcmp_ordered(">", lo_v, s), lo_v, s)
                    rows.append(builder.select(builder.fcmp_ordered("<", hi_v, s), hi_v, s))
                rows += [undef] * (8 - pixels)
                for j, pair in enumerate(transposed_pairs(builder, rows, lanes)):
                    for h in range(2):
                        l = 2 * j + h
                        part = builder.shuffle_vector(pair, undef, ir.Constant(
                            ir.VectorType(i32, 8), list(range(8 * h, 8 * h + 8))))
                        with builder.if_then(builder.icmp_signed("<", i64(lanes * v + l),
                                                                 channels)):
                            at_l = builder.mul(builder.add(first, i64(l)), plane)
                            builder.call(store_ps, [builder.gep(out, [at_l]), part, store_mask])
            return context.get_dummy_value()

        return sig, codegen

    return lane_tile


lane_tile_portable = njit(cache=True, inline="always")(lane_tile_loops)

LANE_TILES = {"loops": lane_tile_portable}
"""The lane tile variants this CPU runs, by name (the tests run the lanes conv around each)."""
if RUNS and HAS_AVX512:
    LANE_TILES["zmm"] = lane_tile_ir()

lane_tile = LANE_TILES.get("zmm", lane_tile_portable)
"""The tile the lanes conv runs: zmm FMAs with AVX-512, plain loops elsewhere (where plans do not
take the lanes conv: with AVX2's 16 ymm registers its 14 accumulators would not fit beside the
weights)."""


def pack_lanes(w):
    """wb [blocks·K·LANE_CHANNELS] float32: a one-group weight w (N, C, kh, kw) as the lane tile
    reads it. Blocks of LANE_CHANNELS output channels (zero rows pad the last), and in a block the
    LANE_CHANNELS weights at each k = c·kh·kw + i·kw + j adjacent: block b's weight k, channel l
    at (b·K + k)·LANE_CHANNELS + l, blocks = ⌈N / LANE_CHANNELS⌉."""
    n_out = w.shape[0]
    blocks = -(-n_out // LANE_CHANNELS)
    rows = np.zeros((blocks * LANE_CHANNELS, w[0].size), np.float32)
    rows[:n_out] = w.reshape(n_out, -1)
    # (blocks, lanes, K) -> (blocks, K, lanes)
    return np.ascontiguousarray(
        rows.reshape(blocks, LANE_CHANNELS, -1).transpose(0, 2, 1)).reshape(-1)


def pack_rows(w, groups):
    """wp [groups·blocks·K·FMA_ROWS] float32: the weight w (N, C/g, kh, kw) as the tiles read it.
    Each group's N/g channels in blocks of FMA_ROWS (zero rows pad the last block), and in a block
    the FMA_ROWS weights at each k = c·kh·kw + i·kw + j adjacent: block b of group g starts at
    ((g·blocks + b)·K)·FMA_ROWS, blocks = ⌈(N/g) / FMA_ROWS⌉."""
    n_out = w.shape[0]
    per = n_out // groups
    blocks = -(-per // FMA_ROWS)
    rows = np.zeros((groups, blocks * FMA_ROWS, w[0].size), np.float32)
    rows[:, :per] = w.reshape(groups, per, -1)
    # (g, blocks, rows, K) -> (g, blocks, K, rows)
    return np.ascontiguousarray(
        rows.reshape(groups, blocks, FMA_ROWS, -1).transpose(0, 1, 3, 2)).reshape(-1)
