"""Reductions over a list of axes (None = all axes), keeping reduced axes as size 1 if keepdims."""

from __future__ import annotations

import numpy as np

from ...errors import InputError


def _axes(x, axes, noop_with_empty_axes):
    """The reduced axes as a tuple of non-negative ints, or None for "return x unchanged"."""
    if axes is None or len(axes) == 0:
        return None if noop_with_empty_axes else tuple(range(np.ndim(x)))
    ndim = np.ndim(x)
    bad = [a for a in axes if not -ndim <= a < ndim]
    if bad:
        raise InputError(f"expected reduction axes in [{-ndim}, {ndim - 1}] for an input of shape "
                         f"{np.shape(x)}, got {list(axes)}")
    normalized = tuple(sorted({int(a) % ndim for a in axes}))
    if len(normalized) != len(axes):
        raise InputError(f"expected distinct reduction axes, got {list(axes)}")
    return normalized


def reduce_mean(x, *, axes=None, keepdims=1, noop_with_empty_axes=0):
    """y = mean of x over ``axes`` (all axes if None, unless noop_with_empty_axes: then y = x)."""
    reduced = _axes(x, axes, noop_with_empty_axes)
    if reduced is None:
        return np.asarray(x)
    return np.asarray(np.mean(x, axis=reduced, keepdims=bool(keepdims)))


def reduce_sum(x, *, axes=None, keepdims=1, noop_with_empty_axes=0):
    """y = Σ of x over ``axes`` (all axes if None, unless noop_with_empty_axes: then y = x)."""
    reduced = _axes(x, axes, noop_with_empty_axes)
    if reduced is None:
        return np.asarray(x)
    return np.asarray(np.sum(x, axis=reduced, keepdims=bool(keepdims)))


def reduce_max(x, *, axes=None, keepdims=1, noop_with_empty_axes=0):
    """y = max of x over ``axes`` (all axes if None, unless noop_with_empty_axes: then y = x).
    The max of an empty set is −inf, or the type's minimum for integers (as ONNX defines it)."""
    x = np.asarray(x)
    reduced = _axes(x, axes, noop_with_empty_axes)
    if reduced is None:
        return x
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min if x.dtype.kind in "iu" \
        else False
    return np.asarray(np.max(x, axis=reduced, keepdims=bool(keepdims), initial=lowest))
