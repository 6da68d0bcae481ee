"""Graph passes: each takes a ``Model`` and returns a new ``Model`` that computes the same function.

- ``drop_identities``: Identity and inference-mode Dropout disappear; their readers read the input.
- ``fold_constants``: a float node whose inputs are all initializers becomes an initializer.
- ``fold_batchnorm``: BatchNormalization right after a float Conv or Gemm is folded into its weights:
  ``w'[n] = w[n]·γ[n]/√(σ²[n]+ε)``, ``b'[n] = (b[n] − μ[n])·γ[n]/√(σ²[n]+ε) + β[n]``.

Activation fusion (Relu/Clip into the producing Conv/Gemm/Add) leaves the graph as it is:
``find_fusions`` lists the pairs, and the planner (``zeroskip.engine.plan``) applies the clamp in
the producer's epilogue, or undoes a fusion whose producer has no epilogue.
Passes never modify their input model; untouched tensors are shared, not copied.
"""

from __future__ import annotations

import copy

import numpy as np

from ..model import Dense, Graph, Model, Node, ValueInfo
from ..ops import QUANTIZED_OPS
from ..reference import OPS as REFERENCE_OPS

_PASSTHROUGH = ("Identity", "Dropout")


def _clone(model: Model, nodes, initializers) -> Model:
    graph = Graph(nodes=nodes, inputs=list(model.graph.inputs), outputs=list(model.graph.outputs),
                  initializers=initializers)
    metadata = copy.deepcopy(model.metadata)
    return Model(graph, metadata)


def _readers(graph: Graph) -> dict[str, list[Node]]:
    readers: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for name in node.inputs:
            if name:
                readers.setdefault(name, []).append(node)
    return readers


def drop_identities(model: Model) -> Model:
    """Remove Identity/Dropout nodes, unless their output is a graph output fed straight from a
    graph input or an initializer (then there is no producer to rename)."""
    graph = model.graph
    outputs = {v.name for v in graph.outputs}
    rename: dict[str, str] = {}
    producer_of = graph.producers()
    nodes: list[Node] = []
    for node in graph.nodes:
        inputs = [rename.get(name, name) for name in node.inputs]
        if node.op in _PASSTHROUGH:
            source, target = inputs[0], node.outputs[0]
            if target not in outputs:
                rename[target] = source
                continue
            if source in producer_of and source not in outputs and _single_reader(graph, source):
                # Let the producer write the graph output directly.
                for i, kept in enumerate(nodes):
                    if source in kept.outputs:
                        nodes[i] = Node(kept.name, kept.op, kept.inputs,
                                        [target if o == source else o for o in kept.outputs],
                                        kept.attrs)
                rename[source] = target
                continue
        nodes.append(Node(node.name, node.op, inputs, list(node.outputs), node.attrs))
    return _clone(model, nodes, dict(graph.initializers))


def _single_reader(graph: Graph, name: str) -> bool:
    return sum(node.inputs.count(name) for node in graph.nodes) == 1


def fold_constants(model: Model) -> Model:
    """Evaluate float nodes whose inputs are all initializers, once, into new initializers."""
    from ..shapes import infer_shapes

    graph = model.graph
    dtypes = {name: info.dtype for name, info in infer_shapes(graph).items()}
    initializers = dict(graph.initializers)
    values: dict[str, np.ndarray] = {}
    nodes, weights_meta = [], {}
    for node in graph.nodes:
        names = [n for n in node.inputs if n]
        if node.op in QUANTIZED_OPS or not names or not all(n in initializers for n in names):
            nodes.append(node)
            continue
        args = [_value(initializers[n], values, n) if n else None for n in node.inputs]
        result = np.asarray(REFERENCE_OPS[node.op](*args, **node.attrs))
        out = node.outputs[0]
        initializers[out] = Dense(np.ascontiguousarray(result.astype(dtypes.get(out, result.dtype))))
        weights_meta[out] = {"origin": f"folded {node.op} {node.name!r}"}
    if not weights_meta:
        return model
    result = _clone(model, nodes, initializers)
    result.metadata.setdefault("weights", {}).update(weights_meta)
    return _prune_unused(result)


def _value(tensor, cache, name):
    if name not in cache:
        if tensor.quant is not None or tensor.dtype.kind == "f":
            cache[name] = tensor.dequantize()
        else:
            cache[name] = tensor.to_numpy().astype(np.int64)
    return cache[name]


def fold_batchnorm(model: Model) -> Model:
    """Fold each BatchNormalization that alone reads a float Conv's or Gemm's output into it."""
    graph = model.graph
    readers = _readers(graph)
    producer = graph.producers()
    outputs = {v.name for v in graph.outputs}
    init = graph.initializers
    initializers = dict(init)
    replaced: dict[str, Node] = {}  # producer name -> rewritten producer
    dropped: set[str] = set()
    weights_meta = {}
    for bn in graph.nodes:
        if bn.op != "BatchNormalization":
            continue
        x = bn.inputs[0]
        prev = producer.get(x)
        if prev is None or prev.op not in ("Conv", "Gemm") or x in outputs \
                or len(readers.get(x, [])) != 1 or prev.name in replaced:
            continue
        w_name = prev.inputs[1]
        if w_name not in init or not all(n in init for n in bn.inputs[1:]) \
                or init[w_name].quant is not None or init[w_name].dtype.kind != "f":
            continue
        gamma, beta, mean, var = (init[n].dequantize() for n in bn.inputs[1:])
        scale = gamma / np.sqrt(var + bn.attrs["epsilon"])
        w = init[w_name].dequantize()
        b_name = prev.inputs[2] if len(prev.inputs) > 2 and prev.inputs[2] else ""
        if prev.op == "Gemm":
            if prev.attrs["transA"] or w.ndim != 2 or (b_name and init.get(b_name) is None):
                continue
            # y = alpha·x·W' + beta·C: scale the output columns, and C must be a vector over them.
            w = w * (scale[:, None] if prev.attrs["transB"] else scale[None, :])
            c = init[b_name].dequantize() if b_name else np.zeros_like(scale)
            if c.shape not in ((), (1,), scale.shape):
                continue
            bias = (np.broadcast_to(c, scale.shape) * prev.attrs["beta"] - mean) * scale + beta
            attrs = dict(prev.attrs, beta=1.0)
        else:
            if w.shape[0] != scale.shape[0] or (b_name and init.get(b_name) is None):
                continue
            w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
            b = init[b_name].dequantize() if b_name else np.zeros_like(scale)
            bias = (b - mean) * scale + beta
            attrs = dict(prev.attrs)
        new_w, new_b = f"{w_name}:bn", f"{bn.name}:bias"
        initializers[new_w] = Dense(w.astype(np.float32))
        initializers[new_b] = Dense(bias.astype(np.float32))
        weights_meta[new_w] = {"origin": f"{w_name} with {bn.name!r} folded in"}
        weights_meta[new_b] = {"origin": f"{bn.name!r} folded into {prev.name!r}"}
        replaced[prev.name] = Node(prev.name, prev.op, [prev.inputs[0], new_w, new_b],
                                   [bn.outputs[0]], attrs)
        dropped.add(bn.name)
    if not replaced:
        return model
    nodes = [replaced.get(n.name, n) for n in graph.nodes if n.name not in dropped]
    result = _clone(model, nodes, initializers)
    result.metadata.setdefault("weights", {}).update(weights_meta)
    return _prune_unused(result)


def _prune_unused(model: Model) -> Model:
    used = {name for node in model.graph.nodes for name in node.inputs}
    model.graph.initializers = {k: v for k, v in model.graph.initializers.items() if k in used}
    return model


def optimize(model: Model) -> Model:
    """The passes every non-reference mode runs, in order."""
    return fold_batchnorm(fold_constants(drop_identities(model)))


_FUSABLE_PRODUCERS = ("Conv", "Gemm", "MatMul", "Add")


def find_fusions(model: Model) -> dict:
    """{producer name: (activation node, lo, hi)} for each Conv/Gemm/MatMul/Add whose only reader
    is a Relu or Clip (and whose output is not a graph output): the activation can become the clamp
    [lo, hi] of the producer's epilogue (None = open)."""
    graph = model.graph
    outputs = {v.name for v in graph.outputs}
    readers = _readers(graph)
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


def find_residual_adds(model: Model) -> dict:
    """{QConv name: (QAdd node, the QAdd input the conv feeds: 0 or 1)} for each QConv whose only
    reader is a QAdd of the same output type (and whose output is not a graph output), when the
    QAdd's other input is ready before the conv runs: a graph input, or the output of an earlier
    node. Such an add can run in the conv's epilogue: each requantized row of the conv, added to
    the other input's row as the QAdd would add it (a ResNet block's second conv and its shortcut,
    a MobileNetV2 block's projection and its input)."""
    graph = model.graph
    outputs = {v.name for v in graph.outputs}
    readers = _readers(graph)
    ready = {v.name for v in graph.inputs}
    found = {}
    for node in graph.nodes:
        reader = readers.get(node.outputs[0], [])
        if node.op == "QConv" and node.outputs[0] not in outputs and len(reader) == 1 \
                and reader[0].op == "QAdd":
            add = reader[0]
            side = add.inputs.index(node.outputs[0])
            other = add.inputs[1 - side]
            if other != node.outputs[0] and other in ready \
                    and add.attrs["y_dtype"] == node.attrs["y_dtype"]:
                found[node.name] = (add, side)
        ready.update(node.outputs)
    return found


def find_pointwise_depthwise(model: Model, fused: dict) -> dict:
    """{Conv name: depthwise Conv node} for each float 1×1 conv of one group, stride 1 and no pads
    whose output (after its activation, where ``fused`` (find_fusions) fuses one) is read only by a
    3×3 depthwise conv of multiplier 1 over its channels, and is not a graph output: a
    MobileNetV2 block's expand conv and the depthwise conv after it, which the sparse float plan
    may run as one kernel (kernels/pointwise_depthwise.py). Shapes of constant weights only; the
    step builders check the rest."""
    graph = model.graph
    outputs = {v.name for v in graph.outputs}
    readers = _readers(graph)
    weights = graph.initializers
    found = {}
    for node in graph.nodes:
        w = weights.get(node.inputs[1]) if node.op == "Conv" and len(node.inputs) > 1 else None
        if w is None or len(w.shape) != 4 or tuple(w.shape[2:]) != (1, 1) \
                or node.attrs["group"] != 1 or any(s != 1 for s in node.attrs["strides"] or ()) \
                or any(node.attrs["pads"] or ()):
            continue
        out = fused[node.name][0].outputs[0] if node.name in fused else node.outputs[0]
        reader = readers.get(out, [])
        if out in outputs or node.outputs[0] in outputs or len(reader) != 1:
            continue
        dw = reader[0]
        taps = weights.get(dw.inputs[1]) if dw.op == "Conv" and len(dw.inputs) > 1 else None
        if dw.inputs[0] == out and taps is not None \
                and tuple(taps.shape) == (w.shape[0], 1, 3, 3) and dw.attrs["group"] == w.shape[0]:
            found[node.name] = dw
    return found


_FLOAT_TWIN = {"QConv": "Conv", "QGemm": "Gemm", "QAdd": "Add", "QMaxPool": "MaxPool",
               "QAveragePool": "AveragePool", "QGlobalAveragePool": "GlobalAveragePool",
               "QuantizeLinear": "Identity", "DequantizeLinear": "Identity"}
"""The float op each quantized op computes once activations stay real."""


def _real_range(attrs: dict) -> tuple:
    """(lo, hi) in real units that a quantized op's output can take: its type's range, mapped by
    y_scale and y_zero_point, narrowed by a fused clip. A quantizer may drop a Relu because this
    saturation does its work (y_zero_point at the bottom of the range), so the float twin keeps it."""
    lo, hi = attrs.get("clip_min"), attrs.get("clip_max")
    if "y_dtype" in attrs:
        info = np.iinfo(attrs["y_dtype"])
        scale, zp = float(attrs["y_scale"]), int(attrs["y_zero_point"])
        lo = max(scale * (info.min - zp), -np.inf if lo is None else lo)
        hi = min(scale * (info.max - zp), np.inf if hi is None else hi)
    return lo, hi


_INTEGER_ONLY = ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger")
"""Ops with no float form: they stay integer in every mode."""


def _integer_islands(graph: Graph) -> set[str]:
    """Names of the nodes joined, through 8- or 32-bit integer values, to an op of _INTEGER_ONLY.

    Such a node must keep its integers in an f32 mode too: a QuantizeLinear that feeds a
    MatMulInteger, the DequantizeLinear that reads a ConvInteger's quantized neighbour, and so on.
    """
    if not any(node.op in _INTEGER_ONLY for node in graph.nodes):
        return set()
    from ..shapes import infer_shapes

    dtypes = {name: vi.dtype for name, vi in infer_shapes(graph).items()}
    producer = {out: node for node in graph.nodes for out in node.outputs}
    readers = _readers(graph)
    island: set[str] = set()
    stack = [node for node in graph.nodes if node.op in _INTEGER_ONLY]
    while stack:
        node = stack.pop()
        if node.name in island:
            continue
        island.add(node.name)
        for name in node.inputs:
            if dtypes.get(name) in ("uint8", "int8", "int32") and name in producer:
                stack.append(producer[name])
        for name in node.outputs:
            if dtypes.get(name) in ("uint8", "int8", "int32"):
                stack.extend(readers.get(name, []))
    return island


_SAME_PARAMS = frozenset({"QMaxPool", "Pad", "Flatten", "Reshape", "Transpose", "Squeeze",
                          "Unsqueeze", "Identity", "Dropout", "Concat"})
"""Ops whose integer output has its input's scale and zero point (see formats/onnx_quant.py)."""


def _integer_params(graph: Graph) -> dict[str, tuple[float, int]]:
    """value name -> (scale, zero point) for every 8-bit activation the graph's ops define."""
    params: dict[str, tuple[float, int]] = {}
    for node in graph.nodes:
        if "y_scale" in node.attrs:
            params[node.outputs[0]] = (float(node.attrs["y_scale"]),
                                       int(node.attrs["y_zero_point"]))
        elif node.op in _SAME_PARAMS and node.inputs and node.inputs[0] in params:
            params[node.outputs[0]] = params[node.inputs[0]]
    return params


def dequantize_model(model: Model) -> Model:
    """The float model an f32 mode runs on a quantized one: weights dequantized once, activations
    float throughout (QuantizeLinear/DequantizeLinear become Identity, fused clips become Clip).
    Ops with no float form (_INTEGER_ONLY) and the quantized ops joined to them by integer values
    stay as they are."""
    from ..ops import OPS, normalize_attrs

    graph = model.graph
    if not any(node.op in QUANTIZED_OPS for node in graph.nodes):
        return model
    keep = _integer_islands(graph)
    params = _integer_params(graph)
    initializers = dict(graph.initializers)
    nodes: list[Node] = []
    for node in graph.nodes:
        twin = None if node.name in keep else _FLOAT_TWIN.get(node.op)
        if node.op == "Pad" and node.inputs[0] in params and node.name not in keep:
            scale, zp = params[node.inputs[0]]  # an integer pad value becomes its real value
            real = float(np.float32(scale) * np.float32(float(node.attrs["value"]) - zp))
            nodes.append(Node(node.name, "Pad", node.inputs, node.outputs,
                              dict(node.attrs, value=real)))
            continue
        if twin is None:
            nodes.append(node)
            continue
        inputs = list(node.inputs)
        for name in inputs[1:] if node.op in ("QConv", "QGemm") else []:
            if name and initializers[name].quant is not None:
                real = f"{name}:real"
                initializers[real] = Dense(initializers[name].dequantize().astype(np.float32))
                inputs[inputs.index(name)] = real
        if node.op == "QAdd":  # 8-bit constant operands carry their parameters in the node
            for i, side in enumerate("ab"):
                tensor = initializers.get(inputs[i])
                if tensor is not None and tensor.quant is None and tensor.dtype.kind in "iu":
                    real = f"{inputs[i]}:real"
                    scale, zp = node.attrs[f"{side}_scale"], node.attrs[f"{side}_zero_point"]
                    initializers[real] = Dense((np.float64(scale) * (tensor.to_numpy().astype(
                        np.int64) - int(zp))).astype(np.float32))
                    inputs[i] = real
        attrs = {k: v for k, v in node.attrs.items() if k in OPS[twin].attrs}
        if twin == "Gemm":
            attrs["transB"] = 1
        clip = _real_range(node.attrs)
        outputs = list(node.outputs)
        if clip != (None, None):
            outputs = [f"{node.outputs[0]}:unclipped"]
        nodes.append(Node(node.name, twin, inputs, outputs, normalize_attrs(twin, attrs)))
        if clip != (None, None):
            nodes.append(Node(f"{node.name}:clip", "Clip", outputs, list(node.outputs),
                              {"min": None if clip[0] in (None, -np.inf) else float(clip[0]),
                               "max": None if clip[1] in (None, np.inf) else float(clip[1])}))
    result = _clone(model, nodes, initializers)
    # Activations stay real in the f32 modes, so integer graph outputs become float32.
    result.graph.outputs = [ValueInfo(vi.name, vi.shape, "float32" if vi.dtype in ("uint8", "int8")
                                      else vi.dtype) for vi in result.graph.outputs]
    return drop_identities(_prune_unused(result))
