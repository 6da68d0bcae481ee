"""Magnitude pruning: which weights to zero (``masks``), and a Model with them zeroed (``prune``).

Every structure is the same algorithm over different *groups* of a weight seen as a matrix
W (N, K), output channels as rows (torch's Linear (out, in) and Conv (out, in, kh, kw) layouts):

=================  ===============================  =========================================
structure          a group is                       its importance
=================  ===============================  =========================================
``unstructured``   one weight                       |w| ("l1") or w² ("l2")
``channel``        one row: an output channel       mean |w| or √mean w² over the row
``block:RxC``      R rows × C columns (a conv: R    mean |w| or √mean w² over the block
                   outputs × C inputs at one tap)
``n:m``            m consecutive weights of a row   the n largest |w| of each group are kept
=================  ===============================  =========================================

The groups with the lowest importance are removed, as many as the sparsity asks: round(s·G) of
the G groups of each layer (``scope="layer"`` or a dict of per-layer sparsities), or of all the
layers' groups pooled (``scope="global"``, one threshold across layers, as torch's
``global_unstructured``). Importance is a *mean* over the group, so that rows and blocks of layers
with different fan-ins compare fairly under one global threshold. A layer always keeps at least
one channel. ``n:m`` fixes the sparsity at 1 − n/m in every layer, so it ignores ``sparsity``.

The columns of a conv weight (N, C, kh, kw) run over (c, i, j) for ``n:m``, and over (i, j, c),
the input channels fastest, for ``block:RxC``: a block is R output channels × C consecutive input
channels at one tap, the 4-byte groups that the quad conv (docs/kernels.md) multiplies in one
instruction and skips whole when they are zero, and that ``.zsk`` stores as blocks [R, C, 1, 1]
(docs/format.md). For a Gemm or a 1×1 conv both orders are the same.

``prune`` applies the masks to a float Model. ``channel`` really shrinks the model where the graph
allows it: the layer loses its pruned outputs (weight rows, bias), and everything that reads them
is cut to match: BatchNormalization parameters, per-channel ops on the way (activations, pooling,
depthwise convs), and the input columns of the next Conv, Gemm or MatMul (through a Flatten too).
A layer whose output reaches anything else (a residual Add, a Concat, a graph output) keeps its
shape, with the pruned channels zeroed; the metadata says which layers were shrunk.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import numpy as np

from ..errors import CompressionError
from ..model import Dense, Model, Node
from ..shapes import infer_shapes

IMPORTANCES = ("l1", "l2")
SCOPES = ("global", "layer")
PRUNABLE = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class Structure:
    """A parsed ``structure`` argument: kind "unstructured", "channel", "block" (rows × cols) or
    "n:m" (n of every m)."""

    kind: str
    rows: int = 1
    cols: int = 1
    n: int = 0
    m: int = 0

    @property
    def name(self) -> str:
        if self.kind == "block":
            return f"block:{self.rows}x{self.cols}"
        if self.kind == "n:m":
            return f"{self.n}:{self.m}"
        return self.kind


def parse_structure(structure) -> Structure:
    """"unstructured", "channel", "n:m" such as "2:4", or "block:RxC" such as "block:1x4"."""
    if not isinstance(structure, str):
        raise CompressionError(f"structure={structure!r}: expected a string such as "
                               f"'unstructured', 'channel', '2:4' or 'block:1x4'")
    if structure in ("unstructured", "channel"):
        return Structure(structure)
    match = re.fullmatch(r"(\d+):(\d+)", structure)
    if match:
        n, m = int(match[1]), int(match[2])
        if not 0 < n < m:
            raise CompressionError(f"structure={structure!r}: n:m needs 0 < n < m "
                                   f"(keep n weights of every m)")
        return Structure("n:m", n=n, m=m)
    match = re.fullmatch(r"block:(\d+)x(\d+)", structure)
    if match:
        rows, cols = int(match[1]), int(match[2])
        if rows < 1 or cols < 1 or rows * cols < 2:
            raise CompressionError(f"structure={structure!r}: a block needs positive sides and "
                                   f"at least 2 weights")
        return Structure("block", rows=rows, cols=cols)
    raise CompressionError(f"structure={structure!r}: unknown structure; expected 'unstructured', "
                           f"'channel', 'n:m' (such as '2:4') or 'block:RxC' (such as 'block:1x4')")


def check_sparsity(value, what="sparsity") -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise CompressionError(f"{what}={value!r}: expected a number in [0, 1)") from None
    if not 0.0 <= s < 1.0:  # NaN fails too
        raise CompressionError(f"{what}={value!r}: must lie in [0, 1)")
    return s


# --------------------------------------------------------------------------------------------------
# masks: the selection, on plain arrays
# --------------------------------------------------------------------------------------------------

def masks(weights: dict, sparsity=0.9, structure="unstructured", scope="global",
          importance="l1") -> dict:
    """Keep-masks (bool arrays, True = keep) for ``weights``, a dict name -> array (N, ...).

    Axis 0 of each array is its output channels (torch's Linear and Conv layouts); the other axes
    are flattened to K (for ``block``, axis 1 last: a conv's input channels fastest, so that a
    block's columns are input channels at one tap). ``scope`` is "global", "layer" or a dict
    name -> sparsity (arrays not in it keep every weight). This is what ``prune`` uses, on plain
    arrays so that a training loop (gradual pruning, ``schedule.polynomial``) can apply the masks
    to its own tensors.
    """
    struct = parse_structure(structure)
    if importance not in IMPORTANCES:
        raise CompressionError(f"importance={importance!r}: expected one of {', '.join(IMPORTANCES)}")
    matrices, arranged = {}, {}
    for name, array in weights.items():
        w = np.asarray(array)
        if w.ndim < 2 or w.dtype.kind != "f":
            raise CompressionError(f"weight {name!r}: expected a float array with at least 2 axes "
                                   f"(outputs first), got {w.dtype} of shape {list(w.shape)}")
        if not np.all(np.isfinite(w)):
            raise CompressionError(f"weight {name!r}: has NaN or infinite values")
        if struct.kind == "block" and w.ndim >= 3 and (w.shape[0] % struct.rows
                                                         or w.shape[1] % struct.cols):
            raise CompressionError(
                f"weight {name!r} of shape {list(w.shape)} (outputs, inputs, taps): block "
                f"{struct.rows}x{struct.cols} does not divide its outputs and input channels; "
                f"leave the layer out with exclude= (--exclude on the command line), or choose "
                f"another block")
        w = _channels_last(w, struct)
        arranged[name] = w.shape  # the order of the matrix's columns, to put the mask back
        matrices[name] = w.reshape(w.shape[0], -1).astype(np.float64)
    targets = _targets(matrices, sparsity, scope)
    groups = {name: _groups(name, w, struct, importance) for name, w in matrices.items()
              if name in targets}
    removed = _select(groups, targets, struct, scope)
    out = {}
    for name, w in matrices.items():
        keep = np.ones(w.shape, bool)
        if name in groups:
            keep = groups[name].keep(removed[name])
        out[name] = _channels_first(keep.reshape(arranged[name]), struct)
    return out


def _channels_last(w: np.ndarray, struct) -> np.ndarray:
    """A conv weight (N, C, kh, ...) as (N, kh, ..., C) for ``block`` structures, whose blocks
    take consecutive input channels at one tap; every other weight and structure as it is."""
    if struct.kind != "block" or w.ndim < 3:
        return w
    return w.transpose(0, *range(2, w.ndim), 1)


def _channels_first(keep: np.ndarray, struct) -> np.ndarray:
    """The inverse of ``_channels_last``: (N, kh, ..., C) back to (N, C, kh, ...)."""
    if struct.kind != "block" or keep.ndim < 3:
        return keep
    return keep.transpose(0, keep.ndim - 1, *range(1, keep.ndim - 1))


def _targets(matrices: dict, sparsity, scope) -> dict:
    """name -> sparsity for every array that is pruned (one shared value unless scope is a dict)."""
    if isinstance(scope, dict):
        unknown = sorted(set(scope) - set(matrices))
        if unknown:
            raise CompressionError(f"scope names {unknown[0]!r}, which is not a prunable layer "
                                   f"(known: {', '.join(sorted(matrices)) or 'none'})")
        return {name: check_sparsity(s, f"scope[{name!r}]") for name, s in scope.items()}
    if scope not in SCOPES:
        raise CompressionError(f"scope={scope!r}: expected 'global', 'layer' or a dict of "
                               f"layer name -> sparsity")
    s = check_sparsity(sparsity)
    return {name: s for name in matrices}


class _Groups:
    """One weight's groups: ``score`` [G] (lower goes first) and how to turn removed groups into a
    keep-mask. ``cap`` is how many groups may go at most (a layer keeps one channel)."""

    def __init__(self, shape, score, members, cap=None):
        self.shape, self.score, self.members = shape, score, members
        self.cap = len(score) if cap is None else cap

    def keep(self, removed: np.ndarray) -> np.ndarray:
        keep = np.ones(self.shape, bool)
        self.members(keep, removed)
        return keep


def _groups(name, w, struct: Structure, importance) -> _Groups:
    n, k = w.shape
    mag = np.abs(w) if importance == "l1" else w * w
    if struct.kind == "unstructured":
        def zero(keep, removed):
            keep.reshape(-1)[removed] = False
        return _Groups(w.shape, mag.reshape(-1), zero)
    if struct.kind == "channel":
        score = mag.mean(axis=1) if k else np.zeros(n)
        score = _relative(score if importance == "l1" else np.sqrt(score))

        def zero_rows(keep, removed):
            keep[removed] = False
        return _Groups(w.shape, score, zero_rows, cap=max(n - 1, 0))
    if struct.kind == "block":
        r, c = struct.rows, struct.cols
        if n % r or k % c:
            raise CompressionError(
                f"weight {name!r} of shape ({n}, {k}) as (outputs, inputs): block {r}x{c} does not "
                f"divide it; leave the layer out with exclude= (--exclude on the command line), "
                f"or choose another block")
        blocks = mag.reshape(n // r, r, k // c, c).mean(axis=(1, 3))
        score = _relative(blocks.reshape(-1) if importance == "l1" else np.sqrt(blocks.reshape(-1)))

        def zero_blocks(keep, removed):
            view = keep.reshape(n // r, r, k // c, c)
            bi, bj = np.divmod(removed, k // c)
            view[bi, :, bj, :] = False
        return _Groups(w.shape, score, zero_blocks)
    # n:m — the pattern is local: the (m - n) smallest of every m consecutive weights of a row go
    # (a ragged last group of a row keeps at most n as well).
    m, keep_n = struct.m, struct.n
    pad = (-k) % m
    padded = np.concatenate([mag, np.full((n, pad), -np.inf)], axis=1) if pad else mag
    g = padded.reshape(n, -1, m)
    order = np.argsort(-g, axis=2, kind="stable")  # largest first; ties keep the earlier weight
    keep_g = np.zeros(g.shape, bool)
    np.put_along_axis(keep_g, order[:, :, :keep_n], True, axis=2)
    fixed = keep_g.reshape(n, -1)[:, :k]
    return _Groups(w.shape, np.zeros(0), lambda keep, removed: np.copyto(keep, fixed), cap=0)


def _relative(score: np.ndarray) -> np.ndarray:
    """Scores over their layer's mean, so that one global threshold cuts each layer by how weak a
    channel or block is *within* it (raw magnitudes shrink with a layer's fan-in)."""
    mean = score.mean() if score.size else 0.0
    return score / mean if mean > 0 else score


def _select(groups: dict, targets: dict, struct: Structure, scope) -> dict:
    """name -> indices of the removed groups."""
    if struct.kind == "n:m":
        return {name: np.zeros(0, np.int64) for name in groups}
    if scope != "global":
        return {name: _lowest(g.score, min(_count(targets[name], len(g.score)), g.cap))
                for name, g in groups.items()}
    names = list(groups)
    if not names:
        return {}
    scores = np.concatenate([groups[x].score for x in names])
    sizes = np.array([len(groups[x].score) for x in names])
    start = np.concatenate([[0], np.cumsum(sizes)])  # layer i's groups: scores[start[i]:start[i+1]]
    want = _count(targets[names[0]], len(scores))
    caps = np.array([groups[x].cap for x in names])
    if np.all(caps == sizes):
        # No caps: the ``want`` lowest scores, found by partition (O(n), not a sort).
        chosen = (np.argpartition(scores, want - 1)[:want] if 0 < want < len(scores)
                  else np.arange(want))
    else:
        # Walk the pooled order, skipping groups of layers that reached their cap.
        owner = np.repeat(np.arange(len(names)), sizes)
        taken = np.zeros(len(names), np.int64)
        picked = []
        for idx in np.argsort(scores, kind="stable"):
            if len(picked) == want:
                break
            layer = owner[idx]
            if taken[layer] < caps[layer]:
                taken[layer] += 1
                picked.append(idx)
        chosen = np.array(picked, np.int64)
    chosen = np.sort(chosen)  # grouped by layer, in order within each
    bounds = np.searchsorted(chosen, start)
    return {x: chosen[bounds[i]:bounds[i + 1]] - start[i] for i, x in enumerate(names)}


def _count(sparsity: float, total: int) -> int:
    return int(np.floor(sparsity * total + 0.5))


def _lowest(score: np.ndarray, count: int) -> np.ndarray:
    return np.sort(np.argsort(score, kind="stable")[:count])


# --------------------------------------------------------------------------------------------------
# prune: the masks applied to a Model
# --------------------------------------------------------------------------------------------------

@dataclass
class _Layer:
    node: Node
    weight: str
    out_axis: int  # the axis of the stored weight that holds output channels


def named_nodes(graph, items, argument: str) -> set:
    """The names of the nodes that ``items`` (a node name or op type, or a list of them) picks;
    each item must pick something (CompressionError naming ``argument`` otherwise)."""
    items = (items,) if isinstance(items, str) else tuple(items)
    names = {node.name for node in graph.nodes}
    ops = {node.op for node in graph.nodes}
    for item in items:
        if not isinstance(item, str) or (item not in names and item not in ops):
            raise CompressionError(f"{argument}={item!r}: no node has that name or op type")
    return {node.name for node in graph.nodes if node.name in items or node.op in items}


def prunable_layers(model: Model, exclude=()) -> list[_Layer]:
    """The Conv/Gemm/MatMul nodes with a float constant weight, minus ``exclude`` (node names or op
    types, each of which must match something)."""
    graph = model.graph
    excluded = named_nodes(graph, exclude, "exclude")
    layers = []
    for node in graph.nodes:
        if node.op not in PRUNABLE or node.name in excluded:
            continue
        tensor = graph.initializers.get(node.inputs[1])
        if tensor is None or tensor.quant is not None or tensor.dtype.kind != "f":
            continue
        if node.op == "MatMul" and len(tensor.shape) != 2:
            continue
        if node.op == "Gemm" and len(tensor.shape) != 2:
            continue
        trans_b = node.op == "Gemm" and node.attrs.get("transB", 0)
        out_axis = 0 if node.op == "Conv" or trans_b else 1
        layers.append(_Layer(node, node.inputs[1], out_axis))
    return layers


def _outputs_first(array: np.ndarray, out_axis: int) -> np.ndarray:
    return array if out_axis == 0 else array.T


def prune(model: Model, sparsity=0.9, structure="unstructured", scope="global", exclude=(),
          importance="l1") -> Model:
    """A copy of float ``model`` with its Conv/Gemm/MatMul weights pruned (see the module doc).

    Biases are never pruned. ``exclude`` takes node names or op types. The result's metadata
    records the method (``metadata["pruning"]``) and each weight's sparsity
    (``metadata["weights"][name]``). The input model is never modified.
    """
    if not isinstance(model, Model):
        raise CompressionError(f"model: expected a zeroskip Model, got {type(model).__name__}")
    if any(t.quant is not None for t in model.graph.initializers.values()):
        raise CompressionError("model: is already quantized; prune the float model, then quantize "
                               "it (prune first, then quantize)")
    struct = parse_structure(structure)
    layers = prunable_layers(model, exclude)
    if struct.kind == "channel":
        # A grouped conv's channels belong to its input's producer, and a layer whose channels are
        # model outputs (the classifier) keeps them all.
        outputs = _output_layers(model.graph)
        layers = [x for x in layers if x.node.name not in outputs
                  and (x.node.op != "Conv" or x.node.attrs.get("group", 1) == 1)]
    by_node = {layer.node.name: layer for layer in layers}
    if isinstance(scope, dict):
        unknown = sorted(set(scope) - set(by_node))
        if unknown:
            raise CompressionError(f"scope names {unknown[0]!r}, which is not a prunable layer "
                                   f"(known: {', '.join(sorted(by_node)) or 'none'})")
        scope_w = {by_node[name].weight: s for name, s in scope.items()}
    else:
        scope_w = scope
    init = model.graph.initializers
    weights = {}
    for layer in layers:
        if layer.weight in weights:
            raise CompressionError(f"node {layer.node.name!r}: weight {layer.weight!r} is shared "
                                   f"with another layer; exclude one of them")
        weights[layer.weight] = _outputs_first(init[layer.weight].to_numpy(), layer.out_axis)
    keep = masks(weights, sparsity, struct.name, scope_w, importance)

    result = Model(copy.copy(model.graph), copy.deepcopy(model.metadata))
    result.graph.initializers = dict(init)
    result.graph.nodes = list(model.graph.nodes)
    for layer in layers:
        w = weights[layer.weight]
        pruned = np.where(keep[layer.weight], w, 0).astype(w.dtype)
        result.graph.initializers[layer.weight] = Dense(
            np.ascontiguousarray(_outputs_first(pruned, layer.out_axis)))
    shrunk = {}
    if struct.kind == "channel":
        rows = {layer.node.name: ~keep[layer.weight].reshape(len(keep[layer.weight]), -1).any(axis=1)
                for layer in layers}
        shrunk = _shrink(result, layers, rows)

    layer_meta = {}
    weights_meta = result.metadata.setdefault("weights", {})
    method = {"structure": struct.name, "scope": scope if isinstance(scope, str) else "per-layer",
              "importance": importance}
    for layer in layers:
        t = result.graph.initializers[layer.weight]
        original = init[layer.weight]
        removed = original.size - t.size
        zeros = t.size - int(np.count_nonzero(t.to_numpy()))
        s = (zeros + removed) / original.size if original.size else 0.0
        row = {"weight": layer.weight, "sparsity": s, "shape": list(t.shape)}
        if struct.kind == "channel":
            row["shrunk"] = layer.node.name in shrunk
        layer_meta[layer.node.name] = row
        weights_meta.setdefault(layer.weight, {}).update(
            sparsity=s, pruning=dict(method, **({"shape_before": list(original.shape)}
                                                if removed else {})))
    result.metadata["pruning"] = dict(method, sparsity=(
        1 - struct.n / struct.m if struct.kind == "n:m" else
        (float(sparsity) if not isinstance(scope, dict) else None)), layers=layer_meta)
    result.graph.check()
    return result


def _output_layers(graph) -> set:
    """Layers whose output channels reach a graph output without passing another layer."""
    producer = graph.producers()
    found, stack, seen = set(), [v.name for v in graph.outputs], set()
    while stack:
        value = stack.pop()
        node = producer.get(value)
        if node is None or value in seen:
            continue
        seen.add(value)
        if node.op in PRUNABLE:
            found.add(node.name)
        else:
            stack += [name for name in node.inputs if name]
    return found


# --------------------------------------------------------------------------------------------------
# channel shrinking
# --------------------------------------------------------------------------------------------------

def _shrink(model: Model, layers, removed_rows: dict) -> set:
    """Cut each layer's removed output channels out of the model where its readers allow; returns
    the names of the layers shrunk. ``model`` is the fresh copy made by ``prune`` (its node list and
    initializer dict are its own; tensors are replaced, never written)."""
    graph = model.graph
    readers: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)
    outputs = {v.name for v in graph.outputs}
    shapes = infer_shapes(graph)
    layer_of = {layer.node.name: layer for layer in layers}
    init = graph.initializers
    shrunk = set()
    edits: list = []  # (tensor name, axis, kept indices [, repeat block])
    node_attrs: dict[str, dict] = {}
    for layer in layers:
        gone = removed_rows[layer.node.name]
        if not gone.any():
            continue
        kept = np.flatnonzero(~gone)
        plan = _cut_plan(layer.node, layer_of, readers, outputs, shapes, init, len(gone))
        if plan is None:
            continue
        shrunk.add(layer.node.name)
        edits.append((layer.weight, layer.out_axis, kept, 1))
        bias = layer.node.inputs[2] if len(layer.node.inputs) > 2 else ""
        if bias and init[bias].shape and init[bias].shape[-1] == len(gone):
            edits.append((bias, -1, kept, 1))  # a bias of one value broadcast to all stays
        for tensor, axis, block in plan["tensors"]:
            edits.append((tensor, axis, kept, block))
        for node_name, attrs in plan["attrs"]:
            node_attrs[node_name] = dict(node_attrs.get(node_name, {}), **attrs(len(kept)))
    for tensor, axis, kept, block in edits:
        array = init[tensor].to_numpy()
        index = (kept[:, None] * block + np.arange(block)).reshape(-1) if block > 1 else kept
        init[tensor] = Dense(np.ascontiguousarray(np.take(array, index, axis=axis)))
    graph.nodes = [Node(n.name, n.op, list(n.inputs), list(n.outputs),
                        dict(n.attrs, **node_attrs[n.name])) if n.name in node_attrs else n
                   for n in graph.nodes]
    return shrunk


def _cut_plan(node, layer_of, readers, outputs, shapes, init, channels):
    """What must be cut when ``node`` loses output channels, or None when something that reads them
    cannot be cut (then the layer keeps its shape, with the channels zeroed).

    Walks forward from the layer's output through per-channel ops, tracking which axis holds the
    channels (1 after a Conv or a Gemm, the last after a MatMul) and how many consecutive columns
    one channel has become (a Flatten of C×H×W makes it H·W)."""
    plan = {"tensors": [], "attrs": []}
    rank = _rank(shapes, node.outputs[0])
    if rank is None:
        return None
    axis = rank - 1 if node.op == "MatMul" else 1
    frontier = [(node.outputs[0], 1, axis, rank)]
    while frontier:
        value, block, axis, rank = frontier.pop()
        if value in outputs:
            return None
        for reader in readers.get(value, []):
            if reader.inputs.count(value) != 1:
                return None
            op, out = reader.op, reader.outputs[0]
            first = reader.inputs[0] == value
            if op in _ELEMENTWISE and first and block == 1:
                frontier.append((out, 1, axis, rank))
            elif op in _BINARY and block == 1:
                other = reader.inputs[1] if first else reader.inputs[0]
                cut = _constant_cut(init.get(other), axis, rank, channels)
                if cut is False:
                    return None
                if cut is not None:
                    plan["tensors"].append((other, cut, 1))
                frontier.append((out, 1, axis, rank))
            elif not first or axis != 1 or rank < 2:
                return None
            elif op in _POOLS and block == 1:
                frontier.append((out, 1, 1, rank))
            elif op == "BatchNormalization" and block == 1:
                if not all(name in init for name in reader.inputs[1:]):
                    return None
                plan["tensors"] += [(name, 0, 1) for name in reader.inputs[1:]]
                frontier.append((out, 1, 1, rank))
            elif op == "Conv" and block == 1:
                w = init.get(reader.inputs[1])
                if w is None or len(w.shape) < 3:
                    return None
                group = reader.attrs.get("group", 1)
                if group == 1:
                    plan["tensors"].append((reader.inputs[1], 1, 1))
                elif group == channels and w.shape[0] == channels and w.shape[1] == 1:
                    # Depthwise: each channel has its own filter, so the channel passes through.
                    plan["tensors"].append((reader.inputs[1], 0, 1))
                    if len(reader.inputs) > 2 and reader.inputs[2]:
                        plan["tensors"].append((reader.inputs[2], 0, 1))
                    plan["attrs"].append((reader.name, lambda kept: {"group": kept}))
                    frontier.append((out, 1, 1, rank))
                else:
                    return None
            elif op in ("Gemm", "MatMul") and rank == 2:
                w = init.get(reader.inputs[1])
                if w is None or len(w.shape) != 2 or (op == "Gemm" and reader.attrs.get("transA")):
                    return None
                in_axis = 1 if op == "Gemm" and reader.attrs.get("transB") else 0
                if w.shape[in_axis] != channels * block:
                    return None
                plan["tensors"].append((reader.inputs[1], in_axis, block))
            elif op == "Flatten" and block == 1 and reader.attrs.get("axis", 1) == 1:
                shape = shapes.get(value)
                dims = shape.shape[2:]
                if not all(isinstance(d, int) for d in dims):
                    return None
                frontier.append((out, int(np.prod(dims, dtype=np.int64)), 1, 2))
            else:
                return None
    return plan


_ELEMENTWISE = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "Identity", "Dropout"})
"""Ops that act on each element alone: the pruned channels can be left out whatever their axis."""
_BINARY = frozenset({"Add", "Sub", "Mul", "Div"})
"""Elementwise with a constant operand (a bias Add after a MatMul), cut along with the channels."""
_POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})
"""Ops that act on each channel (axis 1) alone."""


def _rank(shapes, value):
    info = shapes.get(value)
    return None if info is None or info.shape is None else len(info.shape)


def _constant_cut(tensor, axis, rank, channels):
    """The axis of a constant operand to cut, None if it needs no cut (size 1 along the channels),
    or False if the operand is not a constant that broadcasts per channel."""
    if tensor is None or len(tensor.shape) > rank:
        return False
    own = axis - (rank - len(tensor.shape))
    if own < 0 or tensor.shape[own] == 1:
        return None
    return own if tensor.shape[own] == channels else False
