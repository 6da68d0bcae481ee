"""Family ``int8``, part 2: the steps around the GEMMs and convs of an int8 graph — the graph
edges (QuantizeLinear, DequantizeLinear), the pools and QAdd, all on 8-bit integers with the
rounding rules of docs/quantization.md §5."""

from __future__ import annotations

import functools

import numpy as np

from ... import quantmath
from ...errors import InputError
from ...model import Node
from .context import PlanContext
from .geometry import max_pool, pool_geometry
from .int8 import Q8_TYPES, check_q8, qadd_arithmetic
from .registry import Decline, builds
from .steps import Step


@builds("int8", "QuantizeLinear")
def quantize(node: Node, ctx: PlanContext):
    kernel = ctx.kernel("quantize_dense_f32")
    attrs = node.attrs
    scale, zp = np.float32(attrs["y_scale"]), int(attrs["y_zero_point"])
    dtype = Q8_TYPES[attrs["y_dtype"]]
    x_name, out = node.inputs[0], node.outputs[0]

    def run(values):
        x = np.ascontiguousarray(values[x_name], dtype=np.float32)
        y = np.empty(x.shape, dtype)
        kernel(x.reshape(-1), scale, zp, y.reshape(-1))
        values[out] = y

    return Step(node, "quantize_dense_f32", "graph edge: float32 -> 8 bits, round half to even as "
                "ONNX QuantizeLinear", run, replay="kernels")


@builds("int8", "DequantizeLinear")
def dequantize(node: Node, ctx: PlanContext):
    kernel = ctx.kernel("dequantize_dense_i8")
    scale, zp = np.float32(node.attrs["x_scale"]), int(node.attrs["x_zero_point"])
    x_name, out = node.inputs[0], node.outputs[0]

    def run(values):
        q = values[x_name]
        check_q8(node, q)
        if q.ndim == 2 and not q.flags.c_contiguous and q.T.flags.c_contiguous:
            # a GEMM's output (the transpose of its kernel's (N, M) result): dequantized as it
            # lies, handed on transposed, no copy
            yt = np.empty(q.T.shape, np.float32)
            kernel(q.T.reshape(-1), scale, zp, yt.reshape(-1))
            values[out] = yt.T
            return
        q = np.ascontiguousarray(q)
        y = np.empty(q.shape, np.float32)
        kernel(q.reshape(-1), scale, zp, y.reshape(-1))
        values[out] = y

    return Step(node, "dequantize_dense_i8", "graph edge: 8 bits -> float32", run,
                replay="kernels")


def _planes(node: Node, values: dict, x_name: str) -> np.ndarray:
    """The node's 8-bit (N, C, H, W) input, contiguous, or InputError."""
    x = np.ascontiguousarray(values[x_name])
    check_q8(node, x)
    if x.ndim != 4:
        raise InputError(f"node {node.name!r} ({node.op}): expected (N, C, H, W), got {x.shape}")
    return x


@builds("int8", "QMaxPool")
def qmaxpool(node: Node, ctx: PlanContext):
    if len(node.attrs["kernel_shape"]) != 2:
        return Decline("not a 2-D pool")
    kernel = ctx.kernel("maxpool_dense_i8")
    x_name, out = node.inputs[0], node.outputs[0]

    def run(values):
        values[out] = max_pool(node, kernel, _planes(node, values, x_name))

    return Step(node, "maxpool_dense_i8", "max of the integers (same scale in and out)", run,
                replay="kernels")


@builds("int8", "QAveragePool")
def qavgpool(node: Node, ctx: PlanContext):
    attrs = node.attrs
    if len(attrs["kernel_shape"]) != 2:
        return Decline("not a 2-D pool")
    if attrs["x_scale"] != attrs["y_scale"] or attrs["x_zero_point"] != attrs["y_zero_point"]:
        return Decline("other quantization parameters out than in")
    kernel = ctx.kernel("avgpool_dense_i8")
    x_name, out = node.inputs[0], node.outputs[0]
    x_zp, include = int(attrs["x_zero_point"]), int(attrs["count_include_pad"])

    def run(values):
        x = _planes(node, values, x_name)
        (kh, kw), (sh, sw), (dh, dw), (pt, pl), (pb, pr), (oh, ow) = pool_geometry(node, x.shape)
        y = np.empty(x.shape[:2] + (oh, ow), x.dtype)
        kernel(x, y, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, include, x_zp)
        values[out] = y

    return Step(node, "avgpool_dense_i8", "integer window sums, divided with round half away "
                "from zero", run, replay="kernels")


@builds("int8", "QGlobalAveragePool")
def qglobal_avgpool(node: Node, ctx: PlanContext):
    attrs = node.attrs
    kernel = ctx.kernel("global_avgpool_dense_i8")
    x_name, out = node.inputs[0], node.outputs[0]
    x_zp, y_zp = int(attrs["x_zero_point"]), int(attrs["y_zero_point"])
    lo, hi = quantmath.clamp_bounds(attrs["y_dtype"], attrs["y_scale"], y_zp)
    ratio = float(attrs["x_scale"]) / float(attrs["y_scale"])
    dtype = Q8_TYPES[attrs["y_dtype"]]
    average = ctx.kernel("avgpool_dense_i8")
    same = attrs["x_scale"] == attrs["y_scale"] and x_zp == y_zp

    @functools.lru_cache(maxsize=16)
    def multiplier(plane: int) -> tuple[int, int]:
        """(m0, shift) of x_scale / (y_scale · H·W): worked out once per plane size, not per run."""
        m0, shift = quantmath.quantize_multiplier(np.array([ratio / plane]))
        return int(m0[0]), int(shift[0])

    def run(values):
        x = _planes(node, values, x_name)
        y = np.empty(x.shape[:2] + (1, 1), dtype)
        if same:  # an exact integer division of the plane sum (quantization.md §5)
            average(x, y, x.shape[2], x.shape[3], 1, 1, 1, 1, 0, 0, 0, 0, 0, x_zp)
        else:  # the mean and the change of scale in one rounding
            m0, shift = multiplier(x.shape[2] * x.shape[3])
            kernel(x, y, x_zp, m0, shift, y_zp, int(lo), int(hi))
        values[out] = y

    return Step(node, "global_avgpool_dense_i8", "integer plane sums, one requantization", run,
                replay="kernels")


def _fixed_operands(node: Node, ctx: PlanContext) -> dict:
    """QAdd's constant operands, as the 8-bit integers of the parameters this node reads them with."""
    attrs, fixed = node.attrs, {}
    for name, side in zip(node.inputs, ("a", "b")):
        tensor = ctx.tensors.get(name)
        if tensor is not None:
            scale, zp = float(attrs[f"{side}_scale"]), int(attrs[f"{side}_zero_point"])
            info = np.iinfo(tensor.dtype if tensor.dtype in (np.uint8, np.int8) else np.int8)
            q = tensor.to_numpy() if tensor.quant is None else \
                np.clip(np.rint(tensor.dequantize() / scale) + zp, info.min, info.max)
            fixed[name] = np.ascontiguousarray(q.astype(info.dtype))
    return fixed


def _broadcast(node: Node, a: np.ndarray, b: np.ndarray) -> tuple:
    """a and b broadcast to their common shape, as contiguous copies, or InputError."""
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise InputError(f"node {node.name!r} (QAdd): expected inputs that broadcast, got "
                         f"{a.shape} and {b.shape}") from None
    return (np.ascontiguousarray(np.broadcast_to(a, shape)),
            np.ascontiguousarray(np.broadcast_to(b, shape)))


@builds("int8", "QAdd")
def qadd(node: Node, ctx: PlanContext):
    attrs = node.attrs
    kernel = ctx.kernel("add_dense_i8")
    a_zp, b_zp, a_mult, b_mult, shift, y_zp, lo, hi = qadd_arithmetic(node)
    dtype = Q8_TYPES[attrs["y_dtype"]]
    (a_name, b_name), out = node.inputs, node.outputs[0]
    fixed = _fixed_operands(node, ctx)

    def run(values):
        a, b = fixed.get(a_name, values.get(a_name)), fixed.get(b_name, values.get(b_name))
        check_q8(node, a)
        check_q8(node, b)
        if a.shape != b.shape or not (a.flags.c_contiguous and b.flags.c_contiguous):
            a, b = _broadcast(node, a, b)  # residual Adds (equal shapes) take no copy
        y = np.empty(a.shape, dtype)
        kernel(a.reshape(-1), b.reshape(-1), y.reshape(-1), a_zp, b_zp, a_mult, b_mult, shift, y_zp,
               lo, hi)
        values[out] = y

    return Step(node, "add_dense_i8", "two input scales on one fixed-point base, one rounding", run,
                replay="kernels")
