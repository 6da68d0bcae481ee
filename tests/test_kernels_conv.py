"""Conv, im2col, depthwise, pooling and elementwise kernels against their references.

f32 kernels: within the K-term float32 bound of the float64 reference (kernel_checks.assert_f32_close,
magnitude = the same op on |w|, |x|, |b|). int8 kernels: bit-exact against the int64 integer reference
(kernel_checks.assert_exact). The geometry a planner would resolve (output size, padded plane,
accumulator pitch) is computed here by ``_plan`` from ``zeroskip.geometry.geometry``.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel_checks import assert_exact, assert_f32_close, extreme_values, residual_for
from zeroskip.kernels import KERNELS
from zeroskip.kernels._planes import tap_starts
from zeroskip.quantmath import quantize_multiplier
from zeroskip.reference import OPS, REFERENCES
from zeroskip.geometry import geometry

I8_RANGE = {np.uint8: (0, 255), np.int8: (-128, 127)}


# ----------------------------------------------------------------------------- helpers


def _plan(x_shape, kh, kw, strides, pads, dilations):
    """What the planner passes: OH, OW, padded plane (Hp, Wp), accumulator pitch P, pads top/left,
    and the sparse convs' phases per plane (rows, Wq)."""
    H, W = x_shape[2:]
    begins, _, (OH, OW) = geometry([H, W], [kh, kw], strides, dilations, pads, "NOTSET")
    Hp = (OH - 1) * strides[0] + (kh - 1) * dilations[0] + 1
    Wp = (OW - 1) * strides[1] + (kw - 1) * dilations[1] + 1
    P = Wp if tuple(strides) == (1, 1) else OW
    Hq = OH + (kh - 1) * dilations[0] // strides[0]  # the sparse convs' padded phases
    Wq = OW + (kw - 1) * dilations[1] // strides[1]
    return dict(OH=OH, OW=OW, Hp=Hp, Wp=Wp, P=P, pt=begins[0], pl=begins[1],
                phases=(strides[0] * strides[1] * Hq, Wq))


def _starts(indices, case):
    """The sparse convs' tap starts for a conv case, as the plan computes them (TapStarts)."""
    B, C, H, W, N, kh, kw, s, p, d, g = case
    rows, wq = _plan((B, C, H, W), kh, kw, s, p, d)["phases"]
    return tap_starts(indices, C // g, kh, kw, rows // (s[0] * s[1]), wq, s[0], s[1], d[0], d[1])


def _csr(w, index_dtype=np.int32):
    """indptr, indices, data of a dense (N, K) matrix (sorted, no explicit zeros)."""
    mask = w != 0
    indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(index_dtype)
    indices = np.nonzero(mask)[1].astype(index_dtype)
    return indptr, indices, w[mask]


def _with_ends(rng, shape, lo, hi):
    """Integers in [lo, hi], a quarter of them at lo or hi: the largest products occur in every case."""
    v = rng.integers(lo, hi + 1, shape)
    ends = rng.random(shape) < 0.25
    v[ends] = np.where(rng.random(int(ends.sum())) < 0.5, lo, hi)
    return v


def _sparse(rng, shape, density, dtype):
    """Random weights at ``density``; channel 0 is always all-zero when there are 3+ channels.
    int8 weights may be anything in [−128, 127] (imported models can hold −128)."""
    if dtype == np.int8:
        w = _with_ends(rng, shape, -128, 127).astype(np.int8)
    else:
        w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) >= density] = 0
    if shape[0] >= 3:
        w[0] = 0
    return w


def _quant_input(rng, shape, dtype):
    lo, hi = I8_RANGE[dtype]
    return _with_ends(rng, shape, lo, hi).astype(dtype), int(rng.integers(lo, hi + 1))


# Conv geometries: (B, C, H, W, N, kh, kw, strides, pads [t, l, b, r], dilations, groups)
CONV_CASES = [
    (1, 1, 5, 5, 1, 1, 1, [1, 1], [0, 0, 0, 0], [1, 1], 1),
    (2, 2, 7, 7, 7, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1),
    (1, 16, 9, 8, 17, 3, 3, [2, 2], [1, 0, 2, 1], [1, 1], 1),     # odd pads, stride 2
    (1, 7, 11, 10, 16, 5, 5, [3, 1], [2, 2, 2, 2], [1, 1], 1),    # stride 3 × 1
    (1, 4, 9, 9, 6, 1, 3, [1, 2], [0, 1, 0, 1], [1, 1], 2),       # 1×3, groups 2
    (1, 4, 10, 10, 4, 3, 3, [1, 1], [2, 2, 2, 2], [2, 2], 1),     # dilation 2
    (1, 17, 2, 3, 2, 5, 5, [1, 1], [2, 2, 2, 2], [1, 1], 1),      # input smaller than the kernel
    (1, 16, 6, 6, 16, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1], 16),    # depthwise as a grouped conv
    (1, 2, 70, 66, 3, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1),     # several accumulator row tiles
]
DENSITIES = [0.0, 0.1, 0.5, 0.9, 1.0]


def _conv_ids(case):
    B, C, H, W, N, kh, kw, s, p, d, g = case
    return f"B{B}C{C}{H}x{W}N{N}k{kh}x{kw}s{s[0]}{s[1]}p{''.join(map(str, p))}d{d[0]}g{g}"


# ----------------------------------------------------------------------------- registry


def test_every_kernel_has_a_reference():
    mine = {"conv2d_csr_f32", "conv2d_csr_i8", "conv2d_csr_rq_i8", "depthwise_dense_rq_i8",
            "im2col_dense_f32",
            "im2col_dense_i8",
            "im2row_dense_i8", "channels_last_dense_i8", "depthwise_dense_f32", "depthwise_dense_i8", "maxpool_dense_i8",
            "maxpool_dense_f32",
            "avgpool_dense_i8", "global_avgpool_dense_i8", "add_dense_i8", "bias_act_dense_f32",
            "clamp_dense_f32", "add_dense_f32", "global_avgpool_dense_f32"}
    assert mine <= set(KERNELS) and mine <= set(REFERENCES)


# ----------------------------------------------------------------------------- direct sparse conv


def _run_conv_f32(w, b, x, case, index_dtype=np.int32, lo=-np.inf, hi=np.inf):
    B, C, H, W, N, kh, kw, s, p, d, g = case
    q = _plan(x.shape, kh, kw, s, p, d)
    indptr, indices, data = _csr(w, index_dtype)
    xq = np.empty((B, C) + q["phases"], np.float32)
    y = np.full((B, N, q["OH"], q["OW"]), np.nan, np.float32)
    KERNELS["conv2d_csr_f32"](indptr, _starts(indices, case), data, b, x, xq, y, kh, kw, s[0], s[1],
                              d[0], d[1], q["pt"], q["pl"], g, lo, hi)
    return y, (indptr, indices, data)


def _run_conv_i8(w, bias, x, x_zp, case, index_dtype=np.int32):
    B, C, H, W, N, kh, kw, s, p, d, g = case
    q = _plan(x.shape, kh, kw, s, p, d)
    indptr, indices, data = _csr(w, index_dtype)
    xq = np.empty((B, C) + q["phases"], x.dtype)
    y = np.full((B, N, q["OH"], q["OW"]), -7, np.int32)
    KERNELS["conv2d_csr_i8"](indptr, _starts(indices, case), data, bias, x, x_zp, xq, y, kh, kw,
                             s[0], s[1], d[0], d[1], q["pt"], q["pl"], g)
    return y, (indptr, indices, data)


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("case", CONV_CASES, ids=_conv_ids)
def test_conv2d_csr_f32(case, density):
    B, C, H, W, N, kh, kw, s, p, d, g = case
    rng = np.random.default_rng(hash((_conv_ids(case), density)) % 2**32)
    w = _sparse(rng, (N, C // g * kh * kw), density, np.float32)
    x = rng.standard_normal((B, C, H, W)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    y, csr = _run_conv_f32(w, b, x, case)
    geo = dict(kernel_shape=(kh, kw), strides=s, pads=p, dilations=d, groups=g)
    want = REFERENCES["conv2d_csr_f32"](*csr, b, x, **geo)
    mag = REFERENCES["conv2d_csr_f32"](csr[0], csr[1], np.abs(csr[2]), np.abs(b), np.abs(x), **geo)
    assert_f32_close(y, want, K=C // g * kh * kw + 1, magnitude=mag, case=_conv_ids(case),
                     density=density)


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("case", CONV_CASES, ids=_conv_ids)
def test_conv2d_csr_i8(case, density):
    B, C, H, W, N, kh, kw, s, p, d, g = case
    rng = np.random.default_rng(hash((_conv_ids(case), density, 8)) % 2**32)
    w = _sparse(rng, (N, C // g * kh * kw), density, np.int8)
    x, x_zp = _quant_input(rng, (B, C, H, W), np.uint8 if N % 2 else np.int8)
    bias = rng.integers(-2**20, 2**20, N).astype(np.int32)
    y, csr = _run_conv_i8(w, bias, x, x_zp, case)
    want = REFERENCES["conv2d_csr_i8"](*csr, bias, x, x_zp, kernel_shape=(kh, kw), strides=s,
                                       pads=p, dilations=d, groups=g)
    assert_exact(y, want, dtype=np.int32, case=_conv_ids(case), density=density, x_zp=x_zp,
                 extra={"bias'": bias})


def _requantization(rng, acc, N, y_type):
    """(m0, shift, y_zp, lo, hi) for N channels that spread the int32 sums ``acc`` over ~300 steps
    about a random zero point, with a clamp just inside the type (a fused Relu's): both ends bind."""
    spread = 300 / (int(acc.max()) - int(acc.min()) + 1)
    m0, shift = quantize_multiplier(spread * rng.uniform(0.8, 1.2, N))
    lo, hi = int(np.iinfo(y_type).min) + 2, int(np.iinfo(y_type).max) - 1
    return m0, shift, int(rng.integers(lo, hi + 1)), lo, hi


def _unfused(acc, rq):
    """requantize_dense_i8's reference image by image: what every requantizing kernel must give."""
    n_out = acc.shape[1]
    return np.stack([REFERENCES["requantize_dense_i8"](a.reshape(n_out, -1), *rq) for a in acc])


@pytest.mark.parametrize("case", CONV_CASES, ids=_conv_ids)
def test_conv2d_csr_rq_i8_is_the_conv_then_requantize(case):
    """conv2d_csr_rq_i8 (requantized tile by tile) gives the bytes of conv2d_csr_i8 then
    requantize_dense_i8, image by image: every geometry, uint8 and int8 in and out, outputs clamped
    at both ends."""
    B, C, H, W, N, kh, kw, s, p, d, g = case
    rng = np.random.default_rng(hash((_conv_ids(case), "rq")) % 2**32)
    q = _plan((B, C, H, W), kh, kw, s, p, d)
    geo = dict(kernel_shape=(kh, kw), strides=s, pads=p, dilations=d, groups=g)
    for x_type, y_type in ((np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8)):
        w = _sparse(rng, (N, C // g * kh * kw), 0.4, np.int8)
        x, x_zp = _quant_input(rng, (B, C, H, W), x_type)
        bias = rng.integers(-2**16, 2**16, N).astype(np.int32)
        acc, csr = _run_conv_i8(w, bias, x, x_zp, case)
        m0, shift, y_zp, lo, hi = _requantization(rng, acc, N, y_type)
        xq = np.empty((B, C) + q["phases"], x.dtype)
        y = np.full((B, N, q["OH"], q["OW"]), 7, y_type)
        KERNELS["conv2d_csr_rq_i8"](csr[0], _starts(csr[1], case), csr[2], bias, x, x_zp, xq, m0,
                                    shift, y_zp, lo, hi, y, kh, kw, s[0], s[1], d[0], d[1], q["pt"],
                                    q["pl"], g)
        want = REFERENCES["conv2d_csr_rq_i8"](*csr, bias, x, x_zp, m0, shift, y_zp, lo, hi, **geo)
        assert np.array_equal(want, _unfused(acc, (m0, shift, y_zp, lo, hi)).reshape(want.shape))
        assert_exact(y, want, dtype=y_type, case=_conv_ids(case), x_zp=x_zp)
        # a residual QAdd fused into the epilogue: those bytes, then add_dense_i8's
        residual = residual_for(rng, y.shape, y_type, y_zp)
        added = np.full_like(y, 7)
        KERNELS["conv2d_csr_rq_i8"](csr[0], _starts(csr[1], case), csr[2], bias, x, x_zp, xq, m0,
                                    shift, y_zp, lo, hi, added, kh, kw, s[0], s[1], d[0], d[1],
                                    q["pt"], q["pl"], g, residual)
        want_added = REFERENCES["add_dense_i8"](want, *residual)
        assert np.array_equal(REFERENCES["conv2d_csr_rq_i8"](
            *csr, bias, x, x_zp, m0, shift, y_zp, lo, hi, **geo, residual=residual), want_added)
        assert_exact(added, want_added, dtype=y_type, case=_conv_ids(case), residual=True)


def test_conv2d_csr_rq_i8_writes_nothing_past_y_when_a_block_starts_in_a_dropped_column():
    """Rows of pitch 43 for 41 outputs: position 128, where a row block starts (of 64 or 128
    positions, AVX2 or AVX-512), is column 42 of row 2, the last dropped one. The epilogue sliced
    the block's sums to −1 there, from their end, and wrote 127 values from y[2, 42] on: into the
    next rows, the next plane, and past the last plane (a corrupted heap on AVX2). y is the head
    of a larger buffer here, so that a write past it shows."""
    case = (2, 3, 5, 41, 4, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1)
    B, C, H, W, N, kh, kw, s, p, d, g = case
    rng = np.random.default_rng(41)
    q = _plan((B, C, H, W), kh, kw, s, p, d)
    w = _sparse(rng, (N, C * kh * kw), 0.5, np.int8)
    x, x_zp = _quant_input(rng, (B, C, H, W), np.uint8)
    bias = rng.integers(-2**16, 2**16, N).astype(np.int32)
    acc, csr = _run_conv_i8(w, bias, x, x_zp, case)
    m0, shift, y_zp, lo, hi = _requantization(rng, acc, N, np.uint8)
    xq = np.empty((B, C) + q["phases"], x.dtype)
    size = B * N * q["OH"] * q["OW"]
    buffer = np.full(size + 4096, 77, np.uint8)
    y = buffer[:size].reshape(B, N, q["OH"], q["OW"])
    KERNELS["conv2d_csr_rq_i8"](csr[0], _starts(csr[1], case), csr[2], bias, x, x_zp, xq, m0,
                                shift, y_zp, lo, hi, y, kh, kw, 1, 1, 1, 1, q["pt"], q["pl"], g)
    assert np.all(buffer[size:] == 77), "the kernel wrote past y"
    want = REFERENCES["conv2d_csr_rq_i8"](*csr, bias, x, x_zp, m0, shift, y_zp, lo, hi,
                                          kernel_shape=(kh, kw), strides=s, pads=p, dilations=d,
                                          groups=g)
    assert_exact(y, want, dtype=np.uint8)


@pytest.mark.parametrize("case", [CONV_CASES[2], CONV_CASES[4], CONV_CASES[5]], ids=_conv_ids)
def test_conv2d_csr_f32_agrees_with_onnx_conv_reference(case):
    """Geometry conventions (pads order, dilation, groups) match reference.OPS['Conv'], with Relu."""
    B, C, H, W, N, kh, kw, s, p, d, g = case
    rng = np.random.default_rng(5)
    w = _sparse(rng, (N, C // g * kh * kw), 0.5, np.float32)
    x = rng.standard_normal((B, C, H, W)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    y, _ = _run_conv_f32(w, b, x, case, index_dtype=np.int64, lo=0.0)
    w4 = w.reshape(N, C // g, kh, kw).astype(np.float64)
    want = np.maximum(OPS["Conv"](x, w4, b, strides=s, pads=p, dilations=d, group=g), 0)
    mag = OPS["Conv"](np.abs(x), np.abs(w4), np.abs(b), strides=s, pads=p, dilations=d, group=g)
    assert_f32_close(y, want, K=C // g * kh * kw + 1, magnitude=mag, case=_conv_ids(case))


def test_conv2d_csr_i8_narrow_indices_and_extreme_values():
    """uint16 indices; weights −128 and 127 with x at the type's ends (largest products)."""
    case = (1, 16, 6, 5, 5, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1)
    rng = np.random.default_rng(3)
    w = np.where(rng.random((5, 144)) < 0.5, 127, -128).astype(np.int8)
    bias = np.array([2**30, -2**30, 0, 1, -1], np.int32)
    for x_type in (np.uint8, np.int8):
        lo, hi = I8_RANGE[x_type]
        x = np.where(rng.random((1, 16, 6, 5)) < 0.5, hi, lo).astype(x_type)
        y, csr = _run_conv_i8(w, bias, x, hi, case, index_dtype=np.uint16)
        want = REFERENCES["conv2d_csr_i8"](*csr, bias, x, hi, kernel_shape=(3, 3), strides=[1, 1],
                                           pads=[1, 1, 1, 1], dilations=[1, 1], groups=1)
        assert_exact(y, want, dtype=np.int32, case="extremes", x=np.dtype(x_type).name)


# ----------------------------------------------------------------------------- im2col


@pytest.mark.parametrize("case", CONV_CASES[:8], ids=_conv_ids)
def test_im2col(case):
    B, C, H, W, N, kh, kw, s, p, d, g = case
    rng = np.random.default_rng(11)
    q = _plan((B, C, H, W), kh, kw, s, p, d)
    geo = dict(kernel_shape=(kh, kw), strides=s, pads=p, dilations=d, groups=g)
    args = (kh, kw, s[0], s[1], d[0], d[1], q["pt"], q["pl"])
    K = C // g * kh * kw
    # f32: a pure copy, so within 0 ulp of the reference; then the dense f32 path end to end
    x = rng.standard_normal((B, C, H, W)).astype(np.float32)
    cols = np.full((B, g, K, q["OH"], q["OW"]), np.nan, np.float32)
    KERNELS["im2col_dense_f32"](x, cols, *args)
    want = REFERENCES["im2col_dense_f32"](x, **geo)
    assert_f32_close(cols, want, K=0, magnitude=0, case=_conv_ids(case))
    w = rng.standard_normal((N, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    y = np.matmul(w.reshape(g, N // g, K), cols.reshape(B, g, K, -1)).reshape(B, N, -1)
    KERNELS["bias_act_dense_f32"](y, b, -np.inf, np.inf)
    w4 = w.reshape(N, C // g, kh, kw).astype(np.float64)
    ref = OPS["Conv"](x, w4, b, strides=s, pads=p, dilations=d, group=g).reshape(B, N, -1)
    mag = OPS["Conv"](np.abs(x), np.abs(w4), np.abs(b), strides=s, pads=p, dilations=d,
                      group=g).reshape(B, N, -1)
    assert_f32_close(y, ref, K=K + 1, magnitude=mag, case=_conv_ids(case))
    # i8: pads hold the zero point, in both layouts
    for dtype in (np.uint8, np.int8):
        xq, zp = _quant_input(rng, (B, C, H, W), dtype)
        cols = np.zeros((B, g, K, q["OH"], q["OW"]), dtype)
        KERNELS["im2col_dense_i8"](xq, zp, cols, *args)
        assert_exact(cols, REFERENCES["im2col_dense_i8"](xq, zp, **geo), dtype=dtype, zp=zp)
        rows = np.zeros((B, g, q["OH"], q["OW"], K), dtype)
        xh = np.zeros((B, H, W, C), dtype)
        KERNELS["channels_last_dense_i8"](xq, xh)
        assert_exact(xh, REFERENCES["channels_last_dense_i8"](xq), dtype=dtype, zp=zp)
        KERNELS["im2row_dense_i8"](xh, zp, rows, *args)
        assert_exact(rows, REFERENCES["im2row_dense_i8"](xh, zp, **geo), dtype=dtype, zp=zp)
        # the rows times the tap-major weights are the convolution (the planner's permutation)
        wq = _with_ends(rng, (N, C // g, kh, kw), -128, 127).astype(np.int64)
        w_tap = wq.transpose(0, 2, 3, 1).reshape(g, N // g, K)
        got = np.einsum("bgmk,gnk->bgnm", rows.reshape(B, g, -1, K).astype(np.int64), w_tap)
        want = OPS["Conv"]((xq.astype(np.int64) - zp).astype(np.float64), wq.astype(np.float64),
                           None, strides=s, pads=p, dilations=d, group=g)
        want = want.reshape(B, g, N // g, -1) + zp * wq.reshape(g, N // g, -1).sum(-1)[None, :, :, None]
        np.testing.assert_array_equal(got, np.rint(want).astype(np.int64))


@pytest.mark.parametrize("C,H,k,s,pad", [(3, 23, 7, 2, 3), (3, 9, 7, 1, 0), (5, 11, 3, 1, 1),
                                         (1, 40, 5, 1, 2), (2, 10, 7, 1, 3), (16, 6, 3, 1, 1),
                                         (3, 10, 7, 2, 0), (2, 10, 7, 2, 0)])
@pytest.mark.parametrize("extra", [0, 1, 11, 40])
def test_im2row_with_padding_columns(C, H, k, s, pad, extra):
    """The rows of the GEMM, K padded up with ``extra`` columns (the plan pads K to the tile's
    step): im2row copies runs of k·C bytes that are not a multiple of 16 as whole 16-byte blocks
    where the row and the input have room, so the bytes past a run must be the next run's, and
    the columns up to K exactly the reference's, at the input's last bytes too; nothing is
    written past the rows' end (64 guard bytes after them)."""
    rng = np.random.default_rng(C * 100 + H + extra)
    x, zp = _quant_input(rng, (2, C, H, H), np.uint8)
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    geo = dict(kernel_shape=(k, k), strides=(s, s), pads=(pad,) * 4, dilations=(1, 1), groups=1)
    want = REFERENCES["im2row_dense_i8"](xh, zp, **geo)
    K = want.shape[-1]
    shape = want.shape[:-1] + (K + extra,)
    memory = np.full(np.prod(shape) + 64, 77, np.uint8)
    rows = memory[:-64].reshape(shape)
    KERNELS["im2row_dense_i8"](xh, zp, rows, k, k, s, s, 1, 1, pad, pad)
    assert_exact(rows[..., :K], want, dtype=np.uint8, zp=zp, extra=extra)
    assert np.all(memory[-64:] == 77)


# ----------------------------------------------------------------------------- depthwise

# (B, C, mult, H, W, kh, kw, strides, pads, dilations)
DW_CASES = [
    (1, 1, 1, 5, 5, 1, 1, [1, 1], [0, 0, 0, 0], [1, 1]),
    (2, 7, 1, 9, 8, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1]),
    (1, 16, 1, 9, 9, 3, 3, [2, 2], [0, 0, 1, 1], [1, 1]),      # MobileNetV2 stride 2 (TF pads)
    (1, 17, 2, 10, 7, 5, 5, [1, 2], [2, 1, 2, 3], [1, 1]),     # multiplier 2, asymmetric
    (1, 2, 1, 8, 8, 3, 3, [1, 1], [2, 2, 2, 2], [2, 2]),       # dilation 2
    (1, 3, 1, 2, 2, 1, 3, [1, 1], [0, 2, 0, 2], [1, 1]),       # 1×3 wider than the input
    (2, 5, 2, 11, 9, 3, 3, [2, 1], [1, 0, 2, 1], [1, 2]),      # 3×3 fused loop: mult 2, mixed
    (1, 4, 3, 3, 4, 3, 3, [1, 3], [2, 3, 2, 3], [2, 1]),       # 3×3 mostly padding, mult 3
    (1, 3, 2, 5, 40, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1]),      # 3×3 rows over 28: the row loop
    (1, 3, 1, 7, 66, 3, 3, [1, 2], [1, 0, 1, 1], [1, 1]),      # (rows of 40 and of 33)
    (2, 2, 1, 9, 20, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1]),      # 3×3 in blocks of 16: rows of 20
    (1, 3, 1, 6, 56, 3, 3, [2, 2], [0, 0, 1, 1], [1, 1]),      # and of 28 at stride 2
]


def _dw_ids(case):
    return "B{}C{}m{}{}x{}k{}x{}s{}{}p{}d{}".format(*case[:5], *case[5:7], *case[7],
                                                    "".join(map(str, case[8])), case[9][0])


@pytest.mark.parametrize("density", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("case", DW_CASES, ids=_dw_ids)
def test_depthwise(case, density):
    B, C, m, H, W, kh, kw, s, p, d = case
    N = C * m
    rng = np.random.default_rng(hash((_dw_ids(case), density)) % 2**32)
    q = _plan((B, C, H, W), kh, kw, s, p, d)
    geo = dict(kernel_shape=(kh, kw), strides=s, pads=p, dilations=d)
    args = (kh, kw, s[0], s[1], d[0], d[1], q["pt"], q["pl"])
    w = _sparse(rng, (N, kh * kw), density, np.float32)
    x = rng.standard_normal((B, C, H, W)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    xp = np.empty((B, C, q["Hp"], q["Wp"]), np.float32)
    ws = np.empty((B, N, q["OH"] * q["P"]), np.float32)
    y = np.full((B, N, q["OH"], q["OW"]), np.nan, np.float32)
    KERNELS["depthwise_dense_f32"](w, b, x, xp, ws, y, *args, 0.0, 6.0)
    want = REFERENCES["depthwise_dense_f32"](w, b, x, **geo, lo=0.0, hi=6.0)
    mag = REFERENCES["depthwise_dense_f32"](np.abs(w), np.abs(b), np.abs(x), **geo)
    assert_f32_close(y, want, K=kh * kw + 1, magnitude=mag, case=_dw_ids(case))

    wq = _sparse(rng, (N, kh * kw), density, np.int8)
    xq, zp = _quant_input(rng, (B, C, H, W), np.uint8 if C % 2 else np.int8)
    bias = rng.integers(-2**16, 2**16, N).astype(np.int32)
    xp = np.empty((B, C, q["Hp"], q["Wp"]), xq.dtype)
    ws = np.empty((B, N, q["OH"] * q["P"]), np.int32)
    acc = np.zeros((B, N, q["OH"], q["OW"]), np.int32)
    KERNELS["depthwise_dense_i8"](wq, bias, xq, zp, xp, ws, acc, *args)
    want = REFERENCES["depthwise_dense_i8"](wq, bias, xq, zp, **geo)
    assert_exact(acc, want, dtype=np.int32, case=_dw_ids(case), zp=zp, extra={"bias'": bias})


@pytest.mark.parametrize("W, s", [(7, 1), (14, 1), (20, 1), (28, 2), (40, 1)])
def test_depthwise_f32_writes_nothing_past_its_output(W, s):
    # y a view of a longer buffer: the words after it must keep their sentinel (a block of 16
    # outputs reaches past a row's end; its stores must be masked there)
    rng = np.random.default_rng(W)
    B, C, H = 1, 3, 5
    q = _plan((B, C, H, W), 3, 3, [s, s], [1, 1, 1, 1], [1, 1])
    size = B * C * q["OH"] * q["OW"]
    buffer = np.full(size + 40, -7.0, np.float32)
    y = buffer[:size].reshape(B, C, q["OH"], q["OW"])
    w = rng.standard_normal((C, 9)).astype(np.float32)
    x = rng.standard_normal((B, C, H, W)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    xp = np.empty((B, C, q["Hp"], q["Wp"]), np.float32)
    ws = np.empty((B, C, q["OH"] * q["P"]), np.float32)
    KERNELS["depthwise_dense_f32"](w, b, x, xp, ws, y, 3, 3, s, s, 1, 1, q["pt"], q["pl"],
                                   -np.inf, np.inf)
    assert (buffer[size:] == -7.0).all()
    geo = dict(kernel_shape=(3, 3), strides=[s, s], pads=[1, 1, 1, 1], dilations=[1, 1])
    want = REFERENCES["depthwise_dense_f32"](w, b, x, **geo)
    mag = REFERENCES["depthwise_dense_f32"](np.abs(w), np.abs(b), np.abs(x), **geo)
    assert_f32_close(y, want, K=10, magnitude=mag, W=W, s=s)


def _grouped_3x3_f32(w, b, x, s, p, d, lo, hi):
    """The float 3×3 depthwise conv (multiplier 1) summed as the kernel's loops group it, in float32
    NumPy: (b + Σ_{t<4} w_t·x_t) + Σ_{4≤t<8} w_t·x_t, + w_8·x_8, then the clamp."""
    B, C, H, W = x.shape
    _, _, (OH, OW) = geometry([H, W], [3, 3], s, d, p, "NOTSET")
    xp = np.zeros((B, C, (OH - 1) * s[0] + 2 * d[0] + 1 + H, (OW - 1) * s[1] + 2 * d[1] + 1 + W),
                  np.float32)
    xp[:, :, p[0]:p[0] + H, p[1]:p[1] + W] = x
    taps = [xp[:, :, i * d[0]:i * d[0] + (OH - 1) * s[0] + 1:s[0],
               j * d[1]:j * d[1] + (OW - 1) * s[1] + 1:s[1]] for i in range(3) for j in range(3)]
    wt = [w[:, t].reshape(1, C, 1, 1) for t in range(9)]
    first = wt[0] * taps[0] + wt[1] * taps[1] + wt[2] * taps[2] + wt[3] * taps[3]
    second = wt[4] * taps[4] + wt[5] * taps[5] + wt[6] * taps[6] + wt[7] * taps[7]
    total = (b.reshape(1, C, 1, 1) + first) + second + wt[8] * taps[8]
    return np.minimum(np.maximum(total, np.float32(lo)), np.float32(hi)).astype(np.float32)


@pytest.mark.parametrize("H,W,s,d", [(9, 9, [2, 2], [1, 1]), (12, 56, [2, 2], [1, 1]),
                                     (7, 113, [2, 2], [1, 1]), (8, 66, [1, 2], [1, 1]),
                                     (10, 30, [2, 2], [1, 2]), (9, 40, [1, 1], [1, 1]),
                                     (6, 14, [1, 1], [2, 2])])
def test_depthwise_f32_3x3_gives_the_bytes_of_its_grouped_sum(H, W, s, d):
    """Every float 3×3 loop (row blocks, rows, and at column stride 2 the rows split into even and
    odd columns, in blocks or not) gives exactly the float32 sums grouped as documented."""
    rng = np.random.default_rng(H * W + s[1])
    B, C, p = 2, 5, [1, 1, 1, 1]
    q = _plan((B, C, H, W), 3, 3, s, p, d)
    w = rng.standard_normal((C, 9)).astype(np.float32)
    x = rng.standard_normal((B, C, H, W)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    xp = np.empty((B, C, q["Hp"], q["Wp"]), np.float32)
    ws = np.empty((B, C, q["OH"] * q["P"]), np.float32)
    y = np.full((B, C, q["OH"], q["OW"]), np.nan, np.float32)
    KERNELS["depthwise_dense_f32"](w, b, x, xp, ws, y, 3, 3, *s, *d, q["pt"], q["pl"],
                                   np.float32(-1.5), np.float32(np.inf))
    want = _grouped_3x3_f32(w, b, x, s, p, d, -1.5, np.inf)
    np.testing.assert_array_equal(y.view(np.int32), want.view(np.int32))


def _quantized_depthwise(rng, case, n_out, x_type, y_type):
    """A depthwise case's int8 operands for ``n_out`` output channels: (taps (n_out, kh·kw),
    x, x_zp, bias', the reference accumulator, the requantization (m0, shift, y_zp, lo, hi))."""
    B, C, m, H, W, kh, kw, s, p, d = case
    wq = rng.integers(-128, 128, (n_out, kh * kw)).astype(np.int8)
    xq, zp = _quant_input(rng, (B, C, H, W), x_type)
    bias = rng.integers(-2**16, 2**16, n_out).astype(np.int32)
    acc = REFERENCES["depthwise_dense_i8"](wq, bias, xq, zp, kernel_shape=(kh, kw), strides=s,
                                           pads=p, dilations=d)
    return wq, xq, zp, bias, acc, _requantization(rng, acc, n_out, y_type)


@pytest.mark.parametrize("case", DW_CASES, ids=_dw_ids)
def test_depthwise_dense_rq_i8_is_the_depthwise_then_requantize(case):
    """depthwise_dense_rq_i8 (planar, requantized row by row for 3×3, tile by tile otherwise)
    gives the bytes of depthwise_dense_i8 then requantize_dense_i8: every geometry and multiplier,
    uint8 and int8 in and out, outputs clamped at both ends."""
    B, C, m, H, W, kh, kw, s, p, d = case
    N = C * m
    rng = np.random.default_rng(hash((_dw_ids(case), "rq")) % 2**32)
    q = _plan((B, C, H, W), kh, kw, s, p, d)
    geo = dict(kernel_shape=(kh, kw), strides=s, pads=p, dilations=d)
    args = (kh, kw, s[0], s[1], d[0], d[1], q["pt"], q["pl"])
    for x_type, y_type in ((np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8)):
        wq, xq, zp, bias, acc, rq = _quantized_depthwise(rng, case, N, x_type, y_type)
        xp = np.empty((B, C, q["Hp"], q["Wp"]), xq.dtype)
        ws = np.empty((B, N, q["OH"] * q["P"]), np.int32)
        y = np.full((B, N, q["OH"], q["OW"]), 7, y_type)
        KERNELS["depthwise_dense_rq_i8"](wq, bias, xq, zp, xp, ws, *rq, y, *args)
        want = REFERENCES["depthwise_dense_rq_i8"](wq, bias, xq, zp, *rq, **geo)
        assert np.array_equal(want, _unfused(acc, rq).reshape(want.shape))
        assert_exact(y, want, dtype=y_type, case=_dw_ids(case), zp=zp)


NHWC_SPLIT_CASES = [  # small planes with many channels: the channels split across tasks
    (1, 200, 1, 7, 7, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1]),
    (2, 130, 1, 6, 5, 3, 3, [2, 2], [1, 0, 1, 1], [1, 1]),
]


@pytest.mark.parametrize("case", [c for c in DW_CASES if c[2] == 1] + NHWC_SPLIT_CASES, ids=_dw_ids)
def test_depthwise_channels_last_requantizes_as_the_planar_kernel(case):
    """depthwise_nhwc_rq_i8 (channels last, requantized in its epilogue) gives the bytes of
    depthwise_dense_i8 then requantize_dense_i8: pads at the zero point, strides, dilations, odd C
    (a vector tail), full-range taps, and outputs clamped at both ends."""
    B, C, m, H, W, kh, kw, s, p, d = case
    rng = np.random.default_rng(hash(_dw_ids(case)) % 2**32)
    q = _plan((B, C, H, W), kh, kw, s, p, d)
    geo = dict(kernel_shape=(kh, kw), strides=s, pads=p, dilations=d)
    args = (kh, kw, s[0], s[1], d[0], d[1], q["pt"], q["pl"])
    for x_type, y_type in ((np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8)):
        wq, xq, zp, bias, acc, rq = _quantized_depthwise(rng, case, C, x_type, y_type)
        xh = np.ascontiguousarray(xq.transpose(0, 2, 3, 1))
        w_taps = np.ascontiguousarray(wq.T)
        y = np.full((B, C, q["OH"], q["OW"]), 7, y_type)
        KERNELS["depthwise_nhwc_rq_i8"](w_taps, bias, xh, zp, *rq, y, *args)
        want = REFERENCES["depthwise_nhwc_rq_i8"](w_taps, bias, xh, zp, *rq, **geo)
        assert np.array_equal(want, _unfused(acc, rq).reshape(want.shape))
        assert_exact(y, want, dtype=y_type, case=_dw_ids(case), zp=zp)


# ----------------------------------------------------------------------------- pooling

# (H, W, kh, kw, strides, pads, dilations, ceil_mode)
POOL_CASES = [
    (5, 5, 1, 1, [1, 1], [0, 0, 0, 0], [1, 1], 0),
    (7, 7, 3, 3, [2, 2], [1, 1, 1, 1], [1, 1], 0),
    (8, 7, 3, 3, [2, 2], [1, 1, 1, 1], [1, 1], 1),    # ceil_mode overhang
    (6, 9, 2, 3, [2, 3], [1, 0, 0, 2], [1, 1], 1),    # asymmetric pads, ceil
    (9, 9, 3, 3, [1, 1], [2, 2, 2, 2], [2, 2], 0),    # dilation 2
    (2, 3, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1], 0),    # input smaller than kernel + pads
    (14, 14, 5, 5, [3, 3], [2, 2, 2, 2], [1, 1], 1),
    (3, 3, 2, 2, [1, 1], [1, 1, 1, 1], [3, 3], 0),    # dilated windows on pads only
    (1, 1, 3, 3, [2, 2], [1, 1, 1, 1], [1, 1], 0),    # a 1×1 plane
    (9, 11, 3, 3, [2, 2], [1, 1, 1, 1], [1, 1], 1),   # odd sizes, stride 2, ceil
    (5, 70, 3, 3, [2, 2], [1, 1, 1, 1], [1, 1], 0),   # rows past RUN_CHUNK: runs, the last overlaps
    (4, 33, 4, 4, [1, 1], [1, 2, 2, 1], [1, 1], 0),   # stride 1, 33 wide; taps in groups 3 + 1
    (11, 40, 3, 3, [2, 2], [2, 2, 2, 2], [2, 2], 1),  # dilation 2, stride 2: every tap in one phase
    (8, 37, 2, 2, [4, 4], [0, 1, 1, 0], [1, 1], 1),   # stride 4: the general phase split
    (6, 64, 1, 7, [1, 3], [0, 3, 0, 3], [1, 1], 0),   # 1×7, stride 3: seven taps, three passes
]


def _pool_ids(case):
    return "{}x{}k{}x{}s{}{}p{}d{}c{}".format(*case[:4], *case[4], "".join(map(str, case[5])),
                                               case[6][0], case[7])


def _pool_args(case):
    H, W, kh, kw, s, p, d, ceil = case
    begins, ends, out = geometry([H, W], [kh, kw], s, d, p, "NOTSET", ceil)
    geo = dict(kernel_shape=[kh, kw], strides=s, pads=p, dilations=d, ceil_mode=ceil)
    return out, (kh, kw, s[0], s[1], d[0], d[1], begins[0], begins[1]), (ends[0], ends[1]), geo


def _round_half_away(v):
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


@pytest.mark.parametrize("case", POOL_CASES, ids=_pool_ids)
def test_maxpool_dense_f32(case):
    """Every window, including those on pads only (float32's lowest) and inputs of −inf."""
    rng = np.random.default_rng(2)
    out, args, _, geo = _pool_args(case)
    x = rng.standard_normal((2, 3, case[0], case[1])).astype(np.float32)
    x[0, 1] = -np.inf  # a plane of −inf: windows that reach it give −inf, not the finite lowest
    y = np.full((2, 3, *out), np.nan, np.float32)
    KERNELS["maxpool_dense_f32"](x, y, *args)
    want = REFERENCES["maxpool_dense_f32"](x, **geo)
    np.testing.assert_array_equal(y, want.astype(np.float32), err_msg=_pool_ids(case))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("case", POOL_CASES, ids=_pool_ids)
def test_maxpool_dense_i8(case, dtype):
    rng = np.random.default_rng(1)
    out, args, _, geo = _pool_args(case)
    x, _ = _quant_input(rng, (2, 3, case[0], case[1]), dtype)
    y = np.zeros((2, 3, *out), dtype)
    KERNELS["maxpool_dense_i8"](x, y, *args)
    assert_exact(y, REFERENCES["maxpool_dense_i8"](x, **geo), dtype=dtype, case=_pool_ids(case))
    if case[6] == [1, 1]:  # the float reference agrees (no windows on pads only)
        assert_exact(y, OPS["MaxPool"](x.astype(np.float64), **geo), case=_pool_ids(case))


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("case", POOL_CASES, ids=_pool_ids)
def test_avgpool_dense_i8(case, dtype, count_include_pad):
    rng = np.random.default_rng(2)
    out, args, (pb, pr), geo = _pool_args(case)
    x, zp = _quant_input(rng, (2, 3, case[0], case[1]), dtype)
    y = np.zeros((2, 3, *out), dtype)
    KERNELS["avgpool_dense_i8"](x, y, *args, pb, pr, count_include_pad, zp)
    want = REFERENCES["avgpool_dense_i8"](x, zp, **geo, count_include_pad=count_include_pad)
    assert_exact(y, want, dtype=dtype, case=_pool_ids(case), zp=zp)
    # The float reference on real = q − zp (pads real 0), back on the q axis (+ zp), rounded half
    # away from zero as §5 rounds Σq / count: the same counts, the same ties.
    real = OPS["AveragePool"](x.astype(np.float64) - zp, **geo, count_include_pad=count_include_pad)
    assert_exact(y, _round_half_away(real + zp), case=_pool_ids(case), zp=zp)


def test_avgpool_rounding_ties():
    """Sums at exactly .5 round away from zero, for both signs (int8 can have negative sums)."""
    x = np.array([[[[1, 2], [-1, -2], [3, 4], [-3, -4]]]], np.int8).reshape(1, 1, 4, 2)
    y = np.zeros((1, 1, 4, 1), np.int8)
    KERNELS["avgpool_dense_i8"](x, y, 1, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0)
    assert y.ravel().tolist() == [2, -2, 4, -4]  # 1.5, −1.5, 3.5, −3.5
    want = REFERENCES["avgpool_dense_i8"](x, 0, kernel_shape=[1, 2], strides=[1, 1])
    assert_exact(y, want, dtype=np.int8)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 7, 7), (1, 17, 14, 14), (1, 4, 2, 3)])
def test_avgpool_over_the_whole_plane(shape, dtype):
    """A window that is the whole plane (the plan's global average with equal parameters in and
    out) takes the kernel's flat plane sums: the reference's bytes, ties included (1·2 and 2·3
    windows: sums at .5), against the same windows with a pad (the general loop) as a check."""
    rng = np.random.default_rng(sum(shape))
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    x = rng.integers(lo, hi + 1, shape).astype(dtype)
    x[0, 0].flat[0] = lo if dtype == np.int8 else hi  # one sign for ties at .5 below and above 0
    _, _, h, w = shape
    y = np.full(shape[:2] + (1, 1), 7, dtype)
    KERNELS["avgpool_dense_i8"](x, y, h, w, 1, 1, 1, 1, 0, 0, 0, 0, 0, 3)
    want = REFERENCES["avgpool_dense_i8"](x, 3, kernel_shape=[h, w])
    assert_exact(y, want, dtype=dtype, shape=shape)
    padded = np.full(shape[:2] + (1, 1), 7, dtype)  # a bottom pad not counted: the same windows
    KERNELS["avgpool_dense_i8"](x, padded, h, w, 1, 1, 1, 1, 0, 0, 1, 0, 0, 3)
    assert_exact(padded, want, dtype=dtype, shape=shape, path="general")


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 7, 7), (1, 17, 14, 14), (1, 2, 3, 5)])
def test_global_avgpool_dense_i8(shape, dtype):
    rng = np.random.default_rng(4)
    x, x_zp = _quant_input(rng, shape, dtype)
    lo_t, hi_t = I8_RANGE[dtype]
    # y_scale small enough that the result saturates at both ends; and a gentle one
    for x_scale, y_scale in ((0.1, 0.002), (0.05, 0.07)):
        y_zp = int(rng.integers(lo_t, hi_t + 1))
        m0, shift = quantize_multiplier(x_scale / (y_scale * shape[2] * shape[3]))
        y = np.zeros((*shape[:2], 1, 1), dtype)
        KERNELS["global_avgpool_dense_i8"](x, y, x_zp, int(m0), int(shift), y_zp, lo_t, hi_t)
        want = REFERENCES["global_avgpool_dense_i8"](x, x_zp, int(m0), int(shift), y_zp, lo_t, hi_t)
        assert_exact(y, want, dtype=dtype, shape=shape, x_zp=x_zp, y_zp=y_zp, m0=int(m0),
                     shift=int(shift))


def test_global_avgpool_saturates_and_rounds_ties():
    """A mean of exactly ±0.5 step rounds away from zero; a huge ratio clamps at both ends."""
    x = np.array([1, 0, 0, 0, -1, 0, 0, 0], np.int8).reshape(2, 1, 2, 2)
    y = np.zeros((2, 1, 1, 1), np.int8)
    m0, shift = quantize_multiplier(2.0 / 4)             # mean·2 = ±0.5 exactly
    KERNELS["global_avgpool_dense_i8"](x, y, 0, int(m0), int(shift), 0, -128, 127)
    assert y.ravel().tolist() == [1, -1]
    m0, shift = quantize_multiplier(1000.0 / 4)
    KERNELS["global_avgpool_dense_i8"](x, y, 0, int(m0), int(shift), 0, -128, 127)
    assert y.ravel().tolist() == [127, -128]


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 7, 7), (1, 17, 14, 14), (1, 2, 3, 5),
                                   (2, 5, 1, 6)])
def test_global_avgpool_dense_f32(shape):
    # within float32's rounding of the float64 mean: the kernel sums in float64 and rounds once
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 10 + 3).astype(np.float32)
    y = np.full((*shape[:2], 1, 1), np.nan, np.float32)
    KERNELS["global_avgpool_dense_f32"](x, y)
    want = REFERENCES["global_avgpool_dense_f32"](x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=2 ** -23, atol=1e-6 * np.abs(x).max())
    # a plane of 4·k + 1 values (the partial sums' tail) and one of equal values: the exact mean
    x = np.full((1, 2, 3, 3), 0.25, np.float32)
    x[0, 1] = np.arange(9, dtype=np.float32).reshape(3, 3)
    y = np.zeros((1, 2, 1, 1), np.float32)
    KERNELS["global_avgpool_dense_f32"](x, y)
    assert y.ravel().tolist() == [0.25, 4.0]


# ----------------------------------------------------------------------------- elementwise


def _add_multipliers(a_scale, b_scale, y_scale):
    """A, B, R of docs/quantization.md §5: the largest R ≤ 62 with A, B < 2^44."""
    big = max(a_scale, b_scale) / y_scale
    R = int(min(62, 43 - np.floor(np.log2(big))))
    A, B = (int(round(s / y_scale * 2.0**R)) for s in (a_scale, b_scale))
    assert 1 <= R and max(A, B) < 2**44
    return A, B, R


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("scales", [(0.02, 0.03, 0.05), (0.5, 0.25, 0.01), (0.01, 0.3, 0.9),
                                    (1e-3, 1e-3, 1e-3)])
def test_add_dense_i8(scales, dtype, relu):
    rng = np.random.default_rng(6)
    L = 10007  # not a multiple of the block
    a, a_zp = _quant_input(rng, L, dtype)
    b, b_zp = _quant_input(rng, L, dtype)
    lo, hi = I8_RANGE[dtype]
    y_zp = (lo + hi + 1) // 2
    if relu:
        lo = y_zp
    A, B, R = _add_multipliers(*scales)
    y = np.zeros(L, dtype)
    KERNELS["add_dense_i8"](a, b, y, a_zp, b_zp, A, B, R, y_zp, lo, hi)
    want = REFERENCES["add_dense_i8"](a, b, a_zp, b_zp, A, B, R, y_zp, lo, hi)
    assert_exact(y, want, dtype=dtype, scales=scales, extra={"a": a, "b": b})
    if scales[2] == 0.01:  # large ratios: both ends saturate
        assert y.min() == lo and y.max() == hi


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_add_dense_i8_lengths(dtype):
    """Lengths around the vector width and ELEMENTWISE_BLOCK (4096): every tail is exact."""
    rng = np.random.default_rng(8)
    A, B, R = _add_multipliers(0.03, 0.05, 0.04)
    lo, hi = I8_RANGE[dtype]
    for L in (1, 7, 31, 33, 4095, 4096, 4097, 8193):
        a, a_zp = _quant_input(rng, L, dtype)
        b, b_zp = _quant_input(rng, L, dtype)
        y = np.zeros(L, dtype)
        KERNELS["add_dense_i8"](a, b, y, a_zp, b_zp, A, B, R, 5, lo, hi)
        want = REFERENCES["add_dense_i8"](a, b, a_zp, b_zp, A, B, R, 5, lo, hi)
        assert_exact(y, want, dtype=dtype, L=L, extra={"a": a, "b": b})


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("R", [1, 20, 23, 24, 25, 30, 31, 32, 43, 51, 52, 53, 54, 62])
def test_add_dense_i8_every_shift(R, dtype):
    """The QAdd at every kind of shift R, from 1 to 62 (those around 24 and 53 are where the
    convs' IR epilogue changes its rounding, _quads.NARROW_ADD_SHIFTS; 31 and 52 bound the
    16-bit products of _requant.qadd_bytes, QADD_SHIFTS): multipliers up to 2^44
    that fill both 22-bit halves, multipliers that are multiples of 2^(R−1) (ties of both signs),
    inputs at the ends of their range; the same bytes as the reference."""
    rng = np.random.default_rng(R)
    lo, hi = I8_RANGE[dtype]
    L = 4099
    a = extreme_values(rng, L, lo, hi).astype(dtype)
    b = extreme_values(rng, L, lo, hi).astype(dtype)
    top = min(2**44, 2 ** (R + 9))
    tie = 2 ** min(R - 1, 42)  # A = tie, B = 3·tie: p / 2^R = (d_a + 3·d_b) / 2 while R ≤ 43
    for A, B in ((int(rng.integers(1, top)), int(rng.integers(1, top))), (top, top - 1),
                 (tie, 3 * tie)):
        for a_zp, b_zp, y_zp in ((3, -5, 0), (lo, hi, (lo + hi) // 2)):
            y = np.zeros(L, dtype)
            KERNELS["add_dense_i8"](a, b, y, a_zp, b_zp, A, B, R, y_zp, lo, hi)
            want = REFERENCES["add_dense_i8"](a, b, a_zp, b_zp, A, B, R, y_zp, lo, hi)
            assert_exact(y, want, dtype=dtype, R=R, A=A, B=B, extra={"a": a, "b": b})


@pytest.mark.parametrize("R", [31, 43, 52])
@pytest.mark.parametrize("types_", [(np.uint8, np.int8, np.uint8), (np.int8, np.uint8, np.int8),
                                    (np.int8, np.int8, np.uint8), (np.uint8, np.uint8, np.int8)],
                         ids=["u8+s8=u8", "s8+u8=s8", "s8+s8=u8", "u8+u8=s8"])
def test_add_dense_i8_mixed_types(types_, R):
    """Operands and output of different 8-bit types (each read and written as its own type:
    qadd_bytes flips int8 bytes to q + 128 per operand and packs to the output's type), in
    place too (y is a), at a length with a tail past the 64-byte steps."""
    rng = np.random.default_rng(R + len(types_))
    a_t, b_t, y_t = types_
    L = 4096 + 77
    a = extreme_values(rng, L, *I8_RANGE[a_t]).astype(a_t)
    b = extreme_values(rng, L, *I8_RANGE[b_t]).astype(b_t)
    lo, hi = I8_RANGE[y_t]
    top = min(2 ** 44, 2 ** (R - 3))  # outputs about d/8: spread over the type where R ≤ 47
    A, B = int(rng.integers(top // 4, top)), int(rng.integers(1, top))
    a_zp, b_zp, y_zp = (int(rng.integers(*I8_RANGE[t], endpoint=True)) for t in types_)
    y = np.zeros(L, y_t)
    KERNELS["add_dense_i8"](a, b, y, a_zp, b_zp, A, B, R, y_zp, lo + 2, hi - 3)
    want = REFERENCES["add_dense_i8"](a, b, a_zp, b_zp, A, B, R, y_zp, lo + 2, hi - 3)
    assert_exact(y, want, dtype=y_t, R=R, extra={"a": a, "b": b})
    assert R > 47 or len(np.unique(want)) > 20
    if a_t is y_t:
        same = a.copy()
        KERNELS["add_dense_i8"](same, b, same, a_zp, b_zp, A, B, R, y_zp, lo + 2, hi - 3)
        assert_exact(same, want, dtype=y_t, in_place=True)


def test_add_dense_i8_ties():
    """(q_a − a_zp)/2 at exactly .5 rounds away from zero: 1 → 1, −1 → −1, 3 → 2, −3 → −2."""
    a = np.array([1, -1, 3, -3], np.int8)
    y = np.zeros(4, np.int8)
    A, B, R = _add_multipliers(0.5, 0.5, 1.0)
    KERNELS["add_dense_i8"](a, np.zeros(4, np.int8), y, 0, 0, A, B, R, 0, -128, 127)
    assert y.tolist() == [1, -1, 2, -2]


def test_f32_elementwise():
    rng = np.random.default_rng(7)
    y = rng.standard_normal((2, 5, 33)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    want = REFERENCES["bias_act_dense_f32"](y, b, 0.0, 6.0)
    KERNELS["bias_act_dense_f32"](y, b, 0.0, 6.0)
    assert_f32_close(y, want, K=1, magnitude=np.abs(want) + np.abs(b)[:, None])
    a, c = (rng.standard_normal(9000).astype(np.float32) for _ in range(2))
    out = np.empty_like(a)
    KERNELS["add_dense_f32"](a, c, out, 0.0, np.inf)
    assert_f32_close(out, REFERENCES["add_dense_f32"](a, c, 0.0, np.inf), K=1,
                     magnitude=np.abs(a) + np.abs(c))
    KERNELS["clamp_dense_f32"](a, out, -0.5, 0.5)
    assert_f32_close(out, REFERENCES["clamp_dense_f32"](a, -0.5, 0.5), K=0, magnitude=0)


# ----------------------------------------------------------------------------- properties


@given(st.data())
def test_conv2d_csr_i8_property(data):
    """Random geometry, quantization parameters and sparsity: the sparse int8 conv is exact."""
    draw = data.draw
    g = draw(st.sampled_from([1, 2]))
    C, N = g * draw(st.integers(1, 4)), g * draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    s = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    d = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    p = [draw(st.integers(0, 3)) for _ in range(4)]
    H = draw(st.integers(max(1, (kh - 1) * d[0] + 1 - p[0] - p[2]), 12))
    W = draw(st.integers(max(1, (kw - 1) * d[1] + 1 - p[1] - p[3]), 12))
    density = draw(st.floats(0, 1))
    dtype = draw(st.sampled_from([np.uint8, np.int8]))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    case = (1, C, H, W, N, kh, kw, s, p, d, g)
    w = _sparse(rng, (N, C // g * kh * kw), density, np.int8)
    x, x_zp = _quant_input(rng, (1, C, H, W), dtype)
    bias = rng.integers(-2**24, 2**24, N).astype(np.int32)
    y, csr = _run_conv_i8(w, bias, x, x_zp, case)
    want = REFERENCES["conv2d_csr_i8"](*csr, bias, x, x_zp, kernel_shape=(kh, kw), strides=s,
                                       pads=p, dilations=d, groups=g)
    assert_exact(y, want, dtype=np.int32, case=_conv_ids(case), density=density, seed=seed)


@given(st.data())
def test_pool_property(data):
    """Random pooling geometry and zero point: avg and max pools equal their integer references."""
    draw = data.draw
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    s = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    p = [draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1)),
         draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))]
    H = draw(st.integers(max(1, kh - p[0] - p[2]), 10))
    W = draw(st.integers(max(1, kw - p[1] - p[3]), 40))  # past RUN_CHUNK (32) at times
    case = (H, W, kh, kw, s, p, [1, 1], draw(st.integers(0, 1)))
    cip = draw(st.integers(0, 1))
    dtype = draw(st.sampled_from([np.uint8, np.int8]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    out, args, (pb, pr), geo = _pool_args(case)
    x, zp = _quant_input(rng, (1, 2, H, W), dtype)
    y = np.zeros((1, 2, *out), dtype)
    KERNELS["avgpool_dense_i8"](x, y, *args, pb, pr, cip, zp)
    assert_exact(y, REFERENCES["avgpool_dense_i8"](x, zp, **geo, count_include_pad=cip),
                 dtype=dtype, case=_pool_ids(case), cip=cip)
    KERNELS["maxpool_dense_i8"](x, y, *args)
    assert_exact(y, REFERENCES["maxpool_dense_i8"](x, **geo), dtype=dtype, case=_pool_ids(case))
    xf = rng.standard_normal((1, 2, H, W)).astype(np.float32)
    yf = np.zeros((1, 2, *out), np.float32)
    KERNELS["maxpool_dense_f32"](xf, yf, *args)
    np.testing.assert_array_equal(yf, REFERENCES["maxpool_dense_f32"](xf, **geo).astype(np.float32))


# ----------------------------------------------------------------------------- threads


def test_identical_bytes_for_every_thread_count():
    rng = np.random.default_rng(9)
    case = (2, 16, 12, 12, 17, 3, 3, [1, 1], [1, 1, 1, 1], [1, 1], 1)
    w = _sparse(rng, (17, 144), 0.3, np.float32)
    wq = _sparse(rng, (17, 144), 0.3, np.int8)
    x = rng.standard_normal((2, 16, 12, 12)).astype(np.float32)
    xq, zp = _quant_input(rng, (2, 16, 12, 12), np.uint8)
    b, bias = np.ones(17, np.float32), np.zeros(17, np.int32)
    a, c = (rng.integers(0, 256, 50000).astype(np.uint8) for _ in range(2))
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            yq = np.zeros(50000, np.uint8)
            KERNELS["add_dense_i8"](a, c, yq, 3, 5, 2**40, 3 * 2**39, 42, 128, 0, 255)
            pooled, maxed = np.zeros((2, 16, 6, 6), np.uint8), np.zeros((2, 16, 6, 6), np.uint8)
            KERNELS["avgpool_dense_i8"](xq, pooled, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, zp)
            KERNELS["maxpool_dense_i8"](xq, maxed, 3, 3, 2, 2, 1, 1, 1, 1)
            results.append((_run_conv_f32(w, b, x, case)[0].tobytes(),
                            _run_conv_i8(wq, bias, xq, zp, case)[0].tobytes(),
                            yq.tobytes(), pooled.tobytes(), maxed.tobytes()))
    finally:
        numba.set_num_threads(before)
    assert results[0] == results[-1]


# ----------------------------------------------------------------------------- transpose


@pytest.mark.parametrize("M, K", [(1, 1), (3, 5), (16, 64), (17, 65), (128, 1024), (130, 7)])
@pytest.mark.parametrize("build", ["parallel", "serial"])
def test_transpose_dense_f32(M, K, build):
    """xt = x.T exactly, for row counts past a step of TRANSPOSE_ROWS and column counts past a
    task's TRANSPOSE_COLUMNS (the remainder loops), with either build."""
    from zeroskip.kernels import serial_kernel

    kernel = KERNELS["transpose_dense_f32"] if build == "parallel" else \
        serial_kernel("transpose_dense_f32")
    x = np.random.default_rng(M * 1000 + K).standard_normal((M, K)).astype(np.float32)
    xt = np.full((K, M), np.nan, np.float32)
    kernel(x, xt)
    assert np.array_equal(xt, REFERENCES["transpose_dense_f32"](x))
