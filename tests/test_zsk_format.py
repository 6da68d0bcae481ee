"""The .zsk v1 format (docs/format.md): round trips, determinism, layout choice, atomic saves, and one
crafted bad file per validation rule, each with its exact ModelFormatError message."""

import json
import mmap
import os
import random
import re
import struct
import zlib

import numpy as np
import pytest

import zeroskip
from zeroskip import CSR, Dense, Graph, Model, ModelFormatError, Node, QuantParams, ValueInfo
from zeroskip.formats import zsk
from zeroskip.ops import normalize_attrs


# -- models --------------------------------------------------------------------------------------

def node(name, op, inputs, outputs, **attrs):
    return Node(name, op, inputs, outputs, normalize_attrs(op, attrs))


def sparse(rng, shape, density, dtype=np.float32):
    w = rng.standard_normal(shape).astype(dtype)
    w[rng.random(shape) >= density] = 0
    return w


def sample_model(seed=0) -> Model:
    """x (N,16) -> Gemm(w csr, b) -> Relu -> Gemm(q int8, per-axis quant; qb int32) -> y (N,4).

    The graph is only well formed, not meant to run: it carries one tensor of each kind.
    """
    rng = np.random.default_rng(seed)
    w = np.zeros((8, 16), np.float32)  # CSR: indptr [0 3 3 4 6 7 8 9 10], indices below
    for row, col in [(0, 0), (0, 3), (0, 7), (2, 15), (3, 1), (3, 2), (4, 4), (5, 5), (6, 6), (7, 7)]:
        w[row, col] = rng.standard_normal() + 3
    q = rng.integers(-127, 128, (4, 8), dtype=np.int8)
    q[q == 0] = 1
    q_scale = (rng.random(4) / 50 + 1e-3).astype(np.float32)
    graph = Graph(
        nodes=[node("fc1", "Gemm", ["x", "w", "b"], ["h"], transB=1),
               node("relu", "Relu", ["h"], ["r"]),
               node("fc2", "Gemm", ["r", "q", "qb"], ["y"], transB=1)],
        inputs=[ValueInfo("x", (None, 16), "float32")],
        outputs=[ValueInfo("y", (None, 4), "float32")],
        initializers={
            "w": CSR.from_dense(w),
            "b": Dense(rng.standard_normal(8).astype(np.float32)),
            "q": Dense(q, QuantParams(q_scale, np.zeros(4, np.int8), axis=0)),
            "qb": Dense(rng.integers(-1000, 1000, 4, dtype=np.int32),
                        QuantParams(q_scale * np.float32(0.05), np.zeros(4, np.int32), axis=0)),
        })
    metadata = {"producer": "tests", "source": {"format": "hand", "name": "sample ✓"},
                "weights": {"w": {"origin": "hand", "sparsity": 0.9, "pruning": "magnitude"},
                            "q": {"origin": "hand", "calibration": "minmax"}}}
    return Model(graph, metadata)


def per_tensor_model() -> Model:
    """uint8 and int8 tensors with one scale and zero point each, a dynamic batch, a 0-d tensor."""
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (3, 5), dtype=np.uint8)
    c = rng.integers(-128, 128, (5,), dtype=np.int8)
    graph = Graph(
        nodes=[node("add", "Add", ["x", "a"], ["s"]), node("mul", "Mul", ["s", "c"], ["t"]),
               node("sub", "Sub", ["t", "k"], ["y"])],
        inputs=[ValueInfo("x", (None, 3, 5), "uint8")],
        outputs=[ValueInfo("y", (None, 3, 5), "uint8")],
        initializers={
            "a": Dense(a, QuantParams(np.array(0.02, np.float32), np.array(128, np.uint8))),
            "c": Dense(c, QuantParams(np.array(1 / 3, np.float32), np.array(-3, np.int8))),
            "k": Dense(np.array(2.5, np.float64)),
        })
    return Model(graph, {"producer": "tests", "note": [1, 2.5, None, True, "x"]})


def dense_model() -> Model:
    rng = np.random.default_rng(2)
    graph = Graph(
        nodes=[node("mm", "MatMul", ["x", "w"], ["y"])],
        inputs=[ValueInfo("x", (2, 6), "float32")],
        outputs=[ValueInfo("y", (2, 3), "float32")],
        initializers={"w": Dense(rng.standard_normal((6, 3)).astype(np.float32))})
    return Model(graph, {})


def big_sparse_model(density=0.1, shape=(64, 300)) -> Model:
    rng = np.random.default_rng(3)
    graph = Graph(
        nodes=[node("fc", "Gemm", ["x", "w"], ["y"], transB=1)],
        inputs=[ValueInfo("x", (None, shape[1]), "float32")],
        outputs=[ValueInfo("y", (None, shape[0]), "float32")],
        initializers={"w": Dense(sparse(rng, shape, density))})
    return Model(graph, {"producer": "tests"})


MODELS = {"sample": sample_model, "per_tensor": per_tensor_model, "dense": dense_model,
          "big_sparse": big_sparse_model}


def assert_same_model(got: Model, want: Model):
    assert got.graph.nodes == want.graph.nodes
    assert got.graph.inputs == want.graph.inputs
    assert got.graph.outputs == want.graph.outputs
    assert got.metadata == want.metadata
    assert sorted(got.graph.initializers) == sorted(want.graph.initializers)
    for name, w in want.graph.initializers.items():
        g = got.graph.initializers[name]
        assert g.shape == w.shape and g.dtype == w.dtype, name
        assert np.array_equal(g.to_numpy(), w.to_numpy()), name
        if w.quant is None:
            assert g.quant is None, name
            continue
        assert g.quant.axis == w.quant.axis, name
        assert g.quant.scale.dtype == np.float32, name
        assert g.quant.zero_point.dtype == w.dtype, name
        assert np.array_equal(g.quant.scale, np.asarray(w.quant.scale, np.float32)), name
        assert np.array_equal(g.quant.zero_point, w.quant.zero_point), name
        assert np.array_equal(g.dequantize(), w.dequantize()), name


def tensor_arrays(tensor):
    if isinstance(tensor, CSR):
        return [tensor.indptr, tensor.indices, tensor.data]
    return [tensor.array]


def touch_all(model: Model):
    """Access every tensor's arrays, which runs any pending verification."""
    for tensor in model.graph.initializers.values():
        tensor_arrays(tensor)
        tensor.to_numpy()


# -- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("verify", ["lazy", "eager"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_through_bytes_and_files(name, verify, tmp_path):
    model = MODELS[name]()
    assert_same_model(zsk.loads(zsk.dumps(model), verify=verify), model)
    path = tmp_path / f"{name}.zsk"
    zeroskip.save(model, path)
    assert_same_model(zeroskip.load(path, verify=verify), model)
    assert path.read_bytes() == zsk.dumps(model)


def test_per_tensor_quant_loads_as_scalars():
    got = zsk.loads(zsk.dumps(per_tensor_model())).graph.initializers
    assert got["a"].quant.axis is None and got["a"].quant.scale.shape == ()
    assert got["a"].quant.zero_point.dtype == np.uint8 and int(got["a"].quant.zero_point) == 128
    assert int(got["c"].quant.zero_point) == -3 and got["c"].quant.scale == np.float32(1 / 3)


def test_negative_quant_axis_is_stored_non_negative():
    model = sample_model()
    q = model.graph.initializers["q"]
    model.graph.initializers["q"] = Dense(q.array, QuantParams(q.quant.scale, q.quant.zero_point, -2))
    assert zsk.loads(zsk.dumps(model)).graph.initializers["q"].quant.axis == 0


def _base(array):
    while isinstance(array, np.ndarray):
        array = array.base
    return array.obj if isinstance(array, memoryview) else array


def test_loaded_arrays_are_read_only_views_of_the_map(tmp_path):
    path = tmp_path / "m.zsk"
    zsk.save(sample_model(), path)
    model = zsk.load(path)
    assert model.graph.initializers["w"].layout == "csr"
    for tensor in model.graph.initializers.values():
        for array in tensor_arrays(tensor):
            assert isinstance(_base(array), mmap.mmap)
            assert not array.flags.writeable
    data = zsk.dumps(sample_model())
    for tensor in zsk.loads(data).graph.initializers.values():
        for array in tensor_arrays(tensor):
            assert _base(array) is data


def test_arrays_outlive_everything_but_themselves(tmp_path):
    path = tmp_path / "m.zsk"
    zsk.save(dense_model(), path)
    w = zsk.load(path).graph.initializers["w"].array  # the Model is gone; the map must not be
    assert np.array_equal(w, dense_model().graph.initializers["w"].array)


def test_bad_verify_mode_is_refused():
    with pytest.raises(ValueError, match="verify must be one of"):
        zsk.loads(zsk.dumps(dense_model()), verify="sometimes")


# -- determinism ---------------------------------------------------------------------------------

def test_saving_twice_gives_identical_bytes(tmp_path):
    zsk.save(sample_model(), tmp_path / "a.zsk")
    zsk.save(sample_model(), tmp_path / "b.zsk")
    assert (tmp_path / "a.zsk").read_bytes() == (tmp_path / "b.zsk").read_bytes()
    assert zsk.dumps(sample_model()) == zsk.dumps(sample_model())


def test_bytes_do_not_depend_on_insertion_order_or_layout_in_memory():
    model = sample_model()
    shuffled = sample_model()
    g = shuffled.graph
    g.initializers = dict(reversed(list(g.initializers.items())))
    g.initializers["w"] = Dense(g.initializers["w"].to_numpy())  # CSR in memory -> dense in memory
    g.nodes = [Node(n.name, n.op, n.inputs, n.outputs, dict(reversed(list(n.attrs.items()))))
               for n in g.nodes]
    shuffled.metadata = dict(reversed(list(model.metadata.items())))
    assert list(shuffled.graph.initializers) != list(model.graph.initializers)
    assert zsk.dumps(shuffled) == zsk.dumps(model)


def test_header_is_sorted_compact_json():
    data = zsk.dumps(sample_model())
    raw = data[24:24 + struct.unpack_from("<Q", data, 16)[0]]
    header = json.loads(raw)
    assert raw == json.dumps(header, sort_keys=True, separators=(",", ":"),
                             ensure_ascii=False).encode()
    offsets = [entry["buffers"][role]["offset"] for _, entry in sorted(header["tensors"].items())
               for role in zsk.ROLES[entry["layout"]]]
    assert offsets == sorted(offsets) and all(o % 64 == 0 for o in offsets)
    assert (24 + len(raw) + 63) // 64 * 64 + header["data_length"] == len(data)


# -- layout choice -------------------------------------------------------------------------------

def stored(model) -> dict:
    """The header's tensor table of ``model``'s bytes."""
    data = zsk.dumps(model)
    return json.loads(data[24:24 + struct.unpack_from("<Q", data, 16)[0]])["tensors"]


def test_sparse_weight_is_stored_csr_with_narrow_indices_and_dense_one_dense():
    model = big_sparse_model(density=0.1, shape=(64, 300))
    entry = stored(model)["w"]
    assert entry["layout"] == "csr"
    assert entry["buffers"]["indices"]["dtype"] == "uint16"  # 300 columns
    assert entry["buffers"]["indptr"]["dtype"] == "uint16"  # about 1900 nonzeros
    loaded = zsk.loads(zsk.dumps(model)).graph.initializers["w"]
    assert loaded.layout == "csr"
    assert np.array_equal(loaded.to_numpy(), model.graph.initializers["w"].to_numpy())

    full = big_sparse_model(density=1.0)
    assert stored(full)["w"]["layout"] == "dense"
    assert zsk.loads(zsk.dumps(full)).graph.initializers["w"].layout == "dense"


def test_csr_in_memory_is_written_dense_when_that_is_smaller():
    model = big_sparse_model(density=0.9)
    w = model.graph.initializers["w"].to_numpy()
    model.graph.initializers["w"] = CSR.from_dense(w)
    loaded = zsk.loads(zsk.dumps(model)).graph.initializers["w"]
    assert loaded.layout == "dense" and np.array_equal(loaded.to_numpy(), w)


@pytest.mark.parametrize("array", [
    np.where(np.arange(4096) % 10 == 0, 1.0, 0.0).astype(np.float32),  # 1-d: a bias stays dense
    np.where(np.arange(4096).reshape(64, 64) % 10 == 0, 7, 0).astype(np.int32),  # int32: dense
])
def test_only_float_and_8_bit_weights_may_become_csr(array):
    model = dense_model()
    model.graph.initializers["z"] = Dense(array)
    assert stored(model)["z"]["layout"] == "dense"


def test_sparse_int8_weight_is_stored_csr_with_its_quantization():
    rng = np.random.default_rng(9)
    q = (sparse(rng, (32, 64), 0.1) * 40).astype(np.int8)
    model = dense_model()
    model.graph.initializers["q"] = Dense(q, QuantParams(np.full(32, 0.5, np.float32),
                                                         np.zeros(32, np.int8), axis=0))
    assert stored(model)["q"]["layout"] == "csr"
    assert_same_model(zsk.loads(zsk.dumps(model), verify="eager"), model)


def test_all_zero_and_empty_weights_round_trip():
    model = dense_model()
    model.graph.initializers["zero"] = Dense(np.zeros((16, 16), np.float32))
    model.graph.initializers["empty"] = Dense(np.zeros((0, 5), np.float32))
    model.graph.initializers["no_cols"] = CSR.from_dense(np.zeros((3, 0), np.float32))
    assert stored(model)["zero"]["layout"] == "csr"
    assert_same_model(zsk.loads(zsk.dumps(model), verify="eager"), model)


# -- atomic, validated saves ---------------------------------------------------------------------

def invalid_model() -> Model:
    model = dense_model()
    model.graph.nodes[0] = Node("mm", "Frobnicate", ["x", "w"], ["y"])
    return model


def test_invalid_model_never_reaches_disk(tmp_path):
    target = tmp_path / "m.zsk"
    target.write_bytes(b"precious")
    with pytest.raises(ModelFormatError) as err:
        zsk.save(invalid_model(), target)
    assert str(err.value) == "node 'mm' (Frobnicate): unknown op 'Frobnicate'"
    assert target.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["m.zsk"]


def test_failed_write_leaves_existing_file_and_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "m.zsk"
    zsk.save(dense_model(), target)
    before = target.read_bytes()

    def write_half_then_fail(f, chunks):
        f.write(next(iter(chunks)))
        raise OSError("disk full")

    monkeypatch.setattr(zsk, "_write_chunks", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        zsk.save(sample_model(), target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.zsk"]


def test_failed_rename_leaves_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "m.zsk"
    target.write_bytes(b"precious")

    def refuse(src, dst):
        raise PermissionError("no")

    monkeypatch.setattr(zsk.os, "replace", refuse)
    with pytest.raises(PermissionError):
        zsk.save(dense_model(), target)
    assert target.read_bytes() == b"precious" and os.listdir(tmp_path) == ["m.zsk"]


def test_save_replaces_an_existing_file_and_keeps_its_mode(tmp_path):
    target = tmp_path / "m.zsk"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    zsk.save(dense_model(), target)
    assert target.read_bytes() == zsk.dumps(dense_model())
    assert target.stat().st_mode & 0o777 == 0o640


def bad_quant_model(scale=0.5, zero_point=0, axis=0, dtype=np.int8):
    model = dense_model()
    model.graph.initializers["q"] = Dense(np.ones((2, 3), dtype),
                                          QuantParams(np.full(2, scale, np.float32),
                                                      np.full(2, zero_point), axis))
    return model


def unsorted_csr_model():
    model = dense_model()
    model.graph.initializers["s"] = CSR(np.array([0, 2]), np.array([2, 1]),
                                        np.ones(2, np.float32), (1, 3))
    return model


def attr_model(value):
    model = dense_model()
    model.graph.nodes.append(node("act", "LeakyRelu", ["y"], ["z"], alpha=value))
    model.graph.outputs = [ValueInfo("z", (2, 3), "float32")]
    return model


def io_model(dtype):
    model = dense_model()
    model.graph.inputs = [ValueInfo("x", (2, 6), dtype)]
    return model


def meta_model(value):
    model = dense_model()
    model.metadata = {"producer": value}
    return model


def tensor_model(tensor):
    model = dense_model()
    model.graph.initializers["t"] = tensor
    return model


SAVE_ERRORS = {
    "nan scale": (lambda: bad_quant_model(scale=np.nan),
                  "tensor 'q' quant: scale[0] = nan is not finite and > 0 (as float32)"),
    "zero scale": (lambda: bad_quant_model(scale=0.0),
                   "tensor 'q' quant: scale[0] = 0.0 is not finite and > 0 (as float32)"),
    "zero point range": (lambda: bad_quant_model(zero_point=300),
                         "tensor 'q' quant: zero_point[0] = 300 is outside the range of int8 "
                         "[-128, 127]"),
    "float quantized": (lambda: bad_quant_model(dtype=np.float32),
                        "tensor 'q' quant: only integer tensors may be quantized, not float32"),
    "quant axis": (lambda: bad_quant_model(axis=2),
                   "tensor 'q' quant: axis 2 is out of range for a 2-d tensor"),
    "unsorted csr": (unsorted_csr_model,
                     "tensor 's': row 0: column indices are not strictly increasing (unsorted or "
                     "duplicate) at position 1"),
    "object dtype": (lambda: tensor_model(Dense(np.array([{}], dtype=object))),
                     "tensor 't': dtype 'object' is not allowed (allowed: float32, float64, "
                     "float16, int8, uint8, int16, uint16, int32, int64, bool)"),
    "not a tensor": (lambda: tensor_model(np.zeros(3)),
                     "tensor 't': expected Dense or CSR, not ndarray"),
    "nan attribute": (lambda: attr_model(float("nan")),
                      "node 'act' (LeakyRelu) attrs: not serializable as JSON: NaN and "
                      "infinities are not allowed"),
    "graph input dtype": (lambda: io_model("complex64"),
                          "graph input 'x': dtype 'complex64' is not allowed (allowed: float32, "
                          "float64, float16, int8, uint8, int16, uint16, int32, int64, bool)"),
    "metadata": (lambda: meta_model(object()),
                 "metadata: not serializable as JSON: object is not a JSON value"),
}


@pytest.mark.parametrize("case", sorted(SAVE_ERRORS))
def test_save_refuses_invalid_models(case, tmp_path):
    build, message = SAVE_ERRORS[case]
    with pytest.raises(ModelFormatError) as err:
        zsk.save(build(), tmp_path / "m.zsk")
    assert str(err.value) == message
    assert os.listdir(tmp_path) == []


def test_numpy_scalars_in_attrs_and_metadata_are_saved_as_json_numbers():
    model = attr_model(np.float32(0.25))
    model.metadata = {"sparsity": np.float64(0.5), "rows": np.int64(3), "shape": (1, 2)}
    loaded = zsk.loads(zsk.dumps(model))
    assert loaded.graph.nodes[1].attrs["alpha"] == 0.25
    assert loaded.metadata == {"sparsity": 0.5, "rows": 3, "shape": [1, 2]}
