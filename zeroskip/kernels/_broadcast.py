"""The broadcast tile of the dense int8 GEMM, for AVX-512 VNNI CPUs (uint8 or int8 activations).

    sums[j, p] = bias[n0 + j] + Σ_k w[n0 + j, k] · x[c + p, k]
    for j < BROADCAST_ROWS, p < BROADCAST_PIXELS

matmul_dense_i8's own tile (matmul_dense.py) forms dot products: each accumulator is one (pixel,
channel) pair summed along K, and its lanes are summed at the end. That pays off for a long K; for the
stem (K = 160) or a 1×1 conv (K = 16–256) the horizontal sums and the few steps per tile dominate.
This tile is an outer product instead: each zmm accumulator holds 16 pixels of one output channel,
so the result needs no horizontal sum and is already in yt's (channel, pixel) order.

One step takes 4 values of k. The 4 weights w[n, 4k4 : 4k4+4] of a channel are one 32-bit word,
broadcast to the 16 lanes; the 16 pixels' 4 activation bytes are one zmm, from x packed so that
each word holds one pixel's 4 bytes (``pack_chunk``: xp[k4, p] = x[c+p, 4k4 : 4k4+4] as an int32);
``vpdpbusd`` (llvm.x86.avx512.vpdpbusd.512) multiplies the 4 unsigned x bytes by the 4 signed w
bytes of each lane and adds the 4 products to the lane, with no rounding or saturation (|4·255·128|
< 2^17), so the sums are exactly matmul_dense_i8's. A tile is BROADCAST_ROWS = 4 channels ×
BROADCAST_PIXELS = 64 pixels: 16 accumulators, per step 4 activation loads, 4 broadcasts and 16
``vpdpbusd``. int8 activations go through as x + 128 (``SIGN_FLIP``, ``unsigned_bias``). The
leading underscore keeps the kernel collector (``kernels/__init__.py``) from
looking here: helpers only. docs/kernels.md, "The broadcast tile", has the figures.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._cpu import HAS_AVX512_VNNI
from ._requant import (declare_masked_byte_load, declare_masked_byte_store, lanes_up_to,
                       requantized_bytes, splat)

BROADCAST_ROWS = 4
"""Output channels per broadcast tile (broadcast weight words per step)."""
LANES = 16
"""int32 lanes per zmm accumulator: 16 pixels."""
PIXEL_VECTORS = 4
"""zmm accumulators per channel."""
BROADCAST_PIXELS = LANES * PIXEL_VECTORS
"""Pixels per tile, and per packed chunk of x."""


MIN_TASKS = 8
"""Parallel tasks to aim for in the tiled kernels (the broadcast and AMX GEMMs, the quad and AMX
convs), whose tasks are (chunk of 64 positions, group of output channels): a layer with fewer
chunks than this (7×7 and 14×14 planes) also splits its channels (``channel_groups``), so both
threads have work. The quad conv always cuts its channels into this many runs, and takes a run's
chunks one after another (conv_quad.py)."""


@njit(cache=True, inline="always")
def channel_groups(units, chunks):
    """(groups, units per group): ``units`` units of output channels (single channels, or a tile's
    rows) split into enough groups that chunks × groups reaches MIN_TASKS; at least one group, at
    most one per unit, and none empty: 10 units in 8 groups of 2 were 5 groups of channels and 3
    empty tasks, and a thread's static half of the loop got 8 units against the other's 2 (the
    planar AMX GEMM 960→320 at 7×7, two threads, kernel alone: 29.4 → 26.8 µs)."""
    groups = max(1, min(units, (MIN_TASKS + chunks - 1) // max(chunks, 1)))
    per = (units + groups - 1) // groups
    return (units + per - 1) // per, per


SIGN_FLIP = np.int32(-0x7F7F7F80)
"""0x80808080: xor-ing a word of 4 int8 values with it adds 128 to each, making them uint8."""


def pack_chunk(xw, c, count, xp, flip):
    """xp[k4, p] = xw[c + p, k4] ^ flip for p < count, 0 for the pixels past count (xw: x's (M, K/4)
    int32 view, each word 4 values of k of one pixel; xp: (K/4, BROADCAST_PIXELS) int32; flip: 0
    for uint8 x, SIGN_FLIP for int8 x, whose bytes then hold x + 128)."""
    for p in range(count):
        row = xw[c + p]
        for k4 in range(xp.shape[0]):
            xp[k4, p] = row[k4] ^ flip
    for k4 in range(xp.shape[0]):
        for p in range(count, BROADCAST_PIXELS):
            xp[k4, p] = 0


pack_chunk_jit = njit(cache=True, inline="always")(pack_chunk)


@njit(cache=True, inline="always")
def word(a, b, c, d, flip):
    """The int32 word of 4 bytes (a in the low byte), xor ``flip``."""
    return ((np.int32(a) & 0xFF) | ((np.int32(b) & 0xFF) << 8) | ((np.int32(c) & 0xFF) << 16)
            | ((np.int32(d) & 0xFF) << 24)) ^ flip


def pack_planar_chunk(xt, c, count, xp, flip):
    """pack_chunk's xp from x transposed, xt (K, M) (a 1×1 conv's planar input, one image's
    (C, H·W)): xp[k4, p] = the word of xt[4k4 .. 4k4+3, c + p] ^ flip for p < count, 0 past it.
    Four rows of xt are read side by side and interleaved, so the loop vectorizes; from planar
    input this is one pass, where a channels-last copy and then pack_chunk were two transposes
    (docs/kernels.md, "The planar pointwise GEMM")."""
    for k4 in range(xp.shape[0]):
        r0, r1 = xt[4 * k4, c:c + count], xt[4 * k4 + 1, c:c + count]
        r2, r3 = xt[4 * k4 + 2, c:c + count], xt[4 * k4 + 3, c:c + count]
        out = xp[k4]
        for p in range(count):
            out[p] = word(r0[p], r1[p], r2[p], r3[p], flip)
        for p in range(count, BROADCAST_PIXELS):
            out[p] = 0


pack_planar_chunk_loops = njit(cache=True, inline="always")(pack_planar_chunk)


def store_accumulators(builder, accs, out):
    """LLVM IR: a register tile's accumulators (accs[j][v], allocas of one vector type) stored
    row after row at the vector pointer ``out``: vector j·len(accs[0]) + v holds accs[j][v]."""
    for j, row in enumerate(accs):
        for v, acc in enumerate(row):
            builder.store(builder.load(acc), builder.gep(out, [ir.IntType(64)(j * len(row) + v)]),
                          align=4)


def declare_dpbusd(builder):
    """LLVM IR: the 512-bit ``vpdpbusd`` intrinsic, acc (<16 x i32>) + the 4-byte dot products of
    unsigned bytes (second operand) and signed bytes (third), per lane, with no saturation."""
    vec = ir.VectorType(ir.IntType(32), LANES)
    return builder.module.declare_intrinsic("llvm.x86.avx512.vpdpbusd.512",
                                            fnty=ir.FunctionType(vec, [vec, vec, vec]))


def _tile_sums(context, builder, xa, wa, ba, n0_v):
    """LLVM IR: the tile's accumulators (allocas, accs[j][v] = pixels 16v .. 16v+15 of channel
    n0 + j), summed over every step: bias, then the K/4 steps of broadcast weight words times
    packed activation words (vpdpbusd)."""
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    vec = ir.VectorType(i32, LANES)
    dpbusd = declare_dpbusd(builder)
    steps = cgutils.unpack_tuple(builder, xa.shape)[0]       # K/4
    k_bytes = cgutils.unpack_tuple(builder, wa.shape)[1]     # K
    w_bytes = builder.bitcast(wa.data, i8.as_pointer())
    accs, w_rows = [], []
    for j in range(BROADCAST_ROWS):
        n = builder.add(n0_v, i64(j))
        start = splat(builder, builder.load(builder.gep(ba.data, [n])))
        row = []
        for _ in range(PIXEL_VECTORS):
            acc = cgutils.alloca_once(builder, vec)
            builder.store(start, acc)
            row.append(acc)
        accs.append(row)
        w_rows.append(builder.gep(w_bytes, [builder.mul(n, k_bytes)]))
    x_vectors = builder.bitcast(xa.data, vec.as_pointer())
    with cgutils.for_range(builder, steps) as loop:
        k4 = loop.index
        first = builder.mul(k4, i64(PIXEL_VECTORS))
        xs = [builder.load(builder.gep(x_vectors, [builder.add(first, i64(v))]), align=4)
              for v in range(PIXEL_VECTORS)]
        for j in range(BROADCAST_ROWS):
            word = builder.bitcast(builder.gep(w_rows[j], [builder.mul(k4, i64(4))]),
                                   i32.as_pointer())
            weights = splat(builder, builder.load(word, align=1))
            for v in range(PIXEL_VECTORS):
                builder.store(builder.call(dpbusd, [builder.load(accs[j][v]), xs[v],
                                                    weights]), accs[j][v])
    return accs


def _is_tile_input(xp, w):
    return (isinstance(xp, types.Array) and xp.dtype == types.int32 and xp.layout == "C"
            and isinstance(w, types.Array) and w.dtype == types.int8 and w.layout == "C")


def _broadcast_tile_ir():
    vec = ir.VectorType(ir.IntType(32), LANES)

    @intrinsic
    def broadcast_tile(typingctx, sums, xp, w, bias, n0):
        if not (isinstance(sums, types.Array) and sums.dtype == types.int32 and sums.layout == "C"
                and _is_tile_input(xp, w)):
            return None
        sig = types.void(sums, xp, w, bias, types.intp)

        def codegen(context, builder, signature, args):
            sa, xa, wa, ba = (context.make_array(signature.args[i])(context, builder, args[i])
                              for i in range(4))
            accs = _tile_sums(context, builder, xa, wa, ba, args[4])
            store_accumulators(builder, accs, builder.bitcast(sa.data, vec.as_pointer()))
            return context.get_dummy_value()

        return sig, codegen

    return broadcast_tile


def _broadcast_tile_rq_ir():
    i8, i64 = ir.IntType(8), ir.IntType(64)

    @intrinsic
    def broadcast_tile_rq(typingctx, xp, w, bias, n0, m0, shift, y_zero_point, lo, hi, out, c,
                          count):
        if not (_is_tile_input(xp, w) and isinstance(out, types.Array) and out.ndim == 2
                and out.layout == "C" and out.dtype in (types.uint8, types.int8)
                and all(isinstance(a, types.Array) and a.dtype == types.int32 and a.ndim == 1
                        and a.layout == "C" for a in (bias, m0, shift))):
            return None
        sig = types.void(xp, w, bias, types.intp, m0, shift, types.int64, types.int64,
                         types.int64, out, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            xa, wa, ba = (context.make_array(signature.args[i])(context, builder, args[i])
                          for i in range(3))
            ma, ha = (context.make_array(signature.args[i])(context, builder, args[i])
                      for i in (4, 5))
            oa = context.make_array(signature.args[9])(context, builder, args[9])
            n0_v, y_zero_point, lo, hi, c, count = args[3], args[6], args[7], args[8], *args[10:]
            accs = _tile_sums(context, builder, xa, wa, ba, n0_v)
            store = declare_masked_byte_store(builder, BROADCAST_PIXELS)
            pitch = cgutils.unpack_tuple(builder, oa.shape)[1]      # M
            out = builder.bitcast(oa.data, i8.as_pointer())
            mask = lanes_up_to(builder, count)
            signed = signature.args[9].dtype == types.int8
            for j in range(BROADCAST_ROWS):
                n = builder.add(n0_v, i64(j))
                m0, shift = (builder.sext(builder.load(builder.gep(a.data, [n])), i64)
                             for a in (ma, ha))
                row = builder.gep(out, [builder.add(builder.mul(n, pitch), c)])
                q = requantized_bytes(builder, [builder.load(acc) for acc in accs[j]], m0, shift,
                                      y_zero_point, lo, hi, signed)
                builder.call(store, [row, q, mask])
            return context.get_dummy_value()

        return sig, codegen

    return broadcast_tile_rq


def _unavailable(sums, xp, w, bias, n0):
    raise RuntimeError("the broadcast tile needs AVX-512 VNNI")


unavailable_tile = njit(cache=True)(_unavailable)
"""What stands for the tile where it cannot run: the GEMMs' code that calls it still compiles, and
``broadcast_fits`` never lets it run."""

RUNS = HAS_AVX512_VNNI and not numba.config.DISABLE_JIT
"""Whether the broadcast tile runs here: an AVX-512 VNNI CPU, and the JIT (LLVM IR does not run as
Python)."""

def _interleaved(builder, a, b):
    """LLVM IR: the elements of vectors a and b alternately, a[0], b[0], a[1], b[1], ..."""
    count = a.type.count
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 2 * count),
                                                    [i // 2 + count * (i % 2)
                                                     for i in range(2 * count)]))


@intrinsic
def _pack_planar_chunk_ir(typingctx, xt, c, count, xp, flip):
    """pack_planar_chunk in LLVM IR: per word row k4, the 4 rows' bytes c .. c + count as 4
    masked 64-byte loads (the bytes past count come in as the flip byte, so that after the xor
    they are 0), xor-ed with the flip, interleaved byte by byte (rows 0 and 1, rows 2 and 3) and
    then word by word, and stored as 64 words: a few shuffles per 256 bytes, where the loop of
    ``word`` widened, shifted and or-ed each pixel's bytes (MobileNetV2's 384 → 64 1×1 conv at
    14×14: its packing 8.2 µs of the GEMM's 17.7 at one thread)."""
    if not (isinstance(xt, types.Array) and xt.ndim == 2 and xt.layout == "C"
            and xt.dtype in (types.uint8, types.int8) and isinstance(xp, types.Array)
            and xp.ndim == 2 and xp.layout == "C" and xp.dtype == types.int32):
        return None
    sig = types.void(xt, types.intp, types.intp, xp, types.int32)

    def codegen(context, builder, signature, args):
        i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
        window = ir.VectorType(i8, BROADCAST_PIXELS)
        xa = context.make_array(signature.args[0])(context, builder, args[0])
        pa = context.make_array(signature.args[3])(context, builder, args[3])
        c, count, flip = args[1], args[2], args[4]
        pitch = cgutils.unpack_tuple(builder, xa.shape)[1]               # M
        rows = cgutils.unpack_tuple(builder, pa.shape)[0]                # K/4
        load = declare_masked_byte_load(builder, BROADCAST_PIXELS)
        mask = lanes_up_to(builder, count)
        flip_v = splat(builder, builder.trunc(flip, i8), window)
        first = builder.gep(builder.bitcast(xa.data, i8.as_pointer()), [c])
        words = builder.bitcast(pa.data, ir.VectorType(i32, BROADCAST_PIXELS).as_pointer())
        with cgutils.for_range(builder, rows) as loop:
            k = builder.mul(loop.index, i64(4))
            a, b, c2, d = (builder.xor(builder.call(load, [builder.gep(first, [builder.mul(
                builder.add(k, i64(i)), pitch)]), flip_v, mask]), flip_v) for i in range(4))
            pairs = [builder.bitcast(_interleaved(builder, u, v), ir.VectorType(
                ir.IntType(16), BROADCAST_PIXELS)) for u, v in ((a, b), (c2, d))]
            builder.store(builder.bitcast(_interleaved(builder, *pairs), words.type.pointee),
                          builder.gep(words, [loop.index]), align=4)
        return context.get_dummy_value()

    return sig, codegen


pack_planar_chunk_jit = _pack_planar_chunk_ir if RUNS else pack_planar_chunk_loops
"""pack_planar_chunk as the kernels call it: the IR form on AVX-512 (its masked loads are
AVX-512 BW's), else the loops."""

broadcast_tile = _broadcast_tile_ir() if RUNS else unavailable_tile
"""The tile, as a Numba intrinsic: sums (BROADCAST_ROWS, BROADCAST_PIXELS) int32 ← bias[n0 + j] +
the K/4 steps over xp, w's rows n0 .. n0 + BROADCAST_ROWS."""


def _unavailable_rq(xp, w, bias, n0, m0, shift, y_zero_point, lo, hi, out, c, count):
    raise RuntimeError("the broadcast tile needs AVX-512 VNNI")


broadcast_tile_rq = _broadcast_tile_rq_ir() if RUNS else njit(cache=True)(_unavailable_rq)
"""The tile requantized in its registers: out[n0 + j, c + p] ← requantize(the tile's sum for
channel n0 + j, pixel p; m0[n0 + j], shift[n0 + j]) for j < BROADCAST_ROWS, p < count (≤ 64),
stored with masked byte stores; the int32 sums never reach memory."""


BROADCAST_MIN_ROWS = 17
"""Rows of x (pixels) from which the GEMMs take the broadcast tile. Below it, most of a 64-pixel
chunk would be padding, and the dot-product tile (matmul_dense.py) is faster: one thread, N = 1000,
K = 512 (a classifier at batch 1) 0.10 against 0.15 ms, K = 1280 0.18 against 0.40 ms; at M = 16
0.13 against 0.15 ms, and from M = 32 on the broadcast tile wins (0.15 against 0.22 ms)."""


def broadcast_fits(x, w):
    """Whether matmul_dense_*'s call on x (M, K), w takes the broadcast tile: never as Python."""
    return False


def broadcast_fits_planar(xt, w):
    """broadcast_fits for x transposed, xt (K, M) (matmul_planar_rq_i8)."""
    return False


@njit(cache=True, inline="always")
def _shape_fits(M, K, N):
    return K % 4 == 0 and N >= BROADCAST_ROWS and M >= BROADCAST_MIN_ROWS


def is_8bit(x):
    """Whether Numba type x is an array of uint8 or int8."""
    return isinstance(x, types.Array) and x.dtype in (types.uint8, types.int8)


@overload(broadcast_fits)
def _broadcast_fits_compiled(x, w):
    if RUNS and is_8bit(x):
        return lambda x, w: _shape_fits(x.shape[0], x.shape[1], w.shape[0])
    return lambda x, w: False


@overload(broadcast_fits_planar)
def _broadcast_fits_planar_compiled(xt, w):
    if RUNS and is_8bit(xt):
        return lambda xt, w: _shape_fits(xt.shape[1], xt.shape[0], w.shape[0])
    return lambda xt, w: False


def unsigned_bias(x, w, bias, w_sums):
    """The tile's starting sums: bias' itself for uint8 x. For int8 x the tile multiplies x + 128
    (``pack_chunk``'s flip), so it starts from bias'[n] − 128·Σ_k w[n,k]: the same sums in the end,
    every addition exact modulo 2^32 (vpdpbusd wraps, it does not saturate), and the true sum
    within int32 by the plan's bound. ``w_sums``: the row sums Σ_k w[n,k] (int64) when the plan
    has them (it computes them once per layer), else None, and they are summed here from w (N, K),
    per call; w is not read when w_sums is given (the quad conv, conv_quad.py, passes None)."""
    if x.dtype == np.uint8:
        return bias
    sums = w.astype(np.int64).sum(axis=1) if w_sums is None else w_sums
    return (bias.astype(np.int64) - 128 * sums).astype(np.int32)  # wraps to int32


@overload(unsigned_bias)
def _unsigned_bias_compiled(x, w, bias, w_sums):
    if x.dtype == types.uint8:
        return lambda x, w, bias, w_sums: bias
    if w_sums is None or isinstance(w_sums, (types.NoneType, types.Omitted)):
        def summed_here(x, w, bias, w_sums):
            shifted = np.empty_like(bias)
            for n in range(w.shape[0]):
                total = np.int64(0)
                for k in range(w.shape[1]):
                    total += np.int64(w[n, k])
                shifted[n] = np.int32(np.int64(bias[n]) - 128 * total)  # wraps to int32
            return shifted
        return summed_here

    def from_the_plan(x, w, bias, w_sums):
        shifted = np.empty_like(bias)
        for n in range(bias.shape[0]):
            shifted[n] = np.int32(np.int64(bias[n]) - 128 * np.int64(w_sums[n]))
        return shifted
    return from_the_plan


def sign_flip(x):
    """pack_chunk's flip for x: 0 for uint8, SIGN_FLIP for int8."""
    return np.int32(0) if x.dtype == np.uint8 else SIGN_FLIP


@overload(sign_flip)
def _sign_flip_compiled(x):
    if x.dtype == types.uint8:
        return lambda x: np.int32(0)
    return lambda x: np.int32(-0x7F7F7F80)


def never_fits(x, w):
    """broadcast_fits for the GEMM's other tiles (matmul_dense.gemm_with_tile): they always run."""
    return False


@overload(never_fits)
def _never_fits_compiled(x, w):
    return lambda x, w: False
