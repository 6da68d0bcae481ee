"""Graph passes keep the function: outputs before and after each pass agree (reference mode)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import zeroskip
from zeroskip.engine.passes import drop_identities, fold_batchnorm, fold_constants, optimize

from onnx_builders import make_model, randn, value_info
from test_oracle import CASES

PASS_CASES = [name for name in CASES if name.startswith("model_") or "batchnorm" in name
              or "dropout" in name or "identity" in name]


def _outputs(model, feeds):
    return zeroskip.Session(model).run(feeds)


@pytest.mark.parametrize("name", PASS_CASES)
@pytest.mark.parametrize("graph_pass", [drop_identities, fold_constants, fold_batchnorm, optimize])
def test_pass_keeps_outputs(name, graph_pass):
    onnx_model, feeds_list = CASES[name]()
    model = zeroskip.import_onnx(onnx_model)
    before = [n.name for n in model.graph.nodes]
    changed = graph_pass(model)
    assert [n.name for n in model.graph.nodes] == before  # the input model is left alone
    changed.graph.check()
    for feeds in feeds_list:
        want, got = _outputs(model, feeds), _outputs(changed, feeds)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=2e-5, atol=2e-6, err_msg=key)


def _conv_bn_model():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "beta", "mu", "var"], ["bn"],
                              name="bn", epsilon=1e-3),
             helper.make_node("Relu", ["bn"], ["r"], name="relu"),
             helper.make_node("Dropout", ["r"], ["d"], name="drop"),
             helper.make_node("Flatten", ["d"], ["f"], name="flat"),
             helper.make_node("Transpose", ["wt"], ["wfc"], name="t", perm=[1, 0]),
             helper.make_node("Gemm", ["f", "wfc"], ["y0"], name="fc"),
             helper.make_node("Identity", ["y0"], ["y"], name="id")]
    inits = {"w": randn((4, 2, 3, 3)), "b": randn(4, seed=1), "g": rng.random(4) + 0.5,
             "beta": randn(4, seed=2), "mu": randn(4, seed=3), "var": rng.random(4) + 0.5,
             "wt": randn((3, 4 * 5 * 5), seed=4)}
    inits = {k: np.asarray(v, np.float32) for k, v in inits.items()}
    return make_model(nodes, [("x", ["N", 2, 5, 5], np.float32)], [value_info("y", None)], inits,
                      check=False)


def test_optimize_folds_bn_drops_identities_and_folds_constants():
    onnx_model = _conv_bn_model()
    model = zeroskip.import_onnx(onnx_model)
    optimized = optimize(model)
    assert [n.op for n in optimized.graph.nodes] == ["Conv", "Relu", "Flatten", "Gemm"]
    assert optimized.graph.outputs[0].name == "y" and optimized.graph.nodes[-1].outputs == ["y"]
    x = randn((3, 2, 5, 5), seed=9)
    np.testing.assert_allclose(_outputs(optimized, {"x": x})["y"], _outputs(model, {"x": x})["y"],
                               rtol=1e-5, atol=1e-5)
    assert "origin" in optimized.metadata["weights"]["w:bn"]
