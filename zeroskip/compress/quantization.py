"""Post-training quantization: a float Model and calibration data in, an int8 Model out.

    int8 = zeroskip.quantize(model, calibration=x, method="minmax", activations="uint8")

The result follows the quantization contract of DESIGN.md, the same IR ops the ONNX importer makes
from onnxruntime's int8 models:

* **Weights** (Conv, Gemm, MatMul with a constant weight): int8, symmetric, zero point 0, one
  scale per output channel (or per tensor), in [−127, 127] (``compress.weights``). A pruned zero
  stays exactly zero, so sparse-i8 skips it. An all-zero channel gets scale 1.
* **Bias**: int32 at scale x_scale·w_scale[n], zero point 0 (a MatMul's bias Add is folded in).
* **Activations**: uint8 or int8 per tensor, with the scale and zero point that calibration chose
  (``compress.calibration``). A ReLU or Clip after a layer is fused into it: its range becomes the
  layer's clamp, and the layer's output is calibrated after it.

Which nodes become integer:

* Conv (2-D), Gemm, and MatMul on a 2-D input become QConv / QGemm, unless ``keep_float`` names
  them; Add of two activations of the same shape becomes QAdd; MaxPool, AveragePool and
  GlobalAveragePool on an integer input become their Q forms (MaxPool keeps its input's scale);
  Flatten, Reshape, Transpose, Squeeze and Unsqueeze move integers unchanged.
* Everything else stays float. Where a float value meets an integer op a QuantizeLinear is put in,
  and where an integer value meets a float op (or is a graph output) a DequantizeLinear: the
  graph's inputs and outputs stay float32.

Calibration is streamed: each batch runs through the float model (``engine``, dense-f32), and one
``Observer`` per activation keeps a bounded histogram. The first ``REPORT_ROWS`` rows are kept to
measure, per layer, the SQNR of the int8 model's output (the dense-i8 kernels) against the float
model's, reported worst first in ``metadata["quantization"]["layers"]``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from .. import quantmath
from ..errors import CompressionError, InputError, UnsupportedModelError
from ..model import Dense, Graph, Model, Node, QuantParams, ValueInfo
from ..ops import QUANTIZED_OPS, normalize_attrs
from ..shapes import infer_shapes
from .calibration import ACTIVATIONS, METHODS, Observer, activation_params, sqnr_db
from .pruning import named_nodes
from .weights import choose_weight_scales, quantize_weights

CALIBRATION_BATCH = 32
"""Rows per batch when the calibration data is one array."""
REPORT_ROWS = 64
"""Rows of calibration data kept (the first ones) to measure each layer's SQNR."""

_SHAPE_OPS = frozenset({"Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze"})
_ACTIVATIONS = ("Relu", "Clip")


@dataclass
class _Step:
    """One node of the float graph and what it becomes.

    kind: "linear" (QConv/QGemm), "add" (QAdd), "maxpool", "avgpool", "gap", "shape" (integers
    pass through) or "float". ``node`` is the float node; ``out`` the float name of the value the
    step produces (after a fused activation); ``clip`` the fused activation's (min, max)."""

    kind: str
    node: Node
    out: str
    clip: tuple = (None, None)
    bias_add: Node | None = None  # a MatMul's bias Add, folded into the QGemm
    fused: list = field(default_factory=list)  # names of the nodes folded into this step


def quantize(model: Model, calibration, method="minmax", activations="uint8", per_channel=True,
             keep_float=(), percentile=99.99, progress=True) -> Model:
    """An int8 copy of float ``model`` (see the module doc); ``model`` itself is not changed.

    calibration — an array (a single-input model's samples, batch first), a feed dict, or an
    iterable of either; method — "minmax", "percentile", "mse" or "entropy"; activations — "uint8"
    or "int8"; per_channel — one weight scale per output channel (else one per tensor);
    keep_float — node names or op types left in float; percentile — for method="percentile", the
    share of values kept inside the range on each side, in (50, 100]; progress — a tqdm bar over
    the calibration batches.
    """
    _check_arguments(model, method, activations, percentile)
    from ..engine.passes import optimize

    float_model = optimize(model)
    graph = float_model.graph
    keep = named_nodes(graph, keep_float, "keep_float")
    shapes = infer_shapes(graph)
    steps, observe = _plan(graph, shapes, keep)
    if not any(s.kind == "linear" for s in steps):
        raise CompressionError("model: has no Conv, Gemm or MatMul with a constant weight to "
                               "quantize (or keep_float names them all)")
    observers, kept_rows, batches, rows = _calibrate(float_model, shapes, sorted(observe),
                                                     calibration, progress)
    params = {}
    for name in sorted(observe):
        lo, hi = observers[name].range(method, percentile=percentile)
        params[name] = activation_params(lo, hi, activations)
    result, layers = _emit(float_model, steps, params, activations, per_channel, method)
    report = _report(float_model, result, layers, kept_rows, shapes, params)
    meta = result.metadata
    meta["quantization"] = {
        "method": method, "activations": activations,
        "weights": "per-channel" if per_channel else "per-tensor",
        **({"percentile": float(percentile)} if method == "percentile" else {}),
        "calibration_batches": batches, "calibration_rows": rows,
        "report_rows": _rows(kept_rows), "keep_float": sorted(keep), "layers": report}
    result.graph.check()
    return result


# --------------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------------

def _check_arguments(model, method, activations, percentile):
    if not isinstance(model, Model):
        raise CompressionError(f"model: expected a zeroskip Model, got {type(model).__name__}")
    if method not in METHODS:
        raise CompressionError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    if activations not in ACTIVATIONS:
        raise CompressionError(f"activations={activations!r}: expected 'uint8' or 'int8'")
    try:
        p = float(percentile)
    except (TypeError, ValueError):
        raise CompressionError(f"percentile={percentile!r}: expected a number in (50, 100]") from None
    if not 50.0 < p <= 100.0:
        raise CompressionError(f"percentile={percentile!r}: expected a number in (50, 100]")
    graph = model.graph
    quantized = [n.name for n in graph.nodes if n.op in QUANTIZED_OPS]
    quantized += [k for k, t in graph.initializers.items() if t.quant is not None]
    if quantized:
        raise CompressionError(f"model: is already quantized ({quantized[0]!r}); quantize the "
                               f"float model")


# --------------------------------------------------------------------------------------------------
# the plan: which nodes become integer (no data needed)
# --------------------------------------------------------------------------------------------------

def _plan(graph: Graph, shapes: dict, keep: set) -> tuple[list[_Step], set]:
    """The steps in graph order, and the float values whose range calibration must measure."""
    readers: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for name in node.inputs:
            if name:
                readers.setdefault(name, []).append(node)
    outputs = {v.name for v in graph.outputs}
    init = graph.initializers

    def only_reader(value):
        found = readers.get(value, [])
        return found[0] if len(found) == 1 and value not in outputs else None

    def fuse_activation(step):
        reader = only_reader(step.out)
        if reader is not None and reader.op in _ACTIVATIONS and reader.name not in keep:
            step.clip = (0.0, None) if reader.op == "Relu" else (
                reader.attrs.get("min"), reader.attrs.get("max"))
            step.out = reader.outputs[0]
            step.fused.append(reader.name)
        return step

    integer: dict[str, str] = {}  # float value -> the value whose parameters it uses
    observe: set = set()
    steps: list[_Step] = []
    absorbed: set = set()
    for node in graph.nodes:
        if node.name in absorbed:
            continue
        step = None
        if node.name not in keep:
            if node.op in ("Conv", "Gemm", "MatMul") and _linear_ok(node, shapes, init):
                step = _Step("linear", node, node.outputs[0])
                if node.op == "MatMul":
                    add = only_reader(node.outputs[0])
                    if add is not None and add.name not in keep and _bias_of(add, node, init):
                        step.bias_add, step.out = add, add.outputs[0]
                        step.fused.append(add.name)
                fuse_activation(step)
            elif (node.op == "Add" and all(n not in init for n in node.inputs)
                  and any(n in integer for n in node.inputs) and _same_shape(shapes, node.inputs)):
                step = fuse_activation(_Step("add", node, node.outputs[0]))
            elif node.inputs and node.inputs[0] in integer:
                kind = {"MaxPool": "maxpool", "AveragePool": "avgpool",
                        "GlobalAveragePool": "gap"}.get(node.op)
                if kind is None and node.op in _SHAPE_OPS:
                    kind = "shape"
                if kind is None and _spatial_mean(node, shapes):
                    kind = "gap"
                if kind is not None:
                    step = _Step(kind, node, node.outputs[0])
        if step is None:
            steps.append(_Step("float", node, node.outputs[0]))
            continue
        absorbed.update(step.fused)
        steps.append(step)
        # Inputs that arrive in float get a QuantizeLinear, so calibration measures them.
        ins = [node.inputs[0]] if step.kind != "add" else list(node.inputs)
        for name in ins:
            if name not in integer:
                integer[name] = name
                observe.add(name)
        if step.kind in ("maxpool", "shape"):
            integer[step.out] = integer[node.inputs[0]]
        else:
            integer[step.out] = step.out
            observe.add(step.out)
    return steps, observe


def _spatial_mean(node: Node, shapes: dict) -> bool:
    """A ReduceMean over the two spatial axes of an NCHW tensor: a global average pool (torch's
    exporter writes adaptive_avg_pool2d(1) this way)."""
    if node.op != "ReduceMean" or not node.attrs.get("axes"):
        return False
    x = shapes.get(node.inputs[0])
    if x is None or x.shape is None or len(x.shape) != 4:
        return False
    return sorted(a % 4 for a in node.attrs["axes"]) == [2, 3]


def _linear_ok(node: Node, shapes: dict, init: dict) -> bool:
    w = init.get(node.inputs[1])
    if w is None or w.dtype.kind != "f":
        return False
    if node.op == "Conv":
        bias_ok = len(node.inputs) < 3 or not node.inputs[2] or node.inputs[2] in init
        return len(w.shape) == 4 and bias_ok
    if len(w.shape) != 2:
        return False
    x = shapes.get(node.inputs[0])
    if x is None or x.shape is None or len(x.shape) != 2:
        return False
    if node.op == "Gemm":
        if node.attrs.get("transA"):
            return False
        if len(node.inputs) > 2 and node.inputs[2]:
            c = init.get(node.inputs[2])
            n_out = w.shape[0] if node.attrs.get("transB") else w.shape[1]
            return c is not None and _per_output(c.shape, n_out)
    return True


def _per_output(shape, n_out) -> bool:
    return tuple(shape) in ((), (1,), (n_out,), (1, n_out), (1, 1))


def _bias_of(add: Node, matmul: Node, init: dict) -> bool:
    """Whether ``add`` adds a constant per-output bias to ``matmul``'s output."""
    other = add.inputs[1] if add.inputs[0] == matmul.outputs[0] else add.inputs[0]
    c = init.get(other)
    return c is not None and c.dtype.kind == "f" and _per_output(c.shape,
                                                                 init[matmul.inputs[1]].shape[1])


def _same_shape(shapes, names) -> bool:
    found = [shapes.get(n) for n in names]
    if any(s is None or s.shape is None for s in found):
        return False
    return found[0].shape == found[1].shape and None not in found[0].shape[1:]


# --------------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------------

def _batches(calibration, input_names):
    """Feed dicts from the calibration argument (see ``quantize``)."""
    if isinstance(calibration, np.ndarray) or isinstance(calibration, dict):
        items = [calibration]
    elif isinstance(calibration, (str, bytes)) or not hasattr(calibration, "__iter__"):
        raise CompressionError(f"calibration: expected an array, a feed dict or an iterable of "
                               f"them, got {type(calibration).__name__}")
    else:
        items = calibration
    for item in items:
        if isinstance(item, dict):
            yield item
            continue
        array = np.asarray(item) if not isinstance(item, np.ndarray) else item
        if len(input_names) != 1:
            raise CompressionError(f"calibration: the model has {len(input_names)} inputs "
                                   f"({', '.join(input_names)}); give feed dicts")
        if array.ndim == 0:
            raise CompressionError("calibration: an array needs a batch axis")
        if isinstance(calibration, np.ndarray):
            for start in range(0, max(len(array), 1), CALIBRATION_BATCH):
                yield {input_names[0]: array[start:start + CALIBRATION_BATCH]}
        else:
            yield {input_names[0]: array}


def _calibrate(float_model: Model, shapes: dict, observe: list, calibration, progress):
    from tqdm import tqdm

    from ..engine.session import Session

    graph = float_model.graph
    extra = [shapes[name] for name in observe if name not in {v.name for v in graph.outputs}]
    watched = Model(Graph(graph.nodes, graph.inputs, list(graph.outputs) + extra,
                          graph.initializers), float_model.metadata)
    session = Session(watched, "dense-f32")
    input_names = [v.name for v in graph.inputs]
    observers = {name: Observer() for name in observe}
    kept: dict[str, list] = {name: [] for name in input_names}
    total = len(calibration) if isinstance(calibration, (list, tuple)) else (
        -(-len(calibration) // CALIBRATION_BATCH) if isinstance(calibration, np.ndarray) else None)
    batches = rows = 0
    for i, feeds in enumerate(tqdm(_batches(calibration, input_names), total=total,
                                   desc="calibrating", unit="batch", disable=not progress,
                                   leave=False)):
        arrays = {}
        for name, value in feeds.items():
            array = np.asarray(value)
            if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                raise CompressionError(f"calibration batch {i}: input {name!r} has NaN or "
                                       f"infinite values")
            arrays[name] = array
        if any(a.size == 0 for a in arrays.values()):
            raise CompressionError(f"calibration batch {i}: is empty")
        try:
            values = session.run(arrays)
        except InputError as err:
            raise CompressionError(f"calibration batch {i}: {err}") from None
        for name in observe:
            observers[name].update(values[name])
        batches += 1
        rows += len(arrays[input_names[0]]) if input_names[0] in arrays else 0
        room = REPORT_ROWS - _rows(kept)
        if room > 0 and set(arrays) == set(kept):
            for name in input_names:
                kept[name].append(arrays[name][:room])
    if batches == 0:
        raise CompressionError("calibration: has no batches; give at least one sample")
    return observers, {k: np.concatenate(v) for k, v in kept.items() if v}, batches, rows


def _rows(kept) -> int:
    if not kept:
        return 0
    first = next(iter(kept.values()))
    if isinstance(first, list):
        return sum(len(a) for a in first)
    return len(first)


# --------------------------------------------------------------------------------------------------
# emitting the integer graph
# --------------------------------------------------------------------------------------------------

class _Emitter:
    """Builds the new node list; tracks each value's integer and float names."""

    def __init__(self, float_model: Model, params: dict, activations: str):
        graph = float_model.graph
        self.graph = graph
        self.params = params
        self.dtype = activations
        self.nodes: list[Node] = []
        self.initializers = dict(graph.initializers)
        self.taken = ({n.name for n in graph.nodes} | set(graph.initializers)
                      | {v.name for v in graph.inputs} | {o for n in graph.nodes for o in n.outputs})
        self.int_name: dict[str, str] = {}   # float value -> its integer value's name
        self.source: dict[str, str] = {}     # float value -> the value whose params it has
        self.float_ok: set = {v.name for v in graph.inputs} | set(graph.initializers)

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def act(self, value: str) -> tuple[float, int]:
        return self.params[self.source.get(value, value)]

    def q_input(self, value: str) -> str:
        """The integer name of ``value``, quantizing its float form here if it has none yet."""
        if value not in self.int_name:
            scale, zp = self.params[value]
            name = self.fresh(f"{value}_quantized")
            self.nodes.append(Node(self.fresh(f"{value}/quantize"), "QuantizeLinear", [value],
                                   [name], normalize_attrs("QuantizeLinear", dict(
                                       y_scale=scale, y_zero_point=zp, y_dtype=self.dtype))))
            self.int_name[value] = name
            self.source[value] = value
        return self.int_name[value]

    def f_input(self, value: str) -> str:
        """The float name of ``value``, dequantizing its integer form here if need be."""
        if value not in self.float_ok:
            scale, zp = self.act(value)
            self.nodes.append(Node(self.fresh(f"{value}/dequantize"), "DequantizeLinear",
                                   [self.int_name[value]], [value], normalize_attrs(
                                       "DequantizeLinear", dict(x_scale=scale, x_zero_point=zp))))
            self.float_ok.add(value)
        return value

    def q_output(self, value: str, source: str | None = None) -> str:
        name = self.fresh(f"{value}_quantized")
        self.int_name[value] = name
        self.source[value] = source or value
        return name

    def q_attrs(self, prefix, value):
        scale, zp = self.act(value)
        return {f"{prefix}_scale": scale, f"{prefix}_zero_point": zp}


def _emit(float_model: Model, steps, params, activations, per_channel, method):
    e = _Emitter(float_model, params, activations)
    init = float_model.graph.initializers
    weights_meta = {}
    layers = []  # (report name, op, float output)
    for step in steps:
        node = step.node
        if step.kind == "float":
            inputs = [e.f_input(n) if n else n for n in node.inputs]
            e.nodes.append(Node(node.name, node.op, inputs, list(node.outputs), node.attrs))
            e.float_ok.update(node.outputs)
            continue
        if step.kind == "shape":
            rest = [e.f_input(n) if n else n for n in node.inputs[1:]]
            out = e.q_output(step.out, e.source.get(node.inputs[0], node.inputs[0]))
            e.nodes.append(Node(node.name, node.op, [e.q_input(node.inputs[0])] + rest, [out],
                                node.attrs))
            continue
        if step.kind == "maxpool":
            x = e.q_input(node.inputs[0])
            out = e.q_output(step.out, e.source.get(node.inputs[0], node.inputs[0]))
            e.nodes.append(Node(node.name, "QMaxPool", [x], [out],
                                normalize_attrs("QMaxPool", dict(node.attrs))))
            continue
        y = dict(y_scale=params[step.out][0], y_zero_point=params[step.out][1], y_dtype=activations)
        clip = dict(clip_min=_real(step.clip[0]), clip_max=_real(step.clip[1]))
        if step.kind == "add":
            a, b = (e.q_input(n) for n in node.inputs)
            attrs = dict(**{f"a_{k}": v for k, v in zip(("scale", "zero_point"), e.act(node.inputs[0]))},
                         **{f"b_{k}": v for k, v in zip(("scale", "zero_point"), e.act(node.inputs[1]))},
                         **y, **clip)
            e.nodes.append(Node(node.name, "QAdd", [a, b], [e.q_output(step.out)],
                                normalize_attrs("QAdd", attrs)))
        elif step.kind in ("avgpool", "gap"):
            op = "QAveragePool" if step.kind == "avgpool" else "QGlobalAveragePool"
            x = e.q_input(node.inputs[0])
            own = node.attrs if node.op != "ReduceMean" else {}
            attrs = dict(own, **e.q_attrs("x", node.inputs[0]), **y)
            squeeze = node.op == "ReduceMean" and not node.attrs.get("keepdims", 1)
            out = e.fresh(f"{step.out}_pooled") if squeeze else e.q_output(step.out)
            e.nodes.append(Node(node.name, op, [x], [out], normalize_attrs(op, attrs)))
            if squeeze:  # keepdims=0: (N, C, 1, 1) -> (N, C), integers unchanged
                e.nodes.append(Node(e.fresh(f"{node.name}/squeeze"), "Squeeze", [out],
                                    [e.q_output(step.out)],
                                    normalize_attrs("Squeeze", {"axes": [2, 3]})))
        else:
            e.nodes.append(_linear(e, step, init, y, clip, per_channel, method, weights_meta))
        layers.append((node.name, e.nodes[-1].op if step.kind != "gap" else "QGlobalAveragePool",
                       step.out, e.int_name[step.out]))
    for v in float_model.graph.outputs:
        e.f_input(v.name)
    used = {n for node in e.nodes for n in node.inputs}
    initializers = {k: t for k, t in e.initializers.items() if k in used}
    graph = Graph(e.nodes, list(float_model.graph.inputs), list(float_model.graph.outputs),
                  initializers)
    metadata = copy.deepcopy(float_model.metadata)
    old = metadata.get("weights", {})
    metadata["weights"] = {k: dict(old.get(k, {}), **weights_meta.get(k, {}))
                           for k in initializers if k in old or k in weights_meta}
    return Model(graph, metadata), layers


def _real(value):
    return None if value is None else float(value)


def _linear(e: _Emitter, step: _Step, init, y, clip, per_channel, method, weights_meta) -> Node:
    """The QConv/QGemm of a Conv, Gemm or MatMul step: int8 weight, int32 bias."""
    node = step.node
    x_value = node.inputs[0]
    x = e.q_input(x_value)
    x_scale, x_zp = e.act(x_value)
    w = init[node.inputs[1]].to_numpy().astype(np.float64)
    bias = None
    if node.op == "Conv":
        if len(node.inputs) > 2 and node.inputs[2]:
            bias = init[node.inputs[2]].to_numpy().astype(np.float64).reshape(-1)
        op, attrs = "QConv", dict(node.attrs)
    else:
        op, attrs = "QGemm", {}
        if node.op == "Gemm":
            w = (w if node.attrs.get("transB") else w.T) * float(node.attrs.get("alpha", 1.0))
            if len(node.inputs) > 2 and node.inputs[2]:
                bias = init[node.inputs[2]].to_numpy().astype(np.float64) * float(
                    node.attrs.get("beta", 1.0))
        else:
            w = w.T
            if step.bias_add is not None:
                add = step.bias_add
                other = add.inputs[1] if add.inputs[0] == node.outputs[0] else add.inputs[0]
                bias = init[other].to_numpy().astype(np.float64)
        if bias is not None:
            bias = np.broadcast_to(bias.reshape(-1), (w.shape[0],))
    n_out = w.shape[0]
    axis = 0 if per_channel else None
    w_scale = choose_weight_scales(w, axis)
    q = quantize_weights(w, w_scale, axis)
    w_name = e.fresh(f"{node.inputs[1]}_int8")
    e.initializers[w_name] = Dense(np.ascontiguousarray(q), QuantParams(
        w_scale, np.zeros(w_scale.shape, np.int8), axis))
    weights_meta[w_name] = {"origin": "zeroskip.quantize", "calibration": method,
                            "granularity": "per-channel" if per_channel else "per-tensor",
                            "sparsity": float(1.0 - np.count_nonzero(q) / q.size) if q.size else 0.0}
    inputs = [x, w_name]
    b_int = None
    if bias is not None:
        target = quantmath.bias_scales(x_scale, w_scale, n_out)
        b_int = quantmath.quantize_bias(bias, target)
        if b_int is None:
            raise CompressionError(f"node {node.name!r}: its bias does not fit int32 at scale "
                                   f"x_scale·w_scale; keep it in float with keep_float="
                                   f"({node.name!r},)")
        b_name = e.fresh(f"{node.name}.bias_int32")
        e.initializers[b_name] = Dense(b_int, QuantParams(target, np.zeros(n_out, np.int32), 0))
        weights_meta[b_name] = {"origin": "zeroskip.quantize", "granularity": "per-channel"}
        inputs.append(b_name)
    try:
        quantmath.check_layer_accumulator(q, x_zp, b_int, e.dtype)
    except UnsupportedModelError as err:
        raise CompressionError(f"node {node.name!r} ({node.op}): {err}; keep it in float with "
                               f"keep_float=({node.name!r},)") from None
    attrs.update(e.q_attrs("x", x_value), **y, **clip)
    return Node(node.name, op, inputs, [e.q_output(step.out)], normalize_attrs(op, attrs))


# --------------------------------------------------------------------------------------------------
# the SQNR report
# --------------------------------------------------------------------------------------------------

def _report(float_model, result, layers, kept_rows, shapes, params) -> list[dict]:
    """Per quantized layer: the SQNR (dB) of its dequantized int8 output against the float output,
    on the kept calibration rows; worst first."""
    from ..engine.session import Session

    if not kept_rows:
        return []
    graph = result.graph
    probes, out_of, nodes = {}, {}, list(graph.nodes)
    for name, op, value, int_value in layers:
        scale, zp = params[value]
        probe = f"{value}/report"
        nodes.append(Node(f"{name}/report", "DequantizeLinear", [int_value], [probe],
                          normalize_attrs("DequantizeLinear", dict(x_scale=scale,
                                                                   x_zero_point=zp))))
        probes[name] = probe
        out_of[name] = (op, value)
    outs = list(graph.outputs) + [ValueInfo(p, shapes[out_of[n][1]].shape, "float32")
                                  for n, p in probes.items()]
    probed = Model(Graph(nodes, graph.inputs, outs, graph.initializers), result.metadata)
    got = Session(probed, "dense-i8").run(kept_rows)
    fg = float_model.graph
    wanted = [shapes[v] for _, (_, v) in out_of.items() if v not in {o.name for o in fg.outputs}]
    watched = Model(Graph(fg.nodes, fg.inputs, list(fg.outputs) + wanted, fg.initializers),
                    float_model.metadata)
    want = Session(watched, "dense-f32").run(kept_rows)
    rows = []
    for name, probe in probes.items():
        op, value = out_of[name]
        db = sqnr_db(want[value], got[probe])
        scale, zp = params[value]
        rows.append({"node": name, "op": op, "output": value,
                     "sqnr_db": None if not np.isfinite(db) else round(float(db), 2),
                     "scale": scale, "zero_point": zp})
    return sorted(rows, key=lambda r: np.inf if r["sqnr_db"] is None else r["sqnr_db"])


__all__ = ["CALIBRATION_BATCH", "REPORT_ROWS", "quantize"]
