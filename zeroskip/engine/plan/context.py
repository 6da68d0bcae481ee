"""``PlanContext``: what the step builders of one plan share — the optimized model, its constants,
the fused activations, the mode, which kernels to call, and (in auto) the measured choice between
a layer's CSR and dense kernel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...errors import ZeroskipError
from ...model import Model, Node
from ...shapes import infer_shapes, layer_macs
from .. import tuning
from ..passes import find_fusions, find_pointwise_depthwise, find_residual_adds
from .launch import Launch, Serial
from .registry import Decline
from .weights import constant

SPARSE_MODES = ("sparse-f32", "sparse-i8")


@dataclass(frozen=True)
class Choice:
    """CSR or dense for one layer, and why (empty unless auto measured it)."""

    csr: bool
    why: str = ""

    def lead(self, reason: str) -> str:
        """``reason`` opened with the choice's own, when there is one."""
        return f"auto: {self.why}; {reason}" if self.why else reason

    def declined(self) -> Decline:
        """A CSR builder's answer when dense won: the choice opens the dense step's reason."""
        return Decline(f"auto: {self.why}", leads=True)


def float_bounds(lo, hi) -> tuple[np.float32, np.float32]:
    """A fused activation's clamp as the float kernels take it: float32, ±inf where open."""
    return (np.float32(-np.inf) if lo is None else np.float32(lo),
            np.float32(np.inf) if hi is None else np.float32(hi))


class PlanContext:
    """The shared state of one plan's step builders.

    model — the optimized model the steps run; mode — the Session's mode; serial — the Session runs
    one thread, so steps call the kernels' serial twins; kernel_step(node, ctx) -> Step | None —
    the planner's own step builder without the reference fallback, which auto uses to time a layer
    in its dense and its sparse mode; batch — the batch auto times a layer at when the model's is
    dynamic.
    """

    def __init__(self, model: Model, mode: str, serial: bool, kernel_step: Callable,
                 batch: int = 1):
        self.model = model
        self.mode = mode
        self.serial = serial
        self.batch = batch
        self.kernel_step = kernel_step
        self.tensors = model.graph.initializers
        self.constants = {name: constant(t, np.float32) for name, t in self.tensors.items()}
        self.fused = find_fusions(model)  # producer name -> (activation node, lo, hi)
        self.fused_into = {act.name: producer for producer, (act, _, _) in self.fused.items()}
        # QConv name -> (QAdd node, the conv's side): the QAdds that may run in a conv's epilogue
        self.residual_adds = find_residual_adds(model) if mode != "reference" else {}
        self.residual_into = {add.name: conv for conv, (add, _) in self.residual_adds.items()}
        self.residual_taken: set[str] = set()
        # 1×1 Conv name -> the depthwise Conv that reads it: pairs a float step may run as one
        self.depthwise_pairs = find_pointwise_depthwise(model, self.fused) \
            if mode in ("sparse-f32", "auto") else {}
        self.depthwise_into = {dw.name: pw for pw, dw in self.depthwise_pairs.items()}
        self.depthwise_taken: set[str] = set()
        self._table = None
        self._shapes = None
        self.launches: list[Launch] = []  # every parallel kernel the steps call (Plan.launches)
        # node name -> (the DenseProduct of its sgemm step, its reasons on sgemm and on the kernel),
        # which build_plan puts on matmul_dense_f32 when Numba owns the threads (f32_dense._offer)
        self.dense_products: dict = {}
        # values that their steps hand on as the transpose of a C-contiguous matrix (a GEMM's
        # output): auto times their readers on such an input (steps are built in graph order)
        self.transposed: set[str] = set()

    # -- what builders read --------------------------------------------------------------------
    def const(self, name: str):
        """The constant named ``name`` as the kernel steps read it, or None (a run-time value)."""
        return self.constants.get(name) if name else None

    def kernel(self, name: str):
        """The kernel a step calls: its serial twin in a one-thread plan (a ``Serial``, which notes
        its calls in a run being recorded); else a ``Launch`` that takes the parallel build only
        for calls with enough work to pay for it (launch.py)."""
        from ...kernels import KERNELS, serial_kernel

        if self.serial:
            return Serial(serial_kernel(name))
        launch = Launch(KERNELS[name], serial_kernel(name), name)
        self.launches.append(launch)
        return launch

    def activation(self, node: Node):
        """(output name, lo, hi) of a node, after the fusion of its activation if any."""
        if node.name in self.fused:
            act, lo, hi = self.fused[node.name]
            return act.outputs[0], lo, hi
        return node.outputs[0], None, None

    def fused_note(self, node: Node) -> str:
        """", activation fused" when the node's step applies its activation's clamp."""
        return ", activation fused" if node.name in self.fused else ""

    def unfuse(self, producer: str) -> None:
        """Undo the fusion of ``producer``'s activation (its step cannot apply the clamp)."""
        entry = self.fused.pop(producer, None)
        if entry is not None:
            del self.fused_into[entry[0].name]

    def take_residual(self, conv: str):
        """(QAdd node, the conv's side) of the QAdd that ``conv``'s step runs in its epilogue, or
        None: the conv's step builder takes the fusion (``find_residual_adds``) by asking."""
        entry = self.residual_adds.get(conv)
        if entry is not None:
            self.residual_taken.add(conv)
        return entry

    def unfuse_residual(self, conv: str) -> None:
        """Undo the fusion of a QAdd into ``conv``'s epilogue (its step did not take it)."""
        entry = self.residual_adds.pop(conv, None)
        if entry is not None:
            del self.residual_into[entry[0].name]

    def take_depthwise(self, pointwise: str):
        """The depthwise Conv node that ``pointwise``'s step runs with it, or None: the 1×1 conv's
        step builder takes the pair (``find_pointwise_depthwise``) by asking."""
        entry = self.depthwise_pairs.get(pointwise)
        if entry is not None:
            self.depthwise_taken.add(pointwise)
        return entry

    def unfuse_depthwise(self, pointwise: str) -> None:
        """Undo the pairing of ``pointwise`` and its depthwise conv (its step did not take it)."""
        entry = self.depthwise_pairs.pop(pointwise, None)
        if entry is not None:
            del self.depthwise_into[entry.name]

    # -- CSR or dense ----------------------------------------------------------------------------
    def choose_csr(self, density: float, shape_class: str, node: Node | None = None,
                   sparse: str = "CSR") -> Choice:
        """CSR or dense for a layer of ``shape_class`` (e.g. "conv i8") at ``density``; ``sparse``
        names the sparse mode's kernel in the reason (an int8 conv on quads: "BSR 1×4").

        A sparse mode takes CSR, a dense one the dense kernel. ``auto`` decides from timings on this
        CPU (engine/tuning.py): of ``node`` itself, both kernels on its own shapes, when its input
        shape is known (a dynamic batch at the plan's batch); else the break-even density measured
        for the shape class on a representative layer.
        """
        if self.mode != "auto":
            return Choice(self.mode in SPARSE_MODES)
        import numba

        if self._table is None:
            self._table = tuning.BreakEvenTable(threads=numba.get_num_threads())
        timed = not numba.config.DISABLE_JIT  # the kernels as Python loops: nothing worth timing
        modes = ("dense-i8", "sparse-i8") if shape_class.endswith("i8") else \
            ("dense-f32", "sparse-f32")
        batch = self.batch if node is None else tuning.timing_batch(self.batch,
                                                                    self._macs_per_item(node))
        x_info = self._input_info(node, batch) if node is not None else None
        entry = None
        if x_info is not None:
            transposed = node.inputs[0] in self.transposed
            key = tuning.layer_key(node, self.tensors, x_info, density, transposed)
            twins = None if self.serial else self._serial_step_in_mode
            measure = (lambda: tuning.measure_layer(node, self.tensors, *x_info, modes,
                                                    self._step_in_mode, transposed=transposed,
                                                    serial_step_in_mode=twins)) \
                if timed else None
            entry = self._table.get_layer(key, measure)
        if entry is not None:
            dense = entry["dense_s"]
            sparse_s = entry["sparse_s"]
            csr = sparse_s * tuning.CSR_MARGIN < dense
            faster = sparse if csr else "dense" if sparse_s >= dense else \
                f"dense ({sparse} not {tuning.CSR_MARGIN - 1:.0%} faster)"
            at = f" at batch {batch}" if batch != self.batch else ""
            return Choice(csr, f"measured on this layer{at}: dense {dense * 1e3:.3g} ms, "
                               f"{sparse} {sparse_s * 1e3:.3g} ms (density {density:.3f}): "
                               f"{faster}")
        measure_class = tuning.measure_class(shape_class, modes, self._step_in_mode) if timed \
            else None
        entry = self._table.get(shape_class, measure_class)
        if entry is None:
            edge = tuning.UNTIMED_BREAK_EVEN
            return Choice(density < edge, f"JIT disabled, nothing timed: density {density:.3f} "
                                          f"against the fixed break-even {edge}")
        edge = entry["break_even"]
        if density < edge:
            return Choice(True, f"density {density:.3f} < break-even {edge:.3f} measured for "
                                f"{shape_class!r}")
        return Choice(False, f"density {density:.3f} >= break-even {edge:.3f} measured for "
                             f"{shape_class!r}")

    def _step_in_mode(self, model: Model, node: Node, mode: str):
        """``node``'s kernel step in ``mode`` for a one-node ``model`` (None: no kernel)."""
        return self.kernel_step(node, PlanContext(model, mode, self.serial, self.kernel_step))

    def _serial_step_in_mode(self, model: Model, node: Node, mode: str):
        """``_step_in_mode`` on the kernels' serial twins (a one-thread plan's steps)."""
        return self.kernel_step(node, PlanContext(model, mode, True, self.kernel_step))

    def input_shape(self, node: Node):
        """The shape of ``node``'s first input with the plan's batch, or None if not all known."""
        info = self._input_info(node)
        return None if info is None else info[0]

    def _value_shapes(self) -> dict:
        if self._shapes is None:
            try:
                self._shapes = infer_shapes(self.model.graph)
            except ZeroskipError:
                self._shapes = {}
        return self._shapes

    def _macs_per_item(self, node: Node) -> float | None:
        """The dense multiply-accumulates of ``node`` per batch item, when its output's shape past
        the batch and its weight are known."""
        info = self._value_shapes().get(node.outputs[0])
        weight = self.tensors.get(node.inputs[1]) if len(node.inputs) > 1 else None
        if info is None or not info.shape or weight is None or \
                not all(isinstance(d, (int, np.integer)) for d in info.shape[1:]):
            return None
        effective, _ = layer_macs(node.op, int(np.prod(weight.shape)), (1,) + info.shape[1:],
                                  None)
        return effective

    def input_dtype(self, node: Node) -> str | None:
        """The dtype of ``node``'s first input, where shape inference knows it."""
        info = self._value_shapes().get(node.inputs[0])
        return None if info is None or info.dtype is None else str(info.dtype)

    def _input_info(self, node: Node, batch: int | None = None):
        """(shape with ``batch``, by default the plan's, dtype) of ``node``'s first input, or None if
        a dimension other than the batch is unknown (then auto falls back to the shape-class
        table)."""
        batch = self.batch if batch is None else batch
        info = self._value_shapes().get(node.inputs[0])
        if info is None or info.shape is None or not info.shape:
            return None
        dims = [batch if i == 0 and d is None else d for i, d in enumerate(info.shape)]
        if not all(isinstance(d, (int, np.integer)) for d in dims):
            return None
        return tuple(int(d) for d in dims), str(info.dtype)
