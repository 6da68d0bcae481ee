"""``Session.profile`` and ``zeroskip bench --profile``: where the time goes, per node."""

from importlib import resources

import numpy as np
import pytest
from onnx import numpy_helper

import zeroskip
from onnx_builders import make_model, node, pruned, randn
from test_cli import zeroskip_cmd
from zeroskip.engine import replay as rp
from zeroskip.engine.profile import layer_macs


def _cnn():
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
             node("Relu", ["c1"], ["r1"]),
             node("Conv", ["r1", "w2", "b2"], ["c2"]),
             node("GlobalAveragePool", ["c2"], ["g"]), node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    inits = {"w1": randn((8, 3, 3, 3), 1, 0.3), "b1": randn(8, 2, 0.1),
             "w2": pruned((12, 8, 1, 1), 0.25, seed=3, scale=0.5), "b2": randn(12, 4, 0.1),
             "w3": pruned((10, 12), 0.5, seed=5, scale=0.5), "b3": randn(10, 6, 0.1)}
    return make_model(nodes, [("x", ["N", 3, 10, 10])], [("y", ["N", 10])], inits)


@pytest.fixture(scope="module")
def cnn():
    return zeroskip.import_onnx(_cnn())


@pytest.mark.parametrize("mode", ["reference", "dense-f32", "sparse-f32"])
def test_profile_has_a_row_per_step_and_counts_macs(cnn, mode):
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 10)).astype(np.float32)
    session = zeroskip.Session(cnn, mode=mode, threads=1)
    profile = session.profile({"x": x}, repeats=3)
    # dense-f32 replays (its Gemm at two rows on matmul_dense_f32), and so does sparse-f32 (its
    # CSR Gemm transposes its input at two rows with a kernel, into a scratch); reference mode
    # runs its steps one by one
    assert profile.replayed == (mode != "reference")
    assert [r.node for r in profile.rows] == [s["node"] for s in session.explain()]
    assert all(r.ms >= 0 for r in profile.rows) and profile.repeats == 3
    assert sum(r.share for r in profile.rows) == pytest.approx(1.0)
    assert profile.overhead_ms == pytest.approx(profile.run_ms - sum(r.ms for r in profile.rows))
    conv1, conv2, gemm = (next(r for r in profile.rows if r.op == op and r.kernel != "fused"
                               and (op != "Conv" or r.input_shape[1] == c))
                          for op, c in (("Conv", 3), ("Conv", 8), ("Gemm", None)))
    assert conv1.input_shape == (2, 3, 10, 10) and gemm.input_shape == (2, 12)
    # effective MACs / (ms · 1e6) = GMAC/s: conv1 has B·OH·OW·N·C·kh·kw = 2·5·5·8·3·3·3 MACs
    weights = {t.name: numpy_helper.to_array(t) for t in _cnn().graph.initializer}
    share = {name: np.count_nonzero(w) / w.size for name, w in weights.items()}
    for row, macs, density in ((conv1, 2 * 5 * 5 * 8 * 27, share["w1"]),
                               (conv2, 2 * 5 * 5 * 12 * 8, share["w2"]),
                               (gemm, 2 * 10 * 12, share["w3"])):
        assert row.ms > 0, row
        assert row.effective_gmacs == pytest.approx(macs / (row.ms * 1e6), rel=1e-9), row
        assert row.useful_gmacs == pytest.approx(row.effective_gmacs * density, rel=1e-3), row
    assert all(r.effective_gmacs is None for r in profile.rows if r.op not in ("Conv", "Gemm"))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_replaying_session_profiles_its_recorded_calls(threads):
    model = zeroskip.load(resources.files("zeroskip.data") / "digits_cnn_pruned_int8.zsk")
    session = zeroskip.Session(model, mode="sparse-i8", threads=threads)
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8)).astype(np.float32)
    profile = session.profile({"image": x}, repeats=4)
    assert profile.replayed and profile.repeats == 4
    replay = next(state for state in session._replay_local.states.values()
                  if isinstance(state, rp.Replay))
    assert [r.node for r in profile.rows] == [s.node.name for s in replay.plan.steps]
    assert len(replay.per_step) == len(profile.rows) and sum(replay.per_step) == len(replay.calls)
    for row, calls in zip(profile.rows, replay.per_step):
        assert (row.ms > 0) == (calls > 0), (row, calls)  # Flatten is a view: no call, 0 ms
    assert [r.op for r in profile.rows if r.ms == 0] == ["Flatten"]
    assert profile.overhead_ms == pytest.approx(profile.run_ms - sum(r.ms for r in profile.rows))
    conv2 = next(r for r in profile.rows if r.node == "/conv2/Conv")
    assert conv2.input_shape == (3, 16, 8, 8) and conv2.effective_gmacs > 0
    # the replayed runs still give the bytes of a session that runs its steps
    assert np.array_equal(session.run({"image": x})["logits"],
                          zeroskip.Session(model, mode="sparse-i8", threads=1).run(
                              {"image": x})["logits"])


def test_a_profile_without_replays_runs_the_steps(monkeypatch):
    monkeypatch.setenv(rp.ENV, "0")
    model = zeroskip.load(resources.files("zeroskip.data") / "digits_cnn_pruned_int8.zsk")
    session = zeroskip.Session(model, mode="sparse-i8", threads=1)
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8)).astype(np.float32)
    profile = session.profile({"image": x}, repeats=3)
    assert not profile.replayed and session.replays() == []
    assert [r.node for r in profile.rows] == [s["node"] for s in session.explain()]


def test_layer_macs_uses_the_output_channel_axis():
    assert layer_macs("Conv", 16 * 8 * 3 * 3, (2, 16, 5, 5), 0.5) == (2 * 25 * 16 * 72, 2 * 25 * 8 * 72)
    assert layer_macs("MatMul", 64 * 32, (4, 3, 32), None) == (4 * 3 * 32 * 64, 4 * 3 * 32 * 64)
    assert layer_macs("Relu", 10, (2, 5), None) == (None, None)


def test_profile_refuses_a_bad_repeat_count(cnn):
    session = zeroskip.Session(cnn, mode="dense-f32")
    x = np.zeros((1, 3, 10, 10), np.float32)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(zeroskip.ZeroskipError, match="repeats must be a positive integer"):
            session.profile({"x": x}, repeats=bad)
    with pytest.raises(zeroskip.InputError):
        session.profile({"x": np.zeros((1, 4, 10, 10), np.float32)})


def test_bench_profile_prints_each_mode_beside_onnxruntime(tmp_path):
    import onnx

    path = tmp_path / "cnn.onnx"
    onnx.save(_cnn(), path)
    result = zeroskip_cmd("bench", path, "--profile", "--mode", "dense-f32", "--mode",
                          "sparse-f32", "--rounds", "3", "--batch", "2", "--threads", "1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "median of 3 runs per node, threads 1" in out
    for mode in ("dense-f32", "sparse-f32"):
        assert f"\n{mode}: run " in out
    header = next(line for line in out.splitlines() if line.startswith("node "))
    assert header.split()[-2:] == ["onnxruntime", "ms"]
    assert "onnxruntime's own profile (enable_profiling): run" in out
    gemm_rows = [line.split() for line in out.splitlines() if " Gemm " in line]
    assert any(cells[-1] != "-" for cells in gemm_rows)  # matched to onnxruntime's node by name
