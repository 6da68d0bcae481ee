"""Low-rank factorization (``zeroskip.compress.low_rank``): exact recovery of a rank-r weight, the
energy rule, the report, Conv/Gemm/MatMul forms, composition with prune and quantize, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import zeroskip
from zeroskip.compress import low_rank

import compress_models as cm
from test_compress_prune import _assert_unchanged, _snapshot


def _with_rank(model, weight, r, out_axis=0, seed=0):
    """``model`` with ``weight`` replaced by a random matrix of rank ``r`` (same shape)."""
    w = model.graph.initializers[weight].to_numpy()
    rng = np.random.default_rng(seed)
    shape = w.shape if out_axis == 0 else w.shape[::-1]
    n, k = shape[0], int(np.prod(shape[1:]))
    low = (rng.standard_normal((n, r)) @ rng.standard_normal((r, k)) / np.sqrt(k)).astype(np.float32)
    low = low.reshape(shape) if out_axis == 0 else low.T
    init = dict(model.graph.initializers, **{weight: zeroskip.Dense(np.ascontiguousarray(low))})
    graph = zeroskip.Graph(model.graph.nodes, model.graph.inputs, model.graph.outputs, init)
    return zeroskip.Model(graph, model.metadata)


@pytest.mark.parametrize("name, layer, weight, out_axis, r", [
    ("mlp", "g1", "g1.w", 0, 3),      # Gemm transB=1
    ("mlp", "m2", "m2.w", 1, 4),      # MatMul, weight (K, N)
    ("mlp", "g3", "g3.w", 1, 2),      # Gemm transB=0
    ("cnn", "c2", "c2.w", 0, 5),      # 3x3 conv, stride 2
    ("cnn", "pw", "pw.w", 0, 3),      # 1x1 conv
])
def test_a_rank_r_weight_is_recovered_exactly_at_rank_r(name, layer, weight, out_axis, r):
    model = _with_rank(cm.MODELS[name](), weight, r, out_axis)
    before = _snapshot(model)
    feeds = cm.feeds(model, count=6)
    thin = low_rank(model, energy=1.0, calibration=feeds)
    _assert_unchanged(model, before)
    row = next(x for x in thin.metadata["low_rank"]["layers"] if x["node"] == layer)
    assert row["rank"] == r and row["factorized"] and row["energy"] == pytest.approx(1.0)
    assert row["sqnr_db"] is None or row["sqnr_db"] > 100  # exact up to float32 rounding
    ops = [n.op for n in thin.graph.nodes]
    assert len(ops) >= len(model.graph.nodes) + 1
    want = zeroskip.Session(model, "dense-f32").run(feeds)["y"]
    for mode in ("reference", "dense-f32", "sparse-f32"):
        got = zeroskip.Session(thin, mode).run(feeds)["y"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=mode)
    k = int(np.prod(model.graph.initializers[weight].shape)) // (
        model.graph.initializers[weight].shape[out_axis])
    n = model.graph.initializers[weight].shape[out_axis]
    assert row["params_before"] == n * k and row["params_after"] == r * (n + k)
    assert row["macs_after"] < row["macs_before"]


@pytest.mark.parametrize("energy", [0.5, 0.8, 0.95])
def test_the_energy_rule_keeps_the_smallest_rank_that_holds_that_share(energy):
    model = cm.mlp()
    thin = low_rank(model, energy=energy)
    for row in thin.metadata["low_rank"]["layers"]:
        weight = {"g1": "g1.w", "m2": "m2.w", "g3": "g3.w"}[row["node"]]
        w = model.graph.initializers[weight].to_numpy().astype(np.float64)
        s = np.linalg.svd(w, compute_uv=False)
        share = np.cumsum(s ** 2) / np.sum(s ** 2)
        r = row["rank"]
        assert share[r - 1] >= energy - 1e-12
        assert r == 1 or share[r - 2] < energy
        assert row["energy"] == pytest.approx(share[r - 1])
        # factorized exactly when it saves parameters
        n, k = w.shape
        assert row["factorized"] == (r * (n + k) < n * k)


def test_rank_dict_factorizes_only_the_named_layers_and_the_conv_becomes_kxk_then_1x1():
    model = cm.cnn()
    thin = low_rank(model, rank={"c2": 4})
    (row,) = thin.metadata["low_rank"]["layers"]
    assert row["node"] == "c2" and row["rank"] == 4
    nodes = {n.name: n for n in thin.graph.nodes}
    first = nodes["c2/factor"]
    assert thin.graph.initializers[first.inputs[1]].shape == (4, 8, 3, 3)
    assert first.attrs["strides"] == [2, 2] and first.attrs["pads"] == [1, 1, 1, 1]
    assert thin.graph.initializers[nodes["c2"].inputs[1]].shape == (16, 4, 1, 1)
    assert nodes["c2"].inputs[2] == "c2.b"
    assert row["macs_before"] == 16 * 72 * 16 and row["macs_after"] == 4 * (16 + 72) * 16


def test_low_rank_composes_with_prune_and_quantize(tmp_path):
    model = cm.mlp()
    x = cm.feeds(model, count=64)["x"]
    thin = low_rank(model, energy=0.9)
    pruned = zeroskip.prune(thin, 0.5)
    q = zeroskip.quantize(pruned, x, progress=False)
    zeroskip.save(q, tmp_path / "m.zsk")
    loaded = zeroskip.load(tmp_path / "m.zsk")
    feeds = cm.feeds(model, count=4, seed=8)
    want = zeroskip.Session(loaded, "reference").run(feeds)["y"]
    for mode in ("dense-i8", "sparse-i8"):
        assert np.array_equal(zeroskip.Session(loaded, mode).run(feeds)["y"], want)
    assert loaded.metadata["low_rank"]["energy"] == 0.9


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(), "exactly one of energy= .* or rank="),
    (dict(energy=0.9, rank={"g1": 2}), "exactly one"),
    (dict(energy=0.0), r"energy=0\.0"),
    (dict(energy=1.5), r"energy=1\.5"),
    (dict(rank={"nope": 2}), "rank names 'nope'"),
    (dict(rank={"g1": 0}), r"rank\['g1'\]=0"),
    (dict(rank={"g1": 21}), r"rank\['g1'\]=21: .* rank at most 20"),
    (dict(energy=0.9, calibration=np.zeros((2, 3), np.float32)), "calibration: "),
])
def test_bad_arguments_are_refused_naming_them(kwargs, pattern):
    model = cm.mlp()
    before = _snapshot(model)
    with pytest.raises(zeroskip.CompressionError, match=pattern):
        low_rank(model, **kwargs)
    _assert_unchanged(model, before)


def test_compress_is_reachable_from_the_package_alone():
    import subprocess
    import sys

    code = ("import zeroskip; print(zeroskip.compress.low_rank.__name__, "
            "zeroskip.compress.masks.__name__, zeroskip.compress.schedule.polynomial.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["low_rank", "masks", "polynomial"], \
        out.stderr
