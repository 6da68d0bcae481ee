"""Rebuild the demo's bundled models and test images in ``zeroskip/data/``.

The data is scikit-learn's bundled copy of the UCI optical handwritten digits (8×8 images, pixel values
0–16, 1 797 samples; it ships inside scikit-learn, nothing is downloaded). A 64→256→128→10 ReLU MLP is
trained with scikit-learn, exported to ONNX by hand in the form torch gives a ``nn.Linear`` stack (Gemm
with transB=1, a dynamic batch dimension), then converted with ``zeroskip.import_onnx`` and saved. Two variants go beside it:

- ``digits_mlp_pruned.zsk``: the hidden layers magnitude-pruned to 10 % density, then fine-tuned a few
  epochs with the pruned weights held at zero (the output layer stays dense);
- ``digits_mlp_int8.zsk``: the pruned model quantized by onnxruntime's quantizer (QDQ, uint8
  activations calibrated on training images, per-channel symmetric int8 weights), then imported.

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
DENSITY = 0.10
"""Fraction of hidden-layer weights the pruned variant keeps."""
FINETUNE_EPOCHS = 30


def train(x_train, y_train) -> MLPClassifier:
    mlp = MLPClassifier(hidden_layer_sizes=HIDDEN, activation="relu", alpha=1e-4,
                        max_iter=300, random_state=SEED)
    mlp.fit(x_train, y_train)
    return mlp


def prune(mlp: MLPClassifier, x_train, y_train) -> MLPClassifier:
    """Keep the largest DENSITY of each hidden layer's weights, then fine-tune with the rest at zero."""
    masks = []
    for w in mlp.coefs_[:-1]:
        threshold = np.quantile(np.abs(w), 1 - DENSITY)
        masks.append(np.abs(w) >= threshold)
    masks.append(np.ones_like(mlp.coefs_[-1], dtype=bool))
    classes = np.unique(y_train)
    for _ in range(FINETUNE_EPOCHS):
        for w, mask in zip(mlp.coefs_, masks):
            w[~mask] = 0.0
        mlp.partial_fit(x_train, y_train, classes=classes)
    for w, mask in zip(mlp.coefs_, masks):
        w[~mask] = 0.0
    return mlp


def quantize_int8(model: onnx.ModelProto, calibration: np.ndarray) -> onnx.ModelProto:
    """``model`` quantized by onnxruntime's static quantizer (QDQ, u8 activations, s8 weights)."""
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{"input": calibration[i:i + 64]}
                                  for i in range(0, len(calibration), 64)])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(model, src)
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True)
        return onnx.load(dst)


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

    x_test = (p_test / 16.0).astype(np.float32)
    logits = zeroskip.Session(model).run({"input": x_test})["logits"]
    print(f"zeroskip reference accuracy: {(logits.argmax(1) == y_test).mean():.4f}")

    pruned = prune(mlp, p_train / 16.0, y_train)
    pruned_onnx = to_onnx(pruned)
    variants = {
        "digits_mlp_pruned": zeroskip.import_onnx(pruned_onnx),
        "digits_mlp_int8": zeroskip.import_onnx(
            quantize_int8(pruned_onnx, (p_train / 16.0).astype(np.float32))),
    }
    for name, variant in variants.items():
        variant.metadata["source"].update(name=name, dataset="sklearn digits (UCI), 8x8, /16",
                                          pruning=f"magnitude, {DENSITY:.0%} of hidden weights "
                                                  f"kept, {FINETUNE_EPOCHS} epochs fine-tuning")
        zeroskip.save(variant, os.path.join(args.out, f"{name}.zsk"))
        logits = zeroskip.Session(variant).run({"input": x_test})["logits"]
        print(f"{name} reference accuracy: {(logits.argmax(1) == y_test).mean():.4f}")


if __name__ == "__main__":
    main()
