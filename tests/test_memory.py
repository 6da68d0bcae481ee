"""Memory bounds: the peak estimate, the budget, batches run in chunks or refused, and hostile sizes
that must end in an error before anything large is allocated."""

import resource
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import zeroskip
from zeroskip import (Dense, Graph, InputError, Model, Node, Session, UnsupportedModelError,
                      ValueInfo, ZeroskipError)
from zeroskip.budget import ENV, memory_budget, over_budget, parse_size, show_bytes
from zeroskip.engine.memory import estimate
from zeroskip.engine.plan import MODES
from zeroskip.ops import normalize_attrs
from zeroskip.shapes import batch_coupling, infer_shapes

DATA = Path(zeroskip.__file__).parent / "data"


def node(name, op, inputs, outputs, **attrs):
    return Node(name, op, inputs, outputs, normalize_attrs(op, attrs))


def demo(name) -> Model:
    return zeroskip.load(DATA / f"{name}.zsk")


def images(model, batch, seed=0):
    vi = model.graph.inputs[0]
    shape = (batch,) + tuple(vi.shape[1:])
    return {vi.name: np.random.default_rng(seed).random(shape, np.float32)}


# -- the budget ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, want", [("1536", 1536), ("512M", 512 << 20), ("2g", 2 << 30),
                                        ("1.5K", 1536), ("3GiB", 3 << 30), ("1T", 1 << 40),
                                        ("64MB", 64 << 20), (" 0 ", 0)])
def test_sizes_parse_in_binary_units(text, want):
    assert parse_size(text, ENV) == want


@pytest.mark.parametrize("text", ["", "lots", "-1G", "1X", "nan", "inf", "G"])
def test_a_size_that_is_not_one_is_refused_by_name(text):
    with pytest.raises(ZeroskipError, match=f"{ENV}=.* is not a size"):
        parse_size(text, ENV)


def test_the_limit_comes_from_the_environment_else_the_system(monkeypatch):
    monkeypatch.setenv(ENV, "100M")
    assert memory_budget() == 100 << 20
    assert over_budget(200 << 20) == 100 << 20 and over_budget(90 << 20) is None
    assert over_budget(1 << 20) is None  # small allocations are never checked
    monkeypatch.delenv(ENV)
    system = memory_budget()
    assert system is None or system > 0
    assert show_bytes(1536) == "1.5 KiB" and show_bytes(12) == "12 B"


# -- the estimate ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["digits_cnn", "digits_cnn_pruned_int8", "digits_mlp",
                                  "digits_mlp_int8"])
def test_the_estimate_bounds_what_a_reference_run_allocates(name):
    """tracemalloc sees every numpy allocation of the reference (it runs no Numba): the estimated
    activations must cover the traced peak, and not by more than 4x."""
    model = demo(name)
    session = Session(model, mode="reference")
    feeds = images(model, 512)
    session.run(feeds)
    tracemalloc.start()
    try:
        session.run(feeds)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    need = estimate(model.graph, {k: v.shape for k, v in feeds.items()}, "reference")
    assert peak <= need.activations <= 4 * peak, (peak, need)


def test_the_estimate_grows_with_the_batch_and_the_element_size():
    model = demo("digits_cnn")
    vi = model.graph.inputs[0]
    at = {b: estimate(model.graph, {vi.name: (b, 1, 8, 8)}, "dense-f32") for b in (1, 2, 64)}
    per_sample = at[2].activations - at[1].activations
    assert per_sample > 0 and at[64].activations == at[1].activations + 63 * per_sample
    wide = estimate(model.graph, {vi.name: (64, 1, 8, 8)}, "reference")
    assert wide.activations > 2 * at[64].activations  # float64 against float32, and more copies
    assert at[64].outputs == 64 * 10 * 4


# -- hostile sizes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2**31, 1, 8, 8), (None, 1, 2**20, 2**20), (None, 2**40, 8, 8)])
def test_a_hostile_declared_size_is_refused_before_any_allocation(shape):
    """A file may declare any static size; opening it in any mode refuses it with the estimate
    instead of planning (auto would time layers at that size) or running into a MemoryError."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for mode in MODES:
        model = demo("digits_cnn_int8")
        vi = model.graph.inputs[0]
        model.graph.inputs[0] = ValueInfo(vi.name, shape, vi.dtype)
        with pytest.raises(ZeroskipError) as info:
            Session(model, mode=mode)
        assert isinstance(info.value, (UnsupportedModelError, zeroskip.ModelFormatError))
        assert "available" in str(info.value) or "must equal" in str(info.value), str(info.value)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 200 * 1024, f"{grown} KiB more resident memory"


def test_a_shape_computed_at_run_time_is_checked_before_it_is_allocated(monkeypatch):
    graph = Graph(nodes=[node("fill", "ConstantOfShape", ["dims"], ["y"], value=1.0)],
                  inputs=[ValueInfo("dims", (2,), "int64")],
                  outputs=[ValueInfo("y", (None, None), "float32")])
    session = Session(Model(graph), mode="reference")
    assert session.run({"dims": np.array([2, 3])})["y"].shape == (2, 3)
    monkeypatch.setenv(ENV, "1G")
    with pytest.raises(InputError, match=r"^node 'fill' \(ConstantOfShape\).*shape \(65536, "
                                         r"65536\) needs 32\.0 GiB, more than the 1\.0 GiB"):
        session.run({"dims": np.array([1 << 16, 1 << 16])})
    assert session.run({"dims": np.array([3, 1])})["y"].shape == (3, 1)


def test_a_chain_of_concats_on_a_shape_is_sized_without_tracking_its_elements(monkeypatch):
    """Each Concat(s, s) doubles a shape vector: 30 of them describe 2**31 integers, which shape
    inference must size without listing them, and a session must refuse to make."""
    nodes = [node("shape", "Shape", ["x"], ["s0"])]
    for i in range(30):
        nodes.append(node(f"cat{i}", "Concat", [f"s{i}", f"s{i}"], [f"s{i + 1}"], axis=0))
    graph = Graph(nodes, [ValueInfo("x", (None, 4), "float32")],
                  [ValueInfo("s30", (None,), "int64")])
    assert infer_shapes(graph)["s30"].shape == (2**31,)
    monkeypatch.setenv(ENV, "1G")
    with pytest.raises(UnsupportedModelError, match="more than the 1.0 GiB available"):
        Session(Model(graph))


def test_a_reshape_to_billions_of_axes_is_refused():
    graph = Graph([node("r", "Reshape", ["x", "dims"], ["y"])],
                  [ValueInfo("x", (None, 4), "float32"), ValueInfo("dims", (2**40,), "int64")],
                  [ValueInfo("y", None, "float32")])
    with pytest.raises(zeroskip.ModelFormatError,
                       match=r"node 'r' \(Reshape\): the target shape has 1099511627776 entries: "
                             r"at most 64 axes"):
        Session(Model(graph))


def test_a_pool_without_its_kernel_is_refused():
    graph = Graph([node("p", "MaxPool", ["x"], ["y"], kernel_shape=None)],
                  [ValueInfo("x", (None, 1, 4, 4), "float32")],
                  [ValueInfo("y", (None, 1, 4, 4), "float32")])
    for mode in MODES[:3]:
        with pytest.raises(zeroskip.ModelFormatError, match=r"node 'p' \(MaxPool\): kernel_shape "
                                                            r"is required"):
            Session(Model(graph), mode=mode)


# -- chunks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, mode", [("digits_cnn_pruned_int8", "reference"),
                                        ("digits_cnn_pruned_int8", "dense-i8"),
                                        ("digits_cnn", "sparse-f32"),
                                        ("digits_mlp_int8", "auto")])
def test_a_batch_over_the_limit_runs_in_chunks_with_the_same_outputs(monkeypatch, name, mode):
    model = demo(name)
    session = Session(model, mode=mode, threads=1)
    feeds = images(model, 3000 if "cnn" in name else 60000)
    whole = session.run(feeds)
    runs = []
    run_checked = session._run_checked
    monkeypatch.setattr(session, "_run_checked", lambda checked: (
        runs.append(next(iter(checked.values())).shape[0]), run_checked(checked))[1])
    need = session._estimate(tuple(v.shape for v in feeds.values()))
    monkeypatch.setenv(ENV, str(need.activations // 3))
    chunked = session.run(feeds)
    assert len(runs) >= 3 and sum(runs) == len(next(iter(feeds.values())))
    assert len(set(runs[:-1])) == 1 and runs[-1] <= runs[0]
    for out in whole:
        assert chunked[out].dtype == whole[out].dtype
        assert chunked[out].tobytes() == whole[out].tobytes()
    per_chunk = session._estimate(tuple((runs[0],) + v.shape[1:] for v in feeds.values()))
    assert per_chunk.activations + 2 * need.outputs <= need.activations // 3


def test_a_batch_that_cannot_be_split_is_refused_with_the_reason(monkeypatch):
    """Softmax over axis 0 mixes the samples: chunks would change the answer."""
    graph = Graph(nodes=[node("soft", "Softmax", ["x"], ["y"], axis=0)],
                  inputs=[ValueInfo("x", (None, 4096), "float32")],
                  outputs=[ValueInfo("y", (None, 4096), "float32")])
    session = Session(Model(graph), mode="reference")
    x = np.ones((4096, 4096), np.float32)
    monkeypatch.setenv(ENV, "100M")
    with pytest.raises(InputError, match=r"^input 'x': a batch of 4096 needs about .* more than "
                                         r"the 100\.0 MiB available .*cannot run in chunks \(node "
                                         r"'soft' \(Softmax\) works along the batch axis\): the "
                                         r"largest batch that fits is \d+$"):
        session.run({"x": x})
    y = session.run({"x": x[:8]})["y"]  # the session still runs what fits
    np.testing.assert_allclose(y, np.full((8, 4096), 1 / 8, np.float32), rtol=1e-6)
    monkeypatch.setenv(ENV, "1K")
    with pytest.raises(InputError, match="even a batch of 1 does not fit"):
        Session(Model(Graph(graph.nodes[:0] + [node("relu", "Relu", ["x"], ["y"])],
                            graph.inputs, graph.outputs))).run({"x": x})


def _graph(nodes, inputs, outputs, initializers=None):
    return Graph(nodes, inputs, outputs, initializers or {})


@pytest.mark.parametrize("build, reason", [
    (lambda: _graph([node("t", "Transpose", ["x"], ["y"], perm=[1, 0])],
                    [ValueInfo("x", (None, 4), "float32")], [ValueInfo("y", (4, None), "float32")]),
     "node 't' (Transpose): output 'y' does not keep the batch first"),
    (lambda: _graph([node("r", "ReduceMean", ["x"], ["y"], axes=[0], keepdims=1)],
                    [ValueInfo("x", (None, 4), "float32")], [ValueInfo("y", (1, 4), "float32")]),
     "node 'r' (ReduceMean) works along the batch axis"),
    (lambda: _graph([node("f", "Flatten", ["x"], ["y"], axis=0)],
                    [ValueInfo("x", (None, 4), "float32")], [ValueInfo("y", (1, None), "float32")]),
     "node 'f' (Flatten) works along the batch axis"),
    (lambda: _graph([node("r", "Relu", ["x"], ["y"])],
                    [ValueInfo("x", (8, 4), "float32")], [ValueInfo("y", (8, 4), "float32")]),
     "graph input 'x' has no dynamic first (batch) axis"),
    (lambda: _graph([node("r", "Reshape", ["x", "s"], ["y"])],
                    [ValueInfo("x", (None, 4), "float32")], [ValueInfo("y", (None,), "float32")],
                    {"s": Dense(np.array([-1], np.int64))}),
     "node 'r' (Reshape): output 'y' does not keep the batch first"),
    (lambda: _graph([node("c", "Concat", ["x", "x"], ["y"], axis=0)],
                    [ValueInfo("x", (None, 4), "float32")], [ValueInfo("y", (None, 4), "float32")]),
     "node 'c' (Concat) works along the batch axis"),
    (lambda: _graph([node("c", "Concat", ["x", "x"], ["y"], axis=-1)],
                    [ValueInfo("x", (None, 4), "float32")], [ValueInfo("y", (None, 8), "float32")]),
     None),
    (lambda: _graph([node("s", "Shape", ["x"], ["n"]), node("r", "Reshape", ["x", "n"], ["y"])],
                    [ValueInfo("x", (None, 4), "float32")], [ValueInfo("y", (None, 4), "float32")]),
     None),
])
def test_batch_coupling_names_what_ties_the_samples_together(build, reason):
    assert batch_coupling(build()) == reason


def test_the_demo_models_have_independent_samples():
    for path in sorted(DATA.glob("*.zsk")):
        assert batch_coupling(zeroskip.load(path).graph) is None, path.name
