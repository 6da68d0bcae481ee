"""Per-plane helpers shared by the convolution, depthwise, im2col and pooling kernels.

- ``pad_plane`` / ``pad_planes``: copy an input plane into a padded workspace, so no inner loop
  tests a boundary (docs/kernels.md, "The padded plane and the wide accumulator").
- ``accumulator_pitch``, ``tap_offsets``, ``conv_channel``: one output channel of a direct
  convolution, accumulated tile by tile of output rows, one axpy per weight tap (conv_csr.py, and
  depthwise.py for kernels other than 3×3); ``conv_channel_rq`` requantizes each tile into 8 bits.
- ``out_range``: the outputs whose tap reads inside the input (im2col.py, pool.py).

The leading underscore of the module's name keeps the kernel collector (``kernels/__init__.py``)
from looking here: it holds helpers only, no KERNELS.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._runs import item_bytes, pad_row
from .quant import requantize_row

INT32_MIN, INT32_MAX = np.int32(-2 ** 31), np.int32(2 ** 31 - 1)
"""The int32 kernels' clamp bounds: no clamp (requantization saturates later)."""

ACC_TILE = 4096
"""Accumulator elements per row tile: 16 KB of int32/float32, half of Zen 3's 32 KB L1D, so the tile
stays in L1 while every tap of the channel streams over it. Sized from the cache, not yet swept:
bench/test_bench_conv.py's 14×14, 28×28 and 56×56 layers fit in one tile; the 112×112 layers
(resnet50-conv1, stride 2: pitch 112) use 36-row tiles."""

TAPS_UNROLL = 4
"""Nonzeros (taps) added per pass over the accumulator: each pass loads and stores acc once for four
products. bench/test_bench_conv.py (ResNet-50 3×3, 14×14): ~2× faster than one tap per pass for int8,
neutral for float32; a dense tap loop would vectorize the same way."""

_U = np.uint64

SHORT_ROW_BYTES = 64
"""Padded rows up to this many bytes are written by ``_runs.pad_row`` (one masked load and store
each where the CPU has AVX-512 BW), longer ones by a flat fill and vectorized row copies. One
thread, all planes, uint8, before and after: 384×14×14 0.050 → 0.009 ms, 192×28×28 0.034 →
0.009, 144×56×56 0.038 → 0.013; at 96×112×112 (114-byte rows, 2.5 MB in and out) masked rows
took 0.067 ms where the flat fill takes 0.045."""


@njit(cache=True, inline="always")
def pad_plane(x, xq, pt, pl, fill, flip=None):
    """xq [Hp,Wp] = x [H,W] shifted by (pt, pl), ``fill`` outside x (xq may crop x's tail); with
    ``flip`` (an integer of x's type), each copied value xor ``flip`` (``fill`` as given: the
    caller flips it too). The depthwise row tile pads int8 planes as x + 128: flip −128.

    No slice per row (Numba reference-counts each one) and uint64 indices (no wraparound test), so
    the copies vectorize; the column ranges are computed once per plane. The whole plane is filled
    first in one flat loop and x's rows copied over it: the fill loops of each row's few pad
    columns had cost as much as its copy (all planes of 384×14×14: 0.106 → 0.062 ms; 144×56×56
    0.126 → 0.083; one thread). Short rows (SHORT_ROW_BYTES) now go one at a time through
    ``_runs.pad_row``, each in one pass. xq is C-contiguous (a plane of the kernels' workspaces).

    Inlined where it is called (a call with array arguments costs about 25 ns, a sixth of a 14×14
    depthwise plane), while the two paths stay calls of their own: inlined together into one
    body, the short-row path padded a 14×14 plane in 99 ns where as its own call it took 70 (this
    function not inlined in either case; inlined, 25–30 ns).
    """
    Hp, Wp = xq.shape
    H, W = x.shape
    r0 = min(max(pt, 0), Hp)                     # xq rows r0..r1 hold x rows r0−pt..r1−pt
    r1 = max(r0, min(pt + H, Hp))
    u0 = min(max(pl, 0), Wp)                     # xq columns u0..u1 hold x columns u0−pl..u1−pl
    u1 = max(u0, min(pl + W, Wp))
    if Wp * item_bytes(xq) <= SHORT_ROW_BYTES:
        _pad_short_rows(x, xq, r0, r1, u0, u1, pt, pl, fill, flip)
    else:
        _pad_long_rows(x, xq, r0, r1, u0, u1, pt, pl, fill, flip)


@njit(cache=True)
def _pad_short_rows(x, xq, r0, r1, u0, u1, pt, pl, fill, flip):
    """pad_plane's rows one at a time, each in one pass (_runs.pad_row: one masked load and store
    where the CPU has AVX-512 BW)."""
    for r in range(xq.shape[0]):
        inside = r0 <= r < r1
        pad_row(xq, r, x, r - pt if inside else 0, u0 - pl, u0, u1 - u0 if inside else 0, fill,
                flip)


@njit(cache=True)
def _pad_long_rows(x, xq, r0, r1, u0, u1, pt, pl, fill, flip):
    """pad_plane's rows as a flat fill of the whole plane, then x's rows copied over it."""
    Hp, Wp = xq.shape
    flat = xq.reshape(Hp * Wp)
    for i in range(_U(Hp * Wp)):
        flat[i] = fill
    src, m = _U(u0 - pl), _U(u1 - u0)
    for r in range(_U(r0), _U(r1)):
        xr = r - _U(pt)
        if flip is None:
            for k in range(m):
                xq[r, _U(u0) + k] = x[xr, src + k]
        else:
            for k in range(m):
                xq[r, _U(u0) + k] = x[xr, src + k] ^ flip


@njit(cache=True)
def pad_phases(x, xq, sh, sw, pt, pl, fill):
    """xq [sh·sw·Hq, Wq] = the phases of x [H,W] padded: block (a·sw + b) of Hq rows holds
    xq[(a·sw + b)·Hq + u, v] = x[u·sh + a − pt, v·sw + b − pl], ``fill`` outside x.

    A stride-(sh, sw) conv reads input row oh·sh + i·dh, which is row oh + (i·dh)//sh of phase
    (i·dh) mod sh: in the phases every tap is a stride-1 run, so the strided conv runs the
    stride-1 loop (conv_csr.py). Stride 1 is one phase, the padded plane itself (pad_plane).
    """
    if sh == 1 and sw == 1:
        pad_plane(x, xq, pt, pl, fill)
        return
    rows, Wq = xq.shape
    Hq = rows // (sh * sw)
    H, W = x.shape
    flat = xq.reshape(rows * Wq)
    for i in range(_U(rows * Wq)):  # as pad_plane: one flat fill, then x's values over it
        flat[i] = fill
    for a in range(sh):
        for b in range(sw):
            block = (a * sw + b) * Hq
            # the phase's columns v0 .. v1 hold x columns v·sw + b − pl, inside x
            v0 = min(max(0, (pl - b + sw - 1) // sw), Wq)
            v1 = max(v0, min(Wq, (W - 1 + pl - b) // sw + 1))
            src, m = _U(v0 * sw + b - pl), _U(v1 - v0)
            for u in range(Hq):
                h = u * sh + a - pt
                if 0 <= h < H:
                    r = _U(block + u)
                    for k in range(m):
                        xq[r, _U(v0) + k] = x[h, src + _U(sw) * k]


@njit(cache=True)
def tap_starts(indices, Cg, kh, kw, Hq, Wq, sh, sw, dh, dw):
    """starts [nnz] int64: where each nonzero's tap (column indices[e] of the conv's CSR weight)
    starts in the flat phases of its group's planes (phase_offsets[indices[e]]): the sparse convs
    read tap e of output position p at starts[e] + p. Depends on the input's size, so the plan
    computes it once per input shape."""
    offs = phase_offsets(Cg, kh, kw, Hq, Wq, sh, sw, dh, dw)
    starts = np.empty(indices.shape[0], np.int64)
    for e in range(indices.shape[0]):
        starts[e] = offs[np.int64(indices[e])]
    return starts


@njit(cache=True)
def phase_offsets(Cg, kh, kw, Hq, Wq, sh, sw, dh, dw):
    """offs [Cg·kh·kw] int64: where tap k = c·kh·kw + i·kw + j starts in the flat phases of a group's
    planes (pad_phases): phase ((i·dh) mod sh, (j·dw) mod sw), row (i·dh)//sh, column (j·dw)//sw.
    Stride 1: tap_offsets over the padded planes."""
    offs = np.empty(Cg * kh * kw, dtype=np.int64)
    for c in range(Cg):
        for i in range(kh):
            for j in range(kw):
                phase = c * sh * sw + (i * dh) % sh * sw + (j * dw) % sw
                offs[(c * kh + i) * kw + j] = (phase * Hq + (i * dh) // sh) * Wq + (j * dw) // sw
    return offs


@njit(cache=True)
def pad_planes(x, xp, pt, pl, fill):
    """xp [B,C,Hp,Wp] = x [B,C,H,W] padded, one (b, c) plane per parallel iteration."""
    B, C = x.shape[0], x.shape[1]
    for t in prange(B * C):
        pad_plane(x[t // C, t % C], xp[t // C, t % C], pt, pl, fill)


@njit(cache=True, inline="always")
def row_run(p0, count, oh, Wq, OW):
    """(a, z): the positions a .. z − 1 of output row oh that a block of ``count`` positions from
    p0 holds, at the phases' pitch Wq (p = oh·Wq + ow; the columns ow ≥ OW are dropped), with
    z ≥ a: empty (z = a) when the block starts in the row's dropped columns. The convs' epilogues
    slice their sums [a − p0, z − p0) and y's row [a − oh·Wq, z − oh·Wq) by it: an end below the
    start had sliced the sums from their end and written past y (conv2d_csr_rq_i8 on AVX2)."""
    a = max(p0, oh * Wq)
    return a, max(a, min(p0 + count, oh * Wq + OW))


@njit(cache=True)
def accumulator_pitch(OW, Wp, sh, sw):
    """Row pitch of the accumulator: the padded width Wp for stride 1 (wide rows), else OW."""
    return Wp if sh == 1 and sw == 1 else OW


@njit(cache=True)
def tap_offsets(Cg, kh, kw, Hp, Wp, dh, dw):
    """offs [Cg·kh·kw] int64: where tap k = c·kh·kw + i·kw + j starts in the flat padded planes.

    Built once per call (K entries), so the hot loop does a gather instead of four divisions.
    """
    offs = np.empty(Cg * kh * kw, dtype=np.int64)
    for c in range(Cg):
        for i in range(kh):
            for j in range(kw):
                offs[(c * kh + i) * kw + j] = c * Hp * Wp + i * dh * Wp + j * dw
    return offs


@njit(cache=True, inline="always")
def _axpy4(acc, v0, v1, v2, v3, xf, b0, b1, b2, b3, r0, r1, OW, Wp, sh, sw):
    """acc[(r−r0)·P + ow] += Σ_t v_t·xf[b_t + r·sh·Wp + ow·sw] for rows r0..r1, ow < OW, 4 taps.

    Stride 1: the tile is one contiguous run (wide rows, P = Wp); else one strided run per row.
    The slices make every index provably in range, which is what lets LLVM vectorize the loop.
    Strided rows index xf with uint64 (no wraparound test; a strided slice would not vectorize),
    stride 2 spelled as a constant so the loads vectorize as shuffles (4× on int8, 1.8× on f32).
    """
    if sh == 1 and sw == 1:
        L, s = (r1 - r0 - 1) * Wp + OW, r0 * Wp
        x0, x1 = xf[b0 + s:b0 + s + L], xf[b1 + s:b1 + s + L]
        x2, x3 = xf[b2 + s:b2 + s + L], xf[b3 + s:b3 + s + L]
        for q in range(L):
            acc[q] += v0 * x0[q] + v1 * x1[q] + v2 * x2[q] + v3 * x3[q]
    else:
        for r in range(r0, r1):
            a, s = acc[(r - r0) * OW:(r - r0 + 1) * OW], _U(r * sh * Wp)
            c0, c1, c2, c3 = _U(b0) + s, _U(b1) + s, _U(b2) + s, _U(b3) + s
            if sw == 2:
                for ow in range(_U(OW)):
                    u = _U(2) * ow
                    a[ow] += v0 * xf[c0 + u] + v1 * xf[c1 + u] + v2 * xf[c2 + u] + v3 * xf[c3 + u]
            else:
                for ow in range(_U(OW)):
                    u = _U(sw) * ow
                    a[ow] += v0 * xf[c0 + u] + v1 * xf[c1 + u] + v2 * xf[c2 + u] + v3 * xf[c3 + u]


@njit(cache=True, inline="always")
def _axpy1(acc, v, xf, base, r0, r1, OW, Wp, sh, sw):
    """acc[(r−r0)·P + ow] += v·xf[base + r·sh·Wp + ow·sw]: one tap, as _axpy4."""
    if sh == 1 and sw == 1:
        L, s = (r1 - r0 - 1) * Wp + OW, base + r0 * Wp
        x0 = xf[s:s + L]
        for q in range(L):
            acc[q] += v * x0[q]
    else:
        for r in range(r0, r1):
            a, c = acc[(r - r0) * OW:(r - r0 + 1) * OW], _U(base + r * sh * Wp)
            if sw == 2:
                for ow in range(_U(OW)):
                    a[ow] += v * xf[c + _U(2) * ow]
            else:
                for ow in range(_U(OW)):
                    a[ow] += v * xf[c + _U(sw) * ow]


@njit(cache=True)
def _taps_into_tile(acc, cols, vals, offs, xf, r0, r1, OW, Wp, sh, sw):
    """acc tile += Σ_e vals[e]·xf shifted by offs[cols[e]], TAPS_UNROLL taps per pass."""
    T = len(cols)
    T4 = T - T % TAPS_UNROLL
    cast = acc.dtype.type  # int8 weights widen to int32 (not int64) before the products
    for e in range(0, T4, TAPS_UNROLL):
        _axpy4(acc, cast(vals[e]), cast(vals[e + 1]), cast(vals[e + 2]), cast(vals[e + 3]), xf,
               offs[cols[e]], offs[cols[e + 1]], offs[cols[e + 2]], offs[cols[e + 3]],
               r0, r1, OW, Wp, sh, sw)
    for e in range(T4, T):
        _axpy1(acc, cast(vals[e]), xf, offs[cols[e]], r0, r1, OW, Wp, sh, sw)


@njit(cache=True)
def _store(acc, y, r0, r1, P, lo, hi):
    """y [OH,OW] rows r0..r1 = clamp(accumulator tile, lo, hi), dropping the wide rows' extra
    columns (int32 accumulators pass the type's own bounds: no clamp)."""
    OW = y.shape[1]
    for r in range(r0, r1):
        a, yr = acc[(r - r0) * P:(r - r0) * P + OW], y[r]
        for ow in range(OW):
            yr[ow] = min(max(a[ow], lo), hi)


@njit(cache=True, inline="always")
def _tile_sums(acc, cols, vals, offs, xf, b, r0, r1, P, OW, Wp, sh, sw):
    """The tile of output rows r0..r1: acc = b, then + the channel's taps."""
    acc[:(r1 - r0) * P] = b
    _taps_into_tile(acc, cols, vals, offs, xf, r0, r1, OW, Wp, sh, sw)


@njit(cache=True)
def conv_channel(acc, cols, vals, offs, xf, b, y, rows, P, Wp, sh, sw, lo, hi):
    """One output channel y [OH,OW] = clamp(b + Σ_e vals[e]·(xf shifted by offs[cols[e]]), lo, hi),
    accumulated tile by tile of ``rows`` output rows in ``acc`` (shared by the f32 and i8 convs and
    the depthwise kernels; Numba compiles it once per dtype)."""
    OH, OW = y.shape
    for r0 in range(0, OH, rows):
        r1 = min(OH, r0 + rows)
        _tile_sums(acc, cols, vals, offs, xf, b, r0, r1, P, OW, Wp, sh, sw)
        _store(acc, y, r0, r1, P, lo, hi)


@njit(cache=True)
def conv_channel_rq(acc, cols, vals, offs, xf, b, y, rows, P, Wp, sh, sw, m0n, shift_n,
                    y_zero_point, lo, hi):
    """conv_channel's int32 sums, requantized from the tile (in L1) into the 8-bit y [OH,OW] by
    requantize_row with the channel's multiplier (m0n, shift_n): the int32 plane is never stored."""
    OH, OW = y.shape
    for r0 in range(0, OH, rows):
        r1 = min(OH, r0 + rows)
        _tile_sums(acc, cols, vals, offs, xf, b, r0, r1, P, OW, Wp, sh, sw)
        for r in range(r0, r1):
            requantize_row(acc[(r - r0) * P:(r - r0) * P + OW], m0n, shift_n, y_zero_point, lo, hi,
                           y[r])


@njit(cache=True)
def out_range(t, d, p, s, n, O):
    """[lo, hi): the outputs o < O whose tap t reads inside the input, i.e. 0 ≤ o·s + t·d − p < n."""
    lo = min(O, max(0, (p - t * d + s - 1) // s))
    hi = max(lo, min(O, (n - 1 + p - t * d) // s + 1))
    return lo, hi
