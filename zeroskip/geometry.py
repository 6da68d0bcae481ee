"""Sliding-window geometry shared by Conv and the pools: pads and output sizes (NumPy-free).

Along one spatial axis of input length ``size``, with kernel ``k``, stride ``s``, dilation ``d``
and pads ``begin``/``end``, the window of output position ``o`` covers the padded positions
``o·s + j·d`` for j in [0, k), where padded position p is input position p − begin.

The reference ops, shape inference and the planner all resolve windows with ``geometry`` here,
so a conv's output size is decided in one place.
"""

from __future__ import annotations

from .errors import InputError

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _per_axis(values, count, default, name):
    if values is None:
        return [default] * count
    values = [int(v) for v in values]
    if len(values) != count:
        raise InputError(f"expected {count} {name} (one per spatial axis), got {values}")
    return values


def geometry(spatial, kernel, strides, dilations, pads, auto_pad, ceil_mode=0):
    """Resolve the padding and output size of every spatial axis.

    spatial — the input's spatial sizes; kernel — the window sizes (one per spatial axis)
    Returns (begins, ends, out): pads before and after each axis, and the output sizes.
    SAME_* pads so that out = ceil(size / s), the odd pad going to the end (UPPER) or the
    beginning (LOWER). With ceil_mode, out rounds up, but a last window that would start in the
    end padding is dropped (the rule onnxruntime and PyTorch share).
    """
    n = len(spatial)
    strides = _per_axis(strides, n, 1, "strides")
    dilations = _per_axis(dilations, n, 1, "dilations")
    if auto_pad not in AUTO_PADS:
        raise InputError(f"expected auto_pad in {AUTO_PADS}, got {auto_pad!r}")
    if any(s < 1 for s in strides) or any(d < 1 for d in dilations):
        raise InputError(f"expected strides and dilations >= 1, got {strides} and {dilations}")
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-size // s) for size, s in zip(spatial, strides)]
        totals = [max(0, (o - 1) * s + e - size)
                  for o, s, e, size in zip(out, strides, extents, spatial)]
        small = [t // 2 for t in totals]
        big = [t - t // 2 for t in totals]
        begins, ends = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    else:
        if auto_pad == "VALID" or pads is None:
            begins, ends = [0] * n, [0] * n
        else:
            pads = _per_axis(pads, 2 * n, 0, "pads")
            begins, ends = pads[:n], pads[n:]
        if any(p < 0 for p in begins + ends):
            raise InputError(f"expected pads >= 0, got {begins + ends}")
        out = []
        for size, s, e, b, f in zip(spatial, strides, extents, begins, ends):
            span = size + b + f - e
            if span < 0:
                raise InputError(f"expected a window extent ({e}) no larger than the padded input "
                                 f"({size + b + f}) along every spatial axis, got spatial size "
                                 f"{tuple(spatial)}, kernel {tuple(kernel)}")
            o = (-(-span // s) if ceil_mode else span // s) + 1
            if ceil_mode and (o - 1) * s >= size + b:
                o -= 1  # the last window would start inside the end padding
            out.append(o)
    return begins, ends, out


__all__ = ["AUTO_PADS", "geometry"]
