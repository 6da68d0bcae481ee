"""The planner: one step per node, chosen once per Session, with everything precomputable done once.

A ``Plan`` is a list of ``Step``s in graph order. Each step reads its inputs from a dict of values,
runs one kernel (or a NumPy routine, or the reference op) and stores its outputs. Planning does, once:
the graph passes, the kernel choice for each node and the reason for it (``Session.explain``), weight
prepacking (CSR with the narrowest indices, transposes, dequantized copies) and validation of every
array that a Numba kernel will index.

Modes (DESIGN.md): ``reference`` runs ``zeroskip.reference``; ``dense-f32`` runs float32 with numpy
BLAS for Conv/Gemm/MatMul; ``sparse-f32`` runs the CSR kernels for weights; ``dense-i8``/``sparse-i8``
run a quantized model's integer kernels; ``auto`` picks per node.
"""

from __future__ import annotations

import contextvars
import functools
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import InputError, UnsupportedModelError, ZeroskipError
from ..model import Model, Node
from ..ops import QUANTIZED_OPS
from ..reference import OPS as REFERENCE_OPS

MODES = ("reference", "dense-f32", "sparse-f32", "dense-i8", "sparse-i8", "auto")
FLOAT_MODES = ("dense-f32", "sparse-f32")
INT8_MODES = ("dense-i8", "sparse-i8")


@dataclass
class Step:
    """One node's work: ``run(values)`` reads ``node.inputs`` and writes ``node.outputs``."""

    node: Node
    kernel: str
    reason: str
    run: Callable[[dict], None]
    density: float | None = None


@dataclass
class Plan:
    mode: str
    steps: list[Step] = field(default_factory=list)
    constants: dict = field(default_factory=dict)
    serial: bool = False

    @property
    def uses_numba(self) -> bool:
        """Whether a step runs a Numba kernel (a numpy-only plan never needs Numba at all)."""
        kernels = sys.modules.get("zeroskip.kernels")
        if kernels is None:
            return False
        names = set(kernels.KERNELS)
        return any(part in names for step in self.steps
                   for part in step.kernel.replace("+", " ").split())

    def explain(self) -> list[dict]:
        return [dict(node=s.node.name, op=s.node.op,
                     density=None if s.density is None else round(s.density, 4),
                     kernel=s.kernel, reason=s.reason) for s in self.steps]


class Scratch:
    """Work arrays a step reuses from run to run: one set per thread and per shape, never an output.

    Steps allocate their outputs fresh (a caller may keep them), but padded planes, accumulators and
    column matrices come from here, so a Session that runs the same batch shape again allocates
    nothing for them. Per thread, so concurrent ``run`` calls (a threaded Dask scheduler) never share.
    """

    def __init__(self):
        self._local = threading.local()

    def get(self, tag: str, shape, dtype) -> np.ndarray:
        arrays = getattr(self._local, "arrays", None)
        if arrays is None:
            arrays = self._local.arrays = {}
        key = (tag, tuple(int(d) for d in shape), np.dtype(dtype).str)
        array = arrays.get(key)
        if array is None:
            array = arrays[key] = np.empty(key[1], dtype)
        return array


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


def reference_step(node: Node, constants: dict, reason: str = "reference op (float64 NumPy)",
                   cast: str | None = None) -> Step:
    """A step that runs the float64 reference op; ``cast`` rounds float outputs to that dtype."""
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
                value = value.astype(cast)
            elif cast is not None and q_dtype is not None:
                value = value.astype(q_dtype)  # the kernels take 8-bit activations as such
            values[name] = value

    return Step(node, "reference", reason, run, _density(node, constants))


_WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "QConv", "QGemm")


def _density(node: Node, constants: dict) -> float | None:
    """The density of a node's weight (its second input, when that is an initializer)."""
    if node.op not in _WEIGHTED_OPS or len(node.inputs) < 2:
        return None
    tensor = constants.get(node.inputs[1])
    return None if tensor is None else tensor.density


# -- building a plan ------------------------------------------------------------------------------
class _Context:
    """What the step builders share: the (optimized) model, its constants, fusions, the mode."""

    def __init__(self, model: Model, mode: str, float_dtype):
        self.model = model
        self.mode = mode
        self.float_dtype = np.dtype(float_dtype)
        self.tensors = model.graph.initializers
        self.constants = {name: _constant(t, self.float_dtype) for name, t in self.tensors.items()}
        self.fused = _find_fusions(model)  # producer name -> (activation node, lo, hi)
        self.fused_into = {act.name: producer for producer, (act, _, _) in self.fused.items()}
        self.integer = False
        self._table = None
        self._shapes = None
        self.last_auto_reason = ""

    def unfuse(self, producer: str) -> None:
        """Undo the fusion of ``producer``'s activation (its step cannot apply the clamp)."""
        entry = self.fused.pop(producer, None)
        if entry is not None:
            del self.fused_into[entry[0].name]

    def auto_choice(self, shape_class: str, density: float, node: Node | None = None
                    ) -> tuple[bool, str]:
        """(use CSR?, why) for a layer of ``shape_class`` at ``density``, from timings on this CPU
        (engine/tuning.py): of ``node`` itself, both kernels on its own shapes, when its input
        shape is known (batch 1 for a dynamic batch); else the break-even density measured for
        the shape class on a representative layer."""
        import numba

        from .tuning import BreakEvenTable

        if self._table is None:
            self._table = BreakEvenTable(threads=numba.get_num_threads())
        x_info = self._input_info(node) if node is not None else None
        entry = None
        if x_info is not None:
            key = layer_key(node, self.tensors, x_info, density)
            entry = self._table.get_layer(key, lambda: measure_layer(node, self.tensors, *x_info))
        if entry is not None:
            dense, sparse = entry["dense_s"], entry["sparse_s"]
            faster = "CSR" if sparse < dense else "dense"
            return sparse < dense, (f"measured on this layer: dense {dense * 1e3:.3g} ms, CSR "
                                    f"{sparse * 1e3:.3g} ms (density {density:.3f}): {faster}")
        entry = self._table.get(shape_class, measure_class(shape_class))
        edge = entry["break_even"]
        if density < edge:
            return True, f"density {density:.3f} < break-even {edge:.3f} measured for {shape_class!r}"
        return False, f"density {density:.3f} >= break-even {edge:.3f} measured for {shape_class!r}"

    def _input_info(self, node: Node):
        """(shape with batch 1, dtype) of ``node``'s first input, or None if a dimension other than
        the batch is unknown (then auto falls back to the shape-class table)."""
        if self._shapes is None:
            from ..shapes import infer_shapes

            try:
                self._shapes = infer_shapes(self.model.graph)
            except ZeroskipError:
                self._shapes = {}
        info = self._shapes.get(node.inputs[0])
        if info is None or info.shape is None or not info.shape:
            return None
        dims = [1 if i == 0 and d is None else d for i, d in enumerate(info.shape)]
        if not all(isinstance(d, (int, np.integer)) for d in dims):
            return None
        return tuple(int(d) for d in dims), str(info.dtype)

    def const(self, name: str):
        return self.constants.get(name) if name else None


def _constant(tensor, float_dtype) -> np.ndarray:
    """An initializer as the steps read it: real values in ``float_dtype``, 8-bit activations
    (quantized constants whose parameters live in the reading op) as stored, other ints as int64."""
    if tensor.quant is not None or tensor.dtype.kind == "f":
        return np.ascontiguousarray(tensor.dequantize().astype(float_dtype))
    if tensor.dtype in (np.uint8, np.int8):
        return np.ascontiguousarray(tensor.to_numpy())
    if tensor.dtype.kind in "iu":
        return tensor.to_numpy().astype(np.int64)
    return np.asarray(tensor.to_numpy())


_FUSABLE_PRODUCERS = ("Conv", "Gemm", "Add")


def _find_fusions(model: Model) -> dict:
    """Conv/Gemm whose only reader is a Relu or Clip (and whose output is not a graph output): the
    activation becomes the clamp [lo, hi] of the producer's epilogue."""
    graph = model.graph
    outputs = {v.name for v in graph.outputs}
    readers: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)
    fused = {}
    for node in graph.nodes:
        if node.op not in _FUSABLE_PRODUCERS or node.outputs[0] in outputs:
            continue
        reader = readers.get(node.outputs[0], [])
        if len(reader) != 1 or reader[0].op not in ("Relu", "Clip"):
            continue
        act = reader[0]
        lo, hi = (0.0, None) if act.op == "Relu" else (act.attrs["min"], act.attrs["max"])
        fused[node.name] = (act, lo, hi)
    return fused


_SERIAL = contextvars.ContextVar("zeroskip_serial_kernels", default=False)
"""True while a plan for one thread is being built: its steps take the serial kernel twins."""


def _kernel(name: str):
    """The kernel a step being built calls: the parallel one, or its serial twin (one thread)."""
    from ..kernels import KERNELS, serial_kernel

    return serial_kernel(name) if _SERIAL.get() else KERNELS[name]


def build_plan(model: Model, mode: str, serial: bool = False) -> Plan:
    """The steps that run ``model`` in ``mode`` (the model is not modified); ``serial``: the
    session runs on one thread, so the kernels are the serial twins (kernels.serial_kernel)."""
    token = _SERIAL.set(serial)
    try:
        plan = _build_plan(model, mode)
    finally:
        _SERIAL.reset(token)
    plan.serial = serial
    return plan


def _build_plan(model: Model, mode: str) -> Plan:
    from .passes import dequantize_model, optimize

    check_mode(model, mode)
    if mode == "reference":
        constants = {name: _reference_constant(t) for name, t in model.graph.initializers.items()}
        steps = [reference_step(node, model.graph.initializers) for node in model.graph.nodes]
        return Plan(mode, steps, constants)
    integer = mode in INT8_MODES or (mode == "auto" and is_quantized(model))
    model = optimize(model) if integer else optimize(dequantize_model(model))
    ctx = _Context(model, mode, np.float32)
    ctx.integer = integer
    steps = []
    for node in model.graph.nodes:
        if node.name in ctx.fused_into:
            producer = ctx.fused_into[node.name]
            steps.append(Step(node, "fused", f"clamp applied in {producer!r}'s epilogue",
                              lambda values: None))
            continue
        step = _build_step(node, ctx)
        if step is None:
            ctx.unfuse(node.name)  # the reference op has no epilogue: its activation runs alone
            step = reference_step(node, ctx.tensors, "no kernel for this op: reference op, float32 "
                                  "result", cast="float32")
        steps.append(step)
    return Plan(mode, steps, ctx.constants)


def _build_step(node: Node, ctx: _Context) -> Step | None:
    """The kernel step for ``node`` in ``ctx.mode`` (None: no kernel, run the reference op)."""
    if node.op in _I8_BUILDERS:  # in an f32 mode: an op that dequantize_model kept integer
        return _I8_BUILDERS[node.op](node, ctx)
    if node.op in _INTEGER_BUILDERS:
        return _INTEGER_BUILDERS[node.op](node, ctx)
    sparse = ctx.mode == "sparse-f32"
    if ctx.mode == "auto" and node.op in _SPARSE_F32_BUILDERS:
        tensor = ctx.tensors.get(node.inputs[1])
        if tensor is not None:
            sparse, why = ctx.auto_choice(f"{node.op.lower()} f32", tensor.density, node)
            step = (_SPARSE_F32_BUILDERS if sparse else _F32_BUILDERS)[node.op](node, ctx)
            if step is not None:
                step.reason = f"auto: {why}; {step.reason}"
                return step
    if sparse and node.op in _SPARSE_F32_BUILDERS:
        step = _SPARSE_F32_BUILDERS[node.op](node, ctx)
        if step is not None:
            return step
    builder = _F32_BUILDERS.get(node.op)
    return builder(node, ctx) if builder else None


def _reference_constant(tensor) -> np.ndarray:
    if tensor.quant is not None or tensor.dtype.kind == "f":
        return tensor.dequantize()
    if tensor.dtype.kind in "iu":
        return tensor.to_numpy().astype(np.int64)
    return np.asarray(tensor.to_numpy())


def _activation(ctx: _Context, node: Node):
    """(output name, lo, hi) of a node, after the fusion of its activation if any."""
    if node.name in ctx.fused:
        act, lo, hi = ctx.fused[node.name]
        return act.outputs[0], lo, hi
    return node.outputs[0], None, None


def _gemm_f32(node: Node, ctx: _Context):
    """y = alpha·A·B + beta·C with constant B: prepacked once as alpha·B (K,N) contiguous."""
    w = ctx.const(node.inputs[1])
    if w is None or w.ndim != 2:
        return None
    attrs = node.attrs
    b = np.ascontiguousarray((w.T if attrs["transB"] else w) * np.float32(attrs["alpha"]))
    c = ctx.const(node.inputs[2]) if len(node.inputs) > 2 else None
    if len(node.inputs) > 2 and node.inputs[2] and c is None:
        return None  # C computed at run time: leave it to the reference op
    c = None if c is None else (c * np.float32(attrs["beta"])).astype(np.float32)
    trans_a = attrs["transA"]
    out, lo, hi = _activation(ctx, node)
    x_name = node.inputs[0]
    density = ctx.tensors[node.inputs[1]].density

    def run(values):
        x = values[x_name]
        x = x.T if trans_a else x
        if x.ndim != 2 or x.shape[1] != b.shape[0]:
            raise InputError(f"node {node.name!r} (Gemm): expected A with K = {b.shape[0]}, got "
                             f"shape {values[x_name].shape}")
        y = np.asarray(x, dtype=np.float32) @ b
        if c is not None:
            y += c
        if lo is not None or hi is not None:
            np.clip(y, lo, hi, out=y)
        values[out] = y

    return Step(node, "gemm_dense_f32 (numpy BLAS)", "dense-f32: weights as a dense float32 (K,N) "
                "panel, one sgemm" + (", activation fused" if node.name in ctx.fused else ""), run,
                density)


def _matmul_f32(node: Node, ctx: _Context):
    w = ctx.const(node.inputs[1])
    if w is None or w.dtype != np.float32:
        return None
    x_name, out = node.inputs[0], node.outputs[0]

    def run(values):
        values[out] = np.matmul(np.asarray(values[x_name], dtype=np.float32), w)

    return Step(node, "matmul_dense_f32 (numpy BLAS)", "dense-f32: constant B, numpy matmul", run,
                ctx.tensors[node.inputs[1]].density)


def _conv_f32(node: Node, ctx: _Context):
    """Conv by im2col (a Numba kernel) + one sgemm per group (numpy BLAS) + bias and activation.

    A 1×1, stride-1, unpadded conv needs no im2col: x[b] is already the (C, H·W) column matrix.
    """
    w = ctx.const(node.inputs[1])
    if w is None or w.ndim != 4:
        return None  # 1-D and 3-D convs run on the reference op
    b = ctx.const(node.inputs[2]) if len(node.inputs) > 2 else None
    if len(node.inputs) > 2 and node.inputs[2] and b is None:
        return None
    group, (n_out, c_group, kh, kw) = node.attrs["group"], w.shape
    wmat = np.ascontiguousarray(w.reshape(group, n_out // group, c_group * kh * kw))
    bias = np.zeros(n_out, np.float32) if b is None else np.ascontiguousarray(b, np.float32)
    im2col, epilogue = _kernel("im2col_dense_f32"), _kernel("bias_act_dense_f32")
    out, lo, hi = _activation(ctx, node)
    lo, hi = _bounds(lo, hi)
    x_name, channels = node.inputs[0], group * c_group
    scratch = Scratch()

    def run(values):
        x = np.ascontiguousarray(_conv_input(node, values[x_name], channels), dtype=np.float32)
        g = _conv_geometry(node, x.shape, kh, kw)
        batch, oh, ow = x.shape[0], g["oh"], g["ow"]
        if (kh, kw, g["sh"], g["sw"], g["pt"], g["pl"]) == (1, 1, 1, 1, 0, 0) \
                and (oh, ow) == x.shape[2:]:
            cols = x.reshape(batch, group, c_group, oh * ow)  # already the column matrix
        else:
            cols = scratch.get("cols", (batch, group, c_group * kh * kw, oh, ow), np.float32)
            im2col(x, cols, kh, kw, g["sh"], g["sw"], g["dh"], g["dw"], g["pt"], g["pl"])
            cols = cols.reshape(batch, group, c_group * kh * kw, oh * ow)
        # W (G, N/G, K) @ cols (B, G, K, P) -> y (B, G, N/G, P) = NCHW
        y = np.matmul(wmat, cols).reshape(batch, n_out, oh * ow)
        epilogue(y, bias, lo, hi)
        values[out] = y.reshape(batch, n_out, oh, ow)

    return Step(node, "im2col_dense_f32 + numpy sgemm + bias_act_dense_f32",
                "dense-f32: im2col then one sgemm per group"
                + (", activation fused" if node.name in ctx.fused else ""), run,
                ctx.tensors[node.inputs[1]].density)


def _add_f32(node: Node, ctx: _Context):
    """Float Add: the add kernel (with a fused Relu/Clip) on equal shapes, numpy broadcasting else;
    integer (shape arithmetic) Adds keep the reference op."""
    kernel = _kernel("add_dense_f32")
    reference = REFERENCE_OPS["Add"]
    out, lo, hi = _activation(ctx, node)
    lo32, hi32 = _bounds(lo, hi)
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
                + (", activation fused" if node.name in ctx.fused else ""), run)


def _clamp_f32(node: Node, ctx: _Context):
    """A Relu or Clip that no producer absorbed: the clamp kernel on float inputs."""
    kernel = _kernel("clamp_dense_f32")
    lo, hi = (0.0, None) if node.op == "Relu" else (node.attrs["min"], node.attrs["max"])
    lo32, hi32 = _bounds(lo, hi)
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

    return Step(node, "clamp_dense_f32", "activation with no producer to fuse into", run)


def _mul_f32(node: Node, ctx: _Context):
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


def _cast_f32(node: Node, ctx: _Context):
    """Cast to float32 (an int32 accumulator before its rescale): numpy's conversion, rounding to
    nearest even like onnxruntime. Casts to other types keep the reference op."""
    if node.attrs["to"] != "float32":
        return None
    x_name, out = node.inputs[0], node.outputs[0]

    def run(values):
        values[out] = np.asarray(values[x_name]).astype(np.float32)

    return Step(node, "numpy astype", "conversion to float32", run)


def _maxpool_f32(node: Node, ctx: _Context):
    """2-D float MaxPool: the max-pool kernel on float32 planes (other inputs: the reference op)."""
    if len(node.attrs["kernel_shape"]) != 2:
        return None
    kernel = _kernel("maxpool_dense_f32")
    reference = reference_step(node, ctx.tensors, cast="float32").run
    x_name, out = node.inputs[0], node.outputs[0]

    def run(values):
        x = values[x_name]
        if x.ndim != 4 or x.dtype.kind != "f":
            return reference(values)
        values[out] = _max_pool(node, kernel, np.ascontiguousarray(x, np.float32))

    return Step(node, "maxpool_dense_f32", "window max per plane, pads never win", run)


def _max_pool(node: Node, kernel, x: np.ndarray) -> np.ndarray:
    """y = a max-pool kernel (float32 or 8-bit, same signature) on x (N, C, H, W), contiguous."""
    (kh, kw), (sh, sw), (dh, dw), (pt, pl), _, (oh, ow) = _pool_geometry(node, x.shape)
    y = np.empty(x.shape[:2] + (oh, ow), x.dtype)
    kernel(x, y, kh, kw, sh, sw, dh, dw, pt, pl)
    return y


def _batchnorm_f32(node: Node, ctx: _Context):
    """A BatchNormalization no pass could fold (its producer is not a float Conv/Gemm, e.g. between
    a DequantizeLinear and a QuantizeLinear): y = x·a[c] + b[c] in float32, a and b computed once
    from constant statistics (a = γ/√(σ²+ε), b = β − μ·a, in float64)."""
    stats = [ctx.const(name) for name in node.inputs[1:]]
    if any(v is None for v in stats):
        return None
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


_F32_BUILDERS = {"Gemm": _gemm_f32, "MatMul": _matmul_f32, "Conv": _conv_f32, "Add": _add_f32,
                 "Relu": _clamp_f32, "Clip": _clamp_f32, "Mul": _mul_f32, "Cast": _cast_f32,
                 "MaxPool": _maxpool_f32, "BatchNormalization": _batchnorm_f32}


# -- sparse-f32: the CSR kernels ------------------------------------------------------------------
_INF = np.float32(np.inf)


def _bounds(lo, hi):
    """Kernel clamp bounds as float32 (None = open)."""
    return (np.float32(-np.inf) if lo is None else np.float32(lo),
            _INF if hi is None else np.float32(hi))


def _csr(matrix: np.ndarray):
    """The CSR triple of ``matrix`` (rows = output channels, values in its own dtype), indices in
    the narrowest type that fits (model.index_dtype). Built from the values here, at plan time, so
    it is valid by construction whatever the file held: no unchecked index reaches a kernel."""
    from ..model import CSR

    csr = CSR.from_dense(np.ascontiguousarray(matrix))
    return csr.indptr, csr.indices, np.ascontiguousarray(csr.data)


def _csr_f32(matrix: np.ndarray):
    return _csr(np.asarray(matrix, dtype=np.float32))


def _gemm_csr_f32(node: Node, ctx: _Context):
    """y (M,N) = x (M,K) @ W'ᵀ + c: the kernel computes yt = W' (N,K) csr @ xt (K,M)."""
    w = ctx.const(node.inputs[1])
    attrs = node.attrs
    if w is None or w.ndim != 2 or attrs["transA"]:
        return None
    c = ctx.const(node.inputs[2]) if len(node.inputs) > 2 else None
    if len(node.inputs) > 2 and node.inputs[2] and c is None:
        return None
    w_nk = (w if attrs["transB"] else w.T) * np.float32(attrs["alpha"])
    n_out = w_nk.shape[0]
    if c is not None and np.asarray(c).shape not in ((), (1,), (n_out,)):
        return None  # a C that varies by row: leave it to the dense path
    bias = np.zeros(n_out, np.float32) if c is None else \
        np.ascontiguousarray(np.broadcast_to(c * np.float32(attrs["beta"]), (n_out,)), np.float32)
    indptr, indices, data = _csr_f32(w_nk)
    kernel = _kernel("matmul_csr_f32")
    out, lo, hi = _activation(ctx, node)
    lo, hi = _bounds(lo, hi)
    x_name, k_in = node.inputs[0], w_nk.shape[1]
    density = len(data) / max(w_nk.size, 1)

    def run(values):
        x = values[x_name]
        if x.ndim != 2 or x.shape[1] != k_in:
            raise InputError(f"node {node.name!r} (Gemm): expected A of shape (M, {k_in}), got "
                             f"{x.shape}")
        xt = np.ascontiguousarray(x.T, dtype=np.float32)
        yt = np.empty((n_out, x.shape[0]), np.float32)
        kernel(indptr, indices, data, bias, xt, yt, lo, hi)
        values[out] = np.ascontiguousarray(yt.T)

    return Step(node, "matmul_csr_f32", f"sparse-f32: weights as CSR ({len(data)} nonzeros), "
                "activations transposed to (K,M)" + (", activation fused" if node.name in ctx.fused
                                                     else ""), run, density)


def _conv_input(node: Node, x: np.ndarray, channels: int) -> np.ndarray:
    """x if it is (N, channels, H, W), else InputError naming the node (every 2-D conv step)."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise InputError(f"node {node.name!r} ({node.op}): expected input (N, {channels}, H, W), "
                         f"got shape {x.shape}")
    return x


def _workspace_len(depthwise: bool, kh: int, kw: int, g: dict) -> int:
    """Per-channel accumulator length of the tile loop; 3×3 depthwise keeps it in registers."""
    return 0 if depthwise and kh == kw == 3 else g["oh"] * g["pitch"]


def _conv_geometry(node: Node, x_shape, kh, kw) -> dict:
    """A 2-D conv's output size, padded-plane size, pitch and pads for input ``x_shape``; worked out
    once per (node, input shape) and cached, so repeated runs of a shape do no geometry."""
    attrs = node.attrs
    key = (tuple(attrs["strides"] or (1, 1)), tuple(attrs["dilations"] or (1, 1)),
           None if attrs["pads"] is None else tuple(attrs["pads"]), attrs["auto_pad"],
           tuple(x_shape[2:]), kh, kw)
    try:
        return _conv_geometry_of(*key)
    except InputError as err:
        raise InputError(f"node {node.name!r} ({node.op}): {err}") from None


@functools.lru_cache(maxsize=1024)
def _conv_geometry_of(strides, dilations, pads, auto_pad, spatial, kh, kw) -> dict:
    from ..geometry import geometry

    begins, _, (oh, ow) = geometry(spatial, [kh, kw], list(strides), list(dilations),
                                   None if pads is None else list(pads), auto_pad)
    hp = (oh - 1) * strides[0] + (kh - 1) * dilations[0] + 1
    wp = (ow - 1) * strides[1] + (kw - 1) * dilations[1] + 1
    pitch = wp if strides == (1, 1) else ow
    return dict(oh=oh, ow=ow, hp=hp, wp=wp, pitch=pitch, sh=strides[0], sw=strides[1],
                dh=dilations[0], dw=dilations[1], pt=begins[0], pl=begins[1])


def _conv_csr_f32(node: Node, ctx: _Context):
    """Direct sparse conv (no im2col), or the depthwise kernel for depthwise convs."""
    w = ctx.const(node.inputs[1])
    if w is None or w.ndim != 4:
        return None
    b = ctx.const(node.inputs[2]) if len(node.inputs) > 2 else None
    if len(node.inputs) > 2 and node.inputs[2] and b is None:
        return None
    group, (n_out, c_group, kh, kw) = node.attrs["group"], w.shape
    bias = np.zeros(n_out, np.float32) if b is None else np.ascontiguousarray(b, np.float32)
    out, lo, hi = _activation(ctx, node)
    lo, hi = _bounds(lo, hi)
    x_name, channels = node.inputs[0], group * c_group
    depthwise = c_group == 1 and group == channels and n_out % channels == 0
    if depthwise:
        taps = np.ascontiguousarray(w.reshape(n_out, kh * kw), np.float32)
        kernel, name = _kernel("depthwise_dense_f32"), "depthwise_dense_f32"
        reason = "depthwise conv: dense taps, one shifted axpy per tap (no im2col)"
        density = ctx.tensors[node.inputs[1]].density
    else:
        indptr, indices, data = _csr_f32(w.reshape(n_out, -1))
        kernel, name = _kernel("conv2d_csr_f32"), "conv2d_csr_f32"
        reason = f"sparse-f32: direct sparse conv over {len(data)} nonzeros (no im2col)"
        density = len(data) / max(w.size, 1)
    scratch = Scratch()

    def run(values):
        x = np.ascontiguousarray(_conv_input(node, values[x_name], channels), dtype=np.float32)
        g = _conv_geometry(node, x.shape, kh, kw)
        batch = x.shape[0]
        xp = scratch.get("xp", (batch, channels, g["hp"], g["wp"]), np.float32)
        ws = scratch.get("ws", (batch, n_out, _workspace_len(depthwise, kh, kw, g)), np.float32)
        y = np.empty((batch, n_out, g["oh"], g["ow"]), np.float32)
        geo = (kh, kw, g["sh"], g["sw"], g["dh"], g["dw"], g["pt"], g["pl"])
        if depthwise:
            kernel(taps, bias, x, xp, ws, y, *geo, lo, hi)
        else:
            kernel(indptr, indices, data, bias, x, xp, ws, y, *geo, group, lo, hi)
        values[out] = y

    return Step(node, name, reason + (", activation fused" if node.name in ctx.fused else ""),
                run, density)


_SPARSE_F32_BUILDERS = {"Gemm": _gemm_csr_f32, "Conv": _conv_csr_f32}


# -- dense-i8 / sparse-i8: the integer kernels --------------------------------------------------
_Q8 = {"uint8": np.uint8, "int8": np.int8}


def _layer_quant(node: Node, ctx: _Context) -> dict:
    """Everything a QGemm/QConv needs once: int8 weights (N, K), folded bias, Q31 multipliers, clamp.

    The arithmetic is docs/quantization.md's: bias' = q_b − x_zp·rowsum, M[n] = x_scale·w_scale[n] /
    y_scale ≈ m0[n]·2^−shift[n], output clamped to the type's range narrowed by the fused clip.
    """
    from .. import quantmath

    attrs = node.attrs
    w_tensor = ctx.tensors.get(node.inputs[1])
    where = f"node {node.name!r} ({node.op})"
    if w_tensor is None or w_tensor.quant is None or w_tensor.dtype != np.int8:
        raise UnsupportedModelError(f"{where}: the weight must be an int8 initializer with a scale")
    quant = w_tensor.quant
    if np.any(quant.zero_point != 0) or quant.axis not in (None, 0):
        raise UnsupportedModelError(f"{where}: weights must be symmetric (zero point 0), per tensor "
                                    f"or per output channel")
    q_w = w_tensor.to_numpy()
    n_out = q_w.shape[0]
    # a writable copy: a read-only (memory-mapped) weight is another Numba type, a second compile
    w2 = np.array(q_w.reshape(n_out, -1), order="C")
    w_scale = np.broadcast_to(quant.scale.astype(np.float64), (n_out,))
    b_name = node.inputs[2] if len(node.inputs) > 2 else ""
    q_b = np.zeros(n_out, np.int64)
    if b_name:
        b_tensor = ctx.tensors.get(b_name)
        if b_tensor is None or b_tensor.dtype.kind not in "iu":
            raise UnsupportedModelError(f"{where}: the bias must be an int32 initializer")
        q_b = b_tensor.to_numpy().astype(np.int64).reshape(-1)
    x_zp = int(attrs["x_zero_point"])
    rowsum = w2.astype(np.int64).sum(axis=1)
    bias = quantmath.fold_bias(q_b, rowsum, x_zp)
    quantmath.check_accumulator_range(w2.shape[1], 127 * 255, bias)
    m0, shift = quantmath.quantize_multiplier(float(attrs["x_scale"]) * w_scale /
                                              float(attrs["y_scale"]))
    lo, hi = quantmath.clamp_bounds(attrs["y_dtype"], attrs["y_scale"], attrs["y_zero_point"],
                                    attrs["clip_min"], attrs["clip_max"])
    return dict(w=w2, w_shape=q_w.shape, bias=np.ascontiguousarray(bias, np.int32),
                m0=np.ascontiguousarray(m0, np.int32), shift=np.ascontiguousarray(shift, np.int32),
                y_zp=int(attrs["y_zero_point"]), lo=int(lo), hi=int(hi), x_zp=x_zp,
                y_dtype=_Q8[attrs["y_dtype"]], density=w_tensor.density)


def _check_q8(node: Node, x: np.ndarray) -> None:
    if x.dtype not in (np.uint8, np.int8):
        raise InputError(f"node {node.name!r} ({node.op}): expected a uint8 or int8 input, got "
                         f"{x.dtype}")


class _GemmAccumulator:
    """The int8 GEMM of a layer, prepacked once: ``acc (N,M) int32 = bias'[n] + Σ_k w[n,k]·x[m,k]``.

    w (N,K) int8 with values in [−128, 127]; CSR (matmul_csr_i8) or dense (matmul_dense_i8). The
    caller supplies the folded bias and turns the accumulator into its output (requantization for
    QGemm, the int32 result itself for MatMulInteger).
    """

    def __init__(self, w2: np.ndarray, sparse: bool):
        self.n_out, self.k_in = w2.shape
        self.sparse = sparse
        if sparse:
            self.csr = _csr(w2)
            self.kernel, self.name = _kernel("matmul_csr_i8"), "matmul_csr_i8"
            self.reason = f"int8 CSR weights ({len(self.csr[2])} nonzeros), int32 accumulation"
        else:
            self.w = np.ascontiguousarray(w2)
            self.kernel, self.name = _kernel("matmul_dense_i8"), "matmul_dense_i8"
            self.reason = "dense int8 weights, int32 accumulation"

    def __call__(self, x: np.ndarray, bias: np.ndarray, acc: np.ndarray) -> None:
        """x (M,K) 8-bit, bias (N,) int32, acc (N,M) int32 (overwritten)."""
        if self.sparse:
            self.kernel(*self.csr, bias, np.ascontiguousarray(x.T), acc)
        else:
            self.kernel(np.ascontiguousarray(x), self.w, bias, acc)


class _ConvAccumulator:
    """The int8 conv of a layer, prepacked once: ``acc (B,N,OH,OW) int32 = bias'[n] + Σ w·x`` with
    pads filled with the input zero point. Depthwise taps, the direct sparse conv, or im2row + the
    dense GEMM per group (docs/kernels.md)."""

    def __init__(self, node: Node, w4: np.ndarray, use_csr: Callable[[], bool],
                 im2row_only: bool = False):
        """w4 (N, C/group, kh, kw) int8; ``use_csr()`` is asked only when the conv is not
        depthwise (depthwise taps are always dense); ``im2row_only``: always the im2row path
        (``window_sums`` needs its rows)."""
        self.node = node
        self.n_out, self.c_group, self.kh, self.kw = w4.shape
        self.group = node.attrs["group"]
        self.channels = self.group * self.c_group
        self.w = np.ascontiguousarray(w4.reshape(self.n_out, -1))
        self.depthwise = (not im2row_only and self.c_group == 1 and self.group == self.channels
                          and self.n_out % self.channels == 0)
        self.sparse = not im2row_only and not self.depthwise and use_csr()
        if self.depthwise:
            self.kernel, self.name = _kernel("depthwise_dense_i8"), "depthwise_dense_i8"
            self.reason = "depthwise conv: dense int8 taps, one shifted axpy per tap"
        elif self.sparse:
            self.csr = _csr(self.w)
            self.kernel, self.name = _kernel("conv2d_csr_i8"), "conv2d_csr_i8"
            self.reason = f"direct sparse int8 conv over {len(self.csr[2])} nonzeros (no im2col)"
        else:
            self.im2row, self.kernel = _kernel("im2row_dense_i8"), _kernel("matmul_dense_i8")
            self.name = "im2row_dense_i8 + matmul_dense_i8"
            self.reason = "im2row (zero-point padded, channels last) then a dense int8 GEMM per group"
            per = self.n_out // self.group
            taps_first = w4.transpose(0, 2, 3, 1).reshape(self.n_out, -1)  # im2row's k order
            self.w_groups = [np.ascontiguousarray(taps_first[g * per:(g + 1) * per])
                             for g in range(self.group)]
        self.scratch = Scratch()

    def check_input(self, x: np.ndarray) -> np.ndarray:
        _check_q8(self.node, x)
        return np.ascontiguousarray(_conv_input(self.node, x, self.channels))

    def window_sums(self, acc_shape, dtype, x_zp: int) -> np.ndarray:
        """Σ (x − x_zp) over each output pixel's window and its group's channels, (B, g, OH, OW)
        int64, from the rows of this thread's last call (im2row path; pads hold x_zp, so add 0)."""
        batch, _, oh, ow = acc_shape
        rows = self.scratch.get("rows", (batch, self.group, oh, ow, self.c_group * self.kh * self.kw),
                                dtype)
        return rows.sum(axis=-1, dtype=np.int64) - rows.shape[-1] * x_zp

    def __call__(self, x: np.ndarray, x_zp: int, bias: np.ndarray) -> np.ndarray:
        """The accumulator (a scratch array, valid until the next call on this thread) for x
        (B,C,H,W) 8-bit (from check_input), its zero point, and bias (N,) int32."""
        kh, kw, group, n_out = self.kh, self.kw, self.group, self.n_out
        g = _conv_geometry(self.node, x.shape, kh, kw)
        batch, oh, ow = x.shape[0], g["oh"], g["ow"]
        geo = (kh, kw, g["sh"], g["sw"], g["dh"], g["dw"], g["pt"], g["pl"])
        acc = self.scratch.get("acc", (batch, n_out, oh, ow), np.int32)
        if self.depthwise or self.sparse:
            xp = self.scratch.get("xp", (batch, self.channels, g["hp"], g["wp"]), x.dtype)
            ws = self.scratch.get("ws", (batch, n_out, _workspace_len(self.depthwise, kh, kw, g)),
                                  np.int32)
            if self.depthwise:
                self.kernel(self.w, bias, x, x_zp, xp, ws, acc, *geo)
            else:
                self.kernel(*self.csr, bias, x, x_zp, xp, ws, acc, *geo, group)
        else:
            rows = self.scratch.get("rows", (batch, group, oh, ow, self.c_group * kh * kw), x.dtype)
            xh = self.scratch.get("xh", (batch,) + x.shape[2:] + (x.shape[1],), x.dtype)
            xh[...] = x.transpose(0, 2, 3, 1)  # channels last: each tap is one contiguous copy
            self.im2row(xh, x_zp, rows, *geo)
            per = n_out // group
            for b in range(batch):
                for gi in range(group):
                    self.kernel(rows[b, gi].reshape(oh * ow, -1), self.w_groups[gi],
                                np.ascontiguousarray(bias[gi * per:(gi + 1) * per]),
                                acc[b, gi * per:(gi + 1) * per].reshape(per, oh * ow))
        return acc


def _qgemm_i8(node: Node, ctx: _Context):
    q = _layer_quant(node, ctx)
    gemm = _GemmAccumulator(q["w"], _use_csr(ctx, q["density"], "gemm i8", node))
    requantize = _kernel("requantize_dense_i8")
    x_name, out = node.inputs[0], node.outputs[0]
    scratch = Scratch()

    def run(values):
        x = values[x_name]
        _check_q8(node, x)
        if x.ndim != 2 or x.shape[1] != gemm.k_in:
            raise InputError(f"node {node.name!r} (QGemm): expected x of shape (M, {gemm.k_in}), "
                             f"got {x.shape}")
        acc = scratch.get("acc", (gemm.n_out, x.shape[0]), np.int32)
        gemm(x, q["bias"], acc)
        yt = np.empty(acc.shape, q["y_dtype"])
        requantize(acc, q["m0"], q["shift"], q["y_zp"], q["lo"], q["hi"], yt)
        values[out] = np.ascontiguousarray(yt.T)

    return _int8_step(node, ctx, gemm.name, gemm.reason, run, q["density"], chosen=True)


def _int8_step(node, ctx, name, reason, run, density, chosen: bool) -> Step:
    """The Step of an int8 GEMM/conv (always followed by requantization); ``chosen``: auto picked
    between CSR and dense here, and says why."""
    if ctx.mode == "auto" and chosen:
        reason = f"auto: {ctx.last_auto_reason}; {reason}"
    return Step(node, name + " + requantize_dense_i8", reason + ", Q31 requantization", run,
                density)


def _qconv_i8(node: Node, ctx: _Context):
    q = _layer_quant(node, ctx)
    conv = _ConvAccumulator(node, q["w"].reshape(q["w_shape"]),
                            lambda: _use_csr(ctx, q["density"], "conv i8", node))
    requantize = _kernel("requantize_dense_i8")
    x_name, out = node.inputs[0], node.outputs[0]

    def run(values):
        acc = conv(conv.check_input(values[x_name]), q["x_zp"], q["bias"])
        y = np.empty(acc.shape, q["y_dtype"])
        for b in range(acc.shape[0]):
            requantize(acc[b].reshape(conv.n_out, -1), q["m0"], q["shift"], q["y_zp"], q["lo"],
                       q["hi"], y[b].reshape(conv.n_out, -1))
        values[out] = y

    return _int8_step(node, ctx, conv.name, conv.reason, run, q["density"],
                      chosen=not conv.depthwise)


# -- ONNX's integer ops: DynamicQuantizeLinear, MatMulInteger, ConvInteger ------------------------
def _dynamic_quantize(node: Node, ctx: _Context):
    from ..reference.quantized import dynamic_quantize_params

    kernel = _kernel("quantize_dense_f32")
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


def _integer_weight(node: Node, ctx: _Context, axis: int):
    """(w' int8 with the output channels first, rowsum int64, offset, why not) for MatMulInteger /
    ConvInteger, when the weight and its zero point are initializers and the int32 accumulator
    cannot overflow for any 8-bit input and input zero point:

    * w' = w − w_zp (per tensor or per output channel ``axis``) when every w' fits int8; offset None;
    * otherwise (a uint8 weight whose zero point is far from 128) w' = w − 128, which always fits,
      and offset[n] = 128 − w_zp[n]: Σ_k (x − x_zp)(w − w_zp) = Σ_k (x − x_zp)·w' + offset[n]·Σ_k (x −
      x_zp), the last sum taken per output row at run time.

    Otherwise (None, None, None, why)."""
    from .. import quantmath

    w_name = node.inputs[1]
    zp_name = node.inputs[3] if len(node.inputs) > 3 else ""
    w_tensor = ctx.tensors.get(w_name)
    zp_tensor = ctx.tensors.get(zp_name) if zp_name else None
    if w_tensor is None or (zp_name and zp_tensor is None):
        return None, None, None, "the weight or its zero point is not a constant"
    w = w_tensor.to_numpy().astype(np.int64)
    if w.ndim < 2:
        return None, None, None, f"a {w.ndim}-D weight"
    zp = np.zeros((), np.int64) if zp_tensor is None else zp_tensor.to_numpy().astype(np.int64)
    if zp.size != 1 and zp.shape != (w.shape[axis],):
        return None, None, None, f"zero point of shape {list(zp.shape)}"
    shape = [1] * w.ndim
    if zp.size != 1:
        shape[axis] = -1
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
    try:  # |x·w| ≤ 255·128; the folded bias −x_zp·rowsum with |x_zp| ≤ 255
        quantmath.check_accumulator_range(k, 255 * 128, 255 * rowsum)
    except UnsupportedModelError as err:
        return None, None, None, str(err)
    return w8, rowsum, offset, ""


def _input_zero_point(node: Node, values: dict) -> int | None:
    """The run's scalar input zero point (0 if absent); None for a per-row one (reference op)."""
    name = node.inputs[2] if len(node.inputs) > 2 else ""
    if not name:
        return 0
    zp = np.asarray(values[name])
    if zp.size != 1 or zp.dtype.kind not in "iu":
        return None
    return int(zp.reshape(-1)[0])


def _integer_step(node: Node, ctx: _Context, build):
    """The step of MatMulInteger/ConvInteger: ``build(w8, rowsum, fallback)`` -> (name, reason, run,
    chosen) when the weight converts (``_integer_weight``), else the reference op with the reason.
    ``fallback(values)`` runs the reference op (int32 out) for inputs the kernels do not take."""
    axis = 1 if node.op == "MatMulInteger" else 0
    w8, rowsum, offset, why = _integer_weight(node, ctx, axis)
    reference = reference_step(node, ctx.tensors, f"reference op (exact integer arithmetic): {why}")
    if w8 is None:
        return reference

    def fallback(values):
        reference.run(values)
        values[node.outputs[0]] = values[node.outputs[0]].astype(np.int32)

    name, reason, run, chosen = build(w8, rowsum, offset, fallback)
    if ctx.mode == "auto" and chosen:
        reason = f"auto: {ctx.last_auto_reason}; {reason}"
    if offset is not None:
        reason += "; uint8 weight as (w − 128) + (128 − w_zp)·Σ(x − x_zp) per output row"
    return Step(node, name, reason + "; int32 out, the input zero point folded per run", run,
                _nonzero_share(w8))


def _matmul_integer(node: Node, ctx: _Context):
    def build(w8, rowsum, offset, fallback):
        w2 = np.ascontiguousarray(w8.reshape(w8.shape[0], -1))  # (N, K): B transposed
        sparse = offset is None and _use_csr(ctx, _nonzero_share(w8), "gemm i8")
        gemm = _GemmAccumulator(w2, sparse)
        scratch = Scratch()

        def run(values):
            a = values[node.inputs[0]]
            a_zp = _input_zero_point(node, values)
            if a_zp is None or np.ndim(a) < 2 or a.shape[-1] != gemm.k_in or w8.ndim != 2:
                return fallback(values)
            _check_q8(node, a)
            x = a.reshape(-1, gemm.k_in)
            acc = scratch.get("acc", (gemm.n_out, x.shape[0]), np.int32)
            gemm(x, (-a_zp * rowsum).astype(np.int32), acc)
            y = acc.T
            if offset is not None:  # + offset[n]·Σ_k (x[m,k] − x_zp), exact in int64
                row_sums = x.sum(axis=1, dtype=np.int64) - gemm.k_in * a_zp
                y = (y + row_sums[:, None] * offset[None, :]).astype(np.int32)
            values[node.outputs[0]] = y.reshape(a.shape[:-1] + (gemm.n_out,)).copy()

        return gemm.name, gemm.reason, run, offset is None

    return _integer_step(node, ctx, build)


def _conv_integer(node: Node, ctx: _Context):
    def build(w8, rowsum, offset, fallback):
        if w8.ndim != 4:
            return "reference", "reference op (exact integer arithmetic): not a 2-D conv", \
                fallback, False
        # the offset form needs Σ (x − x_zp) per window: the im2row rows hold it
        conv = _ConvAccumulator(node, w8, lambda: _use_csr(ctx, _nonzero_share(w8), "conv i8"),
                                im2row_only=offset is not None)

        def run(values):
            x_zp = _input_zero_point(node, values)
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

        return conv.name, conv.reason, run, offset is None and not conv.depthwise

    return _integer_step(node, ctx, build)


def _nonzero_share(array: np.ndarray) -> float:
    return float(np.count_nonzero(array)) / array.size if array.size else 1.0


def _quantize_i8(node: Node, ctx: _Context):
    kernel = _kernel("quantize_dense_f32")
    attrs = node.attrs
    scale, zp, dtype = np.float32(attrs["y_scale"]), int(attrs["y_zero_point"]), _Q8[attrs["y_dtype"]]
    x_name, out = node.inputs[0], node.outputs[0]

    def run(values):
        x = np.ascontiguousarray(values[x_name], dtype=np.float32)
        y = np.empty(x.shape, dtype)
        kernel(x.reshape(-1), scale, zp, y.reshape(-1))
        values[out] = y

    return Step(node, "quantize_dense_f32", "graph edge: float32 -> 8 bits, round half to even as "
                "ONNX QuantizeLinear", run)


def _dequantize_i8(node: Node, ctx: _Context):
    kernel = _kernel("dequantize_dense_i8")
    scale, zp = np.float32(node.attrs["x_scale"]), int(node.attrs["x_zero_point"])
    x_name, out = node.inputs[0], node.outputs[0]

    def run(values):
        q = np.ascontiguousarray(values[x_name])
        _check_q8(node, q)
        y = np.empty(q.shape, np.float32)
        kernel(q.reshape(-1), scale, zp, y.reshape(-1))
        values[out] = y

    return Step(node, "dequantize_dense_i8", "graph edge: 8 bits -> float32", run)


def _pool_geometry(node: Node, x_shape):
    from ..geometry import geometry

    attrs = node.attrs
    kernel_shape = attrs["kernel_shape"]
    strides = attrs["strides"] or [1, 1]
    dilations = attrs["dilations"] or [1, 1]
    try:
        begins, ends, out = geometry(x_shape[2:], kernel_shape, strides, dilations, attrs["pads"],
                                     attrs["auto_pad"], attrs["ceil_mode"])
    except InputError as err:
        raise InputError(f"node {node.name!r} ({node.op}): {err}") from None
    return kernel_shape, strides, dilations, begins, ends, out


def _qmaxpool_i8(node: Node, ctx: _Context):
    if len(node.attrs["kernel_shape"]) != 2:
        return None
    kernel = _kernel("maxpool_dense_i8")
    x_name, out = node.inputs[0], node.outputs[0]

    def run(values):
        x = np.ascontiguousarray(values[x_name])
        _check_q8(node, x)
        if x.ndim != 4:
            raise InputError(f"node {node.name!r} (QMaxPool): expected (N, C, H, W), got {x.shape}")
        values[out] = _max_pool(node, kernel, x)

    return Step(node, "maxpool_dense_i8", "max of the integers (same scale in and out)", run)


def _qavgpool_i8(node: Node, ctx: _Context):
    attrs = node.attrs
    if len(attrs["kernel_shape"]) != 2 or attrs["x_scale"] != attrs["y_scale"] \
            or attrs["x_zero_point"] != attrs["y_zero_point"]:
        return None  # other params out than in: the float reference op
    kernel = _kernel("avgpool_dense_i8")
    x_name, out = node.inputs[0], node.outputs[0]
    x_zp, include = int(attrs["x_zero_point"]), int(attrs["count_include_pad"])

    def run(values):
        x = np.ascontiguousarray(values[x_name])
        _check_q8(node, x)
        if x.ndim != 4:
            raise InputError(f"node {node.name!r} (QAveragePool): expected (N, C, H, W), got "
                             f"{x.shape}")
        (kh, kw), (sh, sw), (dh, dw), (pt, pl), (pb, pr), (oh, ow) = _pool_geometry(node, x.shape)
        y = np.empty(x.shape[:2] + (oh, ow), x.dtype)
        kernel(x, y, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, include, x_zp)
        values[out] = y

    return Step(node, "avgpool_dense_i8", "integer window sums, divided with round half away "
                "from zero", run)


def _qgap_i8(node: Node, ctx: _Context):
    from .. import quantmath
    attrs = node.attrs
    kernel = _kernel("global_avgpool_dense_i8")
    x_name, out = node.inputs[0], node.outputs[0]
    x_zp, y_zp = int(attrs["x_zero_point"]), int(attrs["y_zero_point"])
    lo, hi = quantmath.clamp_bounds(attrs["y_dtype"], attrs["y_scale"], y_zp)
    ratio = float(attrs["x_scale"]) / float(attrs["y_scale"])
    dtype = _Q8[attrs["y_dtype"]]
    average = _kernel("avgpool_dense_i8")
    same = attrs["x_scale"] == attrs["y_scale"] and x_zp == y_zp

    def run(values):
        x = np.ascontiguousarray(values[x_name])
        _check_q8(node, x)
        if x.ndim != 4:
            raise InputError(f"node {node.name!r} (QGlobalAveragePool): expected (N, C, H, W), "
                             f"got {x.shape}")
        y = np.empty(x.shape[:2] + (1, 1), dtype)
        if same:  # an exact integer division of the plane sum (quantization.md §5)
            average(x, y, x.shape[2], x.shape[3], 1, 1, 1, 1, 0, 0, 0, 0, 0, x_zp)
        else:  # the mean and the change of scale in one rounding
            m0, shift = quantmath.quantize_multiplier(np.array([ratio / (x.shape[2] * x.shape[3])]))
            kernel(x, y, x_zp, int(m0[0]), int(shift[0]), y_zp, int(lo), int(hi))
        values[out] = y

    return Step(node, "global_avgpool_dense_i8", "integer plane sums, one requantization", run)


def _qadd_i8(node: Node, ctx: _Context):
    from .. import quantmath
    attrs = node.attrs
    kernel = _kernel("add_dense_i8")
    a_mult, b_mult, shift = quantmath.add_multipliers(float(attrs["a_scale"]) / float(attrs["y_scale"]),
                                            float(attrs["b_scale"]) / float(attrs["y_scale"]))
    y_zp = int(attrs["y_zero_point"])
    lo, hi = quantmath.clamp_bounds(attrs["y_dtype"], attrs["y_scale"], y_zp, attrs["clip_min"],
                                    attrs["clip_max"])
    dtype = _Q8[attrs["y_dtype"]]
    (a_name, b_name), out = node.inputs, node.outputs[0]
    fixed = {}  # constant operands, as the 8-bit integers of the parameters this node reads them with
    for name, side in ((a_name, "a"), (b_name, "b")):
        tensor = ctx.tensors.get(name)
        if tensor is not None:
            scale, zp = float(attrs[f"{side}_scale"]), int(attrs[f"{side}_zero_point"])
            info = np.iinfo(tensor.dtype if tensor.dtype in (np.uint8, np.int8) else np.int8)
            q = tensor.to_numpy() if tensor.quant is None else \
                np.clip(np.rint(tensor.dequantize() / scale) + zp, info.min, info.max)
            fixed[name] = np.ascontiguousarray(q.astype(info.dtype))

    def run(values):
        a, b = fixed.get(a_name, values.get(a_name)), fixed.get(b_name, values.get(b_name))
        _check_q8(node, a)
        _check_q8(node, b)
        try:
            shape = np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise InputError(f"node {node.name!r} (QAdd): expected inputs that broadcast, got "
                             f"{a.shape} and {b.shape}") from None
        a, b = np.broadcast_to(a, shape), np.broadcast_to(b, shape)
        y = np.empty(shape, dtype)
        kernel(np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1),
               y.reshape(-1), int(attrs["a_zero_point"]), int(attrs["b_zero_point"]), a_mult,
               b_mult, shift, y_zp, int(lo), int(hi))
        values[out] = y

    return Step(node, "add_dense_i8", "two input scales on one fixed-point base, one rounding", run)


_I8_BUILDERS = {"QGemm": _qgemm_i8, "QConv": _qconv_i8, "QuantizeLinear": _quantize_i8,
                "DequantizeLinear": _dequantize_i8, "QMaxPool": _qmaxpool_i8,
                "QAveragePool": _qavgpool_i8, "QGlobalAveragePool": _qgap_i8, "QAdd": _qadd_i8}

_INTEGER_BUILDERS = {"DynamicQuantizeLinear": _dynamic_quantize, "MatMulInteger": _matmul_integer,
                     "ConvInteger": _conv_integer}
"""ONNX's integer ops: integer in every mode but reference (there is no float form of them); the
weight format follows the mode (CSR in sparse-*, measured in auto)."""


def _use_csr(ctx: _Context, density: float, shape_class: str, node: Node | None = None) -> bool:
    if ctx.mode == "auto":
        use, why = ctx.auto_choice(shape_class, density, node)
        ctx.last_auto_reason = why
        return use
    return ctx.mode in ("sparse-i8", "sparse-f32")


# -- the micro-benchmark behind auto ------------------------------------------------------------
REPRESENTATIVE = {
    # shape class: (op, weight shape, input shape). Mid-sized layers of the kind the demo and
    # bench/shapes/*.txt hold: an MLP layer at batch 32, and a 3x3 conv of a small CNN at 28x28.
    "gemm": ("Gemm", (256, 512), (32, 512)),
    "conv": ("Conv", (64, 64, 3, 3), (1, 64, 28, 28)),
}


def layer_key(node: Node, tensors: dict, x_info, density: float) -> str:
    """What a per-layer timing depends on: op, weight shape, input shape and type, attributes,
    density (to 0.01)."""
    import json

    w = tensors[node.inputs[1]]
    attrs = {k: v for k, v in sorted(node.attrs.items()) if not k.startswith(("x_", "y_", "clip"))}
    return (f"layer {node.op} w{list(w.shape)} x{list(x_info[0])} {x_info[1]} "
            f"{json.dumps(attrs, sort_keys=True)} d{density:.2f}")


def measure_layer(node: Node, tensors: dict, x_shape, x_dtype) -> tuple[float, float] | None:
    """(dense seconds, CSR seconds) of ``node`` on a random input of ``x_shape``: the same step
    builders the plans use, in the dense and the sparse mode of the node's kind. None when either
    has no kernel for this node (it runs the reference op whatever auto picks)."""
    from ..model import Graph, Model, ValueInfo
    from .tuning import best_time

    integer = node.op in _I8_BUILDERS
    rng = np.random.default_rng(0)
    if np.dtype(x_dtype).kind in "iu":
        info = np.iinfo(x_dtype)
        x = rng.integers(info.min, info.max + 1, x_shape).astype(x_dtype)
    else:
        x = rng.standard_normal(x_shape).astype(np.float32)
    weights = {name: tensors[name] for name in node.inputs[1:] if name}
    graph = Graph([node], [ValueInfo(node.inputs[0], tuple(x_shape), str(x.dtype))],
                  [ValueInfo(node.outputs[0], None, "float32")], weights)
    times = []
    for mode in (("dense-i8", "sparse-i8") if integer else ("dense-f32", "sparse-f32")):
        ctx = _Context(Model(graph), mode, np.float32)
        ctx.integer = integer
        step = _build_step(node, ctx)
        if step is None:
            return None
        values = {node.inputs[0]: x}
        values.update(ctx.constants)
        times.append(best_time(lambda: step.run(values)))
    return times[0], times[1]


def measure_class(shape_class: str):
    """``measure(density) -> (dense seconds, sparse seconds)`` for a shape class such as "conv i8":
    the same step builders the plans use, on the class's representative layer."""
    from ..model import Dense, Graph, Model, QuantParams, ValueInfo
    from ..ops import normalize_attrs
    from .tuning import best_time

    kind, dtype = shape_class.split()
    op, w_shape, x_shape = REPRESENTATIVE[kind]

    def measure(density: float) -> tuple[float, float]:
        rng = np.random.default_rng(0)
        w = rng.standard_normal(w_shape).astype(np.float32)
        w[rng.random(w_shape) >= density] = 0
        x = rng.standard_normal(x_shape).astype(np.float32)
        attrs = {"pads": [1, 1, 1, 1]} if op == "Conv" else {"transB": 1}
        if dtype == "i8":
            q_op = "Q" + op
            attrs.pop("transB", None)  # QGemm's weight is (N, K) already
            attrs.update(x_scale=0.05, x_zero_point=128, y_scale=0.1, y_zero_point=128,
                         y_dtype="uint8")
            weight = Dense(np.clip(np.rint(w * 40), -127, 127).astype(np.int8),
                           QuantParams(np.array(0.01, np.float32), np.array(0, np.int8)))
            node = Node("layer", q_op, ["x", "w"], ["y"], normalize_attrs(q_op, attrs))
            x = np.clip(np.rint(x * 20) + 128, 0, 255).astype(np.uint8)
            modes = ("dense-i8", "sparse-i8")
        else:
            weight = Dense(w)
            node = Node("layer", op, ["x", "w"], ["y"], normalize_attrs(op, attrs))
            modes = ("dense-f32", "sparse-f32")
        graph = Graph([node], [ValueInfo("x", (None,) + x_shape[1:], str(x.dtype))],
                      [ValueInfo("y", (None,), "float32")], {"w": weight})
        times = []
        for mode in modes:
            ctx = _Context(Model(graph), mode, np.float32)
            ctx.integer = dtype == "i8"
            step = _build_step(node, ctx)
            values = {"x": x}
            times.append(best_time(lambda: step.run(values)))
        return times[0], times[1]

    return measure
