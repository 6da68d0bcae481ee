"""The planner: one step per node, chosen once per Session, with everything precomputable done once.

A ``Plan`` is a list of ``Step``s in graph order. Each step reads its inputs from a dict of values,
runs one kernel (or a NumPy routine, or the reference op) and stores its outputs. Planning does, once:
the graph passes, the kernel choice for each node and the reason for it (``Session.explain``), weight
prepacking (CSR with the narrowest indices, transposes, dequantized copies) and validation of every
array that a Numba kernel will index.

The rooms, in reading order:

=================  ===============================================================================
build.py           ``build_plan``: passes, then each node's step from the first family that takes it
registry.py        modes, the families each mode tries in order, the ``(op, family) -> builder`` table
steps.py           ``Step``, ``Plan``, ``Scratch``
context.py         ``PlanContext``: what builders share (constants, fusions, kernels, auto's choice)
weights.py         weights as steps read them: constants, CSR triples, densities
geometry.py        conv and pool geometry of a node at an input shape
reference.py       the reference op as a step (reference mode, and the fallback)
f32_dense.py       family ``f32-dense``: numpy BLAS and the dense float kernels
f32_csr.py         family ``f32-csr``: the sparse float kernels
int8.py            family ``int8``: QGemm and QConv, and the int8 accumulators
quant_pool_add.py  family ``int8``: QuantizeLinear, DequantizeLinear, the pools, QAdd
onnx_integer.py    family ``onnx-integer``: DynamicQuantizeLinear, MatMulInteger, ConvInteger
=================  ===============================================================================

Modes (DESIGN.md): ``reference`` runs ``zeroskip.reference``; ``dense-f32`` runs float32 with numpy
BLAS for Conv/Gemm/MatMul; ``sparse-f32`` runs the CSR kernels for weights; ``dense-i8``/``sparse-i8``
run a quantized model's integer kernels; ``auto`` picks per node from timings on this CPU
(engine/tuning.py).
"""

from .build import build_plan, build_step, kernel_step, step_in_mode
from .registry import FAMILIES, FLOAT_MODES, INT8_MODES, MODES, check_mode, is_quantized
from .steps import Plan, Scratch, Step

__all__ = ["FAMILIES", "FLOAT_MODES", "INT8_MODES", "MODES", "Plan", "Scratch", "Step",
           "build_plan", "build_step", "check_mode", "is_quantized", "kernel_step", "step_in_mode"]
