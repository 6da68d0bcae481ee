"""The 3×3 depthwise row tile (kernels/_dwtile.py) and the planar depthwise kernel around it.

depthwise_dense_rq_i8 takes the tile for 3×3 convs on AVX-512 VNNI + VBMI CPUs. Every variant this
machine can run is compared with the integer reference here: the kernel as it runs, the kernel
around the tile's plain loops, and the kernel's planar loops without the tile (what other CPUs and
NUMBA_DISABLE_JIT=1 run).
"""

from __future__ import annotations

from types import SimpleNamespace

import numba
import numpy as np
import pytest

from kernel_checks import assert_exact
from zeroskip.kernels import _dwtile, _requant, depthwise
from zeroskip.kernels._broadcast import unsigned_bias
from zeroskip.kernels._copies import renamed_copy
from zeroskip.kernels.quant import tie_free
from zeroskip.reference.kernels import quant as ref_quant
from zeroskip.reference import REFERENCES

TYPE_RANGE = {np.uint8: (0, 255), np.int8: (-128, 127)}

_VARIANTS: dict = {}


def kernel_variant(name: str):
    """depthwise_dense_rq_i8 as it runs ("as built"), around the tile's plain loops ("loops"), or
    without the tile ("planar": the kernel's own 3×3 loops)."""
    if name == "as built":
        return depthwise.depthwise_dense_rq_i8
    kernel = _VARIANTS.get(name)
    if kernel is None:
        compile_ = (lambda f: f) if numba.config.DISABLE_JIT else numba.njit(cache=True)
        if name == "loops":
            copy = renamed_copy(depthwise._depthwise_dense_rq_i8, "_loops", DW3_RUNS=True,
                                dw3_tile=_dwtile.dw3_tile_portable,
                                dw3_plane_tile=_dwtile.dw3_plane_tile_portable)
        else:
            copy = renamed_copy(depthwise._depthwise_dense_rq_i8, "_planar", DW3_RUNS=False)
        kernel = _VARIANTS[name] = compile_(copy)
    return kernel


# (B, C, mult, H, W, stride, pads (t, l, b, r), dilation)
CASES = [
    (1, 3, 1, 40, 37, 1, (1, 1, 1, 1), 1),      # 3 steps a row, the last one partial
    (2, 2, 1, 70, 70, 2, (0, 0, 1, 1), 1),      # stride 2, TF pads, 3 steps a row
    (1, 4, 2, 33, 50, 1, (2, 2, 2, 2), 2),      # dilation 2, multiplier 2
    (1, 5, 1, 16, 16, 1, (1, 1, 1, 1), 1),      # exactly one step a row
    (1, 2, 1, 9, 130, 2, (1, 1, 1, 1), 1),      # a wide row: 5 steps at stride 2
    (1, 3, 3, 5, 20, 3, (1, 2, 1, 2), 1),       # stride 3 (15·3 + 2 < 64), multiplier 3
    (1, 2, 1, 3, 3, 1, (1, 1, 1, 1), 1),        # every step partial, mostly pads
    # outputs at most PLANE_MAX_WIDTH wide: the plane tile (64 outputs of the flat plane a group)
    (2, 3, 2, 7, 7, 1, (1, 1, 1, 1), 1),        # MobileNetV2's 7×7: one group, 49 outputs
    (1, 4, 1, 8, 8, 2, (0, 0, 1, 1), 1),        # stride 2, TF pads: 4×4 from a 64-byte plane
    (1, 3, 1, 9, 10, 1, (0, 0, 0, 0), 1),       # no pads: 7×8 = 56 outputs
    (1, 2, 1, 30, 5, 1, (1, 1, 1, 1), 1),       # 150 outputs: 3 groups, windows inside the plane
    (1, 2, 3, 11, 11, 1, (2, 2, 2, 2), 2),      # dilation 2, multiplier 3
    (1, 2, 1, 40, 8, 1, (1, 1, 1, 1), 1),       # 8 wide, 320 outputs in 5 whole groups
]


def _ids(case):
    B, C, m, H, W, s, p, d = case
    return f"B{B}C{C}m{m}{H}x{W}s{s}p{''.join(map(str, p))}d{d}"


def _run(case, x_type, y_type, seed, variant):
    B, C, m, H, W, s, p, d = case
    rng = np.random.default_rng(seed)
    N = C * m
    x = rng.integers(*TYPE_RANGE[x_type], (B, C, H, W), endpoint=True).astype(x_type)
    x[rng.random(x.shape) < 0.2] = TYPE_RANGE[x_type][0]  # extremes: the largest products
    x[rng.random(x.shape) < 0.2] = TYPE_RANGE[x_type][1]
    w = rng.integers(-128, 128, (N, 9)).astype(np.int8)
    w[:, rng.random(9) < 0.2] = -128
    zp = int(rng.integers(*TYPE_RANGE[x_type], endpoint=True))
    bias = rng.integers(-2 ** 16, 2 ** 16, N).astype(np.int32)
    m0 = rng.integers(2 ** 30, 2 ** 31 - 1, N).astype(np.int32)
    shift = rng.integers(33, 40, N).astype(np.int32)
    lo, hi = TYPE_RANGE[y_type]
    y_zp = int(rng.integers(lo, hi + 1))
    pt, pl, pb, pr = p
    OH, OW = (H + pt + pb - 2 * d - 1) // s + 1, (W + pl + pr - 2 * d - 1) // s + 1
    Hp, Wp = (OH - 1) * s + 2 * d + 1, (OW - 1) * s + 2 * d + 1
    xp = np.empty((B, C, Hp, Wp), x_type)
    ws = np.empty((B, N, 1), np.int32)
    y = np.full((B, N, OH, OW), 7, y_type)
    extra = ()
    if variant == PLAN_OPERANDS:  # as plans call it: the tile's operands made once, and no
        # workspaces where the tile runs (it reads x unpadded)
        extra = (_dwtile.row_words(w), unsigned_bias(x, w, bias, None))
        if _dwtile.RUNS:
            xp, ws = np.empty((B, C, 0, 0), x_type), np.empty((B, N, 0), np.int32)
    kernel_variant("as built" if variant == PLAN_OPERANDS else variant)(
        w, bias, x, zp, xp, ws, m0, shift, y_zp, lo, hi, y, 3, 3, s, s, d, d, pt, pl, *extra)
    want = REFERENCES["depthwise_dense_rq_i8"](w, bias, x, zp, m0, shift, y_zp, lo, hi,
                                               kernel_shape=(3, 3), strides=(s, s), pads=p,
                                               dilations=(d, d))
    return y, want


PLAN_OPERANDS = "as built, the plan's operands"
VARIANTS = ["as built", "loops", "planar", PLAN_OPERANDS]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_depthwise_row_tile_matches_the_reference(case, variant):
    for seed, (x_type, y_type) in enumerate([(np.uint8, np.uint8), (np.int8, np.int8),
                                             (np.uint8, np.int8)]):
        got, want = _run(case, x_type, y_type, seed, variant)
        assert_exact(got, want, case=_ids(case), variant=variant, x=np.dtype(x_type).name)


def test_the_kernel_takes_the_tile_where_the_cpu_has_it():
    """The planner's flag and the kernel's agree: with the JIT on, a CPU with AVX-512 VNNI and
    VBMI runs the tile (and plans pick the planar kernel by the same flag, kernels or not)."""
    assert _dwtile.RUNS == (_dwtile.CPU_HAS and not numba.config.DISABLE_JIT)
    assert (_dwtile.dw3_tile is _dwtile.dw3_tile_portable) == (not _dwtile.RUNS)


def test_the_plan_takes_the_planar_kernel_where_the_tile_pays(monkeypatch):
    """DepthwiseConv.channels_last_pays: with the tile (the CPU's flag), planar from 7-wide
    outputs at any stride, channels last below; without it, channels last for strided outputs or
    outputs narrower than 56; kernels other than 3×3 always by the second rule."""
    from zeroskip.engine.plan import int8

    def pays(kh, ow, sw, dw=1):
        return int8.DepthwiseConv.channels_last_pays(SimpleNamespace(kh=kh, kw=kh),
                                                     {"ow": ow, "sw": sw, "dw": dw})

    monkeypatch.setattr(_dwtile, "CPU_HAS", True)
    assert not pays(3, 14, 1) and not pays(3, 14, 2) and not pays(3, 56, 2) and not pays(3, 28, 1)
    assert not pays(3, 7, 1) and not pays(3, 7, 2) and pays(3, 6, 1) and pays(3, 4, 2)
    assert pays(3, 28, 5) and not pays(3, 56, 1, dw=30)  # past the window: the old rule
    assert pays(5, 28, 1) and pays(5, 56, 2) and not pays(5, 56, 1)
    monkeypatch.setattr(_dwtile, "CPU_HAS", False)
    assert pays(3, 14, 1) and pays(3, 56, 2) and pays(3, 28, 1) and not pays(3, 56, 1)


def test_plane_table_by_hand():
    """plane_table: group g's window starts at its first tap inside the plane, each lane's taps
    are their bytes' places in it (FILL outside the plane and for the 4th byte); none for outputs
    wider than PLANE_MAX_WIDTH or a group whose taps span more than PLANE_WINDOW bytes."""
    idx, ws = _dwtile.plane_table(7, 7, 7, 7, 1, 1, 1, 1, 1, 1)  # 7×7, pads of 1
    assert idx.shape == (1, 12, 64) and ws.tolist() == [0]
    fill = _dwtile.FILL
    # output 0 (lane 0 of vector 0): tap row 0 above the plane; row 1 = pad, x[0,0], x[0,1]
    assert idx[0, 0, :4].tolist() == [fill] * 4 and idx[0, 1, :4].tolist() == [fill, 0, 1, fill]
    # output 8 = (1, 1), vector 0 lane 8: row 2 reads x[2, 0..2] = bytes 14, 15, 16
    assert idx[0, 2, 32:36].tolist() == [14, 15, 16, fill]
    assert (idx[0, 9:12, 4:] == fill).all()  # vector 3 holds output 48 only
    idx, ws = _dwtile.plane_table(30, 5, 30, 5, 1, 1, 1, 1, 1, 1)
    # output 64 = (12, 4): its first tap (11, 3); output 128 = (25, 3): (24, 2)
    assert ws.tolist() == [0, 11 * 5 + 3, 24 * 5 + 2]
    assert idx.max() == fill and idx[idx != fill].max() < _dwtile.PLANE_WINDOW
    assert _dwtile.plane_table(14, 14, 14, 14, 1, 1, 1, 1, 1, 1)[0].shape[0] == 0  # too wide
    # 8 wide at stride 2 from 16 columns: a group's 8 rows read 17 rows of 16, past the window
    assert _dwtile.plane_table(16, 16, 8, 8, 2, 2, 1, 1, 1, 1)[0].shape[0] == 0
    assert _dwtile.plane_table(8, 8, 4, 4, 2, 2, 1, 1, 0, 0)[0].shape[0] == 1


def test_fits_and_the_permutation_by_hand():
    """fits: 15·sw + 2·dw < 64 (the 16th output's last tap inside the 64-byte window)."""
    assert _dwtile.fits(1, 1) and _dwtile.fits(2, 1) and _dwtile.fits(3, 1)
    assert _dwtile.fits(1, 24) and not _dwtile.fits(1, 25)  # 15 + 48 = 63; 15 + 50 = 65
    assert _dwtile.fits(4, 1) and not _dwtile.fits(4, 2) and not _dwtile.fits(2, 17)
    idx = _dwtile.permutation(2, 1)
    assert idx[:8].tolist() == [0, 1, 2, 2, 2, 3, 4, 4]  # lane 0: taps 0, 1, 2, 2; lane 1: 2, 3, 4
    assert idx[-4:].tolist() == [30, 31, 32, 32]
    words = _dwtile.row_words(np.array([[1, -2, 3, -128, 0, 127, 5, 6, 7]], np.int8))[0]
    assert words.view(np.uint32).tolist() == [0x03FE01, 0x7F0080, 0x070605]


TILE_CASES = {  # start, bytes and weights drawn below, (m0, shift), in what each case checks
    "wrap": (None, 256, 128, (2 ** 30 + 1, 54)),  # start + Σ wraps past an int32 edge: 0 and 255
    "tie-free": (0, 256, 128, (1_518_500_249, 42)),     # M ≈ 2^−10.5: outputs spread over the range
    "ties": (3, 4, 3, (2 ** 30, 31)),                   # M = 1/2 on small sums: odd ones are ties
    "unfolded": (None, 256, 128, (2 ** 30 + 1, 55)),    # tie-free past FOLD_MAX_SHIFT: general form
}


@pytest.mark.parametrize("tile", sorted(_dwtile.TILES))
@pytest.mark.parametrize("sh,sw,dh,dw", [(1, 1, 1, 1), (1, 2, 1, 1), (1, 1, 1, 2), (1, 3, 1, 1),
                                         (2, 2, 1, 1), (2, 1, 1, 2), (1, 1, 2, 2), (2, 2, 2, 1),
                                         (3, 1, 1, 1)])
@pytest.mark.parametrize("case", sorted(TILE_CASES))
@pytest.mark.parametrize("x_type", [np.uint8, np.int8], ids=["u8", "s8"])
def test_the_tile_sums_three_rows_of_three_taps(tile, sh, sw, dh, dw, case, x_type):
    """The tile (both variants) against the formula on a 5 × 50 plane with pads of 1 and 2 (the
    fill outside, every step's window partly outside the row, a last step that is partial),
    bytes read as unsigned (int8 ones as x + 128), requantized (zero point 128): sums that wrap
    at the int32 edge as vpdpbusd's do; a tie-free multiplier (the short form) with the outputs
    spread; m0 = 2^30 at M = 1/2 (rounding ties of both signs: the general form). The bytes before
    and past the plane's outputs are left as they were. A row dilation of 1 with a row step of 1
    takes the tile's rolling rows (one load per input row for three outputs), with a row step of 2
    its carried rows (an output's last row is the next one's first); any other, three loads a
    step."""
    start, x_top, w_top, (m0, shift) = TILE_CASES[case]
    rng = np.random.default_rng(sh * 1000 + dh * 100 + sw * 10 + dw)
    H, W, pt, pl, fill = 5, 50, 1, 2, 7
    flip = 0x80 if x_type is np.int8 else 0
    raw = rng.integers(0, x_top, (H, W))  # the bytes as the tile reads them, after the flip
    x = (raw ^ flip).astype(np.uint8).view(x_type)
    plane = np.full(3 * H * W, 99, np.uint8).view(x_type)  # neighbours: never read
    plane[H * W:2 * H * W] = x.reshape(-1)
    w = rng.integers(-w_top, w_top, 9).astype(np.int8)
    words, idx = _dwtile.row_words(w[None])[0], _dwtile.permutation(sw, dw)
    OH, OW = (H + 2 * pt - 2 * dh - 1) // sh + 1, (W + 2 * pl - 2 * dw - 1) // sw + 1
    padded = np.full((H + 2 * pt + 2 * dh, W + 2 * pl + 64), fill ^ flip, np.int64)
    padded[pt:pt + H, pl:pl + W] = raw
    sums = np.array([[sum(int(w[3 * i + j]) * int(padded[r * sh + i * dh, u * sw + j * dw])
                          for i in range(3) for j in range(3))
                      for u in range(OW)] for r in range(OH)])
    if start is None:  # about half of the sums wrap, past the top or the bottom
        middle = int(np.median(sums))
        start = 2 ** 31 - 1 - middle if middle >= 0 else -2 ** 31 - middle
    assert tie_free(m0, shift) == (case != "ties")
    assert (shift > _requant.FOLD_MAX_SHIFT) == (case == "unfolded")
    guarded = np.full(64 + OH * OW + 5, 77, np.uint8)  # 64 bytes before y and 5 after: untouched
    y = guarded[64:]
    _run_tile(_dwtile.TILES[tile], y, plane, H * W, H, W, idx, words, np.int32(start),
              x_type(fill), flip, -(-OW // 16), OH, OW, sh, sw, dh, dw, pt, pl, m0, shift, 128, 0,
              255)
    wrapped = ((start + sums + 2 ** 31) % 2 ** 32 - 2 ** 31).astype(np.int32)
    want = ref_quant.requantize_dense_i8(wrapped.reshape(1, -1), np.array([m0], np.int32),
                                         np.array([shift], np.int32), 128, 0, 255)[0]
    assert_exact(y[:OH * OW], want, tile=tile, case=case)
    assert (y[OH * OW:] == 77).all() and (guarded[:64] == 77).all()
    spread = {"wrap": {0, 255} <= set(want.tolist()), "tie-free": len(set(want.tolist())) > 5,
              "ties": (wrapped % 2 == 1).any() and (wrapped < 0).any(),
              "unfolded": len(set(want.tolist())) > 1}
    assert spread[case]  # each case meets what it is there for


_RUNNERS: dict = {}


def _run_tile(tile, *args):
    runner = _RUNNERS.get(tile)
    if runner is None:
        def run(y, x, base, H, W, idx, words, start, x_fill, flip, blocks, OH, OW, sh, sw, dh,
                dw, pt, pl, m0n, shift_n, y_zero_point, lo, hi):
            tile(y, x, base, H, W, idx, words, start, x_fill, flip, blocks, OH, OW, sh, sw, dh,
                 dw, pt, pl, m0n, shift_n, y_zero_point, lo, hi)
        runner = _RUNNERS[tile] = run if numba.config.DISABLE_JIT else numba.njit(run)
    runner(*args)


@pytest.mark.parametrize("tile", ["loops", "vnni"])
@pytest.mark.parametrize("case", sorted(TILE_CASES))
@pytest.mark.parametrize("x_type", [np.uint8, np.int8], ids=["u8", "s8"])
def test_the_plane_tile_sums_three_rows_of_three_taps(tile, case, x_type):
    """The plane tile (both variants) against the formula on a 21 × 6 plane at stride 1 with pads
    of 1 and 2 (the fill outside, 3 groups of 64 outputs, the last one partial, windows from
    inside the plane), requantized with zero point 128 (wrapped sums, a tie-free multiplier, ties
    of both signs), between guard bytes that stay as they were."""
    if tile == "vnni" and not _dwtile.RUNS:
        pytest.skip("the plane tile's IR needs AVX-512 VNNI + VBMI and the JIT")
    start, x_top, w_top, (m0, shift) = TILE_CASES[case]
    rng = np.random.default_rng(len(case) + 7 * (x_type is np.int8))
    H, W, pt, pl, fill = 21, 6, 1, 2, 7
    flip = 0x80 if x_type is np.int8 else 0
    raw = rng.integers(0, x_top, (H, W))
    x = (raw ^ flip).astype(np.uint8).view(x_type)
    plane = np.full(3 * H * W, 99, np.uint8).view(x_type)  # neighbours: never read
    plane[H * W:2 * H * W] = x.reshape(-1)
    w = rng.integers(-w_top, w_top, 9).astype(np.int8)
    OH, OW = H + 2 * pt - 2, W + 2 * pl - 2
    idx, ws = _dwtile.plane_table(H, W, OH, OW, 1, 1, 1, 1, pt, pl)
    assert idx.shape[0] == -(-OH * OW // 64) == 3
    padded = np.full((H + 2 * pt, W + 2 * pl), fill ^ flip, np.int64)
    padded[pt:pt + H, pl:pl + W] = raw
    sums = np.array([[sum(int(w[3 * i + j]) * int(padded[r + i, u + j])
                          for i in range(3) for j in range(3))
                      for u in range(OW)] for r in range(OH)])
    if start is None:
        middle = int(np.median(sums))
        start = 2 ** 31 - 1 - middle if middle >= 0 else -2 ** 31 - middle
    words = np.zeros((3, 3), np.int32)
    words[1] = _dwtile.row_words(w[None])[0]  # channel 1 of 3
    guarded = np.full(64 + OH * OW + 70, 77, np.uint8)  # 64 bytes before y and 70 after
    tile_fn = _dwtile.dw3_plane_tile_portable if tile == "loops" else _dwtile.dw3_plane_tile
    _run_plane_tile(tile_fn, guarded, 64, plane, H * W, H * W, idx, ws, words, 1,
                    np.int32(start), x_type(fill), flip, OH * OW, m0, shift, 128, 0, 255)
    wrapped = ((start + sums + 2 ** 31) % 2 ** 32 - 2 ** 31).astype(np.int32)
    want = ref_quant.requantize_dense_i8(wrapped.reshape(1, -1), np.array([m0], np.int32),
                                         np.array([shift], np.int32), 128, 0, 255)[0]
    assert_exact(guarded[64:64 + OH * OW], want, tile=tile, case=case)
    assert (guarded[64 + OH * OW:] == 77).all() and (guarded[:64] == 77).all()


def _run_plane_tile(tile, *args):
    runner = _RUNNERS.get(tile)
    if runner is None:
        def run(y, y_base, x, base, HW, idx, ws, words, n, start, x_fill, flip, total, m0n,
                shift_n, y_zero_point, lo, hi):
            tile(y, y_base, x, base, HW, idx, ws, words, n, start, x_fill, flip, total, m0n,
                 shift_n, y_zero_point, lo, hi)
        runner = _RUNNERS[tile] = run if numba.config.DISABLE_JIT else numba.njit(run)
    runner(*args)
