"""Elementwise ops and activations: numpy broadcasting, float64 in and out (int64 for shapes)."""

from __future__ import annotations

import numpy as np

from ...errors import InputError


def _broadcast_shape(*arrays) -> tuple:
    try:
        return np.broadcast_shapes(*(np.shape(a) for a in arrays))
    except ValueError:
        shapes = ", ".join(str(tuple(np.shape(a))) for a in arrays)
        raise InputError(f"expected shapes that broadcast together, got {shapes}") from None


def add(a, b):
    """y = a + b, broadcast."""
    _broadcast_shape(a, b)
    return np.asarray(np.add(a, b))


def sub(a, b):
    """y = a − b, broadcast."""
    _broadcast_shape(a, b)
    return np.asarray(np.subtract(a, b))


def mul(a, b):
    """y = a·b, broadcast."""
    _broadcast_shape(a, b)
    return np.asarray(np.multiply(a, b))


def div(a, b):
    """y = a / b, broadcast; on integers the quotient truncates toward zero (C division, as ONNX).

    a, b — float64 (true division, b = 0 gives ±inf/nan as IEEE says) or int64 (b must be nonzero)
    """
    _broadcast_shape(a, b)
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        if np.any(b == 0):
            raise InputError("expected a nonzero integer divisor, got 0")
        quotient = np.abs(a) // np.abs(b)  # |a| // |b| is truncation; put the sign back
        return np.where((a < 0) != (b < 0), -quotient, quotient).astype(np.result_type(a, b))
    return np.asarray(np.true_divide(a, b))


def sum(*xs):  # noqa: A001 - the op is called Sum
    """y = Σ_i x_i, all inputs broadcast together."""
    if not xs:
        raise InputError("expected at least one input to Sum, got none")
    _broadcast_shape(*xs)
    y = np.asarray(xs[0]).copy()
    for x in xs[1:]:
        y = y + x
    return np.asarray(y)


def pow(x, y):  # noqa: A001 - the op is called Pow
    """z = x ** y, broadcast (torch writes LocalResponseNorm and some norms with it).

    x — float64 (or int64); y — float64 or int64 exponent; the result has x's kind, as in ONNX
    """
    _broadcast_shape(x, y)
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind in "iu":
        if np.any(y < 0):
            raise InputError("expected non-negative exponents for an integer base, got a negative one")
        return np.asarray(np.power(x, y.astype(np.int64))).astype(x.dtype)
    return np.asarray(np.power(x, y.astype(np.float64)))


def sqrt(x):
    """y = √x (NaN below 0, as IEEE says)."""
    with np.errstate(invalid="ignore"):
        return np.sqrt(x)


def exp(x):
    """y = eˣ (inf on overflow, as IEEE says)."""
    with np.errstate(over="ignore"):
        return np.exp(x)


def relu(x):
    """y = max(x, 0)."""
    return np.asarray(np.maximum(x, 0))


def clip(x, *, min=None, max=None):  # noqa: A002 - ONNX names the bounds min and max
    """y = min(max(x, lo), hi); a bound of None leaves that side unbounded."""
    y = np.asarray(x)
    if min is not None:
        y = np.maximum(y, min)
    if max is not None:
        y = np.minimum(y, max)
    return np.asarray(y)


def leaky_relu(x, *, alpha=0.01):
    """y = x if x ≥ 0 else alpha·x."""
    return np.asarray(np.where(x >= 0, x, alpha * x))


def sigmoid(x):
    """y = 1 / (1 + e^(−x)), computed without overflow for large |x|."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def tanh(x):
    """y = tanh(x)."""
    return np.asarray(np.tanh(x))


def softmax(x, *, axis=-1, coerce_2d=0):
    """y = e^(x − max) / Σ e^(x − max) along ``axis``.

    coerce_2d=1 is the opset < 13 meaning: x is viewed as 2-D
    (prod(shape[:axis]), prod(shape[axis:])), and the softmax runs over all axes from ``axis`` on
    together.
    """
    x = np.asarray(x, dtype=np.float64)
    ndim = max(x.ndim, 1)
    if not -ndim <= axis < ndim:
        raise InputError(f"expected a Softmax axis in [{-ndim}, {ndim - 1}], got {axis}")
    axis = axis % ndim
    axes = tuple(range(axis, x.ndim)) if coerce_2d else (axis,)
    if x.ndim == 0:
        return np.ones_like(x)
    shifted = x - np.max(x, axis=axes, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axes, keepdims=True)
