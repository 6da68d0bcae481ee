"""``zeroskip demo``: run the bundled digits MLP on its bundled test images.

The model and images are made by ``examples/make_demo_model.py`` and ship in ``zeroskip/data/``.
"""

from __future__ import annotations

import time
from importlib import resources

import numpy as np

MODEL = "digits_mlp.zsk"
IMAGES = "digits_test.npz"


def data_path(name: str):
    """A bundled data file, as a path-like usable while the package is installed."""
    return resources.files("zeroskip").joinpath("data", name)


def load_images() -> tuple[np.ndarray, np.ndarray]:
    """The bundled test images as the model's input (pixels / 16, float32, (n, 64)) and labels."""
    with resources.as_file(data_path(IMAGES)) as path, np.load(path) as data:
        pixels, labels = data["pixels"], data["labels"]
    return (pixels.reshape(len(pixels), -1) / np.float32(16)).astype(np.float32), labels


def run_demo() -> int:
    from .formats.zsk import load
    from .report import summary
    from .engine.session import Session

    with resources.as_file(data_path(MODEL)) as path:
        start = time.perf_counter()
        model = load(path, verify="eager")
        load_s = time.perf_counter() - start
        x, labels = load_images()
        print(f"zeroskip demo: {MODEL}, {len(labels)} bundled test images of handwritten digits\n")
        print(summary(model))
        print()
        start = time.perf_counter()
        session = Session(model, mode="reference")
        logits = session.run({session.inputs[0].name: x})[session.outputs[0].name]
        run_s = time.perf_counter() - start
    accuracy = float((logits.argmax(axis=1) == labels).mean())
    print(f"mode       accuracy   load (ms)   run (ms)   per image (us)")
    print(f"reference  {accuracy:8.2%}   {load_s * 1e3:9.2f}   {run_s * 1e3:8.2f}   "
          f"{run_s / len(labels) * 1e6:14.1f}")
    return 0
