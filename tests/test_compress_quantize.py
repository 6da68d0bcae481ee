"""Post-training quantization (``zeroskip.quantize``, ``compress.calibration``).

Zeros stay zero; all-zero channels; finite scales for every method; mse/entropy against minmax on
data with outliers; bounded calibration memory; prune -> quantize -> save -> load -> run, byte
identical in dense-i8, sparse-i8 and the integer reference; keep_float; the SQNR report; bad
arguments refused naming the argument, with the input model unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

import zeroskip
from zeroskip.compress import calibration as cal
from zeroskip.compress.calibration import METHODS, Observer, activation_params, fake_quantize, sqnr_db

import compress_models as cm
from test_compress_prune import _assert_unchanged, _snapshot

INT8_MODES = ("reference", "dense-i8", "sparse-i8", "auto")


def _quantize(model, method="minmax", activations="uint8", **kwargs):
    x = cm.feeds(model, count=96, seed=5)["x"]
    return zeroskip.quantize(model, x, method=method, activations=activations, progress=False,
                             **kwargs)


def _int8_weights(q):
    return {k: t for k, t in q.graph.initializers.items() if t.dtype == np.int8}


def _scales(q):
    """Every activation scale and zero point the quantized graph carries."""
    found = []
    for node in q.graph.nodes:
        for prefix in ("x", "y", "a", "b"):
            if f"{prefix}_scale" in node.attrs:
                found.append((node.name, node.attrs[f"{prefix}_scale"],
                              node.attrs[f"{prefix}_zero_point"]))
    return found


@pytest.mark.parametrize("name", sorted(cm.MODELS))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_every_method_gives_finite_scales_and_exact_int8_modes(name, method, activations):
    model = cm.MODELS[name]()
    before = _snapshot(model)
    q = _quantize(model, method, activations)
    _assert_unchanged(model, before)
    low, high = cal.ACTIVATIONS[activations]
    assert _scales(q)
    for node, scale, zp in _scales(q):
        assert np.isfinite(scale) and scale > 0, node
        assert low <= zp <= high, node
    for t in _int8_weights(q).values():
        assert np.all(np.isfinite(t.quant.scale)) and np.all(t.quant.scale > 0)
        assert np.all(t.quant.zero_point == 0)
        assert t.to_numpy().min() >= -127
    feeds = cm.feeds(model, count=8, seed=11)
    got = {mode: zeroskip.Session(q, mode).run(feeds)["y"] for mode in INT8_MODES}
    for mode in INT8_MODES[1:]:
        assert np.array_equal(got[mode], got["reference"]), mode
    want = zeroskip.Session(model, "dense-f32").run(feeds)["y"]
    assert sqnr_db(want, got["dense-i8"]) > 20  # int8 is close to float on these small models
    assert q.metadata["quantization"]["method"] == method


def test_float_zeros_stay_zero_and_an_all_zero_channel_is_safe():
    model = zeroskip.prune(cm.cnn(), 0.8)
    c2 = model.graph.initializers["c2.w"].to_numpy().copy()
    c2[3] = 0  # a channel that pruning emptied
    model.graph.initializers["c2.w"] = zeroskip.Dense(c2)
    q = _quantize(model)
    node_of = {n.name: n for n in q.graph.nodes}
    for layer in ("c1", "c2", "dw", "pw", "fc"):
        w_int = q.graph.initializers[node_of[layer].inputs[1]]
        w_float = model.graph.initializers[f"{layer}.w"].to_numpy()  # fc: transB=1, (N, K)
        np.testing.assert_array_equal(w_int.to_numpy() == 0, w_float == 0, err_msg=layer)
    scale = q.graph.initializers[node_of["c2"].inputs[1]].quant.scale
    assert scale[3] == 1.0 and np.all(np.isfinite(scale))
    assert np.all(q.graph.initializers[node_of["c2"].inputs[1]].to_numpy()[3] == 0)
    zeroskip.Session(q, "sparse-i8").run(cm.feeds(model, 4))


def test_prune_quantize_save_load_runs_byte_identical_in_every_int8_mode(tmp_path):
    model = cm.cnn()
    pruned = zeroskip.prune(model, 0.9, scope="layer")
    q = _quantize(pruned, "entropy")
    zeroskip.save(q, tmp_path / "q.zsk")
    loaded = zeroskip.load(tmp_path / "q.zsk")
    feeds = cm.feeds(model, count=5, seed=21)
    want = zeroskip.Session(q, "reference").run(feeds)["y"]
    for mode in INT8_MODES:
        got = zeroskip.Session(loaded, mode).run(feeds)["y"]
        assert np.array_equal(got, want), mode
    meta = loaded.metadata
    assert meta["pruning"]["scope"] == "layer" and meta["quantization"]["method"] == "entropy"
    # the 90 %-pruned int8 weights are stored as CSR, and the file records how each was made
    assert loaded.graph.initializers[node_weight(loaded, "c2")].layout == "csr"
    for name, t in _int8_weights(loaded).items():
        if t.size >= 512:  # smaller ones tie with dense once buffers are padded to 64 bytes
            assert t.layout == "csr", name
        assert meta["weights"][name]["calibration"] == "entropy"
        assert meta["weights"][name]["sparsity"] >= 0.85
    # saving is deterministic
    zeroskip.save(loaded, tmp_path / "again.zsk")
    assert (tmp_path / "again.zsk").read_bytes() == (tmp_path / "q.zsk").read_bytes()


def node_weight(model, node_name):
    return next(n for n in model.graph.nodes if n.name == node_name).inputs[1]


def test_activations_are_fused_and_integers_pass_through_shape_ops():
    q = _quantize(cm.cnn())
    ops = [n.op for n in q.graph.nodes]
    assert ops == ["QuantizeLinear", "QConv", "QConv", "QConv", "QConv", "QMaxPool", "Flatten",
                   "QGemm", "DequantizeLinear"]
    node_of = {n.name: n for n in q.graph.nodes}
    assert node_of["c1"].attrs["clip_min"] == 0.0  # the ReLU, in the conv's clamp
    assert node_of["fc"].attrs["clip_min"] is None
    assert q.graph.outputs[0].name == "y" and q.graph.outputs[0].dtype == "float32"
    # the MatMul's bias Add is folded into its QGemm
    q = _quantize(cm.mlp())
    assert [n.op for n in q.graph.nodes] == ["QuantizeLinear", "QGemm", "QGemm", "QGemm",
                                             "DequantizeLinear"]
    m2 = next(n for n in q.graph.nodes if n.name == "m2")
    assert len(m2.inputs) == 3 and q.graph.initializers[m2.inputs[2]].dtype == np.int32


@pytest.mark.parametrize("keepdims", [1, 0])
def test_a_spatial_reduce_mean_becomes_an_integer_global_average_pool(keepdims):
    model = cm.reduce_mean(keepdims)
    q = _quantize(model)
    ops = [n.op for n in q.graph.nodes]
    want = ["QuantizeLinear", "QConv", "QGlobalAveragePool"] + (["Flatten"] if keepdims else
                                                                ["Squeeze"]) + ["QGemm",
                                                                                "DequantizeLinear"]
    assert ops == want
    assert "mean" in {r["node"] for r in q.metadata["quantization"]["layers"]}
    feeds = cm.feeds(model, count=8)
    got = {mode: zeroskip.Session(q, mode).run(feeds)["y"] for mode in INT8_MODES}
    for mode in INT8_MODES[1:]:
        assert np.array_equal(got[mode], got["reference"]), mode
    assert sqnr_db(zeroskip.Session(model, "dense-f32").run(feeds)["y"], got["dense-i8"]) > 25


def test_keep_float_leaves_layers_in_float_with_quantize_dequantize_at_the_edges():
    model = cm.cnn()
    q = _quantize(model, keep_float=("c2", "fc"))
    ops = {n.name: n.op for n in q.graph.nodes}
    assert ops["c2"] == "Conv" and ops["fc"] == "Gemm"
    assert ops["c1"] == "QConv" and ops["pw"] == "QConv"
    assert "DequantizeLinear" in ops.values() and list(ops.values()).count("QuantizeLinear") == 2
    assert q.metadata["quantization"]["keep_float"] == ["c2", "fc"]
    feeds = cm.feeds(model, count=8, seed=2)
    want = zeroskip.Session(model, "dense-f32").run(feeds)["y"]
    got = {mode: zeroskip.Session(q, mode).run(feeds)["y"] for mode in INT8_MODES}
    for mode in INT8_MODES[1:]:
        np.testing.assert_allclose(got[mode], got["reference"], rtol=1e-5, atol=1e-5)
    assert sqnr_db(want, got["dense-i8"]) > 20
    q = _quantize(model, keep_float="Conv")
    assert all(n.op != "QConv" for n in q.graph.nodes) and any(n.op == "QGemm"
                                                                for n in q.graph.nodes)


def test_report_gives_every_layer_its_sqnr_worst_first():
    model = cm.residual()
    q = _quantize(model)
    rows = q.metadata["quantization"]["layers"]
    assert {r["node"] for r in rows} == {"a", "b", "add", "gap", "fc"}
    values = [r["sqnr_db"] for r in rows]
    assert values == sorted(values)
    assert all(10 < v < 80 for v in values)
    # the report's figure is the SQNR of the dequantized int8 output against the float output
    feeds = {"x": cm.feeds(model, count=96, seed=5)["x"][:cal_rows()]}
    fc = next(r for r in rows if r["node"] == "fc")
    want = zeroskip.Session(model, "dense-f32").run(feeds)["y"]
    got = zeroskip.Session(q, "dense-i8").run(feeds)["y"]
    assert fc["sqnr_db"] == pytest.approx(sqnr_db(want, got), abs=0.01)


def cal_rows():
    from zeroskip.compress.quantization import REPORT_ROWS

    return REPORT_ROWS


def test_calibration_takes_arrays_feed_dicts_and_one_shot_iterators():
    model = cm.mlp()
    x = cm.feeds(model, count=100, seed=5)["x"]
    a = zeroskip.quantize(model, x, progress=False)
    b = zeroskip.quantize(model, iter([x[:50], {"x": x[50:]}]), progress=False)
    c = zeroskip.quantize(model, (x[i:i + 1] for i in range(100)), progress=False)
    # minmax sees the same values however batched (up to the float GEMM's rounding per batch size)
    for sa, sb, sc in zip(_scales(a), _scales(b), _scales(c)):
        assert sa[0] == sb[0] == sc[0] and sa[2] == sb[2] == sc[2]
        assert sb[1] == pytest.approx(sa[1], rel=1e-5) and sc[1] == pytest.approx(sa[1], rel=1e-5)
    assert a.metadata["quantization"]["calibration_batches"] == 4  # 100 rows in batches of 32
    assert c.metadata["quantization"]["calibration_batches"] == 100
    assert a.metadata["quantization"]["calibration_rows"] == c.metadata["quantization"][
        "calibration_rows"] == 100
    assert c.metadata["quantization"]["report_rows"] == cal_rows()


def _heavy_tailed(seed=0, size=1_000_000, outliers=1):
    """Laplace values (activations are heavy-tailed) with rare extreme outliers at 40 (the
    largest Laplace value of a million is about 14): they stretch min-max's step for every other
    value, and cost little to clip."""
    rng = np.random.default_rng(seed)
    x = rng.laplace(size=size)
    x[rng.choice(size, outliers, replace=False)] = 40.0
    return x


@pytest.mark.parametrize("seed", range(3))
def test_mse_and_entropy_beat_minmax_on_data_with_outliers(seed):
    x = _heavy_tailed(seed)
    observer = Observer()
    for chunk in np.array_split(x, 40):
        observer.update(chunk)
    quality = {}
    for method in METHODS:
        scale, zp = activation_params(*observer.range(method), "uint8")
        quality[method] = sqnr_db(x, fake_quantize(x, scale, zp, "uint8"))
    assert quality["mse"] >= quality["minmax"] + 2.0, quality
    assert quality["entropy"] >= quality["minmax"] + 2.0, quality
    assert quality["percentile"] >= quality["minmax"] + 2.0, quality
    lo, hi = observer.range("minmax")
    assert (lo, hi) == (x.min(), x.max())


def test_mse_and_entropy_beat_minmax_through_a_model():
    """An MLP whose input has outliers: its input quantizer is what calibration decides."""
    model = cm.mlp()
    x = _heavy_tailed(1, size=40_000 * 20, outliers=2).reshape(40_000, 20).astype(np.float32)
    test = {"x": x[:2000]}
    want = zeroskip.Session(model, "dense-f32").run(test)["y"]
    quality = {}
    for method in ("minmax", "mse", "entropy"):
        q = zeroskip.quantize(model, x, method=method, progress=False)
        quality[method] = sqnr_db(want, zeroskip.Session(q, "dense-i8").run(test)["y"])
    assert quality["mse"] > quality["minmax"] and quality["entropy"] > quality["minmax"], quality


def test_observer_memory_is_bounded_and_its_histogram_exact_after_doubling():
    rng = np.random.default_rng(4)
    observer = Observer()
    seen = []
    for i in range(1000):
        batch = rng.standard_normal(50) * (1.02 ** i)  # the range keeps growing
        observer.update(batch)
        seen.append(batch)
    assert observer.hist.shape == (cal.BINS,) and observer.hist.dtype == np.int64
    values = np.concatenate(seen)
    assert observer.count == values.size == observer.hist.sum()
    assert observer.radius >= np.abs(values).max()
    direct = np.bincount(observer._index(values), minlength=cal.BINS)
    np.testing.assert_array_equal(observer.hist, direct)
    assert observer.min == values.min() and observer.max == values.max()


def test_observer_of_zeros_and_of_one_sided_values():
    observer = Observer()
    observer.update(np.zeros(10))
    assert observer.range("entropy") == (0.0, 0.0)
    assert activation_params(0.0, 0.0, "uint8") == (1.0, 0)
    observer.update(np.array([0.5, 2.0]))
    assert observer.hist.sum() == 12
    for method in METHODS:
        lo, hi = observer.range(method)
        assert lo == 0.0 and 0.0 < hi <= 2.0, method
    scale, zp = activation_params(-1.0, 3.0, "int8")
    assert zp == round(-128 + 1.0 / scale) and np.isclose(scale, 4.0 / 255)
    assert fake_quantize(0.0, scale, zp, "int8") == 0.0  # zero is exact


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(method="kl"), r"method='kl'"),
    (dict(activations="int4"), r"activations='int4'"),
    (dict(percentile=40), r"percentile=40"),
    (dict(percentile="high"), r"percentile='high'"),
    (dict(keep_float=("nope",)), r"keep_float='nope'"),
    (dict(calibration=[]), r"calibration: has no batches"),
    (dict(calibration=np.zeros((0, 20), np.float32)), r"calibration batch 0: is empty"),
    (dict(calibration=np.full((4, 20), np.nan, np.float32)), r"batch 0: input 'x' has NaN"),
    (dict(calibration=np.zeros((4, 21), np.float32)), r"calibration batch 0: .*x"),
    (dict(calibration=[{"z": np.zeros((4, 20), np.float32)}]), r"calibration batch 0"),
    (dict(calibration=5), r"calibration: expected an array"),
    (dict(keep_float=("Gemm", "MatMul")), r"no Conv, Gemm or MatMul"),
])
def test_bad_arguments_name_the_argument_and_leave_the_model_alone(kwargs, pattern):
    model = cm.mlp()
    before = _snapshot(model)
    kwargs = dict(dict(calibration=cm.feeds(model)["x"], progress=False), **kwargs)
    with pytest.raises(zeroskip.CompressionError, match=pattern):
        zeroskip.quantize(model, **kwargs)
    _assert_unchanged(model, before)


def test_a_quantized_model_is_refused():
    q = _quantize(cm.mlp())
    with pytest.raises(zeroskip.CompressionError, match="already quantized"):
        _quantize(q)
