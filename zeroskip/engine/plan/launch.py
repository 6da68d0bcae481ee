"""When a kernel runs in parallel: only when a call has enough work to pay for the launch.

A parallel kernel call under Numba's workqueue layer costs 50–60 µs before any work is done once its
workers have gone idle, as they have between a model's layers (docs/kernels.md, "Threads"). Below
a kernel's threshold, a plan that may use several threads calls its serial twin instead (the same
loops, the same bytes). The thresholds were measured on the 2-vCPU machine, 2 threads against the
serial twin, with a 0.5 ms pause before each call:

* ``requantize_dense_i8`` (memory-bound, like the other elementwise and layout kernels): serial
  11.8, 28.7, 57.2, 130, 384 µs against parallel 61, 67, 92, 135, 583 µs at 2^14, 2^16, 2^17, 2^18,
  2^20 elements: parallel never won up to 2^20, so these kernels go parallel from 2^21;
* ``add_dense_i8`` (int64 arithmetic, compute-bound): parallel won from about 150 000 elements
  (64×56×56: 148 against 173 µs), so from 2^17;
* ``matmul_dense_i8``: serial 16, 76, 398, 545, 1 338 µs against parallel 69, 140, 439, 580, 802 µs at
  0.26, 2.1, 7.4, 16.8 and 58 million multiply-accumulates: parallel from 2^25 (33.5 million); the
  CSR GEMMs count their useful multiply-accumulates against the same bound (ResNet-18's fc at
  batch 1, 0.5 million: 1.10 ms serial, 1.23 parallel);
* the direct sparse convolutions (``conv2d_csr_*``) spend far more per useful
  multiply-accumulate (padded planes, a tile loop per output channel), and the second thread paid
  on every layer of the pruned int8 ResNet-18 (whole plan profiled, 1 thread against 2): from the
  1×1/s2 downsample convs (0.6 million useful MACs, 25 000 outputs: 0.98 → 0.77 ms, 1.57 → 1.11)
  to the stride-2 3×3 convs (5.8 million: 4.8 → 3.0 ms, 11.7 → 5.2) and the stem (61 → 42 ms). Their
  work is useful MACs + outputs, parallel from 2^17: every layer of a real network, not the toy
  convs of a few thousand outputs in the tests;
* the depthwise convs, with the same work measure, lost with 2 threads on 16 of the 17 depthwise
  layers of the pruned int8 MobileNetV2-shaped model (e.g. 32×112×112, 4 million: 0.52 → 0.61 ms;
  the one win, 96 channels at 112×112 stride 2: 1.30 → 1.13): parallel from 2^23, so at batch 1
  they run serially.
"""

from __future__ import annotations

MIN_PARALLEL_ELEMENTS = 1 << 17
MIN_PARALLEL_ADD_ELEMENTS = 1 << 17
MIN_PARALLEL_MACS = 1 << 20
MIN_PARALLEL_CONV_WORK = 1 << 17


def _macs_dense(x, w, *_):          # matmul_dense_i8(x (M,K), w (N,K), ...)
    return x.shape[0] * x.shape[1] * w.shape[0]


def _macs_csr(indptr, indices, data, bias, xt, *_):  # matmul_csr_*(..., xt (K,M), yt, ...)
    return data.shape[0] * xt.shape[1]


def _conv_work(nnz_per_channel: float, y) -> float:
    """A direct conv's work: its useful multiply-accumulates plus its outputs."""
    return y.size * (nnz_per_channel + 1)


def _work_conv_csr_f32(indptr, indices, data, b, x, xp, ws, y, *_):
    return _conv_work(data.shape[0] / y.shape[1], y)


def _work_conv_csr_i8(indptr, indices, data, bias, x, x_zp, xp, ws, y, *_):
    return _conv_work(data.shape[0] / y.shape[1], y)


def _work_depthwise_f32(w, b, x, xp, ws, y, *_):
    return _conv_work(w.shape[1], y)


def _work_depthwise_i8(w, bias, x, x_zp, xp, ws, y, *_):
    return _conv_work(w.shape[1], y)


def _first_size(a, *_):
    return a.size


def _second_size(a, b, *_):
    return b.size


def _third_size(a, b, c, *_):
    return c.size


WORK = {
    # kernel name: (its work, from its arguments; the work from which it runs in parallel)
    "matmul_dense_i8": (_macs_dense, MIN_PARALLEL_MACS),
    "matmul_csr_i8": (_macs_csr, MIN_PARALLEL_MACS),
    "matmul_csr_f32": (_macs_csr, MIN_PARALLEL_MACS),
    "conv2d_csr_f32": (_work_conv_csr_f32, MIN_PARALLEL_CONV_WORK),
    "conv2d_csr_i8": (_work_conv_csr_i8, MIN_PARALLEL_CONV_WORK),
    "depthwise_dense_f32": (_work_depthwise_f32, MIN_PARALLEL_CONV_WORK),
    "depthwise_dense_i8": (_work_depthwise_i8, MIN_PARALLEL_CONV_WORK),
    "add_dense_i8": (_first_size, MIN_PARALLEL_ADD_ELEMENTS),
    "requantize_dense_i8": (_first_size, MIN_PARALLEL_ELEMENTS),
    "quantize_dense_f32": (_first_size, MIN_PARALLEL_ELEMENTS),
    "dequantize_dense_i8": (_first_size, MIN_PARALLEL_ELEMENTS),
    "add_dense_f32": (_first_size, MIN_PARALLEL_ELEMENTS),
    "clamp_dense_f32": (_first_size, MIN_PARALLEL_ELEMENTS),
    "bias_act_dense_f32": (_first_size, MIN_PARALLEL_ELEMENTS),
    "maxpool_dense_f32": (_first_size, MIN_PARALLEL_ELEMENTS),
    "maxpool_dense_i8": (_first_size, MIN_PARALLEL_ELEMENTS),
    "avgpool_dense_i8": (_first_size, MIN_PARALLEL_ELEMENTS),
    "global_avgpool_dense_i8": (_first_size, MIN_PARALLEL_ELEMENTS),
    "im2col_dense_f32": (_second_size, MIN_PARALLEL_ELEMENTS),
    "im2col_dense_i8": (_third_size, MIN_PARALLEL_ELEMENTS),
    "im2row_dense_i8": (_third_size, MIN_PARALLEL_ELEMENTS),
}
"""Every kernel's work measure and threshold (a test checks that every kernel has one)."""


class Launch:
    """A kernel call that takes the parallel build only when its work reaches the threshold."""

    __slots__ = ("parallel", "serial", "work", "threshold")

    def __init__(self, parallel, serial, name: str):
        self.parallel, self.serial = parallel, serial
        self.work, self.threshold = WORK[name]

    def __call__(self, *args):
        kernel = self.parallel if self.work(*args) >= self.threshold else self.serial
        return kernel(*args)


__all__ = ["Launch", "MIN_PARALLEL_ADD_ELEMENTS", "MIN_PARALLEL_CONV_WORK",
           "MIN_PARALLEL_ELEMENTS", "MIN_PARALLEL_MACS", "WORK"]
