"""Hostile and malformed ONNX files: each ends in a ModelFormatError or UnsupportedModelError that
names the tensor, node or attribute and the rule it broke, never in another exception, a crash, a
hang, a read outside the model's directory or a huge allocation.

The files are built with ``onnx.helper`` (tests/onnx_builders.py), then broken by hand.
"""

from __future__ import annotations

import builtins
import os
import re
import tracemalloc

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import AttributeProto, TensorProto, helper, numpy_helper  # noqa: E402

import zeroskip  # noqa: E402
from zeroskip import (ModelFormatError, UnsupportedModelError, ZeroskipError,  # noqa: E402
                      import_onnx)

from onnx_builders import make_model, node, randn  # noqa: E402

HUGE = 2 ** 40


def cnn():
    """A small real model: Conv -> BatchNormalization -> Relu -> MaxPool -> Flatten -> Gemm."""
    inits = {"w": randn((4, 3, 3, 3), seed=1), "b": randn((4,), seed=2),
             "scale": np.ones(4, np.float32), "bias": np.zeros(4, np.float32),
             "mean": np.zeros(4, np.float32), "var": np.ones(4, np.float32),
             "fw": randn((10, 4 * 4 * 4), seed=3), "fb": randn((10,), seed=4)}
    nodes = [node("Conv", ["x", "w", "b"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["n"], name="bn"),
             node("Relu", ["n"], ["r"], name="relu"),
             node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             node("Flatten", ["p"], ["f"], name="flatten"),
             node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 10])], inits)


def refused(model_or_bytes, error=ZeroskipError, match=None):
    """Import must raise ``error`` (a ModelFormatError or UnsupportedModelError) matching
    ``match``."""
    with pytest.raises(error) as info:
        import_onnx(model_or_bytes)
    assert isinstance(info.value, (ModelFormatError, UnsupportedModelError)), repr(info.value)
    if match is not None:
        assert re.search(match, str(info.value)), str(info.value)
    return str(info.value)


def test_the_real_model_imports():
    """The control: the model the byte-level tests break is fine as it is."""
    x = randn((2, 3, 8, 8), seed=5)
    got = zeroskip.Session(import_onnx(cnn()), mode="reference").run({"x": x})
    assert got["y"].shape == (2, 10)


# --------------------------------------------------------------------------------------------------
# Bytes
# --------------------------------------------------------------------------------------------------

def test_truncated_bytes_at_many_points():
    data = cnn().SerializeToString()
    cuts = sorted({1, 2, 3, 16, len(data) // 4, len(data) // 2, len(data) - 100, len(data) - 1}
                  | set(range(0, len(data), 97)))
    for cut in cuts:
        refused(data[:cut], match=r"^ONNX bytes: ")


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.onnx"
    data = cnn().SerializeToString()
    path.write_bytes(data[:len(data) // 2])
    refused(path, ModelFormatError, r"cut\.onnx.*cannot be read as an ONNX model")


def test_random_garbage_bytes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        garbage = rng.integers(0, 256, size=int(rng.integers(1, 600)), dtype=np.uint8).tobytes()
        refused(garbage, match=r"^ONNX bytes: ")


def test_corrupted_bytes_import_or_fail_cleanly():
    """A few bytes of a real model overwritten: it may still be a valid model (a weight changed),
    otherwise the error is a ZeroskipError."""
    data = cnn().SerializeToString()
    rng = np.random.default_rng(1)
    errors = 0
    for _ in range(150):
        corrupt = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            corrupt[int(rng.integers(0, len(corrupt)))] = int(rng.integers(0, 256))
        try:
            import_onnx(bytes(corrupt))
        except (ModelFormatError, UnsupportedModelError):
            errors += 1
    assert errors > 0


# --------------------------------------------------------------------------------------------------
# Graph structure
# --------------------------------------------------------------------------------------------------

def test_input_that_nothing_defines():
    m = make_model([node("Add", ["x", "bias"], ["y"], name="add")], [("x", [2])], [("y", [2])],
                   check=False)  # "bias" was meant to be an initializer
    refused(m, ModelFormatError, r"^ONNX model: node 'add' \(Add\) reads 'bias', which no node, "
                                 r"input or initializer defines$")


def test_cycle_between_nodes():
    nodes = [node("Relu", ["b_out"], ["a_out"], name="a"),
             node("Relu", ["a_out"], ["b_out"], name="b"),
             node("Add", ["x", "a_out"], ["y"], name="add")]
    m = make_model(nodes, [("x", [2])], [("y", [2])], check=False)
    refused(m, ModelFormatError, r"^ONNX model: the graph has a cycle \(through node 'a'\)$")


@pytest.mark.parametrize("case, error, match", [
    ("no outputs", ModelFormatError, r"node 'relu' \(Relu\) has no outputs"),
    ("no op_type", ModelFormatError, r"node 'relu' has no op_type"),
    ("output defined twice", ModelFormatError, r"node 'relu2' \(Relu\): output 'y' is empty or "
                                               r"defined twice"),
    ("too many inputs", ModelFormatError, r"node 'relu' \(Relu\): has 3 inputs, but opset 17 "
                                          r"defines 1 to 1"),
    ("required input empty", ModelFormatError, r"node 'add' \(Add\): required input 0 \(A\) is "
                                               r"empty"),
    ("attribute of the wrong type", ModelFormatError,
     r"node 'leaky' \(LeakyRelu\): attribute 'alpha' must be a number, not 'x'"),
    ("attribute tensor of 2**40 elements", ModelFormatError,
     r"node 'c' \(Constant\): the tensor of attribute 'value' has dims \[1099511627776\], which "
     r"need 1099511627776 × 4 = \d+ bytes, but its raw_data holds 12"),
])
def test_malformed_nodes(case, error, match):
    relu = node("Relu", ["x"], ["y"], name="relu")
    nodes = [relu]
    if case == "no outputs":
        del relu.output[:]
    elif case == "no op_type":
        relu.op_type = ""
    elif case == "output defined twice":
        nodes.append(node("Relu", ["x"], ["y"], name="relu2"))
    elif case == "too many inputs":
        relu.input.extend(["x", "x"])
    elif case == "required input empty":
        nodes = [node("Add", ["", "x"], ["y"], name="add")]
    elif case == "attribute of the wrong type":
        nodes = [node("LeakyRelu", ["x"], ["y"], name="leaky", alpha="x")]
    else:
        value = numpy_helper.from_array(np.ones(3, np.float32), "")
        value.dims[0] = HUGE
        nodes = [helper.make_node("Constant", [], ["k"], name="c", value=value),
                 node("Add", ["x", "k"], ["y"], name="add")]
    m = make_model(nodes, [("x", [3])], [("y", [3])], check=False)
    refused(m, error, match)


# --------------------------------------------------------------------------------------------------
# Tensors: dims against data, before any allocation
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def arrays_made(monkeypatch):
    """Names of the TensorProtos the importer turns into arrays (via onnx's to_array)."""
    made = []
    to_array = numpy_helper.to_array

    def recording(tensor, *args, **kwargs):
        made.append(tensor.name)
        return to_array(tensor, *args, **kwargs)

    monkeypatch.setattr(numpy_helper, "to_array", recording)
    return made


def with_weight(tensor):
    m = cnn()
    for i, t in enumerate(m.graph.initializer):
        if t.name == "w":
            m.graph.initializer[i].CopyFrom(tensor)
    return m


@pytest.mark.parametrize("dims, raw, match", [
    ([4, 3, 3, 3], -4, r"dims \[4, 3, 3, 3\], which need 108 × 4 = 432 bytes, but its raw_data "
                       r"holds 428"),
    ([4, 3, 3, 3], +8, r"dims \[4, 3, 3, 3\], which need 108 × 4 = 432 bytes, but its raw_data "
                       r"holds 440"),
    ([-4, 3, 3, 3], 0, r"dims \[-4, 3, 3, 3\]; a dimension cannot be negative"),
    ([HUGE, HUGE], 0, r"dims \[1099511627776, 1099511627776\], which need "
                      r"1208925819614629174706176 × 4 = \d+ bytes, but its raw_data holds 432"),
    ([2 ** 62, 2 ** 62, 4], 0, r"dims \[4611686018427387904, 4611686018427387904, 4\], which need "
                               r"85070591730234615865843651857942052864 × 4"),  # no int64 overflow
])
def test_raw_data_must_match_dims(arrays_made, dims, raw, match):
    t = numpy_helper.from_array(randn((4, 3, 3, 3), seed=1), "w")
    t.raw_data = t.raw_data[:raw] if raw < 0 else t.raw_data + b"\0" * raw
    del t.dims[:]
    t.dims.extend(dims)
    refused(with_weight(t), ModelFormatError, r"^ONNX model: tensor 'w' has " + match)
    assert "w" not in arrays_made  # refused from dims and byte counts alone


@pytest.mark.parametrize("dims, match", [
    ([HUGE, HUGE], r"dims \[1099511627776, 1099511627776\] \(1208925819614629174706176 "
                   r"elements\) but holds only 108 values"),
    ([-1], r"dims \[-1\]; a dimension cannot be negative"),  # numpy would read -1 as "the rest"
])
def test_typed_data_must_match_dims(arrays_made, dims, match):
    t = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], randn((4, 3, 3, 3)).ravel())
    del t.dims[:]
    t.dims.extend(dims)
    refused(with_weight(t), ModelFormatError, r"^ONNX model: tensor 'w' has " + match)
    assert "w" not in arrays_made


def sparse_model(dims, indices, values=(2.0,)):
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.asarray(values, np.float32), "sw"),
        numpy_helper.from_array(np.asarray(indices, np.int64), "sw_idx"), dims)
    graph = helper.make_graph([node("Add", ["x", "sw"], ["y"], name="add")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              sparse_initializer=[sparse])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("dims, indices, error, match", [
    ([1, 3], [7], ModelFormatError, r"sparse tensor 'sw': an index lies outside dims \[1, 3\]"),
    ([1, 3], [-1], ModelFormatError, r"sparse tensor 'sw': an index lies outside dims \[1, 3\]"),
    ([1, 3], [[0, 3]], ModelFormatError, r"an index lies outside dims \[1, 3\]"),
    ([1, 3], [[1, 2, 0]], ModelFormatError, r"indices \[1, 3\] \(int64\) integers of shape \[NNZ\] "
                                            r"or \[NNZ, 2\]"),
    ([-1, 3], [1], ModelFormatError, r"sparse tensor 'sw' has dims \[-1, 3\]; a dimension cannot "
                                     r"be negative"),
    ([2 ** 20, 2 ** 20], [1], UnsupportedModelError,
     r"sparse tensor 'sw': made dense, its dims \[1048576, 1048576\] would take 4398046511104 "
     r"bytes, more than the import may allocate"),
])
def test_hostile_sparse_initializers(dims, indices, error, match):
    tracemalloc.start()
    try:
        refused(sparse_model(dims, indices), error, match)
        assert tracemalloc.get_traced_memory()[1] < 32 << 20
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(  # the control
        import_onnx(sparse_model([1, 3], [1])).graph.initializers["sw"].array, [[0, 2, 0]])


# --------------------------------------------------------------------------------------------------
# Attributes and computed shapes
# --------------------------------------------------------------------------------------------------

def conv(x_shape=("N", 3, 8, 8), **attrs):
    attrs = {"pads": [1, 1, 1, 1], **attrs}
    nodes = [node("Conv", ["x", "w", "b"], ["y"], name="conv1", **attrs)]
    return make_model(nodes, [("x", list(x_shape))], [("y", None)],
                      {"w": randn((4, 3, 3, 3)), "b": randn((4,))}, check=False)


def pool(op="MaxPool", **attrs):
    attrs = {"kernel_shape": [2, 2], **attrs}
    return make_model([node(op, ["x"], ["y"], name="pool", **attrs)], [("x", ["N", 3, "H", "W"])],
                      [("y", None)], check=False)


def one(op, inputs, attrs=None, inits=None, x_shape=("N", 12)):
    nodes = [node(op, ["x", *inputs], ["y"], name="n", **(attrs or {}))]
    return make_model(nodes, [("x", list(x_shape))], [("y", None)], inits or {}, check=False)


BOUND = r"must be a list of integers \(each at least {}, at most 16777216\), or null, not {}"

HOSTILE_ATTRIBUTES = {
    "conv kernel_shape 2**40": (conv(kernel_shape=[HUGE, HUGE]), ModelFormatError,
                                r"node 'conv1' \(Conv\): attribute 'kernel_shape' "
                                + BOUND.format(1, r"\[1099511627776, 1099511627776\]")),
    "conv kernel_shape negative": (conv(kernel_shape=[-3, 3]), ModelFormatError,
                                   r"node 'conv1' \(Conv\): attribute 'kernel_shape' "
                                   + BOUND.format(1, r"\[-3, 3\]")),
    "conv pads 2**40": (conv(pads=[HUGE] * 4), ModelFormatError,
                        r"node 'conv1' \(Conv\): attribute 'pads' "
                        + BOUND.format(0, r"\[1099511627776, 1099511627776, 109951\.\.\.")),
    "conv pads negative": (conv(pads=[-1] * 4), ModelFormatError,
                           r"node 'conv1' \(Conv\): attribute 'pads' "
                           + BOUND.format(0, r"\[-1, -1, -1, -1\]")),
    "conv strides 2**40": (conv(strides=[HUGE, 1]), ModelFormatError,
                           r"node 'conv1' \(Conv\): attribute 'strides' "
                           + BOUND.format(1, r"\[1099511627776, 1\]")),
    "conv strides 0": (conv(strides=[0, 1]), ModelFormatError,
                       r"node 'conv1' \(Conv\): attribute 'strides' "
                       + BOUND.format(1, r"\[0, 1\]")),
    "conv dilations 2**40": (conv(dilations=[1, HUGE]), ModelFormatError,
                             r"node 'conv1' \(Conv\): attribute 'dilations' "
                             + BOUND.format(1, r"\[1, 1099511627776\]")),
    "conv dilations too wide for the input": (
        conv((1, 3, 8, 8), dilations=[2 ** 20, 1]), ModelFormatError,
        r"node 'conv1' \(Conv\): Conv window does not fit: expected a window extent \(2097153\) "
        r"no larger than the padded input \(10\)"),
    "conv group 0": (conv(group=0), ModelFormatError,
                     r"node 'conv1' \(Conv\): attribute 'group' must be an integer at least 1, "
                     r"not 0"),
    "conv group 2**40": (conv(group=HUGE), ModelFormatError,
                         r"node 'conv1' \(Conv\): input channels C = 3 must equal group "
                         r"\(1099511627776\) × the weight's C/group \(3\)"),
    "conv pads giving an enormous output": (
        conv((1, 3, 8, 8), pads=[2 ** 20] * 4), UnsupportedModelError,
        r"node 'conv1' \(Conv\): output 'y' has shape \(1, 4, 2097158, 2097158\): 17592286707856 "
        r"elements \(a dynamic size counted as 1\), more than the 4294967296 \(2\*\*32\) zeroskip "
        r"runs in one tensor"),
    "maxpool kernel_shape 2**40": (pool(kernel_shape=[HUGE, HUGE]), ModelFormatError,
                                   r"node 'pool' \(MaxPool\): attribute 'kernel_shape' "
                                   + BOUND.format(1, r"\[1099511627776, 1099511627776\]")),
    "averagepool pads 2**40": (pool("AveragePool", pads=[HUGE] * 4), ModelFormatError,
                               r"node 'pool' \(AveragePool\): attribute 'pads' "
                               + BOUND.format(0, r"\[1099511627776, 1099511627776, 109951\.\.\.")),
    "maxpool kernel_shape negative": (pool(kernel_shape=[-2, 2]), ModelFormatError,
                                      r"node 'pool' \(MaxPool\): attribute 'kernel_shape' "
                                      + BOUND.format(1, r"\[-2, 2\]")),
    "lrn size 2**40": (one("LRN", [], {"size": HUGE}, x_shape=("N", 3, 4, 4)), ModelFormatError,
                       r"node 'n' \(LRN\): attribute 'size' must be an integer at least 1, at "
                       r"most 16777216, not 1099511627776"),
    "softmax axis 2**40": (one("Softmax", [], {"axis": HUGE}), ModelFormatError,
                           r"node 'n' \(Softmax\): axis 1099511627776 is out of range for an "
                           r"input of rank 2"),
    "pad pads 2**40": (one("Pad", ["p"], inits={"p": np.array([0, HUGE, 0, HUGE], np.int64)}),
                       ModelFormatError, r"node 'n' \(Pad\): attribute 'pads' "
                       + BOUND.format(0, r"\[0, 1099511627776, 0, 1099511627776\]")),
    "reshape to 2**80 elements": (
        one("Reshape", ["s"], inits={"s": np.array([HUGE, HUGE], np.int64)}), UnsupportedModelError,
        r"node 'n' \(Reshape\): output 'y' has shape \(1099511627776, 1099511627776\): "
        r"1208925819614629174706176 elements"),
    "reshape of a static input to 2**80 elements": (
        one("Reshape", ["s"], inits={"s": np.array([HUGE, HUGE], np.int64)}, x_shape=(3, 4)),
        ModelFormatError,
        r"node 'n' \(Reshape\): cannot reshape \(3, 4\) \(12 elements\) to "
        r"\[1099511627776, 1099511627776\]"),
    "transpose perm 2**40": (one("Transpose", [], {"perm": [HUGE, 0]}), ModelFormatError,
                             r"node 'n' \(Transpose\): perm \[1099511627776, 0\] is not a "
                             r"permutation of the 2 axes"),
    "unsqueeze axes 2**40": (one("Unsqueeze", ["a"], inits={"a": np.array([HUGE], np.int64)}),
                             ModelFormatError, r"node 'n' \(Unsqueeze\): Unsqueeze axis "
                                               r"1099511627776 is out of range for rank 3"),
    "gather of a constant out of range": (
        make_model([node("Gather", ["w", "i"], ["g"], name="n", axis=0),
                    node("Add", ["x", "g"], ["y"], name="add")], [("x", ["N", 3])], [("y", None)],
                   {"w": np.ones((3, 3), np.float32), "i": np.array([5], np.int64)}, check=False),
        ModelFormatError, r"node 'n' \(Gather\) cannot be evaluated on its constant inputs "
                          r"\(index 5 is out of bounds"),
}


@pytest.mark.parametrize("case", HOSTILE_ATTRIBUTES)
def test_hostile_attributes(case):
    model, error, match = HOSTILE_ATTRIBUTES[case]
    tracemalloc.start()
    try:
        refused(model, error, r"^ONNX model: " + match)
        assert tracemalloc.get_traced_memory()[1] < 32 << 20
    finally:
        tracemalloc.stop()


def test_an_enormous_constant_of_shape_is_not_made_at_import():
    nodes = [node("ConstantOfShape", ["s"], ["y"], name="zeros",
                  value=numpy_helper.from_array(np.array([1.0], np.float32)))]
    m = make_model(nodes, [("x", [1])], [("y", None)], {"s": np.array([HUGE, HUGE], np.int64)},
                   check=False)
    tracemalloc.start()
    try:
        refused(m, UnsupportedModelError,
                r"^ONNX model: node 'zeros' \(ConstantOfShape\): output 'y' has shape "
                r"\(1099511627776, 1099511627776\): 1208925819614629174706176 elements")
        assert tracemalloc.get_traced_memory()[1] < 32 << 20
    finally:
        tracemalloc.stop()


def test_folding_stays_within_the_import_room():
    """A ConstantOfShape of 1 GiB and a Concat of 400 copies of one 1 MiB tensor are left for the
    run to compute (where the memory budget applies), not made at import."""
    big = np.arange(1 << 18, dtype=np.float32)  # 1 MiB
    nodes = [node("ConstantOfShape", ["s"], ["zeros"], name="zeros",
                  value=numpy_helper.from_array(np.array([0.0], np.float32))),
             node("Concat", ["big"] * 400, ["copies"], name="copies", axis=0),
             node("Add", ["x", "zeros"], ["y"], name="add"),
             node("Add", ["x1", "copies"], ["y1"], name="add1")]
    m = make_model(nodes, [("x", ["N", 1 << 14]), ("x1", ["N", 400 << 18])],
                   [("y", None), ("y1", None)],
                   {"s": np.array([1 << 14, 1 << 14], np.int64), "big": big}, check=False)
    tracemalloc.start()
    try:
        imported = import_onnx(m)
        assert tracemalloc.get_traced_memory()[1] < 64 << 20
    finally:
        tracemalloc.stop()
    assert [n.op for n in imported.graph.nodes] == ["ConstantOfShape", "Concat", "Add", "Add"]


def doubling_chain(levels, source):
    """``levels`` Concat(v, v) nodes doubling a shape vector (Shape of x, or a 64-entry int64
    initializer), then a Reshape of x by it: a file of a few kB whose last shape vector has
    2**levels times the entries, which is the rank the Reshape would give."""
    nodes = [node("Shape", ["x"], ["v0"], name="shape")] if source == "shape" else []
    inits = {} if source == "shape" else {"v0": np.arange(64, dtype=np.int64)}
    for i in range(levels):
        nodes.append(node("Concat", [f"v{i}", f"v{i}"], [f"v{i + 1}"], name=f"double{i}", axis=0))
    nodes.append(node("Reshape", ["x", f"v{levels}"], ["y"], name="reshape"))
    return make_model(nodes, [("x", ["N", 4])], [("y", None)], inits, check=False)


HOSTILE_RANKS = {
    # onnx's shape inference keeps every axis of every value: 2**30 axes would take tens of GB
    "doubled Shape": (doubling_chain(30, "shape"), r"node 'reshape' \(Reshape\): its output would "
                                                   r"have 2147483648 axes \(the length of its "
                                                   r"shape input 'v30'\)"),
    "doubled initializer": (doubling_chain(30, "init"), r"node 'reshape' \(Reshape\): its output "
                                                        r"would have 68719476736 axes"),
    "shape vector fed as input": (
        make_model([node("Reshape", ["x", "s"], ["y"], name="reshape")],
                   [("x", ["N", 4]), ("s", [2 ** 30], np.int64)], [("y", None)], check=False),
        r"node 'reshape' \(Reshape\): its output would have 1073741824 axes"),
    "constant of a long shape": (
        make_model([node("ConstantOfShape", ["s"], ["y"], name="zeros")],
                   [("x", [1]), ("s", [2 ** 30], np.int64)], [("y", None)], check=False),
        r"node 'zeros' \(ConstantOfShape\): its output would have 1073741824 axes"),
    "unsqueeze to 1000 axes": (
        make_model([node("Unsqueeze", ["x"], ["y"], name="unsqueeze", axes=list(range(1000)))],
                   [("x", ["N", 4])], [("y", None)], opset=11, check=False),
        r"node 'unsqueeze' \(Unsqueeze\): its output would have 1002 axes \(1000 new axes\)"),
    "input of 100 axes": (
        make_model([node("Relu", ["x"], ["y"], name="relu")], [("x", [1] * 100)], [("y", None)],
                   check=False), r"graph input 'x' has 100 axes"),
}


@pytest.mark.parametrize("case", HOSTILE_RANKS)
def test_hostile_ranks_are_refused_before_shape_inference(case):
    model, match = HOSTILE_RANKS[case]
    tracemalloc.start()
    try:
        refused(model, UnsupportedModelError,
                r"^ONNX model: " + match + r"( \(.*\))?; zeroskip runs tensors of at most 64$")
        assert tracemalloc.get_traced_memory()[1] < 32 << 20
    finally:
        tracemalloc.stop()


def test_a_long_chain_of_shape_arithmetic_that_fits_imports():
    """The control: 4 doublings of a rank-2 Shape give 32 entries, a legal (if odd) rank."""
    imported = import_onnx(doubling_chain(4, "shape"))
    assert imported.graph.outputs[0].shape is not None


# --------------------------------------------------------------------------------------------------
# Graph inputs
# --------------------------------------------------------------------------------------------------

def test_negative_input_dimension():
    m = make_model([node("Relu", ["x"], ["y"], name="relu")], [("x", [-2, 3])], [("y", None)],
                   check=False)
    refused(m, ModelFormatError, r"^ONNX model: graph input 'x' has shape \[-2, 3\]; a dimension "
                                 r"cannot be negative$")


def test_enormous_input_refused_at_import():
    m = make_model([node("Relu", ["x"], ["y"], name="relu")], [("x", [1, 3, 2 ** 31, 2 ** 31])],
                   [("y", None)], check=False)
    refused(m, UnsupportedModelError, r"^ONNX model: graph input 'x' has shape "
                                      r"\(1, 3, 2147483648, 2147483648\): 13835058055282163712 "
                                      r"elements")


def test_input_of_2_31_elements_never_allocates():
    """Within MAX_ELEMENTS it imports; then opening or running it is an error, not 8 GiB."""
    m = make_model([node("Relu", ["x"], ["y"], name="relu")], [("x", [2 ** 31])], [("y", None)],
                   check=False)
    imported = import_onnx(m)
    tracemalloc.start()
    try:
        with pytest.raises(ZeroskipError):
            zeroskip.Session(imported, mode="reference").run({"x": np.zeros(3, np.float32)})
        assert tracemalloc.get_traced_memory()[1] < 32 << 20
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------------------------------
# External data
# --------------------------------------------------------------------------------------------------

W = np.arange(16, dtype=np.float32).reshape(4, 4)


def external_model(folder, location, offset=None, length=None):
    """A MatMul model saved in ``folder`` whose weight points to ``location`` (not written)."""
    m = make_model([node("MatMul", ["x", "w"], ["y"], name="mm")], [("x", ["N", 4])],
                   [("y", ["N", 4])], {"w": W})
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
    path = os.path.join(folder, "model.onnx")
    onnx.save(m, path)
    return path


@pytest.fixture
def layout(tmp_path):
    """tmp/secret.bin (outside), tmp/model/ (the model's directory) with data.bin = 8 bytes of
    padding then W."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(W.tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"\0" * 8 + W.tobytes())
    return folder, secret


@pytest.fixture
def opened(monkeypatch):
    """Absolute paths passed to ``open`` while the test runs."""
    paths = []
    real_open = builtins.open

    def recording(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)):
            paths.append(os.path.realpath(os.fsdecode(file)))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording)
    return paths


def test_external_data_inside_the_directory_is_read(layout):
    folder, _ = layout
    imported = import_onnx(external_model(folder, "data.bin", offset=8, length=64))
    np.testing.assert_array_equal(imported.graph.initializers["w"].array, W)
    (folder / "sub").mkdir()
    (folder / "sub" / "w.bin").write_bytes(W.tobytes())
    imported = import_onnx(external_model(folder, "sub/w.bin"))
    np.testing.assert_array_equal(imported.graph.initializers["w"].array, W)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked folder"])
def test_external_data_outside_the_directory_is_refused_unread(layout, opened, how):
    folder, secret = layout
    if how == "dotdot":
        location, rule = "../secret.bin", "is not a relative path inside the model's directory"
    elif how == "absolute":
        location, rule = str(secret), "is not a relative path inside the model's directory"
    else:
        target, link = (secret, "link.bin") if how == "symlink" else (secret.parent, "up")
        try:
            os.symlink(target, folder / link)
        except (OSError, NotImplementedError):
            pytest.skip("no symbolic links here")
        location = link if how == "symlink" else "up/secret.bin"
        rule = r"leads outside the model's directory \(through a symbolic link\)"
    path = external_model(folder, location)
    refused(path, ModelFormatError,
            rf"^ONNX file '.*model\.onnx': tensor 'w' keeps its data in the external file "
            rf"'{re.escape(location)}', which {rule}")
    assert os.path.realpath(secret) not in opened


@pytest.mark.parametrize("offset, length, match", [
    (1000, 64, r"offset 1000 is past the end of the file \(72 bytes\)"),
    (8, HUGE, r"offset 8 \+ length 1099511627776 = 1099511627784 is past the end of the file "
              r"\(72 bytes\)"),
    (8, 32, r"its dims \[4, 4\] need 16 × 4 = 64 bytes, but it gives 32 \(offset 8, file of 72 "
            r"bytes\)"),
    (None, None, r"its dims \[4, 4\] need 16 × 4 = 64 bytes, but it gives 72"),  # the whole file
    (-8, 64, r"its offset '-8' is not an integer >= 0"),
    ("12abc", 64, r"its offset '12abc' is not an integer >= 0"),
])
def test_external_data_offset_and_length_checked(layout, offset, length, match):
    folder, _ = layout
    refused(external_model(folder, "data.bin", offset, length), ModelFormatError,
            r"tensor 'w' keeps its data in the external file 'data.bin': " + match)


@pytest.mark.parametrize("location, match", [
    ("missing.bin", r"'missing.bin', which does not exist or is not a regular file"),
    (".", r"'\.', which does not exist or is not a regular file"),
    ("", r"tensor 'w' is marked as external data but names no file"),
])
def test_external_data_file_must_exist(layout, location, match):
    folder, _ = layout
    refused(external_model(folder, location), ModelFormatError, match)


def test_external_data_fifo_is_not_opened(layout):
    folder, _ = layout
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(folder / "pipe")  # opening it for reading would block forever
    refused(external_model(folder, "pipe"), ModelFormatError,
            r"'pipe', which does not exist or is not a regular file")


def test_external_attribute_tensor_in_a_subgraph_is_checked_too(layout):
    """External data is found wherever a tensor is: here a Constant inside an If branch."""
    folder, secret = layout
    value = numpy_helper.from_array(W, "k")
    value.ClearField("raw_data")
    value.data_location = TensorProto.EXTERNAL
    entry = value.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    branch = helper.make_graph([helper.make_node("Constant", [], ["k"], value=value)], "branch",
                               [], [helper.make_tensor_value_info("k", TensorProto.FLOAT, [4, 4])])
    nodes = [helper.make_node("If", ["c"], ["y"], name="if", then_branch=branch,
                              else_branch=branch)]
    m = make_model(nodes, [("c", [], np.bool_)], [("y", [4, 4])], check=False)
    path = os.path.join(folder, "if.onnx")
    onnx.save(m, path)
    refused(path, ModelFormatError, r"tensor 'k' keeps its data in the external file "
                                    r"'../secret.bin', which is not a relative path")


def test_attribute_without_a_type_is_a_format_error():
    """(Read as None, it would pass for an absent value: a MaxPool without kernel_shape.)"""
    m = make_model([node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2])],
                   [("x", ["N", 3, 4, 4])], [("y", None)], check=False)
    attr = m.graph.node[0].attribute[0]
    attr.type = AttributeProto.UNDEFINED
    refused(m, ModelFormatError, r"^ONNX model: node 'pool' \(MaxPool\): attribute 'kernel_shape' "
                                 r"has no type$")
