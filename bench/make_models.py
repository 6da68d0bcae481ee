"""ResNet-18- and MobileNetV2-shaped ONNX models with random weights, for whole-model benchmarks such as
``zeroskip bench``.

Four variants of each network, built with ``onnx.helper`` (no torch, nothing downloaded):

- ``resnet18.onnx``, ``mobilenetv2.onnx``: float32, each Conv followed by its own BatchNormalization
  (both engines fold it at load);
- ``resnet18_pruned90.onnx``, ``mobilenetv2_pruned90.onnx``: magnitude-pruned to 10 % density, per
  tensor: every ResNet-18 conv but the stem; the MobileNetV2 1x1 convs only (stem and depthwise stay dense);
- ``*_int8.onnx`` and ``*_pruned90_int8.onnx``: those quantized by onnxruntime's ``quantize_static``
  (QDQ, uint8 activations, per-channel int8 weights, BatchNormalization folded); with
  ``--activations int8`` (onnxruntime's own default), ``*_int8_s8.onnx`` and
  ``*_pruned90_int8_s8.onnx`` instead.

The weights are random (He-initialized, BatchNormalization statistics near identity), so the outputs
mean nothing and accuracy cannot be measured; speed, and how closely zeroskip agrees with onnxruntime on
the same file, can. ``zeroskip bench`` times every mode against onnxruntime in one run, as ratios:

    python bench/make_models.py /tmp/zsmodels [--seed 0] [--activations int8]
    zeroskip bench /tmp/zsmodels/resnet18_pruned90_int8.onnx --threads 1 --rounds 10

Needs onnx and onnxruntime (the ``test`` extra). Importable too: ``from make_models import resnet18``
(or ``mobilenetv2``).
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
INVERTED_RESIDUALS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                      (6, 160, 3, 2), (6, 320, 1, 1))
"""MobileNetV2's inverted-residual stages: expansion t, output channels c, repeats n, first stride s."""
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

    def conv_bn(self, x, name, c_in, c_out, kernel, stride=1, act="relu", group=1) -> str:
        """Conv (no bias, He-initialized, ``group`` groups), BatchNormalization, then the activation
        ``act``: "relu", "relu6" (Clip to [0, 6]) or None."""
        std = np.sqrt(2.0 / (c_in // group * kernel * kernel))
        w = self.weight(f"{name}.weight", self.rng.normal(0, std, (c_out, c_in // group, kernel, kernel)))
        y = self.add("Conv", name, [x, w], kernel_shape=[kernel, kernel], strides=[stride, stride],
                     pads=[kernel // 2] * 4, **({"group": group} if group > 1 else {}))
        gamma, beta, mean, log_var = self.rng.normal(0, [[0.1], [0.05], [0.05], [0.1]], (4, c_out))
        stats = [self.weight(f"{name}.bn.{key}", value) for key, value in
                 zip(("scale", "bias", "mean", "var"), (1 + gamma, beta, mean, np.exp(log_var)))]
        y = self.add("BatchNormalization", f"{name}.bn", [y, *stats], epsilon=1e-5)
        if act == "relu6":
            if not any(init.name == "relu6.max" for init in self.inits):  # Clip's bounds, shared
                self.weight("relu6.min", 0.0)
                self.weight("relu6.max", 6.0)
            return self.add("Clip", f"{name}.relu6", [y, "relu6.min", "relu6.max"])
        return self.add("Relu", f"{name}.relu", [y]) if act == "relu" else y

    def classifier(self, x, c_in, name) -> onnx.ModelProto:
        """GlobalAveragePool, Flatten and Gemm ``fc`` to ``logits`` after ``x``; the checked model."""
        x = self.add("Flatten", "flatten", [self.add("GlobalAveragePool", "avgpool", [x])], axis=1)
        w = self.weight("fc.weight", self.rng.normal(0, np.sqrt(1.0 / c_in), (CLASSES, c_in)))
        b = self.weight("fc.bias", self.rng.normal(0, 0.01, CLASSES))
        self.nodes.append(helper.make_node("Gemm", [x, w, b], ["logits"], name="fc", transB=1))
        graph = helper.make_graph(
            self.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="zeroskip-bench")
        onnx.checker.check_model(model)
        return model


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
            y = g.conv_bn(y, f"{name}.conv2", c_out, c_out, 3, act=None)
            if stride != 1 or c_in != c_out:
                x = g.conv_bn(x, f"{name}.downsample", c_in, c_out, 1, stride, act=None)
            x = g.add("Relu", f"{name}.relu", [g.add("Add", f"{name}.add", [y, x])])
            c_in = c_out
    return g.classifier(x, c_in, "resnet18")


def mobilenetv2(seed: int = 0) -> onnx.ModelProto:
    """A float32 MobileNetV2 (width 1.0) with random weights: input ``input`` (N, 3, 224, 224), output
    ``logits`` (N, 1000), N dynamic; ReLU6 as Clip(0, 6), each BatchNormalization a node of its own.
    ``seed`` and the checks as for ``resnet18``. The 3x3/s2 conv is ``stem``; inverted-residual
    block i (1 to 17) has convs ``block{i}.expand`` (absent when t = 1), ``block{i}.depthwise`` and
    ``block{i}.project``; then the 1x1 conv ``head`` to 1280 channels and the Gemm ``fc``.
    """
    g = _Graph(seed)
    x = g.conv_bn("input", "stem", 3, 32, 3, stride=2, act="relu6")
    c_in, block = 32, 0
    for t, c_out, repeats, first_stride in INVERTED_RESIDUALS:
        for r in range(repeats):
            block, stride, hidden = block + 1, first_stride if r == 0 else 1, c_in * t
            name = f"block{block}"
            y = g.conv_bn(x, f"{name}.expand", c_in, hidden, 1, act="relu6") if t != 1 else x
            y = g.conv_bn(y, f"{name}.depthwise", hidden, hidden, 3, stride, act="relu6", group=hidden)
            y = g.conv_bn(y, f"{name}.project", hidden, c_out, 1, act=None)
            x = g.add("Add", f"{name}.add", [x, y]) if stride == 1 and c_in == c_out else y
            c_in = c_out
    x = g.conv_bn(x, "head", c_in, 1280, 1, act="relu6")
    return g.classifier(x, 1280, "mobilenetv2")


def prune(model: onnx.ModelProto, density: float = 0.1, skip=("stem",),
          only_pointwise: bool = False) -> onnx.ModelProto:
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
    only_pointwise : bool
        Prune only the 1x1 convs of one group (MobileNetV2's expand and project convs); every
        other conv (a depthwise one, say) stays dense too.

    Returns
    -------
    onnx.ModelProto
        The pruned copy (``model`` is left as it was).
    """
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    def attr(node, key, default):
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == key), default)

    targets = {node.input[1] for node in pruned.graph.node
               if node.op_type == "Conv" and not node.name.startswith(tuple(skip))
               and not (only_pointwise and (list(attr(node, "kernel_shape", [])) != [1, 1]
                                            or attr(node, "group", 1) != 1))}
    for i, tensor in enumerate(pruned.graph.initializer):
        if tensor.name not in targets:
            continue
        w = numpy_helper.to_array(tensor).copy()
        drop = w.size - int(round(density * w.size))
        w.reshape(-1)[np.argsort(np.abs(w), axis=None, kind="stable")[:drop]] = 0
        pruned.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, tensor.name))
    return pruned


def quantize(model: onnx.ModelProto, calibration_batches: int = 8, per_channel: bool = True,
             seed: int = 0, activations: str = "uint8") -> onnx.ModelProto:
    """``model`` quantized by onnxruntime's ``quantize_static``: QDQ, int8 weights, and uint8
    activations (or int8: onnxruntime's own default).

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
    activations : str
        "uint8" or "int8", the activations' type.

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
                            activation_type=QuantType.QUInt8 if activations == "uint8"
                            else QuantType.QInt8, weight_type=QuantType.QInt8)
        finally:
            logging.root.setLevel(level)
        return onnx.load(dst)


def main(argv=None) -> None:
    """Write the four variants of each network into OUTDIR and print their file sizes, parameter
    counts (initializer elements) and conv weight densities."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", help="directory for the .onnx files (created if missing)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights and calibration images (default: 0)")
    parser.add_argument("--activations", choices=("uint8", "int8"), default="uint8",
                        help="the int8 models' activation type (default: uint8; int8 is "
                             "onnxruntime's own default, and its files get a _s8 suffix)")
    args = parser.parse_args(argv)
    suffix = "" if args.activations == "uint8" else "_s8"
    os.makedirs(args.outdir, exist_ok=True)
    models = {}
    for net, build, only_pointwise in (("resnet18", resnet18, False), ("mobilenetv2", mobilenetv2, True)):
        dense = build(args.seed)
        pruned = prune(dense, 0.1, only_pointwise=only_pointwise)
        models.update({net: dense, f"{net}_pruned90": pruned,
                       f"{net}_int8{suffix}": quantize(dense, seed=args.seed,
                                                       activations=args.activations),
                       f"{net}_pruned90_int8{suffix}": quantize(pruned, seed=args.seed,
                                                                activations=args.activations)})
    for name, model in models.items():
        path = os.path.join(args.outdir, f"{name}.onnx")
        onnx.save(model, path)
        weights = [w for w in map(numpy_helper.to_array, model.graph.initializer) if w.ndim == 4]
        nonzero = sum(np.count_nonzero(w) for w in weights) / sum(w.size for w in weights)
        params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        print(f"{path}: {os.path.getsize(path) / 1e6:6.1f} MB, {params / 1e6:5.2f} M parameters, "
              f"{len(model.graph.node)} nodes, conv weights {nonzero:.1%} nonzero")


if __name__ == "__main__":
    main()
