"""Reference of kernels/matmul_dense.py: the integer GEMM in int64."""

from __future__ import annotations

import numpy as np

from .elementwise import with_residual
from .quant import requantize_dense_i8


def check_padded(w, w_pad):
    """Assert that ``w_pad`` holds w and zeros (or is None or empty: none made)."""
    if w_pad is not None and np.size(w_pad):  # (1, blocks, N_pad, 64): w[n, 64·kb + c] at [0, kb, n, c]
        n, k = np.shape(w)
        _, blocks, n_pad, width = np.shape(w_pad)
        full = np.asarray(w_pad)[0].transpose(1, 0, 2).reshape(n_pad, blocks * width)
        assert np.array_equal(full[:n, :k], w) and \
            np.count_nonzero(w_pad) == np.count_nonzero(w), "w_pad is not w padded with zeros"


def matmul_dense_i8(x, w, bias, w_pad=None):
    """acc [N,M] int64 = q_w @ q_xᵀ + bias'[:, None] — the int32 accumulator, computed exactly.
    ``w_pad``, the kernel's copy of w padded for its AMX tile, changes nothing (check_padded).

    x [M,K] uint8|int8 raw activations (zero point folded into bias'), w [N,K] int8, bias [N] int32
    bias'[n] = q_b[n] − x_zp·Σ_k q_w[n,k] (docs/quantization.md §2). Every step is exact in int64.
    """
    check_padded(w, w_pad)
    x = np.asarray(x, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    return w @ x.T + np.asarray(bias, dtype=np.int64)[:, None]


def matmul_dense_rq_i8(x, w, bias, m0, shift, y_zero_point, lo, hi, residual=None, w_sums=None,
                       w_pad=None):
    """q_y [N,M] int64: matmul_dense_i8's exact accumulator, then requantize_dense_i8's rounding
    and clamp (the fused kernel must give the bytes of the two kernels in turn), then the residual
    QAdd if any (``with_residual``). ``w_sums``, the kernel's precomputed row sums of w, change
    nothing: they must be w's. Nor does ``w_pad``, the kernel's copy of w padded with zeros for its
    AMX tile: it must hold w and zeros (or be empty: none made)."""
    if w_sums is not None:
        assert np.array_equal(w_sums, np.asarray(w, np.int64).sum(axis=1)), "w_sums are not w's"
    check_padded(w, w_pad)
    return with_residual(requantize_dense_i8(matmul_dense_i8(x, w, bias), m0, shift, y_zero_point,
                                             lo, hi), residual)


def matmul_planar_rq_i8(xt, w, bias, m0, shift, y_zero_point, lo, hi, residual=None,
                        w_sums=None, w_pad=None):
    """matmul_dense_rq_i8 on x = xtᵀ: the kernel takes x transposed, (K, M)."""
    return matmul_dense_rq_i8(np.asarray(xt).T, w, bias, m0, shift, y_zero_point, lo, hi,
                              residual, w_sums, w_pad)


def matmul_dense_f32(x, w, b, lo=-np.inf, hi=np.inf):
    """y [M,N] float64 = clip(x @ w + b, lo, hi), x [M,K], w [K,N] (the weights as (K,N)), b [N]."""
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
    return np.clip(y, lo, hi)


REFERENCES = {"matmul_dense_i8": matmul_dense_i8, "matmul_dense_rq_i8": matmul_dense_rq_i8,
              "matmul_planar_rq_i8": matmul_planar_rq_i8, "matmul_dense_f32": matmul_dense_f32}
