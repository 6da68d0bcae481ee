"""The dense int8 conv over the packed input (kernels/conv_amx.py) and the dense GEMM's AMX tile
(kernels/_amx.py) against the integer reference, with every tile this CPU runs: the AMX tile (CPUs
with AMX whose OS grants it), the VNNI register tile (AVX-512 VNNI) and the plain-loop tile
(everywhere).

The bytes must equal the reference's exactly: uint8 and int8 activations, extreme values, pads at
the zero point, strides, dilations, input channels that fill no whole block of 64, output channels
that fill no whole block of 32, a fused residual add, and a batch of several images.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kernel_checks as checks
from kernel_checks import assert_exact, extreme_values
from zeroskip.kernels import KERNELS, _amx, _quads, conv_amx
from zeroskip.reference import REFERENCES
from zeroskip.reference.kernels.conv_amx import tiles_to_dense

TYPE_RANGE = checks.TYPE_RANGE


def kernel_with_tile(name: str):
    """conv2d_dense_rq_i8 around the tile _amx.TILES[name], compiled serially; the kernel
    itself for the tile it runs."""
    return checks.kernel_with_tile(KERNELS["conv2d_dense_rq_i8"], conv_amx._conv2d_dense_rq_i8,
                                   "conv_block", _amx.TILES, name)


def run_conv(case, density, x_type, seed, tile, residual=False, stride_pad=0, gathered=False):
    """The kernel (with ``tile``) and the reference on one random case; returns (got, want).
    ``gathered``: the taps gathered into the x tile's rows (at most 4 input channels)."""
    B, C, H, W, N, kh, kw, s, p, d = case
    rng = np.random.default_rng(seed)
    w, x, x_zp, bias, w_sums, m0, shift, y_type, lo, hi, y_zp = checks.random_conv_case(
        rng, (N, C, kh, kw), (B, C, H, W), density, x_type, seed)
    oh = (H + 2 * p - d * (kh - 1) - 1) // s + 1
    ow = (W + 2 * p - d * (kw - 1) - 1) // s + 1
    if gathered:
        wt = conv_amx.pack_gathered_weights(w)
        _, pitch, stride, _, _ = _quads.quad_layout(oh, ow, kh, kw, s, s, d, d, 1, False)
        xg = np.full((B, stride + stride_pad + _quads.QUAD_SLACK), -1, np.int32)
    else:
        wt = conv_amx.pack_tap_weights(w)
        groups4 = wt.shape[1] * _amx.TILE_ROWS
        _, pitch, stride, _, _ = _quads.quad_layout(oh, ow, kh, kw, s, s, d, d, groups4, False)
        xg = np.full((B, groups4 * (stride + stride_pad) + _quads.QUAD_SLACK), -1, np.int32)
    y = np.full((B, N, oh, ow), 77, y_type)  # every byte must be written
    extra, want_residual = (), None
    if residual:
        r = extreme_values(rng, y.shape, *TYPE_RANGE[y_type]).astype(y_type)
        params = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)),
                  int(rng.integers(1, 2 ** 20)), int(rng.integers(1, 2 ** 20)), 20,
                  int(rng.integers(lo, hi + 1)), lo, hi)
        extra, want_residual = ((r,) + params,), (r,) + params
    kernel_with_tile(tile)(wt, bias, w_sums, x, x_zp, xg, m0, shift, y_zp, lo, hi, y, kh, kw,
                           s, s, d, d, p, p, pitch, gathered, *extra)
    want = REFERENCES["conv2d_dense_rq_i8"](
        wt, bias, w_sums, x, x_zp, m0, shift, y_zp, lo, hi, kernel_shape=(kh, kw),
        strides=(s, s), pads=(p, p, p, p), dilations=(d, d), gathered=gathered,
        residual=want_residual)
    return y, want


CASES = [
    # B, C, H, W, N, kh, kw, stride, pad, dilation
    (1, 4, 5, 5, 1, 3, 3, 1, 1, 1),        # one channel group, one output channel
    (1, 64, 9, 9, 32, 3, 3, 1, 1, 1),      # one whole block of 64 channels, one of 32 outputs
    (2, 16, 10, 7, 40, 3, 3, 2, 1, 1),     # two images, stride 2, a non-square plane, N = 32 + 8
    (1, 68, 12, 12, 8, 1, 1, 1, 0, 1),     # pointwise, 64 + 4 channels: a block of one group
    (1, 16, 14, 14, 70, 1, 1, 2, 0, 1),    # 1×1 stride 2 (a ResNet downsample), N = 64 + 6
    (1, 8, 11, 11, 4, 3, 3, 1, 2, 2),      # dilation 2
    (1, 12, 20, 20, 7, 7, 7, 2, 3, 1),     # a 7×7 stride-2 conv
    (1, 128, 7, 7, 96, 3, 3, 1, 1, 1),     # a 7×7 plane: one chunk of positions, channel blocks
    (1, 8, 30, 30, 3, 3, 3, 1, 1, 1),      # several chunks, some starting in the dropped columns
    (1, 8, 3, 3, 2, 5, 5, 1, 2, 1),        # a kernel larger than the input
]


GATHERED_CASES = [
    # B, C, H, W, N, kh, kw, stride, pad, dilation: at most 4 input channels
    (1, 3, 30, 30, 64, 7, 7, 2, 3, 1),     # the stem: 7×7 stride 2 over 3 channels, 49 taps
    (2, 1, 9, 11, 5, 3, 3, 1, 1, 1),       # one channel, two images
    (1, 4, 12, 12, 40, 5, 5, 2, 2, 1),     # 4 channels, N = 32 + 8, 25 taps
    (1, 2, 10, 10, 33, 3, 3, 1, 2, 1),     # two channels, pads wider than the taps need
    (1, 3, 8, 8, 8, 1, 1, 1, 0, 1),        # 1×1: one tap
    (1, 3, 6, 40, 16, 1, 16, 1, 0, 1),     # 16 taps: one whole tile
    (1, 3, 30, 30, 32, 3, 3, 2, 1, 1),     # MobileNetV2's stem: 3×3 stride 2
    (1, 3, 13, 13, 8, 3, 3, 1, 2, 2),      # dilation 2
    (1, 1, 9, 40, 8, 1, 17, 1, 0, 1),      # 17 taps: a second tile of one row
]


def _ids(case):
    B, C, H, W, N, kh, kw, s, p, d = case
    return f"B{B}C{C}{H}x{W}N{N}k{kh}x{kw}s{s}p{p}d{d}"


@pytest.mark.parametrize("tile", sorted(_amx.TILES))
@pytest.mark.parametrize("x_type", [np.uint8, np.int8])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_conv2d_dense_rq_i8_matches_the_reference(case, x_type, tile):
    for seed, density in enumerate((1.0, 0.5, 0.1)):
        got, want = run_conv(case, density, x_type, seed, tile)
        assert_exact(got, want, case=_ids(case), density=density, tile=tile)


@pytest.mark.parametrize("tile", sorted(_amx.TILES))
@pytest.mark.parametrize("case", [CASES[2], CASES[4], CASES[7]], ids=_ids)
def test_conv2d_dense_rq_i8_adds_the_residual_in_its_epilogue(case, tile):
    for seed, x_type in enumerate((np.uint8, np.int8, np.uint8)):
        got, want = run_conv(case, 1.0, x_type, seed, tile, residual=True)
        assert_exact(got, want, case=_ids(case), tile=tile)


@pytest.mark.parametrize("tile", sorted(_amx.TILES))
@pytest.mark.parametrize("x_type", [np.uint8, np.int8])
@pytest.mark.parametrize("case", GATHERED_CASES, ids=_ids)
def test_gathered_conv_matches_the_reference(case, x_type, tile):
    assert conv_amx.gather_fits(case[1])
    for seed, density in enumerate((1.0, 0.5)):
        got, want = run_conv(case, density, x_type, seed, tile, gathered=True)
        assert_exact(got, want, case=_ids(case), density=density, tile=tile)
    got, want = run_conv(case, 1.0, x_type, 2, tile, residual=True, gathered=True)
    assert_exact(got, want, case=_ids(case), tile=tile, residual=True)


def test_gather_fits_by_hand():
    assert conv_amx.gather_fits(3) and conv_amx.gather_fits(4) and conv_amx.gather_fits(1)
    assert not conv_amx.gather_fits(5)              # more than one word a position


def test_gathered_weights_by_hand():
    """Tap t = i·kw + j goes to tile t // 16, bytes 4·(t mod 16) + c."""
    w = np.zeros((2, 3, 7, 7), np.int8)
    w[1, 2, 3, 5] = -9      # tap 26: tile 1, bytes 4·10 + 2 = 42
    w[0, 0, 0, 6] = 11      # tap 6: tile 0, bytes 24
    w[0, 1, 6, 6] = 5       # tap 48: tile 3, bytes 0 + 1
    wt = conv_amx.pack_gathered_weights(w)
    assert wt.shape == (1, 4, 32, 64)
    assert wt[0, 1, 1, 42] == -9 and wt[0, 0, 0, 24] == 11 and wt[0, 3, 0, 1] == 5
    assert np.count_nonzero(wt) == 3


def test_gather_taps_copies_each_taps_words():
    """Both forms of the gather (the IR one compiled, the plain loops as Python) against NumPy."""
    xg = np.arange(1000, dtype=np.int32) * 7 - 3000
    taps = np.array([5, 0, 300, 17, 64], np.int64)
    want = np.concatenate([xg[t + 33:t + 33 + 64] for t in taps])
    for gather in (numba.njit(lambda xt, xg, taps, p0: _amx.gather_taps(xt, xg, taps, p0)),
                   _amx.gather_taps_loops):
        xt = np.full(5 * 64 + 64, -1, np.int32)
        gather(xt, xg, taps, 33)
        assert np.array_equal(xt[:5 * 64], want) and (xt[5 * 64:] == -1).all()


def test_a_padded_group_stride_changes_nothing():
    for tile in _amx.TILES:
        got, want = run_conv(CASES[2], 1.0, np.int8, 3, tile, stride_pad=13)
        assert_exact(got, want, tile=tile)


@given(case=st.tuples(st.integers(1, 2), st.sampled_from([1, 3, 4, 8, 60, 72]), st.integers(1, 12),
                      st.integers(1, 12), st.integers(1, 40), st.integers(1, 4), st.integers(1, 4),
                      st.integers(1, 3), st.integers(0, 2), st.integers(1, 2)),
       density=st.sampled_from([0.05, 0.5, 1.0]), signed=st.booleans(), seed=st.integers(0, 99))
def test_conv2d_dense_rq_i8_on_random_shapes(case, density, signed, seed):
    """Convs of a multiple of 4 channels through the tap tiles; convs of at most 4 channels through
    the gathered ones."""
    B, C, H, W, N, kh, kw, s, p, d = case
    if (H + 2 * p - d * (kh - 1) - 1) < 0 or (W + 2 * p - d * (kw - 1) - 1) < 0:
        return  # no output position: the conv itself is invalid (the plan refuses it)
    x_type = np.int8 if signed else np.uint8
    for tile in _amx.TILES:
        if C % 4 == 0:
            got, want = run_conv(case, density, x_type, seed, tile)
            assert_exact(got, want, case=_ids(case), tile=tile)
        if C <= 4:
            got, want = run_conv(case, density, x_type, seed, tile, gathered=True)
            assert_exact(got, want, case=_ids(case), tile=tile, gathered=True)


@given(n=st.integers(1, 70), c4=st.integers(1, 20), kh=st.integers(1, 3), kw=st.integers(1, 3),
       seed=st.integers(0, 99))
def test_pack_tap_weights_round_trip(n, c4, kh, kw, seed):
    """The tiles decode (by the reference's own reading of the layout) to the weight itself, with
    zero padding past its channels and outputs."""
    w = np.random.default_rng(seed).integers(-128, 128, (n, 4 * c4, kh, kw)).astype(np.int8)
    wt = conv_amx.pack_tap_weights(w)
    assert wt.shape == (kh * kw, -(-c4 // 16), -(-n // 32) * 32, 64)
    assert np.array_equal(tiles_to_dense(wt, n, 4 * c4, kh, kw), w)


def test_tile_layout_by_hand():
    """Channel 64·kb + c' of tap (i, j), output n, is byte c' of row n of tile (i·kw + j, kb)."""
    w = np.zeros((33, 72, 3, 3), np.int8)
    w[32, 70, 2, 1] = -7    # tap 7, block 1, byte 6
    w[0, 3, 0, 0] = 100     # tap 0, block 0, byte 3
    wt = conv_amx.pack_tap_weights(w)
    assert wt.shape == (9, 2, 64, 64)
    assert wt[7, 1, 32, 6] == -7 and wt[0, 0, 0, 3] == 100 and np.count_nonzero(wt) == 2


def test_tap_offsets_by_hand():
    """Tap (i, j) of a 3×3 stride-2 conv reads phase (i mod 2, j mod 2), row i // 2, column j // 2
    (the quad conv's layout)."""
    hq, pitch = 5, 6
    got = conv_amx.tap_offsets(3, 3, hq, pitch, 2, 2, 1, 1)
    want = [(((i % 2) * 2 + j % 2) * hq + i // 2) * pitch + j // 2
            for i in range(3) for j in range(3)]
    assert got.tolist() == want


def test_the_tile_wraps_modulo_2_to_the_32():
    """Every tile gives the same int32 sums, wrapped, when the true sum leaves int32 (the int8
    path's x + 128 start relies on the wrap)."""
    taps = 300  # 300 taps · 64 · 255 · 128 > 2^31
    wt = np.full((taps, 1, 32, 64), -128, np.int8)
    xg = np.full(16 * 64 + 64 + 64, -1, np.int32)  # every byte 255
    start = np.full((32, 16), 2 ** 30, np.int32)
    offsets = np.zeros(taps, np.int64)
    want = np.int64(2 ** 30) + taps * 64 * 255 * -128
    want = np.int32((want + 2 ** 31) % 2 ** 32 - 2 ** 31)
    for name, tile in _amx.TILES.items():
        sums = np.empty((32, 64), np.int32)
        _run_tile(tile, sums, xg, wt, start, offsets)
        assert np.all(sums == want), name


_RUNNERS: dict = {}


def _run_tile(tile, sums, xg, wt, start, offsets):
    runner = _RUNNERS.get(tile)
    if runner is None:
        def run(sums, xg, wt, start, offsets):
            tile(sums, xg, wt, start, offsets, 0, 0, 64, 16)
        runner = _RUNNERS[tile] = run if numba.config.DISABLE_JIT else numba.njit(run)
    runner(sums, xg, wt, start, offsets)


# -- the GEMM's AMX tile ---------------------------------------------------------------------------
@pytest.mark.parametrize("x_type", [np.uint8, np.int8])
@pytest.mark.parametrize("shape", [(17, 192, 1), (100, 196, 33), (130, 576, 64), (64, 1028, 70),
                                   (70, 64, 5), (200, 144, 24), (49, 960, 160), (1, 64, 40)],
                         ids=lambda s: "M{}K{}N{}".format(*s))
def test_dense_gemms_with_a_long_k_match_the_reference(shape, x_type):
    """matmul_dense_i8, matmul_dense_rq_i8 and matmul_planar_rq_i8 at K ≥ AMX_MIN_K, where an
    AMX CPU takes the AMX tile (K not a multiple of 64, N not of 32: the padded weights; with and
    without the plan's padded copy; one chunk of positions, M ≤ 64, and a 7×7 plane's): the
    reference's integers."""
    M, K, N = shape
    rng = np.random.default_rng(M + K + N)
    x = extreme_values(rng, (M, K), *TYPE_RANGE[x_type]).astype(x_type)
    w = extreme_values(rng, (N, K), -128, 127).astype(np.int8)
    bias = rng.integers(-2 ** 16, 2 ** 16, N).astype(np.int32)
    pads = (None, _amx.NO_PAD, _amx.pad_weights(w))
    for w_pad in pads:
        acc = np.empty((N, M), np.int32)
        KERNELS["matmul_dense_i8"](x, w, bias, acc, w_pad)
        assert_exact(acc, REFERENCES["matmul_dense_i8"](x, w, bias, w_pad), shape=shape,
                     w_pad=None if w_pad is None else w_pad.shape)
    m0 = rng.integers(2 ** 30, 2 ** 31 - 1, N).astype(np.int32)
    shift = rng.integers(31, 42, N).astype(np.int32)
    lo, hi = TYPE_RANGE[x_type]
    want = REFERENCES["matmul_dense_rq_i8"](x, w, bias, m0, shift, 3, lo, hi)
    w_sums = w.astype(np.int64).sum(axis=1)
    for w_pad in pads:
        y = np.empty((N, M), x_type)
        KERNELS["matmul_dense_rq_i8"](x, w, bias, m0, shift, 3, lo, hi, y, None, w_sums, w_pad)
        assert_exact(y, want, shape=shape, w_pad=None if w_pad is None else w_pad.shape)
        y = np.empty((N, M), x_type)
        KERNELS["matmul_planar_rq_i8"](np.ascontiguousarray(x.T), w, bias, m0, shift, 3, lo, hi, y,
                                       None, w_sums, w_pad)
        assert_exact(y, want, shape=shape, planar=True)


def test_pad_weights_by_hand():
    """The GEMM's weights as one tap of the conv's tiles: w[n, 64·kb + c] at [0, kb, n, c]."""
    w = np.zeros((3, 70), np.int8)
    w[2, 65] = -5   # block 1, byte 1
    w[0, 3] = 9     # block 0, byte 3
    padded = _amx.pad_weights(w)
    assert padded.shape == (1, 2, 32, 64)
    assert padded[0, 1, 2, 1] == -5 and padded[0, 0, 0, 3] == 9 and np.count_nonzero(padded) == 2
