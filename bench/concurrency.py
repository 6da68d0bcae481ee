"""Throughput at batch 1: threads inside each run, or Python threads each running whole images.

    python bench/concurrency.py MODEL.onnx [--mode auto] [--images 24] [--workers 2]

Prints milliseconds per image for one Python thread on a ``threads=1`` session, one Python thread on
a ``threads=WORKERS`` session, and WORKERS Python threads sharing one ``threads=1`` session (the
kernels release the GIL; ``Session.run`` is pure and its scratch is per thread). Two rounds, so the
spread shows. Build the models with ``python bench/models.py OUTDIR``.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import zeroskip
from zeroskip.bench import synthetic_inputs


def per_image_ms(run, images: int, workers: int = 1) -> float:
    """Wall time per image of ``images`` calls of ``run``, spread over ``workers`` threads."""
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: run(), range(2 * workers)))  # warm every worker's scratch
        start = time.perf_counter()
        list(pool.map(lambda _: run(), range(images)))
    return (time.perf_counter() - start) / images * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    model = zeroskip.import_onnx(args.model)
    feeds = synthetic_inputs(model.graph.inputs, 1)
    one = zeroskip.Session(model, mode=args.mode, threads=1)
    many = zeroskip.Session(model, mode=args.mode, threads=args.workers)
    for _ in range(2):
        serial = per_image_ms(lambda: one.run(feeds), args.images)
        inside = per_image_ms(lambda: many.run(feeds), args.images)
        across = per_image_ms(lambda: one.run(feeds), args.images, args.workers)
        print(f"{args.mode}, ms per image: threads=1 {serial:.2f}; threads={args.workers} "
              f"{inside:.2f}; {args.workers} Python threads on a threads=1 session {across:.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
