"""The op set of the zeroskip IR: each op's arity and its attributes with their defaults.

The IR speaks a subset of ONNX, normalized to one form per op whatever opset the model came from:
attributes that later opsets moved into inputs (Clip's bounds, Pad's pads, Squeeze's axes, ...) are
attributes here, and every attribute is present with a concrete value once a node is built with
``normalize_attrs``. Attribute values are JSON-friendly: int, float, str, None, or lists of those.

This table is the single source for the ONNX importer (which refuses what is not here), the ``.zsk``
validator (which checks arity and attribute names), shape inference and the reference executor.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

REQUIRED = object()
"""Marks an attribute that has no default and must be given."""

VARIADIC = 1 << 30
"""Upper arity bound of ops that take any number of inputs (Sum, Concat)."""


@dataclass(frozen=True)
class OpSpec:
    """What a node of one op type must look like.

    ``inputs``/``outputs`` are (min, max) counts; an optional input left out in the middle is the
    empty string ``""``. ``attrs`` maps every attribute the op accepts to its default (or REQUIRED).
    """

    name: str
    inputs: tuple[int, int]
    outputs: tuple[int, int] = (1, 1)
    attrs: dict = field(default_factory=dict)


def _spec(name, inputs, outputs=(1, 1), **attrs):
    return OpSpec(name, inputs, outputs, attrs)


_CONV = dict(auto_pad="NOTSET", kernel_shape=None, strides=None, pads=None, dilations=None, group=1)

# Quantized ops carry their activations' quantization in attributes: x_* for the input, y_* for the
# output (y_dtype "uint8" or "int8"); real = scale·(q − zero_point). Weights are int8 initializers
# whose QuantParams hold one scale per output channel (axis 0, zero point 0) or one per tensor; a bias
# is int32 with scale x_scale·w_scale[n] and zero point 0. clip_min/clip_max (real units, None = open)
# are a fused activation, which the requantization's clamp applies (docs/quantization.md).
_Q_IN = dict(x_scale=REQUIRED, x_zero_point=REQUIRED)
_Q_OUT = dict(y_scale=REQUIRED, y_zero_point=REQUIRED, y_dtype=REQUIRED)
_Q_CLIP = dict(clip_min=None, clip_max=None)

_POOL = dict(auto_pad="NOTSET", kernel_shape=REQUIRED, strides=None, pads=None, dilations=None,
             ceil_mode=0)

OPS: dict[str, OpSpec] = {s.name: s for s in [
    # Linear algebra. Conv's spatial attributes are lists with one entry per spatial axis (pads has
    # two: all begins, then all ends, as in ONNX); None means the ONNX default (1s, 0s).
    _spec("Conv", (2, 3), **_CONV),
    _spec("Gemm", (2, 3), alpha=1.0, beta=1.0, transA=0, transB=0),
    _spec("MatMul", (2, 2)),
    # Elementwise with numpy broadcasting.
    _spec("Add", (2, 2)),
    _spec("Sub", (2, 2)),
    _spec("Mul", (2, 2)),
    _spec("Div", (2, 2)),
    _spec("Sum", (1, VARIADIC)),
    _spec("Pow", (2, 2)),
    _spec("Sqrt", (1, 1)),
    _spec("Exp", (1, 1)),
    # Activations. Clip's bounds are attributes here (None = unbounded on that side).
    _spec("Relu", (1, 1)),
    _spec("Clip", (1, 1), min=None, max=None),
    _spec("LeakyRelu", (1, 1), alpha=0.01),
    _spec("Sigmoid", (1, 1)),
    _spec("Tanh", (1, 1)),
    # coerce_2d=1 is the opset < 13 meaning: softmax over all axes from `axis` on, flattened.
    _spec("Softmax", (1, 1), axis=-1, coerce_2d=0),
    # Pooling.
    _spec("MaxPool", (1, 1), **_POOL),
    _spec("AveragePool", (1, 1), **_POOL, count_include_pad=0),
    _spec("GlobalAveragePool", (1, 1)),
    _spec("GlobalMaxPool", (1, 1)),
    # Reductions (torch's exporter writes adaptive_avg_pool2d(1) and mean((2, 3)) as ReduceMean).
    # axes None means all axes (noop_with_empty_axes=1 then means: return the input unchanged).
    _spec("ReduceMean", (1, 1), axes=None, keepdims=1, noop_with_empty_axes=0),
    _spec("ReduceSum", (1, 1), axes=None, keepdims=1, noop_with_empty_axes=0),
    _spec("ReduceMax", (1, 1), axes=None, keepdims=1, noop_with_empty_axes=0),
    # Normalization, inference mode: inputs x, scale, bias, mean, var.
    _spec("BatchNormalization", (5, 5), epsilon=1e-5),
    _spec("LRN", (1, 1), alpha=1e-4, beta=0.75, bias=1.0, size=REQUIRED),
    # Layout.
    _spec("Flatten", (1, 1), axis=1),
    _spec("Reshape", (2, 2), allowzero=0),
    _spec("Transpose", (1, 1), perm=None),
    _spec("Concat", (1, VARIADIC), axis=REQUIRED),
    # pads: begins then ends for every axis; mode: constant, reflect or edge.
    _spec("Pad", (1, 1), mode="constant", pads=REQUIRED, value=0.0),
    _spec("Identity", (1, 1)),
    _spec("Dropout", (1, 1)),
    # Shape arithmetic that stays in the graph when it depends on a dynamic dimension.
    _spec("Shape", (1, 1), start=0, end=None),
    _spec("Gather", (2, 2), axis=0),
    _spec("Unsqueeze", (1, 1), axes=REQUIRED),
    _spec("Squeeze", (1, 1), axes=None),
    _spec("Cast", (1, 1), to=REQUIRED),  # `to` is a numpy dtype name, e.g. "float32"
    _spec("ConstantOfShape", (1, 1), value=0.0, dtype="float32"),
    # Quantized ops: float <-> integer at the edges, then integer-only arithmetic inside.
    _spec("QuantizeLinear", (1, 1), **_Q_OUT),  # q = clamp(round_half_even(x / y_scale) + zp)
    _spec("DequantizeLinear", (1, 1), **_Q_IN),  # x = x_scale·(q − x_zero_point), float32
    # QGemm: y (M,N) = x (M,K) · w (N,K)ᵀ + b (N), i.e. Gemm with transB=1.
    _spec("QGemm", (2, 3), **_Q_IN, **_Q_OUT, **_Q_CLIP),
    _spec("QConv", (2, 3), **_CONV, **_Q_IN, **_Q_OUT, **_Q_CLIP),
    _spec("QAdd", (2, 2), a_scale=REQUIRED, a_zero_point=REQUIRED, b_scale=REQUIRED,
          b_zero_point=REQUIRED, **_Q_OUT, **_Q_CLIP),
    _spec("QMaxPool", (1, 1), **_POOL),  # the same scale and zero point in and out
    _spec("QAveragePool", (1, 1), **_POOL, count_include_pad=0, **_Q_IN, **_Q_OUT),
    _spec("QGlobalAveragePool", (1, 1), **_Q_IN, **_Q_OUT),
    # Integer ops of ONNX, kept as ONNX defines them (dynamic quantization: the activation's scale
    # and zero point are computed from the data on every run). DynamicQuantizeLinear: x float32 ->
    # (y uint8, y_scale float32 scalar, y_zero_point uint8 scalar). MatMulInteger / ConvInteger:
    # (a, b, [a_zero_point], [b_zero_point]) -> int32 Σ (a − a_zp)·(b − b_zp), exact; the float
    # rescaling that follows (Cast, Mul) stays ordinary float ops.
    _spec("DynamicQuantizeLinear", (1, 1), (3, 3)),
    _spec("MatMulInteger", (2, 4)),
    _spec("ConvInteger", (2, 4), **_CONV),
]}

QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QGemm", "QConv", "QAdd",
                           "QMaxPool", "QAveragePool", "QGlobalAveragePool",
                           "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"})
"""Ops that only appear in quantized models."""


def normalize_attrs(op: str, attrs: dict) -> dict:
    """Return ``attrs`` completed with the defaults of ``op``, in the table's order.

    Raises KeyError naming an unknown attribute, or a required one that is missing; callers turn
    that into the error type of their layer (ModelFormatError, UnsupportedModelError).
    """
    spec = OPS[op]
    unknown = sorted(set(attrs) - set(spec.attrs))
    if unknown:
        raise KeyError(f"unknown attribute {unknown[0]!r}")
    out = {}
    for name, default in spec.attrs.items():
        if name in attrs:
            out[name] = attrs[name]
        elif default is REQUIRED:
            raise KeyError(f"missing required attribute {name!r}")
        else:
            out[name] = default
    return out


# -- attribute types ----------------------------------------------------------------------------
# What each attribute's value must be, by name (a name means the same thing in every op that has
# it): "int", "number" (an int or a float), "scale" (a number finite and > 0 as float32, as a
# tensor's scales are), "str", "ints" (a list of ints), each with whether None is allowed, and for
# ints the smallest value. Bools are not ints here: JSON's true is no stride.
_INT, _NUM, _SCALE, _STR, _INTS = "int", "number", "scale", "str", "ints"
ATTR_TYPES: dict[str, tuple] = {
    # (kind, None allowed, smallest value of an int or of each int of a list)
    "allowzero": (_INT, False, 0), "ceil_mode": (_INT, False, 0), "coerce_2d": (_INT, False, 0),
    "count_include_pad": (_INT, False, 0), "keepdims": (_INT, False, 0),
    "noop_with_empty_axes": (_INT, False, 0), "transA": (_INT, False, 0),
    "transB": (_INT, False, 0), "group": (_INT, False, 1), "size": (_INT, False, 1),
    "axis": (_INT, False, None), "start": (_INT, False, None), "end": (_INT, True, None),
    "alpha": (_NUM, False, None), "beta": (_NUM, False, None), "bias": (_NUM, False, None),
    "epsilon": (_NUM, False, None), "value": (_NUM, False, None),
    "min": (_NUM, True, None), "max": (_NUM, True, None),
    "clip_min": (_NUM, True, None), "clip_max": (_NUM, True, None),
    "x_scale": (_SCALE, False, None), "y_scale": (_SCALE, False, None),
    "a_scale": (_SCALE, False, None), "b_scale": (_SCALE, False, None),
    "x_zero_point": (_INT, False, None), "y_zero_point": (_INT, False, None),
    "a_zero_point": (_INT, False, None), "b_zero_point": (_INT, False, None),
    "auto_pad": (_STR, False, None), "mode": (_STR, False, None), "dtype": (_STR, False, None),
    "to": (_STR, False, None), "y_dtype": (_STR, False, None),
    "kernel_shape": (_INTS, True, 1), "strides": (_INTS, True, 1), "dilations": (_INTS, True, 1),
    "pads": (_INTS, True, 0), "axes": (_INTS, True, None), "perm": (_INTS, True, 0),
}
"""The type of every attribute of ``OPS``: ``attr_type_error`` checks a node's attributes by it."""

_KIND_WORDS = {_INT: "an integer", _NUM: "a number", _STR: "a string",
               _SCALE: "a number finite and > 0 as float32", _INTS: "a list of integers"}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_float(value) -> float | None:
    """``value`` as a Python float, or None for an int too large for one."""
    try:
        return float(value)
    except OverflowError:
        return None


def _positive_float32(value) -> bool:
    """Whether ``value`` is finite and > 0 once rounded to float32 (no overflow, no underflow)."""
    real = _as_float(value)
    return real is not None and 1.401298464324817e-45 <= real <= 3.4028234663852886e38


MAX_WINDOW = 1 << 24
"""The largest entry of a window attribute (WINDOW_ATTRS): far above any real network's, and small
enough that the sizes and indices computed from it (a stride's phases, a padded plane) stay far
inside int64 and never ask for an absurd allocation."""
WINDOW_ATTRS = ("kernel_shape", "strides", "dilations", "pads", "size")


def _in_range(value, smallest, largest) -> bool:
    return _is_int(value) and (smallest is None or value >= smallest) and (
        largest is None or value <= largest)


def attr_type_error(name: str, value) -> str | None:
    """Why ``value`` cannot be attribute ``name`` (ATTR_TYPES), or None if it can."""
    kind, nullable, smallest = ATTR_TYPES[name]
    largest = MAX_WINDOW if name in WINDOW_ATTRS else None
    limits = ([f"at least {smallest}"] if smallest is not None else []) + (
        [f"at most {largest}"] if largest is not None else [])
    bound = "" if not limits or kind in (_NUM, _SCALE, _STR) else (
        f" (each {', '.join(limits)})" if kind == _INTS else f" {', '.join(limits)}")
    want = f"must be {_KIND_WORDS[kind]}{bound}{', or null' if nullable else ''}"
    if value is None:
        return None if nullable else f"{want}, not null"
    if kind == _INT:
        ok = _in_range(value, smallest, largest)
    elif kind == _NUM:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value \
            and _as_float(value) is not None  # (NaN is not equal to itself)
    elif kind == _SCALE:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and \
            _positive_float32(value)
    elif kind == _STR:
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, (list, tuple)) and len(value) <= 64 and all(
            _in_range(v, smallest, largest) for v in value)
    if ok:
        return None
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{want}, not {shown}"
