"""int8 ONNX import: models quantized by onnxruntime's own tool (QDQ and QOperator, uint8/int8
activations, per-channel/per-tensor weights) -> ``import_onnx`` -> ``Session(mode="reference")``,
compared with onnxruntime.

The reference mode is the *float* reference (dequantize, float64, quantize), so it may differ from
onnxruntime by an output step near a rounding tie (onnxruntime computes in float32): every output
must lie within two steps, and at most 5 % of them may differ at all.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import zeroskip  # noqa: E402
from zeroskip.errors import ModelFormatError, UnsupportedModelError  # noqa: E402
from zeroskip.formats.zsk import dumps, loads  # noqa: E402

from onnx_builders import make_model, run_ort  # noqa: E402
from quant_builders import FLOAT_MODELS, calibration, quantize  # noqa: E402

EXPECTED_OPS = {
    "cnn": ["QuantizeLinear", "QConv", "QMaxPool", "QConv", "QGlobalAveragePool", "Flatten",
            "QGemm", "DequantizeLinear"],
    "mlp_gemm": ["QuantizeLinear", "QGemm", "QGemm", "DequantizeLinear"],
    "mlp_dead_channel": ["QuantizeLinear", "QGemm", "QGemm", "DequantizeLinear"],
    "mlp_matmul": ["QuantizeLinear", "QGemm", "QAdd", "QGemm", "QAdd", "DequantizeLinear"],
    "residual": ["QuantizeLinear", "QConv", "QConv", "QAdd", "QAveragePool", "QGlobalAveragePool",
                 "Flatten", "QGemm", "DequantizeLinear"],
    "padded": ["QuantizeLinear", "QConv", "Pad", "QConv", "QGlobalAveragePool", "Flatten", "QGemm",
               "DequantizeLinear"],
}
FORMATS = ("qdq", "qoperator")
ACTIVATIONS = ("uint8", "int8")
MAX_STEPS = 2
MAX_DIFFERING = 0.05
TEST_SAMPLES = 300


@functools.lru_cache(maxsize=None)
def quantized(name, fmt, activation, per_channel):
    """The onnxruntime-quantized model (cached for the whole test session)."""
    model, input_name, shape = FLOAT_MODELS[name]()
    return quantize(model, fmt, activation, per_channel, input_name, shape)


def _with_int_output(model) -> tuple[onnx.ModelProto, str]:
    """The model with the integer tensor behind its final DequantizeLinear as an extra output."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    final = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    assert final.op_type == "DequantizeLinear"
    inits = {t.name: t for t in model.graph.initializer}
    elem = inits[final.input[2]].data_type if len(final.input) > 2 else TensorProto.UINT8
    model.graph.output.append(helper.make_tensor_value_info(final.input[0], elem, None))
    return model, final.input[0]


def _compare(name, fmt, activation, per_channel):
    model = quantized(name, fmt, activation, per_channel)
    model, q_name = _with_int_output(model)
    _, input_name, shape = FLOAT_MODELS[name]()
    x = calibration(shape, TEST_SAMPLES, seed=99)
    want = run_ort(model, {input_name: x})
    imported = zeroskip.import_onnx(model)
    got = zeroskip.Session(imported, mode="reference").run({input_name: x})
    return imported, want, got, q_name


COMBOS = [(name, fmt, act, pc) for name in EXPECTED_OPS for fmt in FORMATS for act in ACTIVATIONS
          for pc in (True, False)]


@pytest.mark.parametrize("name,fmt,activation,per_channel", COMBOS,
                         ids=[f"{n}-{f}-{a}-{'pc' if p else 'pt'}" for n, f, a, p in COMBOS])
def test_quantized_model_matches_onnxruntime(name, fmt, activation, per_channel):
    imported, want, got, q_name = _compare(name, fmt, activation, per_channel)
    assert [n.op for n in imported.graph.nodes] == EXPECTED_OPS[name]
    # The integer outputs, step by step.
    q_want, q_got = want[q_name], got[q_name]
    assert q_got.dtype == q_want.dtype == np.dtype(activation)
    steps = np.abs(q_got.astype(np.int64) - q_want.astype(np.int64))
    differing = float(np.mean(steps > 0))
    context = (f"{name} {fmt} {activation} per_channel={per_channel}: max {steps.max()} steps, "
               f"{np.sum(steps == 1)} one-step and {np.sum(steps == 2)} two-step differences of "
               f"{steps.size}")
    assert steps.max() <= MAX_STEPS, context
    assert differing <= MAX_DIFFERING, context
    # The real outputs: within two output steps.
    y_scale = imported.graph.nodes[-1].attrs["x_scale"]
    y_want, y_got = want["y"], got["y"]
    assert y_got.dtype == np.float32
    assert np.max(np.abs(y_got - y_want)) <= MAX_STEPS * y_scale * (1 + 1e-5), context
    top1 = float(np.mean(y_got.argmax(axis=1) == y_want.argmax(axis=1)))
    assert top1 >= 0.99, f"{context}; top-1 agreement {top1}"


def test_weights_are_symmetric_int8_with_provenance():
    for fmt in FORMATS:
        for per_channel in (True, False):
            model = zeroskip.import_onnx(quantized("cnn", fmt, "uint8", per_channel))
            init = model.graph.initializers
            for node in model.graph.nodes:
                if node.op not in ("QConv", "QGemm"):
                    continue
                w, b = init[node.inputs[1]], init[node.inputs[2]]
                n_out = w.shape[0]
                assert w.dtype == np.int8 and np.all(np.abs(w.to_numpy()) <= 127)
                assert np.all(w.quant.zero_point == 0) and np.all(w.quant.scale > 0)
                assert (w.quant.axis == 0) if per_channel else (w.quant.axis is None)
                assert b.dtype == np.int32 and b.quant.axis == 0 and b.shape == (n_out,)
                want = np.float32(np.float64(node.attrs["x_scale"])
                                  * np.broadcast_to(w.quant.scale.astype(np.float64), (n_out,)))
                np.testing.assert_array_equal(b.quant.scale, want)
                meta = model.metadata["weights"][node.inputs[1]]
                assert meta["origin"] == "onnx" and meta["quantization"] == fmt
                assert meta["granularity"] == ("per-channel" if per_channel else "per-tensor")
                assert 0.0 <= meta["sparsity"] <= 1.0
            w2 = init[model.graph.nodes[3].inputs[1]]  # the 90 % pruned conv
            assert model.metadata["weights"][model.graph.nodes[3].inputs[1]]["sparsity"] > 0.8
            assert w2.density < 0.2


def test_matmul_weights_are_transposed_to_n_by_k():
    model = zeroskip.import_onnx(quantized("mlp_matmul", "qdq", "uint8", True))
    first = model.graph.nodes[1]
    w = model.graph.initializers[first.inputs[1]]
    assert first.op == "QGemm" and w.shape == (32, 16) and w.quant.scale.shape == (32,)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_relu_dropped_by_the_quantizer_is_the_saturating_clamp(fmt, activation):
    """onnxruntime's quantizer removes the Relu after a Conv (its output range starts at real 0);
    the output zero point is the type's minimum, so the saturating clamp does the Relu's work."""
    onnx_model = quantized("cnn", fmt, activation, True)
    assert not any(n.op_type == "Relu" for n in onnx_model.graph.node)
    imported = zeroskip.import_onnx(onnx_model)
    conv = imported.graph.nodes[1]
    assert conv.op == "QConv" and conv.attrs["clip_min"] is None
    lowest = 0 if activation == "uint8" else -128
    assert conv.attrs["y_zero_point"] == lowest
    model = onnx.ModelProto.FromString(onnx_model.SerializeToString())
    elem = TensorProto.UINT8 if activation == "uint8" else TensorProto.INT8
    model.graph.output.append(helper.make_tensor_value_info(conv.outputs[0], elem, None))
    imported = zeroskip.import_onnx(model)
    x = calibration((3, 8, 8), 50, seed=5)
    want = run_ort(model, {"x": x})[conv.outputs[0]]
    got = zeroskip.Session(imported).run({"x": x})[conv.outputs[0]]
    assert np.mean(got == lowest) > 0.1  # plenty of negative pre-activations were clamped
    assert np.max(np.abs(got.astype(int) - want.astype(int))) <= 1
    assert np.mean(got != want) <= MAX_DIFFERING


@pytest.mark.parametrize("fmt", FORMATS)
def test_fully_pruned_output_channel(fmt):
    imported = zeroskip.import_onnx(quantized("mlp_dead_channel", fmt, "uint8", True))
    first = imported.graph.nodes[1]
    w = imported.graph.initializers[first.inputs[1]]
    assert not np.any(w.to_numpy()[5]) and w.quant.scale[5] > 0 and np.isfinite(w.quant.scale[5])
    _, want, got, q_name = _compare("mlp_dead_channel", fmt, "uint8", True)
    assert np.max(np.abs(got[q_name].astype(int) - want[q_name].astype(int))) <= MAX_STEPS


@pytest.mark.parametrize("fmt", FORMATS)
def test_zsk_round_trip_keeps_quantized_weights(fmt, tmp_path):
    model = zeroskip.import_onnx(quantized("residual", fmt, "int8", True))
    path = tmp_path / "q.zsk"
    zeroskip.save(model, path)
    loaded = zeroskip.load(path, verify="eager")
    for name, tensor in model.graph.initializers.items():
        other = loaded.graph.initializers[name]
        assert other.dtype == tensor.dtype
        np.testing.assert_array_equal(other.to_numpy(), tensor.to_numpy())
        if tensor.quant is not None:
            assert other.quant.axis == tensor.quant.axis
            np.testing.assert_array_equal(other.quant.scale, tensor.quant.scale)
            np.testing.assert_array_equal(other.quant.zero_point, tensor.quant.zero_point)
    x = calibration((3, 9, 9), 20, seed=3)
    want = zeroskip.Session(model).run({"x": x})
    got = zeroskip.Session(loaded).run({"x": x})
    for key in want:
        assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key])
    assert dumps(loaded) == path.read_bytes() == dumps(loads(dumps(model)))


# --------------------------------------------------------------------------------------------------
# Refusals and validation
# --------------------------------------------------------------------------------------------------

def _q_params(prefix, scale, zp, dtype=np.uint8):
    return {f"{prefix}_scale": np.array(scale, np.float32), f"{prefix}_zp": np.array(zp, dtype)}


def test_unsupported_com_microsoft_op_is_named():
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q"),
             helper.make_node("QLinearReduceMean", ["xq", "x_scale", "x_zp", "y_scale", "y_zp"],
                              ["yq"], name="sig", domain="com.microsoft"),
             helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["y"], name="dq")]
    inits = {**_q_params("x", 0.02, 128), **_q_params("y", 1 / 256, 0)}
    model = make_model(nodes, [("x", ["N", 4])], [("y", ["N", 4])], inits,
                       extra_opsets=[("com.microsoft", 1)], check=False)
    with pytest.raises(UnsupportedModelError) as err:
        zeroskip.import_onnx(model)
    assert "com.microsoft.QLinearReduceMean ×1 (first: 'sig')" in str(err.value)


@pytest.mark.parametrize("bad", [0.0, float("nan"), -1.0, float("inf")])
@pytest.mark.parametrize("tensor", ["x_scale", "w1_scale"])
def test_bad_scales_are_refused_naming_the_tensor(bad, tensor):
    model = onnx.ModelProto.FromString(quantized("cnn", "qoperator", "uint8", True)
                                       .SerializeToString())
    init = next(t for t in model.graph.initializer if t.name == tensor)
    array = numpy_helper.to_array(init).copy()
    array.reshape(-1)[0] = bad
    init.CopyFrom(numpy_helper.from_array(array.astype(np.float32), tensor))
    with pytest.raises(ModelFormatError, match=repr(tensor)):
        zeroskip.import_onnx(model)


def _qlinear_matmul(w, w_scale, w_zp, k, a_dtype=np.uint8):
    nodes = [helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zp"], ["xq"], name="q"),
             helper.make_node("QLinearMatMul", ["xq", "a_scale", "a_zp", "w", "w_scale", "w_zp",
                                                "y_scale", "y_zp"], ["yq"], name="mm"),
             helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["y"], name="dq")]
    inits = {**_q_params("a", 0.02, 128 if a_dtype == np.uint8 else 0, a_dtype),
             **_q_params("y", 0.5, 128), "w": w, "w_scale": np.asarray(w_scale, np.float32),
             "w_zp": np.asarray(w_zp, w.dtype)}
    return make_model(nodes, [("x", ["N", k])], [("y", ["N", w.shape[1]])], inits)


def test_int32_accumulator_bound_is_checked():
    k = 67_000
    w = np.ones((k, 2), np.int8)
    with pytest.raises(UnsupportedModelError, match="'mm'.*accumulator"):
        zeroskip.import_onnx(_qlinear_matmul(w, [0.01, 0.01], [0, 0], k))
    zeroskip.import_onnx(_qlinear_matmul(w[:60_000], [0.01, 0.01], [0, 0], 60_000))


def test_uint8_weights_convert_exactly_or_are_requantized():
    rng = np.random.default_rng(0)
    k = 24
    x = rng.standard_normal((50, k)).astype(np.float32)
    # zero point 128 and values in [0, 255]: q − 128 is in [−128, 127], exact (the kernels take −128)
    exact = rng.integers(0, 256, (k, 3)).astype(np.uint8)
    exact[0] = 0
    model = _qlinear_matmul(exact, [0.01, 0.02, 0.03], [128, 128, 128], k)
    imported = zeroskip.import_onnx(model)
    meta = imported.metadata["weights"]["w"]
    assert "requantized" not in meta
    w = imported.graph.initializers["w"]
    np.testing.assert_array_equal(w.to_numpy(), (exact.astype(int) - 128).T)
    got = zeroskip.Session(imported).run({"x": x})["y"]
    np.testing.assert_allclose(got, run_ort(model, {"x": x})["y"], atol=0.5 * 1.0001)
    # zero point 0 and values up to 255: re-quantized to symmetric int8, and recorded
    wide = rng.integers(0, 256, (k, 3)).astype(np.uint8)
    imported = zeroskip.import_onnx(_qlinear_matmul(wide, [0.01, 0.01, 0.01], [0, 0, 0], k))
    assert imported.metadata["weights"]["w"]["requantized"] is True
    w = imported.graph.initializers["w"]
    np.testing.assert_allclose(w.dequantize(), wide.T * 0.01, atol=w.quant.scale.max() / 2 + 1e-7)


def test_int8_weights_holding_minus_128_are_kept_exactly():
    """Weights reaching a kernel may be anything in [−128, 127] (docs/quantization.md §1), so an
    imported −128 is kept, not re-quantized. Judged by onnx's ReferenceEvaluator: onnxruntime's x86
    u8·s8 kernels may saturate on full-range int8 weights (quantization.md §7)."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(4)
    k = 24
    w = rng.integers(-128, 128, (k, 3)).astype(np.int8)
    w[0] = -128
    model = _qlinear_matmul(w, [0.01, 0.02, 0.03], [0, 0, 0], k)
    imported = zeroskip.import_onnx(model)
    assert "requantized" not in imported.metadata["weights"]["w"]
    np.testing.assert_array_equal(imported.graph.initializers["w"].to_numpy(), w.T)
    x = rng.standard_normal((50, k)).astype(np.float32)
    judged = onnx.ModelProto.FromString(model.SerializeToString())
    judged.opset_import[0].version = 19  # the evaluator's oldest QuantizeLinear (same meaning here)
    want = ReferenceEvaluator(judged).run(None, {"x": x})[0]
    for mode in ("dense-i8", "sparse-i8"):
        got = zeroskip.Session(imported, mode=mode).run({"x": x})["y"]
        np.testing.assert_allclose(got, want, atol=0.5 * 1.0001, err_msg=mode)  # one step: ties


def test_qdq_float_bias_is_quantized_at_x_scale_times_w_scale():
    rng = np.random.default_rng(1)
    wq = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xf"], name="dqx"),
             helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zp"], ["wf"], name="dqw",
                              axis=0),
             helper.make_node("Conv", ["xf", "wf", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", "y_scale", "y_zp"], ["yq"], name="qy"),
             helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["y"], name="dqy")]
    inits = {**_q_params("x", 0.03, 120), **_q_params("y", 0.05, 10), "wq": wq,
             "w_scale": np.array([0.01, 0.02, 0.005, 0.0], np.float32) + np.float32(0.001),
             "w_zp": np.zeros(4, np.int8), "b": np.array([0.1, -0.2, 0.05, 1.0], np.float32)}
    model = make_model(nodes, [("x", ["N", 3, 5, 5])], [("y", ["N", 4, 5, 5])], inits)
    imported = zeroskip.import_onnx(model)
    assert [n.op for n in imported.graph.nodes] == ["QuantizeLinear", "QConv", "DequantizeLinear"]
    conv = imported.graph.nodes[1]
    assert conv.attrs["clip_min"] == 0.0  # the explicit Relu is fused as the clamp
    b = imported.graph.initializers[conv.inputs[2]]
    assert b.dtype == np.int32
    np.testing.assert_allclose(b.dequantize(), inits["b"], atol=np.max(b.quant.scale) / 2 + 1e-9)
    x = calibration((3, 5, 5), 40, seed=2)
    want, got = run_ort(model, {"x": x})["y"], zeroskip.Session(imported).run({"x": x})["y"]
    assert np.max(np.abs(want - got)) <= 1.0001 * 0.05  # one step: the bias's own rounding


def test_unfusable_float_ops_stay_float_between_q_and_dq():
    """DQ -> Sigmoid -> Q has no quantized IR op: it runs as DequantizeLinear, Sigmoid, Quantize."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xf"], name="dq"),
             helper.make_node("Sigmoid", ["xf"], ["s"], name="sig"),
             helper.make_node("QuantizeLinear", ["s", "y_scale", "y_zp"], ["yq"], name="qy"),
             helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["y"], name="dqy")]
    inits = {**_q_params("x", 0.02, 128), **_q_params("y", 1 / 256, 0)}
    model = make_model(nodes, [("x", ["N", 7])], [("y", ["N", 7])], inits)
    imported = zeroskip.import_onnx(model)
    assert [n.op for n in imported.graph.nodes] == ["QuantizeLinear", "DequantizeLinear", "Sigmoid",
                                                    "QuantizeLinear", "DequantizeLinear"]
    x = calibration((7,), 30, seed=4)
    want, got = run_ort(model, {"x": x})["y"], zeroskip.Session(imported).run({"x": x})["y"]
    assert np.max(np.abs(want - got)) <= 1.0001 / 256


def _ms_ops_model():
    """Conv -> LeakyRelu, Conv -> Sigmoid, Concat, Mul, GAP, Flatten, Gemm, Softmax: in QOperator
    form onnxruntime writes com.microsoft QLinearLeakyRelu/Sigmoid/Concat/Mul and QLinearSoftmax."""
    from onnx_builders import make_model, node, randn

    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             node("LeakyRelu", ["c1"], ["l1"], alpha=0.1),
             node("Conv", ["x", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             node("Sigmoid", ["c2"], ["s2"]),
             node("Concat", ["l1", "s2"], ["cat"], axis=1),
             node("Mul", ["cat", "cat"], ["sq"]),
             node("GlobalAveragePool", ["sq"], ["g"]), node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "w3", "b3"], ["z"], transB=1), node("Softmax", ["z"], ["y"], axis=-1)]
    inits = {"w1": randn((4, 3, 3, 3), 1, 0.3), "b1": randn(4, 2, 0.1),
             "w2": randn((4, 3, 3, 3), 3, 0.3), "b2": randn(4, 4, 0.1),
             "w3": randn((6, 8), 5, 0.5), "b3": randn(6, 6, 0.1)}
    return make_model(nodes, [("x", ["N", 3, 6, 6])], [("y", ["N", 6])], inits)


@pytest.mark.parametrize("activation", ["uint8", "int8"])
def test_com_microsoft_float_ops_run_as_dequantize_op_quantize(activation):
    import logging

    logging.disable(logging.WARNING)
    try:
        q = quantize(_ms_ops_model(), "qoperator", activation, True, "x", (3, 6, 6))
    finally:
        logging.disable(logging.NOTSET)
    domains = {(n.domain, n.op_type) for n in q.graph.node}
    assert {("com.microsoft", op) for op in ("QLinearLeakyRelu", "QLinearSigmoid", "QLinearConcat",
                                             "QLinearMul", "QLinearSoftmax")} <= domains
    model = zeroskip.import_onnx(q)
    ops = [n.op for n in model.graph.nodes]
    for op in ("LeakyRelu", "Sigmoid", "Concat", "Mul", "Softmax"):
        assert op in ops
    x = calibration((3, 6, 6), 40, seed=3)
    want = run_ort(q, {"x": x})["y"]
    step = float(model.graph.nodes[-1].attrs["x_scale"])
    for mode in ("reference", "dense-i8", "sparse-i8"):
        got = zeroskip.Session(model, mode=mode).run({"x": x})["y"]
        assert np.abs(got - want).max() <= 2 * step + 1e-7, mode
