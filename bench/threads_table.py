"""Whole models at 1 and 2 threads, beside onnxruntime, all in one process: the README's table.

    python bench/threads_table.py MODEL.onnx [MODEL.onnx ...] [--rounds 10] [--mode MODE ...]
        [--runs-per-turn N]

For each model, every runner (onnxruntime and each zeroskip mode, at 1 and at 2 threads) is built
once and then timed in interleaved rounds by ``zeroskip.bench.measure`` (each round runs every
runner once untimed and then ``--runs-per-turn`` times, timed: 1 times a runtime just after a
pause, 20 one running back to back). Prints one markdown row per model and thread count: best
times in ms, and for each zeroskip mode its speed-up from 1 to 2 threads; then how long a cache
line took between two CPUs before and after the rounds (``handoff_ns``: 40–80 ns where they share
a cache, 150–200 where a VM's host has put them in two core complexes, when every runtime's
two-thread runs lose much of their gain). Build the models with ``python bench/models.py OUTDIR``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import zeroskip
from zeroskip.bench import SETTLE_S, default_modes, make_runners, measure, synthetic_inputs
from zeroskip.kernels._spin import handoff_ns

THREADS = (1, 2)


def table(path: str, rounds: int, modes=None, runs_per_turn: int = 1) -> list[str]:
    model = zeroskip.import_onnx(path)
    modes = modes or default_modes(model)
    feeds = synthetic_inputs(model.graph.inputs, 1)
    runners = {}
    for threads in THREADS:
        for runner in make_runners(model, modes, feeds, threads, path):
            runners[(runner.name, threads)] = runner
    time.sleep(SETTLE_S)  # each handoff after a pause: no runtime's worker spinning
    before = handoff_ns()
    measure(list(runners.values()), rounds, progress=True, runs_per_turn=runs_per_turn)
    time.sleep(SETTLE_S)
    after = handoff_ns()
    best = {key: min(runner.times) * 1e3 for key, runner in runners.items()}
    name = os.path.basename(path)
    lines = []
    for threads in THREADS:
        cells = [f"{best[(m, threads)]:.1f}" if (m, threads) in best else ""
                 for m in ["onnxruntime"] + list(modes)]
        lines.append(f"| {name} | {threads} | " + " | ".join(cells) + " |")
    gains = [f"{best[(m, 1)] / best[(m, 2)]:.2f}×" for m in ["onnxruntime"] + list(modes)
             if (m, 1) in best]
    lines.append(f"| {name} | 1 → 2 | " + " | ".join(gains) + " |")
    if before is not None and after is not None:
        lines.append(f"(a cache line between two CPUs: {before:.0f} ns before the rounds, "
                     f"{after:.0f} after)")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--mode", action="append", dest="modes")
    parser.add_argument("--runs-per-turn", type=int, default=1,
                        help="timed runs back to back in each turn (default 1)")
    args = parser.parse_args(argv)
    for path in args.models:
        modes = args.modes or default_modes(zeroskip.import_onnx(path))
        print("| model | threads | onnxruntime | " + " | ".join(modes) + " |")
        print("|---" * (3 + len(modes)) + "|")
        for line in table(path, args.rounds, modes, args.runs_per_turn):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
