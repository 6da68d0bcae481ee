"""A QAdd whose input is a QConv's alone runs in the conv's epilogue, with the same bytes.

The residual Adds of a ResNet block (second conv + shortcut) and of a MobileNetV2 block (projection
+ block input) are QAdds of a conv's output and a value computed before the conv. The plan fuses
them (``passes.find_residual_adds``): the conv's kernel requantizes each row, then adds the
shortcut's row as the QAdd would, and the QAdd's step is "fused". Depthwise convs have no such
epilogue, and a residual that broadcasts falls back to the two steps.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import zeroskip  # noqa: E402
from zeroskip.engine import passes  # noqa: E402
from zeroskip.engine.plan import context  # noqa: E402
from zeroskip.model import Graph, Model, Node, ValueInfo  # noqa: E402

from onnx_builders import make_model, node, pruned, randn  # noqa: E402
from quant_builders import FLOAT_MODELS, calibration, quantize  # noqa: E402


def _broadcast_residual():
    """Conv -> Relu -> (Conv, GlobalAveragePool) -> Add (the pooled (N,C,1,1) side broadcasts)."""
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), node("Relu", ["c1"], ["r1"]),
             node("GlobalAveragePool", ["r1"], ["g1"]),
             node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             node("Add", ["c2", "g1"], ["s"]), node("Relu", ["s"], ["r2"]),
             node("GlobalAveragePool", ["r2"], ["g"]), node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    inits = {"w1": randn((6, 3, 3, 3), 1, 0.3), "b1": randn(6, 2, 0.1),
             "w2": pruned((6, 6, 3, 3), 0.3, seed=3, scale=0.3), "b2": randn(6, 4, 0.1),
             "w3": randn((5, 6), 5, 0.5), "b3": randn(5, 6, 0.1)}
    return make_model(nodes, [("x", ["N", 3, 7, 7])], [("y", ["N", 5])], inits), "x", (3, 7, 7)


MODELS = {"pointwise": FLOAT_MODELS["pointwise"], "residual": FLOAT_MODELS["residual"],
          "broadcast": _broadcast_residual}


def _quantized(name, fmt="qdq", act="uint8"):
    logging.disable(logging.WARNING)
    try:
        model, input_name, shape = MODELS[name]()
        return zeroskip.import_onnx(quantize(model, fmt, act, True, input_name, shape)), input_name, \
            calibration(shape, 5, seed=3)
    finally:
        logging.disable(logging.NOTSET)


def _rows(session):
    return {r["node"]: r for r in session.explain()}


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_fused_residual_add_gives_the_bytes_of_the_two_ops(fmt, act, monkeypatch):
    """The pointwise model's Add of two 1×1 convs runs in the later conv's epilogue, in dense-i8
    (im2row + the dense GEMM) and sparse-i8 (the CSR GEMM), at 1 and 2 threads: the bytes of the
    unfused plan and of the integer reference."""
    model, name, x = _quantized("pointwise", fmt, act)
    want = zeroskip.Session(model, mode="reference").run({name: x})
    for mode in ("dense-i8", "sparse-i8"):
        for threads in (1, 2):
            session = zeroskip.Session(model, mode=mode, threads=threads)
            rows = _rows(session)
            (add,) = [r for r in rows.values() if r["op"] == "QAdd"]
            assert add["kernel"] == "fused" and "epilogue" in add["reason"], add
            conv = [r for r in rows.values() if "(QAdd) in the same epilogue" in r["reason"]]
            assert len(conv) == 1 and conv[0]["op"] == "QConv", rows
            got = session.run({name: x})
            for key in want:
                assert np.array_equal(got[key], want[key].astype(got[key].dtype)), (mode, threads)
    with monkeypatch.context() as patch:  # the same plan without the fusion
        patch.setattr(context, "find_residual_adds", lambda model: {})
        unfused = zeroskip.Session(model, mode="sparse-i8")
        assert [r["kernel"] for r in _rows(unfused).values() if r["op"] == "QAdd"] == \
            ["add_dense_i8"]
        got = unfused.run({name: x})
        assert all(np.array_equal(got[k], want[k].astype(got[k].dtype)) for k in want)


def test_a_depthwise_conv_keeps_its_add_as_a_step():
    """The residual model's Add follows a depthwise conv, whose kernels have no residual epilogue:
    the pass proposes the fusion, the plan undoes it, and the QAdd runs its own kernel."""
    model, name, x = _quantized("residual")
    (conv_name, (add, _)), = passes.find_residual_adds(model).items()
    session = zeroskip.Session(model, mode="sparse-i8")
    rows = _rows(session)
    assert rows[add.name]["kernel"] == "add_dense_i8"
    assert "epilogue, row by row" not in rows[conv_name]["reason"]
    want = zeroskip.Session(model, mode="reference").run({name: x})
    got = session.run({name: x})
    assert all(np.array_equal(got[k], want[k].astype(got[k].dtype)) for k in want)


def test_a_residual_that_broadcasts_runs_the_two_steps():
    """An Add of a conv and a pooled (N,C,1,1) tensor is fused at plan time (shapes are not
    known), but at run time the residual's shape is not the conv's output's: the step runs the conv
    and then the QAdd's own step, broadcasting, with the reference's bytes."""
    model, name, x = _quantized("broadcast")
    assert passes.find_residual_adds(model)
    for mode in ("dense-i8", "sparse-i8"):
        session = zeroskip.Session(model, mode=mode)
        assert [r["kernel"] for r in session.explain() if r["op"] == "QAdd"] == ["fused"]
        want = zeroskip.Session(model, mode="reference").run({name: x})
        got = session.run({name: x})
        assert all(np.array_equal(got[k], want[k].astype(got[k].dtype)) for k in want), mode


def _graph(nodes, outputs=("y",)):
    return Model(Graph(nodes, [ValueInfo("x", (1, 4, 5, 5), "uint8")],
                       [ValueInfo(o, None, "uint8") for o in outputs]))


def _qconv(name, x, y, y_dtype="uint8"):
    return Node(name, "QConv", [x, "w"], [y], {"y_dtype": y_dtype})


def _qadd(name, a, b, y, y_dtype="uint8"):
    return Node(name, "QAdd", [a, b], [y], {"y_dtype": y_dtype})


def test_which_adds_the_pass_finds():
    """Only a QConv read by one QAdd alone, of its output type, whose other input is ready before
    the conv runs (and whose output is not a graph output)."""
    find = passes.find_residual_adds
    found = find(_graph([_qconv("c", "x", "h"), _qadd("a", "x", "h", "y")]))
    assert {name: (add.name, side) for name, (add, side) in found.items()} == {"c": ("a", 1)}
    # the other input is computed after the conv: only the later conv can take the add
    later = find(_graph([_qconv("c1", "x", "h1"), _qconv("c2", "x", "h2"),
                         _qadd("a", "h1", "h2", "y")]))
    assert {name: side for name, (_, side) in later.items()} == {"c2": 1}
    assert not find(_graph([_qconv("c", "x", "h"), _qadd("a", "h", "x", "y"),
                            _qadd("b", "h", "x", "z")], ("y", "z")))       # two readers
    assert not find(_graph([_qconv("c", "x", "h"), _qadd("a", "h", "x", "y")], ("y", "h")))
    assert not find(_graph([_qconv("c", "x", "h", "int8"), _qadd("a", "h", "x", "y")]))
    assert not find(_graph([_qconv("c", "x", "h"), _qadd("a", "h", "h", "y")]))  # h + h
