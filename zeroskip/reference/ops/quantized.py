"""Float references of the quantized IR ops: dequantize, compute in float64, quantize.

This is the *float* reference of DESIGN.md (it measures quantization error), not the integer
reference the int8 kernels must match bit for bit (``zeroskip.reference.kernels``). Each op:

1. dequantizes its integer inputs, ``real = scale·(q − zero_point)``, with the node's x_*/a_*/b_*
   attributes (an input that arrives as floats is already real: the executor hands quantized
   initializers over dequantized, with their ``QuantParams``);
2. runs the float op of ``zeroskip.reference.ops`` in float64;
3. applies the fused activation ``clip(y, clip_min, clip_max)`` (real units, None = open);
4. quantizes as ONNX does: ``q = clamp(round_half_even(y / y_scale) + y_zero_point)`` to the range of
   ``y_dtype``, returned as an int64 array (integer activations travel as int64, like every integer
   tensor of the reference executor).

QuantizeLinear divides in float32, exactly as ONNX QuantizeLinear does, so the first integer tensor of a
graph equals onnxruntime's. DequantizeLinear returns float64 ``x_scale·(q − x_zp)``, exact.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from . import conv as _conv
from . import elementwise, matmul, pool


def _real(q, scale, zero_point) -> np.ndarray:
    """float64 scale·(q − zero_point) of an integer array; a float array is returned as it is."""
    q = np.asarray(q)
    if q.dtype.kind == "f":
        return q.astype(np.float64, copy=False)
    return np.float64(np.float32(scale)) * (q.astype(np.int64) - int(zero_point)).astype(np.float64)


def _quantize(y, y_scale, y_zero_point, y_dtype, clip_min=None, clip_max=None) -> np.ndarray:
    """int64 clamp(round_half_even(clip(y) / y_scale) + y_zp) to y_dtype's range; y float64."""
    y = np.asarray(y, dtype=np.float64)
    if clip_min is not None or clip_max is not None:
        y = np.clip(y, -np.inf if clip_min is None else clip_min,
                    np.inf if clip_max is None else clip_max)
    info = np.iinfo(np.dtype(y_dtype))
    with np.errstate(over="ignore"):  # a huge real over a tiny scale saturates below
        q = np.rint(y / np.float64(np.float32(y_scale))) + int(y_zero_point)
    return np.clip(q, info.min, info.max).astype(np.int64)


def quantize_linear(x, *, y_scale, y_zero_point, y_dtype):
    """q = clamp(round_half_even(x / y_scale) + y_zp), the division in float32 as ONNX does it.

    NaN gives the zero point (real 0); ±inf, and values whose quotient overflows float32, give
    the ends of the range."""
    x = np.asarray(x, dtype=np.float32)
    info = np.iinfo(np.dtype(y_dtype))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = np.rint(x / np.float32(y_scale)).astype(np.float64) + int(y_zero_point)
    return np.clip(np.nan_to_num(q, nan=int(y_zero_point)), info.min, info.max).astype(np.int64)


def dequantize_linear(x, *, x_scale, x_zero_point):
    """x = x_scale·(q − x_zp) as float64."""
    return _real(x, x_scale, x_zero_point)


def qgemm(x, w, b=None, *, x_scale, x_zero_point, y_scale, y_zero_point, y_dtype, clip_min=None,
          clip_max=None):
    """q_y (M,N) = Q(clip(x_real (M,K) · w_real (N,K)ᵀ + b_real (N))); w, b arrive dequantized."""
    y = matmul.gemm(_real(x, x_scale, x_zero_point), np.asarray(w, dtype=np.float64),
                    None if b is None else np.asarray(b, dtype=np.float64), transB=1)
    return _quantize(y, y_scale, y_zero_point, y_dtype, clip_min, clip_max)


def qconv(x, w, b=None, *, x_scale, x_zero_point, y_scale, y_zero_point, y_dtype, clip_min=None,
          clip_max=None, **conv_attrs):
    """q_y = Q(clip(conv(x_real, w_real, b_real))); conv attributes as ONNX Conv."""
    y = _conv.conv(_real(x, x_scale, x_zero_point), np.asarray(w, dtype=np.float64),
                   None if b is None else np.asarray(b, dtype=np.float64), **conv_attrs)
    return _quantize(y, y_scale, y_zero_point, y_dtype, clip_min, clip_max)


def qadd(a, b, *, a_scale, a_zero_point, b_scale, b_zero_point, y_scale, y_zero_point, y_dtype,
         clip_min=None, clip_max=None):
    """q_y = Q(clip(a_real + b_real)), numpy broadcasting."""
    y = elementwise.add(_real(a, a_scale, a_zero_point), _real(b, b_scale, b_zero_point))
    return _quantize(y, y_scale, y_zero_point, y_dtype, clip_min, clip_max)


def qmax_pool(x, **attrs):
    """Max pooling of the integers (it commutes with the increasing map to reals): same scale and
    zero point out as in. An integer input gives int64, a real one float64."""
    x = np.asarray(x)
    y = pool.max_pool(x.astype(np.float64), **attrs)
    return y.astype(np.int64) if x.dtype.kind in "iu" else y


def qaverage_pool(x, *, x_scale, x_zero_point, y_scale, y_zero_point, y_dtype, **attrs):
    """q_y = Q(average_pool(x_real)); counted pads add a real 0."""
    y = pool.average_pool(_real(x, x_scale, x_zero_point), **attrs)
    return _quantize(y, y_scale, y_zero_point, y_dtype)


def qglobal_average_pool(x, *, x_scale, x_zero_point, y_scale, y_zero_point, y_dtype):
    """q_y [N,C,1,..] = Q(mean over the spatial axes of x_real)."""
    y = pool.global_average_pool(_real(x, x_scale, x_zero_point))
    return _quantize(y, y_scale, y_zero_point, y_dtype)


# -- ONNX's integer ops (dynamic quantization) -------------------------------------------------------
# These are integer by definition, so their reference is exact integer arithmetic, not dequantize →
# float → quantize. Integer tensors travel as int64.

def dynamic_quantize_linear(x):
    """(q, scale, zero_point): x quantized to uint8 with parameters taken from its own range.

    In float32, as ONNX and onnxruntime compute it:
        lo = min(0, min x), hi = max(0, max x)        (the range always holds 0, so 0 is exact)
        scale = (hi − lo) / 255, or 1 when hi = lo (x all zero; onnxruntime's choice)
        zero_point = round_half_even(clamp(0 − lo / scale, 0, 255))
        q = clamp(round_half_even(x / scale) + zero_point, 0, 255)
    x float — any shape; non-finite values have no scale and raise InputError.
    Returns q int64 (shape of x), scale float64 0-d (a float32 value), zero_point int64 0-d.
    """
    x = np.asarray(x, dtype=np.float32)
    scale, zero_point = dynamic_quantize_params(x)
    q = quantize_linear(x, y_scale=scale, y_zero_point=zero_point, y_dtype="uint8")
    return q, np.array(scale, np.float64), np.array(zero_point, np.int64)


def dynamic_quantize_params(x) -> tuple[np.float32, int]:
    """(scale, zero_point) of dynamic_quantize_linear for a float32 array x."""
    if x.size == 0:
        return np.float32(1.0), 0
    lo, hi = np.float32(min(0.0, float(x.min()))), np.float32(max(0.0, float(x.max())))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError("the input holds inf or NaN, which no uint8 scale can represent")
    scale = np.float32(1.0) if hi == lo else np.float32((hi - lo) / np.float32(255))
    return scale, int(np.rint(np.clip(np.float32(0) - lo / scale, 0, 255)))


def _centered(q, zero_point, axis, what) -> np.ndarray:
    """float64 q − zero_point: a scalar zero point, or a 1-D one along ``axis`` of q (exact)."""
    q = np.asarray(q).astype(np.int64)
    if zero_point is None:
        return q.astype(np.float64)
    zp = np.asarray(zero_point).astype(np.int64)
    if zp.size == 1:
        return (q - zp.reshape(())).astype(np.float64)
    if zp.ndim != 1 or q.ndim < 2 or q.shape[axis] != zp.size:
        raise InputError(f"expected {what}'s zero point to be a scalar or 1-D of length "
                         f"{q.shape[axis] if q.ndim >= 2 else '?'} (axis {axis} of shape "
                         f"{q.shape}), got shape {zp.shape}")
    shape = [1] * q.ndim
    shape[axis] = -1
    return (q - zp.reshape(shape)).astype(np.float64)


def matmul_integer(a, b, a_zero_point=None, b_zero_point=None):
    """y = (a − a_zp) @ (b − b_zp), exact, as int64 (ONNX MatMulInteger; int32 in onnxruntime).

    a [..., M, K], b [..., K, N] 8-bit integers; a_zp scalar or per row (M), b_zp scalar or per
    column (N). Computed in float64 BLAS: every term is below 2^16 in size, so every partial sum is an
    integer below 2^53 and the product is exact.
    """
    a_c = _centered(a, a_zero_point, -2, "A")
    b_c = _centered(b, b_zero_point, -1, "B")
    return np.rint(matmul.matmul(a_c, b_c)).astype(np.int64)


def conv_integer(x, w, x_zero_point=None, w_zero_point=None, **conv_attrs):
    """y = conv(x − x_zp, w − w_zp), exact, as int64 (ONNX ConvInteger): pads are x_zp, i.e. 0 after
    centering. x_zp scalar; w_zp scalar or per output channel. float64 as in matmul_integer."""
    if x_zero_point is not None and np.size(x_zero_point) != 1:
        raise InputError(f"expected a scalar x_zero_point, got shape {np.shape(x_zero_point)}")
    x_c = _centered(x, x_zero_point, 0, "x")
    w_c = _centered(w, w_zero_point, 0, "w")
    return np.rint(_conv.conv(x_c, w_c, None, **conv_attrs)).astype(np.int64)


OPS = {
    "DynamicQuantizeLinear": dynamic_quantize_linear,
    "MatMulInteger": matmul_integer,
    "ConvInteger": conv_integer,
    "QuantizeLinear": quantize_linear,
    "DequantizeLinear": dequantize_linear,
    "QGemm": qgemm,
    "QConv": qconv,
    "QAdd": qadd,
    "QMaxPool": qmax_pool,
    "QAveragePool": qaverage_pool,
    "QGlobalAveragePool": qglobal_average_pool,
}
"""IR op name -> float reference (registered in ``zeroskip.reference.ops.OPS``)."""
