"""Pruning (``zeroskip.prune``, ``zeroskip.compress.masks``, ``compress.schedule``).

Exact sparsities for global and layer scope; the n:m and block patterns; channel pruning that
really shrinks a model and computes what the zeroed model computes; biases and excluded nodes left
alone; metadata; bad arguments refused with the input model unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import zeroskip
from zeroskip.compress import masks
from zeroskip.compress.schedule import polynomial

import compress_models as cm

WEIGHTS = {"cnn": ["c1.w", "c2.w", "dw.w", "pw.w", "fc.w"], "residual": ["a.w", "b.w", "fc.w"],
           "mlp": ["g1.w", "m2.w", "g3.w"]}
BIASES = {"cnn": ["c1.b", "c2.b", "dw.b", "pw.b", "fc.b", "bn.b"], "residual": ["a.b", "b.b", "fc.b"],
          "mlp": ["g1.b", "m2.b", "g3.b"]}


def _array(model, name):
    return model.graph.initializers[name].to_numpy()


def _zeros(model, names):
    return sum(int(np.sum(_array(model, n) == 0)) for n in names)


def _snapshot(model):
    return {k: v.to_numpy().copy() for k, v in model.graph.initializers.items()}, \
        [(n.name, n.op, list(n.inputs), dict(n.attrs)) for n in model.graph.nodes]


def _assert_unchanged(model, snapshot):
    tensors, nodes = _snapshot(model)
    assert nodes == snapshot[1]
    assert tensors.keys() == snapshot[0].keys()
    for k in tensors:
        np.testing.assert_array_equal(tensors[k], snapshot[0][k], err_msg=k)


@pytest.mark.parametrize("name", sorted(cm.MODELS))
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_global_unstructured_zeroes_exactly_that_fraction_of_all_weights(name, sparsity):
    model = cm.MODELS[name]()
    before = _snapshot(model)
    pruned = zeroskip.prune(model, sparsity)
    names = WEIGHTS[name]
    total = sum(_array(model, n).size for n in names)
    assert _zeros(pruned, names) == int(np.floor(sparsity * total + 0.5))
    # the smallest magnitudes went: every kept weight is at least as large as every pruned one
    kept = np.concatenate([np.abs(_array(pruned, n)[_array(pruned, n) != 0]) for n in names])
    gone = np.concatenate([np.abs(_array(model, n)[_array(pruned, n) == 0]) for n in names])
    if kept.size and gone.size:
        assert gone.max() <= kept.min()
    for b in BIASES[name]:
        np.testing.assert_array_equal(_array(pruned, b), _array(model, b), err_msg=b)
    _assert_unchanged(model, before)
    assert pruned.metadata["pruning"]["structure"] == "unstructured"
    assert pruned.metadata["pruning"]["sparsity"] == sparsity


@pytest.mark.parametrize("name", sorted(cm.MODELS))
def test_layer_scope_gives_every_layer_the_same_exact_sparsity(name):
    model = cm.MODELS[name]()
    pruned = zeroskip.prune(model, 0.7, scope="layer")
    for n in WEIGHTS[name]:
        size = _array(model, n).size
        assert _zeros(pruned, [n]) == int(np.floor(0.7 * size + 0.5)), n
    layers = pruned.metadata["pruning"]["layers"]
    for row in layers.values():
        w = _array(pruned, row["weight"])
        assert row["sparsity"] == pytest.approx(np.mean(w == 0))
        assert pruned.metadata["weights"][row["weight"]]["sparsity"] == row["sparsity"]


def test_scope_dict_prunes_only_the_named_layers_each_to_its_own_sparsity():
    model = cm.cnn()
    pruned = zeroskip.prune(model, scope={"c2": 0.8, "fc": 0.25})
    assert _zeros(pruned, ["c2.w"]) == int(np.floor(0.8 * 16 * 72 + 0.5))
    assert _zeros(pruned, ["fc.w"]) == int(np.floor(0.25 * 480 + 0.5))
    for n in ("c1.w", "dw.w", "pw.w"):
        np.testing.assert_array_equal(_array(pruned, n), _array(model, n))


def test_exclude_takes_node_names_and_op_types():
    model = cm.mlp()
    pruned = zeroskip.prune(model, 0.9, exclude=("g1",))
    np.testing.assert_array_equal(_array(pruned, "g1.w"), _array(model, "g1.w"))
    assert _zeros(pruned, ["m2.w", "g3.w"]) == int(np.floor(0.9 * (512 + 160) + 0.5))
    pruned = zeroskip.prune(model, 0.9, exclude="Gemm")
    for n in ("g1.w", "g3.w"):
        np.testing.assert_array_equal(_array(pruned, n), _array(model, n))
    assert _zeros(pruned, ["m2.w"]) == int(np.floor(0.9 * 512 + 0.5))
    assert set(pruned.metadata["pruning"]["layers"]) == {"m2"}


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "3:8", "1:2"])
@pytest.mark.parametrize("name", sorted(cm.MODELS))
def test_n_m_keeps_at_most_n_of_every_m_along_k(name, pattern):
    n, m = map(int, pattern.split(":"))
    model = cm.MODELS[name]()
    pruned = zeroskip.prune(model, structure=pattern)
    for layer in pruned.metadata["pruning"]["layers"].values():
        w = _array(pruned, layer["weight"])
        orig = _array(model, layer["weight"])
        if layer["weight"] in ("m2.w", "g3.w"):  # (K, N) MatMul/Gemm weights: K is axis 0
            w, orig = w.T, orig.T
        rows = w.reshape(w.shape[0], -1)
        k = rows.shape[1]
        for start in range(0, k, m):
            group = rows[:, start:start + m]
            nonzero = np.count_nonzero(group, axis=1)
            assert np.all(nonzero == min(n, group.shape[1])), (layer, start)
            # the kept ones are the largest of their group
            o = np.abs(orig.reshape(orig.shape[0], -1)[:, start:start + m])
            kept_min = np.where(group != 0, o, np.inf).min(axis=1)
            gone_max = np.where(group == 0, o, -np.inf).max(axis=1)
            assert np.all(gone_max <= kept_min)


@pytest.mark.parametrize("block", ["block:1x4", "block:4x1", "block:2x2"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_block_pruning_keeps_or_zeroes_whole_blocks(block, scope):
    r, c = map(int, block.split(":")[1].split("x"))
    model = cm.mlp()  # g1 and m2 are divisible by 4 on both sides; g3 has 10 outputs
    pruned = zeroskip.prune(model, 0.75, structure=block, scope=scope, exclude=("g3",))
    np.testing.assert_array_equal(_array(pruned, "g3.w"), _array(model, "g3.w"))
    total_blocks = zeroed = 0
    for name in ("g1.w", "m2.w"):
        w = _array(pruned, name)
        w = w if name == "g1.w" else w.T  # outputs first
        blocks = w.reshape(w.shape[0] // r, r, w.shape[1] // c, c)
        nonzero = np.count_nonzero(blocks, axis=(1, 3))
        assert np.all((nonzero == 0) | (nonzero == r * c)), name
        total_blocks += nonzero.size
        zeroed += int(np.sum(nonzero == 0))
        if scope == "layer":
            assert np.sum(nonzero == 0) == int(np.floor(0.75 * nonzero.size + 0.5))
    assert zeroed == int(np.floor(0.75 * total_blocks + 0.5))


@pytest.mark.parametrize("block", ["block:1x4", "block:4x1"])
def test_a_block_pruned_model_is_saved_bsr_and_runs_the_same_from_the_file(block, tmp_path):
    """.zsk's bsr layout (docs/format.md) holds the blocks pruning made: the Gemm's weight (outputs,
    inputs) in the pruned block's shape, the MatMul's (inputs, outputs) in its transpose, and a
    session on the loaded file gives the same bytes as one on the model before saving."""
    r, c = map(int, block.split(":")[1].split("x"))
    pruned = zeroskip.prune(cm.mlp(), 0.75, structure=block, exclude=("g3",))
    path = tmp_path / "m.zsk"
    zeroskip.save(pruned, path)
    loaded = zeroskip.load(path, verify="eager")
    for name, want in (("g1.w", (r, c)), ("m2.w", (c, r))):
        tensor = loaded.graph.initializers[name]
        assert tensor.layout == "bsr" and tensor.block == want, (name, tensor.layout)
        np.testing.assert_array_equal(tensor.to_numpy(), _array(pruned, name))
    assert loaded.graph.initializers["g3.w"].layout == "dense"
    x = cm.feeds(pruned)
    for mode in ("dense-f32", "sparse-f32", "auto"):
        got, want = (zeroskip.Session(m, mode=mode).run(x)["y"] for m in (loaded, pruned))
        np.testing.assert_array_equal(got, want, err_msg=mode)


@pytest.mark.parametrize("block", ["block:1x4", "block:2x2", "block:4x1"])
def test_a_conv_block_is_outputs_by_input_channels_at_one_tap(block):
    """On a conv weight (N, C, kh, kw) a block:RxC block is R output channels × C consecutive input
    channels at one tap (i, j): the 4-byte groups of the quad conv, not C consecutive (c, i, j)."""
    r, c = map(int, block.split(":")[1].split("x"))
    model = cm.cnn()
    pruned = zeroskip.prune(model, 0.75, structure=block, scope="layer",
                            exclude=("c1", "dw", "fc"))
    w = _array(pruned, "c2.w")  # (16, 8, 3, 3)
    n, ch, kh, kw = w.shape
    blocks = w.reshape(n // r, r, ch // c, c, kh, kw)
    nonzero = np.count_nonzero(blocks, axis=(1, 3))  # per (output block, channel block, tap)
    assert np.all((nonzero == 0) | (nonzero == r * c))
    assert np.sum(nonzero == 0) == int(np.floor(0.75 * nonzero.size + 0.5))
    # the blocks' importance is their own weights' mean |w|: every kept block outranks every
    # removed one
    mag = np.abs(_array(model, "c2.w")).reshape(n // r, r, ch // c, c, kh, kw).mean(axis=(1, 3))
    assert mag[nonzero > 0].min() >= mag[nonzero == 0].max()


def test_a_conv_pruned_in_channel_blocks_is_saved_in_them(tmp_path):
    """block:1x4 on a conv leaves whole groups of 4 input channels at one tap, which .zsk stores as
    bsr blocks [1, 4, 1, 1]; the loaded model runs the same bytes in the int8-free modes too."""
    pruned = zeroskip.prune(cm.cnn(), 0.75, structure="block:1x4", scope="layer",
                            exclude=("c1", "dw", "fc"))
    path = tmp_path / "cnn.zsk"
    zeroskip.save(pruned, path)
    loaded = zeroskip.load(path, verify="eager")
    c2 = loaded.graph.initializers["c2.w"]  # (16, 8, 3, 3); pw.w is too small to gain from it
    assert c2.layout == "bsr" and c2.block == (1, 4, 1, 1), c2.layout
    assert c2.blocks == 16 * 2 * 9 // 4  # a quarter of the blocks kept, each whole
    for name in ("c2.w", "pw.w"):
        np.testing.assert_array_equal(loaded.graph.initializers[name].to_numpy(),
                                      _array(pruned, name))
    x = cm.feeds(pruned)
    for mode in ("dense-f32", "sparse-f32", "auto"):
        got, want = (zeroskip.Session(m, mode=mode).run(x)["y"] for m in (loaded, pruned))
        np.testing.assert_array_equal(got, want, err_msg=mode)


def test_a_block_that_does_not_divide_a_weight_is_refused_naming_it():
    model = cm.cnn()
    before = _snapshot(model)
    with pytest.raises(zeroskip.CompressionError, match=r"'c1\.w'.*block 1x4 does not divide"):
        zeroskip.prune(model, 0.5, structure="block:1x4")
    _assert_unchanged(model, before)
    pruned = zeroskip.prune(model, 0.5, structure="block:1x4", exclude=("c1", "dw", "fc"))
    assert set(pruned.metadata["pruning"]["layers"]) == {"c2", "pw"}


def _zeroed_reference(model, drop):
    """``model`` with the channels in ``drop`` (layer -> removed output channels) removed without
    changing shapes: the next layers' input columns for them zeroed, so nothing reads them."""
    init = dict(model.graph.initializers)
    consumers = {"c1": [("c2.w", 1, 1)], "c2": [("pw.w", 1, 1)], "pw": [("fc.w", 1, 4)],
                 "g1": [("m2.w", 0, 1)], "m2": [("g3.w", 0, 1)]}
    for layer, gone in drop.items():
        for tensor, axis, block in consumers[layer]:
            w = init[tensor].to_numpy().copy()
            cols = (np.asarray(gone)[:, None] * block + np.arange(block)).reshape(-1)
            index = [slice(None)] * w.ndim
            index[axis] = cols
            w[tuple(index)] = 0
            init[tensor] = zeroskip.Dense(w)
    graph = zeroskip.Graph(model.graph.nodes, model.graph.inputs, model.graph.outputs, init)
    return zeroskip.Model(graph, model.metadata)


@pytest.mark.parametrize("name", ["cnn", "mlp"])
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("importance", ["l1", "l2"])
def test_channel_pruning_shrinks_the_model_and_computes_what_the_zeroed_model_computes(
        name, scope, importance):
    model = cm.MODELS[name]()
    pruned = zeroskip.prune(model, 0.5, structure="channel", scope=scope, importance=importance)
    layers = pruned.metadata["pruning"]["layers"]
    drop = {}
    for layer, row in layers.items():
        assert row["shrunk"], layer
        w = _array(model, row["weight"])
        out_axis = 1 if row["weight"] in ("m2.w",) else 0
        before, after = w.shape[out_axis], row["shape"][out_axis]
        assert after < before, layer
        # the channels kept are the strongest by the importance (mean |w| or √mean w²)
        rows = np.moveaxis(w, out_axis, 0).reshape(before, -1).astype(np.float64)
        score = np.abs(rows).mean(1) if importance == "l1" else np.sqrt((rows ** 2).mean(1))
        gone = np.sort(np.argsort(score, kind="stable")[:before - after])
        if scope == "layer":
            assert before - after == int(np.floor(0.5 * before + 0.5))
            drop[layer] = gone
        assert row["sparsity"] == pytest.approx((before - after) / before, abs=0.5)
    if scope == "global":
        total = sum(_array(model, r["weight"]).shape[1 if r["weight"] == "m2.w" else 0]
                    for r in layers.values())
        removed = sum(_array(model, r["weight"]).shape[1 if r["weight"] == "m2.w" else 0]
                      - r["shape"][1 if r["weight"] == "m2.w" else 0] for r in layers.values())
        assert removed == int(np.floor(0.5 * total + 0.5))
    # smaller than the original, and it runs in every float mode
    size = sum(t.size for t in model.graph.initializers.values())
    assert sum(t.size for t in pruned.graph.initializers.values()) < size
    feeds = cm.feeds(model)
    got = {mode: zeroskip.Session(pruned, mode).run(feeds)["y"]
           for mode in ("reference", "dense-f32", "sparse-f32")}
    if scope == "layer":
        want = zeroskip.Session(_zeroed_reference(model, drop)).run(feeds)["y"]
        np.testing.assert_allclose(got["reference"], want, rtol=1e-6, atol=1e-6)
    for mode in ("dense-f32", "sparse-f32"):
        np.testing.assert_allclose(got[mode], got["reference"], rtol=1e-4, atol=1e-5)


def test_channel_pruning_cuts_batchnorm_and_the_depthwise_conv_on_the_way():
    model = cm.cnn()
    pruned = zeroskip.prune(model, 0.5, structure="channel", scope="layer")
    init = pruned.graph.initializers
    assert all(init[n].shape == (4,) for n in ("bn.g", "bn.b", "bn.m", "bn.v", "c1.b"))
    assert init["c2.w"].shape == (8, 4, 3, 3)
    assert init["dw.w"].shape == (8, 1, 3, 3) and init["dw.b"].shape == (8,)
    dw = next(n for n in pruned.graph.nodes if n.name == "dw")
    assert dw.attrs["group"] == 8
    assert init["pw.w"].shape == (6, 8, 1, 1)
    assert init["fc.w"].shape == (10, 24)  # Flatten of 6 channels × 2×2
    assert "fc" not in pruned.metadata["pruning"]["layers"]  # the classifier keeps its outputs


def test_channels_that_reach_a_residual_add_are_zeroed_not_shrunk():
    model = cm.residual()
    pruned = zeroskip.prune(model, 0.5, structure="channel", scope="layer")
    for layer in ("a", "b"):
        row = pruned.metadata["pruning"]["layers"][layer]
        assert row["shrunk"] is False
        w = _array(pruned, row["weight"])
        assert w.shape == (8,) + _array(model, row["weight"]).shape[1:]
        assert int(np.sum(~w.reshape(8, -1).any(axis=1))) == 4
    np.testing.assert_array_equal(_array(pruned, "a.b"), _array(model, "a.b"))
    zeroskip.Session(pruned, "dense-f32").run(cm.feeds(model))


def test_pruned_model_saves_smaller_and_loads_identical(tmp_path):
    model = cm.cnn()
    zeroskip.save(model, tmp_path / "f.zsk")
    pruned = zeroskip.prune(model, 0.9)
    zeroskip.save(pruned, tmp_path / "p.zsk")
    assert (tmp_path / "p.zsk").stat().st_size < (tmp_path / "f.zsk").stat().st_size
    loaded = zeroskip.load(tmp_path / "p.zsk")
    assert loaded.metadata["pruning"]["structure"] == "unstructured"
    assert loaded.metadata["weights"]["c2.w"]["pruning"]["scope"] == "global"
    feeds = cm.feeds(model)
    np.testing.assert_array_equal(zeroskip.Session(loaded, "sparse-f32").run(feeds)["y"],
                                  zeroskip.Session(pruned, "sparse-f32").run(feeds)["y"])


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(sparsity=1.0), r"sparsity=1\.0: must lie in \[0, 1\)"),
    (dict(sparsity=-0.1), r"sparsity=-0\.1"),
    (dict(sparsity=float("nan")), r"sparsity=nan"),
    (dict(sparsity="half"), r"sparsity='half'"),
    (dict(structure="rows"), r"structure='rows': unknown structure"),
    (dict(structure="4:4"), r"structure='4:4': n:m needs 0 < n < m"),
    (dict(structure="5:4"), r"structure='5:4'"),
    (dict(structure="block:0x4"), r"structure='block:0x4'"),
    (dict(scope="model"), r"scope='model'"),
    (dict(scope={"nope": 0.5}), r"scope names 'nope'"),
    (dict(scope={"g1": 2}), r"scope\['g1.w'\]=2"),
    (dict(exclude=("nope",)), r"exclude='nope'"),
    (dict(importance="l3"), r"importance='l3'"),
])
def test_bad_arguments_name_the_argument_and_leave_the_model_alone(kwargs, pattern):
    model = cm.mlp()
    before = _snapshot(model)
    with pytest.raises(zeroskip.CompressionError, match=pattern):
        zeroskip.prune(model, **kwargs)
    _assert_unchanged(model, before)


def test_a_quantized_model_is_refused():
    model = cm.mlp()
    t = model.graph.initializers["g1.w"]
    model.graph.initializers["g1.w"] = zeroskip.Dense(
        np.zeros(t.shape, np.int8), zeroskip.QuantParams(np.float32(1.0), np.int8(0)))
    with pytest.raises(zeroskip.CompressionError, match="prune first, then quantize"):
        zeroskip.prune(model)


@given(st.integers(1, 12), st.integers(1, 40), st.floats(0, 0.99), st.sampled_from(["l1", "l2"]),
       st.integers(0, 2**31 - 1))
def test_masks_on_arrays_hit_the_exact_count(n, k, sparsity, importance, seed):
    rng = np.random.default_rng(seed)
    weights = {"a": rng.standard_normal((n, k)).astype(np.float32),
               "b": rng.standard_normal((k, n, 3)).astype(np.float32)}
    total = n * k + k * n * 3
    got = masks(weights, sparsity, importance=importance)
    assert got["a"].shape == (n, k) and got["b"].shape == (k, n, 3)
    assert sum(int(np.sum(~m)) for m in got.values()) == int(np.floor(sparsity * total + 0.5))
    layer = masks(weights, sparsity, scope="layer", importance=importance)
    for key, w in weights.items():
        assert int(np.sum(~layer[key])) == int(np.floor(sparsity * w.size + 0.5))
    channel = masks(weights, sparsity, structure="channel", scope="layer")
    for key, m in channel.items():
        rows = m.reshape(m.shape[0], -1)
        assert np.all(rows.all(axis=1) | ~rows.any(axis=1))  # whole rows
        assert rows.any(axis=1).sum() >= 1  # a layer keeps a channel


def test_polynomial_schedule_is_zhu_and_gupta():
    s = polynomial(0.0, 0.9, 10)
    assert len(s) == 11 and s[0] == 0.0 and s[-1] == pytest.approx(0.9)
    t = np.arange(11) / 10
    np.testing.assert_allclose(s, 0.9 + (0.0 - 0.9) * (1 - t) ** 3)
    assert np.all(np.diff(s) >= 0)
    assert np.diff(s)[0] > np.diff(s)[-1]  # fast first, slow at the end
    np.testing.assert_allclose(polynomial(0.5, 0.5, 3), [0.5] * 4)
    np.testing.assert_allclose(polynomial(0.2, 0.8, 2, power=1), [0.2, 0.5, 0.8])
    for bad, pattern in [((0.9, 0.5, 3), "below initial"), ((0, 0.9, 0), "steps=0"),
                         ((0, 1.0, 3), "final=1.0"), ((0, 0.9, 3, 0.5), "power=0.5")]:
        with pytest.raises(zeroskip.CompressionError, match=pattern):
            polynomial(*bad)
