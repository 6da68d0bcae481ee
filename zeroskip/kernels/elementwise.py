"""Elementwise kernels: the quantized Add, and the float32 steps that no fusion absorbed.

``rounding_shift`` is the one rounding of docs/quantization.md §3 (round half away from zero of
p / 2^r); pool.py shares it.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import config, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._cpu import HAS_AVX512_VNNI
from ._requant import (QADD_SHIFTS, declare_masked_byte_load, declare_masked_byte_store,
                       lanes_up_to, qadd_bytes)

ELEMENTWISE_BLOCK = 4096
"""Elements per parallel iteration: large enough that the prange overhead vanishes, small enough to
split a 56×56×256 residual (800 K elements) over every core. Each block's loop indexes slices from
0: an index that starts at blk·ELEMENTWISE_BLOCK may, to LLVM, be negative, and its wraparound test
turned every load and store into single-byte inserts and extracts (4× slower)."""


@njit(cache=True, inline="always")
def rounding_shift(p, r):
    """round(p / 2^r), ties away from zero, for int64 p and 1 ≤ r ≤ 62: (p + 2^(r−1) − [p<0]) >> r."""
    return (p + (np.int64(1) << (r - 1)) - np.int64(p < 0)) >> r


def qadd_run_loops(y, a, b, a_zero_point, b_zero_point, a_multiplier, b_multiplier, shift,
                   y_zero_point, lo, hi):
    """y[e] = qadd_value(a[e], b[e], …) for every e of the 1-D arrays y, a, b (of one length; y may
    be a): the plain loop, and what the IR form below computes 64 at a time."""
    for e in range(y.shape[0]):
        y[e] = qadd_value(a[e], b[e], a_zero_point, b_zero_point, a_multiplier, b_multiplier,
                          shift, y_zero_point, lo, hi)


@intrinsic
def _qadd_run_ir(typingctx, y, a, b, a_zero_point, b_zero_point, a_multiplier, b_multiplier,
                 shift, y_zero_point, lo, hi):
    """qadd_run_loops 64 elements at a time: masked 64-byte loads of a and b, _requant.
    qadd_bytes, a masked 64-byte store (the tail masked); for shifts in QADD_SHIFTS only (the
    caller tests ``qadd_fits``)."""
    if not (all(isinstance(v, types.Array) and v.ndim == 1 and v.layout == "C"
                and v.dtype in (types.uint8, types.int8) for v in (y, a, b))):
        return None
    sig = types.void(y, a, b, *[types.int64] * 8)

    def codegen(context, builder, signature, args):
        i8, i64 = ir.IntType(8), ir.IntType(64)
        chunk = ir.VectorType(i8, 64)
        arrays = [context.make_array(signature.args[i])(context, builder, args[i])
                  for i in range(3)]
        data = [builder.bitcast(v.data, i8.as_pointer()) for v in arrays]
        params = list(args[3:])
        signed = [signature.args[i].dtype == types.int8 for i in range(3)]
        count = cgutils.unpack_tuple(builder, arrays[0].shape)[0]
        load = declare_masked_byte_load(builder)
        store = declare_masked_byte_store(builder, 64)
        undef = ir.Constant(chunk, None)
        with cgutils.for_range(builder, builder.udiv(builder.add(count, i64(63)), i64(64))) as loop:
            at = builder.mul(loop.index, i64(64))
            mask = lanes_up_to(builder, builder.sub(count, at))
            qa, qb = (builder.call(load, [builder.gep(d, [at]), undef, mask]) for d in data[1:])
            builder.call(store, [builder.gep(data[0], [at]), qadd_bytes(
                builder, qa, qb, signed[1], signed[2], signed[0], params), mask])
        return context.get_dummy_value()

    return sig, codegen


QADD_RUNS = HAS_AVX512_VNNI and not config.DISABLE_JIT
"""Whether the QAdd runs 64 elements at a time here (its masked byte loads and stores are
AVX-512 BW's; LLVM IR does not run as Python)."""

qadd_loops = njit(cache=True, inline="always")(qadd_run_loops)
qadd_run = _qadd_run_ir if QADD_RUNS else qadd_loops
"""qadd_run_loops as the kernels call it, where ``qadd_fits`` (C-contiguous rows)."""


@njit(cache=True, inline="always")
def qadd_fits(shift):
    """Whether ``qadd_run`` takes a QAdd of this shift (_requant.QADD_SHIFTS): 16-bit products."""
    return QADD_SHIFTS[0] <= shift <= QADD_SHIFTS[1]


def _add_dense_i8(a, b, y, a_zero_point, b_zero_point, a_multiplier, b_multiplier, shift,
                  y_zero_point, lo, hi):
    # a (L,) + b (L,) -> y (L,), all uint8|int8
    """q_y = clamp(y_zp + round(((q_a − a_zp)·A + (q_b − b_zp)·B) / 2^R), lo, hi)

    real = scale·(q − zero_point), per tensor for a, b and y. A = round(a_scale/y_scale·2^R),
    B = round(b_scale/y_scale·2^R) on one common base 2^R (plan: A, B < 2^44), so the sum is exact
    in int64 (|q − zp| ≤ 255: < 2^53) and is rounded once, half away from zero (§5, §3). Saturates
    to [lo, hi]: the type's range, narrowed by a fused Relu (lo = y_zp) or Relu6/Clip.
    Loop nest: prange over blocks of ELEMENTWISE_BLOCK elements; each block runs on slices from
    index 0. On AVX-512 with 31 ≤ R ≤ 52 (the plan's usual 42–44) a block goes 64 elements a step
    with 16-bit products (``qadd_run``, _requant.qadd_bytes); otherwise the plain loop, which
    vectorizes in 8 int64 lanes (vpmullq; AVX2 emulates the 64-bit multiply).
    a, b [L] uint8|int8 — inputs (flat, C-contiguous, of equal shapes); y [L] uint8|int8 — output
    a_zero_point, b_zero_point, y_zero_point int; a_multiplier, b_multiplier int64 — A, B;
    shift int — R in [1, 62]; lo, hi int — clamp bounds
    Work: 3 bytes moved per element. 200 704 elements (ResNet-18's 64×56×56), one core of the
    2-vCPU machine: 36.5 µs 64 at a time (0.18 ns per element), 0.13–0.17 ms in int64 lanes.
    """
    L = y.shape[0]
    fast = qadd_fits(shift)
    for blk in prange((L + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK):
        e0 = blk * ELEMENTWISE_BLOCK
        ab, bb = a[e0:e0 + ELEMENTWISE_BLOCK], b[e0:e0 + ELEMENTWISE_BLOCK]
        yb = y[e0:e0 + ELEMENTWISE_BLOCK]
        if fast:
            qadd_run(yb, ab, bb, a_zero_point, b_zero_point, a_multiplier, b_multiplier, shift,
                     y_zero_point, lo, hi)
        else:
            qadd_loops(yb, ab, bb, a_zero_point, b_zero_point, a_multiplier, b_multiplier, shift,
                       y_zero_point, lo, hi)


add_dense_i8 = njit(cache=True, parallel=True, nogil=True)(_add_dense_i8)


@njit(cache=True, inline="always")
def qadd_value(qa, qb, a_zero_point, b_zero_point, a_multiplier, b_multiplier, shift,
               y_zero_point, lo, hi):
    """One output of add_dense_i8 (its docstring has the arithmetic), shared with the requantizing
    convs' fused residual add (``add_residual``), so the two give the same bytes by construction."""
    p = (np.int64(qa) - a_zero_point) * a_multiplier + (np.int64(qb) - b_zero_point) * b_multiplier
    return min(max(rounding_shift(p, shift) + y_zero_point, lo), hi)


# -- the residual QAdd in a requantizing kernel's epilogue ------------------------------------------
NO_RESIDUAL = None
"""``add`` of ``add_residual`` for a kernel called without a residual: nothing is added."""


def residual_parts(residual, y):
    """(r, add) for a requantizing kernel's optional last argument ``residual``: None, or
    (r, y_zero_point, r_zero_point, y_multiplier, r_multiplier, shift, out_zero_point, lo, hi),
    a QAdd of the kernel's output y (its operand with y_zero_point and y_multiplier) and r, an
    array of y's shape, written over y. Without a residual, r is y itself and ``add`` is None.
    Compiled, both are chosen by the argument's type (the overloads below), so a kernel called
    without a residual carries no trace of it: not even a test per row."""
    if residual is None:
        return y, NO_RESIDUAL
    return residual[0], tuple(residual[1:])


@overload(residual_parts, inline="always")
def _residual_parts_compiled(residual, y):
    if residual is None or isinstance(residual, (types.NoneType, types.Omitted)):
        return lambda residual, y: (y, None)
    return lambda residual, y: (residual[0], residual[1:])


def has_residual(add):
    """Whether a requantizing kernel adds a residual (``add`` of residual_parts is not None); a
    constant where compiled, so that a kernel without one skips its plane loop."""
    return add is not None


@overload(has_residual, inline="always")
def _has_residual_compiled(add):
    if add is None or isinstance(add, types.NoneType):
        return lambda add: False
    return lambda add: True


def add_residual(y, r, add):
    """y[e] = qadd_value(y[e], r[e], *add) in place over a row, unless add is None
    (residual_parts): a requantizing conv's output, already requantized and clamped as the QConv
    alone would leave it, then added to the residual as the QAdd would add it. The same bytes as
    the two ops in turn."""
    if add is None:
        return
    for e in range(y.shape[0]):
        y[e] = qadd_value(y[e], r[e], *add)


@overload(add_residual, inline="always")
def _add_residual_compiled(y, r, add):
    if add is None or isinstance(add, types.NoneType):
        return lambda y, r, add: None

    if not (y.layout == "C" and r.layout == "C"):  # strided rows: the plain loop
        return lambda y, r, add: qadd_loops(y, y, r, add[0], add[1], add[2], add[3], add[4],
                                            add[5], add[6], add[7])

    def add_rows(y, r, add):
        if qadd_fits(add[4]):
            qadd_run(y, y, r, add[0], add[1], add[2], add[3], add[4], add[5], add[6], add[7])
        else:
            qadd_loops(y, y, r, add[0], add[1], add[2], add[3], add[4], add[5], add[6], add[7])
    return add_rows


@njit(cache=True, inline="always")
def add_residual_rows(y, r, add):
    """y[n] = the QAdd of y[n] and r[n] for every row n of 2-D y and r (one parallel loop), unless
    there is no residual (add is None: no loop at all). The requantizing kernels call it once
    their tiles are done, over whole rows or planes: with the add inside a tile loop, the loop
    compiled slower even where the add never ran (a 64×56×56 AMX conv took 0.3 ms more, its add
    0.1 ms of that)."""
    if has_residual(add):
        for n in prange(y.shape[0]):
            add_residual(y[n], r[n], add)


def _bias_act_dense_f32(y, b, lo, hi):
    # y (B,N,M) + b (N) -> y (B,N,M), in place
    """y[i,n,m] = clamp(y[i,n,m] + b[n], lo, hi)

    For the dense f32 path after numpy BLAS (which cannot fuse bias or activation).
    y [B,N,M] float32 — the GEMM output, updated in place; b [N] float32 — bias (zeros if none)
    lo, hi — activation bounds (−inf/inf none, 0/inf Relu, 0/6 Relu6).
    Loop nest: prange over (i, n) rows. Work: 2·B·N·M flops; y read and written once.
    """
    B, N, M = y.shape
    for t in prange(B * N):
        row, bn = y[t // N, t % N], b[t % N]
        for m in range(M):
            row[m] = min(max(row[m] + bn, lo), hi)


bias_act_dense_f32 = njit(cache=True, parallel=True, nogil=True)(_bias_act_dense_f32)


def _clamp_dense_f32(x, y, lo, hi):
    # x (L,) -> y (L,)
    """y = clamp(x, lo, hi): a Relu (0, inf), Relu6 (0, 6) or Clip that no fusion absorbed.

    x, y [L] float32 (may be the same array); lo, hi float. prange over blocks, each looped on
    slices from index 0 (vectorizes, as add_dense_i8). Work: L compares.
    """
    L = y.shape[0]
    for blk in prange((L + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK):
        e0 = blk * ELEMENTWISE_BLOCK
        xb, yb = x[e0:e0 + ELEMENTWISE_BLOCK], y[e0:e0 + ELEMENTWISE_BLOCK]
        for e in range(yb.shape[0]):
            yb[e] = min(max(xb[e], lo), hi)


clamp_dense_f32 = njit(cache=True, parallel=True, nogil=True)(_clamp_dense_f32)


def _add_dense_f32(a, b, y, lo, hi):
    # a (L,) + b (L,) -> y (L,)
    """y = clamp(a + b, lo, hi): a residual Add with its fused Relu (lo = 0) or none (±inf).

    a, b, y [L] float32 (y may alias a or b). prange over blocks, each looped on slices from index 0
    (vectorizes, as add_dense_i8). Work: L flops, 12 bytes/element.
    """
    L = y.shape[0]
    for blk in prange((L + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK):
        e0 = blk * ELEMENTWISE_BLOCK
        ab, bb = a[e0:e0 + ELEMENTWISE_BLOCK], b[e0:e0 + ELEMENTWISE_BLOCK]
        yb = y[e0:e0 + ELEMENTWISE_BLOCK]
        for e in range(yb.shape[0]):
            yb[e] = min(max(ab[e] + bb[e], lo), hi)


add_dense_f32 = njit(cache=True, parallel=True, nogil=True)(_add_dense_f32)

KERNELS = {"add_dense_i8": add_dense_i8, "bias_act_dense_f32": bias_act_dense_f32,
           "clamp_dense_f32": clamp_dense_f32, "add_dense_f32": add_dense_f32}
