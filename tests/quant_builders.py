"""Small float ONNX models, and their int8 versions made by onnxruntime's own quantization tool.

    model = FLOAT_MODELS["cnn"]()
    q = quantize(model, "cnn", fmt="qdq", activation="uint8", per_channel=True)

Each float builder returns (model, input name, sample shape without the batch). ``quantize`` runs
``onnxruntime.quantization.quantize_static`` on calibration data and returns the quantized ModelProto.

QOperator models with uint8 activations are quantized with ``reduce_range=True`` (7-bit weights):
onnxruntime's x86 u8·s8 kernels (QLinearConv, QLinearMatMul) add pairs of products in saturating
int16 (``vpmaddubsw``), so full-range weights make onnxruntime itself wrong by many steps. The
quantizer's warning says the same ("use QDQ or reduce_range").
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx

from onnx_builders import make_model, node, pruned, randn


def _cnn():
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), node("Relu", ["c1"], ["r1"]),
             node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]), node("Relu", ["c2"], ["r2"]),
             node("GlobalAveragePool", ["r2"], ["g"]), node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    inits = {"w1": randn((8, 3, 3, 3), 1, 0.3), "b1": randn(8, 2, 0.1),
             "w2": pruned((12, 8, 3, 3), 0.1, seed=3, scale=0.5), "b2": randn(12, 4, 0.1),
             "w3": randn((10, 12), 5, 0.5), "b3": randn(10, 6, 0.1)}
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 10])], inits), "x", (3, 8, 8)


def _mlp_gemm(dead_channel=False):
    w1 = randn((32, 16), 1, 0.3)
    if dead_channel:
        w1[5] = 0.0  # output channel 5 fully pruned
    nodes = [node("Gemm", ["x", "w1", "b1"], ["h1"], transB=1), node("Relu", ["h1"], ["r1"]),
             node("Gemm", ["r1", "w2", "b2"], ["y"], transB=0)]
    inits = {"w1": w1, "b1": randn(32, 2, 0.1), "w2": pruned((32, 10), 0.1, seed=3, scale=0.8),
             "b2": randn(10, 4, 0.1)}
    return make_model(nodes, [("x", ["N", 16])], [("y", ["N", 10])], inits), "x", (16,)


def _mlp_matmul():
    nodes = [node("MatMul", ["x", "w1"], ["m1"]), node("Add", ["m1", "b1"], ["a1"]),
             node("Relu", ["a1"], ["r1"]), node("MatMul", ["r1", "w2"], ["m2"]),
             node("Add", ["m2", "b2"], ["y"])]
    inits = {"w1": pruned((16, 32), 0.1, seed=1, scale=0.8), "b1": randn(32, 2, 0.1),
             "w2": randn((32, 10), 3, 0.3), "b2": randn(10, 4, 0.1)}
    return make_model(nodes, [("x", ["N", 16])], [("y", ["N", 10])], inits), "x", (16,)


def _residual():
    """Conv -> Relu -> depthwise Conv -> Add(skip) -> Relu -> AveragePool 3x3 -> GAP -> Flatten."""
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), node("Relu", ["c1"], ["r1"]),
             node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=6),
             node("Add", ["c2", "r1"], ["s"]), node("Relu", ["s"], ["r2"]),
             node("AveragePool", ["r2"], ["ap"], kernel_shape=[3, 3], strides=[2, 2]),
             node("GlobalAveragePool", ["ap"], ["g"]), node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    inits = {"w1": randn((6, 3, 3, 3), 1, 0.3), "b1": randn(6, 2, 0.1),
             "w2": randn((6, 1, 3, 3), 3, 0.3), "b2": randn(6, 4, 0.1),
             "w3": randn((5, 6), 5, 0.5), "b3": randn(5, 6, 0.1)}
    return make_model(nodes, [("x", ["N", 3, 9, 9])], [("y", ["N", 5])], inits), "x", (3, 9, 9)


def _padded():
    """Conv -> Relu -> Pad (explicit zeros, as torch's F.pad exports) -> Conv -> Relu -> GAP -> Gemm."""
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"]), node("Relu", ["c1"], ["r1"]),
             node("Pad", ["r1", "pads"], ["p1"]),
             node("Conv", ["p1", "w2", "b2"], ["c2"]), node("Relu", ["c2"], ["r2"]),
             node("GlobalAveragePool", ["r2"], ["g"]), node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    inits = {"w1": randn((6, 3, 3, 3), 1, 0.3), "b1": randn(6, 2, 0.1),
             "pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64),
             "w2": randn((8, 6, 3, 3), 3, 0.3), "b2": randn(8, 4, 0.1),
             "w3": randn((4, 8), 5, 0.5), "b3": randn(4, 6, 0.1)}
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 4])], inits), "x", (3, 8, 8)


def _pointwise():
    """Conv 3x3 -> Relu -> 1x1 convs with K = 16 and 32 (their channels-last input is the GEMM's
    rows) -> Add -> Relu -> 1x1 stride-2 conv with K = 8 (which needs im2row) -> GAP -> Gemm."""
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), node("Relu", ["c1"], ["r1"]),
             node("Conv", ["r1", "w2", "b2"], ["c2"]), node("Relu", ["c2"], ["r2"]),
             node("Conv", ["r2", "w3", "b3"], ["c3"]), node("Conv", ["r1", "w4", "b4"], ["c4"]),
             node("Add", ["c3", "c4"], ["s"]), node("Relu", ["s"], ["r3"]),
             node("Conv", ["r3", "w5", "b5"], ["c5"], strides=[2, 2]),
             node("GlobalAveragePool", ["c5"], ["g"]), node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "w6", "b6"], ["y"], transB=1)]
    inits = {"w1": randn((16, 3, 3, 3), 1, 0.3), "b1": randn(16, 2, 0.1),
             "w2": randn((32, 16, 1, 1), 3, 0.3), "b2": randn(32, 4, 0.1),
             "w3": pruned((8, 32, 1, 1), 0.5, seed=5, scale=0.3), "b3": randn(8, 6, 0.1),
             "w4": randn((8, 16, 1, 1), 7, 0.3), "b4": randn(8, 8, 0.1),
             "w5": randn((8, 8, 1, 1), 9, 0.3), "b5": randn(8, 10, 0.1),
             "w6": randn((5, 8), 11, 0.5), "b6": randn(5, 12, 0.1)}
    return make_model(nodes, [("x", ["N", 3, 9, 10])], [("y", ["N", 5])], inits), "x", (3, 9, 10)


def _depthwise_multiplier():
    """Conv -> Relu -> depthwise Conv with 2 outputs per channel, stride 2 -> Relu -> GAP -> Gemm:
    the planar depthwise kernel then requantize (the channels-last one takes multiplier 1 only)."""
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), node("Relu", ["c1"], ["r1"]),
             node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=4),
             node("Relu", ["c2"], ["r2"]), node("GlobalAveragePool", ["r2"], ["g"]),
             node("Flatten", ["g"], ["f"]), node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    inits = {"w1": randn((4, 3, 3, 3), 1, 0.3), "b1": randn(4, 2, 0.1),
             "w2": randn((8, 1, 3, 3), 3, 0.3), "b2": randn(8, 4, 0.1),
             "w3": randn((5, 8), 5, 0.5), "b3": randn(5, 6, 0.1)}
    return make_model(nodes, [("x", ["N", 3, 9, 9])], [("y", ["N", 5])], inits), "x", (3, 9, 9)


FLOAT_MODELS = {
    "cnn": _cnn,
    "mlp_gemm": _mlp_gemm,
    "mlp_dead_channel": lambda: _mlp_gemm(dead_channel=True),
    "mlp_matmul": _mlp_matmul,
    "residual": _residual,
    "padded": _padded,
    "pointwise": _pointwise,
    "depthwise_multiplier": _depthwise_multiplier,
}
"""name -> () -> (float ModelProto, input name, sample shape)."""


def calibration(shape, count=32, seed=7) -> np.ndarray:
    """Structured calibration/test data: random normals plus a per-sample offset and scale."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count,) + tuple(shape))
    x = x * rng.uniform(0.5, 1.5, (count,) + (1,) * len(shape)) + rng.uniform(-0.3, 0.3, (count,) + (1,) * len(shape))
    return x.astype(np.float32)


def quantize(model, fmt="qdq", activation="uint8", per_channel=True, input_name="x", shape=None,
             samples=32) -> onnx.ModelProto:
    """``model`` quantized by onnxruntime's quantize_static (int8 weights), as a ModelProto."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    data = calibration(shape, samples)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{input_name: d[None]} for d in data])

        def get_next(self):
            return next(self._it, None)

    reduce_range = fmt == "qoperator" and activation == "uint8"
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(model, src)
        quantize_static(src, dst, Reader(),
                        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8, per_channel=per_channel,
                        reduce_range=reduce_range)
        return onnx.load(dst)


def quantize_dynamic(model, weights="int8", per_channel=False, reduce_range=False) -> onnx.ModelProto:
    """``model`` quantized by onnxruntime's quantize_dynamic: DynamicQuantizeLinear before each
    Conv/MatMul (Gemm becomes MatMul + Add), which turn into ConvInteger/MatMulInteger, Cast, Mul."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(model, src)
        ort_quantize_dynamic(src, dst, per_channel=per_channel, reduce_range=reduce_range,
                             weight_type=QuantType.QInt8 if weights == "int8" else QuantType.QUInt8)
        return onnx.load(dst)


__all__ = ["FLOAT_MODELS", "calibration", "quantize", "quantize_dynamic"]
