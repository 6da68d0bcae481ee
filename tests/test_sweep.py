"""``zeroskip sweep``: dense against CSR kernels per layer across sparsities, break-even sparsities,
and the promise that auto plans from the same timings the sweep printed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import zeroskip
from zeroskip import sweep
from zeroskip.engine import tuning

import compress_models as cm
from test_cli import _digits_like, assert_clean_error, zeroskip_cmd


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROSKIP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_parse_shape_reads_gemm_and_conv_and_refuses_the_rest():
    g = sweep.parse_shape("gemm:8x64x32")
    assert (g["op"], g["w_shape"], g["x_shape"]) == ("Gemm", (32, 64), (8, 64))
    c = sweep.parse_shape("conv:16x10x12:8x3x3:s2:p1")
    assert (c["op"], c["w_shape"], c["x_shape"]) == ("Conv", (8, 16, 3, 3), (1, 16, 10, 12))
    assert c["attrs"] == {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    for bad in ("gemm:8x64", "conv:16x10x12:8x3", "matmul:1x2x3"):
        with pytest.raises(zeroskip.InputError, match="expected gemm:MxKxN"):
            sweep.parse_shape(bad)


def test_model_layers_cover_every_weight_layer_with_its_own_shapes():
    layers = {x["name"]: x for x in sweep.model_layers(cm.cnn(), batch=2)}
    assert set(layers) == {"c1", "c2", "pw", "fc"}  # dw is grouped: no CSR/dense pair
    assert layers["c2"]["x_shape"] == (2, 8, 8, 8) and layers["c2"]["w_shape"] == (16, 8, 3, 3)
    assert layers["fc"]["x_shape"] == (2, 48)
    mlp = {x["name"]: x for x in sweep.model_layers(cm.mlp())}
    assert mlp["m2"]["op"] == "MatMul" and mlp["m2"]["out_axis"] == 1
    q = zeroskip.quantize(cm.mlp(), cm.feeds(cm.mlp(), 32)["x"], progress=False)
    assert [x["op"] for x in sweep.model_layers(q)] == ["Gemm"] * 3


@pytest.mark.parametrize("kind", ["f32", "i8"])
@pytest.mark.parametrize("name", ["gemm:16x96x64", "conv:8x10x10:16x3x3:s1:p1"])
def test_layer_models_have_the_sparsity_asked(name, kind):
    layer = sweep.parse_shape(name)
    for s in (0.0, 0.5, 0.9):
        w = sweep.layer_model(layer, s, kind).graph.initializers["w"]
        assert np.sum(w.to_numpy() == 0) == int(np.floor(s * w.size + 0.5))


def test_auto_plans_from_the_timings_the_sweep_printed(cache):
    layer = sweep.parse_shape("gemm:32x128x96")
    result = sweep.sweep([layer], (0.0, 0.6, 0.95), ("f32", "i8"), threads=1)
    assert [(b["layer"], b["kind"]) for b in result["break_even"]] == [
        ("gemm:32x128x96", "f32"), ("gemm:32x128x96", "i8")]
    assert all(0.0 <= b["break_even_sparsity"] <= 1.0 for b in result["break_even"])
    assert (cache / "break-even.json").exists()
    for row in result["rows"]:
        model = sweep.layer_model(layer, row["sparsity"], row["kind"])
        (plan,) = zeroskip.Session(model, "auto", threads=1).explain()
        reason = plan["reason"]
        assert (f"dense {row['dense_ms']:.3g} ms, CSR {row['sparse_ms']:.3g} ms" in reason), \
            (row, reason)
        # auto takes CSR only where it measured CSR_MARGIN faster (the timings' ratio, as the plan
        # compares them: within the margin a near tie stays dense)
        faster = row["sparse_ms"] * tuning.CSR_MARGIN < row["dense_ms"]
        assert ("csr" in plan["kernel"]) == faster, (row, plan)


def test_sweep_cli_on_a_model_writes_json_and_png(tmp_path, cache):
    _, src = _digits_like(tmp_path)
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    env_cache = str(cache)
    result = zeroskip_cmd("sweep", src, "--sparsities", "0,0.8", "--threads", "1", "--json", out,
                          "--plot", png, env={"ZEROSKIP_CACHE_DIR": env_cache})
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert set(data) == {"rows", "break_even", "notes", "machine", "settings"}
    assert {(r["layer"], r["kind"], r["sparsity"]) for r in data["rows"]} == {
        (layer, kind, s) for layer in ("g1", "m2", "g3") for kind in ("f32", "i8")
        for s in (0.0, 0.8)}
    assert {b["layer"] for b in data["break_even"]} == {"g1", "m2", "g3"}
    assert "break-even sparsity" in result.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"
    for args, words in ((["--sparsities", "0.5"], "at least two"),
                        (["--sparsities", "0,1.5"], "--sparsities 0,1.5"),
                        (["--kinds", "f16"], "'f16' is not f32 or i8"),
                        (["--layer", "nope"], "no layer named nope")):
        bad = zeroskip_cmd("sweep", src, *args)
        assert_clean_error(bad, "InputError")
        assert words in bad.stderr
    assert_clean_error(zeroskip_cmd("sweep", "gemm:1x2"), "InputError")
