"""Max-pool and int8 residual-Add kernels against onnxruntime, at real shapes, one and two threads.

Run: ``pytest bench/test_bench_pool.py --benchmark-only -q --benchmark-group-by=group`` (groups are
per shape and thread count). Shapes: bench/shapes/pool.txt (MaxPool) and bench/shapes/add.txt
(ResNet-18's residual adds). Every path is warmed up before timing; ``extra_info`` has the bytes
moved (x read once, y written once) and the rate, GB/s = bytes / time, which puts these passes,
which do almost no arithmetic, on the axis of memory bandwidth; and the fresh JIT compile time of
the kernel as ``compile_s``.

Paths:
- MaxPool: ``maxpool-i8`` (uint8), ``maxpool-f32``; ``ort-maxpool-u8`` and ``ort-maxpool-f32``,
  onnxruntime's MaxPool, the peers;
- Add: ``qadd-i8``, add_dense_i8 on uint8 tensors with three different scales and zero points, as a
  quantized ResNet's residual adds; ``ort-qlinearadd``, onnxruntime's QLinearAdd (com.microsoft),
  the peer (it rescales in float: not the same integers, the same work); ``numpy-add-u8``, np.add
  of the two uint8 tensors, the memory floor (the same 3 bytes per element, one instruction each).

At one thread the kernels timed are the serial twins (``zeroskip.kernels.serial_kernel``) that a
one-thread Session runs; at two, the parallel builds under ``numba.set_num_threads(2)`` (and
onnxruntime with two intra-op threads).
"""

from __future__ import annotations


import numba
import numpy as np
import pytest

from conftest import compile_seconds, pedantic, read_shapes
from zeroskip.geometry import geometry
from zeroskip.kernels import KERNELS, elementwise, pool, serial_kernel
from zeroskip.quantmath import add_multipliers

TIME_PER_CASE = 0.25
"""Seconds of timed rounds per case (at least 5 rounds)."""

THREADS = [1, 2]
POOL_SHAPES = read_shapes("pool.txt")
ADD_SHAPES = read_shapes("add.txt")
ADD_SCALES = (0.05, 0.07, 0.09)
"""a, b and y scales of the adds; zero points 10, 130 and 60."""


class Threads:
    """numba.set_num_threads(n) for the block (the module runs at 1, bench/conftest.py)."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.before = numba.get_num_threads()
        numba.set_num_threads(self.n)

    def __exit__(self, *exc):
        numba.set_num_threads(self.before)


def _kernel(name, threads):
    return serial_kernel(name) if threads == 1 else KERNELS[name]


def _run(benchmark, call, extra, threads):
    with Threads(threads):
        result = pedantic(benchmark, call, extra, max_rounds=2000, time_per_case=TIME_PER_CASE)
    stats = benchmark.stats.stats if benchmark.stats else None
    if stats is not None:
        benchmark.extra_info["GB_per_s"] = extra["bytes"] / stats.min / 1e9
    return result


def _ort_session(node, inputs, threads, constants=None):
    """onnxruntime on the one ``node``: inputs (name, type, shape), constants name -> array."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    graph = helper.make_graph([node], "op", [helper.make_tensor_value_info(n, t, s)
                                              for n, t, s in inputs],
                              [helper.make_tensor_value_info("y", inputs[0][1], None)],
                              [numpy_helper.from_array(v, k) for k, v in (constants or {}).items()])
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("path", ["maxpool-i8", "maxpool-f32", "ort-maxpool-u8", "ort-maxpool-f32"])
@pytest.mark.parametrize("name,C,H,W,kh,kw,stride,pad", POOL_SHAPES,
                         ids=[s[0] for s in POOL_SHAPES])
def test_maxpool(benchmark, name, C, H, W, kh, kw, stride, pad, path, threads):
    from onnx import TensorProto, helper

    benchmark.group = f"{name} threads={threads}"
    rng = np.random.default_rng(0)
    begins, _, (OH, OW) = geometry([H, W], [kh, kw], [stride] * 2, [1, 1], [pad] * 4, "NOTSET")
    geo = (kh, kw, stride, stride, 1, 1, begins[0], begins[1])
    f32 = path.endswith("f32")
    x = rng.standard_normal((1, C, H, W)).astype(np.float32) if f32 else \
        rng.integers(0, 256, (1, C, H, W)).astype(np.uint8)
    y = np.empty((1, C, OH, OW), x.dtype)
    extra = dict(kernel=path, threads=threads, bytes=x.nbytes + y.nbytes)
    if path.startswith("ort"):
        node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[kh, kw], pads=[pad] * 4,
                                strides=[stride] * 2)
        dtype = TensorProto.FLOAT if f32 else TensorProto.UINT8
        sess = _ort_session(node, [("x", dtype, list(x.shape))], threads)
        call = lambda: sess.run(None, {"x": x})  # noqa: E731
    else:
        name_ = "maxpool_dense_f32" if f32 else "maxpool_dense_i8"
        function = pool._maxpool_dense_f32 if f32 else pool._maxpool_dense_i8
        extra["compile_s"] = compile_seconds(name_, function, (x, y, *geo))
        kernel = _kernel(name_, threads)
        call = lambda: kernel(x, y, *geo)  # noqa: E731
    _run(benchmark, call, extra, threads)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("path", ["qadd-i8", "ort-qlinearadd", "numpy-add-u8"])
@pytest.mark.parametrize("name,C,H,W", ADD_SHAPES, ids=[s[0] for s in ADD_SHAPES])
def test_qadd(benchmark, name, C, H, W, path, threads):
    from onnx import TensorProto, helper

    benchmark.group = f"{name} threads={threads}"
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (1, C, H, W)).astype(np.uint8) for _ in range(2))
    y = np.empty_like(a)
    (a_scale, b_scale, y_scale), (a_zp, b_zp, y_zp) = ADD_SCALES, (10, 130, 60)
    extra = dict(kernel=path, threads=threads, bytes=a.nbytes + b.nbytes + y.nbytes)
    if path == "ort-qlinearadd":
        node = helper.make_node("QLinearAdd", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"],
                                domain="com.microsoft")
        consts = {"as": a_scale, "az": a_zp, "bs": b_scale, "bz": b_zp, "ys": y_scale, "yz": y_zp}
        sess = _ort_session(node, [("a", TensorProto.UINT8, list(a.shape)),
                                   ("b", TensorProto.UINT8, list(b.shape))], threads,
                            {k: np.array(v, np.float32 if k.endswith("s") else np.uint8)
                             for k, v in consts.items()})
        call = lambda: sess.run(None, {"a": a, "b": b})  # noqa: E731
    elif path == "numpy-add-u8":
        call = lambda: np.add(a, b, out=y)  # noqa: E731
    else:
        A, B, R = add_multipliers(a_scale / y_scale, b_scale / y_scale)
        args = (a.reshape(-1), b.reshape(-1), y.reshape(-1), a_zp, b_zp, A, B, R, y_zp, 0, 255)
        extra["compile_s"] = compile_seconds("add_dense_i8", elementwise._add_dense_i8, args)
        kernel = _kernel("add_dense_i8", threads)
        call = lambda: kernel(*args)  # noqa: E731
    _run(benchmark, call, extra, threads)
