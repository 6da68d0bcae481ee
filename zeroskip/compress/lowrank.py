"""Low-rank factorization: one wide layer becomes two thin ones, through a truncated SVD.

A weight seen as W (N, K), outputs as rows, is W = U·diag(s)·Vᵀ. Keeping the r largest singular
values gives the closest rank-r matrix (Eckart–Young), and it runs as two layers:

    first:  K -> r   weight  √s_r·V_rᵀ   (r, K)    no bias
    second: r -> N   weight  U_r·√s_r    (N, r)    the original bias

which costs r·(K + N) multiply-adds per output position instead of N·K, a saving when
r < N·K / (N + K). A Gemm or MatMul becomes two Gemms; a k×k Conv becomes a k×k Conv to r channels
(the original stride, padding and dilation) followed by a 1×1 Conv.

The rank is given per layer (``rank={node: r}``) or chosen by ``energy``: the smallest r whose
singular values keep that share of Σ s² (the squared Frobenius norm). A layer where that r saves
nothing is left whole. The factors are dense, so factorize before pruning, not after; quantization
treats the two new layers like any other.
"""

from __future__ import annotations

import copy

import numpy as np

from ..errors import CompressionError, InputError
from ..model import Dense, Graph, Model, Node
from ..ops import normalize_attrs
from ..shapes import infer_shapes
from .calibration import sqnr_db


def low_rank(model: Model, energy=None, rank=None, calibration=None, exclude=()) -> Model:
    """A copy of float ``model`` with its Gemm/MatMul/Conv layers factorized (module doc).

    energy — in (0, 1]: the share of Σ s² each layer keeps; rank — a dict node name -> rank (the
    other layers are left alone); give exactly one of them. calibration — an array or feed dict to
    measure each factorized layer's output SQNR on (optional); exclude — node names or op types.
    The per-layer report (rank kept, parameters and MACs before and after, energy kept, SQNR) is in
    ``metadata["low_rank"]["layers"]``.
    """
    from .pruning import prunable_layers

    if not isinstance(model, Model):
        raise CompressionError(f"model: expected a zeroskip Model, got {type(model).__name__}")
    if (energy is None) == (rank is None):
        raise CompressionError("low_rank: give exactly one of energy= (a share of Σ s², in (0, 1]) "
                               "or rank= (a dict node name -> rank)")
    if energy is not None:
        try:
            energy = float(energy)
        except (TypeError, ValueError):
            raise CompressionError(f"energy={energy!r}: expected a number in (0, 1]") from None
        if not 0.0 < energy <= 1.0:
            raise CompressionError(f"energy={energy!r}: expected a number in (0, 1]")
    layers = [x for x in prunable_layers(model, exclude)
              if x.node.op != "Conv" or x.node.attrs.get("group", 1) == 1]
    if any(t.quant is not None for t in model.graph.initializers.values()):
        raise CompressionError("model: is quantized; factorize the float model")
    by_name = {x.node.name: x for x in layers}
    if rank is not None:
        if not isinstance(rank, dict):
            raise CompressionError(f"rank={rank!r}: expected a dict node name -> rank")
        for name, r in rank.items():
            if name not in by_name:
                raise CompressionError(f"rank names {name!r}, which is not a Gemm, MatMul or Conv "
                                       f"with a float constant weight")
            if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
                raise CompressionError(f"rank[{name!r}]={r!r}: expected an integer >= 1")
        layers = [by_name[name] for name in rank]

    graph = model.graph
    shapes = infer_shapes(graph)
    init = dict(graph.initializers)
    nodes = list(graph.nodes)
    taken = set(init) | {n.name for n in nodes} | {o for n in nodes for o in n.outputs}
    rows = []
    for layer in layers:
        node = layer.node
        w = init[layer.weight].to_numpy().astype(np.float64)
        matrix = w.reshape(w.shape[0], -1) if layer.out_axis == 0 else w.T
        n_out, k = matrix.shape
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        total = float(np.sum(s * s))
        if rank is not None:
            r = int(rank[node.name])
            if r > len(s):
                raise CompressionError(f"rank[{node.name!r}]={r}: the weight ({n_out}, {k}) has "
                                       f"rank at most {len(s)}")
        else:
            share = np.cumsum(s * s) / total if total > 0 else np.ones(len(s))
            r = int(np.searchsorted(share, energy * (1 - 1e-12))) + 1
            r = min(r, len(s))
        pixels = _pixels(shapes, node)
        row = {"node": node.name, "op": node.op, "full_rank": int(len(s)), "rank": r,
               "energy": float(np.sum(s[:r] ** 2) / total) if total > 0 else 1.0,
               "params_before": int(n_out * k), "macs_before": int(n_out * k * pixels)}
        if r * (n_out + k) >= n_out * k:
            rows.append(dict(row, factorized=False, params_after=row["params_before"],
                             macs_after=row["macs_before"]))
            continue
        root = np.sqrt(s[:r])
        first = (root[:, None] * vt[:r]).astype(np.float32)   # (r, K)
        second = (u[:, :r] * root[None, :]).astype(np.float32)  # (N, r)
        mid = _fresh(f"{node.name}/low_rank", taken)
        w1, w2 = _fresh(f"{layer.weight}.low_rank_in", taken), _fresh(
            f"{layer.weight}.low_rank_out", taken)
        if node.op == "Conv":
            init[w1] = Dense(first.reshape((r,) + w.shape[1:]))
            init[w2] = Dense(second.reshape(n_out, r, *([1] * (w.ndim - 2))))
            a = Node(_fresh(f"{node.name}/factor", taken), "Conv", [node.inputs[0], w1], [mid],
                     dict(node.attrs))
            b_attrs = normalize_attrs("Conv", {"kernel_shape": [1] * (w.ndim - 2)})
            b = Node(node.name, "Conv", [mid, w2] + node.inputs[2:], list(node.outputs), b_attrs)
        elif node.op == "MatMul":  # any rank of input: two MatMuls, weights stored (K, N)
            init[w1] = Dense(np.ascontiguousarray(first.T))
            init[w2] = Dense(np.ascontiguousarray(second.T))
            a = Node(_fresh(f"{node.name}/factor", taken), "MatMul", [node.inputs[0], w1], [mid], {})
            b = Node(node.name, "MatMul", [mid, w2], list(node.outputs), {})
        else:
            init[w1] = Dense(np.ascontiguousarray(first))
            init[w2] = Dense(np.ascontiguousarray(second))
            a = Node(_fresh(f"{node.name}/factor", taken), "Gemm", [node.inputs[0], w1], [mid],
                     normalize_attrs("Gemm", {"transB": 1}))
            b = Node(node.name, "Gemm", [mid, w2] + node.inputs[2:], list(node.outputs),
                     dict(node.attrs, transB=1))
        i = nodes.index(node)
        nodes[i:i + 1] = [a, b]
        rows.append(dict(row, factorized=True, params_after=int(r * (n_out + k)),
                         macs_after=int(r * (n_out + k) * pixels)))
    used = {name for n in nodes for name in n.inputs}
    result = Model(Graph(nodes, list(graph.inputs), list(graph.outputs),
                         {k: t for k, t in init.items() if k in used}),
                   copy.deepcopy(model.metadata))
    result.graph.check()
    if calibration is not None:
        _measure(model, result, rows, calibration, shapes)
    meta = result.metadata
    for row in rows:
        if row["factorized"]:
            for suffix in ("in", "out"):
                meta.setdefault("weights", {})[f"{by_name[row['node']].weight}.low_rank_{suffix}"
                                               ] = {"origin": "zeroskip.low_rank",
                                                    "rank": row["rank"]}
    meta["low_rank"] = {"energy": energy, "layers": rows}
    return result


def _fresh(base, taken):
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _pixels(shapes, node) -> int:
    """Output positions per sample: H·W for a conv, the rows between batch and features for a
    MatMul on a 3-D input, else 1."""
    info = shapes.get(node.outputs[0])
    if info is None or info.shape is None:
        return 1
    dims = info.shape[2:] if node.op == "Conv" else info.shape[1:-1]
    return int(np.prod([d for d in dims if isinstance(d, int)], dtype=np.int64))


def _measure(model, result, rows, calibration, shapes):
    """Each factorized layer's output SQNR against the original's, on ``calibration``."""
    from ..engine.session import Session

    feeds = calibration if isinstance(calibration, dict) else {
        model.graph.inputs[0].name: np.asarray(calibration)}
    outs = [r["node"] for r in rows if r["factorized"]]
    producer = {n.name: n.outputs[0] for n in model.graph.nodes}
    values = [producer[name] for name in outs]

    def run(m):
        g = m.graph
        extra = [shapes[v] for v in values if v not in {o.name for o in g.outputs}]
        probe = Model(Graph(g.nodes, g.inputs, list(g.outputs) + extra, g.initializers), m.metadata)
        try:
            return Session(probe, "dense-f32").run(feeds)
        except InputError as err:
            raise CompressionError(f"calibration: {err}") from None

    want, got = run(model), run(result)
    for row in rows:
        if row["factorized"]:
            db = sqnr_db(want[producer[row["node"]]], got[producer[row["node"]]])
            row["sqnr_db"] = None if not np.isfinite(db) else round(float(db), 2)


__all__ = ["low_rank"]
