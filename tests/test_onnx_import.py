"""ONNX import: what the IR looks like after normalization and folding, and what is refused and how."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import zeroskip  # noqa: E402
from zeroskip import ModelFormatError, UnsupportedModelError, import_onnx  # noqa: E402
from zeroskip.model import Dense  # noqa: E402

from onnx_builders import const_node, make_model, node, pruned, randn, value_info  # noqa: E402


def ops_of(model):
    return [n.op for n in model.graph.nodes]


def node_named(model, name):
    return next(n for n in model.graph.nodes if n.name == name)


def torch_flatten_nodes(x="x", out="r", index=0, tail=(-1,), prefix="", opset=13):
    """torch's ``x.view(x.size(index), *tail)``: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    p = prefix
    if opset >= 13:
        unsqueeze = [const_node(p + "axes", np.array([0], np.int64)),
                     node("Unsqueeze", [p + "dim", p + "axes"], [p + "dim1"], name=p + "Unsqueeze")]
    else:
        unsqueeze = [node("Unsqueeze", [p + "dim"], [p + "dim1"], name=p + "Unsqueeze", axes=[0])]
    return [
        node("Shape", [x], [p + "shape"], name=p + "Shape"),
        const_node(p + "idx", np.array(index, np.int64)),
        node("Gather", [p + "shape", p + "idx"], [p + "dim"], name=p + "Gather", axis=0),
        *unsqueeze,
        const_node(p + "tail", np.array(tail, np.int64)),
        node("Concat", [p + "dim1", p + "tail"], [p + "target"], name=p + "Concat", axis=0),
        node("Reshape", [x, p + "target"], [out], name=p + "Reshape"),
    ]


# --------------------------------------------------------------------------------------------------
# Folding
# --------------------------------------------------------------------------------------------------

def test_torch_flatten_with_dynamic_batch_becomes_static():
    nodes = torch_flatten_nodes() + [node("Relu", ["r"], ["y"], name="relu")]
    m = import_onnx(make_model(nodes, [("x", ["N", 4, 3, 3])], [("y", ["N", 36])], opset=13))
    assert ops_of(m) == ["Reshape", "Relu"]
    reshape = m.graph.nodes[0]
    assert reshape.inputs[0] == "x"
    target = m.graph.initializers[reshape.inputs[1]]
    assert isinstance(target, Dense) and target.dtype == np.int64
    np.testing.assert_array_equal(target.array, [0, -1])
    assert reshape.attrs == {"allowzero": 0}
    assert m.graph.inputs[0].shape == (None, 4, 3, 3)


def test_torch_flatten_with_static_input_folds_completely():
    nodes = torch_flatten_nodes(opset=11) + [node("Relu", ["r"], ["y"], name="relu")]
    m = import_onnx(make_model(nodes, [("x", [2, 4, 3, 3])], [("y", [2, 36])], opset=11))
    assert ops_of(m) == ["Reshape", "Relu"]
    np.testing.assert_array_equal(m.graph.initializers[m.graph.nodes[0].inputs[1]].array, [2, -1])


def test_reshape_of_a_different_dimension_stays_dynamic():
    # view(-1, x.size(0)): the batch dimension lands in position 1, so 0 ("copy") would be wrong.
    nodes = [
        node("Shape", ["x"], ["shape"], name="Shape"),
        const_node("idx", np.array(0, np.int64)),
        node("Gather", ["shape", "idx"], ["dim"], name="Gather", axis=0),
        node("Unsqueeze", ["dim"], ["dim1"], name="Unsqueeze", axes=[0]),
        const_node("head", np.array([-1], np.int64)),
        node("Concat", ["head", "dim1"], ["target"], name="Concat", axis=0),
        node("Reshape", ["x", "target"], ["y"], name="Reshape"),
    ]
    m = import_onnx(make_model(nodes, [("x", ["N", 6])], [("y", [6, "N"])], opset=11))
    assert ops_of(m) == ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"]
    assert node_named(m, "Unsqueeze").attrs == {"axes": [0]}
    assert node_named(m, "Concat").inputs == ["head", "dim1"]
    assert m.graph.initializers["head"].dtype == np.int64
    assert m.graph.initializers["idx"].shape == ()  # a 0-d index stays 0-d


def test_reshape_target_from_another_tensor_stays_dynamic():
    nodes = torch_flatten_nodes(x="other", out="unused_r") + [
        node("Reshape", ["x", "target"], ["y"], name="reshape_x")]
    m = import_onnx(make_model(nodes, [("x", ["N", 6]), ("other", ["N", 2, 3])],
                               [("y", ["N", 6])], opset=13))
    assert ops_of(m) == ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"]
    assert node_named(m, "Shape").inputs == ["other"]


def test_gather_of_a_static_dimension_folds():
    # x.view(x.size(0), x.size(1), -1) with x (N, 4, 9): dim 1 is static, dim 0 copies.
    nodes = [
        node("Shape", ["x"], ["shape"], name="Shape"),
        const_node("i0", np.array(0, np.int64)),
        const_node("i1", np.array(1, np.int64)),
        node("Gather", ["shape", "i0"], ["d0"], name="g0", axis=0),
        node("Gather", ["shape", "i1"], ["d1"], name="g1", axis=0),
        node("Unsqueeze", ["d0"], ["u0"], name="u0", axes=[0]),
        node("Unsqueeze", ["d1"], ["u1"], name="u1", axes=[0]),
        const_node("m1", np.array([-1], np.int64)),
        node("Concat", ["u0", "u1", "m1"], ["target"], name="cat", axis=0),
        node("Reshape", ["x", "target"], ["y"], name="reshape"),
    ]
    m = import_onnx(make_model(nodes, [("x", ["N", 4, 9])], [("y", ["N", 4, 9])], opset=12))
    assert ops_of(m) == ["Reshape"]
    np.testing.assert_array_equal(m.graph.initializers[m.graph.nodes[0].inputs[1]].array, [0, 4, -1])


def test_constants_fold_into_initializers():
    nodes = [
        const_node("w_f64", np.arange(6, dtype=np.float64).reshape(2, 3)),
        node("Cast", ["w_f64"], ["w"], name="cast", to=TensorProto.FLOAT),
        const_node("shape", np.array([3, 2], np.int64)),
        node("Reshape", ["w", "shape"], ["w32"], name="reshape"),
        node("ConstantOfShape", ["shape"], ["zeros"], name="cos",
             value=numpy_helper.from_array(np.array([0.5], np.float32))),
        node("MatMul", ["x", "w32"], ["h"], name="mm"),
        node("Add", ["h", "b"], ["y"], name="add"),
        node("Add", ["x", "x"], ["dead"], name="dead_add"),
    ]
    # "b" comes from a ConstantOfShape of a constant shape: folded too
    nodes.insert(5, const_node("bshape", np.array([2], np.int64)))
    nodes.insert(6, node("ConstantOfShape", ["bshape"], ["b"], name="cos_b",
                         value=numpy_helper.from_array(np.array([1.0], np.float32))))
    m = import_onnx(make_model(nodes, [("x", ["N", 3])], [("y", ["N", 2])], opset=13))
    assert ops_of(m) == ["MatMul", "Add"]
    inits = m.graph.initializers
    assert set(inits) == {"w32", "b"}
    assert inits["w32"].dtype == np.float32 and inits["w32"].shape == (3, 2)
    np.testing.assert_array_equal(inits["w32"].array, np.arange(6).reshape(3, 2))
    np.testing.assert_array_equal(inits["b"].array, [1.0, 1.0])
    assert inits["b"].dtype == np.float32


def test_squeeze_unsqueeze_gather_concat_fold_on_constants():
    nodes = [
        const_node("a", np.array([[1, 2, 3]], np.int64)),
        node("Squeeze", ["a", "ax0"], ["sq"], name="sq"),  # [1,2,3]
        node("Gather", ["sq", "idx"], ["g"], name="g", axis=0),  # [3,1]
        node("Unsqueeze", ["g", "ax0"], ["u"], name="u"),  # [[3,1]]
        node("Squeeze", ["u", "ax0"], ["s2"], name="s2"),
        node("Concat", ["s2", "sq"], ["c"], name="c", axis=0),  # [3,1,1,2,3]
        node("Cast", ["c"], ["cf"], name="cast", to=TensorProto.FLOAT),
        node("Add", ["x", "cf"], ["y"], name="add"),
    ]
    inits = {"ax0": np.array([0], np.int64), "idx": np.array([2, 0], np.int64)}
    m = import_onnx(make_model(nodes, [("x", ["N", 5])], [("y", ["N", 5])], inits, opset=13))
    assert ops_of(m) == ["Add"]
    np.testing.assert_array_equal(m.graph.initializers["cf"].array, [3, 1, 1, 2, 3])
    assert m.graph.initializers["cf"].dtype == np.float32
    assert set(m.graph.initializers) == {"cf"}  # the unused ones are gone


def test_dynamic_shape_ops_stay_in_the_graph():
    # zeros_like(x) built from Shape: depends on the batch, so it runs at run time.
    nodes = [
        node("Shape", ["x"], ["s"], name="shape"),
        node("ConstantOfShape", ["s"], ["z"], name="cos",
             value=numpy_helper.from_array(np.array([2.0], np.float32))),
        node("Add", ["x", "z"], ["y"], name="add"),
    ]
    m = import_onnx(make_model(nodes, [("x", ["N", 3])], [("y", ["N", 3])], opset=11))
    assert ops_of(m) == ["Shape", "ConstantOfShape", "Add"]
    assert node_named(m, "cos").attrs == {"value": 2.0, "dtype": "float32"}
    assert node_named(m, "shape").attrs == {"start": 0, "end": None}


def test_shape_of_a_static_intermediate_folds():
    nodes = [node("Relu", ["x"], ["r"], name="relu"),
             node("Shape", ["r"], ["s"], name="shape", start=1),
             node("Reshape", ["r", "s"], ["y"], name="reshape")]
    m = import_onnx(make_model(nodes, [("x", [1, 2, 3])], [("y", [2, 3])], opset=15))
    assert ops_of(m) == ["Relu", "Reshape"]
    np.testing.assert_array_equal(m.graph.initializers["s"].array, [2, 3])


# --------------------------------------------------------------------------------------------------
# Normalization of opset variants
# --------------------------------------------------------------------------------------------------

def one(op, opset, attrs=None, inits=None, inputs=None, x_shape=("N", 3, 4, 4), outputs=None,
        y_dtype=np.float32):
    names = ["x"] + list(inputs or [])
    nodes = [helper.make_node(op, names, outputs or ["y"], name="n", **(attrs or {}))]
    model = make_model(nodes, [("x", list(x_shape))], [value_info("y", None, y_dtype)], inits or {},
                       opset=opset, check=False)
    return import_onnx(model).graph.nodes[0]


def test_clip_bounds_become_attributes():
    assert one("Clip", 9, {"min": 0.0, "max": 6.0}).attrs == {"min": 0.0, "max": 6.0}
    assert one("Clip", 9, {"min": -1.0}).attrs == {"min": -1.0, "max": None}
    assert one("Clip", 9).attrs == {"min": None, "max": None}
    n = one("Clip", 13, inits={"lo": np.float32(0), "hi": np.float32(6)}, inputs=["lo", "hi"])
    assert (n.inputs, n.attrs) == (["x"], {"min": 0.0, "max": 6.0})
    n = one("Clip", 11, inits={"hi": np.float32(1.5)}, inputs=["", "hi"])
    assert (n.inputs, n.attrs) == (["x"], {"min": None, "max": 1.5})


def test_pad_forms():
    n = one("Pad", 9, {"pads": [0, 0, 1, 2, 0, 0, 3, 4], "mode": "reflect"})
    assert n.attrs == {"mode": "reflect", "pads": [0, 0, 1, 2, 0, 0, 3, 4], "value": 0.0}
    n = one("Pad", 11, inits={"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
                               "v": np.float32(2.5)}, inputs=["p", "v"])
    assert (n.inputs, n.attrs) == (["x"], {"mode": "constant", "pads": [0, 0, 1, 1, 0, 0, 1, 1],
                                           "value": 2.5})
    n = one("Pad", 18, {"mode": "edge"}, inits={"p": np.array([1, 2, 3, 4], np.int64),
                                                 "axes": np.array([-1, 2], np.int64)},
            inputs=["p", "", "axes"])
    assert n.attrs == {"mode": "edge", "pads": [0, 0, 2, 1, 0, 0, 4, 3], "value": 0.0}


def test_softmax_axis_and_coerce_2d():
    assert one("Softmax", 13).attrs == {"axis": -1, "coerce_2d": 0}
    assert one("Softmax", 13, {"axis": 1}).attrs == {"axis": 1, "coerce_2d": 0}
    assert one("Softmax", 11).attrs == {"axis": 1, "coerce_2d": 1}  # 4-D: flattens 1..3
    assert one("Softmax", 11, {"axis": 3}).attrs == {"axis": 3, "coerce_2d": 0}  # last axis
    assert one("Softmax", 9, x_shape=("N", 10)).attrs == {"axis": 1, "coerce_2d": 0}


def test_squeeze_unsqueeze_axes():
    assert one("Unsqueeze", 11, {"axes": [0, 4]}).attrs == {"axes": [0, 4]}
    n = one("Unsqueeze", 13, inits={"a": np.array([1], np.int64)}, inputs=["a"])
    assert (n.inputs, n.attrs) == (["x"], {"axes": [1]})
    assert one("Squeeze", 11, x_shape=(2, 1, 4)).attrs == {"axes": None}
    n = one("Squeeze", 13, inits={"a": np.array([-2], np.int64)}, inputs=["a"],
            x_shape=("N", 1, 4))
    assert (n.inputs, n.attrs) == (["x"], {"axes": [-2]})


def test_dropout_batchnorm_maxpool_drop_training_details():
    n = one("Dropout", 10, {"ratio": 0.3}, outputs=["y", "mask"])
    assert (n.op, n.inputs, n.outputs, n.attrs) == ("Dropout", ["x"], ["y"], {})
    n = one("Dropout", 13, inits={"r": np.float32(0.5), "t": np.array(False)}, inputs=["r", "t"])
    assert (n.inputs, n.attrs) == (["x"], {})
    c = np.ones(3, np.float32)
    bn = {"s": c, "b": c, "m": c, "v": c}
    n = one("BatchNormalization", 7, {"epsilon": 1e-3, "momentum": 0.8, "spatial": 1}, bn,
            ["s", "b", "m", "v"], outputs=["y", "", "", "", ""])
    assert (n.outputs, n.attrs) == (["y"], {"epsilon": pytest.approx(1e-3)})
    n = one("BatchNormalization", 15, {"training_mode": 0}, bn, ["s", "b", "m", "v"])
    assert n.attrs == {"epsilon": pytest.approx(1e-5)}
    n = one("MaxPool", 12, {"kernel_shape": [2, 2], "storage_order": 1}, outputs=["y", "idx"])
    assert n.outputs == ["y"]
    assert n.attrs == {"auto_pad": "NOTSET", "kernel_shape": [2, 2], "strides": None,
                       "pads": None, "dilations": None, "ceil_mode": 0}


def test_reduction_axes():
    assert one("ReduceMean", 13, {"axes": [2, 3]}).attrs == {
        "axes": [2, 3], "keepdims": 1, "noop_with_empty_axes": 0}
    n = one("ReduceMean", 18, {"keepdims": 0}, {"a": np.array([-1], np.int64)}, ["a"])
    assert (n.inputs, n.attrs) == (["x"], {"axes": [-1], "keepdims": 0, "noop_with_empty_axes": 0})
    n = one("ReduceSum", 13, {"noop_with_empty_axes": 1})
    assert n.attrs == {"axes": None, "keepdims": 1, "noop_with_empty_axes": 1}
    assert one("ReduceMax", 12, {"keepdims": 0}).attrs["axes"] is None


def test_conv_gemm_cast_reshape():
    w = np.ones((5, 3, 3, 2), np.float32)
    n = one("Conv", 11, inits={"w": w}, inputs=["w"])
    assert n.attrs["kernel_shape"] == [3, 2] and n.attrs["group"] == 1
    n = one("Gemm", 13, {"transB": 1}, {"w": np.ones((2, 3), np.float32)}, ["w"], x_shape=("N", 3))
    assert (n.inputs, n.attrs) == (["x", "w"], {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1})
    assert one("Cast", 13, {"to": TensorProto.INT64}, y_dtype=np.int64).attrs == {"to": "int64"}
    assert one("Cast", 9, {"to": TensorProto.DOUBLE}, y_dtype=np.float64).attrs == {"to": "float64"}
    n = one("Reshape", 14, {"allowzero": 0}, {"s": np.array([0, -1], np.int64)}, ["s"])
    assert (n.inputs, n.attrs) == (["x", "s"], {"allowzero": 0})


# --------------------------------------------------------------------------------------------------
# Graph inputs, outputs, names, order, metadata
# --------------------------------------------------------------------------------------------------

def test_initializers_listed_as_inputs_are_not_inputs():
    w = randn((4, 3))
    m = make_model([node("MatMul", ["x", "w"], ["y"], name="mm")], [("x", [1, 4])],
                   [("y", [1, 3])], {"w": w}, opset=7, initializers_as_inputs=True)
    assert [i.name for i in m.graph.input] == ["x", "w"]
    z = import_onnx(m)
    assert [vi.name for vi in z.graph.inputs] == ["x"]
    np.testing.assert_array_equal(z.graph.initializers["w"].array, w)


def test_dynamic_dims_become_none():
    m = make_model([node("Relu", ["x"], ["y"], name="relu")], [("x", ["batch", None, 5])],
                   [("y", ["batch", None, 5])])
    z = import_onnx(m)
    assert z.graph.inputs[0] == zeroskip.ValueInfo("x", (None, None, 5), "float32")
    assert z.graph.outputs[0] == zeroskip.ValueInfo("y", (None, None, 5), "float32")


def test_output_shape_comes_from_inference_when_undeclared():
    m = make_model([node("Relu", ["x"], ["y"], name="relu")], [("x", ["N", 5])],
                   [value_info("y", None)], check=False)
    assert import_onnx(m).graph.outputs[0].shape == (None, 5)


def test_unnamed_nodes_get_op_index_names_and_unsorted_graphs_are_sorted():
    nodes = [helper.make_node("Relu", ["h"], ["y"]),  # reads h, produced later in the file
             helper.make_node("Sigmoid", ["x"], ["h"], name="sig"),
             helper.make_node("Tanh", ["x"], ["t"]),
             helper.make_node("Add", ["y", "t"], ["z"], name="sig")]  # duplicate name
    m = make_model(nodes, [("x", ["N", 2])], [("z", ["N", 2])], check=False)
    z = import_onnx(m)
    assert [(n.name, n.op) for n in z.graph.nodes] == [
        ("sig", "Sigmoid"), ("Relu_0", "Relu"), ("Tanh_2", "Tanh"), ("sig_3", "Add")]
    assert [n.outputs for n in z.graph.nodes] == [["h"], ["y"], ["t"], ["z"]]


def test_cycle_and_undefined_inputs_are_format_errors():
    nodes = [helper.make_node("Relu", ["b"], ["a"], name="r1"),
             helper.make_node("Relu", ["a"], ["b"], name="r2"),
             helper.make_node("Add", ["x", "a"], ["y"], name="add")]
    m = make_model(nodes, [("x", [2])], [("y", [2])], check=False)
    with pytest.raises(ModelFormatError, match="cycle"):
        import_onnx(m)
    m = make_model([helper.make_node("Relu", ["nope"], ["y"], name="r")], [("x", [2])],
                   [("y", [2])], check=False)
    with pytest.raises(ModelFormatError, match="'r' \\(Relu\\) reads 'nope'"):
        import_onnx(m)


def test_metadata(tmp_path):
    w1, w2 = pruned((8, 4), density=0.25, seed=1), randn((3, 8))
    nodes = [node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             node("Relu", ["h"], ["r"], name="relu"),
             node("Gemm", ["r", "w2"], ["y"], name="fc2", transB=1)]
    m = make_model(nodes, [("x", ["N", 4])], [("y", ["N", 3])],
                   {"w1": w1, "b1": np.zeros(8, np.float32), "w2": w2}, opset=17,
                   name="mlp", producer=("pytorch", "2.3.0"))
    path = tmp_path / "mlp.onnx"
    onnx.save(m, str(path))
    z = import_onnx(path)
    assert z.metadata["producer"] == f"zeroskip {zeroskip.__version__}"
    assert z.metadata["source"] == {"format": "onnx", "opset": 17, "producer": "pytorch 2.3.0",
                                    "name": "mlp", "path": "mlp.onnx"}
    weights = z.metadata["weights"]
    assert set(weights) == {"w1", "b1", "w2"}
    assert weights["w1"] == {"origin": "onnx", "sparsity": pytest.approx(1 - np.mean(w1 != 0))}
    assert weights["b1"]["sparsity"] == 1.0 and weights["w2"]["sparsity"] == 0.0
    assert "path" not in import_onnx(m).metadata["source"]
    assert import_onnx(m.SerializeToString()).metadata["source"]["name"] == "mlp"


def test_float64_and_float16_weights_become_float32():
    nodes = [node("Cast", ["x"], ["x16"], name="c16", to=TensorProto.FLOAT16),
             node("Add", ["x16", "w16"], ["h"], name="add16"),
             node("Cast", ["h"], ["y"], name="c32", to=TensorProto.FLOAT)]
    m = make_model(nodes, [("x", [2])], [("y", [2])], {"w16": np.array([1, 2], np.float16)})
    assert import_onnx(m).graph.initializers["w16"].dtype == np.float32


def test_external_data(tmp_path):
    w = randn((16, 16))
    m = make_model([node("MatMul", ["x", "w"], ["y"], name="mm")], [("x", ["N", 16])],
                   [("y", ["N", 16])], {"w": w})
    path = tmp_path / "ext.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.bin", size_threshold=0)
    assert (tmp_path / "ext.bin").exists()
    np.testing.assert_array_equal(import_onnx(str(path)).graph.initializers["w"].array, w)
    unloaded = onnx.load(str(path), load_external_data=False)
    with pytest.raises(ModelFormatError, match="'w' keeps its data in the external file 'ext.bin'"):
        import_onnx(unloaded)
    os.remove(tmp_path / "ext.bin")
    with pytest.raises(ModelFormatError, match="ext.onnx"):
        import_onnx(str(path))


# --------------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------------

def test_unsupported_message_lists_everything_at_once():
    pads = np.array([0, 0, 1, 1], np.int64)
    nodes = [
        helper.make_node("Erf", ["x"], ["e1"], name="erf_a"),
        helper.make_node("Resize", ["e1", "", "scales"], ["r"], name="up"),
        helper.make_node("Erf", ["r"], ["e2"], name="erf_b"),
        helper.make_node("MaxPool", ["e2"], ["p", "idx"], name="pool3", kernel_shape=[1],
                         storage_order=1),
        helper.make_node("Cast", ["idx"], ["idxf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Add", ["p", "idxf"], ["s"], name="add"),
        helper.make_node("Pad", ["s", "pads"], ["q"], name="pad", mode="wrap"),
        helper.make_node("Relu", ["q"], ["lo"], name="relu"),
        helper.make_node("Clip", ["q", "lo"], ["c"], name="clip"),
        helper.make_node("Erf", ["c"], ["e3"], name="erf_c"),
        helper.make_node("Gelu", ["e3"], ["y"], name="gelu_ms", domain="com.microsoft"),
        helper.make_node("Erf", ["x"], ["dead"], name="dead_erf"),  # unused: not reported
    ]
    m = make_model(nodes, [("x", ["N", 3, 4])], [("y", ["N", 3, 6])],
                   {"scales": np.array([1, 1, 1], np.float32), "pads": pads}, opset=19,
                   extra_opsets=[("com.microsoft", 1)], check=False)
    with pytest.raises(UnsupportedModelError) as info:
        import_onnx(m)
    assert str(info.value) == (
        "ONNX model: unsupported ops: Erf ×3 (first: 'erf_a'), Resize ×1 (first: 'up'), "
        "com.microsoft.Gelu ×1 (first: 'gelu_ms'); "
        "unsupported attributes: Pad.mode=wrap ×1 (first: 'pad'); "
        "unsupported outputs (used, but only inference outputs are computed): "
        "MaxPool.Indices ×1 (first: 'pool3'); "
        "inputs that must be constant: Clip.min ×1 (first: 'clip')")


def test_unsupported_training_details():
    c = np.ones(3, np.float32)
    bn = {"s": c, "b": c, "m": c, "v": c}
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"],
                              name="bn_train", training_mode=1),
             helper.make_node("Add", ["rm", "rv"], ["z"], name="add"),
             helper.make_node("Dropout", ["y", "", "t"], ["d", "mask"], name="drop"),
             helper.make_node("Cast", ["mask"], ["mf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Add", ["d", "mf"], ["w"], name="add2")]
    m = make_model(nodes, [("x", ["N", 3]), ("t", [], np.bool_)], [("w", ["N", 3]), ("z", [3])],
                   bn, opset=15, check=False)
    with pytest.raises(UnsupportedModelError) as info:
        import_onnx(m)
    msg = str(info.value)
    assert "unsupported attributes: BatchNormalization.training_mode=1 ×1 (first: 'bn_train')" in msg
    assert ("BatchNormalization.running_mean ×1 (first: 'bn_train'), BatchNormalization.running_var "
            "×1 (first: 'bn_train'), Dropout.mask ×1 (first: 'drop')") in msg
    assert "inputs that must be constant: Dropout.training_mode ×1 (first: 'drop')" in msg
    assert "unsupported dtypes: bool input ×1 (first: 't')" in msg


def test_batchnorm_spatial_0_refused():
    c = np.ones(3, np.float32)
    n = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn",
                         spatial=0)
    m = make_model([n], [("x", ["N", 3])], [("y", ["N", 3])],
                   {"s": c, "b": c, "m": c, "v": c}, opset=7, check=False)
    with pytest.raises(UnsupportedModelError, match=r"BatchNormalization.spatial=0 ×1 \(first: 'bn'\)"):
        import_onnx(m)


def test_non_default_domain_refused():
    n = helper.make_node("FusedConv", ["x"], ["y"], name="fc", domain="com.microsoft")
    m = make_model([n], [("x", [1, 3])], [("y", [1, 3])], extra_opsets=[("com.microsoft", 1)],
                   check=False)
    with pytest.raises(UnsupportedModelError,
                       match=r"unsupported ops: com.microsoft.FusedConv ×1 \(first: 'fc'\)"):
        import_onnx(m)


def test_non_float32_input_refused():
    m = make_model([node("Relu", ["x"], ["y"], name="r")], [("x", [2], np.float64)],
                   [("y", [2], np.float64)])
    with pytest.raises(UnsupportedModelError, match=r"unsupported dtypes: float64 input ×1 \(first: 'x'\)"):
        import_onnx(m)


def test_int64_input_accepted():
    m = make_model([node("Reshape", ["x", "shape"], ["y"], name="r")],
                   [("x", [6]), ("shape", [2], np.int64)], [("y", [None, None])])
    z = import_onnx(m)
    assert [(v.name, v.dtype) for v in z.graph.inputs] == [("x", "float32"), ("shape", "int64")]


@pytest.mark.parametrize("data", [b"\x00\x01garbage", b"not an onnx model at all", b""])
def test_malformed_bytes(data):
    with pytest.raises(ModelFormatError, match="ONNX bytes"):
        import_onnx(data)


def test_malformed_and_missing_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07\x12garbage\xff\xff")
    with pytest.raises(ModelFormatError, match="bad.onnx"):
        import_onnx(bad)
    with pytest.raises(ModelFormatError, match="missing.onnx.*no such file"):
        import_onnx(tmp_path / "missing.onnx")


def test_missing_onnx_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(UnsupportedModelError, match=r"pip install 'zeroskip\[onnx\]'"):
        zeroskip.import_onnx(b"anything")


def test_constant_attribute_forms_and_sparse_initializers():
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([2.0, -3.0], np.float32), "sw"),
        numpy_helper.from_array(np.array([1, 5], np.int64), "sw_idx"), [2, 3])
    nodes = [helper.make_node("Constant", [], ["f"], name="cf", value_floats=[1.0, 2.0, 3.0]),
             helper.make_node("Constant", [], ["i"], name="ci", value_ints=[2, 3]),
             helper.make_node("Reshape", ["f", "i0"], ["f2"], name="r"),
             helper.make_node("Add", ["x", "sw"], ["h"], name="add"),
             helper.make_node("Add", ["h", "f"], ["y"], name="add2")]
    graph = helper.make_graph(nodes, "g", [value_info("x", ["N", 2, 3])],
                              [value_info("y", ["N", 2, 3])],
                              [numpy_helper.from_array(np.array([3], np.int64), "i0")],
                              sparse_initializer=[sparse])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    z = import_onnx(m)
    assert ops_of(z) == ["Add", "Add"]
    np.testing.assert_array_equal(z.graph.initializers["sw"].array, [[0, 2, 0], [0, 0, -3]])
    np.testing.assert_array_equal(z.graph.initializers["f"].array, [1, 2, 3])
    assert z.graph.initializers["f"].dtype == np.float32


def test_conv_kernel_shape_from_a_computed_weight():
    nodes = [helper.make_node("Identity", ["wx"], ["w"], name="id"),
             helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    m = make_model(nodes, [("x", ["N", 2, 5, 5]), ("wx", [3, 2, 1, 3])], [("y", ["N", 3, 5, 3])])
    assert node_named(import_onnx(m), "conv").attrs["kernel_shape"] == [1, 3]


def test_errors_are_never_crashes_on_malformed_nodes():
    # Pad-11 pads of the wrong length for axes: a malformed model, reported as such.
    n = helper.make_node("Pad", ["x", "p", "", "axes"], ["y"], name="pad")
    m = make_model([n], [("x", [2, 3])], [("y", [2, 5])],
                   {"p": np.array([1], np.int64), "axes": np.array([0, 1], np.int64)}, opset=18,
                   check=False)
    with pytest.raises(zeroskip.ZeroskipError, match="'pad'"):
        import_onnx(m)


def test_string_constant_refused():
    n = helper.make_node("Constant", [], ["s"], name="strings", value_strings=["a"])
    m = make_model([n, helper.make_node("Identity", ["x"], ["y"], name="id")], [("x", [2])],
                   [("y", [2])], check=False)
    # unused: dropped without complaint
    assert ops_of(import_onnx(m)) == ["Identity"]
    m = make_model([n], [("x", [2])], [("s", [1], np.str_)], check=False)
    with pytest.raises(UnsupportedModelError, match=r"Constant.value_strings=<string> ×1 \(first: 'strings'\)"):
        import_onnx(m)
