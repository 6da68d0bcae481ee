"""Where the time goes: one row per step of a plan, timed over repeated runs.

``Session.profile(feeds)`` runs the plan step by step with a clock around each step and returns
``NodeTime`` rows: the node, its op, its first input's shape, the kernel, the weight density, the
median time and its share of the run, and the multiply-accumulates per second it reached, counted
two ways (XNNPACK's habit, STYLE.md):

* **effective** MACs are those of the dense layer the step replaces (``M·N·K`` for a GEMM, ``B·OH·OW·
  N·(C/g)·kh·kw`` for a conv), so dense, sparse and int8 kernels stand on one axis;
* **useful** MACs are the ones with a nonzero weight (effective × weight density): what a sparse
  kernel really does.

The difference between the run's wall time and the sum of its steps is the executor's own cost
(feeding values, freeing them): ``overhead_ms``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from ..shapes import MAC_OPS, layer_macs
from .plan import Plan, Step


@dataclass
class NodeTime:
    node: str
    op: str
    input_shape: tuple
    kernel: str
    density: float | None
    ms: float      # the median over the repeats
    share: float   # of the sum of all steps' medians
    effective_gmacs: float | None  # effective MACs per second, in billions
    useful_gmacs: float | None


@dataclass
class Profile:
    rows: list[NodeTime]
    run_ms: float       # median wall time of a whole run
    overhead_ms: float  # run_ms − the sum of the steps' medians: the executor's own cost (medians
    #                     of different runs, so on a noisy machine it can come out below zero)
    repeats: int


def profile_plan(plan: Plan, values: dict, execute_step, repeats: int) -> Profile:
    """Time ``repeats`` runs of ``plan`` step by step. ``values`` holds the constants and the checked
    inputs; ``execute_step(i, step, values)`` runs step i and frees what its readers are done with
    (the Session's own loop body), so the profile measures what ``run`` does."""
    steps = plan.steps
    times = [[] for _ in steps]
    wall = []
    shapes = {}
    for _ in range(repeats):
        run_values = dict(values)
        start = time.perf_counter()
        for i, step in enumerate(steps):
            first = i not in shapes
            if first:  # the input's shape now (the step may free it), the output's after
                known, x = set(run_values), run_values.get(step.node.inputs[0]) \
                    if step.node.inputs else None
            t0 = time.perf_counter()
            execute_step(i, step, run_values)
            times[i].append(time.perf_counter() - t0)
            if first:
                shapes[i] = (() if x is None else tuple(np.shape(x)),
                             _written_shape(run_values, known))
        wall.append(time.perf_counter() - start)
    medians = [statistics.median(t) for t in times]
    run_s = statistics.median(wall)
    total = sum(medians)
    rows = [_row(step, medians[i], total, shapes[i], plan.constants)
            for i, step in enumerate(steps)]
    return Profile(rows, run_s * 1e3, (run_s - sum(medians)) * 1e3, repeats)


def _written_shape(values: dict, known: set) -> tuple:
    """The shape of the first value a step added: its output (a producer with a fused activation
    writes the activation's output name, not its own)."""
    for name, value in values.items():
        if name not in known:
            return tuple(np.shape(value))
    return ()


def _row(step: Step, seconds: float, total_s: float, shapes, constants: dict) -> NodeTime:
    node = step.node
    in_shape, out_shape = shapes
    weight = constants.get(node.inputs[1]) if len(node.inputs) > 1 else None
    effective, useful = (None, None) if weight is None or step.kernel == "fused" else \
        layer_macs(node.op, int(np.size(weight)), out_shape, step.density)
    rate = (lambda macs: None if macs is None or seconds <= 0 else macs / seconds / 1e9)
    return NodeTime(node.name, node.op, in_shape, step.kernel, step.density, seconds * 1e3,
                    seconds / total_s if total_s > 0 else 0.0, rate(effective), rate(useful))


__all__ = ["MAC_OPS", "NodeTime", "Profile", "layer_macs", "profile_plan"]
