"""Family ``onnx-integer``: ONNX's integer ops — DynamicQuantizeLinear, MatMulInteger and
ConvInteger (onnxruntime's dynamic quantization, and static integer graphs). They keep ONNX's
meaning, int32 out, in every mode but reference (they have no float form); the graph's own Cast·Mul
rescales. They run on the int8 accumulators of int8.py, with ``w' = w − w_zp`` prepacked and the
input zero point folded per run (docs/quantization.md §6); the weight format follows the mode."""

from __future__ import annotations

import numpy as np

from ... import quantmath
from ...errors import InputError, UnsupportedModelError
from ...model import Node
from ...reference.ops.quantized import dynamic_quantize_params
from .context import Choice, PlanContext
from .int8 import check_q8, conv_accumulator, gemm_accumulator
from .reference import reference_step
from .registry import builds
from .steps import Scratch, Step
from .weights import nonzero_share


@builds("onnx-integer", "DynamicQuantizeLinear")
def dynamic_quantize(node: Node, ctx: PlanContext):
    kernel = ctx.kernel("quantize_dense_f32")
    x_name = node.inputs[0]
    y_name, scale_name, zp_name = node.outputs

    def run(values):
        x = np.ascontiguousarray(values[x_name], dtype=np.float32)
        try:
            scale, zp = dynamic_quantize_params(x)
        except InputError as err:
            raise InputError(f"node {node.name!r} (DynamicQuantizeLinear): {err}") from None
        y = np.empty(x.shape, np.uint8)
        kernel(x.reshape(-1), scale, zp, y.reshape(-1))
        values[y_name] = y
        values[scale_name] = np.array(scale, np.float32)
        values[zp_name] = np.array(zp, np.uint8)

    return Step(node, "quantize_dense_f32", "dynamic quantization: uint8 scale and zero point from "
                "this input's min and max, then round half to even", run)


class IntegerWeight:
    """The weight of a MatMulInteger/ConvInteger, centred once, when its zero point is a constant
    and the int32 accumulator cannot overflow for any 8-bit input and input zero point.

    * ``w8 = w − w_zp`` (per tensor or per output channel) when every value fits int8;
      ``offset`` is None;
    * otherwise (a uint8 weight whose zero point is far from 128) ``w8 = w − 128``, which always
      fits, and ``offset[n] = 128 − w_zp[n]``: Σ_k (x − x_zp)(w − w_zp) = Σ_k (x − x_zp)·w8 +
      offset[n]·Σ_k (x − x_zp), the last sum taken per output row at run time.

    w8 has the output channels first; ``rowsum[n] = Σ_k w8[n,k]`` (int64). When the weight cannot be
    taken, ``w8`` is None and ``why`` says why.
    """

    def __init__(self, node: Node, ctx: PlanContext, axis: int):
        self.w8 = self.rowsum = self.offset = None
        self.why = self._centre(node, ctx, axis)

    def _centre(self, node: Node, ctx: PlanContext, axis: int) -> str:
        zp_name = node.inputs[3] if len(node.inputs) > 3 else ""
        w_tensor = ctx.tensors.get(node.inputs[1])
        zp_tensor = ctx.tensors.get(zp_name) if zp_name else None
        if w_tensor is None or (zp_name and zp_tensor is None):
            return "the weight or its zero point is not a constant"
        w = w_tensor.to_numpy().astype(np.int64)
        if w.ndim < 2:
            return f"a {w.ndim}-D weight"
        zp = np.zeros((), np.int64) if zp_tensor is None else zp_tensor.to_numpy().astype(np.int64)
        if zp.size != 1 and zp.shape != (w.shape[axis],):
            return f"zero point of shape {list(zp.shape)}"
        w = np.moveaxis(w, axis, 0)
        zp_n = np.broadcast_to(zp.reshape(-1), (w.shape[0],))
        centered = w - zp_n.reshape((-1,) + (1,) * (w.ndim - 1))
        offset = None
        if centered.size and (centered.min() < -128 or centered.max() > 127):
            base = 128 if w_tensor.dtype == np.uint8 else 0
            centered, offset = w - base, base - zp_n.astype(np.int64)
        w8 = np.ascontiguousarray(centered.astype(np.int8))
        rowsum = w8.reshape(w8.shape[0], -1).astype(np.int64).sum(axis=1)
        k = w8[0].size if len(w8) else 0
        try:  # any 8-bit x, w8 in [−128, 127]; the folded bias −x_zp·rowsum with |x_zp| ≤ 255
            quantmath.check_accumulator_range(k, quantmath.MAX_ABS_PRODUCT[np.dtype(np.uint8)],
                                              255 * rowsum)
        except UnsupportedModelError as err:
            return str(err)
        self.w8, self.rowsum, self.offset = w8, rowsum, offset
        return ""


def input_zero_point(node: Node, values: dict) -> int | None:
    """The run's scalar input zero point (0 if absent); None for a per-row one (reference op)."""
    name = node.inputs[2] if len(node.inputs) > 2 else ""
    if not name:
        return 0
    zp = np.asarray(values[name])
    if zp.size != 1 or zp.dtype.kind not in "iu":
        return None
    return int(zp.reshape(-1)[0])


def integer_step(node: Node, ctx: PlanContext, weight: IntegerWeight, build) -> Step:
    """The step of a MatMulInteger/ConvInteger: ``build(fallback) -> (name, reason, run, choice)``
    when the weight converts, else the reference op with the reason. ``fallback(values)`` runs the
    reference op (int32 out) for inputs the kernels do not take."""
    reference = reference_step(node, ctx.tensors,
                               f"reference op (exact integer arithmetic): {weight.why}")
    if weight.w8 is None:
        return reference

    def fallback(values):
        reference.run(values)
        values[node.outputs[0]] = values[node.outputs[0]].astype(np.int32)

    name, reason, run, choice = build(fallback)
    reason = choice.lead(reason)
    if weight.offset is not None:
        reason += "; uint8 weight as (w − 128) + (128 − w_zp)·Σ(x − x_zp) per output row"
    return Step(node, name, reason + "; int32 out, the input zero point folded per run", run,
                nonzero_share(weight.w8))


@builds("onnx-integer", "MatMulInteger")
def matmul_integer(node: Node, ctx: PlanContext):
    weight = IntegerWeight(node, ctx, axis=1)

    def build(fallback):
        w8, rowsum, offset = weight.w8, weight.rowsum, weight.offset
        w2 = np.ascontiguousarray(w8.reshape(w8.shape[0], -1))  # (N, K): B transposed
        choice = Choice(False) if offset is not None else \
            ctx.choose_csr(nonzero_share(w8), "gemm i8")
        gemm = gemm_accumulator(w2, choice.csr, ctx)
        scratch = Scratch()

        def run(values):
            a = values[node.inputs[0]]
            a_zp = input_zero_point(node, values)
            if a_zp is None or np.ndim(a) < 2 or a.shape[-1] != gemm.k_in or w8.ndim != 2:
                return fallback(values)
            check_q8(node, a)
            x = a.reshape(-1, gemm.k_in)
            acc = scratch.get("acc", (gemm.n_out, x.shape[0]), np.int32)
            gemm(x, (-a_zp * rowsum).astype(np.int32), acc)
            y = acc.T
            if offset is not None:  # + offset[n]·Σ_k (x[m,k] − x_zp), exact in int64
                row_sums = x.sum(axis=1, dtype=np.int64) - gemm.k_in * a_zp
                y = (y + row_sums[:, None] * offset[None, :]).astype(np.int32)
            values[node.outputs[0]] = y.reshape(a.shape[:-1] + (gemm.n_out,)).copy()

        return gemm.name, gemm.reason, run, choice

    return integer_step(node, ctx, weight, build)


@builds("onnx-integer", "ConvInteger")
def conv_integer(node: Node, ctx: PlanContext):
    weight = IntegerWeight(node, ctx, axis=0)

    def build(fallback):
        w8, rowsum, offset = weight.w8, weight.rowsum, weight.offset
        if w8.ndim != 4:
            return "reference", "reference op (exact integer arithmetic): not a 2-D conv", \
                fallback, Choice(False)
        # the offset form needs Σ (x − x_zp) per window: the im2row rows hold it
        conv, choice = conv_accumulator(node, w8, ctx,
                                        lambda sparse: ctx.choose_csr(nonzero_share(w8),
                                                                      "conv i8", sparse=sparse),
                                        im2row_only=offset is not None)

        def run(values):
            x_zp = input_zero_point(node, values)
            if x_zp is None:
                return fallback(values)
            x = conv.check_input(values[node.inputs[0]])
            acc = conv(x, x_zp, (-x_zp * rowsum).astype(np.int32))
            if offset is None:
                values[node.outputs[0]] = acc.copy()
                return
            window_sums = np.repeat(conv.window_sums(acc.shape, x.dtype, x_zp),
                                    conv.n_out // conv.group, axis=1)  # (B, N, OH, OW)
            y = acc + offset[None, :, None, None] * window_sums
            values[node.outputs[0]] = y.astype(np.int32)

        return conv.name, conv.reason, run, choice

    return integer_step(node, ctx, weight, build)
