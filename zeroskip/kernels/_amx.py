"""The AMX tile, for CPUs with Intel AMX (``amx-tile`` and ``amx-int8``): the dense int8 conv's
(conv_amx.py) and, with one tap, the dense int8 GEMM's (matmul_dense.py).

    sums[j, p] = start[n0 + j] + Σ_t Σ_kb Σ_(g<16) Σ_(b<4) wt[t, kb, n0 + j, 4g + b]
                                 · byte_b(xg[(16·kb + g)·row_words + taps[t] + p0 + p])
    for j < rows (a multiple of AMX_ROWS), p < BROADCAST_PIXELS

AMX adds eight tile registers of 16 rows × 64 bytes, and ``tdpbsud`` (llvm.x86.tdpbsud) multiplies
two of them into a third: for a 16 × 64-byte tile A of signed bytes, a 16 × 64-byte tile B of
unsigned bytes and a 16 × 16 int32 tile C,

    C[i, j] += Σ_{r < 16} Σ_{b < 4} A[i, 4r + b] · B[r, 4j + b]

16·16·64 = 16 384 exact multiply-adds (int32 sums, no saturation) in one instruction, where a 512-bit
``vpdpbusd`` does 64. A is 16 output channels' weights at one tap, 64 bytes each (``wt``, packed by
the plan). B is 16 rows of 16 activation words, each word 4 input bytes of one position: row g at
``row_words``·g words from the tap's offset. For the conv the words are the packed input's
(``_quads.pack_group``), a row per channel group (for at most 4 channels a row per tap, gathered by
conv_amx.py); for the GEMM they are the broadcast tile's packed chunk (``_broadcast.pack_chunk``:
xp[k4, p] holds x[c + p, 4k4 : 4k4 + 4]), a row per 4 values of k. C is then 16 channels × 16
positions, already in the output's (channel, position) order.

One call sums a block of channels over 64 positions, 32 channels × 32 positions at a time: four C
tiles (tmm0–3), two of weights (tmm4–5), two of activations (tmm6–7). Per tap and block of 64
input bytes: 4 tile loads and 4 ``tdpbsud``. The C tiles start from the starting sums, loaded from
``start_rows`` (each channel's start repeated 16 times, one C row), and are stored into ``sums`` at
the end. ``amx_conv_block_loops`` is the same arithmetic in plain loops: the one to read first.

**Padding.** A tile reads whole 64-byte rows, so the weights are padded with zero rows to a multiple
of AMX_ROWS channels and with zeros to whole blocks of 64 input bytes (``pad_weights``,
conv_amx.pack_tap_weights, once per layer by the plan). The activation rows past the real ones
hold whatever was there and meet only zero weights, so they add nothing.

**The OS.** Linux hands out AMX's 8 KB of tile state only to processes that ask for it
(``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``, Linux 5.16 on). ``AVAILABLE`` is true only
when the CPU has AMX and the request succeeded; ``RUNS`` when the JIT is on as well. Every other CPU
keeps the broadcast tile (_broadcast.py), the quad tile or the dot-product tiles, which give the
same integers.

**Without AMX** (AMD Zen 4 and 5, Intel CPUs without AMX or whose OS refuses it), a CPU with
AVX-512 VNNI runs the conv on the VNNI tile instead (``_vnni_conv_ir``): the same packed weights
and input, 4 output channels × 64 positions in 16 zmm accumulators, ``vpdpbusd`` on each
channel's broadcast weight word. ``conv_block`` is the tile the conv runs.

The leading underscore keeps the kernel collector (``kernels/__init__.py``) from looking here: helpers
only. docs/kernels.md, "conv2d_dense_rq_i8", has the figures.
"""

from __future__ import annotations

import ctypes
import sys

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._broadcast import (BROADCAST_MIN_ROWS, BROADCAST_PIXELS, LANES, PIXEL_VECTORS, channel_groups,
                         declare_dpbusd, is_8bit, splat, store_accumulators)
from ._cpu import FEATURES, HAS_AVX512_VNNI
from ._scratch import words_on_lines

AMX_ROWS = 32
"""Output channels per pass of the tile: two C tiles of 16 rows."""
AMX_K = 64
"""Values of k per tile step: one 64-byte tile row."""
TILE_ROWS = 16
TILE_BYTES = 64
AMX_MIN_K = 64
"""The GEMM's shortest K for the AMX tile: one whole tile row. Below it the broadcast tile is
faster (one thread, planar 1×1 convs, best of 7 × 20 calls: 16 → 96 at 112×112 0.44 ms on AMX
against 0.25, 24 → 144 at 56×56 0.16 against 0.10). From 64 on, since the tile's sums go through
the convs' IR epilogue (``matmul_dense._store_block``), AMX is as fast or faster: MobileNetV2's
1×1 shapes with K = 64–160, 0.07–0.46 ms each, 0.718 ms together on the broadcast tile, 0.623 on
AMX (144 → 24 at 56×56 0.076 → 0.060, 160 → 960 at 7×7 0.046 → 0.029). It had been 192 while the
sums were stored per channel through Numba loops (the stem's K = 148 at M = 12 544 1.75 against
1.59 ms then)."""

_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_SYS_ARCH_PRCTL = 158  # x86-64


def _request_tiles() -> bool:
    """Ask Linux for the AMX tile state (a no-op once granted); whether it was granted."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


HAS_AMX = HAS_AVX512_VNNI and bool(FEATURES.get("amx-tile", False)
                                   and FEATURES.get("amx-int8", False))
"""The CPU has AMX tiles and their int8 products (Sapphire Rapids and later)."""

AVAILABLE = HAS_AMX and _request_tiles()
"""An AMX CPU, and tile state granted to this process by the OS: plans take the AMX conv."""

RUNS = AVAILABLE and not numba.config.DISABLE_JIT
"""Whether the AMX tile runs here: AVAILABLE and the JIT (LLVM IR does not run as Python; the conv
then runs ``amx_conv_block_loops``)."""


def _config() -> bytes:
    """The 64-byte tile configuration: palette 1, all eight tiles 16 rows × 64 bytes."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1                                             # palette 1
    cfg[16:32].view(np.uint16)[:] = TILE_BYTES             # bytes per row, tiles 0-7
    cfg[48:56] = TILE_ROWS                                 # rows, tiles 0-7
    return cfg.tobytes()


_i8, _i64 = ir.IntType(8), ir.IntType(64)
_i8p = _i8.as_pointer()


def _declare(builder, name, args):
    return builder.module.declare_intrinsic(name, fnty=ir.FunctionType(ir.VoidType(), args))


def _configure(builder):
    """LLVM IR: ldtilecfg from a constant of _config()'s bytes; returns (load, store, product)."""
    config = cgutils.global_constant(builder, ".zeroskip_amx_config",
                                     ir.Constant(ir.ArrayType(_i8, 64), bytearray(_config())))
    builder.call(_declare(builder, "llvm.x86.ldtilecfg", [_i8p]), [builder.bitcast(config, _i8p)])
    return (_declare(builder, "llvm.x86.tileloadd64", [_i8, _i8p, _i64]),
            _declare(builder, "llvm.x86.tilestored64", [_i8, _i8p, _i64]),
            _declare(builder, "llvm.x86.tdpbsud", [_i8, _i8, _i8]))


def _typed(*pairs) -> bool:
    """Whether each (Numba type, dtype) pair is a C-contiguous array of that dtype: the intrinsics'
    operands (anything else: no match, and Numba reports the call)."""
    return all(isinstance(a, types.Array) and a.dtype == dtype and a.layout == "C"
               for a, dtype in pairs)


def _release(builder):
    builder.call(_declare(builder, "llvm.x86.tilerelease", []), [])


def _block_signature(sums, xg, wt, start_rows, taps):
    """The conv tiles' Numba signature (sums, xg, wt, start_rows, taps, n0, p0, row_words, groups)
    for these array types, or None when they do not match (Numba then reports the call)."""
    if not (_typed((sums, types.int32), (xg, types.int32), (wt, types.int8),
                   (start_rows, types.int32), (taps, types.int64)) and wt.ndim == 4):
        return None
    return types.void(sums, xg, wt, start_rows, taps, types.intp, types.intp, types.intp,
                      types.intp)


def _block_arrays(context, builder, signature, args):
    """The conv tiles' five array arguments, as LLVM array structs."""
    return [context.make_array(signature.args[i])(context, builder, args[i]) for i in range(5)]


def _amx_conv_ir(a_tiles, b_tiles):
    """The conv's tile for a_tiles × b_tiles C tiles (16·a_tiles channels × 16·b_tiles positions
    per pass; a_tiles·b_tiles = 4): a_tiles tiles of w and the rest of the 8 for x, taken in turn.
    Only 2 × 2 is built: 1 × 4 (weights loaded once per 64 positions, but 5 loads per 4 products)
    was slower on every ResNet-18 and MobileNetV2 shape tried (docs/kernels.md)."""
    i8, i64, i8p = _i8, _i64, _i8p
    x_regs = 8 - 4 - a_tiles
    passes = BROADCAST_PIXELS // (16 * b_tiles)

    @intrinsic
    def amx_conv_block(typingctx, sums, xg, wt, start_rows, taps, n0, p0, row_words, groups):
        sig = _block_signature(sums, xg, wt, start_rows, taps)
        if sig is None:
            return None

        def codegen(context, builder, signature, args):
            sa, xa, wa, ba, ta = _block_arrays(context, builder, signature, args)
            n0_v, p0_v, row_words_v = args[5:8]  # groups: the tile reads whole blocks anyway
            load, store, product = _configure(builder)
            rows = cgutils.unpack_tuple(builder, sa.shape)[0]
            n_taps, k_blocks, n_pad = cgutils.unpack_tuple(builder, wa.shape)[:3]
            tap_stride = cgutils.unpack_tuple(builder, ta.strides)[0]
            x_pitch = builder.mul(row_words_v, i64(4))                # bytes between x tile rows
            block_bytes = builder.mul(x_pitch, i64(TILE_ROWS))        # 16 rows
            s_pitch = i64(BROADCAST_PIXELS * 4)
            xb, wb = builder.bitcast(xa.data, i8p), builder.bitcast(wa.data, i8p)
            sb, bb = builder.bitcast(sa.data, i8p), builder.bitcast(ba.data, i8p)
            tb = builder.bitcast(ta.data, i8p)
            with cgutils.for_range(builder, builder.udiv(rows, i64(16 * a_tiles))) as block:
                j0 = builder.mul(block.index, i64(16 * a_tiles))
                n = builder.add(n0_v, j0)
                starts = [builder.gep(bb, [builder.mul(builder.add(n, i64(16 * a)), i64(64))])
                          for a in range(a_tiles)]
                for part in range(passes):
                    first = part * 16 * b_tiles                       # the pass's first position
                    for a in range(a_tiles):
                        for b in range(b_tiles):
                            builder.call(load, [i8(a * b_tiles + b), starts[a], i64(64)])
                    with cgutils.for_range(builder, n_taps) as tap:
                        offset = builder.load(builder.bitcast(
                            builder.gep(tb, [builder.mul(tap.index, tap_stride)]),
                            i64.as_pointer()))
                        word = builder.add(builder.add(offset, p0_v), i64(first))
                        x_tap = builder.gep(xb, [builder.mul(word, i64(4))])
                        w_tap = builder.mul(builder.mul(tap.index, k_blocks), n_pad)
                        with cgutils.for_range(builder, k_blocks) as kb:
                            w_rows = builder.mul(builder.add(builder.add(
                                w_tap, builder.mul(kb.index, n_pad)), n), i64(TILE_BYTES))
                            for a in range(a_tiles):
                                builder.call(load, [i8(4 + a), builder.gep(wb, [builder.add(
                                    w_rows, i64(16 * a * TILE_BYTES))]), i64(TILE_BYTES)])
                            x_rows = builder.gep(x_tap, [builder.mul(kb.index, block_bytes)])
                            for b in range(b_tiles):
                                reg = i8(4 + a_tiles + b % x_regs)
                                builder.call(load, [reg, builder.gep(x_rows, [i64(64 * b)]),
                                                    x_pitch])
                                for a in range(a_tiles):
                                    builder.call(product, [i8(a * b_tiles + b), i8(4 + a), reg])
                    for a in range(a_tiles):
                        for b in range(b_tiles):
                            row = builder.mul(builder.add(j0, i64(16 * a)), s_pitch)
                            column = i64((first + 16 * b) * 4)
                            builder.call(store, [i8(a * b_tiles + b),
                                                 builder.gep(sb, [builder.add(row, column)]),
                                                 s_pitch])
            _release(builder)
            return context.get_dummy_value()

        return sig, codegen

    return amx_conv_block


def amx_conv_block_loops(sums, xg, wt, start_rows, taps, n0, p0, row_words, groups):
    """The conv's tile in plain loops, the same integers: the one to read first, and what the conv
    runs where neither the AMX nor the VNNI tile can (no AVX-512 VNNI, or NUMBA_DISABLE_JIT=1).
    Activation bytes unsigned, weight bytes signed; the int32 sums wrap as tdpbsud's do. ``groups``:
    the rows of the last block of 16 that hold weights (the ones past it are zero)."""
    for j in range(sums.shape[0]):
        for p in range(BROADCAST_PIXELS):
            sums[j, p] = start_rows[n0 + j, 0]
    blocks = wt.shape[1]
    for t in range(wt.shape[0]):
        for kb in range(blocks):
            for g in range(TILE_ROWS if kb < blocks - 1 else groups):  # one row of the x tile
                base = (TILE_ROWS * kb + g) * row_words + taps[t] + p0
                for j in range(sums.shape[0]):              # one row of the w tile
                    w = wt[t, kb, n0 + j, 4 * g:4 * g + 4]
                    if w[0] == 0 and w[1] == 0 and w[2] == 0 and w[3] == 0:
                        continue
                    for p in range(BROADCAST_PIXELS):
                        a = xg[base + p]
                        sums[j, p] += (np.int32(a & 0xFF) * w[0] + np.int32((a >> 8) & 0xFF) * w[1]
                                       + np.int32((a >> 16) & 0xFF) * w[2]
                                       + np.int32((a >> 24) & 0xFF) * w[3])


amx_conv_block_portable = njit(cache=True)(amx_conv_block_loops)

amx_conv_block = _amx_conv_ir(2, 2) if RUNS else amx_conv_block_portable
"""The conv's tile, as a Numba intrinsic: sums (rows, BROADCAST_PIXELS) int32 ← start[n0 + j] +
Σ over taps t and blocks kb of 16 channel groups: wt[t, kb, n0 + j] · the packed input's words
xg[(16·kb + g)·row_words + taps[t] + p0 + p] (conv_amx.py; rows a multiple of AMX_ROWS)."""


def gather_taps_loops(xt, xg, taps, p0):
    """xt[t·64 + p] = xg[taps[t] + p0 + p] for every tap t and p < BROADCAST_PIXELS: one chunk's
    words of each tap of a conv of at most 4 input channels, a row of the x tile each (rows of 64
    words, as the GEMM's packed chunk; conv_amx.py). The plain loops: the one to read first."""
    for t in range(taps.shape[0]):
        for p in range(BROADCAST_PIXELS):
            xt[t * BROADCAST_PIXELS + p] = xg[taps[t] + p0 + p]


@intrinsic
def _gather_taps_ir(typingctx, xt, xg, taps, p0):
    """gather_taps_loops in LLVM IR: per tap, 4 unaligned zmm loads and 4 stores. Numba's loop
    did not vectorize (one chunk of the 7×7 stem's 49 taps: 0.4 µs; the stem's 202 chunks 0.17 ms
    in-model); LLVM keeps a vector load and store as they are written."""
    if not (_typed((xt, types.int32), (xg, types.int32), (taps, types.int64)) and xt.ndim == 1
            and xg.ndim == 1):
        return None
    sig = types.void(xt, xg, taps, types.intp)

    def codegen(context, builder, signature, args):
        ta, xa, oa = (context.make_array(signature.args[i])(context, builder, args[i])
                      for i in range(3))
        vec = ir.VectorType(ir.IntType(32), LANES)
        n_taps = cgutils.unpack_tuple(builder, oa.shape)[0]
        with cgutils.for_range(builder, n_taps) as tap:
            start = builder.add(builder.load(builder.gep(oa.data, [tap.index])), args[3])
            src = builder.bitcast(builder.gep(xa.data, [start]), vec.as_pointer())
            dst = builder.bitcast(builder.gep(ta.data, [builder.mul(
                tap.index, _i64(BROADCAST_PIXELS))]), vec.as_pointer())
            for v in range(PIXEL_VECTORS):
                builder.store(builder.load(builder.gep(src, [_i64(v)]), align=4),
                              builder.gep(dst, [_i64(v)]), align=4)
        return context.get_dummy_value()

    return sig, codegen


def gather_taps(xt, xg, taps, p0):
    """gather_taps_loops; compiled, the IR copy (``_gather_taps_ir``: plain vector loads and
    stores, which LLVM lowers to whatever widths the CPU has)."""
    gather_taps_loops(xt, xg, taps, p0)


@overload(gather_taps)
def _gather_taps_compiled(xt, xg, taps, p0):
    return lambda xt, xg, taps, p0: _gather_taps_ir(xt, xg, taps, p0)


VNNI_ROWS = 4
"""Output channels per pass of the VNNI tile: 4 channels × 4 zmm of 16 positions, 16
accumulators (4, 5 and 6 ran alike; docs/kernels.md, "Without AMX: the VNNI tile")."""


def _vnni_conv_ir(rows):
    """The conv's tile where AVX-512 VNNI runs and AMX does not: the same sums as the AMX tile,
    from the same packed weights, as an outer product in zmm registers. For each pass of ``rows``
    channels, every (tap, block, group) step loads the 64 positions' words of one channel group
    (4 zmm at the tap's offset, ``row_words``·(16·kb + g) further), broadcasts each channel's
    weight word wt[t, kb, n, 4g : 4g + 4] and adds their 4-byte dot products with ``vpdpbusd``:
    per step 4 loads, ``rows`` broadcasts and 4·rows products into 4·rows accumulators. The
    groups past ``groups`` in the last block hold zero weights and are skipped (the stem's 49
    gathered taps fill 1 row of the last block). The sums' rows must be a multiple of ``rows``
    (the tasks hand out blocks of AMX_ROWS)."""
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), _i64
    vec = ir.VectorType(i32, LANES)

    @intrinsic
    def vnni_conv_block(typingctx, sums, xg, wt, start_rows, taps, n0, p0, row_words, groups):
        sig = _block_signature(sums, xg, wt, start_rows, taps)
        if sig is None:
            return None

        def codegen(context, builder, signature, args):
            sa, xa, wa, ba, ta = _block_arrays(context, builder, signature, args)
            n0_v, p0_v, row_words_v, groups_v = args[5:]
            dpbusd = declare_dpbusd(builder)
            n_rows = cgutils.unpack_tuple(builder, sa.shape)[0]
            n_taps, k_blocks, n_pad = cgutils.unpack_tuple(builder, wa.shape)[:3]
            tap_stride = cgutils.unpack_tuple(builder, ta.strides)[0]
            start_stride = cgutils.unpack_tuple(builder, ba.strides)[0]
            tb, bb = builder.bitcast(ta.data, i8.as_pointer()), builder.bitcast(ba.data, _i8p)
            wb = builder.bitcast(wa.data, _i8p)
            last_block = builder.sub(k_blocks, i64(1))
            accs = [[cgutils.alloca_once(builder, vec) for _ in range(PIXEL_VECTORS)]
                    for _ in range(rows)]
            with cgutils.for_range(builder, builder.udiv(n_rows, i64(rows))) as block:
                j0 = builder.mul(block.index, i64(rows))
                n = builder.add(n0_v, j0)
                for j in range(rows):
                    start = builder.load(builder.bitcast(builder.gep(bb, [builder.mul(
                        builder.add(n, i64(j)), start_stride)]), i32.as_pointer()))
                    for v in range(PIXEL_VECTORS):
                        builder.store(splat(builder, start), accs[j][v])
                with cgutils.for_range(builder, n_taps) as tap:
                    offset = builder.load(builder.bitcast(
                        builder.gep(tb, [builder.mul(tap.index, tap_stride)]), i64.as_pointer()))
                    x_tap = builder.gep(xa.data, [builder.add(offset, p0_v)])
                    w_tap = builder.mul(tap.index, k_blocks)
                    with cgutils.for_range(builder, k_blocks) as kb:
                        count = builder.select(builder.icmp_unsigned("==", kb.index, last_block),
                                               groups_v, i64(TILE_ROWS))
                        w_block = builder.mul(builder.add(builder.mul(builder.add(
                            w_tap, kb.index), n_pad), n), i64(TILE_BYTES))
                        first_row = builder.mul(kb.index, i64(TILE_ROWS))
                        with cgutils.for_range(builder, count) as g:
                            row = builder.mul(builder.add(first_row, g.index), row_words_v)
                            x_row = builder.bitcast(builder.gep(x_tap, [row]), vec.as_pointer())
                            xs = [builder.load(builder.gep(x_row, [i64(v)]), align=4)
                                  for v in range(PIXEL_VECTORS)]
                            w_word = builder.add(w_block, builder.mul(g.index, i64(4)))
                            for j in range(rows):
                                address = builder.gep(wb, [builder.add(w_word,
                                                                       i64(j * TILE_BYTES))])
                                weights = splat(builder, builder.load(
                                    builder.bitcast(address, i32.as_pointer()), align=1))
                                for v in range(PIXEL_VECTORS):
                                    builder.store(builder.call(dpbusd, [
                                        builder.load(accs[j][v]), xs[v], weights]), accs[j][v])
                out = builder.bitcast(builder.gep(sa.data, [builder.mul(
                    j0, i64(BROADCAST_PIXELS))]), vec.as_pointer())
                store_accumulators(builder, accs, out)
            return context.get_dummy_value()

        return sig, codegen

    return vnni_conv_block


VNNI_RUNS = HAS_AVX512_VNNI and not numba.config.DISABLE_JIT
"""Whether the VNNI tile runs here: an AVX-512 VNNI CPU, and the JIT."""

vnni_conv_block = _vnni_conv_ir(VNNI_ROWS) if VNNI_RUNS else amx_conv_block_portable

CONV_AVAILABLE = AVAILABLE or HAS_AVX512_VNNI
"""Whether plans take the dense int8 conv (conv_amx.py): AMX granted, or AVX-512 VNNI. The CPU's
flags and the OS's leave only, not the JIT, so that a plan picks the same kernels with
NUMBA_DISABLE_JIT=1 (where the conv runs the plain-loop tile)."""

conv_block = amx_conv_block if RUNS else vnni_conv_block
"""The dense int8 conv's tile (conv_amx.py): AMX tiles where the OS grants them, else the VNNI tile
on an AVX-512 VNNI CPU, else plain loops; all three give the same int32 sums."""


@njit(cache=True, inline="always")
def amx_tasks(n_pad, chunks):
    """(channel groups, channels per group) of the AMX GEMM's and conv's tasks for n_pad (padded)
    output channels and ``chunks`` chunks of positions: groups of whole AMX_ROWS blocks
    (_broadcast.channel_groups)."""
    groups, per = channel_groups(n_pad // AMX_ROWS, chunks)
    return groups, per * AMX_ROWS


@njit(cache=True, inline="always")
def task_sums(g, per, n_pad):
    """(first channel, int32 sums (channels, BROADCAST_PIXELS)) of the channel group g of
    ``amx_tasks``; the last group may have no channels."""
    first = g * per
    channels = max(0, min(n_pad, first + per) - first)
    return first, words_on_lines(channels * BROADCAST_PIXELS).reshape((channels, BROADCAST_PIXELS))


@njit(cache=True)
def start_rows_jit(start, n_pad):
    """(n_pad, 16) int32: each channel's starting sum repeated 16 times (one row of a C tile), zero
    past len(start). Serial loops: in a parallel kernel, a slice assignment inside a loop would
    become one parallel launch per channel. Every word written once, through a flat view (zeros
    and then the rows had written them twice: 1.64 → 0.81 µs at 384 channels, 6.5 → 2.9 at 1280,
    on every call of an AMX GEMM or conv)."""
    rows = np.empty((n_pad, 16), np.int32)
    flat = rows.reshape(-1)
    count = start.shape[0]
    for n in range(n_pad):
        value = start[n] if n < count else np.int32(0)
        for i in range(16):
            flat[16 * n + i] = value
    return rows


@njit(cache=True)
def pad_weights(w):
    """w (N, K) int8 as the AMX tile reads a GEMM's weights: the conv's tile layout for one tap,
    (1, ⌈K/64⌉, N_pad, 64) with wt[0, kb, n, c] = w[n, 64·kb + c], zero past K and past N (N_pad = N
    rounded up to AMX_ROWS)."""
    N, K = w.shape
    blocks = (K + AMX_K - 1) // AMX_K
    out = np.zeros((1, blocks, (N + AMX_ROWS - 1) // AMX_ROWS * AMX_ROWS, AMX_K), np.int8)
    for kb in range(blocks):
        for n in range(N):
            for c in range(min(AMX_K, K - kb * AMX_K)):
                out[0, kb, n, c] = w[n, kb * AMX_K + c]
    return out


ONE_TAP = np.zeros(1, np.int64)
"""The GEMM's tap offsets for the conv tile: one tap, at offset 0."""


def amx_fits(x, w):
    """Whether matmul_dense_*'s call on x (M, K), w takes the AMX tile: never as Python."""
    return False


def amx_fits_planar(xt, w):
    """amx_fits for x transposed, xt (K, M) (matmul_planar_rq_i8)."""
    return False


@njit(cache=True, inline="always")
def _shape_fits(M, K):
    return K % 4 == 0 and K >= AMX_MIN_K and M >= BROADCAST_MIN_ROWS


@overload(amx_fits)
def _amx_fits_compiled(x, w):
    if RUNS and is_8bit(x):
        return lambda x, w: _shape_fits(x.shape[0], x.shape[1])
    return lambda x, w: False


@overload(amx_fits_planar)
def _amx_fits_planar_compiled(xt, w):
    if RUNS and is_8bit(xt):
        return lambda xt, w: _shape_fits(xt.shape[1], xt.shape[0])
    return lambda xt, w: False


NO_PAD = np.zeros((1, 0, 0, AMX_K), np.int8)
"""The plan's ``w_pad`` for a GEMM that will not take the AMX tile: an empty array rather than None,
so that every layer's call has the same types (one compile of the GEMM, not two)."""


def tile_weights(w, w_pad):
    """w_pad when the plan made it (pad_weights, once per layer), else pad_weights(w) now (w_pad
    None or empty)."""
    return pad_weights(w) if w_pad is None or w_pad.size == 0 else w_pad


@overload(tile_weights)
def _tile_weights_compiled(w, w_pad):
    if w_pad is None or isinstance(w_pad, (types.NoneType, types.Omitted)):
        return lambda w, w_pad: pad_weights(w)
    return lambda w, w_pad: pad_weights(w) if w_pad.size == 0 else w_pad

TILES = {"loops": amx_conv_block_portable}
"""The conv tile variants this CPU runs, by name (the tests compare each with the reference)."""
if RUNS:
    TILES["amx"] = amx_conv_block
if VNNI_RUNS:
    TILES["vnni"] = vnni_conv_block
