"""Batch-scoring throughput on Dask: 1 and 2 worker processes against one process, warm.

    python bench/dask_scaling.py MODEL.zsk [--rows 512] [--batch 32] [--workers 1,2] [--mode auto]

Each configuration starts a LocalCluster (one thread per worker, kernels on one thread each), warms
every worker up (the model shipped, planned, its kernels loaded from the Numba cache) on one chunk
per worker, then times ``zeroskip.dask.run`` over ``--rows`` random rows in chunks of ``--batch``,
three times, and reports the best. The rows are made on the workers (``dask.array.random``), as
data read in parallel from storage would be: shipping a numpy array from the client through the
scheduler would measure the transfer, not the scoring. The single-process row runs ``Session.run`` chunk by chunk with
1 thread and with every core. Startup (cluster, first planning) is reported apart.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main(argv=None) -> None:
    import dask.array as da
    import distributed

    import zeroskip
    import zeroskip.dask as zs_dask

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--mode", default="auto")
    args = parser.parse_args(argv)
    session = zeroskip.Session(args.model, args.mode, threads=1)
    shape = tuple(args.batch if d is None else d for d in session.inputs[0].shape)
    x = np.random.default_rng(0).standard_normal((args.rows,) + shape[1:]).astype(np.float32)
    name = session.inputs[0].name
    for threads in (1, os.cpu_count()):
        s = zeroskip.Session(args.model, args.mode, threads=threads)
        s.run({name: x[:args.batch]})
        best = min(_timed(lambda: [s.run({name: x[i:i + args.batch]})
                                   for i in range(0, args.rows, args.batch)]) for _ in range(3))
        print(f"one process, {threads} thread(s): {args.rows / best:8.1f} rows/s")
    for workers in map(int, args.workers.split(",")):
        start = time.perf_counter()
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                           processes=True, dashboard_address=None)
        with distributed.Client(cluster) as client:
            rng = da.random.default_rng(0)
            chunks = (args.batch,) + shape[1:]
            warm = zs_dask.run(session, rng.standard_normal(
                (args.batch * workers,) + shape[1:], chunks=chunks, dtype=np.float32))
            client.compute(warm).result()
            startup = time.perf_counter() - start
            lazy = zs_dask.run(session, rng.standard_normal(x.shape, chunks=chunks,
                                                            dtype=np.float32))
            best = min(_timed(lambda: client.compute(lazy).result()) for _ in range(3))
        cluster.close()
        print(f"Dask, {workers} worker process(es): {args.rows / best:8.1f} rows/s "
              f"(startup and warm-up {startup:.1f} s)")


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
