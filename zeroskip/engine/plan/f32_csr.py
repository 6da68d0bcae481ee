"""Family ``f32-csr``: float32 steps that skip zero weights — the CSR GEMM (Gemm, and MatMul with a
constant 2-D B) and the direct sparse conv (no im2col); depthwise convs take the depthwise kernel's
dense taps.

In ``sparse-f32`` these builders take every node they can; in ``auto`` they first ask the plan
context, which times the layer, and decline (leading the dense step's reason) when dense is faster.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...model import Node
from .context import PlanContext, float_bounds
from .f32_dense import conv_operands, conv_step
from .geometry import conv_geometry, conv_input, is_pointwise
from .registry import Decline, builds
from .steps import Scratch, Step, aligned_empty, is_aligned
from .weights import csr_triple


class CsrProduct:
    """The CSR GEMM of one layer, prepacked once: ``y = product(x)`` for x (M,K), y (M,N) float32.

    The kernel computes yt (N,M) = W (N,K) csr @ xt (K,M) + b, clamped, and y is yt's transpose, a
    view with no copy. xt is x's transpose: when x is itself such a view of a C-contiguous yt
    starting on a cache line (the output of another CSR GEMM), the kernel reads that yt directly;
    otherwise x is transposed (transpose_dense_f32) into a scratch xt that starts on a cache line
    as the kernel's vector loads need (bench/test_bench_matmul_session.py's layer, M = 128, K = N
    = 1024, 90 % sparse, one thread, AVX-512: the kernel 0.64 ms from aligned xt, 1.07 ms from
    NumPy's 16-byte alignment). The transpose is a kernel call, not NumPy's copy of x.T: on AMD
    EPYC Zen 4, one thread, that copy took 0.37 ms and the kernel takes 0.13 (the GEMM 0.50).
    Being a kernel call, a recorded run (engine/replay.py), which repeats only kernel calls,
    repeats it too, so xt can be a scratch (NumPy's copy had needed a fresh array every run, and
    had kept the plan from replaying). At one pixel the kernel's dot products load xt one value at
    a time, and x's own row serves at any alignment. yt is a fresh aligned array: it outlives the
    step.
    """

    name = "matmul_csr_f32"

    def __init__(self, w_nk: np.ndarray, bias: np.ndarray, lo, hi, ctx: PlanContext):
        """w_nk (N,K) real weights (rows = output channels), bias (N,) float32, the clamp."""
        self.n_out, self.k_in = w_nk.shape
        self.csr = csr_triple(np.asarray(w_nk, dtype=np.float32))
        self.nnz = len(self.csr[2])
        self.density = self.nnz / max(w_nk.size, 1)
        self.bias = bias
        self.lo, self.hi = float_bounds(lo, hi)
        self.kernel = ctx.kernel(self.name)
        self.transpose = ctx.kernel("transpose_dense_f32")
        self.scratch = Scratch()
        from ...kernels.matmul_csr import DOT_BELOW_PIXELS_F32  # Numba once a GEMM is planned

        self.dot_below = DOT_BELOW_PIXELS_F32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        m = x.shape[0]
        xt = x.T
        if not (xt.dtype == np.float32 and xt.flags.c_contiguous
                and (is_aligned(xt) or m < self.dot_below)):  # one pixel: scalar loads
            xt = self.scratch.get("xt", (self.k_in, m), np.float32)
            self.transpose(np.ascontiguousarray(x, dtype=np.float32), xt)
        yt = aligned_empty((self.n_out, m), np.float32)
        self.kernel(*self.csr, self.bias, xt, yt, self.lo, self.hi)
        return yt.T


@builds("f32-csr", "Gemm")
def gemm_csr(node: Node, ctx: PlanContext):
    """y (M,N) = x (M,K) @ W'ᵀ + c: the kernel computes yt = W' (N,K) csr @ xt (K,M)."""
    w = ctx.const(node.inputs[1])
    attrs = node.attrs
    if w is None or w.ndim != 2 or attrs["transA"]:
        return Decline("B is not a constant matrix, or A is transposed")
    c = ctx.const(node.inputs[2]) if len(node.inputs) > 2 else None
    if len(node.inputs) > 2 and node.inputs[2] and c is None:
        return Decline("C is computed at run time")
    w_nk = (w if attrs["transB"] else w.T) * np.float32(attrs["alpha"])
    n_out = w_nk.shape[0]
    if c is not None and np.asarray(c).shape not in ((), (1,), (n_out,)):
        return Decline("C varies by row")
    choice = ctx.choose_csr(ctx.tensors[node.inputs[1]].density, "gemm f32", node)
    if not choice.csr:
        return choice.declined()
    bias = np.zeros(n_out, np.float32) if c is None else \
        np.ascontiguousarray(np.broadcast_to(c * np.float32(attrs["beta"]), (n_out,)), np.float32)
    out, lo, hi = ctx.activation(node)
    product = CsrProduct(w_nk, bias, lo, hi, ctx)
    x_name, k_in = node.inputs[0], product.k_in
    ctx.transposed.add(out)

    def run(values):
        x = values[x_name]
        if x.ndim != 2 or x.shape[1] != k_in:
            raise InputError(f"node {node.name!r} (Gemm): expected A of shape (M, {k_in}), got "
                             f"{x.shape}")
        values[out] = product(x)

    reason = (f"sparse-f32: weights as CSR ({product.nnz} nonzeros), activations transposed to "
              f"(K,M)" + ctx.fused_note(node))
    return Step(node, product.name, choice.lead(reason), run, product.density, replay="kernels")


@builds("f32-csr", "MatMul")
def matmul_csr(node: Node, ctx: PlanContext):
    """y (..., N) = x (..., K) @ B (K,N) with B constant: the leading dims of x flattened to M, and
    the kernel computes yt = Bᵀ (N,K) csr @ xt (K,M), as for Gemm."""
    w = ctx.const(node.inputs[1])
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return Decline("B is not a constant 2-D float matrix")
    choice = ctx.choose_csr(ctx.tensors[node.inputs[1]].density, "gemm f32", node)
    if not choice.csr:
        return choice.declined()
    k_in, n_out = w.shape
    out, lo, hi = ctx.activation(node)
    product = CsrProduct(w.T, np.zeros(n_out, np.float32), lo, hi, ctx)
    x_name = node.inputs[0]

    def run(values):
        x = values[x_name]
        if x.ndim < 1 or x.shape[-1] != k_in:
            raise InputError(f"node {node.name!r} (MatMul): expected A of shape (..., {k_in}), got "
                             f"{x.shape}")
        values[out] = product(x.reshape(-1, k_in)).reshape(x.shape[:-1] + (n_out,))

    reason = (f"sparse-f32: Bᵀ as CSR ({product.nnz} nonzeros), A's leading dims flattened to M "
              f"and transposed to (K,M)" + ctx.fused_note(node))
    return Step(node, product.name, choice.lead(reason), run, product.density, replay="kernels")


@builds("f32-csr", "Conv")
def conv_csr(node: Node, ctx: PlanContext):
    """Direct sparse conv over the nonzeros (no im2col), or the depthwise kernel for depthwise convs."""
    operands = conv_operands(node, ctx)
    if isinstance(operands, Decline):
        return operands
    choice = ctx.choose_csr(ctx.tensors[node.inputs[1]].density, "conv f32", node)
    if not choice.csr:
        return choice.declined()
    w, bias = operands
    dw = ctx.depthwise_pairs.get(node.name)
    if dw is not None and is_pointwise(node, *w.shape[2:]):
        taps = conv_operands(dw, ctx)
        if not isinstance(taps, Decline) and dw.attrs["group"] == taps[0].shape[0] == w.shape[0]:
            return pointwise_depthwise_step(node, ctx.take_depthwise(node.name), ctx, w, bias,
                                            *taps, choice.lead)
    return conv_step(node, ctx, w, bias, csr=True, lead=choice.lead)


def pointwise_depthwise_step(node: Node, dw: Node, ctx: PlanContext, w: np.ndarray,
                             bias: np.ndarray, taps: np.ndarray, dw_bias: np.ndarray,
                             lead) -> Step:
    """A 1×1 conv on CSR and the 3×3 depthwise conv that reads it, as one step
    (pointwise_depthwise_f32): each expanded channel's plane is made in a scratch and convolved at
    once, and only the depthwise conv's output is written. The same bytes as the two steps."""
    indptr, indices, data = csr_triple(np.asarray(w.reshape(w.shape[0], -1), np.float32))
    n_out, k_in = w.shape[:2]
    _, lo1, hi1 = ctx.activation(node)
    out, lo2, hi2 = ctx.activation(dw)
    lo1, hi1 = float_bounds(lo1, hi1)
    lo2, hi2 = float_bounds(lo2, hi2)
    taps = np.ascontiguousarray(taps.reshape(n_out, 9), np.float32)
    kernel = ctx.kernel("pointwise_depthwise_f32")
    x_name = node.inputs[0]

    def run(values):
        x = np.ascontiguousarray(conv_input(node, values[x_name], k_in), dtype=np.float32)
        g = conv_geometry(dw, (x.shape[0], n_out) + x.shape[2:], 3, 3)
        y = aligned_empty((x.shape[0], n_out, g["oh"], g["ow"]), np.float32)
        kernel(indptr, indices, data, bias, lo1, hi1, x, taps, dw_bias, y, g["hp"], g["wp"],
               g["sh"], g["sw"], g["dh"], g["dw"], g["pt"], g["pl"], lo2, hi2)
        values[out] = y

    reason = (f"sparse-f32: pointwise conv on CSR ({len(data)} nonzeros) with the depthwise conv "
              f"{dw.name!r} after it, one expanded channel at a time in a scratch (the expanded "
              f"tensor is never written)" + ctx.fused_note(node))
    return Step(node, "pointwise_depthwise_f32", lead(reason), run, len(data) / max(w.size, 1),
                replay="kernels")
