"""Normalization in inference mode: BatchNormalization with running statistics, and LRN."""

from __future__ import annotations

import numpy as np

from ...errors import InputError


def batch_normalization(x, scale, bias, mean, var, *, epsilon=1e-5):
    """y[n,c,...] = scale[c]·(x[n,c,...] − mean[c]) / √(var[c] + epsilon) + bias[c].

    x [N,C,...] float64; scale, bias, mean, var [C] float64.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise InputError(f"expected an input [N,C,...], got shape {x.shape}")
    channels = x.shape[1]
    for name, p in (("scale", scale), ("bias", bias), ("mean", mean), ("var", var)):
        if np.shape(p) != (channels,):
            raise InputError(f"expected {name} of shape ({channels},) for an input with {channels} "
                             f"channels, got shape {np.shape(p)}")
    per_channel = (channels,) + (1,) * (x.ndim - 2)

    def c(p):
        return np.asarray(p, dtype=np.float64).reshape(per_channel)

    return c(scale) * (x - c(mean)) / np.sqrt(c(var) + epsilon) + c(bias)


def lrn(x, *, alpha=1e-4, beta=0.75, bias=1.0, size):
    """y[n,c,...] = x[n,c,...] / (bias + alpha/size · Σ_i x[n,i,...]²)^beta,
    i from c − ⌊(size−1)/2⌋ to c + ⌈(size−1)/2⌉.

    The sum runs over the channels in range (out-of-range channels add 0). x [N,C,...] float64.
    Loops over the ``size`` channel offsets.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise InputError(f"expected an input [N,C,...], got shape {x.shape}")
    if size < 1:
        raise InputError(f"expected LRN size >= 1, got {size}")
    channels = x.shape[1]
    below, above = (size - 1) // 2, size - 1 - (size - 1) // 2
    squares = x * x
    padded = np.pad(squares, [(0, 0), (below, above)] + [(0, 0)] * (x.ndim - 2))
    square_sum = np.zeros_like(x)
    for offset in range(size):
        square_sum += padded[:, offset:offset + channels]
    return x / (bias + alpha / size * square_sum) ** beta
