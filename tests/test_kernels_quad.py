"""The quad-sparse int8 conv (kernels/conv_quad.py) against the integer reference, with every tile
this CPU runs: the vpdpbusd tile (AVX-512 VNNI) and the plain-loop tile (everywhere).

A quad is 4 weights of one output channel on 4 consecutive input channels at one tap; the plan
keeps the quads that hold a nonzero, by blocks of 4 output channels and classes of the channels
that share a quad column (engine/plan/weights.quad_blocks), and the kernel multiplies each with the
4 channels' interleaved activation bytes. The bytes must equal the reference's exactly:
for uint8 and int8 activations, extreme values, pads at the zero point, strides, dilations, groups,
a fused residual add, and a batch of several images.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kernel_checks as checks
from kernel_checks import assert_exact, extreme_values
from zeroskip.engine.plan.weights import quad_blocks
from zeroskip.kernels import KERNELS, _quads, conv_quad
from zeroskip.reference import REFERENCES
from zeroskip.reference.kernels.conv_quad import quads_to_dense

TYPE_RANGE = checks.TYPE_RANGE


def kernel_with_tile(name: str):
    """conv2d_quad_rq_i8 around the tile _quads.TILES[name], compiled serially; the kernel
    itself for the tile it runs."""
    return checks.kernel_with_tile(KERNELS["conv2d_quad_rq_i8"], conv_quad._conv2d_quad_rq_i8,
                                   "quad_tile", _quads.TILES, name)


def _geometry(H, W, kh, kw, s, p, d):
    oh = (H + 2 * p - d * (kh - 1) - 1) // s + 1
    ow = (W + 2 * p - d * (kw - 1) - 1) // s + 1
    hq, wq = oh + (kh - 1) * d // s, ow + (kw - 1) * d // s
    return oh, ow, hq, wq


def run_quad(case, density, x_type, seed, tile, residual=False, stride_pad=0, aligned=False):
    """The kernel (with ``tile``) and the reference on one random case, in the natural or the
    aligned layout of the packed input (_quads.quad_layout); returns (got, want)."""
    B, C, H, W, N, kh, kw, s, p, d, g = case
    rng = np.random.default_rng(seed)
    w, x, x_zp, bias, w_sums, m0, shift, y_type, lo, hi, y_zp = checks.random_conv_case(
        rng, (N, C // g, kh, kw), (B, C, H, W), density, x_type, seed)
    oh, ow, hq, wq = _geometry(H, W, kh, kw, s, p, d)
    cptr, qcols, wptr, words = quad_blocks(w, g)
    _, pitch, stride, copies, _ = _quads.quad_layout(oh, ow, kh, kw, s, s, d, d, C // 4, aligned)
    stride += stride_pad
    copy_words = C // 4 * stride + _quads.QUAD_SLACK
    offsets = _quads.quad_offsets(qcols, kh, kw, hq, pitch, s, s, d, d, stride, copies,
                                  copy_words)
    xg = np.full((B, copies * copy_words), -1, np.int32)
    y = np.full((B, N, oh, ow), 77, y_type)  # every byte must be written
    extra = ()
    want_residual = None
    if residual:
        r = extreme_values(rng, y.shape, *TYPE_RANGE[y_type]).astype(y_type)
        params = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)),
                  int(rng.integers(1, 2 ** 20)), int(rng.integers(1, 2 ** 20)), 20,
                  int(rng.integers(lo, hi + 1)), lo, hi)
        extra = ((r,) + params,)
        want_residual = (r,) + params
    kernel_with_tile(tile)(cptr, offsets, wptr, words, bias, w_sums, x, x_zp, xg, m0, shift, y_zp,
                           lo, hi, y, kh, kw, s, s, d, d, p, p, g, pitch, copies, *extra)
    want = REFERENCES["conv2d_quad_rq_i8"](
        cptr, qcols, wptr, words, bias, w_sums, x, x_zp, m0, shift, y_zp, lo, hi,
        kernel_shape=(kh, kw), strides=(s, s), pads=(p, p, p, p), dilations=(d, d), groups=g,
        residual=want_residual)
    return y, want


CASES = [
    # B, C, H, W, N, kh, kw, stride, pad, dilation, groups
    (1, 4, 5, 5, 1, 3, 3, 1, 1, 1, 1),       # one quad column group, one channel
    (1, 8, 9, 9, 5, 3, 3, 1, 1, 1, 1),       # N not a multiple of anything
    (2, 16, 10, 7, 6, 3, 3, 2, 1, 1, 1),     # two images, stride 2, a non-square plane
    (1, 16, 12, 12, 8, 1, 1, 1, 0, 1, 1),    # pointwise
    (1, 16, 14, 14, 12, 1, 1, 2, 0, 1, 1),   # 1×1 stride 2 (a ResNet downsample)
    (1, 16, 12, 12, 8, 3, 3, 1, 1, 1, 2),    # two groups of 8 channels
    (1, 8, 11, 11, 4, 3, 3, 1, 2, 2, 1),     # dilation 2
    (1, 12, 20, 20, 7, 7, 7, 2, 3, 1, 1),    # a 7×7 stride-2 stem-like conv
    (1, 32, 7, 7, 40, 3, 3, 1, 1, 1, 1),     # a 7×7 plane: one chunk of positions, channel blocks
    (1, 8, 30, 30, 3, 3, 3, 1, 1, 1, 1),     # several chunks, some starting in the dropped columns
    (1, 8, 3, 3, 2, 5, 5, 1, 2, 1, 1),       # a kernel larger than the input
    (1, 8, 9, 9, 10, 3, 3, 1, 1, 1, 2),      # groups of 5 output channels: blocks of 4 and of 1
    (1, 16, 6, 6, 9, 3, 3, 1, 1, 1, 1),      # blocks of 4, 4 and 1 channels
]


def _ids(case):
    B, C, H, W, N, kh, kw, s, p, d, g = case
    return f"B{B}C{C}{H}x{W}N{N}k{kh}x{kw}s{s}p{p}d{d}g{g}"


@pytest.mark.parametrize("aligned", [False, True], ids=["natural", "aligned"])
@pytest.mark.parametrize("tile", sorted(_quads.TILES))
@pytest.mark.parametrize("x_type", [np.uint8, np.int8])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_conv2d_quad_rq_i8_matches_the_reference(case, x_type, tile, aligned):
    for seed, density in enumerate((0.1, 0.5, 1.0)):
        got, want = run_quad(case, density, x_type, seed, tile, aligned=aligned)
        assert_exact(got, want, case=_ids(case), density=density, tile=tile, aligned=aligned)


@pytest.mark.parametrize("tile", sorted(_quads.TILES))
@pytest.mark.parametrize("case", [CASES[2], CASES[5], CASES[8]], ids=_ids)
def test_conv2d_quad_rq_i8_adds_the_residual_in_its_epilogue(case, tile):
    for seed, x_type in enumerate((np.uint8, np.int8, np.uint8)):
        got, want = run_quad(case, 0.3, x_type, seed, tile, residual=True, aligned=seed == 1)
        assert_exact(got, want, case=_ids(case), tile=tile)


def test_empty_weight_and_padded_group_stride():
    """A weight with no nonzero gives the requantized bias everywhere; words per group past the
    phases (the plan rounds them up to a cache line) change nothing."""
    got, want = run_quad(CASES[2], 0.0, np.uint8, 1, "loops")
    assert_exact(got, want)
    for tile in _quads.TILES:
        got, want = run_quad(CASES[5], 0.4, np.int8, 3, tile, stride_pad=13)
        assert_exact(got, want, tile=tile)


@given(case=st.tuples(st.integers(1, 2), st.sampled_from([4, 8, 12]), st.integers(1, 12),
                      st.integers(1, 12), st.integers(1, 9), st.integers(1, 4), st.integers(1, 4),
                      st.integers(1, 3), st.integers(0, 2), st.integers(1, 2), st.integers(1, 2)),
       density=st.sampled_from([0.05, 0.3, 1.0]), signed=st.booleans(), seed=st.integers(0, 99),
       aligned=st.booleans())
def test_conv2d_quad_rq_i8_on_random_shapes(case, density, signed, seed, aligned):
    B, C, H, W, N, kh, kw, s, p, d, g = case
    if C // g % 4 or N % g:
        g = 1
    if (H + 2 * p - d * (kh - 1) - 1) < 0 or (W + 2 * p - d * (kw - 1) - 1) < 0:
        return  # no output position: the conv itself is invalid (the plan refuses it)
    case = (B, C, H, W, N, kh, kw, s, p, d, g)
    for tile in _quads.TILES:
        got, want = run_quad(case, density, np.int8 if signed else np.uint8, seed, tile,
                             aligned=aligned)
        assert_exact(got, want, case=_ids(case), tile=tile, aligned=aligned)


@given(n=st.integers(1, 10), c4=st.integers(1, 4), kh=st.integers(1, 3), kw=st.integers(1, 3),
       groups=st.sampled_from([1, 2]), density=st.floats(0, 1), seed=st.integers(0, 99))
def test_quad_blocks_round_trip(n, c4, kh, kw, groups, density, seed):
    """quad_blocks keeps every nonzero, in words that decode (by the reference's own reading of the
    layout) to the weight itself; no word is empty; within a class the columns ascend and every
    channel of the class has a quad there, and no block holds a channel past its group's last."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, (n * groups, 4 * c4, kh, kw)).astype(np.int8)
    w[rng.random(w.shape) >= density] = 0
    cptr, qcols, wptr, words = quad_blocks(w, groups)
    blocks = groups * -(-n // 4)
    assert len(cptr) == 15 * blocks + 1 and len(wptr) == 15 * blocks
    assert cptr[0] == 0 and cptr[-1] == len(qcols) and np.all(np.diff(cptr) >= 0)
    assert np.all(words != 0) and len(words) == sum(
        bin(k % 15 + 1).count("1") * (cptr[k + 1] - cptr[k]) for k in range(15 * blocks))
    assert np.array_equal(quads_to_dense(cptr, qcols, wptr, words, n * groups, groups, 4 * c4, kh,
                                         kw), w)
    for k in range(15 * blocks):
        assert np.all(np.diff(qcols[cptr[k]:cptr[k + 1]]) > 0)
        if k + 1 < 15 * blocks:  # words of consecutive classes follow each other
            assert wptr[k + 1] == wptr[k] + bin(k % 15 + 1).count("1") * (cptr[k + 1] - cptr[k])


def test_quad_word_layout_by_hand():
    """Channel 4·c4 + b of tap (i, j) is byte b of quad column c4·kh·kw + i·kw + j; the channels of
    a block that share a column are one entry of their class, their words in channel order."""
    w = np.zeros((6, 8, 3, 3), np.int8)
    w[1, 5, 2, 1] = -7      # c4 = 1, byte 1, tap 2·3 + 1 = 7: column 9 + 7 = 16
    w[1, 4, 2, 1] = 100     # the same quad, byte 0
    w[0, 3, 0, 0] = -128    # c4 = 0, byte 3, column 0
    w[2, 0, 0, 0] = 1       # channel 2 shares column 0 with channel 0: class 0b101
    w[5, 0, 0, 0] = 2       # block 1 (channels 4, 5), channel 1 of it: class 0b10
    cptr, qcols, wptr, words = quad_blocks(w, 1)
    counts = np.diff(cptr).tolist()
    assert counts == [0, 1, 0, 0, 1] + [0] * 10 + [0, 1] + [0] * 13  # classes 0b10, 0b101; 0b10
    assert qcols.tolist() == [16, 0, 0]
    assert wptr[[1, 4, 16]].tolist() == [0, 1, 3]
    assert words.view(np.uint32).tolist() == [(0xF9 << 8) | 100, 0x80000000, 1, 2]


def test_quad_offsets_by_hand():
    """The stride-2 phases: tap (i, j) of a 3×3 conv reads phase (i mod 2, j mod 2), row i // 2,
    column j // 2; each 4 channels' words start ``stride`` words apart."""
    hq, wq, stride = 5, 6, 200
    qcols = np.array([0, 4, 8, 9 + 5], np.int64)  # taps (0,0), (1,1), (2,2); c4 = 1 tap (1,2)
    got = _quads.quad_offsets(qcols, 3, 3, hq, wq, 2, 2, 1, 1, stride)
    want = [0, (3 * hq + 0) * wq + 0, (0 * hq + 1) * wq + 1, stride + (2 * hq + 0) * wq + 1]
    assert got.tolist() == want


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_the_aligned_layout_puts_every_quad_on_a_cache_line(case):
    """In quad_layout's aligned layout every offset is a multiple of 16 words, in a copy that
    exists, and it names the word the natural offset names (copy s holds copy 0 from word s on);
    in both layouts groups are whole cache lines apart, never a multiple of 8 lines."""
    B, C, H, W, N, kh, kw, s, p, d, g = case
    oh, ow, hq, wq = _geometry(H, W, kh, kw, s, p, d)
    w = np.ones((N, C // g, kh, kw), np.int8)
    _, qcols, _, _ = quad_blocks(w, g)
    for aligned in (False, True):
        hq_, pitch, stride, copies, copy_words = _quads.quad_layout(oh, ow, kh, kw, s, s, d, d,
                                                                    C // 4, aligned)
        assert hq_ == hq and pitch >= wq and stride % 16 == 0 and stride // 16 % 8 != 0
        assert stride >= s * s * hq * pitch and copy_words == C // 4 * stride + _quads.QUAD_SLACK
        natural = _quads.quad_offsets(qcols, kh, kw, hq, pitch, s, s, d, d, stride)
        got = _quads.quad_offsets(qcols, kh, kw, hq, pitch, s, s, d, d, stride, copies,
                                  copy_words)
        if not aligned:
            assert copies == 1 and pitch == wq and np.array_equal(got, natural)
            continue
        assert pitch % 16 == 0 and np.all(got % 16 == 0) and np.all(got // copy_words < copies)
        assert np.array_equal(got % copy_words + got // copy_words, natural)


def test_used_phases_by_hand():
    """A 3×3 stride-2 conv reads all four phases, a 1×1 stride-2 conv only phase (0, 0), a 3×3
    stride-2 conv with dilation 2 only (0, 0) too, a 1×3 stride (1, 2) conv both column phases."""
    assert _quads.used_phases(3, 3, 2, 2, 1, 1) == 0b1111
    assert _quads.used_phases(1, 1, 2, 2, 1, 1) == 0b0001
    assert _quads.used_phases(3, 3, 2, 2, 2, 2) == 0b0001
    assert _quads.used_phases(1, 3, 1, 2, 1, 1) == 0b11
    assert _quads.used_phases(3, 3, 1, 1, 1, 1) == 1


def test_shift_copy_by_hand():
    xg = np.zeros(3 * 6, np.int32)
    xg[:6] = [1, 2, 3, 4, 5, 6]
    for s in (1, 2):
        _quads.shift_copy(xg, s, 6)
    assert xg.tolist() == [1, 2, 3, 4, 5, 6, 2, 3, 4, 5, 6, 0, 3, 4, 5, 6, 0, 0]
    pieces = np.zeros(3 * 6, np.int32)  # the same copies, piece by piece (the kernel's tasks)
    pieces[:6] = [1, 2, 3, 4, 5, 6]
    for s in (1, 2):
        for first in (4, 0, 3):  # overlapping, out of order, and one running past the end
            _quads.shift_copy(pieces, s, 6, first, first + 3)
    assert pieces.tolist() == xg.tolist()


def test_the_tile_wraps_modulo_2_to_the_32_like_vpdpbusd():
    """Both tiles give the same int32 sums, wrapped, when the true sum leaves int32 (the plan's
    bound keeps real layers inside it; the int8 path's x + 128 start relies on the wrap): every
    channel of a block, from class 0b1111 (all four) and from class 0b0100 (channel 2 alone)."""
    n = 70000  # 70000 · 4 · 255 · 128 > 2^31
    xg = np.full(n + 2 * _quads.QUAD_PIXELS, -1, np.int32)  # every byte 255
    offsets = np.zeros(2 * n, np.int64)
    cptr = np.zeros(16, np.int64)
    cptr[4:] = n       # class 0b0100: entries 0 .. n − 1
    cptr[15] = 2 * n   # class 0b1111: entries n .. 2n − 1
    wptr = np.zeros(15, np.int64)
    wptr[4:] = n       # class 0b1111's words after class 0b0100's n
    words = np.full(5 * n, np.int32(-0x7F7F7F80), np.int32)  # every byte −128
    starts = np.array([2 ** 30, -5, 7, 0], np.int32)
    for name, tile in _quads.TILES.items():
        sums = np.empty((4, _quads.QUAD_PIXELS), np.int32)
        _run_tile(tile, sums, xg, offsets, wptr, words, cptr, starts)
        for c in range(4):
            want = int(starts[c]) + n * (2 if c == 2 else 1) * 4 * 255 * -128
            want = np.int32((want + 2 ** 31) % 2 ** 32 - 2 ** 31)
            assert np.all(sums[c] == want), (name, c)


_RUNNERS: dict = {}


def _run_tile(tile, sums, xg, offsets, wptr, words, cptr, starts):
    runner = _RUNNERS.get(tile)
    if runner is None:
        def run(sums, xg, offsets, wptr, words, cptr, starts):
            tile(sums, xg, offsets, wptr, words, cptr, 0, 0, starts[0], starts[1], starts[2],
                 starts[3])
        runner = _RUNNERS[tile] = run if numba.config.DISABLE_JIT else numba.njit(run)
    runner(sums, xg, offsets, wptr, words, cptr, starts)


def _store_forms():
    """The epilogue's forms, each as f(sums, j, n, b, p0, m0n, shift_n, zp, lo, hi, y, pitch,
    residual): the kernels' (_quads.store_chunk, the IR form on AVX-512 CPUs), the plain loops
    compiled (what CPUs without AVX-512 run) and as Python (NUMBA_DISABLE_JIT)."""
    def as_python(sums, j, n, b, p0, m0n, shift_n, zp, lo, hi, y, pitch, residual):
        first, rows = _quads.chunk_rows(p0, sums.shape[1], pitch, y.shape[2])
        _quads.store_chunk_loops(sums, j, n, b, p0, first, rows, m0n, shift_n, zp, lo, hi, y,
                                 pitch, residual)

    loops = numba.njit(_quads.store_chunk_loops)

    @numba.njit
    def compiled(sums, j, n, b, p0, m0n, shift_n, zp, lo, hi, y, pitch, residual):
        first, rows = _quads.chunk_rows(p0, sums.shape[1], pitch, y.shape[2])
        _quads.store_chunk(sums, j, n, b, p0, first, rows, m0n, shift_n, zp, lo, hi, y, pitch,
                           residual)

    @numba.njit
    def compiled_loops(sums, j, n, b, p0, m0n, shift_n, zp, lo, hi, y, pitch, residual):
        first, rows = _quads.chunk_rows(p0, sums.shape[1], pitch, y.shape[2])
        if residual is None:  # left out, as the kernels leave it when they have none (Omitted)
            loops(sums, j, n, b, p0, first, rows, m0n, shift_n, zp, lo, hi, y, pitch)
        else:
            loops(sums, j, n, b, p0, first, rows, m0n, shift_n, zp, lo, hi, y, pitch, residual)

    return {"compiled": compiled, "compiled loops": compiled_loops, "python": as_python}


STORE_FORMS = _store_forms()


ADD_PARAMS = {
    "ties": (5, -7, 1 << 20, 3 << 20, 21, 2, 1, -2),   # ties wherever d_a + 3·d_b is odd
    "wide": (-3, 200, (1 << 43) + (1 << 21) + 5, 1 << 44, 45, -1, 0, 0),  # both 22-bit halves
    # the 32-bit rounding (R in _quads.NARROW_ADD_SHIFTS) at its ends, with ties of both signs
    # and products whose low 22 bits are all zero (the borrow from H)
    "narrow ties": (5, -7, 1 << 29, 3 << 29, 30, 2, 1, -2),
    "narrow first": (0, 3, 3 << 22, 1 << 23, 24, 0, 0, 0),   # (3·d_a + 2·d_b) / 4
    "narrow last": (-3, 200, 1 << 44, 1 << 44, 53, 1, 0, 0),  # (d_a + d_b) / 512: ties at ±256
    "past narrow": (-3, 200, 1 << 44, (1 << 44) - 1, 54, 1, 0, 0),
}
"""QAdd parameters (a_zp, b_zp, A, B, R, y_zp, and lo, hi as offsets into the type's range)."""


@pytest.mark.parametrize("residual", [None, *ADD_PARAMS])
@pytest.mark.parametrize("form", sorted(STORE_FORMS))
@pytest.mark.parametrize("y_type", [np.uint8, np.int8])
@pytest.mark.parametrize("pitch, OH, OW", [(9, 7, 7), (16, 14, 14), (58, 56, 56), (5, 5, 5),
                                           (1, 70, 1), (30, 3, 28), (28, 28, 28), (7, 7, 7)])
def test_store_chunk_matches_requantize_one(pitch, OH, OW, y_type, form, residual):
    """The convs' epilogue (each form, ``_store_forms``) against requantize_one position by
    position: channels with a power-of-two multiplier (rounding ties of both signs: the general
    form) and tie-free ones (the short form), extreme sums; chunks that start anywhere in a row,
    span one to 16 rows per 16 positions (pitch 1 to 58), and run past the last row, and chunks
    of a plane with no dropped columns (pitch = OW: one run of y); only row
    p // pitch, column p mod pitch < OW of channel n of image b is written. With a residual (of
    the other 8-bit type than y, extreme values; multipliers whose sums tie, and ones that fill
    both 22-bit halves of the IR's split products, up to 2^44), each value is then qadd_value's
    sum with the residual's."""
    from zeroskip.kernels.elementwise import qadd_value
    from zeroskip.kernels.quant import requantize_one

    rng = np.random.default_rng(7)
    B, N, L = 2, 5, 64
    lo, hi = (0, 255) if y_type == np.uint8 else (-128, 127)
    sums = extreme_values(rng, (N, L), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
    sums[1] = np.arange(-32, 32) * 2 ** 19   # exact halves of 2^20: ties under m0 = 2^30, r = 51
    m0 = np.array([2 ** 30, 2 ** 30, 1_518_500_250, 2 ** 31 - 1, 1_073_741_825], np.int32)
    shift = np.array([40, 51, 45, 60, 33], np.int32)
    r_type = np.int8 if y_type == np.uint8 else np.uint8
    r = extreme_values(rng, (B, N, OH, OW), *((-128, 127) if r_type == np.int8 else (0, 255)))
    r = r.astype(r_type)
    if residual:
        a_zp, b_zp, a_mult, b_mult, shift_r, y_zp, lo_in, hi_in = ADD_PARAMS[residual]
        b_zp = int(np.clip(b_zp, *((-128, 127) if r_type == np.int8 else (0, 255))))
        a_zp = int(np.clip(a_zp, lo, hi))
        params = (a_zp, b_zp, a_mult, b_mult, shift_r, y_zp % 100, lo + lo_in, hi + hi_in)
    extra = (r,) + params if residual else None
    store = STORE_FORMS[form]
    last = (OH - 1) * pitch + OW  # positions of the plane; chunks start at multiples of 64
    for n in range(N):
        for b, p0 in ((0, 0), (1, 64 * ((last - 1) // 64)), (1, 64 * (last // 128))):
            y = np.full((B, N, OH, OW), 77, y_type)
            store(sums, n, n, b, p0, m0[n], shift[n], 3, lo, hi, y, pitch, extra)
            want = np.full((B, N, OH, OW), 77, y_type)
            for p in range(L):
                oh, ow = divmod(p0 + p, pitch)
                if oh < OH and ow < OW:
                    q = requantize_one(sums[n, p], m0[n], shift[n], 3, lo, hi)
                    want[b, n, oh, ow] = qadd_value(q, r[b, n, oh, ow], *params) if residual \
                        else q
            assert_exact(y, want, n=n, b=b, p0=p0)
