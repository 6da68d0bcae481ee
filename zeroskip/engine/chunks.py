"""Large batches in cache-sized chunks.

A CNN's layers each read and write whole activations, and a batch of them. While a layer's input
and output for the whole batch fit in the last-level cache, the next layer finds its input there;
past that, every layer streams its input back from memory, and a second thread adds nothing but
a second stream. Measured on the Zen 4 machine of docs/benchmarks.md (32 MB L3, 1 MB L2 a core;
``auto``, batch 64, one process alternating the forms, ms at one / two threads):

- MobileNetV2 int8 (its hungriest step reads and writes 1.44 MB a sample): the whole batch
  324 / 290, in chunks of 8 257 / 143 (onnxruntime 248 / 140); chunks of 32, 16, 8, 4 at two
  threads 209, 163, 142, 146;
- ResNet-18 pruned 90 % int8 (0.96 MB a sample): 654 / 374 whole, 616 / 265 in chunks of 8,
  and at two threads 369, 317, 299, 262 in chunks of 32, 16, 8, 4.

So a run whose hungriest step would move more than 1/CACHE_SHARE of the last-level cache runs
in chunks that stay under it, as few as can, all of one size but the last. Smaller is not
better without end: a sparse layer reads its weights once a chunk, and the pruned ResNet's
batch of 8 in chunks of 1 took 51.3 ms against 43.2 whole at two threads (76.5 against 78.2 at
one: even).
docs/benchmarks.md, "Batch 64: cache-sized chunks", has the rule against whole batches.

The bytes a sample needs are counted at batch 1 from the graph's shapes, step by step through
the plan: a step's activations read and written, in the mode's element sizes (the constants and
a fused step's aliases are not counted). Chunks run one after another through ``Session.run``,
each at its own batch (so ``auto`` plans and times the chunk's batch class, not the whole
batch's), and their outputs are concatenated: a sample's result does not depend on the others
in its batch, which ``shapes.batch_coupling`` checks, so an int8 run gives a whole run's bytes
(a float run's may differ in the last place: a BLAS row's sum order depends on the batch).

``ZEROSKIP_CHUNK`` overrides the rule: ``0`` runs every batch whole, a positive integer N runs
batches larger than N in chunks of at most N.
"""

from __future__ import annotations

import os
from functools import lru_cache

from ..errors import ZeroskipError
from ..model import Graph
from .memory import value_bytes

CACHE_SHARE = 2
"""A chunk's hungriest step moves at most 1/CACHE_SHARE of the last-level cache. The measurements
above favour chunks of 4–8 samples at batch 64 (6–12 MB of a 32 MB L3), but at batch 8 chunks of 4
gained nothing on MobileNetV2 (11.5 MB whole) and chunks of 1 lost on the pruned ResNet: half the
cache keeps batch 8 whole on both and splits batch 64 (into chunks of 11 and 16)."""

DEFAULT_CACHE_BYTES = 8 << 20
"""The last-level cache taken where the system does not say (no Linux sysfs)."""

CHUNK_ENV = "ZEROSKIP_CHUNK"


@lru_cache(maxsize=4)
def last_level_cache(root: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """Bytes of the largest data or unified cache of CPU 0, from Linux sysfs
    (``root/index*/type`` and ``size``); DEFAULT_CACHE_BYTES elsewhere."""
    sizes = []
    try:
        entries = os.listdir(root)
    except OSError:
        return DEFAULT_CACHE_BYTES
    for entry in entries:
        try:
            with open(os.path.join(root, entry, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(root, entry, "size")) as f:
                sizes.append(_cache_size(f.read()))
        except (OSError, ValueError):
            continue
    return max(sizes, default=DEFAULT_CACHE_BYTES)


def _cache_size(text: str) -> int:
    """sysfs's cache size ("32768K", "1M", "512") in bytes."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text[:-1] if scale > 1 else text) * scale


def chunk_override() -> int | None:
    """ZEROSKIP_CHUNK as an integer ≥ 0 (None: unset, the cache rule decides)."""
    text = os.environ.get(CHUNK_ENV, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ZeroskipError(f"{CHUNK_ENV}={text!r}: expected 0 (whole batches) or a positive "
                            f"integer (the largest chunk)")
    return value


def sample_bytes(graph: Graph, steps, constants, mode: str) -> int:
    """The most bytes one step of ``steps`` (a plan's) reads and writes for one sample: its node's
    activation inputs and outputs at batch 1 (graph inputs with a dynamic first axis fed at 1),
    in ``mode``'s element sizes. 0 when the shapes are not known before a run."""
    at_one = {vi.name: tuple(1 if i == 0 and d is None else d for i, d in enumerate(vi.shape))
              for vi in graph.inputs if vi.shape is not None}
    try:
        size = value_bytes(graph, at_one, mode)[1]
    except ZeroskipError:
        return 0
    constant = set(constants)
    return max((sum(size(name) for name in (set(step.node.inputs) | set(step.node.outputs))
                    - constant)
                for step in steps if step.kernel != "fused"), default=0)


def cache_chunk(batch: int, per_sample: int, cache: int | None = None) -> int | None:
    """The chunk size a run of ``batch`` samples takes, None to run it whole: as few chunks as keep
    per_sample × chunk within 1/CACHE_SHARE of ``cache`` (the last-level cache), the size their
    count divides the batch into (65 in chunks of at most 16: five of 13, not four of 16 and one
    of 1); ZEROSKIP_CHUNK overrides."""
    largest = chunk_override()
    if largest is None:
        if per_sample <= 0:
            return None
        largest = max(1, (last_level_cache() if cache is None else cache)
                      // CACHE_SHARE // per_sample)
    if largest == 0 or batch <= largest:
        return None
    pieces = -(-batch // largest)
    return -(-batch // pieces)


__all__ = ["CACHE_SHARE", "CHUNK_ENV", "cache_chunk", "chunk_override", "last_level_cache",
           "sample_bytes"]
