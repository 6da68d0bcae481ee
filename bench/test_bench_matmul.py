"""Matmul kernels against their baselines, one thread, at real layer shapes (bench/shapes/matmul.txt).

Run: ``pytest bench/test_bench_matmul.py --benchmark-only -q`` (add ``--benchmark-group-by=group``
to see each shape's table; groups are per shape). Every kernel is warmed up before timing; the JIT
compile time (a fresh, uncached compile of the same Python function) is in ``extra_info`` as
``compile_s``. ``extra_info`` also has ``flops = 2·M·nnz`` (work done) and ``eff_flops = 2·M·N·K``
(the dense work replaced), so dense, sparse and int8 share one axis: GFLOP/s = eff_flops / time.

Baselines in the same run: numpy float32 ``@`` (OpenBLAS sgemm), ``scipy.sparse.csr_matrix @ dense``,
onnxruntime MatMul (f32) and MatMulInteger (u8 × s8), all on one thread.

The kernels timed are the serial twins (``zeroskip.kernels.serial_kernel``) that a one-thread
Session runs: the parallel builds would add the threading layer's round trip to every call.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse

from conftest import compile_seconds, read_shapes
from zeroskip.kernels import matmul_csr, matmul_dense, serial_kernel

DENSITIES = [0.05, 0.1, 0.3, 0.5]
TIME_PER_CASE = 0.25
"""Seconds of timed rounds per case (at least 5 rounds): keeps the whole run to a few minutes."""

SHAPES = read_shapes("matmul.txt")


def _run(benchmark, call, M, N, K, nnz, extra):
    call()  # warm-up (JIT compile or cache load, page faults)
    t0 = time.perf_counter()
    call()
    once = max(time.perf_counter() - t0, 1e-7)
    rounds = int(min(200, max(5, TIME_PER_CASE / once)))
    benchmark.extra_info.update(M=M, N=N, K=K, nnz=int(nnz), flops=2 * M * int(nnz),
                                eff_flops=2 * M * N * K, **extra)
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)


def _weights(N, K, density, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)).astype(np.float32) * (rng.random((N, K)) < density)
    wq = np.clip(np.rint(w * 40), -127, 127).astype(np.int8)
    return w, wq


def _csr(w):
    s = scipy.sparse.csr_matrix(w)
    return s.indptr.astype(np.int32), s.indices.astype(np.int32 if w.shape[1] > 0xFFFF else np.uint16), s.data


def _ort_session(kind, M, N, K, w):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    if kind == "f32":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
    else:
        x = helper.make_tensor_value_info("x", TensorProto.UINT8, [M, K])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [M, N])
        node = helper.make_node("MatMulInteger", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "mm", [x], [y], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("kernel", ["numpy-sgemm", "ort-matmul-f32", "ort-matmulinteger-u8s8",
                                    "matmul_dense_i8", "matmul_dense_i8-avx2-wide"])
@pytest.mark.parametrize("name,M,N,K", SHAPES, ids=[s[0] for s in SHAPES])
def test_dense(benchmark, name, M, N, K, kernel):
    benchmark.group = name
    rng = np.random.default_rng(1)
    w, wq = _weights(N, K, 1.0)
    extra = {"density": 1.0, "kernel": kernel}
    if kernel == "numpy-sgemm":
        xt = rng.standard_normal((K, M)).astype(np.float32)
        call = lambda: w @ xt  # noqa: E731
    elif kernel == "ort-matmul-f32":
        sess, x = _ort_session("f32", M, N, K, np.ascontiguousarray(w.T)), rng.standard_normal((M, K)).astype(np.float32)
        call = lambda: sess.run(None, {"x": x})  # noqa: E731
    elif kernel == "ort-matmulinteger-u8s8":
        sess, x = _ort_session("i8", M, N, K, np.ascontiguousarray(wq.T)), rng.integers(0, 256, (M, K)).astype(np.uint8)
        call = lambda: sess.run(None, {"x": x})  # noqa: E731
    elif kernel == "matmul_dense_i8-avx2-wide":
        # the widened vpmaddwd tile that CPUs with AVX2 and no VNNI run, whatever this one runs
        # (its parallel build: one thread here, as the other rows). For the AVX2 figure on an
        # AVX-512 CPU, compile for Haswell: the command in docs/kernels.md, "The widened tile".
        if not matmul_dense.HAS_AVX2:
            pytest.skip("the widened tile needs AVX2")
        x = rng.integers(0, 256, (M, K)).astype(np.uint8)
        bias, yt = np.zeros(N, np.int32), np.empty((N, M), np.int32)
        gemm = matmul_dense.gemm_with_tile("wide")
        gemm(x, wq, bias, yt)
        call = lambda: gemm(x, wq, bias, yt)  # noqa: E731
    else:
        x = rng.integers(0, 256, (M, K)).astype(np.uint8)
        bias, yt = np.zeros(N, np.int32), np.empty((N, M), np.int32)
        args = (x, wq, bias, yt, None)  # None: no AMX padding from a plan (padded per call)
        extra["compile_s"] = compile_seconds(kernel, matmul_dense._matmul_dense_i8, args)
        call = lambda: serial_kernel("matmul_dense_i8")(*args)  # noqa: E731
    _run(benchmark, call, M, N, K, N * K, extra)


@pytest.mark.parametrize("kernel", ["scipy-csr-f32", "matmul_csr_f32", "matmul_csr_i8"])
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("name,M,N,K", SHAPES, ids=[s[0] for s in SHAPES])
def test_sparse(benchmark, name, M, N, K, density, kernel):
    benchmark.group = name
    rng = np.random.default_rng(2)
    w, wq = _weights(N, K, density)
    extra = {"density": density, "kernel": kernel}
    if kernel == "scipy-csr-f32":
        s, xt = scipy.sparse.csr_matrix(w), rng.standard_normal((K, M)).astype(np.float32)
        nnz = s.nnz
        call = lambda: s @ xt  # noqa: E731
    elif kernel == "matmul_csr_f32":
        indptr, indices, data = _csr(w)
        xt = rng.standard_normal((K, M)).astype(np.float32)
        b, yt = np.zeros(N, np.float32), np.empty((N, M), np.float32)
        args = (indptr, indices, data, b, xt, yt, np.float32(-np.inf), np.float32(np.inf))
        extra["compile_s"] = compile_seconds(kernel, matmul_csr._matmul_csr_f32, args)
        nnz = len(data)
        call = lambda: serial_kernel("matmul_csr_f32")(*args)  # noqa: E731
    else:
        indptr, indices, data = _csr(wq)
        xt = rng.integers(0, 256, (K, M)).astype(np.uint8)
        bias, yt = np.zeros(N, np.int32), np.empty((N, M), np.int32)
        args = (indptr, indices, data, bias, xt, yt)
        extra["compile_s"] = compile_seconds(kernel, matmul_csr._matmul_csr_i8, args)
        nnz = len(data)
        call = lambda: serial_kernel("matmul_csr_i8")(*args)  # noqa: E731
    _run(benchmark, call, M, N, K, nnz, extra)
