"""Reference for kernels/pointwise_depthwise.py: the 1×1 conv's reference, then the depthwise one's."""

from __future__ import annotations

import numpy as np

from .depthwise import depthwise_dense_f32
from .matmul_csr import matmul_csr_f32


def pointwise_depthwise_f32(indptr, indices, data, b1, x, taps, b2, *, strides, pads, dilations,
                            lo1=-np.inf, hi1=np.inf, lo2=-np.inf, hi2=np.inf):
    """y [B,N,OH,OW] float64: e = clip(W @ x[b] + b1, lo1, hi1) per image (W (N,K) from its CSR
    rows, x[b] as (K, H·W)), then the 3×3 depthwise conv of e with taps (N, 9) and b2, clipped."""
    x = np.asarray(x, dtype=np.float64)
    B, K, H, W = x.shape
    e = np.stack([matmul_csr_f32(indptr, indices, data, b1, x[b].reshape(K, H * W), lo1, hi1)
                  for b in range(B)]).reshape(B, -1, H, W)
    return depthwise_dense_f32(taps, b2, e, kernel_shape=(3, 3), strides=strides, pads=pads,
                               dilations=dilations, lo=lo2, hi=hi2)


REFERENCES = {"pointwise_depthwise_f32": pointwise_depthwise_f32}
