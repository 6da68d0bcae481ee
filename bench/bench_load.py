"""Load time of .zsk files: lazy loading should cost O(header), the same for 100 KB and 100 MB.

Saves a ~100 MB and a ~100 KB float32 MLP in a temporary directory, then prints for each: the lazy
``load`` time (median of several runs), the eager ``load`` time (which checks every CRC-32 and CSR
invariant), and the save time. Run: ``python bench/bench_load.py``.
"""

import os
import statistics
import tempfile
import time

import numpy as np

from zeroskip import CSR, Dense, Graph, Model, ValueInfo
from zeroskip.formats import zsk
from zeroskip.ops import normalize_attrs
from zeroskip.model import Node

RUNS_LAZY = 21
RUNS_EAGER = 5


def mlp(width: int, layers: int, density: float, seed: int = 0) -> Model:
    """``layers`` Gemm+Relu layers of ``width``×``width`` float32 weights at ``density``."""
    rng = np.random.default_rng(seed)
    nodes, init, x = [], {}, "x"
    for i in range(layers):
        w = rng.standard_normal((width, width), dtype=np.float32)
        if density < 1:
            w[rng.random(w.shape) >= density] = 0
        init[f"w{i}"] = CSR.from_dense(w) if density < 1 else Dense(w)
        init[f"b{i}"] = Dense(rng.standard_normal(width, dtype=np.float32))
        nodes.append(Node(f"fc{i}", "Gemm", [x, f"w{i}", f"b{i}"], [f"h{i}"],
                          normalize_attrs("Gemm", {"transB": 1})))
        nodes.append(Node(f"relu{i}", "Relu", [f"h{i}"], [f"r{i}"], {}))
        x = f"r{i}"
    graph = Graph(nodes, [ValueInfo("x", (None, width), "float32")],
                  [ValueInfo(x, (None, width), "float32")], init)
    return Model(graph, {"producer": "bench_load"})


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    cases = [("~100 KB dense", mlp(112, 2, 1.0)),
             ("~100 MB dense", mlp(3620, 2, 1.0)),
             ("~77 MB csr 10%", mlp(8000, 2, 0.1))]
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'model':<16} {'file':>10} {'save':>9} {'lazy load':>10} {'eager load':>11} "
              f"{'GB/s eager':>10}")
        for label, model in cases:
            path = os.path.join(tmp, "m.zsk")
            start = time.perf_counter()
            zsk.save(model, path)
            save_s = time.perf_counter() - start
            size = os.path.getsize(path)
            zsk.load(path, verify="eager")  # warm the page cache: measure the format, not the disk
            lazy = median_time(lambda: zsk.load(path), RUNS_LAZY)
            eager = median_time(lambda: zsk.load(path, verify="eager"), RUNS_EAGER)
            print(f"{label:<16} {size / 1e6:>8.2f}MB {save_s * 1e3:>7.0f}ms {lazy * 1e3:>8.3f}ms "
                  f"{eager * 1e3:>9.1f}ms {size / eager / 1e9:>10.2f}")


if __name__ == "__main__":
    main()
