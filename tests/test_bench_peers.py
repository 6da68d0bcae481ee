"""zeroskip bench's numpy peer (plain NumPy float32: im2col + BLAS) computes the model's function,
and the machine description that the JSON carries."""

from __future__ import annotations

import numpy as np
import pytest

import zeroskip
from zeroskip.bench import NumpyPeer, machine_info

import compress_models as cm


def _conv_model(seed=0, **attrs):
    rng = np.random.default_rng(seed)
    group = attrs.get("group", 1)
    inits = {"w": rng.standard_normal((6, 4 // group, 3, 3)).astype(np.float32),
             "b": rng.standard_normal(6).astype(np.float32)}
    nodes = [cm.node("conv", "Conv", ["x", "w", "b"], ["c"], **attrs),
             cm.node("relu", "Relu", ["c"], ["y"])]
    return cm._model(nodes, inits, (4, 9, 10))


@pytest.mark.parametrize("attrs", [
    dict(pads=[1, 1, 1, 1]),
    dict(strides=[2, 2]),
    dict(strides=[2, 1], pads=[0, 1, 2, 1], dilations=[2, 1]),
    dict(group=2, pads=[1, 0, 1, 0]),
    dict(auto_pad="SAME_UPPER", strides=[2, 2]),
])
def test_numpy_peer_conv_matches_the_reference(attrs):
    model = _conv_model(**attrs)
    feeds = cm.feeds(model, count=3)
    want = zeroskip.Session(model).run(feeds)["y"]
    got = NumpyPeer(model).run(feeds)["y"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(cm.MODELS))
def test_numpy_peer_runs_float_and_int8_models(name):
    model = cm.MODELS[name]()
    feeds = cm.feeds(model, count=4)
    np.testing.assert_allclose(NumpyPeer(model).run(feeds)["y"],
                               zeroskip.Session(model).run(feeds)["y"], rtol=1e-4, atol=1e-4)
    q = zeroskip.quantize(model, cm.feeds(model, count=32)["x"], progress=False)
    # the int8 model's weights dequantized, activations float: dense-f32's function
    np.testing.assert_allclose(NumpyPeer(q).run(feeds)["y"],
                               zeroskip.Session(q, "dense-f32").run(feeds)["y"], rtol=1e-3,
                               atol=1e-3)


def test_machine_info_names_the_cpu_its_features_and_versions():
    info = machine_info()
    assert info["cores"] >= 1 and isinstance(info["cpu"], str) and info["cpu"]
    assert isinstance(info["isa"], list) and all(isinstance(f, str) for f in info["isa"])
    assert info["numpy"] == np.__version__ and info["zeroskip"] == zeroskip.__version__
    assert all("internal_api" in lib for lib in info["blas"])
