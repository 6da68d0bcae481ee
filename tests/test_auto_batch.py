"""auto chooses at the batch it runs: one plan per batch class when the batch is dynamic."""

import threading

import numpy as np
import pytest

import zeroskip
from test_oracle import torch_mlp_gemm
from zeroskip.engine import tuning


@pytest.mark.parametrize("batch, cls", [(1, 1), (2, 1), (3, 8), (8, 8), (22, 8), (23, 64),
                                        (64, 64), (128, 64), (181, 64), (182, 512), (450, 512),
                                        (100_000, 512)])
def test_batch_class_is_the_nearest_in_log_scale(batch, cls):
    assert tuning.batch_class(batch) == cls


@pytest.mark.parametrize("cls, macs, timed", [
    (1, 1e12, 1), (64, 1e12, 64), (512, None, 64),
    (512, tuning.MAX_TIMED_MACS / 512, 512), (512, tuning.MAX_TIMED_MACS / 512 + 1, 64)])
def test_the_large_class_is_timed_at_its_batch_only_where_that_is_cheap(cls, macs, timed):
    assert tuning.timing_batch(cls, macs) == timed


@pytest.fixture
def timed_by_batch(monkeypatch, tmp_path):
    """auto's layer timings replaced: dense is faster at batch 1, CSR from batch 8 on."""
    monkeypatch.setenv("ZEROSKIP_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_measure(node, tensors, x_shape, x_dtype, modes, step_in_mode, transposed=False,
                     serial_step_in_mode=None):
        calls.append((node.name, x_shape[0]))
        return (1e-3, 2e-3) if x_shape[0] == 1 else (2e-3, 1e-3)

    monkeypatch.setattr(tuning, "measure_layer", fake_measure)
    return calls


def _gemm_kernels(rows, batch):
    return {r["node"]: r["kernel"] for r in rows if r["op"] == "Gemm" and r["batch"] == batch}


def test_each_batch_class_is_planned_when_it_arrives(timed_by_batch):
    onnx_model, _ = torch_mlp_gemm(density=0.1)
    model = zeroskip.import_onnx(onnx_model)
    session = zeroskip.Session(model, mode="auto")
    assert {b for _, b in timed_by_batch} == {1}
    rows = session.explain()
    assert {r["batch"] for r in rows} == {1}
    assert set(_gemm_kernels(rows, 1).values()) == {"gemm_dense_f32 (numpy BLAS)"}

    dense = zeroskip.Session(model, mode="dense-f32")
    x = np.random.default_rng(0).standard_normal((128, 20)).astype(np.float32)
    got = session.run({"input": x})["output"]  # batch 128: class 64, planned now
    np.testing.assert_allclose(got, dense.run({"input": x})["output"], rtol=1e-5, atol=1e-5)
    assert {b for _, b in timed_by_batch} == {1, 64}
    rows = session.explain()
    assert {r["batch"] for r in rows} == {1, 64}
    assert set(_gemm_kernels(rows, 64).values()) == {"matmul_csr_f32"}
    assert set(_gemm_kernels(rows, 1).values()) == {"gemm_dense_f32 (numpy BLAS)"}

    count = len(timed_by_batch)
    session.run({"input": x[:1]})  # batch 1 again: its own plan, not class 64's
    session.run({"input": x[:100]})
    assert len(timed_by_batch) == count
    assert set(_gemm_kernels(session.explain(batch=5), 8).values()) == {"matmul_csr_f32"}
    assert {r["batch"] for r in session.explain()} == {1, 8, 64}
    # batch 450: class 512, whose small layers are timed at 512 itself
    session.run({"input": np.repeat(x, 4, axis=0)[:450]})
    assert {b for _, b in timed_by_batch} == {1, 8, 64, 512}
    assert {r["batch"] for r in session.explain()} == {1, 8, 64, 512}


def test_a_large_layer_of_the_large_class_is_timed_at_64_and_says_so(timed_by_batch, monkeypatch):
    monkeypatch.setattr(tuning, "MAX_TIMED_MACS", 1000)  # every layer of the MLP is "large"
    onnx_model, _ = torch_mlp_gemm(density=0.1)
    session = zeroskip.Session(zeroskip.import_onnx(onnx_model), mode="auto")
    rows = [r for r in session.explain(batch=300) if r["op"] == "Gemm" and r["batch"] == 512]
    assert rows and {b for _, b in timed_by_batch} == {1, 64}
    for row in rows:
        assert "measured on this layer at batch 64:" in row["reason"], row


def test_int8_classes_compute_the_same_integers(timed_by_batch):
    """Whatever each class picks, a quantized model gives dense-i8's bytes at every batch."""
    from quant_builders import calibration, quantize

    onnx_model, _ = torch_mlp_gemm(density=0.1)
    int8 = zeroskip.import_onnx(quantize(onnx_model, "qdq", "uint8", True, "input", (20,)))
    auto = zeroskip.Session(int8, mode="auto")
    dense = zeroskip.Session(int8, mode="dense-i8")
    for batch in (1, 9, 70, 200):
        x = calibration((20,), batch, seed=batch)
        np.testing.assert_array_equal(auto.run({"input": x})["output"],
                                      dense.run({"input": x})["output"])
    kernels = {}
    for row in auto.explain():
        if row["op"] == "QGemm":
            kernels.setdefault(row["batch"], set()).add(row["kernel"])
    assert set(kernels) == {1, 8, 64, 512}
    assert all(k.startswith("matmul_dense_rq_i8") for k in kernels[1])  # requantizing too
    assert all(k.startswith("matmul_csr_rq_i8") for k in kernels[8] | kernels[64])  # and these


def test_concurrent_first_runs_of_a_new_class_plan_it_once(timed_by_batch):
    onnx_model, _ = torch_mlp_gemm(density=0.1)
    session = zeroskip.Session(zeroskip.import_onnx(onnx_model), mode="auto", threads=1)
    x = np.random.default_rng(1).standard_normal((40, 20)).astype(np.float32)
    want = session.run({"input": x})["output"]
    before = len(timed_by_batch)
    y = np.random.default_rng(2).standard_normal((9, 20)).astype(np.float32)
    results = []
    workers = [threading.Thread(target=lambda: results.append(session.run({"input": y})["output"]))
               for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(results) == 4 and all(np.array_equal(r, results[0]) for r in results)
    assert len(timed_by_batch) - before == len({n for n, b in timed_by_batch if b == 8})
    np.testing.assert_array_equal(session.run({"input": x})["output"], want)


def test_a_static_batch_or_another_mode_has_one_plan():
    onnx_model, _ = torch_mlp_gemm(density=0.1)
    model = zeroskip.import_onnx(onnx_model)
    session = zeroskip.Session(model, mode="sparse-f32")
    session.run({"input": np.zeros((70, 20), np.float32)})
    assert all("batch" not in r for r in session.explain())
    assert session.explain(batch=70) == session.explain()
    with pytest.raises(zeroskip.ZeroskipError, match="batch must be a positive integer"):
        session.explain(batch=0)


def test_inspect_plans_for_the_batch_asked(tmp_path):
    import onnx

    from test_cli import zeroskip_cmd

    onnx_model, _ = torch_mlp_gemm(density=0.1)
    path = tmp_path / "mlp.onnx"
    onnx.save(onnx_model, path)
    result = zeroskip_cmd("inspect", path, "--plan", "--mode", "auto", "--batch", "100")
    assert result.returncode == 0, result.stderr
    assert "plan for mode auto, batch 100:" in result.stdout
    lines = result.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("batch  node")))
    assert all(line.split()[0] == "64" for line in lines[header + 2:] if line.strip())
    bad = zeroskip_cmd("inspect", path, "--plan", "--batch", "0")
    assert bad.returncode == 2 and "--batch must be at least 1" in bad.stderr
