"""ONNX -> Model -> .zsk -> Model: identical outputs, identical bytes, and a golden file that must keep loading."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("onnx")

import zeroskip  # noqa: E402
from zeroskip.formats.zsk import dumps, loads  # noqa: E402

from test_oracle import CASES  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")


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


def test_golden_file_loads_and_matches_onnxruntime():
    """tests/data/golden_cnn.zsk was written by tests/data/make_golden.py; the expected outputs in
    golden_cnn_expected.npz come from onnxruntime on the ONNX model it was converted from."""
    path = os.path.join(DATA, "golden_cnn.zsk")
    model = zeroskip.load(path, verify="eager")
    assert {t.layout for t in model.graph.initializers.values()} == {"dense", "csr"}
    with np.load(os.path.join(DATA, "golden_cnn_expected.npz")) as expected:
        for mode in ("reference",):
            got = zeroskip.Session(model, mode=mode).run({"x": expected["x"]})
            np.testing.assert_allclose(got["y"], expected["y"], rtol=1e-5, atol=1e-6, err_msg=mode)
    with open(path, "rb") as f:
        golden = f.read()
    assert dumps(loads(golden)) == golden
