"""The float64 reference ops against onnxruntime, op by op, over a spread of attributes.

Each case builds a one-node ONNX graph, runs it in onnxruntime on float32 inputs, calls the
reference function on the same values as float64 with the IR's attributes, and compares shape,
dtype class and values. Shape inference is tested on small graphs built with ``zeroskip.model``.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper

from zeroskip import ops as ir_ops
from zeroskip.errors import InputError, ModelFormatError
from zeroskip.ops import normalize_attrs
from zeroskip.reference import OPS
from zeroskip.reference.ops import conv as conv_module
from zeroskip.reference.ops import elementwise, layout, matmul, normalization, pool, reduce

RTOL = ATOL = 1e-5


# -- helpers -----------------------------------------------------------------------------------
def rand(shape, seed=0, low=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    return (np.abs(x) + low if low is not None else x).astype(np.float32)


def _elem(array):
    return helper.np_dtype_to_tensor_dtype(np.asarray(array).dtype)


def run_onnx(op, inputs, attrs=None, opset=17, out_dtype=None, oracle="ort"):
    """Run one ``op`` node on ``inputs`` (arrays; None = an omitted input) in onnxruntime, or in
    onnx's own reference evaluator (``oracle="onnx"``) where onnxruntime refuses the attributes."""
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    while names and names[-1] == "":
        names.pop()
    node = helper.make_node(op, names, ["y"], **(attrs or {}))
    graph_inputs = [helper.make_tensor_value_info(n, _elem(a), list(np.shape(a)))
                    for n, a in zip(names, inputs) if n]
    out_elem = _elem(np.zeros((), out_dtype or np.float32))
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_tensor_value_info("y", out_elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    feeds = {n: a for n, a in zip(names, inputs) if n}
    if oracle == "onnx":
        from onnx.reference import ReferenceEvaluator

        return np.asarray(ReferenceEvaluator(model).run(None, feeds)[0])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], feeds)[0]


def as_ref(a):
    """What the executor hands a reference op: float64 floats, int64 integers."""
    if a is None:
        return None
    a = np.asarray(a)
    return a.astype(np.float64) if a.dtype.kind == "f" else a.astype(np.int64)


def full_attrs(op, **attrs):
    return ir_ops.normalize_attrs(op, attrs)


def check(op, inputs, onnx_attrs=None, ir_attrs=None, opset=17, onnx_inputs=None, out_dtype=None,
          oracle="ort"):
    """Compare onnxruntime's ``op`` with the reference on the same inputs; return the reference's.

    onnx_inputs — the ONNX node's inputs when they differ from the reference's (attributes that
    later opsets pass as inputs).
    """
    want = run_onnx(op, onnx_inputs if onnx_inputs is not None else inputs, onnx_attrs, opset,
                    out_dtype, oracle)
    got = OPS[op](*[as_ref(a) for a in inputs], **full_attrs(op, **(ir_attrs or {})))
    assert isinstance(got, np.ndarray)
    assert got.shape == want.shape, f"{op}: shape {got.shape} != onnxruntime's {want.shape}"
    if want.dtype.kind == "f":
        assert got.dtype == np.float64, f"{op}: dtype {got.dtype}, expected float64"
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=op)
    else:
        assert got.dtype.kind == want.dtype.kind, f"{op}: dtype {got.dtype} vs {want.dtype}"
        np.testing.assert_array_equal(got, want, err_msg=op)
    return got


def test_every_ir_op_has_a_reference():
    assert set(OPS) == set(ir_ops.OPS)


# -- Conv --------------------------------------------------------------------------------------
CONV_CASES = [
    # x shape, w shape, attrs (ONNX = IR here)
    ((2, 3, 7, 7), (4, 3, 3, 3), {}),
    ((1, 3, 8, 9), (5, 3, 3, 2), dict(pads=[1, 0, 2, 1])),
    ((1, 4, 9, 9), (6, 2, 3, 3), dict(group=2, strides=[2, 2], pads=[1, 1, 1, 1])),
    ((2, 6, 8, 8), (6, 1, 3, 3), dict(group=6, pads=[1, 1, 1, 1])),  # depthwise
    ((1, 4, 8, 8), (8, 1, 3, 3), dict(group=4, strides=[2, 1])),  # depthwise multiplier 2
    ((1, 3, 11, 10), (2, 3, 3, 3), dict(dilations=[2, 3], pads=[2, 1, 0, 3])),
    ((1, 3, 10, 11), (4, 3, 3, 4), dict(auto_pad="SAME_UPPER", strides=[2, 3])),
    ((1, 3, 10, 11), (4, 3, 4, 3), dict(auto_pad="SAME_LOWER", strides=[3, 2])),
    ((1, 3, 10, 11), (4, 3, 3, 3), dict(auto_pad="VALID", strides=[2, 2])),
    ((1, 3, 6, 6), (4, 3, 1, 1), dict(auto_pad="NOTSET", strides=[2, 2])),
    ((1, 3, 7, 5), (4, 3, 7, 5), {}),  # kernel as large as the input
    ((2, 3, 10), (4, 3, 3), dict(pads=[1, 2], strides=[2])),  # 1-D
    ((1, 4, 12), (4, 2, 5), dict(group=2, dilations=[2], pads=[3, 4])),
    ((1, 2, 5, 6, 4), (3, 2, 3, 2, 2), dict(pads=[1, 0, 1, 1, 1, 0], strides=[1, 2, 1])),  # 3-D
    ((1, 3, 12, 12), (8, 3, 5, 5), dict(kernel_shape=[5, 5], strides=[4, 4], pads=[2, 2, 2, 2])),
]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("x_shape, w_shape, attrs", CONV_CASES)
def test_conv(x_shape, w_shape, attrs, bias):
    x, w = rand(x_shape, 1), rand(w_shape, 2)
    b = rand(w_shape[:1], 3) if bias else None
    check("Conv", [x, w, b], attrs, attrs)


@pytest.mark.parametrize("x_shape, w_shape, attrs", [
    ((1, 3, 9, 9), (4, 3, 2, 2), dict(auto_pad="SAME_UPPER", dilations=[2, 2])),
    ((1, 3, 9, 10), (4, 3, 3, 2), dict(auto_pad="SAME_LOWER", dilations=[2, 3], strides=[2, 1])),
    ((1, 4, 12), (4, 2, 5), dict(group=2, dilations=[2], auto_pad="SAME_UPPER")),
])
def test_conv_same_dilated(x_shape, w_shape, attrs):
    """onnxruntime refuses dilations with SAME_*; the ONNX spec's own evaluator is the oracle."""
    check("Conv", [rand(x_shape, 1), rand(w_shape, 2)], attrs, attrs, oracle="onnx")


def test_conv_errors():
    x, w = as_ref(rand((1, 4, 5, 5))), as_ref(rand((2, 3, 3, 3)))
    with pytest.raises(InputError, match="channels"):
        conv_module.conv(x, w)
    with pytest.raises(InputError, match="window"):
        conv_module.conv(x, as_ref(rand((2, 4, 7, 7))))
    with pytest.raises(InputError, match="kernel_shape"):
        conv_module.conv(x, as_ref(rand((2, 4, 3, 3))), kernel_shape=[2, 2])
    with pytest.raises(InputError, match="channels"):
        conv_module.conv(x, as_ref(rand((3, 2, 3, 3))), group=2)  # M not divisible by group


# -- pooling -----------------------------------------------------------------------------------
POOL_CASES = [
    ((2, 3, 8, 8), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ((1, 2, 7, 7), dict(kernel_shape=[3, 3], strides=[2, 2])),
    ((1, 2, 7, 7), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ((1, 2, 8, 8), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ((1, 2, 6, 6), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    ((1, 2, 6, 7), dict(kernel_shape=[2, 3], strides=[2, 2], pads=[1, 0, 0, 1], ceil_mode=1)),
    ((1, 2, 9, 8), dict(kernel_shape=[3, 3], strides=[3, 2], pads=[0, 1, 2, 1])),
    ((1, 2, 5, 5), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    ((1, 2, 10, 10), dict(kernel_shape=[3, 3], strides=[3, 3], pads=[1, 1, 1, 1], ceil_mode=1)),
    ((1, 2, 7, 8), dict(kernel_shape=[3, 2], strides=[2, 3], auto_pad="SAME_UPPER")),
    ((1, 2, 7, 8), dict(kernel_shape=[3, 2], strides=[2, 3], auto_pad="SAME_LOWER")),
    ((1, 2, 7, 8), dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="VALID")),
    ((1, 2, 7, 8), dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="VALID", ceil_mode=1)),
    ((2, 3, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),  # 1-D
    ((2, 3, 11), dict(kernel_shape=[4], strides=[3], pads=[2, 1], ceil_mode=1)),
    ((1, 2, 5, 6, 4), dict(kernel_shape=[2, 3, 2], strides=[2, 2, 1], pads=[0, 1, 0, 1, 1, 1])),
    ((1, 3, 13, 13), dict(kernel_shape=[3, 3], strides=[2, 2])),  # AlexNet-style overlap
    # ceil_mode windows that would start in the end padding are dropped: W 5, k 2, s 3, pad 1
    # gives ceil((5 + 1 − 2) / 3) + 1 = 3 windows, starting at 0, 3 and 6 — and 6 is padding.
    ((1, 2, 5, 5), dict(kernel_shape=[2, 2], strides=[3, 3], pads=[0, 0, 1, 1], ceil_mode=1)),
    ((1, 2, 8, 5), dict(kernel_shape=[3, 2], strides=[3, 3], pads=[1, 0, 2, 1], ceil_mode=1)),
    ((1, 2, 11), dict(kernel_shape=[3], strides=[4], pads=[0, 2], ceil_mode=1)),
]


@pytest.mark.parametrize("x_shape, attrs", POOL_CASES)
def test_max_pool(x_shape, attrs):
    check("MaxPool", [rand(x_shape, 4)], attrs, attrs)


@pytest.mark.parametrize("x_shape, attrs", [
    ((1, 2, 9, 9), dict(kernel_shape=[3, 3], dilations=[2, 2])),
    ((1, 2, 9, 10), dict(kernel_shape=[2, 3], dilations=[3, 2], strides=[2, 1], pads=[1, 2, 1, 0])),
    ((1, 2, 9, 10), dict(kernel_shape=[2, 2], dilations=[2, 2], strides=[2, 2], ceil_mode=1)),
    ((1, 2, 12), dict(kernel_shape=[3], dilations=[3], pads=[2, 2])),
])
def test_max_pool_dilated(x_shape, attrs):
    check("MaxPool", [rand(x_shape, 5)], attrs, attrs)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("x_shape, attrs", POOL_CASES)
def test_average_pool(x_shape, attrs, count_include_pad):
    attrs = dict(attrs, count_include_pad=count_include_pad)
    check("AveragePool", [rand(x_shape, 6)], attrs, attrs)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("x_shape", [(2, 3, 5, 4), (1, 4, 7), (1, 2, 3, 4, 2), (2, 3, 1, 1)])
def test_global_pool(op, x_shape):
    check(op, [rand(x_shape, 7)])


def test_pool_errors():
    x = as_ref(rand((1, 2, 4, 4)))
    with pytest.raises(InputError, match="window"):
        pool.max_pool(x, kernel_shape=[5, 5])
    with pytest.raises(InputError, match="spatial"):
        pool.average_pool(x, kernel_shape=[2])
    with pytest.raises(InputError, match="pads"):
        pool.max_pool(x, kernel_shape=[2, 2], pads=[1, 1])


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("x_shape, attrs", [
    ((1, 2, 9, 9), dict(kernel_shape=[3, 3], dilations=[2, 2])),
    ((1, 2, 9, 10), dict(kernel_shape=[2, 3], dilations=[3, 2], strides=[2, 1], pads=[1, 2, 1, 0])),
    ((1, 2, 9, 10), dict(kernel_shape=[2, 2], dilations=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1],
                         ceil_mode=1)),
])
def test_average_pool_dilated(x_shape, attrs, count_include_pad):
    """AveragePool takes dilations from opset 19 on."""
    attrs = dict(attrs, count_include_pad=count_include_pad)
    check("AveragePool", [rand(x_shape, 8)], attrs, attrs, opset=19)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("auto_pad, pads", [("SAME_UPPER", [2, 1, 2, 2]),
                                            ("SAME_LOWER", [2, 2, 2, 1])])
def test_pool_same_dilated(op, auto_pad, pads):
    """SAME with dilations, per the spec: out = ceil(in / s), pads (out−1)·s + (k−1)·d + 1 − in.

    onnxruntime sizes these pads from the undilated kernel (so its out != ceil(in / s)) and onnx's
    reference evaluator gets dilated pools wrong, so the oracle is onnxruntime with the spec's pads
    worked out by hand: H: in 9, s 2, k 3, d 2 -> out 5, total 4; W: in 10, s 2, k 3, d 2 -> out 5,
    total 3, the odd one at the end (UPPER) or the beginning (LOWER).
    """
    attrs = dict(kernel_shape=[3, 3], dilations=[2, 2], strides=[2, 2])
    check(op, [rand((1, 2, 9, 10), 9)], dict(attrs, pads=pads), dict(attrs, auto_pad=auto_pad),
          opset=19)


# -- Gemm, MatMul ------------------------------------------------------------------------------
@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (0.5, 2.0), (-1.5, 0.0)])
@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), (3, 1), (3, 5), ()])
def test_gemm(trans_a, trans_b, alpha, beta, c_shape):
    m, k, n = 3, 4, 5
    a = rand((k, m) if trans_a else (m, k), 1)
    b = rand((n, k) if trans_b else (k, n), 2)
    c = rand(c_shape, 3) if c_shape is not None else None
    attrs = dict(alpha=alpha, beta=beta, transA=trans_a, transB=trans_b)
    check("Gemm", [a, b, c], attrs, attrs)


@pytest.mark.parametrize("a_shape, b_shape", [
    ((3, 4), (4, 5)), ((1, 1), (1, 1)), ((7, 17), (17, 2)), ((2, 3, 4), (2, 4, 5)),
    ((2, 3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 1, 3, 4), (5, 4, 2)),
    ((4,), (2, 4, 3)), ((2, 3, 4), (4,)),
])
def test_matmul(a_shape, b_shape):
    check("MatMul", [rand(a_shape, 1), rand(b_shape, 2)])


def test_matmul_gemm_errors():
    with pytest.raises(InputError, match="K"):
        matmul.matmul(np.ones((3, 4)), np.ones((5, 2)))
    with pytest.raises(InputError, match="batch"):
        matmul.matmul(np.ones((2, 3, 4)), np.ones((3, 4, 2)))
    with pytest.raises(InputError, match="K"):
        matmul.gemm(np.ones((3, 4)), np.ones((5, 2)))
    with pytest.raises(InputError, match="broadcast"):
        matmul.gemm(np.ones((3, 4)), np.ones((4, 2)), np.ones((2, 3)))


# -- elementwise and activations ---------------------------------------------------------------
BROADCASTS = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (2, 3)),
              ((1, 5, 1, 1), (2, 5, 3, 3))]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("a_shape, b_shape", BROADCASTS)
def test_binary(op, a_shape, b_shape):
    b = rand(b_shape, 2)
    if op == "Div":
        b = np.where(np.abs(b) < 0.1, np.float32(0.5), b).astype(np.float32)
    check(op, [rand(a_shape, 1), b])


def test_div_integer_truncates():
    a = np.array([7, -7, 7, -7, 0, 6, -1], np.int64)
    b = np.array([2, 2, -2, -2, 3, 3, 4], np.int64)
    check("Div", [a, b], out_dtype=np.int64)
    with pytest.raises(InputError, match="nonzero"):
        elementwise.div(a, np.zeros_like(b))


@pytest.mark.parametrize("shapes", [[(3, 4)], [(3, 4), (3, 4)], [(2, 3, 4), (4,), (3, 1)],
                                    [(1,), (2, 1), (1, 3), ()]])
def test_sum(shapes):
    check("Sum", [rand(s, i) for i, s in enumerate(shapes)])


def test_broadcast_error():
    with pytest.raises(InputError, match="broadcast"):
        elementwise.add(np.ones((3, 4)), np.ones((5,)))
    with pytest.raises(InputError, match="broadcast"):
        elementwise.sum(np.ones((3, 4)), np.ones((3, 4)), np.ones((2, 1, 5)))


@pytest.mark.parametrize("op", ["Relu", "Sigmoid", "Tanh"])
def test_unary(op):
    x = rand((2, 3, 4), 1) * 4
    x[0, 0, :2] = [80.0, -80.0]  # sigmoid saturation
    check(op, [x])


@pytest.mark.parametrize("lo, hi", [(None, None), (0.0, 6.0), (-0.5, None), (None, 0.3),
                                    (1.0, -1.0)])
def test_clip(lo, hi):
    x = rand((3, 5), 1)
    onnx_inputs = [x, np.array(lo, np.float32) if lo is not None else None,
                   np.array(hi, np.float32) if hi is not None else None]
    check("Clip", [x], ir_attrs=dict(min=lo, max=hi), onnx_inputs=onnx_inputs)


@pytest.mark.parametrize("alpha", [0.01, 0.2, 1.5])
def test_leaky_relu(alpha):
    check("LeakyRelu", [rand((4, 6), 1)], dict(alpha=alpha), dict(alpha=alpha))


@pytest.mark.parametrize("axis", [-1, 0, 1, 2, -3])
@pytest.mark.parametrize("coerce_2d", [0, 1])
def test_softmax(axis, coerce_2d):
    x = rand((2, 3, 4), 1) * 10
    x[0, 0, 0] = 500.0  # stability: a naive exp overflows
    opset = 11 if coerce_2d else 13
    check("Softmax", [x], dict(axis=axis), dict(axis=axis, coerce_2d=coerce_2d), opset=opset)


# -- reductions --------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceMax"])
@pytest.mark.parametrize("axes", [None, [0], [1], [-1], [2, 3], [-2, -1], [0, 1, 2, 3], [3, 0]])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce(op, axes, keepdims):
    x = rand((2, 3, 4, 5), 1)
    inputs = [x, np.array(axes, np.int64) if axes is not None else None]
    check(op, [x], dict(keepdims=keepdims), dict(axes=axes, keepdims=keepdims), opset=18,
          onnx_inputs=inputs)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceMax"])
def test_reduce_noop_with_empty_axes(op):
    x = rand((2, 3, 4), 1)
    attrs = dict(noop_with_empty_axes=1, keepdims=0)
    check(op, [x], attrs, attrs, opset=18)


# -- normalization -----------------------------------------------------------------------------
@pytest.mark.parametrize("x_shape", [(2, 3, 4, 5), (2, 3), (1, 4, 7), (1, 2, 3, 2, 2)])
@pytest.mark.parametrize("epsilon", [1e-5, 0.1])
def test_batch_normalization(x_shape, epsilon):
    c = x_shape[1]
    inputs = [rand(x_shape, 1), rand((c,), 2), rand((c,), 3), rand((c,), 4), rand((c,), 5, low=0.1)]
    check("BatchNormalization", inputs, dict(epsilon=epsilon), dict(epsilon=epsilon), opset=15)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("alpha, beta, bias", [(1e-4, 0.75, 1.0), (0.5, 0.5, 2.0), (2.0, 1.5, 0.5)])
def test_lrn(size, alpha, beta, bias):
    """onnxruntime takes odd sizes only (and onnx's evaluator loops over the wrong axis), so even
    sizes are checked against the spec's formula written out channel by channel."""
    attrs = dict(size=size, alpha=alpha, beta=beta, bias=bias)
    x = rand((2, 7, 3, 4), 1)
    if size % 2:
        check("LRN", [x], attrs, attrs)
        return
    x = x.astype(np.float64)
    want = np.empty_like(x)
    for c in range(x.shape[1]):
        lo, hi = max(0, c - (size - 1) // 2), min(x.shape[1] - 1, c + -(-(size - 1) // 2))
        square_sum = (x[:, lo:hi + 1] ** 2).sum(axis=1)
        want[:, c] = x[:, c] / (bias + alpha / size * square_sum) ** beta
    np.testing.assert_allclose(normalization.lrn(x, **attrs), want, rtol=1e-12)


def test_normalization_errors():
    with pytest.raises(InputError, match="scale"):
        normalization.batch_normalization(np.ones((1, 3, 2, 2)), *[np.ones(4)] * 4)


# -- layout ------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2, 3, 4, -1, -3, -4])
def test_flatten(axis):
    check("Flatten", [rand((2, 3, 4, 5), 1)], dict(axis=axis), dict(axis=axis))


@pytest.mark.parametrize("target, allowzero", [
    ([6, 20], 0), ([-1], 0), ([0, -1], 0), ([2, 0, 20], 0), ([-1, 4, 5], 0), ([0, 0, 0, 5], 0),
    ([1, 2, 1, 3, 20], 0), ([2, 3, 4, 5], 1), ([5, -1, 2], 1),
])
def test_reshape(target, allowzero):
    target = np.array(target, np.int64)
    check("Reshape", [rand((2, 3, 4, 5), 1), target], dict(allowzero=allowzero),
          dict(allowzero=allowzero))


def test_reshape_allowzero_empty():
    """allowzero=1 keeps a 0 as a zero-size dimension (an empty input)."""
    check("Reshape", [rand((0, 4), 1), np.array([4, 0], np.int64)], dict(allowzero=1),
          dict(allowzero=1))


@pytest.mark.parametrize("perm", [None, [0, 1, 2, 3], [0, 2, 3, 1], [3, 2, 1, 0], [1, 0, 3, 2]])
def test_transpose(perm):
    attrs = {} if perm is None else dict(perm=perm)
    check("Transpose", [rand((2, 3, 4, 5), 1)], attrs, attrs)


@pytest.mark.parametrize("axis, shapes", [
    (0, [(2, 3), (4, 3)]), (1, [(2, 3), (2, 1), (2, 5)]), (-1, [(2, 3, 4), (2, 3, 1)]),
    (-3, [(1, 3, 4), (2, 3, 4)]), (0, [(5,)]),
])
def test_concat(axis, shapes):
    check("Concat", [rand(s, i) for i, s in enumerate(shapes)], dict(axis=axis), dict(axis=axis))


def test_concat_int64():
    inputs = [np.array([0, 3], np.int64), np.array([-1], np.int64)]
    check("Concat", inputs, dict(axis=0), dict(axis=0), out_dtype=np.int64)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("pads", [[0, 0, 0, 0], [1, 2, 0, 1], [0, 1, 2, 3], [2, 2, 2, 2]])
def test_pad(mode, pads):
    x = rand((4, 5), 1)
    value = 1.5
    onnx_inputs = [x, np.array(pads, np.int64), np.array(value, np.float32)]
    check("Pad", [x], dict(mode=mode), dict(mode=mode, pads=pads, value=value),
          onnx_inputs=onnx_inputs)


@pytest.mark.parametrize("pads", [[-1, 0, 0, -2], [1, -1, -2, 2], [0, 0, 0, 0, 1, 0, 1, -1]])
def test_pad_negative_crops(pads):
    x = rand((3, 4, 5, 2)[:len(pads) // 2], 2)
    check("Pad", [x], {}, dict(pads=pads), onnx_inputs=[x, np.array(pads, np.int64)])


@pytest.mark.parametrize("op", ["Identity", "Dropout"])
def test_identity_and_dropout(op):
    check(op, [rand((3, 4), 1)])


@pytest.mark.parametrize("start, end", [(0, None), (1, None), (-2, None), (0, -1), (1, 3),
                                        (-10, 10), (3, 1)])
def test_shape(start, end):
    onnx_attrs = dict(start=start) | ({} if end is None else dict(end=end))
    check("Shape", [rand((2, 3, 4, 5), 1)], onnx_attrs, dict(start=start, end=end), opset=15,
          out_dtype=np.int64)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("indices", [np.array(1), np.array([0, 2, -1]),
                                     np.array([[1, 0], [-2, 2]])])
def test_gather(axis, indices):
    check("Gather", [rand((3, 4, 3), 1), indices.astype(np.int64)], dict(axis=axis),
          dict(axis=axis))


def test_gather_shape_vector():
    shape = np.array([7, 16, 4, 4], np.int64)
    check("Gather", [shape, np.array(0, np.int64)], out_dtype=np.int64)
    check("Gather", [shape, np.array([-1, 1], np.int64)], out_dtype=np.int64)


@pytest.mark.parametrize("axes", [[0], [1], [-1], [0, 3], [3, 0], [-1, -4], [1, 2]])
def test_unsqueeze(axes):
    x = rand((2, 3), 1)
    check("Unsqueeze", [x], ir_attrs=dict(axes=axes), onnx_inputs=[x, np.array(axes, np.int64)])


@pytest.mark.parametrize("axes", [None, [0], [-1], [0, 3], [3, 0]])
def test_squeeze(axes):
    x = rand((1, 3, 2, 1), 1)
    onnx_inputs = [x] if axes is None else [x, np.array(axes, np.int64)]
    check("Squeeze", [x], ir_attrs=dict(axes=axes), onnx_inputs=onnx_inputs)


ONNX_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
              "float64": TensorProto.DOUBLE, "int64": TensorProto.INT64,
              "int32": TensorProto.INT32, "int8": TensorProto.INT8, "uint8": TensorProto.UINT8,
              "bool": TensorProto.BOOL}


@pytest.mark.parametrize("to", ["float32", "float16", "float64", "int64", "int32", "int8", "bool"])
def test_cast_from_float(to):
    x = (rand((4, 5), 1) * 40).astype(np.float32)
    x[0, :4] = [2.7, -2.7, 0.0, 1e-4]  # truncation toward zero; float16 rounding
    if to in ("int8",):
        x = np.clip(x, -120, 120)
    check("Cast", [x], dict(to=ONNX_TYPES[to]), dict(to=to), out_dtype=np.dtype(to))


@pytest.mark.parametrize("to", ["float32", "int32", "int64"])
def test_cast_from_int(to):
    x = np.array([[3, -5, 0], [2 ** 20, 7, -1]], np.int64)
    check("Cast", [x], dict(to=ONNX_TYPES[to]), dict(to=to), out_dtype=np.dtype(to))


@pytest.mark.parametrize("dtype, value", [("float32", 0.0), ("float32", 0.1), ("int64", 7),
                                          ("int32", -2), ("float16", 1.7)])
@pytest.mark.parametrize("shape", [[2, 3], [4], [], [2, 0, 3]])
def test_constant_of_shape(dtype, value, shape):
    tensor = helper.make_tensor("value", ONNX_TYPES[dtype], [1], [value])
    check("ConstantOfShape", [np.array(shape, np.int64)], dict(value=tensor),
          dict(value=value, dtype=dtype), out_dtype=np.dtype(dtype))


def test_layout_errors():
    x = np.zeros((2, 3, 4))
    with pytest.raises(InputError, match=r"\(2, 3, 4\)"):
        layout.reshape(x, np.array([5, -1]))
    with pytest.raises(InputError, match="element count"):
        layout.reshape(x, np.array([2, 3, 5]))
    with pytest.raises(InputError, match="-1"):
        layout.reshape(x, np.array([-1, -1]))
    with pytest.raises(InputError, match=r"\(2, 3\).*\(2, 4\)|agree"):
        layout.concat(np.zeros((2, 3)), np.zeros((3, 4)), axis=0)
    with pytest.raises(InputError, match="rank"):
        layout.concat(np.zeros((2, 3)), np.zeros((2, 3, 1)), axis=0)
    with pytest.raises(InputError, match=r"\[-3, 2\].*got values from 0 to 3"):
        layout.gather(np.zeros(3), np.array([0, 3]))
    with pytest.raises(InputError, match="-4"):
        layout.gather(np.zeros(3), np.array([-4]))
    with pytest.raises(InputError, match="size 1"):
        layout.squeeze(x, axes=[1])
    with pytest.raises(InputError, match="pads"):
        layout.pad(x, pads=[1, 1])
    with pytest.raises(InputError, match="reflect"):
        layout.pad(np.zeros((2, 2)), mode="reflect", pads=[2, 0, 0, 0])
    with pytest.raises(InputError, match="perm"):
        layout.transpose(x, perm=[0, 0, 1])
    with pytest.raises(InputError, match="axes"):
        reduce.reduce_mean(x, axes=[3])


# -- shape inference ---------------------------------------------------------------------------
from zeroskip.model import Dense, Graph, Node, ValueInfo  # noqa: E402
from zeroskip.shapes import infer_shapes  # noqa: E402


def graph_of(nodes, inputs, initializers=None, outputs=()):
    return Graph([Node(f"n{i}_{op}", op, ins, outs, attrs)
                  for i, (op, ins, outs, attrs) in enumerate(nodes)],
                 [ValueInfo(n, s, d) for n, s, d in inputs], [ValueInfo(n, None, "float32")
                                                              for n in outputs],
                 {n: Dense(a) for n, a in (initializers or {}).items()})


def test_infer_shapes_symbolic_flatten():
    """torch's x.view(x.size(0), -1): Shape -> Gather 0 -> Unsqueeze -> Concat [-1] -> Reshape."""
    g = graph_of([("Shape", ["x"], ["s"], {}),
                  ("Gather", ["s", "zero"], ["n"], {"axis": 0}),
                  ("Unsqueeze", ["n"], ["n1"], {"axes": [0]}),
                  ("Concat", ["n1", "minus1"], ["target"], {"axis": 0}),
                  ("Reshape", ["x", "target"], ["y"], {}),
                  ("Gemm", ["y", "w"], ["z"], {"transB": 1})],
                 [("x", (None, 16, 4, 4), "float32")],
                 {"zero": np.array(0, np.int64), "minus1": np.array([-1], np.int64),
                  "w": np.zeros((10, 256), np.float32)})
    info = infer_shapes(g)
    assert info["s"].shape == (4,) and info["s"].dtype == "int64"
    assert info["n"].shape == ()
    assert info["n1"].shape == (1,)
    assert info["target"].shape == (2,)
    assert info["y"].shape == (None, 256) and info["y"].dtype == "float32"
    assert info["z"].shape == (None, 10)
    assert info["x"].shape == (None, 16, 4, 4) and info["w"].shape == (10, 256)
    assert info["zero"].dtype == "int64"


def test_infer_shapes_product_of_gathered_dims():
    """Reshape to [N, C·H·W] with C·H·W computed by Mul of gathered dims."""
    g = graph_of([("Shape", ["x"], ["s"], {}),
                  ("Gather", ["s", "one"], ["c"], {}), ("Gather", ["s", "two"], ["h"], {}),
                  ("Gather", ["s", "three"], ["w"], {}), ("Mul", ["c", "h"], ["ch"], {}),
                  ("Mul", ["ch", "w"], ["chw"], {}), ("Unsqueeze", ["chw"], ["k"], {"axes": [0]}),
                  ("Concat", ["minus1", "k"], ["t"], {"axis": 0}),
                  ("Reshape", ["x", "t"], ["y"], {})],
                 [("x", (None, 3, 5, 2), "float32")],
                 {"one": np.array(1), "two": np.array(2), "three": np.array(3),
                  "minus1": np.array([-1])})
    assert infer_shapes(g)["y"].shape == (None, 30)


@pytest.mark.parametrize("target, want", [([0, -1], (None, 64)), ([-1, 16], (None, 16)),
                                          ([0, 4, -1], (None, 4, 16)), ([-1], (None,)),
                                          ([0, 0, 16, 2, 2], (None, 4, 16, 2, 2))])
def test_infer_shapes_reshape_constant_target(target, want):
    g = graph_of([("Reshape", ["x", "t"], ["y"], {})], [("x", (None, 4, 4, 4), "float32")],
                 {"t": np.array(target, np.int64)})
    assert infer_shapes(g)["y"].shape == want


def test_infer_shapes_flatten_and_unknowns():
    g = graph_of([("Flatten", ["x"], ["f"], {}), ("Relu", ["u"], ["r"], {}),
                  ("Reshape", ["x", "t"], ["y"], {}), ("ConstantOfShape", ["t"], ["c"], {}),
                  ("Shape", ["u"], ["su"], {}), ("Reshape", ["u", "su"], ["uu"], {})],
                 [("x", (None, 3, 4, 4), "float32"), ("u", None, "float32"),
                  ("t", (3,), "int64")])
    info = infer_shapes(g)
    assert info["f"].shape == (None, 48)
    assert info["r"].shape is None
    assert info["y"].shape == (None, None, None)  # target known only by length
    assert info["c"].shape == (None, None, None) and info["c"].dtype == "float32"
    assert info["uu"].shape is None


def test_infer_shapes_cnn():
    """A small CNN: every inferred shape equals what the reference ops produce on a batch of 2."""
    rng = np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((8, 3, 3, 3)), "b1": rng.standard_normal(8),
               "w2": rng.standard_normal((8, 1, 3, 3)),
               "s": np.ones(8), "bb": np.zeros(8), "m": np.zeros(8), "v": np.ones(8),
               "fc": rng.standard_normal((5, 8 * 4 * 4)), "fcb": rng.standard_normal(5)}
    nodes = [("Conv", ["x", "w1", "b1"], ["c1"], {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
             ("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["n1"], {}),
             ("Relu", ["n1"], ["r1"], {}),
             ("Conv", ["r1", "w2"], ["c2"], {"group": 8, "auto_pad": "SAME_UPPER"}),
             ("MaxPool", ["c2"], ["p1"], {"kernel_shape": [3, 3], "strides": [2, 2],
                                           "ceil_mode": 1}),
             ("AveragePool", ["p1"], ["p2"], {"kernel_shape": [2, 2], "pads": [1, 1, 0, 0]}),
             ("GlobalAveragePool", ["p2"], ["g"], {}),
             ("Flatten", ["p2"], ["f"], {}),
             ("Gemm", ["f", "fc", "fcb"], ["y"], {"transB": 1}),
             ("Softmax", ["y"], ["prob"], {}),
             ("ReduceMean", ["c1"], ["mean"], {"axes": [2, 3], "keepdims": 0}),
             ("Transpose", ["c1"], ["tr"], {"perm": [0, 2, 3, 1]}),
             ("Pad", ["c1"], ["pd"], {"pads": [0, 0, 1, 2, 0, 0, 3, -1]}),
             ("Concat", ["p1", "p1"], ["cat"], {"axis": 1}),
             ("Squeeze", ["g"], ["sq"], {"axes": [2, 3]}),
             ("Cast", ["sq"], ["ci"], {"to": "int32"})]
    g = graph_of(nodes, [("x", (None, 3, 15, 15), "float32")],
                 {k: v.astype(np.float32) for k, v in weights.items()})
    info = infer_shapes(g)
    values = {"x": rng.standard_normal((2, 3, 15, 15)), **weights}
    for op, ins, outs, attrs in nodes:
        values[outs[0]] = OPS[op](*[values[n] for n in ins], **full_attrs(op, **attrs))
    for name, value in values.items():
        shape = info[name].shape
        assert len(shape) == value.ndim, name
        assert all(d is None or d == v for d, v in zip(shape, value.shape)), \
            f"{name}: inferred {shape}, ran {value.shape}"
        assert None not in shape[1:], f"{name}: only the batch may be dynamic, got {shape}"
    assert info["y"].shape == (None, 5)
    assert info["ci"].dtype == "int32" and info["prob"].dtype == "float32"


@pytest.mark.parametrize("x_shape, w_shape, attrs", CONV_CASES)
def test_infer_shapes_conv_matches_onnxruntime(x_shape, w_shape, attrs):
    want = run_onnx("Conv", [rand(x_shape), rand(w_shape)], attrs).shape
    g = graph_of([("Conv", ["x", "w"], ["y"], attrs)], [("x", (None,) + x_shape[1:], "float32")],
                 {"w": rand(w_shape)})
    assert infer_shapes(g)["y"].shape == (None,) + want[1:]


@pytest.mark.parametrize("x_shape, attrs", POOL_CASES)
def test_infer_shapes_pool_matches_onnxruntime(x_shape, attrs):
    want = run_onnx("MaxPool", [rand(x_shape)], attrs).shape
    g = graph_of([("MaxPool", ["x"], ["y"], attrs)], [("x", x_shape, "float32")])
    assert infer_shapes(g)["y"].shape == want


@pytest.mark.parametrize("nodes, inputs, initializers, match", [
    ([("Conv", ["x", "w"], ["y"], {})], [("x", (None, 3, 8, 8), "float32")],
     {"w": np.zeros((4, 2, 3, 3), np.float32)}, r"'n0_Conv' \(Conv\).*channels"),
    ([("Conv", ["x", "w"], ["y"], {"group": 2})], [("x", (None, 4, 8, 8), "float32")],
     {"w": np.zeros((3, 2, 3, 3), np.float32)}, r"'n0_Conv'.*divisible"),
    ([("MatMul", ["x", "w"], ["y"], {})], [("x", (None, 7), "float32")],
     {"w": np.zeros((6, 2), np.float32)}, r"'n0_MatMul' \(MatMul\).*K"),
    ([("Gemm", ["x", "w"], ["y"], {"transB": 1})], [("x", (None, 7), "float32")],
     {"w": np.zeros((7, 2), np.float32)}, r"'n0_Gemm'.*K"),
    ([("Add", ["x", "b"], ["y"], {})], [("x", (None, 7), "float32")],
     {"b": np.zeros(5, np.float32)}, r"'n0_Add'.*broadcast"),
    ([("Reshape", ["x", "t"], ["y"], {})], [("x", (None, 7), "float32")],
     {"t": np.array([2, 3])}, None),
    ([("MaxPool", ["x"], ["y"], {"kernel_shape": [5, 5]})], [("x", (None, 3, 4, 4), "float32")],
     {}, r"'n0_MaxPool'.*window"),
    ([("Reshape", ["x", "t"], ["y"], {})], [("x", (2, 7), "float32")],
     {"t": np.array([5, -1])}, r"'n0_Reshape'.*14"),
])
def test_infer_shapes_static_errors(nodes, inputs, initializers, match):
    g = graph_of(nodes, inputs, initializers)
    if match is None:  # a dynamic batch could make it fit: unknown, not an error
        assert infer_shapes(g)["y"].shape == (2, 3)
        return
    with pytest.raises(ModelFormatError, match=match):
        infer_shapes(g)


# -- properties: random conv and pool geometry vs onnxruntime ----------------------------------
@st.composite
def conv_cases(draw):
    nd = draw(st.integers(1, 2))
    group = draw(st.sampled_from([1, 2, 3]))
    c_group, m_group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 4)) for _ in range(nd)]
    dilations = [draw(st.integers(1, 3)) for _ in range(nd)]
    strides = [draw(st.integers(1, 3)) for _ in range(nd)]
    auto_pad = draw(st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto_pad.startswith("SAME"):
        dilations = [1] * nd  # onnxruntime refuses dilations with SAME
    pads = [draw(st.integers(0, 3)) for _ in range(2 * nd)]
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    spatial = [draw(st.integers(e, e + 8)) for e in extent]
    attrs = dict(auto_pad=auto_pad, strides=strides, dilations=dilations, group=group)
    if auto_pad == "NOTSET":
        attrs["pads"] = pads
    x_shape = (draw(st.integers(1, 2)), group * c_group, *spatial)
    return x_shape, (group * m_group, c_group, *kernel), attrs, draw(st.booleans())


@given(conv_cases())
def test_conv_property(case):
    x_shape, w_shape, attrs, bias = case
    b = rand(w_shape[:1], 3) if bias else None
    check("Conv", [rand(x_shape, 1), rand(w_shape, 2), b], attrs, attrs)


@st.composite
def pool_cases(draw):
    nd = draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 4)) for _ in range(nd)]
    strides = [draw(st.integers(1, 3)) for _ in range(nd)]
    pads = [draw(st.integers(0, k - 1)) for k in kernel * 2]  # onnxruntime: pad < kernel
    spatial = [draw(st.integers(k, k + 8)) for k in kernel]
    op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
    attrs = dict(kernel_shape=kernel, strides=strides, pads=pads,
                 ceil_mode=draw(st.integers(0, 1)))
    if op == "AveragePool":
        attrs["count_include_pad"] = draw(st.integers(0, 1))
    return op, (1, 2, *spatial), attrs


@given(pool_cases())
def test_pool_property(case):
    op, x_shape, attrs = case
    check(op, [rand(x_shape, 4)], attrs, attrs)


# --------------------------------------------------------------------------------------------------
# Regressions found by fuzzing the reference and shape inference against onnxruntime
# --------------------------------------------------------------------------------------------------

def _one_node_graph(op, x_shape, attrs, inits=None, extra_inputs=()):
    from zeroskip.model import Dense, Graph, Node, ValueInfo
    from zeroskip.ops import normalize_attrs

    inits = inits or {}
    node = Node("n", op, ["x", *extra_inputs, *inits], ["y"], normalize_attrs(op, attrs))
    return Graph([node], [ValueInfo("x", x_shape, "float32")], [ValueInfo("y", (None,), "float32")],
                 {k: Dense(v) for k, v in inits.items()})


def test_reshape_minus_one_with_a_dynamic_dim_left_is_not_refused():
    from zeroskip.shapes import infer_shapes

    graph = _one_node_graph("Reshape", (None, 3, 2), {}, {"s": np.array([-1, 4], np.int64)})
    assert infer_shapes(graph)["y"].shape == (None, 4)


def test_pad_that_crops_below_zero_is_a_format_error():
    from zeroskip.shapes import infer_shapes

    graph = _one_node_graph("Pad", (None, 4), {"pads": [0, -3, 0, -3]})
    with pytest.raises(ModelFormatError, match="negative size"):
        infer_shapes(graph)


@pytest.mark.parametrize("op, attrs", [("Cast", {"to": "complex64"}), ("Cast", {"to": "nope"})])
def test_bad_dtype_attribute_is_a_format_error(op, attrs):
    with pytest.raises(ModelFormatError, match=r"attribute to='.*' is not one of the dtypes"):
        _one_node_graph(op, (None, 4), attrs).check()


def test_constant_of_shape_bad_dtype_is_an_input_error():
    with pytest.raises(InputError, match="expected a numpy dtype name"):
        OPS["ConstantOfShape"](np.array([2], np.int64), value=0.0, dtype="nope")


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pool_pads_not_smaller_than_kernel_are_refused(op):
    attrs = normalize_attrs(op, {"kernel_shape": [2], "pads": [2, 0]})
    with pytest.raises(InputError, match="expected pads smaller than the kernel"):
        OPS[op](np.ones((1, 1, 5)), **attrs)


@pytest.mark.parametrize("op, extra", [("MaxPool", {}), ("AveragePool", {"count_include_pad": 0})])
def test_dilated_window_on_padding_only_matches_onnxruntime(op, extra):
    attrs = dict(kernel_shape=[2, 1], pads=[1, 0, 1, 0], dilations=[2, 1], strides=[1, 1], **extra)
    x = np.random.default_rng(0).random((1, 1, 1, 3)).astype(np.float32)
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          [1, 1, 1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = OPS[op](x.astype(np.float64), **normalize_attrs(op, attrs))
    np.testing.assert_allclose(got, want, rtol=1e-6)
