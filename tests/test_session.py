"""Session: input checks with exact messages, outputs, pickling, and the ways to open a model."""

import os
import pickle
import re

import numpy as np
import pytest

import zeroskip
from zeroskip import CSR, Dense, Graph, InputError, Model, Node, Session, ValueInfo, ZeroskipError
from zeroskip.ops import OPS, normalize_attrs


def node(name, op, inputs, outputs, **attrs):
    return Node(name, op, inputs, outputs, normalize_attrs(op, attrs))


def mlp_model(seed=0, density=1.0) -> Model:
    """x (N, 6) -> Gemm(transB) -> Relu -> Gemm -> y (N, 3), with numpy-computable expectations."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((5, 6)).astype(np.float32)
    w1[rng.random(w1.shape) >= density] = 0
    w2 = rng.standard_normal((3, 5)).astype(np.float32)
    graph = Graph(
        nodes=[node("fc1", "Gemm", ["x", "w1", "b1"], ["h"], transB=1),
               node("relu", "Relu", ["h"], ["r"]),
               node("fc2", "Gemm", ["r", "w2", ""], ["y"], transB=1)],
        inputs=[ValueInfo("x", (None, 6), "float32")],
        outputs=[ValueInfo("y", (None, 3), "float32")],
        initializers={"w1": CSR.from_dense(w1), "b1": Dense(rng.standard_normal(5).astype(np.float32)),
                      "w2": Dense(w2)})
    return Model(graph, {"producer": "tests"})


def expected_mlp(model, x):
    init = model.graph.initializers
    w1, b1, w2 = (init[k].to_numpy().astype(np.float64) for k in ("w1", "b1", "w2"))
    return (np.maximum(x.astype(np.float64) @ w1.T + b1, 0) @ w2.T).astype(np.float32)


def test_run_matches_numpy_and_keeps_declared_dtype():
    model = mlp_model(density=0.5)
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    y = Session(model).run({"x": x})
    assert list(y) == ["y"]
    assert y["y"].dtype == np.float32 and y["y"].shape == (4, 3)
    np.testing.assert_allclose(y["y"], expected_mlp(model, x), rtol=1e-6, atol=1e-6)


def test_float64_feed_is_rounded_to_the_declared_float32():
    model = mlp_model()
    x64 = np.random.default_rng(2).standard_normal((2, 6))
    session = Session(model)
    assert np.array_equal(session.run({"x": x64})["y"],
                          session.run({"x": x64.astype(np.float32)})["y"])


def test_inputs_and_outputs_describe_the_model():
    session = Session(mlp_model())
    assert [(v.name, v.shape, v.dtype) for v in session.inputs] == [("x", (None, 6), np.float32)]
    assert [(v.name, v.shape, v.dtype) for v in session.outputs] == [("y", (None, 3), np.float32)]


@pytest.mark.parametrize("feeds, message", [
    ({"z": np.zeros((1, 6), np.float32)},
     "unknown input 'z'; the model's inputs are: 'x'"),
    ({}, "missing input 'x' (expected shape (N, 6), dtype float32)"),
    ({"x": np.zeros(6, np.float32)},
     "input 'x': expected dtype float32 and shape (N, 6), got rank 1 shape (6,)"),
    ({"x": np.zeros((2, 5), np.float32)},
     "input 'x': expected dtype float32 and shape (N, 6), got shape (2, 5) (dimension 1 is 5, not 6)"),
    ({"x": np.zeros((2, 6), np.int32)},
     "input 'x': expected dtype float32 and shape (N, 6), got dtype int32"),
    ({"x": np.array([["a"] * 6])},
     "input 'x': expected dtype float32 and shape (N, 6), got dtype <U1"),
    ({"x": np.zeros((0, 6), np.float32)},
     "input 'x': shape (0, 6) has no elements; a run needs at least one sample"),
    ({"x": np.zeros((2, 6), bool)},
     "input 'x': expected dtype float32 and shape (N, 6), got dtype bool"),
    ({"x": np.zeros((2, 6), np.complex64)},
     "input 'x': expected dtype float32 and shape (N, 6), got dtype complex64"),
])
def test_bad_feeds_raise_input_error_naming_the_input(feeds, message):
    with pytest.raises(InputError) as info:
        Session(mlp_model()).run(feeds)
    assert str(info.value) == message


def test_a_size_of_zero_the_model_declares_runs_and_an_empty_set_has_its_onnx_reduction():
    """Only a batch of 0 (a 0 on a dynamic axis) is refused; ONNX reduces empty sets: sum 0, max
    −inf (integers: the type's minimum)."""
    graph = Graph(nodes=[node("sum", "ReduceSum", ["x"], ["s"], axes=[1], keepdims=0),
                         node("max", "ReduceMax", ["x"], ["m"], axes=[1], keepdims=0)],
                  inputs=[ValueInfo("x", (None, 0, 3), "float32")],
                  outputs=[ValueInfo("s", (None, 3), "float32"),
                           ValueInfo("m", (None, 3), "float32")])
    got = Session(Model(graph)).run({"x": np.zeros((2, 0, 3), np.float32)})
    assert np.array_equal(got["s"], np.zeros((2, 3), np.float32))
    assert np.array_equal(got["m"], np.full((2, 3), -np.inf, np.float32))
    with pytest.raises(InputError, match=r"^input 'x': shape \(0, 0, 3\) has no elements"):
        Session(Model(graph)).run({"x": np.zeros((0, 0, 3), np.float32)})
    from zeroskip.reference.ops.reduce import reduce_max

    assert reduce_max(np.zeros((2, 0), np.int64), axes=[1], keepdims=0).tolist() == [-2**63] * 2


def test_a_session_runs_correctly_after_each_bad_feed():
    session = Session(mlp_model(density=0.5), mode="sparse-f32")
    x = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
    want = session.run({"x": x})["y"]
    bad = [{"z": x}, {}, {"x": x[0]}, {"x": x[:, :5]}, {"x": x.astype(np.int32)}, {"x": x[:0]},
           [x], {"x": object()}, {"x": [[1.0] * 6, [2.0] * 5]}]
    for feeds in bad:
        with pytest.raises(InputError):
            session.run(feeds)
        assert session.run({"x": x})["y"].tobytes() == want.tobytes()


DEMO = os.path.join(os.path.dirname(zeroskip.__file__), "data")


@pytest.mark.parametrize("mode", ["reference", "dense-f32", "dense-i8", "sparse-i8", "auto"])
def test_any_layout_of_the_same_values_gives_the_same_outputs(mode):
    """Fortran order, a strided view, a read-only array, float64 and float16 feeds holding the
    same float32 values: the session reads values, not memory layouts (feeds are never written)."""
    session = Session(os.path.join(DEMO, "digits_cnn_pruned_int8.zsk"), mode=mode)
    x = np.random.default_rng(4).random((3, 1, 8, 8)).astype(np.float16).astype(np.float32)
    want = session.run({"image": x})["logits"]
    frozen = x.copy()
    frozen.flags.writeable = False
    wide = np.zeros((3, 1, 8, 16), np.float32)
    wide[..., ::2] = x
    for same in (np.asfortranarray(x), wide[..., ::2], frozen, x.astype(np.float64),
                 x.astype(np.float16), x[::-1][::-1]):
        before = same.copy()
        assert session.run({"image": same})["logits"].tobytes() == want.tobytes()
        assert np.array_equal(same, before)


def test_nan_and_inf_in_an_int8_models_input_quantize_like_zero_and_the_range_ends():
    """The documented rule (docs/security.md): quantizing NaN gives the zero point (real 0), +inf
    the largest and -inf the smallest integer, identically in every int8 path; float modes
    propagate NaN as IEEE arithmetic does."""
    path = os.path.join(DEMO, "digits_cnn_pruned_int8.zsk")
    x = np.random.default_rng(6).random((4, 1, 8, 8)).astype(np.float32)
    hostile, stand_in = x.copy(), x.copy()
    hostile[:, :, ::3, ::2] = np.nan
    hostile[:, :, 1::3, ::2] = np.inf
    hostile[:, :, 2::3, ::2] = -np.inf
    stand_in[:, :, ::3, ::2] = 0.0
    stand_in[:, :, 1::3, ::2] = 3e38
    stand_in[:, :, 2::3, ::2] = -3e38
    want = Session(path, mode="reference").run({"image": stand_in})["logits"]
    assert np.isfinite(want).all()
    for mode in ("reference", "dense-i8", "sparse-i8", "auto"):
        got = Session(path, mode=mode, threads=1).run({"image": hostile})["logits"]
        assert got.tobytes() == want.tobytes(), mode
    assert np.isnan(Session(path, mode="dense-f32").run({"image": hostile})["logits"]).any()


def test_feeds_must_be_a_dict():
    with pytest.raises(InputError, match=re.escape("run() takes a dict of input name -> array, not list")):
        Session(mlp_model()).run([np.zeros((1, 6), np.float32)])


def test_run_time_shape_errors_name_the_node():
    graph = Graph(nodes=[node("add", "Add", ["a", "b"], ["c"])],
                  inputs=[ValueInfo("a", (None, 3), "float32"), ValueInfo("b", (None, 3), "float32")],
                  outputs=[ValueInfo("c", (None, 3), "float32")])
    with pytest.raises(InputError, match=r"^node 'add' \(Add\)"):
        Session(Model(graph)).run({"a": np.zeros((2, 3), np.float32), "b": np.zeros((3, 3), np.float32)})


def test_unknown_mode_and_bad_threads_are_refused():
    with pytest.raises(ZeroskipError, match="mode 'fast' is not available"):
        Session(mlp_model(), mode="fast")
    for threads in (0, -1, 1.5, True):
        with pytest.raises(ZeroskipError, match="threads must be a positive integer or None"):
            Session(mlp_model(), threads=threads)


def test_session_pickles_and_runs_the_same():
    model = mlp_model(density=0.3)
    session = Session(model)
    clone = pickle.loads(pickle.dumps(session))
    x = np.random.default_rng(3).standard_normal((5, 6)).astype(np.float32)
    assert np.array_equal(clone.run({"x": x})["y"], session.run({"x": x})["y"])
    assert clone.mode == session.mode and clone.threads == session.threads


def test_session_opens_paths_and_bytes(tmp_path):
    from zeroskip.formats.zsk import dumps

    model = mlp_model()
    path = tmp_path / "m.zsk"
    zeroskip.save(model, path)
    x = np.ones((1, 6), np.float32)
    want = Session(model).run({"x": x})["y"]
    assert np.array_equal(Session(path).run({"x": x})["y"], want)
    assert np.array_equal(Session(str(path)).run({"x": x})["y"], want)
    assert np.array_equal(Session(dumps(model)).run({"x": x})["y"], want)
    with pytest.raises(TypeError):
        Session(42)


def test_run_is_pure():
    session = Session(mlp_model())
    x = np.random.default_rng(4).standard_normal((3, 6)).astype(np.float32)
    keep = x.copy()
    first = session.run({"x": x})["y"]
    second = session.run({"x": x})["y"]
    assert np.array_equal(first, second) and np.array_equal(x, keep)


@pytest.mark.parametrize("mode", ["reference", "dense-f32", "sparse-f32", "auto"])
def test_an_output_that_is_a_view_of_the_input_is_handed_out_as_a_copy(mode):
    """A graph whose output is a Flatten of its input: the step's result is a view of the feed,
    and the caller gets a copy, so that changing the output cannot change the input."""
    graph = Graph(nodes=[node("flat", "Flatten", ["x"], ["y"], axis=1)],
                  inputs=[ValueInfo("x", (None, 2, 3), "float32")],
                  outputs=[ValueInfo("y", (None, 6), "float32")], initializers={})
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    y = Session(Model(graph, {"producer": "tests"}), mode=mode).run({"x": x})["y"]
    np.testing.assert_array_equal(y, x.reshape(2, 6))
    y[...] = -1
    np.testing.assert_array_equal(x.reshape(-1), np.arange(12))


def test_every_ir_op_has_a_reference():
    from zeroskip.reference import OPS as REFERENCE_OPS

    assert set(REFERENCE_OPS) == set(OPS)


def test_repeated_and_concurrent_runs_give_the_same_outputs():
    """Steps reuse their work arrays per thread and shape: runs in a row, with other batch sizes in
    between, and from several threads at once must all agree."""
    from concurrent.futures import ThreadPoolExecutor

    model = mlp_model(density=0.3)
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((n, 6)).astype(np.float32) for n in (4, 1, 4, 7, 4)]
    for mode in ("dense-f32", "sparse-f32"):
        session = Session(model, mode=mode)
        want = [expected_mlp(model, x) for x in xs]
        for x, w in zip(xs, want):
            np.testing.assert_allclose(session.run({"x": x})["y"], w, rtol=1e-5, atol=1e-5)
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda x: session.run({"x": x})["y"], xs * 4))
        for g, w in zip(got, want * 4):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def _tbb_installed() -> bool:
    from importlib import metadata

    try:
        metadata.distribution("tbb")
    except metadata.PackageNotFoundError:
        return False
    return True


def test_threading_layer_is_chosen_before_numba_launches_one():
    """A Session with threads=N asks numba for its thread count before any kernel is imported;
    zeroskip must still pick its threading layer first: TBB where its wheel is installed (a
    dependency on x86-64 Linux and Windows), else workqueue (zeroskip/kernels/__init__.py), and
    workqueue when Numba's TBB pool cannot load."""
    import os
    import subprocess
    import sys

    data = os.path.join(os.path.dirname(zeroskip.__file__), "data", "digits_mlp_pruned.zsk")
    code = ("import numba, numpy as np, zeroskip\n"
            f"s = zeroskip.Session({data!r}, mode='sparse-f32', threads=2)\n"
            "s.run({s.inputs[0].name: np.zeros((2, 64), np.float32)})\n"
            "print(numba.threading_layer())\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}

    def layer(prefix: str = "") -> str:
        result = subprocess.run([sys.executable, "-c", prefix + code], capture_output=True,
                                text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()[-1]

    assert layer() == ("tbb" if _tbb_installed() else "workqueue")
    assert layer("import sys; sys.modules['numba.np.ufunc.tbbpool'] = None\n") == "workqueue"
    env["NUMBA_THREADING_LAYER"] = "omp"  # the user's choice wins
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "omp"


def test_numpy_only_plans_never_import_numba_and_int8_weights_compile_once():
    """Start-up cost: a dense-f32 MLP runs on numpy BLAS alone, so Numba (~0.5 s to import and
    initialize) stays unloaded; an int8 model's weights reach matmul_dense_i8 as one array type
    (a read-only memory-mapped weight would be a second signature: a second compile)."""
    import os
    import subprocess
    import sys

    folder = os.path.join(os.path.dirname(zeroskip.__file__), "data")
    code = ("import sys, numpy as np, zeroskip\n"
            f"s = zeroskip.Session({os.path.join(folder, 'digits_mlp.zsk')!r}, mode='dense-f32', "
            "threads=2)\n"
            "s.run({s.inputs[0].name: np.zeros((2, 64), np.float32)})\n"
            "print('numba' in sys.modules)\n"
            f"s = zeroskip.Session({os.path.join(folder, 'digits_mlp_int8.zsk')!r}, mode='dense-i8')\n"
            "s.run({s.inputs[0].name: np.zeros((2, 64), np.float32)})\n"
            "from zeroskip.kernels import KERNELS, serial_kernel\n"
            "print(len(serial_kernel('matmul_dense_rq_i8').signatures),"
            " len(KERNELS['matmul_dense_rq_i8'].signatures))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    # a batch of 2 is small work: the serial twin, compiled once; the parallel build never needed
    assert result.stdout.split() == ["False", "1", "0"]


def test_one_thread_sessions_take_the_serial_twins_of_the_same_kernels():
    """threads=1: the same loops compiled without parallel=True (the threads tests compare their
    outputs with the parallel kernels' byte for byte)."""
    from zeroskip.kernels import KERNELS, serial_kernel

    for name, kernel in KERNELS.items():
        twin = serial_kernel(name)
        assert twin.py_func.__code__ is kernel.py_func.__code__, name
        assert kernel.targetoptions.get("parallel") and not twin.targetoptions.get("parallel"), name
        # both release the GIL: Python threads running threads=1 sessions run their kernels at once
        assert kernel.targetoptions.get("nogil") and twin.targetoptions.get("nogil"), name
        assert twin.py_func.__qualname__.endswith("_serial"), name  # its own disk-cache entry
    data = os.path.join(os.path.dirname(zeroskip.__file__), "data", "digits_mlp_int8.zsk")
    one, two = Session(data, mode="sparse-i8", threads=1), Session(data, mode="sparse-i8", threads=2)
    assert one._plan.serial and not two._plan.serial


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_bound_numpy_blas_during_runs_of_float_plans(threads):
    """A dense-f32 plan calls numpy's sgemm: during its runs BLAS has the session's thread count,
    and after them its own count again. A numpy-only int8 plan leaves BLAS alone."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return sorted(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")

    before = blas_threads()
    assert before, "numpy's BLAS must be visible to threadpoolctl"
    session = Session(mlp_model(), mode="dense-f32", threads=threads)
    assert session._plan.uses_blas
    seen = []
    step = session._plan.steps[0]
    run = step.run
    step.run = lambda values: (seen.append(blas_threads()), run(values))[1]
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_allclose(session.run({"x": x})["y"], expected_mlp(session.model, x),
                               rtol=1e-5, atol=1e-5)
    assert seen == [[threads] * len(before)]
    assert blas_threads() == before
    data = os.path.join(os.path.dirname(zeroskip.__file__), "data", "digits_mlp_int8.zsk")
    assert not Session(data, mode="dense-i8", threads=threads)._plan.uses_blas


@pytest.mark.parametrize("threads", [1, 2])
def test_dense_f32_classifier_takes_the_few_row_kernel_beside_numba_convs(threads):
    """In a dense-f32 CNN (Numba owns the threads) the Gemm runs matmul_dense_f32 below
    SGEMM_FROM_ROWS rows, and the plan replays at batch 1; at SGEMM_FROM_ROWS rows it takes
    sgemm (and does not replay). Both agree with the reference within float error, and a batch
    of rows gives each row's bytes of that row alone below the bound."""
    from zeroskip.engine.plan.f32_dense import KERNEL_NAME, SGEMM_FROM_ROWS
    from quant_builders import FLOAT_MODELS

    cnn, name, shape = FLOAT_MODELS["cnn"]()
    model = zeroskip.import_onnx(cnn)
    session = Session(model, mode="dense-f32", threads=threads)
    assert [r["kernel"] for r in session.explain() if r["op"] == "Gemm"] == [KERNEL_NAME]
    reason = next(r["reason"] for r in session.explain() if r["op"] == "Gemm")
    assert f"one pass over it below {SGEMM_FROM_ROWS} rows of A, else one sgemm" in reason, reason
    reference = Session(model, mode="reference")
    rng = np.random.default_rng(4)
    small = rng.standard_normal((SGEMM_FROM_ROWS - 1,) + shape).astype(np.float32)
    large = rng.standard_normal((SGEMM_FROM_ROWS,) + shape).astype(np.float32)
    for x in (small[:1], small, large):
        for _ in range(24):  # the Trials settle, then runs are recorded (and replayed)
            got = session.run({name: x})
        want = reference.run({name: x})
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4)
    one = session.run({name: small[:1]})
    rows = session.run({name: small})
    for key in one:  # the first row of the batch: the bytes of that row run alone
        np.testing.assert_array_equal(rows[key][:1], one[key])
    replays = {tuple(r["inputs"][name]): r for r in session.replays()}
    assert replays[(1,) + shape]["replays"], replays
    assert "an output that none of its kernels wrote" in replays[(SGEMM_FROM_ROWS,) + shape]["why"]


def test_blas_or_numba_owns_the_threads_never_both(monkeypatch):
    """A float plan whose weighted layers all run on BLAS gives BLAS the session's threads and
    runs its Numba steps serially; a plan with a Numba compute kernel (a CSR Gemm beside a BLAS
    one; the direct dense convs of a CNN before its BLAS Gemm) gives Numba the threads and BLAS
    one. Outputs are the same either way."""
    from threadpoolctl import threadpool_info

    from zeroskip.engine.plan.context import Choice, PlanContext
    from zeroskip.engine.plan.f32_dense import KERNEL_NAME
    from test_oracle import torch_mlp_gemm

    def blas_threads():
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    from quant_builders import FLOAT_MODELS

    mlp, mlp_input, mlp_shape = FLOAT_MODELS["mlp_matmul"]()  # add kernels between the sgemms
    dense = Session(zeroskip.import_onnx(mlp), mode="dense-f32", threads=3)
    assert dense._plan.blas_owns_threads and dense._plan.launches
    assert all(launch.threshold == float("inf") for launch in dense._plan.launches)
    cnn, cnn_input, shape = FLOAT_MODELS["cnn"]()
    convs = Session(zeroskip.import_onnx(cnn), mode="dense-f32", threads=3)
    assert sum(s.kernel in ("conv2d_dense_f32", "conv2d_lanes_f32") for s in convs._plan.steps) == 2
    assert convs._plan.uses_blas and not convs._plan.blas_owns_threads
    assert all(launch.threshold < float("inf") for launch in convs._plan.launches)
    model = zeroskip.import_onnx(torch_mlp_gemm(density=0.1)[0])  # pruned layers, a dense one
    monkeypatch.setattr(PlanContext, "choose_csr",
                        lambda self, density, shape_class, node=None: Choice(density < 0.5, "t"))
    mixed = Session(model, mode="auto", threads=3)
    kernels = [step.kernel for step in mixed._plan.steps]
    assert "matmul_csr_f32" in kernels and KERNEL_NAME in kernels  # Numba's: the dense one too
    assert mixed._plan.uses_blas and not mixed._plan.blas_owns_threads
    assert all(launch.threshold < float("inf") for launch in mixed._plan.launches)
    rng = np.random.default_rng(2)
    cases = ((dense, {3}, mlp_input, rng.standard_normal((2,) + mlp_shape)),
             (convs, {1}, cnn_input, rng.standard_normal((2,) + shape)),
             (mixed, {1}, "input", rng.standard_normal((1, 20))))  # batch 1: _plan
    for session, want, name, x in cases:
        seen = []
        step = session._plan.steps[-1]
        run = step.run
        step.run = lambda values, run=run, seen=seen: (seen.append(blas_threads()), run(values))[1]
        feeds = {name: x.astype(np.float32)}
        got = session.run(feeds)
        assert seen == [want], session.mode
        for key, value in Session(session.model).run(feeds).items():
            np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-4)


def test_a_run_choice_alternates_its_plans_then_keeps_the_faster():
    """RunChoice: RUN_CHECK_RUNS timed runs of each plan, alternated, then the one with the best
    run for good (the parallel plan on a tie; the twin dropped when the parallel plan wins)."""
    from zeroskip.engine.session import RUN_CHECK_RUNS, RunChoice

    for parallel_s, serial_s, kept in ((2.0, 1.0, "one thread"), (1.0, 2.0, "parallel"),
                                       (1.0, 1.0, "parallel")):
        plan, twin = object(), object()
        choice = RunChoice(plan, twin)
        seen = []
        for _ in range(2 * RUN_CHECK_RUNS):
            assert choice.decided() is None
            ran = choice.next()
            seen.append(ran)
            choice.record(ran, parallel_s if ran is plan else serial_s)
        assert seen == ([plan, twin, twin, plan] * RUN_CHECK_RUNS)[:2 * RUN_CHECK_RUNS]
        assert choice.decided() == kept
        assert choice.next() is (twin if kept == "one thread" else plan)
        choice.record(choice.next(), 0.0)  # later runs change nothing
        assert choice.decided() == kept
        assert (choice.plans[1] is None) == (kept == "parallel")


def test_a_run_choice_gives_each_plan_runs_in_both_places_of_a_pair():
    """Runs that come in pairs, the first of each slow (after a pause), do not decide the race:
    whichever place the race starts in, the faster plan is kept."""
    from zeroskip.engine.session import RUN_CHECK_RUNS, RunChoice

    for parallel_s, kept in ((1.0, "parallel"), (1.5, "one thread")):
        for phase in (0, 1):
            plan, twin = object(), object()
            choice = RunChoice(plan, twin)
            for i in range(2 * RUN_CHECK_RUNS):
                ran = choice.next()
                cold = 10.0 if (i + phase) % 2 == 0 else 0.0
                choice.record(ran, (parallel_s if ran is plan else 1.2) + cold)
            assert choice.decided() == kept, (parallel_s, phase)


def test_short_parallel_runs_are_checked_against_the_one_thread_plan(monkeypatch):
    """A parallel plan whose runs are short races its one-thread twin after its Trials, and keeps
    the faster; every run on either gives the one-thread session's bytes. The demo's untimed runs
    cover the race, so its timed runs all take the plan kept."""
    import zeroskip.engine.session as session_module
    from zeroskip.demo import WARMUP

    data = os.path.join(os.path.dirname(zeroskip.__file__), "data", "digits_mlp_pruned_int8.zsk")
    x = np.random.default_rng(0).random((450, 64), dtype=np.float32) * 16
    one = Session(data, mode="dense-i8", threads=1)
    two = Session(data, mode="dense-i8", threads=2)
    want = one.run({one.inputs[0].name: x})["logits"]
    for faster in ("one thread", "parallel"):
        session = Session(data, mode="dense-i8", threads=2)
        record = session_module.RunChoice.record

        def rigged(self, plan, seconds, faster=faster):  # the race's outcome, whatever the machine
            record(self, plan, seconds + (plan.serial == (faster == "parallel")))

        monkeypatch.setattr(session_module.RunChoice, "record", rigged)
        monkeypatch.setattr(session_module, "RUN_CHECK_MAX_S", 10.0)  # a slow machine races too
        for _ in range(WARMUP):
            np.testing.assert_array_equal(session.run({session.inputs[0].name: x})["logits"], want)
        choice = session._choices[id(session._plan)]
        assert choice.decided() == faster
        assert {row["run"] for row in session.explain()} == {faster}
        assert choice.next().serial == (faster == "one thread")
        np.testing.assert_array_equal(session.run({session.inputs[0].name: x})["logits"], want)
        monkeypatch.undo()
    assert two._choices.get(id(two._plan)) is None  # a session that has not run has not raced
    assert all("run" not in row for row in two.explain())
    assert one._choices == {} or one._choices[id(one._plan)] is False  # one thread: never races


def test_the_race_is_run_on_replays_and_forgets_the_loser(monkeypatch):
    """While a plan races its one-thread twin, each records its runs and replays them, so that the
    race is decided on replays (as the winner then runs); when it ends, the loser's recorded runs
    are dropped. The race's outcome is rigged both ways."""
    import zeroskip.engine.session as session_module
    from zeroskip.engine.replay import Replay

    data = os.path.join(os.path.dirname(zeroskip.__file__), "data", "digits_mlp_int8.zsk")
    x = np.random.default_rng(1).random((450, 64), dtype=np.float32) * 16
    want = Session(data, mode="dense-i8", threads=1).run({"input": x})["logits"]
    for faster in ("one thread", "parallel"):
        session = Session(data, mode="dense-i8", threads=2)
        record, replayed = session_module.RunChoice.record, []

        def rigged(self, plan, seconds, faster=faster):
            record(self, plan, seconds + (plan.serial == (faster == "parallel")))

        original = session_module.Session._replayed

        def noting(self, plan, choice, replay, checked):
            if choice is not False and choice.chosen is None:
                replayed.append(plan.serial)  # a replay during the race
            return original(self, plan, choice, replay, checked)

        monkeypatch.setattr(session_module.RunChoice, "record", rigged)
        monkeypatch.setattr(session_module.Session, "_replayed", noting)
        monkeypatch.setattr(session_module, "RUN_CHECK_MAX_S", 10.0)  # a slow machine races too
        monkeypatch.setattr(session_module, "REPLAY_MAX_RUN_S", 10.0)
        runs = session_module.RUN_CHECK_AFTER + 2 * session_module.RUN_CHECK_RUNS + 1
        for _ in range(runs):
            np.testing.assert_array_equal(session.run({"input": x})["logits"], want)
        choice = session._choices[id(session._plan)]
        assert choice.decided() == faster
        assert True in replayed and False in replayed, replayed  # both plans raced on replays
        states = session._replay_local.states
        assert [key[0] for key in states] == [id(choice.chosen)]  # the loser's runs are gone
        assert isinstance(next(iter(states.values())), Replay)
        monkeypatch.undo()
