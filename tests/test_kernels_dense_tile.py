"""The dense int8 GEMM's register tile, four ways, against each other and the integer reference.

kernels/matmul_dense.py has the tile as a NumPy model (``tile_step_model``, ``tile_model``: what the
kernel runs under NUMBA_DISABLE_JIT=1), as LLVM IR (``_madd_tile``, vpmaddwd, on AVX2 CPUs;
``_dpbusd_tile``, vpdpbusd, for uint8 x on VNNI CPUs) and as plain loops (``_tile_portable``,
elsewhere). ``gemm_with_tile`` builds the GEMM loop around each, so all of them that this CPU can
run are tested here, whatever it would pick. int8 results must be exactly equal.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from numba import njit

from kernel_checks import assert_exact
from zeroskip.kernels import _broadcast, matmul_dense
from zeroskip.kernels.matmul_dense import (K_PER_STEP, LANES, SUMS_PER_TILE, VNNI_K_PER_STEP,
                                           W_ROWS_PER_TILE, X_ROWS_PER_TILE, gemm_with_tile,
                                           tile_model, tile_step_model)
from zeroskip.reference import REFERENCES

TYPE_RANGE = {np.uint8: (0, 255), np.int8: (-128, 127)}
W_RANGE = (-128, 127)
"""Weights may be anything in [−128, 127] (imported models can hold −128)."""

RUNS_AVX2 = matmul_dense.HAS_AVX2 and not numba.config.DISABLE_JIT
"""The vpmaddwd tile needs an AVX2 CPU, and the JIT: LLVM IR does not run as Python."""
needs_avx2 = pytest.mark.skipif(not RUNS_AVX2, reason="the vpmaddwd tile needs AVX2 and the JIT")
RUNS_VNNI = matmul_dense.HAS_VNNI and not numba.config.DISABLE_JIT
"""The vpdpbusd tile needs a VNNI CPU (CI's may not have one: then only the other tiles run)."""
needs_vnni = pytest.mark.skipif(not RUNS_VNNI, reason="the vpdpbusd tile needs VNNI and the JIT")


def _values(rng, shape, lo, hi):
    """Uniform integers in [lo, hi], a quarter of them at the ends lo and hi (the largest products)."""
    v = rng.integers(lo, hi + 1, shape)
    ends = rng.random(shape) < 0.25
    v[ends] = np.where(rng.random(int(ends.sum())) < 0.5, lo, hi)
    return v


def _case(M, N, K, x_type, seed):
    rng = np.random.default_rng(seed)
    x = _values(rng, (M, K), *TYPE_RANGE[x_type]).astype(x_type)
    w = _values(rng, (N, K), *W_RANGE).astype(np.int8)
    bias = rng.integers(-2 ** 20, 2 ** 20, N).astype(np.int32)
    return x, w, bias


@njit(cache=True)
def _madd_sums(x, w, m, n, steps):
    """The compiled intrinsic on its own: the tile's sums over ``steps`` whole steps of k."""
    return matmul_dense._madd_tile(x, w, m, n, steps)


@njit(cache=True)
def _dpbusd_sums(x, w, m, n, steps, half):
    """The VNNI intrinsic on its own: ``steps`` steps of 32 values of k, then ``half`` of 16."""
    return matmul_dense._dpbusd_tile(x, w, m, n, steps, half)


# ---------------------------------------------------------------- one step

def test_the_worked_example_of_docs_kernels_md():
    """docs/kernels.md walks through this step; its numbers must stay true."""
    x16 = np.array([0, 255, 3, 1, 10, 20, 255, 255, 7, 0, 128, 2, 5, 6, 100, 1], np.uint8)
    w16 = np.array([-128, 127, 2, -1, 3, 4, -128, -128, 1, 127, 2, -3, -7, 8, 0, 50], np.int8)
    lanes = tile_step_model(x16, w16)
    assert lanes.dtype == np.int32
    assert lanes.tolist() == [32385, 5, 110, -65280, 7, 250, 13, 50]
    assert int(lanes[:4].sum()) == -32780 and int(lanes[4:].sum()) == 320
    assert int(lanes.sum()) == -32460


@pytest.mark.parametrize("x_type", [np.uint8, np.int8], ids=["u8", "s8"])
def test_tile_step_model_is_pairs_of_exact_products(x_type):
    """lane l = x[2l]·w[2l] + x[2l+1]·w[2l+1] in exact integers, for every extreme pair."""
    lo, hi = TYPE_RANGE[x_type]
    ends = np.array([lo, hi, 0, 1, -1 if lo < 0 else 2, lo, hi, hi])
    cases = [(np.resize([a, b], K_PER_STEP), np.resize([c, d], K_PER_STEP))
             for a in ends for b in ends for c in W_RANGE for d in (-128, 127, 0, -1)]
    rng = np.random.default_rng(1)
    cases += [(_values(rng, K_PER_STEP, lo, hi), _values(rng, K_PER_STEP, *W_RANGE)) for _ in range(200)]
    for x16, w16 in cases:
        x16, w16 = x16.astype(x_type), w16.astype(np.int8)
        p = x16.astype(np.int64) * w16.astype(np.int64)
        lanes = tile_step_model(x16, w16)
        assert lanes.dtype == np.int32 and lanes.shape == (LANES,)
        assert lanes.tolist() == (p[0::2] + p[1::2]).tolist(), (x16, w16)


# ---------------------------------------------------------------- the intrinsic against the model

@needs_avx2
@pytest.mark.parametrize("x_type", [np.uint8, np.int8], ids=["u8", "s8"])
@pytest.mark.parametrize("K", [0, 1, 15, 16, 17, 32, 47, 100, 1024, 1041])
def test_madd_tile_matches_the_model(K, x_type):
    """The LLVM IR's whole steps give tile_model's sums, in order i·W_ROWS_PER_TILE + j."""
    x, w, _ = _case(X_ROWS_PER_TILE + 3, W_ROWS_PER_TILE + 5, K, x_type, seed=K)
    steps = K // K_PER_STEP
    for m, n in ((0, 0), (3, 5), (1, 2)):  # tiles at row offsets, not only at the origin
        got = _madd_sums(x, w, m, n, steps)
        assert len(got) == SUMS_PER_TILE
        want = tile_model(x, w, m, n, steps * K_PER_STEP).ravel()
        assert list(got) == want.tolist(), (K, m, n)


@needs_avx2
@pytest.mark.parametrize("x_type", [np.uint8, np.int8], ids=["u8", "s8"])
def test_madd_tile_at_the_largest_products(x_type):
    """Every product at its largest magnitude: 255·(−128) or (−128)·(−128), over whole steps."""
    lo, hi = TYPE_RANGE[x_type]
    K = 4096
    x = np.full((X_ROWS_PER_TILE, K), hi if x_type is np.uint8 else lo, x_type)
    w = np.full((W_ROWS_PER_TILE, K), -128, np.int8)
    w[1] = 127
    got = _madd_sums(x, w, 0, 0, K // K_PER_STEP)
    want = x.astype(np.int64) @ w.astype(np.int64).T
    assert list(got) == want.ravel().tolist()
    assert list(got) == tile_model(x, w, 0, 0, K).ravel().tolist()


@needs_vnni
@pytest.mark.parametrize("K", [0, 15, 16, 31, 32, 33, 48, 63, 64, 100, 1024, 1041])
def test_dpbusd_tile_matches_the_model(K):
    """vpdpbusd's steps of 32, then the vpmaddwd step of 16 when at least 16 values are left, give
    tile_model's sums over the same values of k (uint8 x, the only x it takes)."""
    x, w, _ = _case(X_ROWS_PER_TILE + 3, W_ROWS_PER_TILE + 5, K, np.uint8, seed=K + 1)
    steps = K // VNNI_K_PER_STEP
    half = int(K - steps * VNNI_K_PER_STEP >= K_PER_STEP)
    for m, n in ((0, 0), (3, 5), (1, 2)):
        got = _dpbusd_sums(x, w, m, n, steps, half)
        want = tile_model(x, w, m, n, steps * VNNI_K_PER_STEP + half * K_PER_STEP).ravel()
        assert list(got) == want.tolist(), (K, m, n)


@needs_vnni
def test_dpbusd_tile_at_the_largest_products():
    """255·(−128) and 255·127 in every byte pair, over 4096 values of k: no saturation anywhere."""
    K = 4096
    x = np.full((X_ROWS_PER_TILE, K), 255, np.uint8)
    w = np.full((W_ROWS_PER_TILE, K), -128, np.int8)
    w[1] = 127
    w[2, ::2] = 127  # alternating signs inside each group of 4
    got = _dpbusd_sums(x, w, 0, 0, K // VNNI_K_PER_STEP, 0)
    assert list(got) == (x.astype(np.int64) @ w.astype(np.int64).T).ravel().tolist()


# ---------------------------------------------------------------- the GEMM around every tile

SHAPES = [(1, 1, 1), (2, 4, 16), (2, 4, 17), (7, 7, 7), (16, 16, 16), (17, 17, 17), (63, 63, 63),
          (1, 63, 17), (63, 1, 7), (17, 7, 63), (2, 16, 1), (16, 2, 63), (7, 17, 2), (5, 9, 100),
          (3, 5, 48), (4, 8, 80), (3, 9, 61),  # VNNI: 32 + 16, 2·32 + 16, 32 + 16 + 13
          (4, 4, 16), (8, 12, 33), (11, 6, 64), (300, 9, 20)]  # widened: whole tiles, edges, chunks


def _tile_variants():
    names = (["python", "portable"] + (["avx2", "wide"] if RUNS_AVX2 else [])
             + (["vnni"] if RUNS_VNNI else []))
    return [pytest.param(name, id=name) for name in names]


@pytest.mark.parametrize("x_type", [np.uint8, np.int8], ids=["u8", "s8"])
@pytest.mark.parametrize("tile", _tile_variants())
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_every_tile_gives_the_reference(M, N, K, tile, x_type):
    """Whole tiles, a K mod 16 tail, odd M, N mod 4 panels; extreme weights and activations."""
    seed = M * 10007 + N * 101 + K
    x, w, bias = _case(M, N, K, x_type, seed)
    yt = np.full((N, M), -1, np.int32)
    gemm_with_tile(tile)(x, w, bias, yt)
    want = REFERENCES["matmul_dense_i8"](x, w, bias)
    assert_exact(yt, want, dtype=np.int32, extra={"bias'": bias}, M=M, N=N, K=K, seed=seed,
                 tile=tile, x=np.dtype(x_type).name)


@pytest.mark.parametrize("x_type,K", [(np.uint8, 65_793), (np.int8, 131_071)], ids=["u8", "s8"])
@pytest.mark.parametrize("tile", _tile_variants())
def test_every_tile_at_the_largest_safe_K(tile, x_type, K):
    """The bound the plan checks: K·255·128 < 2^31 for uint8 x, K·128·128 < 2^31 for int8 x. At the
    largest such K with every product at its extreme, the int32 sums are still exact."""
    lo, hi = TYPE_RANGE[x_type]
    M, N = X_ROWS_PER_TILE + 1, W_ROWS_PER_TILE + 1  # a tile, an edge row and an edge panel
    x = np.full((M, K), hi if x_type is np.uint8 else lo, x_type)
    w = np.full((N, K), -128, np.int8)
    w[1::2] = 127
    bias = np.zeros(N, np.int32)
    want = REFERENCES["matmul_dense_i8"](x, w, bias)
    assert np.abs(want).max() < 2 ** 31 <= np.abs(want).max() + abs(lo if x_type is np.int8 else hi) * 128
    yt = np.zeros((N, M), np.int32)
    gemm_with_tile(tile)(x, w, bias, yt)
    assert_exact(yt, want, dtype=np.int32, K=K, tile=tile, x=np.dtype(x_type).name)


def test_the_kernel_runs_the_tile_this_cpu_chooses():
    want = ("python" if numba.config.DISABLE_JIT else "vnni" if matmul_dense.HAS_VNNI
            else "avx2" if matmul_dense.HAS_AVX2 else "portable")
    assert matmul_dense._tile is matmul_dense.TILES[want]


# -- the broadcast tile (AVX-512 VNNI, 8-bit x, K % 4 == 0) -------------------------------------------
RUNS_BROADCAST = _broadcast.RUNS
"""The broadcast tile needs an AVX-512 VNNI CPU and the JIT (LLVM IR does not run as Python)."""
needs_broadcast = pytest.mark.skipif(not RUNS_BROADCAST,
                                     reason="the broadcast tile needs AVX-512 VNNI and the JIT")

BROADCAST_SHAPES = [(17, 4, 4), (63, 5, 16), (64, 8, 160), (65, 7, 12), (200, 64, 192),
                    (49, 130, 576), (7 * 64 + 3, 9, 64), (20, 4, 0)]
"""Chunks of 64 pixels with a remainder, a single short chunk (its channels split into groups; the
fewest pixels that take the tile), N mod 4 rows, the stem's K = 160 and its space-to-depth K = 192,
K = 0. Fewer pixels take the dot-product tile (_broadcast.BROADCAST_MIN_ROWS)."""


@njit(cache=True)
def _fits(x, w):
    return matmul_dense.broadcast_fits(x, w)


@needs_broadcast
def test_broadcast_tile_is_taken_for_8_bit_activations_with_k_a_multiple_of_4():
    w = np.zeros((8, 16), np.int8)
    rows = _broadcast.BROADCAST_MIN_ROWS
    assert _fits(np.zeros((rows, 16), np.uint8), w)
    assert _fits(np.zeros((rows, 16), np.int8), w)            # as x + 128, the bias shifted
    assert not _fits(np.zeros((rows, 18), np.uint8), np.zeros((8, 18), np.int8))  # K mod 4
    assert not _fits(np.zeros((rows, 16), np.uint8), w[:3])   # fewer than 4 channels
    assert not _fits(np.zeros((rows - 1, 16), np.uint8), w)   # few pixels: the dot tile
    assert not _fits(np.zeros((0, 16), np.uint8), w)


@needs_broadcast
@pytest.mark.parametrize("x_type", [np.uint8, np.int8], ids=["u8", "s8"])
@pytest.mark.parametrize("M,N,K", BROADCAST_SHAPES)
def test_broadcast_tile_gives_the_reference(M, N, K, x_type):
    """The dense GEMMs on the broadcast tile (x as rows, and given transposed): the int32 sums and
    the requantized bytes (with and without a fused residual) of the integer reference, at 1 and 2
    threads; int8 activations go
    through the tile as x + 128, from a bias shifted by 128·Σ_k w."""
    from kernel_checks import residual_for
    from zeroskip import quantmath

    seed = M * 7919 + N * 31 + K
    x, w, bias = _case(M, N, K, x_type, seed)
    want = REFERENCES["matmul_dense_i8"](x, w, bias)
    m0, shift = quantmath.quantize_multiplier(np.full(N, 2.0 ** -14))
    rq = (m0, shift, 3, 0, 255)
    residual = residual_for(np.random.default_rng(seed), (N, M), np.uint8, 3)
    want_rq = REFERENCES["matmul_dense_rq_i8"](x, w, bias, *rq)
    want_added = REFERENCES["matmul_dense_rq_i8"](x, w, bias, *rq, residual)
    before = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            yt = np.full((N, M), -1, np.int32)
            matmul_dense.matmul_dense_i8(x, w, bias, yt)
            assert_exact(yt, want, dtype=np.int32, M=M, N=N, K=K, threads=threads)
            y = np.full((N, M), 7, np.uint8)
            matmul_dense.matmul_dense_rq_i8(x, w, bias, *rq, y)
            assert_exact(y, want_rq, dtype=np.uint8, M=M, N=N, K=K, threads=threads)
            matmul_dense.matmul_dense_rq_i8(x, w, bias, *rq, y, residual)
            assert_exact(y, want_added, dtype=np.uint8, M=M, N=N, K=K, residual=True)
            # the row sums of w as the plan passes them (int8 x starts from bias' − 128·Σ w)
            y = np.full((N, M), 7, np.uint8)
            matmul_dense.matmul_dense_rq_i8(x, w, bias, *rq, y, None, w.astype(np.int64).sum(1))
            assert_exact(y, want_rq, dtype=np.uint8, M=M, N=N, K=K, w_sums=True)
            # x given transposed, packed from its planes onto the same tile
            xt = np.ascontiguousarray(x.T)
            y = np.full((N, M), 7, np.uint8)
            matmul_dense.matmul_planar_rq_i8(xt, w, bias, *rq, y, None, w.astype(np.int64).sum(1))
            assert_exact(y, want_rq, dtype=np.uint8, M=M, N=N, K=K, planar=True)
            matmul_dense.matmul_planar_rq_i8(xt, w, bias, *rq, y, residual)
            assert_exact(y, want_added, dtype=np.uint8, M=M, N=N, K=K, planar=True, residual=True)
    finally:
        numba.set_num_threads(before)


@needs_broadcast
@pytest.mark.parametrize("x_type,K", [(np.uint8, 65_792), (np.int8, 131_068)], ids=["u8", "s8"])
def test_broadcast_tile_at_the_largest_safe_k(x_type, K):
    """The plan's bound (K·255·128 < 2^31 for uint8 x, K·128·128 for int8) at the largest K that
    is a multiple of 4, every product at its extreme. For int8 x the tile's own sums (of x + 128,
    from the shifted bias) pass 2^31 on the way: they wrap, and end where the true sums are."""
    x = np.full((BROADCAST_SHAPES[2][0] + 1, K), 255 if x_type is np.uint8 else -128, x_type)
    w = np.full((5, K), -128, np.int8)
    w[1::2] = 127
    bias = np.zeros(5, np.int32)
    want = REFERENCES["matmul_dense_i8"](x, w, bias)
    yt = np.zeros((5, x.shape[0]), np.int32)
    matmul_dense.matmul_dense_i8(x, w, bias, yt)
    assert_exact(yt, want, dtype=np.int32, K=K, x=np.dtype(x_type).name)


def test_without_the_broadcast_tile_the_gemms_compile_and_run_their_own_tile():
    """Where the CPU has no AVX-512 VNNI, ``broadcast_tile`` is a stub that raises and
    ``broadcast_fits`` is never true: the kernels built so give the reference's bytes."""
    from zeroskip.kernels._copies import renamed_copy

    stubs = dict(broadcast_tile=_broadcast.unavailable_tile, broadcast_fits=_broadcast.never_fits)
    x, w, bias = _case(70, 9, 64, np.uint8, 5)
    gemm = njit(parallel=True)(renamed_copy(matmul_dense._matmul_dense_i8, "_stub", **stubs))
    yt = np.zeros((9, 70), np.int32)
    gemm(x, w, bias, yt)
    assert_exact(yt, REFERENCES["matmul_dense_i8"](x, w, bias), dtype=np.int32)
    with pytest.raises(RuntimeError, match="AVX-512 VNNI"):
        njit(_broadcast._unavailable)(None, None, None, None, 0)


_WIDE_RQ: dict = {}


@needs_avx2
@pytest.mark.parametrize("x_type", [np.uint8, np.int8], ids=["u8", "s8"])
@pytest.mark.parametrize("M,N,K", [(5, 4, 16), (300, 10, 37), (258, 7, 64), (9, 3, 20)])
def test_the_requantizing_gemm_on_the_widened_tile_gives_the_reference(M, N, K, x_type):
    """matmul_dense_rq_i8 built to take the widened tile (what AVX2 CPUs without VNNI, and int8 x
    with it, run where the broadcast tile does not fit): chunks of 256 rows and a last one, the
    N mod 4 rows on the narrow panel, a K mod 16 tail, with and without a fused residual, at 1
    and 2 threads."""
    from kernel_checks import residual_for
    from zeroskip import quantmath
    from zeroskip.kernels._copies import renamed_copy

    if "rq" not in _WIDE_RQ:
        _WIDE_RQ["rq"] = njit(parallel=True)(renamed_copy(
            matmul_dense._matmul_dense_rq_i8, "_wide_test", broadcast_fits=_broadcast.never_fits,
            wide_fits=matmul_dense.always_wide))
    gemm = _WIDE_RQ["rq"]
    seed = M * 131 + N * 7 + K
    x, w, bias = _case(M, N, K, x_type, seed)
    m0, shift = quantmath.quantize_multiplier(np.full(N, 2.0 ** -14))
    rq = (m0, shift, 3, 0, 255)
    residual = residual_for(np.random.default_rng(seed), (N, M), np.uint8, 3)
    before = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            for extra in ((), (residual,)):
                y = np.full((N, M), 7, np.uint8)
                gemm(x, w, bias, *rq, y, *extra)
                want = REFERENCES["matmul_dense_rq_i8"](x, w, bias, *rq, *extra)
                assert_exact(y, want, dtype=np.uint8, M=M, N=N, K=K, threads=threads,
                             residual=bool(extra))
    finally:
        numba.set_num_threads(before)
