"""``zeroskip sweep``: will pruning help on my CPU? Dense against CSR kernels, layer by layer.

For each weight layer of a model (or one GEMM or conv shape), at each sparsity, the layer's weight
is replaced by a random one magnitude-pruned to that sparsity, and the kernel of the dense mode and
that of the sparse mode are timed on the layer's own shapes, in float32 and in int8. Where the
sparse kernel's time reaches the dense one's is the **break-even sparsity** of that layer and kernel
pair: above it, pruning pays on this CPU.

The timings are ``auto``'s own: each point is timed by ``engine.tuning.measure_layer`` on the steps
the planner builds (``engine.plan.step_in_mode``), under the key auto looks up, and stored in auto's
per-machine cache (``BreakEvenTable.get_layer``); a point already in the cache is read from it, not
timed again. So a model whose layer has one of these shapes and densities is planned by ``auto``
from the very numbers the sweep printed: the two never disagree. (One case is keyed apart: inside a
model, a GEMM that reads another GEMM's output gets it transposed, "Activations between layers" in
docs/kernels.md, and auto times that layout separately; the sweep times every layer on an ordinary
input.) The break-even is the same Theil–Sen crossing (``tuning.crossing``) auto uses for its shape
classes.
"""

from __future__ import annotations

import re

import numpy as np

from .errors import InputError
from .model import Dense, Graph, Model, Node, QuantParams, ValueInfo
from .ops import normalize_attrs

SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
KINDS = ("f32", "i8")
X_PARAMS = dict(x_scale=0.05, x_zero_point=128, y_scale=0.1, y_zero_point=128, y_dtype="uint8")
"""Activation parameters of the int8 layers the sweep builds (values do not change the timing)."""


def parse_shape(text: str) -> dict:
    """A layer from its shape: ``gemm:MxKxN`` (M rows, K inputs, N outputs) or
    ``conv:CxHxW:NxKhxKw[:sS][:pP]`` (input channels and size, output channels and kernel, stride
    and padding on every side; the batch comes from --batch)."""
    match = re.fullmatch(r"gemm:(\d+)x(\d+)x(\d+)", text)
    if match:
        m, k, n = map(int, match.groups())
        return {"name": text, "op": "Gemm", "w_shape": (n, k), "out_axis": 0, "x_shape": (m, k),
                "attrs": {"transB": 1}}
    match = re.fullmatch(r"conv:(\d+)x(\d+)x(\d+):(\d+)x(\d+)x(\d+)((?::[sp]\d+)*)", text)
    if match:
        c, h, w, n, kh, kw = map(int, match.groups()[:6])
        extra = dict(re.findall(r":([sp])(\d+)", match[7]))
        s, p = int(extra.get("s", 1)), int(extra.get("p", 0))
        return {"name": text, "op": "Conv", "w_shape": (n, c, kh, kw), "out_axis": 0,
                "x_shape": (1, c, h, w), "attrs": {"strides": [s, s], "pads": [p, p, p, p]}}
    raise InputError(f"shape {text!r}: expected gemm:MxKxN (such as gemm:128x1024x1024) or "
                     f"conv:CxHxW:NxKhxKw[:sS][:pP] (such as conv:64x56x56:64x3x3:s1:p1)")


def model_layers(model: Model, batch: int = 1) -> list[dict]:
    """The weight layers of ``model`` as sweep layers: Conv (ungrouped), Gemm and MatMul with a
    constant 2-D weight, and their int8 forms QConv and QGemm, with their input shapes at
    ``batch``. A layer whose input shape is not fully known is left out.

    A layer is {"name", "op" (its float op), "w_shape" (as stored), "out_axis" (the weight's
    output-channel axis), "x_shape", "attrs" (the float op's)}."""
    from .engine.passes import optimize
    from .shapes import infer_shapes

    model = optimize(model)
    graph = model.graph
    shapes = infer_shapes(graph)
    layers = []
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm", "MatMul", "QConv", "QGemm") or len(node.inputs) < 2:
            continue
        w = graph.initializers.get(node.inputs[1])
        x = shapes.get(node.inputs[0])
        if w is None or x is None or x.shape is None:
            continue
        dims = [batch if i == 0 and d is None else d for i, d in enumerate(x.shape)]
        if not all(isinstance(d, int) for d in dims):
            continue
        op = node.op[1:] if node.op.startswith("Q") else node.op
        if op == "Conv" and (len(w.shape) != 4 or node.attrs.get("group", 1) != 1):
            continue
        if op != "Conv" and (len(w.shape) != 2 or len(dims) != 2):
            continue
        attrs = {k: v for k, v in node.attrs.items() if not k.startswith(("x_", "y_", "clip"))}
        if node.op == "QGemm":  # its weight is (N, K): a Gemm with transB=1
            attrs = {"transB": 1}
        out_axis = 0 if op == "Conv" or attrs.get("transB", 0) else 1
        layers.append({"name": node.name, "op": op, "w_shape": tuple(w.shape),
                       "out_axis": out_axis, "x_shape": tuple(dims), "attrs": attrs})
    return layers


def layer_model(layer: dict, sparsity: float, kind: str, seed: int = 0) -> Model:
    """A one-node model of ``layer`` with a random weight magnitude-pruned to ``sparsity``: the
    float op ("f32"), or its int8 form with per-channel scales on uint8 ("i8": a QConv, or the
    QGemm that ``zeroskip.quantize`` makes of a Gemm or a MatMul)."""
    from .compress.pruning import masks
    from .compress.weights import choose_weight_scales, quantize_weights

    rng = np.random.default_rng(seed)
    # magnitudes in [0.5, 1.5): no kept weight rounds to an int8 zero, so both kinds have the
    # sparsity asked for exactly
    w = (rng.choice([-1.0, 1.0], layer["w_shape"]) * rng.uniform(0.5, 1.5, layer["w_shape"])
         ).astype(np.float32)
    out_first = w if layer["out_axis"] == 0 else w.T
    keep = masks({"w": out_first}, sparsity, scope="layer")["w"]
    out_first = np.ascontiguousarray(np.where(keep, out_first, np.float32(0)))
    if kind == "f32":
        op, attrs, x_dtype = layer["op"], dict(layer["attrs"]), "float32"
        weight = Dense(out_first if layer["out_axis"] == 0 else np.ascontiguousarray(out_first.T))
    else:
        op = "QConv" if layer["op"] == "Conv" else "QGemm"
        attrs = dict(layer["attrs"] if op == "QConv" else {}, **X_PARAMS)
        scales = choose_weight_scales(out_first, 0)
        weight = Dense(quantize_weights(out_first, scales, 0),
                       QuantParams(scales, np.zeros(scales.shape, np.int8), 0))
        x_dtype = "uint8"
    node = Node("layer", op, ["x", "w"], ["y"], normalize_attrs(op, attrs))
    graph = Graph([node], [ValueInfo("x", tuple(layer["x_shape"]), x_dtype)],
                  [ValueInfo("y", (None,), "float32")], {"w": weight})
    return Model(graph)


def time_point(layer: dict, sparsity: float, kind: str, threads=None) -> dict | None:
    """Dense and sparse seconds of one layer at one sparsity (auto's cache entry, measured now if
    the cache has none); None when either mode has no kernel for the layer."""
    import numba

    from .engine import tuning
    from .engine.plan import step_in_mode
    from .engine.session import timing_context

    model = layer_model(layer, sparsity, kind)
    node = model.graph.nodes[0]
    tensors = model.graph.initializers
    x_info = (tuple(layer["x_shape"]), model.graph.inputs[0].dtype)
    modes = ("dense-f32", "sparse-f32") if kind == "f32" else ("dense-i8", "sparse-i8")
    density = tensors["w"].density
    serial = threads == 1
    with timing_context(threads):  # what auto times in, so the key and the numbers are auto's
        table = tuning.BreakEvenTable(threads=numba.get_num_threads())
        key = tuning.layer_key(node, tensors, x_info, density)
        entry = table.get_layer(key, lambda: tuning.measure_layer(
            node, tensors, *x_info, modes,
            lambda m, n, mode: step_in_mode(m, n, mode, serial=serial),
            serial_step_in_mode=None if serial else
            lambda m, n, mode: step_in_mode(m, n, mode, serial=True)))
    if entry is None:
        return None
    return {"dense_s": entry["dense_s"], "sparse_s": entry["sparse_s"], "density": density}


def sweep(layers: list[dict], sparsities=SPARSITIES, kinds=KINDS, threads=None,
          progress: bool = False) -> dict:
    """Every layer × kind × sparsity: {"rows": [...], "break_even": [...], "notes": [...]}."""
    from tqdm import tqdm

    from .engine import tuning

    rows, summary, notes = [], [], []
    points = [(layer, kind) for layer in layers for kind in kinds]
    for layer, kind in tqdm(points, desc="sweep", disable=not progress, leave=False):
        timed = []
        for s in sparsities:
            point = time_point(layer, s, kind, threads)
            if point is None:
                notes.append(f"{layer['name']} ({kind}): no {kind} kernel pair for this layer, "
                             f"skipped")
                break
            rows.append({"layer": layer["name"], "op": layer["op"], "kind": kind,
                         "w_shape": list(layer["w_shape"]), "x_shape": list(layer["x_shape"]),
                         "sparsity": s, "density": point["density"],
                         "dense_ms": point["dense_s"] * 1e3, "sparse_ms": point["sparse_s"] * 1e3,
                         "speedup": point["dense_s"] / point["sparse_s"]})
            timed.append(point)
        else:
            density = tuning.crossing([p["density"] for p in timed],
                                      [p["dense_s"] for p in timed],
                                      [p["sparse_s"] for p in timed])
            summary.append({"layer": layer["name"], "kind": kind,
                            "break_even_sparsity": round(1.0 - density, 4)})
    return {"rows": rows, "break_even": summary, "notes": notes}


def sweep_table(result: dict) -> str:
    from .report import table

    edge = {(b["layer"], b["kind"]): b["break_even_sparsity"] for b in result["break_even"]}
    body = [[r["layer"], r["kind"], f"{r['sparsity']:.2f}", f"{r['dense_ms']:.3f}",
             f"{r['sparse_ms']:.3f}", f"{r['speedup']:.2f}×"] for r in result["rows"]]
    lines = table(body, ["layer", "kind", "sparsity", "dense ms", "sparse ms", "sparse speed-up"])
    summary = table([[b["layer"], b["kind"], _edge_text(edge[(b["layer"], b["kind"])])]
                     for b in result["break_even"]], ["layer", "kind", "break-even sparsity"])
    return lines + "\n\n" + summary


def _edge_text(sparsity: float) -> str:
    if sparsity <= 0.0:
        return "0 (the sparse kernel is as fast even dense)"
    if sparsity >= 1.0:
        return "never (the dense kernel wins at every sparsity)"
    return f"{sparsity:.3f}"


def plot_sweep(result: dict, path) -> None:
    """Latency against sparsity, one panel per layer, dense and sparse kernels, f32 and i8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import save_figure

    layers = list(dict.fromkeys(r["layer"] for r in result["rows"]))
    cols = min(4, max(len(layers), 1))
    rows_n = -(-len(layers) // cols) if layers else 1
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.2 * rows_n), squeeze=False)
    for ax, layer in zip(axes.ravel(), layers):
        for kind, color in (("f32", "tab:blue"), ("i8", "tab:orange")):
            pts = [r for r in result["rows"] if r["layer"] == layer and r["kind"] == kind]
            if not pts:
                continue
            s = [p["sparsity"] for p in pts]
            ax.plot(s, [p["dense_ms"] for p in pts], "--", color=color, label=f"dense {kind}")
            ax.plot(s, [p["sparse_ms"] for p in pts], "-o", color=color, label=f"sparse {kind}")
        ax.set_title(layer[:40], fontsize=9)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("ms")
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(layers):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


__all__ = ["KINDS", "SPARSITIES", "layer_model", "model_layers", "parse_shape", "plot_sweep",
           "sweep", "sweep_table", "time_point"]
