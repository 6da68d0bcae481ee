"""Conv and pool geometry of a node at an input shape: output size, padded plane, accumulator
pitch, pads. The window arithmetic itself is ``zeroskip.geometry``'s; here it is resolved per node
and cached, so repeated runs of a shape do no geometry."""

from __future__ import annotations

import functools

import numpy as np

from ...errors import InputError
from ...geometry import geometry
from ...model import Node


def conv_input(node: Node, x: np.ndarray, channels: int) -> np.ndarray:
    """x if it is (N, channels, H, W), else InputError naming the node (every 2-D conv step)."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise InputError(f"node {node.name!r} ({node.op}): expected input (N, {channels}, H, W), "
                         f"got shape {x.shape}")
    return x


def conv_geometry(node: Node, x_shape, kh: int, kw: int) -> dict:
    """A 2-D conv's output size (oh, ow), padded-plane size (hp, wp), accumulator pitch, strides,
    dilations and top/left pads for input ``x_shape``."""
    attrs = node.attrs
    key = (tuple(attrs["strides"] or (1, 1)), tuple(attrs["dilations"] or (1, 1)),
           None if attrs["pads"] is None else tuple(attrs["pads"]), attrs["auto_pad"],
           tuple(x_shape[2:]), kh, kw)
    try:
        return _conv_geometry_of(*key)
    except InputError as err:
        raise InputError(f"node {node.name!r} ({node.op}): {err}") from None


@functools.lru_cache(maxsize=1024)
def _conv_geometry_of(strides, dilations, pads, auto_pad, spatial, kh, kw) -> dict:
    begins, _, (oh, ow) = geometry(spatial, [kh, kw], list(strides), list(dilations),
                                   None if pads is None else list(pads), auto_pad)
    hp = (oh - 1) * strides[0] + (kh - 1) * dilations[0] + 1
    wp = (ow - 1) * strides[1] + (kw - 1) * dilations[1] + 1
    pitch = wp if strides == (1, 1) else ow
    return dict(oh=oh, ow=ow, hp=hp, wp=wp, pitch=pitch, sh=strides[0], sw=strides[1],
                dh=dilations[0], dw=dilations[1], pt=begins[0], pl=begins[1])


def pointwise_strides(node: Node, kh: int, kw: int) -> tuple | None:
    """(sh, sw) of a 1×1 conv of one group with no explicit pads, else None: its output is the
    input taken every sh-th row and sw-th column, and then a GEMM on each image's planar (C, H·W).
    No auto_pad mode pads a 1×1 window (ceil(H/s) outputs need at most H input rows)."""
    attrs = node.attrs
    if kh != 1 or kw != 1 or attrs["group"] != 1:
        return None
    if attrs["auto_pad"] in ("", "NOTSET") and any(attrs["pads"] or ()):
        return None
    strides = tuple(attrs["strides"] or (1, 1))
    return strides if len(strides) == 2 else None


def is_pointwise(node: Node, kh: int, kw: int) -> bool:
    """A 1×1 conv with stride 1, no pads and one group: y[b] (N, H·W) = W (N, C) @ x[b] (C, H·W),
    a GEMM on the planar input as it is."""
    return pointwise_strides(node, kh, kw) == (1, 1)


def phase_shape(g: dict, kh: int, kw: int) -> tuple:
    """(rows, Wq) of one input plane's padded phases, the sparse convs' workspace per plane
    (kernels/_planes.py, pad_phases): sh·sw phases of Hq = OH + (kh−1)·dh // sh rows and
    Wq = OW + (kw−1)·dw // sw columns (stride 1: the padded plane, hp × wp)."""
    hq = g["oh"] + (kh - 1) * g["dh"] // g["sh"]
    return g["sh"] * g["sw"] * hq, g["ow"] + (kw - 1) * g["dw"] // g["sw"]


class TapStarts:
    """A sparse conv's tap starts (kernels/_planes.tap_starts) for each input shape it has seen:
    where each nonzero's tap begins in the flat padded phases, computed once per shape at the first
    run of it, not on every call (236 K nonzeros, ResNet-18's 512→512 3×3 at 10 %: 0.1 ms)."""

    def __init__(self, indices: np.ndarray, c_group: int, kh: int, kw: int):
        self.indices, self.c_group, self.kh, self.kw = indices, c_group, kh, kw
        self._by_shape: dict = {}

    def __call__(self, g: dict) -> np.ndarray:
        rows, wq = phase_shape(g, self.kh, self.kw)
        key = (rows, wq, g["sh"], g["sw"], g["dh"], g["dw"])
        starts = self._by_shape.get(key)
        if starts is None:  # two threads may both compute it: the same array either way
            from ...kernels._planes import tap_starts  # Numba only once a sparse conv runs

            starts = self._by_shape[key] = tap_starts(
                self.indices, self.c_group, self.kh, self.kw, rows // (g["sh"] * g["sw"]), wq,
                g["sh"], g["sw"], g["dh"], g["dw"])
        return starts


def workspace_len(kh: int, kw: int, g: dict) -> int:
    """Per-channel accumulator length of the depthwise kernels' tile loop (``g`` from
    conv_geometry); the 3×3 depthwise kernel keeps its sums in registers and needs none."""
    return 0 if kh == kw == 3 else g["oh"] * g["pitch"]


def pool_geometry(node: Node, x_shape):
    """(kernel_shape, strides, dilations, begins, ends, out) of a 2-D pool at input ``x_shape``."""
    attrs = node.attrs
    kernel_shape = attrs["kernel_shape"]
    strides = attrs["strides"] or [1, 1]
    dilations = attrs["dilations"] or [1, 1]
    try:
        begins, ends, out = geometry(x_shape[2:], kernel_shape, strides, dilations, attrs["pads"],
                                     attrs["auto_pad"], attrs["ceil_mode"])
    except InputError as err:
        raise InputError(f"node {node.name!r} ({node.op}): {err}") from None
    return kernel_shape, strides, dilations, begins, ends, out


def max_pool(node: Node, kernel, x: np.ndarray) -> np.ndarray:
    """y = a max-pool kernel (float32 or 8-bit, same signature) on x (N, C, H, W), contiguous."""
    (kh, kw), (sh, sw), (dh, dw), (pt, pl), _, (oh, ow) = pool_geometry(node, x.shape)
    y = np.empty(x.shape[:2] + (oh, ow), x.dtype)
    kernel(x, y, kh, kw, sh, sw, dh, dw, pt, pl)
    return y
