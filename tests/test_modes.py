"""Every execution mode on whole models and single ops, against onnxruntime.

Float modes (dense-f32, sparse-f32) compute in float32: the tolerance grows with the longest
reduction in the model (K) as ``atol = K·2⁻²⁴·32·scale`` on top of rtol 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

import zeroskip

from onnx_builders import assert_close, run_ort
from test_oracle import CASES

from zeroskip.engine.plan.f32_dense import KERNEL_NAME as DENSE_GEMM  # beside CSR steps

FLOAT_MODES = ["dense-f32", "sparse-f32"]


def _longest_reduction(model) -> int:
    k = 1
    for tensor in model.graph.initializers.values():
        if len(tensor.shape) >= 2:
            k = max(k, int(np.prod(tensor.shape[1:])), int(tensor.shape[0]))
    return k


@pytest.mark.parametrize("mode", FLOAT_MODES)
@pytest.mark.parametrize("name", list(CASES))
def test_float_modes_match_onnxruntime(name, mode):
    onnx_model, feeds_list = CASES[name]()
    model = zeroskip.import_onnx(onnx_model)
    session = zeroskip.Session(model, mode=mode)
    k = _longest_reduction(model)
    for feeds in feeds_list:
        want = run_ort(onnx_model, feeds)
        scale = max(1.0, max(float(np.abs(v).max()) if v.size and v.dtype.kind == "f" else 1.0
                             for v in want.values()))
        assert_close(want, session.run(feeds), rtol=1e-4, atol=1e-5 + k * 2.0 ** -24 * 32 * scale,
                     context=f"{name} {mode}")


def test_int8_mode_on_a_float_model_says_to_quantize():
    onnx_model, _ = CASES["model_torch_mlp_gemm"]() if "model_torch_mlp_gemm" in CASES else \
        next(v for k, v in CASES.items() if k.startswith("model_"))()
    model = zeroskip.import_onnx(onnx_model)
    for mode in ("dense-i8", "sparse-i8"):
        with pytest.raises(zeroskip.UnsupportedModelError, match="quantize it first"):
            zeroskip.Session(model, mode=mode)


@pytest.mark.parametrize("mode", ["reference"] + FLOAT_MODES)
def test_explain_has_one_row_per_node(mode):
    onnx_model, _ = next(v for k, v in CASES.items() if k.startswith("model_torch_cnn"))()
    model = zeroskip.import_onnx(onnx_model)
    rows = zeroskip.Session(model, mode=mode).explain()
    assert len(rows) >= 1 and all(set(r) == {"node", "op", "density", "kernel", "reason"} for r in rows)
    conv = next(r for r in rows if r["op"] == "Conv")
    assert 0.0 <= conv["density"] <= 1.0 and conv["kernel"] and conv["reason"]


# --------------------------------------------------------------------------------------------------
# int8 models made by onnxruntime's quantizer: every mode, against onnxruntime
# --------------------------------------------------------------------------------------------------

import functools  # noqa: E402
import logging  # noqa: E402

from quant_builders import FLOAT_MODELS, calibration, quantize  # noqa: E402

QUANT_CASES = [(name, fmt, act) for name in FLOAT_MODELS for fmt in ("qdq", "qoperator")
               for act in ("uint8", "int8")]


@functools.lru_cache(maxsize=None)
def _quantized(name, fmt, act):
    logging.disable(logging.WARNING)  # the quantizer's advice on reduce_range, calibration...
    try:
        model, input_name, shape = FLOAT_MODELS[name]()
        q = quantize(model, fmt, act, True, input_name, shape)
    finally:
        logging.disable(logging.NOTSET)
    x = calibration(shape, 48, seed=11)
    want = run_ort(q, {input_name: x})
    return q, zeroskip.import_onnx(q), input_name, x, want


def _output_step(model) -> float:
    last = model.graph.nodes[-1]
    assert last.op == "DequantizeLinear", last.op
    return float(last.attrs["x_scale"])


@pytest.mark.parametrize("mode", ["reference", "dense-i8", "sparse-i8"])
@pytest.mark.parametrize("case", QUANT_CASES, ids=["-".join(c) for c in QUANT_CASES])
def test_int8_modes_within_two_steps_of_onnxruntime(case, mode):
    _, model, input_name, x, want = _quantized(*case)
    got = zeroskip.Session(model, mode=mode).run({input_name: x})
    (key, expected), = want.items()
    step = _output_step(model)
    steps = np.abs(got[key].astype(np.float64) - expected) / step
    assert steps.max() <= 2 + 1e-6, f"{case} {mode}: {steps.max():.2f} steps"
    off = np.count_nonzero(steps > 0.5) / steps.size
    assert off <= 0.05, f"{case} {mode}: {off:.1%} of outputs differ from onnxruntime"
    top1 = np.mean(got[key].argmax(-1) == expected.argmax(-1))
    assert top1 >= 0.9, f"{case} {mode}: top-1 agreement {top1:.1%}"


@pytest.mark.parametrize("case", QUANT_CASES[:4], ids=["-".join(c) for c in QUANT_CASES[:4]])
def test_int8_kernels_agree_with_each_other(case):
    """dense-i8 and sparse-i8 run the same integer arithmetic: identical outputs."""
    _, model, input_name, x, _ = _quantized(*case)
    dense = zeroskip.Session(model, mode="dense-i8").run({input_name: x})
    sparse = zeroskip.Session(model, mode="sparse-i8").run({input_name: x})
    for key in dense:
        assert np.array_equal(dense[key], sparse[key])


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_pointwise_convs_take_their_input_as_the_rows(fmt):
    """A 1×1 stride-1 int8 conv in dense-i8 runs its GEMM on the channels-last copy of its input,
    with no im2row (where AVX-512 VNNI's tiles run: on its planar input, packed straight into
    their words), and in sparse-i8 the requantizing CSR GEMM on its planar input, with no padded
    planes (an expand-shaped one the quad conv, where it runs); other convs keep their kernels
    (the AMX or VNNI conv, its taps gathered for the 3×3 over 3 channels); the outputs equal the
    reference mode's, exactly."""
    from zeroskip.kernels import _amx
    from zeroskip.kernels._cpu import HAS_AVX512_VNNI

    _, model, input_name, x, _ = _quantized("pointwise", fmt, "uint8")
    session = zeroskip.Session(model, mode="dense-i8")
    kernels = [row["kernel"] for row in session.explain() if row["op"] in ("QConv", "QLinearConv")]
    pointwise = [k for k in kernels if k == ("matmul_planar_rq_i8" if HAS_AVX512_VNNI else
                                             "channels_last_dense_i8 + matmul_dense_rq_i8")]
    assert len(pointwise) == 3 and len(kernels) == 5, kernels
    # the 3×3 conv over 3 channels (its taps gathered into the AMX or VNNI tile's rows) and the
    # 1×1 stride-2 conv (8 channels), which takes the lanes conv where AVX-512 VNNI runs without
    # AMX
    packed = kernels.count("conv2d_dense_rq_i8") + kernels.count("conv2d_lanes_rq_i8")
    assert packed == (2 if _amx.CONV_AVAILABLE else 0), kernels
    assert ("conv2d_lanes_rq_i8" in kernels) == (HAS_AVX512_VNNI and not _amx.AVAILABLE), kernels
    got = session.run({input_name: x})
    sparse = zeroskip.Session(model, mode="sparse-i8")
    kernels = [row["kernel"] for row in sparse.explain() if row["op"] in ("QConv", "QLinearConv")]
    # the 1×1 convs 16→32, 32→8, 16→8: an expand-shaped one (no fewer outputs than inputs) takes
    # the quad conv where AVX-512 VNNI runs it (QuadConv.fits)
    expand = "conv2d_quad_rq_i8" if HAS_AVX512_VNNI else "matmul_csr_rq_i8"
    assert kernels[1:4] == [expand, "matmul_csr_rq_i8", "matmul_csr_rq_i8"], kernels
    assert len(kernels) == 5, kernels
    for mode, other in (("reference", zeroskip.Session(model, mode="reference")), ("sparse-i8", sparse)):
        other = other.run({input_name: x})
        for key in got:
            assert np.array_equal(got[key], other[key]), mode


@pytest.mark.parametrize("mode", ["dense-f32", "sparse-f32", "dense-i8", "sparse-i8"])
def test_outputs_identical_for_one_and_two_threads(mode):
    _, model, input_name, x, _ = _quantized("residual", "qdq", "uint8")
    one = zeroskip.Session(model, mode=mode, threads=1).run({input_name: x})
    two = zeroskip.Session(model, mode=mode, threads=2).run({input_name: x})
    for key in one:
        assert one[key].tobytes() == two[key].tobytes()


@pytest.mark.parametrize("name", list(FLOAT_MODELS))
def test_float_modes_run_int8_models_with_their_saturation(name):
    """An f32 mode dequantizes the weights and keeps each op's output range (a dropped ReLU's work)."""
    _, model, input_name, x, want = _quantized(name, "qdq", "uint8")
    dense = zeroskip.Session(model, mode="dense-f32").run({input_name: x})
    sparse = zeroskip.Session(model, mode="sparse-f32").run({input_name: x})
    (key, expected), = want.items()
    np.testing.assert_allclose(dense[key], sparse[key], rtol=1e-4, atol=1e-4)
    # float activations differ from 8-bit ones by the activations' rounding: a few output steps
    assert np.abs(dense[key] - expected).max() <= 12 * _output_step(model)


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("model_")])
def test_auto_mode_on_float_models(name):
    onnx_model, feeds_list = CASES[name]()
    model = zeroskip.import_onnx(onnx_model)
    session = zeroskip.Session(model, mode="auto")
    k = _longest_reduction(model)
    for feeds in feeds_list:
        want = run_ort(onnx_model, feeds)
        assert_close(want, session.run(feeds), rtol=1e-4, atol=1e-5 + k * 2.0 ** -24 * 64,
                     context=f"{name} auto")
    weighted = [r for r in session.explain() if r["op"] in ("Conv", "Gemm") and r["kernel"] != "fused"]
    assert all("auto: measured on this layer" in r["reason"] or "break-even" in r["reason"]
               for r in weighted), weighted


@pytest.mark.parametrize("case", QUANT_CASES[::3], ids=["-".join(c) for c in QUANT_CASES[::3]])
def test_auto_mode_on_int8_models_runs_integer_kernels(case):
    _, model, input_name, x, _ = _quantized(*case)
    session = zeroskip.Session(model, mode="auto")
    rows = session.explain()
    assert any(r["kernel"].endswith("_rq_i8") for r in rows)  # requantized in an epilogue
    dense = zeroskip.Session(model, mode="dense-i8").run({input_name: x})
    got = session.run({input_name: x})
    for key in dense:  # auto only picks between kernels that compute the same integers
        assert np.array_equal(got[key], dense[key])


def test_auto_choice_follows_the_measured_table(monkeypatch):
    """A layer below the break-even density gets CSR, one above it the dense kernel."""
    from zeroskip.engine.plan.context import Choice, PlanContext

    monkeypatch.setattr(PlanContext, "choose_csr",
                        lambda self, density, shape_class, node=None: Choice(density < 0.5,
                                                                             f"test {density:.2f}"))
    from test_oracle import torch_mlp_gemm

    onnx_model, _ = torch_mlp_gemm(density=0.1)  # pruned first layers, a dense last one
    model = zeroskip.import_onnx(onnx_model)
    rows = [r for r in zeroskip.Session(model, mode="auto").explain() if r["op"] == "Gemm"]
    assert {r["density"] < 0.5 for r in rows} == {True, False}
    for row in rows:
        want = "matmul_csr_f32" if row["density"] < 0.5 else DENSE_GEMM
        assert row["kernel"] == want, row
        assert row["reason"].startswith(f"auto: test {row['density']:.2f}; "), row


def test_auto_times_each_layer_once_and_takes_the_faster_kernel(monkeypatch, tmp_path):
    """With a known input shape, auto times both kernels on the layer itself (cached per machine):
    the choice follows those timings, whatever the density says, and a second plan reuses them."""
    from zeroskip.engine import tuning

    monkeypatch.setenv("ZEROSKIP_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_measure(node, tensors, x_shape, x_dtype, modes, step_in_mode, transposed=False,
                     serial_step_in_mode=None):
        calls.append((node.name, tuple(x_shape)))
        dense_first = tensors[node.inputs[1]].density < 0.5  # the opposite of a density rule
        return (1e-3, 2e-3) if dense_first else (2e-3, 1e-3)

    monkeypatch.setattr(tuning, "measure_layer", fake_measure)
    from test_oracle import torch_mlp_gemm

    onnx_model, _ = torch_mlp_gemm(density=0.1)
    model = zeroskip.import_onnx(onnx_model)
    rows = [r for r in zeroskip.Session(model, mode="auto").explain() if r["op"] == "Gemm"]
    assert calls and all(shape[0] == 1 for _, shape in calls)  # a dynamic batch is timed at 1
    for row in rows:
        want = DENSE_GEMM if row["density"] < 0.5 else "matmul_csr_f32"
        assert row["kernel"] == want, row
        assert "measured on this layer: dense" in row["reason"], row
    count = len(calls)
    zeroskip.Session(model, mode="auto")
    assert len(calls) == count  # cached: not measured again


def test_auto_keeps_dense_when_csr_is_not_clearly_faster(monkeypatch, tmp_path):
    """A layer whose CSR kernel measures within tuning.CSR_MARGIN of its dense one keeps dense, and
    the reason says so; a clear CSR win still takes CSR."""
    from zeroskip.engine import tuning

    monkeypatch.setenv("ZEROSKIP_CACHE_DIR", str(tmp_path))

    def fake_measure(node, tensors, x_shape, x_dtype, modes, step_in_mode, transposed=False,
                     serial_step_in_mode=None):
        sparse = tensors[node.inputs[1]].density < 0.5  # CSR a clear win there, a near tie else
        return (1e-3, 0.5e-3) if sparse else (1e-3, 0.98e-3)

    monkeypatch.setattr(tuning, "measure_layer", fake_measure)
    from test_oracle import torch_mlp_gemm

    onnx_model, _ = torch_mlp_gemm(density=0.1)
    rows = [r for r in zeroskip.Session(zeroskip.import_onnx(onnx_model), mode="auto").explain()
            if r["op"] == "Gemm"]
    assert {r["density"] < 0.5 for r in rows} == {True, False}
    for row in rows:
        if row["density"] < 0.5:
            assert row["kernel"] == "matmul_csr_f32", row
        else:
            assert row["kernel"] == DENSE_GEMM, row
            assert "CSR 0.98 ms" in row["reason"], row
            assert "dense (CSR not 5% faster)" in row["reason"], row


def test_auto_times_nothing_with_the_jit_disabled(monkeypatch, tmp_path):
    """Under NUMBA_DISABLE_JIT the kernels are Python loops: auto neither times them nor writes the
    per-machine cache that compiled runs share; it takes the fixed break-even instead."""
    import numba

    from zeroskip.engine import tuning

    def no_timing(*args, **kwargs):
        raise AssertionError("auto timed a kernel with the JIT disabled")

    monkeypatch.setenv("ZEROSKIP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(numba.config, "DISABLE_JIT", True)
    monkeypatch.setattr(tuning, "measure_layer", no_timing)
    monkeypatch.setattr(tuning, "measure_class", no_timing)
    from test_oracle import torch_mlp_gemm

    onnx_model, _ = torch_mlp_gemm(density=0.1)  # pruned first layers, a dense last one
    model = zeroskip.import_onnx(onnx_model)
    rows = [r for r in zeroskip.Session(model, mode="auto").explain() if r["op"] == "Gemm"]
    assert {r["density"] < tuning.UNTIMED_BREAK_EVEN for r in rows} == {True, False}
    for row in rows:
        want = "matmul_csr_f32" if row["density"] < tuning.UNTIMED_BREAK_EVEN \
            else DENSE_GEMM
        assert row["kernel"] == want and "JIT disabled, nothing timed" in row["reason"], row
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("mode", ["dense-f32", "sparse-f32", "dense-i8", "sparse-i8"])
def test_concurrent_runs_of_one_session_agree(mode):
    """Conv steps reuse padded planes and accumulators per thread: threads must not share them."""
    from concurrent.futures import ThreadPoolExecutor

    _, model, input_name, x, _ = _quantized("residual", "qdq", "uint8")
    session = zeroskip.Session(model, mode=mode)
    chunks = [x[i:i + n] for i, n in ((0, 5), (5, 1), (6, 9), (15, 5))]
    want = [session.run({input_name: c}) for c in chunks]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda c: session.run({input_name: c}), chunks * 6))
    for g, w in zip(got, want * 6):
        for key in w:
            assert np.array_equal(g[key], w[key])


@pytest.mark.parametrize("mode", ["dense-f32", "sparse-f32", "auto"])
def test_activation_after_a_producer_without_a_kernel_still_runs(mode):
    """A 1-D Conv has no kernel (it runs the reference op, which has no epilogue), so the Relu
    after it must not be fused away."""
    from onnx import helper

    from onnx_builders import make_model, randn, value_info

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv1d", pads=[1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    onnx_model = make_model(nodes, [("x", ["N", 2, 7], np.float32)], [value_info("y", None)],
                            {"w": randn((3, 2, 3))}, check=False)
    x = randn((2, 2, 7), seed=4)
    session = zeroskip.Session(zeroskip.import_onnx(onnx_model), mode=mode)
    assert [r["kernel"] for r in session.explain()] == ["reference", "clamp_dense_f32"]
    assert_close(run_ort(onnx_model, {"x": x}), session.run({"x": x}), rtol=1e-5, atol=1e-6)
