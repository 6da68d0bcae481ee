"""Dynamic quantization: DynamicQuantizeLinear, MatMulInteger and ConvInteger.

Models come from onnxruntime's own ``quantize_dynamic``; every mode must reproduce the integer results
exactly and the float outputs to float32 rounding. The judge of "exactly" is ONNX's definition:

* with uint8 weights, or int8 weights quantized with ``reduce_range`` (7 bits), onnxruntime computes
  it exactly, and the int32 MatMulInteger/ConvInteger outputs must equal onnxruntime's;
* with full-range int8 weights onnxruntime's x86 u8·s8 kernels add pairs of products in saturating
  int16 (``vpmaddubsw``) and are wrong by up to ~0.16 in the logits of these small models, so there the
  judge is onnx's ReferenceEvaluator (exact integer arithmetic).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

import zeroskip  # noqa: E402
from zeroskip.errors import InputError, ModelFormatError  # noqa: E402

from onnx_builders import make_model, node, run_ort  # noqa: E402
from quant_builders import FLOAT_MODELS, calibration, quantize_dynamic  # noqa: E402

MODES = ("reference", "dense-f32", "sparse-f32", "dense-i8", "sparse-i8", "auto")
INTEGER_OPS = ("MatMulInteger", "ConvInteger")
# (weights, per_channel, reduce_range); None weights = the float model is not used
VARIANTS = [("int8", False, False), ("int8", True, False), ("int8", False, True),
            ("uint8", False, False), ("uint8", True, False)]


@functools.lru_cache(maxsize=None)
def _quantized(name, weights, per_channel, reduce_range):
    """(serialized quantize_dynamic model with every integer-op output also a graph output,
    input name, sample shape)."""
    model, input_name, shape = FLOAT_MODELS[name]()
    q = quantize_dynamic(model, weights, per_channel, reduce_range)
    for n in q.graph.node:
        if n.op_type in INTEGER_OPS:
            q.graph.output.append(helper.make_tensor_value_info(n.output[0], TensorProto.INT32, None))
    return q.SerializeToString(), input_name, shape


IM2ROW_GEMM = "channels_last_dense_i8 + im2row_dense_i8 + matmul_dense_i8"


def _expected(model, feeds, exact_ort: bool) -> dict:
    if exact_ort:
        return run_ort(model, feeds)
    from onnx.reference import ReferenceEvaluator

    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(names, feeds)))


@pytest.mark.parametrize("weights,per_channel,reduce_range", VARIANTS)
@pytest.mark.parametrize("name", ["cnn", "mlp_gemm", "mlp_matmul", "residual"])
def test_quantize_dynamic_models_in_every_mode(name, weights, per_channel, reduce_range):
    data, input_name, shape = _quantized(name, weights, per_channel, reduce_range)
    model = onnx.ModelProto.FromString(data)
    assert {n.op_type for n in model.graph.node} & set(INTEGER_OPS)
    feeds = {input_name: calibration(shape, 24, seed=11)}
    exact_ort = weights == "uint8" or reduce_range
    expected = _expected(model, feeds, exact_ort)
    imported = zeroskip.import_onnx(model)
    outputs = {}
    for mode in MODES:
        got = zeroskip.Session(imported, mode=mode).run(feeds)
        assert list(got) == list(expected)
        for out, want in expected.items():
            have = got[out]
            where = f"{name} {weights} per_channel={per_channel} {mode}: {out!r}"
            assert have.shape == want.shape, where
            if want.dtype.kind == "i" and mode == "reference":
                # float64 between the integer ops: a later DynamicQuantizeLinear may round an
                # element to the neighbouring step where float32 did not; rare, and counted
                assert have.dtype == np.int32, where
                assert np.mean(have != want) <= 0.01, where
            elif want.dtype.kind == "i":  # the int32 accumulators: exact
                assert have.dtype == np.int32, where
                np.testing.assert_array_equal(have, want, err_msg=where)
            else:  # the rescaled float outputs: float32 rounding of the same integers
                np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6, err_msg=where)
        outputs[mode] = got
    for mode in MODES[1:]:  # the kernel modes share every float op: byte-identical to each other
        for out in expected:
            np.testing.assert_array_equal(outputs[mode][out], outputs["dense-f32"][out],
                                          err_msg=f"{mode} vs dense-f32 {out!r}")


def _host_has_vnni() -> bool:
    from llvmlite import binding as llvm

    features = llvm.get_host_cpu_features()
    return bool(features.get("avx512vnni", False) or features.get("avxvnni", False))


def test_full_range_int8_weights_are_where_onnxruntime_saturates():
    """Documents why the test above judges full-range int8 weights by onnx's ReferenceEvaluator:
    on an AVX2-only CPU onnxruntime multiplies u8·s8 with vpmaddubsw, whose int16 pair sums saturate
    for full-range weights, so its result differs from the exact one; with VNNI (vpdpbusd adds the
    products in int32) it is exact. If either half starts failing, onnxruntime changed how it
    multiplies, and the judge of the test above should be revisited."""
    data, input_name, shape = _quantized("mlp_gemm", "int8", False, False)
    model = onnx.ModelProto.FromString(data)
    feeds = {input_name: calibration(shape, 24, seed=11)}
    exact, ort = _expected(model, feeds, False), run_ort(model, feeds)
    differs = [k for k in exact if not np.array_equal(exact[k], ort[k])]
    if _host_has_vnni():
        assert not differs, f"onnxruntime with VNNI differs from the exact result in {differs}"
    else:
        assert differs, "onnxruntime on AVX2 gave the exact result for full-range int8 weights"


def test_integer_ops_run_on_the_int8_kernels_uint8_weights_in_offset_form():
    data, _, _ = _quantized("cnn", "int8", False, False)
    imported = zeroskip.import_onnx(onnx.ModelProto.FromString(data))
    rows = {r["op"]: r for r in zeroskip.Session(imported, mode="sparse-i8").explain()}
    assert rows["ConvInteger"]["kernel"] == "conv2d_csr_i8"
    assert rows["MatMulInteger"]["kernel"] == "matmul_csr_i8"
    assert rows["DynamicQuantizeLinear"]["kernel"] == "quantize_dense_f32"
    rows = {r["op"]: r for r in zeroskip.Session(imported, mode="dense-f32").explain()}
    assert rows["ConvInteger"]["kernel"] == IM2ROW_GEMM
    assert rows["MatMulInteger"]["kernel"] == "matmul_dense_i8"

    data, _, _ = _quantized("cnn", "uint8", False, False)  # zero points far from 128
    imported = zeroskip.import_onnx(onnx.ModelProto.FromString(data))
    for mode in ("dense-i8", "sparse-i8"):  # the offset form is dense in every mode
        rows = {r["op"]: r for r in zeroskip.Session(imported, mode=mode).explain()}
        assert rows["ConvInteger"]["kernel"] == IM2ROW_GEMM
        assert rows["MatMulInteger"]["kernel"] == "matmul_dense_i8"
        for op in INTEGER_OPS:
            assert "uint8 weight as (w − 128) + (128 − w_zp)" in rows[op]["reason"]


# -- hand-built graphs: every input form the kernels take, and the ones they hand back --------------
def _integer_graph(op, a_shape, a_dtype, w, w_zp, a_zp=None, **attrs):
    """x float32 -> QuantizeLinear (scale 1, zero point q_zp) -> a -> op(a, w, a_zp, w_zp) -> int32 y.

    A static form of the integer ops (the graph inputs of zeroskip are float): feed
    ``x = a − q_zp`` and the quantizer hands the op exactly ``a``. ``a_zp``: the op's input zero point,
    an 8-bit constant (scalar or per row), or None for the quantizer's own.
    """
    q_zp = np.array(3 if a_dtype == np.uint8 else -2, a_dtype)
    inits = {"w": w, "w_zp": w_zp, "one": np.array(1.0, np.float32), "q_zp": q_zp}
    if a_zp is not None:
        inits["a_zp"] = np.asarray(a_zp, a_dtype)
    nodes = [node("QuantizeLinear", ["x", "one", "q_zp"], ["a"]),
             node(op, ["a", "w", "q_zp" if a_zp is None else "a_zp", "w_zp"], ["y"], **attrs)]
    model = make_model(nodes, [("x", list(a_shape))],
                       [helper.make_tensor_value_info("y", TensorProto.INT32, None)], inits,
                       check=False)
    return model, q_zp


def _feed(a, q_zp) -> dict:
    return {"x": (a.astype(np.float32) - np.float32(q_zp))}


def _ints(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("w_zp_kind", ["none", "tensor", "channel", "uint8 channel"])
@pytest.mark.parametrize("a_shape", [(5, 33), (2, 3, 33), (1, 33)])
def test_matmul_integer_kernels_equal_the_reference(a_shape, w_zp_kind, a_dtype):
    rng = np.random.default_rng(len(a_shape) + a_shape[0])
    w = _ints(rng, (33, 9), np.int8) // 2  # w − w_zp stays within int8
    w[rng.random(w.shape) < 0.7] = 0
    w_zp = {"none": np.zeros((), np.int8), "tensor": np.array(3, np.int8),
            "channel": rng.integers(-20, 20, 9).astype(np.int8),
            "uint8 channel": rng.integers(0, 256, 9).astype(np.uint8)}[w_zp_kind]
    if w_zp.dtype == np.uint8:  # full-range uint8 weights: w − w_zp spans [−255, 255]
        w = _ints(rng, (33, 9), np.uint8)
        w[:, 0], w_zp[0] = 255, 0  # and some certainly do not fit int8
    a = _ints(rng, a_shape, a_dtype)
    model, q_zp = _integer_graph("MatMulInteger", a_shape, a_dtype, w, w_zp,
                                 a_zp=np.array(a.flat[0], a_dtype))
    feeds = _feed(a, q_zp)
    want = run_ort(model, feeds)["y"]
    imported = zeroskip.import_onnx(model)
    for mode in MODES:
        session = zeroskip.Session(imported, mode=mode)
        if mode in ("dense-i8", "sparse-i8"):
            assert session.explain()[1]["kernel"].startswith("matmul_")
        got = session.run(feeds)["y"]
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want, err_msg=mode)


def test_matmul_integer_per_row_input_zero_point_is_exact():
    """ONNX allows one input zero point per row of a 2-D A; onnxruntime refuses it and onnx's
    ReferenceEvaluator broadcasts it along K, so the expectation is spelled out here."""
    rng = np.random.default_rng(3)
    w = _ints(rng, (16, 4), np.int8) // 2
    a, a_zp = _ints(rng, (6, 16), np.uint8), _ints(rng, (6,), np.uint8)
    model, q_zp = _integer_graph("MatMulInteger", (6, 16), np.uint8, w, np.zeros((), np.int8),
                                 a_zp=a_zp)
    want = (a.astype(np.int64) - a_zp[:, None]) @ w.astype(np.int64)
    for mode in ("reference", "dense-i8", "sparse-i8"):
        session = zeroskip.Session(zeroskip.import_onnx(model), mode=mode)
        if mode != "reference":
            assert session.explain()[1]["kernel"].startswith("matmul_")  # hands over at run time
        got = session.run(_feed(a, q_zp))["y"]
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want, err_msg=mode)


CONV_CASES = [
    # (x shape, w shape, attrs)
    ((2, 4, 9, 8), (6, 4, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((1, 4, 9, 8), (6, 2, 3, 2), dict(group=2, strides=[2, 1], pads=[0, 1, 2, 0])),
    ((1, 5, 10, 10), (5, 1, 3, 3), dict(group=5, pads=[1, 1, 1, 1], dilations=[2, 2])),
    ((1, 3, 7, 7), (4, 3, 1, 1), dict()),
    ((2, 5, 6, 7), (3, 5, 1, 1), dict(strides=[1, 1], auto_pad="SAME_UPPER")),  # pointwise too
    ((1, 4, 5, 5), (3, 4, 1, 1), dict(pads=[1, 0, 0, 1])),  # 1×1 with pads: not pointwise
    ((1, 4, 6, 6), (3, 4, 1, 1), dict(strides=[2, 2])),  # 1×1 strided: not pointwise
]
POINTWISE = {3: True, 4: True, 5: False, 6: False}
"""Which CONV_CASES (by index) sparse-i8 runs as a CSR GEMM on the planar input (matmul_csr_i8)."""


F32_POINTWISE = {3: True, 4: True, 5: False, 6: True}
"""Which CONV_CASES (by index) sparse-f32 runs as a CSR GEMM on the planar input (matmul_csr_f32):
a 1×1 conv of one group with no pads, strided or not."""


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_float_conv_kernels_match_onnxruntime(case):
    """A float Conv in every float mode (sparse-f32's pointwise convs on the CSR GEMM, the others
    on the direct sparse conv) against onnxruntime, bias and a fused Relu included."""
    x_shape, w_shape, attrs = CONV_CASES[case]
    rng = np.random.default_rng(int(np.prod(w_shape)))
    w = rng.standard_normal(w_shape).astype(np.float32)
    w[rng.random(w.shape) < 0.6] = 0
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    model = make_model([node("Conv", ["x", "w", "b"], ["c"], **attrs), node("Relu", ["c"], ["y"])],
                       [("x", x_shape)], [("y", None)], {"w": w, "b": bias}, check=False)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    want = run_ort(model, feeds)["y"]
    imported = zeroskip.import_onnx(model)
    for mode in ("dense-f32", "sparse-f32"):
        session = zeroskip.Session(imported, mode=mode)
        kernel = session.explain()[0]["kernel"]
        if mode == "sparse-f32" and case in F32_POINTWISE:
            assert kernel == ("matmul_csr_f32" if F32_POINTWISE[case] else "conv2d_csr_f32"), kernel
        got = session.run(feeds)["y"]
        assert got.shape == want.shape and (got >= 0).all()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=mode)


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("x_dtype,w_dtype", [(np.uint8, np.int8), (np.int8, np.int8),
                                             (np.uint8, np.uint8)])
def test_conv_integer_kernels_are_exact(case, x_dtype, w_dtype):
    x_shape, w_shape, attrs = CONV_CASES[case]
    rng = np.random.default_rng(int(np.prod(x_shape)))
    w = _ints(rng, w_shape, np.int8) // 2
    w[rng.random(w.shape) < 0.6] = 0
    w_zp = rng.integers(-10, 10, w_shape[0]).astype(np.int8) if x_dtype == np.int8 \
        else np.array(4, np.int8)
    if w_dtype == np.uint8:  # full-range uint8 weights, zero points far from 128: the offset form
        w, w_zp = _ints(rng, w_shape, np.uint8), rng.integers(0, 40, w_shape[0]).astype(np.uint8)
    model, q_zp = _integer_graph("ConvInteger", x_shape, x_dtype, w, w_zp,
                                 a_zp=np.array(7 if x_dtype == np.uint8 else -5, x_dtype), **attrs)
    feeds = _feed(_ints(rng, x_shape, x_dtype), q_zp)
    want = _expected(model, feeds, exact_ort=False)["y"]
    if x_dtype == np.uint8 and w_zp.size == 1:  # what onnxruntime's ConvInteger accepts
        np.testing.assert_array_equal(run_ort(model, feeds)["y"], want)
    imported = zeroskip.import_onnx(model)
    for mode in MODES:
        session = zeroskip.Session(imported, mode=mode)
        kernel = session.explain()[1]["kernel"]
        if mode != "reference":
            assert kernel != "reference", mode
        if mode == "sparse-i8" and case in POINTWISE and w_dtype == np.int8:
            assert kernel == ("matmul_csr_i8" if POINTWISE[case] else "conv2d_csr_i8"), kernel
        got = session.run(feeds)["y"]
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want.astype(np.int32), err_msg=mode)


@pytest.mark.parametrize("kind", ["mixed", "positive", "negative", "zeros", "tie"])
def test_dynamic_quantize_linear_equals_onnxruntime(kind):
    rng = np.random.default_rng(5)
    x = {"mixed": rng.standard_normal((3, 50)) * 4,
         "positive": rng.random((3, 50)) + 0.5,
         "negative": -rng.random((3, 50)) - 0.5,
         "zeros": np.zeros((3, 50)),
         "tie": np.array([[-1.0, 0.0, 1.5, 2.5] * 10])}[kind].astype(np.float32)
    model = make_model([node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])],
                       [("x", list(x.shape))],
                       [helper.make_tensor_value_info("y", TensorProto.UINT8, None),
                        helper.make_tensor_value_info("s", TensorProto.FLOAT, None),
                        helper.make_tensor_value_info("z", TensorProto.UINT8, None)], check=False)
    want = run_ort(model, {"x": x})
    for mode in ("reference", "dense-i8"):
        got = zeroskip.Session(zeroskip.import_onnx(model), mode=mode).run({"x": x})
        for name in ("y", "s", "z"):
            assert got[name].dtype == want[name].dtype, (mode, name)
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{mode} {name}")


def test_dynamic_quantize_linear_refuses_non_finite_input_naming_the_node():
    model = make_model([node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"], name="dq")],
                       [("x", [4])],
                       [helper.make_tensor_value_info("y", TensorProto.UINT8, None),
                        helper.make_tensor_value_info("s", TensorProto.FLOAT, None),
                        helper.make_tensor_value_info("z", TensorProto.UINT8, None)], check=False)
    x = np.array([1.0, np.inf, 0.0, -1.0], np.float32)
    for mode in ("reference", "dense-i8"):
        with pytest.raises(InputError, match="node 'dq' .*inf or NaN"):
            zeroskip.Session(zeroskip.import_onnx(model), mode=mode).run({"x": x})


def test_integer_operand_with_a_mismatched_zero_point_type_is_refused():
    w = np.ones((4, 3), np.int8)
    model, _ = _integer_graph("MatMulInteger", (2, 4), np.uint8, w, np.array(0, np.uint8))
    with pytest.raises(ModelFormatError, match="zero point 'w_zp' is uint8 but B is int8"):
        zeroskip.import_onnx(model)


def test_dynamic_model_round_trips_through_zsk(tmp_path):
    data, input_name, shape = _quantized("cnn", "int8", True, False)
    imported = zeroskip.import_onnx(onnx.ModelProto.FromString(data))
    path = tmp_path / "dyn.zsk"
    zeroskip.save(imported, path)
    loaded = zeroskip.load(path)
    feeds = {input_name: calibration(shape, 4, seed=2)}
    a = zeroskip.Session(imported, mode="sparse-i8").run(feeds)
    b = zeroskip.Session(loaded, mode="sparse-i8").run(feeds)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("mode", ["dense-i8", "sparse-i8", "auto"])
def test_dynamic_model_outputs_do_not_depend_on_the_thread_count(mode):
    data, input_name, shape = _quantized("residual", "int8", True, False)
    imported = zeroskip.import_onnx(onnx.ModelProto.FromString(data))
    feeds = {input_name: calibration(shape, 8, seed=4)}
    one = zeroskip.Session(imported, mode=mode, threads=1).run(feeds)
    two = zeroskip.Session(imported, mode=mode, threads=2).run(feeds)
    for name in one:
        assert one[name].tobytes() == two[name].tobytes(), name
