"""ONNX -> Model -> .zsk -> Model: identical outputs and identical bytes (the golden files: test_golden.py)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")

import zeroskip  # noqa: E402
from zeroskip.formats.zsk import dumps  # noqa: E402

from test_oracle import CASES  # noqa: E402


def _run(model, feeds):
    return zeroskip.Session(model).run(feeds)


@pytest.mark.parametrize("name", list(CASES))
def test_zsk_round_trip_gives_identical_outputs(name, tmp_path):
    onnx_model, feeds_list = CASES[name]()
    model = zeroskip.import_onnx(onnx_model)
    path = tmp_path / "m.zsk"
    zeroskip.save(model, path)
    loaded = zeroskip.load(path, verify="eager")
    assert [(n.name, n.op, n.inputs, n.outputs, n.attrs) for n in loaded.graph.nodes] == \
        [(n.name, n.op, n.inputs, n.outputs, n.attrs) for n in model.graph.nodes]
    for feeds in feeds_list:
        want, got = _run(model, feeds), _run(loaded, feeds)
        assert list(got) == list(want)
        for key in want:
            assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), key
    # Saving again, from the loaded model, gives the same bytes (whatever layouts it came back in).
    assert dumps(loaded) == path.read_bytes()


def test_saving_twice_gives_identical_bytes(tmp_path):
    onnx_model, _ = CASES["model_torch_cnn_view_opset_11"]()
    a, b = tmp_path / "a.zsk", tmp_path / "b.zsk"
    zeroskip.save(zeroskip.import_onnx(onnx_model), a)
    zeroskip.save(zeroskip.import_onnx(onnx_model.SerializeToString()), b)
    assert a.read_bytes() == b.read_bytes()
