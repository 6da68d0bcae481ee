"""The dense float32 direct conv (kernels/conv_dense.py) against its float64 reference, around every
FMA tile this CPU runs (kernels/_fma.py: the zmm and ymm vector tiles where the CPU has them, the
plain-loop tile everywhere), and the pieces it stands on: the packed weight, the padded phases.

Float results are held to the K-term float32 bound (kernel_checks.assert_f32_close); the tiles
agree with each other exactly on small integers, where no sum rounds.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel_checks import assert_exact, assert_f32_close
from test_kernels_conv import CONV_CASES, _conv_ids, _plan
from zeroskip.kernels import KERNELS, _fma, _planes, conv_dense
from zeroskip.kernels._copies import renamed_copy
from zeroskip.reference import REFERENCES
from zeroskip.reference.kernels.conv_dense import BLOCK_ROWS, unpack_rows

_BUILT: dict = {}


def kernel_with_tile(name: str):
    """conv2d_dense_f32 around the tile _fma.TILES[name] and its positions per tile, compiled
    serially (the kernel itself for the tile it runs); as Python under NUMBA_DISABLE_JIT."""
    tile, pixels = _fma.TILES[name]
    if tile is conv_dense.fma_tile and pixels == conv_dense.FMA_PIXELS:
        return KERNELS["conv2d_dense_f32"]
    if name not in _BUILT:
        copy = renamed_copy(conv_dense._conv2d_dense_f32, f"_{name}", fma_tile=tile,
                            FMA_PIXELS=pixels)
        _BUILT[name] = copy if numba.config.DISABLE_JIT else numba.njit(cache=True)(copy)
    return _BUILT[name]


def run_dense(w, b, x, case, tile, lo=-np.inf, hi=np.inf):
    """The kernel with ``tile`` on one case, its workspace and output pre-filled with garbage;
    returns (y, wp)."""
    B, C, H, W, N, kh, kw, s, p, d, g = case
    q = _plan(x.shape, kh, kw, s, p, d)
    rows, wq = q["phases"]
    wp = _fma.pack_rows(w, g)
    offsets = _planes.phase_offsets(C // g, kh, kw, rows // (s[0] * s[1]), wq, s[0], s[1], d[0],
                                    d[1])
    xq = np.full((B, C * rows * wq + _fma.FMA_SLACK), np.nan, np.float32)
    y = np.full((B, N, q["OH"], q["OW"]), np.nan, np.float32)
    kernel_with_tile(tile)(wp, offsets, b, x, xq, y, kh, kw, s[0], s[1], d[0], d[1], q["pt"],
                           q["pl"], g, lo, hi)
    return y, wp


def check_case(case, tile, seed, lo=-np.inf, hi=np.inf):
    B, C, H, W, N, kh, kw, s, p, d, g = case
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, C // g, kh, kw)).astype(np.float32)
    x = rng.standard_normal((B, C, H, W)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    y, wp = run_dense(w, b, x, case, tile, lo, hi)
    geo = dict(kernel_shape=(kh, kw), strides=s, pads=p, dilations=d, groups=g)
    want = REFERENCES["conv2d_dense_f32"](wp, b, x, **geo, lo=lo, hi=hi)
    mag = REFERENCES["conv2d_dense_f32"](np.abs(wp), np.abs(b), np.abs(x), **geo)
    assert_f32_close(y, want, K=C // g * kh * kw + 1, magnitude=mag, case=_conv_ids(case),
                     tile=tile, seed=seed)


@pytest.mark.parametrize("tile", sorted(_fma.TILES))
@pytest.mark.parametrize("case", CONV_CASES, ids=_conv_ids)
def test_conv2d_dense_f32_matches_the_reference(case, tile):
    check_case(case, tile, seed=len(_conv_ids(case)))


@pytest.mark.parametrize("tile", sorted(_fma.TILES))
def test_conv2d_dense_f32_clamps_and_takes_a_batch(tile):
    # a fused Relu6-like clamp, 3 images, channels not a multiple of the block, stride 2 with
    # the 7×7 stem's geometry in small
    case = (3, 3, 15, 13, 6, 7, 7, [2, 2], [3, 3, 3, 3], [1, 1], 1)
    check_case(case, tile, seed=5, lo=0.0, hi=6.0)


@pytest.mark.parametrize("tile", sorted(_fma.TILES))
def test_many_chunks_and_blocks_with_groups(tile):
    # more positions than one tile and more channels than one block, in each of 2 groups
    case = (2, 8, 20, 19, 10, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1], 2)
    check_case(case, tile, seed=9)


@given(B=st.integers(1, 2), cg=st.integers(1, 6), H=st.integers(1, 12), W=st.integers(1, 12),
       per=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3),
       sw=st.integers(1, 3), pad=st.integers(0, 2), d=st.integers(1, 2), g=st.integers(1, 2),
       seed=st.integers(0, 2 ** 16))
def test_conv2d_dense_f32_on_random_shapes(B, cg, H, W, per, kh, kw, sh, sw, pad, d, g, seed):
    if H + 2 * pad < (kh - 1) * d + 1 or W + 2 * pad < (kw - 1) * d + 1:
        return  # no output position: nothing to compute (the planner refuses such a conv)
    case = (B, cg * g, H, W, per * g, kh, kw, [sh, sw], [pad, pad, pad, pad], [d, d], g)
    for tile in _fma.TILES:
        check_case(case, tile, seed)


def test_every_tile_gives_the_plain_loops_bytes():
    # each multiply-add is rounded once in every variant (vector FMAs, fma32 in the loops), in the
    # same k order: the bytes must agree on random floats, not only within the float32 bound
    rng = np.random.default_rng(3)
    K = 37
    xq = rng.standard_normal(4000).astype(np.float32)
    offsets = rng.integers(0, 3000, K).astype(np.int64)
    wp = rng.standard_normal(2 * K * _fma.FMA_ROWS).astype(np.float32)
    results = {}
    for name, (tile, pixels) in _fma.TILES.items():
        got = np.full((_fma.FMA_ROWS, pixels), np.nan, np.float32)

        @numba.njit
        def call(sums, xq, offsets, wp):
            tile(sums, xq, offsets, wp, K * _fma.FMA_ROWS, 11)  # the second block, at base 11

        call(got, xq, offsets, wp)
        results[name] = got
        want = np.zeros((_fma.FMA_ROWS, pixels))
        for k in range(K):
            at = (K + k) * _fma.FMA_ROWS
            want += np.outer(wp[at:at + _fma.FMA_ROWS], xq[offsets[k] + 11:offsets[k] + 11 + pixels])
        assert_f32_close(got, want, K=K, magnitude=np.abs(want) + 1, tile=name)
    for name, got in results.items():  # the plain loops at the same width, bit for bit
        loops = np.full_like(got, np.nan)

        @numba.njit
        def plain(sums, xq, offsets, wp):
            _fma.fma_tile_portable(sums, xq, offsets, wp, K * _fma.FMA_ROWS, 11)

        plain(loops, xq, offsets, wp)
        assert_exact(got, loops, tile=name)
    case = (2, 5, 9, 11, 6, 3, 3, [2, 1], [1, 1, 0, 2], [1, 1], 1)
    x = rng.standard_normal((2, 5, 9, 11)).astype(np.float32)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    outputs = {name: run_dense(w, b, x, case, name)[0] for name in _fma.TILES}
    for name, y in outputs.items():
        assert_exact(y, outputs["loops"], tile=name)


def test_fma32_rounds_once():
    # a·b + c with a·b's low bits below float32's precision: one rounding keeps them, two lose
    a = np.float32(1 + 2 ** -12)
    c = np.float32(-(1 + 2 ** -11))  # a² = 1 + 2^-11 + 2^-24: the 2^-24 survives only fused
    assert a * a + c == 0.0
    assert _fma.fma32(a, a, c) == np.float32(2 ** -24)
    fused = numba.njit(lambda a, b, c: _fma.fma32(a, b, c))
    assert fused(a, a, c) == np.float32(2 ** -24)
    # just below a float32 tie, by less than float64 resolves: a·b = 2^-24 − 2^-70, c = 1 + 2^-23.
    # The exact sum rounds down to 1 + 2^-23; rounded to float64 first, it lands on the tie
    # 1 + 3·2^-24 and goes to even, 1 + 2^-22 (the double rounding that rounding to odd prevents)
    a, b = np.float32(2 ** -24 * (1 + 2 ** -23)), np.float32(1 - 2 ** -23)
    c = np.float32(1 + 2 ** -23)
    assert np.float32(float(a) * float(b) + float(c)) == np.float32(1 + 2 ** -22)
    assert _fma.fma32(a, b, c) == c
    assert fused(a, b, c) == c
    assert np.isnan(_fma.fma32(np.float32(np.inf), np.float32(0.0), np.float32(1.0)))
    with np.errstate(over="ignore"):
        assert _fma.fma32(np.float32(3e38), np.float32(10.0), np.float32(1.0)) == np.inf


@pytest.mark.parametrize("n_out, groups", [(1, 1), (4, 1), (6, 1), (7, 1), (10, 2), (16, 4), (9, 3),
                                           (26, 2)])
def test_packed_weight_round_trip_and_layout(n_out, groups):
    R = _fma.FMA_ROWS
    assert BLOCK_ROWS == R
    rng = np.random.default_rng(n_out)
    w = rng.standard_normal((n_out, 3, 2, 2)).astype(np.float32)
    wp = _fma.pack_rows(w, groups)
    np.testing.assert_array_equal(unpack_rows(wp, n_out, 3, 2, 2, groups), w)
    per, K = n_out // groups, 12
    blocks = -(-per // R)
    assert wp.shape == (groups * blocks * K * R,)
    # by hand: channel n of group g is row j of block b; its weight k sits at ((g·blocks + b)·K + k)·R + j
    for n in range(n_out):
        g, r = divmod(n, per)
        b, j = divmod(r, R)
        for k in range(K):
            assert wp[((g * blocks + b) * K + k) * R + j] == w[n].reshape(-1)[k]
    # the padding rows of a last, partial block are zero
    if per % R:
        padded = wp.reshape(groups, blocks, K, R)[:, -1, :, per % R:]
        assert not padded.any()


@given(H=st.integers(1, 9), W=st.integers(1, 9), sh=st.integers(1, 3), sw=st.integers(1, 3),
       pt=st.integers(0, 3), pl=st.integers(0, 3), extra_h=st.integers(-2, 3),
       extra_w=st.integers(-2, 3), seed=st.integers(0, 999))
def test_pad_phases_against_numpy(H, W, sh, sw, pt, pl, extra_h, extra_w, seed):
    # xq[(a·sw + b)·Hq + u, v] = x[u·sh + a − pt, v·sw + b − pl], fill outside x; Hq and Wq may
    # crop x's tail or reach past it
    Hq, Wq = max(1, (H + pt) // sh + extra_h), max(1, (W + pl) // sw + extra_w)
    x = np.random.default_rng(seed).standard_normal((H, W)).astype(np.float32)
    want = np.full((sh * sw * Hq, Wq), -5.0, np.float32)
    for a in range(sh):
        for b in range(sw):
            for u in range(Hq):
                for v in range(Wq):
                    h, c = u * sh + a - pt, v * sw + b - pl
                    if 0 <= h < H and 0 <= c < W:
                        want[(a * sw + b) * Hq + u, v] = x[h, c]
    got = np.full_like(want, np.nan)
    _planes.pad_phases(x, got, sh, sw, pt, pl, np.float32(-5.0))
    np.testing.assert_array_equal(got, want)
