"""Requantization in LLVM IR: quant.requantize_row's arithmetic on vectors of int32 sums, for the
tiles that requantize in their registers (the broadcast GEMM tile, the int8 lane tile).

Two forms, the same bytes (docs/quantization.md §3):

- ``requantized``, the general one: the product, the nudge and the sign term in 64-bit lanes, then
  the zero point and the clamp, 8 values per zmm operation;
- ``requantized_tie_free``, for multipliers with which no sum can fall on a rounding tie
  (quant.tie_free, checked per channel at run time, a scalar branch): no sign term, and only the
  products are 64-bit; the shift by r is a shift by 32 (keeping the high words) and then by
  r − 32 in 32-bit lanes, so the zero point and the clamp take 16 values per operation. About 11
  instructions per 16 values against 22.

The leading underscore keeps the kernel collector (``kernels/__init__.py``) from looking here:
helpers only.
"""

from __future__ import annotations

from llvmlite import ir

LANES = 16
"""int32 values per zmm."""


def splat(builder, value, vector_type=None):
    """LLVM IR: ``value`` in every lane of ``vector_type`` (default <16 x i32>: the int32 ``value``
    in all LANES lanes, one vpbroadcastd)."""
    vec = vector_type or ir.VectorType(ir.IntType(32), LANES)
    undef = ir.Constant(vec, ir.Undefined)
    one = builder.insert_element(undef, value, ir.IntType(32)(0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(ir.IntType(32), vec.count),
                                                          [0] * vec.count))


def requantized(builder, s, m0, shift, nudge, y_zero_point, lo, hi):
    """LLVM IR: quant.requantize_row's arithmetic on a vector of int32 sums s, in 64-bit lanes:
    clamp(y_zp + (s·m0 + nudge − (s·m0 < 0)) >> shift, lo, hi), as int32 (the other operands are
    int64 vectors of s's lane count, a value per lane: a channel's, or one channel's in all of
    them; nudge = 2^(shift−1)). The sign-extended 32-bit products are what vpmuldq makes."""
    wide = ir.VectorType(ir.IntType(64), s.type.count)
    p = builder.mul(builder.sext(s, wide), m0)
    t = builder.ashr(builder.sub(builder.add(p, nudge), builder.zext(
        builder.icmp_signed("<", p, ir.Constant(wide, [0] * s.type.count)), wide)), shift)
    t = builder.add(t, y_zero_point)
    t = builder.select(builder.icmp_signed("<", t, lo), lo, t)
    t = builder.select(builder.icmp_signed(">", t, hi), hi, t)
    return builder.trunc(t, s.type)


def _constant(like, value):
    """An LLVM constant of ``like``'s type (an integer or a vector of integers): value everywhere."""
    if isinstance(like, ir.VectorType):
        return ir.Constant(like, [value] * like.count)
    return ir.Constant(like, value)


def tie_free(builder, m0, shift):
    """LLVM IR: quant.tie_free on int64 m0 and shift (scalars, or vectors giving an i1 per lane)."""
    ty = m0.type
    at_least = builder.icmp_signed(">=", shift, _constant(ty, 33))
    low = builder.select(at_least, builder.sub(shift, _constant(ty, 33)), _constant(ty, 0))
    bits = builder.and_(m0, builder.sub(builder.shl(_constant(ty, 2), low), _constant(ty, 1)))
    return builder.and_(at_least, builder.icmp_unsigned("!=", bits, _constant(ty, 0)))


def requantized_tie_free(builder, s, m0, shift, y_zero_point, lo, hi):
    """LLVM IR: ``requantized`` for lanes whose (m0, shift) are tie-free (quant.tie_free), in
    fewer instructions: s, m0, shift, y_zero_point, lo, hi are <16 x i32> vectors, a value per lane.
    The products are made by halves (vpmuldq: the even lanes, then the odd ones moved down), the
    nudge 2^(r−1) added in 64 bits, and of each sum only its high word kept (one shuffle of both
    halves), shifted right by r − 32, offset and clamped in 32-bit lanes, 16 at a time: the shift
    by 32 and then by r − 32 is the shift by r. With no tie, round half up is round half away, so
    the − [p < 0] term goes. About 11 instructions per 16 values, against 22 for ``requantized``."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    half, words = ir.VectorType(i64, s.type.count // 2), ir.VectorType(i32, s.type.count // 2)

    def parts(v):  # (even lanes, odd lanes) sign-extended to int64
        q = builder.bitcast(v, half)
        return (builder.sext(builder.trunc(q, words), half),
                builder.ashr(q, _constant(half, 32)))

    shifts = builder.bitcast(shift, half)
    nudges = (builder.shl(_constant(half, 1), builder.sub(builder.and_(shifts, _constant(
        half, 0xFFFFFFFF)), _constant(half, 1))),
        builder.shl(_constant(half, 1), builder.sub(builder.lshr(shifts, _constant(half, 32)),
                                                    _constant(half, 1))))
    sums = [builder.bitcast(builder.add(builder.mul(a, b), n), s.type)
            for a, b, n in zip(parts(s), parts(m0), nudges)]
    high = builder.shuffle_vector(sums[0], sums[1], ir.Constant(
        ir.VectorType(i32, s.type.count),
        [i + 1 + s.type.count * (i % 2) - i % 2 for i in range(s.type.count)]))
    t = builder.add(builder.ashr(high, builder.sub(shift, _constant(s.type, 32))), y_zero_point)
    t = builder.select(builder.icmp_signed("<", t, lo), lo, t)
    return builder.select(builder.icmp_signed(">", t, hi), hi, t)


FOLD_MAX_SHIFT = 54
"""The largest r for which ``requantized_bytes`` adds the zero point into the rounding's nudge
(y_zp·2^r + 2^(r−1)): the sum's high word |acc·m0 + y_zp·2^r + 2^(r−1)| / 2^32 < 2^30 + 255·2^22
+ 2^21 stays within int32 up to r = 54 (docs/quantization.md §3)."""


def _shuffle(builder, a, b, order):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), len(order)),
                                                    order))


def _high_words_shifted(builder, s, m0, nudge, low):
    """LLVM IR: ((s·m0 + nudge) >> 32) >> low for <16 x i32> s, with the channel's scalars m0 (an
    int32 value as i64), nudge (i64) and low = r − 32 (i32): vpmuldq on the even lanes and on the
    odd ones moved down, the nudge added in 64 bits, the high words of both gathered (vpermt2d)
    and shifted (vpsrad): 7 instructions for 16 values."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    half, words = ir.VectorType(i64, LANES // 2), ir.VectorType(i32, LANES // 2)
    q = builder.bitcast(s, half)
    m0_w, nudge_w = splat(builder, m0, half), splat(builder, nudge, half)
    sums = [builder.bitcast(builder.add(builder.mul(part, m0_w), nudge_w), s.type)
            for part in (builder.sext(builder.trunc(q, words), half),
                         builder.ashr(q, _constant(half, 32)))]
    high = _shuffle(builder, sums[0], sums[1], [i + 1 + LANES * (i % 2) - i % 2
                                                for i in range(LANES)])
    return builder.ashr(high, splat(builder, low))


def _declare_pack(builder, name, source_bits):
    source = ir.VectorType(ir.IntType(source_bits), 512 // source_bits)
    result = ir.VectorType(ir.IntType(source_bits // 2), 1024 // source_bits)
    return builder.module.declare_intrinsic(f"llvm.x86.avx512.{name}.512",
                                            fnty=ir.FunctionType(result, [source, source]))


def packed_bytes(builder, vectors, signed):
    """LLVM IR: 4 vectors of 16 int32 values (pixels 0–15, 16–31, 32–47, 48–63) as one <64 x i8>
    in pixel order, each value saturated to the byte type (int8 if ``signed``, else uint8): two
    vpackssdw to int16, one vpacksswb or vpackuswb to bytes (signed words to unsigned bytes:
    a value past 32 767 is still 255), and one vpermd, since the packs work within 128-bit lanes
    (lane L then holds 4 values of each vector; dword j of the result is source dword
    4·(j mod 4) + j div 4). 4 instructions for 64 values, where a vpmovdb per vector costs 2."""
    words = _declare_pack(builder, "packssdw", 32)
    to_bytes = _declare_pack(builder, "packsswb" if signed else "packuswb", 16)
    a = builder.call(words, vectors[:2])
    b = builder.call(words, vectors[2:])
    lanes = builder.bitcast(builder.call(to_bytes, [a, b]), ir.VectorType(ir.IntType(32), LANES))
    ordered = _shuffle(builder, lanes, lanes, [(j % 4) * 4 + j // 4 for j in range(LANES)])
    return builder.bitcast(ordered, ir.VectorType(ir.IntType(8), 4 * LANES))


def requantized_bytes(builder, vectors, m0, shift, y_zero_point, lo, hi, signed):
    """LLVM IR: quant.requantize_row's bytes for 64 sums of one channel (4 vectors of <16 x i32>,
    pixels in order), as one <64 x i8> in pixel order; m0, shift, y_zero_point, lo, hi are the
    channel's i64 scalars, ``signed`` the output type (int8, else uint8).

    Where the multiplier is tie-free (tie_free) and r ≤ FOLD_MAX_SHIFT, the zero point goes into
    the nudge, t = ((acc·m0 + y_zp·2^r + 2^(r−1)) >> 32) >> (r − 32): the floor shift of a sum
    that is y_zp·2^r larger is y_zp larger, so no add is left per vector. The packs saturate to
    the type's range, and the clamp to [lo, hi] ⊆ it is then one max and one min on all 64 bytes:
    7 instructions per 16 values and 6 per 64, against 11 per 16 (plus a store each) in
    ``requantized_tie_free``. Other multipliers take ``requantized`` per vector (64-bit lanes,
    clamped there) and the same packing. A scalar branch per call chooses."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    fast_case = builder.and_(tie_free(builder, m0, shift),
                             builder.icmp_signed("<=", shift, i64(FOLD_MAX_SHIFT)))
    result = ir.VectorType(ir.IntType(8), 4 * LANES)
    with builder.if_else(fast_case, likely=True) as (fast, general):
        with fast:
            nudge = builder.add(builder.shl(y_zero_point, shift),
                                builder.shl(i64(1), builder.sub(shift, i64(1))))
            low = builder.trunc(builder.sub(shift, i64(32)), i32)
            fast_bytes = packed_bytes(builder, [_high_words_shifted(builder, s, m0, nudge, low)
                                                for s in vectors], signed)
            fast_block = builder.block
        with general:
            wide = ir.VectorType(i64, LANES)
            ops = [splat(builder, v, wide) for v in (m0, shift, builder.shl(
                i64(1), builder.sub(shift, i64(1))), y_zero_point, lo, hi)]
            general_bytes = packed_bytes(builder, [requantized(builder, s, *ops)
                                                   for s in vectors], signed)
            general_block = builder.block
    merged = builder.phi(result)
    merged.add_incoming(fast_bytes, fast_block)
    merged.add_incoming(general_bytes, general_block)
    compare = builder.icmp_signed if signed else builder.icmp_unsigned
    lo_b, hi_b = (splat(builder, builder.trunc(v, ir.IntType(8)), result) for v in (lo, hi))
    t = builder.select(compare("<", merged, lo_b), lo_b, merged)
    return builder.select(compare(">", t, hi_b), hi_b, t)


def declare_masked_byte_load(builder, width=64):
    """LLVM IR: the AVX-512 BW masked load of ``width`` bytes, 64 or 16 (bit i of the mask, an
    i64 or an i16: byte i; the bytes masked off come from the passthrough vector, and no
    masked-off byte is read, so none faults)."""
    i8 = ir.IntType(8)
    window = ir.VectorType(i8, width)
    return builder.module.declare_intrinsic(
        f"llvm.x86.avx512.mask.loadu.b.{8 * width}",
        fnty=ir.FunctionType(window, [i8.as_pointer(), window, ir.IntType(width)]))


def lanes_below(builder, count):
    """LLVM IR: the i64 mask of lanes 0 .. count − 1 (count an i64 from 0 to 63; 64 would shift
    by the width): a masked load's or store's bits for a tail."""
    i64 = ir.IntType(64)
    return builder.sub(builder.shl(i64(1), count), i64(1))


def declare_masked_byte_store(builder, width=16):
    """LLVM IR: the AVX-512 BW masked store of ``width`` bytes, 16 or 64 (bit i of the i16 or
    i64 mask: byte i)."""
    i8 = ir.IntType(8)
    return builder.module.declare_intrinsic(
        f"llvm.x86.avx512.mask.storeu.b.{8 * width}",
        fnty=ir.FunctionType(ir.VoidType(), [i8.as_pointer(), ir.VectorType(i8, width),
                                             ir.IntType(width)]))


def lanes_up_to(builder, count):
    """LLVM IR: the i64 mask of lanes 0 .. count − 1 for count an i64 from 0 to 64 (64: every
    lane)."""
    i64 = ir.IntType(64)
    return builder.select(builder.icmp_signed(">=", count, i64(64)), i64(-1),
                          lanes_below(builder, count))



