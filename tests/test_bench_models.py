"""bench/models.py's generators: valid ONNX that onnxruntime runs and that zeroskip's reference
mode agrees with, and zeroskip's own pipeline variants at their sparsities (small versions of the
same graphs: 32x32 images, fewer channels)."""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import zeroskip

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
import models  # noqa: E402

SMALL = {
    "resnet18": lambda: models.resnet18(1, image=32, width=0.125),
    "resnet50": lambda: models.resnet50(1, image=32, width=0.125),
    "mobilenetv2": lambda: models.mobilenetv2(1, image=32, width=0.25),
    "mlp": lambda: models.mlp(1, sizes=(64, 48, 32, 10)),
}


def _input(model, batch=2):
    return np.random.default_rng(0).standard_normal(models._input_shape(model, batch)).astype(
        np.float32)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_generated_models_run_in_onnxruntime_and_match_zeroskip(name):
    model = SMALL[name]()
    onnx.checker.check_model(model)
    x = _input(model)
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    imported = zeroskip.import_onnx(model)
    got = zeroskip.Session(imported).run({"input": x})["logits"]
    assert got.shape == want.shape == (2, 10 if name == "mlp" else 1000)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    if name == "resnet50":
        convs = [n for n in model.graph.node if n.op_type == "Conv"]
        assert len(convs) == 1 + 16 * 3 + 4  # stem, 16 bottlenecks, 4 downsamples


def test_zeroskip_variants_have_their_sparsity_and_exact_int8_modes():
    model = SMALL["resnet18"]()
    variants = models.zeroskip_variants(model, sparsities=(0.0, 0.9), calibration_rows=4)
    assert set(variants) == {"zs00", "zs00_int8", "zs90", "zs90_int8"}
    pruned = variants["zs90"]
    weights = [pruned.graph.initializers[n.inputs[1]].to_numpy() for n in pruned.graph.nodes
               if n.op in ("Conv", "Gemm")]
    total = sum(w.size for w in weights)
    assert sum(int(np.sum(w == 0)) for w in weights) == int(np.floor(0.9 * total + 0.5))
    x = {"input": _input(model)}
    q = variants["zs90_int8"]
    ref = zeroskip.Session(q).run(x)["logits"]
    for mode in ("dense-i8", "sparse-i8", "auto"):
        assert np.array_equal(zeroskip.Session(q, mode).run(x)["logits"], ref), mode


@pytest.mark.parametrize("net", ["resnet18", "mobilenetv2"])
def test_block_pruning_keeps_whole_groups_of_4_input_channels_at_a_tap(net):
    """prune(..., block=4): each pruned conv keeps round(density · groups) whole groups of 4 input
    channels at one tap, the ones with the largest mean |w|; the stem (3 channels), a conv whose
    input channels 4 does not divide, and on MobileNetV2 every conv but the 1×1 ones, stay
    dense."""
    model = SMALL[net]()
    pruned = models.prune(model, 0.1, only_pointwise=net == "mobilenetv2", block=4)
    before = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer}
    convs = {n.input[1]: n for n in model.graph.node if n.op_type == "Conv"}
    checked = 0
    for name, node in convs.items():
        w, v = before[name], after[name]
        pointwise = w.shape[2:] == (1, 1) and w.shape[1] > 1
        if node.name.startswith("stem") or (net == "mobilenetv2" and not pointwise) or (
                w.shape[1] % 4):  # a conv whose input channels 4 does not divide stays dense
            np.testing.assert_array_equal(v, w, err_msg=name)
            continue
        n, c = w.shape[:2]
        groups = np.count_nonzero(v.reshape(n, c // 4, 4, -1), axis=2)  # per (n, group, tap)
        assert np.all((groups == 0) | (groups == 4)), name  # whole groups (no exact zeros here)
        assert np.count_nonzero(groups) == int(round(0.1 * groups.size)), name
        mag = np.abs(w).reshape(n, c // 4, 4, -1).mean(axis=2)
        assert mag[groups > 0].min() >= mag[groups == 0].max(), name
        checked += 1
    assert checked > 0
