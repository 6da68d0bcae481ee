"""ResNet-18-shaped ONNX models with random weights, for whole-model benchmarks such as ``zeroskip bench``.

Four variants of one network, built with ``onnx.helper`` (no torch, nothing downloaded):

- ``resnet18.onnx``: float32, each Conv followed by its own BatchNormalization (both engines fold it at load);
- ``resnet18_pruned90.onnx``: every conv but the stem magnitude-pruned to 10 % density, per tensor;
- ``resnet18_int8.onnx`` and ``resnet18_pruned90_int8.onnx``: those two quantized by onnxruntime's
  ``quantize_static`` (QDQ, uint8 activations, per-channel int8 weights, BatchNormalization folded).

The weights are random (He-initialized, BatchNormalization statistics near identity), so the outputs
mean nothing and accuracy cannot be measured; speed, and how closely zeroskip agrees with onnxruntime on
the same file, can. ``zeroskip bench`` times every mode against onnxruntime in one run, as ratios:

    python bench/make_models.py /tmp/zsmodels [--seed 0]
    zeroskip bench /tmp/zsmodels/resnet18_pruned90_int8.onnx --threads 1 --rounds 10

Needs onnx and onnxruntime (the ``test`` extra). Importable too: ``from make_models import resnet18``.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
STAGES = (64, 128, 256, 512)
"""Channels of the four stages of two BasicBlocks each."""
CLASSES = 1000


class _Graph:
    """Nodes and initializers of a graph under construction, with one random generator for weights."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []

    def add(self, op, name, inputs, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def weight(self, name, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def conv_bn(self, x, name, c_in, c_out, kernel, stride=1, relu=True) -> str:
        """Conv (no bias, He-initialized), BatchNormalization, and Relu if ``relu``."""
        std = np.sqrt(2.0 / (c_in * kernel * kernel))
        w = self.weight(f"{name}.weight", self.rng.normal(0, std, (c_out, c_in, kernel, kernel)))
        y = self.add("Conv", name, [x, w], kernel_shape=[kernel, kernel], strides=[stride, stride],
                     pads=[kernel // 2] * 4)
        gamma, beta, mean, log_var = self.rng.normal(0, [[0.1], [0.05], [0.05], [0.1]], (4, c_out))
        stats = [self.weight(f"{name}.bn.{key}", value) for key, value in
                 zip(("scale", "bias", "mean", "var"), (1 + gamma, beta, mean, np.exp(log_var)))]
        y = self.add("BatchNormalization", f"{name}.bn", [y, *stats], epsilon=1e-5)
        return self.add("Relu", f"{name}.relu", [y]) if relu else y


def resnet18(seed: int = 0) -> onnx.ModelProto:
    """A float32 ResNet-18 with random weights: input ``input`` (N, 3, 224, 224), output ``logits``
    (N, 1000), N dynamic; torchvision's layers, each BatchNormalization a node of its own.

    Parameters
    ----------
    seed : int
        Seed of the weights and BatchNormalization statistics.

    Returns
    -------
    onnx.ModelProto
        Opset 17, checked by ``onnx.checker``. Nodes are named after torchvision's modules
        (``layer2.0.conv1``, ``layer2.0.downsample``, ``fc``), the first conv ``stem``.
    """
    g = _Graph(seed)
    x = g.conv_bn("input", "stem", 3, STAGES[0], 7, stride=2)
    x = g.add("MaxPool", "stem.pool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    c_in = STAGES[0]
    for stage, c_out in enumerate(STAGES, start=1):
        for block in range(2):
            name, stride = f"layer{stage}.{block}", 2 if stage > 1 and block == 0 else 1
            y = g.conv_bn(x, f"{name}.conv1", c_in, c_out, 3, stride)
            y = g.conv_bn(y, f"{name}.conv2", c_out, c_out, 3, relu=False)
            if stride != 1 or c_in != c_out:
                x = g.conv_bn(x, f"{name}.downsample", c_in, c_out, 1, stride, relu=False)
            x = g.add("Relu", f"{name}.relu", [g.add("Add", f"{name}.add", [y, x])])
            c_in = c_out
    x = g.add("Flatten", "flatten", [g.add("GlobalAveragePool", "avgpool", [x])], axis=1)
    w = g.weight("fc.weight", g.rng.normal(0, np.sqrt(1.0 / c_in), (CLASSES, c_in)))
    b = g.weight("fc.bias", g.rng.normal(0, 0.01, CLASSES))
    g.nodes.append(helper.make_node("Gemm", [x, w, b], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        g.nodes, "resnet18", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="zeroskip-bench")
    onnx.checker.check_model(model)
    return model


def prune(model: onnx.ModelProto, density: float = 0.1, skip=("stem",)) -> onnx.ModelProto:
    """A copy of ``model`` with each Conv's weight magnitude-pruned to ``density``, per tensor.

    Parameters
    ----------
    model : onnx.ModelProto
        A float model whose Conv weights are initializers.
    density : float
        Fraction of each weight tensor kept: its ``round(density · size)`` largest magnitudes.
    skip : tuple of str
        Convs whose node name starts with one of these stay dense (the stem, by default: 3 input
        channels leave little to skip). Gemm and BatchNormalization are never touched.

    Returns
    -------
    onnx.ModelProto
        The pruned copy (``model`` is left as it was).
    """
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    targets = {node.input[1] for node in pruned.graph.node
               if node.op_type == "Conv" and not node.name.startswith(tuple(skip))}
    for i, tensor in enumerate(pruned.graph.initializer):
        if tensor.name not in targets:
            continue
        w = numpy_helper.to_array(tensor).copy()
        drop = w.size - int(round(density * w.size))
        w.reshape(-1)[np.argsort(np.abs(w), axis=None, kind="stable")[:drop]] = 0
        pruned.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, tensor.name))
    return pruned


def quantize(model: onnx.ModelProto, calibration_batches: int = 8, per_channel: bool = True,
             seed: int = 0) -> onnx.ModelProto:
    """``model`` quantized by onnxruntime's ``quantize_static``: QDQ, uint8 activations, int8 weights.

    onnxruntime's ``quant_pre_process`` runs first: its optimizer folds each BatchNormalization into
    the Conv before it (the quantizer alone would give them QDQ pairs of their own). If it fails, the
    model is quantized as it is.

    Parameters
    ----------
    model : onnx.ModelProto
        A float model with one input, ``input`` of shape (N, 3, 224, 224).
    calibration_batches : int
        Number of calibration batches, each one random normal image (batch 1, seeded by ``seed``).
    per_channel : bool
        One weight scale per output channel (True) or per tensor.

    Returns
    -------
    onnx.ModelProto
        The quantized model (written and read back in a temporary directory).
    """
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((calibration_batches, 1, 3, 224, 224)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._feeds = iter({"input": image} for image in images)

        def get_next(self):
            return next(self._feeds, None)

    level = logging.root.level
    logging.root.setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = (os.path.join(tmp, f) for f in ("float.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(model, src)
        try:
            quant_pre_process(src, pre, skip_symbolic_shape=True)  # symbolic shapes need sympy
            src = pre
        except Exception as err:  # noqa: BLE001 -- optional step: quantize the model unprocessed
            print(f"quant_pre_process failed, quantizing without it: {err}")
        try:  # the quantizer's warnings go to the root logger, the same for every model
            quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        finally:
            logging.root.setLevel(level)
        return onnx.load(dst)


def main(argv=None) -> None:
    """Write the four variants into OUTDIR and print their file sizes and conv weight densities."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", help="directory for the .onnx files (created if missing)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights and calibration images (default: 0)")
    args = parser.parse_args(argv)
    os.makedirs(args.outdir, exist_ok=True)
    dense = resnet18(args.seed)
    pruned = prune(dense, 0.1)
    models = {"resnet18": dense, "resnet18_pruned90": pruned,
              "resnet18_int8": quantize(dense, seed=args.seed),
              "resnet18_pruned90_int8": quantize(pruned, seed=args.seed)}
    for name, model in models.items():
        path = os.path.join(args.outdir, f"{name}.onnx")
        onnx.save(model, path)
        weights = [w for w in map(numpy_helper.to_array, model.graph.initializer) if w.ndim == 4]
        nonzero = sum(np.count_nonzero(w) for w in weights) / sum(w.size for w in weights)
        print(f"{path}: {os.path.getsize(path) / 1e6:6.1f} MB, {len(model.graph.node)} nodes, "
              f"conv weights {nonzero:.1%} nonzero")


if __name__ == "__main__":
    main()
