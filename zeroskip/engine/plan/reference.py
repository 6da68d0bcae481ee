"""Steps that run the float64 reference op: every node in ``reference`` mode, and in the other
modes each node that no kernel family took."""

from __future__ import annotations

import numpy as np

from ...errors import InputError, ZeroskipError
from ...model import Node
from ...ops import QUANTIZED_OPS
from ...reference import OPS as REFERENCE_OPS
from .steps import Step
from .weights import weight_density


VIEW_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity")
"""Ops whose reference result is a view of their first input where its layout allows (a recorded
run checks that it was: engine/replay.py), given constant shape or axes operands."""


def reference_step(node: Node, tensors: dict, reason: str = "reference op (float64 NumPy)",
                   cast: str | None = None) -> Step:
    """A step that runs the reference op; ``cast`` rounds float outputs to that dtype (and keeps a
    quantized op's 8-bit output as that type, which is what the kernels downstream take)."""
    function = REFERENCE_OPS[node.op]
    inputs, outputs, attrs = list(node.inputs), list(node.outputs), dict(node.attrs)
    q_dtype = attrs.get("y_dtype") if node.op in QUANTIZED_OPS else None

    def run(values):
        args = [values[name] if name else None for name in inputs]
        try:
            result = function(*args, **attrs)
        except InputError as err:
            raise InputError(f"node {node.name!r} ({node.op}): {err}") from None
        except (ValueError, IndexError, TypeError) as err:
            if isinstance(err, ZeroskipError):
                raise
            raise InputError(f"node {node.name!r} ({node.op}) cannot run on these inputs: "
                             f"{err}") from None
        results = result if isinstance(result, tuple) else (result,)
        for name, value in zip(outputs, results):
            value = np.asarray(value)
            if cast is not None and value.dtype.kind == "f":
                value = value.astype(cast, copy=False)  # a view op's result stays a view
            elif cast is not None and q_dtype is not None:
                value = value.astype(q_dtype, copy=False)
            values[name] = value

    view = node.op in VIEW_OPS and all(not name or name in tensors for name in inputs[1:])
    return Step(node, "reference", reason, run, weight_density(node, tensors),
                replay="view" if view else "")


def fallback_step(node: Node, ctx, why: str = "") -> Step:
    """The reference op for a node no kernel family took (``why``: the first family's reason, if
    one declined), with a float32 result; its fused activation, if any, runs on its own again."""
    ctx.unfuse(node.name)  # the reference op has no epilogue
    reason = "no kernel for this op" if not why else f"no kernel for this node ({why})"
    return reference_step(node, ctx.tensors, f"{reason}: reference op, float32 result",
                          cast="float32")
