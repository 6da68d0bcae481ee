"""The AMX tile of the dense int8 GEMM, for CPUs with Intel AMX (``amx-tile`` and ``amx-int8``).

    sums[j, p] = start[n0 + j] + Σ_k w[n0 + j, k] · x[c + p, k]
    for j < rows (a multiple of AMX_ROWS), p < BROADCAST_PIXELS

AMX adds eight tile registers of 16 rows × 64 bytes, and ``tdpbsud`` (llvm.x86.tdpbsud) multiplies
two of them into a third: for a 16 × 64-byte tile A of signed bytes, a 16 × 64-byte tile B of
unsigned bytes and a 16 × 16 int32 tile C,

    C[i, j] += Σ_{r < 16} Σ_{b < 4} A[i, 4r + b] · B[r, 4j + b]

16·16·64 = 16 384 exact multiply-adds (int32 sums, no saturation) in one instruction, where a 512-bit
``vpdpbusd`` does 64. Here A is 16 rows of w (16 output channels, 64 values of k: the weights as the
plan stores them, w[n, k], row after row), and B is 16 words of 16 pixels from the broadcast tile's
packed chunk (``_broadcast.pack_chunk``: xp[k4, p] holds x[c + p, 4k4 : 4k4 + 4], so row r of B is
xp[16s + r, 16q : 16q + 16], at xp's row pitch of 256 bytes). C is then 16 channels × 16 pixels,
already in the output's (channel, pixel) order.

One call sums a block of channels over a chunk of 64 pixels, 32 channels × 32 pixels at a time: four
C tiles (tmm0–3), two of w (tmm4–5), two of x (tmm6–7). Per 64 values of k: 4 tile loads and 4
``tdpbsud``. The C tiles start from the starting sums, loaded from ``start_rows`` (each channel's
start repeated 16 times, one C row), and are stored into ``sums`` at the end.

**Padding.** A tile reads whole 64-byte rows, so w is padded with zero rows to a multiple of AMX_ROWS
channels and with zero columns to a multiple of AMX_K values of k (``pad_weights``, once per layer by
the plan). The packed chunk then needs K_pad/4 rows; the rows past K/4 hold whatever was there,
and they meet only zero weights, so they add nothing.

**The OS.** Linux hands out AMX's 8 KB of tile state only to processes that ask for it
(``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``, Linux 5.16 on). ``RUNS`` is true only when
the CPU has AMX, the request succeeded, and the JIT is on. Every other CPU keeps the broadcast tile
(_broadcast.py) or the dot-product tiles (matmul_dense.py), which give the same integers.

The leading underscore keeps the kernel collector (``kernels/__init__.py``) from looking here: helpers
only. docs/kernels.md, "The AMX tile", has the figures.
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

from ._broadcast import BROADCAST_MIN_ROWS, BROADCAST_PIXELS
from ._cpu import FEATURES, HAS_AVX512_VNNI

AMX_ROWS = 32
"""Output channels per pass of the tile: two C tiles of 16 rows."""
AMX_K = 64
"""Values of k per tile step: one 64-byte tile row."""
AMX_PIXELS = 32
"""Pixels per pass of the tile: two C tiles of 16 columns; a chunk of BROADCAST_PIXELS takes two."""
TILE_ROWS = 16
TILE_BYTES = 64
AMX_MIN_K = 192
"""The GEMM's shortest K for the AMX tile. Below it the packing of x into words costs more than the
tile saves over the broadcast tile (one thread: the stem's K = 148 at M = 12 544 1.75 against
1.59 ms, K = 64 at M = 3136 0.25 against 0.23; K = 192 at M = 784 0.074 against 0.078, and from
K = 1024 on 1.4–1.6× faster)."""

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


def _release(builder):
    builder.call(_declare(builder, "llvm.x86.tilerelease", []), [])


def _amx_block_ir():
    i8, i64, i8p = _i8, _i64, _i8p

    @intrinsic
    def amx_block(typingctx, sums, xp, w, start_rows, n0):
        if not (isinstance(sums, types.Array) and sums.dtype == types.int32 and sums.layout == "C"
                and isinstance(xp, types.Array) and xp.dtype == types.int32 and xp.layout == "C"
                and isinstance(w, types.Array) and w.dtype == types.int8 and w.layout == "C"
                and isinstance(start_rows, types.Array) and start_rows.dtype == types.int32):
            return None
        sig = types.void(sums, xp, w, start_rows, types.intp)

        def codegen(context, builder, signature, args):
            sa, xa, wa, ba = (context.make_array(signature.args[i])(context, builder, args[i])
                              for i in range(4))
            n0_v = args[4]
            load, store, product = _configure(builder)
            rows = cgutils.unpack_tuple(builder, sa.shape)[0]
            k_bytes = cgutils.unpack_tuple(builder, wa.shape)[1]      # K_pad
            steps = builder.udiv(k_bytes, i64(AMX_K))
            x_pitch = i64(BROADCAST_PIXELS * 4)                        # bytes per xp row
            s_pitch = i64(BROADCAST_PIXELS * 4)                        # bytes per sums row
            xb = builder.bitcast(xa.data, i8p)
            wb = builder.bitcast(wa.data, i8p)
            sb = builder.bitcast(sa.data, i8p)
            bb = builder.bitcast(ba.data, i8p)
            blocks = builder.udiv(rows, i64(AMX_ROWS))
            with cgutils.for_range(builder, blocks) as block:
                j0 = builder.mul(block.index, i64(AMX_ROWS))
                n = builder.add(n0_v, j0)
                w_rows = [builder.gep(wb, [builder.mul(builder.add(n, i64(16 * a)), k_bytes)])
                          for a in range(2)]
                starts = [builder.gep(bb, [builder.mul(builder.add(n, i64(16 * a)), i64(64))])
                          for a in range(2)]
                for half in range(BROADCAST_PIXELS // AMX_PIXELS):
                    for a in range(2):
                        for b in range(2):
                            builder.call(load, [i8(2 * a + b), starts[a], i64(64)])
                    with cgutils.for_range(builder, steps) as step:
                        s = step.index
                        k0 = builder.mul(s, i64(AMX_K))
                        for a in range(2):
                            builder.call(load, [i8(4 + a), builder.gep(w_rows[a], [k0]), k_bytes])
                        x_row = builder.mul(builder.mul(s, i64(TILE_ROWS)), x_pitch)
                        for b in range(2):
                            column = i64((half * AMX_PIXELS + 16 * b) * 4)
                            builder.call(load, [i8(6 + b), builder.gep(xb, [builder.add(x_row,
                                                                                        column)]),
                                                x_pitch])
                        for a in range(2):
                            for b in range(2):
                                builder.call(product, [i8(2 * a + b), i8(4 + a), i8(6 + b)])
                    for a in range(2):
                        for b in range(2):
                            row = builder.mul(builder.add(j0, i64(16 * a)), s_pitch)
                            column = i64((half * AMX_PIXELS + 16 * b) * 4)
                            builder.call(store, [i8(2 * a + b),
                                                 builder.gep(sb, [builder.add(row, column)]),
                                                 s_pitch])
            _release(builder)
            return context.get_dummy_value()

        return sig, codegen

    return amx_block


def _amx_conv_ir(a_tiles, b_tiles):
    """The conv's tile for a_tiles × b_tiles C tiles (16·a_tiles channels × 16·b_tiles positions
    per pass; a_tiles·b_tiles = 4): a_tiles tiles of w and the rest of the 8 for x, taken in turn."""
    i8, i64, i8p = _i8, _i64, _i8p
    x_regs = 8 - 4 - a_tiles
    passes = BROADCAST_PIXELS // (16 * b_tiles)

    @intrinsic
    def amx_conv_block(typingctx, sums, xg, wt, start_rows, taps, n0, p0, stride):
        if not (isinstance(sums, types.Array) and sums.dtype == types.int32 and sums.layout == "C"
                and isinstance(xg, types.Array) and xg.dtype == types.int32 and xg.layout == "C"
                and isinstance(wt, types.Array) and wt.dtype == types.int8 and wt.layout == "C"
                and wt.ndim == 4
                and isinstance(start_rows, types.Array) and start_rows.dtype == types.int32
                and isinstance(taps, types.Array) and taps.dtype == types.int64):
            return None
        sig = types.void(sums, xg, wt, start_rows, taps, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            sa, xa, wa, ba, ta = (context.make_array(signature.args[i])(context, builder, args[i])
                                  for i in range(5))
            n0_v, p0_v, stride_v = args[5:]
            load, store, product = _configure(builder)
            rows = cgutils.unpack_tuple(builder, sa.shape)[0]
            n_taps, k_blocks, n_pad = cgutils.unpack_tuple(builder, wa.shape)[:3]
            tap_stride = cgutils.unpack_tuple(builder, ta.strides)[0]
            x_pitch = builder.mul(stride_v, i64(4))                   # bytes between groups
            block_bytes = builder.mul(x_pitch, i64(TILE_ROWS))        # 16 groups
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


def amx_conv_block_loops(sums, xg, wt, start_rows, taps, n0, p0, stride):
    """The conv's tile in plain loops, the same integers: the one to read first, and what the conv
    runs where the AMX tile cannot (no AMX, or NUMBA_DISABLE_JIT=1). Activation bytes unsigned,
    weight bytes signed; the int32 sums wrap as tdpbsud's do."""
    for j in range(sums.shape[0]):
        for p in range(BROADCAST_PIXELS):
            sums[j, p] = start_rows[n0 + j, 0]
    for t in range(wt.shape[0]):
        for kb in range(wt.shape[1]):
            for g in range(TILE_ROWS):                      # one row of the x tile
                base = (TILE_ROWS * kb + g) * stride + taps[t] + p0
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
xg[(16·kb + g)·stride + taps[t] + p0 + p] (conv_amx.py; rows a multiple of AMX_ROWS)."""


def _unavailable(sums, xp, w, start_rows, n0):
    raise RuntimeError("the AMX tile needs a CPU with AMX and the OS's leave to use it")


amx_block = _amx_block_ir() if RUNS else njit(cache=True)(_unavailable)
"""The tile, as a Numba intrinsic: sums (rows, BROADCAST_PIXELS) int32 ← start[n0 + j] + the
K_pad/AMX_K steps over xp (K_pad/4, BROADCAST_PIXELS) and w_pad's rows n0 .. n0 + rows (rows a
multiple of AMX_ROWS; start_rows (N_pad, 16) int32, each channel's start repeated)."""


@njit(cache=True)
def start_rows_jit(start, n_pad):
    """(n_pad, 16) int32: each channel's starting sum repeated 16 times (one row of a C tile), zero
    past len(start). Serial loops: in a parallel kernel, a slice assignment inside a loop would
    become one parallel launch per channel."""
    rows = np.zeros((n_pad, 16), np.int32)
    for n in range(start.shape[0]):
        for i in range(16):
            rows[n, i] = start[n]
    return rows


@njit(cache=True)
def pad_weights(w):
    """w (N, K) int8 with zero rows up to a multiple of AMX_ROWS and zero columns up to a multiple
    of AMX_K: the weights as the AMX tile reads them."""
    N, K = w.shape
    n_pad = (N + AMX_ROWS - 1) // AMX_ROWS * AMX_ROWS
    k_pad = (K + AMX_K - 1) // AMX_K * AMX_K
    out = np.zeros((n_pad, k_pad), np.int8)
    out[:N, :K] = w
    return out


def amx_fits(x, w):
    """Whether matmul_dense_*'s call on x, w takes the AMX tile: never as Python."""
    return False


@overload(amx_fits)
def _amx_fits_compiled(x, w):
    if RUNS and isinstance(x, types.Array) and x.dtype in (types.uint8, types.int8):
        return lambda x, w: (x.shape[1] % 4 == 0 and x.shape[1] >= AMX_MIN_K
                             and x.shape[0] >= BROADCAST_MIN_ROWS)
    return lambda x, w: False


NO_PAD = np.zeros((0, 0), np.int8)
"""The plan's ``w_pad`` for a GEMM that will not take the AMX tile: an empty array rather than None,
so that every layer's call has the same types (one compile of the GEMM, not two)."""


def tile_weights(w, w_pad):
    """w_pad when the plan made it (pad_weights, once per layer), else pad_weights(w) now (w_pad
    None or empty)."""
    return pad_weights(w) if w_pad is None or w_pad.shape[0] == 0 else w_pad


@overload(tile_weights)
def _tile_weights_compiled(w, w_pad):
    if w_pad is None or isinstance(w_pad, (types.NoneType, types.Omitted)):
        return lambda w, w_pad: pad_weights(w)
    return lambda w, w_pad: pad_weights(w) if w_pad.shape[0] == 0 else w_pad

TILES = {"loops": amx_conv_block_portable}
"""The conv tile variants this CPU runs, by name (the tests compare each with the reference)."""
if RUNS:
    TILES["amx"] = amx_conv_block
