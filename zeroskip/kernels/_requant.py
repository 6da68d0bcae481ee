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

Both run per vector of 16 in the lane tiles (the depthwise row tile, the lanes convs). The tiles
whose vectors are 64 consecutive positions of one channel (the broadcast tile, the AMX and quad
convs' ``store_chunk``, the depthwise plane tile) take ``requantized_bytes``: the zero point
folded into the nudge and the 64 values packed to bytes at once. ``qadd_bytes`` is the residual
QAdd on 64 bytes with 16-bit products (docs/quantization.md §5).

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
    one = _constant(ir.VectorType(ir.IntType(64), s.type.count // 2), 1)
    nudges = [builder.shl(one, builder.sub(r, one)) for r in _halves(builder, shift)]
    high = _high_words(builder, s, _halves(builder, m0), nudges)
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


def _halves(builder, v):
    """The even and the odd lanes of <16 x i32> v, each sign-extended to <8 x i64> (what vpmuldq
    multiplies: the low words as they are, the odd ones moved down)."""
    half = ir.VectorType(ir.IntType(64), v.type.count // 2)
    q = builder.bitcast(v, half)
    return (builder.sext(builder.trunc(q, ir.VectorType(ir.IntType(32), v.type.count // 2)), half),
            builder.ashr(q, _constant(half, 32)))


def _high_words(builder, s, m0s, nudges):
    """LLVM IR: the high words of s·m0 + nudge in 64 bits, for <16 x i32> s, as <16 x i32>: m0s
    and nudges are the (even lanes, odd lanes) pairs of <8 x i64> factors and addends. Two
    vpmuldq, two 64-bit adds and one vpermt2d gathering the high words in lane order."""
    sums = [builder.bitcast(builder.add(builder.mul(part, m0), nudge), s.type)
            for part, m0, nudge in zip(_halves(builder, s), m0s, nudges)]
    count = s.type.count
    return _shuffle(builder, sums[0], sums[1], [i + 1 + count * (i % 2) - i % 2
                                                for i in range(count)])


def _high_words_shifted(builder, s, m0, nudge, low):
    """LLVM IR: ((s·m0 + nudge) >> 32) >> low for <16 x i32> s, with the channel's scalars m0 (an
    int32 value as i64), nudge (i64) and low = r − 32 (i32): ``_high_words`` and one vpsrad, 7
    instructions for 16 values."""
    half = ir.VectorType(ir.IntType(64), s.type.count // 2)
    m0_w, nudge_w = splat(builder, m0, half), splat(builder, nudge, half)
    return builder.ashr(_high_words(builder, s, (m0_w, m0_w), (nudge_w, nudge_w)),
                        splat(builder, low))


def fold_fits(builder, m0, shift):
    """LLVM IR: whether a channel's (m0, shift) (i64 scalars) take the zero point in the nudge:
    tie-free, and r ≤ FOLD_MAX_SHIFT."""
    return builder.and_(tie_free(builder, m0, shift),
                        builder.icmp_signed("<=", shift, ir.IntType(64)(FOLD_MAX_SHIFT)))


def folded_nudge(builder, shift, y_zero_point):
    """LLVM IR: (y_zp·2^r + 2^(r−1) as i64, r − 32 as i32) for ``requantized_folded``."""
    i64 = ir.IntType(64)
    nudge = builder.add(builder.shl(y_zero_point, shift),
                        builder.shl(i64(1), builder.sub(shift, i64(1))))
    return nudge, builder.trunc(builder.sub(shift, i64(32)), ir.IntType(32))


def requantized_folded(builder, s, m0, nudge, low, lo, hi):
    """LLVM IR: a vector of 16 int32 sums requantized with the zero point in the nudge
    (fold_fits; nudge, low from ``folded_nudge``, m0 an i64 scalar) and clamped to lo .. hi
    (<16 x i32>): 9 instructions for 16 values, where ``requantized_tie_free`` takes 10."""
    t = _high_words_shifted(builder, s, m0, nudge, low)
    t = builder.select(builder.icmp_signed("<", t, lo), lo, t)
    return builder.select(builder.icmp_signed(">", t, hi), hi, t)


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
    i64 = ir.IntType(64)
    result = ir.VectorType(ir.IntType(8), 4 * LANES)
    with builder.if_else(fold_fits(builder, m0, shift), likely=True) as (fast, general):
        with fast:
            nudge, low = folded_nudge(builder, shift, y_zero_point)
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


def lanes_clamped(builder, count, top=64):
    """LLVM IR: lanes_up_to(count) for any i64 count, taken as 0 below 0 and as ``top`` (at most
    64) above it: a masked access's lanes that lie before an end."""
    i64 = ir.IntType(64)
    count = builder.select(builder.icmp_signed("<", count, i64(0)), i64(0), count)
    return lanes_up_to(builder, builder.select(builder.icmp_signed(">", count, i64(top)),
                                               i64(top), count))


def lanes_between(builder, first, end):
    """LLVM IR: the i64 mask of lanes first .. end − 1 within 0 .. 63 (i64 bounds, any values): the
    lanes of a 64-byte access that fall in a row, wherever the row starts."""
    return builder.and_(lanes_clamped(builder, end), builder.not_(lanes_clamped(builder, first)))


QADD_SHIFTS = (31, 52)
"""The QAdd shifts R for which ``qadd_bytes`` runs (elementwise.qadd_value's arithmetic in 16-bit
products): quantmath.add_multipliers gives R = 43 − ⌊log₂ max(a_scale, b_scale)/y_scale⌋, 42–44
for a residual add of like scales. Others take the 64-bit form."""


def _lane_shuffle(builder, a, b, per_lane, half):
    """LLVM IR: vpunpckl* (half 0) or vpunpckh* (half 1) of a and b: in each 128-bit lane of
    ``per_lane`` elements, the elements of the lane's low (or high) half of a and b alternately."""
    count = a.type.count
    order = []
    for lane in range(count // per_lane):
        for i in range(per_lane // 2):
            at = lane * per_lane + half * per_lane // 2 + i
            order += [at, count + at]
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), len(order)),
                                                    order))


def qadd_bytes(builder, qa, qb, a_signed, b_signed, y_signed, params):
    """LLVM IR: elementwise.qadd_value on 64 pairs of bytes at once (qa, qb: <64 x i8>, of the
    operands' types), as one <64 x i8> of the output type: clamp(y_zp + round_half_away(p / 2^R),
    lo, hi) for p = (qa − a_zp)·A + (qb − b_zp)·B, exact for 0 ≤ A, B < 2^44 and R in
    QADD_SHIFTS (params: the i64 scalars a_zp, b_zp, A, B, R, y_zp, lo, hi).

    The differences d = q − zp fit int16, so each pair (d_a, d_b) sits in one 32-bit lane and
    ``vpmaddwd`` forms d_a·A_k + d_b·B_k for the 15-bit pieces A = A₂·2^30 + A₁·2^15 + A₀: three
    products per 16 lanes, each exact in int32 (< 2·255·2^15), where 32-bit ``vpmulld`` takes 2
    µops and the 64-bit product 3. With t_k the three sums, p = t₂·2^30 + t₁·2^15 + t₀; carrying
    t₀'s and then t₁'s high bits up gives p = H·2^30 + L with 0 ≤ L < 2^30, so p < 0 exactly when
    H < 0, and for s = R − 30 the rounding floor((p + 2^(R−1) − [p < 0]) / 2^R) is
    (H − δ + 2^(s−1) + y_zp·2^s) >> s with δ = [H < 0 and L = 0] (the −1 borrows from H only when
    L is 0), the zero point added there (|H| < 2^24, |y_zp|·2^s < 2^30 for s ≤ 22). Bytes become
    words and words pairs by in-lane unpacks (int8 bytes as q + 128, the zero point 128 higher),
    and the packs that turn the sums back into bytes undo exactly that order, saturating to the
    output type; the clamp to [lo, hi] is then one max and one min on the bytes."""
    i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
    bytes64, words, vec = (ir.VectorType(i8, 4 * LANES), ir.VectorType(i16, 2 * LANES),
                           ir.VectorType(i32, LANES))
    a_zp, b_zp, a_mult, b_mult, shift, y_zp, lo, hi = params
    zero = ir.Constant(bytes64, [0] * 4 * LANES)
    flip = splat(builder, i8(-128), bytes64)

    def differences(q, zp, signed):  # (low, high) halves of each lane, as int16 q − zp
        if signed:
            q, zp = builder.xor(q, flip), builder.add(zp, i64(128))
        zp_w = splat(builder, builder.trunc(zp, i16), words)
        return [builder.sub(builder.bitcast(_lane_shuffle(builder, q, zero, 16, half), words),
                            zp_w) for half in (0, 1)]

    da, db = differences(qa, a_zp, a_signed), differences(qb, b_zp, b_signed)
    pairs = [builder.bitcast(_lane_shuffle(builder, da[h], db[h], 8, half), words)
             for h in (0, 1) for half in (0, 1)]
    madd = builder.module.declare_intrinsic("llvm.x86.avx512.pmaddw.d.512",
                                            fnty=ir.FunctionType(vec, [words, words]))
    mask15 = i64((1 << 15) - 1)

    def piece(k):  # (A_k, B_k) in the words of every lane
        a_k = builder.and_(builder.lshr(a_mult, i64(15 * k)), mask15)
        b_k = builder.and_(builder.lshr(b_mult, i64(15 * k)), mask15)
        return builder.bitcast(splat(builder, builder.trunc(
            builder.or_(a_k, builder.shl(b_k, i64(16))), i32)), words)

    pieces = [piece(k) for k in range(3)]
    s = builder.sub(shift, i64(30))
    s_v = splat(builder, builder.trunc(s, i32))
    offset = splat(builder, builder.trunc(builder.add(
        builder.shl(i64(1), builder.sub(s, i64(1))), builder.shl(y_zp, s)), i32))
    low15, fifteen = splat(builder, i32((1 << 15) - 1)), splat(builder, i32(15))
    zero_v = ir.Constant(vec, [0] * LANES)
    results = []
    for pair in pairs:
        t0, t1, t2 = (builder.call(madd, [pair, pieces[k]]) for k in range(3))
        u1 = builder.add(t1, builder.ashr(t0, fifteen))
        high = builder.add(t2, builder.ashr(u1, fifteen))
        rest_zero = builder.icmp_signed("==", builder.or_(builder.and_(t0, low15),
                                                          builder.and_(u1, low15)), zero_v)
        borrow = builder.and_(rest_zero, builder.icmp_signed("<", high, zero_v))
        results.append(builder.ashr(builder.add(builder.sub(high, builder.zext(borrow, vec)),
                                                offset), s_v))
    to_words = builder.module.declare_intrinsic(
        "llvm.x86.avx512.packssdw.512", fnty=ir.FunctionType(words, [vec, vec]))
    to_bytes = builder.module.declare_intrinsic(
        f"llvm.x86.avx512.{'packsswb' if y_signed else 'packuswb'}.512",
        fnty=ir.FunctionType(bytes64, [words, words]))
    packed = builder.call(to_bytes, [builder.call(to_words, results[:2]),
                                     builder.call(to_words, results[2:])])
    compare = builder.icmp_signed if y_signed else builder.icmp_unsigned
    lo_b, hi_b = (splat(builder, builder.trunc(v, i8), bytes64) for v in (lo, hi))
    t = builder.select(compare("<", packed, lo_b), lo_b, packed)
    return builder.select(compare(">", t, hi_b), hi_b, t)
