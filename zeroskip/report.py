"""Plain-text reports about a model: its summary and its weight table (``zeroskip inspect``, the demo)."""

from __future__ import annotations


def shape_text(shape) -> str:
    return "×".join("N" if d is None else str(d) for d in shape) if len(shape) else "scalar"


def size_text(nbytes: int) -> str:
    """1536 -> '1.5 KiB' (``budget.show_bytes``, the one byte formatter)."""
    from .budget import show_bytes

    return show_bytes(int(nbytes))


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


def atomic_write(path, write, binary: bool = True) -> None:
    """Write ``path`` atomically: ``write(file)`` into a temporary file beside it, which then
    replaces ``path`` with the permissions a plain write would give (an existing file's own, else
    0o666 less the umask). On any failure ``path`` is left as it was; a process killed before the
    rename leaves its temporary file (``zeroskip.save`` cleans up after killed saves of models,
    which are large; reports and plots are not)."""
    import os
    import tempfile

    from .formats.zsk import file_mode

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(str(path))}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_figure(fig, path, dpi: int = 100) -> None:
    """Write a matplotlib figure as PNG atomically (``atomic_write``), and close it."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        plt.close(fig)


def compression_rows(before, after) -> list[dict]:
    """One row per weight layer of the compressed model ``after``: its sparsity, stored form and
    bytes, the bytes of the same node's weight in ``before`` (None for a node it did not have),
    and the SQNR the quantizer measured (None when not quantized)."""
    old = {n.name: n for n in before.graph.nodes}
    sqnr = {r["node"]: r["sqnr_db"] for r in after.metadata.get("quantization", {}).get("layers", [])}
    rows = []
    for node in after.graph.nodes:
        if node.op not in ("Conv", "Gemm", "MatMul", "QConv", "QGemm") or len(node.inputs) < 2:
            continue
        w = after.graph.initializers.get(node.inputs[1])
        if w is None:
            continue
        source = old.get(node.name)
        w0 = None if source is None or len(source.inputs) < 2 else \
            before.graph.initializers.get(source.inputs[1])
        rows.append({"node": node.name, "op": node.op, "shape": list(w.shape),
                     "sparsity": 1.0 - w.density, "stored": w.layout, "dtype": str(w.dtype),
                     "bytes_before": None if w0 is None else w0.nbytes, "bytes_after": w.nbytes,
                     "sqnr_db": sqnr.get(node.name)})
    return rows


def compression_table(rows: list[dict]) -> str:
    """The table ``zeroskip convert`` prints after compressing, with a total."""
    lines = []
    for r in rows:
        lines.append([r["node"], r["op"], shape_text(r["shape"]), f"{r['sparsity'] * 100:.1f} %",
                      f"{r['stored']} {r['dtype']}",
                      "-" if r["bytes_before"] is None else size_text(r["bytes_before"]),
                      size_text(r["bytes_after"]),
                      "-" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"])
    before = sum(r["bytes_before"] or 0 for r in rows)
    after = sum(r["bytes_after"] for r in rows)
    lines.append(["total", "", f"{len(rows)} layers", "", "", size_text(before), size_text(after),
                  ""])
    return table(lines, ["node", "op", "shape", "sparsity", "stored", "before", "after",
                         "SQNR dB"])


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
