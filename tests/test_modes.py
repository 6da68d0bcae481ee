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
