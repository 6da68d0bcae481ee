"""im2col / im2row: the column matrix of a convolution, for the dense GEMM paths.

cols[b, g, k, m] = xpad[b, g·C/g + c, oh·sh + i·dh, ow·sw + j·dw] with k = c·kh·kw + i·kw + j and
m = oh·OW + ow, the same k as the weight matrix (N, C/g·kh·kw). ``im2col_*`` writes it K-major
(B, g, K, OH, OW) = (K, M) per (b, g), the layout numpy BLAS and the CSR matmuls take;
``im2row_dense_i8`` writes it pixel-major (B, g, OH, OW, K), K contiguous and tap-major, from a
channels-last input, for the dense int8 GEMM.
1×1 stride-1 unpadded convs need neither: x[b] viewed (C, H·W) already is the (K, M) matrix, and
its channels-last copy (``channels_last_dense_i8``) the (M, K) one.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._planes import out_range

_U = np.uint64


@njit(cache=True)
def _fill_col_row(x, row, i, j, sh, sw, dh, dw, pt, pl, fill):
    """row [OH,OW] = plane x [H,W] read by tap (i, j) at every output pixel; ``fill`` on pads.

    The valid output columns [lo, hi) of tap j are computed once, not per pixel.
    """
    H, W = x.shape
    OH, OW = row.shape
    lo, hi = out_range(j, dw, pl, sw, W, OW)
    for oh in range(OH):
        h = oh * sh + i * dh - pt
        r = row[oh]
        if h < 0 or h >= H:
            r[:] = fill
            continue
        r[:lo] = fill
        r[hi:] = fill
        xr, rv, c = x[h], r[lo:hi], _U(lo * sw + j * dw - pl)  # c ≥ 0: output lo's input column
        if sw == 1:  # uint64 indices, and rv from index 0: no wraparound test, the copy vectorizes
            for q in range(_U(hi - lo)):
                rv[q] = xr[c + q]
        elif sw == 2:  # a constant stride: the loads vectorize as shuffles
            for q in range(_U(hi - lo)):
                rv[q] = xr[c + _U(2) * q]
        else:
            for q in range(_U(hi - lo)):
                rv[q] = xr[c + _U(sw) * q]


def _im2col_dense_f32(x, cols, kh, kw, sh, sw, dh, dw, pt, pl):
    # x (B,C,H,W) -> cols (B, g, C/g·kh·kw, OH, OW)
    """cols[b,g,k,oh,ow] = x[b, g·C/g + c, oh·sh + i·dh − pt, ow·sw + j·dw − pl], 0.0 on pads.

    Loop nest: prange over rows (b, g, k = c·kh·kw + i·kw + j); per output row, one (strided) copy
    of the valid columns [lo, hi) (computed once per row of cols) and a fill of the pads.
    x [B,C,H,W] float32 — input; cols [B,g,K,OH,OW] float32 — output, K = C/g·kh·kw (a view of the
    (B, g, K, M) matrices); kh, kw, sh, sw, dh, dw, pt, pl — kernel, strides, dilations, pads top/left
    Preconditions: OH, OW from zeroskip.geometry.geometry; C divisible by g.
    Work: no flops; B·C·kh·kw·OH·OW elements written (4 bytes each), x read from cache.
    """
    B, C = x.shape[0], x.shape[1]
    G, K = cols.shape[1], cols.shape[2]
    taps = kh * kw
    for t in prange(B * G * K):
        b, g, k = t // (G * K), (t // K) % G, t % K
        _fill_col_row(x[b, g * (C // G) + k // taps], cols[b, g, k], (k % taps) // kw, k % kw,
                      sh, sw, dh, dw, pt, pl, 0.0)


im2col_dense_f32 = njit(cache=True, parallel=True, nogil=True)(_im2col_dense_f32)


def _im2col_dense_i8(x, x_zero_point, cols, kh, kw, sh, sw, dh, dw, pt, pl):
    # x (B,C,H,W) uint8|int8 -> cols (B, g, C/g·kh·kw, OH, OW)
    """cols[b,g,k,oh,ow] = x[b, g·C/g + c, oh·sh + i·dh − pt, ow·sw + j·dw − pl], x_zero_point on pads.

    real = x_scale·(q − x_zero_point), per tensor: a pad is real 0, which is x_zero_point (not 0),
    so the GEMM's zero-point correction is the full row sum x_zp·Σ_k w[n,k]. No arithmetic, no
    rounding, no saturation. Loop nest, arguments and work as im2col_dense_f32 (1 byte per element).
    """
    B, C = x.shape[0], x.shape[1]
    G, K = cols.shape[1], cols.shape[2]
    taps = kh * kw
    for t in prange(B * G * K):
        b, g, k = t // (G * K), (t // K) % G, t % K
        _fill_col_row(x[b, g * (C // G) + k // taps], cols[b, g, k], (k % taps) // kw, k % kw,
                      sh, sw, dh, dw, pt, pl, x_zero_point)


im2col_dense_i8 = njit(cache=True, parallel=True, nogil=True)(_im2col_dense_i8)


COPY_BLOCK = 16
"""im2row_dense_i8 copies a run of kw·C bytes whose length is not a multiple of this as whole
blocks of it, where the row and the input have room past the run's end: the bytes past it are the
next run's, written next, or the row's padding columns (zero weights). A loop with a length that
is a multiple of 16 runs as vector moves with no byte tail: the stem's 21-byte runs (7 taps × 3
channels) as 32 bytes took its im2row from 0.88–0.92 to 0.67–0.72 ms (one thread, interleaved)."""


def _im2row_dense_i8(xh, x_zero_point, rows, kh, kw, sh, sw, dh, dw, pt, pl):
    # xh (B,H,W,C) uint8|int8, channels last -> rows (B, g, OH, OW, kh·kw·C/g), tap-major
    """rows[b,g,oh,ow,(i·kw + j)·C/g + c] = xh[b, oh·sh + i·dh − pt, ow·sw + j·dw − pl, g·C/g + c],
    x_zero_point on pads.

    Channels last, so each tap (i, j) of a pixel is one contiguous run of C/g bytes, copied from one
    contiguous run of the input: the NCHW gather (one cache line per channel per element) cost as much
    as the GEMM. The GEMM's weights are permuted to the same tap-major order at plan time.
    Loop nest: prange over (b, g, oh); per pixel ow and tap row i: with one group, dilation 1 and the
    row's window inside x, its kw taps are kw·C adjacent bytes of xh and of the row (k is tap-major),
    so one copy (the 7×7 stem over 3 channels: one 21-byte copy where there were seven of 3); else,
    per tap (i, j), a C/g-byte copy or fill.
    xh [B,H,W,C] uint8|int8 — the input, channels last; x_zero_point int — the pad value (real 0)
    rows [B,g,OH,OW,K] xh.dtype — output, the (M, K) matrix per (b, g), K = kh·kw·C/g
    geometry ints as im2col_dense_f32. Work: no flops; B·C·kh·kw·OH·OW bytes written.
    """
    B, H, W, C = xh.shape
    G, OH, OW = rows.shape[1], rows.shape[2], rows.shape[3]
    Cg = C // G
    run = kw * C  # one tap row's bytes, when its kw taps are side by side in xh
    blocks = (run + COPY_BLOCK - 1) // COPY_BLOCK  # the run copied as whole blocks, where it fits
    rounded = run % COPY_BLOCK != 0  # whole runs of blocks copy as fast as slices
    xf = xh.reshape(B * H * W * C)
    K = rows.shape[4]
    for t in prange(B * G * OH):
        b, g, oh = t // (G * OH), (t // OH) % G, t % OH
        c0 = g * Cg
        for ow in range(OW):
            r = rows[b, g, oh, ow]
            w0 = ow * sw - pl
            side_by_side = G == 1 and dw == 1 and w0 >= 0 and w0 + kw <= W
            for i in range(kh):
                h = oh * sh + i * dh - pt
                if side_by_side and 0 <= h < H:  # the row's kw taps: one copy of kw·C bytes
                    start = ((b * H + h) * W + w0) * C
                    length = run
                    if rounded and i * run + blocks * COPY_BLOCK <= K \
                            and start + blocks * COPY_BLOCK <= xf.size:
                        # whole blocks; the bytes past the run are the next run's, written next,
                        # or the row's padding columns
                        length = blocks * COPY_BLOCK
                    dst, src = r[i * run:], xf[start:]
                    for c in range(_U(length)):  # slices from index 0: no wraparound test
                        dst[c] = src[c]
                    continue
                for j in range(kw):
                    w = ow * sw + j * dw - pl
                    k0 = (i * kw + j) * Cg
                    if 0 <= h < H and 0 <= w < W:  # uint64 indices: no wraparound test
                        src = xh[b, h, w]
                        for c in range(_U(Cg)):
                            r[_U(k0) + c] = src[_U(c0) + c]
                    else:
                        for c in range(_U(Cg)):
                            r[_U(k0) + c] = x_zero_point


im2row_dense_i8 = njit(cache=True, parallel=True, nogil=True)(_im2row_dense_i8)

CHANNELS_PER_STEP = 8  # channels moved per pass over a row: 8 input lines read in step


def _channels_last_dense_i8(x, xh):
    # x (B,C,H,W) uint8|int8 -> xh (B,H,W,C), the same bytes channels last
    """xh[b,h,w,c] = x[b,c,h,w]: the input of im2row (and, for a 1×1 stride-1 unpadded conv, the
    GEMM's (M, K) matrix itself).

    Loop nest: prange over (b, h); per step of CHANNELS_PER_STEP channels, per w, the step's bytes
    written side by side from as many input rows, which the cache keeps open together. A transpose
    one channel at a time (each w a new cache line of xh) ran 3–4× slower; this runs at numpy's
    speed on one thread (64×56×56: 0.10 against 0.13 ms) and, unlike numpy, on every thread.
    x [B,C,H,W] uint8|int8 — C-contiguous; xh [B,H,W,C] x.dtype — output, C-contiguous.
    Work: no arithmetic; B·C·H·W bytes read and written.
    """
    B, C, H, W = x.shape
    C_stepped = C - C % CHANNELS_PER_STEP
    for t in prange(B * H):
        b, h = t // H, t % H
        src = x[b, :, h, :]  # (C, W), rows W apart
        dst = xh[b, h]       # (W, C)
        for c0 in range(0, C_stepped, CHANNELS_PER_STEP):
            for w in range(_U(W)):
                for c in range(CHANNELS_PER_STEP):
                    dst[w, _U(c0 + c)] = src[_U(c0 + c), w]
        for c in range(C_stepped, C):
            for w in range(_U(W)):
                dst[w, _U(c)] = src[_U(c), w]


channels_last_dense_i8 = njit(cache=True, parallel=True, nogil=True)(_channels_last_dense_i8)

TRANSPOSE_ROWS = 16
"""Rows of x whose k-th values one step writes side by side: 64 bytes of float32, one cache line of
xt."""
TRANSPOSE_COLUMNS = 64
"""Columns of x (rows of xt) per parallel task."""


def _transpose_dense_f32(x, xt):
    # x (M,K) float32 -> xt (K,M), the CSR GEMM's activations channel-major
    """xt[k, m] = x[m, k]: a Gemm's or MatMul's activations as the CSR GEMM reads them.

    Loop nest: prange over runs of TRANSPOSE_COLUMNS columns k; per run of TRANSPOSE_ROWS rows m,
    per k, the run's values written side by side (one cache line of xt) from as many rows of x,
    which the cache keeps open while the task walks its columns. NumPy's copy of x.T walks one
    side a value at a time: M = 128, K = 1024, one thread, 0.37 ms (AMD EPYC Zen 4), where the
    CSR GEMM after it takes 0.50.
    x [M,K] float32 — C-contiguous; xt [K,M] float32 — output, C-contiguous.
    Work: no arithmetic; M·K values read and written.
    """
    M, K = x.shape
    runs = (K + TRANSPOSE_COLUMNS - 1) // TRANSPOSE_COLUMNS
    stepped = M - M % TRANSPOSE_ROWS
    for t in prange(runs):
        k0, k1 = t * TRANSPOSE_COLUMNS, min(K, (t + 1) * TRANSPOSE_COLUMNS)
        for m0 in range(0, stepped, TRANSPOSE_ROWS):
            for k in range(_U(k0), _U(k1)):
                for i in range(TRANSPOSE_ROWS):
                    xt[k, _U(m0 + i)] = x[_U(m0 + i), k]
        for m in range(stepped, M):
            for k in range(_U(k0), _U(k1)):
                xt[k, _U(m)] = x[_U(m), k]


transpose_dense_f32 = njit(cache=True, parallel=True, nogil=True)(_transpose_dense_f32)

KERNELS = {"im2col_dense_f32": im2col_dense_f32, "im2col_dense_i8": im2col_dense_i8,
           "im2row_dense_i8": im2row_dense_i8, "channels_last_dense_i8": channels_last_dense_i8,
           "transpose_dense_f32": transpose_dense_f32}
