"""A 1×1 conv read only by a 3×3 depthwise conv (MobileNetV2's expand and depthwise convs) runs as
one step in sparse-f32: pointwise_depthwise_f32, with the bytes of the two steps it replaces.

``passes.find_pointwise_depthwise`` proposes the pairs; the 1×1 conv's CSR builder takes its pair
(``PlanContext.take_depthwise``), and the depthwise conv's step is "fused". A pair whose 1×1 conv
runs dense (dense-f32, or auto choosing dense) keeps its two steps.
"""

from __future__ import annotations

import numpy as np
import pytest

import zeroskip
from zeroskip.engine import passes
from zeroskip.engine.plan import context

from onnx_builders import make_model, node, pruned, randn


def _block(stride=2, expand_output=False, dw_kernel=3, multiplier=1, readers=1):
    """Stem 3×3 conv -> Relu -> 1×1 expand (pruned) -> Clip(0,6) -> depthwise -> Clip(0,6) ->
    1×1 project -> GAP -> Flatten -> Gemm; the variants break one condition of the pairing."""
    C, E = 8, 24
    nodes = [node("Conv", ["x", "ws", "bs"], ["s"], pads=[1, 1, 1, 1], name="stem"),
             node("Relu", ["s"], ["sr"], name="stem_relu"),
             node("Conv", ["sr", "we", "be"], ["e"], name="expand"),
             node("Clip", ["e", "lo", "hi"], ["er"], name="expand_clip"),
             node("Conv", ["er", "wd", "bd"], ["d"], name="depthwise", group=E,
                  pads=[dw_kernel // 2] * 4, strides=[stride, stride]),
             node("Clip", ["d", "lo", "hi"], ["dr"], name="depthwise_clip"),
             node("Conv", ["dr", "wp", "bp"], ["p"], name="project"),
             node("GlobalAveragePool", ["p"], ["g"]), node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "wf", "bf"], ["y"], transB=1)]
    outputs = [("y", ["N", 5])]
    if expand_output:
        outputs.append(("er", ["N", E, 12, 12]))
    if readers > 1:  # a second reader of the expanded tensor
        nodes.append(node("GlobalAveragePool", ["er"], ["eg"]))
        outputs.append(("eg", ["N", E, 1, 1]))
    inits = {"ws": randn((C, 3, 3, 3), 1, 0.3), "bs": randn(C, 2, 0.1),
             "we": pruned((E, C, 1, 1), 0.3, seed=3, scale=0.5), "be": randn(E, 4, 0.1),
             # multiplier 2: group E, 2E filters (each channel makes two outputs)
             "wd": randn((E * multiplier, 1, dw_kernel, dw_kernel), 5, 0.3),
             "bd": randn(E * multiplier, 6, 0.1),
             "wp": pruned((6, E * multiplier, 1, 1), 0.3, seed=7, scale=0.5), "bp": randn(6, 8, 0.1),
             "wf": randn((5, 6), 9, 0.5), "bf": randn(5, 10, 0.1),
             "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}
    return zeroskip.import_onnx(make_model(nodes, [("x", ["N", 3, 12, 12])], outputs, inits))


def _rows(session):
    return {r["node"]: r for r in session.explain()}


def _unfused(model, mode, threads, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(context, "find_pointwise_depthwise", lambda model, fused: {})
        return zeroskip.Session(model, mode=mode, threads=threads)


@pytest.mark.parametrize("stride", [1, 2])
def test_fused_pair_gives_the_bytes_of_the_two_steps(stride, monkeypatch):
    model = _block(stride)
    x = randn((3, 3, 12, 12), 11)
    want = zeroskip.Session(model, mode="reference").run({"x": x})["y"]
    outputs = []
    for threads in (1, 2):
        session = zeroskip.Session(model, mode="sparse-f32", threads=threads)
        rows = _rows(session)
        assert rows["expand"]["kernel"] == "pointwise_depthwise_f32", rows["expand"]
        assert "'depthwise'" in rows["expand"]["reason"]
        assert rows["depthwise"]["kernel"] == "fused" and "'expand'" in rows["depthwise"]["reason"]
        assert rows["expand_clip"]["kernel"] == rows["depthwise_clip"]["kernel"] == "fused"
        got = session.run({"x": x})["y"]
        unfused = _unfused(model, "sparse-f32", threads, monkeypatch)
        rows = _rows(unfused)
        assert (rows["expand"]["kernel"], rows["depthwise"]["kernel"]) == \
            ("matmul_csr_f32", "depthwise_dense_f32")
        assert np.array_equal(got, unfused.run({"x": x})["y"]), threads
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        outputs.append(got)
    assert np.array_equal(outputs[0], outputs[1])  # one thread and two: the same bytes


def test_dense_float_mode_keeps_two_steps():
    rows = _rows(zeroskip.Session(_block(), mode="dense-f32"))
    assert rows["depthwise"]["kernel"] == "depthwise_dense_f32"
    assert rows["expand"]["kernel"] != "pointwise_depthwise_f32"


def test_auto_pairs_only_where_the_expand_takes_csr(monkeypatch):
    """auto's CSR-or-dense answer for the 1×1 conv decides: CSR takes the pair, dense leaves both
    steps as they were."""
    model = _block()
    x = randn((2, 3, 12, 12), 12)
    want = zeroskip.Session(model, mode="reference").run({"x": x})["y"]
    for csr in (True, False):
        with monkeypatch.context() as patch:
            patch.setattr(context.PlanContext, "choose_csr",
                          lambda self, density, shape_class, node=None, sparse="CSR":
                          context.Choice(csr, "test"))
            session = zeroskip.Session(model, mode="auto")
            rows = _rows(session)
        fused = rows["depthwise"]["kernel"] == "fused"
        assert fused == csr and (rows["expand"]["kernel"] == "pointwise_depthwise_f32") == csr
        np.testing.assert_allclose(session.run({"x": x})["y"], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", [dict(expand_output=True), dict(dw_kernel=5),
                                     dict(multiplier=2), dict(readers=2)],
                         ids=["graph-output", "5x5", "multiplier-2", "two-readers"])
def test_pairs_the_pass_leaves_alone(variant):
    model = _block(**variant)
    from zeroskip.engine.passes import find_fusions, optimize

    optimized = optimize(model)
    assert passes.find_pointwise_depthwise(optimized, find_fusions(optimized)) == {}
    rows = _rows(zeroskip.Session(model, mode="sparse-f32"))
    assert "pointwise_depthwise_f32" not in {r["kernel"] for r in rows.values()}
    x = randn((2, 3, 12, 12), 13)
    want = zeroskip.Session(model, mode="reference").run({"x": x})
    got = zeroskip.Session(model, mode="sparse-f32").run({"x": x})
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4)


def test_the_pass_finds_the_pair_of_a_plain_block():
    from zeroskip.engine.passes import find_fusions, optimize

    model = optimize(_block())
    pairs = passes.find_pointwise_depthwise(model, find_fusions(model))
    assert {k: v.name for k, v in pairs.items()} == {"expand": "depthwise"}
    # without its activation fused, the expand's reader is the Clip: no pair
    assert passes.find_pointwise_depthwise(model, {}) == {}
