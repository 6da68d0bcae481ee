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

Where the session's runs at the feeds' shapes replay their recorded kernel calls (engine/
replay.py), the profile times those calls, one by one inside whole replayed runs, and gives each
step the sum of its calls (``profile_replay``): what ``run`` does, layer after layer, each kernel
finding its input where the one before left it. Steps run one by one instead allocate their
outputs afresh and leave out what one layer costs the next; on the pruned int8 MobileNetV2 at two
threads they had put a quad-sparse expand conv at 0.33 ms where inside the run it took 0.90.
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
    replayed: bool = False  # timed inside replayed runs (profile_replay), not step by step


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
            if i in shapes:
                t0 = time.perf_counter()
                execute_step(i, step, run_values)
                times[i].append(time.perf_counter() - t0)
            else:
                times[i].append(_first_run(i, step, run_values, execute_step, shapes))
        wall.append(time.perf_counter() - start)
    return _profile(plan, times, wall, shapes, repeats, replayed=False)


def profile_replay(replay, checked: dict, values: dict, execute_step, repeats: int) -> Profile:
    """Time ``repeats`` runs of ``replay`` (a Replay: its plan's recorded kernel calls) on the
    ``checked`` feeds, each call on its own clock, and give each step the sum of its calls (a
    view step, which makes none, 0). One run of the plan step by step first (``values``, as
    profile_plan's) reads each step's shapes, for its GMAC/s; it is not timed."""
    plan = replay.plan
    shapes = {}
    run_values = dict(values)
    for i, step in enumerate(plan.steps):
        _first_run(i, step, run_values, execute_step, shapes)
    bounds = np.cumsum([0] + list(replay.per_step))
    clock = [0.0] * len(replay.calls)
    times = [[] for _ in plan.steps]
    wall = []
    for _ in range(repeats):
        start = time.perf_counter()
        replay.run(checked, clock)
        wall.append(time.perf_counter() - start)
        for i in range(len(plan.steps)):
            times[i].append(sum(clock[bounds[i]:bounds[i + 1]]))
    return _profile(plan, times, wall, shapes, repeats, replayed=True)


def _first_run(i: int, step: Step, run_values: dict, execute_step, shapes: dict) -> float:
    """Run step i once, noting in shapes[i] its input's shape (read before: the step may free it)
    and its output's (after); its seconds."""
    known, x = set(run_values), run_values.get(step.node.inputs[0]) if step.node.inputs else None
    t0 = time.perf_counter()
    execute_step(i, step, run_values)
    seconds = time.perf_counter() - t0
    shapes[i] = (() if x is None else tuple(np.shape(x)), _written_shape(run_values, known))
    return seconds


def _profile(plan: Plan, times, wall, shapes, repeats: int, replayed: bool) -> Profile:
    medians = [statistics.median(t) for t in times]
    run_s = statistics.median(wall)
    total = sum(medians)
    rows = [_row(step, medians[i], total, shapes[i], plan.constants)
            for i, step in enumerate(plan.steps)]
    return Profile(rows, run_s * 1e3, (run_s - total) * 1e3, repeats, replayed)


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


__all__ = ["MAC_OPS", "NodeTime", "Profile", "layer_macs", "profile_plan", "profile_replay"]
