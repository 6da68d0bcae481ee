"""Float references of the quantized IR ops: dequantize, compute in float64, quantize.

This is the *float* reference of DESIGN.md (it measures quantization error), not the integer
reference the int8 kernels must match bit for bit. Each op:

1. dequantizes its integer inputs, ``real = scale·(q − zero_point)``, with the node's x_*/a_*/b_*
   attributes (an input that arrives as floats is already real: the executor hands quantized
   initializers over dequantized, with their ``QuantParams``);
2. runs the float op of ``zeroskip.reference`` in float64;
3. applies the fused activation ``clip(y, clip_min, clip_max)`` (real units, None = open);
4. quantizes as ONNX does: ``q = clamp(round_half_even(y / y_scale) + y_zero_point)`` to the range of
   ``y_dtype``, returned as an int64 array (integer activations travel as int64, like every integer
   tensor of the reference executor).

QuantizeLinear divides in float32, exactly as ONNX QuantizeLinear does, so the first integer tensor of a
graph equals onnxruntime's. DequantizeLinear returns float64 ``x_scale·(q − x_zp)``, exact.
"""

from __future__ import annotations

import numpy as np

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
    q = np.rint(y / np.float64(np.float32(y_scale))) + int(y_zero_point)
    return np.clip(q, info.min, info.max).astype(np.int64)


def quantize_linear(x, *, y_scale, y_zero_point, y_dtype):
    """q = clamp(round_half_even(x / y_scale) + y_zp), the division in float32 as ONNX does it."""
    x = np.asarray(x, dtype=np.float32)
    info = np.iinfo(np.dtype(y_dtype))
    with np.errstate(divide="ignore", invalid="ignore"):
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


OPS = {
    "QuantizeLinear": quantize_linear,
    "DequantizeLinear": dequantize_linear,
    "QGemm": qgemm,
    "QConv": qconv,
    "QAdd": qadd,
    "QMaxPool": qmax_pool,
    "QAveragePool": qaverage_pool,
    "QGlobalAveragePool": qglobal_average_pool,
}
"""IR op name -> float reference (registered in ``zeroskip.reference.OPS``)."""
