"""Dense int8 GEMM: x (M,K) and w (N,K), both contiguous along K, into the int32 accumulator yt (N,M).

The register tile (docs/kernels.md, "matmul_dense_i8"): X_ROWS_PER_TILE = 2 rows of x times
W_ROWS_PER_TILE = 4 rows of w give SUMS_PER_TILE = 8 int32 dot products over K at once. One tile
step takes K_PER_STEP = 16 values of k: the 6 rows' 16 bytes each are widened to int16, and every
(x row, w row) pair goes through one ``vpmaddwd``, which multiplies the 16 pairs exactly and adds
adjacent products into LANES = 8 int32 lanes, added to that pair's accumulator. After the last whole
step each accumulator's 8 lanes are summed (the horizontal sums); the last K mod 16 values of k,
edge rows and edge columns are scalar dot products.

The tile exists three times, with the same integers out:

- ``tile_step_model`` / ``tile_model``: one step, and the whole tile, in NumPy, line by line as the
  hardware does it. The one to read first; the kernel runs it under NUMBA_DISABLE_JIT=1, where the
  LLVM IR below cannot run.
- ``_madd_tile`` + ``_tile_avx2``: the steps written in LLVM IR (AVX2), what the kernel runs.
- ``_dpbusd_tile`` + ``_tile_vnni``: on CPUs with VNNI (AVX-512 VNNI or AVX-VNNI) and uint8 x,
  ``vpdpbusd`` takes VNNI_K_PER_STEP = 32 values of k per step: it multiplies unsigned by signed
  bytes and adds each 4 adjacent products into an int32 lane, with no intermediate rounding or
  saturation, so the sums are the same integers at twice the values of k per instruction and
  without the widening. int8 x takes the AVX2 tile (vpdpbusd's first operand is unsigned).
- ``_tile_portable``: plain loops, for CPUs without AVX2.

On AVX-512 VNNI CPUs, a K that is a multiple of 4 takes neither: ``_broadcast_gemm`` runs the
outer-product tile of ``_broadcast.py`` (16 pixels of one channel per zmm, the weights broadcast,
no horizontal sums), for uint8 and int8 x alike.

``gemm_with_tile`` builds the GEMM loop around any of them, so the tests compare them all.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._amx import RUNS as AMX_RUNS
from ._amx import (ONE_TAP, TILE_ROWS, amx_conv_block, amx_fits, amx_fits_planar, amx_tasks,
                   start_rows_jit, task_sums, tile_weights)
from ._batch import as_images, as_rows
from ._broadcast import RUNS as BROADCAST_RUNS
from ._broadcast import (BROADCAST_PIXELS, BROADCAST_ROWS, broadcast_fits, broadcast_fits_planar,
                         broadcast_tile, broadcast_tile_rq, channel_groups, never_fits, pack_chunk_jit,
                         pack_planar_chunk_jit, sign_flip, unsigned_bias)
from ._copies import renamed_copy
from ._cpu import HAS_AVX2, HAS_VNNI
from ._gemv import GEMV_TILE_ROWS, gemv_tile
from ._gemv import RUNS as GEMV_TILE_RUNS
from ._quads import store_chunk
from ._scratch import words_on_lines
from .elementwise import add_residual, add_residual_rows, residual_parts
from .quant import requantize_one, requantize_row

X_ROWS_PER_TILE = 2
"""Rows of x per register tile. With W_ROWS_PER_TILE = 4: 8 vector accumulators + 6 loaded vectors
≤ 16 ymm registers. Chosen by bench/test_bench_matmul.py at M=128, K=N=1024 with the vpmaddwd loop:
2×4 (2.8 ms) beat 4×2, 3×4, 4×3, 2×6, 6×2 and 4×4 (3.1–4.5 ms); 1×4 tied it (load-bound), and 2×4
reads x half as often."""
W_ROWS_PER_TILE = 4
"""Rows of w per register tile, and per parallel iteration (a panel of w); see X_ROWS_PER_TILE."""
SUMS_PER_TILE = X_ROWS_PER_TILE * W_ROWS_PER_TILE
"""Dot products, and vector accumulators, per tile: number i·W_ROWS_PER_TILE + j is x row m+i
times w row n+j."""
K_PER_STEP = 16
"""Values of k per tile step: vpmaddwd takes 16 int16 pairs, one 256-bit ymm register of each.
Fixed by the instruction, not by a benchmark."""
LANES = K_PER_STEP // 2
"""int32 lanes per accumulator: vpmaddwd adds its 16 products in adjacent pairs, into 8 lanes."""


# ---------------------------------------------------------------- the tile in NumPy: read this first

def tile_step_model(x16, w16):
    """One tile step for one (x row, w row) pair: what one vpmaddwd computes, in NumPy.

    lane[l] = x16[2l]·w16[2l] + x16[2l+1]·w16[2l+1]   for l < LANES, exactly, in int32
    x16 [K_PER_STEP] uint8|int8 — 16 values of k of an x row; w16 [K_PER_STEP] int8 — of a w row
    Returns [LANES] int32. No saturation is possible: |product| ≤ 255·128 (or 128·128) < 2^15, so a
    lane is at most 2·255·128 < 2^16.
    """
    x_wide = x16.astype(np.int16)  # vpmovzxbw (uint8: zero-extend) or vpmovsxbw (int8: sign-extend)
    w_wide = w16.astype(np.int16)  # vpmovsxbw
    products = x_wide.astype(np.int32) * w_wide.astype(np.int32)  # 16 exact int16·int16 products
    return products[0::2] + products[1::2]  # adjacent pairs added: 8 int32 lanes


def tile_model(x, w, m, n, K):
    """The tile's dot products as _madd_tile and _tile_avx2 compute them, step by step, in NumPy.

    sums[i, j] = Σ_{k<K} x[m+i, k]·w[n+j, k]   for i < X_ROWS_PER_TILE, j < W_ROWS_PER_TILE
    x [M,K] uint8|int8, w [N,K] int8 — rows m.. and n.. must exist; returns [X_ROWS, W_ROWS] int32.
    int32 arithmetic throughout, wrapping as the hardware's does (the plan bounds K, so nothing wraps).
    """
    acc = np.zeros((X_ROWS_PER_TILE, W_ROWS_PER_TILE, LANES), np.int32)  # the 8 ymm accumulators
    steps = K // K_PER_STEP
    for step in range(steps):
        k = step * K_PER_STEP
        for i in range(X_ROWS_PER_TILE):
            for j in range(W_ROWS_PER_TILE):  # vpaddd: acc[i, j] += vpmaddwd(x row, w row)
                acc[i, j] += tile_step_model(x[m + i, k:k + K_PER_STEP], w[n + j, k:k + K_PER_STEP])
    sums = acc.sum(axis=2, dtype=np.int32)  # the horizontal sums: each accumulator's 8 lanes
    k0 = steps * K_PER_STEP  # the K mod 16 tail: plain products
    x_tail = x[m:m + X_ROWS_PER_TILE, k0:K].astype(np.int32)
    w_tail = w[n:n + W_ROWS_PER_TILE, k0:K].astype(np.int32)
    return sums + x_tail @ w_tail.T


def _tile_python(x, w, bias, yt, m, n, K):
    """As _tile_avx2, through tile_model: the tile the kernel runs under NUMBA_DISABLE_JIT=1."""
    sums = tile_model(x, w, m, n, K)
    yt[n:n + W_ROWS_PER_TILE, m:m + X_ROWS_PER_TILE] = bias[n:n + W_ROWS_PER_TILE, None] + sums.T


# ---------------------------------------------------------------- the tile in LLVM IR (AVX2)

def _horizontal_sums_ir(builder, vectors):
    """LLVM IR: the sum of the lanes of each <LANES x i32> vector, as a list of i32, LANES vectors
    at a time (the list is padded with zero vectors to a multiple of LANES).

    vphaddd adds adjacent lanes of two vectors within each 128-bit half, so two rounds of it leave,
    for 4 vectors, the sums of lanes 0–3 in the low half and of lanes 4–7 in the high half; two such
    results, one shuffle that pairs the halves up and one vpaddd give the 8 vectors' sums, in order.
    (~17 instructions for 8 sums, against ~120 for one extract-and-add chain per vector.) The tree
    is written for LANES = 8, the ymm form of vphaddd. Wrapping int32 adds in any order give the
    exact sum when it fits int32, which the plan checks.
    """
    vector = vectors[0].type
    phadd = builder.module.declare_intrinsic(
        "llvm.x86.avx2.phadd.d", fnty=ir.FunctionType(vector, [vector, vector]))
    half = LANES // 2  # lanes per 128-bit half
    low_halves = ir.Constant(vector, list(range(half)) + list(range(LANES, LANES + half)))
    high_halves = ir.Constant(vector, list(range(half, LANES)) + list(range(LANES + half, 2 * LANES)))
    padded = list(vectors) + [ir.Constant(vector, [0] * LANES)] * (-len(vectors) % LANES)
    sums = []
    for g in range(0, len(padded), LANES):
        v = padded[g:g + LANES]
        pairs = [builder.call(phadd, [v[2 * t], v[2 * t + 1]]) for t in range(LANES // 2)]
        quads = [builder.call(phadd, [pairs[2 * t], pairs[2 * t + 1]]) for t in range(LANES // 4)]
        # quads[0] = [v0..v3: Σ lanes 0-3 | v0..v3: Σ lanes 4-7], quads[1] the same for v4..v7
        total = builder.add(builder.shuffle_vector(quads[0], quads[1], low_halves),
                            builder.shuffle_vector(quads[0], quads[1], high_halves))
        sums += [builder.extract_element(total, ir.IntType(32)(t)) for t in range(LANES)]
    return sums[:len(vectors)]


def _row_pointers(context, builder, arr, first, count):
    """LLVM IR: byte pointers to rows first .. first+count-1 of a C-contiguous 2-D array."""
    data = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
    stride = cgutils.unpack_tuple(builder, arr.strides)[0]
    return [builder.gep(data, [builder.mul(builder.add(first, context.get_constant(types.intp, r)),
                                           stride)])
            for r in range(count)]


def _load_bytes(builder, row, k, count):
    """LLVM IR: the <count x i8> at row[k:k+count] (unaligned)."""
    vector = ir.VectorType(ir.IntType(8), count)
    return builder.load(builder.bitcast(builder.gep(row, [k]), vector.as_pointer()), align=1)


def _madd_step_ir(builder, x_rows, w_rows, k, x_signed, accs):
    """LLVM IR: one tile step at k: acc[i,j] += vpmaddwd(x row i, w row j) over K_PER_STEP values,
    the bytes widened to int16 (x as signed or unsigned, w signed)."""
    int16s = ir.VectorType(ir.IntType(16), K_PER_STEP)
    lanes = ir.VectorType(ir.IntType(32), LANES)
    pmaddwd = builder.module.declare_intrinsic(
        "llvm.x86.avx2.pmadd.wd", fnty=ir.FunctionType(lanes, [int16s, int16s]))

    def load16(row, signed):
        v = _load_bytes(builder, row, k, K_PER_STEP)
        return builder.sext(v, int16s) if signed else builder.zext(v, int16s)

    w16 = [load16(r, True) for r in w_rows]
    for i in range(X_ROWS_PER_TILE):
        x16 = load16(x_rows[i], x_signed)
        for j in range(W_ROWS_PER_TILE):
            acc = accs[i * W_ROWS_PER_TILE + j]
            builder.store(builder.add(builder.load(acc), builder.call(pmaddwd, [x16, w16[j]])), acc)


@intrinsic
def _madd_tile(typingctx, x, w, m, n, steps):
    """The SUMS_PER_TILE sums Σ_{k < K_PER_STEP·steps} x[m+i,k]·w[n+j,k] in int32, as a tuple in
    order i·W_ROWS_PER_TILE + j: tile_model's whole steps, as LLVM IR.

    Per step of K_PER_STEP values of k: load x[m+i, k:k+16] (zero- or sign-extended to <16 x i16>
    as x is uint8 or int8) and w[n+j, k:k+16] (sign-extended); acc[i,j] += llvm.x86.avx2.pmadd.wd(
    x_i, w_j) (<8 x i32>). Then the horizontal sums of the accumulators (_horizontal_sums_ir).
    Requires AVX2 (the host's).
    """
    if not (isinstance(x, types.Array) and isinstance(w, types.Array) and x.layout == w.layout == "C"
            and x.dtype in (types.uint8, types.int8) and w.dtype == types.int8):  # rows contiguous
        return None
    x_signed = x.dtype.signed
    sig = types.UniTuple(types.int32, SUMS_PER_TILE)(x, w, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        x_val, w_val, m_val, n_val, steps_val = args
        xa = context.make_array(signature.args[0])(context, builder, x_val)
        wa = context.make_array(signature.args[1])(context, builder, w_val)
        lanes = ir.VectorType(ir.IntType(32), LANES)
        x_rows = _row_pointers(context, builder, xa, m_val, X_ROWS_PER_TILE)
        w_rows = _row_pointers(context, builder, wa, n_val, W_ROWS_PER_TILE)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(lanes, [0] * LANES))
                for _ in range(SUMS_PER_TILE)]  # promoted to ymm registers by LLVM
        with cgutils.for_range(builder, steps_val) as loop:
            k = builder.mul(loop.index, context.get_constant(types.intp, K_PER_STEP))
            _madd_step_ir(builder, x_rows, w_rows, k, x_signed, accs)
        sums = _horizontal_sums_ir(builder, [builder.load(acc) for acc in accs])
        return context.make_tuple(builder, signature.return_type, sums)

    return sig, codegen


VNNI_K_PER_STEP = 32
"""Values of k per VNNI tile step: vpdpbusd takes 32 byte pairs, one 256-bit ymm register of each."""


@intrinsic
def _dpbusd_tile(typingctx, x, w, m, n, steps, half):
    """As _madd_tile for uint8 x on a VNNI CPU: the SUMS_PER_TILE sums over ``steps`` steps of
    VNNI_K_PER_STEP values of k by vpdpbusd, then, if ``half`` is 1, one vpmaddwd step of
    K_PER_STEP values (k from steps·32), in the order i·W_ROWS_PER_TILE + j.

    Per vpdpbusd step: load x[m+i, k:k+32] and w[n+j, k:k+32] as <32 x i8>, each viewed as
    <8 x i32>; acc[i,j] = llvm.x86.avx512.vpdpbusd.256(acc[i,j], x_i, w_j), which adds to lane l
    Σ_{t<4} zext(x[4l+t])·sext(w[4l+t]): |4·255·128| < 2^17, and the int32 add wraps as the
    plan's K bound makes impossible. Requires VNNI (the host's; HAS_VNNI).
    """
    if not (isinstance(x, types.Array) and isinstance(w, types.Array) and x.layout == w.layout == "C"
            and x.dtype == types.uint8 and w.dtype == types.int8):
        return None
    sig = types.UniTuple(types.int32, SUMS_PER_TILE)(x, w, types.intp, types.intp, types.intp,
                                                      types.intp)

    def codegen(context, builder, signature, args):
        x_val, w_val, m_val, n_val, steps_val, half_val = args
        xa = context.make_array(signature.args[0])(context, builder, x_val)
        wa = context.make_array(signature.args[1])(context, builder, w_val)
        lanes = ir.VectorType(ir.IntType(32), LANES)
        dpbusd = builder.module.declare_intrinsic(
            "llvm.x86.avx512.vpdpbusd.256", fnty=ir.FunctionType(lanes, [lanes, lanes, lanes]))
        x_rows = _row_pointers(context, builder, xa, m_val, X_ROWS_PER_TILE)
        w_rows = _row_pointers(context, builder, wa, n_val, W_ROWS_PER_TILE)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(lanes, [0] * LANES))
                for _ in range(SUMS_PER_TILE)]
        with cgutils.for_range(builder, steps_val) as loop:
            k = builder.mul(loop.index, context.get_constant(types.intp, VNNI_K_PER_STEP))
            w32 = [builder.bitcast(_load_bytes(builder, r, k, VNNI_K_PER_STEP), lanes)
                   for r in w_rows]
            for i in range(X_ROWS_PER_TILE):
                x32 = builder.bitcast(_load_bytes(builder, x_rows[i], k, VNNI_K_PER_STEP), lanes)
                for j in range(W_ROWS_PER_TILE):
                    acc = accs[i * W_ROWS_PER_TILE + j]
                    builder.store(builder.call(dpbusd, [builder.load(acc), x32, w32[j]]), acc)
        has_half = builder.icmp_signed("!=", half_val, context.get_constant(types.intp, 0))
        with builder.if_then(has_half):
            k = builder.mul(steps_val, context.get_constant(types.intp, VNNI_K_PER_STEP))
            _madd_step_ir(builder, x_rows, w_rows, k, False, accs)
        sums = _horizontal_sums_ir(builder, [builder.load(acc) for acc in accs])
        return context.make_tuple(builder, signature.return_type, sums)

    return sig, codegen


@njit(cache=True)
def _dot(xm, wn, K):
    """Σ_k int32(xm[k])·int32(wn[k]) in int32 (one output)."""
    s = np.int32(0)
    for k in range(K):
        s = np.int32(s + np.int32(xm[k]) * np.int32(wn[k]))
    return s


@njit(cache=True, inline="always")
def _tile_avx2(x, w, bias, yt, m, n, K):
    """yt[n+j, m+i] = bias[n+j] + Σ_k x[m+i,k]·w[n+j,k] for the tile's X_ROWS × W_ROWS outputs:
    the whole steps by vpmaddwd (_madd_tile), the K mod K_PER_STEP tail by scalar dot products."""
    steps = K // K_PER_STEP
    _store_tile(_madd_tile(x, w, m, n, steps), x, w, bias, yt, m, n, steps * K_PER_STEP, K)


@njit(cache=True, inline="always")
def _store_tile(sums, x, w, bias, yt, m, n, k0, K):
    """yt[n+j, m+i] = bias[n+j] + sums[i·W_ROWS_PER_TILE + j] + the scalar dot product of the
    values of k from k0 to K (the part the vector steps did not take)."""
    for i in range(X_ROWS_PER_TILE):
        for j in range(W_ROWS_PER_TILE):
            s = sums[i * W_ROWS_PER_TILE + j]
            if k0 < K:
                s += _dot(x[m + i, k0:], w[n + j, k0:], K - k0)
            yt[n + j, m + i] = bias[n + j] + s


@njit(cache=True, inline="always")
def _tile_vnni_u8(x, w, bias, yt, m, n, K):
    """As _tile_avx2 for uint8 x: whole VNNI steps of 32 by vpdpbusd, a 16-value step by vpmaddwd
    if 16 or more values of k are left, the rest (K mod 16) by scalar dot products."""
    steps = K // VNNI_K_PER_STEP
    half = 1 if K - steps * VNNI_K_PER_STEP >= K_PER_STEP else 0
    _store_tile(_dpbusd_tile(x, w, m, n, steps, half), x, w, bias, yt, m, n,
                steps * VNNI_K_PER_STEP + half * K_PER_STEP, K)


def _tile_vnni(x, w, bias, yt, m, n, K):
    """The VNNI tile for uint8 x, the AVX2 tile for int8 x (chosen when the kernel is compiled
    for x's type; compiled code only, see the overload below)."""
    raise NotImplementedError("compiled code only")


@overload(_tile_vnni, inline="always")
def _tile_vnni_overload(x, w, bias, yt, m, n, K):
    if isinstance(x, types.Array) and x.dtype == types.uint8:
        return lambda x, w, bias, yt, m, n, K: _tile_vnni_u8(x, w, bias, yt, m, n, K)
    return lambda x, w, bias, yt, m, n, K: _tile_avx2(x, w, bias, yt, m, n, K)


@njit(cache=True, inline="always")
def _tile_portable(x, w, bias, yt, m, n, K):
    """As _tile_avx2 in plain loops, for CPUs without AVX2: per k, each of the tile's x values times
    each of its w values, into X_ROWS × W_ROWS int32 sums. Same results."""
    sums = np.zeros((X_ROWS_PER_TILE, W_ROWS_PER_TILE), np.int32)
    for k in range(K):
        for i in range(X_ROWS_PER_TILE):
            xi = np.int32(x[m + i, k])
            for j in range(W_ROWS_PER_TILE):
                sums[i, j] += xi * np.int32(w[n + j, k])
    for i in range(X_ROWS_PER_TILE):
        for j in range(W_ROWS_PER_TILE):
            yt[n + j, m + i] = bias[n + j] + sums[i, j]


TILES = {"python": _tile_python, "avx2": _tile_avx2, "vnni": _tile_vnni, "portable": _tile_portable}
"""The tile variants by name; each writes the tile's X_ROWS × W_ROWS outputs of yt."""

_tile = (_tile_python if numba.config.DISABLE_JIT
         else _tile_vnni if HAS_VNNI else _tile_avx2 if HAS_AVX2 else _tile_portable)
"""The tile matmul_dense_i8 runs: vpdpbusd (uint8 x) where the CPU has VNNI, vpmaddwd where it has
AVX2, plain loops elsewhere, and the NumPy model when Numba's JIT is off (LLVM IR cannot run as
Python)."""


# ------------------------------------------- the widened tile: AVX2 without VNNI (and int8 x with it)

WIDE_X_ROWS = 1
"""Rows of x per widened tile (``_wide_tile``)."""
WIDE_W_ROWS = 8
"""Rows of w per widened tile and per panel: 1 × 8 accumulators, the x row in a register and each
w row a memory operand of its vpmaddwd. Compiled for Haswell's 16 ymm registers (M = 144,
K = 1024, N = 1080, one thread, ms): 1 × 8 1.83, 1 × 10 1.85, 2 × 5 2.07, 2 × 4 2.05, 4 × 2 1.97,
2 × 6 2.77, 3 × 4 2.95, 4 × 4 2.37, 1 × 12 3.90 (the larger tiles spill accumulators)."""


@intrinsic
def _wide_tile(typingctx, x16, w16, m, steps):
    """The WIDE_X_ROWS × WIDE_W_ROWS sums Σ_{k < K_PER_STEP·steps} x16[m+i,k]·w16[j,k] in int32, in
    order i·WIDE_W_ROWS + j: the dot-product tile of _madd_tile on operands already widened to
    int16 (x16 (M, K) and the panel's w16 (WIDE_W_ROWS, K), both C-contiguous): per step, 9 loads
    of 16 int16 and 8 vpmaddwd, with no widening in the loop. Requires AVX2 (the target's)."""
    if not (isinstance(x16, types.Array) and isinstance(w16, types.Array)
            and x16.layout == w16.layout == "C" and x16.dtype == w16.dtype == types.int16):
        return None
    sums_type = types.UniTuple(types.int32, WIDE_X_ROWS * WIDE_W_ROWS)
    sig = sums_type(x16, w16, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        x_val, w_val, m_val, steps_val = args
        xa = context.make_array(signature.args[0])(context, builder, x_val)
        wa = context.make_array(signature.args[1])(context, builder, w_val)
        int16s = ir.VectorType(ir.IntType(16), K_PER_STEP)
        lanes = ir.VectorType(ir.IntType(32), LANES)
        pmaddwd = builder.module.declare_intrinsic(
            "llvm.x86.avx2.pmadd.wd", fnty=ir.FunctionType(lanes, [int16s, int16s]))
        x_rows = _row_pointers(context, builder, xa, m_val, WIDE_X_ROWS)
        w_rows = _row_pointers(context, builder, wa, context.get_constant(types.intp, 0),
                               WIDE_W_ROWS)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(lanes, [0] * LANES))
                for _ in range(WIDE_X_ROWS * WIDE_W_ROWS)]
        with cgutils.for_range(builder, steps_val) as loop:
            at = builder.mul(loop.index, context.get_constant(types.intp, 2 * K_PER_STEP))

            def load16(row):  # 16 int16 at byte offset ``at`` of the row
                return builder.load(builder.bitcast(builder.gep(row, [at]), int16s.as_pointer()),
                                    align=2)

            w16s = [load16(r) for r in w_rows]
            for i in range(WIDE_X_ROWS):
                x_i = load16(x_rows[i])
                for j in range(WIDE_W_ROWS):
                    acc = accs[i * WIDE_W_ROWS + j]
                    builder.store(builder.add(builder.load(acc),
                                              builder.call(pmaddwd, [x_i, w16s[j]])), acc)
        sums = _horizontal_sums_ir(builder, [builder.load(acc) for acc in accs])
        return context.make_tuple(builder, signature.return_type, sums)

    return sig, codegen


@njit(cache=True, inline="always")
def _wide_panel(x16, x, w16, w, bias, out, n, first, end, K):
    """out[j, m − first] = bias[n+j] + Σ_k x[m,k]·w[n+j,k] for j < WIDE_W_ROWS and rows m of x
    from first to end: whole widened tiles (w16 holds w's rows n .. n+7 as int16), the K mod 16
    tail and the rows left over by scalar dot products."""
    steps = K // K_PER_STEP
    k0 = steps * K_PER_STEP
    tiled = first + (end - first) // WIDE_X_ROWS * WIDE_X_ROWS
    for m in range(first, tiled, WIDE_X_ROWS):
        sums = _wide_tile(x16, w16, m, steps)
        for i in range(WIDE_X_ROWS):
            for j in range(WIDE_W_ROWS):
                s = sums[i * WIDE_W_ROWS + j]
                if k0 < K:
                    s += _dot(x[m + i, k0:], w[n + j, k0:], K - k0)
                out[j, m - first + i] = bias[n + j] + s
    for m in range(tiled, end):
        for j in range(WIDE_W_ROWS):
            out[j, m - first] = bias[n + j] + _dot(x[m], w[n + j], K)


@njit(cache=True, inline="always")
def _widen_panel(w, n, w16):
    """w16[j] = w[n + j] as int16, for j < WIDE_W_ROWS."""
    for j in range(WIDE_W_ROWS):
        for k in range(w.shape[1]):
            w16[j, k] = w[n + j, k]


@njit(cache=True, inline="always")
def _widened_rows(x):
    """x (M, K) uint8|int8 as int16, row by row in a parallel loop: the widened tile reads each row
    N / WIDE_W_ROWS times, so it is widened once per call and not in the loop."""
    x16 = np.empty(x.shape, np.int16)
    for m in prange(x.shape[0]):
        for k in range(x.shape[1]):
            x16[m, k] = x[m, k]
    return x16


@njit(cache=True, inline="always")
def _wide_gemm(x, w, bias, yt):
    """matmul_dense_i8 on the widened tile: prange panels of WIDE_W_ROWS rows of w, each widened
    into a scratch of its own; the last N mod 8 rows by the narrow panels (_panel)."""
    M, K = x.shape
    N = w.shape[0]
    x16 = _widened_rows(x)
    panels = N // WIDE_W_ROWS
    for p in prange(panels + (1 if N % WIDE_W_ROWS else 0)):
        n = p * WIDE_W_ROWS
        if p == panels:  # the last N mod 8 rows, 4 at a time
            for n4 in range(n, N, W_ROWS_PER_TILE):
                _panel(x, w, bias, yt, n4, K)
            continue
        w16 = np.empty((WIDE_W_ROWS, K), np.int16)
        _widen_panel(w, n, w16)
        _wide_panel(x16, x, w16, w, bias, yt[n:n + WIDE_W_ROWS], n, 0, M, K)


def wide_fits(x, w):
    """Whether matmul_dense_*'s call on x takes the widened tile: never as Python (LLVM IR)."""
    return False


def always_wide(x, w):
    """wide_fits for gemm_with_tile("wide"): the widened tile whatever the CPU would choose."""
    return True


@overload(wide_fits)
def _wide_fits_compiled(x, w):
    # AVX2, and no vpdpbusd for this x: VNNI takes uint8 x with its own tile
    if HAS_AVX2 and isinstance(x, types.Array) and not (HAS_VNNI and x.dtype == types.uint8):
        return lambda x, w: True
    return lambda x, w: False


@overload(always_wide)
def _always_wide_compiled(x, w):
    return lambda x, w: True


def _matmul_dense_i8(x, w, bias, yt, w_pad=None):
    # w (N,K) int8 @ x (M,K)ᵀ uint8|int8 + bias' -> acc yt (N,M) int32
    """yt[n,m] = bias'[n] + Σ_k q_w[n,k]·q_x[m,k]      (the int32 accumulator)

    real = scale·(q − zero_point): w per output channel with zero point 0, x per tensor; the x zero
    point is folded into bias'[n] = q_b[n] − x_zp·Σ_k q_w[n,k] at plan time. No rounding and no
    saturation here: requantize_dense_i8 turns yt into 8 bits.
    Loop nest: prange panels of W_ROWS_PER_TILE rows of w; X_ROWS_PER_TILE rows of x at a time; the
    tile's dot products over k, K_PER_STEP k per vpmaddwd step (exact: int16 products summed in
    int32, no int16 saturation; the K mod 16 tail, edge rows and edge columns by scalar dot
    products). No scratch: bytes are widened in registers.
    x [M,K] uint8|int8 — activations, pixel-major (a Gemm input, or im2row rows), C-contiguous
    w [N,K] int8 — weights, anything in [−128, 127], C-contiguous
    bias [N] int32 — the folded bias bias'
    yt [N,M] int32 — accumulator out (channel-major, NCHW for a conv), overwritten
    w_pad — None, or w padded once by the plan for the AMX tile (_amx.pad_weights; NO_PAD where
    the tile will not run); padded per call when None
    Preconditions: K·max|q_w·q_x| + max|bias'| < 2^31 (checked by the plan).
    Overflow: |u8·s8| ≤ 255·128 = 32 640 < 2^15, so K ≤ 65 793 is safe; |s8·s8| ≤ 128·128 = 2^14,
    so K ≤ 131 071 (the plan checks K).
    Work: 2·M·N·K int ops; reads w once and x N/W_ROWS_PER_TILE times (from L2), writes yt N·M·4 bytes.
    """
    K = x.shape[1]
    # AMX_RUNS, BROADCAST_RUNS: module constants, so that Numba drops the branch of a tile the CPU
    # cannot run before it compiles it (its fits() is False there all the same, but only at run
    # time): a cold compile of matmul_planar_rq_i8 on a CPU without AMX 14.6 → 8.8 s a signature
    if AMX_RUNS and amx_fits(x, w):  # AMX, K % 4 == 0: the AMX tile
        _amx_gemm(x, w, bias, yt, (bias, bias, 0, 0, 0), None, w_pad)
    elif BROADCAST_RUNS and broadcast_fits(x, w):  # AVX-512 VNNI, K % 4 == 0: the broadcast tile
        _broadcast_gemm(x, w, bias, yt, (bias, bias, 0, 0, 0), None)
    elif wide_fits(x, w):  # AVX2 (int8 x, or no VNNI): the widened tile
        _wide_gemm(x, w, bias, yt)
    else:
        for p in prange((w.shape[0] + W_ROWS_PER_TILE - 1) // W_ROWS_PER_TILE):
            _panel(x, w, bias, yt, p * W_ROWS_PER_TILE, K)


def _panel_loops(x, w, bias, yt, n, K):
    """yt[j, m] = bias[j] + Σ_k x[m,k]·w[j,k] for the W_ROWS_PER_TILE rows j of w from n (fewer
    at the edge of w) and every row m of x: whole tiles, then the rows of x left over, by _tile;
    the last N mod W_ROWS_PER_TILE rows of w by scalar dot products."""
    M, N = x.shape[0], w.shape[0]
    M_tiled = M - M % X_ROWS_PER_TILE  # rows of x in whole tiles
    if n + W_ROWS_PER_TILE <= N:  # a whole panel of w
        for m in range(0, M_tiled, X_ROWS_PER_TILE):
            _tile(x, w, bias, yt, m, n, K)
        for m in range(M_tiled, M):
            for j in range(n, n + W_ROWS_PER_TILE):
                yt[j, m] = bias[j] + _dot(x[m], w[j], K)
    else:
        for j in range(n, N):
            for m in range(M):
                yt[j, m] = bias[j] + _dot(x[m], w[j], K)


_panel = njit(cache=True)(_panel_loops)
matmul_dense_i8 = njit(cache=True, parallel=True, nogil=True)(_matmul_dense_i8)

@njit(cache=True, inline="always")
def _broadcast_tasks(M, N, images):
    """(chunks per image, channel groups, channels per group) of the broadcast tile's tasks for
    ``images`` (M, N) outputs: chunks of BROADCAST_PIXELS pixels, times groups of whole tiles of
    channels (_broadcast.channel_groups, from the chunks of every image)."""
    chunks = (M + BROADCAST_PIXELS - 1) // BROADCAST_PIXELS
    groups, per = channel_groups(N // BROADCAST_ROWS, images * chunks)
    return chunks, groups, per * BROADCAST_ROWS


def _store_sums(sums, out, n, c, m0n, shift_n, y_zero_point, lo, hi):
    """The broadcast GEMM's epilogue for output channel n, pixels c .. c + len(sums): the int32 sums
    as they are (an int32 out: matmul_dense_i8, which ignores the rest), or requantized with
    channel n's m0n, shift_n (an 8-bit out: matmul_dense_rq_i8). Compiled, the choice is made by
    out's type (the overload below). Scalars, not the tuple (m0, shift, …): unpacked here, once
    per tile, a tuple of arrays cost their reference counts each time (_quads.store_chunk). A
    residual is added after the tiles, over whole rows (add_residual_rows)."""
    row = out[n, c:c + sums.shape[0]]
    if out.dtype == np.int32:
        row[:] = sums
        return
    requantize_row(sums, m0n, shift_n, y_zero_point, lo, hi, row)


@overload(_store_sums, inline="always")
def _store_sums_compiled(sums, out, n, c, m0n, shift_n, y_zero_point, lo, hi):
    if out.dtype == types.int32:
        def store(sums, out, n, c, m0n, shift_n, y_zero_point, lo, hi):
            out[n, c:c + sums.shape[0]] = sums
        return store

    def store_requantized(sums, out, n, c, m0n, shift_n, y_zero_point, lo, hi):
        requantize_row(sums, m0n, shift_n, y_zero_point, lo, hi, out[n, c:c + sums.shape[0]])
    return store_requantized


def _store_block(sums, rows, out4, b, n_begin, c, count, m0, shift, y_zero_point, lo, hi,
                 residual4):
    """The AMX GEMM's epilogue for one task: rows j < ``rows`` of sums (channels n_begin + j,
    pixels c .. c + count of image b of out4, the output seen as (B, N, 1, M)) through
    _store_sums, then, with a residual (``residual_planes``), added to it as the QAdd adds.
    Compiled with an 8-bit out (the overload below), each row goes through the convs' IR
    epilogue (_quads.store_chunk, out seen as one row of pixels per channel, the residual added in
    its registers): called per channel, _store_sums' view of each row and its inlined arrays cost
    their reference counts in the serial build (as the AMX stem's stores did,
    _quads._store_chunk_ir)."""
    for j in range(rows):
        n = n_begin + j
        _store_sums(sums[j, :count], out4[b, :, 0, :], n, c, m0[n], shift[n], y_zero_point, lo,
                    hi)
        if residual4 is not None:
            add_residual(out4[b, n, 0, c:c + count], residual4[0][b, n, 0, c:c + count],
                         residual4[1:])


@overload(_store_block, inline="always")
def _store_block_compiled(sums, rows, out4, b, n_begin, c, count, m0, shift, y_zero_point, lo,
                          hi, residual4):
    if out4.dtype == types.int32:
        def as_sums(sums, rows, out4, b, n_begin, c, count, m0, shift, y_zero_point, lo, hi,
                    residual4):
            for j in range(rows):
                out4[b, n_begin + j, 0, c:c + count] = sums[j, :count]
        return as_sums

    def requantized(sums, rows, out4, b, n_begin, c, count, m0, shift, y_zero_point, lo, hi,
                    residual4):
        for j in range(rows):
            store_chunk(sums, j, n_begin + j, b, c, 0, 1, m0[n_begin + j], shift[n_begin + j],
                        y_zero_point, lo, hi, out4, out4.shape[3], residual4)
    return requantized


def residual_planes(residual, shape4):
    """A requantizing GEMM's ``residual`` (None, or residual_parts' tuple with r of y's shape) with
    r seen as ``shape4`` (B, N, 1, M), the output's shape for _quads.store_chunk."""
    if residual is None:
        return None
    return (residual[0].reshape(shape4),) + tuple(residual[1:])


@overload(residual_planes, inline="always")
def _residual_planes_compiled(residual, shape4):
    if residual is None or isinstance(residual, (types.NoneType, types.Omitted)):
        return lambda residual, shape4: None
    return lambda residual, shape4: (residual[0].reshape(shape4), residual[1], residual[2],
                                     residual[3], residual[4], residual[5], residual[6],
                                     residual[7], residual[8])


def _tile_stored(sums, xp, w, start, n0, out, c, count, m0, shift, y_zero_point, lo, hi):
    """The broadcast tile for channels n0 .. n0 + BROADCAST_ROWS, pixels c .. c + count of out,
    with _store_sums's epilogue. Compiled with an 8-bit out (the overload below), the tile
    requantizes in its registers and stores bytes (broadcast_tile_rq): on MobileNetV2's 16→96 1×1
    conv at 112×112 the int32 sums' round trip through ``sums`` and requantize_row had cost more
    than the sums."""
    broadcast_tile(sums, xp, w, start, n0)
    for j in range(BROADCAST_ROWS):
        _store_sums(sums[j, :count], out, n0 + j, c, m0[n0 + j], shift[n0 + j], y_zero_point,
                    lo, hi)


@overload(_tile_stored, inline="always")
def _tile_stored_compiled(sums, xp, w, start, n0, out, c, count, m0, shift, y_zero_point, lo,
                          hi):
    if out.dtype == types.int32:
        def as_sums(sums, xp, w, start, n0, out, c, count, m0, shift, y_zero_point, lo, hi):
            broadcast_tile(sums, xp, w, start, n0)
            for j in range(BROADCAST_ROWS):
                out[n0 + j, c:c + count] = sums[j, :count]
        return as_sums

    def requantized(sums, xp, w, start, n0, out, c, count, m0, shift, y_zero_point, lo, hi):
        broadcast_tile_rq(xp, w, start, n0, m0, shift, np.int64(y_zero_point), np.int64(lo),
                          np.int64(hi), out, c, count)
    return requantized


@njit(cache=True, inline="always")
def _packed_rows(x, k_words):
    """x (M, K) packed into chunks of BROADCAST_PIXELS pixels for the tiles, (chunks, k_words,
    BROADCAST_PIXELS) int32 (pack_chunk; one parallel loop). Words past K/4 are left unset: the
    AMX tile's padded weights are zero there."""
    M, K = x.shape
    chunks = (M + BROADCAST_PIXELS - 1) // BROADCAST_PIXELS
    xp = words_on_lines(chunks * k_words * BROADCAST_PIXELS).reshape((chunks, k_words,
                                                                   BROADCAST_PIXELS))
    xw, flip = x.view(np.int32), sign_flip(x)
    for ci in prange(chunks):
        c = ci * BROADCAST_PIXELS
        pack_chunk_jit(xw, c, min(BROADCAST_PIXELS, M - c), xp[ci, :K // 4], flip)
    return xp


@njit(cache=True, inline="always")
def _packed_planar(xt3, k_words):
    """_packed_rows's chunks from x transposed, image by image: xt3 (B, K, M), each image's chunks
    after the last one's (pack_planar_chunk)."""
    B, K, M = xt3.shape
    per_image = (M + BROADCAST_PIXELS - 1) // BROADCAST_PIXELS
    chunks = B * per_image
    xp = words_on_lines(chunks * k_words * BROADCAST_PIXELS).reshape((chunks, k_words,
                                                                   BROADCAST_PIXELS))
    flip = sign_flip(xt3)
    for ci in prange(chunks):
        c = ci % per_image * BROADCAST_PIXELS
        pack_planar_chunk_jit(xt3[ci // per_image], c, min(BROADCAST_PIXELS, M - c),
                              xp[ci, :K // 4], flip)
    return xp


@njit(cache=True, inline="always")
def _chunk_dot(chunk, lane, wn):
    """Σ_k (byte k of pixel ``lane``'s words in one packed chunk (K/4, BROADCAST_PIXELS))·wn[k]:
    the tile's sum without its start (the bytes are unsigned: int8 x arrives as x + 128, which
    unsigned_bias's start takes back)."""
    s = np.int32(0)
    for k4 in range(wn.shape[0] // 4):
        v = np.int32(chunk[k4, lane])
        for b in range(4):
            s += ((v >> (8 * b)) & 0xFF) * np.int32(wn[4 * k4 + b])
    return s


@njit(cache=True, inline="always")
def _packed_dot(xp, p, wn):
    """_chunk_dot for pixel p of the packed chunks xp (chunks, K/4, BROADCAST_PIXELS)."""
    return _chunk_dot(xp[p // BROADCAST_PIXELS], p % BROADCAST_PIXELS, wn)


@njit(cache=True, inline="always")
def _broadcast_packed(xp, M, w, start, out, rq):
    """out = start + w @ xᵀ on the broadcast tile (kernels/_broadcast.py) from x's packed chunks
    xp (_packed_rows or _packed_planar), with _store_sums's epilogue: tasks of a chunk and a
    group of channels (one parallel loop), each tile of 4 channels stored as it is summed; the
    last N mod 4 channels by scalar dot products over the same words."""
    N = w.shape[0]
    m0, shift, y_zero_point, lo, hi = rq  # once: _store_sums takes scalars
    chunks, groups, per = _broadcast_tasks(M, N, 1)
    tiled = N - N % BROADCAST_ROWS
    for t in prange(chunks * groups):
        ci, g = t // groups, t % groups
        c = ci * BROADCAST_PIXELS
        count = min(BROADCAST_PIXELS, M - c)
        sums = words_on_lines(BROADCAST_ROWS * BROADCAST_PIXELS).reshape((BROADCAST_ROWS,
                                                                          BROADCAST_PIXELS))
        for n0 in range(g * per, min(tiled, (g + 1) * per), BROADCAST_ROWS):
            _tile_stored(sums, xp[ci], w, start, n0, out, c, count, m0, shift, y_zero_point, lo,
                         hi)
    if tiled < N:  # an empty parallel loop still costs a launch (1–2 µs, more with idle workers)
        for n in prange(tiled, N):
            sums_n = np.empty(M, np.int32)
            for m in range(M):
                sums_n[m] = start[n] + _packed_dot(xp, m, w[n])
            _store_sums(sums_n, out, n, 0, m0[n], shift[n], y_zero_point, lo, hi)


@njit(cache=True, inline="always")
def _broadcast_planar(xt3, w, start, out3, rq):
    """_broadcast_packed on x transposed, xt3 (B, K, M) (each image's xᵀ) into out3 (B, N, M),
    in one parallel loop over every image's tasks: each task packs its own chunk of pixels
    (pack_planar_chunk) into a buffer of its own, then runs its group of channels on it, and the
    last group also the last N mod 4 channels. Packing all chunks first had cost a second parallel
    loop, and each task then read a chunk that the other thread may have packed (docs/kernels.md,
    "The planar pointwise GEMM", has the figures). With several groups a chunk is packed once per
    group: K/4 × 64 words, a few KB. One loop for the batch: a loop per image had been eight
    launches per layer at batch 8, each with one to thirteen chunks on 7×7 to 28×28 planes."""
    B, K, M = xt3.shape
    N = w.shape[0]
    m0, shift, y_zero_point, lo, hi = rq  # once: _store_sums takes scalars
    per_image, groups, per = _broadcast_tasks(M, N, B)
    tiled = N - N % BROADCAST_ROWS
    flip = sign_flip(xt3)
    for t in prange(B * per_image * groups):
        ci, g = t // groups, t % groups
        b, c = ci // per_image, ci % per_image * BROADCAST_PIXELS
        xt, out = xt3[b], out3[b]
        count = min(BROADCAST_PIXELS, M - c)
        xp = np.empty((K // 4, BROADCAST_PIXELS), np.int32)
        pack_planar_chunk_jit(xt, c, count, xp, flip)
        sums = words_on_lines(BROADCAST_ROWS * BROADCAST_PIXELS).reshape((BROADCAST_ROWS,
                                                                          BROADCAST_PIXELS))
        for n0 in range(g * per, min(tiled, (g + 1) * per), BROADCAST_ROWS):
            _tile_stored(sums, xp, w, start, n0, out, c, count, m0, shift, y_zero_point, lo, hi)
        if g == groups - 1:  # the channels past the last whole tile, by dot products
            for n in range(tiled, N):
                for p in range(count):
                    sums[0, p] = start[n] + _chunk_dot(xp, p, w[n])
                _store_sums(sums[0, :count], out, n, c, m0[n], shift[n], y_zero_point, lo, hi)


@njit(cache=True, inline="always")
def _amx_packed(xp, M, N, wt, start, out3, rq, residual=None):
    """out3[b] = start + w @ x[b]ᵀ for each image b of out3 (B, N, M) on the AMX conv tile with
    one tap (kernels/_amx.py), from the images' packed chunks xp (_packed_rows or _packed_planar,
    wt.shape[1]·16 words per pixel, ⌈M/64⌉ per image) and w's padded tiles wt (1, K_pad/64,
    N_pad, 64), with _store_sums's epilogue: tasks of a chunk and a block of channels (one
    parallel loop over every image's), each block summed by one tile call and stored; with a
    ``residual`` (residual_parts' tuple, r of out3's shape), each stored chunk is added to r's in
    the same epilogue (_quads.store_chunk's QAdd), in the task that wrote it. Added afterwards, a
    parallel loop over rows had read, at two threads, half of each row from the other core
    (MobileNetV2's 192 → 32 1×1 convs at 28×28 with their residual, 0.028 ms at one thread, had
    taken 0.034–0.041 at two).

    Task order: a thread's share of the loop is a contiguous run of tasks. Taken chunk by chunk,
    two threads write the two ends of every row of out (a 14×14 plane: pixels 0–127 and
    128–195), and share a cache line at each end of each row; taken group by group, each writes
    whole rows, but reads the chunks the other one packed. Where the layer has at least as many
    channels as K (MobileNetV2's expand convs) the rows win: at 14×14, two threads, kernel alone,
    64→384 26.8 → 22.5 µs, 96→576 38.6 → 32.6; where K is larger (its project convs, 384→64 and
    576→96) the chunks' reads cost more (17.9 → 28.0, 25.4 → 41.9), and the order stays by chunk."""
    n_pad, k_pad = wt.shape[2], wt.shape[1] * 64
    m0, shift, y_zero_point, lo, hi = rq  # once: _store_sums takes scalars
    chunks = xp.shape[0]
    shape4 = (out3.shape[0], out3.shape[1], 1, out3.shape[2])
    out4, residual4 = out3.reshape(shape4), residual_planes(residual, shape4)
    groups, per = amx_tasks(n_pad, chunks)
    start_rows = start_rows_jit(start, n_pad)
    x_words = xp.reshape((chunks, k_pad // 4 * BROADCAST_PIXELS))  # the tile's flat words
    by_group = n_pad >= k_pad  # the task order (above)
    per_image = (M + BROADCAST_PIXELS - 1) // BROADCAST_PIXELS
    for t in prange(chunks * groups):
        if by_group:
            g, ci = t // chunks, t % chunks
        else:
            ci, g = t // groups, t % groups
        c = ci % per_image * BROADCAST_PIXELS
        count = min(BROADCAST_PIXELS, M - c)
        n_begin, sums = task_sums(g, per, n_pad)
        # the conv's tile with one tap: x tile row g of block kb is xp[ci] row 16·kb + g
        amx_conv_block(sums, x_words[ci], wt, start_rows, ONE_TAP, n_begin, 0, BROADCAST_PIXELS,
                       TILE_ROWS)
        _store_block(sums, min(N - n_begin, sums.shape[0]), out4, ci // per_image, n_begin, c,
                     count, m0, shift, y_zero_point, lo, hi, residual4)


@njit(cache=True, inline="always")
def _broadcast_gemm(x, w, bias, out, rq, w_sums):
    """_broadcast_packed on x (M, K)'s rows, packed here (bias' − 128·Σ_k w[n,k] for int8 x)."""
    xp = _packed_rows(x, x.shape[1] // 4)
    _broadcast_packed(xp, x.shape[0], w, unsigned_bias(x, w, bias, w_sums), out, rq)


@njit(cache=True, inline="always")
def _amx_gemm(x, w, bias, out, rq, w_sums, w_pad, residual=None):
    """_amx_packed on x (M, K)'s rows, packed here, and the plan's padded w (else padded now);
    the residual, if any, added in its epilogue."""
    wt = tile_weights(w, w_pad)                 # (1, K_pad/64, N_pad, 64)
    xp = _packed_rows(x, wt.shape[1] * 16)
    _amx_packed(xp, x.shape[0], w.shape[0], wt, unsigned_bias(x, w, bias, w_sums),
                as_images(out), rq, residual)


PIXELS_PER_CHUNK = 256
"""Rows of x per requantized chunk: a panel's int32 sums for them (W_ROWS_PER_TILE·256·4 = 4 KB)
stay in L1 between the tiles that write them and the requantization that reads them."""

GEMV_ROWS = 64
"""Rows of w per parallel task of a one-row GEMV (_gemv_rq): 16 tasks for 1000 classes."""


def _matmul_dense_rq_i8(x, w, bias, m0, shift, y_zero_point, lo, hi, y, residual=None,
                        w_sums=None, w_pad=None):
    # w (N,K) int8 @ x (M,K)ᵀ uint8|int8 + bias', requantized -> y (N,M) uint8|int8
    """y[n,m] = requantize(bias'[n] + Σ_k q_w[n,k]·q_x[m,k]): matmul_dense_i8 and then
    requantize_dense_i8 (m0, shift, y_zero_point, lo, hi as there) in one pass, the same bytes.

    The int32 sums never reach memory: per panel of W_ROWS_PER_TILE rows of w, PIXELS_PER_CHUNK
    rows of x at a time, the tiles write their sums to a small scratch that stays in L1, and the
    chunk is requantized from there into y. Unfused, a layer with a short K (MobileNetV2's 1×1
    convs: K = 16–32 against N = 96–192) wrote and read back 4 bytes per output where y takes 1.
    residual — None, or a QAdd of y and an (N,M) array fused into the epilogue: on the AMX tile
    each task's chunk as it is stored (_amx_packed), elsewhere once the rows are requantized
    (elementwise.residual_parts, add_residual_rows).
    w_sums — None, or Σ_k w[n,k] [N] int64, computed once by the plan: the broadcast tile's
    starting sums for int8 x (_broadcast.unsigned_bias), summed per call when None.
    Preconditions as matmul_dense_i8's and requantize_dense_i8's.
    Work: 2·M·N·K int ops and N·M requantizations; writes N·M bytes.
    """
    r, add = residual_parts(residual, y)
    rq = (m0, shift, y_zero_point, lo, hi)
    if AMX_RUNS and amx_fits(x, w):  # AMX, K % 4 == 0: the AMX tile, the residual in its end
        _amx_gemm(x, w, bias, y, rq, w_sums, w_pad, residual)
        return
    if BROADCAST_RUNS and broadcast_fits(x, w):  # AVX-512 VNNI, K % 4 == 0: the broadcast tile
        _broadcast_gemm(x, w, bias, y, rq, w_sums)
    elif x.shape[0] == 1:  # a classifier at batch 1
        _gemv_rq(x[0], w, bias, unsigned_bias(x, w, bias, w_sums), rq, y[:, 0])
    elif wide_fits(x, w):
        _wide_panels_rq(x, w, bias, rq, y)
    else:
        _panels_rq(x, w, bias, rq, y)
    add_residual_rows(y, r, add)


@njit(cache=True, inline="always")
def _panels_rq(x, w, bias, rq, y):
    """matmul_dense_rq_i8 on the dot-product tile: per panel of W_ROWS_PER_TILE rows of w (one
    parallel loop), PIXELS_PER_CHUNK rows of x at a time, summed into an L1 scratch and
    requantized from there."""
    M, K = x.shape
    m0, shift, y_zero_point, lo, hi = rq
    for p in prange((w.shape[0] + W_ROWS_PER_TILE - 1) // W_ROWS_PER_TILE):
        n = p * W_ROWS_PER_TILE
        w_panel, bias_panel = w[n:n + W_ROWS_PER_TILE], bias[n:n + W_ROWS_PER_TILE]
        sums = np.empty((W_ROWS_PER_TILE, PIXELS_PER_CHUNK), np.int32)
        for c in range(0, M, PIXELS_PER_CHUNK):
            x_chunk = x[c:c + PIXELS_PER_CHUNK]
            width = x_chunk.shape[0]
            _panel(x_chunk, w_panel, bias_panel, sums, 0, K)
            for j in range(w_panel.shape[0]):
                requantize_row(sums[j, :width], m0[n + j], shift[n + j], y_zero_point, lo,
                               hi, y[n + j, c:c + width])


@njit(cache=True, inline="always")
def _wide_panels_rq(x, w, bias, rq, y):
    """_panels_rq on the widened tile (x widened once, each panel of w into its own scratch); the
    last N mod 8 rows of w by the narrow panels."""
    M, K = x.shape
    N = w.shape[0]
    m0, shift, y_zero_point, lo, hi = rq
    x16 = _widened_rows(x)
    panels = N // WIDE_W_ROWS
    for p in prange(panels + (1 if N % WIDE_W_ROWS else 0)):
        n = p * WIDE_W_ROWS
        rows = min(WIDE_W_ROWS, N - n)
        w16 = np.empty((WIDE_W_ROWS, K), np.int16)
        if rows == WIDE_W_ROWS:
            _widen_panel(w, n, w16)
        sums = np.empty((WIDE_W_ROWS, PIXELS_PER_CHUNK), np.int32)
        for c in range(0, M, PIXELS_PER_CHUNK):
            width = min(PIXELS_PER_CHUNK, M - c)
            if rows == WIDE_W_ROWS:
                _wide_panel(x16, x, w16, w, bias, sums, n, c, c + width, K)
            else:  # the last N mod 8 rows, 4 at a time
                for j4 in range(0, rows, W_ROWS_PER_TILE):
                    _panel(x[c:c + width], w[n:], bias[n:], sums, j4, K)
            for j in range(rows):
                requantize_row(sums[j, :width], m0[n + j], shift[n + j], y_zero_point, lo,
                               hi, y[n + j, c:c + width])


@njit(cache=True, inline="always")
def _gemv_rq(x0, w, bias, start, rq, y0):
    """matmul_dense_rq_i8 for one row of x (a classifier at batch 1): tasks of GEMV_ROWS rows of
    w; per 4 rows, the GEMV tile (_gemv.py: vpdpbusd over 64-byte steps of x and the rows, from
    ``start``, unsigned_bias's), requantized as they are made; the last N mod 4 rows, and every
    row on a CPU without VNNI, by _dot from bias'. One thread, kernel alone, w in L2 / evicted
    from it: MobileNetV2's 1280 → 1000 classifier took 0.093 / 0.105 ms in the panels (their
    scratch per 4 rows, rows of one value requantized), 0.080 / 0.084 as dot products per row
    (_dot, vectorized by LLVM), 0.017 / 0.057 on the tile; ResNet-18's 512 → 1000 0.044 / 0.046,
    0.033 / 0.035, 0.010 / 0.031."""
    m0, shift, y_zero_point, lo, hi = rq
    N, K = w.shape
    flip = np.int64(sign_flip(x0)) & 0xFF  # int8 x read as x + 128
    for t in prange((N + GEMV_ROWS - 1) // GEMV_ROWS):
        sums = np.empty(GEMV_TILE_ROWS, np.int32)
        n_begin, n_end = t * GEMV_ROWS, min(N, (t + 1) * GEMV_ROWS)
        tiled = n_begin + (n_end - n_begin) // GEMV_TILE_ROWS * GEMV_TILE_ROWS \
            if GEMV_TILE_RUNS else n_begin  # no VNNI: _dot for every row
        for n0 in range(n_begin, tiled, GEMV_TILE_ROWS):
            gemv_tile(sums, x0, w, start, n0, flip)
            for j in range(GEMV_TILE_ROWS):
                y0[n0 + j] = requantize_one(sums[j], m0[n0 + j], shift[n0 + j], y_zero_point,
                                            lo, hi)
        for n in range(tiled, n_end):
            acc = np.int32(bias[n] + _dot(x0, w[n], K))  # as the panels' int32 sums
            y0[n] = requantize_one(acc, m0[n], shift[n], y_zero_point, lo, hi)


matmul_dense_rq_i8 = njit(cache=True, parallel=True, nogil=True)(_matmul_dense_rq_i8)


def _matmul_planar_rq_i8(xt, w, bias, m0, shift, y_zero_point, lo, hi, y, residual=None,
                         w_sums=None, w_pad=None):
    # w (N,K) int8 @ xt (K,M) uint8|int8 + bias', requantized -> y (N,M) uint8|int8
    """matmul_dense_rq_i8 on x given transposed, xt = xᵀ (K, M): the same bytes, for a 1×1
    stride-1 conv whose planar input (C, H·W) is xt as it stands.

    The tiles read x packed in 4-byte words of 4 values of k per pixel. From planar input one
    pass makes those words (pack_planar_chunk: 4 rows of xt interleaved), where the rows' form
    needed a channels-last copy of the input and then the packing, two transposes: on
    MobileNetV2's 144→24 1×1 conv at 56×56, 0.26 ms of copies became 0.025 ms. Then the AMX tile
    (K ≥ AMX_MIN_K, K % 4 == 0) or the broadcast tile (AVX-512 VNNI, K % 4 == 0) as in
    matmul_dense_rq_i8; elsewhere xt is copied to rows and matmul_dense_rq_i8's dot-product
    tile runs (the plan takes this kernel only where a tile runs).
    A batch of images goes in one call: xt (B, K, M), y (B, N, M), the residual's r like y. On
    AMX every image's chunks share one parallel loop; on MobileNetV2 at batch 8 the pointwise
    convs had been eight calls per layer, and those on 7×7 to 28×28 planes gained nothing from a
    second thread (one to thirteen chunks a call).
    xt [K,M] or [B,K,M] uint8|int8 — x transposed, C-contiguous; the rest as
    matmul_dense_rq_i8's, with y [N,M] or [B,N,M] as xt.
    Work: 2·B·M·N·K int ops and B·N·M requantizations; reads xt once; writes B·N·M bytes.
    """
    r, add = residual_parts(residual, y)
    rq = (m0, shift, y_zero_point, lo, hi)
    xt3, y3 = as_images(xt), as_images(y)
    x0 = xt3[0]  # one image's (K, M): what the tiles' fit and the starting sums look at
    if AMX_RUNS and amx_fits_planar(x0, w):  # every image's chunks in one loop, the residual too
        wt = tile_weights(w, w_pad)
        _amx_packed(_packed_planar(xt3, wt.shape[1] * 16), xt3.shape[2], w.shape[0], wt,
                    unsigned_bias(x0, w, bias, w_sums), y3, rq, residual)
        return
    if BROADCAST_RUNS and broadcast_fits_planar(x0, w):
        _broadcast_planar(xt3, w, unsigned_bias(x0, w, bias, w_sums), y3, rq)
    else:
        for b in range(xt3.shape[0]):
            _panels_rq(np.ascontiguousarray(xt3[b].T), w, bias, rq, y3[b])
    add_residual_rows(as_rows(y), as_rows(r), add)


matmul_planar_rq_i8 = njit(cache=True, parallel=True, nogil=True)(_matmul_planar_rq_i8)

# ---------------------------------------------------------------- float32, a few rows of x

_U = np.uint64

COLUMNS_PER_TASK_F32 = 128
"""Outputs per parallel task of matmul_dense_f32: eight zmm (sixteen ymm) of float32."""


def _matmul_dense_f32(x, w, b, y, lo, hi):
    # x (M,K) @ w (K,N) + b -> y (M,N), M small (a classifier at batch 1)
    """y[m,n] = clamp(b[n] + Σ_k x[m,k]·w[k,n], lo, hi), the sum in k's order, each product and
    sum rounded to float32 (no fused multiply-add): the same bytes on any number of threads, and
    as Python under NUMBA_DISABLE_JIT=1.

    The product of a few rows of x (a Gemm or MatMul below f32_dense.SGEMM_FROM_ROWS = 8 rows)
    streams w once, and its time is the time to read w: MobileNetV2's classifier, 1280 × 1000, is
    5 MB. Loop nest: prange tasks of COLUMNS_PER_TASK_F32 outputs n; per task, every row m's
    outputs start at b; then four values of k per pass (the outputs loaded and stored once per
    four, the last K mod 4 one at a time), the task's run of w's row k (contiguous) times x[m,k]
    added to each row's outputs in k's order, a loop over n that LLVM vectorizes (no reduction:
    each lane sums its own n). Two threads each read half of every row of w.
    x [M,K] float32, C-contiguous; w [K,N] float32, C-contiguous (the weights as (K,N));
    b [N] float32 (zeros if none); y [M,N] float32, C-contiguous, overwritten; lo, hi float32.
    Work: 2·M·K·N flops; reads w once (K·N·4 bytes).
    """
    M, K = x.shape
    N = w.shape[1]
    wf, yf = w.reshape(K * N), y.reshape(M * N)
    tasks = (N + COLUMNS_PER_TASK_F32 - 1) // COLUMNS_PER_TASK_F32
    for t in prange(tasks):
        n0 = _U(t * COLUMNS_PER_TASK_F32)  # unsigned: no wraparound test, so the loops vectorize
        count = min(_U(N) - n0, _U(COLUMNS_PER_TASK_F32))
        for m in range(_U(M)):
            row = m * _U(N) + n0
            for i in range(count):
                yf[row + i] = b[n0 + i]
        quads = _U(K) // _U(4)
        for q in range(quads):  # four values of k per pass: the outputs loaded and stored once
            k = q * _U(4)
            a0 = k * _U(N) + n0
            a1, a2, a3 = a0 + _U(N), a0 + _U(2 * N), a0 + _U(3 * N)
            for m in range(_U(M)):
                v0, v1, v2, v3 = x[m, k], x[m, k + _U(1)], x[m, k + _U(2)], x[m, k + _U(3)]
                row = m * _U(N) + n0
                for i in range(count):
                    s = yf[row + i] + v0 * wf[a0 + i]
                    s = s + v1 * wf[a1 + i]
                    s = s + v2 * wf[a2 + i]
                    yf[row + i] = s + v3 * wf[a3 + i]
        for k in range(quads * _U(4), _U(K)):
            at = k * _U(N) + n0
            for m in range(_U(M)):
                v, row = x[m, k], m * _U(N) + n0
                for i in range(count):
                    yf[row + i] = yf[row + i] + v * wf[at + i]
        for m in range(_U(M)):
            row = m * _U(N) + n0
            for i in range(count):
                yf[row + i] = min(max(yf[row + i], lo), hi)


matmul_dense_f32 = njit(cache=True, parallel=True, nogil=True)(_matmul_dense_f32)

KERNELS = {"matmul_dense_i8": matmul_dense_i8, "matmul_dense_rq_i8": matmul_dense_rq_i8,
           "matmul_planar_rq_i8": matmul_planar_rq_i8, "matmul_dense_f32": matmul_dense_f32}

_WITH_TILE: dict = {}


def gemm_with_tile(name: str):
    """matmul_dense_i8's loop around the tile variant TILES[name], whatever this CPU would choose:
    the tests run every variant on one machine (the portable tile on an AVX2 CPU, the NumPy model
    with the JIT on). "python" stays a Python function (its tile cannot be compiled; its _dot calls
    are); the others are compiled, parallel, and cached on disk as ``_matmul_dense_i8_<name>``.
    "avx2" needs an AVX2 CPU (HAS_AVX2), "vnni" a VNNI one (HAS_VNNI). "wide" is the widened
    tile (_wide_gemm, AVX2), its panel of N mod 4 rows on the avx2 tile."""
    gemm = _WITH_TILE.get(name)
    if gemm is None:
        panel = renamed_copy(_panel_loops, f"_{name}", _tile=TILES["avx2" if name == "wide"
                                                                   else name])
        if name != "python":
            panel = njit(cache=True)(panel)
        gemm = renamed_copy(_matmul_dense_i8, f"_{name}", _panel=panel,
                            broadcast_fits=never_fits,
                            wide_fits=always_wide if name == "wide" else never_fits)
        if name != "python":
            gemm = njit(cache=True, parallel=True, nogil=True)(gemm)
        _WITH_TILE[name] = gemm
    return gemm
