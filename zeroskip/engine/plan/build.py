"""``build_plan``: the graph passes, then one step per node — the first family of the mode whose
builder takes the node (registry.py), else the reference op."""

from __future__ import annotations

from dataclasses import replace

from ...model import Graph, Model, Node
from ...ops import OPS, normalize_attrs
from ..passes import dequantize_model, optimize
# the step-builder modules register themselves in registry.BUILDERS when imported
from . import f32_csr, f32_dense, int8, onnx_integer, quant_pool_add  # noqa: F401
from .context import PlanContext
from .reference import fallback_step, reference_step
from .registry import BUILDERS, FAMILIES, INT8_MODES, Decline, check_mode, is_quantized
from .steps import Plan, Step
from .weights import reference_constant


def build_plan(model: Model, mode: str, serial: bool = False, batch: int = 1) -> Plan:
    """The steps that run ``model`` in ``mode`` (the model is not modified); ``serial``: the
    session runs on one thread, so the steps call the kernels' serial twins
    (kernels.serial_kernel); ``batch``: the batch auto times layers at when it is dynamic."""
    check_mode(model, mode)
    model = with_default_attrs(model)
    if mode == "reference":
        tensors = model.graph.initializers
        constants = {name: reference_constant(t) for name, t in tensors.items()}
        steps = [reference_step(node, tensors) for node in model.graph.nodes]
        return Plan(mode, steps, constants)
    integer = mode in INT8_MODES or (mode == "auto" and is_quantized(model))
    model = optimize(model) if integer else optimize(dequantize_model(model))
    ctx = PlanContext(model, mode, serial, kernel_step, batch)
    steps = []
    for node in model.graph.nodes:
        if node.name in ctx.fused_into:
            producer = ctx.fused_into[node.name]
            steps.append(Step(node, "fused", f"clamp applied in {producer!r}'s epilogue",
                              lambda values: None, replay="kernels"))
        elif node.name in ctx.residual_into:
            steps.append(Step(node, "fused", f"added in {ctx.residual_into[node.name]!r}'s "
                                             f"epilogue, as its output is requantized",
                              lambda values: None, replay="kernels"))
        elif node.name in ctx.depthwise_into:
            steps.append(Step(node, "fused", f"run in {ctx.depthwise_into[node.name]!r}'s step, "
                                             f"channel by channel as the 1×1 conv computes them",
                              lambda values: None, replay="kernels"))
        else:
            steps.append(build_step(node, ctx))
            if node.name in ctx.residual_adds and node.name not in ctx.residual_taken:
                ctx.unfuse_residual(node.name)  # its step has no epilogue to add in: the QAdd runs
            if node.name in ctx.depthwise_pairs and node.name not in ctx.depthwise_taken:
                ctx.unfuse_depthwise(node.name)  # its step runs alone: so does the depthwise
    plan = Plan(mode, steps, ctx.constants, serial, ctx.launches)
    if plan.blas_owns_threads:
        for launch in plan.launches:  # BLAS has the threads: the Numba steps run serially
            launch.force_serial()
    elif ctx.dense_products:  # Numba has the threads: small GEMMs on its kernel
        steps = [f32_dense.with_dense_kernel(step, ctx.dense_products[step.node.name], ctx)
                 if step.node.name in ctx.dense_products else step for step in steps]
        plan = Plan(mode, steps, ctx.constants, serial, ctx.launches)
    return plan


def with_default_attrs(model: Model) -> Model:
    """``model`` with every node's attributes completed by its op's defaults: a file or a caller
    may leave an optional one out, and the step builders read every attribute of their op."""
    graph = model.graph
    if all(len(node.attrs) == len(OPS[node.op].attrs) for node in graph.nodes):
        return model  # (attribute names were checked against the op's by Graph.check)
    nodes = [replace(node, attrs=normalize_attrs(node.op, node.attrs)) for node in graph.nodes]
    return Model(Graph(nodes, graph.inputs, graph.outputs, graph.initializers), model.metadata)


def kernel_step(node: Node, ctx: PlanContext) -> Step | None:
    """The step of the first family of ``ctx.mode`` that takes ``node``, or None if none does.

    A family that declines with ``leads`` (auto chose dense over CSR) opens the reason of the
    step that runs instead."""
    step, _ = _first_taker(node, ctx)
    return step


def step_in_mode(model: Model, node: Node, mode: str, serial: bool = False) -> Step | None:
    """``node``'s kernel step in ``mode`` for a one-node ``model`` (None: no kernel): what ``auto``
    times to choose between a dense and a CSR kernel, and what ``zeroskip sweep`` times."""
    return kernel_step(node, PlanContext(model, mode, serial, kernel_step))


def build_step(node: Node, ctx: PlanContext) -> Step:
    """``kernel_step``, or the float64 reference op when no family takes the node."""
    step, declines = _first_taker(node, ctx)
    if step is None:
        return fallback_step(node, ctx, declines[0].why if declines else "")
    return step


def _first_taker(node: Node, ctx: PlanContext) -> tuple[Step | None, list[Decline]]:
    declines = []
    for family in FAMILIES[ctx.mode]:
        builder = BUILDERS.get((node.op, family))
        if builder is None:
            continue
        result = builder(node, ctx)
        if isinstance(result, Decline):
            declines.append(result)
            continue
        leads = [d.why for d in declines if d.leads]
        if leads:
            result.reason = "; ".join(leads + [result.reason])
        return result, declines
    return None, declines


__all__ = ["build_plan", "build_step", "kernel_step"]
