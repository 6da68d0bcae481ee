"""Family ``f32-csr``: float32 steps that skip zero weights — the CSR GEMM and the direct sparse
conv (no im2col); depthwise convs take the depthwise kernel's dense taps.

In ``sparse-f32`` these builders take every node they can; in ``auto`` they first ask the plan
context, which times the layer, and decline (leading the dense step's reason) when dense is faster.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...model import Node
from .context import PlanContext, float_bounds
from .f32_dense import conv_operands
from .geometry import conv_geometry, conv_input, workspace_len
from .registry import Decline, builds
from .steps import Scratch, Step
from .weights import csr_triple


@builds("f32-csr", "Gemm")
def gemm_csr(node: Node, ctx: PlanContext):
    """y (M,N) = x (M,K) @ W'ᵀ + c: the kernel computes yt = W' (N,K) csr @ xt (K,M)."""
    w = ctx.const(node.inputs[1])
    attrs = node.attrs
    if w is None or w.ndim != 2 or attrs["transA"]:
        return Decline("B is not a constant matrix, or A is transposed")
    c = ctx.const(node.inputs[2]) if len(node.inputs) > 2 else None
    if len(node.inputs) > 2 and node.inputs[2] and c is None:
        return Decline("C is computed at run time")
    w_nk = (w if attrs["transB"] else w.T) * np.float32(attrs["alpha"])
    n_out = w_nk.shape[0]
    if c is not None and np.asarray(c).shape not in ((), (1,), (n_out,)):
        return Decline("C varies by row")
    choice = ctx.choose_csr(ctx.tensors[node.inputs[1]].density, "gemm f32", node)
    if not choice.csr:
        return choice.declined()
    bias = np.zeros(n_out, np.float32) if c is None else \
        np.ascontiguousarray(np.broadcast_to(c * np.float32(attrs["beta"]), (n_out,)), np.float32)
    indptr, indices, data = csr_triple(np.asarray(w_nk, dtype=np.float32))
    kernel = ctx.kernel("matmul_csr_f32")
    out, lo, hi = ctx.activation(node)
    lo, hi = float_bounds(lo, hi)
    x_name, k_in = node.inputs[0], w_nk.shape[1]

    def run(values):
        x = values[x_name]
        if x.ndim != 2 or x.shape[1] != k_in:
            raise InputError(f"node {node.name!r} (Gemm): expected A of shape (M, {k_in}), got "
                             f"{x.shape}")
        xt = np.ascontiguousarray(x.T, dtype=np.float32)
        yt = np.empty((n_out, x.shape[0]), np.float32)
        kernel(indptr, indices, data, bias, xt, yt, lo, hi)
        values[out] = np.ascontiguousarray(yt.T)

    reason = (f"sparse-f32: weights as CSR ({len(data)} nonzeros), activations transposed to "
              f"(K,M)" + ctx.fused_note(node))
    return Step(node, "matmul_csr_f32", choice.lead(reason), run, len(data) / max(w_nk.size, 1))


@builds("f32-csr", "Conv")
def conv_csr(node: Node, ctx: PlanContext):
    """Direct sparse conv over the nonzeros (no im2col), or the depthwise kernel for depthwise convs."""
    operands = conv_operands(node, ctx)
    if isinstance(operands, Decline):
        return operands
    choice = ctx.choose_csr(ctx.tensors[node.inputs[1]].density, "conv f32", node)
    if not choice.csr:
        return choice.declined()
    w, bias = operands
    group, (n_out, c_group, kh, kw) = node.attrs["group"], w.shape
    out, lo, hi = ctx.activation(node)
    lo, hi = float_bounds(lo, hi)
    x_name, channels = node.inputs[0], group * c_group
    depthwise = c_group == 1 and group == channels and n_out % channels == 0
    if depthwise:
        taps = np.ascontiguousarray(w.reshape(n_out, kh * kw), np.float32)
        kernel, name = ctx.kernel("depthwise_dense_f32"), "depthwise_dense_f32"

        def call(x, xp, ws, y, geo):
            kernel(taps, bias, x, xp, ws, y, *geo, lo, hi)

        reason = "depthwise conv: dense taps, one shifted axpy per tap (no im2col)"
        density = ctx.tensors[node.inputs[1]].density
    else:
        indptr, indices, data = csr_triple(np.asarray(w.reshape(n_out, -1), dtype=np.float32))
        kernel, name = ctx.kernel("conv2d_csr_f32"), "conv2d_csr_f32"

        def call(x, xp, ws, y, geo):
            kernel(indptr, indices, data, bias, x, xp, ws, y, *geo, group, lo, hi)

        reason = f"sparse-f32: direct sparse conv over {len(data)} nonzeros (no im2col)"
        density = len(data) / max(w.size, 1)
    scratch = Scratch()

    def run(values):
        x = np.ascontiguousarray(conv_input(node, values[x_name], channels), dtype=np.float32)
        g = conv_geometry(node, x.shape, kh, kw)
        batch = x.shape[0]
        xp = scratch.get("xp", (batch, channels, g["hp"], g["wp"]), np.float32)
        ws = scratch.get("ws", (batch, n_out, workspace_len(depthwise, kh, kw, g)), np.float32)
        y = np.empty((batch, n_out, g["oh"], g["ow"]), np.float32)
        call(x, xp, ws, y, (kh, kw, g["sh"], g["sw"], g["dh"], g["dw"], g["pt"], g["pl"]))
        values[out] = y

    return Step(node, name, choice.lead(reason + ctx.fused_note(node)), run, density)
