"""Helpers to build small ONNX graphs with ``onnx.helper`` and compare zeroskip with onnxruntime.

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", ["N", 4])], [("y", ["N", 4])])
    assert_matches_ort(model, {"x": np.ones((3, 4), np.float32)})

Shapes are lists whose entries are ints (static), strings (a named dynamic dim, ``dim_param``) or None
(a dimension with neither). No torch: graphs are written the way torch exports them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RTOL = 1e-4
ATOL = 1e-5


def value_info(name, shape, dtype=np.float32) -> onnx.ValueInfoProto:
    """A graph input/output declaration; ``shape`` None means unknown rank."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    if shape is None:
        return helper.make_tensor_value_info(name, elem, None)
    vi = helper.make_tensor_value_info(name, elem, [d if d is not None else "?" for d in shape])
    for dim, want in zip(vi.type.tensor_type.shape.dim, shape):
        if want is None:  # neither dim_value nor dim_param
            dim.Clear()
    return vi


def _as_vi(entry):
    if isinstance(entry, onnx.ValueInfoProto):
        return entry
    return value_info(*entry)


def make_model(nodes, inputs, outputs, initializers=None, opset=17, *, ir_version=None,
               initializers_as_inputs=False, name="test_graph", extra_opsets=(),
               producer=("onnx_builders", "1.0"), check=True) -> onnx.ModelProto:
    """An ONNX model of ``nodes``.

    inputs/outputs — ValueInfoProtos or (name, shape[, dtype]) tuples
    initializers — {name: array} (dtype kept) or a list of TensorProtos
    ir_version — default: the lowest the opset allows, but at least 4 unless
                 ``initializers_as_inputs`` (then 3 for opsets 7–8, as old zoo files are)
    initializers_as_inputs — also list every initializer as a graph input (old model-zoo style)
    """
    if isinstance(initializers, dict):
        tensors = [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers.items()]
    else:
        tensors = list(initializers or [])
    graph_inputs = [_as_vi(e) for e in inputs]
    if initializers_as_inputs:
        graph_inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                         for t in tensors]
    graph = helper.make_graph(list(nodes), name, graph_inputs, [_as_vi(e) for e in outputs],
                              initializer=tensors)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets, producer_name=producer[0],
                              producer_version=producer[1])
    if ir_version is None:
        ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
        if not initializers_as_inputs:
            ir_version = max(ir_version, 4)
    model.ir_version = ir_version
    if check:
        onnx.checker.check_model(model)
    return model


def run_ort(model, feeds) -> dict:
    """Outputs of onnxruntime (CPU, graph optimizations off) as {name: array}."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def run_zeroskip(model, feeds, mode="reference") -> dict:
    import zeroskip

    return zeroskip.Session(zeroskip.import_onnx(model), mode=mode).run(feeds)


def assert_close(expected: dict, got: dict, rtol=RTOL, atol=ATOL, context=""):
    """Same output names, then per output: shape, dtype, values within rtol/atol."""
    assert list(got) == list(expected), f"{context}: outputs {list(got)} != {list(expected)}"
    for name, want in expected.items():
        have = got[name]
        where = f"{context} output {name!r}"
        assert have.shape == want.shape, f"{where}: shape {have.shape} != expected {want.shape}"
        assert have.dtype == want.dtype, f"{where}: dtype {have.dtype} != expected {want.dtype}"
        if want.dtype.kind in "iub":
            np.testing.assert_array_equal(have, want, err_msg=where)
        else:
            np.testing.assert_allclose(have, want, rtol=rtol, atol=atol, err_msg=where)


def assert_matches_ort(model, feeds, rtol=RTOL, atol=ATOL, mode="reference", context=""):
    """Run ``model`` on ``feeds`` in onnxruntime and in zeroskip, and compare every output."""
    expected = run_ort(model, feeds)
    got = run_zeroskip(model, feeds, mode=mode)
    assert_close(expected, got, rtol, atol, context)
    return got


def randn(shape, seed=0, scale=1.0, dtype=np.float32) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def pruned(shape, density=0.1, seed=0, scale=0.5) -> np.ndarray:
    """Random float32 weights with only ``density`` of them nonzero (magnitude pruning style)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(shape) * scale).astype(np.float32)
    keep = rng.random(shape) < density
    return np.where(keep, w, np.float32(0)).astype(np.float32)


def node(op, inputs, outputs, name=None, **attrs) -> onnx.NodeProto:
    """``helper.make_node`` with a default name of ``op`` lower-cased and the first output."""
    return helper.make_node(op, inputs, outputs, name=name if name is not None else
                            f"{op.lower()}_{outputs[0]}", **attrs)


def const_node(name, array, node_name=None) -> onnx.NodeProto:
    """A ``Constant`` node producing ``array`` (dtype kept)."""
    return helper.make_node("Constant", [], [name], name=node_name or f"const_{name}",
                            value=numpy_helper.from_array(np.asarray(array), name))


__all__ = ["ATOL", "RTOL", "TensorProto", "assert_close", "assert_matches_ort", "const_node",
           "helper", "make_model", "node", "numpy_helper", "pruned", "randn", "run_ort",
           "run_zeroskip", "value_info"]
