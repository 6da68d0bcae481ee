"""ONNX float import: ``import_onnx(model_or_path) -> Model``.

The importer reads an ONNX model (a path, bytes or an ``onnx.ModelProto``) of opset 7 to 22 and
rewrites it into the zeroskip IR of ``zeroskip.ops``, one normalized form per op:

1. **Parse.** Bytes that do not parse, a missing file or a proto without a graph raise
   ``ModelFormatError`` naming the file. External tensor data is loaded relative to the model's path
   by onnx's own loader; a ``ModelProto`` or bytes whose tensors still point to external files are
   refused (import from the path instead).
2. **Sort** the nodes topologically (stable: the file's order where it is already valid) and give
   every unnamed node the name ``{op}_{index}`` (its position in the file). Value names are kept.
3. **Normalize** each node: fill defaults; turn inputs that later opsets added but that must be
   constants (Clip's bounds, Pad's pads/constant_value/axes, Squeeze/Unsqueeze's and reductions' axes,
   Dropout's ratio and training_mode) into IR attributes; drop attributes that mean nothing at inference
   (BatchNormalization's momentum, MaxPool's storage_order when Indices is unused, Dropout's seed).
4. **Fold constants.** Constant, ConstantOfShape, Shape (of a fully static shape), Gather, Unsqueeze,
   Squeeze, Concat, Cast, Reshape, Identity and Dropout whose inputs are all constant are evaluated
   with NumPy and become initializers. Shape arithmetic on a dynamic dimension is tracked symbolically:
   a Gather of a static dimension folds, and a Reshape whose target is built from its own input's
   dimensions at the same positions (torch's ``x.view(x.size(0), -1)``) gets a constant target with
   0 ("copy this dimension") there, so the graph becomes static. Nodes left without consumers go.
5. **Refuse** what the IR cannot run with ONE ``UnsupportedModelError`` that lists every offending op,
   attribute, output, non-constant input and dtype at once, with counts and the first node of each.

Choices:

* Weights stored as float16 or float64 are **converted to float32** (the engine computes in float32
  and float64 references); graph inputs must be float32 (or int64), so float16/float64 models whose
  inputs have those types are refused.
* An initializer that is also listed as a graph input (old model-zoo files, or IR >= 4 "overridable
  defaults") is a constant, not an input.
* Only the default domain ("" / "ai.onnx") is imported; nodes of any other domain are refused,
  except the com.microsoft ops onnxruntime's static quantizer emits (QGemm, QLinearAdd,
  QLinearAveragePool, QLinearGlobalAveragePool).
* **Quantized models** (QDQ and QOperator) are mapped onto zeroskip's integer scheme by
  ``formats/onnx_quant.py``, which documents what maps to what and its choices. What both modules
  need (the pending node, the node view handlers read, conv attributes) is in ``onnx_common.py``.
"""

from __future__ import annotations

import heapq
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .._version import __version__
from ..errors import ModelFormatError, UnsupportedModelError
from ..model import DTYPES, Dense, Graph, Model, Node, ValueInfo
from ..ops import normalize_attrs
from ..shapes import infer_shapes
from . import onnx_quant
from .onnx_common import DEFAULT_DOMAINS, OnnxNode, Pending, conv_attrs

MIN_OPSET = 7
MAX_OPSET = 22
"""The default-domain opsets the importer understands."""

FOLDABLE = frozenset({"ConstantOfShape", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast",
                      "Reshape", "Identity", "Dropout"})
"""IR ops evaluated at import when all their inputs are constant (Constant always is)."""

_ISSUE_TITLES = {
    "ops": "unsupported ops",
    "attributes": "unsupported attributes",
    "outputs": "unsupported outputs (used, but only inference outputs are computed)",
    "inputs": "inputs that must be constant",
    "dtypes": "unsupported dtypes",
}


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------

def import_onnx(model_or_path) -> Model:
    """Convert a float ONNX model (a path, bytes or an ``onnx.ModelProto``) to a zeroskip ``Model``.

    Raises ModelFormatError for a file that is missing or does not parse, and UnsupportedModelError
    (listing every problem at once) for ops, attributes, domains, opsets or dtypes zeroskip does not run.
    """
    onnx = _require_onnx()
    proto, path = _read(onnx, model_or_path)
    return _Importer(onnx, proto, path).run()


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise UnsupportedModelError(
            "ONNX import needs the onnx package, which is not installed: "
            "pip install 'zeroskip[onnx]'") from None
    return onnx


def _read(onnx, model_or_path):
    """(ModelProto, path or None) from what the caller gave."""
    path = None
    if isinstance(model_or_path, onnx.ModelProto):
        proto, where = model_or_path, "ONNX model"
    elif isinstance(model_or_path, (bytes, bytearray, memoryview)):
        where = "ONNX bytes"
        try:
            proto = onnx.load_model_from_string(bytes(model_or_path))
        except Exception as err:  # noqa: BLE001 - protobuf raises its own DecodeError and friends
            raise ModelFormatError(f"{where}: not a valid ONNX model ({_short(err)})") from None
    elif isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        where = f"ONNX file {path!r}"
        if not os.path.isfile(path):
            raise ModelFormatError(f"{where}: no such file")
        try:
            proto = onnx.load(path)
        except Exception as err:  # noqa: BLE001 - bad protobuf, missing or unsafe external data
            raise ModelFormatError(f"{where}: cannot be read as an ONNX model ({_short(err)})") from None
    else:
        raise TypeError(f"import_onnx needs a path, bytes or an onnx.ModelProto, "
                        f"not {type(model_or_path).__name__}")
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelFormatError(f"{where}: not an ONNX model (it has no IR version or no graph)")
    return proto, path


def _short(err) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Dim:
    """Symbolic entry of a shape vector: dimension ``axis`` of value ``value`` (not known statically)."""

    value: str
    axis: int


@dataclass
class _Sym:
    """A 0-d or 1-d int tensor computed from shapes: its entries are ints or ``_Dim``s."""

    entries: list
    scalar: bool = False

    def constant(self):
        if any(isinstance(e, _Dim) for e in self.entries):
            return None
        array = np.array(self.entries, dtype=np.int64)
        return array.reshape(()) if self.scalar else array


def _as_ints(array) -> list[int]:
    return [int(v) for v in np.asarray(array).reshape(-1)]


# --------------------------------------------------------------------------------------------------
# Per-op normalization: each handler returns (ir_op, inputs, attrs) and pops what it understood.
# --------------------------------------------------------------------------------------------------

def _same(n):
    return n.op, n.inputs, n.take_ir(n.op)


def _gemm(n):
    n.take("broadcast")  # opset < 7 only; the IR broadcasts C
    return "Gemm", n.inputs, n.take_ir("Gemm")


def _conv(n):
    return "Conv", n.inputs, conv_attrs(n, n.input(1))


def _pool(n):
    attrs = n.take_ir(n.op)
    n.take("storage_order")  # only shapes the Indices output, which must be unused (checked later)
    return n.op, n.inputs, attrs


def _clip(n):
    attrs = {}
    if n.opset < 11:
        for key in ("min", "max"):
            if key in n.attrs:
                attrs[key] = float(n.take(key))
    else:
        for i, key in ((1, "min"), (2, "max")):
            value = n.const_input(i, key)
            if value is not None:
                attrs[key] = value.reshape(-1)[0].item() if value.size else None
    return "Clip", n.inputs[:1], attrs


def _softmax(n):
    if n.opset >= 13:
        return "Softmax", n.inputs, {"axis": int(n.take("axis", -1)), "coerce_2d": 0}
    axis = int(n.take("axis", 1))
    rank = n.rank(0)
    # Flattening from the last axis on is the plain softmax over that axis.
    last = axis == -1 or (rank is not None and axis % rank == rank - 1)
    return "Softmax", n.inputs, {"axis": axis, "coerce_2d": 0 if last else 1}


def _batchnorm(n):
    n.take("momentum")
    n.take("is_test")
    n.take("consumed_inputs")
    spatial = n.take("spatial", 1)
    if spatial != 1:
        n.bad_attr("spatial", spatial)
    training = n.take("training_mode", 0)
    if training != 0:
        n.bad_attr("training_mode", training)
    return "BatchNormalization", n.inputs, n.take_ir("BatchNormalization")


def _dropout(n):
    n.take("seed")
    n.take("ratio")
    n.take("is_test")  # opset < 7; inference never drops
    if n.opset >= 12:
        training = n.const_input(2, "training_mode")
        if training is not None and bool(np.asarray(training).reshape(-1)[0]):
            n.bad_attr("training_mode", 1)
    return "Dropout", n.inputs[:1], {}


def _reshape(n):
    if n.const(1) is not None and n.const(1).dtype != np.int64:
        n.imp.consts[n.input(1)] = n.const(1).astype(np.int64)
    return "Reshape", n.inputs, n.take_ir("Reshape")


def _pad(n):
    attrs = {"mode": n.take("mode", "constant")}
    if n.opset < 11:
        if "pads" in n.attrs:
            attrs["pads"] = [int(p) for p in n.take("pads")]
        attrs["value"] = float(n.take("value", 0.0))
    else:
        pads = n.const_input(1, "pads")
        value = n.const_input(2, "constant_value")
        axes = n.const_input(3, "axes")
        if value is not None and value.size:
            attrs["value"] = value.reshape(-1)[0].item()
        if pads is not None:
            pads = _as_ints(pads)
            if axes is not None:
                rank = n.rank(0)
                if rank is None:
                    n.issues.append(("inputs", "Pad.axes (input rank unknown)"))
                else:
                    full = [0] * (2 * rank)
                    axes = _as_ints(axes)
                    for i, axis in enumerate(axes):
                        full[axis % rank] = pads[i]
                        full[axis % rank + rank] = pads[i + len(axes)]
                    pads = full
            attrs["pads"] = pads
        elif not n.input(1):
            n.issues.append(("inputs", "Pad.pads (missing)"))
    if attrs["mode"] not in ("constant", "reflect", "edge"):
        n.bad_attr("mode", attrs["mode"])
    return "Pad", n.inputs[:1], attrs


def _axes_op(n):
    """Squeeze/Unsqueeze: axes is an attribute before opset 13, an input from 13 on."""
    if n.opset < 13:
        axes = n.take("axes")
    else:
        axes = n.const_input(1, "axes")
    attrs = {} if axes is None else {"axes": _as_ints(axes)}
    return n.op, n.inputs[:1], attrs


_AXES_INPUT_SINCE = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18}
"""From this opset on, a reduction's axes are an (optional) input rather than an attribute."""


def _reduce(n):
    attrs = n.take_ir(n.op)
    if n.opset >= _AXES_INPUT_SINCE[n.op]:
        axes = n.const_input(1, "axes")
        attrs["axes"] = None if axes is None else _as_ints(axes)
    elif attrs.get("axes") is not None:
        attrs["axes"] = _as_ints(attrs["axes"])
    return n.op, n.inputs[:1], attrs


def _cast(n):
    to = n.take("to")
    n.take("saturate")  # only affects float8 targets, which are refused anyway
    n.take("round_mode")
    name = _onnx_dtype_name(n.imp.onnx, to)
    if name not in DTYPES:
        n.bad_attr("to", n.imp.onnx.TensorProto.DataType.Name(to) if name is None else name)
    return "Cast", n.inputs, {"to": name}


def _constant_of_shape(n):
    value = n.take("value")
    if value is None:
        value = np.zeros(1, np.float32)
    if value.dtype.name not in DTYPES:
        n.bad_attr("value", f"<{value.dtype.name} tensor>")
    return "ConstantOfShape", n.inputs, {"value": value.reshape(-1)[0].item() if value.size else 0,
                                         "dtype": value.dtype.name}


def _shape(n):
    return "Shape", n.inputs, n.take_ir("Shape")


_HANDLERS = {op: _same for op in (
    "MatMul", "Add", "Sub", "Mul", "Div", "Sum", "Pow", "Sqrt", "Exp", "Relu", "LeakyRelu", "Sigmoid", "Tanh",
    "GlobalAveragePool", "GlobalMaxPool", "LRN", "Flatten", "Transpose", "Concat", "Identity",
    "Gather")}
_HANDLERS.update({
    "Conv": _conv, "Gemm": _gemm, "Clip": _clip, "Softmax": _softmax, "MaxPool": _pool,
    "AveragePool": _pool, "BatchNormalization": _batchnorm, "Reshape": _reshape, "Pad": _pad,
    "Dropout": _dropout, "Shape": _shape, "Unsqueeze": _axes_op, "Squeeze": _axes_op, "Cast": _cast,
    "ConstantOfShape": _constant_of_shape, "ReduceMean": _reduce, "ReduceSum": _reduce,
    "ReduceMax": _reduce,
})


def _onnx_dtype_name(onnx, elem_type):
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # noqa: BLE001 - unknown or exotic (float8, string) element types
        return None


# --------------------------------------------------------------------------------------------------
# Constant evaluation (NumPy, keeping the ONNX dtypes)
# --------------------------------------------------------------------------------------------------

def _fold(op, args, attrs):
    if op in ("Identity", "Dropout"):
        return args[0]
    if op == "Cast":
        return args[0].astype(np.dtype(attrs["to"]))
    if op == "Reshape":
        x, target = args[0], _as_ints(args[1])
        if not attrs["allowzero"]:
            target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
        return x.reshape(target)
    if op == "Unsqueeze":
        rank = args[0].ndim + len(attrs["axes"])
        return np.expand_dims(args[0], tuple(sorted(a % rank for a in attrs["axes"])))
    if op == "Squeeze":
        x = args[0]
        if attrs["axes"] is None:
            return np.squeeze(x)
        return np.squeeze(x, axis=tuple(a % x.ndim for a in attrs["axes"]))
    if op == "Concat":
        return np.concatenate(args, axis=attrs["axis"])
    if op == "Gather":
        data, indices = args
        axis = attrs["axis"] % data.ndim
        indices = np.where(indices < 0, indices + data.shape[axis], indices)
        return np.take(data, indices, axis=axis)
    if op == "ConstantOfShape":
        return np.full(_as_ints(args[0]), attrs["value"], dtype=np.dtype(attrs["dtype"]))
    raise AssertionError(op)


# --------------------------------------------------------------------------------------------------
# The importer
# --------------------------------------------------------------------------------------------------

class _Importer:
    def __init__(self, onnx, proto, path):
        self.onnx = onnx
        self.proto = proto
        self.path = path
        self.where = f"ONNX file {path!r}" if path else "ONNX model"
        self.graph = proto.graph
        self.opset = self._opset()
        self.consts: dict[str, np.ndarray] = {}
        self.syms: dict[str, _Sym] = {}
        self.shapes: dict[str, tuple | None] = {}

    # -- set-up ---------------------------------------------------------------------------------
    def _opset(self) -> int:
        opset = None
        for entry in self.proto.opset_import:
            if entry.domain in DEFAULT_DOMAINS:
                opset = int(entry.version)
        if opset is None:
            raise UnsupportedModelError(f"{self.where}: imports no ai.onnx opset; zeroskip imports "
                                        f"opsets {MIN_OPSET} to {MAX_OPSET}")
        if not MIN_OPSET <= opset <= MAX_OPSET:
            raise UnsupportedModelError(f"{self.where}: ONNX opset {opset} is not supported; "
                                        f"zeroskip imports opsets {MIN_OPSET} to {MAX_OPSET}")
        return opset

    def attr_value(self, attr):
        value = self.onnx.helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, self.onnx.TensorProto):
            return self.tensor(value)
        if isinstance(value, (list, tuple)):
            return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
        return value

    def tensor(self, t) -> np.ndarray:
        if t.data_location == self.onnx.TensorProto.EXTERNAL and not t.raw_data:
            location = {e.key: e.value for e in t.external_data}.get("location", "?")
            raise ModelFormatError(
                f"{self.where}: tensor {t.name!r} keeps its data in the external file {location!r}; "
                f"import the model from its path so the data can be found next to it")
        try:
            return np.asarray(self.onnx.numpy_helper.to_array(t))
        except Exception as err:  # noqa: BLE001 - truncated raw_data, bad dims
            raise ModelFormatError(f"{self.where}: tensor {t.name!r} cannot be read "
                                   f"({_short(err)})") from None

    def sparse_tensor(self, s) -> np.ndarray:
        values = self.tensor(s.values)
        indices = self.tensor(s.indices).astype(np.int64)
        dense = np.zeros(tuple(s.dims), dtype=values.dtype)
        if indices.ndim == 2:
            dense[tuple(indices.T)] = values
        else:
            dense.reshape(-1)[indices] = values
        return dense

    def _infer_shapes(self):
        """Static shapes from onnx's shape inference: name -> tuple (None for unknown dims) or None."""
        inferred = self.proto
        for data_prop in (True, False):  # data propagation sees through Shape->Gather->Concat
            try:
                inferred = self.onnx.shape_inference.infer_shapes(self.proto, data_prop=data_prop)
                break
            except Exception:  # noqa: BLE001 - inference is a help, not a requirement
                continue
        graph = inferred.graph
        for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
            self.shapes[vi.name] = self._vi_shape(vi)

    def _vi_shape(self, vi):
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
            return None
        return tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in t.shape.dim)

    def rank_of(self, name):
        shape = self.shape_of(name)
        return None if shape is None else len(shape)

    def shape_of(self, name):
        if not name:
            return None
        if name in self.consts:
            return tuple(self.consts[name].shape)
        return self.shapes.get(name)

    # -- the passes -----------------------------------------------------------------------------
    def run(self) -> Model:
        graph = self.graph
        for t in graph.initializer:
            self.consts[t.name] = self.tensor(t)
        for s in graph.sparse_initializer:
            self.consts[s.values.name] = self.sparse_tensor(s)
        self._infer_shapes()
        self.quant = onnx_quant.QuantImport(self)
        inputs = [vi for vi in graph.input if vi.name not in self.consts]
        protos = self._sorted(self._named_nodes(), {vi.name for vi in inputs})

        used = defaultdict(int)  # how many readers each value has in the ONNX graph
        for _, proto in protos:
            for name in proto.input:
                used[name] += 1
        graph_outputs = [vi.name for vi in graph.output]
        for name in graph_outputs:
            used[name] += 1
        self.used = used
        self.names = set(self.consts) | {vi.name for vi in graph.input} | {
            out for _, p in protos for out in p.output}

        pending = []
        for name, proto in protos:
            node = self._convert(name, proto)
            if isinstance(node, list):  # quantized ops: none (folded), one, or an expansion
                pending.extend(node)
            elif node is not None:
                pending.append(node)
        pending = self._live(pending, graph_outputs)
        if self.quant.qconst or self.quant.act:
            pending = self._live(onnx_quant.fuse_qdq(self.quant, pending, graph_outputs),
                                 graph_outputs)

        issues = [issue + (node.name,) for node in pending for issue in node.issues]
        ir_inputs = []
        for vi in inputs:
            info = self._value_info(vi, is_input=True)
            if info.dtype not in ("float32", "int64"):
                issues.append(("dtypes", f"{info.dtype} input", vi.name))
            ir_inputs.append(info)
        wanted = {name for node in pending for name in node.inputs} | set(graph_outputs)
        initializers = {}
        for name, tensor in self.quant.tensors.items():  # int8 weights, int32 biases
            if name in wanted:
                initializers[name] = tensor
        for name, array in self.consts.items():
            if name not in wanted or name in initializers:
                continue
            if array.dtype in (np.float16, np.float64):
                array = array.astype(np.float32)
            if array.dtype.name not in DTYPES:
                issues.append(("dtypes", f"{array.dtype} tensor", name))
                continue
            initializers[name] = Dense(np.array(array, order="C"))  # keeps 0-d tensors 0-d
        if issues:
            raise UnsupportedModelError(f"{self.where}: " + _issue_message(issues))

        nodes = [Node(p.name, p.op, p.inputs, p.outputs, p.attrs) for p in pending]
        self._fallback_shapes = self._output_ranks(nodes, initializers, graph_outputs)
        outputs = [self._value_info(vi, is_input=False) for vi in graph.output]
        ir = Graph(nodes=nodes, inputs=ir_inputs, outputs=outputs, initializers=initializers)
        ir.check()
        return Model(ir, self._metadata(initializers))

    def _named_nodes(self):
        """(unique name, proto) per node, in file order; unnamed nodes become ``{op}_{index}``."""
        protos = list(self.graph.node)
        given = {p.name for p in protos if p.name}
        seen, out = set(), []
        for index, proto in enumerate(protos):
            name = proto.name
            if not name or name in seen:  # unnamed, or a name used twice: make one up
                base = f"{name}_{index}" if name else f"{proto.op_type}_{index}"
                name, suffix = base, 1
                while name in seen or name in given:
                    name, suffix = f"{base}_{suffix}", suffix + 1
            seen.add(name)
            out.append((name, proto))
        return out

    def _sorted(self, named, input_names):
        """Topological order, stable: among ready nodes the earliest in the file goes first."""
        producer = {}
        for index, (name, proto) in enumerate(named):
            for out in proto.output:
                if out:
                    producer[out] = index
        known = set(input_names) | set(self.consts)
        waiting = [0] * len(named)
        readers = defaultdict(list)
        for index, (name, proto) in enumerate(named):
            for inp in set(proto.input):
                if not inp or inp in known:
                    continue
                if inp not in producer:
                    raise ModelFormatError(f"{self.where}: node {name!r} ({proto.op_type}) reads "
                                           f"{inp!r}, which no node, input or initializer defines")
                waiting[index] += 1
                readers[producer[inp]].append(index)
        ready = [i for i, count in enumerate(waiting) if count == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            index = heapq.heappop(ready)
            order.append(named[index])
            for reader in readers[index]:
                waiting[reader] -= 1
                if waiting[reader] == 0:
                    heapq.heappush(ready, reader)
        if len(order) != len(named):
            stuck = next(named[i][0] for i, count in enumerate(waiting) if count)
            raise ModelFormatError(f"{self.where}: the graph has a cycle (through node {stuck!r})")
        return order

    def _convert(self, name, proto):
        """Normalize one node; fold it (returning None) when its value is known at import.

        Quantization nodes (``onnx_quant.handles``) return a list of pending nodes instead.
        """
        if onnx_quant.handles(proto):
            n = OnnxNode(self, proto, name)
            try:
                return self.quant.convert(n)
            except (ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
                if isinstance(err, (ModelFormatError, UnsupportedModelError)):
                    raise
                raise ModelFormatError(f"{self.where}: node {name!r} ({n.op}) is malformed "
                                       f"({_short(err)})") from None
        if proto.domain not in DEFAULT_DOMAINS:
            return Pending(name, proto.op_type, list(proto.input), list(proto.output), {},
                            [("ops", f"{proto.domain}.{proto.op_type}")])
        n = OnnxNode(self, proto, name)
        if n.op == "Constant":
            self._constant(n)
            if not n.issues:
                return None
            return Pending(name, "Constant", [], n.outputs, {}, n.issues)
        handler = _HANDLERS.get(n.op)
        if handler is None:
            return Pending(name, n.op, n.inputs, n.outputs, {}, [("ops", n.op)])
        try:
            op, inputs, attrs = handler(n)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
            if isinstance(err, (ModelFormatError, UnsupportedModelError)):
                raise
            raise ModelFormatError(f"{self.where}: node {name!r} ({n.op}) is malformed "
                                   f"({_short(err)})") from None
        for key, value in n.attrs.items():  # whatever the handler did not understand
            n.bad_attr(key, value)
        self._check_outputs(n)
        try:
            attrs = normalize_attrs(op, attrs)
        except KeyError as err:
            n.issues.append(("attributes", f"{op}: {err.args[0]}"))
        inputs = list(inputs)
        while inputs and inputs[-1] == "":
            inputs.pop()
        node = Pending(name, op, inputs, n.outputs[:1], attrs, n.issues)
        if self.quant.act and not node.issues:
            self.quant.after(node)  # MaxPool/shape ops on integer tensors
        if not node.issues and self._try_fold(node):
            return None
        if not node.issues:
            self._track(node)
        return node

    def _constant(self, n):
        value = None
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints",
                    "sparse_value", "value_string", "value_strings"):
            if key not in n.attrs:
                continue
            raw = n.take(key)
            if key == "value":
                value = raw
            elif key == "sparse_value":
                value = self.sparse_tensor(raw) if raw is not None else None
            elif key in ("value_float", "value_floats"):
                value = np.array(raw, dtype=np.float32)
            elif key in ("value_int", "value_ints"):
                value = np.array(raw, dtype=np.int64)
            else:
                n.bad_attr(key, "<string>")
        if value is None and not n.issues:
            n.issues.append(("attributes", "Constant: no value"))
        for key, value_ in n.attrs.items():
            n.bad_attr(key, value_)
        if value is not None and not n.issues:
            self.consts[n.outputs[0]] = np.asarray(value)

    def _check_outputs(self, n):
        """Outputs past the first (Indices, mask, training statistics) must be unused."""
        for i, out in enumerate(n.outputs[1:], start=1):
            if out and self.used.get(out):
                try:
                    label = self.onnx.defs.get_schema(n.op, n.opset).outputs[i].name
                except Exception:  # noqa: BLE001
                    label = f"output{i}"
                n.issues.append(("outputs", f"{n.op}.{label}"))

    def _try_fold(self, node) -> bool:
        out = node.outputs[0]
        args = [self.consts.get(name) for name in node.inputs if name]
        if node.op == "Shape":
            shape = self.shape_of(node.inputs[0])
            if shape is not None and all(d is not None for d in shape):
                dims = shape[node.attrs["start"]:node.attrs["end"]]
                self.consts[out] = np.array(dims, dtype=np.int64)
                return True
            return False
        if node.op not in FOLDABLE or any(a is None for a in args):
            return False
        try:
            self.consts[out] = np.asarray(_fold(node.op, args, node.attrs))
        except Exception as err:  # noqa: BLE001 - a model whose constants do not fit together
            raise ModelFormatError(f"{self.where}: node {node.name!r} ({node.op}) cannot be "
                                   f"evaluated on its constant inputs ({_short(err)})") from None
        return True

    # -- symbolic shape arithmetic ---------------------------------------------------------------
    def _sym(self, name):
        if name in self.syms:
            return self.syms[name]
        value = self.consts.get(name)
        if value is not None and value.dtype.kind in "iu" and value.ndim <= 1:
            return _Sym(_as_ints(value), scalar=value.ndim == 0)
        return None

    def _track(self, node):
        """Record what a shape-arithmetic node computes; fold it if that turns out constant."""
        sym = self._sym_of(node)
        if node.op == "Reshape" and not node.attrs["allowzero"]:
            self._static_reshape(node)
        if sym is None:
            return
        value = sym.constant()
        if value is not None:  # e.g. Gather of a static dimension of a dynamic shape
            self.consts[node.outputs[0]] = value
            node.op = None  # marks the node as folded; dropped by _live
        else:
            self.syms[node.outputs[0]] = sym

    def _sym_of(self, node):
        op, attrs = node.op, node.attrs
        if op == "Shape":
            shape = self.shape_of(node.inputs[0])
            if shape is None:
                return None
            axes = range(len(shape))[attrs["start"]:attrs["end"]]
            return _Sym([shape[k] if shape[k] is not None else _Dim(node.inputs[0], k)
                         for k in axes])
        args = [self._sym(name) for name in node.inputs]
        if op in ("Identity", "Cast") and args[0] is not None:
            if op == "Cast" and not attrs["to"].startswith("int"):
                return None
            return args[0]
        if op == "Gather" and args[0] is not None and not args[0].scalar and attrs["axis"] in (0, -1):
            index = self.consts.get(node.inputs[1])
            if index is None or index.ndim > 1:
                return None
            size = len(args[0].entries)
            picks = [i + size if i < 0 else i for i in _as_ints(index)]
            if any(not 0 <= i < size for i in picks):
                return None
            return _Sym([args[0].entries[i] for i in picks], scalar=index.ndim == 0)
        if op == "Unsqueeze" and args[0] is not None and args[0].scalar \
                and attrs["axes"] in ([0], [-1]):
            return _Sym(list(args[0].entries))
        if op == "Squeeze" and args[0] is not None and not args[0].scalar \
                and len(args[0].entries) == 1 and attrs["axes"] in (None, [0], [-1]):
            return _Sym(list(args[0].entries), scalar=True)
        if op == "Concat" and attrs["axis"] in (0, -1) and all(
                a is not None and not a.scalar for a in args):
            return _Sym([e for a in args for e in a.entries])
        return None

    def _static_reshape(self, node):
        """Reshape(x, [dims of x at the same positions, constants]) -> a constant target with 0s."""
        target = self._sym(node.inputs[1])
        if target is None or target.scalar or node.inputs[1] in self.consts:
            return
        entries = []
        for position, entry in enumerate(target.entries):
            if isinstance(entry, _Dim):
                if entry.value != node.inputs[0] or entry.axis != position:
                    return
                entry = 0  # allowzero=0: copy this dimension of the input
            entries.append(entry)
        name = self.fresh(f"{node.name}/static_shape")
        self.consts[name] = np.array(entries, dtype=np.int64)
        node.inputs[1] = name

    def fresh(self, base) -> str:
        """A value name not used yet in the graph, based on ``base``."""
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def _live(self, pending, graph_outputs):
        """Drop folded nodes, then nodes none of whose outputs is read (working backwards)."""
        pending = [p for p in pending if p.op is not None]
        needed = set(graph_outputs)
        live = []
        for node in reversed(pending):
            if any(out in needed for out in node.outputs):
                live.append(node)
                needed.update(name for name in node.inputs if name)
        return live[::-1]

    # -- outputs ---------------------------------------------------------------------------------
    def _value_info(self, vi, is_input) -> ValueInfo:
        t = vi.type.tensor_type
        dtype = _onnx_dtype_name(self.onnx, t.elem_type) if t.elem_type else None
        shape = self._vi_shape(vi)
        if shape is None:
            shape = self.shapes.get(vi.name)
        if shape is None and vi.name in self.consts:
            shape = tuple(self.consts[vi.name].shape)
        if dtype is None and vi.name in self.consts:
            dtype = self.consts[vi.name].dtype.name
        if shape is None and not is_input:
            shape = self._fallback_shapes.get(vi.name)
        if shape is None:
            what = "input" if is_input else "output"
            raise UnsupportedModelError(f"{self.where}: graph {what} {vi.name!r} has no known rank")
        if dtype is None:
            raise UnsupportedModelError(f"{self.where}: graph value {vi.name!r} has no known "
                                        f"element type")
        return ValueInfo(vi.name, tuple(shape), dtype)

    def _output_ranks(self, nodes, initializers, graph_outputs) -> dict:
        """Shapes of graph outputs that onnx's inference left without a rank (a Reshape to a computed
        target: its length gives the rank), from zeroskip's own shape inference where it knows more."""
        missing = [name for name in graph_outputs if self.shapes.get(name) is None
                   and name not in self.consts]
        if not missing:
            return {}
        found = {}
        producer = {out: node for node in nodes for out in node.outputs}
        for name in missing:
            node = producer.get(name)
            if node is not None and node.op == "Reshape":
                target = self.shape_of(node.inputs[1])
                if target is not None and len(target) == 1 and target[0] is not None:
                    found[name] = (None,) * target[0]
        try:
            inputs = [ValueInfo(vi.name, self._vi_shape(vi) or (),
                                _onnx_dtype_name(self.onnx, vi.type.tensor_type.elem_type))
                      for vi in self.graph.input if vi.name not in self.consts]
            known = infer_shapes(Graph(nodes, inputs, [], initializers))
            for name in missing:
                if name in known and known[name].shape is not None:
                    found[name] = tuple(known[name].shape)
        except Exception:  # noqa: BLE001 - a help only: without it the rank stays unknown
            pass
        return found

    def _metadata(self, initializers) -> dict:
        source = {"format": "onnx", "opset": self.opset,
                  "producer": f"{self.proto.producer_name} {self.proto.producer_version}".strip(),
                  "name": self.graph.name}
        if self.path is not None:
            source["path"] = os.path.basename(self.path)
        weights = {}
        for name, tensor in initializers.items():
            size = tensor.size
            weights[name] = {"origin": "onnx",
                             "sparsity": float(1.0 - tensor.nnz / size) if size else 0.0}
            weights[name].update(self.quant.meta.get(name, {}))
        return {"producer": f"zeroskip {__version__}", "source": source, "weights": weights}


def _issue_message(issues) -> str:
    """'unsupported ops: LSTM ×3 (first: 'lstm_1'), Resize ×1 (first: 'up'); unsupported ...'."""
    groups: dict[str, dict[str, list]] = {}
    for category, label, where in issues:
        entry = groups.setdefault(category, {}).setdefault(label, [0, where])
        entry[0] += 1
    parts = []
    for category, title in _ISSUE_TITLES.items():
        if category in groups:
            items = ", ".join(f"{label} ×{count} (first: {where!r})"
                              for label, (count, where) in groups[category].items())
            parts.append(f"{title}: {items}")
    return "; ".join(parts)


__all__ = ["FOLDABLE", "MAX_OPSET", "MIN_OPSET", "import_onnx"]
