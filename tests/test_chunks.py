"""Large batches in cache-sized chunks (engine/chunks.py): the rule, its override, and that a
chunked run gives a whole run's bytes."""

import math
from pathlib import Path

import numpy as np
import pytest

import zeroskip
from zeroskip import Graph, Model, Node, Session, ValueInfo, ZeroskipError
from zeroskip.engine import chunks
from zeroskip.engine.chunks import CACHE_SHARE, CHUNK_ENV, cache_chunk, sample_bytes
from zeroskip.ops import normalize_attrs

DATA = Path(zeroskip.__file__).parent / "data"


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv(CHUNK_ENV, raising=False)


def images(model, batch, seed=0):
    vi = model.graph.inputs[0]
    return {vi.name: np.random.default_rng(seed).random((batch,) + tuple(vi.shape[1:]),
                                                        np.float32)}


@pytest.mark.parametrize("text, want", [("32768K", 32 << 20), ("1M", 1 << 20), ("512", 512),
                                        (" 48K\n", 48 << 10)])
def test_sysfs_cache_sizes_parse(text, want):
    assert chunks._cache_size(text) == want


def test_the_last_level_cache_is_the_largest_data_cache(tmp_path):
    for index, (kind, size) in enumerate([("Data", "48K"), ("Instruction", "64M"),
                                          ("Unified", "2048K"), ("Unified", "36M")]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "type").write_text(kind + "\n")
        (tmp_path / f"index{index}" / "size").write_text(size + "\n")
    (tmp_path / "index9").mkdir()  # unreadable entries are passed over
    (tmp_path / "index9" / "type").write_text("Unified\n")
    assert chunks.last_level_cache(str(tmp_path)) == 36 << 20  # not the 64M instruction cache
    assert chunks.last_level_cache(str(tmp_path / "none")) == chunks.DEFAULT_CACHE_BYTES
    size = chunks.last_level_cache()  # this machine's
    assert size >= 64 << 10 and size % 1024 == 0


@pytest.mark.parametrize("batch, per_sample, want", [
    (8, 1 << 20, None),          # 8 MB of a 32 MB cache: whole
    (16, 1 << 20, None),         # exactly the share: whole
    (64, 1 << 20, 16),           # four chunks of 16
    (65, 1 << 20, 13),           # five near-equal chunks, not four of 16 and one of 1
    (64, 3 << 20, 5),            # 5 samples fit the share: 13 chunks of at most 5
    (4, 40 << 20, 1),            # one sample is over the share: one at a time
    (1, 40 << 20, None),         # a single sample is never split
    (1000, 0, None),             # sizes unknown before the run: whole
])
def test_chunks_are_as_few_and_as_equal_as_the_cache_share_allows(batch, per_sample, want):
    cache = 32 << 20
    got = cache_chunk(batch, per_sample, cache)
    assert got == want
    if got is not None:
        pieces = math.ceil(batch / got)
        assert got * per_sample <= cache // CACHE_SHARE or got == 1
        assert pieces == math.ceil(batch / max(1, cache // CACHE_SHARE // per_sample))


def test_the_environment_overrides_the_rule(monkeypatch):
    monkeypatch.setenv(CHUNK_ENV, "0")
    assert cache_chunk(10_000, 40 << 20, 32 << 20) is None
    monkeypatch.setenv(CHUNK_ENV, "3")
    assert cache_chunk(8, 1, 32 << 20) == 3
    assert cache_chunk(3, 1, 32 << 20) is None
    monkeypatch.setenv(CHUNK_ENV, "many")
    with pytest.raises(ZeroskipError, match=r"ZEROSKIP_CHUNK='many': expected 0 .* or a positive"):
        cache_chunk(8, 1, 32 << 20)


def _conv_graph():
    """x (N,3,16,16) -> 3x3 conv, 8 channels -> relu -> 1x1 conv, 4 channels."""
    rng = np.random.default_rng(1)
    init = {"w1": zeroskip.Dense(rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
            "w2": zeroskip.Dense(rng.standard_normal((4, 8, 1, 1)).astype(np.float32))}
    nodes = [Node("c1", "Conv", ["x", "w1"], ["h"],
                  normalize_attrs("Conv", {"pads": [1, 1, 1, 1]})),
             Node("r", "Relu", ["h"], ["a"], {}),
             Node("c2", "Conv", ["a", "w2"], ["y"], normalize_attrs("Conv", {}))]
    return Graph(nodes, [ValueInfo("x", (None, 3, 16, 16), "float32")],
                 [ValueInfo("y", (None, 4, 16, 16), "float32")], init)


@pytest.mark.parametrize("mode", ["reference", "dense-f32"])
def test_a_sample_is_its_hungriest_step_in_the_modes_sizes(mode):
    session = Session(Model(_conv_graph()), mode=mode)
    size = 8 if mode == "reference" else 4
    # c1 reads 3·16·16 and writes 8·16·16; relu 8·16·16 both ways (or fused into c1); c2 8 + 4
    steps = {"c1": (3 + 8) * 256, "r": 16 * 256, "c2": (8 + 4) * 256}
    fused = {s.node.name for s in session._plan.steps if s.kernel == "fused"}
    want = max(v for k, v in steps.items() if k not in fused) * size
    assert sample_bytes(session.model.graph, session._plan.steps, session._plan.constants,
                        mode) == want


@pytest.mark.parametrize("name, mode", [("digits_cnn_pruned_int8", "dense-i8"),
                                        ("digits_cnn_int8", "auto"),
                                        ("digits_mlp_pruned_int8", "sparse-i8"),
                                        ("digits_cnn", "dense-f32")])
def test_a_chunked_batch_gives_the_whole_batchs_bytes(monkeypatch, name, mode):
    model = zeroskip.load(DATA / f"{name}.zsk")
    session = Session(model, mode=mode, threads=1)
    feeds = images(model, 23)
    monkeypatch.setenv(CHUNK_ENV, "0")
    whole = session.run(feeds)
    runs = []
    run_checked = session._run_checked
    monkeypatch.setattr(session, "_run_checked", lambda checked: (
        runs.append(next(iter(checked.values())).shape[0]), run_checked(checked))[1])
    monkeypatch.setenv(CHUNK_ENV, "5")
    chunked = session.run(feeds)
    assert runs == [5, 5, 5, 5, 3]
    for out in whole:
        assert chunked[out].dtype == whole[out].dtype and chunked[out].shape == whole[out].shape
        if mode.endswith("f32"):  # BLAS may sum a row in another order at another batch
            np.testing.assert_allclose(chunked[out], whole[out], rtol=1e-5, atol=1e-5)
        else:
            assert chunked[out].tobytes() == whole[out].tobytes()


def test_auto_plans_the_chunks_batch_class_not_the_whole_batchs(monkeypatch):
    model = zeroskip.load(DATA / "digits_cnn_int8.zsk")
    session = Session(model, mode="auto", threads=1)
    monkeypatch.setenv(CHUNK_ENV, "8")
    session.run(images(model, 64))
    assert sorted(session._plans) == [1, 8]
    rows = session.explain(batch=64)
    assert rows and all(r["chunk"] == 8 and r["batch"] == 8 for r in rows)
    assert sorted(session._plans) == [1, 8]
    assert all("chunk" not in r for r in session.explain(batch=8))


def test_inspect_says_when_a_batch_runs_in_chunks(monkeypatch, capsys):
    from zeroskip.cli import main

    monkeypatch.setenv(CHUNK_ENV, "4")
    assert main(["inspect", str(DATA / "digits_cnn_int8.zsk"), "--plan", "--mode", "dense-i8",
                 "--batch", "10"]) == 0
    out = capsys.readouterr().out
    assert "plan for mode dense-i8, batch 10, run in chunks of 4 (the cache):" in out


def test_coupled_samples_are_never_split(monkeypatch):
    graph = Graph([Node("soft", "Softmax", ["x"], ["y"], normalize_attrs("Softmax", {"axis": 0}))],
                  [ValueInfo("x", (None, 4), "float32")], [ValueInfo("y", (None, 4), "float32")])
    session = Session(Model(graph), mode="dense-f32")
    monkeypatch.setenv(CHUNK_ENV, "1")
    y = session.run({"x": np.ones((6, 4), np.float32)})["y"]
    np.testing.assert_allclose(y, np.full((6, 4), 1 / 6, np.float32), rtol=1e-6)


def test_bench_notes_the_chunks_a_mode_runs_in(monkeypatch):
    from zeroskip import bench

    model = zeroskip.load(DATA / "digits_cnn_int8.zsk")
    monkeypatch.setenv(CHUNK_ENV, "4")
    data = bench.bench_matrix(model, ["dense-i8", "reference"], [], [10, 3], [1], 2)
    assert Session(model, mode="dense-i8").chunk_of(images(model, 10)) == 4
    assert [n for n in data["notes"] if "chunks" in n] == [
        "batch 10: dense-i8 in chunks of 4, reference in chunks of 4 (a batch whose layers would "
        "overflow the cache or memory runs in chunks; ZEROSKIP_CHUNK=0 runs it whole)"]
