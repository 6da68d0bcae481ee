"""Family ``f32-dense``: float32 steps on dense weights — numpy BLAS for Gemm, MatMul and Conv (the
honest dense baseline), the elementwise and pooling kernels, numpy for the rest."""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...model import Node
from ...reference import OPS as REFERENCE_OPS
from .context import PlanContext, float_bounds
from .geometry import conv_geometry, conv_input, max_pool
from .reference import reference_step
from .registry import Decline, builds
from .steps import Scratch, Step


@builds("f32-dense", "Gemm")
def gemm(node: Node, ctx: PlanContext):
    """y = alpha·A·B + beta·C with constant B: prepacked once as alpha·B (K,N) contiguous."""
    w = ctx.const(node.inputs[1])
    if w is None or w.ndim != 2:
        return Decline("B is not a constant matrix")
    attrs = node.attrs
    b = np.ascontiguousarray((w.T if attrs["transB"] else w) * np.float32(attrs["alpha"]))
    c = ctx.const(node.inputs[2]) if len(node.inputs) > 2 else None
    if len(node.inputs) > 2 and node.inputs[2] and c is None:
        return Decline("C is computed at run time")
    c = None if c is None else (c * np.float32(attrs["beta"])).astype(np.float32)
    trans_a = attrs["transA"]
    out, lo, hi = ctx.activation(node)
    x_name = node.inputs[0]

    def run(values):
        x = values[x_name]
        x = x.T if trans_a else x
        if x.ndim != 2 or x.shape[1] != b.shape[0]:
            raise InputError(f"node {node.name!r} (Gemm): expected A with K = {b.shape[0]}, got "
                             f"shape {values[x_name].shape}")
        y = np.asarray(x, dtype=np.float32) @ b
        if c is not None:
            y += c
        if lo is not None or hi is not None:
            np.clip(y, lo, hi, out=y)
        values[out] = y

    return Step(node, "gemm_dense_f32 (numpy BLAS)", "dense-f32: weights as a dense float32 (K,N) "
                "panel, one sgemm" + ctx.fused_note(node), run, ctx.tensors[node.inputs[1]].density)


@builds("f32-dense", "MatMul")
def matmul(node: Node, ctx: PlanContext):
    """y = A @ B with constant float B (numpy's matmul broadcasting), then a fused Relu/Clip."""
    w = ctx.const(node.inputs[1])
    if w is None or w.dtype != np.float32:
        return Decline("B is not a constant float matrix")
    out, lo, hi = ctx.activation(node)
    x_name = node.inputs[0]

    def run(values):
        y = np.asarray(np.matmul(np.asarray(values[x_name], dtype=np.float32), w))  # 1-D @ 1-D: 0-d
        if lo is not None or hi is not None:
            np.clip(y, lo, hi, out=y)
        values[out] = y

    return Step(node, "matmul_dense_f32 (numpy BLAS)", "dense-f32: constant B, numpy matmul"
                + ctx.fused_note(node), run, ctx.tensors[node.inputs[1]].density)


def conv_operands(node: Node, ctx: PlanContext):
    """(w (N, C/group, kh, kw), bias (N,) float32) of a float 2-D Conv with constant operands, or
    the Decline that says which is missing (the float conv builders of both families)."""
    w = ctx.const(node.inputs[1])
    if w is None or w.ndim != 4:
        return Decline("not a 2-D conv with a constant weight")
    b = ctx.const(node.inputs[2]) if len(node.inputs) > 2 else None
    if len(node.inputs) > 2 and node.inputs[2] and b is None:
        return Decline("the bias is computed at run time")
    n_out = w.shape[0]
    return w, np.zeros(n_out, np.float32) if b is None else np.ascontiguousarray(b, np.float32)


@builds("f32-dense", "Conv")
def conv(node: Node, ctx: PlanContext):
    """Conv by im2col (a Numba kernel) + one sgemm per group (numpy BLAS) + bias and activation.

    A 1×1, stride-1, unpadded conv needs no im2col: x[b] is already the (C, H·W) column matrix.
    """
    operands = conv_operands(node, ctx)
    if isinstance(operands, Decline):
        return operands
    w, bias = operands
    group, (n_out, c_group, kh, kw) = node.attrs["group"], w.shape
    wmat = np.ascontiguousarray(w.reshape(group, n_out // group, c_group * kh * kw))
    im2col, epilogue = ctx.kernel("im2col_dense_f32"), ctx.kernel("bias_act_dense_f32")
    out, lo, hi = ctx.activation(node)
    lo, hi = float_bounds(lo, hi)
    x_name, channels = node.inputs[0], group * c_group
    scratch = Scratch()

    def run(values):
        x = np.ascontiguousarray(conv_input(node, values[x_name], channels), dtype=np.float32)
        g = conv_geometry(node, x.shape, kh, kw)
        batch, oh, ow = x.shape[0], g["oh"], g["ow"]
        if (kh, kw, g["sh"], g["sw"], g["pt"], g["pl"]) == (1, 1, 1, 1, 0, 0) \
                and (oh, ow) == x.shape[2:]:
            cols = x.reshape(batch, group, c_group, oh * ow)  # already the column matrix
        else:
            cols = scratch.get("cols", (batch, group, c_group * kh * kw, oh, ow), np.float32)
            im2col(x, cols, kh, kw, g["sh"], g["sw"], g["dh"], g["dw"], g["pt"], g["pl"])
            cols = cols.reshape(batch, group, c_group * kh * kw, oh * ow)
        # W (G, N/G, K) @ cols (B, G, K, P) -> y (B, G, N/G, P) = NCHW
        y = np.matmul(wmat, cols).reshape(batch, n_out, oh * ow)
        epilogue(y, bias, lo, hi)
        values[out] = y.reshape(batch, n_out, oh, ow)

    return Step(node, "im2col_dense_f32 + numpy sgemm + bias_act_dense_f32",
                "dense-f32: im2col then one sgemm per group" + ctx.fused_note(node), run,
                ctx.tensors[node.inputs[1]].density)


@builds("f32-dense", "Add")
def add(node: Node, ctx: PlanContext):
    """Float Add: the add kernel (with a fused Relu/Clip) on equal shapes, numpy broadcasting else;
    integer (shape arithmetic) Adds keep the reference op."""
    kernel = ctx.kernel("add_dense_f32")
    reference = REFERENCE_OPS["Add"]
    out, lo, hi = ctx.activation(node)
    lo32, hi32 = float_bounds(lo, hi)
    a_name, b_name = node.inputs

    def run(values):
        a, b = values[a_name], values[b_name]
        if a.dtype.kind != "f" or b.dtype.kind != "f":
            try:
                values[out] = reference(a, b)
            except InputError as err:
                raise InputError(f"node {node.name!r} (Add): {err}") from None
            return
        if a.shape == b.shape:
            y = np.empty(a.shape, np.float32)
            kernel(np.ascontiguousarray(a, np.float32).reshape(-1),
                   np.ascontiguousarray(b, np.float32).reshape(-1), y.reshape(-1), lo32, hi32)
        else:
            try:
                y = np.add(a, b, dtype=np.float32)
            except ValueError:
                raise InputError(f"node {node.name!r} (Add): expected inputs that broadcast, got "
                                 f"{a.shape} and {b.shape}") from None
            if lo is not None or hi is not None:
                np.clip(y, lo, hi, out=y)
        values[out] = y

    return Step(node, "add_dense_f32", "elementwise add (numpy broadcasting when shapes differ)"
                + ctx.fused_note(node), run)


@builds("f32-dense", "Relu", "Clip")
def clamp(node: Node, ctx: PlanContext):
    """A Relu or Clip that no producer absorbed: the clamp kernel on float inputs."""
    kernel = ctx.kernel("clamp_dense_f32")
    lo, hi = (0.0, None) if node.op == "Relu" else (node.attrs["min"], node.attrs["max"])
    lo32, hi32 = float_bounds(lo, hi)
    x_name, out = node.inputs[0], node.outputs[0]

    def run(values):
        x = values[x_name]
        if x.dtype.kind != "f":
            values[out] = np.clip(x, lo, hi)
            return
        x = np.ascontiguousarray(x, np.float32)
        y = np.empty(x.shape, np.float32)
        kernel(x.reshape(-1), y.reshape(-1), lo32, hi32)
        values[out] = y

    return Step(node, "clamp_dense_f32", "activation with no producer to fuse into", run)


@builds("f32-dense", "Mul")
def mul(node: Node, ctx: PlanContext):
    """Float Mul in float32 with numpy broadcasting: one rounding per product, as onnxruntime (a
    dynamic-quantization rescale is Cast·Mul). Integer Muls (shape arithmetic) keep the reference op."""
    reference = REFERENCE_OPS["Mul"]
    a_name, b_name = node.inputs
    out = node.outputs[0]

    def run(values):
        a, b = values[a_name], values[b_name]
        try:
            if a.dtype.kind != "f" or b.dtype.kind != "f":
                values[out] = reference(a, b)
            else:
                values[out] = np.multiply(a, b, dtype=np.float32)
        except (InputError, ValueError) as err:
            raise InputError(f"node {node.name!r} (Mul): expected inputs that broadcast, got "
                             f"{a.shape} and {b.shape} ({err})") from None

    return Step(node, "numpy multiply", "elementwise multiply in float32 (numpy broadcasting)", run)


@builds("f32-dense", "Cast")
def cast(node: Node, ctx: PlanContext):
    """Cast to float32 (an int32 accumulator before its rescale): numpy's conversion, rounding to
    nearest even like onnxruntime. Casts to other types keep the reference op."""
    if node.attrs["to"] != "float32":
        return Decline(f"a cast to {node.attrs['to']}")
    x_name, out = node.inputs[0], node.outputs[0]

    def run(values):
        values[out] = np.asarray(values[x_name]).astype(np.float32)

    return Step(node, "numpy astype", "conversion to float32", run)


@builds("f32-dense", "MaxPool")
def maxpool(node: Node, ctx: PlanContext):
    """2-D float MaxPool: the max-pool kernel on float32 planes (other inputs: the reference op)."""
    if len(node.attrs["kernel_shape"]) != 2:
        return Decline("not a 2-D pool")
    kernel = ctx.kernel("maxpool_dense_f32")
    reference = reference_step(node, ctx.tensors, cast="float32").run
    x_name, out = node.inputs[0], node.outputs[0]

    def run(values):
        x = values[x_name]
        if x.ndim != 4 or x.dtype.kind != "f":
            return reference(values)
        values[out] = max_pool(node, kernel, np.ascontiguousarray(x, np.float32))

    return Step(node, "maxpool_dense_f32", "window max per plane, pads never win", run)


@builds("f32-dense", "BatchNormalization")
def batchnorm(node: Node, ctx: PlanContext):
    """A BatchNormalization no pass could fold (its producer is not a float Conv/Gemm, e.g. between
    a DequantizeLinear and a QuantizeLinear): y = x·a[c] + b[c] in float32, a and b computed once
    from constant statistics (a = γ/√(σ²+ε), b = β − μ·a, in float64)."""
    stats = [ctx.const(name) for name in node.inputs[1:]]
    if any(v is None for v in stats):
        return Decline("statistics computed at run time")
    gamma, beta, mean, var = (np.asarray(v, np.float64).reshape(-1) for v in stats)
    a64 = gamma / np.sqrt(var + float(node.attrs["epsilon"]))
    a, b = a64.astype(np.float32), (beta - mean * a64).astype(np.float32)
    x_name, out = node.inputs[0], node.outputs[0]

    def run(values):
        x = values[x_name]
        if x.ndim < 2 or x.shape[1] != a.size:
            raise InputError(f"node {node.name!r} (BatchNormalization): expected {a.size} channels "
                             f"on axis 1, got shape {x.shape}")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = np.multiply(x, a.reshape(shape), dtype=np.float32)
        y += b.reshape(shape)
        values[out] = y

    return Step(node, "numpy multiply-add", "per-channel scale and shift, precomputed", run)
