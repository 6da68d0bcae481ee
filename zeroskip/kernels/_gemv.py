"""The one-row GEMV's dot products on AVX-512 VNNI: four rows of w against the one row of x.

    sums[j] = start[n0 + j] + Σ_k w[n0 + j, k] · x[k]          for j < GEMV_TILE_ROWS

A classifier at batch 1 (MobileNetV2's 1280 → 1000, ResNet-18's 512 → 1000) is one dot product
per output over a row of w that nothing else reads, so the run is a stream of w: 64 bytes of x are
loaded once per step and multiplied by 64 bytes of each of the four rows with ``vpdpbusd`` (64
u8·s8 products added into 16 int32 lanes, no saturation), and the four accumulators are summed
across their lanes at the end. The last K mod 64 bytes are loaded with a mask whose bytes past K
are zero in w, so they add nothing. x is taken as unsigned: int8 x is read as x + 128 (xor 0x80),
and ``start`` is then bias' − 128·Σ_k w (``_broadcast.unsigned_bias``), exact modulo 2^32 as the
broadcast tile's.

``gemv_tile_loops`` is the same arithmetic in plain loops: the tile elsewhere, and the one the tests
compare it with. The leading underscore keeps the kernel collector (``kernels/__init__.py``) from
looking here: helpers only.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._broadcast import declare_dpbusd
from ._cpu import HAS_AVX512_VNNI
from ._requant import declare_masked_byte_load, lanes_below, splat

GEMV_TILE_ROWS = 4
"""Rows of w per tile call: one load of x feeds four dot products."""
STEP = 64
"""Bytes of a row per step: one zmm."""


def gemv_tile_loops(sums, x, w, start, n0, flip):
    """sums[j] = start[n0 + j] + Σ_k w[n0 + j, k]·((x[k] xor flip) as unsigned), in wrapping int32,
    for j < GEMV_TILE_ROWS (module docstring); flip is 0x80 for int8 x, else 0."""
    for j in range(GEMV_TILE_ROWS):
        s = np.int64(start[n0 + j])
        for k in range(x.shape[0]):
            s += np.int64(w[n0 + j, k]) * ((np.int64(x[k]) ^ flip) & 0xFF)
        sums[j] = np.int32(((s + 2 ** 31) & 0xFFFFFFFF) - 2 ** 31)


gemv_tile_portable = njit(cache=True, inline="always")(gemv_tile_loops)


def _gemv_tile_ir():
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    vec, window = ir.VectorType(i32, 16), ir.VectorType(i8, STEP)

    @intrinsic
    def gemv_tile(typingctx, sums, x, w, start, n0, flip):
        if not (all(isinstance(a, types.Array) and a.layout == "C" for a in (sums, x, w, start))
                and sums.dtype == types.int32 and sums.ndim == 1
                and x.dtype in (types.uint8, types.int8) and x.ndim == 1
                and w.dtype == types.int8 and w.ndim == 2
                and start.dtype == types.int32 and start.ndim == 1):
            return None
        sig = types.void(sums, x, w, start, types.int64, types.int64)

        def codegen(context, builder, signature, args):
            sa, xa, wa, ba = (context.make_array(signature.args[i])(context, builder, args[i])
                              for i in range(4))
            n0, flip = args[4], args[5]
            load = declare_masked_byte_load(builder)
            dpbusd = declare_dpbusd(builder)
            reduce_add = builder.module.declare_intrinsic(
                "llvm.vector.reduce.add.v16i32", fnty=ir.FunctionType(i32, [vec]))
            K = cgutils.unpack_tuple(builder, xa.shape)[0]
            row_stride = cgutils.unpack_tuple(builder, wa.strides)[0]
            x_bytes = builder.bitcast(xa.data, i8.as_pointer())
            w_bytes = builder.bitcast(wa.data, i8.as_pointer())
            rows = [builder.gep(w_bytes, [builder.mul(builder.add(n0, i64(j)), row_stride)])
                    for j in range(GEMV_TILE_ROWS)]
            zero = ir.Constant(window, [0] * STEP)
            flip_v = splat(builder, builder.trunc(flip, i8), window)
            accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, [0] * 16))
                    for _ in range(GEMV_TILE_ROWS)]

            def step(k, mask):  # 64 bytes of x against 64 bytes of each row, from byte k
                xv = builder.xor(builder.call(load, [builder.gep(x_bytes, [k]), zero, mask]),
                                 flip_v)
                xw = builder.bitcast(xv, vec)
                for j in range(GEMV_TILE_ROWS):
                    wv = builder.call(load, [builder.gep(rows[j], [k]), zero, mask])
                    builder.store(builder.call(dpbusd, [builder.load(accs[j]), xw,
                                                        builder.bitcast(wv, vec)]), accs[j])

            whole = builder.sdiv(K, i64(STEP))
            with cgutils.for_range(builder, whole) as loop:
                step(builder.mul(loop.index, i64(STEP)), i64(-1))
            tail = builder.srem(K, i64(STEP))
            with builder.if_then(builder.icmp_signed(">", tail, i64(0))):
                step(builder.mul(whole, i64(STEP)), lanes_below(builder, tail))
            start_p = builder.bitcast(ba.data, i32.as_pointer())
            sums_p = builder.bitcast(sa.data, i32.as_pointer())
            for j in range(GEMV_TILE_ROWS):
                total = builder.add(builder.load(builder.gep(start_p, [builder.add(n0, i64(j))])),
                                    builder.call(reduce_add, [builder.load(accs[j])]))
                builder.store(total, builder.gep(sums_p, [i64(j)]))
            return context.get_dummy_value()

        return sig, codegen

    return gemv_tile


RUNS = HAS_AVX512_VNNI and not numba.config.DISABLE_JIT
"""Whether the VNNI tile runs here: an AVX-512 VNNI CPU, and the JIT (LLVM IR does not run as
Python)."""

gemv_tile = _gemv_tile_ir() if RUNS else gemv_tile_portable
"""The tile the GEMV runs: vpdpbusd over 64-byte steps where the CPU has it, plain loops
elsewhere."""

TILES = {"loops": gemv_tile_portable}
"""The tile variants this CPU runs, by name (the tests compare each with the formula)."""
if RUNS:
    TILES["vnni"] = gemv_tile
