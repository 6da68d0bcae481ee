"""Weight quantization: float weights to symmetric int8 (docs/quantization.md §1).

    real = w_scale · q_w,   q_w = clip(round_half_even(w / w_scale), −127, 127),   zero point 0

One scale per output channel (or one per tensor), chosen as ``max|w| / 127`` so the largest weight of
a channel maps to ±127 exactly. zeroskip's own quantizer never writes −128: the range is symmetric,
zero stays zero (a pruned weight is still exactly 0, so a sparse kernel may skip it) and negating a
channel is exact. The kernels accept all of [−128, 127], because imported models may use −128; that
bound, not this one, is what the accumulator check in ``zeroskip.quantmath`` assumes.

NumPy only; nothing here runs per inference.
"""

from __future__ import annotations

import numpy as np

WEIGHT_MAX = 127
"""zeroskip's quantizer writes weights in [−WEIGHT_MAX, WEIGHT_MAX] = [−127, 127]: −128 is never written."""


def choose_weight_scales(w_float, axis: int | None = 0) -> np.ndarray:
    """Symmetric weight scales max|w| / 127, per channel along ``axis`` or per tensor (float32).

    w_float [N, ...] float — the weight; axis — the output-channel axis (0 for a conv weight
    (N, C/g, kh, kw) and the IR's Gemm weight (N, K); 1 for a weight stored (K, N), as ONNX MatMul
    and Gemm with transB=0 store it), or None for one scale for the whole tensor.
    Returns scales [w.shape[axis]] float32, or a 0-d float32 when axis is None.
    A channel that is all zero (pruning emptied it) gets 1.0: any positive scale works, since every
    product with its zeros is zero, and max|w| / 127 would be 0. So does a channel whose
    max|w| / 127 underflows float32 to 0: its weights all quantize to 0.
    """
    w = np.asarray(w_float, dtype=np.float64)
    if axis is None:
        peak = np.max(np.abs(w)) if w.size else np.float64(0.0)
    else:
        axis = _channel_axis(w, axis)
        other = tuple(a for a in range(w.ndim) if a != axis)
        peak = np.max(np.abs(w), axis=other, initial=0.0) if other else np.abs(w)
    scales = (np.asarray(peak) / WEIGHT_MAX).astype(np.float32)
    return np.where(scales > 0, scales, np.float32(1.0))


def quantize_weights(w_float, scales, axis: int | None = 0) -> np.ndarray:
    """q_w = clip(round_half_even(w / scale[channel]), −127, 127) as int8; a zero weight stays 0.

    w_float [N, ...] float — the weight; scales [w.shape[axis]] positive (from
    ``choose_weight_scales``), or one scale when axis is None; axis — the channel axis, or None for
    per tensor. w / scale is computed in float64.
    """
    w = np.asarray(w_float, dtype=np.float64)
    s = np.asarray(scales, dtype=np.float64)
    if axis is None:
        s = s.reshape(())
    else:
        shape = [1] * w.ndim
        shape[_channel_axis(w, axis)] = -1
        s = s.reshape(shape)
    return np.clip(np.rint(w / s), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)


def _channel_axis(w: np.ndarray, axis: int) -> int:
    if w.ndim == 0:
        raise ValueError("a per-channel weight scale needs a weight with at least one axis")
    if not -w.ndim <= axis < w.ndim:
        raise ValueError(f"channel axis {axis} is out of range for a weight of shape {list(w.shape)}")
    return axis % w.ndim


__all__ = ["WEIGHT_MAX", "choose_weight_scales", "quantize_weights"]
