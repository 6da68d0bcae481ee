"""The Python between kernels: how much of a run is not spent in compiled code.

    python bench/python_cost.py MODEL.onnx [MODEL.onnx ...] [--mode auto] [--threads 1] [--runs 20]

For each model it builds two sessions. In the first, every kernel call is timed (the Numba dispatch
counts as the kernel's); a run's wall time minus its kernels' is the Python around them: the steps'
own code, the executor's loop, allocating outputs. In the second, every kernel is a no-op, so its
runs show that Python warm, with nothing evicting it from the caches. Prints, for the fastest of
``--runs`` runs: the run, its kernels, the Python between them (and its share of the run), the
number of steps and kernel calls, and the warm Python of the no-op session. The gap between the
two Python figures is what the kernels' eviction of the interpreter's code and data costs. These
sessions run their steps (ZEROSKIP_REPLAY=0); a third, as a user's, replays its runs once recorded
(engine/replay.py): its fastest run is the last column.
docs/kernels.md, "Python between kernels", has the figures. Build the models with
``python bench/models.py OUTDIR``.
"""

from __future__ import annotations

import argparse
import os
import time

import zeroskip
from zeroskip.bench import synthetic_inputs
from zeroskip.engine import replay
from zeroskip.engine.plan import context
from zeroskip.engine.plan.launch import Launch


class KernelClock:
    """Wraps a kernel so that each call adds its time to ``spent`` and one to ``calls``."""

    spent = 0.0
    calls = 0

    def __init__(self, kernel):
        self.kernel = kernel

    def __call__(self, *args):
        start = time.perf_counter()
        result = self.kernel(*args)
        KernelClock.spent += time.perf_counter() - start
        KernelClock.calls += 1
        return result


def _no_op(*args):
    return None


def session_with(model, mode: str, threads: int, wrap) -> zeroskip.Session:
    """A session whose plan calls ``wrap(kernel)`` in place of each kernel (serial or parallel)."""
    real = context.PlanContext.kernel

    def kernel(ctx, name):
        chosen = real(ctx, name)
        if isinstance(chosen, Launch):
            chosen.parallel, chosen.serial = wrap(chosen.parallel), wrap(chosen.serial)
            return chosen
        return wrap(chosen)

    context.PlanContext.kernel = kernel
    try:
        return zeroskip.Session(model, mode=mode, threads=threads)
    finally:
        context.PlanContext.kernel = real


def measure(path: str, mode: str, threads: int, runs: int) -> str:
    model = zeroskip.import_onnx(path)
    feeds = synthetic_inputs(model.graph.inputs, 1)
    os.environ[replay.ENV] = "0"
    try:
        timed = session_with(model, mode, threads, KernelClock)
        idle = session_with(model, mode, threads, lambda kernel: _no_op)
    finally:
        del os.environ[replay.ENV]
    replaying = zeroskip.Session(model, mode=mode, threads=threads)
    replayed = []
    for _ in range(runs + 40):  # its Trials and race settle, two runs are recorded
        start = time.perf_counter()
        replaying.run(feeds)
        replayed.append(time.perf_counter() - start)
    for session in (timed, idle):
        session.run(feeds)
        session.run(feeds)
    best = None
    for _ in range(runs):
        KernelClock.spent, KernelClock.calls = 0.0, 0
        start = time.perf_counter()
        timed.run(feeds)
        wall = time.perf_counter() - start
        if best is None or wall < best[0]:
            best = (wall, KernelClock.spent, KernelClock.calls)
    idle_times = []
    for _ in range(runs):
        start = time.perf_counter()
        idle.run(feeds)
        idle_times.append(time.perf_counter() - start)
    wall, kernels, calls = best
    python = wall - kernels
    return (f"| {os.path.basename(path)} | {mode} | {threads} | {wall * 1e3:.2f} | "
            f"{kernels * 1e3:.2f} | {python * 1e3:.2f} ({python / wall:.1%}) | "
            f"{len(timed._plan.steps)} / {calls} | {min(idle_times) * 1e3:.2f} | "
            f"{min(replayed[-runs:]) * 1e3:.2f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--threads", type=int, action="append")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    print("| model | mode | threads | run ms | kernels ms | Python between ms (share) | "
          "steps / kernel calls | no-op kernels: run ms | replayed: run ms |")
    print("|---" * 9 + "|")
    for path in args.models:
        for threads in args.threads or [1, 2]:
            print(measure(path, args.mode, threads, args.runs), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
