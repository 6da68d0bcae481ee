"""Rebuild the demo's bundled model and test images: ``zeroskip/data/digits_mlp.zsk``, ``digits_test.npz``.

The data is scikit-learn's bundled copy of the UCI optical handwritten digits (8×8 images, pixel values
0–16, 1 797 samples; it ships inside scikit-learn, nothing is downloaded). A 64→256→128→10 ReLU MLP is
trained with scikit-learn, exported to ONNX by hand in the form torch gives a ``nn.Linear`` stack (Gemm
with transB=1, a dynamic batch dimension), then converted with ``zeroskip.import_onnx`` and saved.

    pip install '.[examples]'
    python examples/make_demo_model.py [--out zeroskip/data]

The model's input is the image scaled to [0, 1]: ``pixels / 16`` as float32, shape (batch, 64).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

import zeroskip

HIDDEN = (256, 128)
SEED = 0


def train(x_train, y_train) -> MLPClassifier:
    mlp = MLPClassifier(hidden_layer_sizes=HIDDEN, activation="relu", alpha=1e-4,
                        max_iter=300, random_state=SEED)
    mlp.fit(x_train, y_train)
    return mlp


def to_onnx(mlp: MLPClassifier) -> onnx.ModelProto:
    """The MLP as torch would export it: Gemm(x, W[out, in], b, transB=1) and Relu, opset 17."""
    nodes, inits = [], []
    x = "input"
    layers = list(zip(mlp.coefs_, mlp.intercepts_))
    for i, (w, b) in enumerate(layers):
        wname, bname, y = f"fc{i + 1}.weight", f"fc{i + 1}.bias", f"fc{i + 1}"
        inits += [numpy_helper.from_array(np.ascontiguousarray(w.T, dtype=np.float32), wname),
                  numpy_helper.from_array(b.astype(np.float32), bname)]
        nodes.append(helper.make_node("Gemm", [x, wname, bname], [y], name=f"/fc{i + 1}/Gemm",
                                      alpha=1.0, beta=1.0, transB=1))
        x = y
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"relu{i + 1}"], name=f"/relu{i + 1}/Relu"))
            x = f"relu{i + 1}"
    nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="zeroskip-examples")
    onnx.checker.check_model(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "zeroskip",
                                                      "data"))
    args = parser.parse_args()

    digits = load_digits()
    pixels, labels = digits.data.astype(np.uint8), digits.target.astype(np.int64)
    p_train, p_test, y_train, y_test = train_test_split(
        pixels, labels, test_size=0.25, random_state=SEED, stratify=labels)
    mlp = train(p_train / 16.0, y_train)
    print(f"scikit-learn test accuracy: {mlp.score(p_test / 16.0, y_test):.4f}")

    model = zeroskip.import_onnx(to_onnx(mlp))
    model.metadata["source"].update(name="digits_mlp", dataset="sklearn digits (UCI), 8x8, /16")
    os.makedirs(args.out, exist_ok=True)
    zeroskip.save(model, os.path.join(args.out, "digits_mlp.zsk"))
    np.savez_compressed(os.path.join(args.out, "digits_test.npz"), pixels=p_test.reshape(-1, 8, 8),
                        labels=y_test)

    logits = zeroskip.Session(model).run({"input": (p_test / 16.0).astype(np.float32)})["logits"]
    print(f"zeroskip reference accuracy: {(logits.argmax(1) == y_test).mean():.4f}")


if __name__ == "__main__":
    main()
