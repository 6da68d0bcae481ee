"""Which builder makes a node's step: one ``(op, family) -> builder`` table and, per mode, the
families to try in order of preference.

A *family* is a kind of kernel: ``int8`` (the integer kernels of QGemm, QConv, the pools, QAdd and the
graph-edge quantizers), ``onnx-integer`` (ONNX's MatMulInteger, ConvInteger and
DynamicQuantizeLinear, which have no float form), ``f32-csr`` (the sparse float kernels) and
``f32-dense`` (numpy BLAS and the dense float kernels). Each step-builder module registers its
builders with ``@builds(family, op, ...)``. A builder returns a ``Step``, or a ``Decline`` that says
why this family does not fit the node; the planner then tries the next family of the mode, and in
the end the float64 reference op (``reference.fallback_step``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ...errors import UnsupportedModelError, ZeroskipError
from ...model import Model
from ...ops import QUANTIZED_OPS

MODES = ("reference", "dense-f32", "sparse-f32", "dense-i8", "sparse-i8", "auto")
FLOAT_MODES = ("dense-f32", "sparse-f32")
INT8_MODES = ("dense-i8", "sparse-i8")

FAMILIES = {
    "reference": (),  # every node runs its reference op (build.py): no family is tried
    "dense-f32": ("int8", "onnx-integer", "f32-dense"),
    "sparse-f32": ("int8", "onnx-integer", "f32-csr", "f32-dense"),
    "dense-i8": ("int8", "onnx-integer", "f32-dense"),
    "sparse-i8": ("int8", "onnx-integer", "f32-dense"),
    "auto": ("int8", "onnx-integer", "f32-csr", "f32-dense"),
}
"""Mode -> step families in order of preference. The int8 ops reach an f32 mode only when
``dequantize_model`` kept them integer (they are joined to an ONNX integer op); the integer families
pick their weight format from the mode (CSR in sparse-*, measured in auto). In auto, the ``f32-csr``
builders measure and decline when the dense kernel is faster."""


@dataclass(frozen=True)
class Decline:
    """A builder's answer when its family does not fit the node.

    ``why`` — the reason; ``leads`` — whether ``why`` is a choice the step that does run should
    open its reason with (auto measured CSR against dense and dense won).
    """

    why: str
    leads: bool = False


Builder = Callable  # (node, ctx: PlanContext) -> Step | Decline

BUILDERS: dict[tuple[str, str], Builder] = {}
"""(op, family) -> the builder of that op's step in that family."""


def builds(family: str, *ops: str):
    """Register the decorated builder for ``ops`` in ``family``."""
    if family not in {f for families in FAMILIES.values() for f in families}:
        raise ValueError(f"unknown step family {family!r}")

    def register(builder: Builder) -> Builder:
        for op in ops:
            if (op, family) in BUILDERS:
                raise RuntimeError(f"two builders for {op} in family {family!r}")
            BUILDERS[(op, family)] = builder
        return builder

    return register


def is_quantized(model: Model) -> bool:
    return any(node.op in QUANTIZED_OPS for node in model.graph.nodes)


def check_mode(model: Model, mode: str) -> None:
    if mode not in MODES:
        raise ZeroskipError(f"mode {mode!r} is not available; choose one of: {', '.join(MODES)}")
    if mode in INT8_MODES and not is_quantized(model):
        raise UnsupportedModelError(
            f"mode {mode!r} runs int8 kernels, but this model is float (it has no quantized ops); "
            f"quantize it first (e.g. with onnxruntime's quantization tool, then import the int8 ONNX "
            f"model), or use mode 'dense-f32', 'sparse-f32' or 'auto'")
