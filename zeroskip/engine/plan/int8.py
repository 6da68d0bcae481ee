"""Family ``int8``, part 1: QGemm and QConv on the integer kernels — int8 weights prepacked once,
int32 accumulation, Q31 requantization (docs/quantization.md).

The accumulators (``DenseGemm``/``CsrGemm``, ``DepthwiseConv``/``CsrConv``/``Im2rowConv``) are
shared with the ONNX integer ops (onnx_integer.py), which keep the int32 result instead of
requantizing it. Each is chosen once, at plan time, by ``gemm_accumulator``/``conv_accumulator``.
Every accumulator requantizes in its kernel's epilogue when the op asks (``requantizes``: QGemm and
QConv do, the integer ops do not, and keep the int32 sums).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ... import quantmath
from ...errors import InputError, UnsupportedModelError
from ...model import Node
from .context import Choice, PlanContext
from .geometry import (TapStarts, conv_geometry, conv_input, is_pointwise, phase_shape,
                       workspace_len)
from .registry import builds
from .launch import pick, placeholder
from .steps import PreparedCalls, Scratch, Step, aligned_copy, aligned_empty
from .weights import csr_triple, quad_blocks

Q8_TYPES = {"uint8": np.uint8, "int8": np.int8}


def check_q8(node: Node, x: np.ndarray) -> None:
    """InputError naming the node unless ``x`` is uint8 or int8 (what the int8 kernels take)."""
    if x.dtype not in (np.uint8, np.int8):
        raise InputError(f"node {node.name!r} ({node.op}): expected a uint8 or int8 input, got "
                         f"{x.dtype}")


# -- GEMM: acc (N,M) int32 = bias'[n] + Σ_k w[n,k]·x[m,k] ------------------------------------------
class GemmAccumulator:
    """What both int8 GEMM accumulators share. ``gemm(x, bias, acc)`` writes the int32 sums (the
    integer ops keep them); built with ``requantizes``, ``gemm.requantized(x, q, yt)`` writes the
    layer's 8-bit output, requantized in the GEMM's epilogue (QGemm), and its name and reason say
    so."""

    name = reason = ""

    def __init__(self, w2: np.ndarray):
        self.n_out, self.k_in = w2.shape
        self.scratch = Scratch()

    def requantized(self, x: np.ndarray, q: dict, yt: np.ndarray) -> None:
        """x (M,K) 8-bit, yt (N,M) 8-bit (overwritten), q the layer's ``layer_quant``."""
        raise NotImplementedError("an accumulator built with requantizes overrides this")

    def contiguous(self, a: np.ndarray, key: str) -> np.ndarray:
        """The 8-bit matrix a (R, S) C-contiguous, as the kernels read it: a itself; when a is the
        transpose of a C-contiguous (S, R) matrix (x rows for the CSR GEMM, or the GEMM before's
        (K, M) output for the dense one), transposed by a kernel into the scratch array ``key``
        (channels_last_dense_i8 on that matrix as one image of S channels of R×1 pixels, the
        accumulator's ``transpose``), so that a recorded run replays it (engine/replay.py: a NumPy
        copy made during the run kept the MLP's fc2 from replaying on AVX2); else a NumPy copy."""
        if a.flags.c_contiguous:
            return a
        at = a.T
        if not at.flags.c_contiguous:
            return np.ascontiguousarray(a)
        r, c = a.shape
        out = self.scratch.get(key, (r, c), a.dtype)
        self.transpose(at.reshape(1, c, r, 1), out.reshape(1, r, 1, c))
        return out


class DenseGemm(GemmAccumulator):
    """The dense int8 GEMM of a layer: w (N,K) int8 in [−128, 127], prepacked once."""

    name = "matmul_dense_i8"
    reason = "dense int8 weights, int32 accumulation"

    def __init__(self, w2: np.ndarray, ctx: PlanContext, requantizes: bool = False):
        super().__init__(w2)
        self.w = aligned_copy(np.asarray(w2))
        self.w_sums = weight_sums(self.w)
        self.w_pad = amx_padded(self.w)
        self.kernel = ctx.kernel("matmul_dense_i8")
        self.transpose = ctx.kernel("channels_last_dense_i8")
        if requantizes:  # the int32 sums requantized in the GEMM's epilogue, never stored
            self.name = "matmul_dense_rq_i8"
            self.reason += ", Q31 requantization in the GEMM's epilogue"
            self.rq_kernel = ctx.kernel("matmul_dense_rq_i8")
            # a GEMM's input that is the transpose of the GEMM before's (N, M) output goes to
            # the planar GEMM as that (K, M) matrix, where a tile packs it: no copy to rows
            self.planar_kernel = ctx.kernel("matmul_planar_rq_i8") \
                if planar_gemm_fits(self.k_in) else None

    def __call__(self, x: np.ndarray, bias: np.ndarray, acc: np.ndarray) -> None:
        """x (M,K) 8-bit, bias (N,) int32, acc (N,M) int32 (overwritten)."""
        self.kernel(self.contiguous(x, "rows"), self.w, bias, acc, self.w_pad)

    def requantized(self, x: np.ndarray, q: dict, yt: np.ndarray) -> None:
        if self.planar_kernel is not None and not x.flags.c_contiguous and x.T.flags.c_contiguous:
            self.planar_kernel(x.T, self.w, q["bias"], q["m0"], q["shift"], q["y_zp"], q["lo"],
                               q["hi"], yt, None, self.w_sums, self.w_pad)
            return
        self.rq_kernel(self.contiguous(x, "rows"), self.w, q["bias"], q["m0"], q["shift"],
                       q["y_zp"], q["lo"], q["hi"], yt, None, self.w_sums, self.w_pad)


class CsrGemm(GemmAccumulator):
    """The CSR int8 GEMM of a layer: the nonzeros of w (N,K) int8, prepacked once."""

    name = "matmul_csr_i8"

    def __init__(self, w2: np.ndarray, ctx: PlanContext, requantizes: bool = False):
        super().__init__(w2)
        self.csr = csr_triple(w2)
        self.kernel = ctx.kernel("matmul_csr_i8")
        self.transpose = ctx.kernel("channels_last_dense_i8")
        self.reason = f"int8 CSR weights ({len(self.csr[2])} nonzeros), int32 accumulation"
        if requantizes:  # the int32 sums requantized from L1, never stored
            self.name = "matmul_csr_rq_i8"
            self.reason += ", Q31 requantization in the epilogue"
            self.rq_kernel = ctx.kernel("matmul_csr_rq_i8")

    def __call__(self, x: np.ndarray, bias: np.ndarray, acc: np.ndarray) -> None:
        """x (M,K) 8-bit, bias (N,) int32, acc (N,M) int32 (overwritten)."""
        self.kernel(*self.csr, bias, self.contiguous(x.T, "xt"), acc)

    def requantized(self, x: np.ndarray, q: dict, yt: np.ndarray) -> None:
        self.rq_kernel(*self.csr, q["bias"], self.contiguous(x.T, "xt"), q["m0"], q["shift"],
                       q["y_zp"], q["lo"], q["hi"], yt)


def gemm_accumulator(w2: np.ndarray, csr: bool, ctx: PlanContext, requantizes: bool = False):
    """CSR or dense; ``requantizes``: the GEMM requantizes in its epilogue (``requantized``)."""
    return CsrGemm(w2, ctx, requantizes) if csr else DenseGemm(w2, ctx, requantizes)


# -- conv: acc (B,N,OH,OW) int32 = bias'[n] + Σ w·x, pads at the input zero point ------------------
class ConvAccumulator:
    """What every int8 conv accumulator shares: the layer's shape, the input check, the scratch.

    ``acc = conv(x, x_zp, bias)`` returns a scratch array, valid until the next call on this thread,
    for x (B,C,H,W) 8-bit (from ``check_input``), its zero point, and bias (N,) int32: the int32
    sums the integer ops keep. Built with ``requantizes``, ``conv.requantized(x, q)`` returns the
    layer's 8-bit output, requantized in the kernel's epilogue (QConv), and its name and reason say
    so: each subclass's ``prepare_requantized`` resolves, once per input shape, what that takes.
    """

    name = reason = ""
    takes_residual = False
    """Whether ``requantized`` can add a residual in its kernel's epilogue."""

    def __init__(self, node: Node, w4: np.ndarray):
        """w4 (N, C/group, kh, kw) int8."""
        self.node = node
        self.n_out, self.c_group, self.kh, self.kw = w4.shape
        self.group = node.attrs["group"]
        self.channels = self.group * self.c_group
        self.scratch = Scratch()
        self.prepared = PreparedCalls(self._checked_prepare)

    def check_input(self, x: np.ndarray) -> np.ndarray:
        check_q8(self.node, x)
        return np.ascontiguousarray(conv_input(self.node, x, self.channels))

    def __call__(self, x: np.ndarray, x_zp: int, bias: np.ndarray) -> np.ndarray:
        g, geo = self.geometry(x.shape)
        acc = self.scratch.get("acc", (x.shape[0], self.n_out, g["oh"], g["ow"]), np.int32)
        self.accumulate(x, x_zp, bias, acc, g, geo)
        return acc

    def requantized(self, x: np.ndarray, q: dict, residual: tuple | None = None) -> np.ndarray:
        """The layer's 8-bit output (B,N,OH,OW) for x, q the layer's ``layer_quant`` (the same at
        every call). x's type and shape are checked (``check_input``) when its call is prepared,
        once per shape. ``residual`` (where ``takes_residual``): (r, the QAdd's parameters from
        ``residual_arithmetic``), r an 8-bit C-contiguous array of the output's shape
        (``output_shape``), added to the output in the kernel's epilogue."""
        return self.prepared.get(x, q)[0](np.ascontiguousarray(x), residual)

    def output_shape(self, x: np.ndarray, q: dict) -> tuple:
        """The shape of ``requantized(x, q)``."""
        return self.prepared.get(x, q)[1]

    def _checked_prepare(self, shape: tuple, dtype, q: dict) -> tuple:
        x = placeholder(shape, dtype)
        check_q8(self.node, x)
        conv_input(self.node, x, self.channels)
        return self.prepare_requantized(shape, dtype, q)

    def prepare_requantized(self, shape: tuple, dtype, q: dict) -> tuple:
        """(call(x, residual) -> y, y's shape): ``requantized`` for inputs of this shape and dtype
        (PreparedCalls)."""
        raise NotImplementedError("an accumulator built with requantizes overrides this")

    def geometry(self, shape: tuple):
        """(the window geometry dict for an input of ``shape``, the kernels' geometry arguments)."""
        g = conv_geometry(self.node, shape, self.kh, self.kw)
        return g, (self.kh, self.kw, g["sh"], g["sw"], g["dh"], g["dw"], g["pt"], g["pl"])

    def _output_shape_for(self, shape: tuple, g: dict) -> tuple:
        return (shape[0], self.n_out, g["oh"], g["ow"])

    def planes(self, shape: tuple, dtype, g: dict):
        """The depthwise kernels' workspaces: the padded planes xp and the accumulator rows ws."""
        xp = self.scratch.get("xp", (shape[0], self.channels, g["hp"], g["wp"]), dtype)
        ws = self.scratch.get("ws", (shape[0], self.n_out, workspace_len(self.kh, self.kw, g)),
                              np.int32)
        return xp, ws

    def phases(self, shape: tuple, dtype, g: dict):
        """The sparse convs' workspace: the input's padded phases xq (plan/geometry.phase_shape)."""
        return self.scratch.get("xq", (shape[0], self.channels) + phase_shape(g, self.kh, self.kw),
                                dtype)


def image_residual(residual, image=None, shape=None, channels=slice(None)) -> tuple:
    """A requantizing kernel's optional last argument for ``residual`` = (r, parameters) or None:
    () without one; else the kernel's residual tuple (kernels/elementwise.residual_parts), r whole,
    or image ``image``'s ``channels``, viewed as ``shape`` when given (the array the kernel
    writes: one image's, or the batch's planes)."""
    if residual is None:
        return ()
    r, params = residual
    if image is not None:
        r = r[image, channels]
    if shape is not None:
        r = r.reshape(shape)
    return ((r,) + params,)


def weight_sums(w2: np.ndarray) -> np.ndarray:
    """Σ_k w[n,k] of a GEMM's (N, K) int8 weights, int64: the dense requantizing GEMM's ``w_sums``
    (with int8 activations its broadcast tile starts from bias' − 128·Σ_k w, which the plan sums
    once here rather than the kernel at every call)."""
    return np.ascontiguousarray(np.asarray(w2, np.int64).sum(axis=1))


def amx_padded(w2: np.ndarray):
    """The dense GEMMs' ``w_pad``: w (N, K) padded once here for its AMX tile where
    that tile will run (kernels/_amx.py, AMX_MIN_K), else the empty _amx.NO_PAD."""
    from ...kernels import _amx

    return aligned_copy(_amx.pad_weights(w2)) if _amx.RUNS and w2.shape[1] >= _amx.AMX_MIN_K \
        else _amx.NO_PAD


def planar_gemm_fits(k: int) -> bool:
    """Whether a requantizing 1×1 conv over k input channels takes matmul_planar_rq_i8: a tile
    that packs x in 4-byte words runs here (AVX-512 VNNI's broadcast tile, or AMX), and k % 4 == 0.
    Elsewhere the channels-last copy is the dot-product tile's rows as they stand, and the planar
    kernel would only copy them itself. The CPU's flags, not whether the JIT is on (the same plan
    with NUMBA_DISABLE_JIT=1)."""
    from ...kernels._cpu import HAS_AVX512_VNNI

    return HAS_AVX512_VNNI and k % 4 == 0


def requantize_args(q: dict) -> tuple:
    """The requantizing kernels' (m0, shift, y_zero_point, lo, hi)."""
    return q["m0"], q["shift"], q["y_zp"], q["lo"], q["hi"]


PLANAR_DEPTHWISE_MIN_WIDTH = 56
"""Output width from which a stride-1 int8 depthwise conv keeps the planar kernel, which
vectorizes along output rows; narrower or strided ones take the channels-last kernel, which
vectorizes over channels (kernels/depthwise.py has the timings: 144×56×56 0.41 against 0.50 ms,
576×14×14 0.67 against 0.12 ms)."""
ROW_TILE_MIN_WIDTH = 7
"""Output width from which a 3×3 int8 depthwise conv keeps the planar kernel, at any stride, where
its row tile runs (kernels/_dwtile.py: AVX-512 VNNI and VBMI). One thread, the channels-last
kernel (with its input copy) against the planar one on the tile: 96→56×56 stride 2 1.57 against
0.49 ms, 144→28×28 stride 2 0.51 / 0.24, 192×28×28 0.38 / 0.20, 192→14×14 stride 2 0.17 / 0.12,
576×14×14 0.31 / 0.25; then 576→7×7 stride 2 0.18 / 0.22 and 960×7×7 0.21 / 0.36 kept the 7×7
outputs channels last (14 from here), until the tile read the unpadded planes itself and
requantized in its registers: in MobileNetV2, one thread, the 7×7 depthwise convs 0.15–0.17 ms
each channels last against 0.07–0.12 planar (docs/kernels.md, "The depthwise row tile")."""


class DepthwiseConv(ConvAccumulator):
    name = "depthwise_dense_i8"
    reason = "depthwise conv: dense int8 taps, one shifted axpy per tap"

    def __init__(self, node: Node, w4: np.ndarray, ctx: PlanContext, requantizes: bool = False):
        super().__init__(node, w4)
        self.w = np.ascontiguousarray(w4.reshape(self.n_out, -1))
        self.kernel = ctx.kernel("depthwise_dense_i8")
        self.layout = False  # planar, unless the channels-last kernel pays (multiplier 1 only)
        if not requantizes:
            return
        self.rq_kernel = ctx.kernel("depthwise_dense_rq_i8")
        self.name = planar = "depthwise_dense_rq_i8"
        self.reason = ("depthwise conv: dense int8 taps along output rows, Q31 requantization "
                       "from cache")
        if self.n_out == self.channels:  # multiplier 1: the channels-last kernel where it pays
            self.w_taps = np.ascontiguousarray(self.w.T)
            self.channels_last = ctx.kernel("channels_last_dense_i8")
            self.nhwc_kernel = ctx.kernel("depthwise_nhwc_rq_i8")
            shape = ctx.input_shape(node)  # known: the choice is made now, and explain() shows it
            self.layout = None if shape is None else self.channels_last_pays(
                conv_geometry(node, tuple(shape), self.kh, self.kw))
            self.name = {True: "channels_last_dense_i8 + depthwise_nhwc_rq_i8", False: planar,
                         None: f"depthwise_nhwc_rq_i8 or {planar}"}[self.layout]
            from ...kernels._dwtile import PLANE_MAX_WIDTH

            self.reason = ("depthwise conv: channels last (the channels in the vector lanes, "
                           "Q31 requantization in the epilogue) when the output is narrower than "
                           f"{ROW_TILE_MIN_WIDTH} (a 3×3 conv on the row tile) or strided or "
                           f"narrower than {PLANAR_DEPTHWISE_MIN_WIDTH}, else planar (along output "
                           "rows, Q31 requantization from cache; a 3×3 conv's outputs at most "
                           f"{PLANE_MAX_WIDTH} wide on the plane tile, 64 outputs of the flat "
                           "plane a step)")

    def accumulate(self, x, x_zp, bias, acc, g, geo):
        xp, ws = self.planes(x.shape, x.dtype, g)
        self.kernel(self.w, bias, x, x_zp, xp, ws, acc, *geo)

    def row_tile_runs(self, g) -> bool:
        """Whether the planar kernel runs this conv on its 3×3 row tile (kernels/_dwtile.py), which
        reads x unpadded: the JIT on, an AVX-512 VNNI + VBMI CPU, a step the window holds."""
        from ...kernels import _dwtile

        return (self.kh, self.kw) == (3, 3) and _dwtile.RUNS and _dwtile.fits(g["sw"], g["dw"])

    def channels_last_pays(self, g) -> bool:
        from ...kernels import _dwtile

        if (self.kh, self.kw) == (3, 3) and _dwtile.CPU_HAS and _dwtile.fits(g["sw"], g["dw"]):
            return g["ow"] < ROW_TILE_MIN_WIDTH
        return g["sw"] > 1 or g["ow"] < PLANAR_DEPTHWISE_MIN_WIDTH

    def prepare_requantized(self, shape: tuple, dtype, q: dict) -> tuple:
        """The channels-last kernel where it is the faster one, else the planar one; both
        requantize in their epilogue."""
        g, geo = self.geometry(shape)
        y_shape, y_dtype, rq = self._output_shape_for(shape, g), q["y_dtype"], requantize_args(q)
        x_, y_ = placeholder(shape, dtype), placeholder(y_shape, y_dtype)
        if self.layout if self.layout is not None else self.channels_last_pays(g):
            xh = self.scratch.get("xh", (shape[0],) + shape[2:] + (shape[1],), dtype)
            to_nhwc = pick(self.channels_last, x_, xh)
            head, tail = (self.w_taps, q["bias"], xh, q["x_zp"]) + rq, geo
            nhwc = pick(self.nhwc_kernel, *head, y_, *tail)

            def call(x, residual=None):
                y = np.empty(y_shape, y_dtype)
                to_nhwc(x, xh)
                nhwc(*head, y, *tail)
                return y
            return call, y_shape
        w, bias = self.w, q["bias"]
        if self.row_tile_runs(g):  # no padded planes; the tile's words and starting sums made
            # once, and the plane tile's table (no groups where the output rows are wide)
            from ...kernels._broadcast import unsigned_bias
            from ...kernels._dwtile import plane_table, row_words

            empty = (np.empty((shape[0], self.channels, 0, 0), dtype),
                     np.empty((shape[0], self.n_out, 0), np.int32))
            table = plane_table(shape[2], shape[3], y_shape[2], y_shape[3], *geo[2:])
            mid, tail = (q["x_zp"],) + empty + rq, geo + (row_words(w),
                                                          unsigned_bias(x_, w, bias, None), table)
        else:
            mid, tail = (q["x_zp"],) + self.planes(shape, dtype, g) + rq, geo
        planar = pick(self.rq_kernel, w, bias, x_, *mid, y_, *tail)

        def call(x, residual=None):
            y = np.empty(y_shape, y_dtype)
            planar(w, bias, x, *mid, y, *tail)
            return y
        return call, y_shape


class CsrConv(ConvAccumulator):
    """The direct sparse conv over the nonzeros; a pointwise conv (``is_pointwise``) is the CSR
    GEMM on each image's planar input instead, with no padded planes. Either requantizes in its
    epilogue when the op asks (``requantizes``: conv2d_csr_rq_i8, matmul_csr_rq_i8)."""

    name = "conv2d_csr_i8"
    takes_residual = True

    def __init__(self, node: Node, w4: np.ndarray, ctx: PlanContext, requantizes: bool = False):
        super().__init__(node, w4)
        self.csr = csr_triple(np.ascontiguousarray(w4.reshape(self.n_out, -1)))
        self.pointwise = is_pointwise(node, self.kh, self.kw)
        if self.pointwise:
            self.kernel, self.name = ctx.kernel("matmul_csr_i8"), "matmul_csr_i8"
            self.reason = (f"pointwise conv: the int8 CSR GEMM ({len(self.csr[2])} nonzeros) on "
                           f"each image's planar input, int32 accumulation")
            if requantizes:  # the int32 sums requantized from L1, never stored
                self.name = "matmul_csr_rq_i8"
                self.rq_kernel = ctx.kernel("matmul_csr_rq_i8")
                self.reason += ", Q31 requantization in the epilogue"
        else:
            self.kernel = ctx.kernel("conv2d_csr_i8")
            self.starts = TapStarts(self.csr[1], self.c_group, self.kh, self.kw)
            self.reason = f"direct sparse int8 conv over {len(self.csr[2])} nonzeros (no im2col)"
            if requantizes:  # each tile of int32 sums requantized from L1, never stored
                self.name = "conv2d_csr_rq_i8"
                self.rq_kernel = ctx.kernel("conv2d_csr_rq_i8")
                self.reason += ", Q31 requantization tile by tile"

    def accumulate(self, x, x_zp, bias, acc, g, geo):
        if self.pointwise:  # x_zp is in the folded bias: no pads to fill
            for b in range(x.shape[0]):
                self.kernel(*self.csr, bias, x[b].reshape(self.channels, -1),
                            acc[b].reshape(self.n_out, -1))
            return
        indptr, _, data = self.csr
        self.kernel(indptr, self.starts(g), data, bias, x, x_zp, self.phases(x.shape, x.dtype, g),
                    acc, *geo, self.group)

    def prepare_requantized(self, shape: tuple, dtype, q: dict) -> tuple:
        y_dtype, rq = q["y_dtype"], requantize_args(q)
        if self.pointwise:  # the GEMM on the images' (C, H·W) planes, the batch in one call
            y_shape = (shape[0], self.n_out) + shape[2:]
            pixels = math.prod(shape[2:])
            xs, planes = (shape[0], self.channels, pixels), (shape[0], self.n_out, pixels)
            head = self.csr + (q["bias"],)
            gemm = pick(self.rq_kernel, *head, placeholder(xs, dtype), *rq,
                        placeholder(planes, y_dtype))

            def call(x, residual=None):
                y = np.empty(y_shape, y_dtype)
                gemm(*head, x.reshape(xs), *rq, y.reshape(planes),
                     *image_residual(residual, shape=planes))
                return y
            return call, y_shape
        g, geo = self.geometry(shape)
        y_shape = self._output_shape_for(shape, g)
        indptr, _, data = self.csr
        head = (indptr, self.starts(g), data, q["bias"])
        mid, tail = (q["x_zp"], self.phases(shape, dtype, g)) + rq, geo + (self.group,)
        return whole_image_call(self.rq_kernel, head, (shape, dtype), mid, (y_shape, y_dtype),
                                tail)


def whole_image_call(kernel, head: tuple, x_spec: tuple, mid: tuple, y_spec: tuple,
                     tail: tuple) -> tuple:
    """(call(x, residual) -> y, y's shape) for a requantizing conv kernel that takes the whole
    batch: ``kernel(*head, x, *mid, y, *tail[, residual])``, its build picked once for inputs of
    ``x_spec`` = (shape, dtype), y a fresh array of ``y_spec``."""
    y_shape, y_dtype = y_spec
    conv = pick(kernel, *head, placeholder(*x_spec), *mid, placeholder(y_shape, y_dtype), *tail)

    def call(x, residual=None):
        y = np.empty(y_shape, y_dtype)
        conv(*head, x, *mid, y, *tail, *image_residual(residual))
        return y
    return call, y_shape


class QuadConv(ConvAccumulator):
    """The block-sparse conv over the weight's nonzero quads (kernels/conv_quad.py: 4 weights on 4
    consecutive input channels at one tap, one 4-byte dot product), for a requantizing conv on a
    CPU with AVX-512 VNNI whose groups have a multiple of 4 input channels (``fits``). Any int8
    weight has quads: at 90 % unstructured sparsity about a third of them hold a nonzero, and each
    costs one vpdpbusd per 16 output positions, where the direct conv spends a 32-bit multiply
    on each nonzero. Requantizing only: the integer ops, which keep the int32 sums, take
    ``CsrConv``."""

    takes_residual = True

    @staticmethod
    def fits(node: Node, w4: np.ndarray, requantizes: bool) -> bool:
        """A requantizing conv, groups of a multiple of 4 input channels, and a CPU with AVX-512
        VNNI (elsewhere the quads' plain-loop tile spends 4 multiplies where the direct conv spends
        one per nonzero); a pointwise conv only if it has at least as many output channels as
        input channels. The other pointwise convs (a MobileNetV2 block's project conv: many input
        channels, few outputs) keep the CSR GEMM on their planar input, which needs no packed
        copy and there was 1.2–1.5× faster than the quads at 90 % sparsity; on the expand convs
        and the head the 4-channel quad tile was as fast or up to 1.5× faster (docs/kernels.md,
        "Pointwise convs on quads"). The CPU's flag, not whether the JIT is on: a plan picks the
        same kernels with NUMBA_DISABLE_JIT=1, where the kernel runs its plain-loop tile as
        Python."""
        from ...kernels._cpu import HAS_AVX512_VNNI

        n_out, c_group = w4.shape[:2]
        return (requantizes and HAS_AVX512_VNNI and c_group % 4 == 0
                and (not is_pointwise(node, w4.shape[2], w4.shape[3]) or n_out >= c_group))

    def __init__(self, node: Node, w4: np.ndarray, ctx: PlanContext):
        super().__init__(node, w4)
        self.quads = quad_blocks(w4, self.group)
        self.w_sums = weight_sums(w4.reshape(self.n_out, -1))
        self.quad_kernel = ctx.kernel("conv2d_quad_rq_i8")
        self.name = "conv2d_quad_rq_i8"
        self.reason = (f"block-sparse int8 conv over the {len(self.quads[3])} quads (4 input "
                       f"channels at one tap) that hold the {np.count_nonzero(w4)} nonzeros, "
                       f"4-byte dot products (vpdpbusd), 4 output channels per activation load "
                       f"({len(self.quads[1])} loads of quad columns), Q31 requantization in the "
                       f"epilogue")

    def prepare_requantized(self, shape: tuple, dtype, q: dict) -> tuple:
        from ...kernels._quads import aligned_pays, quad_layout, quad_offsets

        g, geo = self.geometry(shape)
        y_shape, y_dtype = self._output_shape_for(shape, g), q["y_dtype"]
        shape8 = (g["oh"], g["ow"], self.kh, self.kw, g["sh"], g["sw"], g["dh"], g["dw"])
        cptr, qcols, wptr, words = self.quads
        loads = len(qcols) / (self.channels // 4)  # per group of 4 input channels, per chunk
        hq, pitch, stride, copies, copy_words = quad_layout(*shape8, self.channels // 4,
                                                            aligned_pays(*shape8, loads))
        offsets = quad_offsets(qcols, self.kh, self.kw, hq, pitch, g["sh"], g["sw"], g["dh"],
                               g["dw"], stride, copies, copy_words)
        xg = aligned_empty((shape[0], copies * copy_words), np.int32)
        head = (cptr, offsets, wptr, words, q["bias"], self.w_sums)
        mid = (q["x_zp"], xg) + requantize_args(q)
        tail = geo + (self.group, pitch, copies)
        return whole_image_call(self.quad_kernel, head, (shape, dtype), mid, (y_shape, y_dtype),
                                tail)


class PackedDenseConv(ConvAccumulator):
    """The dense conv over the packed input (kernels/conv_amx.py: the quad conv's packed words, no
    im2row), on AMX tiles (16 channels × 16 positions × 64 input channels per instruction) or,
    without AMX, on the VNNI register tile (4 channels × 64 positions of ``vpdpbusd``), for a
    requantizing conv of one group that is not pointwise (``fits``). Its weights are packed once
    here: per tap (``pack_tap_weights``), or, for at most 4 input channels, with 16 taps per tile
    (``pack_gathered_weights``: the stem, whose taps each chunk gathers into the tile's rows)."""

    takes_residual = True

    @staticmethod
    def fits(node: Node, w4: np.ndarray, requantizes: bool) -> bool:
        """A requantizing conv of one group that is not pointwise, with a multiple of 4 input
        channels or at most 4 (``gather_fits``), and its AMX or VNNI tile usable here
        (``_amx.CONV_AVAILABLE``). A pointwise conv keeps the GEMM (``Im2rowConv``:
        on its planar input where a packing tile runs, else its channels-last rows; the GEMM
        takes the AMX tile from K = 192): on
        MobileNetV2's 1×1 layers the AMX conv was 1.3–2.3× slower in-model, its packing of many
        channel groups over small planes costing more than the products (docs/kernels.md)."""
        from ...kernels._amx import CONV_AVAILABLE
        from ...kernels.conv_amx import gather_fits

        if not (requantizes and CONV_AVAILABLE and node.attrs["group"] == 1
                and not is_pointwise(node, w4.shape[2], w4.shape[3])):
            return False
        return w4.shape[1] % 4 == 0 or gather_fits(w4.shape[1])

    def __init__(self, node: Node, w4: np.ndarray, ctx: PlanContext):
        from ...kernels._amx import AVAILABLE
        from ...kernels.conv_amx import gather_fits, pack_gathered_weights, pack_tap_weights

        super().__init__(node, w4)
        self.gathered = gather_fits(w4.shape[1])
        self.w_sums = weight_sums(w4.reshape(self.n_out, -1))
        if self.lanes_fit(w4, self.gathered):
            self._init_lanes(w4, ctx)
            return
        self.lanes = False
        self.tiles = aligned_copy(pack_gathered_weights(w4) if self.gathered
                                  else pack_tap_weights(w4))  # 64-byte tile rows on whole lines
        self.dense_kernel = ctx.kernel("conv2d_dense_rq_i8")
        self.name = "conv2d_dense_rq_i8"
        # the CPU's flags, not the JIT, name the tile: a plan explains itself alike without it
        tile = ("AMX tiles (tdpbsud: 16 channels × 16 positions × 64 input channels)"
                if AVAILABLE else "VNNI registers (vpdpbusd: 4 channels × 64 positions)")
        gathered = (", 16 taps per x tile, gathered per chunk of 64 positions (≤ 4 input "
                    "channels: one word per position and tap)" if self.gathered else "")
        self.reason = (f"dense int8 conv on {tile}{gathered}, no im2row, Q31 requantization in "
                       "the epilogue")

    @staticmethod
    def lanes_fit(w4: np.ndarray, gathered: bool) -> bool:
        """Whether the lanes conv (kernels/conv_lanes.py, conv2d_lanes_rq_i8) takes this conv: a
        CPU with AVX-512 VNNI whose OS grants no AMX (with AMX the tiles stay), a multiple of 4
        input channels (not the gathered stem). The CPU's flags, not whether the JIT is on."""
        from ...kernels._amx import AVAILABLE
        from ...kernels._cpu import HAS_AVX512_VNNI

        return HAS_AVX512_VNNI and not AVAILABLE and not gathered and w4.shape[1] % 4 == 0

    def _init_lanes(self, w4: np.ndarray, ctx: PlanContext):
        from ...kernels._lanes import pack_lane_words

        self.lanes = True
        self.words = aligned_copy(pack_lane_words(w4))  # each column's 32 words on two whole lines
        self.lanes_kernel = ctx.kernel("conv2d_lanes_rq_i8")
        self.name = "conv2d_lanes_rq_i8"
        self.reason = ("dense int8 conv with 32 output channels in the vector lanes × 7 positions "
                       "of a row (vpdpbusd on the packed input's 4-channel words), no im2row, Q31 "
                       "requantization in the epilogue")

    def _prepare_lanes(self, shape: tuple, dtype, q: dict) -> tuple:
        """The lanes conv's call for inputs of ``shape``: the packed input at its natural pitch,
        one offset per weight column (4 channels at one tap)."""
        from ...kernels._quads import quad_layout, quad_offsets
        from ...kernels.conv_lanes import lane_multipliers

        g, geo = self.geometry(shape)
        y_shape, y_dtype = self._output_shape_for(shape, g), q["y_dtype"]
        shape8 = (g["oh"], g["ow"], self.kh, self.kw, g["sh"], g["sw"], g["dh"], g["dw"])
        hq, pitch, stride, _, copy_words = quad_layout(*shape8, self.channels // 4, False)
        columns = np.arange(self.channels // 4 * self.kh * self.kw, dtype=np.int64)
        offsets = quad_offsets(columns, self.kh, self.kw, hq, pitch, g["sh"], g["sw"], g["dh"],
                               g["dw"], stride, 1, copy_words)
        xg = aligned_empty((shape[0], copy_words), np.int32)
        head = (self.words, offsets, q["bias"], self.w_sums)
        m0, shift, *rest = requantize_args(q)
        mid = (q["x_zp"], xg) + lane_multipliers(m0, shift) + tuple(rest)  # padded once, here
        return whole_image_call(self.lanes_kernel, head, (shape, dtype), mid, (y_shape, y_dtype),
                                geo + (pitch,))

    def prepare_requantized(self, shape: tuple, dtype, q: dict) -> tuple:
        from ...kernels._amx import TILE_ROWS
        from ...kernels._quads import quad_layout

        if self.lanes:
            return self._prepare_lanes(shape, dtype, q)
        g, geo = self.geometry(shape)
        y_shape, y_dtype = self._output_shape_for(shape, g), q["y_dtype"]
        shape8 = (g["oh"], g["ow"], self.kh, self.kw, g["sh"], g["sw"], g["dh"], g["dw"])
        # the packed input's groups: whole blocks of 16, or one (gathered taps)
        groups = 1 if self.gathered else self.tiles.shape[1] * TILE_ROWS
        _, pitch, _, _, copy_words = quad_layout(*shape8, groups, False)
        xg = aligned_empty((shape[0], copy_words), np.int32)
        head = (self.tiles, q["bias"], self.w_sums)
        mid = (q["x_zp"], xg) + requantize_args(q)
        return whole_image_call(self.dense_kernel, head, (shape, dtype), mid, (y_shape, y_dtype),
                                geo + (pitch, self.gathered))


class Im2rowConv(ConvAccumulator):
    """im2row, then the dense GEMM per group. K = kh·kw·C/g is padded up to a multiple of the GEMM's
    step with zero weights: the rows' extra columns hold whatever im2row left there, and
    0·anything adds nothing, so the GEMM has no scalar K tail (the 7×7 stem's K = 147: 9 steps and
    3 scalar values per dot product before; 10 steps now). The step is K_PER_STEP = 16 for the dot-product tiles, 4
    for the broadcast tile where it runs (kernels/_broadcast.py; the input's type known at plan
    time): the stem's K = 148, and a 1×1 conv over 24 channels needs no padding, so its
    channels-last input is the GEMM's rows."""

    name = "channels_last_dense_i8 + im2row_dense_i8 + matmul_dense_i8"
    reason = "im2row (zero-point padded, channels last) then a dense int8 GEMM per group"
    takes_residual = True

    def __init__(self, node: Node, w4: np.ndarray, ctx: PlanContext, requantizes: bool = False):
        from ...kernels import _broadcast  # Numba only once a kernel plan needs it
        from ...kernels.matmul_dense import K_PER_STEP

        super().__init__(node, w4)
        self.im2row, self.kernel = ctx.kernel("im2row_dense_i8"), ctx.kernel("matmul_dense_i8")
        self.channels_last = ctx.kernel("channels_last_dense_i8")
        per = self.n_out // self.group
        self.k_in = self.c_group * self.kh * self.kw
        step = 4 if _broadcast.RUNS and ctx.input_dtype(node) in ("uint8", "int8") else K_PER_STEP
        self.k_pad = -(-self.k_in // step) * step
        taps_first = np.zeros((self.n_out, self.k_pad), np.int8)
        taps_first[:, :self.k_in] = w4.transpose(0, 2, 3, 1).reshape(self.n_out, -1)  # im2row order
        self.w_groups = [aligned_copy(taps_first[g * per:(g + 1) * per])
                         for g in range(self.group)]
        self.w_pads = [amx_padded(w) for w in self.w_groups]  # the AMX tile's, once per layer
        # a 1×1, stride-1, unpadded conv of one group whose K needs no padding: the channels-last
        # input already is the GEMM's rows (any auto_pad gives a 1×1 stride-1 conv no pads)
        attrs = node.attrs
        self.pointwise = (self.kh, self.kw, self.group) == (1, 1, 1) \
            and tuple(attrs["strides"] or (1, 1)) == (1, 1) and not any(attrs["pads"] or ()) \
            and self.k_in == self.k_pad
        if self.pointwise:
            self.reason = "1×1 conv: the channels-last input is the GEMM's rows (no im2row), " \
                          "then a dense int8 GEMM"
        # requantizing, on a tile that packs x in 4-byte words: the planar input packed straight
        self.planar = requantizes and self.pointwise and planar_gemm_fits(self.k_in)
        gemm = "matmul_dense_i8"
        if requantizes:  # the int32 sums requantized in the GEMM's epilogue, never stored
            gemm = "matmul_dense_rq_i8"
            self.reason += ", Q31 requantization in the GEMM's epilogue"
            self.rq_kernel = ctx.kernel(gemm)
        self.name = "channels_last_dense_i8 + " + ("" if self.pointwise else "im2row_dense_i8 + ") \
            + gemm
        if self.planar:
            self.planar_kernel = ctx.kernel("matmul_planar_rq_i8")
            self.name = "matmul_planar_rq_i8"
            self.reason = ("1×1 conv: the planar input packed straight into the GEMM's 4-channel "
                           "words (no channels-last copy), a dense int8 GEMM on the broadcast or "
                           "AMX tile, Q31 requantization in its epilogue")

    def rows(self, batch: int, oh: int, ow: int, dtype) -> np.ndarray:
        """The rows of this thread's last call: (B, g, OH, OW, k_pad), valid in [..., :k_in]."""
        return self.scratch.get("rows", (batch, self.group, oh, ow, self.k_pad), dtype)

    def _rows_filler(self, shape: tuple, dtype, x_zp: int, g: dict, geo: tuple):
        """(rows, fill(x)): this thread's rows for inputs of ``shape``, and the call that fills
        them from x: its channels-last copy, then im2row unless the conv is 1×1."""
        batch, oh, ow = shape[0], g["oh"], g["ow"]
        rows, x_ = self.rows(batch, oh, ow, dtype), placeholder(shape, dtype)
        if self.pointwise:
            rows4 = rows.reshape(batch, oh, ow, -1)
            to_rows = pick(self.channels_last, x_, rows4)
            return rows, lambda x: to_rows(x, rows4)
        xh = self.scratch.get("xh", (batch,) + shape[2:] + (shape[1],), dtype)
        to_nhwc = pick(self.channels_last, x_, xh)  # each tap of a pixel is then one copy
        im2row = pick(self.im2row, xh, x_zp, rows, *geo)

        def fill(x):
            to_nhwc(x, xh)
            im2row(xh, x_zp, rows, *geo)
        return rows, fill

    def _fill_rows(self, x, x_zp, g, geo) -> np.ndarray:
        rows, fill = self._rows_filler(x.shape, x.dtype, x_zp, g, geo)
        fill(x)
        return rows

    def _groups(self, rows, out):
        """(rows (M, k_pad), weights, their AMX padding, output channels slice, out (N/g, M)) per
        image and group."""
        per = self.n_out // self.group
        batch, _, oh, ow = out.shape
        for b in range(batch):
            for gi in range(self.group):
                channels = slice(gi * per, (gi + 1) * per)
                yield (rows[b, gi].reshape(oh * ow, -1), self.w_groups[gi], self.w_pads[gi],
                       channels, out[b, channels].reshape(per, oh * ow))

    def accumulate(self, x, x_zp, bias, acc, g, geo):
        rows = self._fill_rows(x, x_zp, g, geo)
        for x_rows, w, w_pad, channels, acc_g in self._groups(rows, acc):
            self.kernel(x_rows, w, np.ascontiguousarray(bias[channels]), acc_g, w_pad)

    def prepare_requantized(self, shape: tuple, dtype, q: dict) -> tuple:
        """The GEMM requantizes in its epilogue."""
        if self.planar:
            return self._prepare_planar(shape, dtype, q)
        g, geo = self.geometry(shape)
        rows, fill = self._rows_filler(shape, dtype, q["x_zp"], g, geo)
        y_shape, y_dtype = self._output_shape_for(shape, g), q["y_dtype"]
        tail = requantize_args(q)[2:]
        gemms = []  # per image and group: the GEMM's build, its rows and weights..., its output
        for b, (x_rows, w, w_pad, ch, y_g) in enumerate(self._groups(rows, placeholder(y_shape,
                                                                                        y_dtype))):
            args = (w, np.ascontiguousarray(q["bias"][ch]), q["m0"][ch], q["shift"][ch]) + tail
            gemms.append((pick(self.rq_kernel, x_rows, *args, y_g), x_rows, args,
                          b // self.group, ch, y_g.shape, weight_sums(w), w_pad))

        def call(x, residual=None):
            y = np.empty(y_shape, y_dtype)
            fill(x)
            for gemm, x_rows, args, b, ch, y_g_shape, w_sums, w_pad in gemms:
                extra = image_residual(residual, b, y_g_shape, ch) or (None,)
                gemm(x_rows, *args, y[b, ch].reshape(y_g_shape), *extra, w_sums, w_pad)
            return y
        return call, y_shape

    def _prepare_planar(self, shape: tuple, dtype, q: dict) -> tuple:
        """A 1×1 conv on matmul_planar_rq_i8: each image's (C, H·W) input is the GEMM's xᵀ, and
        the batch goes in one call, (B, C, H·W)."""
        batch, _, h, w_ = shape
        y_shape, y_dtype = (batch, self.n_out, h, w_), q["y_dtype"]
        xs, planes = (batch, self.k_in, h * w_), (batch, self.n_out, h * w_)
        args = (self.w_groups[0], q["bias"]) + requantize_args(q)
        gemm = pick(self.planar_kernel, placeholder(xs, dtype), *args, placeholder(planes, y_dtype))
        w_sums, w_pad = weight_sums(self.w_groups[0]), self.w_pads[0]

        def call(x, residual=None):
            y = np.empty(y_shape, y_dtype)
            extra = image_residual(residual, shape=planes) or (None,)
            gemm(x.reshape(xs), *args, y.reshape(planes), *extra, w_sums, w_pad)
            return y
        return call, y_shape

    def window_sums(self, acc_shape, dtype, x_zp: int) -> np.ndarray:
        """Σ (x − x_zp) over each output pixel's window and its group's channels, (B, g, OH, OW)
        int64, from the rows of this thread's last call (pads hold x_zp, so they add 0)."""
        batch, _, oh, ow = acc_shape
        rows = self.rows(batch, oh, ow, dtype)[..., :self.k_in]
        return rows.sum(axis=-1, dtype=np.int64) - self.k_in * x_zp


def is_depthwise(node: Node, w4: np.ndarray) -> bool:
    n_out, c_group = w4.shape[:2]
    channels = node.attrs["group"] * c_group
    return c_group == 1 and node.attrs["group"] == channels and n_out % channels == 0


def conv_accumulator(node: Node, w4: np.ndarray, ctx: PlanContext,
                     choose: Callable[[str], Choice], im2row_only: bool = False,
                     requantizes: bool = False) -> tuple[ConvAccumulator, Choice]:
    """The accumulator of an int8 conv, and the sparse/dense choice behind it: depthwise taps for
    a depthwise conv (always dense); else the sparse conv or a dense one as ``choose(sparse)``
    says (asked only then; ``sparse`` names the sparse kernel for the reason: "BSR 1×4" where the
    quad conv fits, else "CSR"); always im2row with ``im2row_only`` (``window_sums`` needs its
    rows). ``requantizes``: the accumulator requantizes in its kernel's epilogue
    (``requantized``).

    Where the quads fit, they are the sparse kernel, and the direct CSR conv is not measured: on a
    Zen 4 core (one thread, the int8 ResNet-18's 3×3 and 1×1 convs past the stem, each kernel
    alone in its plan) the quads took 5.85 ms in all against the CSR conv's 9.50 at 90 %
    unstructured sparsity, and 3.40 against 5.05 at 97 %, faster on every layer at both."""
    if im2row_only:
        return Im2rowConv(node, w4, ctx), Choice(False)
    if is_depthwise(node, w4):
        return DepthwiseConv(node, w4, ctx, requantizes), Choice(False)
    quads = QuadConv.fits(node, w4, requantizes)
    choice = choose("BSR 1×4" if quads else "CSR")
    if choice.csr and quads:
        return QuadConv(node, w4, ctx), choice
    if choice.csr:
        return CsrConv(node, w4, ctx, requantizes), choice
    if PackedDenseConv.fits(node, w4, requantizes):
        return PackedDenseConv(node, w4, ctx), choice
    return Im2rowConv(node, w4, ctx, requantizes), choice


# -- QGemm, QConv ---------------------------------------------------------------------------------
def qadd_arithmetic(node: Node) -> tuple:
    """A QAdd's integer parameters as add_dense_i8 takes them: (a_zp, b_zp, A, B, R, y_zp, lo, hi),
    A/2^R and B/2^R its inputs' scale ratios to its output's (docs/quantization.md §5), [lo, hi]
    its output type's range narrowed by a fused clip."""
    attrs = node.attrs
    y_scale = float(attrs["y_scale"])
    a_mult, b_mult, shift = quantmath.add_multipliers(float(attrs["a_scale"]) / y_scale,
                                                      float(attrs["b_scale"]) / y_scale)
    y_zp = int(attrs["y_zero_point"])
    lo, hi = quantmath.clamp_bounds(attrs["y_dtype"], attrs["y_scale"], y_zp, attrs["clip_min"],
                                    attrs["clip_max"])
    return (int(attrs["a_zero_point"]), int(attrs["b_zero_point"]), a_mult, b_mult, shift, y_zp,
            int(lo), int(hi))


def residual_arithmetic(add: Node, side: int) -> tuple:
    """The kernels' residual parameters (kernels/elementwise.residual_parts) for a QAdd whose
    input ``side`` (0 or 1) is the conv's output: the conv's zero point and multiplier first. The
    sum (q_conv − zp)·M + (q_r − zp_r)·M_r is the QAdd's either way round."""
    a_zp, b_zp, a_mult, b_mult, shift, y_zp, lo, hi = qadd_arithmetic(add)
    if side == 1:
        a_zp, b_zp, a_mult, b_mult = b_zp, a_zp, b_mult, a_mult
    return a_zp, b_zp, a_mult, b_mult, shift, y_zp, lo, hi


def layer_quant(node: Node, ctx: PlanContext) -> dict:
    """Everything a QGemm/QConv needs once: int8 weights (N, K), folded bias, Q31 multipliers, clamp.

    The arithmetic is docs/quantization.md's: bias' = q_b − x_zp·rowsum, M[n] = x_scale·w_scale[n] /
    y_scale ≈ m0[n]·2^−shift[n], output clamped to the type's range narrowed by the fused clip.
    """
    attrs = node.attrs
    w_tensor = ctx.tensors.get(node.inputs[1])
    where = f"node {node.name!r} ({node.op})"
    if w_tensor is None or w_tensor.quant is None or w_tensor.dtype != np.int8:
        raise UnsupportedModelError(f"{where}: the weight must be an int8 initializer with a scale")
    quant = w_tensor.quant
    if np.any(quant.zero_point != 0) or quant.axis not in (None, 0):
        raise UnsupportedModelError(f"{where}: weights must be symmetric (zero point 0), per tensor "
                                    f"or per output channel")
    q_w = w_tensor.to_numpy()
    n_out = q_w.shape[0]
    # a writable copy: a read-only (memory-mapped) weight is another Numba type, a second compile
    w2 = np.array(q_w.reshape(n_out, -1), order="C")
    w_scale = np.broadcast_to(quant.scale.astype(np.float64), (n_out,))
    b_name = node.inputs[2] if len(node.inputs) > 2 else ""
    q_b = np.zeros(n_out, np.int64)
    if b_name:
        b_tensor = ctx.tensors.get(b_name)
        if b_tensor is None or b_tensor.dtype.kind not in "iu":
            raise UnsupportedModelError(f"{where}: the bias must be an int32 initializer")
        q_b = b_tensor.to_numpy().astype(np.int64).reshape(-1)
    x_zp = int(attrs["x_zero_point"])
    rowsum = w2.astype(np.int64).sum(axis=1)
    bias = quantmath.fold_bias(q_b, rowsum, x_zp)
    # for any 8-bit input (uint8 or int8 at run time) and this layer's own largest |w| (≤ 128)
    w_peak = int(np.abs(w2.astype(np.int16)).max(initial=0))
    quantmath.check_accumulator_range(w2.shape[1], 255 * w_peak, bias)
    m0, shift = quantmath.quantize_multiplier(float(attrs["x_scale"]) * w_scale /
                                              float(attrs["y_scale"]))
    lo, hi = quantmath.clamp_bounds(attrs["y_dtype"], attrs["y_scale"], attrs["y_zero_point"],
                                    attrs["clip_min"], attrs["clip_max"])
    return dict(w=w2, w_shape=q_w.shape, bias=np.ascontiguousarray(bias, np.int32),
                m0=np.ascontiguousarray(m0, np.int32), shift=np.ascontiguousarray(shift, np.int32),
                y_zp=int(attrs["y_zero_point"]), lo=int(lo), hi=int(hi), x_zp=x_zp,
                y_dtype=Q8_TYPES[attrs["y_dtype"]], density=w_tensor.density)


def requantized_step(node: Node, accumulator, choice: Choice, run, density: float) -> Step:
    """The Step of a QGemm/QConv: its accumulator, whose name and reason say where it requantizes."""
    return Step(node, accumulator.name, choice.lead(accumulator.reason), run, density,
                replay="kernels")


@builds("int8", "QGemm")
def qgemm(node: Node, ctx: PlanContext):
    q = layer_quant(node, ctx)
    choice = ctx.choose_csr(q["density"], "gemm i8", node)
    gemm = gemm_accumulator(q["w"], choice.csr, ctx, requantizes=True)
    x_name, out = node.inputs[0], node.outputs[0]
    ctx.transposed.add(out)

    def run(values):
        x = values[x_name]
        check_q8(node, x)
        if x.ndim != 2 or x.shape[1] != gemm.k_in:
            raise InputError(f"node {node.name!r} (QGemm): expected x of shape (M, {gemm.k_in}), "
                             f"got {x.shape}")
        # the kernels write yt (N,M); its transpose is the (M,N) output, with no copy. A CSR
        # consumer reads it back as a C-contiguous (K,M) matrix, again with no copy (see
        # "Activations between layers" in docs/kernels.md)
        yt = aligned_empty((gemm.n_out, x.shape[0]), q["y_dtype"])
        gemm.requantized(x, q, yt)
        values[out] = yt.T

    return requantized_step(node, gemm, choice, run, q["density"])


@builds("int8", "QConv")
def qconv(node: Node, ctx: PlanContext):
    q = layer_quant(node, ctx)
    conv, choice = conv_accumulator(node, q["w"].reshape(q["w_shape"]), ctx,
                                    lambda sparse: ctx.choose_csr(q["density"], "conv i8",
                                                                  node, sparse),
                                    requantizes=True)
    x_name, out = node.inputs[0], node.outputs[0]
    fusion = ctx.take_residual(node.name) if conv.takes_residual else None
    if fusion is None:
        def run(values):
            values[out] = conv.requantized(values[x_name], q)

        return requantized_step(node, conv, choice, run, q["density"])

    add, side = fusion  # the QAdd that reads this conv's output alone runs in its epilogue
    r_name, add_out, params = add.inputs[1 - side], add.outputs[0], residual_arithmetic(add, side)
    unfused_add = ctx.kernel_step(add, ctx)  # for a residual the epilogue cannot take

    def run(values):
        x, r = values[x_name], values[r_name]
        if r.shape == conv.output_shape(x, q) and r.dtype in (np.uint8, np.int8):
            values[add_out] = conv.requantized(x, q, (np.ascontiguousarray(r), params))
        else:  # shapes that broadcast, or a wrong input: the two steps, as unfused
            values[out] = conv.requantized(x, q)
            unfused_add.run(values)

    step = requantized_step(node, conv, choice, run, q["density"])
    step.reason += f"; then {add.name!r} (QAdd) in the same epilogue"
    return step
