"""The lanes conv (kernels/conv_lanes.py: output channels in the vector lanes) against its float64
reference and, byte for byte, against the dense direct conv (conv2d_dense_f32), around every lane
tile this CPU runs (kernels/_fma.py: the zmm tile with AVX-512, the plain-loop tile everywhere);
the lane-packed weight; and where plans take it.

Both convs add each output's products in the same k order, each rounded once (an FMA), so they
must agree exactly on random floats, not only within the float32 bound.
"""

from __future__ import annotations

import types

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel_checks import assert_exact, assert_f32_close
from test_kernels_conv import CONV_CASES, _conv_ids, _plan
from test_kernels_conv_dense import run_dense
from zeroskip.kernels import KERNELS, _fma, conv_lanes
from zeroskip.kernels.quant import tie_free
from zeroskip.kernels._copies import renamed_copy
from zeroskip.reference import REFERENCES
from zeroskip.reference.kernels.conv_lanes import BLOCK_LANES, unpack_lanes

_BUILT: dict = {}

ONE_GROUP = [case for case in CONV_CASES if case[-1] == 1]
LANES_CASES = ONE_GROUP + [
    (2, 9, 13, 12, 33, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1),    # 33 channels: a 1-channel block
    (1, 6, 29, 31, 64, 3, 3, [2, 2], [0, 1, 1, 0], [1, 1], 1),    # stride 2, rows of 15: 3 tiles
    (1, 12, 14, 14, 40, 1, 1, [2, 2], [0, 0, 0, 0], [1, 1], 1),   # a strided 1×1 (downsample)
    (1, 3, 16, 15, 8, 7, 7, [2, 2], [3, 3, 3, 3], [1, 1], 1),     # the stem's geometry in small
    (1, 5, 12, 12, 32, 3, 3, [1, 3], [2, 0, 1, 2], [2, 1], 1),    # stride 3 across, dilation 2 down
]


def kernel_with_tile(name: str):
    """conv2d_lanes_f32 around the tile _fma.LANE_TILES[name], compiled serially (the kernel itself
    for the tile it runs); as Python under NUMBA_DISABLE_JIT."""
    tile = _fma.LANE_TILES[name]
    if tile is conv_lanes.lane_tile:
        return KERNELS["conv2d_lanes_f32"]
    if name not in _BUILT:
        copy = renamed_copy(conv_lanes._conv2d_lanes_f32, f"_{name}", lane_tile=tile)
        _BUILT[name] = copy if numba.config.DISABLE_JIT else numba.njit(cache=True)(copy)
    return _BUILT[name]


def run_lanes(w, b, x, case, tile, lo=-np.inf, hi=np.inf):
    """The lanes conv with ``tile`` on one case, its workspace and output pre-filled with garbage
    (NaN); returns (y, wb)."""
    B, C, H, W, N, kh, kw, s, p, d, g = case
    q = _plan(x.shape, kh, kw, s, p, d)
    wb = _fma.pack_lanes(w)
    offsets = conv_lanes.lane_offsets(C, kh, kw, q["Hp"], q["Wp"], d[0], d[1])
    xp = np.full((B, C * q["Hp"] * q["Wp"] + conv_lanes.LANE_SLACK_PIXELS * s[1]), np.nan,
                 np.float32)
    y = np.full((B, N, q["OH"], q["OW"]), np.nan, np.float32)
    kernel_with_tile(tile)(wb, offsets, b, x, xp, y, kh, kw, s[0], s[1], d[0], d[1], q["pt"],
                           q["pl"], lo, hi)
    return y, wb


def check_case(case, tile, seed, lo=-np.inf, hi=np.inf):
    B, C, H, W, N, kh, kw, s, p, d, g = case
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, C, kh, kw)).astype(np.float32)
    x = rng.standard_normal((B, C, H, W)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    y, wb = run_lanes(w, b, x, case, tile, lo, hi)
    geo = dict(kernel_shape=(kh, kw), strides=s, pads=p, dilations=d)
    want = REFERENCES["conv2d_lanes_f32"](wb, b, x, **geo, lo=lo, hi=hi)
    mag = REFERENCES["conv2d_lanes_f32"](np.abs(wb), np.abs(b), np.abs(x), **geo)
    assert_f32_close(y, want, K=C * kh * kw + 1, magnitude=mag, case=_conv_ids(case), tile=tile,
                     seed=seed)
    dense, _ = run_dense(w, b, x, case, "loops", lo, hi)
    assert_exact(y, dense, case=_conv_ids(case), tile=tile, seed=seed)


@pytest.mark.parametrize("tile", sorted(_fma.LANE_TILES))
@pytest.mark.parametrize("case", LANES_CASES, ids=_conv_ids)
def test_conv2d_lanes_f32_matches_the_reference_and_the_dense_conv(case, tile):
    check_case(case, tile, seed=len(_conv_ids(case)))


@pytest.mark.parametrize("tile", sorted(_fma.LANE_TILES))
def test_conv2d_lanes_f32_clamps_and_takes_a_batch(tile):
    # a fused Relu6-like clamp, 3 images, 70 channels (a last block of 6), rows of 9 (a last tile
    # of 2 positions)
    case = (3, 4, 11, 9, 70, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1)
    check_case(case, tile, seed=5, lo=0.0, hi=6.0)


@given(B=st.integers(1, 2), C=st.integers(1, 7), H=st.integers(1, 12), W=st.integers(1, 17),
       N=st.integers(1, 40), kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3),
       sw=st.integers(1, 3), pads=st.lists(st.integers(0, 2), min_size=4, max_size=4),
       d=st.integers(1, 2), seed=st.integers(0, 2 ** 16))
def test_conv2d_lanes_f32_on_random_shapes(B, C, H, W, N, kh, kw, sh, sw, pads, d, seed):
    if H + pads[0] + pads[2] < (kh - 1) * d + 1 or W + pads[1] + pads[3] < (kw - 1) * d + 1:
        return  # no output position: nothing to compute (the planner refuses such a conv)
    case = (B, C, H, W, N, kh, kw, [sh, sw], pads, [d, d], 1)
    for tile in _fma.LANE_TILES:
        check_case(case, tile, seed)


@pytest.mark.parametrize("channels, count", [(32, 7), (19, 7), (32, 3), (5, 1), (17, 6)])
def test_every_lane_tile_gives_the_plain_loops_bytes(channels, count):
    # the tile alone at a block's offset, on random floats and offsets, with a stride of 3, into a
    # flat output of planes 50 apart: the sums biased and clamped, each channel's ``count``
    # positions written and nothing else (NaN elsewhere)
    rng = np.random.default_rng(channels * 8 + count)
    K, P, L, plane, at = 41, _fma.LANE_PIXELS, _fma.LANE_CHANNELS, 50, 21
    xp = rng.standard_normal(5000).astype(np.float32)
    offsets = rng.integers(0, 4000, K).astype(np.int64)
    wb = rng.standard_normal(2 * K * L).astype(np.float32)
    b = rng.standard_normal(L + 3 + channels).astype(np.float32)  # n0 = L + 3: a block's bias
    lo, hi = np.float32(-3.0), np.float32(2.5)
    sums = np.zeros((P, L))
    for k in range(K):
        sums += np.outer(xp[offsets[k] + 13 + 3 * np.arange(P)], wb[(K + k) * L:(K + k + 1) * L])
    want = np.full(at + L * plane + 8, np.nan)
    for l in range(channels):
        want[at + l * plane:at + l * plane + count] = sums[:count, l] + b[L + 3 + l]
    results = {}
    for name, tile in _fma.LANE_TILES.items():
        got = np.full(want.shape, np.nan, np.float32)

        @numba.njit
        def call(xp, offsets, wb, b, yf):
            # the second block (w0 = K·L), base 13, step 3
            tile(xp, offsets, wb, K * L, 13, 3, b, L + 3, yf, at, plane, lo, hi, channels, count)

        call(xp, offsets, wb, b, got)
        written = ~np.isnan(want)
        np.testing.assert_array_equal(np.isnan(got), ~written, err_msg=name)
        assert_f32_close(got[written], np.clip(want[written], lo, hi), K=K + 1,
                         magnitude=np.abs(want[written]) + 1, tile=name)
        assert (got[written] >= lo).all() and (got[written] <= hi).all()
        results[name] = got
    for name, got in results.items():
        assert_exact(got, results["loops"], tile=name)


@pytest.mark.parametrize("n_out", [1, 31, 32, 33, 70])
def test_lane_packed_weight_round_trip_and_layout(n_out):
    L = _fma.LANE_CHANNELS
    assert BLOCK_LANES == L
    rng = np.random.default_rng(n_out)
    w = rng.standard_normal((n_out, 3, 2, 2)).astype(np.float32)
    wb = _fma.pack_lanes(w)
    np.testing.assert_array_equal(unpack_lanes(wb, n_out, 3, 2, 2), w)
    K, blocks = 12, -(-n_out // L)
    assert wb.shape == (blocks * K * L,)
    for n in range(n_out):  # by hand: channel n is lane l of block b; its weight k at (b·K + k)·L + l
        b, l = divmod(n, L)
        for k in range(K):
            assert wb[(b * K + k) * L + l] == w[n].reshape(-1)[k]
    if n_out % L:  # the padding lanes of a last, partial block are zero
        assert not wb.reshape(blocks, K, L)[-1, :, n_out % L:].any()


def test_lane_offsets_by_hand():
    offsets = conv_lanes.lane_offsets(2, 2, 3, 5, 7, 2, 3)
    want = [c * 35 + i * 2 * 7 + j * 3 for c in range(2) for i in range(2) for j in range(3)]
    np.testing.assert_array_equal(offsets, want)
    assert offsets.dtype == np.int64


def test_where_the_lanes_conv_pays():
    fits = conv_lanes.FITS_CPU
    for n_out in (32, 64, 512, 29, 144, 160, 1000):  # an eighth or less of a block empty
        assert conv_lanes.lanes_pay(n_out) == fits, n_out
    for n_out in (0, 1, 16, 24, 28, 40, 70):  # more: a block computes all its 32 lanes
        assert not conv_lanes.lanes_pay(n_out), n_out


def test_plans_take_the_lanes_conv_where_it_pays():
    # a one-group conv of 64 channels and one of 24 (a block 1/4 empty), and a grouped one
    import zeroskip
    from onnx_builders import make_model, node, randn

    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             node("Conv", ["c1", "w2", "b2"], ["c2"]),
             node("Conv", ["c2", "w3", "b3"], ["y"], pads=[1, 1, 1, 1], group=2)]
    inits = {"w1": randn((64, 5, 3, 3), 1), "b1": randn(64, 2), "w2": randn((24, 64, 1, 1), 3),
             "b2": randn(24, 4), "w3": randn((24, 12, 3, 3), 5), "b3": randn(24, 6)}
    model = zeroskip.import_onnx(make_model(nodes, [("x", [1, 5, 9, 9])], [("y", [1, 24, 9, 9])],
                                            inits))
    session = zeroskip.Session(model, mode="dense-f32")
    kernels = [step.kernel for step in session._plan.steps]
    lanes = "conv2d_lanes_f32" if conv_lanes.FITS_CPU else "conv2d_dense_f32"
    assert kernels == [lanes, "conv2d_dense_f32", "conv2d_dense_f32"]
    x = randn((1, 5, 9, 9), 7)
    got = session.run({"x": x})["y"]
    want = zeroskip.Session(model, mode="reference").run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_plan_of_lanes_convs_keeps_its_threads_for_numba():
    # a float CNN whose convs all take the lanes conv and whose classifier is numpy's sgemm: the
    # convs are the heavy layers, so Numba, not BLAS, gets the threads (steps.blas_owns_threads)
    from zeroskip.engine.plan.steps import Plan, Step

    conv, gemm = (types.SimpleNamespace(name=n, op=o) for n, o in (("c", "Conv"), ("g", "Gemm")))
    plan = Plan("dense-f32", [Step(conv, "conv2d_lanes_f32", "", None),
                              Step(gemm, "gemm_dense_f32 (numpy BLAS)", "", None)])
    assert plan.uses_blas and not plan.blas_owns_threads
    only_blas = Plan("dense-f32", [Step(gemm, "gemm_dense_f32 (numpy BLAS)", "", None)])
    assert only_blas.blas_owns_threads


# ----------------------------------------------------------------------------- the int8 lanes conv
import kernel_checks as checks  # noqa: E402
from kernel_checks import extreme_values  # noqa: E402
from zeroskip.kernels import _lanes, _quads  # noqa: E402
from zeroskip.reference.kernels.conv_lanes import unpack_lane_words  # noqa: E402

I8_CASES = [
    # B, C, H, W, N, kh, kw, stride, pad, dilation
    (1, 4, 5, 5, 1, 3, 3, 1, 1, 1),       # one column group, one channel
    (1, 8, 9, 9, 33, 3, 3, 1, 1, 1),      # a last block of 1 channel; rows of 9: tiles of 7 and 2
    (2, 16, 10, 7, 40, 3, 3, 2, 1, 1),    # two images, stride 2, a non-square plane
    (1, 16, 14, 14, 12, 1, 1, 2, 0, 1),   # 1×1 stride 2 (a ResNet downsample)
    (1, 8, 11, 11, 4, 3, 3, 1, 2, 2),     # dilation 2
    (1, 12, 20, 20, 7, 7, 7, 2, 3, 1),    # a 7×7 stride-2 conv
    (1, 32, 7, 7, 64, 3, 3, 1, 1, 1),     # a 7×7 plane, two whole blocks
    (1, 8, 3, 3, 2, 5, 5, 1, 2, 1),       # a kernel larger than the input
]


def _i8_ids(case):
    B, C, H, W, N, kh, kw, s, p, d = case
    return f"B{B}C{C}{H}x{W}N{N}k{kh}x{kw}s{s}p{p}d{d}"


def i8_kernel_with_tile(name: str):
    """conv2d_lanes_rq_i8 around the tile _lanes.LANE_TILES_I8[name], compiled serially; the kernel
    itself for the tile it runs."""
    return checks.kernel_with_tile(KERNELS["conv2d_lanes_rq_i8"], conv_lanes._conv2d_lanes_rq_i8,
                                   "lane_tile_i8", _lanes.LANE_TILES_I8, name)


def run_lanes_i8(case, x_type, seed, tile, residual=False, padded=False):
    """The int8 lanes conv (with ``tile``) and the reference on one random case, workspaces
    pre-filled with garbage; with ``padded``, m0 and shift as a plan passes them
    (conv_lanes.lane_multipliers); returns (got, want)."""
    B, C, H, W, N, kh, kw, s, p, d = case
    rng = np.random.default_rng(seed)
    w, x, x_zp, bias, w_sums, m0, shift, y_type, lo, hi, y_zp = checks.random_conv_case(
        rng, (N, C, kh, kw), (B, C, H, W), 1.0, x_type, seed)
    oh = (H + 2 * p - d * (kh - 1) - 1) // s + 1
    ow = (W + 2 * p - d * (kw - 1) - 1) // s + 1
    hq, pitch, stride, _, copy_words = _quads.quad_layout(oh, ow, kh, kw, s, s, d, d, C // 4,
                                                           False)
    columns = np.arange(C // 4 * kh * kw, dtype=np.int64)
    offsets = _quads.quad_offsets(columns, kh, kw, hq, pitch, s, s, d, d, stride, 1, copy_words)
    wl = _lanes.pack_lane_words(w)
    np.testing.assert_array_equal(unpack_lane_words(wl, N, C, kh, kw), w)
    xg = np.full((B, copy_words), -1, np.int32)
    y = np.full((B, N, oh, ow), 77, y_type)  # garbage: every output must be written
    extra, want_residual = (), None
    if residual:
        r = extreme_values(rng, y.shape, *checks.TYPE_RANGE[y_type]).astype(y_type)
        params = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)),
                  int(rng.integers(1, 2 ** 20)), int(rng.integers(1, 2 ** 20)), 20,
                  int(rng.integers(lo, hi + 1)), lo, hi)
        extra, want_residual = ((r,) + params,), (r,) + params
    m0_k, shift_k = conv_lanes.lane_multipliers(m0, shift) if padded else (m0, shift)
    i8_kernel_with_tile(tile)(wl, offsets, bias, w_sums, x, x_zp, xg, m0_k, shift_k, y_zp, lo, hi,
                              y, kh, kw, s, s, d, d, p, p, pitch, *extra)
    want = REFERENCES["conv2d_lanes_rq_i8"](
        wl, bias, w_sums, x, x_zp, m0, shift, y_zp, lo, hi, kernel_shape=(kh, kw), strides=(s, s),
        pads=(p, p, p, p), dilations=(d, d), residual=want_residual)
    return y, want


@pytest.mark.parametrize("tile", sorted(_lanes.LANE_TILES_I8))
@pytest.mark.parametrize("x_type", [np.uint8, np.int8], ids=["u8", "s8"])
@pytest.mark.parametrize("case", I8_CASES, ids=_i8_ids)
def test_conv2d_lanes_rq_i8_matches_the_reference(case, x_type, tile):
    for seed in (1, 2):  # an odd and an even seed: y of x's type and of the other
        got, want = run_lanes_i8(case, x_type, seed, tile)
        assert_exact(got, want, case=_i8_ids(case), seed=seed, tile=tile)


@pytest.mark.parametrize("tile", sorted(_lanes.LANE_TILES_I8))
@pytest.mark.parametrize("case", [I8_CASES[0], (1, 8, 9, 8, 35, 3, 3, 1, 1, 1)], ids=_i8_ids)
def test_conv2d_lanes_rq_i8_takes_multipliers_padded_by_the_plan(case, tile):
    """m0 and shift padded to whole blocks of 32 (lane_multipliers, as the plan passes them) give
    the reference's bytes too, with a last block of 3 channels."""
    m0, shift = conv_lanes.lane_multipliers(np.arange(1, 36, dtype=np.int32),
                                            np.arange(1, 36, dtype=np.int32))
    assert m0.shape == shift.shape == (64,) and (m0[35:] == conv_lanes.PAD_M0).all()
    assert (shift[35:] == conv_lanes.PAD_SHIFT).all() and tie_free(conv_lanes.PAD_M0,
                                                                   conv_lanes.PAD_SHIFT)
    for seed in (1, 2):
        got, want = run_lanes_i8(case, np.int8, seed, tile, padded=True)
        assert_exact(got, want, case=_i8_ids(case), seed=seed, tile=tile)


@pytest.mark.parametrize("tile", sorted(_lanes.LANE_TILES_I8))
@pytest.mark.parametrize("x_type", [np.uint8, np.int8], ids=["u8", "s8"])
def test_conv2d_lanes_rq_i8_with_a_fused_residual(x_type, tile):
    got, want = run_lanes_i8((2, 8, 9, 8, 35, 3, 3, 1, 1, 1), x_type, 3, tile, residual=True)
    assert_exact(got, want, tile=tile)


@given(B=st.integers(1, 2), C4=st.integers(1, 3), H=st.integers(1, 10), W=st.integers(1, 16),
       N=st.integers(1, 40), kh=st.integers(1, 3), kw=st.integers(1, 3), s=st.integers(1, 2),
       p=st.integers(0, 2), d=st.integers(1, 2), seed=st.integers(0, 2 ** 16),
       signed=st.booleans())
def test_conv2d_lanes_rq_i8_on_random_shapes(B, C4, H, W, N, kh, kw, s, p, d, seed, signed):
    if H + 2 * p < (kh - 1) * d + 1 or W + 2 * p < (kw - 1) * d + 1:
        return  # no output position
    case = (B, 4 * C4, H, W, N, kh, kw, s, p, d)
    for tile in _lanes.LANE_TILES_I8:
        got, want = run_lanes_i8(case, np.int8 if signed else np.uint8, seed, tile)
        assert_exact(got, want, case=_i8_ids(case), seed=seed, tile=tile)
