"""``zeroskip bench``: one model in several modes, timed side by side, as ratios against a baseline.

Shared machines are noisy, so the modes are measured in the same process, in interleaved rounds (each
round gives every mode a turn, starting from a different mode: a pause for the previous runner's
threads to go idle, an untimed run, a timed run), and compared by their best time. The
baseline is onnxruntime when the model is an ONNX file and onnxruntime is installed, else dense-f32
(numpy BLAS). Planning time and the first run (JIT compile or cache load, first allocations) are
reported apart from the steady-state times.
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
        runners.append(runner)
    return runners


def _onnxruntime_runner(path, feeds, threads) -> Runner | None:
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

    runner = Runner("onnxruntime", run, setup)
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


def measure(runners: list[Runner], rounds: int, progress: bool = False) -> None:
    """``rounds`` interleaved rounds: each gives every runner a turn, starting one further along.
    A turn is a pause (SETTLE_S, for the previous runner's threads to go idle), an untimed run (for
    the caches), and the timed run. Without them, zeroskip's dense-i8 at 2 threads took 25–31 ms
    right after an onnxruntime run, and 15–22 ms otherwise."""
    from tqdm import tqdm

    for r in tqdm(range(rounds), desc="rounds", disable=not progress, leave=False):
        for i in range(len(runners)):
            runner = runners[(r + i) % len(runners)]
            time.sleep(SETTLE_S)
            runner.run()
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


__all__ = ["Runner", "bench_table", "default_modes", "make_runners", "measure",
           "onnxruntime_profile", "onnxruntime_table", "profile_table", "rows", "synthetic_inputs"]
