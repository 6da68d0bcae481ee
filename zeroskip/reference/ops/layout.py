"""Layout and shape ops: moving, copying and describing elements without arithmetic on them."""

from __future__ import annotations

import math

import numpy as np

from ...budget import over_budget, show_bytes
from ...errors import InputError


def _axis(axis, ndim, what, inclusive=False):
    """``axis`` made non-negative; valid range [-ndim, ndim) (or [-ndim, ndim] if inclusive)."""
    high = ndim + 1 if inclusive else ndim
    if not -ndim <= axis < high:
        raise InputError(f"expected {what} in [{-ndim}, {high - 1}] for rank {ndim}, got {axis}")
    return axis + ndim if axis < 0 else axis


def flatten(x, *, axis=1):
    """y = x viewed as 2-D (prod(shape[:axis]), prod(shape[axis:])); axis in [−r, r]."""
    x = np.asarray(x)
    axis = _axis(axis, x.ndim, "Flatten axis", inclusive=True)
    rows, cols = math.prod(x.shape[:axis]), math.prod(x.shape[axis:])
    return x.reshape(rows, cols)


def reshape(x, shape, *, allowzero=0):
    """y = x with shape ``shape``: a 0 copies x's dimension (unless allowzero), −1 is inferred.

    shape [r] int64 — the target; at most one −1; the element count must match.
    """
    x = np.asarray(x)
    target = [int(d) for d in np.asarray(shape).reshape(-1)]
    given = f"cannot reshape shape {x.shape} ({x.size} elements) to {target}"
    if target.count(-1) > 1 or any(d < -1 for d in target):
        raise InputError(f"expected at most one -1 and no other negative dimension: {given}")
    if allowzero and 0 in target and -1 in target:
        raise InputError(f"expected no -1 together with 0 when allowzero=1: {given}")
    if not allowzero:
        for i, d in enumerate(target):
            if d == 0:
                if i >= x.ndim:
                    raise InputError(f"expected a 0 only where the input has a dimension to copy: "
                                     f"{given}")
                target[i] = x.shape[i]
    known = math.prod(d for d in target if d != -1)
    if -1 in target:
        if known == 0 or x.size % known:
            raise InputError(f"expected the known dimensions to divide the element count: {given}")
        target[target.index(-1)] = x.size // known
    elif known != x.size:
        raise InputError(f"expected the same element count: {given}")
    return x.reshape(target)


def transpose(x, *, perm=None):
    """y[i_perm[0], ..., i_perm[r-1]] = x[i_0, ..., i_{r-1}]: y's axis k is x's axis perm[k].

    perm None reverses the axes.
    """
    x = np.asarray(x)
    if perm is None:
        perm = list(range(x.ndim))[::-1]
    if sorted(int(p) for p in perm) != list(range(x.ndim)):
        raise InputError(f"expected perm to be a permutation of 0..{x.ndim - 1}, got {list(perm)}")
    return np.transpose(x, [int(p) for p in perm])


def concat(*xs, axis):
    """y = the inputs joined along ``axis``; every other dimension must agree."""
    if not xs:
        raise InputError("expected at least one input to Concat, got none")
    xs = [np.asarray(x) for x in xs]
    ndim = xs[0].ndim
    shapes = [x.shape for x in xs]
    if any(x.ndim != ndim for x in xs) or ndim == 0:
        raise InputError(f"expected inputs of one rank >= 1, got shapes {shapes}")
    axis = _axis(axis, ndim, "Concat axis")
    others = {s[:axis] + s[axis + 1:] for s in shapes}
    if len(others) != 1:
        raise InputError(f"expected all dimensions but axis {axis} to agree, got shapes {shapes}")
    return np.concatenate(xs, axis=axis)


def pad(x, *, mode="constant", pads, value=0.0):
    """y = x with pads[i] elements added before axis i and pads[r+i] after (negative: removed).

    mode — constant (fill ``value``), reflect (mirror, not repeating the edge) or edge (repeat it).
    """
    x = np.asarray(x)
    pads = [int(p) for p in pads]
    if len(pads) != 2 * x.ndim:
        raise InputError(f"expected {2 * x.ndim} pads (begins then ends) for shape {x.shape}, "
                         f"got {pads}")
    begins, ends = pads[:x.ndim], pads[x.ndim:]
    crop = tuple(slice(max(-b, 0), size - max(-e, 0)) for size, b, e in zip(x.shape, begins, ends))
    if any(c.start > c.stop for c in crop):
        raise InputError(f"expected negative pads to remove at most the whole axis, got pads "
                         f"{pads} for shape {x.shape}")
    x = x[crop]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=value)
    if mode == "reflect":
        short = [i for i, (b, e) in enumerate(widths) if max(b, e) > x.shape[i] - 1]
        if short:
            raise InputError(f"expected reflect pads smaller than the axis length, got pads {pads} "
                             f"for shape {x.shape}")
        return np.pad(x, widths, mode="reflect")
    if mode == "edge":
        empty = [i for i, (b, e) in enumerate(widths) if (b or e) and x.shape[i] == 0]
        if empty:
            raise InputError(f"expected non-empty axes to edge-pad, got shape {x.shape}")
        return np.pad(x, widths, mode="edge")
    raise InputError(f"expected Pad mode constant, reflect or edge, got {mode!r}")


def identity(x):
    """y = x."""
    return np.asarray(x)


def dropout(x):
    """y = x (inference: dropout does nothing)."""
    return np.asarray(x)


def shape(x, *, start=0, end=None):
    """y = x.shape[start:end] as int64 (slice rules: negatives count from the end, clamped)."""
    return np.array(np.shape(x)[start:end], dtype=np.int64)


def gather(data, indices, *, axis=0):
    """y[i_0..i_{a-1}, j..., i_{a+1}...] = data[i_0..i_{a-1}, indices[j...], i_{a+1}...].

    indices int64 in [−s, s) with s = data.shape[axis]; negatives count from the end.
    """
    data, indices = np.asarray(data), np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise InputError(f"expected integer indices, got dtype {indices.dtype}")
    axis = _axis(axis, data.ndim, "Gather axis")
    size = data.shape[axis]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise InputError(f"expected indices in [{-size}, {size - 1}] for axis {axis} of shape "
                         f"{data.shape}, got values from {indices.min()} to {indices.max()}")
    return np.asarray(np.take(data, np.where(indices < 0, indices + size, indices), axis=axis))


def unsqueeze(x, *, axes):
    """y = x with size-1 axes inserted at ``axes`` (positions in y; negatives from y's end)."""
    x = np.asarray(x)
    rank = x.ndim + len(axes)
    bad = [a for a in axes if not -rank <= a < rank]
    if bad:
        raise InputError(f"expected axes in [{-rank}, {rank - 1}] for output rank {rank}, got "
                         f"{list(axes)}")
    positions = sorted(int(a) % rank for a in axes)
    if len(set(positions)) != len(positions):
        raise InputError(f"expected distinct axes, got {list(axes)}")
    return x.reshape(_insert_ones(x.shape, positions))


def _insert_ones(shape, positions):
    dims = iter(shape)
    return tuple(1 if i in positions else next(dims) for i in range(len(shape) + len(positions)))


def squeeze(x, *, axes=None):
    """y = x without its size-1 axes: those in ``axes`` (each must have size 1), or all if None."""
    x = np.asarray(x)
    if axes is None:
        return x.reshape([d for d in x.shape if d != 1])
    bad = [a for a in axes if not -x.ndim <= a < x.ndim]
    if bad:
        raise InputError(f"expected axes in [{-x.ndim}, {x.ndim - 1}] for shape {x.shape}, got "
                         f"{list(axes)}")
    drop = {int(a) % x.ndim for a in axes}
    wide = [a for a in sorted(drop) if x.shape[a] != 1]
    if wide:
        raise InputError(f"expected size 1 on the squeezed axes {list(axes)}, got shape {x.shape}")
    return x.reshape([d for i, d in enumerate(x.shape) if i not in drop])


def cast(x, *, to):
    """y = x converted to dtype ``to``: float types as float64 holding values rounded to ``to``;
    integer types truncate floats toward zero; bool is x ≠ 0."""
    x = np.asarray(x)
    try:
        target = np.dtype(to)
    except TypeError:
        raise InputError(f"expected a numpy dtype name to cast to, got {to!r}") from None
    if target.kind == "f":
        return x.astype(target).astype(np.float64)
    if target.kind == "b":
        return x != 0
    if x.dtype.kind == "f":
        x = np.trunc(x)
    return x.astype(target)


def constant_of_shape(shape, *, value=0.0, dtype="float32"):
    """y[i...] = value for every index of a tensor of shape ``shape`` (float dtypes as float64).

    shape [r] int64 — the output's dimensions, each >= 0.
    """
    dims = [int(d) for d in np.asarray(shape).reshape(-1)]
    if any(d < 0 for d in dims):
        raise InputError(f"expected non-negative dimensions, got {dims}")
    try:
        target = np.dtype(dtype)
    except TypeError:
        raise InputError(f"expected a numpy dtype name, got {dtype!r}") from None
    nbytes = math.prod(dims) * (8 if target.kind == "f" else target.itemsize)
    budget = over_budget(nbytes)
    if budget is not None:  # a shape computed at run time: check before touching the memory
        raise InputError(f"a tensor of shape {tuple(dims)} needs {show_bytes(nbytes)}, more than "
                         f"the {show_bytes(budget)} available")
    if target.kind == "f":
        return np.full(dims, np.asarray(value, dtype=target), dtype=np.float64)
    return np.full(dims, value, dtype=target)
