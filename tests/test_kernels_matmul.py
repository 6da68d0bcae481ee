"""Matmul and quantization kernels against their references (float64 / the int64 integer reference).

One parametrized test per kernel family over the edge shapes (M, N, K ∈ {1, 2, 7, 16, 17, 63}),
densities, index dtypes and activation dtypes; requantization with outputs spanning the whole 8-bit
range, forced saturation and exact ties; plan-time math (quantmath); Hypothesis properties; byte-equal
results for 1 and 2 threads.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import zeroskip.kernels
import zeroskip.reference
from zeroskip import quantmath
from zeroskip.errors import UnsupportedModelError
from zeroskip.kernels.matmul_csr import (K_PER_BLOCK, MIN_TASKS, PIXELS_PER_BLOCK,
                                         ROWS_PER_RQ_TASK, ROWS_PER_TASK, matmul_csr_f32,
                                         matmul_csr_i8, matmul_csr_rq_i8)
from zeroskip.kernels.matmul_dense import (COLUMNS_PER_TASK_F32, GEMV_ROWS, PIXELS_PER_CHUNK,
                                           matmul_dense_f32, matmul_dense_i8, matmul_dense_rq_i8,
                                           matmul_planar_rq_i8)
from zeroskip.kernels import _gemv
from zeroskip.kernels._requant import FOLD_MAX_SHIFT
from zeroskip.kernels.elementwise import add_dense_i8
from zeroskip.kernels.quant import (dequantize_dense_i8, quantize_dense_f32, requantize_dense_i8,
                                    tie_free)
from zeroskip.model import index_dtype
from zeroskip.reference.kernels import matmul_csr as ref_csr
from zeroskip.reference.kernels import matmul_dense as ref_dense
from zeroskip.reference.kernels import elementwise as ref_elementwise
from zeroskip.reference.kernels import quant as ref_quant

from kernel_checks import assert_exact, assert_f32_close, residual_for

# Each of 1, 2, 7, 16, 17, 63 in every position, plus the edge combinations (1 against 63, ...).
SHAPES = [(1, 1, 1), (2, 2, 2), (7, 7, 7), (16, 16, 16), (17, 17, 17), (63, 63, 63),
          (1, 63, 17), (63, 1, 7), (17, 7, 63), (2, 16, 1), (16, 2, 63), (7, 17, 2)]
DENSITIES = [0.0, 0.1, 0.5, 0.9, 1.0]
INDEX_DTYPES = [np.uint8, np.uint16, np.int32, np.int64]
TYPE_RANGE = {np.uint8: (0, 255), np.int8: (-128, 127)}
W_RANGE = (-128, 127)
"""Weights that reach a kernel may be anything in [−128, 127] (imported models can hold −128)."""


def _with_ends(rng, shape, lo, hi):
    """Integers in [lo, hi], a quarter of them at lo or hi: the largest products occur in every case."""
    v = rng.integers(lo, hi + 1, shape)
    ends = rng.random(shape) < 0.25
    v[ends] = np.where(rng.random(int(ends.sum())) < 0.5, lo, hi)
    return v


def _csr(w, index_type):
    """CSR triple of w (N,K) with the given index dtype (indptr widened if nnz does not fit it)."""
    rows, cols = np.nonzero(w)
    counts = np.bincount(rows, minlength=w.shape[0])
    indptr = np.concatenate([[0], np.cumsum(counts)])
    ptr_type = np.promote_types(index_type, index_dtype(len(rows)))
    return indptr.astype(ptr_type), cols.astype(index_type), w[rows, cols]


def _mask(rng, N, K, density):
    """Random keep-mask at ``density``, with row 0 emptied (pruning makes empty rows normal)."""
    mask = rng.random((N, K)) < density
    if N > 1:
        mask[0] = False
    return mask


def _f32_case(M, N, K, density, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((N, K)) * _mask(rng, N, K, density)).astype(np.float32)
    xt = rng.standard_normal((K, M)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    return w, xt, b


def _i8_case(M, N, K, density, x_type, seed):
    rng = np.random.default_rng(seed)
    w = (_with_ends(rng, (N, K), *W_RANGE) * _mask(rng, N, K, density)).astype(np.int8)
    lo, hi = TYPE_RANGE[x_type]
    xt = _with_ends(rng, (K, M), lo, hi).astype(x_type)
    x_zp = int(rng.integers(lo, hi + 1))
    q_b = rng.integers(-2 ** 20, 2 ** 20, N).astype(np.int32)
    bias = quantmath.fold_bias(q_b, w.astype(np.int64).sum(axis=1), x_zp)
    return w, xt, bias


def _run_csr_f32(w, xt, b, index_type, lo=-np.inf, hi=np.inf):
    indptr, indices, data = _csr(w, index_type)
    yt = np.full((w.shape[0], xt.shape[1]), np.nan, dtype=np.float32)
    matmul_csr_f32(indptr, indices, data, b, xt, yt, np.float32(lo), np.float32(hi))
    want = ref_csr.matmul_csr_f32(indptr, indices, data, b, xt, lo, hi)
    return yt, want


def _run_csr_i8(w, xt, bias, index_type):
    indptr, indices, data = _csr(w, index_type)
    yt = np.full((w.shape[0], xt.shape[1]), -1, dtype=np.int32)
    matmul_csr_i8(indptr, indices, data, bias, xt, yt)
    return yt, ref_csr.matmul_csr_i8(indptr, indices, data, bias, xt)


def _run_dense_i8(w, x, bias):
    yt = np.full((w.shape[0], x.shape[0]), -1, dtype=np.int32)
    matmul_dense_i8(x, w, bias, yt)
    return yt, ref_dense.matmul_dense_i8(x, w, bias)


def _run_csr_rq_i8(w, xt, bias, m0, shift, zp, lo, hi, y_type, index_type=np.int32,
                   residual=None):
    indptr, indices, data = _csr(w, index_type)
    y = np.full((w.shape[0], xt.shape[1]), 77, dtype=y_type)
    args = (indptr, indices, data, bias, xt, m0, shift, zp, lo, hi)
    if residual is None:  # the kernel's own default, not an explicit None
        matmul_csr_rq_i8(*args, y)
    else:
        matmul_csr_rq_i8(*args, y, residual)
    return y, ref_csr.matmul_csr_rq_i8(*args, residual)


def _run_dense_rq_i8(w, x, bias, m0, shift, zp, lo, hi, y_type, residual=None, planar=False):
    """matmul_dense_rq_i8 on x (M, K), or with ``planar`` matmul_planar_rq_i8 on x given
    transposed (K, M); (the kernel's bytes, the reference's)."""
    kernel, reference = ((matmul_planar_rq_i8, ref_dense.matmul_planar_rq_i8) if planar else
                         (matmul_dense_rq_i8, ref_dense.matmul_dense_rq_i8))
    y = np.full((w.shape[0], x.shape[1 if planar else 0]), 77, dtype=y_type)
    if residual is None:
        kernel(x, w, bias, m0, shift, zp, lo, hi, y)
    else:
        kernel(x, w, bias, m0, shift, zp, lo, hi, y, residual)
    return y, reference(x, w, bias, m0, shift, zp, lo, hi, residual)


def _run_planar_rq_i8(w, xt, bias, m0, shift, zp, lo, hi, y_type, residual=None):
    return _run_dense_rq_i8(w, xt, bias, m0, shift, zp, lo, hi, y_type, residual, planar=True)




def test_kernels_and_references_have_the_same_keys():
    assert set(zeroskip.kernels.KERNELS) == set(zeroskip.reference.REFERENCES)


# ---------------------------------------------------------------- sparse / dense matmul vs reference

@pytest.mark.parametrize("index_type", INDEX_DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_matmul_csr_f32(M, N, K, density, index_type):
    seed = M * 10007 + N * 101 + K + int(density * 10)
    w, xt, b = _f32_case(M, N, K, density, seed)
    relu = density == 0.5  # fused ReLU on one density: lo = 0
    got, want = _run_csr_f32(w, xt, b, index_type, 0.0 if relu else -np.inf)
    magnitude = np.abs(w).astype(np.float64) @ np.abs(xt) + np.abs(b)[:, None]
    assert_f32_close(got, want, K=K, magnitude=magnitude, M=M, N=N, density=density, seed=seed,
                     index=np.dtype(index_type).name)


def _dense_f32_in_order(x, w, b, lo, hi):
    """matmul_dense_f32's documented sums in NumPy float32: each output b[n], then + x[m,k]·w[k,n]
    for k in order, each product and sum rounded to float32; then the clamp."""
    y = np.tile(b, (x.shape[0], 1))
    for k in range(x.shape[1]):
        y = y + x[:, k:k + 1] * w[k]  # float32 × float32 rows: each product, then each sum rounded
    return np.minimum(np.maximum(y, lo), hi)


@given(M=st.integers(1, 9), K=st.integers(1, 70), N=st.integers(1, 2 * COLUMNS_PER_TASK_F32 + 5),
       act=st.sampled_from(["none", "relu", "relu6"]), seed=st.integers(0, 2**16))
def test_matmul_dense_f32_sums_in_order_on_any_thread_count(M, K, N, act, seed):
    """The few-row float GEMM: the reference's values within the float bound, and the bytes of
    its documented order of sums (K not a multiple of its four-value passes, N not of its tasks'
    columns), from the parallel build at one and two threads and from the serial twin."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((K, N)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    lo, hi = {"none": (-np.inf, np.inf), "relu": (0.0, np.inf), "relu6": (0.0, 6.0)}[act]
    lo, hi = np.float32(lo), np.float32(hi)
    want = _dense_f32_in_order(x, w, b, lo, hi)
    builds = [(matmul_dense_f32, 1), (matmul_dense_f32, 2),
              (zeroskip.kernels.serial_kernel("matmul_dense_f32"), 1)]
    before = numba.get_num_threads()
    try:
        for kernel, threads in builds:
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            y = np.full((M, N), np.nan, np.float32)
            kernel(x, w, b, y, lo, hi)
            assert_exact(y, want, M=M, K=K, N=N, threads=threads, seed=seed)
    finally:
        numba.set_num_threads(before)
    reference = ref_dense.matmul_dense_f32(x, w, b, lo, hi)
    magnitude = np.abs(x).astype(np.float64) @ np.abs(w) + np.abs(b)
    assert_f32_close(y, reference, K=K, magnitude=magnitude, M=M, N=N, seed=seed)


@pytest.mark.parametrize("index_type,x_type", [(np.uint8, np.uint8), (np.uint16, np.int8),
                                               (np.int32, np.uint8), (np.int64, np.int8)],
                         ids=["u8-idx-u8", "u16-idx-s8", "i32-idx-u8", "i64-idx-s8"])
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_matmul_csr_i8(M, N, K, density, index_type, x_type):
    seed = M * 10007 + N * 101 + K + int(density * 10)
    w, xt, bias = _i8_case(M, N, K, density, x_type, seed)
    got, want = _run_csr_i8(w, xt, bias, index_type)
    assert_exact(got, want, dtype=np.int32, extra={"bias'": bias}, M=M, N=N, K=K, density=density,
                 seed=seed, x=np.dtype(x_type).name)


@pytest.mark.parametrize("x_type", [np.uint8, np.int8], ids=["u8", "s8"])
@pytest.mark.parametrize("density", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_matmul_dense_i8(M, N, K, density, x_type):
    seed = M * 10007 + N * 101 + K + int(density * 10)
    w, xt, bias = _i8_case(M, N, K, density, x_type, seed)
    x = np.ascontiguousarray(xt.T)
    got, want = _run_dense_i8(w, x, bias)
    assert_exact(got, want, dtype=np.int32, extra={"bias'": bias}, M=M, N=N, K=K, density=density,
                 seed=seed, x=np.dtype(x_type).name)


@pytest.mark.parametrize("x_type", [np.uint8, np.int8], ids=["u8", "s8"])
def test_i8_matmuls_at_the_extremes(x_type):
    """Every product at its largest magnitude (−128 or 127 times 255 or −128; weights may be anything
    in [−128, 127]): the int32 sums stay exact."""
    M, N, K = 5, 9, 1000
    lo, hi = TYPE_RANGE[x_type]
    w = np.where(np.arange(N * K).reshape(N, K) % 3 == 0, -128, 127).astype(np.int8)
    w[1] = 127
    w[2] = -128
    xt = np.full((K, M), hi if x_type is np.uint8 else lo, dtype=x_type)
    bias = np.full(N, 2 ** 30, dtype=np.int32)
    quantmath.check_accumulator_range(K, quantmath.MAX_ABS_PRODUCT[np.dtype(x_type)], bias)
    got, want = _run_csr_i8(w, xt, bias, np.int32)
    assert_exact(got, want, dtype=np.int32, kernel="csr")
    got, want = _run_dense_i8(w, np.ascontiguousarray(xt.T), bias)
    assert_exact(got, want, dtype=np.int32, kernel="dense")


# ---------------------------------------------------------------- requantization

def _requantize(acc, m0, shift, zp, lo, hi, y_type):
    y = np.zeros(acc.shape, dtype=y_type)
    requantize_dense_i8(acc, m0, shift, zp, lo, hi, y)
    return y, ref_quant.requantize_dense_i8(acc, m0, shift, zp, lo, hi)


@pytest.mark.parametrize("y_type", [np.uint8, np.int8], ids=["u8", "s8"])
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (17, 7, 63), (63, 16, 2), (16, 63, 17)])
def test_requantize_spans_the_output_range(M, N, K, y_type):
    """Scales from the actual accumulator range: every channel's outputs cover the whole type range."""
    seed = M + N + K
    w, xt, bias = _i8_case(M, N, K, 0.9, np.uint8, seed)
    acc, _ = _run_csr_i8(w, xt, bias, np.int32)
    span = (acc.max(axis=1).astype(np.float64) - acc.min(axis=1)) + 1.0
    real = 255.0 / span                        # M[n] = x_scale·w_scale[n] / y_scale
    m0, shift = quantmath.quantize_multiplier(real)
    lo, hi = TYPE_RANGE[y_type]
    zp = int(lo - np.round(np.median(acc.min(axis=1) * real)))
    zp = int(np.clip(zp, lo, hi))
    got, want = _requantize(acc, m0, shift, zp, lo, hi, y_type)
    assert_exact(got, want, dtype=y_type, extra={"acc": acc, "m0": m0[:, None], "shift": shift[:, None]},
                 M=M, N=N, K=K, seed=seed)
    if M * N >= 64:
        assert got.min() <= lo + 8 and got.max() >= hi - 8


@pytest.mark.parametrize("y_type", [np.uint8, np.int8], ids=["u8", "s8"])
def test_requantize_random_multipliers(y_type):
    """Multipliers from tiny (below 2^−32: m0 = 0) to large (> 1), over random full-range accumulators."""
    rng = np.random.default_rng(7)
    real = np.concatenate([[2.0 ** -40, 2.0 ** -32, 1e-9, 0.5, 1.0, 3.7, 1000.0, 2.0 ** 29],
                           np.exp(rng.uniform(np.log(1e-8), np.log(1e2), 56))])
    acc = rng.integers(-2 ** 31, 2 ** 31, (len(real), 97)).astype(np.int32)
    acc[:, :4] = [[-2 ** 31, 2 ** 31 - 1, 0, -1]]
    m0, shift = quantmath.quantize_multiplier(real)
    lo, hi = TYPE_RANGE[y_type]
    for zp in (lo, 0 if y_type is np.int8 else 128, hi):
        got, want = _requantize(acc, m0, shift, zp, lo, hi, y_type)
        assert_exact(got, want, dtype=y_type, extra={"acc": acc, "m0": m0[:, None]}, zp=zp)


@pytest.mark.parametrize("layout", ["rows", "strided"])
@pytest.mark.parametrize("y_type", [np.uint8, np.int8], ids=["u8", "s8"])
def test_requantize_tie_free_multipliers_at_the_boundary(y_type, layout):
    """quant.tie_free picks the short form (round half up, no sign term) only where no int32 sum
    can be a tie: r − z ≥ 33 for m0 = odd·2^z. At r − z = 32 the sum −2^31 is one (−odd/2), so
    the boundary is tight; each multiplier meets the sums that are ties for it (odd multiples of
    2^(r−z−1)), the extremes and random ones, in contiguous rows and strided ones."""
    rng = np.random.default_rng(3)
    m0s, shifts, rows = [], [], []
    for r in (33, 34, 45, 62):
        for z in sorted({min(30, max(0, r - d)) for d in (34, 33, 32, 31)}):
            m0s.append(2 ** 30 + (2 ** z if z < 30 else 0))
            shifts.append(r)
            assert tie_free(m0s[-1], r) == (r - z >= 33)
            unit = 2 ** (r - z - 1)
            ties = [k * unit for k in range(-(2 ** 31 // unit), 2 ** 31 // unit + 1, 1)
                    if k % 2 and -2 ** 31 <= k * unit < 2 ** 31][:40]
            row = ties + [-2 ** 31, 2 ** 31 - 1, -1, 0, 1] + list(rng.integers(-2 ** 31, 2 ** 31, 60))
            rows.append(row[:100] + [0] * (100 - len(row[:100])))
    acc = np.array(rows, np.int64).astype(np.int32)
    m0, shift = np.array(m0s, np.int32), np.array(shifts, np.int32)
    if layout == "strided":
        acc = np.repeat(acc, 2, axis=1)[:, ::2]
    lo, hi = TYPE_RANGE[y_type]
    for zp in (lo, hi, (lo + hi) // 2):
        got, want = _requantize(acc, m0, shift, zp, lo, hi, y_type)
        assert_exact(got, want, dtype=y_type, extra={"acc": acc, "m0": m0[:, None]}, zp=zp)


@pytest.mark.parametrize("y_type", [np.uint8, np.int8], ids=["u8", "s8"])
def test_requantize_forces_saturation_at_both_ends(y_type):
    lo, hi = TYPE_RANGE[y_type]
    acc = np.array([[-10 ** 6, -1000, -3, 0, 3, 1000, 10 ** 6]] * 3, dtype=np.int32)
    m0, shift = quantmath.quantize_multiplier(np.array([1.0, 0.5, 7.0]))
    zp = (lo + hi + 1) // 2
    got, want = _requantize(acc, m0, shift, zp, lo, hi, y_type)
    assert_exact(got, want, dtype=y_type, extra={"acc": acc})
    assert (got[:, 0] == lo).all() and (got[:, -1] == hi).all()
    # a fused ReLU6-like clamp narrows both ends
    got, want = _requantize(acc, m0, shift, zp, zp, zp + 5, y_type)
    assert_exact(got, want, dtype=y_type, extra={"acc": acc})
    assert got.min() == zp and got.max() == zp + 5


def test_requantize_ties_round_half_away_from_zero():
    """M = 0.5 (m0 = 2^30, shift 31): odd accumulators are exact .5 ties; 2.5 → 3, −2.5 → −3."""
    acc = np.array([[5, -5, 3, -3, 1, -1, 4, -4, 7, -7]], dtype=np.int32)
    m0, shift = quantmath.quantize_multiplier(np.array([0.5]))
    assert (int(m0[0]), int(shift[0])) == (2 ** 30, 31)
    got, want = _requantize(acc, m0, shift, 0, -128, 127, np.int8)
    assert got.tolist() == [[3, -3, 2, -2, 1, -1, 2, -2, 4, -4]]
    assert_exact(got, want, dtype=np.int8)
    # M = 0.25: ±6·0.25 = ±1.5 → ±2, ±2·0.25 = ±0.5 → ±1, ±5·0.25 = ±1.25 → ±1
    acc = np.array([[6, -6, 2, -2, 5, -5]], dtype=np.int32)
    m0, shift = quantmath.quantize_multiplier(np.array([0.25]))
    got, _ = _requantize(acc, m0, shift, 0, -128, 127, np.int8)
    assert got.tolist() == [[2, -2, 1, -1, 1, -1]]


# ---------------------------------------------------------------- quantize / dequantize kernels

@pytest.mark.parametrize("y_type", [np.uint8, np.int8], ids=["u8", "s8"])
def test_quantize_dense_f32(y_type):
    rng = np.random.default_rng(3)
    scale = np.float32(0.05)
    lo, hi = TYPE_RANGE[y_type]
    zp = (lo + hi + 1) // 2
    x = np.concatenate([rng.standard_normal(10_000).astype(np.float32) * 5,
                        (np.arange(-20, 20, dtype=np.float32) + 0.5) * np.float32(0.5),  # ties at scale .5
                        [np.float32(1e9), np.float32(-1e9), np.float32(0.0)]]).astype(np.float32)
    for s in (scale, np.float32(0.5)):
        y = np.zeros(x.shape, dtype=y_type)
        quantize_dense_f32(x, s, zp, y)
        assert_exact(y, ref_quant.quantize_dense_f32(x, s, zp, y_type), dtype=y_type, scale=s)
    y = np.zeros(4, dtype=y_type)
    quantize_dense_f32(np.array([1.25, -1.25, 1.75, 0.25], np.float32), np.float32(0.5), 0, y)
    assert y.tolist() == [2, -2, 4, 0] if y_type is np.int8 else y.tolist() == [2, 0, 4, 0]


@pytest.mark.parametrize("x_type", [np.uint8, np.int8], ids=["u8", "s8"])
def test_dequantize_dense_i8(x_type):
    lo, hi = TYPE_RANGE[x_type]
    q = np.arange(lo, hi + 1).astype(x_type)
    q = np.concatenate([q] * 40)
    for scale, zp in ((np.float32(0.0123), 3), (np.float32(7.5e-5), hi), (np.float32(1.0), lo)):
        y = np.zeros(q.shape, dtype=np.float32)
        dequantize_dense_i8(q, scale, zp, y)
        want = ref_quant.dequantize_dense_i8(q, scale, zp)
        assert_f32_close(y, want, K=0, magnitude=np.abs(want), scale=scale, zp=zp)
        assert np.array_equal(y, want.astype(np.float32))  # one rounding: exactly the float32 of it


# ---------------------------------------------------------------- plan-time math

def test_quantize_multiplier_relative_error():
    rng = np.random.default_rng(11)
    real = np.exp(rng.uniform(np.log(2.0 ** -31), np.log(2.0 ** 29), 5000))
    m0, shift = quantmath.quantize_multiplier(real)
    assert m0.dtype == np.int32
    assert ((m0 >= 2 ** 30) & (m0.astype(np.int64) < 2 ** 31)).all()
    assert ((shift >= 1) & (shift <= 62)).all()
    approx = m0.astype(np.float64) * np.exp2(-shift.astype(np.float64))
    assert (np.abs(approx - real) / real < 2.0 ** -31).all()


def test_quantize_multiplier_carry_and_extremes():
    m0, shift = quantmath.quantize_multiplier(np.array([1.0 - 2.0 ** -33, 1.0, 2.0 ** -32, 2.0 ** 30 - 1]))
    assert m0.tolist() == [2 ** 30, 2 ** 30, 2 ** 30, 2 ** 31 - 2]  # carry: round gives 2^31
    assert shift.tolist() == [30, 30, 62, 1]
    m0, shift = quantmath.quantize_multiplier(np.array([2.0 ** -33, 1e-300]))
    assert m0.tolist() == [0, 0]                                      # below 2^−32: everything → zp
    for bad in (2.0 ** 30, 2.0 ** 30 - 2.0 ** -30, 1e12, 0.0, -1.0, np.inf, np.nan):
        with pytest.raises(UnsupportedModelError):
            quantmath.quantize_multiplier(np.array([bad]))


def test_clamp_bounds():
    assert quantmath.clamp_bounds(np.uint8, 0.1, 0) == (0, 255)
    assert quantmath.clamp_bounds(np.int8, 0.1, -5) == (-128, 127)
    assert quantmath.clamp_bounds(np.uint8, 0.1, 20, 0.0) == (20, 255)            # ReLU: lo = zp
    assert quantmath.clamp_bounds(np.int8, 0.1, -5, 0.0) == (-5, 127)
    assert quantmath.clamp_bounds(np.uint8, 0.05, 10, 0.0, 6.0) == (10, 130)     # ReLU6
    assert quantmath.clamp_bounds(np.int8, 0.01, 0, 0.0, 6.0) == (0, 127)        # 6 beyond range
    assert quantmath.clamp_bounds(np.int8, 0.5, 0, -1.0, 2.25) == (-2, 4)         # Clip; 4.5 → 4
    assert quantmath.clamp_bounds(np.int8, 0.5, 0, -np.inf, np.inf) == (-128, 127)


def test_fold_bias_and_accumulator_range():
    w = np.array([[1, -2, 3], [0, 0, 0]], dtype=np.int8)
    folded = quantmath.fold_bias(np.array([10, -4], np.int32), w.sum(axis=1, dtype=np.int64), 128)
    assert folded.dtype == np.int32 and folded.tolist() == [10 - 128 * 2, -4]
    assert quantmath.fold_bias(None, [5], -3).tolist() == [15]
    # weights may be anything in [−128, 127]: |u8·s8| ≤ 255·128, |s8·s8| ≤ 128·128
    u8, s8 = quantmath.MAX_ABS_PRODUCT[np.dtype(np.uint8)], quantmath.MAX_ABS_PRODUCT[np.dtype(np.int8)]
    assert (u8, s8) == (255 * 128, 2 ** 14)
    quantmath.check_accumulator_range(65_793, u8, [0])
    quantmath.check_accumulator_range(131_071, s8, [0])
    for K, product in ((65_794, u8), (131_072, s8)):
        with pytest.raises(UnsupportedModelError):
            quantmath.check_accumulator_range(K, product, [0])
    with pytest.raises(UnsupportedModelError):
        quantmath.check_accumulator_range(1000, u8, [2 ** 31 - 1000])


# ---------------------------------------------------------------- Hypothesis properties

dims = st.integers(1, 40)


@given(M=dims, N=dims, K=dims, density=st.floats(0, 1), seed=st.integers(0, 2 ** 31),
       index_type=st.sampled_from(INDEX_DTYPES))
def test_property_matmul_csr_f32(M, N, K, density, seed, index_type):
    w, xt, b = _f32_case(M, N, K, density, seed)
    got, want = _run_csr_f32(w, xt, b, index_type)
    magnitude = np.abs(w).astype(np.float64) @ np.abs(xt) + np.abs(b)[:, None]
    assert_f32_close(got, want, K=K, magnitude=magnitude, M=M, N=N, density=density, seed=seed)


@given(M=dims, N=dims, K=dims, density=st.floats(0, 1), seed=st.integers(0, 2 ** 31),
       x_type=st.sampled_from([np.uint8, np.int8]), y_type=st.sampled_from([np.uint8, np.int8]),
       log_real=st.floats(-20, 3), relu=st.booleans())
def test_property_i8_pipeline(M, N, K, density, seed, x_type, y_type, log_real, relu):
    """csr and dense int8 give the same accumulator as the reference, and requantize it identically."""
    w, xt, bias = _i8_case(M, N, K, density, x_type, seed)
    acc, want = _run_csr_i8(w, xt, bias, index_dtype(K))
    context = dict(M=M, N=N, K=K, density=density, seed=seed)
    assert_exact(acc, want, dtype=np.int32, extra={"bias'": bias}, kernel="csr", **context)
    acc_dense, _ = _run_dense_i8(w, np.ascontiguousarray(xt.T), bias)
    assert_exact(acc_dense, want, dtype=np.int32, kernel="dense", **context)
    rng = np.random.default_rng(seed)
    m0, shift = quantmath.quantize_multiplier(np.exp(log_real + rng.uniform(-1, 1, N)))
    y_scale = float(np.exp(rng.uniform(-5, 0)))
    zp = int(rng.integers(*TYPE_RANGE[y_type]))
    lo, hi = quantmath.clamp_bounds(y_type, y_scale, zp, 0.0 if relu else None)
    got, want_y = _requantize(acc, m0, shift, zp, lo, hi, y_type)
    assert_exact(got, want_y, dtype=y_type, extra={"acc": acc, "m0": m0[:, None]}, **context)
    fused, want_fused = _run_dense_rq_i8(w, np.ascontiguousarray(xt.T), bias, m0, shift, zp, lo, hi,
                                         y_type)
    assert np.array_equal(want_fused, want_y)
    assert_exact(fused, want_y, dtype=y_type, extra={"acc": acc}, kernel="dense rq", **context)
    fused, want_fused = _run_csr_rq_i8(w, xt, bias, m0, shift, zp, lo, hi, y_type, index_dtype(K))
    assert np.array_equal(want_fused, want_y)
    assert_exact(fused, want_y, dtype=y_type, extra={"acc": acc}, kernel="csr rq", **context)


RQ_SHAPES = {
    "dense": [(1, 1, 1), (1, GEMV_ROWS + 3, 40), (1, 2 * GEMV_ROWS + 1, 200),
              (PIXELS_PER_CHUNK - 1, 5, 16), (PIXELS_PER_CHUNK, 8, 33),
              (2 * PIXELS_PER_CHUNK + 3, 7, 48), (3 * PIXELS_PER_CHUNK + 1, 13, 144),
              (65, 33, 64)],
    "planar": [(1, 1, 1), (16, 4, 16), (17, 4, 16), (64, 5, 8), (65, 9, 24), (200, 7, 18),
               (2 * PIXELS_PER_CHUNK + 3, 7, 48),
               # the AMX tile's (K ≥ AMX_MIN_K), its residual added in its epilogue: several
               # chunks with K > N and N < AMX_ROWS, one chunk of 7×7, K = 64 with N ≥ K
               (196, 24, 144), (49, 40, 192), (70, 66, 64)],
    "csr": [(1, 1, 1), (PIXELS_PER_BLOCK - 1, ROWS_PER_RQ_TASK - 1, 16),
            (PIXELS_PER_BLOCK, ROWS_PER_RQ_TASK, 24),
            (2 * PIXELS_PER_BLOCK + 3, 2 * ROWS_PER_RQ_TASK + 1, 9), (3 * PIXELS_PER_BLOCK + 1, 13, 144)],
}
"""Per requantizing GEMM: pixel counts around its chunk (dense: one row of x, the GEMV, over
tasks of GEMV_ROWS rows of w, and PIXELS_PER_CHUNK rows of x; csr:
PIXELS_PER_BLOCK pixels), rows around its panel or task, K tails; planar (x given transposed):
around the fewest pixels and the 64-pixel chunks of its tiles, N mod 4 rows, and a K that is not
a multiple of 4 (the rows' path)."""


_RQ_RUNS = {"dense": (_run_dense_rq_i8, "x"), "planar": (_run_planar_rq_i8, "xt"),
            "csr": (_run_csr_rq_i8, "xt")}
"""Per requantizing GEMM: its runner and whether it takes x (M, K) or x transposed."""


@pytest.mark.parametrize("y_type", [np.uint8, np.int8], ids=["u8", "s8"])
@pytest.mark.parametrize("gemm,M,N,K", [(g, *shape) for g, shapes in RQ_SHAPES.items() for shape in shapes])
def test_requantizing_gemms_are_the_gemm_then_requantize(gemm, M, N, K, y_type):
    """matmul_dense_rq_i8, matmul_planar_rq_i8 and matmul_csr_rq_i8 give the bytes of their GEMM +
    requantize_dense_i8:
    chunks with a remainder, edge rows, K tails, outputs clamped at both ends (a fused ReLU's lo)."""
    rng = np.random.default_rng(M + 31 * N + K)
    w, xt, bias = _i8_case(M, N, K, 0.7 if gemm == "dense" else 0.3, np.uint8, M * N + K)
    x = np.ascontiguousarray(xt.T)
    acc, _ = _run_dense_i8(w, x, bias)
    # a multiplier that spreads the sums over 400 steps about the middle of the type: both clamps act
    spread = 400 / (int(acc.max()) - int(acc.min()) + 1)
    m0, shift = quantmath.quantize_multiplier(spread * rng.uniform(0.9, 1.1, N))
    middle = sum(TYPE_RANGE[y_type]) / 2
    zp = int(np.clip(round(middle - spread * (int(acc.max()) + int(acc.min())) / 2),
                     *TYPE_RANGE[y_type]))
    lo, hi = TYPE_RANGE[y_type][0] + 3, TYPE_RANGE[y_type][1] - 5
    want, _ = _requantize(acc, m0, shift, zp, lo, hi, y_type)
    run, operand = _RQ_RUNS[gemm]
    got, reference = run(w, x if operand == "x" else xt, bias, m0, shift, zp, lo, hi, y_type)
    assert np.array_equal(reference, want)
    assert M * N < 64 or ((got == lo).any() and (got == hi).any())
    assert_exact(got, want, dtype=y_type, extra={"acc": acc}, M=M, N=N, K=K)


@pytest.mark.parametrize("y_type", [np.uint8, np.int8], ids=["u8", "s8"])
@pytest.mark.parametrize("gemm,M,N,K", [(g, *shape) for g, shapes in RQ_SHAPES.items() for shape in shapes])
def test_requantizing_gemms_add_a_fused_residual_as_the_qadd_would(gemm, M, N, K, y_type):
    """With a residual, each requantized row is added to the residual's in the epilogue: the bytes
    of the kernel without it, then add_dense_i8 (its reference and its kernel), clamped at both
    ends."""
    rng = np.random.default_rng(7 * M + N + 3 * K)
    w, xt, bias = _i8_case(M, N, K, 0.7 if gemm == "dense" else 0.3, np.uint8, M + N * K)
    x = np.ascontiguousarray(xt.T)
    m0, shift = quantmath.quantize_multiplier(np.full(N, 2.0 ** -9))
    zp = sum(TYPE_RANGE[y_type]) // 2
    lo, hi = TYPE_RANGE[y_type]
    run, operand = _RQ_RUNS[gemm]
    operand = x if operand == "x" else xt
    alone, _ = run(w, operand, bias, m0, shift, zp, lo, hi, y_type)
    residual = residual_for(rng, alone.shape, y_type, zp)
    got, reference = run(w, operand, bias, m0, shift, zp, lo, hi, y_type, residual=residual)
    want = ref_elementwise.add_dense_i8(alone, *residual)
    kernel = np.empty(alone.size, y_type)
    add_dense_i8(alone.reshape(-1), residual[0].reshape(-1), kernel, *residual[1:])
    assert np.array_equal(reference, want) and np.array_equal(kernel.reshape(want.shape), want)
    assert M * N < 64 or ((got == residual[-2]).any() and (got == residual[-1]).any())
    assert_exact(got, want, dtype=y_type, M=M, N=N, K=K)


def _edge_multipliers(N, rng):
    """(m0, shift) for N channels around the register epilogues' choices (_requant.
    requantized_bytes): tie-free multipliers with r from 33 to 62, across FOLD_MAX_SHIFT (the
    zero point folded into the nudge up to it), and multipliers that are not tie-free (m0 = 2^30,
    and r − z = 32), which take the general form."""
    shifts = [33, 40, FOLD_MAX_SHIFT - 1, FOLD_MAX_SHIFT, FOLD_MAX_SHIFT + 1, 62]
    m0 = (rng.integers(2 ** 30, 2 ** 31, N) | 1).astype(np.int64)
    shift = np.array([shifts[n % len(shifts)] for n in range(N)], np.int64)
    m0[5::7] = 2 ** 30                                   # not tie-free at any r
    edge = np.arange(N) % 11 == 3                        # r − z = 32: z = r − 32, not tie-free
    m0[edge] = 2 ** 30 + 2 ** np.minimum(shift[edge] - 32, 29)
    assert any(tie_free(m, r) for m, r in zip(m0, shift))
    assert not all(tie_free(m, r) for m, r in zip(m0, shift))
    return m0.astype(np.int32), shift.astype(np.int32)


@pytest.mark.parametrize("y_type", [np.uint8, np.int8], ids=["u8", "s8"])
@pytest.mark.parametrize("gemm,M,N,K", [("planar", 130, 44, 16), ("planar", 130, 44, 64),
                                        ("dense", 130, 44, 16), ("dense", 130, 44, 64)],
                         ids=["planar-broadcast", "planar-amx", "dense-broadcast", "dense-amx"])
def test_register_epilogues_at_the_edges_of_int32_and_the_shifts(gemm, M, N, K, y_type):
    """The tiles that requantize in their registers (the broadcast tile, the AMX tiles' store
    through _quads.store_chunk) against requantize_dense_i8 on the int32 sums: sums within 2^22
    of ±2^31 (the bias takes them there), multipliers on both sides of FOLD_MAX_SHIFT and of the
    tie-free test, zero points at both ends of the type (folded into the nudge, they must not
    overflow the high word), and the type's full range or a narrowed one (the packs saturate,
    then one clamp on the bytes)."""
    rng = np.random.default_rng(M + N + K)
    w, xt, _ = _i8_case(M, N, K, 1.0, np.uint8, N * K)
    big = 2 ** 31 - 2 ** 22
    bias = np.where(np.arange(N) % 2 == 0, big, -big).astype(np.int32)
    bias[2::4] = rng.integers(-2 ** 20, 2 ** 20, len(bias[2::4]))
    x = np.ascontiguousarray(xt.T)
    acc, _ = _run_dense_i8(w, x, bias)
    assert acc.max() > 2 ** 31 - 2 ** 23 and acc.min() < -(2 ** 31 - 2 ** 23)
    m0, shift = _edge_multipliers(N, rng)
    shift[2::4] = 44  # the channels of small sums: outputs spread about the zero point
    run, operand = _RQ_RUNS[gemm]
    type_lo, type_hi = TYPE_RANGE[y_type]
    for zp in (type_lo, type_hi, (type_lo + type_hi) // 2):
        for lo, hi in ((type_lo, type_hi), (type_lo + 7, type_hi - 9)):
            want, _ = _requantize(acc, m0, shift, zp, lo, hi, y_type)
            got, _ = run(w, x if operand == "x" else xt, bias, m0, shift, zp, lo, hi, y_type)
            assert_exact(got, want, dtype=y_type, extra={"acc": acc, "shift": shift[:, None]},
                         zp=zp, lo=lo, hi=hi)
            # both clamps act, and values between them (not every channel saturates)
            assert (want == lo).any() and (want == hi).any() and len(np.unique(want)) >= 20


@given(real=st.floats(2.0 ** -32, 2.0 ** 30, exclude_max=True))
def test_property_quantize_multiplier(real):
    if real >= 2.0 ** 30 - 0.25:             # m0 = round(2·real) carries to 2^31 with shift 0: refused
        with pytest.raises(UnsupportedModelError):
            quantmath.quantize_multiplier(np.array([real]))
        return
    m0, shift = quantmath.quantize_multiplier(np.array([real]))
    approx = int(m0[0]) * 2.0 ** -int(shift[0])
    assert abs(approx - real) / real < 2.0 ** -31
    assert 2 ** 30 <= int(m0[0]) < 2 ** 31 and 1 <= int(shift[0]) <= 62


# ---------------------------------------------------------------- thread-count independence

def _all_kernels_once():
    """Every kernel of this family on one input large enough to split across threads; the outputs."""
    rng = np.random.default_rng(5)
    M, N, K = 67, 130, 90
    out = {}
    w, xt, b = _f32_case(M, N, K, 0.3, 1)
    out["matmul_csr_f32"], _ = _run_csr_f32(w, xt, b, np.int32)
    w, xt, bias = _i8_case(M, N, K, 0.3, np.uint8, 2)
    out["matmul_csr_i8"], _ = _run_csr_i8(w, xt, bias, np.uint16)
    out["matmul_dense_i8"], _ = _run_dense_i8(w, np.ascontiguousarray(xt.T), bias)
    m0, shift = quantmath.quantize_multiplier(np.exp(rng.uniform(-12, -8, N)))
    out["requantize_dense_i8"], _ = _requantize(out["matmul_csr_i8"], m0, shift, 3, 0, 255, np.uint8)
    out["matmul_dense_rq_i8"], _ = _run_dense_rq_i8(w, np.ascontiguousarray(xt.T), bias, m0, shift,
                                                    3, 0, 255, np.uint8)
    out["matmul_csr_rq_i8"], _ = _run_csr_rq_i8(w, xt, bias, m0, shift, 3, 0, 255, np.uint8)
    residual = residual_for(rng, (N, M), np.uint8, 3)
    out["matmul_csr_rq_i8 + residual"], _ = _run_csr_rq_i8(w, xt, bias, m0, shift, 3, 0, 255,
                                                           np.uint8, residual=residual)
    out["matmul_dense_rq_i8 + residual"], _ = _run_dense_rq_i8(
        w, np.ascontiguousarray(xt.T), bias, m0, shift, 3, 0, 255, np.uint8, residual=residual)
    xt4 = np.ascontiguousarray(xt[:88])  # K = 88: the planar tiles where they run
    out["matmul_planar_rq_i8 + residual"], _ = _run_planar_rq_i8(
        np.ascontiguousarray(w[:, :88]), xt4, bias, m0, shift, 3, 0, 255, np.uint8,
        residual=residual)
    x = rng.standard_normal(3 * 4096 + 5).astype(np.float32)
    q = np.zeros(x.shape, np.int8)
    quantize_dense_f32(x, np.float32(0.02), -3, q)
    out["quantize_dense_f32"] = q
    y = np.zeros(x.shape, np.float32)
    dequantize_dense_i8(q, np.float32(0.02), -3, y)
    out["dequantize_dense_i8"] = y
    return out


def test_identical_for_one_and_two_threads():
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _all_kernels_once()
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = _all_kernels_once()
    finally:
        numba.set_num_threads(before)
    for name in one:
        assert one[name].tobytes() == two[name].tobytes(), name


@pytest.mark.parametrize("x_type", [np.uint8, np.int8], ids=["u8", "s8"])
@pytest.mark.parametrize("M,N,K", [(5, 9, 1024), (4, 8, 47), (3, 6, 15), (128, 12, 1041)])
def test_matmul_dense_i8_vpmaddwd_blocks(M, N, K, x_type):
    """Whole 16-k vpmaddwd blocks, a K mod 16 tail, odd M and N mod 4 edges, full-range values."""
    rng = np.random.default_rng(M * 7 + N * 3 + K)
    lo, hi = TYPE_RANGE[x_type]
    w = _with_ends(rng, (N, K), *W_RANGE).astype(np.int8)
    x = _with_ends(rng, (M, K), lo, hi).astype(x_type)
    bias = rng.integers(-2 ** 20, 2 ** 20, N).astype(np.int32)
    got, want = _run_dense_i8(w, x, bias)
    assert_exact(got, want, dtype=np.int32, kernel="dense", M=M, N=N, K=K, x=np.dtype(x_type).name)


# The tile variants (vpmaddwd, portable loops, the NumPy model) against each other and the
# reference: tests/test_kernels_dense_tile.py.


_GEMV_RUNNERS: dict = {}


@pytest.mark.parametrize("tile", sorted(_gemv.TILES))
@pytest.mark.parametrize("K", [1, 63, 64, 65, 200, 1280])
@pytest.mark.parametrize("x_type", [np.uint8, np.int8], ids=["u8", "s8"])
def test_the_gemv_tile_sums_four_rows(tile, K, x_type):
    """The one-row GEMV's tile (each variant this CPU runs: the VNNI one, the plain loops) against
    the formula: four rows of w from n0 = 4 (rows 0–3 and 8–11 hold other values, never read)
    times x read as unsigned (int8 x as x + 128), from start[n0 + j]; K around the 64-byte step
    (tail only, whole steps, both); half the values at the ends of their ranges; one start at
    2^31 − 1, whose sum wraps (as vpdpbusd's do) where the products add up to more than 0."""
    rng = np.random.default_rng(K)
    info = np.iinfo(x_type)
    x = np.where(rng.random(K) < 0.5, rng.choice(np.array([info.min, info.max], x_type), K),
                 rng.integers(info.min, int(info.max) + 1, K)).astype(x_type)
    w = rng.choice(np.array([-128, 127, -1, 3], np.int8), (12, K))
    start = rng.integers(-2 ** 20, 2 ** 20, 12).astype(np.int32)
    start[5] = 2 ** 31 - 1
    flip = 0x80 if x_type is np.int8 else 0
    unsigned = (x.view(np.uint8).astype(np.int64) ^ flip)
    want = start[4:8].astype(np.int64) + w[4:8].astype(np.int64) @ unsigned
    want = ((want + 2 ** 31) % 2 ** 32 - 2 ** 31).astype(np.int32)
    sums = np.full(_gemv.GEMV_TILE_ROWS, 77, np.int32)
    runner = _GEMV_RUNNERS.get(tile)
    if runner is None:
        fn = _gemv.TILES[tile]

        def run(sums, x, w, start, n0, flip):
            fn(sums, x, w, start, n0, flip)
        runner = _GEMV_RUNNERS[tile] = run if numba.config.DISABLE_JIT else numba.njit(run)
    runner(sums, x, w, start, 4, flip)
    assert_exact(sums, want, tile=tile, K=K)


def _batch_case(seed, B, K, M, N, x_type, y_type, with_residual):
    """A batch's (B, K, M) input of x_type, requantize arguments for y_type and, if asked, a
    residual of y's (B, N, M) shape: what the batched requantizing GEMMs take."""
    rng = np.random.default_rng(seed)
    lo_x, hi_x = TYPE_RANGE[x_type]
    xt3 = rng.integers(lo_x, hi_x + 1, (B, K, M)).astype(x_type)
    m0, shift = quantmath.quantize_multiplier(np.full(N, 2.0 ** -9))
    zp = sum(TYPE_RANGE[y_type]) // 2
    rq = (m0, shift, zp) + tuple(TYPE_RANGE[y_type])
    return xt3, rq, residual_for(rng, (B, N, M), y_type, zp) if with_residual else None


def _image_of(residual, b):
    """Image b's part of a batch's residual tuple (None stays None)."""
    return None if residual is None else (residual[0][b],) + residual[1:]


def _check_batch(name, kernel, before, xt3, after, rq, residual, want, **context):
    """kernel(*before, xt3, *after, *rq, y3, residual) on the batch, in both builds (``name``'s
    serial twin too), gives ``want``, whose values reach both ends of the output's range, so that
    the clamp is tested as well."""
    from zeroskip.kernels import serial_kernel

    ends = rq[-2:] if residual is None else residual[-2:]
    assert (want == ends[0]).any() and (want == ends[1]).any()
    for build in (kernel, serial_kernel(name)):
        y3 = np.full(want.shape, 77, dtype=want.dtype)
        build(*before, xt3, *after, *rq, y3, residual)
        assert_exact(y3, want, dtype=want.dtype, kernel=name, **context)


@pytest.mark.parametrize("y_type", [np.uint8, np.int8], ids=["u8", "s8"])
@pytest.mark.parametrize("x_type", [np.uint8, np.int8], ids=["xu8", "xs8"])
@pytest.mark.parametrize("M,N,K", [(49, 40, 192), (196, 24, 144), (70, 66, 64), (65, 9, 24),
                                   (17, 4, 6)])
@pytest.mark.parametrize("with_residual", [False, True], ids=["alone", "residual"])
def test_planar_gemm_takes_a_batch_in_one_call(M, N, K, x_type, y_type, with_residual):
    """matmul_planar_rq_i8 on (B, K, M) images: each image's bytes are the reference's on that
    image (AMX shapes, whose tasks then span the images, a broadcast-tile one, a K that is not a
    multiple of 4), with the residual per image, in both builds."""
    w, _, bias = _i8_case(M, N, K, 0.7, x_type, M + N * K)
    xt3, rq, residual = _batch_case(M + 7 * N + 11 * K, 3, K, M, N, x_type, y_type,
                                    with_residual)
    want = np.stack([ref_dense.matmul_planar_rq_i8(xt3[b], w, bias, *rq, _image_of(residual, b))
                     for b in range(len(xt3))]).astype(y_type)
    _check_batch("matmul_planar_rq_i8", matmul_planar_rq_i8, (), xt3, (w, bias), rq, residual,
                 want, M=M, N=N, K=K)


@pytest.mark.parametrize("M,N,K", [(1, 40, K_PER_BLOCK + 70), (PIXELS_PER_BLOCK + 5, ROWS_PER_TASK + 3, 24),
                                   (49, 160, 96), (3, MIN_TASKS + 1, 16), (7, 5, 9)])
def test_csr_f32_gemm_takes_a_batch_in_one_call(M, N, K):
    """matmul_csr_f32 on (B, K, M) images (a sparse-f32 1×1 conv's batch): each image's bytes are
    those of the call on that image alone, and within the float bound of the reference, in both
    builds: one pixel (the dot products), slices of pixels and groups of rows that do not divide
    evenly, and calls with few pixels, whose rows go in more, smaller groups (MIN_TASKS)."""
    from zeroskip.kernels import serial_kernel

    w, _, b = _f32_case(M, N, K, 0.3, M * N + K)
    indptr, indices, data = _csr(w, np.int32)
    rng = np.random.default_rng(M + N + K)
    xt3 = rng.standard_normal((3, K, M)).astype(np.float32)
    lo, hi = np.float32(-0.5), np.float32(np.inf)
    for build in (matmul_csr_f32, serial_kernel("matmul_csr_f32")):
        y3 = np.full((3, N, M), np.nan, np.float32)
        build(indptr, indices, data, b, xt3, y3, lo, hi)
        for i in range(3):
            alone = np.full((N, M), np.nan, np.float32)
            build(indptr, indices, data, b, np.ascontiguousarray(xt3[i]), alone, lo, hi)
            np.testing.assert_array_equal(y3[i].view(np.int32), alone.view(np.int32))
            want = ref_csr.matmul_csr_f32(indptr, indices, data, b, xt3[i], lo, hi)
            magnitude = np.abs(w).astype(np.float64) @ np.abs(xt3[i]) + np.abs(b)[:, None]
            assert_f32_close(y3[i], want, K=K, magnitude=magnitude, M=M, N=N, image=i)


@pytest.mark.parametrize("density", [0.1, 1.0])
def test_csr_f32_one_pixel_gives_the_bytes_of_the_row_block(density):
    """At one pixel matmul_csr_f32 sums each output as a dot product in a register; at more, in the
    row block over passes of K_PER_BLOCK. Both add the row's products in its order, rounding each
    product and sum to float32: a column alone gives the bytes it gives among others."""
    K, N = 2 * K_PER_BLOCK + 9, 37
    w, xt, b = _f32_case(5, N, K, density, 17)
    indptr, indices, data = _csr(w, np.uint16)
    lo, hi = np.float32(-np.inf), np.float32(np.inf)
    together = np.empty((N, 5), np.float32)
    matmul_csr_f32(indptr, indices, data, b, xt, together, lo, hi)
    for m in range(5):
        alone = np.empty((N, 1), np.float32)
        matmul_csr_f32(indptr, indices, data, b, np.ascontiguousarray(xt[:, m:m + 1]), alone,
                       lo, hi)
        np.testing.assert_array_equal(alone[:, 0].view(np.int32), together[:, m].view(np.int32))


@pytest.mark.parametrize("x_type,y_type", [(np.uint8, np.uint8), (np.int8, np.int8)],
                         ids=["u8", "s8"])
@pytest.mark.parametrize("M,N,K", [(PIXELS_PER_BLOCK + 5, ROWS_PER_RQ_TASK + 3, 24), (49, 5, 40),
                                   (2, 9, 16)])
@pytest.mark.parametrize("with_residual", [False, True], ids=["alone", "residual"])
def test_csr_gemm_takes_a_batch_in_one_call(M, N, K, x_type, y_type, with_residual):
    """matmul_csr_rq_i8 on (B, K, M) images (a sparse 1×1 conv's batch): each image's bytes are
    the reference's on that image, with slices of pixels and groups of rows that do not divide
    evenly, a Gemm-like M below DOT_BELOW_PIXELS, and the residual per image, in both builds."""
    w, _, bias = _i8_case(M, N, K, 0.3, x_type, M * N + K)
    head = _csr(w, np.int32) + (bias,)
    xt3, rq, residual = _batch_case(M + 5 * N + 13 * K, 3, K, M, N, x_type, y_type,
                                    with_residual)
    want = np.stack([ref_csr.matmul_csr_rq_i8(*head, xt3[b], *rq, _image_of(residual, b))
                     for b in range(len(xt3))]).astype(y_type)
    _check_batch("matmul_csr_rq_i8", matmul_csr_rq_i8, head, xt3, (), rq, residual, want, M=M,
                 N=N, K=K)
