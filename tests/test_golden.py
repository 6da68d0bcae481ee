"""Golden files: two tiny models in tests/data whose expected outputs were computed once, outside
the code under test, by tests/data/make_golden.py (plain NumPy and exact rationals), and stored.
Every mode must keep giving them, and the files must keep loading and saving to the same bytes.

- golden_cnn (float: Conv, MaxPool, a CSR-stored pruned Conv, GlobalAveragePool, Gemm): every mode
  that runs a float model (reference, dense-f32, sparse-f32, auto) lies within the float32 bound of
  the float64 oracle ``y64``, ``(K + 2)·2⁻²⁴·magnitude`` (tests/kernel_checks.py), with K every
  rounding on the way through the network and ``magnitude`` what each layer's Σ|w·x| + |b| weighs at
  the output (make_golden.py's ``Bounded``).
- golden_int8 (QDQ: QuantizeLinear, QConv, depthwise QConv, QAdd, QMaxPool, a CSR-stored pruned
  QConv, QGlobalAveragePool, QGemm, DequantizeLinear):
  - dense-i8, sparse-i8 and auto equal the integer scheme of docs/quantization.md (``yq``, ``y``)
    **bit for bit**;
  - reference (the float reference: dequantize, float64, quantize rounding half to even) equals the
    same arithmetic rounded half to even (``yq_even``, ``y_even``) bit for bit: with power-of-two
    activation scales float64 computes every value before a rounding exactly, so only the rounding
    rule at exact ties separates it from the integer scheme (the QAdd meets ties, and they reach the
    outputs);
  - dense-f32 and sparse-f32 (weights dequantized, activations real, outputs clamped to their 8-bit
    range) lie within the float32 bound of ``y_real``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import zeroskip
from zeroskip.formats.zsk import dumps, loads

from kernel_checks import assert_exact, assert_f32_close

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
FLOAT_MODES = ("reference", "dense-f32", "sparse-f32", "auto")
INT8_MODES = ("dense-i8", "sparse-i8", "auto")
INT8_OPS = ["QuantizeLinear", "QConv", "QConv", "QAdd", "QMaxPool", "QConv", "QGlobalAveragePool",
            "Flatten", "QGemm", "DequantizeLinear"]


def golden(name):
    """(model loaded with every CRC and CSR checked, expected arrays) of tests/data/golden_<name>."""
    model = zeroskip.load(os.path.join(DATA, f"golden_{name}.zsk"), verify="eager")
    with np.load(os.path.join(DATA, f"golden_{name}_expected.npz")) as arrays:
        return model, dict(arrays)


def assert_within_f32_bound(got, want, expected, **context):
    assert_f32_close(got, want, K=int(expected["K"]), magnitude=expected["magnitude"], **context)


# -- the float CNN ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", FLOAT_MODES)
def test_float_golden_in_every_float_mode(mode):
    model, expected = golden("cnn")
    got = zeroskip.Session(model, mode=mode).run({"x": expected["x"]})
    assert list(got) == ["y"]
    assert_within_f32_bound(got["y"], expected["y64"], expected, file="golden_cnn", mode=mode)


def test_float_golden_holds_both_layouts_and_onnxruntime_agrees_with_the_oracle():
    model, expected = golden("cnn")
    assert {t.layout for t in model.graph.initializers.values()} == {"dense", "csr"}
    assert "y" in expected  # onnxruntime's float32 output, recorded when the file was written
    assert_within_f32_bound(expected["y"], expected["y64"], expected, file="golden_cnn",
                            source="onnxruntime")


# -- the int8 CNN -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", INT8_MODES)
def test_int8_golden_is_exact_in_the_integer_modes(mode):
    model, expected = golden("int8")
    got = zeroskip.Session(model, mode=mode).run({"x": expected["x"]})
    assert list(got) == ["y", "yq"]
    assert_exact(got["yq"], expected["yq"], dtype=np.int8, file="golden_int8", mode=mode,
                 half_to_even_would_give=expected["yq_even"].tolist())
    assert got["y"].dtype == np.float32
    np.testing.assert_array_equal(got["y"], expected["y"], err_msg=mode, strict=True)


def test_int8_golden_reference_mode_is_the_half_to_even_twin_exactly():
    model, expected = golden("int8")
    got = zeroskip.Session(model, mode="reference").run({"x": expected["x"]})
    assert_exact(got["yq"], expected["yq_even"], dtype=np.int8, file="golden_int8",
                 mode="reference")
    np.testing.assert_array_equal(got["y"], expected["y_even"], strict=True)


@pytest.mark.parametrize("mode", ["dense-f32", "sparse-f32"])
def test_int8_golden_float_modes_within_the_f32_bound(mode):
    model, expected = golden("int8")
    got = zeroskip.Session(model, mode=mode).run({"x": expected["x"]})
    for name in ("y", "yq"):  # an f32 mode gives integer outputs as their real values
        assert_within_f32_bound(got[name], expected["y_real"], expected, file="golden_int8",
                                mode=mode, output=name)


def test_int8_golden_covers_what_it_claims():
    """The file touches the kernels it was made for, and its expected outputs can tell a rounding rule
    or a saturation apart."""
    model, expected = golden("int8")
    assert [n.op for n in model.graph.nodes] == INT8_OPS
    init = model.graph.initializers
    assert init["conv3.w"].layout == "csr" and init["conv1.w"].layout == "dense"
    assert init["conv1.w"].to_numpy().min() == -128  # the full int8 range reaches the kernels
    kernels = {row["node"]: row["kernel"] for row in zeroskip.Session(model, "sparse-i8").explain()}
    # the sparse kernel: the direct CSR conv, or on AVX-512 VNNI CPUs the quad-sparse conv
    assert kernels["conv3.y"] in ("conv2d_csr_rq_i8", "conv2d_quad_rq_i8")
    assert "depthwise" in kernels["dw.y"]
    assert expected["ties"].sum() > 0  # exact ties met on the way ...
    assert np.any(expected["yq"] != expected["yq_even"])  # ... and visible at the outputs
    assert np.any(expected["yq"] == 127)  # the last output saturates
    # onnxruntime, graph optimizations off, runs the QDQ graph in float32 and rounds half to
    # even: equal to the half-to-even twin except where float32 lands a tie on either side
    assert "yq_ort" in expected  # recorded when the file was written
    steps = np.abs(expected["yq_ort"].astype(np.int64) - expected["yq_even"])
    assert steps.max() <= 1, steps


def test_int8_golden_expected_outputs_are_the_generators():
    """The stored arrays are what make_golden.py's oracle computes (it uses no zeroskip code)."""
    pytest.importorskip("onnx")
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_golden", os.path.join(DATA, "make_golden.py"))
    make_golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_golden)
    _, expected = golden("int8")
    x = make_golden.int8_input()
    np.testing.assert_array_equal(expected["x"], x)
    for key, rounding in (("yq", make_golden.half_away), ("yq_even", make_golden.half_even)):
        yq, _ = make_golden.run_int8(x, rounding)
        np.testing.assert_array_equal(expected[key], yq, err_msg=key)
    real = make_golden.run_int8_real(x)
    np.testing.assert_allclose(expected["y_real"], real.value, rtol=1e-12)
    np.testing.assert_allclose(expected["magnitude"], real.error / make_golden.INT8_K, rtol=1e-12)


# -- the files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cnn", "int8"])
def test_golden_file_saves_back_to_the_same_bytes(name, tmp_path):
    path = os.path.join(DATA, f"golden_{name}.zsk")
    with open(path, "rb") as f:
        data = f.read()
    zeroskip.save(zeroskip.load(path), tmp_path / "again.zsk")
    assert (tmp_path / "again.zsk").read_bytes() == data
    assert dumps(loads(data, verify="eager")) == data


def test_auto_names_the_sparse_kernel_it_measured(monkeypatch, tmp_path):
    """auto's reason names the sparse kernel it timed against dense: the quad conv as "BSR 1×4"
    (on AVX-512 VNNI CPUs), the direct conv as "CSR"; never CSR for a layer that runs quads."""
    from zeroskip.engine import tuning

    monkeypatch.setenv("ZEROSKIP_CACHE_DIR", str(tmp_path))

    def fake_measure(node, tensors, x_shape, x_dtype, modes, step_in_mode, transposed=False,
                     serial_step_in_mode=None):
        return 1e-3, 0.25e-3  # sparse a clear win everywhere

    monkeypatch.setattr(tuning, "measure_layer", fake_measure)
    model, _ = golden("int8")
    row = {r["node"]: r for r in zeroskip.Session(model, "auto").explain()}["conv3.y"]
    quads = row["kernel"] == "conv2d_quad_rq_i8"
    assert row["kernel"] in ("conv2d_csr_rq_i8", "conv2d_quad_rq_i8"), row
    sparse = "BSR 1×4" if quads else "CSR"
    assert f"dense 1 ms, {sparse} 0.25 ms (density" in row["reason"], row
    assert f"): {sparse}; " in row["reason"], row
