"""ONNX float import: ``import_onnx(model_or_path) -> Model``.

The importer reads an ONNX model (a path, bytes or an ``onnx.ModelProto``) of any default-domain
opset the installed onnx package knows, and rewrites it into the zeroskip IR of ``zeroskip.ops``,
one normalized form per op:

0. **Versions.** The handlers below are written against the op definitions of opsets 7 to 22
   (``MIN_OPSET``, ``MAX_OPSET``). A model of opset 1 to 6 is first upgraded to opset
   ``UPGRADE_TO`` by onnx's own version converter. In a model of opset 23 or later, each node's
   definition at that opset (``onnx.defs.get_schema(op, opset).since_version``) is imported when
   it is one of opsets 7–22 or a later one listed in ``NEWER_DEFINITIONS`` (checked to mean the
   same for what zeroskip reads: they only added dtypes, or attributes the handlers read);
   otherwise the node is refused, naming the op and its version. An opset newer than the
   installed onnx package knows is refused as a whole (nothing can tell what its ops mean).
1. **Parse.** Bytes that do not parse, a missing file or a proto without a graph raise
   ``ModelFormatError`` naming the file. External tensor data is read by the importer itself,
   from files inside the model's directory only (no absolute path, no ``..``, no symbolic link
   leading out), with offset and length checked against the file and the tensor's dims before
   anything is read; a ``ModelProto`` or bytes whose tensors still point to external files are
   refused (import from the path instead). Every tensor's dims are checked against the data it
   holds before it is turned into an array.
2. **Sort** the nodes topologically (stable: the file's order where it is already valid) and give
   every unnamed node the name ``{op}_{index}`` (its position in the file). Value names are kept.
3. **Normalize** each node: fill defaults; turn inputs that later opsets added but that must be
   constants (Clip's bounds, Pad's pads/constant_value/axes, Squeeze/Unsqueeze's and reductions' axes,
   Dropout's ratio and training_mode) into IR attributes; drop attributes that mean nothing at inference
   (BatchNormalization's momentum, MaxPool's storage_order when Indices is unused, Dropout's seed).
4. **Fold constants.** Constant, ConstantOfShape, Shape (of a fully static shape), Gather, Unsqueeze,
   Squeeze, Concat, Cast, Reshape, Identity and Dropout whose inputs are all constant are evaluated
   with NumPy and become initializers, within a memory allowance (``IMPORT_ROOM``): a fold that
   would not fit stays a node and runs with the model. Shape arithmetic on a dynamic dimension is
   tracked symbolically:
   a Gather of a static dimension folds, and a Reshape whose target is built from its own input's
   dimensions at the same positions (torch's ``x.view(x.size(0), -1)``) gets a constant target with
   0 ("copy this dimension") there, so the graph becomes static. Nodes left without consumers go.
5. **Refuse** what the IR cannot run with ONE ``UnsupportedModelError`` that lists every offending op,
   op version, attribute, output, non-constant input and dtype at once, with counts and the first
   node of each.
6. **Check** the IR graph (``Graph.check``, then zeroskip's own shape inference, so that static
   shapes that do not fit together are a ``ModelFormatError`` naming the node), window attributes
   (kernel_shape, strides, dilations, pads, LRN's size) against ``MAX_WINDOW``, and every value's
   static size against ``MAX_ELEMENTS``.

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
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .._version import __version__
from ..errors import ModelFormatError, UnsupportedModelError
from ..model import DTYPES, Dense, Graph, Model, Node, ValueInfo, check_inputs
from ..ops import MAX_WINDOW, OPS, normalize_attrs
from ..shapes import MAX_RANK, infer_shapes
from . import onnx_quant
from .onnx_common import DEFAULT_DOMAINS, OnnxNode, Pending, conv_attrs

MIN_OPSET = 7
MAX_OPSET = 22
"""The default-domain opsets whose op definitions the handlers were written against."""

UPGRADE_TO = 7
"""The opset a model older than MIN_OPSET is upgraded to by onnx's version converter. The lowest
the importer reads: the converter climbs one opset at a time, each step an adapter per changed op
that may be missing or approximate, so the shortest climb (6 -> 7: ``broadcast``, ``is_test`` and
``consumed_inputs`` dropped for numpy broadcasting and inference-only ops) risks the least."""

NEWER_DEFINITIONS = {
    # op: the newest definition (since_version) checked to mean, for everything zeroskip reads,
    # what the op's definition of opset <= 22 means. What each later version changed:
    "Cast": 28,  # 23, 25, 28: new dtypes (float4, int2, float6); 24: float8e8m0 and round_mode,
                 # which only applies to it (all refused: not zeroskip dtypes)
    "Constant": 25, "ConstantOfShape": 25, "Flatten": 25, "Identity": 25, "Pad": 25,
    "Reshape": 25, "Shape": 25, "Squeeze": 25, "Transpose": 25, "Unsqueeze": 25,
    # ^ 23, 24, 25: new dtypes only (float4e2m1, float8e8m0, int2/uint2), refused by dtype
    "QuantizeLinear": 28,  # 23: the `precision` attribute (0 or float is what zeroskip computes,
                           # anything else is refused) and more scale dtypes; 24, 25, 28: dtypes
    "DequantizeLinear": 28,  # 23: `output_dtype` (only float32 accepted); 24, 25, 28: dtypes
}
"""Op definitions newer than MAX_OPSET that the importer reads; any other op whose definition at
the model's opset is newer than MAX_OPSET is refused, naming the op and its version."""

MAX_ELEMENTS = 1 << 32
"""The most elements any graph input or computed value may have per sample (dynamic sizes counted
as 1): 16 GiB of float32 in one tensor, beyond any model zeroskip runs on a CPU; a file that
declares more is refused at import (UnsupportedModelError)."""


IMPORT_ROOM = 1 << 26
"""Bytes the importer may create besides four times the tensor data the file holds: folded
constants and sparse tensors made dense. A fold beyond it stays a node (it runs with the model);
a sparse tensor beyond it is refused. A hostile file cannot make the import allocate without
bound."""

FOLDABLE = frozenset({"ConstantOfShape", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast",
                      "Reshape", "Identity", "Dropout"})
"""IR ops evaluated at import when all their inputs are constant (Constant always is)."""

_MALFORMED = (ValueError, TypeError, IndexError, KeyError, AttributeError, ArithmeticError)
"""What a handler raises on a node that does not make sense (turned into a ModelFormatError)."""


_ISSUE_TITLES = {
    "ops": "unsupported ops",
    "versions": "op versions zeroskip does not read (changed after the newest it knows)",
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
        try:  # external data is read below, by rules onnx's loader does not enforce everywhere
            proto = onnx.load(path, load_external_data=False)
        except Exception as err:  # noqa: BLE001 - bad protobuf
            raise ModelFormatError(f"{where}: cannot be read as an ONNX model ({_short(err)})") from None
    else:
        raise TypeError(f"import_onnx needs a path, bytes or an onnx.ModelProto, "
                        f"not {type(model_or_path).__name__}")
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelFormatError(f"{where}: not an ONNX model (it has no IR version or no graph)")
    if path is not None:
        _load_external_data(onnx, proto, path, where)
    return proto, path


def _short(err) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


# --------------------------------------------------------------------------------------------------
# Tensor data: sizes checked before anything is allocated, external files read inside the directory
# --------------------------------------------------------------------------------------------------

_SUB_BYTE = ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
"""Element types packed several to a byte (the names a given onnx version knows are used)."""


def _itemsize(onnx, data_type):
    """Bytes per element of a fixed-size element type; None for strings, packed or unknown types."""
    if data_type == onnx.TensorProto.STRING or data_type in {
            getattr(onnx.TensorProto, name, -1) for name in _SUB_BYTE}:
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except Exception:  # noqa: BLE001 - UNDEFINED, or a type this onnx does not know
        return None


def _tensor_label(t) -> str:
    return f"tensor {t.name!r}"


def _check_dims(t, where, label=None):
    """The element count of ``t`` (a Python int: no overflow); ModelFormatError for a negative
    dimension."""
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims):
        raise ModelFormatError(f"{where}: {label or _tensor_label(t)} has dims {dims}; a dimension "
                               f"cannot be negative")
    return math.prod(dims)


def _check_tensor_data(onnx, t, where, label=None):
    """ModelFormatError unless the data ``t`` holds fits its dims: raw_data is exactly count ×
    itemsize bytes; typed fields hold at least one value per 8 elements (packed types), and onnx
    checks the exact count. Runs before any array is made from ``t``, so that dims of 2**40 never
    reach an allocation."""
    label = label or _tensor_label(t)
    count = _check_dims(t, where, label)
    dims = [int(d) for d in t.dims]
    itemsize = _itemsize(onnx, t.data_type)
    if t.HasField("raw_data"):
        have = len(t.raw_data)
        if itemsize is not None and have != count * itemsize:
            raise ModelFormatError(
                f"{where}: {label} has dims {dims}, which need {count} × {itemsize} = "
                f"{count * itemsize} bytes, but its raw_data holds {have}")
        if itemsize is None and count > 8 * have:
            raise ModelFormatError(f"{where}: {label} has dims {dims} ({count} elements) but its "
                                   f"raw_data holds only {have} bytes")
        return
    stored = max(len(t.float_data), len(t.int32_data), len(t.string_data), len(t.int64_data),
                 len(t.double_data), len(t.uint64_data))
    if count > 8 * stored:
        raise ModelFormatError(f"{where}: {label} has dims {dims} ({count} elements) but holds "
                               f"only {stored} values")


def _external_tensors(onnx, proto):
    """Every TensorProto of the model that keeps its data in an external file (subgraphs and
    functions included), walked without recursion."""
    found = []
    graphs, node_lists = [proto.graph], [f.node for f in proto.functions]
    while graphs or node_lists:
        if graphs:
            graph = graphs.pop()
            found.extend(graph.initializer)
            for s in graph.sparse_initializer:
                found.extend((s.values, s.indices))
            node_lists.append(graph.node)
            continue
        for node in node_lists.pop():
            for a in node.attribute:
                if a.HasField("t"):
                    found.append(a.t)
                found.extend(a.tensors)
                sparse = list(a.sparse_tensors) + ([a.sparse_tensor] if a.HasField("sparse_tensor")
                                                   else [])
                for s in sparse:
                    found.extend((s.values, s.indices))
                if a.HasField("g"):
                    graphs.append(a.g)
                graphs.extend(a.graphs)
    return [t for t in found if t.data_location == onnx.TensorProto.EXTERNAL]


def _load_external_data(onnx, proto, path, where):
    """Read every external tensor's bytes into its raw_data, refusing (ModelFormatError) a location
    outside the model's directory, a file that is missing or not regular, an offset or length past
    the file's end, and a length that does not match the tensor's dims."""
    tensors = _external_tensors(onnx, proto)
    if not tensors:
        return
    base = os.path.dirname(os.path.abspath(path))
    real_base = os.path.realpath(base)
    for t in tensors:
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        what = f"{where}: {_tensor_label(t)} keeps its data in the external file {location!r}"
        if not location:
            raise ModelFormatError(f"{where}: {_tensor_label(t)} is marked as external data but "
                                   f"names no file (no 'location')")
        parts = location.replace("\\", "/").split("/")
        if "\0" in location or os.path.isabs(location) or location[1:2] == ":" or ".." in parts:
            raise ModelFormatError(f"{what}, which is not a relative path inside the model's "
                                   f"directory (no absolute path, drive or '..')")
        full = os.path.realpath(os.path.join(base, location))
        if os.path.commonpath([full, real_base]) != real_base:
            raise ModelFormatError(f"{what}, which leads outside the model's directory "
                                   f"(through a symbolic link)")
        if not os.path.isfile(full):
            raise ModelFormatError(f"{what}, which does not exist or is not a regular file")
        size = os.path.getsize(full)
        offset = _external_int(info, "offset", 0, what)
        length = _external_int(info, "length", None, what)
        if offset > size:
            raise ModelFormatError(f"{what}: offset {offset} is past the end of the file "
                                   f"({size} bytes)")
        if length is None:
            length = size - offset
        elif offset + length > size:
            raise ModelFormatError(f"{what}: offset {offset} + length {length} = {offset + length} "
                                   f"is past the end of the file ({size} bytes)")
        count = _check_dims(t, where)
        itemsize = _itemsize(onnx, t.data_type)
        if itemsize is not None and length != count * itemsize:
            raise ModelFormatError(f"{what}: its dims {[int(d) for d in t.dims]} need {count} × "
                                   f"{itemsize} = {count * itemsize} bytes, but it gives "
                                   f"{length} (offset {offset}, file of {size} bytes)")
        try:
            with open(full, "rb") as f:
                f.seek(offset)
                data = f.read(length)
        except OSError as err:
            raise ModelFormatError(f"{what}, which cannot be read ({_short(err)})") from None
        if len(data) != length:
            raise ModelFormatError(f"{what}: the file ended after {len(data)} of {length} bytes")
        t.raw_data = data
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def _external_int(info, key, default, what):
    if key not in info:
        return default
    try:
        value = int(info[key])
    except ValueError:
        value = -1
    if value < 0:
        raise ModelFormatError(f"{what}: its {key} {info[key]!r} is not an integer >= 0")
    return value


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


def _shape_data(array) -> bool:
    """Whether a constant is small integer data onnx's inference may read (a target shape, axes,
    pads): 0-d or 1-d, at most 2·MAX_RANK entries."""
    return array.dtype.kind in "iu" and array.ndim <= 1 and array.size <= 2 * MAX_RANK


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
    axis = int(n.take("axis", -1 if n.opset >= 13 else 1))
    rank = n.rank(0)
    if rank is not None and not -rank <= axis < rank:
        raise ModelFormatError(f"{n.imp.where}: node {n.name!r} (Softmax): axis {axis} is out of "
                               f"range for an input of rank {rank}")
    if n.opset >= 13:
        return "Softmax", n.inputs, {"axis": axis, "coerce_2d": 0}
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

SUPPORTED_OPS = frozenset(_HANDLERS) | {"Constant"} | onnx_quant.DEFAULT_OPS
"""The default-domain ONNX ops the importer converts (some only with certain attributes, dtypes or
constant inputs; the rest are refused as unsupported ops)."""


def _onnx_dtype_name(onnx, elem_type):
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # noqa: BLE001 - unknown or exotic (float8, string) element types
        return None


# --------------------------------------------------------------------------------------------------
# Constant evaluation (NumPy, keeping the ONNX dtypes)
# --------------------------------------------------------------------------------------------------

def _fold_bytes(op, args, attrs) -> int:
    """Bytes ``_fold`` allocates, from shapes alone (0 for the views it returns, and for arguments
    it will refuse)."""
    if op == "Cast":
        return args[0].size * np.dtype(attrs["to"]).itemsize
    if op == "Concat":
        return sum(a.nbytes for a in args)
    if op == "Gather":
        data, indices = args
        rows = data.shape[attrs["axis"] % data.ndim] if data.ndim else 0
        return indices.size * (data.size // rows) * data.itemsize if rows else 0
    if op == "ConstantOfShape":
        dims = _as_ints(args[0])
        if any(d < 0 for d in dims):
            return 0
        return math.prod(dims) * np.dtype(attrs["dtype"]).itemsize
    return 0  # Identity, Dropout, Reshape, Squeeze, Unsqueeze: views of their input


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
        self.file_opset = self.opset = self._opset()
        if self.opset < MIN_OPSET:
            self._upgrade()
        self.consts: dict[str, np.ndarray] = {}
        self.syms: dict[str, _Sym] = {}
        self.shapes: dict[str, tuple | None] = {}
        self.room = IMPORT_ROOM

    # -- set-up ---------------------------------------------------------------------------------
    def _opset(self) -> int:
        opset = None
        for entry in self.proto.opset_import:
            if entry.domain in DEFAULT_DOMAINS:
                opset = int(entry.version)
        if opset is None:
            raise UnsupportedModelError(f"{self.where}: imports no ai.onnx opset, so its ops have "
                                        f"no definition")
        if opset < 1:
            raise ModelFormatError(f"{self.where}: ONNX opset {opset} does not exist (opsets "
                                   f"start at 1)")
        newest = self.onnx.defs.onnx_opset_version()
        if opset > newest:
            raise UnsupportedModelError(
                f"{self.where}: ONNX opset {opset} is newer than the installed onnx package "
                f"({self.onnx.__version__}) knows (up to opset {newest}), so what its ops mean "
                f"cannot be looked up; upgrade onnx (pip install -U onnx)")
        return opset

    def _upgrade(self):
        """Replace an opset < MIN_OPSET model by onnx's conversion of it to UPGRADE_TO."""
        from onnx import version_converter

        try:
            proto = version_converter.convert_version(self.proto, UPGRADE_TO)
        except Exception as err:  # noqa: BLE001 - the converter's C++ errors, a missing adapter
            missing = sorted({f"{p.op_type}" for p in self.graph.node
                              if p.domain in DEFAULT_DOMAINS and p.op_type not in SUPPORTED_OPS})
            also = f"; it also uses ops zeroskip does not run: {', '.join(missing)}" if missing \
                else ""
            reason = re.sub(r"^\S+\.(?:cc|cpp|h):\d+:\s*", "", str(err).strip())  # its C++ file
            raise UnsupportedModelError(
                f"{self.where}: ONNX opset {self.opset} is older than zeroskip reads "
                f"({MIN_OPSET}), and onnx's version converter could not upgrade it to opset "
                f"{UPGRADE_TO} ({_short(reason)}){also}") from None
        self.proto, self.graph, self.opset = proto, proto.graph, UPGRADE_TO

    def version_issue(self, proto):
        """('versions', label) when ``proto``'s op definition at the model's opset is newer than
        the importer reads (MAX_OPSET, NEWER_DEFINITIONS), else None. Only for default-domain ops
        the importer converts; others are refused as ops."""
        if self.opset <= MAX_OPSET or proto.op_type not in SUPPORTED_OPS:
            return None
        try:
            since = self.onnx.defs.get_schema(proto.op_type, self.opset, "").since_version
        except Exception:  # noqa: BLE001 - not an op of this opset (removed, or never was)
            return "ops", f"{proto.op_type} (no such op in opset {self.opset})"
        known = max(NEWER_DEFINITIONS.get(proto.op_type, MAX_OPSET), MAX_OPSET)
        if since <= known:
            return None
        return "versions", (f"{proto.op_type}-{since} (opset {self.opset}; zeroskip reads "
                            f"{proto.op_type} definitions up to opset {known})")

    def attr_value(self, attr, owner="a node"):
        """An attribute's value in Python: bytes decoded, a tensor as a checked array; ``owner``
        (e.g. "node 'conv1' (Conv)") names it in errors."""
        if attr.type == self.onnx.AttributeProto.UNDEFINED:
            raise ModelFormatError(f"{self.where}: {owner}: attribute {attr.name!r} has no type")
        try:
            value = self.onnx.helper.get_attribute_value(attr)
        except Exception as err:  # noqa: BLE001 - an attribute type onnx does not know
            raise ModelFormatError(f"{self.where}: {owner}: attribute {attr.name!r} cannot be "
                                   f"read ({_short(err)})") from None
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, self.onnx.TensorProto):
            return self.tensor(value, f"{owner}: the tensor of attribute {attr.name!r}")
        if isinstance(value, (list, tuple)):
            return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
        return value

    def tensor(self, t, label=None) -> np.ndarray:
        """The array of a TensorProto, its dims checked against its data first; ``label`` names
        it in errors (default: "tensor 'name'")."""
        label = label or _tensor_label(t)
        if t.data_location == self.onnx.TensorProto.EXTERNAL and not t.raw_data:
            location = {e.key: e.value for e in t.external_data}.get("location", "?")
            raise ModelFormatError(
                f"{self.where}: {label} keeps its data in the external file {location!r}; "
                f"import the model from its path so the data can be found next to it")
        _check_tensor_data(self.onnx, t, self.where, label)
        try:
            return np.asarray(self.onnx.numpy_helper.to_array(t))
        except Exception as err:  # noqa: BLE001 - typed data of the wrong length, odd types
            raise ModelFormatError(f"{self.where}: {label} cannot be read "
                                   f"({_short(err)})") from None

    def sparse_tensor(self, s) -> np.ndarray:
        """The dense array of a SparseTensorProto, its indices checked and its size within the
        import's room (``spend``)."""
        where = f"{self.where}: sparse tensor {s.values.name!r}"
        dims = [int(d) for d in s.dims]
        if any(d < 0 for d in dims):
            raise ModelFormatError(f"{where} has dims {dims}; a dimension cannot be negative")
        values = self.tensor(s.values)
        indices = self.tensor(s.indices)
        count = math.prod(dims)
        nnz = values.shape[0] if values.ndim == 1 else -1
        if nnz < 0 or indices.dtype.kind not in "iu" or indices.shape not in (
                (nnz,), (nnz, len(dims))):
            raise ModelFormatError(f"{where}: values {list(values.shape)} must be 1-D (NNZ) and "
                                   f"indices {list(indices.shape)} ({indices.dtype}) integers of "
                                   f"shape [NNZ] or [NNZ, {len(dims)}]")
        indices = indices.astype(np.int64)
        bounds = np.array([count]) if indices.ndim == 1 else np.array(dims, dtype=np.int64)
        if indices.size and ((indices < 0).any() or (indices >= bounds).any()):
            raise ModelFormatError(f"{where}: an index lies outside dims {dims}")
        if not self.spend(count * values.dtype.itemsize):
            raise UnsupportedModelError(
                f"{where}: made dense, its dims {dims} would take {count * values.dtype.itemsize} "
                f"bytes, more than the import may allocate ({IMPORT_ROOM} bytes besides four "
                f"times the file's tensor data)")
        dense = np.zeros(tuple(dims), dtype=values.dtype)
        if indices.ndim == 2:
            dense[tuple(indices.T)] = values
        else:
            dense.reshape(-1)[indices] = values
        return dense

    def spend(self, nbytes) -> bool:
        """Take ``nbytes`` from the import's room for new arrays; False (nothing taken) if short."""
        if nbytes > self.room:
            return False
        self.room -= nbytes
        return True

    def _infer_shapes(self, protos):
        """Static shapes (name -> tuple, None for unknown dims, or None) from onnx's shape
        inference, run node by node in ``protos``' (topological) order.

        Not onnx's whole-graph inference, because a hostile file can make that allocate without
        bound, and nothing can stop it from outside: it keeps every axis of every value, and takes
        ranks from the lengths of shape vectors, which Concat can double node by node (24 nodes
        made it allocate 16 GB); its data propagation materializes such chains too. Here each
        node's output rank is bounded by MAX_RANK before onnx infers it (Reshape, ConstantOfShape,
        Unsqueeze, the ops that make ranks from data) and checked after; only ops the importer
        converts are inferred (the others are refused anyway), and only small integer constants
        (shape vectors, axes, pads) are shown to onnx as data.
        """
        onnx, graph = self.onnx, self.graph
        types, data = {}, {}
        for vi in graph.input:
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                self._check_rank(f"graph input {vi.name!r} has", len(vi.type.tensor_type.shape.dim))
            types[vi.name] = vi.type
        tensors = [(t, t) for t in graph.initializer] + [(s, s.values) for s in
                                                          graph.sparse_initializer]
        for t, values in tensors:
            self._check_rank(f"tensor {values.name!r} has", len(t.dims))
            types[values.name] = onnx.helper.make_tensor_type_proto(values.data_type, list(t.dims))
        for name, value in self.consts.items():
            if _shape_data(value):
                data[name] = onnx.numpy_helper.from_array(value, name)
        declared = {vi.name: vi.type for vi in list(graph.value_info) + list(graph.output)}
        for name, proto in protos:
            if proto.domain in DEFAULT_DOMAINS and proto.op_type in SUPPORTED_OPS and all(
                    not i or i in types for i in proto.input):
                inferred = self._infer_node(name, proto, types, data)
            else:
                inferred = {}
            for out in proto.output:
                if out and (out in inferred or out in declared):
                    types[out] = inferred.get(out) or declared[out]
        for name, type_proto in types.items():
            t = type_proto.tensor_type
            if not type_proto.HasField("tensor_type") or not t.HasField("shape"):
                self.shapes[name] = None
                continue
            self.shapes[name] = tuple(  # a negative size from hostile attributes: unknown
                int(d.dim_value) if d.HasField("dim_value") and d.dim_value >= 0 else None
                for d in t.shape.dim)

    def _infer_node(self, name, proto, types, data) -> dict:
        """onnx's inference of one node's output types ({} if it has none), ranks bounded."""
        onnx, op = self.onnx, proto.op_type
        where = f"node {name!r} ({op})"

        def dims(i):
            t = types[proto.input[i]].tensor_type if i < len(proto.input) and proto.input[i] \
                else None
            return None if t is None or not t.HasField("shape") else list(t.shape.dim)

        made, why = None, ""  # the rank the op makes from data, when it does
        if op in ("Reshape", "ConstantOfShape"):
            i = 1 if op == "Reshape" else 0
            shape = dims(i)
            if shape and shape[0].HasField("dim_value"):
                made = int(shape[0].dim_value)
                why = f" (the length of its shape input {proto.input[i]!r})"
        elif op == "Unsqueeze":
            rank, axes = dims(0), dims(1)
            attr = next((a for a in proto.attribute if a.name == "axes"), None)
            count = len(attr.ints) if attr is not None else (
                int(axes[0].dim_value) if axes and axes[0].HasField("dim_value") else 0)
            made = (len(rank) if rank is not None else 0) + count
            why = f" ({count} new axes)"
        if made is not None:
            self._check_rank(f"{where}: its output would have", made, why)
        try:
            schema = onnx.defs.get_schema(op, self.opset, "")
            inputs = {i: types[i] for i in proto.input if i}
            inferred = onnx.shape_inference.infer_node_outputs(
                schema, proto, inputs, {i: data[i] for i in proto.input if i in data},
                opset_imports=list(self.proto.opset_import))
        except Exception:  # noqa: BLE001 - inference is a help, not a requirement
            return {}
        for out, type_proto in inferred.items():
            if type_proto.tensor_type.HasField("shape"):
                self._check_rank(f"{where}: its output {out!r} would have",
                                 len(type_proto.tensor_type.shape.dim))
        if op == "Constant" and proto.output[0]:
            value = self._constant_data(proto)
            if value is not None:
                data[proto.output[0]] = value
        return inferred

    def _constant_data(self, proto):
        """A Constant node's value as a TensorProto when it is shape data (``_shape_data``)."""
        tensor_proto = self.onnx.TensorProto
        for a in proto.attribute:
            if a.name == "value_ints" and len(a.ints) <= 2 * MAX_RANK:
                return self.onnx.helper.make_tensor("v", tensor_proto.INT64, [len(a.ints)],
                                                    list(a.ints))
            if a.name == "value_int":
                return self.onnx.helper.make_tensor("v", tensor_proto.INT64, [], [a.i])
            if a.name != "value" or a.type != self.onnx.AttributeProto.TENSOR:
                continue
            if len(a.t.dims) <= 1 and math.prod(a.t.dims) <= 2 * MAX_RANK and a.t.data_type in (
                    tensor_proto.INT64, tensor_proto.INT32):
                try:
                    _check_tensor_data(self.onnx, a.t, self.where)
                except ModelFormatError:
                    return None  # reported when the node is converted
                return a.t
        return None

    def _check_rank(self, what, rank, why=""):
        """UnsupportedModelError beyond MAX_RANK axes; ``what`` ends in its verb ("has")."""
        if rank > MAX_RANK:
            raise UnsupportedModelError(f"{self.where}: {what} {rank} axes{why}; zeroskip runs "
                                        f"tensors of at most {MAX_RANK}")

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
        self.room = IMPORT_ROOM + 4 * self.proto.ByteSize()
        for t in graph.initializer:
            self.consts[t.name] = self.tensor(t)
        for s in graph.sparse_initializer:
            self.consts[s.values.name] = self.sparse_tensor(s)
        inputs = [vi for vi in graph.input if vi.name not in self.consts]
        protos = self._sorted(self._named_nodes(), {vi.name for vi in inputs})
        self._infer_shapes(protos)
        self.quant = onnx_quant.QuantImport(self)

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
            try:
                fused = onnx_quant.fuse_qdq(self.quant, pending, graph_outputs)
            except _MALFORMED as err:  # a pattern whose parts do not fit together
                if isinstance(err, (ModelFormatError, UnsupportedModelError)):
                    raise
                raise ModelFormatError(f"{self.where}: a quantized (QDQ) pattern is malformed "
                                       f"({type(err).__name__}: {_short(err)})") from None
            pending = self._live(fused, graph_outputs)

        issues = [issue + (node.name,) for node in pending for issue in node.issues]
        ir_inputs = []
        for vi in inputs:
            kind = vi.type.WhichOneof("value")
            if kind not in (None, "tensor_type"):  # a sequence, map or optional
                issues.append(("dtypes", f"{kind.replace('_type', '')} input", vi.name))
                continue
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
        body = Graph(nodes=nodes, inputs=ir_inputs, outputs=[], initializers=initializers)
        self._checked(body.check)  # names, arity, attribute types and ranges (ops.MAX_WINDOW)
        known = self._checked(lambda: infer_shapes(body))  # static shapes must fit together
        self._check_sizes(body, known)
        self._fallback_shapes = self._output_ranks(nodes, graph_outputs, known)
        outputs = [self._value_info(vi, is_input=False) for vi in graph.output]
        ir = Graph(nodes=nodes, inputs=ir_inputs, outputs=outputs, initializers=initializers)
        self._checked(ir.check)
        return Model(ir, self._metadata(initializers))

    def _checked(self, check):
        """``check()``, its ModelFormatError (which names the node) prefixed with the file."""
        try:
            return check()
        except ModelFormatError as err:
            raise ModelFormatError(f"{self.where}: {err}") from None

    def _check_sizes(self, ir, known):
        """UnsupportedModelError for a graph input or node output of more than MAX_RANK axes or
        MAX_ELEMENTS elements."""
        values = [(vi.name, f"graph input {vi.name!r}") for vi in ir.inputs]
        values += [(out, f"node {node.name!r} ({node.op}): output {out!r}")
                   for node in ir.nodes for out in node.outputs if out]
        for name, what in values:
            info = known.get(name)
            if info is None or info.shape is None:
                continue
            if len(info.shape) > MAX_RANK:
                raise UnsupportedModelError(f"{self.where}: {what} has {len(info.shape)} axes; "
                                            f"zeroskip runs tensors of at most {MAX_RANK}")
            count = math.prod(d for d in info.shape if d is not None)  # at most 64 factors
            if count > MAX_ELEMENTS:
                shape = "(" + ", ".join("?" if d is None else str(d) for d in info.shape) + ")"
                raise UnsupportedModelError(
                    f"{self.where}: {what} has shape {shape}: {count} elements (a dynamic size "
                    f"counted as 1), more than the {MAX_ELEMENTS} (2**32) zeroskip runs in one "
                    f"tensor")

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
        if not proto.op_type:
            raise ModelFormatError(f"{self.where}: node {name!r} has no op_type")
        if not any(proto.output):
            raise ModelFormatError(f"{self.where}: node {name!r} ({proto.op_type}) has no outputs")
        issue = self.version_issue(proto) if proto.domain in DEFAULT_DOMAINS else None
        if issue is not None:  # read by today's handlers, it could mean something else
            return Pending(name, proto.op_type, list(proto.input), list(proto.output), {}, [issue])
        if proto.domain in DEFAULT_DOMAINS and proto.op_type in SUPPORTED_OPS:
            self._check_onnx_arity(name, proto)
        if onnx_quant.handles(proto):
            n = OnnxNode(self, proto, name)
            try:
                nodes = self.quant.convert(n)
            except _MALFORMED as err:
                if isinstance(err, (ModelFormatError, UnsupportedModelError)):
                    raise
                raise ModelFormatError(f"{self.where}: node {name!r} ({n.op}) is malformed "
                                       f"({_short(err)})") from None
            for node in nodes:
                if node.op in OPS and not node.issues:
                    check_inputs(f"{self.where}: node {name!r} ({n.op})", node.op, node.inputs)
            return nodes
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
        except _MALFORMED as err:
            if isinstance(err, (ModelFormatError, UnsupportedModelError)):
                raise
            raise ModelFormatError(f"{self.where}: node {name!r} ({n.op}) is malformed "
                                   f"({_short(err)})") from None
        for key, value in n.attrs.items():  # whatever the handler did not understand
            n.bad_attr(key, value)
        self._check_outputs(n)
        try:
            if not n.issues:  # else a missing attribute only repeats an issue (a computed input)
                attrs = normalize_attrs(op, attrs)
        except KeyError as err:
            n.issues.append(("attributes", f"{op}: {err.args[0]}"))
        inputs = list(inputs)
        while inputs and inputs[-1] == "":
            inputs.pop()
        check_inputs(f"{self.where}: node {name!r} ({n.op})", op, inputs)  # before they are read
        node = Pending(name, op, inputs, n.outputs[:1], attrs, n.issues)
        if self.quant.act and not node.issues:
            self.quant.after(node)  # MaxPool/shape ops on integer tensors
        if not node.issues and self._try_fold(node):
            return None
        if not node.issues:
            self._track(node)
        return node

    def _check_onnx_arity(self, name, proto):
        """ModelFormatError unless the node's inputs fit its ONNX schema: their count, and no
        required one empty."""
        try:
            schema = self.onnx.defs.get_schema(proto.op_type, self.opset, "")
        except Exception:  # noqa: BLE001 - not an op of this opset: refused as such later
            return
        inputs = list(proto.input)
        while inputs and not inputs[-1]:
            inputs.pop()
        where = f"{self.where}: node {name!r} ({proto.op_type})"
        if not schema.min_input <= len(inputs) <= schema.max_input:
            raise ModelFormatError(f"{where}: has {len(inputs)} inputs, but opset {self.opset} "
                                   f"defines {schema.min_input} to {schema.max_input}")
        single = self.onnx.defs.OpSchema.FormalParameterOption.Single
        for i, (formal, value) in enumerate(zip(schema.inputs, inputs)):
            if formal.option == single and not value:
                raise ModelFormatError(f"{where}: required input {i} ({formal.name}) is empty")

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
            if not self.spend(_fold_bytes(node.op, args, node.attrs)):
                return False  # too big to make at import: it stays a node and runs with the model
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
        if value is not None and value.dtype.kind in "iu" and value.ndim <= 1 \
                and value.size <= MAX_RANK:
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
            if len(axes) > MAX_RANK:
                return None
            return _Sym([shape[k] if shape[k] is not None else _Dim(node.inputs[0], k)
                         for k in axes])
        args = [self._sym(name) for name in node.inputs]
        if op in ("Identity", "Cast") and args[0] is not None:
            if op == "Cast" and not attrs["to"].startswith("int"):
                return None
            return args[0]
        if op == "Gather" and args[0] is not None and not args[0].scalar and attrs["axis"] in (0, -1):
            index = self.consts.get(node.inputs[1])
            if index is None or index.ndim > 1 or index.size > MAX_RANK:
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
                a is not None and not a.scalar for a in args) and sum(
                len(a.entries) for a in args) <= MAX_RANK:
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
        what = "input" if is_input else "output"
        if shape is None:
            raise UnsupportedModelError(f"{self.where}: graph {what} {vi.name!r} has no known rank")
        if any(d is not None and d < 0 for d in shape):
            raise ModelFormatError(f"{self.where}: graph {what} {vi.name!r} has shape "
                                   f"{list(shape)}; a dimension cannot be negative")
        if dtype is None:
            raise UnsupportedModelError(f"{self.where}: graph value {vi.name!r} has no known "
                                        f"element type")
        return ValueInfo(vi.name, tuple(shape), dtype)

    def _output_ranks(self, nodes, graph_outputs, known) -> dict:
        """Shapes of graph outputs that onnx's inference left without a rank (a Reshape to a computed
        target: its length gives the rank), from zeroskip's own shape inference (``known``) where it
        knows more."""
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
        for name in missing:
            if name in known and known[name].shape is not None:
                found[name] = tuple(known[name].shape)
        return found

    def _metadata(self, initializers) -> dict:
        source = {"format": "onnx", "opset": self.file_opset,
                  "producer": f"{self.proto.producer_name} {self.proto.producer_version}".strip(),
                  "name": self.graph.name}
        if self.opset != self.file_opset:
            source["upgraded_to_opset"] = self.opset  # by onnx's version converter
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


__all__ = ["FOLDABLE", "IMPORT_ROOM", "MAX_ELEMENTS", "MAX_OPSET", "MAX_RANK", "MAX_WINDOW",
           "MIN_OPSET", "NEWER_DEFINITIONS", "SUPPORTED_OPS", "UPGRADE_TO", "import_onnx"]
