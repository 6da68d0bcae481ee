"""Plan-time quantization math (NumPy only): the numbers the int8 kernels are given.

Everything here follows docs/quantization.md: the Q31 multiplier and shift of section 3, the folded
bias of section 2, the accumulator-range check of section 4 and the clamp bounds of a fused
activation. The weight quantizer that writes int8 weights lives in ``zeroskip.compress.weights``.
Nothing here runs per inference.

**The weight contract.** int8 weights that reach a kernel may be anything in [−128, 127]. zeroskip's
own quantizer writes [−127, 127] (symmetric: zero stays zero, negating a channel is exact), but
imported models (onnxruntime's QOperator and QDQ weights, MatMulInteger/ConvInteger's w − w_zp, the
uint8 offset form w − 128) can hold −128, so the kernels and the overflow bound take the full int8
range: |u8·s8| ≤ 255·128 = 32 640 < 2^15, so K ≤ 65 793 is safe with uint8 activations;
|s8·s8| ≤ 128·128 = 2^14, so K ≤ 131 071 with int8 activations; the plan checks
K·max|q_w·q_x| + max|bias'| < 2^31 per layer (``MAX_ABS_PRODUCT``, ``check_accumulator_range``).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import UnsupportedModelError

INT32_MAX = 2 ** 31 - 1
TYPE_RANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}
MAX_ABS_PRODUCT = {np.dtype(np.uint8): 255 * 128, np.dtype(np.int8): 128 * 128}
"""Largest |q_w·q_x| for int8 weights in [−128, 127], keyed by the activation's ``np.dtype``:
255·128 = 32 640 < 2^15 for uint8 activations (K ≤ 65 793 keeps K·32 640 < 2^31), 128·128 = 2^14
for int8 (K ≤ 131 071). The ``max_abs_product`` to give ``check_accumulator_range``."""


def quantize_multiplier(real) -> tuple[np.ndarray, np.ndarray]:
    """(m0, shift) with real ≈ m0·2^−shift, m0 ∈ [2^30, 2^31), 1 ≤ shift ≤ 62 (quantization.md §3).

    real [N] or [] float — positive multipliers x_scale·w_scale[n] / y_scale.
    Returns m0 int32 and shift int32 arrays of real's shape. Write real = f·2^e with f ∈ [0.5, 1);
    then m0 = round(f·2^31) (ties up; f·2^31 is exact in float64) and shift = 31 − e. If the rounding
    gives 2^31, m0 = 2^30 and shift − 1 (the carry). The relative error is below 2^−31.
    A multiplier below 2^−32 maps every accumulator to the zero point and gives m0 = 0, shift = 31.
    Raises UnsupportedModelError for a multiplier that is not finite and positive, or ≥ 2^30
    (which would need shift < 1).
    """
    real = np.asarray(real, dtype=np.float64)
    bad = ~np.isfinite(real) | (real <= 0)
    if np.any(bad):
        raise UnsupportedModelError(
            f"requantization multiplier must be finite and > 0, got {real[bad].ravel()[:4].tolist()}")
    f, e = np.frexp(real)                                   # real = f·2^e, f ∈ [0.5, 1)
    m0 = np.floor(f * 2.0 ** 31 + 0.5).astype(np.int64)     # in [2^30, 2^31]
    shift = 31 - e.astype(np.int64)
    carry = m0 == 2 ** 31
    m0 = np.where(carry, 2 ** 30, m0)
    shift = np.where(carry, shift - 1, shift)
    tiny = real < 2.0 ** -32
    m0 = np.where(tiny, 0, m0)
    shift = np.where(tiny, 31, shift)
    if np.any(shift < 1):
        raise UnsupportedModelError(
            f"requantization multiplier {real[shift < 1].ravel()[:4].tolist()} is ≥ 2^30: "
            "the output scale is too small for the accumulator scale")
    return m0.astype(np.int32), shift.astype(np.int32)


def fold_bias(bias_i32, w_rowsum, x_zero_point) -> np.ndarray:
    """bias'[n] = q_b[n] − x_zp·Σ_k q_w[n,k] as int32 (quantization.md §2).

    bias_i32 [N] int32 or None — the quantized bias (scale x_scale·w_scale[n], zero point 0);
    w_rowsum [N] int — Σ_k q_w[n,k] over the whole row (zeros included: they add nothing);
    x_zero_point int. Raises UnsupportedModelError if bias' does not fit int32.
    """
    rowsum = np.asarray(w_rowsum, dtype=np.int64)
    bias = np.zeros_like(rowsum) if bias_i32 is None else np.asarray(bias_i32, dtype=np.int64)
    folded = bias - np.int64(x_zero_point) * rowsum
    if folded.size and np.max(np.abs(folded)) > INT32_MAX:
        raise UnsupportedModelError("folded bias q_b − x_zp·rowsum does not fit int32")
    return folded.astype(np.int32)


def check_accumulator_range(K: int, max_abs_product: int, bias) -> None:
    """Refuse a layer whose int32 accumulator could overflow: needs K·max|q_w·q_x| + max|bias'| < 2^31.

    K — terms per output (the reduction length); max_abs_product — the bound on one product,
    ``MAX_ABS_PRODUCT[np.dtype(x_dtype)]``: weights may be anything in [−128, 127], so 255·128 =
    32 640 for uint8 activations (K ≤ 65 793 with no bias) and 128·128 = 16 384 for int8
    (K ≤ 131 071); bias [N] — the folded bias (quantization.md §4).
    Raises UnsupportedModelError naming K and the bound when the sum could reach 2^31.
    """
    bias = np.asarray(bias, dtype=np.int64)
    worst = int(K) * int(max_abs_product) + (int(np.max(np.abs(bias))) if bias.size else 0)
    if worst > INT32_MAX:
        raise UnsupportedModelError(
            f"int32 accumulator could overflow: K={K} × {max_abs_product} + max|bias'| = {worst} ≥ 2^31")


def check_layer_accumulator(q_weight, x_zero_point: int, bias, x_dtype) -> None:
    """``check_accumulator_range`` for one QConv/QGemm: q_weight [N, ...] int8, the activation's
    zero point and dtype, bias [N] int32 or None; the folded bias is b − x_zp·Σ_k q_w."""
    q = np.asarray(q_weight).astype(np.int64)
    n_out = q.shape[0]
    b = np.zeros(n_out, np.int64) if bias is None else np.asarray(bias).astype(np.int64)
    folded = b - int(x_zero_point) * q.reshape(n_out, -1).sum(axis=1)
    check_accumulator_range(int(np.prod(q.shape[1:])), MAX_ABS_PRODUCT[np.dtype(x_dtype)], folded)


def bias_scales(x_scale: float, w_scale, n_out: int) -> np.ndarray:
    """The int32 bias's scales x_scale·w_scale[n] as float32 [N] (per-tensor weights broadcast),
    computed in float64 and rounded once, as onnxruntime writes them."""
    w = np.broadcast_to(np.asarray(w_scale, np.float64).reshape(-1), (n_out,))
    return (np.float64(x_scale) * w).astype(np.float32)


def quantize_bias(real, scales) -> np.ndarray | None:
    """round_half_even(real / scale) as int32, or None when a value does not fit int32."""
    q = np.rint(np.asarray(real, np.float64) / np.asarray(scales, np.float32).astype(np.float64))
    if not np.all(np.abs(q) <= INT32_MAX):
        return None
    return q.astype(np.int32)


def clamp_bounds(y_dtype, y_scale, y_zero_point, clip_min=None, clip_max=None) -> tuple[int, int]:
    """(lo, hi): the output type's range narrowed by a fused activation (quantization.md §3).

    No activation: clip_min = clip_max = None. ReLU: clip_min = 0. ReLU6: clip_min = 0, clip_max = 6.
    Clip(a, b): clip_min = a, clip_max = b (either may be None). A bound b maps to
    y_zp + round(b / y_scale) (round half to even, in float64); lo = max(type min, that), hi likewise.
    ReLU gives lo = max(type min, y_zp) exactly, since round(0) = 0.
    """
    lo, hi = TYPE_RANGE[np.dtype(y_dtype)]
    zp, scale = int(y_zero_point), float(y_scale)
    def step(bound) -> int:  # bound / y_scale, held in ±2^40 (past the type either way)
        return int(np.clip(np.rint(float(bound) / scale), -2.0**40, 2.0**40))

    type_lo, type_hi = lo, hi
    with np.errstate(over="ignore"):  # a huge bound over a tiny scale is infinite: clipped
        if clip_min is not None and math.isfinite(clip_min):
            lo = max(lo, zp + step(clip_min))
        if clip_max is not None and math.isfinite(clip_max):
            hi = min(hi, zp + step(clip_max))
    # a bound past the type's other end saturates there (Clip(min=1e9) gives the type's max)
    return int(min(lo, type_hi)), int(max(hi, type_lo))


def add_multipliers(a_ratio: float, b_ratio: float) -> tuple[int, int, int]:
    """(A, B, R): a_ratio ≈ A/2^R, b_ratio ≈ B/2^R on one base, A, B < 2^44 (quantization.md §5).

    a_ratio, b_ratio — a_scale / y_scale and b_scale / y_scale of a QAdd. The larger ratio gets 44
    significant bits, so (a − a_zp)·A + (b − b_zp)·B fits int64 for 8-bit inputs; R ≤ 62.
    Raises UnsupportedModelError when a ratio is too large for R ≥ 1."""
    top = max(a_ratio, b_ratio)
    shift = min(62, 43 - math.floor(math.log2(top))) if top > 0 else 62
    if shift < 1:
        raise UnsupportedModelError(f"QAdd input/output scale ratio {top:g} is too large")
    return round(a_ratio * 2 ** shift), round(b_ratio * 2 ** shift), shift


__all__ = ["INT32_MAX", "MAX_ABS_PRODUCT", "TYPE_RANGE", "add_multipliers", "bias_scales",
           "check_accumulator_range", "check_layer_accumulator", "quantize_bias",
           "clamp_bounds", "fold_bias", "quantize_multiplier"]
