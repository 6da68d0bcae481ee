"""Write the golden files of tests/test_golden.py, deterministically (same inputs, same bytes).

Run from the repository root only when the format version changes: the point of a golden file is that
it stays the same while the code around it changes.

    python tests/data/make_golden.py

golden_cnn.zsk, golden_cnn_expected.npz: a float CNN (Conv 3x3, Relu, MaxPool, a 90 %-pruned Conv
stored as CSR, Relu, GlobalAveragePool, Flatten, Gemm), imported from ONNX. The arrays:

- ``x`` the input; ``y`` onnxruntime's float32 output;
- ``y64`` the float64 oracle below (plain NumPy, nothing of zeroskip);
- ``K`` = Σ_l (K_l + 3) over the layers: each one's K_l products and sums, its bias, its weights'
  own float32 rounding and its output;
- ``magnitude`` the magnitudes Σ|w·x| + |b| of each layer, carried to the output through the |w| of
  the layers after it, weighted by K_l + 3 and divided by K (``Bounded``): a float32 evaluation is
  then within (K + 2)·2⁻²⁴·magnitude of ``y64``, the bound of tests/kernel_checks.py.

golden_int8.zsk, golden_int8_expected.npz: an int8 CNN in QDQ form (QuantizeLinear, QConv 3x3 + Relu
with a −128 weight, depthwise QConv, QAdd of the two + Relu, QMaxPool, a pruned QConv stored as CSR
with an all-zero output channel, QGlobalAveragePool, Flatten, QGemm with a per-tensor weight scale
and an int8 output that saturates, DequantizeLinear), imported from ONNX; the import must keep every
weight and bias as drawn (checked here). Every activation scale is a power of two and every weight
scale a float32, so each requantization multiplier x_scale·w_scale[n]/y_scale has at most 24
significant bits: its Q31 form (docs/quantization.md §3) and QAdd's 2^R base (§5) hold it exactly,
the float64 reference computes every value before a rounding exactly, and the two rounding rules
differ only at exact ties.
The arrays:

- ``x`` the input (two values beyond the input's range, to saturate);
- ``yq``, ``y`` the integer scheme of docs/quantization.md, computed here with exact rationals
  (Fraction), rounding half away from zero at each requantization. The int8 modes must give these
  bit for bit;
- ``yq_even``, ``y_even`` the same arithmetic rounding half to even, which is what the float reference
  (mode "reference": dequantize, float64, quantize) computes for this model: it must give these bit
  for bit. ``ties`` counts the exact ties met by conv1, dw, add, conv3, gap and fc (the QAdd, adding
  halves, meets many, and they reach the outputs);
- ``y_real`` the f32 modes' computation in float64: weights dequantized, activations real, each
  quantized op's output clamped to the real range of its 8-bit type; ``magnitude`` and ``K`` as above;
- ``yq_ort``, ``y_ort`` onnxruntime's outputs with graph optimizations off, i.e. the QDQ graph as ONNX
  defines it, in float32 and rounding half to even (only if onnxruntime is installed). float32 sums
  can land on either side of an exact tie, so these may differ from ``yq_even`` by one step where a
  tie was met; when this file was written they were equal at every output.
"""

from __future__ import annotations

import math
import os
import zipfile
from fractions import Fraction

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import zeroskip

HERE = os.path.dirname(os.path.abspath(__file__))


# ================================================================================================
# The models
# ================================================================================================

def build():
    """The float golden CNN as an ONNX model."""
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


# The int8 CNN: activations (name, dtype, scale, zero point). Scales are powers of two.
ACT = {"xq": (np.uint8, 2.0 ** -5, 128), "c1q": (np.uint8, 2.0 ** -4, 0),
       "c2q": (np.uint8, 2.0 ** -3, 128), "aq": (np.uint8, 2.0 ** -3, 0),
       "c3q": (np.uint8, 2.0 ** -3, 0), "yq": (np.int8, 2.0 ** -1, -3)}
# Layers: (name, input activation, output activation, weight shape, group, density, relu).
CONVS = [("conv1", "xq", "c1q", (8, 3, 3, 3), 1, 1.0, True),
         ("dw", "c1q", "c2q", (8, 1, 3, 3), 8, 1.0, False),
         ("conv3", "aq", "c3q", (16, 8, 3, 3), 1, 0.15, True)]


def int8_layers():
    """{layer: (q_w int8, w_scale float32 [N] or scalar, q_b int32)}: integers drawn directly, so no
    float-to-int rounding stands between this file and the model. Weights use the full int8 range
    (−128 included, docs/quantization.md §1); the last output's bias saturates it."""
    rng = np.random.default_rng(8)
    layers = {}
    for name, _, _, shape, _, density, _ in CONVS:
        q_w = rng.integers(-127, 128, shape).astype(np.int8)
        if density < 1:
            q_w[rng.random(shape) >= density] = 0
            q_w[5] = 0  # an output channel that pruning emptied: its bias alone remains
        w_scale = rng.uniform(0.004, 0.02, shape[0]).astype(np.float32)
        q_b = rng.integers(-3000, 3000, shape[0]).astype(np.int32)
        layers[name] = (q_w, w_scale, q_b)
    layers["conv1"][0][0, 0, 0, 0] = -128
    q_w = rng.integers(-127, 128, (5, 16)).astype(np.int8)
    q_b = rng.integers(-3000, 3000, 5).astype(np.int32)
    q_b[4] = 100_000  # 2^-3·2^-6·100 000 / 2^-1 = 390 steps: the last output saturates at 127
    layers["fc"] = (q_w, np.float32(2.0 ** -6), q_b)
    return layers


def build_int8():
    """The int8 golden CNN as a QDQ ONNX model (the layout of onnxruntime's QuantFormat.QDQ)."""
    layers = int8_layers()
    inits, nodes = {}, []

    def op(kind, inputs, output, **attrs):
        nodes.append(helper.make_node(kind, inputs, [output], name=output, **attrs))
        return output

    def q(x, output, act):
        """QuantizeLinear(x) with the parameters of ``act``."""
        dtype, scale, zp = ACT[act]
        inits[f"{act}_scale"], inits[f"{act}_zp"] = np.array(scale, np.float32), np.array(zp, dtype)
        return op("QuantizeLinear", [x, f"{act}_scale", f"{act}_zp"], output)

    def dq(tensor, output, act=None):
        act = act or tensor
        return op("DequantizeLinear", [tensor, f"{act}_scale", f"{act}_zp"], output)

    def weights(layer, x_act):
        """DequantizeLinear of the layer's int8 weight and int32 bias (scale x_scale·w_scale)."""
        q_w, w_scale, q_b = layers[layer]
        per_channel = np.ndim(w_scale) == 1
        zeros = np.zeros(q_w.shape[0] if per_channel else (), np.int32)
        inits.update({f"{layer}.w": q_w, f"{layer}.w_scale": w_scale,
                      f"{layer}.w_zp": zeros.astype(np.int8), f"{layer}.b": q_b,
                      f"{layer}.b_scale": (np.float32(ACT[x_act][1]) * w_scale).astype(np.float32),
                      f"{layer}.b_zp": zeros})
        axis = {"axis": 0} if per_channel else {}
        return [op("DequantizeLinear", [f"{layer}.{t}", f"{layer}.{t}_scale", f"{layer}.{t}_zp"],
                   f"{layer}.{t}_real", **axis) for t in ("w", "b")]

    def conv(layer, x_act, y_act, group, relu):
        out = op("Conv", [dq(x_act, f"{layer}.x"), *weights(layer, x_act)], f"{layer}.y",
                 pads=[1, 1, 1, 1], group=group)
        return q(op("Relu", [out], f"{layer}.relu") if relu else out, y_act, y_act)

    q("x", "xq", "xq")
    for layer, x_act, y_act, _, group, _, relu in CONVS[:2]:
        conv(layer, x_act, y_act, group, relu)
    added = op("Add", [dq("c2q", "add.a"), dq("c1q", "add.b")], "add.y")
    q(op("Relu", [added], "add.relu"), "sq", "aq")
    q(op("MaxPool", [dq("sq", "pool.x", "aq")], "pool.y", kernel_shape=[2, 2], strides=[2, 2]),
      "aq", "aq")
    layer, x_act, y_act, _, group, _, relu = CONVS[2]
    conv(layer, x_act, y_act, group, relu)
    q(op("GlobalAveragePool", [dq("c3q", "gap.x")], "gap.y"), "gq", "c3q")
    q(op("Flatten", [dq("gq", "flatten.x", "c3q")], "flatten.y"), "fq", "c3q")
    q(op("Gemm", [dq("fq", "fc.x", "c3q"), *weights("fc", "c3q")], "fc.y", transB=1), "yq", "yq")
    dq("yq", "y")
    graph = helper.make_graph(
        nodes, "golden_int8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5]),
         helper.make_tensor_value_info("yq", TensorProto.INT8, ["N", 5])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def int8_input():
    """The int8 CNN's input: (2, 3, 6, 6) float32."""
    x = np.random.default_rng(7).standard_normal((2, 3, 6, 6)).astype(np.float32) * 1.5
    x[0, 0, 0, 0], x[1, 2, 5, 5] = 5.0, -4.5  # beyond [-4, 3.97]: the input's quantizer saturates
    return x


# ================================================================================================
# The oracle: plain NumPy and Fractions, nothing of zeroskip's kernels, planner or quantmath
# ================================================================================================

def conv2d(x, w, b=None, pad=1, group=1):
    """y[b,n] = b[n] + Σ_{c,i,j} w[n,c,i,j]·xpad[b, g(n)·C/g + c, i:, j:] (stride 1); int64 inputs
    give exact integers, float64 inputs float64."""
    batch, _, height, width = x.shape
    n_out, c_group, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = height + 2 * pad - kh + 1, width + 2 * pad - kw + 1
    y = np.zeros((batch, n_out, ho, wo), np.result_type(x, w))
    per_group = n_out // group
    for n in range(n_out):
        first = (n // per_group) * c_group
        for c in range(c_group):
            for i in range(kh):
                for j in range(kw):
                    y[:, n] += w[n, c, i, j] * xp[:, first + c, i:i + ho, j:j + wo]
    return y if b is None else y + b[None, :, None, None]


def max_pool2(x):
    return x.reshape(x.shape[0], x.shape[1], x.shape[2] // 2, 2, x.shape[3] // 2, 2).max(axis=(3, 5))


def half_away(v: Fraction) -> int:
    """Round half away from zero (docs/quantization.md §3)."""
    return math.floor(abs(v) + Fraction(1, 2)) * (1 if v >= 0 else -1)


def half_even(v: Fraction) -> int:
    return round(v)  # Fraction.__round__: ties to even


def requantize(values, act, relu, rounding, ties, where):
    """q = clamp(rounding(v) + zp, lo, hi) for exact rational values v (an object array);
    ``lo`` is the zero point under a fused Relu. Counts exact ties in ``ties[where]``."""
    dtype, _, zp = ACT[act]
    info = np.iinfo(dtype)
    lo, hi = (max(info.min, zp) if relu else info.min), info.max
    out = np.empty(values.shape, np.int64)
    for index, v in np.ndenumerate(values):
        ties[where] = ties.get(where, 0) + ((v - math.floor(v)) == Fraction(1, 2))
        out[index] = min(max(rounding(v) + zp, lo), hi)
    return out


def exact(array):
    """An object array of Fractions (exact) from an integer array."""
    array = np.asarray(array)
    out = np.empty(array.shape, object)
    for index, v in np.ndenumerate(array):
        out[index] = Fraction(int(v))
    return out


def quantize_input(x):
    """ONNX QuantizeLinear: round half to even of x / scale, in float32 (exact: scale is 2^-5)."""
    dtype, scale, zp = ACT["xq"]
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / np.float32(scale)).astype(np.int64) + zp, info.min, info.max)


def run_int8(x, rounding):
    """The int8 golden CNN in the integer scheme (docs/quantization.md §2, §3, §5), exactly:
    every value before a rounding is a Fraction. Returns (yq, ties per op)."""
    layers, ties = int8_layers(), {}
    scale = {act: Fraction(s) for act, (_, s, _) in ACT.items()}
    zp = {act: z for act, (_, _, z) in ACT.items()}
    values = {"xq": quantize_input(x)}

    def conv(name, x_act, y_act, group, relu):
        q_w, w_scale, q_b = layers[name]
        acc = conv2d(values[x_act] - zp[x_act], q_w.astype(np.int64), q_b.astype(np.int64),
                     group=group)
        m = np.array([scale[x_act] * Fraction(float(s)) / scale[y_act] for s in w_scale],
                     dtype=object)
        return requantize(exact(acc) * m[None, :, None, None], y_act, relu, rounding, ties, name)

    values["c1q"] = conv("conv1", "xq", "c1q", 1, True)
    values["c2q"] = conv("dw", "c1q", "c2q", 8, False)
    a = exact(values["c2q"] - zp["c2q"]) * (scale["c2q"] / scale["aq"]) \
        + exact(values["c1q"] - zp["c1q"]) * (scale["c1q"] / scale["aq"])
    values["sq"] = requantize(a, "aq", True, rounding, ties, "add")
    values["aq"] = max_pool2(values["sq"])
    values["c3q"] = conv("conv3", "aq", "c3q", 1, True)
    sums = values["c3q"].sum(axis=(2, 3))  # same scale and zero point in and out: Σq / count
    count = values["c3q"].shape[2] * values["c3q"].shape[3]
    gq = requantize(exact(sums) / count, "c3q", False, rounding, ties, "gap")
    q_w, w_scale, q_b = layers["fc"]
    acc = (gq - zp["c3q"]) @ q_w.astype(np.int64).T + q_b
    m = scale["c3q"] * Fraction(float(w_scale)) / scale["yq"]
    yq = requantize(exact(acc) * m, "yq", False, rounding, ties, "fc")
    return yq, ties


def dequantize_output(yq):
    _, scale, zp = ACT["yq"]
    return (np.float32(scale) * (yq - zp).astype(np.float32)).astype(np.float32)


class Bounded:
    """A float64 value and the first-order bound on a float32 evaluation's error in it, in units of
    u = 2⁻²⁴. A layer of K_l terms adds (K_l + 3)·(|w|·|x| + |b|) (its products and sums, its bias,
    its weights' own float32 rounding, its output) and passes the error it was given on through |w|;
    a Relu, a clamp or a max never increases an error, a mean averages it."""

    def __init__(self, value, error=None):
        self.value = value
        self.error = np.zeros_like(value) if error is None else error

    def linear(self, apply, w, b, k):
        """``apply(x, w)`` + b, a layer of ``k`` terms per output; b broadcasts to the output."""
        a = np.abs(w)
        error = apply(self.error, a) + (k + 3) * (apply(np.abs(self.value), a) + np.abs(b))
        return Bounded(apply(self.value, w) + b, error)

    def conv(self, w, b, group=1):
        k = w.shape[1] * w.shape[2] * w.shape[3]
        return self.linear(lambda x, w_: conv2d(x, w_, group=group), w, b[None, :, None, None], k)

    def gemm(self, w, b):
        return self.linear(lambda x, w_: x @ w_.T, w, b, w.shape[1])

    def mean(self):
        """The global average over the spatial axes (a sum of H·W terms and a division)."""
        k = self.value.shape[2] * self.value.shape[3]
        return Bounded(self.value.mean(axis=(2, 3)),
                       self.error.mean(axis=(2, 3)) + (k + 3) * np.abs(self.value).mean(axis=(2, 3)))

    def add(self, other):
        return Bounded(self.value + other.value, self.error + other.error
                       + (1 + 3) * (np.abs(self.value) + np.abs(other.value)))

    def map(self, f, error=lambda e: e):
        """An op that never increases an error (``error``: how it carries one, e.g. a pool's max)."""
        return Bounded(f(self.value), error(self.error))


def run_int8_real(x):
    """The f32 modes' computation in float64: weights dequantized, activations real, each quantized
    op's output clamped to the real range of its 8-bit type (docs/kernels.md). Returns the output and
    its error bound (``Bounded``)."""
    layers = int8_layers()

    def clamp(act, relu=False):
        dtype, scale, zp = ACT[act]
        info = np.iinfo(dtype)
        lo = scale * (info.min - zp)
        return lambda v: np.clip(v, max(lo, 0.0) if relu else lo, scale * (info.max - zp))

    def real(layer, x_act):
        """The layer's weight and bias as their real values (bias scale x_scale·w_scale, float32)."""
        q_w, w_scale, q_b = layers[layer]
        w_scale = np.asarray(w_scale, np.float64)
        b_scale = (np.float32(ACT[x_act][1]) * layers[layer][1]).astype(np.float64)
        return w_scale.reshape(-1, *[1] * (q_w.ndim - 1)) * q_w, b_scale * q_b

    def conv(v, layer, x_act, y_act, group, relu):
        return v.conv(*real(layer, x_act), group=group).map(clamp(y_act, relu))

    v = Bounded(x.astype(np.float64)).map(clamp("xq"))
    c1 = conv(v, "conv1", "xq", "c1q", 1, True)
    c2 = conv(c1, "dw", "c1q", "c2q", 8, False)
    a = c2.add(c1).map(clamp("aq", True)).map(max_pool2, max_pool2)
    c3 = conv(a, "conv3", "aq", "c3q", 1, True)
    g = c3.mean().map(clamp("c3q"))
    return g.gemm(*real("fc", "c3q")).map(clamp("yq"))


INT8_K = (27 + 3) + (9 + 3) + (1 + 3) + (72 + 3) + (9 + 3) + (16 + 3)
"""Σ_l (K_l + 3) over the int8 CNN's float twin (see Bounded)."""


def run_float(inits, x):
    """The float golden CNN in float64, with its error bound (``Bounded``)."""
    w = {k: v.astype(np.float64) for k, v in inits.items()}
    relu = (lambda v: np.maximum(v, 0))
    h = Bounded(x.astype(np.float64)).conv(w["w1"], w["b1"]).map(relu).map(max_pool2, max_pool2)
    h = h.conv(w["w2"], np.zeros(w["w2"].shape[0])).map(relu)
    return h.mean().gemm(w["fc.weight"], w["fc.bias"])


FLOAT_K = (27 + 3) + (72 + 3) + (16 + 3) + (16 + 3)
"""Σ_l (K_l + 3) over the float CNN (see Bounded)."""


# ================================================================================================
# Writing
# ================================================================================================

def save_npz(path, **arrays):
    """np.savez, but with fixed timestamps in the zip, so the same arrays give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w") as f:
                np.lib.format.write_array(f, np.asanyarray(arrays[name]), allow_pickle=False)


def run_onnxruntime(model, x, optimize=True):
    """onnxruntime's outputs (``optimize``: with its default graph optimizations, else none), or
    None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))


def main():
    # The float CNN. Its input and onnxruntime's output are the ones this file was first written with.
    model = build()
    x = np.random.default_rng(7).standard_normal((2, 3, 8, 8)).astype(np.float32)
    ort_out = run_onnxruntime(model, x)
    imported = zeroskip.import_onnx(model)
    imported.metadata["producer"] = "zeroskip (golden file)"
    zeroskip.save(imported, os.path.join(HERE, "golden_cnn.zsk"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    y64 = run_float(inits, x)
    arrays = dict(x=x, y64=y64.value, magnitude=y64.error / FLOAT_K, K=np.int64(FLOAT_K))
    if ort_out is not None:
        arrays["y"] = ort_out["y"]
    save_npz(os.path.join(HERE, "golden_cnn_expected.npz"), **arrays)

    # The int8 CNN.
    model = build_int8()
    x = int8_input()
    imported = zeroskip.import_onnx(model)
    imported.metadata["producer"] = "zeroskip (golden file)"
    for layer, (q_w, w_scale, q_b) in int8_layers().items():  # the oracle's integers are the file's
        w, b = imported.graph.initializers[f"{layer}.w"], imported.graph.initializers[f"{layer}.b"]
        assert np.array_equal(w.to_numpy(), q_w) and np.array_equal(w.quant.scale, w_scale), layer
        assert np.array_equal(b.to_numpy(), q_b), layer
    zeroskip.save(imported, os.path.join(HERE, "golden_int8.zsk"))
    yq, ties = run_int8(x, half_away)
    yq_even, ties_even = run_int8(x, half_even)
    assert ties == ties_even
    real = run_int8_real(x)
    arrays = dict(x=x, yq=yq.astype(np.int8), y=dequantize_output(yq),
                  yq_even=yq_even.astype(np.int8), y_even=dequantize_output(yq_even),
                  ties=np.array([ties.get(op, 0) for op in ("conv1", "dw", "add", "conv3", "gap",
                                                            "fc")], np.int64),
                  y_real=real.value, magnitude=real.error / INT8_K, K=np.int64(INT8_K))
    ort_out = run_onnxruntime(model, x, optimize=False)
    if ort_out is not None:
        arrays.update(yq_ort=ort_out["yq"], y_ort=ort_out["y"])
    save_npz(os.path.join(HERE, "golden_int8_expected.npz"), **arrays)
    print("int8: exact ties per op", ties, "| outputs where the rounding rules differ:",
          int(np.sum(yq != yq_even)), "of", yq.size)
    if ort_out is not None:
        steps = np.abs(ort_out["yq"].astype(np.int64) - yq_even)
        print("int8: onnxruntime vs half-to-even: max", int(steps.max()), "steps,",
              int(np.sum(steps > 0)), "outputs differ")


if __name__ == "__main__":
    main()
