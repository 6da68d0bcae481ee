"""The rows of a padded plane written with AVX-512 masked loads and stores, in one pass.

    dst[r, :] = fill, then dst[r, u : u + count] = src[sr, su : su + count]
    (each copied 8-bit value xor ``flip``, if given)

A padded plane (``_planes.pad_plane``) is mostly short rows: 7, 14 or 28 values at MobileNetV2's
small planes. A loop over so few values runs in its scalar remainder (the vector body wants 64
bytes at a time) and pays its setup for each row, so padding a 14×14 plane cost about 120 ns, as
much as the depthwise tile that then reads it. With AVX-512 BW, each 64 bytes of a padded row are
one load and one store under byte masks: the load takes the row's run of x, with ``fill`` in every
other byte (the masked load's pass-through), and the store writes the row's bytes in that chunk.
Bytes outside the masks are neither read nor written, so no load can fault past an array, and each
byte of the plane is written once.

``pad_row`` takes the masked form where the CPU has AVX-512 BW and the arrays are C-contiguous (the
planes of the kernels' workspaces and inputs), and the plain loops (``pad_row_loops``, the one to
read first) elsewhere, with the same result. The masked intrinsics are written by their x86 names
(``llvm.x86.avx512.mask.loadu.b.512``), which LLVM upgrades to its generic masked load and store
as it reads the IR, whatever that version's form of those is.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._cpu import FEATURES, HAS_AVX512

CHUNK = 64
"""Bytes per masked load and store: one zmm."""

RUNS = HAS_AVX512 and bool(FEATURES.get("avx512bw", False)) and not numba.config.DISABLE_JIT
"""Whether the masked rows run here: AVX-512 BW (byte masks), and the JIT."""


def pad_row_loops(dst, r, src, sr, su, u, count, fill, flip=None):
    """dst[r, :] = fill, then dst[r, u + k] = src[sr, su + k] (xor ``flip`` unless it is None) for
    k < count: the row in plain loops, on every CPU and for every layout."""
    for k in range(dst.shape[1]):
        dst[r, k] = fill
    if flip is None:
        for k in range(count):
            dst[r, u + k] = src[sr, su + k]
    else:
        for k in range(count):
            dst[r, u + k] = src[sr, su + k] ^ flip


pad_row_portable = njit(cache=True, inline="always")(pad_row_loops)


def _low_bits(builder, n):
    """An i64 with its n lowest bits set, for 0 ≤ n ≤ 64 (a shift by 64 is undefined in LLVM; the
    select takes all ones there)."""
    i64 = ir.IntType(64)
    shifted = builder.sub(builder.shl(i64(1), n), i64(1))
    return builder.select(builder.icmp_signed(">=", n, i64(CHUNK)), ir.Constant(i64, -1), shifted)


def _clamp(builder, n):
    """min(max(n, 0), 64) for an i64 n."""
    i64 = ir.IntType(64)
    n = builder.select(builder.icmp_signed("<", n, i64(0)), i64(0), n)
    return builder.select(builder.icmp_signed(">", n, i64(CHUNK)), i64(CHUNK), n)


def _splat_bytes(builder, value, size):
    """<64 x i8>: the ``size`` bytes of scalar ``value`` repeated (byte b = byte b mod size)."""
    width = size * 8
    bits = builder.bitcast(value, ir.IntType(width)) if not isinstance(value.type, ir.IntType) \
        else (value if value.type.width == width else builder.trunc(value, ir.IntType(width)))
    lanes = ir.VectorType(ir.IntType(width), CHUNK // size)
    one = builder.insert_element(ir.Constant(lanes, ir.Undefined), bits, ir.IntType(32)(0))
    spread = builder.shuffle_vector(one, ir.Constant(lanes, ir.Undefined),
                                    ir.Constant(ir.VectorType(ir.IntType(32), CHUNK // size),
                                                [0] * (CHUNK // size)))
    return builder.bitcast(spread, ir.VectorType(ir.IntType(8), CHUNK))


def _masked_ir():
    i8, i64 = ir.IntType(8), ir.IntType(64)
    chunk = ir.VectorType(i8, CHUNK)

    @intrinsic
    def pad_row_masked(typingctx, dst, r, src, sr, su, u, count, fill, flip):
        if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
                and dst.ndim == src.ndim == 2 and dst.layout == src.layout == "C"
                and dst.dtype == src.dtype and isinstance(fill, (types.Integer, types.Float))
                and (isinstance(flip, types.NoneType)
                     or (isinstance(flip, types.Integer) and dst.dtype.bitwidth == 8))):
            return None
        sig = types.void(dst, types.intp, src, types.intp, types.intp, types.intp, types.intp,
                         dst.dtype, flip)
        xor = isinstance(flip, types.Integer)

        def codegen(context, builder, signature, args):
            da, sa = (context.make_array(signature.args[i])(context, builder, args[i])
                      for i in (0, 2))
            r, sr, su, u, count, fill = args[1], args[3], args[4], args[5], args[6], args[7]
            size = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
            width = builder.mul(cgutils.unpack_tuple(builder, da.shape)[1], i64(size))
            d_pitch = cgutils.unpack_tuple(builder, da.strides)[0]
            s_pitch = cgutils.unpack_tuple(builder, sa.strides)[0]
            row = builder.gep(builder.bitcast(da.data, i8.as_pointer()), [builder.mul(r, d_pitch)])
            # byte j of dst's row is byte j + shift of the source pointer, for j in [lo, hi)
            lo, hi = builder.mul(u, i64(size)), builder.mul(builder.add(u, count), i64(size))
            shift = builder.sub(builder.add(builder.mul(sr, s_pitch), builder.mul(su, i64(size))),
                                lo)
            source = builder.bitcast(sa.data, i8.as_pointer())
            load = builder.module.declare_intrinsic(
                "llvm.x86.avx512.mask.loadu.b.512",
                fnty=ir.FunctionType(chunk, [i8.as_pointer(), chunk, i64]))
            store = builder.module.declare_intrinsic(
                "llvm.x86.avx512.mask.storeu.b.512",
                fnty=ir.FunctionType(ir.VoidType(), [i8.as_pointer(), chunk, i64]))
            fills = _splat_bytes(builder, fill, size)
            if xor:  # loaded bytes become x ^ flip, and the fill (flip ^ fill) ^ flip = fill
                flips = _splat_bytes(builder, args[8], 1)
                fills = builder.xor(fills, flips)
            chunks = builder.sdiv(builder.add(width, i64(CHUNK - 1)), i64(CHUNK))
            with cgutils.for_range(builder, chunks) as loop:
                at = builder.mul(loop.index, i64(CHUNK))
                keep = _low_bits(builder, _clamp(builder, builder.sub(width, at)))
                taken = builder.and_(
                    _low_bits(builder, _clamp(builder, builder.sub(hi, at))),
                    builder.not_(_low_bits(builder, _clamp(builder, builder.sub(lo, at)))))
                # a gep without inbounds: the pointer may lie before src, its bytes masked out
                values = builder.call(load, [builder.gep(source, [builder.add(shift, at)]),
                                             fills, taken])
                if xor:
                    values = builder.xor(values, flips)
                builder.call(store, [builder.gep(row, [at]), values, keep])
            return context.get_dummy_value()

        return sig, codegen

    return pad_row_masked


pad_row_masked = _masked_ir() if RUNS else None
"""The masked row as a Numba intrinsic (None where it cannot run)."""


def pad_row(dst, r, src, sr, su, u, count, fill, flip=None):
    """dst[r, :] = fill, then dst[r, u : u + count] = src[sr, su : su + count], each value xor
    ``flip`` unless it is None (module docstring). Compiled, the masked form where it runs and
    the arrays are C-contiguous, else the plain loops; as Python, the loops."""
    pad_row_loops(dst, r, src, sr, su, u, count, fill, flip)


@overload(pad_row, inline="always")
def _pad_row_compiled(dst, r, src, sr, su, u, count, fill, flip=None):
    if (RUNS and isinstance(dst, types.Array) and isinstance(src, types.Array)
            and dst.layout == src.layout == "C" and dst.dtype == src.dtype):
        def masked(dst, r, src, sr, su, u, count, fill, flip=None):
            pad_row_masked(dst, r, src, sr, su, u, count, dst.dtype.type(fill), flip)
        return masked

    if flip is None or isinstance(flip, (types.NoneType, types.Omitted)):
        # no flip, decided here: inlined, the loops' own ``flip is None`` is not pruned, and
        # typing its xor with None failed (every CPU without AVX-512 BW)
        def plain(dst, r, src, sr, su, u, count, fill, flip=None):
            pad_row_portable(dst, r, src, sr, su, u, count, fill)
        return plain

    def loops(dst, r, src, sr, su, u, count, fill, flip=None):
        pad_row_portable(dst, r, src, sr, su, u, count, fill, flip)
    return loops


def item_bytes(a):
    """Bytes per element of array a: compiled, a constant of a's type."""
    return a.itemsize


@overload(item_bytes, inline="always")
def _item_bytes_compiled(a):
    size = a.dtype.bitwidth // 8
    return lambda a: size


ROWS = {"loops": pad_row_portable}
"""The row writers this CPU runs, by name (the tests compare each with numpy)."""
if RUNS:
    ROWS["masked"] = pad_row_masked
