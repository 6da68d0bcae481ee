"""One model, one mode, one thread count, run back to back in this process: the figure to compare
across processes that differ only in their environment (a threading layer, GOMP_SPINCOUNT,
ZEROSKIP_SPIN) or in a patch, alternated, since a threading layer is chosen once per process.

    python bench/back_to_back.py MODEL.onnx [--mode auto] [--threads 2] [--runs 400] [--warmup 100]
        [--trials]

Prints the best, first quartile and median of ``--runs`` runs after ``--warmup`` untimed ones (the
warm-up also lets every Trial of ``engine/plan/launch.py`` choose its build). ``--trials`` also
prints, for each Trial, its kernel, the best times it measured for the parallel and the serial
build, and the build it kept, and how many gaps between parallel calls within a run were longer
than 10 µs (TBB's workers are asleep after such a gap); with ``--trials`` the session runs its
steps (ZEROSKIP_REPLAY=0), since a replayed run makes its kernel calls around the Trials. docs/kernels.md, "What a region costs
now", has the figures. Build the models with ``python bench/models.py OUTDIR``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import zeroskip
from zeroskip.bench import synthetic_inputs
from zeroskip.engine import replay
from zeroskip.engine.plan import launch


def _record_trials(log: list):
    """Make every Trial call append (start, end, build kept or None, the trial) to ``log``."""
    call = launch.Trial.__call__

    def recorded(self, *args):
        start = time.perf_counter()
        result = call(self, *args)
        log.append((start, time.perf_counter(), self.decided(), self))
        return result

    launch.Trial.__call__ = recorded


def _trial_report(log: list, runs: int) -> list[str]:
    parallel = [entry for entry in log if entry[2] == "parallel"]
    gaps = [b[0] - a[1] for a, b in zip(parallel, parallel[1:]) if b[0] - a[1] < 5e-4]
    lines = [f"Trial calls a run: {len(log) / runs:.1f}, parallel {len(parallel) / runs:.1f}; "
             f"gaps over 10 µs between parallel calls a run: "
             f"{sum(g > 1e-5 for g in gaps) / runs:.1f}"]
    trials = list({id(entry[3]): entry[3] for entry in log}.values())
    for trial in sorted(trials, key=lambda t: -t.best[1]):
        name = getattr(trial.parallel, "__name__", "?").lstrip("_")
        lines.append(f"  {name:28s} parallel {trial.best[0] * 1e6:7.1f} µs  serial "
                     f"{trial.best[1] * 1e6:7.1f} µs  -> {trial.decided()}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--trials", action="store_true",
                        help="report each Trial's times and choice, and the gaps")
    args = parser.parse_args(argv)
    log: list = []
    if args.trials:  # the steps' own runs: a replayed run goes around its Trials
        os.environ[replay.ENV] = "0"
        _record_trials(log)
    model = zeroskip.import_onnx(args.model) if args.model.endswith(".onnx") else args.model
    session = zeroskip.Session(model, mode=args.mode, threads=args.threads)
    feeds = synthetic_inputs(session.inputs, 1)
    for _ in range(args.warmup):
        session.run(feeds)
    log.clear()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        session.run(feeds)
        times.append(time.perf_counter() - start)
    best, quartile, median = np.percentile(np.array(times) * 1e3, [0, 25, 50])
    print(f"{os.path.basename(args.model)} {args.mode} threads={args.threads}: best {best:.3f} "
          f"p25 {quartile:.3f} median {median:.3f} ms")
    if args.trials:
        print("\n".join(_trial_report(log, args.runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
