"""Shape inference: the shape and dtype of every value of a ``Graph``, walking its nodes in order.

A shape is a tuple with one entry per axis: an int, or None for a size only known at run time (the
batch dimension, usually); the shape itself is None when even the rank is unknown. Nothing merely
unknown is an error; a static inconsistency (conv channels, matmul K, broadcasting) raises
``ModelFormatError`` naming the node and the rule.

Inside, an unknown size may carry a *name* (a str such as ``"x:0"``, "axis 0 of input x"): two
sizes with the same name are equal. Small integer tensors also carry their *elements* when known,
so shape arithmetic works symbolically: Shape of x (N,16,4,4) is [x:0, 16, 4, 4]; Gather 0 of that
is [x:0]; Concat with [-1] gives [x:0, -1]; and Reshape of x by it gives (x:0, 256), since the x:0
on both sides cancels. Names become None in the result.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .errors import InputError, ModelFormatError
from .model import DTYPES, Graph, ValueInfo
from .ops import OPS, normalize_attrs
from .geometry import geometry

MAX_ELEMENTS = 64
"""Integer tensors up to this size have their elements tracked (shape arithmetic is tiny)."""

MAX_RANK = 64
"""The most axes a value may have (a hostile Reshape target could ask for billions); the bound
``zeroskip.ops`` puts on list attributes such as pads and perm, and the ONNX importer's."""


@dataclass(frozen=True)
class _Value:
    """What is known of one value: shape (entries int, name str or None; None = rank unknown),
    dtype name, and for small integer tensors their elements in row-major order (ints, names or
    None) when known."""

    shape: tuple | None
    dtype: str
    elements: tuple | None = None


class _Rule(Exception):
    """A broken rule; infer_shapes adds the node's name and op."""


def infer_shapes(graph: Graph) -> dict[str, ValueInfo]:
    """Shape and dtype of every value: graph inputs (as declared), initializers, node outputs."""
    return {name: ValueInfo(name, _public_shape(v.shape), v.dtype)
            for name, v in _infer(graph).items()}


def _infer(graph: Graph) -> dict[str, _Value]:
    """What is known of every value, its unknown sizes still named."""
    values: dict[str, _Value] = {}
    for vi in graph.inputs:
        shape = None if vi.shape is None else tuple(
            int(d) if isinstance(d, (int, np.integer)) else f"{vi.name}:{axis}"
            for axis, d in enumerate(vi.shape))
        values[vi.name] = _Value(shape, str(vi.dtype))
    for name, tensor in graph.initializers.items():
        values[name] = _initializer_value(tensor)
    for node in graph.nodes:
        inputs = [values.get(name) if name else None for name in node.inputs]
        where = f"node {node.name!r} ({node.op})"
        try:
            attrs = normalize_attrs(node.op, node.attrs)
        except KeyError as err:
            raise ModelFormatError(f"{where}: {err.args[0]}") from None
        infer = _RULES.get(node.op)
        if infer is None or any(v is None for v in inputs[:OPS[node.op].inputs[0]]):
            result = _Value(None, _first_dtype(inputs))
        else:
            try:
                result = infer(*inputs, **attrs)
            except _Rule as err:
                raise ModelFormatError(f"{where}: {err}") from None
        results = result if isinstance(result, tuple) else (result,) * len(node.outputs)
        for name, value in zip(node.outputs, results):
            values[name] = value
        _check_zero_points(where, attrs, inputs, results[0])
    return values


_ZERO_POINT_OF = {"x_zero_point": 0, "a_zero_point": 0, "b_zero_point": 1, "y_zero_point": None}
"""Whose integers a zero-point attribute belongs to: an input's (by position) or the output's."""


def _check_zero_points(where, attrs, inputs, output):
    """A zero point attribute lies in the range of the integer type it shifts (a kernel keeps
    it in that type's arithmetic)."""
    for key, position in _ZERO_POINT_OF.items():
        if key not in attrs:
            continue
        owner = output if position is None else (
            inputs[position] if position < len(inputs) else None)
        if owner is None or owner.dtype not in DTYPES or np.dtype(owner.dtype).kind not in "iu":
            continue
        info = np.iinfo(np.dtype(owner.dtype))
        if not info.min <= attrs[key] <= info.max:
            raise ModelFormatError(f"{where}: attribute {key} = {attrs[key]!r} is outside the "
                                   f"range of {owner.dtype} [{info.min}, {info.max}]")


def batch_coupling(graph: Graph) -> str | None:
    """Why the samples of a batch are not independent of each other, or None when they are.

    They are when every graph input has a dynamic first axis (its batch), every node keeps that
    batch on the first axis of what it computes from it, touching no other axis with it, and
    every graph output has it first. Then running a batch in chunks and concatenating the
    outputs gives the same result as one run: what ``Session.run`` does with a batch too large
    for memory. Decided from the shapes alone (their unknown sizes stay named), so a rule that
    cannot be proved counts as a coupling.
    """
    for vi in graph.inputs:
        if not vi.shape or vi.shape[0] is not None:
            return f"graph input {vi.name!r} has no dynamic first (batch) axis"
    batch = {f"{vi.name}:0" for vi in graph.inputs}
    values = _infer(graph)

    def batched(name):
        shape = values[name].shape if name else None
        return shape is not None and len(shape) > 0 and shape[0] in batch

    for node in graph.nodes:
        where = f"node {node.name!r} ({node.op})"
        fed = [name for name in node.inputs if batched(name)]
        if not fed:
            continue
        attrs = normalize_attrs(node.op, node.attrs)
        rank = len(values[fed[0]].shape)
        axes = [attrs["axis"]] if isinstance(attrs.get("axis"), int) else []
        axes += attrs["axes"] if isinstance(attrs.get("axes"), (list, tuple)) else []
        if any(a % rank == 0 for a in axes if -rank <= a < rank):
            return f"{where} works along the batch axis"
        if node.op == "Shape":
            continue  # its output is a shape, not samples
        for name in node.outputs:
            shape = values[name].shape
            if shape is None or not shape or shape[0] not in batch:
                return f"{where}: output {name!r} does not keep the batch first"
            if any(d in batch for d in shape[1:]):
                return f"{where}: output {name!r} has the batch on another axis too"
    for vi in graph.outputs:
        if not batched(vi.name):
            return f"graph output {vi.name!r} does not have the batch first"
    return None


def _initializer_value(tensor) -> _Value:
    shape = tuple(int(d) for d in tensor.shape)
    dtype = str(tensor.dtype)
    elements = None
    if tensor.quant is None and tensor.dtype.kind in "iu" and tensor.size <= MAX_ELEMENTS:
        elements = tuple(int(v) for v in np.asarray(tensor.to_numpy()).reshape(-1))
    return _Value(shape, dtype, elements)


def _public_shape(shape):
    return None if shape is None else tuple(d if isinstance(d, int) else None for d in shape)


def _first_dtype(inputs) -> str:
    return next((v.dtype for v in inputs if v is not None), "float32")


# -- dimension arithmetic ----------------------------------------------------------------------
def _known(d) -> bool:
    return isinstance(d, int)


def _product(dims):
    """Product of sizes: an int if all are known, else None."""
    return math.prod(dims) if all(_known(d) for d in dims) else None


def _fold(dims):
    """The size of ``dims`` flattened into one axis: their product, or the one unknown size
    among 1s (Flatten of (N,C,H,W) at axis 1 keeps the name of N)."""
    rest = [d for d in dims if d != 1]
    return rest[0] if len(rest) == 1 else _product(dims)


def _broadcast(*shapes):
    """numpy broadcasting of shapes whose sizes may be names or None."""
    if any(s is None for s in shapes):
        return None
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        dims = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        sizes = {d for d in dims if _known(d) and d != 1}
        if len(sizes) > 1:
            raise _Rule(f"shapes {' and '.join(str(_public_shape(s)) for s in shapes)} do not "
                        f"broadcast (axis {axis} has sizes {sorted(sizes)})")
        if sizes:
            out.append(sizes.pop())
            continue
        names = {d for d in dims if d != 1}
        out.append(1 if not names else names.pop() if len(names) == 1 else None)
    return tuple(out)


def _axis(axis, rank, what, inclusive=False):
    high = rank + 1 if inclusive else rank
    if not -rank <= axis < high:
        raise _Rule(f"{what} {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


# -- per-op rules ------------------------------------------------------------------------------
def _same(x, **attrs):
    """Elementwise on one tensor: shape and dtype unchanged."""
    return _Value(x.shape, x.dtype)


def _identity(x, **attrs):
    """A copy: shape, dtype and known elements unchanged."""
    return x


def _unknown_rank(x):
    return _Value(None, x.dtype)


def _elementwise(op):
    def rule(*xs, **attrs):
        shape = _broadcast(*(x.shape for x in xs))
        return _Value(shape, xs[0].dtype, _combine(op, xs, shape))
    return rule


def _pow(x, y):
    """Pow broadcasts like the other elementwise ops but keeps the base's dtype."""
    return _Value(_broadcast(x.shape, y.shape), x.dtype)


def _combine(op, xs, shape):
    """Known elements of an integer Add/Sub/Mul/Div of 0-d/1-d tensors (names become None)."""
    if op is None or shape is None or len(shape) > 1 or any(x.elements is None for x in xs):
        return None
    length = shape[0] if shape else 1
    if not _known(length):
        return None
    out = []
    for i in range(length):
        a, b = (x.elements[i if len(x.elements) > 1 else 0] for x in xs)
        if not (_known(a) and _known(b)) or (op == "div" and b == 0):
            out.append(None)
        elif op == "div":
            out.append(abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1))
        else:
            out.append({"add": a + b, "sub": a - b, "mul": a * b}[op])
    return tuple(out)


def _spatial(node_op, spatial, kernel, attrs, ceil_mode=0):
    """Output spatial sizes of a conv or pool (None where the input size is unknown)."""
    n = len(kernel)
    strides = attrs["strides"] or [1] * n
    dilations = attrs["dilations"] or [1] * n
    pads = attrs["pads"] or [0] * (2 * n)
    if len(strides) != n or len(dilations) != n or len(pads) != 2 * n:
        raise _Rule(f"strides {strides}, dilations {dilations} and pads {pads} must have "
                    f"{n}, {n} and {2 * n} entries (kernel {list(kernel)})")
    out = []
    for axis, size in enumerate(spatial):
        if not _known(size) or not _known(kernel[axis]):
            out.append(None)
            continue
        try:
            _, _, (o,) = geometry([size], [kernel[axis]], [strides[axis]], [dilations[axis]],
                                  [pads[axis], pads[n + axis]], attrs["auto_pad"], ceil_mode)
        except InputError as err:
            raise _Rule(f"{node_op} window does not fit: {err}") from None
        out.append(o)
    return tuple(out)


def _conv(x, w, b=None, **attrs):
    if x.shape is None:
        return _unknown_rank(x)
    if w.shape is None:
        return _Value((x.shape[0], None) + (None,) * (len(x.shape) - 2), x.dtype)
    if len(x.shape) < 3 or len(w.shape) != len(x.shape):
        raise _Rule(f"x {_public_shape(x.shape)} and w {w.shape} must have the same rank >= 3")
    group = attrs["group"]
    channels, m_out, c_group = x.shape[1], w.shape[0], w.shape[1]
    if _known(channels) and _known(c_group) and channels != group * c_group:
        raise _Rule(f"input channels C = {channels} must equal group ({group}) × the weight's "
                    f"C/group ({c_group}); weight shape {w.shape}")
    if _known(m_out) and m_out % group:
        raise _Rule(f"output channels M = {m_out} must be divisible by group = {group}")
    kernel = list(w.shape[2:])
    if attrs["kernel_shape"] is not None and list(attrs["kernel_shape"]) != kernel:
        raise _Rule(f"kernel_shape {attrs['kernel_shape']} differs from the weight's {kernel}")
    return _Value((x.shape[0], m_out) + _spatial("Conv", x.shape[2:], kernel, attrs), x.dtype)


def _pool(x, **attrs):
    if x.shape is None:
        return _unknown_rank(x)
    if attrs["kernel_shape"] is None:
        raise _Rule("kernel_shape is required")
    kernel = list(attrs["kernel_shape"])
    if len(x.shape) != len(kernel) + 2:
        raise _Rule(f"input {_public_shape(x.shape)} must have {len(kernel)} spatial axes "
                    f"(kernel_shape {kernel})")
    spatial = _spatial("pool", x.shape[2:], kernel, attrs, attrs["ceil_mode"])
    return _Value(tuple(x.shape[:2]) + spatial, x.dtype)


def _global_pool(x, **attrs):
    if x.shape is None:
        return _unknown_rank(x)
    if len(x.shape) < 3:
        raise _Rule(f"input {_public_shape(x.shape)} must be [N,C,*spatial]")
    return _Value(tuple(x.shape[:2]) + (1,) * (len(x.shape) - 2), x.dtype)


def _gemm(a, b, c=None, *, alpha, beta, transA, transB):  # noqa: N803 - ONNX names
    if a.shape is None or b.shape is None:
        return _Value((None, None), a.dtype)
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise _Rule(f"A {_public_shape(a.shape)} and B {_public_shape(b.shape)} must be 2-D")
    (m, ka), (kb, n) = a.shape[::-1] if transA else a.shape, b.shape[::-1] if transB else b.shape
    if _known(ka) and _known(kb) and ka != kb:
        raise _Rule(f"K of A ({ka}, transA={transA}) must equal K of B ({kb}, transB={transB})")
    if c is not None and c.shape is not None:
        out = _broadcast((m, n), c.shape)
        if len(c.shape) > 2 or any(_known(o) and _known(d) and o != d
                                   for o, d in zip(out, (m, n))):
            raise _Rule(f"C {_public_shape(c.shape)} must broadcast to ({m}, {n})")
    return _Value((m, n), a.dtype)


def _matmul(a, b, **attrs):
    if a.shape is None or b.shape is None:
        return _unknown_rank(a)
    if not a.shape or not b.shape:
        raise _Rule("MatMul operands must have rank >= 1")
    sa = (1,) + a.shape if len(a.shape) == 1 else a.shape
    sb = b.shape + (1,) if len(b.shape) == 1 else b.shape
    ka, kb = sa[-1], sb[-2]
    if _known(ka) and _known(kb) and ka != kb:
        raise _Rule(f"K of a {_public_shape(a.shape)} ({ka}) must equal K of b "
                    f"{_public_shape(b.shape)} ({kb})")
    shape = _broadcast(sa[:-2], sb[:-2])
    shape += (() if len(a.shape) == 1 else (sa[-2],)) + (() if len(b.shape) == 1 else (sb[-1],))
    return _Value(shape, a.dtype)


def _reduce(x, *, axes, keepdims, noop_with_empty_axes):
    if x.shape is None:
        return _unknown_rank(x)
    rank = len(x.shape)
    if not axes:
        if noop_with_empty_axes:
            return x
        axes = range(rank)
    reduced = {_axis(a, rank, "reduction axis") for a in axes}
    if keepdims:
        return _Value(tuple(1 if i in reduced else d for i, d in enumerate(x.shape)), x.dtype)
    return _Value(tuple(d for i, d in enumerate(x.shape) if i not in reduced), x.dtype)


def _batch_norm(x, scale, bias, mean, var, **attrs):
    if x.shape is not None and len(x.shape) >= 2 and _known(x.shape[1]):
        for name, p in (("scale", scale), ("bias", bias), ("mean", mean), ("var", var)):
            if p.shape is not None and p.shape != (x.shape[1],):
                raise _Rule(f"{name} shape {_public_shape(p.shape)} must be ({x.shape[1]},) for "
                            f"{x.shape[1]} channels")
    return _Value(x.shape, x.dtype)


def _flatten(x, *, axis):
    if x.shape is None:
        return _Value((None, None), x.dtype)
    axis = _axis(axis, len(x.shape), "Flatten axis", inclusive=True)
    return _Value((_fold(x.shape[:axis]), _fold(x.shape[axis:])), x.dtype)


def _reshape(x, target, *, allowzero):
    if target.shape is not None and len(target.shape) != 1:
        raise _Rule(f"the target shape must be 1-D, got shape {_public_shape(target.shape)}")
    if target.elements is None:
        rank = target.shape[0] if target.shape is not None else None
        if _known(rank) and rank > MAX_RANK:
            raise _Rule(f"the target shape has {rank} entries: at most {MAX_RANK} axes")
        return _Value((None,) * rank if _known(rank) else None, x.dtype)
    dims = list(target.elements)
    if dims.count(-1) > 1:
        raise _Rule(f"the target shape {dims} has more than one -1")
    for i, d in enumerate(dims):
        if d == 0 and not allowzero:
            if x.shape is None:
                dims[i] = None
            elif i >= len(x.shape):
                raise _Rule(f"target {dims} copies axis {i} (a 0) that input "
                            f"{_public_shape(x.shape)} does not have")
            else:
                dims[i] = x.shape[i]
    if -1 in dims:
        dims[dims.index(-1)] = _inferred_dim(x.shape, [d for d in dims if d != -1])
    elif x.shape is not None and _known(_product(dims)) and _known(_product(x.shape)) \
            and _product(dims) != _product(x.shape):
        raise _Rule(f"cannot reshape {x.shape} ({_product(x.shape)} elements) to {dims}")
    return _Value(tuple(dims), x.dtype, x.elements)


def _inferred_dim(shape, others):
    """The size a -1 stands for: prod(shape) / prod(others), names cancelling (None: unknowable)."""
    if shape is None or None in shape or None in others:
        return None
    names = Counter(d for d in shape if not _known(d))
    names.subtract(Counter(d for d in others if not _known(d)))
    left = [name for name, count in names.items() for _ in range(count) if count > 0]
    if any(count < 0 for count in names.values()) or len(left) > 1:
        return None
    numerator = math.prod(d for d in shape if _known(d))
    denominator = math.prod(d for d in others if _known(d))
    if denominator == 0 or numerator % denominator:
        if left:
            return None  # the dynamic dimension may make it divide at run time
        raise _Rule(f"cannot reshape {_public_shape(shape)} to {list(others)} plus a -1: "
                    f"{numerator} elements are not divisible by {denominator}")
    quotient = numerator // denominator
    if left:
        return left[0] if quotient == 1 else None
    return quotient


def _transpose(x, *, perm):
    if x.shape is None:
        return _unknown_rank(x)
    perm = list(range(len(x.shape)))[::-1] if perm is None else list(perm)
    if sorted(perm) != list(range(len(x.shape))):
        raise _Rule(f"perm {perm} is not a permutation of the {len(x.shape)} axes")
    return _Value(tuple(x.shape[p] for p in perm), x.dtype)


def _concat(*xs, axis):
    shapes = [x.shape for x in xs]
    if any(s is None for s in shapes):
        return _Value(None, xs[0].dtype)
    rank = len(shapes[0])
    if any(len(s) != rank for s in shapes) or rank == 0:
        raise _Rule(f"inputs must have one rank >= 1, got shapes "
                    f"{[_public_shape(s) for s in shapes]}")
    axis = _axis(axis, rank, "Concat axis")
    out = []
    for i in range(rank):
        dims = [s[i] for s in shapes]
        if i == axis:
            out.append(sum(dims) if all(_known(d) for d in dims) else None)
            continue
        sizes = {d for d in dims if _known(d)}
        if len(sizes) > 1:
            raise _Rule(f"axis {i} differs between inputs: {[_public_shape(s) for s in shapes]}")
        out.append(sizes.pop() if sizes else dims[0] if len(set(dims)) == 1 else None)
    elements = None
    if rank == 1 and all(x.elements is not None for x in xs) and \
            sum(len(x.elements) for x in xs) <= MAX_ELEMENTS:  # (a chain of Concats doubles them)
        elements = tuple(e for x in xs for e in x.elements)
    return _Value(tuple(out), xs[0].dtype, elements)


def _pad(x, *, mode, pads, value):
    if x.shape is None:
        return _unknown_rank(x)
    rank = len(x.shape)
    if len(pads) != 2 * rank:
        raise _Rule(f"pads {list(pads)} must have {2 * rank} entries for rank {rank}")
    dims = tuple(d + pads[i] + pads[rank + i] if _known(d) else None
                 for i, d in enumerate(x.shape))
    if any(d is not None and d < 0 for d in dims):
        raise _Rule(f"pads {list(pads)} crop {_public_shape(x.shape)} to a negative size")
    return _Value(dims, x.dtype)


def _shape(x, *, start, end):
    if x.shape is None:
        return _Value((None,), "int64")
    dims = x.shape[start:end]
    return _Value((len(dims),), "int64", tuple(dims))


def _gather(data, indices, *, axis):
    if data.shape is None or indices.shape is None:
        return _Value(None, data.dtype)
    axis = _axis(axis, len(data.shape), "Gather axis")
    shape = data.shape[:axis] + indices.shape + data.shape[axis + 1:]
    elements = None
    if len(data.shape) == 1 and data.elements is not None and indices.elements is not None:
        size = len(data.elements)
        bad = [i for i in indices.elements if _known(i) and not -size <= i < size]
        if bad:
            raise _Rule(f"index {bad[0]} is out of range for a gather from {size} elements")
        elements = tuple(data.elements[i] if _known(i) else None for i in indices.elements)
    return _Value(shape, data.dtype, elements)


def _unsqueeze(x, *, axes):
    if x.shape is None:
        return _unknown_rank(x)
    rank = len(x.shape) + len(axes)
    positions = {_axis(a, rank, "Unsqueeze axis") for a in axes}
    if len(positions) != len(axes):
        raise _Rule(f"Unsqueeze axes {list(axes)} repeat an axis")
    dims = iter(x.shape)
    return _Value(tuple(1 if i in positions else next(dims) for i in range(rank)), x.dtype,
                  x.elements)


def _squeeze(x, *, axes):
    if x.shape is None:
        return _unknown_rank(x)
    if axes is None:
        if any(not _known(d) for d in x.shape):
            return _Value(None, x.dtype, x.elements)
        return _Value(tuple(d for d in x.shape if d != 1), x.dtype, x.elements)
    drop = {_axis(a, len(x.shape), "Squeeze axis") for a in axes}
    wide = [a for a in sorted(drop) if _known(x.shape[a]) and x.shape[a] != 1]
    if wide:
        raise _Rule(f"cannot squeeze axis {wide[0]} of shape {_public_shape(x.shape)}: "
                    f"its size is not 1")
    return _Value(tuple(d for i, d in enumerate(x.shape) if i not in drop), x.dtype, x.elements)


def _dtype(name) -> np.dtype:
    if name not in DTYPES:
        raise _Rule(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    return np.dtype(name)


def _cast(x, *, to):
    keeps = _dtype(to).kind in "iu" and x.dtype.startswith("int")
    return _Value(x.shape, str(np.dtype(to)), x.elements if keeps else None)


def _constant_of_shape(target, *, value, dtype):
    _dtype(dtype)
    if target.elements is None:
        length = target.shape[0] if target.shape else None
        return _Value((None,) * length if _known(length) else None, str(np.dtype(dtype)))
    shape = tuple(target.elements)
    elements = None
    if np.dtype(dtype).kind in "iu" and len(shape) == 1 and _known(shape[0]) \
            and shape[0] <= MAX_ELEMENTS:
        elements = (int(value),) * shape[0]
    return _Value(shape, str(np.dtype(dtype)), elements)


# -- quantized ops: the float op's shape, the output dtype y_dtype ----------------------------------
def _quantized(rule):
    """The rule of the float twin, with the output dtype given by the y_dtype attribute."""
    def quantized_rule(*xs, y_dtype, **attrs):
        if y_dtype not in ("uint8", "int8"):
            raise _Rule(f"y_dtype {y_dtype!r} must be uint8 or int8")
        known = {k: v for k, v in attrs.items() if k in _FLOAT_ATTRS}
        return _Value(rule(*xs, **known).shape, y_dtype)
    return quantized_rule


_FLOAT_ATTRS = frozenset(set(OPS["Conv"].attrs) | set(OPS["AveragePool"].attrs))
"""The attributes the float rules of the quantized ops read (x_*/y_*/clip_* are dropped)."""


def _qgemm(x, w, b=None, **attrs):
    return _gemm(x, w, b, alpha=1.0, beta=1.0, transA=0, transB=1)


def _dequantize(x, **attrs):
    return _Value(x.shape, "float32")


def _dynamic_quantize(x):
    """(y uint8 shaped as x, y_scale float32 scalar, y_zero_point uint8 scalar)."""
    return _Value(x.shape, "uint8"), _Value((), "float32"), _Value((), "uint8")


def _integer(rule):
    """MatMulInteger / ConvInteger: the float op's shape, int32 out, 8-bit inputs."""
    def integer_rule(a, b, a_zero_point=None, b_zero_point=None, **attrs):
        for what, v in (("A", a), ("B", b)):
            if v.dtype not in ("uint8", "int8"):
                raise _Rule(f"input {what} must be uint8 or int8, got {v.dtype}")
        return _Value(rule(a, b, **attrs).shape, "int32")
    return integer_rule


_RULES = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _elementwise("add"),
    "Sub": _elementwise("sub"),
    "Mul": _elementwise("mul"),
    "Div": _elementwise("div"),
    "Sum": _elementwise(None),
    "Pow": _pow,
    "Sqrt": _same,
    "Exp": _same,
    "Relu": _same,
    "Clip": _same,
    "LeakyRelu": _same,
    "Sigmoid": _same,
    "Tanh": _same,
    "Softmax": _same,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool,
    "ReduceMean": _reduce,
    "ReduceSum": _reduce,
    "ReduceMax": _reduce,
    "BatchNormalization": _batch_norm,
    "LRN": _same,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Concat": _concat,
    "Pad": _pad,
    "Identity": _identity,
    "Dropout": _identity,
    "Shape": _shape,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Cast": _cast,
    "ConstantOfShape": _constant_of_shape,
    "QuantizeLinear": _quantized(_same),
    "DequantizeLinear": _dequantize,
    "QGemm": _quantized(_qgemm),
    "QConv": _quantized(_conv),
    "QAdd": _quantized(_elementwise(None)),
    "QMaxPool": _pool,
    "QAveragePool": _quantized(_pool),
    "QGlobalAveragePool": _quantized(_global_pool),
    "DynamicQuantizeLinear": _dynamic_quantize,
    "MatMulInteger": _integer(_matmul),
    "ConvInteger": _integer(_conv),
}
"""Op name -> rule(*input values, **normalized attrs) -> output value."""

# -- multiply-accumulates ---------------------------------------------------------------------------
MAC_OPS = {"Conv": 1, "QConv": 1, "ConvInteger": 1,  # op -> the output axis that counts channels
           "Gemm": -1, "QGemm": -1, "MatMul": -1, "MatMulInteger": -1}
"""Ops whose multiply-accumulates are counted, and the axis of their output that holds N."""


def layer_macs(op: str, weight_size: int, out_shape, density: float | None):
    """(effective, useful) multiply-accumulates of a weighted step with output ``out_shape``:
    every output element takes K = weight_size / N of them, N the output's channel axis."""
    axis = MAC_OPS.get(op)
    if axis is None or not out_shape or weight_size == 0:
        return None, None
    n_out = out_shape[axis]
    if n_out == 0:
        return 0.0, 0.0
    effective = float(np.prod(out_shape, dtype=np.float64)) * weight_size / n_out
    return effective, effective * (1.0 if density is None else density)


__all__ = ["MAC_OPS", "batch_coupling", "infer_shapes", "layer_macs"]
