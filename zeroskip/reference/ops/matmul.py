"""Gemm and MatMul: float64 matrix products with numpy's (BLAS) ``@``."""

from __future__ import annotations

import numpy as np

from ...errors import InputError


def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):  # noqa: N803 - ONNX names
    """y[m,n] = alpha·Σ_k A[m,k]·B[k,n] + beta·C[m,n], with A = aᵀ if transA, B = bᵀ if transB.

    a [M,K] (or [K,M]) float64, b [K,N] (or [N,K]) float64
    c — optional, broadcasts to [M,N] (unidirectionally: C's shape never grows y)
    Work: 2·M·N·K flops.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2:
        raise InputError(f"expected 2-D Gemm operands, got shapes {a.shape} and {b.shape}")
    a = a.T if transA else a
    b = b.T if transB else b
    if a.shape[1] != b.shape[0]:
        raise InputError(f"expected A's K = {a.shape[1]} (after transA={transA}) to equal B's "
                         f"K = {b.shape[0]} (after transB={transB}); got shapes {a.shape}, "
                         f"{b.shape}")
    # A (M,K) @ B (K,N) -> y (M,N)
    y = alpha * (a @ b)
    if c is not None:
        c = np.asarray(c)
        try:
            if np.broadcast_shapes(c.shape, y.shape) != y.shape:
                raise ValueError
        except ValueError:
            raise InputError(f"expected C to broadcast to the output shape {y.shape}, "
                             f"got shape {c.shape}") from None
        y = y + beta * c
    return y


def matmul(a, b):
    """y[..., m, n] = Σ_k a[..., m, k]·b[..., k, n], numpy matmul semantics.

    Leading (batch) axes broadcast; a 1-D a is a row [1,K] and a 1-D b a column [K,1], and the
    added axis is dropped from the result.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 0 or b.ndim == 0:
        raise InputError(f"expected MatMul operands of rank >= 1, got shapes {a.shape} and "
                         f"{b.shape}")
    k_a = a.shape[-1]
    k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if k_a != k_b:
        raise InputError(f"expected a's last dimension ({k_a}) to equal b's K dimension ({k_b}); "
                         f"got shapes {a.shape} and {b.shape}")
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise InputError(f"expected MatMul batch dimensions that broadcast, got shapes {a.shape} "
                         f"and {b.shape}") from None
    return np.asarray(np.matmul(a, b))
