"""``zeroskip demo``: compression and speed on two small bundled networks, with no torch and no network.

The models and images are made by ``examples/make_demo_models.py`` and ship in ``zeroskip/data/``:
a digits MLP (64→256→128→10) and a digits CNN (three 3×3 convs, then a linear layer), each as four
files: float, pruned to 90 % and fine-tuned (gradually, in torch), and those two quantized to int8.

For each network the demo shows:

1. **The pipeline, stage by stage**, as the compression guides draw it: original → pruned (one
   shot, done here with ``zeroskip.prune``) → fine-tuned (the bundled file: training is not
   zeroskip's job) → quantized (done here with ``zeroskip.quantize`` on bundled calibration
   images). Each stage gives its weights kept, its file size and its test accuracy.
2. **Each variant in each mode that fits it**: accuracy, file size, the median latency of the whole
   test batch (JIT compile excluded: it is the first run, reported in its own column) and the
   speed-up against the float model in dense-f32, measured in the same run.
3. **Why** a variant that runs slower than dense-f32 does so: where its time goes
   (``Session.profile``) in the words of ``Session.explain()``.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from importlib import resources

import numpy as np

from .engine.session import RUN_CHECK_AFTER, RUN_CHECK_RUNS

IMAGES = "digits_test.npz"
NETWORKS = {  # name: input shape of one image
    "digits_mlp": (64,),
    "digits_cnn": (1, 8, 8),
}
RUNS = [  # (variant suffix, mode)
    ("", "reference"),
    ("", "dense-f32"),
    ("_pruned", "dense-f32"),
    ("_pruned", "sparse-f32"),
    ("_int8", "dense-i8"),
    ("_pruned_int8", "dense-i8"),
    ("_pruned_int8", "sparse-i8"),
    ("_pruned_int8", "auto"),
]
REPEATS = 7
WARMUP = RUN_CHECK_AFTER + 2 * RUN_CHECK_RUNS
"""Untimed runs before the REPEATS timed ones: with several threads, each kernel's first
2·(TRIALS + 1) calls alternate its parallel and serial builds to choose one (engine/plan/launch.py,
Trial), and then a short run's plan alternates with its one-thread twin (engine/session.py,
RunChoice). Timed during the Trials, the pruned int8 CNN in auto took 4.4–4.7 ms at the default
two threads against 4.1 at one; past them, 2.2."""
SETTLE_S = 0.15
"""Pause before each row's session is made (as ``zeroskip bench`` pauses before each turn,
bench.SETTLE_S): OpenBLAS's workers spin for ~0.1 s after the float rows' sgemms, and a parallel
kernel's Trials (engine/plan/launch.py) that ran in that time found the second core taken and
kept the serial builds. The digits MLP's int8 rows then ran on one thread at the default two
(dense-i8 0.178–0.185 ms against 0.177 with ``--threads 1``), where their parallel replays take
0.11–0.13."""
SLOWER = 1.1
"""A row is explained when it takes this much longer than dense-f32 (below it is noise)."""
ONE_SHOT = 0.9
"""The sparsity of the demo's one-shot pruning stage (the bundled fine-tuned model's)."""


def data_path(name: str):
    """A bundled data file, as a path-like usable while the package is installed."""
    return resources.files("zeroskip").joinpath("data", name)


def load_images(shape=(64,), which="test") -> tuple[np.ndarray, np.ndarray | None]:
    """Bundled images as a model input (pixels / 16, float32, (n, *shape)) and their labels
    (None for the calibration images, which are unlabelled training images)."""
    with resources.as_file(data_path(IMAGES)) as path, np.load(path) as data:
        pixels = data["pixels" if which == "test" else "calibration"]
        labels = data["labels"] if which == "test" else None
    return (pixels.reshape((len(pixels),) + tuple(shape)) / np.float32(16)).astype(np.float32), labels


def load_model(name: str):
    from .formats.zsk import load

    with resources.as_file(data_path(f"{name}.zsk")) as path:
        return load(path, verify="eager")


@contextmanager
def compile_notice(label: str, after: float = 1.0):
    """Say on stderr that Numba is compiling, if ``label``'s work takes longer than ``after``
    seconds (only a cold kernel cache makes a first run of these small models that slow)."""
    def note():
        print(f"  compiling Numba kernels for {label} (first use; cached afterwards)...",
              file=sys.stderr, flush=True)

    timer = threading.Timer(after, note)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _median_seconds(run) -> float:
    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _accuracy(session, x, labels) -> float:
    logits = session.run({session.inputs[0].name: x})[session.outputs[0].name]
    return float((logits.argmax(axis=1) == labels).mean())


def _weights_kept(model) -> float:
    """Nonzero weights of the Conv/Gemm/MatMul layers over the float model's count."""
    graph = model.graph
    nnz = size = 0
    for node in graph.nodes:
        if node.op in ("Conv", "Gemm", "MatMul", "QConv", "QGemm") and len(node.inputs) > 1:
            w = graph.initializers.get(node.inputs[1])
            if w is not None:
                nnz, size = nnz + w.nnz, size + w.size
    return nnz / size if size else 1.0


def pipeline(name: str, shape, threads=None) -> list[list[str]]:
    """The stage-by-stage rows for one network (computes the one-shot and quantized stages)."""
    from .compress.pruning import prune
    from .compress.quantization import quantize
    from .engine.session import Session
    from .formats.zsk import dumps

    x, labels = load_images(shape)
    calibration, _ = load_images(shape, "calibration")
    original, tuned = load_model(name), load_model(f"{name}_pruned")
    exclude = [n.name for n in original.graph.nodes
               if n.op in ("Conv", "Gemm") and n.name not in _pruned_layers(tuned)]
    one_shot = prune(original, ONE_SHOT, exclude=exclude)
    input_name = original.graph.inputs[0].name
    quantized = quantize(tuned, {input_name: calibration}, progress=False)
    rows = []
    for stage, model, how in (
            ("original", original, "float32, as trained"),
            ("pruned", one_shot, f"zeroskip.prune: {ONE_SHOT:.0%} global magnitude, no training"),
            ("fine-tuned", tuned, "bundled: gradual pruning with fine-tuning (torch)"),
            ("quantized", quantized, "zeroskip.quantize: int8, min-max on 256 images")):
        mode = "dense-i8" if stage == "quantized" else "dense-f32"
        session = Session(model, mode=mode, threads=threads)
        rows.append([stage, f"{_weights_kept(model):.1%}", f"{len(dumps(model)) / 1024:.1f}",
                     f"{_accuracy(session, x, labels):.2%}", how])
    return rows


def _pruned_layers(model) -> set:
    """The layers of a pruned model whose weights are mostly zero (the ones its maker pruned)."""
    graph = model.graph
    return {n.name for n in graph.nodes if n.op in ("Conv", "Gemm") and len(n.inputs) > 1
            and graph.initializers[n.inputs[1]].density < 0.5}


def measure(name: str, shape, threads=None, progress=None) -> list[dict]:
    """Each variant × mode of one network: accuracy, size, first run, median latency."""
    from .engine.session import Session

    x, labels = load_images(shape)
    rows = []
    for suffix, mode in RUNS:
        variant = name + suffix
        if progress is not None:
            progress.set_description(f"{variant} {mode}: first run compiles its kernels if they "
                                     f"are not cached")
        with resources.as_file(data_path(f"{variant}.zsk")) as path:
            size = path.stat().st_size
        model = load_model(variant)
        if rows:
            time.sleep(SETTLE_S)  # no other thread pool still spinning (SETTLE_S)
        start = time.perf_counter()
        with compile_notice(f"{variant} in {mode}"):
            session = Session(model, mode=mode, threads=threads)
            accuracy = _accuracy(session, x, labels)
        first = time.perf_counter() - start
        feeds = {session.inputs[0].name: x}
        rows.append({"variant": variant, "mode": mode, "accuracy": accuracy, "bytes": size,
                     "first_s": first, "latency_s": _median_seconds(lambda: session.run(feeds)),
                     "session": session, "feeds": feeds})
        if progress is not None:
            progress.update(1)
    return rows


def why_slower(row: dict, baseline_ms: float) -> str:
    """Where a slower row's time goes, in the words of explain() and the profile."""
    session = row["session"]
    profile = session.profile(row["feeds"], repeats=5)
    reasons = {r["node"]: r["reason"] for r in session.explain()}
    top = sorted(profile.rows, key=lambda r: -r.ms)[:2]
    parts = [f"{r.node} {r.share:.0%}" + ("" if r.useful_gmacs is None else
                                           f" at {r.useful_gmacs:.2f} useful GMAC/s")
             + f" ({r.kernel}: {reasons.get(r.node, '')})" for r in top]
    return (f"{row['variant']} in {row['mode']} takes {row['latency_s'] * 1e3:.2f} ms against "
            f"{baseline_ms:.2f} ms for dense-f32. Its time goes to " + "; ".join(parts) + ".")


def run_demo(threads: int | None = None) -> int:
    from tqdm import tqdm

    from .report import table

    x, labels = load_images()
    print(f"zeroskip demo: two small networks on {len(labels)} bundled test images of handwritten "
          f"digits (8×8)\n")
    print("The first run of a kernel compiles it with Numba (seconds; cached for later runs), so "
          "each table\nreports it in its own column and times the runs after it.\n")
    start = time.perf_counter()
    for name, shape in NETWORKS.items():
        print(f"== {name} ==\n")
        with compile_notice(f"the stages of {name}"):
            stages = pipeline(name, shape, threads)
        print("The pipeline, stage by stage:")
        print(table(stages,
                    ["stage", "weights kept", "file (KB)", "accuracy", "how"]))
        print()
        with tqdm(total=len(RUNS), leave=False, disable=None) as bar:
            rows = measure(name, shape, threads, bar)
        baseline = next(r for r in rows if r["variant"] == name and r["mode"] == "dense-f32")
        base_s = baseline["latency_s"]
        lines = []
        for r in rows:
            lines.append([r["variant"], r["mode"], f"{r['accuracy']:.2%}",
                          f"{r['bytes'] / 1024:.1f}", f"{r['latency_s'] * 1e3:.3f}",
                          f"{r['latency_s'] / len(labels) * 1e6:.2f}",
                          f"{base_s / r['latency_s']:.2f}×", f"{r['first_s']:.2f}"])
        print("Each variant in each mode:")
        print(table(lines, ["model", "mode", "accuracy", "file (KB)", "batch (ms)",
                            "per image (µs)", "vs dense-f32", "1st run (s)"]))
        slower = [r for r in rows if r["latency_s"] > base_s * SLOWER and r["mode"] != "reference"]
        if slower:
            print("\nWhy some variants are slower than dense-f32 here:")
            for r in slower:
                print("- " + why_slower(r, base_s * 1e3))
        print()
    print(f"batch: median of {REPEATS} runs of the whole batch after {WARMUP} untimed ones; "
          f"vs dense-f32: the float model's dense-f32 time over this row's; 1st run: planning, "
          f"and the JIT compile when the kernel cache is cold. Threads: {threads or 'default'}. "
          f"The demo took {time.perf_counter() - start:.1f} s.")
    return 0
