"""When a kernel runs in parallel: only when a call has enough work to pay for the launch, and only
where the parallel build has been measured faster than the serial one on this machine.

A parallel kernel call under Numba's TBB layer costs ~5 µs when its workers are spinning, and 15–20
µs more once they have gone to sleep, as they may between a model's layers (docs/kernels.md,
"Threads"). Below a kernel's threshold, a plan that may use several threads calls its serial twin
instead (the same loops, the same bytes). At or above it the choice is **measured**: the first calls
of each work size alternate the two builds (``Trial``: one untimed call of each, then TRIALS timed
calls of each), and the faster one takes the later calls (the serial one only if faster by
SERIAL_MARGIN), until RECHECKS times both again. Thresholds alone, measured on one CPU, left the
default thread count slower than one thread on another: on a 2-vCPU AMD EPYC (Zen 5) the digits
MLP's int8 GEMMs at 450 rows ran 8 % slower on two threads than on one (interleaved, best of 30),
above every threshold. Both builds give the same bytes, so the choice never changes an output. The
thresholds stay as the floor below which the parallel build is never tried. They were measured on
the 2-vCPU Intel machine under TBB, 2 threads against the serial twin, with a 0.5 ms pause before
each call (best of 3 medians):

* ``requantize_dense_i8`` (memory-bound, like the other elementwise, pooling and layout kernels):
  serial 12, 27, 40, 71, 117, 462 µs against parallel 30, 43, 53, 64, 92, 256 µs at 2^12, 2^15,
  2^16, 2^17, 2^18, 2^20 elements: parallel from 2^17;
* ``add_dense_i8``: serial 38, 51, 117 µs against parallel 46, 59, 80 µs at 2^15, 2^16, 2^17
  elements: parallel from 2^17;
* ``matmul_dense_i8``: serial 12, 62, 132, 170–204 µs against parallel 25, 53, 98, 128–139 µs at
  0.26, 1.6, 3.2 and 6.4 million multiply-accumulates: parallel from 2^20; the CSR GEMMs count
  their useful multiply-accumulates against the same bound (``matmul_csr_i8`` at 10 % density:
  1.4 million, 144 against 138 µs; 5.8 million, 604 against 445 µs);
* ``matmul_csr_f32`` (register row block): the kernel alone gains from 1.5 million useful
  multiply-accumulates (serial 77, 153, 186, 711 µs against parallel 57, 102, 162, 432 µs at 0.75,
  1.5, 3.4, 13.4 million). A serial step right after a parallel region runs slower here (TBB's
  workers spin for a while): the digits MLP's sparse-f32 run (450 images, layers of 0.74, 1.47 and
  0.58 million) with only its middle layer parallel took 0.54 ms (best of 150) against 0.52 on
  one thread, and with all three parallel 0.48 (medians 0.62, 0.56, 0.56). The pruned float
  MobileNetV2-shaped model in sparse-f32: 32.3 ms on one thread, 21.8, 21.2, 23.1 ms on two at
  thresholds of 2^19, 2^20, 2^22. Parallel from 2^19 (it was 2^22 while every CSR GEMM copied its
  activations twice), and from 2^17 since its batch-1 runs replay on buffers that cool between
  uses (``replay.COOL_BYTES``): the same model (int8 file), two threads, alternated runs of
  ``Session.run``, median ms at 2^19, 2^18, 2^17, 2^16: 4.75, 4.68, 4.67, 4.62 and 4.86, 4.84,
  4.77, 4.79 (one thread 7.75–7.88); its 28×28 and 14×14 pointwise convs (0.2–0.5 million) went
  from 1.0× to 1.3–1.6× their one-thread speed in the run, where they had lost as much in
  remote reads as the second thread gained;
* ``matmul_dense_f32`` (a float Gemm or MatMul below 8 rows: a stream of its weights), one row,
  a 0.5 ms pause before each call, best µs serial against parallel: 17.8 / 25.9 at 0.26 million
  multiply-accumulates, 37.3 / 43.0 at 0.52, 34.7 / 31.9 at 0.51 (512 → 1000), 70.7 / 59.0 at
  1.05, 90.0 / 73.1 at 1.28 (MobileNetV2's classifier; 82 / 44 with the worker awake): from
  2^19, the Trials deciding the calls between it and 2^20;
* ``matmul_csr_rq_i8`` (the pointwise convs of a pruned MobileNetV2), whose work is useful
  multiply-accumulates plus requantized outputs: serial 16, 24, 25, 42, 43, 71, 86 µs against
  parallel 25, 28, 29, 33, 34, 50, 55 µs at 0.09, 0.20, 0.17, 0.50, 0.50, 0.57, 0.65 million (10 %
  density; 64→64 at 14×14, 96→96 at 14×14, 256→128 at 7×7, 192→32 at 28×28, 384→64, 64→384 at
  14×14, 32→192 at 28×28). It was parallel from 2^21 while the digits MLP's sparse-i8 run (layers
  of 0.85, 1.5 and 0.55 million) was slower on two threads (0.41–0.44 ms against 0.38–0.39). Once
  its layers stopped copying their activations twice (docs/kernels.md, "Activations between
  layers"), the MLP took 0.377 ms on one thread and 0.374, 0.365, 0.394, 0.396 ms on two with
  thresholds of 2^18, 2^19, 2^20, 2^21 (best of 60 interleaved runs), and the pruned int8
  MobileNetV2-shaped model in sparse-i8 17.4 ms on one thread and 12.5, 12.1, 12.5, 14.1 ms on
  two (best of 20). Parallel from 2^19, and from 2^17 once replays cooled their buffers
  (``replay.COOL_BYTES``): alternated ``Session.run`` calls, two threads, median ms at 2^19,
  2^18, 2^17: pruned int8 MobileNetV2 ``auto`` 1.746, 1.733, 1.718 and 1.734, 1.719, 1.714 (one
  thread 2.97–2.99), ``sparse-i8`` 2.953, 2.889, 2.852 (one thread 5.24); pruned ResNet-18
  ``auto`` 4.538 at 2^19, 4.466 at 2^17 (its 14×14 and 28×28 projects, 0.2–0.5 million, had run
  serially);
* the direct sparse convolutions (``conv2d_csr_*``) spend far more per useful multiply-accumulate
  (padded planes, a tile loop per output channel): their work is useful MACs + outputs, parallel
  from 2^17, which every layer of a real network reaches (under workqueue, whose launches cost
  50–60 µs, the second thread already paid on every layer of the pruned int8 ResNet-18, from the
  0.6 million-MAC 1×1/s2 downsamples: 0.98 → 0.77 ms);
* the depthwise convs, with the same work measure and threshold: the pruned int8
  MobileNetV2-shaped model at 2 threads, dense-i8, best of 16 runs with depthwise thresholds of
  2^15, 2^17, 2^19, 2^21, 2^23: 16.7, 18.5, 21.2, 21.0, 22.0 ms;
* the dense int8 conv (``conv2d_dense_rq_i8``, AMX tiles or the VNNI tile) from 2^15: its work
  counts a 64-channel block's products at a quarter of an output's epilogue, and ResNet-18's
  1×1 stride-2 downsamples (0.10, 0.075 and 0.05 million of work) stayed serial under 2^17 though
  their parallel build is faster in the run (2026-12-04, two threads, Trials with the threshold
  lowered: 37.5 against 54.5 µs, 29.0 against 46.4);
* the channels-last depthwise (``depthwise_nhwc_rq_i8``), whose tasks are blocks of output rows
  and, in small planes, of channels, each writing whole cache lines of the NCHW planes: serial 87,
  94, 122, 157, 227 µs against parallel 54, 76, 82, 122, 160 µs at 0.28, 0.38, 0.47, 0.75, 1.13
  million of work (576×14×14 stride 2, 192×28×28 stride 2, 960×7×7, 384×14×14, 576×14×14):
  parallel from 2^18. (Before its tasks were so arranged, two threads writing neighbouring rows of
  a small plane contended, and it waited until 2^19.)
"""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np

MIN_PARALLEL_ELEMENTS = 1 << 17
MIN_PARALLEL_ADD_ELEMENTS = 1 << 17
MIN_PARALLEL_MACS = 1 << 20
MIN_PARALLEL_CONV_WORK = 1 << 17
MIN_PARALLEL_DENSE_CONV_WORK = 1 << 15
MIN_PARALLEL_NHWC_DEPTHWISE_WORK = 1 << 18
MIN_PARALLEL_CSR_RQ_WORK = 1 << 17
MIN_PARALLEL_CSR_F32_MACS = 1 << 17
MIN_PARALLEL_DENSE_F32_MACS = 1 << 19


def _macs_dense(x, w, *_):          # matmul_dense_i8(x (M,K), w (N,K), ...)
    return x.shape[0] * x.shape[1] * w.shape[0]


def _macs_dense_f32(x, w, *_):     # matmul_dense_f32(x (M,K), w (K,N), ...)
    return x.shape[0] * w.size


def _macs_planar(xt, w, *_):        # matmul_planar_rq_i8(xt (K,M) or (B,K,M), w (N,K), ...)
    return xt.size * w.shape[0]


def _macs_csr(indptr, indices, data, bias, xt, *_):  # matmul_csr_*(..., xt (K,M) or (B,K,M), ...)
    return data.shape[0] * (xt.size // xt.shape[-2])


def _work_csr_rq(indptr, indices, data, bias, xt, m0, shift, y_zp, lo, hi, yt, *_):
    # xt (K,M) or a batch's (B,K,M): products over every image, and requantizations
    return data.shape[0] * (xt.size // xt.shape[-2]) + yt.size


def _conv_work(nnz_per_channel: float, y) -> float:
    """A direct conv's work: its useful multiply-accumulates plus its outputs."""
    return y.size * (nnz_per_channel + 1)


def _work_conv_csr_f32(indptr, indices, data, b, x, xq, y, *_):
    return _conv_work(data.shape[0] / y.shape[1], y)


def _work_conv_csr_i8(indptr, indices, data, bias, x, x_zp, xq, y, *_):
    return _conv_work(data.shape[0] / y.shape[1], y)


def _work_conv_csr_rq_i8(indptr, indices, data, bias, x, x_zp, xq, m0, shift, y_zp, lo, hi, y, *_):
    return _conv_work(data.shape[0] / y.shape[1], y)


def _work_conv_quad_rq_i8(cptr, offsets, wptr, words, bias, w_sums, x, x_zp, xg, m0, shift,
                          y_zp, lo, hi, y, *_):
    # each quad costs one vpdpbusd per 16 positions, about as much as a direct conv's nonzero
    return _conv_work(words.shape[0] / y.shape[1], y)


def _work_conv_dense_rq_i8(wt, bias, w_sums, x, x_zp, xg, m0, shift, y_zp, lo, hi, y, *_):
    # the VNNI tile: each tap's 4 channels cost one vpdpbusd per 16 positions, as a quad does; one
    # tdpbsud does 16·16·64 products at about the cost of 16 vpdpbusd, so AMX's cost a 64th (an
    # estimate from the tiles' speeds, not a timed threshold)
    from ...kernels._amx import RUNS

    return _conv_work(wt.shape[0] * wt.shape[1] * (0.25 if RUNS else 16), y)


def _work_conv_dense_f32(wp, offsets, b, x, xq, y, *_):
    # a dense tile runs its multiply-accumulates at about the dense int8 GEMM's rate, far faster
    # than the direct sparse convs' per useful one: the GEMM's threshold (an estimate, not timed)
    return _conv_work(offsets.shape[0], y)


def _work_conv_lanes_f32(wb, offsets, b, x, xp, y, *_):
    # the same tile rate as conv2d_dense_f32's (an estimate, not timed)
    return _conv_work(offsets.shape[0], y)


def _work_conv_lanes_rq_i8(wl, offsets, bias, w_sums, x, x_zp, xg, m0, shift, y_zp, lo, hi, y,
                           *_):
    # each column of 4 channels costs one vpdpbusd per 16 channels, as the VNNI tile's step does
    return _conv_work(offsets.shape[0] * 0.25, y)


def _work_depthwise_f32(w, b, x, xp, ws, y, *_):
    return _conv_work(w.shape[1], y)


def _work_depthwise_i8(w, bias, x, x_zp, xp, ws, y, *_):
    return _conv_work(w.shape[1], y)


def _work_depthwise_rq_i8(w, bias, x, x_zp, xp, ws, m0, shift, y_zp, lo, hi, y, *_):
    return _conv_work(w.shape[1], y)


def _work_depthwise_nhwc(w_taps, bias, xh, x_zp, m0, shift, y_zp, lo, hi, y, *_):
    return _conv_work(w_taps.shape[0], y)


def _work_pointwise_depthwise_f32(indptr, indices, data, b1, lo1, hi1, x, taps, b2, y, *_):
    # the pointwise conv's useful multiply-accumulates (a CSR GEMM's, per image's plane), then
    # the depthwise conv's work as depthwise_dense_f32 counts it
    return data.shape[0] * x.shape[0] * x.shape[2] * x.shape[3] + _conv_work(taps.shape[1], y)


def _first_size(a, *_):
    return a.size


def _second_size(a, b, *_):
    return b.size


def _third_size(a, b, c, *_):
    return c.size


WORK = {
    # kernel name: (its work, from its arguments; the work from which it runs in parallel)
    "matmul_dense_i8": (_macs_dense, MIN_PARALLEL_MACS),
    "matmul_dense_rq_i8": (_macs_dense, MIN_PARALLEL_MACS),
    "matmul_planar_rq_i8": (_macs_planar, MIN_PARALLEL_MACS),
    "matmul_dense_f32": (_macs_dense_f32, MIN_PARALLEL_DENSE_F32_MACS),
    "matmul_csr_i8": (_macs_csr, MIN_PARALLEL_MACS),
    "matmul_csr_rq_i8": (_work_csr_rq, MIN_PARALLEL_CSR_RQ_WORK),
    "matmul_csr_f32": (_macs_csr, MIN_PARALLEL_CSR_F32_MACS),
    "conv2d_csr_f32": (_work_conv_csr_f32, MIN_PARALLEL_CONV_WORK),
    "conv2d_csr_i8": (_work_conv_csr_i8, MIN_PARALLEL_CONV_WORK),
    "conv2d_csr_rq_i8": (_work_conv_csr_rq_i8, MIN_PARALLEL_CONV_WORK),
    "conv2d_quad_rq_i8": (_work_conv_quad_rq_i8, MIN_PARALLEL_CONV_WORK),
    "conv2d_dense_rq_i8": (_work_conv_dense_rq_i8, MIN_PARALLEL_DENSE_CONV_WORK),
    "conv2d_dense_f32": (_work_conv_dense_f32, MIN_PARALLEL_MACS),
    "conv2d_lanes_f32": (_work_conv_lanes_f32, MIN_PARALLEL_MACS),
    "conv2d_lanes_rq_i8": (_work_conv_lanes_rq_i8, MIN_PARALLEL_CONV_WORK),
    "depthwise_dense_f32": (_work_depthwise_f32, MIN_PARALLEL_CONV_WORK),
    "depthwise_dense_i8": (_work_depthwise_i8, MIN_PARALLEL_CONV_WORK),
    "pointwise_depthwise_f32": (_work_pointwise_depthwise_f32, MIN_PARALLEL_CONV_WORK),
    "depthwise_dense_rq_i8": (_work_depthwise_rq_i8, MIN_PARALLEL_CONV_WORK),
    "depthwise_nhwc_rq_i8": (_work_depthwise_nhwc, MIN_PARALLEL_NHWC_DEPTHWISE_WORK),
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
    "global_avgpool_dense_f32": (_first_size, MIN_PARALLEL_ELEMENTS),
    "im2col_dense_f32": (_second_size, MIN_PARALLEL_ELEMENTS),
    "im2col_dense_i8": (_third_size, MIN_PARALLEL_ELEMENTS),
    "im2row_dense_i8": (_third_size, MIN_PARALLEL_ELEMENTS),
    "channels_last_dense_i8": (_first_size, MIN_PARALLEL_ELEMENTS),
    "transpose_dense_f32": (_first_size, MIN_PARALLEL_ELEMENTS),
}
"""Every kernel's work measure and threshold (a test checks that every kernel has one)."""


TRIALS = 3
"""Timed calls of each build (after one untimed call of each) before a Trial keeps the faster."""
SERIAL_MARGIN = 1.1
"""How much faster the serial build's best time must be for a Trial to keep it: a parallel build
that only ties is kept. In a benchmark that interleaves runtimes, another runtime's threads may
still spin on the second core while a trial times the parallel build, which then looks no faster
than the serial one (int8 ResNet-18 at two threads: 10 of 20 convs measured 0.37 against 0.37 ms
that way, and ran 6.0 ms where the same plan with parallel convs ran 4.8). Only for calls whose
serial build takes SHORT_CALL_S or more: below, the faster build is kept."""

SHORT_CALL_S = 1e-4
"""A serial best time under which a Trial keeps whichever build was faster, with no margin: a
parallel build that ties on a short call gains nothing and costs its region. The digits MLP's
first int8 GEMM (7.4 million MACs) measured 49 µs parallel against 47 serial and kept the
parallel one, and the MLP ran 5–12 % slower at the default two threads than at one (0.20–0.24
against 0.18–0.19 ms); with the faster build kept, 0.19–0.20 against 0.19."""


RECHECKS = (64, 512)
"""Call counts at which a Trial times both builds again (TRIALS calls of each), keeping each
build's best time over every window: a choice made while the machine was busy is corrected once
it is not (the README's table had sparse-i8 on ResNet-18 at two threads at 16.6 ms in one run and
9.5 in the next, with the same plan). While a Trial keeps its serial build it also rechecks at
twice the calls of its last choice, from the first of RECHECKS on (64, 140, 292, 512, 596, …):
the serial build is the suspicious winner, since another process taking the second CPU for a
moment slows only the parallel build (four fresh two-thread dense-i8 sessions on the int8
MobileNetV2 had kept the serial build for 3, 3, 3 and 14 of their 56 calls after 100 runs, the
last at 4.05 ms a run against 2.26–2.74). A window costs TRIALS calls of the slower build, so a
right serial choice pays it log₂(calls) times. Not before the first of RECHECKS: a benchmark's
timed runs (the demo's after 18 untimed ones) must not fall into a window."""


class _Recording(threading.local):
    """What a run being recorded (engine/replay.py) notes on this thread: ``calls``, a list that
    every kernel call appends (build, args) to, or None when no run is recorded; ``trials``, the
    Trials those calls went through; ``unsettled``, set when a call went through a Trial still
    timing its builds (a run that a replay could not repeat: its build would change)."""

    calls = None
    trials = None
    unsettled = False


RECORDING = _Recording()


def note_call(build, args) -> None:
    """Note a call of ``build`` (a kernel build, not a Trial) on ``args`` in the run being
    recorded on this thread, if any."""
    calls = RECORDING.calls
    if calls is not None:
        calls.append((build, args))


class Serial:
    """A kernel's serial build as a plan calls it, noting its calls in a recorded run."""

    __slots__ = ("build",)

    def __init__(self, build):
        self.build = build

    def __call__(self, *args):
        calls = RECORDING.calls
        if calls is not None:
            calls.append((self.build, args))
        return self.build(*args)


_PHASES = itertools.count()
"""Each Trial's turn in the recheck windows (below): every other Trial starts them serial."""


class Trial:
    """The build that calls of one work size take, chosen by timing them: the first calls alternate
    the parallel and the serial build (parallel first, so that a plan run once still runs the
    parallel build), one untimed call of each (JIT compile or cache load) and then TRIALS timed
    calls of each, in the order parallel, serial, serial, parallel, parallel, … (a layer is called
    once a run, and in runs that come in pairs, a slow one after a pause and then a timed one, as
    in ``zeroskip bench``, builds that simply took turns gave one of them every slow call); then
    the faster build, by its best time, takes every call (the serial one, on calls of
    SHORT_CALL_S or more, only if faster by SERIAL_MARGIN), until the next of RECHECKS times both
    again. Concurrent runs may time a few calls more; any build they take gives the same bytes.

    Every layer's Trial counts the same calls (one a run), so their recheck windows open in the
    same run; taking their turns in one order, all of them ran their serial build in the same
    runs, whole runs at one thread's speed (int8 ResNet-18 at two threads: 10.8–11.1 ms against
    5.5–6.4). Every other Trial (``phase``) takes its recheck windows the other way round:
    serial, parallel, parallel, serial, … The first window keeps parallel first."""

    __slots__ = ("parallel", "serial", "best", "calls", "chosen", "timed_until", "window",
                 "flip", "phase", "checks")

    def __init__(self, parallel, serial):
        self.parallel, self.serial = parallel, serial
        self.best = [float("inf"), float("inf")]  # parallel, serial
        self.calls, self.chosen = 0, None
        self.timed_until = 2 * (TRIALS + 1)  # the first window, after the two untimed calls
        self.window, self.flip = 0, 0  # the call its window began at; 1: serial first
        self.phase = next(_PHASES) % 2  # the flip of its recheck windows
        self.checks = RECHECKS

    def __call__(self, *args):
        n = self.calls
        self.calls = n + 1
        chosen = self.chosen
        if chosen is not None and n >= self.timed_until:
            checks = self.checks
            if not checks or n < checks[0]:
                calls = RECORDING.calls
                if calls is not None:  # a recorded run: its replays call the chosen build
                    calls.append((chosen, args))
                    RECORDING.trials.append(self)
                return chosen(*args)
            self.checks = checks[1:]  # a recheck window opens (not pop: two threads may be here)
            self.timed_until, self.window, self.flip = n + 2 * TRIALS, n, self.phase
        if RECORDING.calls is not None:
            RECORDING.unsettled = True
        i = n - self.window  # parallel, serial, serial, parallel, parallel, serial, ... (flip 0)
        k = (i + i // 2 + self.flip) % 2
        build = self.serial if k else self.parallel
        if n < 2:
            return build(*args)
        start = time.perf_counter()
        result = build(*args)
        self.best[k] = min(self.best[k], time.perf_counter() - start)
        if n + 1 >= self.timed_until:
            margin = SERIAL_MARGIN if self.best[1] >= SHORT_CALL_S else 1.0
            self.chosen = self.serial if self.best[0] > margin * self.best[1] else self.parallel
            if self.chosen is self.serial:  # look again at twice the calls (RECHECKS)
                self.checks = tuple(sorted(set(self.checks) | {max(2 * (n + 1), RECHECKS[0])}))
        return result

    def decided(self) -> str | None:
        """"parallel" or "serial" once chosen, else None."""
        if self.chosen is None:
            return None
        return "parallel" if self.chosen is self.parallel else "serial"

    def calls_before_check(self) -> float:
        """Calls left before the next recheck window opens (inf when none is left)."""
        return self.checks[0] - self.calls if self.checks else float("inf")

    def skip(self, calls: int) -> None:
        """Count ``calls`` made without this Trial (a replay's calls of its chosen build), so that
        its rechecks come when they would have."""
        self.calls += calls


class Launch:
    """A kernel call that takes the serial build below its work threshold and, from it, the build
    measured faster for that work (``Trial``)."""

    __slots__ = ("parallel", "serial", "work", "threshold", "trials", "_serial")

    def __init__(self, parallel, serial, name: str):
        self.parallel, self.serial = parallel, serial
        self.work, self.threshold = WORK[name]
        self.trials: dict = {}
        self._serial = None

    def __call__(self, *args):
        work = self.work(*args)  # pick's body inline: one Python call less per kernel call
        if work < self.threshold:
            note_call(self.serial, args)
            return self.serial(*args)
        return self._trial(work)(*args)

    def pick(self, *args):
        """The build a call with these arguments takes: the serial one below the threshold (as a
        ``Serial``), else the Trial of its work size (its shapes decide: a step that calls a
        kernel on the same shapes run after run picks it once, see ``steps.PreparedCalls``)."""
        work = self.work(*args)
        if work >= self.threshold:
            return self._trial(work)
        if self._serial is None or self._serial.build is not self.serial:
            self._serial = Serial(self.serial)
        return self._serial

    def _trial(self, work):
        """The Trial of a work size, made at its first call. Itself, not its choice: its rechecks
        need every call."""
        trial = self.trials.get(work)
        if trial is None:
            trial = self.trials.setdefault(work, Trial(self.parallel, self.serial))
        return trial

    def force_serial(self) -> None:
        """Take the serial twin for every call (a plan whose threads belong to BLAS)."""
        self.threshold = float("inf")


def pick(kernel, *args):
    """The build of ``kernel`` (a Launch, or a plain serial twin) that a call on arrays of the
    shapes of ``args`` takes. Only shapes are read, so ``args`` may hold ``placeholder`` arrays."""
    return kernel.pick(*args) if isinstance(kernel, Launch) else kernel


def placeholder(shape, dtype):
    """A read-only array of ``shape`` that costs no memory (every element is the one zero), to
    stand for an output a prepared call allocates at each run."""
    return np.broadcast_to(np.zeros((), dtype), shape)


__all__ = ["Launch", "RECHECKS", "RECORDING", "SERIAL_MARGIN", "SHORT_CALL_S", "Serial", "TRIALS",
           "Trial", "note_call", "pick", "placeholder", "MIN_PARALLEL_ADD_ELEMENTS",
           "MIN_PARALLEL_CONV_WORK", "MIN_PARALLEL_CSR_F32_MACS", "MIN_PARALLEL_CSR_RQ_WORK",
           "MIN_PARALLEL_DENSE_F32_MACS",
           "MIN_PARALLEL_DENSE_CONV_WORK", "MIN_PARALLEL_NHWC_DEPTHWISE_WORK",
           "MIN_PARALLEL_ELEMENTS", "MIN_PARALLEL_MACS", "WORK"]
