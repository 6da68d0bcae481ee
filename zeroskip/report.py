"""Plain-text reports about a model: its summary and its weight table (``zeroskip inspect``, the demo)."""

from __future__ import annotations


def shape_text(shape) -> str:
    return "×".join("N" if d is None else str(d) for d in shape) if len(shape) else "scalar"


def size_text(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def table(rows: list[list[str]], header: list[str]) -> str:
    """Left-aligned text columns, numbers right-aligned, with a rule under the header."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(row):
        cells = []
        for i, cell in enumerate(row):
            text = str(cell)
            numeric = text[:1].isdigit() or text[:1] == "-" and text[1:2].isdigit()
            cells.append(text.rjust(widths[i]) if numeric and i else text.ljust(widths[i]))
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def weight_table(model) -> str:
    """The table ``zeroskip inspect`` prints: one row per weight, then a total."""
    rows, total_bytes, total_size, total_nnz = [], 0, 0, 0
    for r in model.weight_rows():
        tensor = model.graph.initializers[r["tensor"]]
        if tensor.dtype.kind not in "fiu" or len(r["shape"]) < 1 or r["op"] in (
                "Reshape", "Shape", "Gather", "Unsqueeze", "Squeeze", "ConstantOfShape"):
            continue  # shape arithmetic is not a weight
        dtype = r["dtype"] + ("+q" if r["quantized"] else "")
        rows.append([r["node"], r["op"], r["tensor"], shape_text(r["shape"]), r["layout"],
                     f"{r['density']:.3f}", dtype, str(r["nbytes"])])
        total_bytes += r["nbytes"]
        total_size += tensor.size
        total_nnz += tensor.nnz
    density = total_nnz / total_size if total_size else 1.0
    rows.append(["total", "", f"{len(rows)} tensors", f"{total_size} values", "", f"{density:.3f}",
                 "", str(total_bytes)])
    return table(rows, ["node", "op", "weight", "shape", "layout", "density", "dtype", "bytes"])


def summary(model) -> str:
    """A few lines about a model: its inputs, outputs, ops and weights."""
    graph = model.graph
    ops: dict[str, int] = {}
    for node in graph.nodes:
        ops[node.op] = ops.get(node.op, 0) + 1
    params = sum(t.size for t in graph.initializers.values() if t.dtype.kind == "f" or t.quant)
    nnz = sum(t.nnz for t in graph.initializers.values() if t.dtype.kind == "f" or t.quant)
    source = model.metadata.get("source", {})
    lines = [
        f"source:  {source.get('name') or source.get('path') or '?'} "
        f"({source.get('format', '?')}, opset {source.get('opset', '?')})",
        "inputs:  " + ", ".join(f"{v.name} {shape_text(v.shape)} {v.dtype}" for v in graph.inputs),
        "outputs: " + ", ".join(f"{v.name} {shape_text(v.shape)} {v.dtype}" for v in graph.outputs),
        f"nodes:   {len(graph.nodes)} (" + ", ".join(f"{op} {n}" for op, n in ops.items()) + ")",
        f"weights: {params} values, {nnz} nonzero ({nnz / max(params, 1):.1%} dense)",
    ]
    return "\n".join(lines)


def plan_table(rows: list[dict]) -> str:
    """The table of ``Session.explain()``: node, op, density, kernel, reason (and the batch class,
    when auto planned per batch)."""
    batched = any("batch" in r for r in rows)
    body = [([str(r["batch"])] if batched else []) +
            [r["node"], r["op"], "-" if r["density"] is None else f"{r['density']:.3f}",
             r["kernel"], r["reason"]] for r in rows]
    return table(body, (["batch"] if batched else []) + ["node", "op", "density", "kernel", "reason"])
