"""End to end against onnxruntime: ONNX graph -> ``import_onnx`` -> ``Session(mode="reference")``.

Every IR op, over a spread of attributes and opset versions, plus whole models written the way torch
and the old model zoo export them. Most graphs have a dynamic batch (``dim_param="N"``) and run with
batch 1 and 3; outputs must match onnxruntime in shape, dtype and value (rtol 1e-4, atol 1e-5).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import zeroskip  # noqa: E402

from onnx_builders import (assert_matches_ort, const_node, make_model, pruned, randn,  # noqa: E402
                           value_info)

BATCHES = (1, 3)
CASES: dict = {}
"""name -> callable returning (model, [feeds, ...])."""


def add(name, build):
    assert name not in CASES, name
    CASES[name] = build


def graph_case(nodes, xs, outputs=("y",), inits=None, opset=17, batches=BATCHES, dynamic=True,
               seed=0, positive=False):
    """A model over inputs ``xs`` [(name, shape[, dtype])], fed at each batch size.

    shape[0] is the batch: "N" in the model when ``dynamic``, replaced by each batch size in feeds.
    outputs: names (float32, shape inferred) or (name, dtype) pairs.
    """
    inputs = []
    for entry in xs:
        name, shape = entry[0], list(entry[1])
        dtype = entry[2] if len(entry) > 2 else np.float32
        inputs.append((name, (["N"] + shape[1:]) if dynamic else shape, dtype))
    outs = [value_info(o, None) if isinstance(o, str) else value_info(o[0], None, o[1])
            for o in outputs]
    model = make_model(nodes, inputs, outs, inits or {}, opset=opset, check=False)
    feeds = []
    for b in (batches if dynamic else (None,)):
        feed = {}
        for k, (name, shape, dtype) in enumerate(inputs):
            shape = [b if d == "N" else d for d in shape]
            x = randn(shape, seed=seed + 17 * k + (b or 0))
            feed[name] = np.abs(x) + 0.5 if positive else x.astype(dtype)
        feeds.append(feed)
    return model, feeds


def op_case(op, x_shape, attrs=None, inits=(), opset=17, extra_inputs=(), outputs=("y",), **kw):
    """One node ``op(x, *extra_inputs, *inits)``; ``inits`` is [(name, array)] with "" for a gap."""
    names = ["x"] + [e[0] for e in extra_inputs]
    init_dict = {}
    for entry in inits:
        if entry == "":
            names.append("")
        else:
            names.append(entry[0])
            init_dict[entry[0]] = entry[1]
    n = helper.make_node(op, names, [o if isinstance(o, str) else o[0] for o in outputs],
                         name="n", **(attrs or {}))
    return graph_case([n], [("x", x_shape)] + list(extra_inputs), outputs, init_dict, opset, **kw)


# --------------------------------------------------------------------------------------------------
# Conv
# --------------------------------------------------------------------------------------------------

def _conv(x_shape, w_shape, bias=True, opset=17, seed=0, density=1.0, **attrs):
    w = pruned(w_shape, density, seed=seed) if density < 1 else randn(w_shape, seed=seed, scale=0.3)
    inits = [("w", w)] + ([("b", randn(w_shape[0], seed=seed + 1))] if bias else [])
    return lambda: op_case("Conv", x_shape, attrs, inits, opset)


for _name, _x, _w, _attrs in [
    ("plain_3x3", (1, 3, 8, 8), (4, 3, 3, 3), {}),
    ("1x1", (1, 6, 5, 5), (4, 6, 1, 1), {}),
    ("1x1_stride2", (1, 6, 7, 8), (4, 6, 1, 1), {"strides": [2, 2]}),  # the strided input, s1
    ("1x1_stride2_end_pads", (1, 6, 6, 6), (4, 6, 1, 1), {"strides": [2, 2], "pads": [0, 0, 1, 1]}),
    ("1x1_stride3x2_pads", (1, 4, 7, 7), (3, 4, 1, 1), {"strides": [3, 2], "pads": [1, 1, 0, 0]}),
    ("pads_1", (1, 3, 7, 7), (5, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
    ("asym_pads", (1, 3, 7, 6), (4, 3, 3, 2), {"pads": [0, 1, 2, 1]}),
    ("strides_2", (1, 3, 9, 9), (4, 3, 3, 3), {"strides": [2, 2]}),
    ("strides_2x1_pads", (1, 2, 8, 7), (3, 2, 3, 3), {"strides": [2, 1], "pads": [1, 0, 1, 2]}),
    ("dilations_2", (1, 3, 9, 9), (4, 3, 3, 3), {"dilations": [2, 2]}),
    ("dilations_strides_pads", (1, 2, 11, 10), (3, 2, 3, 3),
     {"dilations": [2, 1], "strides": [2, 3], "pads": [2, 1, 1, 2]}),
    ("groups_2", (1, 4, 6, 6), (6, 2, 3, 3), {"group": 2}),
    ("depthwise", (1, 5, 7, 7), (5, 1, 3, 3), {"group": 5, "pads": [1, 1, 1, 1]}),
    ("depthwise_mult2", (1, 3, 6, 6), (6, 1, 3, 3), {"group": 3, "strides": [2, 2]}),
    ("explicit_kernel_shape", (1, 3, 6, 6), (2, 3, 3, 3), {"kernel_shape": [3, 3]}),
    ("same_upper", (1, 3, 7, 7), (4, 3, 3, 3), {"auto_pad": "SAME_UPPER"}),
    ("same_upper_stride2", (1, 3, 8, 8), (4, 3, 4, 4), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("same_lower_stride2", (1, 3, 8, 8), (4, 3, 4, 4), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ("same_lower_even_kernel", (1, 2, 5, 6), (3, 2, 2, 2), {"auto_pad": "SAME_LOWER"}),
    ("valid", (1, 3, 7, 6), (4, 3, 3, 2), {"auto_pad": "VALID", "strides": [2, 2]}),
    ("notset", (1, 3, 6, 6), (4, 3, 3, 3), {"auto_pad": "NOTSET"}),
    ("rect_kernel", (1, 3, 6, 9), (4, 3, 1, 5), {"pads": [0, 2, 0, 2]}),
]:
    add(f"conv_{_name}", _conv(_x, _w, **_attrs))
add("conv_no_bias", _conv((1, 3, 6, 6), (4, 3, 3, 3), bias=False))
add("conv_pruned_90", _conv((1, 8, 6, 6), (16, 8, 3, 3), density=0.1, pads=[1, 1, 1, 1]))
add("conv_opset_9", _conv((1, 3, 6, 6), (4, 3, 3, 3), opset=9, pads=[1, 1, 1, 1]))
add("conv_opset_22", _conv((1, 3, 6, 6), (4, 3, 3, 3), opset=22, strides=[2, 2]))
add("conv_1d", _conv((1, 3, 10), (4, 3, 3), pads=[1, 2], strides=[2]))


# --------------------------------------------------------------------------------------------------
# Gemm, MatMul
# --------------------------------------------------------------------------------------------------

def _gemm(trans_a=0, trans_b=0, alpha=None, beta=None, c="1d", opset=17, density=1.0):
    def build():
        m, k, n = 3, 5, 4
        w = pruned((k, n), density, seed=2) if density < 1 else randn((k, n), seed=2)
        if trans_b:
            w = np.ascontiguousarray(w.T)
        attrs = {"transA": trans_a, "transB": trans_b}
        if alpha is not None:
            attrs["alpha"] = alpha
        if beta is not None:
            attrs["beta"] = beta
        inits = [("w", w)]
        if c is not None:
            inits.append(("c", {"1d": randn(n, seed=3), "2d": randn((m, n), seed=3),
                                "row": randn((1, n), seed=3), "scalar": randn((), seed=3)}[c]))
        x_shape = (k, m) if trans_a else (m, k)
        # Gemm's A is 2-D and transA puts the batch second, so these graphs are static.
        return op_case("Gemm", x_shape, attrs, inits, opset, dynamic=False)
    return build


add("gemm_plain", _gemm())
add("gemm_transB", _gemm(trans_b=1))
add("gemm_transA", _gemm(trans_a=1))
add("gemm_transA_transB", _gemm(trans_a=1, trans_b=1))
add("gemm_alpha_beta", _gemm(alpha=0.5, beta=2.0))
add("gemm_no_c", _gemm(trans_b=1, c=None))
add("gemm_c_2d", _gemm(c="2d", beta=-1.0))
add("gemm_c_row", _gemm(c="row"))
add("gemm_c_scalar", _gemm(c="scalar", alpha=2.0))
add("gemm_opset_9", _gemm(trans_b=1, opset=9))
add("gemm_opset_11_no_c", _gemm(c=None, opset=11))
add("gemm_pruned_90", _gemm(trans_b=1, density=0.1))
add("gemm_dynamic_batch", lambda: op_case("Gemm", (3, 6), {"transB": 1},
                                          [("w", randn((4, 6), seed=1)), ("b", randn(4, seed=2))]))

add("matmul_2d", lambda: op_case("MatMul", (3, 6), inits=[("w", randn((6, 5)))]))
add("matmul_batched_3d", lambda: op_case("MatMul", (2, 4, 6), extra_inputs=[("b", (2, 6, 3))]))
add("matmul_broadcast_weight", lambda: op_case("MatMul", (2, 4, 6), inits=[("w", randn((6, 5)))]))
add("matmul_broadcast_4d", lambda: op_case("MatMul", (2, 3, 4, 6),
                                           inits=[("w", randn((1, 3, 6, 2)))]))
add("matmul_vector_right", lambda: op_case("MatMul", (3, 6), inits=[("w", randn(6))]))
add("matmul_vector_left", lambda: graph_case(
    [helper.make_node("MatMul", ["v", "x"], ["y"], name="n")], [("x", (2, 6, 3))],
    inits={"v": randn(6)}))
add("matmul_opset_9", lambda: op_case("MatMul", (3, 6), inits=[("w", pruned((6, 5), 0.2))],
                                      opset=9))


# --------------------------------------------------------------------------------------------------
# Elementwise and activations
# --------------------------------------------------------------------------------------------------

for _op in ("Add", "Sub", "Mul", "Div"):
    add(f"{_op.lower()}_same_shape", lambda op=_op: op_case(op, (3, 4), extra_inputs=[("b", (3, 4))],
                                                           positive=op == "Div"))
    add(f"{_op.lower()}_broadcast_const", lambda op=_op: op_case(
        op, (2, 3, 4, 5), inits=[("c", np.abs(randn((3, 1, 5))) + 0.5)]))
    add(f"{_op.lower()}_scalar_const", lambda op=_op: op_case(op, (2, 3), inits=[("c", np.float32(1.5))]))
    add(f"{_op.lower()}_const_first", lambda op=_op: graph_case(
        [helper.make_node(op, ["c", "x"], ["y"], name="n")], [("x", (2, 4))],
        inits={"c": randn(4) + 3.0}, positive=True))
add("add_opset_7", lambda: op_case("Add", (2, 3, 4), inits=[("c", randn(4))], opset=7))
add("sum_one", lambda: op_case("Sum", (2, 3)))
add("sum_two", lambda: op_case("Sum", (2, 3), extra_inputs=[("b", (2, 3))]))
add("sum_three_broadcast", lambda: op_case("Sum", (2, 3, 4), extra_inputs=[("b", (2, 3, 4))],
                                           inits=[("c", randn((3, 1)))]))
add("sum_opset_8", lambda: op_case("Sum", (2, 3), inits=[("c", randn(3)), ("d", randn(3))], opset=8))

for _op in ("Relu", "Sigmoid", "Tanh", "Identity"):
    add(_op.lower(), lambda op=_op: op_case(op, (2, 3, 4)))
add("pow_square_const", lambda: op_case("Pow", (2, 3, 4), inits=[("e", np.float32(2.0))]))
add("pow_fractional_positive", lambda: op_case("Pow", (2, 5), inits=[("e", np.float32(0.75))],
                                               positive=True))
add("pow_broadcast_exponents", lambda: op_case("Pow", (2, 3), inits=[("e", np.float32([1, 2, 3]))]))
add("sqrt", lambda: op_case("Sqrt", (2, 3, 4), positive=True))
add("exp", lambda: op_case("Exp", (2, 3, 4)))
add("exp_opset_7", lambda: op_case("Exp", (3, 2), opset=7))
add("relu_opset_7", lambda: op_case("Relu", (2, 5), opset=7))
add("sigmoid_opset_9", lambda: op_case("Sigmoid", (2, 5), opset=9))
add("leakyrelu_default", lambda: op_case("LeakyRelu", (2, 3, 4)))
add("leakyrelu_alpha", lambda: op_case("LeakyRelu", (2, 7), {"alpha": 0.2}))
add("leakyrelu_opset_9", lambda: op_case("LeakyRelu", (2, 7), {"alpha": 0.3}, opset=9))

add("clip_opset_9_relu6", lambda: op_case("Clip", (2, 3, 4), {"min": 0.0, "max": 6.0}, opset=9))
add("clip_opset_9_min_only", lambda: op_case("Clip", (2, 5), {"min": -0.5}, opset=9))
add("clip_opset_9_none", lambda: op_case("Clip", (2, 5), opset=9))
add("clip_opset_11_inputs", lambda: op_case(
    "Clip", (2, 5), inits=[("lo", np.float32(-0.3)), ("hi", np.float32(0.4))], opset=11))
add("clip_opset_13_relu6", lambda: op_case(
    "Clip", (2, 3, 4), inits=[("lo", np.float32(0)), ("hi", np.float32(6))], opset=13))
add("clip_opset_13_max_only", lambda: op_case("Clip", (2, 5), inits=["", ("hi", np.float32(0.5))],
                                              opset=13))
add("clip_opset_13_min_only", lambda: op_case("Clip", (2, 5), inits=[("lo", np.float32(-0.2))],
                                              opset=13))
add("clip_opset_13_constant_nodes", lambda: graph_case(
    [const_node("lo", np.float32(-1)), const_node("hi", np.float32(1)),
     helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="n")], [("x", (2, 5))], opset=13))

for _opset in (9, 11, 13):
    add(f"softmax_2d_opset_{_opset}", lambda o=_opset: op_case("Softmax", (2, 10), opset=o))
    add(f"softmax_4d_axis1_opset_{_opset}", lambda o=_opset: op_case(
        "Softmax", (2, 3, 4, 5), {"axis": 1}, opset=o))
    add(f"softmax_4d_axis_last_opset_{_opset}", lambda o=_opset: op_case(
        "Softmax", (2, 3, 4, 5), {"axis": 3}, opset=o))
add("softmax_3d_default_opset_11", lambda: op_case("Softmax", (2, 3, 4), opset=11))
add("softmax_3d_default_opset_13", lambda: op_case("Softmax", (2, 3, 4), opset=13))
add("softmax_negative_axis_opset_11", lambda: op_case("Softmax", (2, 3, 4), {"axis": -2}, opset=11))
add("softmax_negative_axis_opset_13", lambda: op_case("Softmax", (2, 3, 4), {"axis": -2}, opset=13))


# --------------------------------------------------------------------------------------------------
# Pooling, normalization
# --------------------------------------------------------------------------------------------------

for _name, _x, _attrs in [
    ("k2", (1, 3, 8, 8), {"kernel_shape": [2, 2]}),
    ("k2_s2", (1, 3, 8, 8), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("k3_s2_pads", (1, 2, 9, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("asym_pads", (1, 2, 7, 8), {"kernel_shape": [3, 2], "pads": [0, 1, 2, 1]}),
    ("ceil_mode", (1, 2, 8, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ("ceil_mode_pads", (1, 2, 7, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1,
                                      "pads": [1, 1, 1, 1]}),
    ("same_upper", (1, 2, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ("same_lower", (1, 2, 7, 8), {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ("valid", (1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "VALID"}),
    ("rect", (1, 2, 6, 9), {"kernel_shape": [1, 3], "strides": [1, 3]}),
]:
    add(f"maxpool_{_name}", lambda x=_x, a=_attrs: op_case("MaxPool", x, a, opset=12))
    add(f"averagepool_{_name}", lambda x=_x, a=_attrs: op_case("AveragePool", x, a, opset=11))
add("maxpool_dilations", lambda: op_case("MaxPool", (1, 2, 9, 9),
                                         {"kernel_shape": [2, 2], "dilations": [2, 2]}, opset=10))
add("maxpool_dilations_ceil_pads", lambda: op_case(
    "MaxPool", (1, 2, 10, 9), {"kernel_shape": [3, 2], "dilations": [2, 3], "strides": [2, 2],
                               "pads": [1, 1, 1, 0], "ceil_mode": 1}, opset=12))
add("maxpool_opset_8_storage_order_unused_indices", lambda: _drop_output(op_case(
    "MaxPool", (1, 2, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2], "storage_order": 1},
    opset=8, outputs=("y", ("idx", np.int64)))))
add("maxpool_opset_22", lambda: op_case("MaxPool", (1, 2, 6, 6), {"kernel_shape": [3, 3]}, opset=22))
add("maxpool_1d", lambda: op_case("MaxPool", (1, 2, 9), {"kernel_shape": [3], "strides": [2]}))
for _cip in (0, 1):
    add(f"averagepool_pads_count_include_pad_{_cip}", lambda c=_cip: op_case(
        "AveragePool", (1, 2, 7, 7), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                      "count_include_pad": c}, opset=11))
    add(f"averagepool_ceil_count_include_pad_{_cip}", lambda c=_cip: op_case(
        "AveragePool", (1, 2, 8, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1,
                                      "pads": [0, 0, 1, 1], "count_include_pad": c}, opset=11))
    add(f"averagepool_same_upper_count_include_pad_{_cip}", lambda c=_cip: op_case(
        "AveragePool", (1, 2, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2],
                                      "auto_pad": "SAME_UPPER", "count_include_pad": c}, opset=11))
add("averagepool_opset_7", lambda: op_case("AveragePool", (1, 2, 6, 6),
                                           {"kernel_shape": [2, 2], "strides": [2, 2]}, opset=7))
add("averagepool_opset_19_dilations", lambda: op_case(
    "AveragePool", (1, 2, 9, 9), {"kernel_shape": [2, 2], "dilations": [2, 2], "strides": [1, 2]},
    opset=19))
add("globalaveragepool", lambda: op_case("GlobalAveragePool", (1, 3, 5, 4)))
add("globalmaxpool", lambda: op_case("GlobalMaxPool", (1, 3, 5, 4)))
add("globalaveragepool_opset_9", lambda: op_case("GlobalAveragePool", (1, 3, 6, 6), opset=9))


def _bn(opset, x_shape=(2, 3, 4, 5), epsilon=None, **attrs):
    def build():
        c = x_shape[1]
        inits = [("s", randn(c, seed=1)), ("b", randn(c, seed=2)), ("m", randn(c, seed=3)),
                 ("v", np.abs(randn(c, seed=4)) + 0.1)]
        a = dict(attrs)
        if epsilon is not None:
            a["epsilon"] = epsilon
        return op_case("BatchNormalization", x_shape, a, inits, opset)
    return build


add("batchnorm_opset_7_spatial", _bn(7, spatial=1, momentum=0.9))
add("batchnorm_opset_9", _bn(9, epsilon=1e-3))
add("batchnorm_opset_14_inference", _bn(14, training_mode=0))
add("batchnorm_opset_15", _bn(15, epsilon=0.01, momentum=0.1))
add("batchnorm_2d_input", _bn(15, x_shape=(2, 6)))
add("batchnorm_3d_input", _bn(9, x_shape=(2, 4, 7)))

for _size, _extra in ((3, {}), (5, {"alpha": 1e-3, "beta": 0.5, "bias": 2.0}), (7, {"bias": 1.5})):
    add(f"lrn_size_{_size}", lambda s=_size, e=_extra: op_case("LRN", (1, 6, 4, 4), {"size": s, **e},
                                                              positive=False))
add("lrn_opset_9", lambda: op_case("LRN", (1, 5, 3, 3), {"size": 3, "alpha": 0.01}, opset=9))

for _op, _since in (("ReduceMean", 18), ("ReduceSum", 13), ("ReduceMax", 18)):
    _old = 11 if _op != "ReduceMax" else 12
    _key = _op[6:].lower()
    add(f"reduce{_key}_opset_{_old}_axes_attr", lambda op=_op, o=_old: op_case(
        op, (2, 3, 4, 5), {"axes": [2, 3]}, opset=o))
    add(f"reduce{_key}_opset_13_keepdims_0", lambda op=_op: op_case(
        op, (2, 3, 4), {"keepdims": 0, **({"axes": [-1]} if op != "ReduceSum" else {})},
        [("a", np.array([-1], np.int64))] if op == "ReduceSum" else [], opset=13))
    add(f"reduce{_key}_opset_{_since}_axes_input", lambda op=_op, o=_since: op_case(
        op, (2, 3, 4, 5), {"keepdims": 1}, [("a", np.array([2, 3], np.int64))], opset=o))
    add(f"reduce{_key}_opset_{_since}_all_axes_static", lambda op=_op, o=_since: op_case(
        op, (2, 3, 4), {"keepdims": 0}, opset=o, dynamic=False))
    add(f"reduce{_key}_opset_{_since}_noop_empty_axes", lambda op=_op, o=_since: op_case(
        op, (2, 3), {"noop_with_empty_axes": 1}, opset=o))
add("reducemax_opset_20", lambda: op_case("ReduceMax", (2, 3, 4), {"keepdims": 0},
                                          [("a", np.array([1], np.int64))], opset=20))

# N-d windows: 1-D and 3-D convolutions and pools
add("conv_3d", _conv((1, 2, 5, 6, 4), (3, 2, 3, 3, 2), pads=[1, 0, 1, 1, 1, 0], strides=[2, 1, 1]))
add("conv_3d_same_upper_depthwise", _conv((1, 4, 5, 5, 5), (4, 1, 2, 2, 2), group=4,
                                          auto_pad="SAME_UPPER"))
add("maxpool_3d", lambda: op_case("MaxPool", (1, 2, 5, 6, 4), {"kernel_shape": [2, 3, 2],
                                                               "strides": [2, 2, 1]}))
add("averagepool_3d_pads", lambda: op_case("AveragePool", (1, 2, 5, 5, 4),
                                           {"kernel_shape": [3, 3, 2], "pads": [1, 1, 0, 1, 1, 1]}))
add("averagepool_1d_ceil", lambda: op_case("AveragePool", (1, 2, 10), {"kernel_shape": [3],
                                                                       "strides": [2], "ceil_mode": 1}))


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------

for _axis in (0, 1, 2, -1):
    add(f"flatten_axis_{_axis}", lambda a=_axis: op_case("Flatten", (2, 3, 4, 5), {"axis": a}))
add("flatten_default_opset_9", lambda: op_case("Flatten", (2, 3, 4), opset=9))

add("reshape_const", lambda: op_case("Reshape", (2, 3, 4), inits=[("s", np.array([0, 12], np.int64))]))
add("reshape_minus_one", lambda: op_case("Reshape", (2, 3, 4),
                                         inits=[("s", np.array([0, -1, 2], np.int64))]))
add("reshape_opset_7", lambda: op_case("Reshape", (2, 3, 4),
                                       inits=[("s", np.array([0, 2, 6], np.int64))], opset=7))
add("reshape_allowzero_1", lambda: op_case(
    "Reshape", (2, 6), {"allowzero": 1}, [("s", np.array([3, 4], np.int64))], opset=14,
    dynamic=False))
add("reshape_constant_node", lambda: graph_case(
    [const_node("s", np.array([0, 3, 4], np.int64)),
     helper.make_node("Reshape", ["x", "s"], ["y"], name="n")], [("x", (2, 12))], opset=13))

for _perm in (None, [0, 2, 1], [2, 0, 1], [1, 0, 2]):
    add(f"transpose_{_perm}", lambda p=_perm: op_case(
        "Transpose", (2, 3, 4), {} if p is None else {"perm": p},
        dynamic=p is not None and p[0] == 0))
add("transpose_4d_nhwc", lambda: op_case("Transpose", (2, 3, 4, 5), {"perm": [0, 2, 3, 1]}))

add("concat_axis_1", lambda: op_case("Concat", (2, 3), {"axis": 1}, [("c", randn((2, 2)))],
                                     dynamic=False))
add("concat_three_axis_last", lambda: op_case("Concat", (2, 3, 4), {"axis": -1},
                                              extra_inputs=[("b", (2, 3, 2)), ("d", (2, 3, 1))]))
add("concat_axis_0", lambda: op_case("Concat", (2, 3), {"axis": 0}, extra_inputs=[("b", (2, 3))]))
add("concat_one_input", lambda: op_case("Concat", (2, 3), {"axis": 1}))
add("concat_opset_7", lambda: op_case("Concat", (2, 3, 2), {"axis": 1}, extra_inputs=[("b", (2, 1, 2))],
                                      opset=7))

_PADS = [0, 0, 1, 2, 0, 0, 2, 1]
for _mode in ("constant", "reflect", "edge"):
    add(f"pad_opset_9_{_mode}", lambda m=_mode: op_case(
        "Pad", (1, 2, 4, 5), {"mode": m, "pads": _PADS, **({"value": 1.5} if m == "constant" else {})},
        opset=9))
    add(f"pad_opset_11_{_mode}", lambda m=_mode: op_case(
        "Pad", (1, 2, 4, 5), {"mode": m},
        [("p", np.array(_PADS, np.int64))] + ([("v", np.float32(-2))] if m == "constant" else []),
        opset=11))
    add(f"pad_opset_18_axes_{_mode}", lambda m=_mode: op_case(
        "Pad", (1, 2, 4, 5), {"mode": m},
        [("p", np.array([1, 2, 2, 1], np.int64)), "" if m != "constant" else ("v", np.float32(0.5)),
         ("axes", np.array([2, -1], np.int64))], opset=18))
add("pad_opset_11_default_value", lambda: op_case(
    "Pad", (2, 3), inits=[("p", np.array([0, 1, 0, 2], np.int64))], opset=11))
add("pad_opset_13_constant_node", lambda: graph_case(
    [const_node("p", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
     helper.make_node("Pad", ["x", "p"], ["y"], name="n", mode="reflect")],
    [("x", (1, 2, 3, 3))], opset=13))
add("pad_opset_21", lambda: op_case("Pad", (1, 2, 3, 3), {"mode": "edge"},
                                    [("p", np.array([0, 0, 2, 0, 0, 0, 0, 2], np.int64))], opset=21))

add("dropout_opset_7", lambda: op_case("Dropout", (2, 5), {"ratio": 0.5}, opset=7))
add("dropout_opset_10_mask_unused", lambda: op_case("Dropout", (2, 5), {"ratio": 0.2}, opset=10,
                                                    outputs=("y",)))
add("dropout_opset_12_ratio", lambda: op_case("Dropout", (2, 5), inits=[("r", np.float32(0.3))],
                                              opset=12))
add("dropout_opset_13_training_false", lambda: op_case(
    "Dropout", (2, 5), inits=[("r", np.float32(0.3)), ("t", np.array(False))], opset=13))
add("dropout_opset_22", lambda: op_case("Dropout", (2, 5), opset=22))


# --------------------------------------------------------------------------------------------------
# Shape arithmetic at run time (depends on the dynamic batch) and on activations
# --------------------------------------------------------------------------------------------------

add("shape_output", lambda: op_case("Shape", (2, 3, 4), outputs=(("y", np.int64),)))
add("shape_start_end_opset_15", lambda: op_case("Shape", (2, 3, 4), {"start": 0, "end": -1},
                                                opset=15, outputs=(("y", np.int64),)))
add("constant_of_shape_dynamic", lambda: graph_case(
    [helper.make_node("Shape", ["x"], ["s"], name="shape"),
     helper.make_node("ConstantOfShape", ["s"], ["z"], name="cos",
                      value=numpy_helper.from_array(np.array([0.25], np.float32))),
     helper.make_node("Add", ["x", "z"], ["y"], name="add")], [("x", (2, 3))], opset=11))
add("constant_of_shape_int64", lambda: graph_case(
    [helper.make_node("Shape", ["x"], ["s"], name="shape"),
     helper.make_node("ConstantOfShape", ["s"], ["y"], name="cos",
                      value=numpy_helper.from_array(np.array([7], np.int64)))],
    [("x", (2, 3))], outputs=(("y", np.int64),), opset=9))
add("gather_activations_axis_1", lambda: op_case(
    "Gather", (2, 5, 3), {"axis": 1}, [("i", np.array([4, 0, -1], np.int64))]))
add("gather_activations_scalar_index", lambda: op_case(
    "Gather", (2, 5, 3), {"axis": 2}, [("i", np.array(1, np.int64))]))
add("gather_embedding", lambda: _int_ids(graph_case(
    [helper.make_node("Gather", ["table", "ids"], ["y"], name="n", axis=0)],
    [("ids", (2, 4), np.int64)], inits={"table": randn((10, 3))}), 10))
add("unsqueeze_opset_11", lambda: op_case("Unsqueeze", (2, 3), {"axes": [1, -1]}, opset=11))
add("unsqueeze_opset_13", lambda: op_case("Unsqueeze", (2, 3), inits=[("a", np.array([0], np.int64))],
                                          opset=13, dynamic=False))
add("squeeze_opset_11", lambda: op_case("Squeeze", (2, 1, 3, 1), {"axes": [1, 3]}, opset=11))
add("squeeze_opset_13", lambda: op_case("Squeeze", (2, 1, 3), inits=[("a", np.array([-2], np.int64))],
                                        opset=13))
add("squeeze_no_axes_static", lambda: op_case("Squeeze", (2, 1, 3, 1), opset=13, dynamic=False))
add("cast_roundtrip_int64", lambda: graph_case(
    [helper.make_node("Mul", ["x", "ten"], ["x10"], name="mul"),
     helper.make_node("Cast", ["x10"], ["i"], name="to_int", to=TensorProto.INT64),
     helper.make_node("Cast", ["i"], ["y"], name="to_float", to=TensorProto.FLOAT)],
    [("x", (2, 5))], inits={"ten": np.float32(10)}, opset=13))
add("cast_to_int64_output", lambda: op_case("Cast", (2, 5), {"to": TensorProto.INT64}, opset=9,
                                            outputs=(("y", np.int64),)))
add("cast_to_float64_output", lambda: op_case("Cast", (2, 5), {"to": TensorProto.DOUBLE}, opset=19,
                                              outputs=(("y", np.float64),)))
add("dynamic_reshape_stays", lambda: graph_case(
    # y = x.reshape(-1, N): the batch lands in position 1, so the target stays computed at run time
    [helper.make_node("Shape", ["x"], ["s"], name="shape"),
     helper.make_node("Gather", ["s", "i0"], ["d"], name="gather", axis=0),
     helper.make_node("Unsqueeze", ["d", "a0"], ["du"], name="unsq"),
     helper.make_node("Concat", ["m1", "du"], ["t"], name="cat", axis=0),
     helper.make_node("Reshape", ["x", "t"], ["y"], name="reshape")],
    [("x", (2, 6))], inits={"i0": np.array(0, np.int64), "a0": np.array([0], np.int64),
                            "m1": np.array([-1], np.int64)}, opset=13))


def _drop_output(case):
    """Keep only the first declared output (the second exists in the node but is unused)."""
    model, feeds = case
    del model.graph.output[1:]
    return model, feeds


def _int_ids(case, vocab):
    model, feeds = case
    for i, feed in enumerate(feeds):
        feed["ids"] = np.random.default_rng(i).integers(-vocab, vocab, feed["ids"].shape).astype(np.int64)
    return model, feeds


# --------------------------------------------------------------------------------------------------
# Whole models, as torch and the model zoo export them
# --------------------------------------------------------------------------------------------------

def torch_mlp_gemm(opset=17, density=0.1):
    """nn.Sequential(Linear(20,32), ReLU, Linear(32,16), ReLU, Linear(16,10)): Gemm transB=1."""
    sizes = [20, 32, 16, 10]
    nodes, inits, x = [], {}, "input"
    for i, (k, n) in enumerate(zip(sizes, sizes[1:])):
        w, b = f"fc{i}.weight", f"fc{i}.bias"
        inits[w] = pruned((n, k), density, seed=i) if i < 2 else randn((n, k), seed=i, scale=0.3)
        inits[b] = randn(n, seed=10 + i, scale=0.1)
        nodes.append(helper.make_node("Gemm", [x, w, b], [f"/fc{i}/Gemm_output_0"],
                                      name=f"/fc{i}/Gemm", alpha=1.0, beta=1.0, transB=1))
        x = f"/fc{i}/Gemm_output_0"
        if i < 2:
            nodes.append(helper.make_node("Relu", [x], [f"/act{i}/Relu_output_0"], name=f"/act{i}/Relu"))
            x = f"/act{i}/Relu_output_0"
    nodes[-1].output[0] = "output"
    model = make_model(nodes, [("input", ["batch_size", 20])], [("output", ["batch_size", 10])],
                       inits, opset=opset, producer=("pytorch", "2.3.0"))
    return model, [{"input": randn((b, 20), seed=b)} for b in BATCHES]


def torch_mlp_matmul(opset=18, density=0.1):
    """The same MLP as torch.onnx.export writes Linear in MatMul+Add form (weights transposed)."""
    sizes = [12, 24, 8]
    nodes, inits, x = [], {}, "x"
    for i, (k, n) in enumerate(zip(sizes, sizes[1:])):
        inits[f"onnx::MatMul_{i}"] = pruned((k, n), density, seed=i)
        inits[f"fc{i}.bias"] = randn(n, seed=i + 5, scale=0.1)
        nodes += [helper.make_node("MatMul", [x, f"onnx::MatMul_{i}"], [f"/fc{i}/MatMul_output_0"],
                                   name=f"/fc{i}/MatMul"),
                  helper.make_node("Add", [f"fc{i}.bias", f"/fc{i}/MatMul_output_0"],
                                   [f"/fc{i}/Add_output_0"], name=f"/fc{i}/Add")]
        x = f"/fc{i}/Add_output_0"
        if i == 0:
            nodes.append(helper.make_node("Relu", [x], ["/relu/Relu_output_0"], name="/relu/Relu"))
            x = "/relu/Relu_output_0"
    nodes.append(helper.make_node("Softmax", [x], ["y"], name="/softmax/Softmax", axis=-1))
    model = make_model(nodes, [("x", ["s0", 12])], [("y", ["s0", 8])], inits, opset=opset,
                       producer=("pytorch", "2.4.0"))
    return model, [{"x": randn((b, 12), seed=b)} for b in BATCHES]


def _torch_flatten(x, out, opset):
    """torch's x.view(x.size(0), -1): Shape -> Gather(0) -> Unsqueeze -> Concat([n, -1]) -> Reshape."""
    nodes = [helper.make_node("Shape", [x], ["/Shape_output_0"], name="/Shape"),
             const_node("/Constant_output_0", np.array(0, np.int64), "/Constant"),
             helper.make_node("Gather", ["/Shape_output_0", "/Constant_output_0"],
                              ["/Gather_output_0"], name="/Gather", axis=0)]
    if opset >= 13:
        nodes += [const_node("/Constant_1_output_0", np.array([0], np.int64), "/Constant_1"),
                  helper.make_node("Unsqueeze", ["/Gather_output_0", "/Constant_1_output_0"],
                                   ["/Unsqueeze_output_0"], name="/Unsqueeze")]
    else:
        nodes.append(helper.make_node("Unsqueeze", ["/Gather_output_0"], ["/Unsqueeze_output_0"],
                                      name="/Unsqueeze", axes=[0]))
    nodes += [const_node("/Constant_2_output_0", np.array([-1], np.int64), "/Constant_2"),
              helper.make_node("Concat", ["/Unsqueeze_output_0", "/Constant_2_output_0"],
                               ["/Concat_output_0"], name="/Concat", axis=0),
              helper.make_node("Reshape", [x, "/Concat_output_0"], [out], name="/Reshape")]
    return nodes


def torch_cnn(flatten="Flatten", opset=17, density=0.1, pool="GlobalAveragePool"):
    """Conv-Relu-MaxPool-Conv-Relu-<pool>-<flatten>-Gemm with a dynamic batch, pruned convs."""
    inits = {"conv1.weight": pruned((8, 3, 3, 3), density, seed=1), "conv1.bias": randn(8, seed=2),
             "conv2.weight": pruned((16, 8, 3, 3), density, seed=3), "conv2.bias": randn(16, seed=4),
             "fc.weight": randn((5, 16 if pool != "none" else 16 * 4 * 4), seed=5, scale=0.3),
             "fc.bias": randn(5, seed=6)}
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="/conv1/Conv",
                         dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         strides=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/relu1/Relu"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="/pool/MaxPool", ceil_mode=0,
                         kernel_shape=[2, 2], pads=[0, 0, 0, 0], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], name="/conv2/Conv",
                         dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         strides=[1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="/relu2/Relu"),
    ]
    feat = "r2"
    if pool == "ReduceMean":  # torch's x.mean((2, 3), keepdim=True)
        if opset >= 18:
            inits["/Constant_3_output_0"] = np.array([2, 3], np.int64)
            nodes.append(helper.make_node("ReduceMean", ["r2", "/Constant_3_output_0"], ["g"],
                                          name="/ReduceMean", keepdims=1))
        else:
            nodes.append(helper.make_node("ReduceMean", ["r2"], ["g"], name="/ReduceMean",
                                          axes=[2, 3], keepdims=1))
        feat = "g"
    elif pool != "none":
        nodes.append(helper.make_node(pool, ["r2"], ["g"], name="/gap/GlobalAveragePool"))
        feat = "g"
    if flatten == "Flatten":
        nodes.append(helper.make_node("Flatten", [feat], ["f"], name="/Flatten", axis=1))
    else:
        nodes += _torch_flatten(feat, "f", opset)
    nodes.append(helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["output"], name="/fc/Gemm",
                                  alpha=1.0, beta=1.0, transB=1))
    model = make_model(nodes, [("input", ["batch", 3, 8, 8])], [("output", ["batch", 5])], inits,
                       opset=opset, producer=("pytorch", "2.3.0"))
    return model, [{"input": randn((b, 3, 8, 8), seed=b)} for b in BATCHES]


def zoo_cnn_opset_9():
    """An old model-zoo style CNN: initializers listed as inputs, LRN, Dropout, Reshape of a constant,
    Softmax-9 (coerce_2d), static batch 1, unnamed nodes, BatchNormalization with spatial."""
    c = 6
    inits = {"conv1_w": pruned((c, 3, 5, 5), 0.1, seed=1), "conv1_b": randn(c, seed=2),
             "bn_scale": randn(c, seed=3), "bn_bias": randn(c, seed=4), "bn_mean": randn(c, seed=5),
             "bn_var": np.abs(randn(c, seed=6)) + 0.5,
             "conv2_w": randn((c, c, 3, 3), seed=7, scale=0.2), "conv2_b": randn(c, seed=8),
             "fc_w": randn((c * 3 * 3, 4), seed=9, scale=0.2), "fc_b": randn(4, seed=10),
             "shape_const": np.array([1, c * 3 * 3], np.int64)}
    nodes = [
        helper.make_node("Conv", ["data_0", "conv1_w", "conv1_b"], ["conv1"], kernel_shape=[5, 5],
                         pads=[2, 2, 2, 2], strides=[1, 1]),
        helper.make_node("BatchNormalization", ["conv1", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
                         ["bn1"], epsilon=1e-5, momentum=0.9),
        helper.make_node("Relu", ["bn1"], ["relu1"]),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[0, 0, 1, 1]),
        helper.make_node("LRN", ["pool1"], ["norm1"], size=5, alpha=1e-4, beta=0.75, bias=1.0),
        helper.make_node("Conv", ["norm1", "conv2_w", "conv2_b"], ["conv2"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], group=1),
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("AveragePool", ["relu2"], ["pool2"], kernel_shape=[2, 2], strides=[2, 2],
                         pads=[0, 0, 1, 1], count_include_pad=0),
        helper.make_node("Reshape", ["pool2", "shape_const"], ["flat"]),
        helper.make_node("Dropout", ["flat"], ["drop", "mask"], ratio=0.5),
        helper.make_node("Gemm", ["drop", "fc_w", "fc_b"], ["fc"]),
        helper.make_node("Softmax", ["fc"], ["prob_1"]),
    ]
    model = make_model(nodes, [("data_0", [1, 3, 11, 11])], [("prob_1", [1, 4])], inits, opset=9,
                       initializers_as_inputs=True, producer=("onnx-caffe2", ""))
    return model, [{"data_0": randn((1, 3, 11, 11), seed=0)}]


add("model_torch_mlp_gemm", torch_mlp_gemm)
add("model_torch_mlp_gemm_opset_13", lambda: torch_mlp_gemm(opset=13))
add("model_torch_mlp_matmul_opset_17", lambda: torch_mlp_matmul(opset=17))
add("model_torch_mlp_matmul_opset_18", lambda: torch_mlp_matmul(opset=18))
add("model_torch_cnn_flatten", torch_cnn)
add("model_torch_cnn_view_dynamic", lambda: torch_cnn(flatten="view"))
add("model_torch_cnn_view_opset_11", lambda: torch_cnn(flatten="view", opset=11))
add("model_torch_cnn_view_no_pool", lambda: torch_cnn(flatten="view", pool="none", opset=14))
add("model_torch_cnn_reducemean_opset_13", lambda: torch_cnn(pool="ReduceMean", opset=13))
add("model_torch_cnn_reducemean_view_opset_18", lambda: torch_cnn(flatten="view", pool="ReduceMean",
                                                                  opset=18))
add("model_torch_cnn_globalmaxpool_opset_21", lambda: torch_cnn(pool="GlobalMaxPool", opset=21))
add("model_zoo_cnn_opset_9", zoo_cnn_opset_9)


# --------------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_matches_onnxruntime(name):
    model, feeds_list = CASES[name]()
    for feeds in feeds_list:
        shapes = {k: v.shape for k, v in feeds.items()}
        assert_matches_ort(model, feeds, context=f"{name} {shapes}")


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_torch_view_flatten_becomes_static(opset):
    model, feeds = torch_cnn(flatten="view", opset=opset)
    imported = zeroskip.import_onnx(model)
    ops = [n.op for n in imported.graph.nodes]
    assert ops == ["Conv", "Relu", "MaxPool", "Conv", "Relu", "GlobalAveragePool", "Reshape", "Gemm"]
    reshape = imported.graph.nodes[6]
    np.testing.assert_array_equal(imported.graph.initializers[reshape.inputs[1]].array, [0, -1])
    assert imported.graph.inputs[0].shape == (None, 3, 8, 8)
    for feed in feeds:
        assert_matches_ort(model, feed)


def test_zoo_model_drops_initializer_inputs():
    model, _ = zoo_cnn_opset_9()
    imported = zeroskip.import_onnx(model)
    assert [v.name for v in imported.graph.inputs] == ["data_0"]
    assert [n.op for n in imported.graph.nodes] == [
        "Conv", "BatchNormalization", "Relu", "MaxPool", "LRN", "Conv", "Relu", "AveragePool",
        "Reshape", "Dropout", "Gemm", "Softmax"]
    assert imported.graph.nodes[0].name == "Conv_0"
    assert imported.graph.nodes[-1].attrs == {"axis": 1, "coerce_2d": 0}


def test_pruned_weights_report_sparsity():
    model, _ = torch_mlp_gemm(density=0.1)
    weights = zeroskip.import_onnx(model).metadata["weights"]
    assert weights["fc0.weight"]["sparsity"] > 0.85
    assert weights["fc2.weight"]["sparsity"] == 0.0


def test_session_from_onnx_bytes_and_path(tmp_path):
    import onnx

    model, feeds = torch_mlp_matmul()
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    from onnx_builders import assert_close, run_ort

    expected = run_ort(model, feeds[1])
    assert_close(expected, zeroskip.Session(str(path)).run(feeds[1]))
    assert_close(expected, zeroskip.Session(zeroskip.import_onnx(model.SerializeToString()))
                 .run(feeds[1]))
