"""Dense int8 GEMM: x (M,K) and w (N,K), both contiguous along K, into the int32 accumulator yt (N,M).

Register tile (docs/kernels.md): M_TILE = 2 rows of x times N_TILE = 4 rows of w give 8 int32
dot products over K at once. The K loop is written by hand in LLVM IR (`_madd_tile_2x4`): per 16
values of k it loads the 6 rows' bytes widened to int16 (`vpmovzxbw`/`vpmovsxbw`), and does 8
`vpmaddwd` (16 int16 products, added in pairs into 8 int32 lanes, exactly) and 8 `vpaddd`; the 8
accumulators stay in ymm registers and are reduced together at the end (`vphaddd`). The last K mod
16 values of k, edge rows and edge columns are scalar dot products.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

M_TILE = 2
"""Rows of x per register tile. With N_TILE = 4: 8 vector accumulators + 6 loaded vectors ≤ 16 ymm.
Chosen by bench/test_bench_matmul.py at M=128, K=N=1024 with the vpmaddwd loop: 2×4 (2.8 ms) beat
4×2, 3×4, 4×3, 2×6, 6×2 and 4×4 (3.1–4.5 ms); 1×4 tied it (load-bound), 2×4 reads x half as often."""
N_TILE = 4
"""Rows of w per register tile (and per parallel iteration); see M_TILE."""
K_STEP = 16
"""Values of k per vpmaddwd: one ymm holds 16 int16."""


@intrinsic
def _madd_tile_2x4(typingctx, x, w, m, n, k_blocks):
    """The 8 sums Σ_{k < 16·k_blocks} x[m+i,k]·w[n+j,k] in int32, as a tuple in order (i, j).

    LLVM IR: for each block of 16 k, load x[m+i, k:k+16] (zero- or sign-extended to <16 x i16> as x
    is uint8 or int8) and w[n+j, k:k+16] (sign-extended), acc[i,j] += llvm.x86.avx2.pmadd.wd(x_i, w_j)
    (<8 x i32>: products of int16 are exact in int32, and each lane adds only 2 of them, ≤ 2·255·128
    or 2·128·128 < 2^31); then the 8 accumulators are summed across their lanes together (vphaddd).
    Requires AVX2 (the host's).
    """
    if not (isinstance(x, types.Array) and isinstance(w, types.Array) and x.layout == w.layout == "C"
            and x.dtype in (types.uint8, types.int8) and w.dtype == types.int8):  # rows contiguous
        return None
    x_signed = x.dtype.signed
    sig = types.UniTuple(types.int32, M_TILE * N_TILE)(x, w, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        x_val, w_val, m_val, n_val, kb_val = args
        xa = context.make_array(signature.args[0])(context, builder, x_val)
        wa = context.make_array(signature.args[1])(context, builder, w_val)
        i32 = ir.IntType(32)
        v16i8 = ir.VectorType(ir.IntType(8), K_STEP)
        v16i16 = ir.VectorType(ir.IntType(16), K_STEP)
        v8i32 = ir.VectorType(i32, K_STEP // 2)
        pmaddwd = builder.module.declare_intrinsic(
            "llvm.x86.avx2.pmadd.wd", fnty=ir.FunctionType(v8i32, [v16i16, v16i16]))

        def const(v):
            return context.get_constant(types.intp, v)

        def rows(arr, first, count):  # byte pointers to rows first .. first+count-1
            data = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
            stride = cgutils.unpack_tuple(builder, arr.strides)[0]
            return [builder.gep(data, [builder.mul(builder.add(first, const(r)), stride)])
                    for r in range(count)]

        x_rows, w_rows = rows(xa, m_val, M_TILE), rows(wa, n_val, N_TILE)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(v8i32, [0] * (K_STEP // 2)))
                for _ in range(M_TILE * N_TILE)]  # promoted to ymm registers by LLVM
        with cgutils.for_range(builder, kb_val) as loop:
            k = builder.mul(loop.index, const(K_STEP))

            def load16(row, signed):
                v = builder.load(builder.bitcast(builder.gep(row, [k]), v16i8.as_pointer()), align=1)
                return builder.sext(v, v16i16) if signed else builder.zext(v, v16i16)

            w16 = [load16(r, True) for r in w_rows]
            for i in range(M_TILE):
                x16 = load16(x_rows[i], x_signed)
                for j in range(N_TILE):
                    acc = accs[i * N_TILE + j]
                    builder.store(builder.add(builder.load(acc), builder.call(pmaddwd, [x16, w16[j]])), acc)
        # The 8 horizontal sums at once: two rounds of vphaddd (pairwise sums within each 128-bit
        # half) leave, for accumulators 0–3 and 4–7, the sums of lanes 0–3 and of lanes 4–7 in
        # separate halves; one shuffle pairs the halves up and one add finishes, in (i, j) order.
        # Wrapping int32 adds in any order give the exact sum, which fits int32 (the plan checks).
        phadd = builder.module.declare_intrinsic(
            "llvm.x86.avx2.phadd.d", fnty=ir.FunctionType(v8i32, [v8i32, v8i32]))
        v = [builder.load(acc) for acc in accs]
        h = [builder.call(phadd, [v[2 * t], v[2 * t + 1]]) for t in range(4)]
        g_lo = builder.call(phadd, [h[0], h[1]])  # [a0..a3: lanes 0-3 | a0..a3: lanes 4-7]
        g_hi = builder.call(phadd, [h[2], h[3]])  # the same for a4..a7
        first = builder.shuffle_vector(g_lo, g_hi, ir.Constant(v8i32, [0, 1, 2, 3, 8, 9, 10, 11]))
        second = builder.shuffle_vector(g_lo, g_hi, ir.Constant(v8i32, [4, 5, 6, 7, 12, 13, 14, 15]))
        total = builder.add(first, second)
        sums = [builder.extract_element(total, i32(t)) for t in range(M_TILE * N_TILE)]
        return context.make_tuple(builder, signature.return_type, sums)

    return sig, codegen


@njit(cache=True)
def _dot(xm, wn, K):
    """Σ_k int32(xm[k])·int32(wn[k]) in int32 (one output)."""
    s = np.int32(0)
    for k in range(K):
        s = np.int32(s + np.int32(xm[k]) * np.int32(wn[k]))
    return s


def _host_has_avx2() -> bool:
    """Whether this CPU has AVX2 (the ``vpmaddwd`` intrinsic below needs it)."""
    try:
        from llvmlite import binding as llvm

        return bool(llvm.get_host_cpu_features().get("avx2", False))
    except Exception:  # noqa: BLE001 - no feature list: take the portable path
        return False


HAS_AVX2 = _host_has_avx2()


@njit(cache=True, inline="always")
def _tile_2x4_portable(x, w, m, n, K):
    """The 2×4 tile's 8 dot products in plain loops (CPUs without AVX2), same order and result."""
    s = np.zeros(8, np.int32)
    for k in range(K):
        p0, p1 = np.int32(x[m, k]), np.int32(x[m + 1, k])
        for j in range(4):
            q = np.int32(w[n + j, k])
            s[j] += p0 * q
            s[4 + j] += p1 * q
    return s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]


@njit(cache=True, inline="always")
def _tile_2x4_avx2(x, w, m, n, K):
    """The 8 dot products of rows m, m+1 of x with rows n..n+3 of w over all K, in int32, (i, j) order."""
    kb = K // K_STEP
    s = _madd_tile_2x4(x, w, m, n, kb)
    if kb * K_STEP == K:
        return s
    k0 = kb * K_STEP  # the K mod 16 tail: at most 15 values of k per output, scalar
    r, x0, x1 = K - k0, x[m, k0:], x[m + 1, k0:]
    w0, w1, w2, w3 = w[n, k0:], w[n + 1, k0:], w[n + 2, k0:], w[n + 3, k0:]
    return (np.int32(s[0] + _dot(x0, w0, r)), np.int32(s[1] + _dot(x0, w1, r)),
            np.int32(s[2] + _dot(x0, w2, r)), np.int32(s[3] + _dot(x0, w3, r)),
            np.int32(s[4] + _dot(x1, w0, r)), np.int32(s[5] + _dot(x1, w1, r)),
            np.int32(s[6] + _dot(x1, w2, r)), np.int32(s[7] + _dot(x1, w3, r)))


_tile_2x4 = _tile_2x4_avx2 if HAS_AVX2 else _tile_2x4_portable
"""The micro-kernel the GEMM uses: vpmaddwd where the CPU has AVX2, plain loops elsewhere."""


def _matmul_dense_i8(x, w, bias, yt):
    # w (N,K) int8 @ x (M,K)ᵀ uint8|int8 + bias' -> acc yt (N,M) int32
    """yt[n,m] = bias'[n] + Σ_k q_w[n,k]·q_x[m,k]      (the int32 accumulator)

    real = scale·(q − zero_point): w per output channel with zero point 0, x per tensor; the x zero
    point is folded into bias'[n] = q_b[n] − x_zp·Σ_k q_w[n,k] at plan time. No rounding and no
    saturation here: requantize_dense_i8 turns yt into 8 bits.
    Loop nest: prange panels of N_TILE rows of w; pairs of rows of x; the 2×4 tile's 8 dot products
    over k, 16 k per vpmaddwd (exact: int16 products summed in int32, no int16 saturation; the K mod 16
    tail, edge rows and edge columns by scalar dot products). No scratch: bytes are widened in registers.
    x [M,K] uint8|int8 — activations, pixel-major (a Gemm input, or im2row rows), C-contiguous
    w [N,K] int8 — weights in [−127, 127], C-contiguous
    bias [N] int32 — the folded bias bias'
    yt [N,M] int32 — accumulator out (channel-major, NCHW for a conv), overwritten
    Preconditions: K·max|q_w·q_x| + max|bias'| < 2^31 (checked by the plan).
    Overflow: |u8·s8| ≤ 255·127 < 2^15, so K ≤ 66 000 is safe (|s8·s8| ≤ 2^14: twice that).
    Work: 2·M·N·K int ops; reads w once and x N/N_TILE times (from L2), writes yt N·M·4 bytes.
    """
    M, K = x.shape
    N = w.shape[0]
    for p in prange((N + N_TILE - 1) // N_TILE):
        n = p * N_TILE
        if n + N_TILE <= N:
            for m in range(0, M - 1, M_TILE):
                s = _tile_2x4(x, w, m, n, K)
                for j in range(N_TILE):
                    yt[n + j, m] = bias[n + j] + s[j]
                    yt[n + j, m + 1] = bias[n + j] + s[N_TILE + j]
            if M % M_TILE:
                for j in range(n, n + N_TILE):
                    yt[j, M - 1] = bias[j] + _dot(x[M - 1], w[j], K)
        else:
            for j in range(n, N):
                for m in range(M):
                    yt[j, m] = bias[j] + _dot(x[m], w[j], K)


matmul_dense_i8 = njit(cache=True, parallel=True)(_matmul_dense_i8)

KERNELS = {"matmul_dense_i8": matmul_dense_i8}
