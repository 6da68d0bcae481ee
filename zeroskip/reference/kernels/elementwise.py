"""References of kernels/elementwise.py: the bias, clamp and residual-Add passes in float64; the
int8 Add spelled out in int64."""

from __future__ import annotations

import numpy as np


def add_dense_i8(a, b, a_zero_point, b_zero_point, a_multiplier, b_multiplier, shift, y_zero_point,
                 lo, hi):
    """q_y int64 = clip(y_zp + round(((q_a − a_zp)·A + (q_b − b_zp)·B) / 2^R), lo, hi).

    Step by step (docs/quantization.md §5): the two integer terms on the common base 2^R, their exact
    int64 sum, one rounding half away from zero (add 2^(R−1), minus 1 if negative, shift right by R),
    the zero point, then the clamp.
    """
    da = np.asarray(a, dtype=np.int64) - int(a_zero_point)
    db = np.asarray(b, dtype=np.int64) - int(b_zero_point)
    p = da * int(a_multiplier) + db * int(b_multiplier)
    r = int(shift)
    t = (p + (1 << (r - 1)) - (p < 0).astype(np.int64)) >> r
    return np.clip(t + int(y_zero_point), lo, hi)


def with_residual(q, residual):
    """A requantizing kernel's output q, then its fused residual QAdd when ``residual`` is given
    ((r, q_zero_point, r_zero_point, q_multiplier, r_multiplier, shift, out_zero_point, lo, hi),
    kernels/elementwise.residual_parts): add_dense_i8 of q and r."""
    if residual is None:
        return q
    r, *params = residual
    return add_dense_i8(q, np.asarray(r).reshape(np.shape(q)), *params)


def bias_act_dense_f32(y, b, lo, hi):
    """float64 clip(y + b[n], lo, hi) for y [B,N,M] and b [N]."""
    return np.clip(np.asarray(y, dtype=np.float64) + np.asarray(b, dtype=np.float64)[:, None], lo, hi)


def clamp_dense_f32(x, lo, hi):
    """float64 clip(x, lo, hi)."""
    return np.clip(np.asarray(x, dtype=np.float64), lo, hi)


def add_dense_f32(a, b, lo, hi):
    """float64 clip(a + b, lo, hi)."""
    return np.clip(np.asarray(a, dtype=np.float64) + np.asarray(b, dtype=np.float64), lo, hi)


REFERENCES = {"add_dense_i8": add_dense_i8, "bias_act_dense_f32": bias_act_dense_f32,
              "clamp_dense_f32": clamp_dense_f32, "add_dense_f32": add_dense_f32}
