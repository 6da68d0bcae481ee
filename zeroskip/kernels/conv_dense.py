"""Dense float32 direct convolution: no im2col, the taps read as shifted runs of the padded input,
summed tile by tile in vector registers.

The input is copied once into its padded phases (``_planes.pad_phases``: for stride 1 the padded
plane itself, for stride s the s×s planes of every s-th row and column), laid flat, channel after
channel. There every weight k = (c, i, j) reads output position p at ``offsets[k] + p`` (the
positions run over the phases' rows at their pitch Wq; the columns past OW are computed and
dropped). A block of FMA_ROWS output channels at FMA_PIXELS consecutive positions is then a small
outer-product GEMM over k, which the FMA tile (``_fma.py``) sums in registers: the activations of a
run are loaded once for all the block's channels. im2col + sgemm had written and read back a K ×
OH·OW column matrix (9× the input for a 3×3 conv) and left the bias and the activation to a third
pass; here each tile's sums go from registers to y, biased and clamped, once. docs/kernels.md,
"conv2d_dense_f32", has the loop order and the figures.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._broadcast import MIN_TASKS, channel_groups
from ._fma import FMA_PIXELS, FMA_ROWS, fma_tile
from ._planes import pad_phases, row_run
from ._scratch import zero_tails


_U = np.uint64


@njit(cache=True, inline="always")
def _store_rows(sums, rows, count, p0, bias, n, Wq, OW, lo, hi, y3):
    """The tile's first ``rows`` channels, positions p0 .. p0+count (at the phases' pitch Wq), into
    y3 [N, OH·OW] from channel n on: bias added, clamped to [lo, hi] (float32 bounds), the
    columns ow ≥ OW dropped. One pass per output row's run, uint64 indices on 1-D rows, so the
    loop vectorizes."""
    first, last = p0 // Wq, (p0 + count - 1) // Wq
    for j in range(rows):
        out, s, v = y3[n + j], sums[j], bias[n + j]
        for oh in range(first, last + 1):
            a, z = row_run(p0, count, oh, Wq, OW)
            if z == a:  # the chunk starts in the row's dropped columns
                continue
            src, dst = _U(a - p0), _U(a - oh * (Wq - OW))  # y's flat index of position a
            for i in range(_U(z - a)):
                out[dst + i] = min(max(s[src + i] + v, lo), hi)


def _conv2d_dense_f32(wp, offsets, b, x, xq, y, kh, kw, sh, sw, dh, dw, pt, pl, groups, lo, hi):
    # W (N, C/g, kh, kw) packed * x (B,C,H,W) -> y (B,N,OH,OW), float32
    """y[b,n,oh,ow] = clamp(b[n] + Σ_(c,i,j) w[n,c,i,j]·x[b, g(n)·C/g + c, oh·sh + i·dh − pt,
    ow·sw + j·dw − pl], lo, hi) with zeros outside x.

    Loop nest: prange (image, channel): pad the plane into its phases in xq; prange tasks (image,
    span of chunks of FMA_PIXELS positions at the phases' pitch, unit of channel blocks): per
    block of FMA_ROWS channels and per chunk of the span, the FMA tile over all K = C/g·kh·kw
    weights in k order, then the sums biased, clamped and stored (the valid columns). Block by
    block, so that a task writes FMA_ROWS output rows at a time: chunk by chunk over all blocks
    had written N rows at once, and a wide layer's stores then missed (16→96 1×1 at 112×112,
    one thread: 4.24 → 1.24 ms). Each tile sums its k in one order whatever the task, so the
    bytes do not depend on the thread count.
    wp — the weight packed by ``_fma.pack_rows`` (blocks of FMA_ROWS channels per group);
    offsets [K] int64 — where each k's run starts in its group's flat phases
    (``_planes.phase_offsets``, by the plan once per input shape); b [N] float32 — bias (zeros if
    none); x [B,C,H,W] float32; xq [B, C·S + FMA_SLACK] float32 — workspace, S = sh·sw·Hq·Wq with
    Hq = OH + (kh−1)·dh // sh, Wq = OW + (kw−1)·dw // sw; y [B,N,OH,OW] float32 — output;
    kh, kw, sh, sw, dh, dw, pt, pl, groups — geometry (pads top, left); lo, hi — fused activation
    bounds (−inf/inf for none, 0/inf for Relu).
    Preconditions: N and C divisible by groups; shapes as above.
    Work: 2·B·N'·⌈P/FMA_PIXELS⌉·FMA_PIXELS·K flops, P = (OH−1)·Wq + OW, N' = N rounded up to whole
    blocks per group; reads x once and writes xq once; each tile reads K runs of xq (from L1/L2)
    and its block's K·FMA_ROWS weights.
    """
    B, C = x.shape[0], x.shape[1]
    N, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    Hq, Wq = OH + (kh - 1) * dh // sh, OW + (kw - 1) * dw // sw
    S = sh * sw * Hq * Wq
    for t in prange(B * C):
        bi, c = t // C, t % C
        pad_phases(x[bi, c], xq[bi][c * S:(c + 1) * S].reshape((sh * sw * Hq, Wq)),
                   sh, sw, pt, pl, np.float32(0.0))
    zero_tails(xq, C * S)  # the slack that the last chunk's dropped positions read
    per, K = N // groups, offsets.shape[0]
    blocks = (per + FMA_ROWS - 1) // FMA_ROWS
    positions = (OH - 1) * Wq + OW
    chunks = (positions + FMA_PIXELS - 1) // FMA_PIXELS
    spans = min(chunks, MIN_TASKS)  # tasks: (image, span of chunks, unit of channel blocks)
    units, each = channel_groups(groups * blocks, B * spans)
    per_span = (chunks + spans - 1) // spans
    group_floats = C // groups * S
    y3 = y.reshape((B, N, OH * OW))
    lo32, hi32 = np.float32(lo), np.float32(hi)
    for t in prange(B * spans * units):
        bi, rest = t // (spans * units), t % (spans * units)
        span, unit = rest // units, rest % units
        sums = np.empty((FMA_ROWS, FMA_PIXELS), np.float32)
        for gb in range(unit * each, min(groups * blocks, (unit + 1) * each)):
            g, n0 = gb // blocks, gb % blocks * FMA_ROWS
            rows = min(FMA_ROWS, per - n0)
            for chunk in range(span * per_span, min(chunks, (span + 1) * per_span)):
                p0 = chunk * FMA_PIXELS
                fma_tile(sums, xq[bi], offsets, wp, gb * K * FMA_ROWS, g * group_floats + p0)
                _store_rows(sums, rows, min(FMA_PIXELS, positions - p0), p0, b, g * per + n0,
                            Wq, OW, lo32, hi32, y3[bi])


conv2d_dense_f32 = njit(cache=True, parallel=True, nogil=True)(_conv2d_dense_f32)

KERNELS = {"conv2d_dense_f32": conv2d_dense_f32}

__all__ = ["KERNELS", "conv2d_dense_f32"]
