"""Recorded runs (engine/replay.py): what a replay repeats, what the check refuses, and sessions
whose runs replay giving the bytes of sessions that never do, on new inputs every run."""

import os
import threading
import time
from importlib import resources
from types import SimpleNamespace

import numba
import numpy as np
import pytest

import zeroskip
from zeroskip.engine import replay as rp
from zeroskip.engine.plan.launch import RECHECKS, TRIALS, Serial, Trial
from zeroskip.engine.plan.steps import Plan, Step


# -- the check, on plans of Python "kernels" ---------------------------------------------------
def _double(x, y):
    y[...] = 2 * x


def _add(x, y, c):
    y[...] = x + c


DOUBLE, ADD = Serial(_double), Serial(_add)


def _step(name, run, replay="kernels", inputs=("x",), outputs=("y",)):
    node = SimpleNamespace(name=name, op="Test", inputs=list(inputs), outputs=list(outputs))
    return Step(node, "test", "", run, replay=replay)


def _chain(first):
    """x -> ``first`` (writes h) -> h + 1 -> y."""
    def second(values):
        y = np.empty_like(values["h"])
        ADD(values["h"], y, 1.0)
        values["y"] = y
    return Plan("test", [_step("first", first, outputs=("h",)),
                         _step("second", second, inputs=("h",))])


def _doubled(values):
    h = np.empty_like(values["x"])
    DOUBLE(values["x"], h)
    values["h"] = h


def _recorded(plan, x):
    recorder = rp.Recorder(plan, {"x": x})
    recorder.run({"x": x}, [()] * len(plan.steps))
    return recorder


def _replay(plan, runs=2):
    rng = np.random.default_rng(0)
    recorders = [_recorded(plan, rng.standard_normal(6).astype(np.float32)) for _ in range(runs)]
    return rp.replay_of(recorders[-2], recorders[-1], ["y"])


def test_a_replay_makes_the_recorded_calls_on_the_new_input():
    replay = _replay(_chain(_doubled))
    assert len(replay.calls) == 2
    for seed in range(3):
        x = np.random.default_rng(10 + seed).standard_normal(6).astype(np.float32)
        assert np.array_equal(replay.run({"x": x})["y"], 2 * x + 1)


def test_a_replay_counts_each_steps_calls_and_times_them_on_request():
    def twice(values):  # a step of two kernel calls
        h = np.empty_like(values["x"])
        DOUBLE(values["x"], h)
        DOUBLE(h, h)
        values["h"] = h

    replay = _replay(_chain(twice))
    assert replay.per_step == [2, 1]  # the profile gives each step the sum of its calls' times
    x = np.random.default_rng(7).standard_normal(6).astype(np.float32)
    clock = [-1.0] * 3
    assert np.array_equal(replay.run({"x": x}, clock)["y"], 4 * x + 1)
    assert all(0 <= t < 1 for t in clock), clock


def test_a_view_of_the_input_is_made_again_from_the_new_input():
    def tail_doubled(values):  # a kernel reading a view that starts 8 bytes into the input
        x = values["x"]
        h = np.empty(4, np.float32)
        DOUBLE(x.reshape(3, 2)[1:].reshape(-1), h)
        values["h"] = h

    replay = _replay(_chain(tail_doubled))
    (index, places), = replay.feeds.items()
    assert index == 0 and places[0][2] == 8
    x = np.arange(6, dtype=np.float32)
    assert np.array_equal(replay.run({"x": x})["y"], 2 * x[2:] + 1)


def test_a_copy_made_in_python_is_refused():
    def copied(values):
        h = np.empty_like(values["x"])
        DOUBLE(values["x"].copy(), h)
        values["h"] = h

    with pytest.raises(rp.Refused, match="'first' .*a kernel reads an array made in Python"):
        _replay(_chain(copied))


def test_an_output_numpy_computed_is_refused():
    def numpy_made(values):
        values["h"] = values["x"] * 2

    with pytest.raises(rp.Refused, match="'first' .*an output that none of its kernels wrote"):
        _replay(_chain(numpy_made))


def test_an_argument_that_depends_on_the_data_is_refused():
    def scaled(values):
        h = np.empty_like(values["x"])
        ADD(values["x"], h, float(values["x"].sum()))
        values["h"] = h

    with pytest.raises(rp.Refused, match="an argument that changes from run to run"):
        _replay(_chain(scaled))


def test_a_view_step_whose_output_is_a_copy_is_refused():
    def view(values):
        values["h"] = values["x"].reshape(2, 3)

    def copy(values):
        values["h"] = values["x"].reshape(2, 3).copy()

    def second(values):
        y = np.empty(values["h"].shape, np.float32)
        ADD(values["h"], y, 1.0)
        values["y"] = y

    for run, refused in ((view, False), (copy, True)):
        plan = Plan("test", [_step("flatten", run, replay="view", outputs=("h",)),
                             _step("second", second, inputs=("h",))])
        if refused:
            with pytest.raises(rp.Refused, match="not a view of its input"):
                _replay(plan)
        else:
            x = np.arange(6, dtype=np.float32)
            assert np.array_equal(_replay(plan).run({"x": x})["y"], x.reshape(2, 3) + 1)


def test_a_graph_output_that_is_the_input_is_refused():
    plan = Plan("test", [_step("identity", lambda values: values.update(y=values["x"]),
                               replay="view")])
    with pytest.raises(rp.Refused, match="graph output 'y'"):
        _replay(plan)


@pytest.mark.parametrize("serial", [True, False])
def test_activations_share_bytes_only_when_their_lifetimes_do_not_meet(serial, monkeypatch):
    """A chain of five doubling steps x -> a -> b -> c -> d -> y (each array read by the next
    call only): in a one-thread plan arrays two apart may share bytes, but no array shares with
    the one its call reads or writes beside it, and every view keeps its address modulo a cache
    line. In a plan for several threads a block cools first (COOL_BYTES, here two arrays' worth):
    arrays two apart never share, three apart may. The replay's outputs are still right on new
    inputs."""
    monkeypatch.setattr(rp, "COOL_BYTES", 2 * 7 * 8)  # two of the arrays below (roots of 7 float64)
    names = ["a", "b", "c", "d", "y"]

    def stage(src, dst):
        def run(values):
            out = np.empty(7, np.float64)[1:]  # 8 bytes past an allocation: a residue to keep
            DOUBLE(values[src], out)
            values[dst] = out
        return _step(dst, run, inputs=(src,), outputs=(dst,))

    plan = Plan("test", [stage(s, d) for s, d in zip(["x"] + names, names)], serial=serial)
    rng = np.random.default_rng(1)
    first, second = (_recorded(plan, rng.standard_normal(6)) for _ in range(2))
    residues = [args[1].__array_interface__["data"][0] % 64
                for calls, _, _ in second.steps for _, args in calls]
    replay = rp.replay_of(first, second, ["y"])
    outs = [args[1] for _, args in replay.calls]
    spans = [(o.__array_interface__["data"][0], o.__array_interface__["data"][0] + o.nbytes)
             for o in outs]
    assert [o.__array_interface__["data"][0] % 64 for o in outs] == residues
    def apart(i, j):
        return spans[i][1] <= spans[j][0] or spans[j][1] <= spans[i][0]

    assert all(apart(i, i + 1) for i in range(len(spans) - 1))  # a call's input and output
    if serial:
        assert not all(apart(i, i + 2) for i in range(len(spans) - 2))  # some share
    else:
        assert all(apart(i, i + 2) for i in range(len(spans) - 2))  # not yet cooled
        assert not all(apart(i, i + 3) for i in range(len(spans) - 3))  # cooled: some share
    x = rng.standard_normal(6)
    np.testing.assert_array_equal(replay.run({"x": x})["y"], 32 * x)


def test_a_graph_output_made_early_keeps_its_bytes_to_the_end():
    """x -> y (a graph output) -> h -> k -> z (another): k could take y's bytes by the calls
    alone, but y is read after the run, so it lives to the end."""
    def stage(src, dst):
        def run(values):
            out = np.empty(6, np.float64)
            DOUBLE(values[src], out)
            values[dst] = out
        return _step(dst, run, inputs=(src,), outputs=(dst,))

    plan = Plan("test", [stage("x", "y"), stage("y", "h"), stage("h", "k"), stage("k", "z")])
    rng = np.random.default_rng(2)
    first, second = (_recorded(plan, rng.standard_normal(6)) for _ in range(2))
    replay = rp.replay_of(first, second, ["y", "z"])
    x = rng.standard_normal(6)
    out = replay.run({"x": x})
    np.testing.assert_array_equal(out["y"], 2 * x)
    np.testing.assert_array_equal(out["z"], 16 * x)


def test_a_trial_still_timing_leaves_the_run_unsettled():
    trial = Trial(_double, _double)

    def timed(values):
        h = np.empty_like(values["x"])
        trial(values["x"], h)
        values["h"] = h

    with pytest.raises(rp.Unsettled):
        _replay(_chain(timed))
    for _ in range(2 * (TRIALS + 1)):
        trial(np.zeros(1, np.float32), np.zeros(1, np.float32))
    replay = _replay(_chain(timed))
    assert replay.calls[0][0] is trial.chosen


def test_a_replay_ends_before_its_trials_recheck_and_hands_its_calls_on():
    trial = Trial(_double, _double)
    for _ in range(2 * (TRIALS + 1)):
        trial(np.zeros(1, np.float32), np.zeros(1, np.float32))

    def timed(values):
        h = np.empty_like(values["x"])
        trial(values["x"], h)
        values["h"] = h

    replay = _replay(_chain(timed))
    calls = trial.calls
    assert replay.left == RECHECKS[0] - calls
    x = np.ones(6, np.float32)
    while not replay.due():
        replay.run({"x": x})
    assert trial.calls == calls  # the replays went around the Trial
    replay.close()
    assert trial.calls == RECHECKS[0]  # the next call through it opens its recheck window


# -- sessions ----------------------------------------------------------------------------------
def _bundled(name):
    return zeroskip.load(resources.files("zeroskip.data") / f"{name}.zsk")


def _never_replaying(model, mode):
    os.environ[rp.ENV] = "0"
    try:
        return zeroskip.Session(model, mode=mode, threads=1)
    finally:
        del os.environ[rp.ENV]


def _feeds(model, batch, seed):
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal((batch,) + tuple(v.shape[1:])).astype(np.float32)
            for v in model.graph.inputs}


@pytest.mark.parametrize("name", ["digits_mlp_int8", "digits_mlp_pruned_int8", "digits_cnn_int8",
                                  "digits_cnn_pruned_int8"])
@pytest.mark.parametrize("mode", ["dense-i8", "sparse-i8", "auto"])
@pytest.mark.parametrize("threads,batch", [(1, 1), (2, 1), (2, 450)])
def test_replayed_runs_give_the_bytes_of_runs_never_replayed(name, mode, threads, batch):
    model = _bundled(name)
    session, reference = zeroskip.Session(model, mode=mode, threads=threads), \
        _never_replaying(model, mode)
    kept, seconds = [], []
    for seed in range(30):
        feeds = _feeds(model, batch, seed)
        out = session.run(feeds)
        start = time.perf_counter()
        expected = reference.run(feeds)
        seconds.append(time.perf_counter() - start)
        assert out.keys() == expected.keys()
        for key in out:
            assert np.array_equal(out[key], expected[key]), (seed, key)
        kept.append({k: (v, v.copy()) for k, v in out.items()})
    rows = session.replays()
    run_s = float(np.median(seconds))
    # only runs shorter than REPLAY_MAX_RUN_S are recorded: the CNNs at batch 450 are on the
    # slower paths of CPUs without AVX-512 (then nothing is recorded, and the bytes above are all
    # there is to check); near the limit either is right
    if run_s < rp.REPLAY_MAX_RUN_S / 2:
        assert rows and all(row["replays"] for row in rows), rows
    elif run_s > 2 * rp.REPLAY_MAX_RUN_S:
        assert rows == [], (run_s, rows)
    else:
        assert all(row["replays"] for row in rows), rows
    for outputs in kept:  # no output handed out was written again by a later replay
        for array, copy in outputs.values():
            assert np.array_equal(array, copy)
    assert reference.replays() == []


def _scaled(x, y, scale=2.0, shift=None):
    y[...] = x * scale if shift is None else x * scale + shift


def test_a_replay_calls_the_compiled_entry_point_with_every_parameter():
    if numba.config.DISABLE_JIT:  # no compiled versions: _direct keeps every build as it is
        assert rp._direct(numba.njit(_scaled), (1, 2)) == (numba.njit(_scaled), (1, 2))
        return
    kernel = numba.njit(_scaled)
    x, y = np.arange(4, dtype=np.float32), np.zeros(4, np.float32)
    kernel(x, y)
    with pytest.raises(TypeError):  # the entry point takes every parameter, defaults too
        list(kernel.overloads.values())[0].entry_point(x, y)
    entry, args = rp._direct(kernel, (x, y))
    assert entry is not kernel and args[:2] == (x, y) and args[2:] == (2.0, None)
    y[...] = 0
    entry(*args)
    np.testing.assert_array_equal(y, 2 * x)
    # types it was never compiled for, a Python function: the call goes through as recorded
    assert rp._direct(kernel, (x, y, 3.0)) == (kernel, (x, y, 3.0))
    assert rp._direct(kernel, (x.astype(np.float64), y))[0] is kernel
    assert rp._direct(_double, (x, y)) == (_double, (x, y))


def test_a_replay_knows_whether_a_call_may_open_a_parallel_region():
    from zeroskip.kernels import KERNELS, serial_kernel

    def replay_of_builds(*builds):
        x = np.zeros(1, np.float32)
        return rp.Replay(None, [(b, (x, x)) for b in builds], {}, {}, rp.Counter())

    parallel = KERNELS["matmul_csr_rq_i8"]
    if numba.config.DISABLE_JIT:  # Python functions: the run context is always set up
        assert replay_of_builds(parallel).parallel
        return
    twin = serial_kernel("matmul_csr_rq_i8")
    assert not replay_of_builds(twin, twin).parallel
    assert replay_of_builds(twin, parallel).parallel
    assert replay_of_builds(twin, _double).parallel  # not a Numba kernel (BLAS, NumPy): kept


def test_a_two_thread_replay_of_serial_kernels_runs_with_no_run_context():
    if numba.config.DISABLE_JIT:
        pytest.skip("Python kernels always run in the run context "
                    "(test_a_replay_knows_whether_a_call_may_open_a_parallel_region)")
    model = _bundled("digits_mlp_int8")
    session, reference = zeroskip.Session(model, mode="dense-i8", threads=2), \
        _never_replaying(model, "dense-i8")
    for seed in range(30):
        session.run(_feeds(model, 1, seed))
    replays = [s for s in session._replay_local.states.values() if isinstance(s, rp.Replay)]
    assert len(replays) == 1
    assert not replays[0].parallel  # the MLP's GEMMs at batch 1 are far below every threshold

    def no_context(plan):
        raise AssertionError("a replay of serial kernels set up the run context")

    session._running = no_context
    feeds = _feeds(model, 1, 99)
    assert np.array_equal(session.run(feeds)["logits"], reference.run(feeds)["logits"])


def test_replays_are_per_thread():
    model = _bundled("digits_cnn_pruned_int8")
    session, reference = zeroskip.Session(model, mode="auto", threads=2), \
        _never_replaying(model, "auto")
    failures = []

    def worker(offset):
        for seed in range(offset, offset + 25):
            feeds = _feeds(model, 3, seed)
            got, want = session.run(feeds), reference.run(feeds)
            if not all(np.array_equal(got[k], want[k]) for k in want):
                failures.append(seed)
        rows.append(session.replays())

    rows: list = []
    threads = [threading.Thread(target=worker, args=(100 * i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(rows) == 3 and all(r and r[0]["replays"] for r in rows)


def test_a_new_shape_records_anew_and_a_non_contiguous_feed_runs_the_steps():
    model = _bundled("digits_mlp_int8")
    session, reference = zeroskip.Session(model, mode="auto", threads=1), \
        _never_replaying(model, "auto")
    for batch in (1, 5):
        for seed in range(20):
            feeds = _feeds(model, batch, seed)
            assert np.array_equal(session.run(feeds)["logits"], reference.run(feeds)["logits"])
    assert sorted(row["inputs"]["input"][0] for row in session.replays()) == [1, 5]
    wide = np.random.default_rng(7).standard_normal((5, 128)).astype(np.float32)
    feeds = {"input": wide[:, ::2]}
    assert np.array_equal(session.run(feeds)["logits"], reference.run(feeds)["logits"])


def test_a_plan_with_a_step_that_cannot_replay_never_records():
    model = _bundled("digits_mlp_int8")
    session = zeroskip.Session(model, mode="dense-f32", threads=1)
    for seed in range(20):
        session.run(_feeds(model, 2, seed))
    assert session.replays() == []


ORT_MODELS = ["cnn", "residual", "pointwise", "depthwise_multiplier", "padded"]


@pytest.fixture(scope="module")
def quantized_models():
    """The int8 versions of tests/quant_builders.py's CNNs (a fused residual QAdd, a QAdd that runs
    as a step, pointwise GEMMs on planar input, depthwise convs, pools, Flatten), by
    onnxruntime's quantization tool."""
    import logging

    pytest.importorskip("onnxruntime")
    from quant_builders import FLOAT_MODELS, quantize

    logging.disable(logging.WARNING)
    try:
        models = {}
        for name in ORT_MODELS:
            model, input_name, shape = FLOAT_MODELS[name]()
            models[name] = zeroskip.import_onnx(quantize(model, "qdq", "uint8", True, input_name,
                                                         shape))
        return models
    finally:
        logging.disable(logging.NOTSET)


def _replaying_the_bytes_of_steps(model, mode, threads):
    """A session of ``model`` that ran 25 new inputs at batch 1 and 25 at batch 3, each giving
    the bytes of a session that never replays; the session."""
    session, reference = zeroskip.Session(model, mode=mode, threads=threads), \
        _never_replaying(model, mode)
    for batch in (1, 3):
        for seed in range(25):
            feeds = _feeds(model, batch, seed)
            out, expected = session.run(feeds), reference.run(feeds)
            for key in expected:
                assert np.array_equal(out[key], expected[key]), (batch, seed, key)
    return session


@pytest.mark.parametrize("name", ORT_MODELS)
@pytest.mark.parametrize("mode", ["dense-i8", "sparse-i8", "auto"])
@pytest.mark.parametrize("threads", [1, 2])
def test_onnxruntime_quantized_cnns_replay_the_bytes_of_their_steps(quantized_models, name, mode,
                                                                    threads):
    session = _replaying_the_bytes_of_steps(quantized_models[name], mode, threads)
    rows = session.replays()
    if name == "padded":  # its int8 Pad runs as the reference op (NumPy): never recorded
        assert rows == [] and any(step.node.op == "Pad" and not step.replay
                                  for step in session._plan.steps)
    else:
        assert len(rows) == 2 and all(row["replays"] for row in rows), rows
        if not numba.config.DISABLE_JIT:  # each call made straight to its compiled version
            for state in session._replay_local.states.values():
                assert all(not hasattr(entry, "overloads") for entry, _ in state.direct)


@pytest.fixture(scope="module")
def float_models():
    from quant_builders import FLOAT_MODELS

    return {name: zeroskip.import_onnx(FLOAT_MODELS[name]()[0]) for name in ORT_MODELS}


@pytest.mark.parametrize("name", ORT_MODELS)
@pytest.mark.parametrize("threads", [1, 2])
def test_sparse_f32_cnns_replay_the_bytes_of_their_steps(float_models, name, threads):
    """The float CNNs in sparse-f32, whose steps (direct and pointwise CSR convs, depthwise, Add,
    pools, the CSR Gemm) declare replays: the bytes of a session that never replays, at batch 1
    and 3. A Gemm whose input must be transposed (batch 3: x's transpose is not contiguous) does
    it with a kernel (transpose_dense_f32) into a scratch, which a replay repeats; a strided 1×1
    conv (the pointwise model's, on its input taken every other row and column) copies in Python,
    and the recording refuses that signature; the padded model's Pad is NumPy."""
    model = float_models[name]
    session = _replaying_the_bytes_of_steps(model, "sparse-f32", threads)
    rows = {row["inputs"][model.graph.inputs[0].name][0]: row for row in session.replays()}
    if name in ("cnn", "depthwise_multiplier"):
        assert rows[1]["replays"] and rows[3]["replays"], rows
    elif name == "pointwise":
        assert not rows[1]["replays"] and "made in Python" in rows[1]["why"], rows
    else:  # a step of NumPy or the reference op: never recorded
        assert rows == {}


def test_two_inputs_that_share_their_memory_are_refused():
    def both(values):
        h = np.empty_like(values["x"])
        ADD(values["x"], h, 1.0)
        y = np.empty_like(h)
        ADD(values["z"], y, 2.0)
        values["h"], values["y"] = h, y

    plan = Plan("test", [_step("both", both, inputs=("x", "z"), outputs=("h", "y"))])
    base = np.arange(12, dtype=np.float32)
    recorders = []
    for _ in range(2):
        feeds = {"x": base[:6], "z": base[6:]}
        recorder = rp.Recorder(plan, feeds)
        recorder.run(dict(feeds), [()])
        recorders.append(recorder)
    with pytest.raises(rp.Refused, match="two inputs are views of one array"):
        rp.replay_of(*recorders, ["y"])


def test_feeds_that_are_views_of_one_array_are_each_read():
    """Runs fed slices of one array: the input's memory is the same array from run to run, and
    must still be read as the input (not kept as a constant)."""
    model = _bundled("digits_cnn_pruned_int8")
    session, reference = zeroskip.Session(model, mode="auto", threads=2), \
        _never_replaying(model, "auto")
    images = _feeds(model, 3 * 30, 5)["image"]
    for i in range(30):
        feeds = {"image": images[3 * i:3 * i + 3]}
        assert np.array_equal(session.run(feeds)["logits"], reference.run(feeds)["logits"]), i
    assert session.replays()[0]["replays"]


def test_a_float_feed_of_the_declared_type_is_not_copied_and_not_written():
    model = _bundled("digits_mlp_int8")
    session = zeroskip.Session(model, mode="dense-i8", threads=1)
    x = _feeds(model, 4, 3)["input"]
    kept = x.copy()
    for _ in range(20):
        session.run({"input": x})
    assert np.array_equal(x, kept)
    assert session._check_feeds({"input": x})["input"] is x
