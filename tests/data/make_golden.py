"""Write tests/data/golden_cnn.zsk and golden_cnn_expected.npz (inputs and onnxruntime's outputs).

Run from the repository root only when the format version changes: the point of a golden file is that
it stays the same while the code around it changes.

    python tests/data/make_golden.py
"""

import os

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import zeroskip

HERE = os.path.dirname(os.path.abspath(__file__))


def build():
    rng = np.random.default_rng(2026)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2
    w2[rng.random(w2.shape) < 0.9] = 0  # pruned: stored as CSR
    fc = rng.standard_normal((5, 16)).astype(np.float32)
    inits = {"w1": w1, "b1": rng.standard_normal(8).astype(np.float32), "w2": w2,
             "fc.weight": fc, "fc.bias": rng.standard_normal(5).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "golden_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main():
    model = build()
    x = np.random.default_rng(7).standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    imported = zeroskip.import_onnx(model)
    imported.metadata["producer"] = "zeroskip (golden file)"
    zeroskip.save(imported, os.path.join(HERE, "golden_cnn.zsk"))
    np.savez(os.path.join(HERE, "golden_cnn_expected.npz"), x=x, y=y)


if __name__ == "__main__":
    main()
