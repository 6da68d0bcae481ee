"""``zeroskip bench``: one model in several modes and peers, timed side by side, as ratios.

Shared machines are noisy, so everything is measured in the same process, in interleaved rounds
(each round gives every runner a turn, starting from a different one: a pause for the previous
runner's threads to go idle, an untimed run, a timed run). A runner is a zeroskip mode or a peer:

* ``onnxruntime`` — onnxruntime on the ONNX file (the model itself, or ``--onnx`` for a .zsk);
* ``onnxruntime-int8`` — onnxruntime on its own int8 quantization of that file (``quantize_static``,
  QDQ, per-channel int8 weights, uint8 activations, calibrated on the benchmark's inputs), when the
  file is float;
* ``numpy`` — the model in plain NumPy float32: convs as im2col + BLAS, Gemm and MatMul as BLAS
  (``NumpyPeer``), what one would write without an inference engine.

Each (batch, threads) pair is one set of interleaved rounds. Per runner it gives the median and the
10th and 90th percentiles of the timed runs, the throughput, the speed-up over dense-f32 in the
same set, the size of the model file it runs, and, apart, the planning time and the first run (JIT
compile or cache load). A peer that is not installed, or cannot run the model, is skipped with a
note. ``bench_matrix`` returns all of it as one JSON-ready dict, with the machine it ran on.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .model import Model


@dataclass
class Runner:
    """One contender: a name, a callable that runs the model once, and its measurements."""

    name: str
    run: object
    setup_s: float = 0.0
    first_s: float = 0.0
    times: list = field(default_factory=list)
    outputs: dict | None = None
    kind: str = "mode"  # or "peer"
    file_bytes: int | None = None  # the size of the model file this runner runs
    chunk: int | None = None  # a mode's runs go in chunks of this batch (Session.chunk_of)


def default_modes(model: Model) -> list[str]:
    """The kernel modes that apply to ``model``: the f32 pair, and the i8 pair for a quantized model."""
    from .engine.plan import is_quantized

    modes = ["dense-f32", "sparse-f32"]
    if is_quantized(model):
        modes += ["dense-i8", "sparse-i8"]
    return modes + ["auto"]


def synthetic_inputs(inputs, batch: int, seed: int = 0) -> dict:
    """Random float32 inputs shaped like the model's: the first unknown dimension is ``batch``; any
    other unknown dimension, or a non-float input, needs real data (InputError)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in inputs:
        if vi.shape is None:
            raise InputError(f"input {vi.name!r} has no known shape: pass it with --input")
        shape, batch_used = [], False
        for axis, d in enumerate(vi.shape):
            if isinstance(d, (int, np.integer)):
                shape.append(int(d))
            elif not batch_used:
                shape.append(batch)
                batch_used = True
            else:
                raise InputError(f"input {vi.name!r}: dimension {axis} is unknown and not the "
                                 f"batch: pass it with --input")
        if np.dtype(vi.dtype).kind != "f":
            raise InputError(f"input {vi.name!r} is {vi.dtype}: random data would not be "
                             f"meaningful, pass it with --input")
        feeds[vi.name] = rng.standard_normal(shape).astype(vi.dtype)
    return feeds


def _timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def make_runners(model: Model, modes, feeds, threads=None, onnx_path=None) -> list[Runner]:
    """A Runner per mode (Session built and run once here), plus onnxruntime's first if asked."""
    from .engine.session import Session

    runners = []
    if onnx_path is not None:
        runner = _onnxruntime_runner(onnx_path, feeds, threads)
        if runner is not None:
            runners.append(runner)
    for mode in modes:
        setup, session = _timed(lambda mode=mode: Session(model, mode=mode, threads=threads))
        runner = Runner(mode, lambda session=session: session.run(feeds), setup)
        runner.first_s, runner.outputs = _timed(runner.run)
        runner.chunk = session.chunk_of(feeds)
        runners.append(runner)
    return runners


def _onnxruntime_runner(path, feeds, threads, name="onnxruntime") -> Runner | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = _onnxruntime_options(ort, threads)
    setup, session = _timed(lambda: ort.InferenceSession(str(path), options,
                                                         providers=["CPUExecutionProvider"]))
    names = [o.name for o in session.get_outputs()]

    def run():
        return dict(zip(names, session.run(names, feeds)))

    runner = Runner(name, run, setup)
    runner.first_s, runner.outputs = _timed(run)
    return runner


# -- where the time goes: per-node profiles ---------------------------------------------------------
def onnxruntime_profile(path, feeds, threads, repeats: int) -> dict | None:
    """onnxruntime's own per-node profile of ``path`` (its ``enable_profiling`` trace) over
    ``repeats`` runs after one warm-up run: {"nodes": [{node, op, ms}] in the order of first
    appearance, "run_ms": median run}, times the median per node; None without onnxruntime.
    A node onnxruntime fused keeps its first node's name (its ``_token_N`` suffix dropped), so
    most rows line up with zeroskip's by name."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import json
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        options = _onnxruntime_options(ort, threads)
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        for _ in range(repeats + 1):
            session.run(names, feeds)
        with open(session.end_profiling(), encoding="utf-8") as f:
            events = json.load(f)
    nodes, runs = {}, []
    for event in events:
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            runs.append(event["dur"])
        elif event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            # a node onnxruntime's optimizer rewrote (Conv+Q/DQ -> QLinearConv) carries a token
            name = re.sub(r"_token_\d+$", "", event["name"][:-len("_kernel_time")])
            entry = nodes.setdefault(name, {"op": event.get("args", {}).get("op_name", "?"),
                                            "times": []})
            entry["times"].append(event["dur"])
    rows = [dict(node=name, op=entry["op"], ms=statistics.median(entry["times"][1:] or
                                                                 entry["times"]) / 1e3)
            for name, entry in nodes.items()]
    return {"nodes": rows, "run_ms": statistics.median(runs[1:] or runs) / 1e3 if runs else None}


def profile_table(profile, theirs: dict | None = None) -> str:
    """zeroskip's per-node profile as text; with ``theirs`` (onnxruntime_profile), a column with
    onnxruntime's time for each node it ran under the same name."""
    from .report import shape_text, table

    their_ms = {row["node"]: row["ms"] for row in theirs["nodes"]} if theirs else {}
    body = []
    for r in profile.rows:
        if r.kernel == "fused":
            continue
        row = [r.node, r.op, shape_text(r.input_shape), r.kernel,
               "-" if r.density is None else f"{r.density:.3f}", f"{r.ms:.3f}",
               f"{100 * r.share:.1f}%",
               "-" if r.effective_gmacs is None else f"{r.effective_gmacs:.1f}",
               "-" if r.useful_gmacs is None else f"{r.useful_gmacs:.1f}"]
        if theirs:
            row.append(f"{their_ms[r.node]:.3f}" if r.node in their_ms else "-")
        body.append(row)
    header = ["node", "op", "input", "kernel", "density", "ms", "share", "eff GMAC/s",
              "useful GMAC/s"] + (["onnxruntime ms"] if theirs else [])
    return table(body, header)


def onnxruntime_table(theirs: dict) -> str:
    from .report import table

    total = sum(row["ms"] for row in theirs["nodes"]) or 1.0
    body = [[row["node"], row["op"], f"{row['ms']:.3f}", f"{100 * row['ms'] / total:.1f}%"]
            for row in theirs["nodes"]]
    return table(body, ["node", "op", "ms", "share"])


def _onnxruntime_options(ort, threads):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


SETTLE_S = 0.15
"""Pause before each runner's turn in a round. onnxruntime's worker threads spin on after a run
(its 5.6 ms run of the pruned int8 MobileNetV2-shaped model left its worker burning 60 ms of CPU
over the next 100 ms), as OpenBLAS's do after an sgemm; whatever ran next lost the second core."""


def measure(runners: list[Runner], rounds: int, progress: bool = False,
            runs_per_turn: int = 1) -> None:
    """``rounds`` interleaved rounds: each gives every runner a turn, starting one further along.
    A turn is a pause (SETTLE_S, for the previous runner's threads to go idle), an untimed run (for
    the caches), and ``runs_per_turn`` timed runs back to back. Without the pause and the untimed
    run, zeroskip's dense-i8 at 2 threads took 25–31 ms right after an onnxruntime run, and 15–22
    ms otherwise. After the pause a virtual CPU can take tens of milliseconds to come back to
    speed: on the 2-vCPU Intel machine the pruned int8 ResNet-18 (one thread) took 9.5, 8.3, 7.7,
    7.6, 7.2, 7.0 ms in the six runs after a 150 ms pause, 6.0 ms each back to back (medians of 15
    pauses), so one timed run per turn measures a runtime just woken up, and many per turn one
    that is running steadily (bench/threads_table.py --runs-per-turn)."""
    from tqdm import tqdm

    for r in tqdm(range(rounds), desc="rounds", disable=not progress, leave=False):
        for i in range(len(runners)):
            runner = runners[(r + i) % len(runners)]
            time.sleep(SETTLE_S)
            runner.run()
            for _ in range(runs_per_turn):
                runner.times.append(_timed(runner.run)[0])


def rows(runners: list[Runner]) -> list[dict]:
    """One dict per runner: times in ms, speed-up over the baseline (the first runner), and the
    largest difference of its first output from the baseline's."""
    base = runners[0]
    base_best = min(base.times)
    first_output = next(iter(base.outputs))
    out = []
    for runner in runners:
        best = min(runner.times)
        mine = runner.outputs.get(first_output)
        diff = None
        if mine is not None and mine.shape == base.outputs[first_output].shape:
            diff = float(np.max(np.abs(mine.astype(np.float64)
                                       - base.outputs[first_output].astype(np.float64)))) \
                if mine.size else 0.0
        out.append(dict(name=runner.name, setup_ms=runner.setup_s * 1e3,
                        first_ms=runner.first_s * 1e3, best_ms=best * 1e3,
                        median_ms=statistics.median(runner.times) * 1e3,
                        speedup=base_best / best, max_diff=diff))
    return out


def bench_table(results: list[dict]) -> str:
    from .report import table

    body = [[r["name"], f"{r['setup_ms']:.1f}", f"{r['first_ms']:.1f}", f"{r['best_ms']:.3f}",
             f"{r['median_ms']:.3f}", f"{r['speedup']:.2f}×",
             "-" if r["max_diff"] is None else f"{r['max_diff']:.3g}"] for r in results]
    header = ["runner", "plan ms", "first run ms", "best ms", "median ms",
              f"vs {results[0]['name']}", "max |Δ| out"]
    return table(body, header)


# -- the matrix: modes and peers x batches x thread counts -------------------------------------------
PEERS = ("onnxruntime", "onnxruntime-int8", "numpy")
"""Peers ``--peers`` may name; "onnxruntime" also brings in "onnxruntime-int8" for a float file."""
PERCENTILES = (10, 50, 90)


def bench_matrix(model: Model, modes, peers, batches, threads_list, repeat: int, *,
                 model_bytes: int | None = None, onnx_path=None, inputs: dict | None = None,
                 progress: bool = False, onnx_is_other_file: bool = False) -> dict:
    """Time ``modes`` and ``peers`` on ``model`` for every (batch, threads) pair.

    inputs — real inputs (then ``batches`` must be their one batch); onnx_path — the ONNX file the
    onnxruntime peers run (``onnx_is_other_file``: not the file zeroskip runs, which a note says);
    model_bytes — the size of the file zeroskip runs. Returns
    {"machine", "model", "settings", "rows", "notes"}: one row per runner and pair (``row_of``).
    """
    import os
    import tempfile

    from tqdm import tqdm

    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        peer_files = _peer_files(peers, onnx_path, model, batches, inputs, tmp, notes,
                                 onnx_is_other_file)
        rows: list[dict] = []
        pairs = [(b, t) for b in batches for t in threads_list]
        for batch, threads in tqdm(pairs, desc="bench", disable=not progress, leave=False):
            feeds = inputs if inputs is not None else synthetic_inputs(model.graph.inputs, batch)
            runners = make_runners(model, modes, feeds, threads, None)
            for runner in runners:
                runner.file_bytes = model_bytes
            for name, path in peer_files.items():
                runner = _onnxruntime_runner(path, feeds, threads, name)
                runner.kind, runner.file_bytes = "peer", os.path.getsize(path)
                runners.append(runner)
            if "numpy" in peers:
                runners.append(_numpy_runner(model, feeds, threads))
            chunked = ", ".join(f"{r.name} in chunks of {r.chunk}" for r in runners if r.chunk)
            note = (f"batch {batch}: {chunked} (a batch whose layers would overflow the cache "
                    f"or memory runs in chunks; ZEROSKIP_CHUNK=0 runs it whole)")
            if chunked and note not in notes:
                notes.append(note)
            handoff = _handoff_note(threads, notes)  # after a pause: no peer's worker spins
            measure(runners, repeat, progress)
            rows += [dict(row_of(r, runners, batch, threads), handoff_ns=handoff)
                     for r in runners]
    return {"machine": machine_info(), "model": {"inputs": [
                {"name": v.name, "shape": list(v.shape), "dtype": v.dtype}
                for v in model.graph.inputs], "nodes": len(model.graph.nodes),
                "bytes": model_bytes},
            "settings": {"modes": list(modes), "peers": list(peers), "batches": list(batches),
                         "threads": list(threads_list), "repeat": repeat},
            "rows": rows, "notes": notes}


HANDOFF_FAR_NS = 120.0
"""A handoff between the run's CPUs slower than this gets a note: 40–80 ns where they share a
cache (one core complex, one socket), 150–200 across core complexes or sockets."""


def _handoff_note(threads, notes: list) -> float | None:
    """How long a cache line took from one of the run's CPUs to another just before its rounds
    (kernels/_spin.handoff_ns; None for one thread), with a note in ``notes`` when they are far
    apart. The figure can change from minute to minute on a VM, whose host places its CPUs."""
    import numba

    count = numba.config.NUMBA_NUM_THREADS if threads is None else threads
    if count < 2:
        return None
    from .kernels._spin import handoff_ns

    time.sleep(SETTLE_S)
    ns = handoff_ns()
    if ns is not None and ns > HANDOFF_FAR_NS:
        notes.append(f"threads {count}: a cache line took {ns:.0f} ns from one CPU to another "
                     f"just before these rounds (40–80 where CPUs share a cache): the CPUs are "
                     f"far apart (two core complexes or sockets, or a host that placed this VM's "
                     f"CPUs so), and parallel runs, which pass lines between them, scale less "
                     f"(docs/benchmarks.md, \"When two threads run at one thread's speed\")")
    return ns


def row_of(runner: Runner, runners: list[Runner], batch: int, threads) -> dict:
    """One runner's figures in its set: times in ms, throughput in samples/s, the speed-up over
    dense-f32's median (over the first runner's when dense-f32 is not in the set), and the largest
    difference of its first output from that runner's."""
    base = next((r for r in runners if r.name == "dense-f32"), runners[0])
    p10, median, p90 = (float(v) * 1e3 for v in np.percentile(runner.times, PERCENTILES))
    base_median = float(np.median(base.times)) * 1e3
    key = next(iter(base.outputs))
    mine, theirs = (runner.outputs or {}).get(key), base.outputs[key]
    diff = None
    if mine is not None and np.shape(mine) == np.shape(theirs) and np.size(mine):
        diff = float(np.max(np.abs(np.asarray(mine, np.float64) - np.asarray(theirs, np.float64))))
    return {"runner": runner.name, "kind": runner.kind, "batch": batch, "threads": threads,
            "median_ms": median, "p10_ms": p10, "p90_ms": p90,
            "best_ms": min(runner.times) * 1e3, "throughput": batch / (median / 1e3),
            "speedup": base_median / median, "baseline": base.name,
            "plan_ms": runner.setup_s * 1e3, "first_run_ms": runner.first_s * 1e3,
            "file_bytes": runner.file_bytes, "max_diff": diff}


def matrix_table(rows: list[dict]) -> str:
    """The printed table: one line per row of ``bench_matrix``."""
    from .report import size_text, table

    body = [[r["runner"], str(r["batch"]), str(r["threads"] or "default"),
             f"{r['median_ms']:.3f}", f"{r['p10_ms']:.3f}–{r['p90_ms']:.3f}",
             f"{r['throughput']:.1f}", f"{r['speedup']:.2f}×", f"{r['first_run_ms']:.0f}",
             "-" if r["file_bytes"] is None else size_text(r["file_bytes"]),
             "-" if r["max_diff"] is None else f"{r['max_diff']:.3g}"] for r in rows]
    header = ["runner", "batch", "threads", "median ms", "p10–p90 ms", "samples/s",
              f"vs {rows[0]['baseline']}" if rows else "vs dense-f32", "1st run ms", "file",
              "max |Δ| out"]
    return table(body, header)


def _peer_files(peers, onnx_path, model, batches, inputs, tmp, notes, given_onnx=False) -> dict:
    """{peer name: ONNX path} for the onnxruntime peers that can run; a note for each that can't."""
    import os

    wanted = [p for p in peers if p.startswith("onnxruntime")]
    if not wanted:
        return {}
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        notes.append("onnxruntime is not installed: its rows are skipped (pip install onnxruntime)")
        return {}
    if onnx_path is None:
        notes.append("no ONNX file to give onnxruntime (the model is a .zsk): pass --onnx FILE")
        return {}
    files = {"onnxruntime": str(onnx_path)}
    if given_onnx:
        notes.append(f"onnxruntime runs {os.path.basename(str(onnx_path))}, given with --onnx: "
                     f"if its weights are not the model's (the unpruned source of a pruned "
                     f"model, say), its max |Δ| compares two different models, and only its "
                     f"times compare")
    if _onnx_is_quantized(onnx_path):
        if "onnxruntime-int8" in peers:
            notes.append("onnxruntime-int8: the ONNX file is already int8, so 'onnxruntime' runs it")
        return files
    if "onnxruntime-int8" in peers:
        target = os.path.join(tmp, "onnxruntime_int8.onnx")
        calibration = inputs if inputs is not None else synthetic_inputs(
            model.graph.inputs, max(batches), seed=1)
        try:
            _onnxruntime_quantize(onnx_path, target, calibration)
            files["onnxruntime-int8"] = target
        except Exception as err:  # noqa: BLE001 - a peer's own failure is a note, not ours
            notes.append(f"onnxruntime-int8: onnxruntime's quantize_static failed on this model "
                         f"({type(err).__name__}: {str(err)[:200]}); its rows are skipped")
    if "onnxruntime" not in peers:
        del files["onnxruntime"]
    return files


def _onnx_is_quantized(path) -> bool:
    import onnx

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    return bool(ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                       "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"})


def _onnxruntime_quantize(source, target, calibration: dict) -> None:
    """onnxruntime's static int8 quantization of ``source`` as its documentation recommends:
    ``quant_pre_process`` first (its optimizer folds each BatchNormalization into its Conv; without
    it they stay float ops between Q/DQ pairs, and onnxruntime's int8 ResNet-18 ran 14 ms instead
    of 5), then ``quantize_static``: QDQ, per-channel int8 weights, uint8 activations, calibrated on
    ``calibration`` (its rows fed one at a time, up to 16)."""
    import logging
    import os
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    rows = min(len(next(iter(calibration.values()))), 16)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{k: v[i:i + 1] for k, v in calibration.items()}
                               for i in range(rows)])

        def get_next(self):
            return next(self.feeds, None)

    level = logging.root.level
    logging.root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prepared = os.path.join(tmp, "prepared.onnx")
            try:
                quant_pre_process(str(source), prepared, skip_symbolic_shape=True)
                source = prepared
            except Exception:  # noqa: BLE001 - an optional step: quantize the file as it is
                pass
            quantize_static(str(source), target, Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            per_channel=True)
    finally:
        logging.root.setLevel(level)


def _numpy_runner(model: Model, feeds, threads) -> Runner:
    from .engine.session import blas_threads

    peer = NumpyPeer(model)

    def run():
        with blas_threads(threads):
            return peer.run(feeds)

    runner = Runner("numpy", run, kind="peer")
    runner.first_s, runner.outputs = _timed(run)
    return runner


class NumpyPeer:
    """The model in plain NumPy float32, as one would write it without an inference engine.

    Weights are dequantized once; convs are im2col (a strided window view, copied) + one BLAS
    matmul per group; Gemm and MatMul are BLAS matmuls; every other op is the reference's float64
    function, cast back to float32 (they are cheap: activations, pooling, adds, reshapes).
    """

    def __init__(self, model: Model):
        from .engine.passes import dequantize_model, optimize
        from .reference import OPS

        float_model = optimize(dequantize_model(model))
        self.nodes = float_model.graph.nodes
        self.ops = OPS
        self.consts = {k: (t.dequantize().astype(np.float32) if t.quant is not None
                           or t.dtype.kind == "f" else t.to_numpy())
                       for k, t in float_model.graph.initializers.items()}
        self.outputs = [v.name for v in float_model.graph.outputs]

    def run(self, feeds: dict) -> dict:
        values = dict(self.consts)
        values.update({k: np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else v
                       for k, v in feeds.items()})
        for node in self.nodes:
            args = [values[n] if n else None for n in node.inputs]
            if node.op == "Conv" and args[0].ndim == 4:
                result = _conv_im2col(*args, **node.attrs)
            elif node.op == "Gemm":
                a = args[0].T if node.attrs["transA"] else args[0]
                b = args[1].T if node.attrs["transB"] else args[1]
                result = np.float32(node.attrs["alpha"]) * (a @ b)
                if len(args) > 2 and args[2] is not None:
                    result += np.float32(node.attrs["beta"]) * args[2]
            elif node.op == "MatMul":
                result = np.matmul(args[0], args[1])
            else:
                result = self.ops[node.op](*[None if a is None else (
                    a.astype(np.float64) if a.dtype.kind == "f" else a.astype(np.int64))
                    for a in args], **node.attrs)
            results = result if isinstance(result, tuple) else (result,)
            for name, value in zip(node.outputs, results):
                value = np.asarray(value)
                values[name] = value.astype(np.float32) if value.dtype == np.float64 else value
        return {name: values[name] for name in self.outputs}


def _conv_im2col(x, w, b=None, *, auto_pad, kernel_shape, strides, pads, dilations, group):
    """A 2-D conv in float32: pad, gather every window (im2col), one matmul per group."""
    from .geometry import geometry

    n, c = x.shape[:2]
    m, cg, kh, kw = w.shape
    strides, dilations = strides or [1, 1], dilations or [1, 1]
    begins, ends, out = geometry(x.shape[2:], [kh, kw], strides, dilations, pads, auto_pad)
    extent = [(k - 1) * d + 1 for k, d in zip((kh, kw), dilations)]
    need = [(o - 1) * s + e for o, s, e in zip(out, strides, extent)]
    pad_end = [max(nd - size - bg, 0) for nd, size, bg in zip(need, x.shape[2:], begins)]
    xp = np.pad(x, ((0, 0), (0, 0), (begins[0], pad_end[0]), (begins[1], pad_end[1])))
    view = np.lib.stride_tricks.sliding_window_view(xp, extent, axis=(2, 3))
    view = view[:, :, :out[0] * strides[0]:strides[0], :out[1] * strides[1]:strides[1],
                ::dilations[0], ::dilations[1]]
    # (N, C, OH, OW, kh, kw) -> per group (N, OH·OW, C/g·kh·kw)
    cols = view.reshape(n, group, cg, out[0], out[1], kh * kw).transpose(0, 1, 3, 4, 2, 5)
    cols = np.ascontiguousarray(cols).reshape(n, group, out[0] * out[1], cg * kh * kw)
    weights = w.reshape(group, m // group, cg * kh * kw)
    y = np.matmul(cols, weights.transpose(0, 2, 1))  # (N, G, P, M/G)
    y = y.transpose(0, 1, 3, 2).reshape(n, m, out[0], out[1])
    if b is not None:
        y = y + b.reshape(1, m, 1, 1)
    return np.ascontiguousarray(y, dtype=np.float32)


def machine_info() -> dict:
    """What the figures were measured on: CPU, cores, ISA flags, numpy's BLAS, versions."""
    import os
    import platform

    import numba
    from llvmlite import binding

    features = binding.get_host_cpu_features()
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512vnni", "avxvnni", "avx512vbmi",
              "amx-int8", "amx-tile", "neon", "sve")
    info = {"cpu": _cpu_name() or platform.processor() or platform.machine(),
            "machine": platform.machine(), "cores": os.cpu_count(),
            "isa": [f for f in wanted if features.get(f, False)],
            "llvm_cpu": binding.get_host_cpu_name(), "os": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__}
    from . import __version__

    info["zeroskip"] = __version__
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: lib.get(k) for k in ("internal_api", "version", "num_threads",
                                                 "threading_layer", "architecture")}
                        for lib in threadpool_info() if lib.get("user_api") == "blas"]
    except ImportError:
        info["blas"] = []
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def plot_matrix(result: dict, path) -> None:
    """A bar chart of median latency (p10–p90 as error bars) per runner, one panel per (batch,
    threads) pair, written atomically as a PNG (needs matplotlib, the ``plot`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import save_figure

    rows = result["rows"]
    pairs = sorted({(r["batch"], r["threads"] or 0) for r in rows})
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 4), squeeze=False)
    for ax, (batch, threads) in zip(axes[0], pairs):
        mine = [r for r in rows if r["batch"] == batch and (r["threads"] or 0) == threads]
        names = [r["runner"] for r in mine]
        medians = [r["median_ms"] for r in mine]
        errors = [[r["median_ms"] - r["p10_ms"] for r in mine],
                  [r["p90_ms"] - r["median_ms"] for r in mine]]
        colors = ["tab:gray" if r["kind"] == "peer" else "tab:blue" for r in mine]
        ax.bar(range(len(mine)), medians, yerr=errors, color=colors, capsize=3)
        ax.set_xticks(range(len(mine)), names, rotation=45, ha="right")
        ax.set_ylabel("median latency (ms)")
        ax.set_title(f"batch {batch}, threads {threads or 'default'}")
    fig.suptitle(f"{result['machine']['cpu']}: zeroskip modes (blue) and peers (grey)")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


__all__ = ["NumpyPeer", "PEERS", "Runner", "bench_matrix", "bench_table", "default_modes", "make_runners", "measure",
           "machine_info", "matrix_table", "onnxruntime_profile", "onnxruntime_table", "plot_matrix",
           "profile_table", "row_of", "rows", "synthetic_inputs"]
