"""pointwise_depthwise_f32 (a 1×1 conv on CSR and the 3×3 depthwise conv that reads it, in one
kernel) against the two kernels it stands for, byte for byte, and against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kernel_checks import assert_f32_close
from zeroskip.geometry import geometry
from zeroskip.kernels import KERNELS, serial_kernel
from zeroskip.kernels.pointwise_depthwise import TASKS
from zeroskip.reference import REFERENCES

BUILDS = {"parallel": KERNELS["pointwise_depthwise_f32"],
          "serial": serial_kernel("pointwise_depthwise_f32")}


def _csr(w, index_dtype):
    """indptr, indices, data of w (N, K); the indices of ``index_dtype``, and indptr too where it
    holds the count of nonzeros (else uint16)."""
    mask = w != 0
    indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))])
    ptr_dtype = index_dtype if indptr[-1] <= np.iinfo(index_dtype).max else np.uint16
    return indptr.astype(ptr_dtype), np.nonzero(mask)[1].astype(index_dtype), w[mask]


def _case(seed, B, K, N, H, W, s, pads, d, density, index_dtype=np.int32):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((N, K)) * (rng.random((N, K)) < density)).astype(np.float32)
    w[0] = 0.0  # a channel with no nonzero: its plane is its clamped bias
    x = rng.standard_normal((B, K, H, W)).astype(np.float32)
    b1 = rng.standard_normal(N).astype(np.float32)
    taps = rng.standard_normal((N, 9)).astype(np.float32)
    b2 = rng.standard_normal(N).astype(np.float32)
    begins, _, (OH, OW) = geometry([H, W], [3, 3], [s, s], [d, d], pads, "NOTSET")
    geo = dict(hp=(OH - 1) * s + 2 * d + 1, wp=(OW - 1) * s + 2 * d + 1, sh=s, sw=s, dh=d, dw=d,
               pt=begins[0], pl=begins[1], OH=OH, OW=OW)
    return _csr(w, index_dtype), b1, x, taps, b2, geo


def _fused(build, csr, b1, x, taps, b2, g, lo1, hi1, lo2, hi2):
    y = np.full((x.shape[0], len(b1), g["OH"], g["OW"]), np.nan, np.float32)
    build(*csr, b1, np.float32(lo1), np.float32(hi1), x, taps, b2, y, g["hp"], g["wp"], g["sh"],
          g["sw"], g["dh"], g["dw"], g["pt"], g["pl"], np.float32(lo2), np.float32(hi2))
    return y


def _two_kernels(csr, b1, x, taps, b2, g, lo1, hi1, lo2, hi2):
    """matmul_csr_f32 on each image's planar input, then depthwise_dense_f32: the unfused steps."""
    B, K, H, W = x.shape
    N = len(b1)
    e = np.empty((B, N, H, W), np.float32)
    KERNELS["matmul_csr_f32"](*csr, b1, x.reshape(B, K, H * W), e.reshape(B, N, H * W),
                              np.float32(lo1), np.float32(hi1))
    y = np.empty((B, N, g["OH"], g["OW"]), np.float32)
    xp = np.empty((B, N, g["hp"], g["wp"]), np.float32)
    ws = np.empty((B, N, 1), np.float32)  # (3×3: unused)
    KERNELS["depthwise_dense_f32"](taps, b2, e, xp, ws, y, 3, 3, g["sh"], g["sw"], g["dh"],
                                   g["dw"], g["pt"], g["pl"], np.float32(lo2), np.float32(hi2))
    return y


def _check(seed, B, K, N, H, W, s, pads, d, density, clamps, index_dtype=np.int32):
    csr, b1, x, taps, b2, g = _case(seed, B, K, N, H, W, s, pads, d, density, index_dtype)
    want = _two_kernels(csr, b1, x, taps, b2, g, *clamps)
    for name, build in BUILDS.items():
        got = _fused(build, csr, b1, x, taps, b2, g, *clamps)
        assert np.array_equal(got, want), (name, np.nanmax(np.abs(got - want)))
    lo1, hi1, lo2, hi2 = clamps
    geo = dict(strides=[s, s], pads=pads, dilations=[d, d])
    ref = REFERENCES["pointwise_depthwise_f32"]
    exact = ref(*csr, b1, x, taps, b2, **geo, lo1=lo1, hi1=hi1, lo2=lo2, hi2=hi2)
    mag = ref(csr[0], csr[1], np.abs(csr[2]), np.abs(b1), np.abs(x), np.abs(taps), np.abs(b2),
              **geo)
    assert_f32_close(want, exact, K=K + 10, magnitude=mag, seed=seed)


CLAMPS = [(-np.inf, np.inf, -np.inf, np.inf), (0.0, 6.0, 0.0, 6.0), (-0.5, np.inf, -np.inf, 1.0)]

CASES = [
    # B, K, N, H, W, stride, pads, dilation, density
    (1, 16, 24, 20, 20, 2, [1, 1, 1, 1], 1, 0.1),   # MobileNetV2's strided block, small
    (1, 8, 12, 6, 62, 2, [1, 1, 1, 1], 1, 0.3),     # output rows past DW_BLOCK_MAX_WIDTH, stride 2
    (1, 8, 12, 5, 40, 1, [1, 1, 1, 1], 1, 0.3),     # wide rows at stride 1 (the row loop)
    (2, 24, 40, 14, 14, 1, [1, 1, 1, 1], 1, 0.1),   # a batch; more channels than TASKS
    (1, 32, 20, 7, 7, 1, [0, 1, 1, 0], 1, 0.2),     # pads on two sides only
    (1, 12, 10, 9, 11, 1, [0, 0, 0, 0], 1, 0.4),    # no pads
    (1, 12, 10, 12, 12, 1, [2, 2, 2, 2], 2, 0.4),   # dilation 2
    (1, 300, 16, 6, 6, 1, [1, 1, 1, 1], 1, 0.5),    # K past matmul_csr_f32's K_PER_BLOCK passes
    (1, 4, 1, 5, 5, 2, [1, 1, 1, 1], 1, 1.0),       # one channel, dense weights
]


@pytest.mark.parametrize("clamps", CLAMPS, ids=["open", "relu6", "mixed"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"s{c[5]}d{c[7]}")
def test_pointwise_depthwise_is_the_two_kernels(case, clamps):
    _check(sum(case[:5]), *case, clamps)


@pytest.mark.parametrize("index_dtype", [np.uint8, np.uint16, np.int64])
def test_pointwise_depthwise_index_types(index_dtype):
    _check(3, 1, 20, 16, 10, 10, 1, [1, 1, 1, 1], 1, 0.3, CLAMPS[1], index_dtype)


def test_more_channels_than_tasks_all_written():
    # every channel of every image written once (NaN sentinels would survive a missed one)
    N = 3 * TASKS + 5
    csr, b1, x, taps, b2, g = _case(9, 2, 6, N, 4, 4, 1, [1, 1, 1, 1], 1, 0.5)
    for build in BUILDS.values():
        y = _fused(build, csr, b1, x, taps, b2, g, -np.inf, np.inf, -np.inf, np.inf)
        assert not np.isnan(y).any()


@given(B=st.integers(1, 2), K=st.integers(1, 40), N=st.integers(1, 40), H=st.integers(1, 12),
       W=st.integers(1, 40), s=st.sampled_from([1, 2]), p=st.integers(0, 2), d=st.integers(1, 2),
       density=st.sampled_from([0.0, 0.1, 0.5, 1.0]), seed=st.integers(0, 2**16))
def test_property_pointwise_depthwise(B, K, N, H, W, s, p, d, density, seed):
    assume(min(H, W) + 2 * p >= 2 * d + 1)  # else no output (conv_geometry refuses the shape)
    _check(seed, B, K, N, H, W, s, [p, p, p, p], d, density, CLAMPS[seed % 3])
