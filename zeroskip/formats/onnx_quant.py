"""ONNX int8 import: QDQ and QOperator graphs onto the one integer scheme of DESIGN.md.

``formats.onnx`` calls in here for every quantization-related node; the result is the IR's quantized
ops (``QuantizeLinear``, ``DequantizeLinear``, ``QConv``, ``QGemm``, ``QAdd``, ``QMaxPool``,
``QAveragePool``, ``QGlobalAveragePool``) with weights as int8 ``Dense`` tensors carrying
``QuantParams`` and biases as int32 with scale ``x_scale·w_scale[n]``.

What maps to what
-----------------
QOperator (onnxruntime's ``QuantFormat.QOperator``):

* ``QuantizeLinear`` / ``DequantizeLinear`` -> the IR ops of the same name (scale and zero point
  become attributes; they must be constant and per tensor). A DequantizeLinear of a constant is
  folded: its real value is a float constant, and the integer tensor is remembered for fusion.
* ``QLinearConv`` -> ``QConv``; ``QLinearMatMul`` with a constant 2-D B and a 2-D A -> ``QGemm`` (B
  (K,N) is transposed to (N,K), per-column scales become per-row); with an A of rank 3 or more whose
  dimensions other than the first are static -> ``Reshape`` (A to (M, K)) -> ``QGemm`` ->
  ``Reshape`` (back to (..., N)), the integers unchanged by both; ``com.microsoft.QGemm``
  (alpha 1, transA 0) -> ``QGemm``; ``com.microsoft.QLinearAdd`` -> ``QAdd`` (a constant operand
  stays a raw uint8/int8 initializer described by the node's a_*/b_* attributes);
  ``com.microsoft.QLinearGlobalAveragePool`` / ``QLinearAveragePool`` (channels_last 0) ->
  ``QGlobalAveragePool`` / ``QAveragePool``.
* A QLinearMatMul the IR cannot express as QGemm (a 1-D A, a dynamic dimension of A other than
  the first, a B that is not 2-D) becomes DequantizeLinear -> MatMul -> QuantizeLinear, which
  computes the same thing in float.
* ``MaxPool`` on an integer tensor -> ``QMaxPool``; Flatten, Reshape, Transpose, Squeeze, Unsqueeze,
  Identity, Dropout, Concat (all inputs with the same scale and zero point) and Pad (its constant an
  integer of the tensor's type, as onnxruntime writes it) stay as they are, on the integer tensor,
  which keeps its parameters.
* ``com.microsoft.QLinearSoftmax`` / ``QLinearSigmoid`` / ``QLinearLeakyRelu`` / ``QLinearConcat`` /
  ``QLinearMul`` -> DequantizeLinear (each input) -> the float op -> QuantizeLinear: ONNX's own
  definition of them, run without an integer kernel.
* Any other op of a non-default domain is refused by the importer (``com.microsoft.QLinearReduceMean ×1
  (first: 'x')``).

Integer ops (onnxruntime's ``quantize_dynamic``, or hand-made static graphs):

* ``DynamicQuantizeLinear``, ``MatMulInteger`` and ``ConvInteger`` -> the IR ops of the same name, as
  ONNX defines them (the activation's scale and zero point are computed from the data on each run;
  the int32 result is rescaled by the graph's own Cast and Mul). Weights stay as stored (uint8 or
  int8 with their zero points); the planner converts them for its kernels where that is exact.

QDQ (``QuantFormat.QDQ``), recognized after all nodes are converted (``fuse_qdq``):

* ``DQ(x), DQ(w)[, DQ(b)] -> Conv | Gemm | MatMul -> [Relu | Clip] -> Q`` -> ``QConv`` / ``QGemm``,
  the activation becoming ``clip_min``/``clip_max``; a MatMul whose A has rank 3 or more takes the
  Reshape -> QGemm -> Reshape form of QLinearMatMul (under the same condition);
* ``DQ(a), DQ(b) -> Add -> [Relu | Clip] -> Q`` -> ``QAdd`` (an operand may be a constant DQ);
* ``DQ -> AveragePool -> Q`` -> ``QAveragePool``; ``DQ -> GlobalAveragePool -> Q`` ->
  ``QGlobalAveragePool``;
* ``DQ -> MaxPool -> Q``, ``DQ -> Pad -> Q`` and ``DQ -> shape op -> Q`` with the same scale, zero
  point and type in and out -> ``QMaxPool`` / the op on the integer tensor (a constant Pad's real
  value must be an exact integer step: 0.0 becomes the zero point).

A pattern is fused only when the float op's output has that one reader (the Q, or the activation whose
only reader is the Q) and is not a graph output. Everything else stays as it was: Q/DQ pairs run as
QuantizeLinear/DequantizeLinear and float ops between them stay float, which computes exactly what
the ONNX graph says.

Choices
-------
* **Weights** become int8 with zero point 0, per output channel (axis 0 of the IR weight) or per
  tensor, as given. The kernels take any int8 weight in [−128, 127] (docs/quantization.md §1), so a
  weight is converted exactly to ``q − zero_point`` whenever every value of it lies in [−128, 127]
  (an int8 weight with zero point 0 stays as it is, −128 included; a uint8 weight with zero point
  128 becomes ``q − 128``). Otherwise (a uint8 weight with zero point 0, say) it is
  **re-quantized** from its real values by zeroskip's own quantizer (``compress.weights``:
  symmetric int8 in [−127, 127], scale ``max|w| / 127``, 1.0 for an all-zero channel, round half
  to even) with the same granularity, and ``metadata["weights"][name]["requantized"]`` is set to
  true.
* A per-channel weight whose axis is not the output-channel axis is refused.
* **Bias**: an int32 bias whose scale equals ``x_scale·w_scale[n]`` (to float32 precision, as
  onnxruntime writes it) is kept; any other bias, including a float one, is quantized to that scale
  with round half to even (``metadata[...]["requantized"]`` marks a bias whose integers changed).
* **Validation**, before any kernel trusts them: scales finite and > 0 (else ``ModelFormatError``
  naming the tensor), activation zero points of type uint8/int8 (other types -> unsupported),
  scale/zero-point shapes consistent with the weight, and the int32 accumulator bound
  ``K·max|q_w·q_x| + max|b − x_zp·Σ_k q_w| < 2^31`` with ``max|q_w·q_x|`` = 255·128 for uint8
  activations and 128·128 for int8 (``quantmath.MAX_ABS_PRODUCT``) (``UnsupportedModelError``
  naming the node).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import quantmath
from ..compress.weights import choose_weight_scales, quantize_weights
from ..errors import ModelFormatError, UnsupportedModelError
from ..model import Dense, QuantParams
from ..ops import normalize_attrs
from ..reference.ops.quantized import quantize_linear
from .onnx_common import DEFAULT_DOMAINS, Pending, conv_attrs

ACT_DTYPES = ("uint8", "int8")
W_RANGE = quantmath.TYPE_RANGE[np.dtype(np.int8)]
"""An imported weight's q − zero_point is kept exactly when it lies in [−128, 127]: the kernels take
any int8 weight (docs/quantization.md §1). Outside that range it is re-quantized."""

SHAPE_OPS = frozenset({"Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity",
                       "Dropout", "Concat"})
"""Ops that move integers around without arithmetic: they run on the integer tensor unchanged."""

MS_DOMAIN = "com.microsoft"
MS_OPS = frozenset({"QGemm", "QLinearAdd", "QLinearGlobalAveragePool", "QLinearAveragePool",
                    "QLinearSoftmax", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat",
                    "QLinearMul"})
"""com.microsoft ops this importer maps; any other op of that domain is refused."""

DEFAULT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                         "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"})
"""Default-domain ops this module converts (the float importer converts the others it knows)."""


@dataclass(frozen=True)
class Act:
    """The quantization of an integer activation: real = scale·(q − zero_point)."""

    scale: float
    zero_point: int
    dtype: str


@dataclass
class QConst:
    """A constant that a DequantizeLinear turned real: the integers and their parameters."""

    raw: str            # name of the integer constant
    q: np.ndarray
    scale: np.ndarray   # float32, 0-d or 1-d
    zero_point: np.ndarray
    axis: int           # the axis of a 1-d scale


def handles(proto) -> bool:
    """Whether ``proto`` is a node this module converts (otherwise the float importer does)."""
    if proto.domain in DEFAULT_DOMAINS:
        return proto.op_type in DEFAULT_OPS
    return proto.domain == MS_DOMAIN and proto.op_type in MS_OPS


class QuantImport:
    """The quantization side of one import: integer activations, folded DQ constants, new weights."""

    def __init__(self, importer):
        self.imp = importer
        self.act: dict[str, Act] = {}         # integer activation -> its parameters
        self.qconst: dict[str, QConst] = {}   # real constant made by a DQ -> its integers
        self.tensors: dict[str, Dense] = {}   # IR initializers made here (override raw consts)
        self.meta: dict[str, dict] = {}       # metadata["weights"] additions
        self.style = None                     # "qdq", "qoperator" or "dynamic" once seen
        self.ranks: dict[str, int] = {}       # ranks onnx's inference cannot see (com.microsoft)

    def rank(self, name):
        rank = self.imp.rank_of(name)
        return self.ranks.get(name) if rank is None else rank

    # -- parameters -------------------------------------------------------------------------------
    def _const(self, n, i, what):
        value = n.const(i)
        if value is None and n.input(i):
            n.issues.append(("inputs", f"{n.op}.{what}"))
        return value

    def act_params(self, n, i_scale, i_zp, what) -> Act | None:
        """Per-tensor activation parameters from constant inputs (None, with an issue, if not)."""
        scale = self._const(n, i_scale, f"{what}_scale")
        zp = self._const(n, i_zp, f"{what}_zero_point") if n.input(i_zp) else np.zeros((), np.uint8)
        if scale is None or zp is None:
            return None
        scale_name = n.input(i_scale)
        if scale.size != 1 or zp.size != 1:
            n.issues.append(("attributes", f"{n.op}.{what}: per-axis activation quantization"))
            return None
        if zp.dtype.name not in ACT_DTYPES:
            n.issues.append(("dtypes", f"{zp.dtype.name} quantized activation"))
            return None
        value = float(np.float32(scale.reshape(-1)[0]))
        check_scale(self.imp.where, n.name, scale_name, np.array([value]))
        return Act(value, int(zp.reshape(-1)[0]), zp.dtype.name)

    # -- node conversion --------------------------------------------------------------------------
    def convert(self, n):
        """IR nodes (a list of pending nodes, maybe empty) for one quantization-related ONNX node."""
        handler = getattr(self, "_" + n.op)
        nodes = handler(n)
        for key in list(n.attrs):
            n.bad_attr(key, n.attrs[key])
        return nodes

    def _pending(self, n, op, inputs, outputs, attrs, name=None):
        if not n.issues:
            attrs = normalize_attrs(op, attrs)
        inputs = list(inputs)
        while inputs and inputs[-1] == "":
            inputs.pop()
        return Pending(name or n.name, op, inputs, list(outputs), attrs, n.issues)

    def _QuantizeLinear(self, n):
        self._common_q_attrs(n)
        y = self.act_params(n, 1, 2, "y")
        if y is None:
            return [self._pending(n, "QuantizeLinear", n.inputs[:1], n.outputs, {})]
        out = n.outputs[0]
        x = n.const(0)
        if x is not None:  # a constant quantized at import (e.g. Q(w) -> DQ): fold it
            q = quantize_linear(x, y_scale=y.scale, y_zero_point=y.zero_point, y_dtype=y.dtype)
            self.imp.consts[out] = q.astype(y.dtype)
            return []
        self.act[out] = y
        attrs = dict(y_scale=y.scale, y_zero_point=y.zero_point, y_dtype=y.dtype)
        return [self._pending(n, "QuantizeLinear", n.inputs[:1], n.outputs, attrs)]

    def _common_q_attrs(self, n):
        n.take("axis")  # meaningful only for per-axis scales, which activations refuse
        n.take("saturate")  # float8 only
        block = n.take("block_size", 0)
        if block:
            n.bad_attr("block_size", block)
        if n.op == "DequantizeLinear":
            _float32_only(n, "output_dtype")  # opset 23: the real output's type
            return
        out_dtype = n.take("output_dtype", 0)
        if out_dtype and n.imp.onnx.helper.tensor_dtype_to_np_dtype(out_dtype).name not in ACT_DTYPES:
            n.bad_attr("output_dtype", out_dtype)
        _float32_only(n, "precision")  # opset 23; zeroskip divides in float32 (ONNX's default)

    def _DequantizeLinear(self, n):
        q = n.const(0)
        if q is not None:
            return self._fold_dq(n, q)
        self._common_q_attrs(n)
        x = self.act_params(n, 1, 2, "x")
        if x is None:
            return [self._pending(n, "DequantizeLinear", n.inputs[:1], n.outputs, {})]
        attrs = dict(x_scale=x.scale, x_zero_point=x.zero_point)
        return [self._pending(n, "DequantizeLinear", n.inputs[:1], n.outputs, attrs)]

    def _fold_dq(self, n, q):
        """DQ of a constant (a QDQ weight or bias): a real constant, its integers remembered."""
        axis = int(n.take("axis", 1))
        n.take("block_size")
        _float32_only(n, "output_dtype")
        scale = self._const(n, 1, "x_scale")
        zp = n.const(2) if n.input(2) else np.zeros(np.shape(scale) if scale is not None else (),
                                                    q.dtype)
        if scale is None or zp is None:
            return [self._pending(n, "DequantizeLinear", n.inputs[:1], n.outputs, {})]
        if zp.dtype != q.dtype:  # ONNX gives both the one type T
            raise ModelFormatError(f"{self.imp.where}: node {n.name!r} (DequantizeLinear): zero "
                                   f"point {n.input(2)!r} is {zp.dtype} but {n.input(0)!r} is "
                                   f"{q.dtype}; they must have one type")
        scale = np.asarray(scale, dtype=np.float32)
        check_scale(self.imp.where, n.name, n.input(1), scale)
        if scale.size == 1 and zp.size == 1 and (scale.ndim == 0 or q.ndim == 0
                                                 or q.shape[axis % q.ndim] != 1):
            scale, zp, shape = scale.reshape(()), zp.reshape(()), ()
        elif scale.ndim == 1 and scale.size > 0:
            axis = axis % max(q.ndim, 1)
            if q.ndim == 0 or q.shape[axis] != scale.size or zp.shape != scale.shape:
                raise ModelFormatError(
                    f"{self.imp.where}: node {n.name!r} (DequantizeLinear): scale {n.input(1)!r} "
                    f"{list(scale.shape)} and zero point {list(zp.shape)} do not match axis {axis} "
                    f"of {n.input(0)!r} {list(q.shape)}")
            shape = [1] * q.ndim
            shape[axis] = -1
        else:
            raise ModelFormatError(f"{self.imp.where}: node {n.name!r} (DequantizeLinear): scale "
                                   f"{n.input(1)!r} has shape {list(scale.shape)}")
        real = (scale.reshape(shape).astype(np.float32)
                * (q.astype(np.int64) - zp.astype(np.int64).reshape(shape)).astype(np.float32))
        out = n.outputs[0]
        self.imp.consts[out] = real.astype(np.float32)
        self.qconst[out] = QConst(n.input(0), q, scale, zp, axis)
        return []

    # -- integer ops (dynamic quantization) ----------------------------------------------------------
    def _DynamicQuantizeLinear(self, n):
        self.style = self.style or "dynamic"
        if len(n.outputs) != 3 or not all(n.outputs):
            n.issues.append(("attributes", "DynamicQuantizeLinear without all three outputs"))
        return [self._pending(n, "DynamicQuantizeLinear", n.inputs[:1], n.outputs, {})]

    def _MatMulInteger(self, n):
        self._check_integer_operands(n, ("A", "B"))
        return [self._pending(n, "MatMulInteger", n.inputs, n.outputs[:1], {})]

    def _ConvInteger(self, n):
        self._check_integer_operands(n, ("x", "w"))
        attrs = conv_attrs(n, n.input(1))
        return [self._pending(n, "ConvInteger", n.inputs, n.outputs[:1], attrs)]

    def _check_integer_operands(self, n, names):
        """Constant operands and zero points of MatMulInteger/ConvInteger must be 8-bit, each zero
        point of its operand's type (ModelFormatError naming the tensor)."""
        self.style = self.style or "dynamic"
        for i, what in enumerate(names):
            value, zp = n.const(i), n.const(i + 2) if n.input(i + 2) else None
            for tensor, array in ((n.input(i), value), (n.input(i + 2), zp)):
                if array is not None and array.dtype.name not in ACT_DTYPES:
                    raise ModelFormatError(f"{self.imp.where}: node {n.name!r} ({n.op}): {tensor!r} "
                                           f"is {array.dtype}; {what} and its zero point must be "
                                           f"uint8 or int8")
            if value is not None and zp is not None and zp.dtype != value.dtype:
                raise ModelFormatError(f"{self.imp.where}: node {n.name!r} ({n.op}): zero point "
                                       f"{n.input(i + 2)!r} is {zp.dtype} but {what} is {value.dtype}")

    # -- QOperator ops -----------------------------------------------------------------------------
    def _QLinearConv(self, n):
        self.style = self.style or "qoperator"
        x = self.act_params(n, 1, 2, "x")
        y = self.act_params(n, 6, 7, "y")
        w = self._const(n, 3, "w")
        w_scale = self._const(n, 4, "w_scale")
        w_zp = self._const(n, 5, "w_zero_point") if n.input(5) else None
        b = self._const(n, 8, "B") if n.input(8) else None
        attrs = conv_attrs(n, n.input(3))
        if n.issues or x is None or y is None or w is None or w_scale is None:
            return [self._pending(n, "QConv", [n.input(0)], n.outputs, {})]
        w_zp = np.zeros(w_scale.shape, w.dtype) if w_zp is None else w_zp
        qc = QConst(n.input(3), w, np.asarray(w_scale, np.float32), w_zp, 0)
        check_scale(self.imp.where, n.name, n.input(4), qc.scale)
        bias = None if b is None else ("int", n.input(8), b)
        return [self.make_linear(n, "QConv", n.input(0), x, qc, "conv", bias, y, attrs,
                                 n.outputs[0])]

    def _QLinearMatMul(self, n):
        self.style = self.style or "qoperator"
        a = self.act_params(n, 1, 2, "a")
        y = self.act_params(n, 6, 7, "y")
        w = self._const(n, 3, "b")
        w_scale = self._const(n, 4, "b_scale")
        w_zp = self._const(n, 5, "b_zero_point") if n.input(5) else None
        if n.issues or a is None or y is None or w is None or w_scale is None:
            return [self._pending(n, "QGemm", [n.input(0)], n.outputs, {})]
        w_zp = np.zeros(w_scale.shape, w.dtype) if w_zp is None else w_zp
        check_scale(self.imp.where, n.name, n.input(4), np.asarray(w_scale, np.float32))
        qc = QConst(n.input(3), w, np.asarray(w_scale, np.float32), w_zp, 1)
        if w.ndim == 2 and self.rank(n.input(0)) == 2:
            return [self.make_linear(n, "QGemm", n.input(0), a, qc, "kn", None, y, {},
                                     n.outputs[0])]
        inner = self.row_dims(n.input(0)) if w.ndim == 2 else None
        if inner is not None:
            return self.matmul_rows(n, n.input(0), inner, a, qc, y, n.outputs[0])
        return self._expand_matmul(n, a, qc, y)

    def row_dims(self, name):
        """The dimensions of a MatMul's A (rank 3 or more) between the first and the last, when all
        are static and nonzero (then A can run as (M, K) rows); else None."""
        shape = self.imp.shape_of(name)
        if shape is None or len(shape) < 3:
            return None
        inner = shape[1:-1]
        return inner if all(isinstance(d, int) and d > 0 for d in inner) else None

    def matmul_rows(self, n, x_name, inner, x: Act, w: QConst, y: Act, out, clip=(None, None),
                    name=None):
        """A MatMul of A (d0, *inner, K) by a constant B (K, N) as a QGemm on A's rows: Reshape A
        to (M, K), the QGemm, Reshape its (M, N) to (-1, *inner, N). Reshapes move the integers
        unchanged, so this is the 2-D QGemm's arithmetic, row by row (``inner``: ``row_dims``)."""
        imp, node_name = self.imp, name or n.name
        k, n_out = w.q.shape
        rows_shape, out_shape = (imp.fresh(f"{node_name}/{s}") for s in ("rows_shape", "out_shape"))
        rows, rows_y = (imp.fresh(f"{node_name}/{s}") for s in ("rows", "rows_y"))
        imp.consts[rows_shape] = np.array([-1, k], np.int64)
        imp.consts[out_shape] = np.array([-1, *inner, n_out], np.int64)
        self.act[rows], self.ranks[rows] = x, 2
        gemm = self.make_linear(n, "QGemm", rows, x, w, "kn", None, y, {}, rows_y, clip=clip,
                                name=node_name)
        self.act[out], self.ranks[out] = y, len(inner) + 2
        reshape = normalize_attrs("Reshape", {})
        return [Pending(f"{node_name}/rows", "Reshape", [x_name, rows_shape], [rows], reshape, []),
                gemm,
                Pending(f"{node_name}/unrows", "Reshape", [rows_y, out_shape], [out], reshape, [])]

    def _expand_matmul(self, n, a, qc, y):
        """DequantizeLinear -> MatMul (float weight) -> QuantizeLinear: the same values in float."""
        imp = self.imp
        real_a, real_y, w_real = (imp.fresh(f"{n.name}/{s}") for s in ("a_real", "y_real", "b_real"))
        shape = [1] * qc.q.ndim
        if qc.scale.ndim == 1:
            shape[qc.axis % qc.q.ndim] = -1
        imp.consts[w_real] = (qc.scale.reshape(shape) * (qc.q.astype(np.int64) - np.asarray(
            qc.zero_point, np.int64).reshape(shape))).astype(np.float32)
        self.act[n.outputs[0]] = y
        return [
            self._pending(n, "DequantizeLinear", [n.input(0)], [real_a],
                          dict(x_scale=a.scale, x_zero_point=a.zero_point), f"{n.name}/dequantize"),
            self._pending(n, "MatMul", [real_a, w_real], [real_y], {}, f"{n.name}/matmul"),
            self._pending(n, "QuantizeLinear", [real_y], n.outputs[:1],
                          dict(y_scale=y.scale, y_zero_point=y.zero_point, y_dtype=y.dtype),
                          f"{n.name}/quantize"),
        ]

    def _QGemm(self, n):
        self.style = self.style or "qoperator"
        alpha = float(n.take("alpha", 1.0))
        trans_a = int(n.take("transA", 0))
        trans_b = int(n.take("transB", 0))
        if alpha != 1.0:
            n.bad_attr("alpha", alpha)
        if trans_a:
            n.bad_attr("transA", trans_a)
        a = self.act_params(n, 1, 2, "a")
        if not n.input(7):
            n.issues.append(("attributes", "QGemm without y_scale (float output)"))
        y = self.act_params(n, 7, 8, "y") if n.input(7) else None
        w = self._const(n, 3, "B")
        w_scale = self._const(n, 4, "b_scale")
        w_zp = self._const(n, 5, "b_zero_point") if n.input(5) else None
        c = self._const(n, 6, "C") if n.input(6) else None
        if n.issues or a is None or y is None or w is None or w_scale is None:
            return [self._pending(n, "QGemm", [n.input(0)], n.outputs, {})]
        w_zp = np.zeros(w_scale.shape, w.dtype) if w_zp is None else w_zp
        check_scale(self.imp.where, n.name, n.input(4), np.asarray(w_scale, np.float32))
        qc = QConst(n.input(3), w, np.asarray(w_scale, np.float32), w_zp, 0 if trans_b else 1)
        bias = None if c is None else ("int", n.input(6), c)
        return [self.make_linear(n, "QGemm", n.input(0), a, qc, "nk" if trans_b else "kn", bias, y,
                                 {}, n.outputs[0])]

    def _QLinearAdd(self, n):
        self.style = self.style or "qoperator"
        a = self.act_params(n, 1, 2, "a")
        b = self.act_params(n, 4, 5, "b")
        y = self.act_params(n, 6, 7, "y")
        if n.issues or a is None or b is None or y is None:
            return [self._pending(n, "QAdd", [n.input(0), n.input(3)], n.outputs, {})]
        inputs = [self.const_operand(n.input(0), a), self.const_operand(n.input(3), b)]
        self.act[n.outputs[0]] = y
        ranks = [self.rank(name) for name in (n.input(0), n.input(3))]
        if None not in ranks:
            self.ranks[n.outputs[0]] = max(ranks)
        attrs = dict(a_scale=a.scale, a_zero_point=a.zero_point, b_scale=b.scale,
                     b_zero_point=b.zero_point, y_scale=y.scale, y_zero_point=y.zero_point,
                     y_dtype=y.dtype)
        return [self._pending(n, "QAdd", inputs, n.outputs[:1], attrs)]

    def const_operand(self, name, params: Act) -> str:
        """A constant QAdd operand: its integers as an initializer carrying the same per-tensor
        QuantParams as the node's a_*/b_* attributes (so every mode can read it as real values)."""
        value = self.imp.consts.get(name)
        if value is None:
            return name
        if value.dtype.name != params.dtype:
            raise ModelFormatError(f"{self.imp.where}: constant {name!r} is {value.dtype}, but its "
                                   f"zero point is {params.dtype}")
        quant = QuantParams(np.array(params.scale, np.float32),
                            np.array(params.zero_point, value.dtype))
        return self.add_tensor(name, Dense(np.array(value, order="C"), quant),
                               {"origin": "onnx", "sparsity": _sparsity(value),
                                "granularity": "per-tensor"})

    def _QLinearGlobalAveragePool(self, n):
        self.style = self.style or "qoperator"
        channels_last = n.take("channels_last", 0)
        if channels_last:
            n.bad_attr("channels_last", channels_last)
        x = self.act_params(n, 1, 2, "x")
        y = self.act_params(n, 3, 4, "y")
        if n.issues or x is None or y is None:
            return [self._pending(n, "QGlobalAveragePool", n.inputs[:1], n.outputs, {})]
        self.act[n.outputs[0]] = y
        attrs = dict(x_scale=x.scale, x_zero_point=x.zero_point, y_scale=y.scale,
                     y_zero_point=y.zero_point, y_dtype=y.dtype)
        return [self._pending(n, "QGlobalAveragePool", n.inputs[:1], n.outputs[:1], attrs)]

    def _QLinearAveragePool(self, n):
        self.style = self.style or "qoperator"
        channels_last = n.take("channels_last", 0)
        if channels_last:
            n.bad_attr("channels_last", channels_last)
        pool = {k: n.take(k) for k in ("auto_pad", "ceil_mode", "count_include_pad",
                                       "kernel_shape", "pads", "strides", "dilations")
                if k in n.attrs}
        x = self.act_params(n, 1, 2, "x")
        y = self.act_params(n, 3, 4, "y")
        if n.issues or x is None or y is None:
            return [self._pending(n, "QAveragePool", n.inputs[:1], n.outputs, {})]
        self.act[n.outputs[0]] = y
        attrs = dict(pool, x_scale=x.scale, x_zero_point=x.zero_point, y_scale=y.scale,
                     y_zero_point=y.zero_point, y_dtype=y.dtype)
        return [self._pending(n, "QAveragePool", n.inputs[:1], n.outputs[:1], attrs)]

    def _float_between(self, n, op, attrs, xs=((0, 1, 2),), y=(3, 4)):
        """Quantized inputs -> quantized output by a float op: DequantizeLinear each input, run the
        float op, QuantizeLinear the result. That is ONNX's own definition of these ops; there is
        no integer kernel for them. ``xs``: (value, scale, zero point) input positions; ``y``:
        (scale, zero point) of the output."""
        self.style = self.style or "qoperator"
        params = [self.act_params(n, i_s, i_z, "x") for _, i_s, i_z in xs]
        out = self.act_params(n, y[0], y[1], "y")
        if n.issues or out is None or any(p is None for p in params):
            return [self._pending(n, op, [n.input(i) for i, _, _ in xs], n.outputs, {})]
        nodes, reals = [], []
        for k, ((i, _, _), p) in enumerate(zip(xs, params)):
            real = self.imp.fresh(f"{n.name}/x{k}_real")
            nodes.append(self._pending(n, "DequantizeLinear", [n.input(i)], [real],
                                       dict(x_scale=p.scale, x_zero_point=p.zero_point),
                                       f"{n.name}/dequantize{k}"))
            reals.append(real)
        real_y = self.imp.fresh(f"{n.name}/y_real")
        self.act[n.outputs[0]] = out
        return nodes + [
            self._pending(n, op, reals, [real_y], attrs, f"{n.name}/{op.lower()}"),
            self._pending(n, "QuantizeLinear", [real_y], n.outputs[:1],
                          dict(y_scale=out.scale, y_zero_point=out.zero_point, y_dtype=out.dtype),
                          f"{n.name}/quantize"),
        ]

    def _QLinearConcat(self, n):
        # inputs: Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per input
        count = (len(n.inputs) - 2) // 3
        xs = tuple((2 + 3 * k, 3 + 3 * k, 4 + 3 * k) for k in range(count))
        return self._float_between(n, "Concat", dict(axis=int(n.take("axis"))), xs, (0, 1))

    def _QLinearMul(self, n):
        # inputs: A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point
        return self._float_between(n, "Mul", {}, ((0, 1, 2), (3, 4, 5)), (6, 7))

    def _QLinearSoftmax(self, n):
        axis = int(n.take("axis", -1))
        legacy = int(n.take("opset", 13)) < 13  # the Softmax semantics it quantizes
        return self._float_between(n, "Softmax", dict(axis=axis, coerce_2d=int(legacy and axis != -1)))

    def _QLinearSigmoid(self, n):
        return self._float_between(n, "Sigmoid", {})

    def _QLinearLeakyRelu(self, n):
        return self._float_between(n, "LeakyRelu", dict(alpha=float(n.take("alpha", 0.01))))

    # -- ops of the default domain applied to integer tensors --------------------------------------
    def after(self, node):
        """A float-importer node that reads an integer activation: QMaxPool, or a shape op that
        passes the parameters on; any other op on integers is refused."""
        ins = [self.act.get(name) for name in node.inputs[:1]]
        if node.op == "Concat":
            ins = [self.act.get(name) for name in node.inputs]
            if any(p is not None for p in ins):
                if len(set(ins)) != 1:
                    node.issues.append(("dtypes", "Concat of quantized tensors with different "
                                                  "scales or zero points"))
                    return
                self.act[node.outputs[0]] = ins[0]
            return
        if not ins or ins[0] is None:
            return
        if node.op == "MaxPool":
            node.op = "QMaxPool"
            self.act[node.outputs[0]] = ins[0]
        elif node.op == "Pad":  # integers in, the same integers and parameters out
            value = node.attrs.get("value", 0)
            info = np.iinfo(ins[0].dtype)
            if node.attrs.get("mode", "constant") == "constant" and not (
                    float(value).is_integer() and info.min <= value <= info.max):
                node.issues.append(("attributes", f"Pad of a {ins[0].dtype} tensor with value "
                                                  f"{value}"))
                return
            self.act[node.outputs[0]] = ins[0]
            if self.rank(node.inputs[0]) is not None:
                self.ranks[node.outputs[0]] = self.rank(node.inputs[0])
        elif node.op in SHAPE_OPS:
            self.act[node.outputs[0]] = ins[0]
            if node.op == "Flatten":
                self.ranks[node.outputs[0]] = 2
            elif node.op in ("Identity", "Dropout") and self.rank(node.inputs[0]) is not None:
                self.ranks[node.outputs[0]] = self.rank(node.inputs[0])
        else:
            node.issues.append(("dtypes", f"{node.op} on a quantized ({ins[0].dtype}) tensor"))

    # -- weights, bias, validation -----------------------------------------------------------------
    def make_linear(self, n, op, x_name, x: Act, w: QConst, layout, bias, y: Act, attrs, out,
                    clip=(None, None), name=None):
        """A QConv/QGemm node: weight converted to the IR form, bias to int32 at x_scale·w_scale."""
        node_name = name or n.name
        w_tensor, w_meta = self.weight(node_name, w, layout)
        inputs = [x_name, self.add_tensor(w.raw, w_tensor, w_meta)]
        b_tensor = None
        if bias is not None:
            b_tensor, b_meta = self.bias(node_name, bias, x, w, w_tensor)
            inputs.append(self.add_tensor(bias[1], b_tensor, b_meta))
        self.check_accumulator(node_name, op, x, w_tensor, b_tensor)
        self.act[out] = y
        self.ranks[out] = 2 if op == "QGemm" else self.rank(x_name)
        attrs = dict(attrs, x_scale=x.scale, x_zero_point=x.zero_point, y_scale=y.scale,
                     y_zero_point=y.zero_point, y_dtype=y.dtype, clip_min=clip[0],
                     clip_max=clip[1])
        return Pending(node_name, op, inputs, [out], normalize_attrs(op, attrs), [])

    def add_tensor(self, base, tensor, meta) -> str:
        name = base if base not in self.tensors else self.imp.fresh(base)
        self.tensors[name] = tensor
        meta = dict(meta, quantization=self.style or "qdq")
        self.meta[name] = meta
        return name

    def weight(self, node_name, w: QConst, layout):
        """(int8 Dense (N, ...) with QuantParams, metadata) from a constant's integers.

        layout: "conv" (N,C/g,kh,kw), "nk" (N,K) or "kn" (K,N, transposed here); the output-channel
        axis is 0 for the first two and 1 for "kn".
        """
        where = f"{self.imp.where}: node {node_name!r}: weight {w.raw!r}"
        q, scale, zp = np.asarray(w.q), np.asarray(w.scale, np.float32), np.asarray(w.zero_point)
        if q.dtype.name not in ("int8", "uint8"):
            raise UnsupportedModelError(f"{where}: {q.dtype} weights are not supported "
                                        f"(int8 or uint8 only)")
        if layout in ("nk", "kn") and q.ndim != 2:
            raise ModelFormatError(f"{where}: expected a 2-D weight, got shape {list(q.shape)}")
        out_axis = 1 if layout == "kn" else 0
        per_channel = scale.ndim == 1 and scale.size > 1
        if scale.ndim == 1 and scale.size == 1 and q.shape[out_axis] == 1:
            per_channel = True
        if per_channel:
            if w.axis % q.ndim != out_axis:
                raise UnsupportedModelError(f"{where}: per-channel scales along axis {w.axis}, "
                                            f"which is not the output-channel axis {out_axis}")
            if scale.shape != (q.shape[out_axis],) or zp.size != scale.size:
                raise ModelFormatError(f"{where}: {scale.size} scales / {zp.size} zero points for "
                                       f"{q.shape[out_axis]} output channels")
        elif scale.size != 1 or zp.size != 1:
            raise ModelFormatError(f"{where}: scale shape {list(scale.shape)} fits neither per "
                                   f"tensor nor per output channel of shape {list(q.shape)}")
        if layout == "kn":
            q = q.T
        bshape = (-1,) + (1,) * (q.ndim - 1) if per_channel else ()
        scale = scale.reshape(-1) if per_channel else scale.reshape(())
        zp = zp.astype(np.int64).reshape(-1) if per_channel else zp.astype(np.int64).reshape(())
        v = q.astype(np.int64) - zp.reshape(bshape)
        requantized = False
        if v.size and (v.min() < W_RANGE[0] or v.max() > W_RANGE[1]):
            # Not int8 with zero point 0: quantize the real values again with zeroskip's quantizer.
            real = scale.astype(np.float64).reshape(bshape) * v
            axis = 0 if per_channel else None
            scale = choose_weight_scales(real, axis)
            v = quantize_weights(real, scale, axis)
            requantized = True
        q8 = np.ascontiguousarray(v.astype(np.int8))
        quant = QuantParams(scale.astype(np.float32), np.zeros(scale.shape, np.int8),
                            0 if per_channel else None)
        meta = {"origin": "onnx", "sparsity": _sparsity(q8),
                "granularity": "per-channel" if per_channel else "per-tensor"}
        if requantized:
            meta["requantized"] = True
        return Dense(q8, quant), meta

    def bias(self, node_name, bias, x: Act, w: QConst, w_tensor: Dense):
        """int32 Dense [N] with scale x_scale·w_scale[n] (zero point 0), and its metadata.

        bias: ("int", name, q) — integers with the ONNX op's implicit scale x_scale·w_scale
        (QOperator), ("qconst", name, QConst) — a QDQ bias with its own parameters, or
        ("float", name, real) — real values.
        """
        kind, name, value = bias
        n_out = w_tensor.shape[0]
        where = f"{self.imp.where}: node {node_name!r}: bias {name!r}"
        target = quantmath.bias_scales(x.scale, w_tensor.quant.scale, n_out)
        if kind == "int":
            q = np.asarray(value)
            if q.dtype != np.int32:
                raise ModelFormatError(f"{where}: expected int32, got {q.dtype}")
            src_w = np.broadcast_to(np.asarray(w.scale, np.float64).reshape(-1), (n_out,))
            real_scale = (np.float64(x.scale) * src_w)
            src_scale, src_zp = real_scale, np.zeros(n_out, np.int64)
        elif kind == "qconst":
            q = np.asarray(value.q)
            src_scale = np.broadcast_to(np.asarray(value.scale, np.float64).reshape(-1), (n_out,))
            src_zp = np.broadcast_to(np.asarray(value.zero_point, np.int64).reshape(-1), (n_out,))
        else:
            q, src_scale, src_zp = None, None, None
        if q is not None and q.reshape(-1).shape != (n_out,):
            raise ModelFormatError(f"{where}: shape {list(q.shape)} is not ({n_out},)")
        if q is not None:
            q = q.reshape(-1)
        exact = (q is not None and q.dtype == np.int32 and not np.any(src_zp)
                 and np.allclose(src_scale, target, rtol=1e-6, atol=0))
        meta = {"origin": "onnx", "granularity": "per-channel"}
        if exact:
            q32 = q.astype(np.int32)
        else:
            real = (np.asarray(value, np.float64).reshape(-1) if q is None
                    else src_scale * (q.astype(np.int64) - src_zp))
            if real.shape != (n_out,):
                raise ModelFormatError(f"{where}: shape {list(np.shape(value))} is not ({n_out},)")
            q32 = quantmath.quantize_bias(real, target)
            if q32 is None:
                raise UnsupportedModelError(f"{where}: does not fit int32 at scale x_scale·w_scale")
            if q is None or not np.array_equal(q32, q):
                meta["requantized"] = True
        meta["sparsity"] = _sparsity(q32)
        return Dense(q32, QuantParams(target, np.zeros(n_out, np.int32), 0)), meta

    def check_accumulator(self, node_name, op, x: Act, w_tensor: Dense, b_tensor):
        """Refuse a layer whose int32 accumulator could overflow (docs/quantization.md §4).

        ``quantmath.check_accumulator_range``: K·max|q_w·q_x| + max|b − x_zp·Σ_k q_w| < 2^31 with
        max|q_w·q_x| = ``quantmath.MAX_ABS_PRODUCT`` (255·128 for uint8 activations, 128·128 for
        int8, since weights may be anything in [−128, 127])."""
        try:
            quantmath.check_layer_accumulator(w_tensor.to_numpy(), x.zero_point,
                                              None if b_tensor is None else b_tensor.to_numpy(),
                                              x.dtype)
        except UnsupportedModelError as err:
            raise UnsupportedModelError(f"{self.imp.where}: node {node_name!r} ({op}): {err}") from None


def _float32_only(n, key):
    """Pop an element-type attribute that zeroskip honours only as 0 (the default) or float32."""
    value = n.take(key, 0)
    if value not in (0, n.imp.onnx.TensorProto.FLOAT):
        n.bad_attr(key, value)


def _sparsity(array) -> float:
    return float(1.0 - np.count_nonzero(array) / array.size) if array.size else 0.0


def check_scale(where, node_name, tensor_name, scale):
    """Scales must be finite and > 0 (ModelFormatError naming the tensor)."""
    scale = np.asarray(scale, dtype=np.float64)
    bad = ~np.isfinite(scale) | (scale <= 0)
    if np.any(bad):
        raise ModelFormatError(f"{where}: node {node_name!r}: scale {tensor_name!r} must be finite "
                               f"and > 0, got {scale[bad].ravel()[:4].tolist()}")


# --------------------------------------------------------------------------------------------------
# QDQ fusion
# --------------------------------------------------------------------------------------------------

_LINEAR = ("Conv", "Gemm", "MatMul")
_FUSE = frozenset(_LINEAR + ("Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Pad")) | SHAPE_OPS


def fuse_qdq(qi: QuantImport, pending, graph_outputs):
    """Rewrite DQ -> float op -> [activation] -> Q patterns into quantized IR ops (module docstring).

    pending — the converted nodes in topological order; returns the new list (dead DQ nodes are left
    for the importer's liveness pass to drop).
    """
    outputs = set(graph_outputs)
    readers: dict[str, list] = {}
    producer = {}
    for node in pending:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)
        for name in node.outputs:
            producer[name] = node
    removed = set()
    result = []
    for node in pending:
        if id(node) in removed:
            continue
        fused = None
        if node.op in _FUSE and not node.issues:
            fused = _match(qi, node, readers, producer, outputs)
        if fused is None:
            result.append(node)
            continue
        new, gone = fused
        removed.update(id(g) for g in gone)
        result.extend(new if isinstance(new, list) else [new])
    return result


def _only_reader(name, readers, outputs):
    found = readers.get(name, [])
    if name in outputs or len(found) != 1:
        return None
    return found[0]


def _match(qi: QuantImport, f, readers, producer, outputs):
    """(replacement node or nodes, [nodes it replaces]) for the float node ``f``, or None."""
    reader = _only_reader(f.outputs[0], readers, outputs)
    if reader is None or reader.issues:
        return None
    act, clip = None, (None, None)
    if reader.op in ("Relu", "Clip") and f.op in _LINEAR + ("Add",):
        act = reader
        clip = (0.0, None) if reader.op == "Relu" else (reader.attrs["min"], reader.attrs["max"])
        reader = _only_reader(act.outputs[0], readers, outputs)
        if reader is None or reader.issues:
            return None
    if reader.op != "QuantizeLinear" or not reader.attrs:
        return None
    q = reader
    y = Act(q.attrs["y_scale"], q.attrs["y_zero_point"], q.attrs["y_dtype"])
    gone = [q] + ([act] if act is not None else [])
    out = q.outputs[0]

    def dq_of(name):
        """(integer input, its Act) when ``name`` is made by an activation DequantizeLinear."""
        d = producer.get(name)
        if d is None or d.op != "DequantizeLinear" or d.issues or not d.attrs:
            return None
        src = qi.act.get(d.inputs[0])
        dtype = src.dtype if src is not None else _const_dtype(qi, d.inputs[0])
        if dtype is None:
            return None
        return d.inputs[0], Act(d.attrs["x_scale"], d.attrs["x_zero_point"], dtype)

    if f.op in _LINEAR:
        x = dq_of(f.inputs[0])
        w = qi.qconst.get(f.inputs[1])
        if x is None or w is None:
            return None
        attrs = {}
        if f.op == "Conv":
            op, layout = "QConv", "conv"
            attrs = {k: v for k, v in f.attrs.items()}
        elif f.op == "Gemm":
            a = f.attrs
            if a["alpha"] != 1.0 or a["transA"] or (len(f.inputs) > 2 and a["beta"] != 1.0):
                return None
            op, layout = "QGemm", "nk" if a["transB"] else "kn"
        else:
            if w.q.ndim != 2:
                return None
            if qi.rank(f.inputs[0]) != 2:
                inner = qi.row_dims(f.inputs[0])
                if inner is None:
                    return None
                qi.style = qi.style or "qdq"
                return qi.matmul_rows(_NodeRef(f), x[0], inner, x[1], w, y, out, clip=clip,
                                      name=f.name), gone
            op, layout = "QGemm", "kn"
        if w.q.ndim < 2 or (f.op == "Conv" and w.q.ndim < 3):
            return None
        bias = None
        if len(f.inputs) > 2 and f.inputs[2]:
            n_out = w.q.shape[1 if layout == "kn" else 0]
            b_name = f.inputs[2]
            if b_name in qi.qconst:
                bias = ("qconst", qi.qconst[b_name].raw, qi.qconst[b_name])
            elif b_name in qi.imp.consts:
                bias = ("float", b_name, qi.imp.consts[b_name])
            else:
                return None
            if np.size(bias[2].q if bias[0] == "qconst" else bias[2]) != n_out:
                return None  # a broadcast C: leave the float Gemm alone
        qi.style = qi.style or "qdq"
        new = qi.make_linear(_NodeRef(f), op, x[0], x[1], w, layout, bias, y, attrs, out,
                             clip=clip, name=f.name)
        return new, gone
    if f.op == "Add":
        operands = []
        for name in f.inputs:
            found = dq_of(name)
            if found is None and name in qi.qconst and qi.qconst[name].scale.size == 1:
                c = qi.qconst[name]
                if c.q.dtype.name in ACT_DTYPES:
                    found = c.raw, Act(float(c.scale.reshape(-1)[0]),
                                       int(np.asarray(c.zero_point).reshape(-1)[0]), c.q.dtype.name)
            if found is None:
                return None
            operands.append(found)
        (a_name, a), (b_name, b) = operands
        qi.style = qi.style or "qdq"
        a_name, b_name = qi.const_operand(a_name, a), qi.const_operand(b_name, b)
        attrs = dict(a_scale=a.scale, a_zero_point=a.zero_point, b_scale=b.scale,
                     b_zero_point=b.zero_point, y_scale=y.scale, y_zero_point=y.zero_point,
                     y_dtype=y.dtype, clip_min=clip[0], clip_max=clip[1])
        qi.act[out] = y
        return Pending(f.name, "QAdd", [a_name, b_name], [out], normalize_attrs("QAdd", attrs), []), gone
    if f.op in ("AveragePool", "GlobalAveragePool"):
        x = dq_of(f.inputs[0])
        if x is None:
            return None
        op = "Q" + f.op
        attrs = dict(f.attrs, x_scale=x[1].scale, x_zero_point=x[1].zero_point, y_scale=y.scale,
                     y_zero_point=y.zero_point, y_dtype=y.dtype)
        qi.act[out] = y
        return Pending(f.name, op, [x[0]], [out], normalize_attrs(op, attrs), []), gone
    # MaxPool and shape ops: integers move unchanged, so in and out must share their parameters.
    data_inputs = f.inputs if f.op == "Concat" else f.inputs[:1]
    xs = [dq_of(name) for name in data_inputs]
    if any(x is None or x[1] != y for x in xs):
        return None
    op = "QMaxPool" if f.op == "MaxPool" else f.op
    attrs = dict(f.attrs)
    if op == "Pad" and attrs["mode"] == "constant":  # the real pad value as an exact integer
        q_value = float(attrs["value"]) / np.float32(y.scale) + y.zero_point
        info = np.iinfo(y.dtype)
        if not (float(q_value).is_integer() and info.min <= q_value <= info.max):
            return None
        attrs["value"] = int(q_value)
    inputs = [x[0] for x in xs] + list(f.inputs[len(data_inputs):])
    qi.act[out] = y
    return Pending(f.name, op, inputs, [out], normalize_attrs(op, attrs), []), gone


def _const_dtype(qi, name):
    value = qi.imp.consts.get(name)
    return value.dtype.name if value is not None and value.dtype.name in ACT_DTYPES else None


class _NodeRef:
    """What ``make_linear`` needs of a node: its name."""

    def __init__(self, node):
        self.name = node.name
