"""``zeroskip demo``: the bundled digits MLP, its pruned and int8 variants, in every mode.

The models and images are made by ``examples/make_demo_model.py`` and ship in ``zeroskip/data/``:
a float 64→256→128→10 MLP, the same pruned to 10 % density in its hidden layers, and that pruned
model quantized to int8. Each runs on the bundled test images in the modes that fit it; the table
gives accuracy, the median latency of a batch (after one warm-up run, so JIT compile time is left
out and reported on its own) and the file size.
"""

from __future__ import annotations

import os
import time
from importlib import resources

import numpy as np

IMAGES = "digits_test.npz"
RUNS = [  # (model file, mode)
    ("digits_mlp.zsk", "reference"),
    ("digits_mlp.zsk", "dense-f32"),
    ("digits_mlp_pruned.zsk", "dense-f32"),
    ("digits_mlp_pruned.zsk", "sparse-f32"),
    ("digits_mlp_int8.zsk", "dense-i8"),
    ("digits_mlp_int8.zsk", "sparse-i8"),
]
REPEATS = 7


def data_path(name: str):
    """A bundled data file, as a path-like usable while the package is installed."""
    return resources.files("zeroskip").joinpath("data", name)


def load_images() -> tuple[np.ndarray, np.ndarray]:
    """The bundled test images as the model's input (pixels / 16, float32, (n, 64)) and labels."""
    with resources.as_file(data_path(IMAGES)) as path, np.load(path) as data:
        pixels, labels = data["pixels"], data["labels"]
    return (pixels.reshape(len(pixels), -1) / np.float32(16)).astype(np.float32), labels


def _median_seconds(run) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run_demo(threads: int | None = None) -> int:
    from .engine.session import Session
    from .formats.zsk import load
    from .report import summary, table

    x, labels = load_images()
    print(f"zeroskip demo: a digits MLP on {len(labels)} bundled test images (8×8 handwritten "
          f"digits)\n")
    with resources.as_file(data_path(RUNS[0][0])) as path:
        print(summary(load(path)))
    print("\nRunning each model in each mode (the very first run compiles the Numba kernels, which "
          "takes\nseconds; later runs load them from Numba's cache)...\n")
    rows = []
    for name, mode in RUNS:
        with resources.as_file(data_path(name)) as path:
            model = load(path, verify="eager")
            size = os.path.getsize(path)
            start = time.perf_counter()
            session = Session(model, mode=mode, threads=threads)
            feeds = {session.inputs[0].name: x}
            logits = session.run(feeds)[session.outputs[0].name]
            first = time.perf_counter() - start
            latency = _median_seconds(lambda: session.run(feeds))
        accuracy = float((logits.argmax(axis=1) == labels).mean())
        rows.append([name.removesuffix(".zsk"), mode, f"{accuracy:.2%}", f"{latency * 1e3:.3f}",
                     f"{latency / len(labels) * 1e6:.2f}", f"{size / 1024:.1f}",
                     f"{first:.2f}"])
    print(table(rows, ["model", "mode", "accuracy", "batch (ms)", "per image (µs)", "file (KB)",
                       "plan + 1st run (s)"]))
    print("\nbatch: median of 7 runs of the whole batch after a warm-up; the last column includes "
          "JIT compilation\n(cached after the first time) and planning.")
    return 0
