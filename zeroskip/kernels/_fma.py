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
other shapes of the same tile (ms, ResNet-18's 3×3 layers at 28×28 / 14×14 / 7×7): 7 × 2 vectors
1.14 / 1.08 / 1.09, 8 × 2 1.27 / 1.20 / 1.21, 6 × 2 1.23 / 1.38 / 1.96, 4 × 4 1.14 / 1.30 / 1.62,
7 × 3 1.25 / 1.20 / 1.16, 14 × 2 (31 registers: it spilled) 2.76 / 2.73 / 5.35."""

LANE_VECTORS = 2
"""zmm vectors of 16 output channels per lane tile: 14 accumulators, 2 weight loads and 7
broadcasts per 14 FMAs."""

LANE_CHANNELS = 16 * LANE_VECTORS
"""Output channels per lane tile, and per block of the lane-packed weight (``pack_lanes``)."""


def lane_tile_loops(sums, xp, offsets, wb, w0, base, step):
    """The lane tile in plain loops: sums [LANE_PIXELS, LANE_CHANNELS] with
    sums[r, l] = Σ_k wb[w0 + k·LANE_CHANNELS + l] · xp[offsets[k] + base + r·step], one k after
    another, each product added with one rounding (fma32), as the vector tile's FMAs do, and as
    the FMA tile adds the same products for the same output: the same bytes."""
    pixels, lanes = sums.shape
    for r in range(pixels):
        for l in range(lanes):
            sums[r, l] = 0
    for k in range(offsets.shape[0]):
        run = offsets[k] + base
        at = w0 + k * lanes
        for r in range(pixels):
            x = xp[run + r * step]
            for l in range(lanes):
                sums[r, l] = fma32(wb[at + l], x, sums[r, l])


def lane_tile_ir(pixels: int = LANE_PIXELS, vectors: int = LANE_VECTORS, lanes: int = 16):
    """An intrinsic computing lane_tile_loops for sums [pixels, lanes·vectors]: pixels·vectors
    accumulators of ``lanes`` float32 lanes (output channels), from zero, in registers over every
    k; per k, ``vectors`` loads of the block's weights and one broadcast per pixel."""
    i64, f32 = ir.IntType(64), ir.FloatType()
    vec = ir.VectorType(f32, lanes)

    @intrinsic
    def lane_tile(typingctx, sums, xp, offsets, wb, w0, base, step):
        if not (isinstance(sums, types.Array) and sums.dtype == types.float32
                and sums.layout == "C" and sums.ndim == 2
                and isinstance(xp, types.Array) and xp.dtype == types.float32
                and xp.layout == "C" and xp.ndim == 1
                and isinstance(offsets, types.Array) and offsets.dtype == types.int64
                and offsets.layout == "C" and offsets.ndim == 1
                and isinstance(wb, types.Array) and wb.dtype == types.float32
                and wb.layout == "C" and wb.ndim == 1):
            return None
        sig = types.void(sums, xp, offsets, wb, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            sa, xa, oa, wa = (context.make_array(signature.args[i])(context, builder, args[i])
                              for i in range(4))
            w0, base, step = args[4], args[5], args[6]
            fma = builder.module.declare_intrinsic(
                f"llvm.fma.v{lanes}f32", fnty=ir.FunctionType(vec, [vec, vec, vec]))
            undef = ir.Constant(vec, ir.Undefined)
            spread = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            zero = ir.Constant(vec, [0.0] * lanes)
            accs = [[cgutils.alloca_once_value(builder, zero) for v in range(vectors)]
                    for r in range(pixels)]
            count = cgutils.unpack_tuple(builder, oa.shape)[0]
            weights = builder.gep(wa.data, [w0])
            with cgutils.for_range(builder, count) as loop:
                k = loop.index
                run = builder.add(builder.load(builder.gep(oa.data, [k])), base)
                ws = builder.bitcast(builder.gep(weights, [builder.mul(k, i64(lanes * vectors))]),
                                     vec.as_pointer())
                w = [builder.load(builder.gep(ws, [i64(v)]), align=4) for v in range(vectors)]
                for r in range(pixels):
                    x = builder.load(builder.gep(xa.data, [builder.add(run, builder.mul(step,
                                                                                        i64(r)))]))
                    x = builder.shuffle_vector(builder.insert_element(undef, x, i64(0)), undef,
                                               spread)
                    for v in range(vectors):
                        acc = accs[r][v]
                        builder.store(builder.call(fma, [w[v], x, builder.load(acc)]), acc)
            store_accumulators(builder, accs, builder.bitcast(sa.data, vec.as_pointer()))
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
