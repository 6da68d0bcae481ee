"""Family ``f32-dense``: float32 steps on dense weights — numpy BLAS for Gemm and MatMul, the
direct dense conv kernel for Conv (and the depthwise kernel), the elementwise and pooling kernels,
numpy for the rest."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...errors import InputError
from ...model import Node
from ...reference import OPS as REFERENCE_OPS
from .context import PlanContext, float_bounds
from .geometry import (TapStarts, conv_geometry, conv_input, max_pool, phase_shape,
                       pointwise_strides, workspace_len)
from .reference import reference_step
from .registry import Decline, builds
from .steps import Scratch, Step, aligned_copy, aligned_empty
from .weights import csr_triple


SGEMM_FROM_ROWS = 8
"""In a plan whose threads Numba owns, a Gemm or MatMul on a constant dense float weight runs
matmul_dense_f32 on fewer rows of x than this (one pass over w, split between the threads, and a
plan that may replay), numpy's sgemm from this many on. K = 1280, N = 1000 (MobileNetV2's
classifier), one thread, hot caches, µs, the kernel against sgemm: 82 / 62 at 1 row (the kernel
on two threads: 44), 135 / 225 at 2, 226 / 246 at 4, 379 / 362 at 8; K = N = 1024: 87 / 55, 121
/ 237, 190 / 258, 336 / 337. A plan whose threads BLAS owns (one of only GEMMs, ``blas_owns_
threads``) keeps sgemm throughout: the kernel would run serially there, and the plan never loads
Numba."""

KERNEL_NAME = f"matmul_dense_f32 (numpy BLAS from {SGEMM_FROM_ROWS} rows)"
"""What the dense Gemm and MatMul steps run in a plan whose threads Numba owns."""


class DenseProduct:
    """y (M,N) = x (M,K) @ w (K,N) + c, clamped, for a constant float w: numpy's sgemm, or, once
    ``use_kernel`` has given it matmul_dense_f32 (``build_plan``), that kernel on fewer than
    SGEMM_FROM_ROWS rows of a C-contiguous float32 x. The kernel's output is a fresh array on a
    cache line; its input is x as it lies (a copy made here would keep the plan from replaying).
    ``vector``: c is a vector or none, as the kernel's bias must be."""

    def __init__(self, w_kn: np.ndarray, c, lo, hi):
        self.w = aligned_copy(np.asarray(w_kn, dtype=np.float32))
        self.k_in, self.n_out = self.w.shape
        self.c, self.lo, self.hi = c, lo, hi
        self.vector = c is None or np.shape(c) in ((), (1,), (self.n_out,))
        self.kernel = self.bias = None

    def use_kernel(self, kernel) -> None:
        """Run ``kernel`` (matmul_dense_f32, as PlanContext.kernel gives it) below SGEMM_FROM_ROWS."""
        c = np.zeros(self.n_out, np.float32) if self.c is None else self.c
        self.bias = np.ascontiguousarray(np.broadcast_to(c, (self.n_out,)), np.float32)
        self.bounds = float_bounds(self.lo, self.hi)
        self.kernel = kernel

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if (self.kernel is not None and x.shape[0] < SGEMM_FROM_ROWS and x.dtype == np.float32
                and x.flags.c_contiguous):
            y = aligned_empty((x.shape[0], self.n_out), np.float32)
            self.kernel(x, self.w, self.bias, y, *self.bounds)
            return y
        y = np.asarray(x, dtype=np.float32) @ self.w
        if self.c is not None:
            y += self.c
        if self.lo is not None or self.hi is not None:
            np.clip(y, self.lo, self.hi, out=y)
        return y


def with_dense_kernel(step: Step, offer: tuple, ctx: PlanContext) -> Step:
    """``step`` (a dense Gemm or MatMul) as it runs in a plan whose threads Numba owns, given its
    ``offer`` (DenseProduct, its sgemm reason, its kernel reason) from ``_offer``: on
    matmul_dense_f32 below SGEMM_FROM_ROWS rows, replayable, its reason after what auto's choice
    put before it (``build_plan``)."""
    product, sgemm_reason, reason = offer
    product.use_kernel(ctx.kernel("matmul_dense_f32"))
    lead = step.reason[:len(step.reason) - len(sgemm_reason)]  # auto's words on its choice, if any
    return replace(step, kernel=KERNEL_NAME, replay="kernels", reason=lead + reason)


@builds("f32-dense", "Gemm")
def gemm(node: Node, ctx: PlanContext):
    """y = alpha·A·B + beta·C with constant B: prepacked once as alpha·B (K,N) contiguous
    (``DenseProduct``)."""
    w = ctx.const(node.inputs[1])
    if w is None or w.ndim != 2:
        return Decline("B is not a constant matrix")
    attrs = node.attrs
    b = (w.T if attrs["transB"] else w) * np.float32(attrs["alpha"])
    c = ctx.const(node.inputs[2]) if len(node.inputs) > 2 else None
    if len(node.inputs) > 2 and node.inputs[2] and c is None:
        return Decline("C is computed at run time")
    c = None if c is None else (c * np.float32(attrs["beta"])).astype(np.float32)
    trans_a = attrs["transA"]
    out, lo, hi = ctx.activation(node)
    product = DenseProduct(b, c, lo, hi)
    x_name = node.inputs[0]

    def run(values):
        x = values[x_name]
        x = x.T if trans_a else x
        if x.ndim != 2 or x.shape[1] != product.k_in:
            raise InputError(f"node {node.name!r} (Gemm): expected A with K = {product.k_in}, got "
                             f"shape {values[x_name].shape}")
        values[out] = product(x)

    lead = "dense-f32: weights as a dense float32 (K,N) panel, "
    step = Step(node, "gemm_dense_f32 (numpy BLAS)", lead + "one sgemm" + ctx.fused_note(node),
                run, ctx.tensors[node.inputs[1]].density)
    return _offer(step, product, ctx, lead)


@builds("f32-dense", "MatMul")
def matmul(node: Node, ctx: PlanContext):
    """y = A @ B with constant float B (numpy's matmul broadcasting), then a fused Relu/Clip; a 2-D
    B as a ``DenseProduct`` on A's leading dims flattened to rows."""
    w = ctx.const(node.inputs[1])
    if w is None or w.dtype != np.float32:
        return Decline("B is not a constant float matrix")
    out, lo, hi = ctx.activation(node)
    x_name = node.inputs[0]
    if w.ndim != 2:
        def run_numpy(values):
            y = np.asarray(np.matmul(np.asarray(values[x_name], dtype=np.float32), w))
            if lo is not None or hi is not None:
                np.clip(y, lo, hi, out=y)
            values[out] = y

        return Step(node, "matmul (numpy BLAS)", "dense-f32: constant B, numpy matmul"
                    + ctx.fused_note(node), run_numpy, ctx.tensors[node.inputs[1]].density)
    product = DenseProduct(w, None, lo, hi)
    k_in, n_out = w.shape

    def run(values):
        x = values[x_name]
        if x.ndim < 1 or x.shape[-1] != k_in:
            raise InputError(f"node {node.name!r} (MatMul): expected A of shape (..., {k_in}), got "
                             f"{x.shape}")
        values[out] = product(x.reshape(-1, k_in)).reshape(x.shape[:-1] + (n_out,))

    lead = "dense-f32: constant B, "
    step = Step(node, "matmul (numpy BLAS)", lead + "one sgemm" + ctx.fused_note(node), run,
                ctx.tensors[node.inputs[1]].density)
    return _offer(step, product, ctx, lead)


def _offer(step: Step, product: DenseProduct, ctx: PlanContext, lead: str) -> Step:
    """``step``, noted with its product, its own reason and the reason it would have on the kernel
    (``lead``, then the kernel's rule) in ``ctx.dense_products`` for build_plan (a bias that is
    not a vector keeps sgemm)."""
    if product.vector:
        ctx.dense_products[step.node.name] = (
            product, step.reason, f"{lead}one pass over it below {SGEMM_FROM_ROWS} rows of A, "
            "else one sgemm" + ctx.fused_note(step.node))
    return step


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
    """Conv by the direct dense kernel (conv2d_dense_f32: each tap a shifted run of the padded
    input, channel blocks × output positions summed in vector registers, bias and activation in
    its epilogue, no im2col), or the depthwise kernel for depthwise convs (both shared with the
    f32-csr family, ``conv_step``)."""
    operands = conv_operands(node, ctx)
    if isinstance(operands, Decline):
        return operands
    return conv_step(node, ctx, *operands, csr=False)


def conv_step(node: Node, ctx: PlanContext, w: np.ndarray, bias: np.ndarray, csr: bool,
              lead=lambda reason: reason) -> Step:
    """The float Conv step of both families. Depthwise convs take the depthwise kernel's dense
    taps; the others a direct conv: over the nonzeros (conv2d_csr_f32, ``csr``), or over every
    weight, one group with output channels in the vector lanes where that pays
    (conv2d_lanes_f32, ``_lanes_pay``), else with output positions in the lanes over the input's
    padded phases (conv2d_dense_f32). ``lead`` words the reason (the f32-csr family's choice leads
    it)."""
    group, (n_out, c_group, kh, kw) = node.attrs["group"], w.shape
    out, lo, hi = ctx.activation(node)
    lo, hi = float_bounds(lo, hi)
    x_name, channels = node.inputs[0], group * c_group
    density = ctx.tensors[node.inputs[1]].density
    scratch = Scratch()
    if c_group == 1 and group == channels and n_out % channels == 0:  # depthwise
        taps = np.ascontiguousarray(w.reshape(n_out, kh * kw), np.float32)
        kernel, name = ctx.kernel("depthwise_dense_f32"), "depthwise_dense_f32"

        def call(x, y, g, geo):  # padded planes xp and the tile loop's accumulators ws
            batch = x.shape[0]
            xp = scratch.get("xp", (batch, channels, g["hp"], g["wp"]), np.float32)
            ws = scratch.get("ws", (batch, n_out, workspace_len(kh, kw, g)), np.float32)
            kernel(taps, bias, x, xp, ws, y, *geo, lo, hi)

        reason = "depthwise conv: dense taps, one shifted axpy per tap (no im2col)"
    elif not csr and group == 1 and _lanes_pay(n_out):
        from ...kernels._fma import pack_lanes
        from ...kernels.conv_lanes import LANE_SLACK_PIXELS, lane_offsets

        wb = aligned_copy(pack_lanes(np.asarray(w, np.float32)))  # k's 32 weights on whole lines
        kernel, name = ctx.kernel("conv2d_lanes_f32"), "conv2d_lanes_f32"
        tap_offsets: dict = {}

        def call(x, y, g, geo):  # the input's padded planes, flat per image, and the slack
            key = (g["hp"], g["wp"], g["dh"], g["dw"])
            offsets = tap_offsets.get(key)
            if offsets is None:  # once per input shape
                offsets = tap_offsets[key] = lane_offsets(c_group, kh, kw, *key)
            xp = scratch.get("xp", (x.shape[0], channels * g["hp"] * g["wp"]
                                    + LANE_SLACK_PIXELS * g["sw"]), np.float32)
            kernel(wb, offsets, bias, x, xp, y, *geo, lo, hi)

        reason = ("dense-f32: direct conv, 32 output channels in the vector lanes × 7 positions "
                  "of a row (no im2col)")
    elif csr:
        indptr, indices, data = csr_triple(np.asarray(w.reshape(n_out, -1), dtype=np.float32))
        density = len(data) / max(w.size, 1)
        strides = pointwise_strides(node, kh, kw)
        if strides is not None:  # a 1×1 conv: the CSR GEMM on the images' planar (C, H·W)
            kernel, name = ctx.kernel("matmul_csr_f32"), "matmul_csr_f32"

            def call(x, y, g, geo):  # the whole batch in one call
                if strides != (1, 1):  # a strided 1×1 conv reads every sh-th row, sw-th column
                    x = np.ascontiguousarray(x[:, :, ::strides[0], ::strides[1]])
                batch = x.shape[0]
                kernel(indptr, indices, data, bias, x.reshape(batch, channels, -1),
                       y.reshape(batch, n_out, -1), lo, hi)

            reason = (f"sparse-f32: pointwise conv, the CSR GEMM ({len(data)} nonzeros) on each "
                      f"image's planar input (no padded copy)")
        else:
            kernel, name = ctx.kernel("conv2d_csr_f32"), "conv2d_csr_f32"
            starts = TapStarts(indices, c_group, kh, kw)

            def call(x, y, g, geo):  # the input's padded phases xq
                xq = scratch.get("xq", (x.shape[0], channels) + phase_shape(g, kh, kw),
                                 np.float32)
                kernel(indptr, starts(g), data, bias, x, xq, y, *geo, group, lo, hi)

            reason = f"sparse-f32: direct sparse conv over {len(data)} nonzeros (no im2col)"
    else:
        from ...kernels._fma import FMA_SLACK, pack_rows  # Numba only once a conv is planned

        packed = pack_rows(np.asarray(w, np.float32), group)
        kernel, name = ctx.kernel("conv2d_dense_f32"), "conv2d_dense_f32"
        offsets = TapStarts(np.arange(c_group * kh * kw), c_group, kh, kw)

        def call(x, y, g, geo):  # the input's padded phases, flat per image, and the slack
            if kh == kw == 1 and (g["sh"], g["sw"]) != (1, 1) and g["pt"] == g["pl"] == 0:
                # a strided 1×1 conv reads one phase of sh·sw: take it, and run at stride 1
                sub = x[:, :, ::g["sh"], ::g["sw"]]
                if sub.shape[2:] == (g["oh"], g["ow"]):  # no bottom or right pads
                    x, g = np.ascontiguousarray(sub), dict(g, sh=1, sw=1)
                    geo = (1, 1, 1, 1) + geo[4:]
            rows, wq = phase_shape(g, kh, kw)
            xq = scratch.get("xq", (x.shape[0], channels * rows * wq + FMA_SLACK), np.float32)
            kernel(packed, offsets(g), bias, x, xq, y, *geo, group, lo, hi)

        reason = "dense-f32: direct conv, channel blocks × positions in vector registers " \
                 "(no im2col)"

    def run(values):
        x = np.ascontiguousarray(conv_input(node, values[x_name], channels), dtype=np.float32)
        g = conv_geometry(node, x.shape, kh, kw)
        y = aligned_empty((x.shape[0], n_out, g["oh"], g["ow"]), np.float32)  # the next GEMM's xt
        call(x, y, g, (kh, kw, g["sh"], g["sw"], g["dh"], g["dw"], g["pt"], g["pl"]))
        values[out] = y

    return Step(node, name, lead(reason + ctx.fused_note(node)), run, density, replay="kernels")


def _lanes_pay(n_out: int) -> bool:
    """Whether a one-group dense float conv of ``n_out`` channels takes the lanes conv
    (kernels/conv_lanes.py, ``lanes_pay``: an AVX-512 CPU, and at most an eighth of its last block
    of 32 channels empty)."""
    from ...kernels.conv_lanes import lanes_pay  # Numba only once a conv is planned

    return lanes_pay(n_out)


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
                + ctx.fused_note(node), run, replay="kernels")


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

    return Step(node, "clamp_dense_f32", "activation with no producer to fuse into", run,
                replay="kernels")


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

    return Step(node, "maxpool_dense_f32", "window max per plane, pads never win", run,
                replay="kernels")


@builds("f32-dense", "GlobalAveragePool")
def global_avgpool(node: Node, ctx: PlanContext):
    """Float GlobalAveragePool over 2-D planes: each plane's mean, summed in float64 (other inputs:
    the reference op)."""
    kernel = ctx.kernel("global_avgpool_dense_f32")
    reference = reference_step(node, ctx.tensors, cast="float32").run
    x_name, out = node.inputs[0], node.outputs[0]

    def run(values):
        x = values[x_name]
        if x.ndim != 4 or x.dtype.kind != "f" or x.shape[2] * x.shape[3] == 0:
            return reference(values)
        y = np.empty(x.shape[:2] + (1, 1), np.float32)
        kernel(np.ascontiguousarray(x, np.float32), y)
        values[out] = y

    return Step(node, "global_avgpool_dense_f32", "plane means, summed in float64", run,
                replay="kernels")


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
