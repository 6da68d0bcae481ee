"""The .zsk format, versions 1 and 2 (docs/format.md): round trips, determinism, layout choice, atomic saves, and
crafted bad files for every validation rule of the spec (V1, V2, ...: see ``RULES``), each with its
exact ModelFormatError message."""

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
from zeroskip import BSR, CSR, Dense, Graph, Model, ModelFormatError, Node, QuantParams, ValueInfo
from zeroskip.formats import zsk
from zeroskip.ops import ATTR_TYPES, MAX_WINDOW, WINDOW_ATTRS, attr_type_error, normalize_attrs


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


def block_sparse(rng, shape, block, density, dtype=np.float32):
    """A (rows, cols) array whose nonzeros fill about ``density`` of its r×c blocks."""
    (rows, cols), (r, c) = shape, block
    keep = rng.random((rows // r, 1, cols // c, 1)) < density
    w = rng.standard_normal((rows // r, r, cols // c, c)) * keep
    return (w * 40 if np.dtype(dtype).kind == "i" else w).astype(dtype).reshape(rows, cols)


def bsr_model(block=(1, 4)) -> Model:
    """big_sparse_model's Gemm on a weight pruned in 1×4 blocks (a tenth of them kept): stored bsr."""
    rng = np.random.default_rng(4)
    model = big_sparse_model()
    model.graph.initializers["w"] = Dense(block_sparse(rng, (64, 300), block, 0.1))
    return model


MODELS = {"sample": sample_model, "per_tensor": per_tensor_model, "dense": dense_model,
          "big_sparse": big_sparse_model, "bsr": bsr_model}


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
    if isinstance(tensor, (CSR, BSR)):
        return [tensor.indptr, tensor.indices, tensor.data]
    return [tensor.array]


def touch_all(model: Model):
    """Access every tensor's arrays, which runs any pending verification, and use them.

    A CSR tensor's dense form is as large as its declared shape, which the file's size does not
    bound (a few nonzeros may claim 2**40 columns): densifying is the consumer's call, so it is
    done here only for shapes of reasonable size.
    """
    for tensor in model.graph.initializers.values():
        tensor_arrays(tensor)
        if tensor.size <= 1 << 24:
            tensor.to_numpy()
            tensor.dequantize()


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


def test_loads_takes_any_bytes_like_and_copies_mutable_ones():
    data = bytearray(zsk.dumps(dense_model()))
    model = zsk.loads(data)
    data[-64:] = bytes(64)  # changing the caller's buffer cannot reach the loaded model
    assert_same_model(model, dense_model())
    assert_same_model(zsk.loads(memoryview(zsk.dumps(dense_model()))), dense_model())


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


def test_csr_is_written_canonically_whatever_its_form_in_memory():
    dense = big_sparse_model(density=0.1)
    w = dense.graph.initializers["w"].to_numpy()
    wide = big_sparse_model(density=0.1)  # int64 indices: narrowed on write
    ref = CSR.from_dense(w)
    wide.graph.initializers["w"] = CSR(ref.indptr.astype(np.int64), ref.indices.astype(np.int64),
                                       ref.data, w.shape)
    zeros = big_sparse_model(density=0.1)  # explicit zeros stored in row 0: dropped on write
    row0 = np.arange(w.shape[1])
    rest = CSR.from_dense(w[1:])
    indptr = np.concatenate([[0], rest.indptr.astype(np.int64) + len(row0)])
    zeros.graph.initializers["w"] = CSR(indptr, np.concatenate([row0, rest.indices]),
                                        np.concatenate([w[0], rest.data]), w.shape)
    assert zeros.graph.initializers["w"].nnz > ref.nnz
    assert zsk.dumps(wide) == zsk.dumps(dense) == zsk.dumps(zeros)


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


def test_block_sparse_weight_is_stored_bsr_in_a_version_2_file():
    model = bsr_model()
    data = zsk.dumps(model)
    entry = stored(model)["w"]
    assert entry["layout"] == "bsr" and entry["block"] == [1, 4]
    w = model.graph.initializers["w"].to_numpy()
    blocks = int(np.count_nonzero(w.reshape(64, 75, 4).any(axis=2)))
    assert entry["buffers"]["indices"]["length"] == blocks  # uint8: 75 block columns
    assert entry["buffers"]["data"]["length"] == blocks * 4 * 4  # float32 1×4 blocks
    assert struct.unpack_from("<I", data, 8)[0] == 2 and json.loads(
        data[24:24 + struct.unpack_from("<Q", data, 16)[0]])["version"] == 2
    csr_bytes = zsk._sparse_bytes(64, 300, int(np.count_nonzero(w)), 1, np.dtype(np.float32))
    assert len(data) < len(zsk.dumps(big_sparse_model())) and entry["buffers"]["data"]["length"] < (
        csr_bytes)
    loaded = zsk.loads(data, verify="eager").graph.initializers["w"]
    assert loaded.layout == "bsr" and loaded.block == (1, 4) and loaded.data.shape == (blocks, 1, 4)
    assert np.array_equal(loaded.to_numpy(), w) and loaded.nnz == np.count_nonzero(w)
    assert zsk.dumps(zsk.loads(data)) == data


def test_a_file_with_no_bsr_tensor_stays_version_1():
    for build in (sample_model, big_sparse_model, dense_model):
        data = zsk.dumps(build())
        assert struct.unpack_from("<I", data, 8)[0] == 1, build.__name__


@pytest.mark.parametrize("block", [(1, 4), (4, 1), (2, 2), (8, 1), (1, 8), (4, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.int8])
def test_the_writer_finds_the_block_of_a_block_pruned_weight(block, dtype):
    rng = np.random.default_rng(sum(block))
    w = block_sparse(rng, (64, 96), block, 0.15, dtype)
    model = big_sparse_model(shape=(64, 96))
    quant = QuantParams(np.full(64, 0.5, np.float32), np.zeros(64, np.int8), axis=0)
    model.graph.initializers["w"] = Dense(w, quant if dtype == np.int8 else None)
    entry = stored(model)["w"]
    # a sparser layout of the same blocks may tie or win (4×4 blocks are 2×2 and 4×1 blocks too),
    # never a coarser one than the weight has, and never csr or dense
    assert entry["layout"] == "bsr"
    r, c = entry["block"]
    assert block[0] % r == 0 and block[1] % c == 0 and r * c > 1
    assert_same_model(zsk.loads(zsk.dumps(model), verify="eager"), model)


def test_unstructured_sparsity_stays_csr_and_a_4d_conv_weight_may_be_bsr():
    assert stored(big_sparse_model(density=0.1))["w"]["layout"] == "csr"
    rng = np.random.default_rng(5)
    # a conv weight (32, 16, 3, 3) pruned by groups of 4 output channels: (4, 1) blocks of its
    # matrix (32, 144)
    keep = rng.random((8, 1, 144)) < 0.1
    w4 = (rng.standard_normal((8, 4, 144)) * keep).astype(np.float32).reshape(32, 16, 3, 3)
    model = dense_model()
    model.graph.initializers["c"] = Dense(w4)
    entry = stored(model)["c"]
    assert entry["layout"] == "bsr" and entry["block"] == [4, 1, 1, 1]
    assert entry["shape"] == [32, 16, 3, 3]
    assert_same_model(zsk.loads(zsk.dumps(model), verify="eager"), model)


def test_bsr_is_written_canonically_whatever_its_form_in_memory():
    model = bsr_model()
    w = model.graph.initializers["w"].to_numpy()
    want = zsk.dumps(model)
    ref = BSR.from_dense(w, (1, 4))
    assert ref.nnz == np.count_nonzero(w) and ref.blocks == np.count_nonzero(
        w.reshape(64, 75, 4).any(axis=2))
    wide = bsr_model()  # int64 indices, an all-zero block stored in row 0, a coarser block
    row0 = BSR.from_dense(w[:1], (1, 4))
    zero_col = next(j for j in range(75) if j not in set(row0.indices.tolist()))
    cols = np.sort(np.concatenate([row0.indices, [zero_col]])).astype(np.int64)
    data0 = w[0].reshape(75, 1, 4)[cols]
    rest = BSR.from_dense(w[1:], (1, 4))
    indptr = np.concatenate([[0], rest.indptr.astype(np.int64) + len(cols)])
    wide.graph.initializers["w"] = BSR(indptr, np.concatenate([cols, rest.indices]),
                                       np.concatenate([data0, rest.data]), w.shape, (1, 4))
    coarse = bsr_model()
    coarse.graph.initializers["w"] = BSR.from_dense(w, (2, 4))
    as_csr = bsr_model()
    as_csr.graph.initializers["w"] = CSR.from_dense(w)
    assert zsk.dumps(wide) == zsk.dumps(coarse) == zsk.dumps(as_csr) == want
    # and a bsr in memory is written dense or csr when that is smaller
    unstructured = big_sparse_model(density=0.1)
    u = unstructured.graph.initializers["w"].to_numpy()
    unstructured.graph.initializers["w"] = BSR.from_dense(u, (1, 4))
    assert stored(unstructured)["w"]["layout"] == "csr"


def test_bsr_from_dense_refuses_a_block_that_does_not_divide():
    with pytest.raises(ValueError, match=re.escape("block [3, 4] does not divide the shape [8, 8]")):
        BSR.from_dense(np.ones((8, 8), np.float32), (3, 4))


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
    with pytest.raises(zeroskip.SaveError, match=r"cannot save the model to '.*m\.zsk': no$"):
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
    "bsr block not dividing": (lambda: tensor_model(BSR([0, 0, 0], np.zeros(0, np.int32),
                                                        np.zeros((0, 1, 4), np.float32), (2, 10),
                                                        (1, 4))),
                               "tensor 't': block [1, 4] does not divide the shape [2, 10]"),
    "bsr unsorted": (lambda: tensor_model(BSR([0, 2], [1, 0], np.ones((2, 1, 4), np.float32),
                                              (1, 8), (1, 4))),
                     "tensor 't': block row 0: block column indices are not strictly increasing "
                     "(unsorted or duplicate) at position 1"),
    "bsr blocks over data": (lambda: tensor_model(BSR([0, 2], [0, 1], np.ones((1, 1, 4), np.float32),
                                                      (1, 8), (1, 4))),
                             "tensor 't': data has shape (1, 1, 4), expected (2, 1, 4)"),
    "not a tensor": (lambda: tensor_model(np.zeros(3)),
                     "tensor 't': expected Dense, CSR or BSR, not ndarray"),
    "nan attribute": (lambda: attr_model(float("nan")),
                      "node 'act' (LeakyRelu): attribute 'alpha' must be a number, not nan"),
    "infinite attribute": (lambda: attr_model(float("inf")),
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


# -- crafted bad files: every validation rule of docs/format.md -----------------------------------

RULES = {
    "V1": ("empty file", "short file"),
    "V2": ("bad magic",),
    "V3": ("unknown version", "version 0", "format name", "header version"),
    "V4": ("header over limit", "header past end", "huge header length"),
    "V5": ("header crc",),
    "V6": ("not utf-8", "not json", "NaN in json", "1e400 in json", "duplicate key", "deep nesting"),
    "V7": ("not an object", "missing key", "unknown key", "tensors not object", "metadata not object",
           "data_length type", "data_length bool", "layout type", "tensor not object",
           "tensor missing key", "tensor unknown key", "empty tensor name", "buffers missing role",
           "buffers extra role", "quant missing key", "node inputs type", "node attrs type",
           "node name type", "graph missing key", "bsr without block", "block on csr"),
    "V8": ("data_length too big", "truncated data", "trailing bytes"),
    "V9": ("unknown layout", "bsr in version 1"),
    "V10": ("dtype not allowed", "dtype not string", "data dtype", "index dtype", "input dtype",
            "output dtype", "cast to"),
    "V11": ("negative dim", "float dim", "shape not list", "too many dims", "huge dim",
            "empty but unrepresentable", "csr bytes overflow", "csr without axes",
            "csr too many elements", "input shape", "block not a pair", "block zero",
            "block huge", "block not dividing", "bsr without axes"),
    "V12": ("offset type", "negative offset", "crc over 32 bits", "unaligned offset",
            "buffer outside file", "buffer far outside", "overlapping buffers"),
    "V13": ("dense length", "absurd shape", "indptr length", "indices length", "data length",
            "nnz over size", "bsr indptr length", "bsr data length"),
    "V14": ("quant on float", "axis out of range", "negative axis", "axis type", "scale length",
            "per-tensor length", "zero_point length"),
    "V15": ("scale zero", "scale negative", "scale float32 overflow", "scale float32 underflow",
            "scale huge int", "scale not number", "scale bool"),
    "V16": ("zero point float", "zero point bool", "zero point range", "zero point range int32"),
    "V17": ("input defined twice", "node name twice", "output defined twice", "empty output"),
    "V18": ("arity", "output arity", "required input empty", "unknown op", "unknown attribute",
            "missing required attribute", "attribute list for int", "attribute string for number",
            "attribute null", "attribute bool"),
    "V19": ("missing tensor", "node order", "cycle", "output not produced",
            "quantized weight not constant"),
    # found on first access to a tensor's arrays (BAD_CONTENTS)
    "V20": ("dense crc", "csr data crc", "csr indices crc"),
    "V21": ("bool byte",),
    "V22": ("indptr[0]", "indptr decreasing", "indptr end", "indptr beyond nnz", "bsr indptr end"),
    "V23": ("column out of range", "unsorted row", "duplicate column", "bsr block column out of range",
            "bsr unsorted block row"),
}
"""Rule id of docs/format.md -> the crafted bad files (keys of BAD_FILES, BAD_CONTENTS) that break it."""
RULE_OF = {case: rule for rule, cases in RULES.items() for case in cases}


def rule_ids_in_the_spec() -> list[str]:
    """The rule ids docs/format.md lists (``- **V1** ...``), in order."""
    spec = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "format.md")
    with open(spec, encoding="utf-8") as f:
        return re.findall(r"^- \*\*(V\d+)\*\* ", f.read(), flags=re.M)


def with_rule(cases) -> list:
    """pytest params for ``cases`` (sorted), each with its rule id first in the test id."""
    return [pytest.param(case, id=f"{RULE_OF.get(case, 'no-rule')} {case}") for case in sorted(cases)]

# The good file: tensors b (dense f32 [8]), q (dense int8 [4,8], quant axis 0), qb (dense int32 [4],
# quant axis 0) and w (csr f32 [8,16], nnz 10, uint8 indptr/indices); data section of 384 bytes:
# b @0, q @64, qb @128, w.indptr @192, w.indices @256, w.data @320.

def good() -> bytes:
    return zsk.dumps(sample_model())


def split(data: bytes):
    """(header JSON, data section) of a well-formed file."""
    length = struct.unpack_from("<Q", data, 16)[0]
    start = (24 + length + 63) // 64 * 64
    return json.loads(data[24:24 + length]), bytearray(data[start:])


def assemble(header, section, raw=None, version=1) -> bytes:
    """A file from a header (or raw header bytes) and a data section, with a correct header CRC."""
    if raw is None:
        raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    head = struct.pack("<8sIIQ", zsk.MAGIC, version, zlib.crc32(raw), len(raw)) + raw
    return head + bytes(-len(head) % 64) + bytes(section)


def edit_header(edit) -> bytes:
    header, section = split(good())
    edit(header)
    return assemble(header, section)


def demo_edit(name: str, edit) -> bytes:
    """Demo model ``name`` with ``edit`` applied to its header."""
    path = os.path.join(os.path.dirname(zeroskip.__file__), "data", f"{name}.zsk")
    with open(path, "rb") as f:
        header, section = split(f.read())
    edit(header)
    return assemble(header, section)


def raw_header(raw: bytes) -> bytes:
    return assemble(None, split(good())[1], raw=raw)


def patch_bytes(data: bytes, offset: int, new: bytes) -> bytes:
    data = bytearray(data)
    data[offset:offset + len(new)] = new
    return bytes(data)


def tensor(name):
    """An editor that applies ``change`` to the header entry of tensor ``name``."""
    def edit(change):
        return edit_header(lambda h: change(h["tensors"][name]))
    return edit


def buf(name, role):
    def edit(change):
        return edit_header(lambda h: change(h["tensors"][name]["buffers"][role]))
    return edit


def quant(name):
    def edit(change):
        return edit_header(lambda h: change(h["tensors"][name]["quant"]))
    return edit


def graph(change):
    return edit_header(lambda h: change(h["graph"]))


def nodes(change):
    return graph(lambda g: change({n["name"]: n for n in g["nodes"]}))


def setter(key, value):
    def change(obj):
        obj[key] = value
    return change


def deleter(key):
    def change(obj):
        del obj[key]
    return change


def good_bsr() -> bytes:
    return zsk.dumps(bsr_model())


def bsr_edit(edit, version=2) -> bytes:
    """bsr_model's file (tensor 'w' stored bsr, 1×4 blocks) with ``edit`` applied to its header."""
    header, section = split(good_bsr())
    edit(header)
    return assemble(header, section, version=version)


def trailing_bytes():
    return good() + bytes(64)


ALLOWED = "float32, float64, float16, int8, uint8, int16, uint16, int32, int64, bool"
HEADER_LENGTH = 1616  # of the good file; its CRC-32 values are written as 8 hex digits
RELU_ORDER = ("node 'relu' (Relu): input 'h' is produced by node 'fc1', which does not come before "
              "it (nodes must be acyclic and in topological order)")

BAD_FILES = {
    # prefix and header framing
    "empty file": (lambda: b"", "file is 0 bytes, shorter than the 24-byte prefix"),
    "short file": (lambda: good()[:23], "file is 23 bytes, shorter than the 24-byte prefix"),
    "bad magic": (lambda: b"PK\x03\x04" + good()[4:], "not a .zsk file: bad magic bytes"),
    "unknown version": (lambda: patch_bytes(good(), 8, struct.pack("<I", 3)),
                        "unsupported format version 3 (this reader knows versions 1, 2)"),
    "version 0": (lambda: patch_bytes(good(), 8, struct.pack("<I", 0)),
                  "unsupported format version 0 (this reader knows versions 1, 2)"),
    "header over limit": (lambda: patch_bytes(good(), 16, struct.pack("<Q", (64 << 20) + 1)),
                          "header length 67108865 exceeds the limit of 67108864 bytes"),
    "header past end": (lambda: good()[:1000],
                        f"header length {HEADER_LENGTH} runs past the end of the file (1000 bytes)"),
    "huge header length": (lambda: patch_bytes(good(), 16, struct.pack("<Q", 2 ** 64 - 1)),
                           f"header length {2 ** 64 - 1} exceeds the limit of 67108864 bytes"),
    "header crc": (lambda: patch_bytes(good(), 40, b"X"),
                   re.compile(r"header CRC-32 mismatch \(stored [0-9a-f]{8}, computed [0-9a-f]{8}\)")),
    # header JSON
    "not utf-8": (lambda: raw_header(b'{"format":"\xff"}'),
                  "header is not valid UTF-8: 'utf-8' codec can't decode byte 0xff in position 11: "
                  "invalid start byte"),
    "not json": (lambda: raw_header(b"{nope"), re.compile(r"header is not valid JSON: Expecting .*")),
    "NaN in json": (lambda: raw_header(b'{"data_length":NaN}'),
                    "header is not valid JSON: NaN is not allowed"),
    "1e400 in json": (lambda: raw_header(b'{"data_length":1e400}'),
                      "header is not valid JSON: number 1e400 is out of range"),
    "duplicate key": (lambda: raw_header(b'{"format":"zsk","format":"zsk"}'),
                      "header is not valid JSON: duplicate key 'format'"),
    "deep nesting": (lambda: raw_header(b"[" * 200_000 + b"]" * 200_000),
                     re.compile(r"header is not valid JSON: .*recursion.*")),
    "not an object": (lambda: raw_header(b"[1,2]"), "header: expected a JSON object, got array"),
    "missing key": (lambda: edit_header(deleter("tensors")), "header: missing key 'tensors'"),
    "unknown key": (lambda: edit_header(setter("extra", 1)), "header: unknown key 'extra'"),
    "tensors not object": (lambda: edit_header(setter("tensors", [])),
                           "header: key 'tensors' must be an object, got array"),
    "metadata not object": (lambda: edit_header(setter("metadata", "x")),
                            "header: key 'metadata' must be an object, got string"),
    "format name": (lambda: edit_header(setter("format", "zip")),
                    "header: key 'format' must be \"zsk\", got 'zip'"),
    "header version": (lambda: edit_header(setter("version", 2)),
                       "header: version 2 does not match the prefix's version 1"),
    "data_length type": (lambda: edit_header(setter("data_length", "384")),
                         "header: key 'data_length' must be an integer, got string"),
    "data_length bool": (lambda: edit_header(setter("data_length", True)),
                         "header: key 'data_length' must be an integer, got boolean"),
    "data_length too big": (lambda: edit_header(setter("data_length", 448)),
                            "data section: the header declares 448 bytes but the file holds 384"),
    "truncated data": (lambda: good()[:-1],
                       "data section: the header declares 384 bytes but the file holds 383"),
    "trailing bytes": (trailing_bytes,
                       "data section: the header declares 384 bytes but the file holds 448"),
    # tensor entries
    "unknown layout": (lambda: tensor("w")(setter("layout", "coo")),
                       "tensor 'w': unknown layout 'coo' (this reader knows dense, csr, bsr)"),
    "bsr in version 1": (lambda: bsr_edit(lambda h: h.update(version=1), version=1),
                         "tensor 'w': layout 'bsr' needs format version 2, and the file is "
                         "version 1"),
    "bsr without block": (lambda: bsr_edit(lambda h: h["tensors"]["w"].pop("block")),
                          "tensor 'w': missing key 'block'"),
    "block on csr": (lambda: tensor("w")(setter("block", [1, 4])),
                     "tensor 'w': unknown key 'block'"),
    "block not a pair": (lambda: bsr_edit(lambda h: h["tensors"]["w"].update(block=[4])),
                         "tensor 'w': block must be one integer in [1, 65536] per axis (2), got "
                         "[4]"),
    "block zero": (lambda: bsr_edit(lambda h: h["tensors"]["w"].update(block=[0, 4])),
                   "tensor 'w': block must be one integer in [1, 65536] per axis (2), got [0, 4]"),
    "block huge": (lambda: bsr_edit(lambda h: h["tensors"]["w"].update(block=[1, 2 ** 20])),
                   "tensor 'w': block must be one integer in [1, 65536] per axis (2), got [1, "
                   "1048576]"),
    "block not dividing": (lambda: bsr_edit(lambda h: h["tensors"]["w"].update(block=[1, 8])),
                           "tensor 'w': block [1, 8] does not divide the shape [64, 300]"),
    "bsr without axes": (lambda: bsr_edit(lambda h: h["tensors"]["w"].update(shape=[])),
                         "tensor 'w': a bsr tensor needs at least one axis"),
    "bsr indptr length": (lambda: bsr_edit(lambda h: h["tensors"]["w"].update(block=[2, 4])),
                          "tensor 'w' buffer 'indptr': length 130 != 33 elements (rows / 2 + 1) "
                          "× 2 bytes"),
    "bsr data length": (lambda: bsr_edit(lambda h: h["tensors"]["w"]["buffers"]["data"].update(
        length=h["tensors"]["w"]["buffers"]["data"]["length"] - 4)),
        re.compile(r"tensor 'w': data holds \d+ values but indices holds \d+ \(4 per block\)")),
    "layout type": (lambda: tensor("w")(setter("layout", 1)),
                    "tensor 'w': key 'layout' must be a string, got number"),
    "tensor not object": (lambda: edit_header(lambda h: h["tensors"].update(b=[1])),
                          "tensor 'b': expected a JSON object, got array"),
    "tensor missing key": (lambda: tensor("b")(deleter("quant")), "tensor 'b': missing key 'quant'"),
    "tensor unknown key": (lambda: tensor("b")(setter("stride", 1)),
                           "tensor 'b': unknown key 'stride'"),
    "empty tensor name": (lambda: edit_header(lambda h: h["tensors"].update({"": h["tensors"]["b"]})),
                          "tensor '': a tensor name must not be empty"),
    "dtype not allowed": (lambda: tensor("b")(setter("dtype", "complex64")),
                          f"tensor 'b': dtype 'complex64' is not allowed (allowed: {ALLOWED})"),
    "dtype not string": (lambda: tensor("b")(setter("dtype", None)),
                         f"tensor 'b': dtype None is not allowed (allowed: {ALLOWED})"),
    "negative dim": (lambda: tensor("b")(setter("shape", [-8])),
                     "tensor 'b': shape must be a list of at most 32 non-negative integers (each at "
                     "most 2**62), got [-8]"),
    "float dim": (lambda: tensor("b")(setter("shape", [8.0])),
                  "tensor 'b': shape must be a list of at most 32 non-negative integers (each at "
                  "most 2**62), got [8.0]"),
    "shape not list": (lambda: tensor("b")(setter("shape", "8")),
                       "tensor 'b': shape must be a list of at most 32 non-negative integers (each "
                       "at most 2**62), got \"8\""),
    "too many dims": (lambda: tensor("b")(setter("shape", [1] * 33)),
                      "tensor 'b': shape must be a list of at most 32 non-negative integers (each at "
                      "most 2**62), got [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,..."),
    "huge dim": (lambda: tensor("b")(setter("shape", [2 ** 80])),
                 "tensor 'b': shape must be a list of at most 32 non-negative integers (each at most "
                 "2**62), got [1208925819614629174706176]"),
    # buffers
    "buffers missing role": (lambda: tensor("w")(lambda t: t["buffers"].pop("indices")),
                             "tensor 'w' buffers: missing key 'indices'"),
    "buffers extra role": (lambda: tensor("b")(lambda t: t["buffers"].update(indptr={})),
                           "tensor 'b' buffers: unknown key 'indptr'"),
    "offset type": (lambda: buf("b", "data")(setter("offset", "0")),
                    "tensor 'b' buffer 'data': key 'offset' must be an integer, got string"),
    "negative offset": (lambda: buf("b", "data")(setter("offset", -64)),
                        "tensor 'b' buffer 'data': key 'offset' must be >= 0, got -64"),
    "crc over 32 bits": (lambda: buf("b", "data")(setter("crc32", 2 ** 32)),
                         "tensor 'b' buffer 'data': crc32 4294967296 does not fit in 32 bits"),
    "unaligned offset": (lambda: buf("q", "data")(setter("offset", 65)),
                         "tensor 'q' buffer 'data': offset 65 is not a multiple of 64"),
    "buffer outside file": (lambda: buf("w", "data")(setter("offset", 384)),
                            "tensor 'w' buffer 'data': bytes [384, 424) lie outside the data section "
                            "(384 bytes)"),
    "buffer far outside": (lambda: buf("w", "data")(setter("offset", 2 ** 70)),
                           f"tensor 'w' buffer 'data': bytes [{2 ** 70}, {2 ** 70 + 40}) lie outside "
                           f"the data section (384 bytes)"),
    "overlapping buffers": (lambda: buf("qb", "data")(setter("offset", 64)),
                            "tensor 'q' buffer 'data' overlaps tensor 'qb' buffer 'data'"),
    "dense length": (lambda: tensor("b")(setter("shape", [9])),
                     "tensor 'b' buffer 'data': length 32 != 9 elements × 4 bytes"),
    "absurd shape": (lambda: tensor("b")(setter("shape", [2 ** 62] * 32)),
                     f"tensor 'b' buffer 'data': length 32 != {2 ** (62 * 32)} elements × 4 bytes"),
    "empty but unrepresentable": (lambda: tensor("b")(lambda t: (
        t.update(shape=[0, 2 ** 62, 2 ** 62]), t["buffers"]["data"].update(length=0, crc32=0))),
        f"tensor 'b': shape [0, {2 ** 62}, {2 ** 62}] is too large: {2 ** 126} bytes with "
        f"zero-length axes counted as 1, more than 2**62"),
    "csr bytes overflow": (lambda: tensor("w")(setter("shape", [8, 2 ** 59])),  # 2**62 elements
                           f"tensor 'w': shape [8, {2 ** 59}] is too large: {2 ** 64} bytes with "
                           f"zero-length axes counted as 1, more than 2**62"),
    "data dtype": (lambda: buf("b", "data")(setter("dtype", "int32")),
                   "tensor 'b' buffer 'data': dtype 'int32' differs from the tensor's dtype 'float32'"),
    # CSR structure
    "csr without axes": (lambda: tensor("w")(setter("shape", [])),
                         "tensor 'w': a csr tensor needs at least one axis"),
    "csr too many elements": (lambda: tensor("w")(setter("shape", [8, 2 ** 60])),
                              f"tensor 'w': shape [8, {2 ** 60}] has {2 ** 63} elements, more than "
                              f"2**62"),
    "indptr length": (lambda: tensor("w")(setter("shape", [9, 16])),
                      "tensor 'w' buffer 'indptr': length 9 != 10 elements (rows + 1) × 1 bytes"),
    "index dtype": (lambda: buf("w", "indices")(setter("dtype", "int8")),
                    "tensor 'w' buffer 'indices': index dtype 'int8' is not allowed (allowed: uint8, "
                    "uint16, int32, int64)"),
    "indices length": (lambda: buf("w", "indices")(setter("dtype", "int32")),
                       "tensor 'w' buffer 'indices': length 10 is not a multiple of 4 bytes"),
    "data length": (lambda: buf("w", "data")(setter("length", 36)),
                    "tensor 'w': data holds 9 values but indices holds 10"),
    "nnz over size": (lambda: tensor("w")(setter("shape", [8, 1])),
                      "tensor 'w': 10 nonzeros exceed rows × cols = 8"),
    # quantization
    "quant on float": (lambda: tensor("b")(setter("quant", {"axis": None, "scale": [1.0],
                                                            "zero_point": [0]})),
                       "tensor 'b' quant: only integer tensors may be quantized, not float32"),
    "quant missing key": (lambda: quant("q")(deleter("axis")), "tensor 'q' quant: missing key 'axis'"),
    "axis out of range": (lambda: quant("q")(setter("axis", 2)),
                          "tensor 'q' quant: axis 2 is out of range for a 2-d tensor"),
    "negative axis": (lambda: quant("q")(setter("axis", -1)),
                      "tensor 'q' quant: axis -1 is out of range for a 2-d tensor"),
    "axis type": (lambda: quant("q")(setter("axis", 0.0)),
                  "tensor 'q' quant: key 'axis' must be an integer, got number"),
    "scale length": (lambda: quant("q")(setter("scale", [1.0] * 8)),
                     "tensor 'q' quant: scale has 8 values, expected 4 (shape[0])"),
    "per-tensor length": (lambda: quant("q")(setter("axis", None)),
                          "tensor 'q' quant: scale has 4 values, expected 1 (per tensor)"),
    "zero_point length": (lambda: quant("q")(setter("zero_point", [0])),
                          "tensor 'q' quant: zero_point has 1 values, expected 4 (shape[0])"),
    "scale zero": (lambda: quant("q")(lambda q: q["scale"].__setitem__(2, 0.0)),
                   "tensor 'q' quant: scale[2] = 0.0 is not finite and > 0 (as float32)"),
    "scale negative": (lambda: quant("q")(lambda q: q["scale"].__setitem__(0, -0.5)),
                       "tensor 'q' quant: scale[0] = -0.5 is not finite and > 0 (as float32)"),
    "scale float32 overflow": (lambda: quant("q")(lambda q: q["scale"].__setitem__(1, 1e39)),
                               "tensor 'q' quant: scale[1] = 1e+39 is not finite and > 0 (as "
                               "float32)"),
    "scale float32 underflow": (lambda: quant("q")(lambda q: q["scale"].__setitem__(1, 1e-50)),
                                "tensor 'q' quant: scale[1] = 1e-50 is not finite and > 0 (as "
                                "float32)"),
    "scale huge int": (lambda: quant("q")(lambda q: q["scale"].__setitem__(2, 10 ** 400)),
                       f"tensor 'q' quant: scale[2] = {str(10 ** 400)[:57]}... is not finite and > 0 "
                       f"(as float32)"),
    "scale not number": (lambda: quant("q")(lambda q: q["scale"].__setitem__(3, "1")),
                         "tensor 'q' quant: scale[3] is a string, not a number"),
    "scale bool": (lambda: quant("q")(lambda q: q["scale"].__setitem__(3, True)),
                   "tensor 'q' quant: scale[3] is a boolean, not a number"),
    "zero point float": (lambda: quant("q")(lambda q: q["zero_point"].__setitem__(1, 0.5)),
                         "tensor 'q' quant: zero_point[1] = 0.5 is not an integer"),
    "zero point bool": (lambda: quant("q")(lambda q: q["zero_point"].__setitem__(1, False)),
                        "tensor 'q' quant: zero_point[1] = false is not an integer"),
    "zero point range": (lambda: quant("q")(lambda q: q["zero_point"].__setitem__(3, 128)),
                         "tensor 'q' quant: zero_point[3] = 128 is outside the range of int8 "
                         "[-128, 127]"),
    "zero point range int32": (lambda: quant("qb")(lambda q: q["zero_point"].__setitem__(0, -2 ** 31 - 1)),
                               "tensor 'qb' quant: zero_point[0] = -2147483649 is outside the range "
                               "of int32 [-2147483648, 2147483647]"),
    # graph
    "missing tensor": (lambda: nodes(lambda n: n["fc1"].update(inputs=["x", "nope", "b"])),
                       "node 'fc1' (Gemm): input 'nope' is not defined in the graph"),
    "node order": (lambda: graph(lambda g: g.update(nodes=[g["nodes"][1], g["nodes"][0],
                                                           g["nodes"][2]])), RELU_ORDER),
    "cycle": (lambda: nodes(lambda n: n["fc1"].update(inputs=["r", "w", "b"])),
              "node 'fc1' (Gemm): input 'r' is produced by node 'relu', which does not come before "
              "it (nodes must be acyclic and in topological order)"),
    "arity": (lambda: nodes(lambda n: n["fc1"].update(inputs=["x"])),
              "node 'fc1' (Gemm): has 1 inputs, expected 2 to 3"),
    "unknown op": (lambda: nodes(lambda n: n["relu"].update(op="Frobnicate")),
                   "node 'relu' (Frobnicate): unknown op 'Frobnicate'"),
    "unknown attribute": (lambda: nodes(lambda n: n["fc1"]["attrs"].update(gamma=2)),
                          "node 'fc1' (Gemm): unknown attribute 'gamma'"),
    "missing required attribute": (lambda: nodes(lambda n: n["relu"].update(op="Concat")),
                                   "node 'relu' (Concat): missing required attribute 'axis'"),
    "attribute list for int": (lambda: nodes(lambda n: n["fc1"]["attrs"].update(transB=[1])),
                               "node 'fc1' (Gemm): attribute 'transB' must be an integer at least "
                               "0, not [1]"),
    "attribute string for number": (lambda: nodes(lambda n: n["fc1"]["attrs"].update(alpha="2")),
                                    "node 'fc1' (Gemm): attribute 'alpha' must be a number, "
                                    "not '2'"),
    "attribute null": (lambda: nodes(lambda n: n["fc1"]["attrs"].update(transB=None)),
                       "node 'fc1' (Gemm): attribute 'transB' must be an integer at least 0, "
                       "not null"),
    "attribute bool": (lambda: nodes(lambda n: n["fc1"]["attrs"].update(beta=True)),
                       "node 'fc1' (Gemm): attribute 'beta' must be a number, not True"),
    "node inputs type": (lambda: nodes(lambda n: n["fc1"].update(inputs=["x", 1])),
                         "node 'fc1': key 'inputs' must be a list of strings"),
    "node attrs type": (lambda: nodes(lambda n: n["fc1"].update(attrs=[])),
                        "node 'fc1': key 'attrs' must be an object, got array"),
    "node name type": (lambda: graph(lambda g: g["nodes"][0].update(name=7)),
                       "node 0: key 'name' must be a string, got number"),
    "output not produced": (lambda: graph(lambda g: g["outputs"][0].update(name="zz")),
                            "graph output 'zz' is not produced by any node"),
    "quantized weight not constant": (
        lambda: demo_edit("digits_mlp_int8", lambda h: h["graph"]["nodes"][2]["inputs"].__setitem__(
            1, h["graph"]["nodes"][1]["outputs"][0])),
        "node '/fc2/Gemm' (QGemm): input 1 ('/relu1/Relu_output_0_quantized') must be an initializer "
        "(the weight and bias of a quantized layer are constants)"),
    "input dtype": (lambda: graph(lambda g: g["inputs"][0].update(dtype="complex64")),
                    f"graph input 'x': dtype 'complex64' is not allowed (allowed: {ALLOWED})"),
    "output dtype": (lambda: graph(lambda g: g["outputs"][0].update(dtype="object")),
                     f"graph output 'y': dtype 'object' is not allowed (allowed: {ALLOWED})"),
    "input shape": (lambda: graph(lambda g: g["inputs"][0].update(shape=[None, -1])),
                    "graph input 'x': shape must be a list of at most 32 non-negative integers or "
                    "null (each at most 2**62), got [null, -1]"),
    "graph missing key": (lambda: graph(deleter("nodes")), "graph: missing key 'nodes'"),
    "input defined twice": (lambda: graph(lambda g: g["inputs"].append(g["inputs"][0])),
                            "graph input 'x': name is defined twice"),
    "node name twice": (lambda: nodes(lambda n: n["relu"].update(name="fc1")),
                        "node 'fc1' (Relu): node name is used twice"),
    "output defined twice": (lambda: nodes(lambda n: n["relu"].update(outputs=["w"])),
                             "node 'relu' (Relu): output 'w' is empty or defined twice"),
    "empty output": (lambda: nodes(lambda n: n["relu"].update(outputs=[""])),
                     "node 'relu' (Relu): output '' is empty or defined twice"),
    "output arity": (lambda: nodes(lambda n: n["relu"].update(outputs=["r", "r2"])),
                     "node 'relu' (Relu): has 2 outputs, expected 1"),
    "required input empty": (lambda: nodes(lambda n: n["fc1"].update(inputs=["x", "", "b"])),
                             "node 'fc1' (Gemm): required input 1 is empty"),
    "cast to": (lambda: nodes(lambda n: n["relu"].update(op="Cast", attrs={"to": "complex64"})),
                f"node 'relu' (Cast): attribute to='complex64' is not one of the dtypes {ALLOWED}"),
}


def assert_message(err, message):
    if isinstance(message, re.Pattern):
        assert message.fullmatch(str(err.value)), str(err.value)
    else:
        assert str(err.value) == message


@pytest.mark.parametrize("case", with_rule(BAD_FILES))
def test_bad_file_is_refused_with_its_rule(case, tmp_path):
    build, message = BAD_FILES[case]
    data = build()
    with pytest.raises(ModelFormatError) as err:
        zsk.loads(data)
    assert_message(err, message)
    path = tmp_path / "bad.zsk"
    path.write_bytes(data)
    with pytest.raises(ModelFormatError) as err:
        zsk.load(path)
    assert_message(err, message)


def test_the_crafting_helpers_make_a_good_file_from_a_good_file():
    header, section = split(good())
    assert assemble(header, section) == good()
    assert struct.unpack_from("<Q", good(), 16)[0] == HEADER_LENGTH


# -- crafted bad contents: found on first access (lazy) or at load (eager) ------------------------

def edit_buffer(name, role, change, fix_crc=True, base=good) -> bytes:
    """Apply ``change`` to a copy of a buffer's array, write it back, and (by default) fix its CRC."""
    header, section = split(base())
    entry = header["tensors"][name]["buffers"][role]
    offset, length = entry["offset"], entry["length"]
    array = np.frombuffer(bytes(section[offset:offset + length]), dtype=entry["dtype"]).copy()
    change(array)
    section[offset:offset + length] = array.tobytes()
    if fix_crc:
        entry["crc32"] = zlib.crc32(array.tobytes())
    return assemble(header, section, version=struct.unpack_from("<I", base(), 8)[0])


def put(index, value):
    def change(array):
        array[index] = value
    return change


def flip_byte(array):
    array.view(np.uint8)[0] ^= 0x10


BAD_CONTENTS = {
    "dense crc": (lambda: edit_buffer("b", "data", flip_byte, fix_crc=False), "b",
                  re.compile(r"tensor 'b' buffer 'data': CRC-32 mismatch \(stored [0-9a-f]{8}, "
                             r"computed [0-9a-f]{8}\)")),
    "csr data crc": (lambda: edit_buffer("w", "data", flip_byte, fix_crc=False), "w",
                     re.compile(r"tensor 'w' buffer 'data': CRC-32 mismatch .*")),
    "csr indices crc": (lambda: edit_buffer("w", "indices", put(0, 200), fix_crc=False), "w",
                        re.compile(r"tensor 'w' buffer 'indices': CRC-32 mismatch .*")),
    "indptr[0]": (lambda: edit_buffer("w", "indptr", put(0, 1)), "w",
                  "tensor 'w': indptr[0] = 1, expected 0"),
    "indptr decreasing": (lambda: edit_buffer("w", "indptr", put(2, 2)), "w",
                          "tensor 'w': indptr decreases at row 1 (3 -> 2)"),
    "indptr end": (lambda: edit_buffer("w", "indptr", put(8, 9)), "w",
                   "tensor 'w': indptr[-1] = 9, expected nnz = 10"),
    "indptr beyond nnz": (lambda: edit_buffer("w", "indptr", put(8, 250)), "w",
                          "tensor 'w': indptr[-1] = 250, expected nnz = 10"),
    "column out of range": (lambda: edit_buffer("w", "indices", put(3, 16)), "w",
                            "tensor 'w': column index 16 at position 3 (row 2) is out of range "
                            "[0, 16)"),
    "unsorted row": (lambda: edit_buffer("w", "indices", put(slice(0, 3), [0, 7, 3])), "w",
                     "tensor 'w': row 0: column indices are not strictly increasing (unsorted or "
                     "duplicate) at position 2"),
    "duplicate column": (lambda: edit_buffer("w", "indices", put(5, 1)), "w",
                         "tensor 'w': row 3: column indices are not strictly increasing (unsorted "
                         "or duplicate) at position 5"),
    "bsr indptr end": (lambda: edit_buffer("w", "indptr", put(64, 0), base=good_bsr), "w",
                       re.compile(r"tensor 'w': indptr decreases at block row 63 \(\d+ -> 0\)")),
    "bsr block column out of range": (
        lambda: edit_buffer("w", "indices", put(0, 75), base=good_bsr), "w",
        "tensor 'w': block column index 75 at position 0 (block row 0) is out of range [0, 75)"),
    "bsr unsorted block row": (
        lambda: edit_buffer("w", "indices", put(slice(0, 2), [9, 9]), base=good_bsr), "w",
        "tensor 'w': block row 0: block column indices are not strictly increasing (unsorted or "
        "duplicate) at position 1"),
    "bool byte": (lambda: bad_bool_file(), "flags",
                  "tensor 'flags': bool value at position 2 is the byte 7, not 0 or 1"),
}


@pytest.mark.parametrize("case", with_rule(BAD_CONTENTS))
def test_bad_contents_are_refused_on_first_access_and_by_eager_load(case, tmp_path):
    build, name, message = BAD_CONTENTS[case]
    path = tmp_path / "bad.zsk"
    path.write_bytes(build())
    model = zsk.load(path)  # lazy: the header is fine
    for other, t in model.graph.initializers.items():
        if other != name:
            tensor_arrays(t)
    for _ in range(2):  # a failed verification is not forgotten
        with pytest.raises(ModelFormatError) as err:
            tensor_arrays(model.graph.initializers[name])
        assert_message(err, message)
    with pytest.raises(ModelFormatError) as err:
        zsk.load(path, verify="eager")
    assert_message(err, message)
    with pytest.raises(ModelFormatError) as err:
        zsk.loads(path.read_bytes(), verify="eager")
    assert_message(err, message)


def test_every_rule_of_the_spec_has_a_crafted_bad_file():
    """docs/format.md's rule list and RULES name the same ids, and every case of RULES exists (so no
    rule is without a crafted file, and no crafted file is without its rule)."""
    ids = rule_ids_in_the_spec()
    assert ids == [f"V{i}" for i in range(1, len(ids) + 1)], ids  # V1, V2, ... none skipped
    assert list(RULES) == ids
    assert all(RULES[rule] for rule in ids)
    assert len(RULE_OF) == sum(len(cases) for cases in RULES.values())  # no case under two rules
    assert sorted(RULE_OF) == sorted([*BAD_FILES, *BAD_CONTENTS])


def test_rows_may_start_lower_than_the_previous_row_ends():
    # indices [0 3 7 | 15 | 1 2 | ...]: the drop from 15 to 1 is a row change, not a violation.
    model = zsk.loads(good(), verify="eager")
    assert list(model.graph.initializers["w"].indices[:6]) == [0, 3, 7, 15, 1, 2]


# -- fuzzing: only ModelFormatError may ever escape -------------------------------------------

def _mutations(seed: int, count: int):
    """Seeded corruptions of the good file: byte flips anywhere, truncations, and header edits with a
    recomputed CRC (so they reach the JSON and structure checks)."""
    rnd = random.Random(seed)
    data = good()
    header, section = split(data)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    leaves = [b"0", b"-1", b"1e30", b"null", b"true", b'"x"', b"[]", b"{}", b"4294967296", b"64",
              b'"float32"', b'"csr"', b"[0]", b"1.5", b"4611686018427387904",
              b"-9223372036854775809", b"1e-45", b"255", b"65536"]
    for _ in range(count):
        kind = rnd.randrange(4)
        if kind == 0:
            mutated = bytearray(data)
            for _ in range(rnd.randint(1, 4)):
                mutated[rnd.randrange(len(mutated))] ^= 1 << rnd.randrange(8)
            yield bytes(mutated)
        elif kind == 1:
            yield data[:rnd.randrange(len(data))]
        elif kind == 2:
            mutated = bytearray(raw)
            for _ in range(rnd.randint(1, 3)):
                mutated[rnd.randrange(len(mutated))] = rnd.randrange(256)
            yield assemble(None, section, raw=bytes(mutated))
        else:  # replace a JSON number with another value: structure stays JSON, values go wrong
            spots = [m.span() for m in re.finditer(rb"-?\d+(\.\d+)?(e[+-]?\d+)?", raw)]
            start, end = spots[rnd.randrange(len(spots))]
            yield assemble(None, section, raw=raw[:start] + rnd.choice(leaves) + raw[end:])


def test_fuzzed_files_raise_only_model_format_error():
    outcomes = {"refused": 0, "loaded": 0}
    for data in _mutations(seed=1234, count=3000):
        try:
            model = zsk.loads(data)
            touch_all(model)
        except ModelFormatError:
            outcomes["refused"] += 1
        else:
            outcomes["loaded"] += 1
    assert outcomes["refused"] > 2000, outcomes  # most corruptions are caught, none crash


def test_fuzzed_files_from_disk_with_eager_verification(tmp_path):
    path = tmp_path / "fuzz.zsk"
    for data in _mutations(seed=99, count=200):
        path.write_bytes(data)
        try:
            touch_all(zsk.load(path, verify="eager"))
        except ModelFormatError:
            pass


# -- reading from things that are not files, bool contents, concurrent first access ------------

def test_a_device_is_refused_without_reading_it():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    with pytest.raises(ModelFormatError) as err:
        zsk.load("/dev/zero")  # reading it to the end would never finish
    assert str(err.value) == "'/dev/zero' is not a regular file"


def bool_model() -> Model:
    flags = Dense(np.array([True, False, True]))
    graph = Graph([node("id", "Identity", ["x"], ["y"])], [ValueInfo("x", (None, 2), "float32")],
                  [ValueInfo("y", (None, 2), "float32")], {"flags": flags})
    return Model(graph)


def bad_bool_file() -> bytes:
    """bool_model's file with the byte 7 in its bool tensor (and a CRC that matches it)."""
    header, section = split(zsk.dumps(bool_model()))
    section[2] = 7
    header["tensors"]["flags"]["buffers"]["data"]["crc32"] = zlib.crc32(bytes(section[:3]))
    return assemble(header, section)


def test_bool_tensor_round_trips():
    flags = zsk.loads(zsk.dumps(bool_model()), verify="eager").graph.initializers["flags"]
    assert flags.array.dtype == np.bool_ and flags.array.tolist() == [True, False, True]


def test_tensor_names_must_be_non_empty_strings():
    model = dense_model()
    model.graph.initializers[7] = Dense(np.ones(2, np.float32))
    message = "tensor 7: a tensor name must be a non-empty string"
    with pytest.raises(ModelFormatError, match=re.escape(message)):
        zsk.dumps(model)


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    old = os.umask(0o077)
    try:
        zsk.save(dense_model(), tmp_path / "new.zsk")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "new.zsk").st_mode & 0o777 == 0o600
    target = tmp_path / "old.zsk"
    target.write_bytes(b"x")
    os.chmod(target, 0o640)
    zsk.save(dense_model(), target)
    assert os.stat(target).st_mode & 0o777 == 0o640


def test_no_thread_gets_arrays_while_another_is_verifying_them():
    """Lazy verification runs once, under a lock: a second thread waits for its verdict."""
    import threading
    import time

    header, section = split(good())
    section[header["tensors"]["w"]["buffers"]["data"]["offset"]] ^= 1  # a CRC mismatch
    data = assemble(header, section)
    for _ in range(20):
        w = zsk.loads(data).graph.initializers["w"]
        verify = w._verify

        def slow_verify(verify=verify):
            time.sleep(0.002)  # widen the window in which the other thread asks
            verify()

        w._verify = slow_verify
        outcomes = []

        def first_access():
            try:
                w.data
                outcomes.append("arrays")
            except ModelFormatError:
                outcomes.append("refused")

        threads = [threading.Thread(target=first_access) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes == ["refused", "refused"]


@pytest.mark.parametrize("name", sorted(ATTR_TYPES))
def test_every_attribute_has_a_type_that_refuses_the_others(name):
    kind, nullable, smallest = ATTR_TYPES[name]
    good = {"int": max(smallest or 0, 1), "number": 0.5, "scale": 0.5, "str": "NOTSET",
            "ints": [max(smallest or 0, 1)] * 2}[kind]
    assert attr_type_error(name, good) is None
    assert (attr_type_error(name, None) is None) == nullable
    wrong = [{"a": 1}, True] + ([[1], "1"] if kind in ("int", "number", "scale") else []) + \
        ([1.5] if kind in ("int", "ints") else []) + ([7] if kind in ("str", "ints") else [])
    if kind in ("number", "scale"):
        wrong += [float("nan"), 10**400]  # (an int no float holds)
    if kind == "scale":  # finite and > 0 as float32: no zero, sign, overflow or underflow
        wrong += [0, 0.0, -1.0, float("inf"), 1e39, 1e-46]
        assert attr_type_error(name, 3.4e38) is None and attr_type_error(name, 1.5e-45) is None
    if kind == "ints":
        wrong += [[True], ["1"], [1.0]]
    if smallest is not None:
        wrong.append(smallest - 1 if kind == "int" else [smallest - 1])
    if name in WINDOW_ATTRS:  # found by the fuzzer: strides [2, 2**64] asked for a huge scratch
        wrong.append(MAX_WINDOW + 1 if kind == "int" else [1, MAX_WINDOW + 1])
        assert attr_type_error(name, MAX_WINDOW if kind == "int" else [MAX_WINDOW]) is None
    for value in wrong:
        why = attr_type_error(name, value)
        assert why is not None and why.startswith("must be "), (name, value)
