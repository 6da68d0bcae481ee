"""MatMul with a constant weight takes the same CSR-or-dense choice as Gemm, in f32 and in int8.

Float: ``y (..., N) = x (..., K) @ B (K,N)`` with a constant 2-D B runs ``matmul_csr_f32`` on Bᵀ as
CSR in sparse-f32 (A's leading dims flattened to M), numpy BLAS in dense-f32, and auto's measured
choice in auto. Int8: the three ONNX forms of a quantized MatMul (QDQ, QLinearMatMul,
MatMulInteger) reach the integer kernels, CSR in sparse-i8 and dense in dense-i8, with bit-identical
outputs. A 3-D A imports as Reshape -> QGemm -> Reshape when its inner dims are static.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest

pytest.importorskip("onnx")

import zeroskip  # noqa: E402
from zeroskip.engine.plan.context import Choice, PlanContext  # noqa: E402
from zeroskip.engine.plan.f32_dense import KERNEL_NAME as DENSE_GEMM  # noqa: E402

from kernel_checks import assert_exact, assert_f32_close  # noqa: E402
from onnx_builders import make_model, node, pruned, randn  # noqa: E402

K, N = 40, 24


def _matmul_model(a_shape, density=0.1, seed=1):
    """One MatMul: A of shape ``a_shape`` (its first entry may be "N") @ pruned (K, N)."""
    w = pruned((K, N), density, seed=seed)
    out = list(a_shape[:-1]) + [N]
    model = make_model([node("MatMul", ["x", "w"], ["y"], name="mm")], [("x", list(a_shape))],
                       [("y", out)], {"w": w})
    return zeroskip.import_onnx(model), w


def _mlp_model(a_shape):
    """MatMul (pruned) -> Add -> Relu -> MatMul (dense weight), as torch exports Linear layers."""
    hidden = 32
    nodes = [node("MatMul", ["x", "w1"], ["m1"], name="mm1"), node("Add", ["m1", "b1"], ["a1"]),
             node("Relu", ["a1"], ["r1"]), node("MatMul", ["r1", "w2"], ["y"], name="mm2")]
    inits = {"w1": pruned((K, hidden), 0.1, seed=2), "b1": randn(hidden, 3, 0.1),
             "w2": randn((hidden, N), 4, 0.3)}
    out = list(a_shape[:-1]) + [N]
    return zeroskip.import_onnx(make_model(nodes, [("x", list(a_shape))], [("y", out)], inits))


def _rows(session, op="MatMul"):
    return {r["node"]: r for r in session.explain() if r["op"] == op}


# -- float ----------------------------------------------------------------------------------------
A_SHAPES = {"2-D": (["N", K], (7, K)), "3-D": (["N", 5, K], (3, 5, K)),
            "4-D": (["N", 2, 3, K], (2, 2, 3, K)), "1-D": ([K], (K,))}


@pytest.mark.parametrize("a", list(A_SHAPES))
def test_sparse_f32_runs_matmul_on_csr_close_to_the_reference(a):
    declared, fed = A_SHAPES[a]
    model, w = _matmul_model(declared)
    x = randn(fed, 5)
    want = zeroskip.Session(model, mode="reference").run({"x": x})["y"]
    magnitude = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64))
    sparse = zeroskip.Session(model, mode="sparse-f32")
    row = _rows(sparse)["mm"]
    assert row["kernel"] == "matmul_csr_f32", row
    assert row["density"] == pytest.approx(np.count_nonzero(w) / w.size, abs=1e-4)
    dense = zeroskip.Session(model, mode="dense-f32")
    for mode, session in (("sparse-f32", sparse), ("dense-f32", dense)):
        got = session.run({"x": x})["y"]
        assert got.flags.c_contiguous
        assert_f32_close(got, want, K=K, magnitude=magnitude, mode=mode, a=a, N=N)


def test_an_empty_batch_is_refused_in_every_float_mode():
    model, _ = _matmul_model(["N", K])
    for mode in ("reference", "sparse-f32", "dense-f32"):
        with pytest.raises(zeroskip.InputError, match=r"input .x.: shape \(0, 40\) has no elements"):
            zeroskip.Session(model, mode=mode).run({"x": randn((0, K), 5)})


def test_sparse_f32_mlp_of_matmuls_matches_dense_f32():
    model = _mlp_model(["N", 6, K])
    x = randn((4, 6, K), 6)
    sparse = zeroskip.Session(model, mode="sparse-f32")
    assert {r["kernel"] for r in _rows(sparse).values()} == {"matmul_csr_f32"}
    dense = zeroskip.Session(model, mode="dense-f32")
    assert {r["kernel"] for r in _rows(dense).values()} == {"matmul (numpy BLAS)"}  # only sgemms
    want = zeroskip.Session(model, mode="reference").run({"x": x})["y"]
    for session in (sparse, dense):
        np.testing.assert_allclose(session.run({"x": x})["y"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", ["Relu", "Clip"])
def test_relu_or_clip_after_matmul_is_fused_in_both_float_modes(act):
    """A MatMul whose only reader is a Relu/Clip (a Linear without bias) applies the clamp itself:
    the CSR kernel's bounds in sparse-f32, np.clip after the sgemm in dense-f32."""
    w = pruned((K, N), 0.1, seed=4)
    attrs = {"min": -0.25, "max": 0.5} if act == "Clip" else {}
    clip_inputs = ["lo", "hi"] if act == "Clip" else []
    nodes = [node("MatMul", ["x", "w"], ["m"], name="mm"),
             node(act, ["m"] + clip_inputs, ["a"], name="act"),
             node("MatMul", ["a", "w2"], ["y"], name="mm2")]
    inits = {"w": w, "w2": randn((N, 8), 5, 0.3)}
    if act == "Clip":
        inits.update(lo=np.array(attrs["min"], np.float32), hi=np.array(attrs["max"], np.float32))
    model = zeroskip.import_onnx(make_model(nodes, [("x", ["N", 3, K])], [("y", ["N", 3, 8])],
                                            inits))
    x = randn((4, 3, K), 9)
    want = zeroskip.Session(model, mode="reference").run({"x": x})["y"]
    for mode, kernel in (("sparse-f32", "matmul_csr_f32"),
                         ("dense-f32", "matmul (numpy BLAS)")):
        session = zeroskip.Session(model, mode=mode)
        rows = {r["node"]: r for r in session.explain()}
        assert rows["mm"]["kernel"] == kernel and rows["mm"]["reason"].endswith("activation fused")
        assert rows["act"]["kernel"] == "fused", rows["act"]
        np.testing.assert_allclose(session.run({"x": x})["y"], want, rtol=1e-5, atol=1e-5,
                                   err_msg=mode)


def test_auto_choice_is_honored_for_matmul(monkeypatch):
    """auto asks what it asks for Gemm ("gemm f32", the node itself) and follows the answer."""
    asked = []

    def choose(self, density, shape_class, node=None):
        asked.append((shape_class, None if node is None else node.name))
        return Choice(density < 0.5, f"test {density:.2f}")

    monkeypatch.setattr(PlanContext, "choose_csr", choose)
    rows = _rows(zeroskip.Session(_mlp_model(["N", K]), mode="auto"))
    assert ("gemm f32", "mm1") in asked and ("gemm f32", "mm2") in asked
    assert rows["mm1"]["kernel"] == "matmul_csr_f32"  # density 0.1
    assert rows["mm2"]["kernel"] == DENSE_GEMM  # density 1.0, beside a CSR step
    for row in rows.values():
        assert row["reason"].startswith(f"auto: test {row['density']:.2f}; "), row


def test_auto_times_a_matmul_layer_on_its_own_shapes(monkeypatch, tmp_path):
    """With a known input shape, auto times both steps of the MatMul itself (measure_layer)."""
    from zeroskip.engine import tuning

    monkeypatch.setenv("ZEROSKIP_CACHE_DIR", str(tmp_path))  # nothing cached: it must measure
    measured = []
    real = tuning.measure_layer

    def measure(node, *args, **kwargs):
        measured.append((node.op, real(node, *args, **kwargs)))
        return measured[-1][1]

    monkeypatch.setattr(tuning, "measure_layer", measure)
    model, _ = _matmul_model(["N", 3, K], density=0.05, seed=9)
    session = zeroskip.Session(model, mode="auto")
    row = _rows(session)["mm"]
    assert measured and measured[0][0] == "MatMul" and all(t > 0 for t in measured[0][1])
    assert "auto: measured on this layer" in row["reason"], row
    assert row["kernel"] in ("matmul_csr_f32", "matmul (numpy BLAS)")
    x = randn((2, 3, K), 7)
    np.testing.assert_allclose(session.run({"x": x})["y"],
                               zeroskip.Session(model, "dense-f32").run({"x": x})["y"],
                               rtol=1e-5, atol=1e-6)


def test_matmul_whose_b_is_not_constant_keeps_its_old_path():
    """B an input (or a constant that is not a 2-D matrix): no CSR step, the same as dense-f32."""
    x_shape, b_shape = (3, 4, K), (3, K, N)
    run_time_b = make_model([node("MatMul", ["x", "b"], ["y"], name="mm")],
                            [("x", list(x_shape)), ("b", list(b_shape))], [("y", [3, 4, N])])
    batched_b = make_model([node("MatMul", ["x", "w"], ["y"], name="mm")], [("x", list(x_shape))],
                           [("y", [3, 4, N])], {"w": pruned(b_shape, 0.1, seed=3)})
    feeds = {"x": randn(x_shape, 1), "b": randn(b_shape, 2)}
    for onnx_model in (run_time_b, batched_b):
        model = zeroskip.import_onnx(onnx_model)
        given = {k: v for k, v in feeds.items() if k in {i.name for i in model.graph.inputs}}
        sparse = zeroskip.Session(model, mode="sparse-f32")
        dense = zeroskip.Session(model, mode="dense-f32")
        assert _rows(sparse)["mm"]["kernel"] == _rows(dense)["mm"]["kernel"] != "matmul_csr_f32"
        np.testing.assert_array_equal(sparse.run(given)["y"], dense.run(given)["y"])


def test_matmul_csr_outputs_identical_for_one_and_two_threads():
    model = _mlp_model(["N", 6, K])
    x = randn((9, 6, K), 8)
    one = zeroskip.Session(model, mode="sparse-f32", threads=1).run({"x": x})["y"]
    two = zeroskip.Session(model, mode="sparse-f32", threads=2).run({"x": x})["y"]
    assert one.tobytes() == two.tobytes()


def test_matmul_csr_refuses_a_wrong_reduction_naming_the_node():
    model, _ = _matmul_model(["N", K])
    step = zeroskip.Session(model, mode="sparse-f32")._plan.steps[0]
    assert step.kernel == "matmul_csr_f32"
    with pytest.raises(zeroskip.InputError, match=r"'mm' \(MatMul\).*\(\.\.\., 40\)"):
        step.run({"x": np.zeros((2, K + 1), np.float32)})


# -- int8 -----------------------------------------------------------------------------------------
def _float_mlp(a_shape):
    """MatMul (pruned) -> Relu -> MatMul, to be quantized by onnxruntime (no bias: MatMul only)."""
    nodes = [node("MatMul", ["x", "w1"], ["m1"], name="mm1"), node("Relu", ["m1"], ["r1"]),
             node("MatMul", ["r1", "w2"], ["y"], name="mm2")]
    inits = {"w1": pruned((K, 32), 0.1, seed=1), "w2": randn((32, 8), 2, 0.3)}
    return make_model(nodes, [("x", list(a_shape))], [("y", list(a_shape[:-1]) + [8])], inits)


INT8_FORMS = [("qdq", ("N", K)), ("qdq", ("N", 5, K)), ("qoperator", ("N", K)),
              ("qoperator", ("N", 5, K)), ("dynamic", ("N", K)), ("dynamic", ("N", 5, K))]


@functools.lru_cache(maxsize=None)
def _quantized(form, a_shape):
    from quant_builders import quantize, quantize_dynamic

    logging.disable(logging.WARNING)  # the quantizer's advice on reduce_range, calibration...
    try:
        onnx_model = _float_mlp(a_shape)
        if form == "dynamic":
            return quantize_dynamic(onnx_model)
        return quantize(onnx_model, form, "uint8", True, "x", tuple(a_shape[1:]))
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("form,a_shape", INT8_FORMS,
                         ids=[f"{f}-{len(s)}d" for f, s in INT8_FORMS])
def test_int8_matmul_takes_the_csr_or_dense_choice(form, a_shape):
    """Each int8 form of a MatMul reaches the integer kernels: CSR in sparse-i8, dense in dense-i8;
    dense-i8, sparse-i8 and auto give the same bytes, and (QDQ, QOperator) the integer
    reference's."""
    pytest.importorskip("onnxruntime")
    from quant_builders import calibration

    q = _quantized(form, a_shape)
    model = zeroskip.import_onnx(q)
    weighted = ("QGemm", "MatMulInteger")
    assert not [n.name for n in model.graph.nodes if n.op == "MatMul"]  # no float MatMul left
    x = calibration(tuple(a_shape[1:]), 12, seed=11)
    outs = {}
    # a QGemm requantizes in the GEMM's epilogue; MatMulInteger's output is the int32 sums
    dense = "matmul_dense_i8" if form == "dynamic" else "matmul_dense_rq_i8"
    csr = "matmul_csr_i8" if form == "dynamic" else "matmul_csr_rq_i8"
    for mode, kernel in (("dense-i8", dense), ("sparse-i8", csr), ("auto", None)):
        session = zeroskip.Session(model, mode=mode)
        rows = [r for r in session.explain() if r["op"] in weighted]
        assert len(rows) == 2, rows
        for row in rows:
            if kernel is None:  # auto: either kernel, as its choice says
                assert row["reason"].startswith("auto: "), row
                assert row["kernel"].split()[0] in (csr, dense), row
            else:
                assert row["kernel"].split()[0] == kernel, row
        outs[mode] = session.run({"x": x})["y"]
    assert outs["dense-i8"].shape == tuple([12] + list(a_shape[1:-1]) + [8])
    assert outs["dense-i8"].tobytes() == outs["sparse-i8"].tobytes() == outs["auto"].tobytes()
    if form != "dynamic":  # the reference runs the same integer arithmetic (QGemm)
        want = zeroskip.Session(model, mode="reference").run({"x": x})["y"]
        assert_exact(outs["dense-i8"], want.astype(np.float32), dtype=np.float32, form=form,
                     a_shape=a_shape)


def test_int8_matmul_of_3d_a_runs_as_qgemm_on_rows_within_a_step_of_onnxruntime():
    """A 3-D A (static inner dims) imports as Reshape -> QGemm -> Reshape: onnxruntime's values."""
    pytest.importorskip("onnxruntime")
    from onnx_builders import run_ort
    from quant_builders import calibration

    for form in ("qdq", "qoperator"):
        q = _quantized(form, ("N", 5, K))
        model = zeroskip.import_onnx(q)
        ops = [n.op for n in model.graph.nodes]
        assert ops.count("QGemm") == 2 and ops.count("Reshape") == 4, ops
        x = calibration((5, K), 12, seed=11)
        want = run_ort(q, {"x": x})["y"]
        step = float(model.graph.nodes[-1].attrs["x_scale"])
        got = zeroskip.Session(model, mode="sparse-i8").run({"x": x})["y"]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= step * (1 + 1e-6), form


def test_int8_matmul_with_a_dynamic_inner_dim_keeps_the_float_form():
    """A (N, T, K) with T dynamic cannot be reshaped back from (M, N) statically: it stays
    DequantizeLinear -> MatMul -> QuantizeLinear, and still runs in every int8 mode."""
    pytest.importorskip("onnxruntime")
    from onnx_builders import run_ort
    from quant_builders import calibration, quantize

    logging.disable(logging.WARNING)
    try:
        q = quantize(_float_mlp(("N", "T", K)), "qoperator", "uint8", True, "x", (5, K))
    finally:
        logging.disable(logging.NOTSET)
    model = zeroskip.import_onnx(q)
    assert [n.op for n in model.graph.nodes].count("MatMul") == 2
    x = calibration((5, K), 6, seed=3)
    want = run_ort(q, {"x": x})["y"]
    step = float(model.graph.nodes[-1].attrs["x_scale"])
    for mode in ("dense-i8", "sparse-i8"):
        got = zeroskip.Session(model, mode=mode).run({"x": x})["y"]
        assert np.abs(got - want).max() <= 2 * step * (1 + 1e-6), mode


# -- activations between GEMMs ----------------------------------------------------------------------
def _chain_model(a_shape):
    """MatMul (pruned) -> Relu -> MatMul (pruned): both on CSR in sparse-f32."""
    nodes = [node("MatMul", ["x", "w1"], ["m1"], name="mm1"), node("Relu", ["m1"], ["r1"]),
             node("MatMul", ["r1", "w2"], ["y"], name="mm2")]
    inits = {"w1": pruned((K, 32), 0.2, seed=12), "w2": pruned((32, N), 0.2, seed=13)}
    return zeroskip.import_onnx(make_model(nodes, [("x", list(a_shape))],
                                           [("y", list(a_shape[:-1]) + [N])], inits))


def test_chained_csr_gemms_pass_the_transposed_activation_without_a_copy(monkeypatch):
    """The CSR GEMM writes yt (N,M) and hands on its transpose: the next CSR GEMM reads that yt as
    its (K,M) input, so only the graph input is transposed (by transpose_dense_f32, into an
    aligned scratch xt). The output is still C-contiguous and right."""
    from zeroskip.engine.plan import f32_csr
    from zeroskip.kernels import KERNELS

    model = _chain_model(["N", K])
    x = randn((33, K), 14)
    session = zeroskip.Session(model, mode="sparse-f32", threads=1)
    assert {r["kernel"] for r in _rows(session).values()} == {"matmul_csr_f32"}
    made, transposed = [], []
    empty = f32_csr.aligned_empty
    monkeypatch.setattr(f32_csr, "aligned_empty",
                        lambda shape, dtype: made.append(shape) or empty(shape, dtype))
    transpose = f32_csr.CsrProduct.__call__

    def counting(self, x):
        kernel = self.transpose
        self.transpose = lambda a, b: transposed.append(b.shape) or kernel(a, b)
        try:
            return transpose(self, x)
        finally:
            self.transpose = kernel

    monkeypatch.setattr(f32_csr.CsrProduct, "__call__", counting)
    got = session.run({"x": x})["y"]
    # the graph input transposed once, into a scratch; then each layer's yt: no other copy
    assert transposed == [(K, 33)] and made == [(32, 33), (N, 33)]
    assert got.flags.c_contiguous
    want = zeroskip.Session(model, mode="reference").run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["C", "F aligned", "F misaligned", "strided"])
def test_csr_product_gives_the_same_bytes_for_every_input_layout(layout):
    """CsrProduct reads x's transpose in place only when it is a C-contiguous float32 matrix on a
    cache line; every other layout is copied first, and the bytes never change."""
    from zeroskip.engine.plan.f32_csr import CsrProduct
    from zeroskip.engine.plan.steps import aligned_empty
    from zeroskip.kernels import serial_kernel

    class Ctx:
        kernel = staticmethod(serial_kernel)

    w = pruned((N, K), 0.3, seed=15)
    product = CsrProduct(w, randn(N, 16), None, None, Ctx())
    x = randn((21, K), 17)
    if layout.startswith("F"):
        xt = aligned_empty((K + 1, 21), np.float32)[1:] if layout == "F misaligned" else \
            aligned_empty((K, 21), np.float32)
        xt[...] = x.T
        assert xt.flags.c_contiguous and (xt.ctypes.data % 64 == 0) == (layout == "F aligned")
        fed = xt.T
    elif layout == "strided":
        fed = np.repeat(x, 2, axis=0)[::2]
    else:
        fed = x
    want = product(np.ascontiguousarray(x))
    got = product(fed)
    assert got.tobytes() == want.tobytes()
    np.testing.assert_allclose(got, x.astype(np.float64) @ w.T.astype(np.float64) +
                               randn(N, 16), rtol=1e-4, atol=1e-4)


def test_int8_qgemm_hands_on_the_transpose_of_its_kernels_output():
    """A QGemm's output value is the transpose of the kernel's C-contiguous (N,M) result, so a CSR
    reader takes it with no copy; Session.run still returns C-contiguous outputs, exact."""
    pytest.importorskip("onnxruntime")
    from quant_builders import calibration

    model = zeroskip.import_onnx(_quantized("qdq", ("N", K)))
    x = calibration((K,), 12, seed=18)
    session = zeroskip.Session(model, mode="sparse-i8", threads=1)
    plan, values = session._start({"x": x})
    qgemms = [step for step in plan.steps if step.node.op == "QGemm"]
    assert len(qgemms) == 2
    for step in plan.steps:
        step.run(values)
        if step is qgemms[0]:
            out = values[step.node.outputs[0]]
            assert out.shape == (12, 32) and out.T.flags.c_contiguous
    got = session.run({"x": x})["y"]
    assert got.flags.c_contiguous
    want = zeroskip.Session(model, mode="dense-i8").run({"x": x})["y"]
    assert got.tobytes() == want.tobytes()


def test_auto_times_a_gemm_on_the_layout_its_producer_hands_on(monkeypatch, tmp_path):
    """auto times the second QGemm on the transposed input the first one hands on (a CSR reader
    takes it free, a dense one copies it), and the first on a plain C-contiguous input."""
    pytest.importorskip("onnxruntime")
    from zeroskip.engine import tuning

    monkeypatch.setenv("ZEROSKIP_CACHE_DIR", str(tmp_path))
    seen = {}
    real = tuning.measure_layer

    def measure(node, tensors, x_shape, x_dtype, modes, step_in_mode, transposed=False,
                serial_step_in_mode=None):
        seen[node.name] = transposed
        return real(node, tensors, x_shape, x_dtype, modes, step_in_mode, transposed=transposed)

    monkeypatch.setattr(tuning, "measure_layer", measure)
    model = zeroskip.import_onnx(_quantized("qdq", ("N", K)))
    session = zeroskip.Session(model, mode="auto", threads=1)
    first, second = [s.node.name for s in session._plan.steps if s.node.op == "QGemm"]
    assert seen == {first: False, second: True}
    qgemm = next(n for n in model.graph.nodes if n.op == "QGemm")
    keys = [tuning.layer_key(qgemm, model.graph.initializers, ((1, K), "uint8"), 0.1, t)
            for t in (False, True)]
    assert keys[0] != keys[1]  # the layout is part of the timing cache's key
