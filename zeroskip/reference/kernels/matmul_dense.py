"""Reference of kernels/matmul_dense.py: the integer GEMM in int64."""

from __future__ import annotations

import numpy as np


def matmul_dense_i8(x, w, bias):
    """acc [N,M] int64 = q_w @ q_xᵀ + bias'[:, None] — the int32 accumulator, computed exactly.

    x [M,K] uint8|int8 raw activations (zero point folded into bias'), w [N,K] int8, bias [N] int32
    bias'[n] = q_b[n] − x_zp·Σ_k q_w[n,k] (docs/quantization.md §2). Every step is exact in int64.
    """
    x = np.asarray(x, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    return w @ x.T + np.asarray(bias, dtype=np.int64)[:, None]


REFERENCES = {"matmul_dense_i8": matmul_dense_i8}
