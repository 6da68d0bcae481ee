"""Conv kernels against their baselines, one thread, at real layer shapes (bench/shapes/conv.txt).

Run: ``pytest bench/test_bench_conv.py --benchmark-only -q --benchmark-group-by=group`` (groups are
per shape). Every path is warmed up before timing; the JIT compile time (a fresh, uncached compile of
the kernel's Python function) is in ``extra_info`` as ``compile_s``. ``extra_info`` also has
``flops = 2·OH·OW·nnz`` (work done) and ``eff_flops = 2·OH·OW·N·K`` (the dense work replaced, K =
C/g·kh·kw), so dense, sparse and int8 share one axis: GFLOP/s = eff_flops / time.

Paths (each a whole conv layer, output included):
- ``dense-f32``: conv2d_dense_f32, the direct dense conv with output positions in the vector
  lanes (bias and ReLU fused), which dense-f32 sessions run for grouped convs, convs of few
  channels, and every conv without AVX-512;
- ``dense-f32-lanes``: conv2d_lanes_f32, the direct dense conv with output channels in the lanes,
  which they run for the other convs on AVX-512 CPUs (the same bytes), skipped elsewhere;
- ``im2col-sgemm-f32``: im2col_dense_f32 + numpy float32 BLAS (OpenBLAS sgemm) +
  bias_act_dense_f32, the numpy BLAS baseline (dense-f32 sessions ran it before the direct conv);
- ``sparse-f32``: conv2d_csr_f32 (bias and ReLU fused);
- ``sparse-i8``: conv2d_csr_i8 + requantize_dense_i8 (uint8 in, uint8 out);
- ``sparse-i8-quad``: conv2d_quad_rq_i8, the quad-sparse conv (4 output channels per activation
  load, requantized in its epilogue) in the layout QuadConv's plan makes, skipped where the CPU has
  no AVX-512 VNNI (plans do not take it there);
- ``dense-i8-amx``: conv2d_dense_rq_i8, the dense int8 conv on AMX tiles (requantized in its
  epilogue; at most 4 input channels folded), skipped with its reason where AMX is not available;
- depthwise shapes: ``depthwise-f32``, ``depthwise-i8`` (+ requantize);
- ``ort-conv-f32``: onnxruntime Conv, the peer baseline.
``test_target_ratio`` times dense-f32 and sparse-i8 side by side on the issue's shape (ResNet-50
3×3 256→256 at 14×14, 90 % sparse) and records the ratio (target ≥ 3).

The kernels timed are the serial twins (``zeroskip.kernels.serial_kernel``) that a one-thread
Session runs: the parallel builds would add the threading layer's round trip to every call.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from conftest import compile_seconds, pedantic, read_shapes
from zeroskip.kernels import conv_csr, conv_dense, depthwise, serial_kernel
from zeroskip.geometry import geometry

DENSITIES = [0.1, 0.3]
TIME_PER_CASE = 0.25
"""Seconds of timed rounds per case (at least 5 rounds)."""

SHAPES = read_shapes("conv.txt")


class Layer:
    """One conv layer at one density, with every buffer each path needs (allocated once, as a plan)."""

    def __init__(self, C, H, W, N, kh, kw, stride, pad, groups, density, seed=0):
        rng = np.random.default_rng(seed)
        self.C, self.N, self.kh, self.kw, self.s, self.p, self.g = C, N, kh, kw, stride, pad, groups
        _, _, (self.OH, self.OW) = geometry([H, W], [kh, kw], [stride] * 2, [1, 1], [pad] * 4,
                                            "NOTSET")
        self.K = C // groups * kh * kw
        w = rng.standard_normal((N, self.K)).astype(np.float32)
        w *= rng.random(w.shape) < density
        self.w, self.wq = w, np.clip(np.rint(w * 40), -127, 127).astype(np.int8)
        mask = self.wq != 0
        self.indptr = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int32)
        self.indices = np.nonzero(mask)[1].astype(np.uint16 if self.K <= 0xFFFF else np.int32)
        self.data, self.qdata = self.w[mask], self.wq[mask]
        self.nnz = int(mask.sum())
        self.x = rng.standard_normal((1, C, H, W)).astype(np.float32)
        self.xq = rng.integers(0, 256, (1, C, H, W)).astype(np.uint8)
        self.b = rng.standard_normal(N).astype(np.float32)
        self.bias = rng.integers(-1000, 1000, N).astype(np.int32)
        Hp = (self.OH - 1) * stride + kh
        Wp = (self.OW - 1) * stride + kw
        P = Wp if stride == 1 else self.OW
        self.xp, self.xpq = np.empty((1, C, Hp, Wp), np.float32), np.empty((1, C, Hp, Wp), np.uint8)
        self.ws, self.wsq = np.empty((1, N, self.OH * P), np.float32), np.empty((1, N, self.OH * P),
                                                                                 np.int32)
        self.y, self.acc = (np.empty((1, N, self.OH, self.OW), t) for t in (np.float32, np.int32))
        self.yq = np.empty((N, self.OH * self.OW), np.uint8)
        self.m0, self.shift = np.full(N, 2**30, np.int32), np.full(N, 40, np.int32)
        self.cols = np.empty((1, groups, self.K, self.OH, self.OW), np.float32)
        self.geo = (kh, kw, stride, stride, 1, 1, pad, pad)

    def im2col_sgemm_f32(self):
        serial_kernel("im2col_dense_f32")(self.x, self.cols, *self.geo)
        g, K = self.g, self.K
        y = self.y.reshape(1, g, self.N // g, self.OH * self.OW)
        np.matmul(self.w.reshape(g, self.N // g, K), self.cols.reshape(1, g, K, -1), out=y)
        serial_kernel("bias_act_dense_f32")(self.y.reshape(1, self.N, -1), self.b, 0.0, np.inf)

    def _phases(self, dtype):
        """(tap starts, padded phases workspace) of the direct sparse convs, as CsrConv's plan
        makes them (engine/plan/geometry.py)."""
        from zeroskip.engine.plan.geometry import TapStarts, _conv_geometry_of, phase_shape

        g = _conv_geometry_of((self.s, self.s), (1, 1), (self.p,) * 4, "NOTSET", self.x.shape[2:],
                              self.kh, self.kw)
        starts = TapStarts(self.indices.astype(np.int32), self.C // self.g, self.kh, self.kw)(g)
        return starts, np.empty((1, self.C) + phase_shape(g, self.kh, self.kw), dtype)

    def dense_f32_args(self):
        """conv2d_dense_f32's arguments, its packed weight and workspace as the plan makes them."""
        from zeroskip.engine.plan.geometry import TapStarts, _conv_geometry_of, phase_shape
        from zeroskip.kernels._fma import FMA_SLACK, pack_rows

        g = _conv_geometry_of((self.s, self.s), (1, 1), (self.p,) * 4, "NOTSET", self.x.shape[2:],
                              self.kh, self.kw)
        cg = self.C // self.g
        offsets = TapStarts(np.arange(cg * self.kh * self.kw), cg, self.kh, self.kw)(g)
        rows, wq = phase_shape(g, self.kh, self.kw)
        xq = np.empty((1, self.C * rows * wq + FMA_SLACK), np.float32)
        wp = pack_rows(self.w.reshape(self.N, cg, self.kh, self.kw), self.g)
        return (wp, offsets, self.b, self.x, xq, self.y, *self.geo[:4], 1, 1, self.p, self.p,
                self.g, np.float32(0.0), np.float32(np.inf))

    def dense_f32(self):
        if not hasattr(self, "_dense_args"):
            self._dense_args = self.dense_f32_args()
        serial_kernel("conv2d_dense_f32")(*self._dense_args)

    def lanes_f32_args(self):
        """conv2d_lanes_f32's arguments, its packed weight and workspace as the plan makes them."""
        from zeroskip.engine.plan.geometry import _conv_geometry_of
        from zeroskip.kernels._fma import pack_lanes
        from zeroskip.kernels.conv_lanes import LANE_SLACK_PIXELS, lane_offsets

        g = _conv_geometry_of((self.s, self.s), (1, 1), (self.p,) * 4, "NOTSET", self.x.shape[2:],
                              self.kh, self.kw)
        offsets = lane_offsets(self.C, self.kh, self.kw, g["hp"], g["wp"], 1, 1)
        xp = np.empty((1, self.C * g["hp"] * g["wp"] + LANE_SLACK_PIXELS * self.s), np.float32)
        wb = pack_lanes(self.w.reshape(self.N, self.C, self.kh, self.kw))
        return (wb, offsets, self.b, self.x, xp, self.y, *self.geo[:4], 1, 1, self.p, self.p,
                np.float32(0.0), np.float32(np.inf))

    def sparse_f32_args(self):
        starts, xq = self._phases(np.float32)
        return (self.indptr, starts, self.data, self.b, self.x, xq, self.y, *self.geo[:4], 1, 1,
                self.p, self.p, self.g, np.float32(0.0), np.float32(np.inf))

    def sparse_i8_args(self):
        starts, xq = self._phases(np.uint8)
        return (self.indptr, starts, self.qdata, self.bias, self.xq, 3, xq, self.acc,
                *self.geo[:4], 1, 1, self.p, self.p, self.g)

    def sparse_i8(self):
        serial_kernel("conv2d_csr_i8")(*self.sparse_i8_args())
        serial_kernel("requantize_dense_i8")(self.acc.reshape(self.N, -1), self.m0, self.shift,
                                             0, 0, 255, self.yq)

    def quad_args(self):
        """conv2d_quad_rq_i8's arguments, its quads and packed input laid out as QuadConv's plan
        lays them out (the aligned layout where it pays)."""
        from zeroskip.engine.plan.steps import aligned_empty
        from zeroskip.engine.plan.weights import quad_blocks
        from zeroskip.kernels import _quads

        w4 = self.wq.reshape(self.N, self.C // self.g, self.kh, self.kw)
        shape8 = (self.OH, self.OW, self.kh, self.kw, self.s, self.s, 1, 1)
        cptr, qcols, wptr, quads = quad_blocks(w4, self.g)
        aligned = _quads.aligned_pays(*shape8, len(qcols) / (self.C // 4))
        hq, pitch, stride, copies, words = _quads.quad_layout(*shape8, self.C // 4, aligned)
        offsets = _quads.quad_offsets(qcols, self.kh, self.kw, hq, pitch, self.s, self.s, 1, 1,
                                      stride, copies, words)
        xg = aligned_empty((1, copies * words), np.int32)
        y = np.empty((1, self.N, self.OH, self.OW), np.uint8)
        w_sums = w4.reshape(self.N, -1).astype(np.int64).sum(axis=1)
        return (cptr, offsets, wptr, quads, self.bias, w_sums, self.xq, 3, xg, self.m0,
                self.shift, 0, 0, 255, y, *self.geo, self.g, pitch, copies, None)  # no residual

    def amx_args(self):
        """conv2d_dense_rq_i8's arguments, its buffers allocated as PackedDenseConv's plan does."""
        from zeroskip.kernels import _quads, conv_amx

        w4 = self.wq.reshape(self.N, self.C, self.kh, self.kw)
        gathered = conv_amx.gather_fits(self.C)
        wt = conv_amx.pack_gathered_weights(w4) if gathered else conv_amx.pack_tap_weights(w4)
        groups = 1 if gathered else wt.shape[1] * 16
        _, pitch, _, _, words = _quads.quad_layout(self.OH, self.OW, self.kh, self.kw, self.s,
                                                   self.s, 1, 1, groups, False)
        xg = np.empty((1, words), np.int32)
        positions = (self.OH - 1) * pitch + self.OW
        y = np.empty((1, self.N, self.OH, self.OW), np.uint8)
        w_sums = w4.reshape(self.N, -1).astype(np.int64).sum(axis=1)
        return (wt, self.bias, w_sums, self.xq, 3, xg, self.m0, self.shift, 0, 0, 255, y,
                *self.geo, pitch, gathered, None)  # None: no residual

    def pointwise_i8(self, planar: bool):
        """(call, its GEMM's arguments) of a requantizing 1×1 conv as the dense plan runs it: the
        planar GEMM on the input's (C, H·W) planes, or the channels-last copy and the GEMM on its
        rows."""
        from zeroskip.engine.plan.int8 import amx_padded, weight_sums

        w2 = np.ascontiguousarray(self.wq.reshape(self.N, self.C))
        tail = (w2, self.bias, self.m0, self.shift, 0, 0, 255, self.yq, None, weight_sums(w2),
                amx_padded(w2))
        if planar:
            args = (self.xq.reshape(self.C, -1),) + tail
            gemm = serial_kernel("matmul_planar_rq_i8")
            return (lambda: gemm(*args)), args
        xh = np.empty((1, self.OH, self.OW, self.C), np.uint8)
        rows, copy = xh.reshape(-1, self.C), serial_kernel("channels_last_dense_i8")
        gemm = serial_kernel("matmul_dense_rq_i8")

        def call():
            copy(self.xq, xh)
            gemm(rows, *tail)
        return call, (rows,) + tail

    def depthwise_f32_args(self):
        return (self.w, self.b, self.x, self.xp, self.ws, self.y, *self.geo[:4], 1, 1, self.p,
                self.p, np.float32(0.0), np.float32(np.inf))

    def depthwise_i8_args(self):
        return (self.wq, self.bias, self.xq, 3, self.xpq, self.wsq, self.acc, *self.geo[:4], 1, 1,
                self.p, self.p)

    def depthwise_i8(self):
        serial_kernel("depthwise_dense_i8")(*self.depthwise_i8_args())
        serial_kernel("requantize_dense_i8")(self.acc.reshape(self.N, -1), self.m0, self.shift,
                                             0, 0, 255, self.yq)

    def ort_session(self):
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
        w4 = self.w.reshape(self.N, self.C // self.g, self.kh, self.kw)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.x.shape))
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[self.p] * 4,
                                strides=[self.s] * 2, group=self.g)
        graph = helper.make_graph([node], "conv", [x], [y], [numpy_helper.from_array(w4, "w"),
                                                             numpy_helper.from_array(self.b, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        return ort.InferenceSession(model.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])

    def extra(self, **more):
        M = self.OH * self.OW
        return dict(M=M, N=self.N, K=self.K, nnz=self.nnz, flops=2 * M * self.nnz,
                    eff_flops=2 * M * self.N * self.K, **more)


def _run(benchmark, call, extra):
    pedantic(benchmark, call, extra, max_rounds=200, time_per_case=TIME_PER_CASE)


CONV_SHAPES = [s for s in SHAPES if s[-1] == 1]
DW_SHAPES = [s for s in SHAPES if s[-1] != 1]


@pytest.mark.parametrize("path", ["dense-f32", "dense-f32-lanes", "im2col-sgemm-f32", "sparse-f32",
                                  "sparse-i8", "sparse-i8-quad",
                                  "dense-i8-amx",
                                  "dense-i8-rows", "dense-i8-planar", "ort-conv-f32"])
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("name,C,H,W,N,kh,kw,stride,pad,groups", CONV_SHAPES,
                         ids=[s[0] for s in CONV_SHAPES])
def test_conv(benchmark, name, C, H, W, N, kh, kw, stride, pad, groups, density, path):
    benchmark.group = name
    layer = Layer(C, H, W, N, kh, kw, stride, pad, groups, density)
    extra = layer.extra(density=density, kernel=path)
    if path == "dense-f32":
        args = layer.dense_f32_args()
        extra["compile_s"] = compile_seconds(path, conv_dense._conv2d_dense_f32, args)
        extra.update(nnz=N * layer.K, flops=extra["eff_flops"])
        call = lambda: serial_kernel("conv2d_dense_f32")(*args)  # noqa: E731
    elif path == "dense-f32-lanes":
        from zeroskip.kernels import conv_lanes

        if not conv_lanes.FITS_CPU or groups != 1:
            pytest.skip("the lanes conv runs one-group convs on AVX-512 CPUs")
        args = layer.lanes_f32_args()
        extra["compile_s"] = compile_seconds(path, conv_lanes._conv2d_lanes_f32, args)
        extra.update(nnz=N * layer.K, flops=extra["eff_flops"])
        call = lambda: serial_kernel("conv2d_lanes_f32")(*args)  # noqa: E731
    elif path == "im2col-sgemm-f32":
        call = layer.im2col_sgemm_f32
        extra.update(nnz=N * layer.K, flops=extra["eff_flops"])
    elif path == "sparse-f32":
        args = layer.sparse_f32_args()
        extra["compile_s"] = compile_seconds(path, conv_csr._conv2d_csr_f32, args)
        call = lambda: serial_kernel("conv2d_csr_f32")(*args)  # noqa: E731
    elif path == "sparse-i8":
        extra["compile_s"] = compile_seconds(path, conv_csr._conv2d_csr_i8, layer.sparse_i8_args())
        call = layer.sparse_i8
    elif path == "sparse-i8-quad":
        from zeroskip.kernels import conv_quad
        from zeroskip.kernels._cpu import HAS_AVX512_VNNI

        if not HAS_AVX512_VNNI or (C // groups) % 4:
            pytest.skip("plans take the quad conv on AVX-512 VNNI CPUs, for groups of a multiple "
                        "of 4 input channels")
        args = layer.quad_args()
        extra["compile_s"] = compile_seconds(path, conv_quad._conv2d_quad_rq_i8, args)
        call = lambda: serial_kernel("conv2d_quad_rq_i8")(*args)  # noqa: E731
    elif path == "dense-i8-amx":
        from zeroskip.kernels import _amx, conv_amx

        if not _amx.RUNS or (C % 4 and not conv_amx.gather_fits(C)) or groups != 1:
            pytest.skip("the AMX conv needs AMX (granted by the OS) and one group of a multiple "
                        "of 4 input channels, or at most 4")
        args = layer.amx_args()
        extra["compile_s"] = compile_seconds(path, conv_amx._conv2d_dense_rq_i8, args)
        extra.update(nnz=N * layer.K)
        call = lambda: serial_kernel("conv2d_dense_rq_i8")(*args)  # noqa: E731
    elif path in ("dense-i8-rows", "dense-i8-planar"):
        from zeroskip.kernels._cpu import HAS_AVX512_VNNI

        if (kh, kw, stride, pad, groups) != (1, 1, 1, 0, 1) or C % 4:
            pytest.skip("the 1x1 GEMM paths time pointwise convs (1x1, stride 1, no pads, one "
                        "group, a multiple of 4 channels)")
        if path == "dense-i8-planar" and not HAS_AVX512_VNNI:
            pytest.skip("the planar GEMM packs for AVX-512 VNNI's tiles; elsewhere it copies rows")
        from zeroskip.kernels import matmul_dense

        planar = path == "dense-i8-planar"
        call, args = layer.pointwise_i8(planar)
        extra["compile_s"] = compile_seconds(path, matmul_dense._matmul_planar_rq_i8 if planar
                                             else matmul_dense._matmul_dense_rq_i8, args)
        extra.update(nnz=N * layer.K)
    else:
        sess = layer.ort_session()
        call = lambda: sess.run(None, {"x": layer.x})  # noqa: E731
        extra.update(nnz=N * layer.K, flops=extra["eff_flops"])
    _run(benchmark, call, extra)


@pytest.mark.parametrize("path", ["depthwise-f32", "depthwise-i8", "ort-conv-f32"])
@pytest.mark.parametrize("name,C,H,W,N,kh,kw,stride,pad,groups", DW_SHAPES,
                         ids=[s[0] for s in DW_SHAPES])
def test_depthwise(benchmark, name, C, H, W, N, kh, kw, stride, pad, groups, path):
    benchmark.group = name
    layer = Layer(C, H, W, N, kh, kw, stride, pad, groups, 1.0)
    extra = layer.extra(density=1.0, kernel=path)
    if path == "depthwise-f32":
        args = layer.depthwise_f32_args()
        extra["compile_s"] = compile_seconds(path, depthwise._depthwise_dense_f32, args)
        call = lambda: serial_kernel("depthwise_dense_f32")(*args)  # noqa: E731
    elif path == "depthwise-i8":
        extra["compile_s"] = compile_seconds(path, depthwise._depthwise_dense_i8,
                                              layer.depthwise_i8_args())
        call = layer.depthwise_i8
    else:
        sess = layer.ort_session()
        call = lambda: sess.run(None, {"x": layer.x})  # noqa: E731
    _run(benchmark, call, extra)


def _median_time(call, rounds):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def test_target_ratio(benchmark):
    """The issue's target: sparse-i8 (90 % sparse) ≥ 3× faster than dense-f32 on ResNet-50 3×3/14."""
    benchmark.group = "target-ratio"
    layer = Layer(256, 14, 14, 256, 3, 3, 1, 1, 1, 0.1)
    layer.dense_f32(), layer.sparse_i8()
    dense, sparse = [], []
    for _ in range(15):  # interleaved, so both see the same machine load
        dense.append(_median_time(layer.dense_f32, 10))
        sparse.append(_median_time(layer.sparse_i8, 10))
    ratio = statistics.median(dense) / statistics.median(sparse)
    benchmark.extra_info.update(layer.extra(density=0.1, kernel="sparse-i8"),
                                dense_f32_s=statistics.median(dense),
                                sparse_i8_s=statistics.median(sparse), ratio=ratio, target=3.0)
    print(f"\nResNet-50 3x3 14x14, 90% sparse, 1 thread: dense-f32 {statistics.median(dense)*1e3:.3f}"
          f" ms, sparse-i8 {statistics.median(sparse)*1e3:.3f} ms, ratio {ratio:.2f} (target 3)")
    benchmark.pedantic(layer.sparse_i8, rounds=50, iterations=1, warmup_rounds=1)
