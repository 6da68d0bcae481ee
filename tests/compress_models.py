"""Small float models in zeroskip's IR for the compression tests (no ONNX needed).

``cnn()``: conv+BN+ReLU, a strided conv, a depthwise conv, a 1x1 conv, max pooling, Flatten and a
Gemm; every channel chain can be cut. ``residual()``: two convs whose outputs meet in an Add, which
no channel pruning may shrink. ``mlp()``: Gemm (transB=1), MatMul plus a bias Add, Gemm (transB=0).
"""

from __future__ import annotations

import numpy as np

from zeroskip import Dense, Graph, Model, Node, ValueInfo
from zeroskip.ops import normalize_attrs
from zeroskip.shapes import infer_shapes


def node(name, op, inputs, outputs=None, **attrs):
    return Node(name, op, list(inputs), outputs or [name], normalize_attrs(op, attrs))


def _w(rng, *shape, scale=None):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.standard_normal(shape) * (scale or 1.0 / np.sqrt(fan_in))).astype(np.float32)


def _model(nodes, inits, x_shape, y="y"):
    graph = Graph(nodes, [ValueInfo("x", (None, *x_shape), "float32")],
                  [ValueInfo(y, None, "float32")], {k: Dense(v) for k, v in inits.items()})
    graph.check()
    graph.outputs = [infer_shapes(graph)[y]]
    return Model(graph, {"producer": "tests"})


def cnn(seed=0) -> Model:
    """x (N,3,8,8) -> c1 3x3 (8) -> BN -> ReLU -> c2 3x3/2 (16) -> ReLU -> dw 3x3 (16, depthwise)
    -> ReLU -> pw 1x1 (12) -> ReLU -> MaxPool 2 -> Flatten -> fc (10, 12·2·2)."""
    rng = np.random.default_rng(seed)
    inits = {"c1.w": _w(rng, 8, 3, 3, 3), "c1.b": _w(rng, 8, scale=0.1),
             "bn.g": (rng.random(8) + 0.5).astype(np.float32), "bn.b": _w(rng, 8, scale=0.1),
             "bn.m": _w(rng, 8, scale=0.1), "bn.v": (rng.random(8) + 0.5).astype(np.float32),
             "c2.w": _w(rng, 16, 8, 3, 3), "c2.b": _w(rng, 16, scale=0.1),
             "dw.w": _w(rng, 16, 1, 3, 3), "dw.b": _w(rng, 16, scale=0.1),
             "pw.w": _w(rng, 12, 16, 1, 1), "pw.b": _w(rng, 12, scale=0.1),
             "fc.w": _w(rng, 10, 48), "fc.b": _w(rng, 10, scale=0.1)}
    nodes = [node("c1", "Conv", ["x", "c1.w", "c1.b"], pads=[1, 1, 1, 1]),
             node("bn", "BatchNormalization", ["c1", "bn.g", "bn.b", "bn.m", "bn.v"]),
             node("r1", "Relu", ["bn"]),
             node("c2", "Conv", ["r1", "c2.w", "c2.b"], pads=[1, 1, 1, 1], strides=[2, 2]),
             node("r2", "Relu", ["c2"]),
             node("dw", "Conv", ["r2", "dw.w", "dw.b"], pads=[1, 1, 1, 1], group=16),
             node("r3", "Relu", ["dw"]),
             node("pw", "Conv", ["r3", "pw.w", "pw.b"]),
             node("r4", "Relu", ["pw"]),
             node("pool", "MaxPool", ["r4"], kernel_shape=[2, 2], strides=[2, 2]),
             node("flat", "Flatten", ["pool"]),
             node("fc", "Gemm", ["flat", "fc.w", "fc.b"], ["y"], transB=1)]
    return _model(nodes, inits, (3, 8, 8))


def residual(seed=1) -> Model:
    """x (N,4,6,6) -> a 3x3 (8) -> ReLU -> b 3x3 (8); Add(a_relu, b) -> ReLU -> GAP -> Flatten -> fc."""
    rng = np.random.default_rng(seed)
    inits = {"a.w": _w(rng, 8, 4, 3, 3), "a.b": _w(rng, 8, scale=0.1),
             "b.w": _w(rng, 8, 8, 3, 3), "b.b": _w(rng, 8, scale=0.1),
             "fc.w": _w(rng, 5, 8), "fc.b": _w(rng, 5, scale=0.1)}
    nodes = [node("a", "Conv", ["x", "a.w", "a.b"], pads=[1, 1, 1, 1]),
             node("ra", "Relu", ["a"]),
             node("b", "Conv", ["ra", "b.w", "b.b"], pads=[1, 1, 1, 1]),
             node("add", "Add", ["ra", "b"]),
             node("radd", "Relu", ["add"]),
             node("gap", "GlobalAveragePool", ["radd"]),
             node("flat", "Flatten", ["gap"]),
             node("fc", "Gemm", ["flat", "fc.w", "fc.b"], ["y"], transB=1)]
    return _model(nodes, inits, (4, 6, 6))


def mlp(seed=2) -> Model:
    """x (N,20) -> g1 (32, transB=1) -> ReLU -> MatMul (32,16) + bias -> ReLU -> g3 (16,10)."""
    rng = np.random.default_rng(seed)
    inits = {"g1.w": _w(rng, 32, 20), "g1.b": _w(rng, 32, scale=0.1),
             "m2.w": _w(rng, 16, 32).T.copy(), "m2.b": _w(rng, 16, scale=0.1),
             "g3.w": _w(rng, 10, 16).T.copy(), "g3.b": _w(rng, 10, scale=0.1)}
    nodes = [node("g1", "Gemm", ["x", "g1.w", "g1.b"], transB=1),
             node("r1", "Relu", ["g1"]),
             node("m2", "MatMul", ["r1", "m2.w"]),
             node("m2add", "Add", ["m2", "m2.b"]),
             node("r2", "Relu", ["m2add"]),
             node("g3", "Gemm", ["r2", "g3.w", "g3.b"], ["y"])]
    return _model(nodes, inits, (20,))


def reduce_mean(keepdims=1, seed=4) -> Model:
    """x (N,4,6,6) -> conv 3x3 (8) -> ReLU -> ReduceMean over H, W (torch's adaptive_avg_pool2d
    export) [-> Flatten] -> fc (5, 8)."""
    rng = np.random.default_rng(seed)
    inits = {"c.w": _w(rng, 8, 4, 3, 3), "c.b": _w(rng, 8, scale=0.1), "fc.w": _w(rng, 5, 8)}
    nodes = [node("c", "Conv", ["x", "c.w", "c.b"], pads=[1, 1, 1, 1]),
             node("r", "Relu", ["c"]),
             node("mean", "ReduceMean", ["r"], axes=[-2, -1], keepdims=keepdims)]
    if keepdims:
        nodes.append(node("flat", "Flatten", ["mean"]))
    nodes.append(node("fc", "Gemm", ["flat" if keepdims else "mean", "fc.w"], ["y"], transB=1))
    return _model(nodes, inits, (4, 6, 6))


MODELS = {"cnn": cnn, "residual": residual, "mlp": mlp}


def feeds(model: Model, count=16, seed=3) -> dict:
    shape = model.graph.inputs[0].shape[1:]
    return {"x": np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)}
