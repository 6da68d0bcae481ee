"""A pointwise (1×1) conv and the 3×3 depthwise conv that reads it, in one pass over the channels.

MobileNetV2's blocks expand their input with a 1×1 conv (16 → 96 channels at 112×112 in the first
one), clamp it, and convolve each expanded channel with its own 3×3 filter. Run as two kernels, the
expanded tensor (4.8 MB of float32 at 112×112) goes out to memory and comes back; with two threads
the depthwise kernel's half of the channels is not always the half its own core wrote. Here each
task takes a run of expanded channels and, for each one, computes its plane into a scratch (the
CSR row of that channel, row blocks over the flat plane), pads it into a second scratch, and at
once convolves it into the output; both scratches stay in L1/L2. The expanded tensor never exists.

The sums are the two kernels' sums, in their order (``matmul_csr_f32``'s row block over the
channel's nonzeros from its bias, the clamp, then ``depthwise_dense_f32``'s 3×3 loops), so the
bytes are theirs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._rows import PIXELS_PER_BLOCK, row_block
from ._planes import pad_plane
from .depthwise import padded_3x3_f32

TASKS = 32
"""Parallel tasks per image: runs of channels (as many runs as channels when there are fewer),
enough for two threads to even out, few enough that each task allocates its scratches once for
many planes."""


@njit(cache=True, inline="always")
def _expand_plane(indptr, indices, data, b, lo, hi, xt, n, e):
    """e [H·W] = channel n of the clamped pointwise conv of xt (K, H·W): row blocks of
    PIXELS_PER_BLOCK pixels from b[n] over the row's nonzeros, as matmul_csr_f32 sums them."""
    start, end = np.int64(indptr[n]), np.int64(indptr[n + 1])
    M = xt.shape[1]
    for m0 in range(0, M, PIXELS_PER_BLOCK):
        row_block(e, m0, xt, indices, data, start, end, m0, min(PIXELS_PER_BLOCK, M - m0), True,
                  b[n])
    for m in range(M):
        e[m] = min(max(e[m], lo), hi)


def _pointwise_depthwise_f32(indptr, indices, data, b1, lo1, hi1, x, taps, b2, y, hp, wp, sh,
                             sw, dh, dw, pt, pl, lo2, hi2):
    # W (N,K) csr 1×1 conv of x (B,K,H,W), clamped, then the 3×3 depthwise conv -> y (B,N,OH,OW)
    """y = depthwise_dense_f32(taps, b2, matmul_csr_f32(W, b1, x, lo1, hi1), lo2, hi2), in one pass

    e[b,n] = clamp(b1[n] + Σ_{k ∈ nz(n)} W[n,k]·x[b,k], lo1, hi1), a plane of H×W (the 1×1 conv);
    y[b,n,oh,ow] = clamp(b2[n] + Σ_(i,j) taps[n, 3i+j]·ep[b,n, oh·sh+i·dh, ow·sw+j·dw], lo2, hi2)
    with ep the plane e zero-padded by (pt, pl) to hp×wp (the 3×3 depthwise conv, multiplier 1).
    Loop nest: prange tasks (b, a run of channels, TASKS runs per image); per channel n, its plane
    of e into a padded scratch (_expand_plane), then the depthwise loops on it (padded_3x3_f32,
    as depthwise_dense_f32 runs them on a plane it padded).
    indptr [N+1], indices [nnz] int, data [nnz] float32 — CSR of W (N,K), indices sorted in a row
    b1 [N] float32, lo1, hi1 float32 — the pointwise conv's bias and clamp
    x [B,K,H,W] float32, C-contiguous
    taps [N,9] float32, b2 [N] float32, lo2, hi2 float32 — the depthwise conv's taps, bias, clamp
    y [B,N,OH,OW] float32, C-contiguous, overwritten
    hp, wp, sh, sw, dh, dw, pt, pl — the depthwise conv's padded plane, strides, dilations, pads
    Preconditions: valid CSR with indices < K; the geometry from conv_geometry for x's H×W.
    Work: 2·B·H·W·nnz + 18·B·N·OH·OW flops; reads x (nnz/N planes per channel, from L2), writes y.
    """
    B, K, H, W = x.shape
    N = y.shape[1]
    x3, yf = x.reshape(B, K, H * W), y.reshape(y.size)
    runs = min(N, TASKS)
    for task in prange(B * runs):
        bi, run = task // runs, task % runs
        e, s = np.empty(H * W, np.float32), np.empty(hp * wp, np.float32)
        e2, s2 = e.reshape(H, W), s.reshape(hp, wp)
        for n in range(run * N // runs, (run + 1) * N // runs):
            _expand_plane(indptr, indices, data, b1, lo1, hi1, x3[bi], n, e)
            pad_plane(e2, s2, pt, pl, np.float32(0.0))
            padded_3x3_f32(taps, b2, s2, s, 0, y, yf, bi, n, 1, sh, sw, dh, dw, lo2, hi2)


pointwise_depthwise_f32 = njit(cache=True, parallel=True, nogil=True)(_pointwise_depthwise_f32)

KERNELS = {"pointwise_depthwise_f32": pointwise_depthwise_f32}
