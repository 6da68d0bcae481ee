"""What the float and the quantized ONNX importers share: the node on its way into the IR, the view of
an ONNX node their handlers read, and the attribute normalization of the conv-like ops.

``formats/onnx.py`` (the importer, float ops) and ``formats/onnx_quant.py`` (quantization ops and QDQ
fusion) both import this module; neither imports the other's private names, and ``onnx_quant`` does
not import ``onnx`` at all. The importer object the handlers reach as ``node.imp`` offers ``onnx``
(the onnx package), ``opset``, ``where`` (the file, for messages), ``consts`` (name -> constant
array), ``shape_of``, ``rank_of``, ``attr_value`` and ``fresh`` (an unused value name).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ops import OPS

DEFAULT_DOMAINS = ("", "ai.onnx")
"""The names of ONNX's default operator domain."""


@dataclass
class Pending:
    """A node on its way into the IR, with whatever stops it from getting there.

    ``op`` is an IR op of ``zeroskip.ops`` (None once the importer has folded the node away);
    ``issues`` lists (category, label) pairs, reported all at once by the importer.
    """

    name: str
    op: str | None
    inputs: list
    outputs: list
    attrs: dict
    issues: list  # (category, label)


def show(value) -> str:
    """A short text form of an attribute value for messages: lists inline (the first 8 entries),
    big tensors by shape, long strings cut, protos and the like by type."""
    if isinstance(value, (list, tuple)):
        more = f",... ({len(value)} entries)" if len(value) > 8 else ""
        return "[" + ",".join(show(v) for v in value[:8]) + more + "]"
    if isinstance(value, np.ndarray):
        return show(value.tolist()) if value.size <= 8 else f"<tensor {list(value.shape)}>"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value if len(value) <= 40 else value[:37] + "..."
    if value is None or isinstance(value, (int, np.integer, bool)):
        return str(value)
    return f"<{type(value).__name__}>"


class OnnxNode:
    """One ONNX node as the handlers see it: attributes decoded to Python, constant inputs looked up.

    Handlers pop the attributes they understand (``take``, ``take_ir``); whatever is left over is
    reported as unsupported. Problems go to ``issues`` rather than raising, so that one error can
    list them all.
    """

    def __init__(self, importer, proto, name):
        self.imp = importer
        self.op = proto.op_type
        self.name = name
        self.opset = importer.opset
        self.inputs = list(proto.input)
        self.outputs = list(proto.output)
        owner = f"node {name!r} ({proto.op_type})"
        self.attrs = {a.name: importer.attr_value(a, owner) for a in proto.attribute}
        self.issues = []

    def input(self, i) -> str:
        return self.inputs[i] if i < len(self.inputs) else ""

    def const(self, i):
        name = self.input(i)
        return self.imp.consts.get(name) if name else None

    def const_input(self, i, what):
        """The constant value of optional input ``i`` (None if absent); records an issue if computed."""
        name = self.input(i)
        if not name:
            return None
        value = self.imp.consts.get(name)
        if value is None:
            self.issues.append(("inputs", f"{self.op}.{what}"))
        return value

    def take(self, key, default=None):
        return self.attrs.pop(key, default)

    def take_ir(self, op) -> dict:
        """Pop every attribute the IR op has, as given (defaults are filled later)."""
        return {k: self.attrs.pop(k) for k in list(self.attrs) if k in OPS[op].attrs}

    def bad_attr(self, key, value):
        self.issues.append(("attributes", f"{self.op}.{key}={show(value)}"))

    def rank(self, i):
        shape = self.imp.shape_of(self.input(i))
        return None if shape is None else len(shape)


def conv_attrs(n: OnnxNode, w_name: str) -> dict:
    """The IR Conv attributes of a conv-like node (Conv, QLinearConv, ConvInteger), popped from ``n``.

    w_name — the node's weight input (input 1 of Conv and ConvInteger, input 3 of QLinearConv). A
    missing ``kernel_shape`` is filled in from the weight's static shape (N, C/g, kh, kw), which
    ONNX allows to imply it.
    """
    attrs = n.take_ir("Conv")
    if attrs.get("kernel_shape") is None:
        w = n.imp.consts.get(w_name) if w_name else None
        shape = list(w.shape) if w is not None else n.imp.shape_of(w_name)
        if shape is not None and len(shape) > 2 and all(isinstance(d, int) for d in shape):
            attrs["kernel_shape"] = [int(d) for d in shape[2:]]
    return attrs


__all__ = ["DEFAULT_DOMAINS", "OnnxNode", "Pending", "conv_attrs", "show"]
