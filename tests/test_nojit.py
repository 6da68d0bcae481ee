"""Every mode runs with Numba's JIT off (NUMBA_DISABLE_JIT=1) and gives the compiled bytes.

With the JIT off every kernel is its plain Python function (prange is range), which is how a learner
steps through one in a debugger; the parts written in LLVM IR are replaced by their plain forms (the
dense int8 GEMM's tile by its NumPy model, kernels/matmul_dense.py; the CSR kernels' row block by its
loops, kernels/_rows.py; the dense float conv's FMA tile by its loops, each multiply-add rounded
once by ``_fma.fma32``). The outputs must not change by a single bit.

The models: a float CNN (conv 3×3, depthwise 3×3 and 5×5 with two outputs per channel, a residual
Add, MaxPool, a pruned 1×1 conv, AveragePool, GlobalAveragePool, a pruned Gemm), its int8 versions
made by onnxruntime's quantizer (QOperator with uint8 activations, QDQ with int8 ones), and the
bundled digits MLPs.
Together their plans reach every kernel that a plan uses (checked below); ``im2col_dense_i8`` and
``requantize_dense_i8``, which no plan uses, are called directly.

The JIT is read once per process, so the JIT-off runs happen in one child process and the compiled
ones here. ``auto`` picks kernels from timings cached per machine (``ZEROSKIP_CACHE_DIR``, a fresh
directory per test session, see conftest.py): the compiled runs go first and measure, and the child
reads the same cache, so both make the same choices (Python-loop timings would be meaningless).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import zeroskip
from onnx_builders import make_model, node, pruned, randn
from quant_builders import calibration, quantize, quantize_dynamic
from zeroskip.kernels import KERNELS, _amx, _dwtile
from zeroskip.kernels._cpu import HAS_AVX512_VNNI

DATA = pathlib.Path(zeroskip.__file__).parent / "data"
THREADS = (1, 2)
FLOAT_MODES = ["reference", "dense-f32", "sparse-f32", "auto"]
INT8_MODES = FLOAT_MODES + ["dense-i8", "sparse-i8"]
NOT_IN_ANY_PLAN = {"im2col_dense_i8", "requantize_dense_i8", "conv2d_quad_rq_i8",
                   "im2col_dense_f32", "bias_act_dense_f32", "conv2d_lanes_f32",
                   "conv2d_lanes_rq_i8", "pointwise_depthwise_f32", "transpose_dense_f32"} \
    | ({"depthwise_nhwc_rq_i8"} if _dwtile.CPU_HAS else set()) \
    | ({"conv2d_dense_rq_i8"} if not _amx.CONV_AVAILABLE else set()) \
    | ({"matmul_planar_rq_i8"} if not HAS_AVX512_VNNI else set())
"""Kernels that no plan here calls, called directly instead: the int8 dense conv takes im2row,
every QGemm/QConv requantizes in its kernel's epilogue (requantize_dense_i8 is the pass those
epilogues must equal), im2col + sgemm + bias_act is the float conv's numpy BLAS baseline in
bench/ (dense-f32 plans run the direct conv), and the quad-sparse conv needs an AVX-512 VNNI CPU
and convs over groups of 4 channels (engine/plan/int8.py, ``QuadConv.fits``), which the CNN below
has not; plans take the lanes conv for one-group float convs on AVX-512 CPUs whose output channels
fill whole blocks of 32 but for an eighth (conv_lanes.lanes_pay), and the CNN's have 8 and 12; the int8 lanes conv takes one-group QConvs of a multiple of 4
input channels on AVX-512 VNNI CPUs without AMX, and the CNN's one-group QConv has 3. Plans
take the AMX conv only where the OS grants AMX, the planar 1×1 GEMM only on AVX-512 VNNI CPUs,
and the channels-last depthwise conv, where the 3×3 row tile runs (AVX-512 VNNI + VBMI), only
below 7-wide outputs or for kernels other than 3×3 (the CNN's 5×5 has two outputs per channel,
which that kernel does not take); the CNN has no 1×1 conv read only by a 3×3 depthwise one
(pointwise_depthwise_f32); the CSR Gemm's transpose of its input (transpose_dense_f32) runs
inside a step named for the GEMM. The kernels that no plan reaches, or no row names, are called
directly, and their bytes compared as the plans' are."""


def _cnn():
    """The float CNN; weights w4 (1×1 conv) and w5 (Gemm) are pruned, so sparse kernels skip zeros.
    Its first conv is 5×5 over 3 channels: 25 taps, two tiles of gathered taps in the AMX conv."""
    nodes = [
        node("Conv", ["x", "w1", "b1"], ["c1"], pads=[2, 2, 2, 2]), node("Relu", ["c1"], ["r1"]),
        node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8),
        node("Add", ["c2", "r1"], ["s"]), node("Relu", ["s"], ["r2"]),
        node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Conv", ["p", "w3", "b3"], ["c3"], pads=[2, 2, 2, 2], group=8),
        node("Relu", ["c3"], ["r3"]),
        node("Conv", ["r3", "w4", "b4"], ["c4"]), node("Relu", ["c4"], ["r4"]),
        node("AveragePool", ["r4"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node("GlobalAveragePool", ["a"], ["g"]), node("Flatten", ["g"], ["f"]),
        node("Gemm", ["f", "w5", "b5"], ["y"], transB=1)]
    inits = {"w1": randn((8, 3, 5, 5), 1, 0.2), "b1": randn(8, 2, 0.1),  # 5×5: 25 gathered taps
             "w2": randn((8, 1, 3, 3), 3, 0.3), "b2": randn(8, 4, 0.1),
             "w3": randn((16, 1, 5, 5), 5, 0.2), "b3": randn(16, 6, 0.1),  # 2 outputs per plane
             "w4": pruned((12, 16, 1, 1), 0.4, seed=7, scale=0.5), "b4": randn(12, 8, 0.1),
             "w5": pruned((10, 12), 0.5, seed=9, scale=0.5), "b5": randn(10, 10, 0.1)}
    return make_model(nodes, [("x", ["N", 3, 9, 9])], [("y", ["N", 10])], inits)


def _models(directory: pathlib.Path) -> dict:
    """name -> (.zsk path, input name, input array, modes)."""
    cnn = _cnn()
    x_cnn = calibration((3, 9, 9), 3, seed=5)  # batch 3: odd M in the Gemm
    digits = np.load(DATA / "digits_test.npz")["pixels"][:3].reshape(3, -1).astype(np.float32)
    models = {}
    logging.disable(logging.WARNING)  # the quantizer's advice
    try:
        onnx_models = {"cnn-f32": cnn,
                       "cnn-qoperator-u8": quantize(cnn, "qoperator", "uint8", True, "x", (3, 9, 9)),
                       "cnn-qdq-s8": quantize(cnn, "qdq", "int8", True, "x", (3, 9, 9)),
                       # ConvInteger/MatMulInteger: the int32 GEMM that does not requantize
                       "cnn-dynamic": quantize_dynamic(cnn)}
    finally:
        logging.disable(logging.NOTSET)
    for name, onnx_model in onnx_models.items():
        path = directory / f"{name}.zsk"
        zeroskip.save(zeroskip.import_onnx(onnx_model), path)
        models[name] = (path, "x", x_cnn, FLOAT_MODES if name == "cnn-f32" else INT8_MODES)
    for name in ("digits_mlp", "digits_mlp_pruned", "digits_mlp_int8"):
        modes = INT8_MODES if name.endswith("int8") else FLOAT_MODES
        models[name] = (DATA / f"{name}.zsk", "input", digits, modes)
    return models


def _im2col_case():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (2, 4, 5, 6)).astype(np.uint8)
    cols = np.zeros((2, 2, 2 * 3 * 3, 5, 6), np.uint8)  # groups 2, 3×3, stride 1, pads 1 all round
    return x, 17, cols, (3, 3, 1, 1, 1, 1, 1, 1)


def _run_all(spec: list) -> tuple[dict, dict]:
    """Outputs and kernel choices of every (model, mode, threads) run in ``spec``, in this process."""
    outputs, kernels = {}, {}
    for key, path, input_name, inputs_path, mode, threads in spec:
        session = zeroskip.Session(zeroskip.load(path), mode=mode, threads=threads)
        with np.load(inputs_path) as inputs:
            result = session.run({input_name: inputs[input_name]})
        for out_name, value in result.items():
            outputs[f"{key}|{out_name}"] = value
        kernels[key] = [row["kernel"] for row in session.explain()]
    x, zp, cols, geometry = _im2col_case()
    KERNELS["im2col_dense_i8"](x, zp, cols, *geometry)
    outputs["direct|im2col_dense_i8"] = cols
    acc = np.arange(-2000, 2000, 7, dtype=np.int32).reshape(4, -1)  # 4 channels, both clamps bind
    y = np.zeros(acc.shape, np.uint8)
    m0, shift = np.full(4, 1 << 30, np.int32), np.array([3, 4, 5, 6], np.int32)
    KERNELS["requantize_dense_i8"](acc, m0, shift, 17, 2, 250, y)
    outputs["direct|requantize_dense_i8"] = y
    outputs["direct|conv2d_quad_rq_i8"] = _quad_conv()
    outputs["direct|conv2d_lanes_f32"] = _lanes_conv()
    outputs["direct|conv2d_lanes_rq_i8"] = _lanes_conv_i8()
    outputs["direct|depthwise_nhwc_rq_i8"] = _nhwc_depthwise()
    x = np.arange(17 * 37, dtype=np.float32).reshape(17, 37) / 7  # rows past a step of 16
    xt = np.zeros((37, 17), np.float32)
    KERNELS["transpose_dense_f32"](x, xt)
    outputs["direct|transpose_dense_f32"] = xt
    for stride, width in ((2, 62), (1, 7)):  # stride 2 past 28 outputs a row: the split columns
        outputs[f"direct|pointwise_depthwise_f32|{stride}"] = _pointwise_depthwise(stride, width)
    return outputs, kernels


def _pointwise_depthwise(stride: int, width: int) -> np.ndarray:
    """pointwise_depthwise_f32: a 6 → 5 channel 1×1 conv at 5×``width`` (half its weights zero),
    clamped to [0, 6], then a 3×3 depthwise conv with pads 1 at ``stride``, clamped to [−1, 1]."""
    rng = np.random.default_rng(19)
    w = rng.standard_normal((5, 6)).astype(np.float32)
    w[rng.random(w.shape) < 0.5] = 0
    mask = w != 0
    indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int32)
    indices, data = np.nonzero(mask)[1].astype(np.int32), w[mask]
    x = rng.standard_normal((1, 6, 5, width)).astype(np.float32)
    taps, b1, b2 = (rng.standard_normal(s).astype(np.float32) for s in ((5, 9), 5, 5))
    oh, ow = (5 - 1) // stride + 1, (width - 1) // stride + 1
    y = np.zeros((1, 5, oh, ow), np.float32)
    f32 = np.float32
    KERNELS["pointwise_depthwise_f32"](indptr, indices, data, b1, f32(0), f32(6), x, taps, b2, y,
                                       (oh - 1) * stride + 3, (ow - 1) * stride + 3, stride,
                                       stride, 1, 1, 1, 1, f32(-1), f32(1))
    return y


def _nhwc_depthwise() -> np.ndarray:
    """depthwise_nhwc_rq_i8 on a 3×3 stride-2 depthwise conv of 20 uint8 channels at 9×9, pads 1
    (output 5×5), tie-free multipliers and m0 = 2^30 ones side by side."""
    rng = np.random.default_rng(17)
    w_taps = rng.integers(-128, 128, (9, 20)).astype(np.int8)
    xh = rng.integers(0, 256, (1, 9, 9, 20)).astype(np.uint8)
    bias = rng.integers(-5000, 5000, 20).astype(np.int32)
    m0 = np.where(np.arange(20) % 2 == 0, 1 << 30, 1_518_500_249).astype(np.int32)
    shift = np.full(20, 39, np.int32)
    y = np.zeros((1, 20, 5, 5), np.uint8)
    KERNELS["depthwise_nhwc_rq_i8"](w_taps, bias, xh, 9, m0, shift, 100, 0, 255, y, 3, 3, 2, 2,
                                    1, 1, 1, 1)
    return y


def _lanes_conv_i8() -> np.ndarray:
    """conv2d_lanes_rq_i8 on a 3×3 stride-2 conv of 8 int8 channels to 35 (a last block of 3),
    output 5×5 (one tile of 7 positions, 5 kept), with a residual."""
    from zeroskip.kernels._lanes import pack_lane_words
    from zeroskip.kernels._quads import quad_layout, quad_offsets

    rng = np.random.default_rng(13)
    w = rng.integers(-128, 128, (35, 8, 3, 3)).astype(np.int8)
    x = rng.integers(-128, 128, (1, 8, 9, 9)).astype(np.int8)
    hq, pitch, stride, _, copy_words = quad_layout(5, 5, 3, 3, 2, 2, 1, 1, 2, False)
    offsets = quad_offsets(np.arange(18, dtype=np.int64), 3, 3, hq, pitch, 2, 2, 1, 1, stride, 1,
                           copy_words)
    xg = np.zeros((1, copy_words), np.int32)
    bias = rng.integers(-5000, 5000, 35).astype(np.int32)
    w_sums = w.reshape(35, -1).astype(np.int64).sum(axis=1)
    m0, shift = np.full(35, 1 << 30, np.int32), np.full(35, 38, np.int32)
    y = np.zeros((1, 35, 5, 5), np.int8)
    r = rng.integers(-128, 128, y.shape).astype(np.int8)
    KERNELS["conv2d_lanes_rq_i8"](pack_lane_words(w), offsets, bias, w_sums, x, -3, xg, m0, shift,
                                  4, -128, 127, y, 3, 3, 2, 2, 1, 1, 1, 1, pitch,
                                  (r, 4, -2, 1 << 19, 3 << 18, 20, -1, -128, 127))
    return y


def _lanes_conv() -> np.ndarray:
    """conv2d_lanes_f32 on a 3×3 stride-2 conv, 5 → 35 channels (a last block of 3), 2 images,
    rows of 8 (a last tile of 1 position), clamped as a Relu6."""
    from zeroskip.kernels._fma import pack_lanes
    from zeroskip.kernels.conv_lanes import LANE_SLACK_PIXELS, lane_offsets

    rng = np.random.default_rng(12)
    w = rng.standard_normal((35, 5, 3, 3)).astype(np.float32)
    x = rng.standard_normal((2, 5, 13, 16)).astype(np.float32)
    b = rng.standard_normal(35).astype(np.float32)
    hp, wp = 15, 17  # output 7×8, pads 1 all round
    xp = np.zeros((2, 5 * hp * wp + 2 * LANE_SLACK_PIXELS), np.float32)
    y = np.zeros((2, 35, 7, 8), np.float32)
    KERNELS["conv2d_lanes_f32"](pack_lanes(w), lane_offsets(5, 3, 3, hp, wp, 1, 1), b, x, xp, y,
                                3, 3, 2, 2, 1, 1, 1, 1, 0.0, 6.0)
    return y


def _quad_conv() -> np.ndarray:
    """conv2d_quad_rq_i8 on a 3×3 stride-2 conv of 8 int8 channels, with a residual."""
    from zeroskip.engine.plan.weights import quad_blocks
    from zeroskip.kernels._quads import quad_layout, quad_offsets

    rng = np.random.default_rng(11)
    w = rng.integers(-128, 128, (6, 8, 3, 3)).astype(np.int8)
    w[rng.random(w.shape) < 0.6] = 0
    x = rng.integers(-128, 128, (1, 8, 9, 9)).astype(np.int8)
    cptr, qcols, wptr, words = quad_blocks(w, 1)
    # output 5×5, the aligned layout: rows of 16 words, 2 copies (tap columns 0 and 1)
    hq, pitch, stride, copies, copy_words = quad_layout(5, 5, 3, 3, 2, 2, 1, 1, 2, True)
    offsets = quad_offsets(qcols, 3, 3, hq, pitch, 2, 2, 1, 1, stride, copies, copy_words)
    xg = np.zeros((1, copies * copy_words), np.int32)
    bias = rng.integers(-5000, 5000, 6).astype(np.int32)
    w_sums = w.reshape(6, -1).astype(np.int64).sum(axis=1)
    m0, shift = np.full(6, 1 << 30, np.int32), np.full(6, 38, np.int32)
    y = np.zeros((1, 6, 5, 5), np.int8)
    r = rng.integers(-128, 128, y.shape).astype(np.int8)
    KERNELS["conv2d_quad_rq_i8"](cptr, offsets, wptr, words, bias, w_sums, x, -3, xg, m0, shift,
                                 4, -128, 127, y, 3, 3, 2, 2, 1, 1, 1, 1, 1, pitch, copies,
                                 (r, 4, -2, 1 << 19, 3 << 18, 20, -1, -128, 127))
    return y


CHILD = """
import json, sys
import numba, numpy as np
sys.path.insert(0, sys.argv[1])
import test_nojit
from zeroskip.kernels import KERNELS, matmul_dense

spec = json.load(open(sys.argv[2]))
outputs, kernels = test_nojit._run_all(spec)
np.savez(sys.argv[3], **outputs)
json.dump({"kernels": kernels, "disable_jit": bool(numba.config.DISABLE_JIT),
           "plain_functions": all(not hasattr(k, "py_func") for k in KERNELS.values()),
           "numpy_tile": matmul_dense._tile is matmul_dense.TILES["python"]}, open(sys.argv[4], "w"))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(compiled outputs, JIT-off outputs, compiled kernel choices, child's report)."""
    directory = tmp_path_factory.mktemp("nojit")
    spec = []
    for name, (path, input_name, x, modes) in _models(directory).items():
        inputs_path = directory / f"{name}-inputs.npz"
        np.savez(inputs_path, **{input_name: x})
        spec += [(f"{name}|{mode}|{threads}", str(path), input_name, str(inputs_path), mode, threads)
                 for mode in modes for threads in THREADS]
    compiled, kernels = _run_all(spec)  # first: auto measures here, with the JIT on
    spec_path, out_path, report_path = (directory / n for n in ("spec.json", "nojit.npz", "report.json"))
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    done = subprocess.run([sys.executable, "-c", CHILD, str(pathlib.Path(__file__).parent),
                           str(spec_path), str(out_path), str(report_path)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"the JIT-off run failed:\n{done.stderr[-4000:]}"
    with np.load(out_path) as saved:
        nojit = {key: saved[key] for key in saved.files}
    return compiled, nojit, kernels, json.loads(report_path.read_text())


def test_the_child_ran_without_the_jit(runs):
    _, _, _, report = runs
    assert report["disable_jit"] and report["plain_functions"] and report["numpy_tile"]


def test_same_kernel_choices(runs):
    """With the same plans (auto included), any difference in bytes is a kernel's."""
    _, _, kernels, report = runs
    assert report["kernels"] == kernels


def test_every_kernel_is_reached(runs):
    _, _, kernels, _ = runs
    named = " + ".join(k for choices in kernels.values() for k in choices)
    reached = {name for name in KERNELS if name in named}
    assert reached | NOT_IN_ANY_PLAN == set(KERNELS), sorted(set(KERNELS) - reached)


def test_identical_bytes_with_and_without_the_jit(runs):
    compiled, nojit, _, _ = runs
    assert sorted(nojit) == sorted(compiled)
    differ = []
    for key, want in compiled.items():
        got = nojit[key]
        if got.dtype != want.dtype or got.shape != want.shape:
            differ.append(f"{key}: {got.dtype}{got.shape} against compiled {want.dtype}{want.shape}")
        elif not np.array_equal(got, want) or got.tobytes() != want.tobytes():
            gap = np.abs(got.astype(np.float64) - want.astype(np.float64)).max()
            differ.append(f"{key}: {np.count_nonzero(got != want)} of {got.size} values differ, "
                          f"largest by {gap:.3g}")
    assert not differ, "\n".join(differ)
