"""ResNet-18-, ResNet-50- and MobileNetV2-shaped CNNs and an MLP as ONNX models with random weights,
for whole-model benchmarks such as ``zeroskip bench``.

Built with ``onnx.helper`` (no torch, nothing downloaded). For each CNN, onnxruntime's variants:

- ``resnet18.onnx``, ``mobilenetv2.onnx``: float32, each Conv followed by its own BatchNormalization
  (both engines fold it at load);
- ``resnet18_pruned90.onnx``, ``mobilenetv2_pruned90.onnx``: magnitude-pruned to 10 % density, per
  tensor: every ResNet-18 conv but the stem; the MobileNetV2 1x1 convs only (stem and depthwise stay dense);
- ``resnet18_block90.onnx``, ``mobilenetv2_block90.onnx``: the same convs pruned to 10 % density in
  blocks of 4 input channels at one tap (``prune(..., block=4)``: what ``zeroskip.prune``'s
  ``block:1x4`` does, and the groups the quad conv skips whole);
- ``*_int8.onnx``, ``*_pruned90_int8.onnx`` and ``*_block90_int8.onnx``: those quantized by
  onnxruntime's ``quantize_static``
  (QDQ, uint8 activations, per-channel int8 weights, BatchNormalization folded); with
  ``--activations int8`` (onnxruntime's own default), ``*_int8_s8.onnx`` and
  ``*_pruned90_int8_s8.onnx`` instead.

The weights are random (He-initialized, BatchNormalization statistics near identity), so the outputs
mean nothing and accuracy cannot be measured; speed, and how closely zeroskip agrees with onnxruntime on
the same file, can. ``zeroskip bench`` times every mode against onnxruntime in one run, as ratios:

And, with ``--zeroskip``, zeroskip's own pipeline on every network (the MLP too), so the whole
chain is measured at real scale: ``zeroskip.prune`` (global magnitude) at 0, 50, 80, 90 and 95 %
sparsity, then ``zeroskip.quantize`` (min-max on random images), as ``{net}_zs{SS}.zsk`` (float,
pruned to SS %) and ``{net}_zs{SS}_int8.zsk``.

    python bench/models.py /tmp/zsmodels [--seed 0] [--activations int8] [--nets resnet18,resnet50]
    python bench/models.py /tmp/zsmodels --zeroskip --nets resnet50,mlp
    zeroskip bench /tmp/zsmodels/resnet50_zs90_int8.zsk --onnx /tmp/zsmodels/resnet50.onnx

Needs onnx and onnxruntime (the ``test`` extra). Importable too: ``from models import resnet18``
(or ``resnet50``, ``mobilenetv2``, ``mlp``); every builder takes ``image`` and ``width`` so that
tests can build small versions of the same graphs.
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

    def __init__(self, seed: int, image: int = 224):
        self.rng = np.random.default_rng(seed)
        self.image = image
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

    def residual(self, x, y, name, c_in, c_out, stride) -> str:
        """ReLU(y + x), x through a 1x1 ``downsample`` conv (and BatchNormalization) where the
        block changes the shape."""
        if stride != 1 or c_in != c_out:
            x = self.conv_bn(x, f"{name}.downsample", c_in, c_out, 1, stride, act=None)
        return self.add("Relu", f"{name}.relu", [self.add("Add", f"{name}.add", [y, x])])

    def classifier(self, x, c_in, name) -> onnx.ModelProto:
        """GlobalAveragePool, Flatten and Gemm ``fc`` to ``logits`` after ``x``; the checked model."""
        x = self.add("Flatten", "flatten", [self.add("GlobalAveragePool", "avgpool", [x])], axis=1)
        w = self.weight("fc.weight", self.rng.normal(0, np.sqrt(1.0 / c_in), (CLASSES, c_in)))
        b = self.weight("fc.bias", self.rng.normal(0, 0.01, CLASSES))
        self.nodes.append(helper.make_node("Gemm", [x, w, b], ["logits"], name="fc", transB=1))
        graph = helper.make_graph(
            self.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                             ["N", 3, self.image, self.image])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="zeroskip-bench")
        onnx.checker.check_model(model)
        return model


def _scaled(channels: int, width: float) -> int:
    """Channels times ``width``, at least 4."""
    return max(4, int(round(channels * width)))


def resnet18(seed: int = 0, image: int = 224, width: float = 1.0) -> onnx.ModelProto:
    """A float32 ResNet-18 with random weights: input ``input`` (N, 3, 224, 224), output ``logits``
    (N, 1000), N dynamic; torchvision's layers, each BatchNormalization a node of its own.

    Parameters
    ----------
    seed : int
        Seed of the weights and BatchNormalization statistics.
    image : int
        Height and width of the input (224: ImageNet's).
    width : float
        Multiplier of every conv's channel count (1.0: the real network).

    Returns
    -------
    onnx.ModelProto
        Opset 17, checked by ``onnx.checker``. Nodes are named after torchvision's modules
        (``layer2.0.conv1``, ``layer2.0.downsample``, ``fc``), the first conv ``stem``.
    """
    g = _Graph(seed, image)
    stages = [_scaled(c, width) for c in STAGES]
    x = g.conv_bn("input", "stem", 3, stages[0], 7, stride=2)
    x = g.add("MaxPool", "stem.pool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    c_in = stages[0]
    for stage, c_out in enumerate(stages, start=1):
        for block in range(2):
            name, stride = f"layer{stage}.{block}", 2 if stage > 1 and block == 0 else 1
            y = g.conv_bn(x, f"{name}.conv1", c_in, c_out, 3, stride)
            y = g.conv_bn(y, f"{name}.conv2", c_out, c_out, 3, act=None)
            x, c_in = g.residual(x, y, name, c_in, c_out, stride), c_out
    return g.classifier(x, c_in, "resnet18")


def resnet50(seed: int = 0, image: int = 224, width: float = 1.0) -> onnx.ModelProto:
    """A float32 ResNet-50 with random weights, as ``resnet18`` (input, output, ``seed``,
    ``image``, ``width``): bottleneck blocks (1x1 reduce, 3x3, 1x1 expand by 4) in stages of 3, 4,
    6 and 3, the stride on the 3x3 of each stage's first block (torchvision's v1.5), a 1x1
    ``downsample`` where the shape changes. Convs ``layer{s}.{b}.conv{1,2,3}``."""
    g = _Graph(seed, image)
    stages = [_scaled(c, width) for c in STAGES]
    x = g.conv_bn("input", "stem", 3, stages[0], 7, stride=2)
    x = g.add("MaxPool", "stem.pool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    c_in = stages[0]
    for stage, (mid, blocks) in enumerate(zip(stages, (3, 4, 6, 3)), start=1):
        c_out = mid * 4
        for block in range(blocks):
            name, stride = f"layer{stage}.{block}", 2 if stage > 1 and block == 0 else 1
            y = g.conv_bn(x, f"{name}.conv1", c_in, mid, 1)
            y = g.conv_bn(y, f"{name}.conv2", mid, mid, 3, stride)
            y = g.conv_bn(y, f"{name}.conv3", mid, c_out, 1, act=None)
            x, c_in = g.residual(x, y, name, c_in, c_out, stride), c_out
    return g.classifier(x, c_in, "resnet50")


def mlp(seed: int = 0, sizes=(784, 300, 100, 10)) -> onnx.ModelProto:
    """A float32 MLP with random weights, as torch exports a stack of ``nn.Linear`` and ReLU: Gemm
    (transB=1) and Relu, input ``input`` (N, sizes[0]), output ``logits`` (N, sizes[-1]); the
    default is LeNet-300-100 on 28x28 images. Layers ``fc1`` … ``fcN``."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "input"
    for i, (k, n) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        w, b = f"fc{i}.weight", f"fc{i}.bias"
        inits += [numpy_helper.from_array(rng.normal(0, np.sqrt(2.0 / k), (n, k)).astype(
            np.float32), w), numpy_helper.from_array(rng.normal(0, 0.01, n).astype(np.float32), b)]
        last = i == len(sizes) - 1
        nodes.append(helper.make_node("Gemm", [x, w, b], ["logits" if last else f"fc{i}"],
                                      name=f"fc{i}", transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [f"fc{i}"], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="zeroskip-bench")
    onnx.checker.check_model(model)
    return model


def mobilenetv2(seed: int = 0, image: int = 224, width: float = 1.0) -> onnx.ModelProto:
    """A float32 MobileNetV2 (width 1.0) with random weights: input ``input`` (N, 3, 224, 224), output
    ``logits`` (N, 1000), N dynamic; ReLU6 as Clip(0, 6), each BatchNormalization a node of its own.
    ``seed``, ``image``, ``width`` and the checks as for ``resnet18``. The 3x3/s2 conv is ``stem``; inverted-residual
    block i (1 to 17) has convs ``block{i}.expand`` (absent when t = 1), ``block{i}.depthwise`` and
    ``block{i}.project``; then the 1x1 conv ``head`` to 1280 channels and the Gemm ``fc``.
    """
    g = _Graph(seed, image)
    c_in, block = _scaled(32, width), 0
    x = g.conv_bn("input", "stem", 3, c_in, 3, stride=2, act="relu6")
    for t, c_out, repeats, first_stride in INVERTED_RESIDUALS:
        c_out = _scaled(c_out, width)
        for r in range(repeats):
            block, stride, hidden = block + 1, first_stride if r == 0 else 1, c_in * t
            name = f"block{block}"
            y = g.conv_bn(x, f"{name}.expand", c_in, hidden, 1, act="relu6") if t != 1 else x
            y = g.conv_bn(y, f"{name}.depthwise", hidden, hidden, 3, stride, act="relu6", group=hidden)
            y = g.conv_bn(y, f"{name}.project", hidden, c_out, 1, act=None)
            x = g.add("Add", f"{name}.add", [x, y]) if stride == 1 and c_in == c_out else y
            c_in = c_out
    head = _scaled(1280, width)
    x = g.conv_bn(x, "head", c_in, head, 1, act="relu6")
    return g.classifier(x, head, "mobilenetv2")


def prune(model: onnx.ModelProto, density: float = 0.1, skip=("stem",),
          only_pointwise: bool = False, block: int = 1) -> onnx.ModelProto:
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
    block : int
        1: single weights. B > 1: groups of B consecutive input channels at one tap of one output
        channel, ranked by their mean |w|, ``round(density · groups)`` kept whole (a conv whose
        input channels B does not divide stays dense).

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
        if block > 1:
            n, c = w.shape[:2]
            if c % block:
                continue
            groups = np.abs(w).reshape(n, c // block, block, -1).mean(axis=2)  # (n, c/B, taps)
            drop = groups.size - int(round(density * groups.size))
            gone = np.zeros(groups.size, bool)
            gone[np.argsort(groups, axis=None, kind="stable")[:drop]] = True
            w.reshape(n, c // block, block, -1)[np.repeat(
                gone.reshape(groups.shape)[:, :, None, :], block, axis=2)] = 0
        else:
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
        A float model with one input, ``input`` (N first, the other dimensions known).
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
    images = rng.standard_normal((calibration_batches, *_input_shape(model, 1))).astype(np.float32)

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


def _input_shape(model: onnx.ModelProto, batch: int) -> tuple:
    """The shape of the model's first input with ``batch`` for its dynamic first dimension."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return (batch,) + tuple(d.dim_value for d in dims[1:])


SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95)
"""The sparsities of zeroskip's own pipeline variants."""


def zeroskip_variants(model: onnx.ModelProto, sparsities=SPARSITIES, calibration_rows: int = 8,
                      seed: int = 0) -> dict:
    """zeroskip's pipeline on ``model``: {"zs{SS}": float Model pruned to SS %, "zs{SS}_int8": it
    quantized}. Pruning is ``zeroskip.prune`` (global magnitude over every Conv and Gemm; none at
    0 %), quantization ``zeroskip.quantize`` (min-max, uint8, per-channel) on random normal
    inputs."""
    import zeroskip

    source = zeroskip.import_onnx(model)
    x = np.random.default_rng(seed).standard_normal(
        _input_shape(model, calibration_rows)).astype(np.float32)
    out = {}
    for s in sparsities:
        tag = f"zs{int(round(s * 100)):02d}"
        pruned = zeroskip.prune(source, s) if s > 0 else source
        out[tag] = pruned
        out[f"{tag}_int8"] = zeroskip.quantize(pruned, x, progress=False)
    return out


BUILDERS = {"resnet18": resnet18, "mobilenetv2": mobilenetv2, "resnet50": resnet50}
"""The CNNs, by name; ``mlp`` comes only with ``--zeroskip`` (onnxruntime's variants are CNN-only)."""


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
    parser.add_argument("--nets", default="resnet18,mobilenetv2",
                        help="networks, comma-separated, of resnet18, mobilenetv2, resnet50, mlp "
                             "(default: resnet18,mobilenetv2)")
    parser.add_argument("--zeroskip", action="store_true",
                        help="also write zeroskip's pipeline variants: pruned by zeroskip.prune "
                             "at 0/50/80/90/95 %% and quantized by zeroskip.quantize (.zsk)")
    args = parser.parse_args(argv)
    suffix = "" if args.activations == "uint8" else "_s8"
    os.makedirs(args.outdir, exist_ok=True)
    for net in args.nets.split(","):
        if net not in BUILDERS and net != "mlp":
            parser.error(f"unknown network {net!r}")
        dense = mlp(args.seed) if net == "mlp" else BUILDERS[net](args.seed)
        models = {net: dense}
        if net != "mlp":
            pointwise = net == "mobilenetv2"
            pruned = prune(dense, 0.1, only_pointwise=pointwise)
            blocked = prune(dense, 0.1, only_pointwise=pointwise, block=4)
            models.update({f"{net}_pruned90": pruned, f"{net}_block90": blocked,
                           f"{net}_int8{suffix}": quantize(dense, seed=args.seed,
                                                           activations=args.activations)})
            for tag, variant in (("pruned90", pruned), ("block90", blocked)):
                models[f"{net}_{tag}_int8{suffix}"] = quantize(variant, seed=args.seed,
                                                               activations=args.activations)
        for name, model in models.items():
            path = os.path.join(args.outdir, f"{name}.onnx")
            onnx.save(model, path)
            weights = [w for w in map(numpy_helper.to_array, model.graph.initializer)
                       if w.ndim in (2, 4) and w.size > 1]
            nonzero = sum(np.count_nonzero(w) for w in weights) / sum(w.size for w in weights)
            params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
            print(f"{path}: {os.path.getsize(path) / 1e6:6.1f} MB, {params / 1e6:5.2f} M "
                  f"parameters, {len(model.graph.node)} nodes, weights {nonzero:.1%} nonzero")
        if args.zeroskip:
            import zeroskip

            for tag, variant in zeroskip_variants(dense, seed=args.seed).items():
                path = os.path.join(args.outdir, f"{net}_{tag}.zsk")
                zeroskip.save(variant, path)
                print(f"{path}: {os.path.getsize(path) / 1e6:6.1f} MB")


if __name__ == "__main__":
    main()
