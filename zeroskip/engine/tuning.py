"""Break-even densities for ``mode="auto"``, measured on this CPU and cached per machine.

``auto`` picks, per layer, the faster of the CSR and the dense kernel, from timings on this CPU:

* **per layer** (``get_layer``), when the layer's input shape is known (a dynamic batch is timed
  at 1): both kernels run on the layer's own weight and shapes. The CSR/dense ratio depends on the
  shapes far more than one density threshold can say (ResNet-18's 3×3 convs at 99 % density: CSR
  0.8× to 24× the dense time, int8, 1 thread);
* **per shape class** otherwise (for example "gemm f32" or "conv i8"): the weight density below
  which the CSR kernel beats the dense one, from a short micro-benchmark of both kernels on a
  representative layer at a few densities, interpolated where their times cross.

Both are cached in a JSON file keyed by CPU, Numba version, zeroskip version, thread count and
threading layer, so each measurement runs once per machine (about a second per class, a few
milliseconds to a few tenths of a second per layer).

The cache lives in ``$ZEROSKIP_CACHE_DIR``, else ``$XDG_CACHE_HOME/zeroskip``, else
``~/.cache/zeroskip``. Writes are atomic; an unreadable cache is ignored and measured again.

The timings run the plans' own steps: ``measure_layer`` and ``measure_class`` take the planner's
``step_in_mode(model, node, mode) -> Step | None`` and time what it builds, so what auto measures is
exactly what a plan would run.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from typing import Callable

import numpy as np

from .._version import __version__
from ..model import Dense, Graph, Model, Node, QuantParams, ValueInfo
from ..ops import normalize_attrs

DENSITIES = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9)
"""Densities the micro-benchmark times (fewer than this would miss the knee of the curve)."""

REPEATS = 5
"""Each timing is the best of this many runs, after one warm-up run."""

BATCH_CLASSES = (1, 8, 64, 512)
"""The batches auto times a layer at, when the batch is dynamic: a batch runs the plan of the class
nearest to it in log scale (``batch_class``). The CSR/dense ratio moves with the batch (a 90 %-sparse
int8 GEMM, K = N = 1024: dense wins at M = 1, CSR at M = 128). In large layers it moves little past
64; in small ones a call's fixed cost still weighs at 64: the bundled digits MLP's 256→128 int8
layer at 2 threads, dense 0.061 against CSR 0.053 ms at M = 64, but 0.23 against 0.095 ms at the
demo's 450 rows. Hence the class 512, timed at 512 only where that is cheap (``timing_batch``)."""

MAX_TIMED_MACS = 1 << 28
"""A layer of the class 512 is timed at 512 only when its dense multiply-accumulates stay below
this (about 1–2 ms of dense int8); larger layers, whose per-call cost is long amortized at 64, are
timed at 64. At 2^27 the demo's pruned int8 CNN (conv3: 0.40 M MACs an image) was timed at 64,
where the dense lanes conv's per-call cost still weighed (0.214 ms against the quad conv's 0.184,
3.3 µs an image) and at its 450 images it is the faster (0.90 against 1.30 ms, 2.0 µs an image):
`auto` ran 9–18 % behind dense-i8 (Zen 4, two threads)."""


def batch_class(batch: int) -> int:
    """The member of BATCH_CLASSES nearest to ``batch`` in log scale: 1–2 -> 1, 3–22 -> 8, 23–181 ->
    64, 182+ -> 512."""
    batch = max(int(batch), 1)
    return min(BATCH_CLASSES, key=lambda c: (abs(np.log(batch / c)), c))


def timing_batch(cls: int, macs_per_item: float | None) -> int:
    """The batch a layer of batch class ``cls`` is timed at: the class itself, except that above 64
    a layer of more than MAX_TIMED_MACS at the class's batch (or of unknown size) is timed at 64."""
    if cls <= 64 or (macs_per_item is not None and cls * macs_per_item <= MAX_TIMED_MACS):
        return cls
    return 64


UNTIMED_BREAK_EVEN = 0.3
"""The break-even density auto assumes where it cannot time (NUMBA_DISABLE_JIT=1 runs the kernels
as Python loops, whose timings say nothing about the compiled ones) and this machine has no cached
timing: CSR below 30 % density. A conservative round number: the CSR kernels do about half the
useful work per vector multiply of the dense ones, so they cannot break even above about 50 %, and
short rows and scattered loads put the crossing lower."""


def cache_dir() -> str:
    base = os.environ.get("ZEROSKIP_CACHE_DIR")
    if base:
        return base
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "zeroskip")


def machine_key(threads: int) -> str:
    import numba

    cpu = _cpu_name()
    return (f"{cpu}|numba {numba.__version__}|zeroskip {__version__}|threads {threads}"
            f"|{numba.config.THREADING_LAYER}|blas 1 thread|kernels r{KERNELS_REVISION}")


CSR_MARGIN = 1.05
"""How much faster CSR must measure than dense on a layer for ``auto`` to take it. One layer's two
timings move by a few percent from run to run, and on a tie the dense kernel is the safer choice
(it does not depend on where the zeros fall): MobileNetV2's int8 stem at two threads, 99 % dense,
measured dense 0.31 ms against CSR 0.307 and ran CSR, and the whole `auto` run was 10 % slower
than dense-i8's."""

CONFIRM_RATIO = 2.0
"""A layer whose two modes measure within this factor of each other is timed a second time, and each
mode keeps the better of its two times: one timing is five runs of each, and a slow spell that
falls on one mode's runs only is then cached for good. The digits MLP's pruned 64→256 layer at
512 rows, one thread, once measured dense 79 µs against CSR 67.5 (every other measurement: dense
43–50), and `auto` ran 23 % slower than dense-i8 until the entry was measured again."""

KERNELS_REVISION = 26
"""Part of the timing cache's key: raised when a kernel's speed changes enough to move a choice
(2: the VNNI tile of the dense int8 GEMM, and BLAS on one thread while auto times; 3: the float32
CSR GEMM's register block, and pointwise int8 convs on the requantizing CSR GEMM; 4: the register
block for the int8 CSR GEMM and the stride-1 sparse convs; 5: strided sparse convs over phases;
6: GEMM activations handed on transposed, and the batch class 512; 7: the dense int8 GEMM's
broadcast tile on AVX-512 VNNI; 8: the quad-sparse int8 conv on AVX-512 VNNI; 9: the quad conv's
aligned layout, few-row dense int8 GEMMs on the dot-product tile, interleaved timings; 10 and 11:
the dense int8 conv and GEMM on AMX tiles; 12: the planar 1×1 GEMM, which made dense pointwise
convs 1.1–2.4× faster, where revision 11's timings had CSR win at 99 % density; 13: residual
adds after the tiles, and the AMX and quad convs' input packed without per-row slices (4–5×
faster on 7×7 and 14×14 planes), which made the whole dense int8 ResNet-18 about 25 % faster;
14: the direct dense float conv, which dense-f32 and auto's float layers now measure as dense;
15: the lanes convs, output channels in the vector lanes: the dense float conv on AVX-512 and the
dense int8 conv on AVX-512 VNNI without AMX, 1.1–1.4× faster on 7×7 and 14×14 planes; 16: the
dense GEMM tiles requantizing in their registers (pointwise int8 convs 1.1–1.6× faster) and
packed weights on cache lines (the AMX convs up to 1.5× faster, the dense int8 ResNet-18 15 %);
17: the packed convs' IR epilogue and the gathered stem (the AMX convs 1.3–2× faster at one
thread), the AMX GEMM from K = 64; 18: multi-thread plans time each kernel's serial twin too,
``_time_modes``; 19: the dense int8 GEMM reads an input handed on transposed through the planar
GEMM, with no copy to rows: the digits MLP's 256→128 layer at 512 rows, two threads, had
measured dense 0.164 ms against CSR 0.036, and `auto` ran 1.2× slower than dense-i8; 20: close
calls timed twice, ``CONFIRM_RATIO``; 21: the dense tiles' epilogue packs 64 bytes at a time
with the zero point in the nudge, pointwise int8 convs 1.1–1.3× faster; 22: the planar pack in
IR, the depthwise plane tile for outputs up to 8 wide, the QAdd on 16-bit products; 23 and 24:
the quad conv's 4-channel tile, its aligned layout only where it pays; 25: the 512 class timed
up to 2^28 MACs; 26: a batch in one parallel loop (the planar and CSR GEMMs) and in waves (the
quad conv), and expand-shaped pointwise convs on the quad conv)."""


def _cpu_name() -> str:
    try:
        import llvmlite.binding as llvm

        return llvm.get_host_cpu_name()
    except Exception:  # noqa: BLE001 - any failure just means a coarser key
        return platform.machine() or "cpu"


def best_time(run: Callable[[], None], repeats: int = REPEATS) -> float:
    """Seconds of the fastest of ``repeats`` runs of ``run`` (after one warm-up run)."""
    return best_times([run], repeats)[0]


def best_times(runs, repeats: int = REPEATS) -> list[float]:
    """Seconds of the fastest of ``repeats`` runs of each of ``runs``, interleaved (one warm-up run
    each first): a slow spell on a shared machine then falls on all of them, not on the one that
    happened to be timed during it (timed one after the other, one plan of the pruned int8
    ResNet-18 took the dense im2row GEMM on three 14×14 layers where the quad conv ran 1.3–1.5×
    faster in the same run)."""
    for run in runs:
        run()
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def crossing(densities, dense_times, sparse_times) -> float:
    """The density at which the sparse kernel's time reaches the dense kernel's, in [0, 1].

    The dense time does not depend on density: take the median. The sparse time grows about
    linearly with the nonzeros: fit ``t = a + b·density`` with the Theil–Sen estimator (the median
    of the pairwise slopes, then the median intercept), which one slow run on a shared machine cannot
    drag around, and solve ``a + b·d = dense``.
    """
    d = np.asarray(densities, dtype=np.float64)
    sparse = np.asarray(sparse_times, dtype=np.float64)
    dense = float(np.median(dense_times))
    i, j = np.triu_indices(len(d), k=1)
    slope = float(np.median((sparse[j] - sparse[i]) / (d[j] - d[i])))
    intercept = float(np.median(sparse - slope * d))
    if slope <= 0:
        return 1.0 if intercept < dense else 0.0
    return float(np.clip((dense - intercept) / slope, 0.0, 1.0))


class BreakEvenTable:
    """Measured break-even densities by shape class, persisted for this machine."""

    def __init__(self, threads: int, path: str | None = None):
        self.key = machine_key(threads)
        self.path = path or os.path.join(cache_dir(), "break-even.json")
        self._all = self._read()
        self.entries: dict = self._all.setdefault(self.key, {})

    def _read(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, shape_class: str, measure: Callable[[float], tuple[float, float]] | None
            ) -> dict | None:
        """The entry of ``shape_class``, measuring it first if this machine has none.

        measure(density) -> (dense seconds, sparse seconds) on the class's representative layer,
        or None: only a cached entry (None if there is none). The entry holds the break-even
        density and the timings it came from.
        """
        entry = self.entries.get(shape_class)
        if not _valid(entry):
            if measure is None:
                return None
            times = [measure(d) for d in DENSITIES]
            entry = {"break_even": round(crossing(DENSITIES, [t[0] for t in times],
                                                  [t[1] for t in times]), 4),
                     "densities": list(DENSITIES),
                     "dense_s": [t[0] for t in times], "sparse_s": [t[1] for t in times]}
            self.entries[shape_class] = entry
            self._write()
        return entry

    def get_layer(self, key: str, measure: Callable[[], tuple[float, float] | None] | None
                  ) -> dict | None:
        """The timings of one layer (``layer_key``), measuring them first if not cached:
        measure() -> (dense seconds, sparse seconds) on that layer's own shapes, or None when the
        layer cannot be timed (then None, and nothing is stored); ``measure`` None: only a cached
        entry."""
        entry = self.entries.get(key)
        if not (isinstance(entry, dict) and all(isinstance(entry.get(k), (int, float)) and
                                                entry[k] > 0 for k in ("dense_s", "sparse_s"))):
            times = None if measure is None else measure()
            if times is None:
                return None
            entry = {"dense_s": times[0], "sparse_s": times[1]}
            self.entries[key] = entry
            self._write()
        return entry

    def _write(self) -> None:
        directory = os.path.dirname(self.path)
        tmp = None
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._all, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:  # a read-only cache only means measuring again next time
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)


def _valid(entry) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("break_even"), (int, float)) \
        and 0.0 <= entry["break_even"] <= 1.0


# -- what is timed: one layer, or a shape class's representative layer ----------------------------
REPRESENTATIVE = {
    # shape class: (op, weight shape, input shape). Mid-sized layers of the kind the demo and
    # bench/shapes/*.txt hold: an MLP layer at batch 32, and a 3x3 conv of a small CNN at 28x28.
    "gemm": ("Gemm", (256, 512), (32, 512)),
    "conv": ("Conv", (64, 64, 3, 3), (1, 64, 28, 28)),
}


def layer_key(node: Node, tensors: dict, x_info, density: float, transposed: bool = False) -> str:
    """What a per-layer timing depends on: op, weight shape, input shape, type and layout,
    attributes, density (to 0.01), and for a weight whose axis 1 has a multiple of 4 entries the
    share of its groups of 4 along that axis that hold a nonzero (``quad_share``, to 0.01): the
    quad conv's work. Without it, a layer pruned in whole quads took the timings cached for the
    same layer pruned unstructured to the same density (MobileNetV2's block2.expand ran dense,
    0.273 ms measured against the quads' 0.323 on the other pattern)."""
    w = tensors[node.inputs[1]]
    attrs = {k: v for k, v in sorted(node.attrs.items()) if not k.startswith(("x_", "y_", "clip"))}
    quads = quad_share(w.to_numpy())
    return (f"layer {node.op} w{list(w.shape)} x{list(x_info[0])}{'ᵀ' if transposed else ''} "
            f"{x_info[1]} {json.dumps(attrs, sort_keys=True)} d{density:.2f}"
            + ("" if quads is None else f" q{quads:.2f}"))


def quad_share(w: np.ndarray) -> float | None:
    """The share of the groups of 4 consecutive entries along axis 1 of ``w`` (a conv's input
    channels at one tap, a Gemm weight's inputs) that hold a nonzero; None unless w has 2 axes or
    more, and a multiple of 4 along axis 1."""
    if w.ndim < 2 or w.shape[1] % 4 or w.size == 0:
        return None
    groups = w.reshape(w.shape[0], w.shape[1] // 4, 4, -1) != 0
    return float(np.mean(groups.any(axis=2)))


def _time_modes(model: Model, node: Node, values: dict, modes, step_in_mode,
                serial_step_in_mode=None) -> tuple[float, float] | None:
    """(seconds in modes[0], seconds in modes[1]) of ``node``'s step; None if either has no kernel.

    ``serial_step_in_mode`` (multi-thread plans): the same steps on the kernels' serial twins,
    timed first, and each mode's time is the faster of the two: a multi-thread run takes whichever
    build is faster for the layer (launch.Trial), and the steps' own timing runs the serial build
    only right after the parallel one, when TBB's worker still spins and slows it (the digits
    MLP's 64→256 int8 GEMM at 512 rows: dense 50.9 µs on one thread, 58.6 timed that way, so
    at two threads auto took CSR, 54.1, and the whole MLP ran 8–10 % slower than on one thread)."""
    steps = [step_in_mode(model, node, mode) for mode in modes]
    if any(step is None for step in steps):
        return None
    twins = None if serial_step_in_mode is None else \
        [serial_step_in_mode(model, node, mode) for mode in modes]

    def measure() -> list[float]:
        serial = [float("inf")] * 2
        if twins is not None:
            serial = best_times([lambda: twins[0].run(values), lambda: twins[1].run(values)])
        timed = best_times([lambda: steps[0].run(values), lambda: steps[1].run(values)])
        return [min(a, b) for a, b in zip(timed, serial)]

    times = measure()
    if max(times) < CONFIRM_RATIO * min(times):  # a close call: once more, each its best
        times = [min(a, b) for a, b in zip(times, measure())]
    dense, sparse = times
    return dense, sparse


def measure_layer(node: Node, tensors: dict, x_shape, x_dtype, modes, step_in_mode,
                  transposed: bool = False, serial_step_in_mode=None
                  ) -> tuple[float, float] | None:
    """(dense seconds, CSR seconds) of ``node`` on a random input of ``x_shape``, built by
    ``step_in_mode`` in the two ``modes`` (dense first). None when either has no kernel for this
    node (it runs the reference op whatever auto picks). ``transposed``: the input comes as the
    run will hand it, the transpose of a C-contiguous matrix (a GEMM's output, docs/kernels.md,
    "Activations between layers"), which a CSR GEMM reads with no copy and a dense one copies."""
    rng = np.random.default_rng(0)
    if np.dtype(x_dtype).kind in "iu":
        info = np.iinfo(x_dtype)
        x = rng.integers(info.min, info.max + 1, x_shape).astype(x_dtype)
    else:
        x = rng.standard_normal(x_shape).astype(np.float32)
    if transposed and x.ndim == 2:
        x = np.ascontiguousarray(x.T).T
    weights = {name: tensors[name] for name in node.inputs[1:] if name}
    graph = Graph([node], [ValueInfo(node.inputs[0], tuple(x_shape), str(x.dtype))],
                  [ValueInfo(node.outputs[0], None, "float32")], weights)
    return _time_modes(Model(graph), node, {node.inputs[0]: x}, modes, step_in_mode,
                       serial_step_in_mode)


def measure_class(shape_class: str, modes, step_in_mode) -> Callable[[float], tuple[float, float]]:
    """``measure(density) -> (dense seconds, sparse seconds)`` for a shape class such as "conv i8":
    the steps ``step_in_mode`` builds in the two ``modes``, on the class's representative layer."""
    kind, dtype = shape_class.split()
    op, w_shape, x_shape = REPRESENTATIVE[kind]

    def measure(density: float) -> tuple[float, float]:
        rng = np.random.default_rng(0)
        w = rng.standard_normal(w_shape).astype(np.float32)
        w[rng.random(w_shape) >= density] = 0
        x = rng.standard_normal(x_shape).astype(np.float32)
        attrs = {"pads": [1, 1, 1, 1]} if op == "Conv" else {"transB": 1}
        node_op = op
        if dtype == "i8":
            node_op = "Q" + op
            attrs.pop("transB", None)  # QGemm's weight is (N, K) already
            attrs.update(x_scale=0.05, x_zero_point=128, y_scale=0.1, y_zero_point=128,
                         y_dtype="uint8")
            weight = Dense(np.clip(np.rint(w * 40), -127, 127).astype(np.int8),
                           QuantParams(np.array(0.01, np.float32), np.array(0, np.int8)))
            x = np.clip(np.rint(x * 20) + 128, 0, 255).astype(np.uint8)
        else:
            weight = Dense(w)
        node = Node("layer", node_op, ["x", "w"], ["y"], normalize_attrs(node_op, attrs))
        graph = Graph([node], [ValueInfo("x", (None,) + x_shape[1:], str(x.dtype))],
                      [ValueInfo("y", (None,), "float32")], {"w": weight})
        return _time_modes(Model(graph), node, {"x": x}, modes, step_in_mode)

    return measure
