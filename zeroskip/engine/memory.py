"""The peak memory of a run, estimated from shapes before anything is allocated.

``Session`` checks it against ``zeroskip.budget.memory_budget()``: when the model is opened, at
the shapes its inputs declare (dynamic sizes taken as 1), and before each run, at the fed shapes.
A batch whose run would not fit is run in chunks when the samples of a batch are independent
(``shapes.batch_coupling``), else refused with an ``InputError`` giving the largest batch that fits.

The formula (docs/security.md, "Memory bounds") walks the nodes in order, with every activation
freed after its last reader, as ``Session.run`` frees them::

    peak = weights + max over nodes (live activations + the node's outputs + the node's scratch)

Element sizes are those of the mode: 8 bytes for every value in ``reference`` (it computes in
float64 and int64), 4 for floats in the other modes, the stored size for integers. A node's
scratch is what its largest implementation holds besides its inputs and outputs: a converted
copy of its input, and its output in wide elements twice (accumulator and epilogue), five times
in ``reference``, whose quantizing epilogue copies at each of scale, rint, zero point, clip and
cast. A conv adds its padded input and its im2col matrix (``N·P·(C/G)·K`` elements for P output
pixels and K taps); a pool adds its padded input and its windows. Weights count at their dense
size. The estimate is meant to bound what a run allocates from above (tests/test_memory.py checks
it against tracemalloc for the reference); sizes that only data decide (the shape fed to a
ConstantOfShape) are checked by the op itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..model import Graph, ValueInfo
from ..ops import normalize_attrs
from ..shapes import infer_shapes

CONVS = frozenset({"Conv", "QConv", "ConvInteger"})
POOLS = frozenset({"MaxPool", "AveragePool", "QMaxPool", "QAveragePool", "LRN"})


@dataclass(frozen=True)
class Estimate:
    """A run's estimated peak: ``weights`` + ``activations`` (bytes); ``node``: where it peaks;
    ``outputs``: the bytes of the graph's outputs."""

    weights: int
    activations: int
    node: str | None
    outputs: int

    @property
    def total(self) -> int:
        return self.weights + self.activations


def value_bytes(graph: Graph, shapes: dict[str, tuple], mode: str):
    """(values, size): the inferred shape and dtype of every value of ``graph`` run with inputs
    of ``shapes`` ({name: shape}; the others as declared), and size(name), the bytes of a value
    in ``mode`` (0 when its shape is not known before the run)."""
    fed = Graph(graph.nodes, [ValueInfo(vi.name, shapes.get(vi.name, vi.shape), vi.dtype)
                              for vi in graph.inputs], graph.outputs, graph.initializers)
    values = infer_shapes(fed)

    def size(name) -> int:
        info = values.get(name) if name else None
        if info is None or info.shape is None or any(d is None for d in info.shape):
            return 0
        return math.prod(info.shape) * itemsize(info.dtype, mode)
    return values, size


def estimate(graph: Graph, shapes: dict[str, tuple], mode: str) -> Estimate:
    """The peak of a run of ``graph`` in ``mode`` with inputs of ``shapes`` ({name: shape})."""
    values, size = value_bytes(graph, {name: tuple(shape) for name, shape in shapes.items()},
                               mode)

    weights = sum(t.size * itemsize(str(t.dtype), mode) for t in graph.initializers.values())
    last = {}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            last[name] = i
    keep = {vi.name for vi in graph.outputs} | set(graph.initializers)
    live = sum(size(vi.name) for vi in graph.inputs)
    peak, where = live, None
    for i, node in enumerate(graph.nodes):
        out = sum(size(name) for name in node.outputs)
        need = live + out + _scratch(node, values, size, mode)
        if need > peak:
            peak, where = need, node.name
        live += out
        live -= sum(size(name) for name in set(node.inputs)
                    if name and last.get(name) == i and name not in keep)
    return Estimate(weights, peak, where, sum(size(vi.name) for vi in graph.outputs))


def itemsize(dtype: str, mode: str) -> int:
    """Bytes of one element of ``dtype`` in ``mode``: 8 in reference, at least 4 for floats (the
    plans compute in float32), the stored size for integers."""
    if mode == "reference":
        return 8
    kind = np.dtype(dtype)
    return max(kind.itemsize, 4) if kind.kind == "f" else kind.itemsize


def _scratch(node, values, size, mode) -> int:
    """Bytes a node's largest implementation holds besides its inputs and outputs."""
    wide = 8 if mode == "reference" else 4
    x, y = (values.get(node.inputs[0]) if node.inputs[0] else None), values.get(node.outputs[0])
    if x is None or y is None or x.shape is None or y.shape is None or None in x.shape + y.shape:
        return 0
    # every node: its input converted once, and its output in wide elements twice, five times in
    # the reference (a quantizing epilogue's scale, rint, zero point, clip and cast each copy)
    base = (math.prod(x.shape) + (5 if mode == "reference" else 2) * math.prod(y.shape)) * wide
    if node.op not in CONVS | POOLS:
        return base
    attrs = normalize_attrs(node.op, node.attrs)
    if node.op in CONVS:
        w = values.get(node.inputs[1])
        if w is None or w.shape is None or None in w.shape:
            return base
        kernel = w.shape[2:]
        # im2col: (C/G)·K values per output pixel and output channel group
        cols = y.shape[0] * math.prod(y.shape[2:]) * w.shape[1] * math.prod(kernel) * attrs["group"]
    else:
        kernel = attrs["kernel_shape"] if node.op != "LRN" else [attrs["size"]]
        cols = math.prod(y.shape) * math.prod(kernel)
    # the padded input: each spatial axis grows by at most its dilated kernel's extent - 1
    dilations = attrs.get("dilations") or [1] * len(kernel)
    spatial = len(x.shape) - len(kernel)
    grown = [h + (k - 1) * d for h, k, d in zip(x.shape[spatial:], kernel, dilations)]
    return base + (math.prod(x.shape[:spatial]) * math.prod(grown) + cols) * wide


__all__ = ["Estimate", "estimate", "itemsize", "value_bytes"]
