"""References of kernels/matmul_csr.py: densify the CSR weight, then one whole-array matmul."""

from __future__ import annotations

import numpy as np

from .elementwise import with_residual
from .quant import requantize_dense_i8


def _dense(indptr, indices, data, K, dtype):
    """The (N, K) matrix of a CSR triple (rows = output channels)."""
    indptr = np.asarray(indptr, dtype=np.int64)
    N = len(indptr) - 1
    w = np.zeros((N, K), dtype=dtype)
    rows = np.repeat(np.arange(N), np.diff(indptr))
    w[rows, np.asarray(indices, dtype=np.int64)] = np.asarray(data, dtype=dtype)
    return w


def matmul_csr_f32(indptr, indices, data, b, xt, lo=-np.inf, hi=np.inf):
    """yt [N,M] float64 = clip(W @ xt + b[:, None], lo, hi), W (N,K) from its CSR rows."""
    xt = np.asarray(xt, dtype=np.float64)
    w = _dense(indptr, indices, data, xt.shape[0], np.float64)
    yt = w @ xt + np.asarray(b, dtype=np.float64)[:, None]
    return np.clip(yt, lo, hi)


def matmul_csr_i8(indptr, indices, data, bias, xt):
    """acc [N,M] int64 = q_w @ q_x + bias'[:, None] — the int32 accumulator, computed exactly.

    Step by step (docs/quantization.md §2): q_w (N,K) dense in int64 (zeros where pruned); q_x as
    given (raw integers, zero point not subtracted); the integer matmul; plus the folded bias
    bias'[n] = q_b[n] − x_zp·Σ_k q_w[n,k], which the plan computed. Every step is exact in int64.
    """
    xt = np.asarray(xt, dtype=np.int64)
    w = _dense(indptr, indices, data, xt.shape[0], np.int64)
    return w @ xt + np.asarray(bias, dtype=np.int64)[:, None]


def matmul_csr_rq_i8(indptr, indices, data, bias, xt, m0, shift, y_zero_point, lo, hi,
                     residual=None):
    """q_y [N,M] int64: matmul_csr_i8's exact accumulator, then requantize_dense_i8's rounding and
    clamp (the fused kernel must give the bytes of the two kernels in turn), then the residual
    QAdd if any (``with_residual``)."""
    return with_residual(requantize_dense_i8(matmul_csr_i8(indptr, indices, data, bias, xt), m0,
                                             shift, y_zero_point, lo, hi), residual)


REFERENCES = {"matmul_csr_f32": matmul_csr_f32, "matmul_csr_i8": matmul_csr_i8,
              "matmul_csr_rq_i8": matmul_csr_rq_i8}
