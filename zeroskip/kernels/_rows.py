"""The row block of the CSR kernels: one slice of an output row summed over a row's nonzeros, in
vector registers (LLVM IR) where the CPU has AVX2, as plain loops elsewhere.

    y[y0 : y0+count] = (b or y[y0 : y0+count]) + Σ_{e=start}^{end−1} data[e] · x[indices[e], m0 : m0+count]

"x" is any 2-D C-contiguous array whose rows the indices name: the CSR GEMMs' activations xt (K, M)
(kernels/matmul_csr.py), or a sparse conv's padded phases viewed flat as (L, 1), the indices then
being each tap's start in them (kernels/conv_csr.py). float32 rounds each product and each sum as
written, in the order of the nonzeros; int8 weights on uint8/int8 activations sum exactly in int32.
See docs/kernels.md, "matmul_csr_f32". The leading underscore keeps the kernel collector
(``kernels/__init__.py``) from looking here: helpers only, no KERNELS.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._cpu import HAS_AVX2, HAS_AVX512


def row_block_loops(y, y0, xt, indices, data, start, end, m0, count, first, b):
    """y[y0:y0+count] = (b if first else y[y0:y0+count]) + Σ_{e=start}^{end−1} data[e]·xt[indices[e],
    m0:m0+count], one nonzero after another, in y's type: float32 (each product and each sum
    rounded to float32) or int32 (int8 weights and 8-bit activations widened first; exact).

    The plain form of row_block_ir (same bytes): it runs on CPUs without AVX2 and as Python under
    NUMBA_DISABLE_JIT=1. It loads and stores the output slice once per nonzero, which the IR form
    keeps in registers instead.
    """
    cast = y.dtype.type
    ys = y[y0:y0 + count]
    if first:
        for i in range(count):
            ys[i] = b
    flat, pitch = xt.reshape(xt.size), xt.shape[1]  # a run may pass a row's end (the conv's (L, 1))
    for e in range(start, end):
        at = np.int64(indices[e]) * pitch + m0
        v, xs = cast(data[e]), flat[at:at + count]
        for i in range(count):
            ys[i] = ys[i] + v * cast(xs[i])


LANES = 16 if HAS_AVX512 else 8
"""32-bit values (float32 or int32 sums) per vector: a zmm register where the CPU has AVX-512 (F and
VL), else a ymm one."""
ROW_VECTORS = 8
"""Vector accumulators per row block. 8 leave room for the operands within AVX2's 16 ymm registers;
with AVX-512's zmm the block is 128 pixels wide, with AVX2's ymm 64."""
PIXELS_PER_BLOCK = ROW_VECTORS * LANES
"""Values of m per row block."""


def row_block_ir(vectors: int, masked: bool, lanes: int = LANES):
    """An intrinsic computing row_block_loops with ``vectors`` accumulators of ``lanes`` 32-bit
    lanes kept in registers, for count = vectors·lanes pixels (``masked`` False) or count ≤ that
    (``masked`` True: each vector's loads and store are masked to its lanes below count, with
    llvm.masked.load/store, so no lane past count is read or written and the last row of xt is
    safe). The loop over the nonzeros loads index and value, broadcasts the value, and for each
    vector loads xt[k, m0+v·L : m0+(v+1)·L] and adds its product into the accumulator: float32
    ``fmul`` then ``fadd`` (rounded twice, as written, never an FMA); int8 weights and uint8/int8
    activations sign- or zero-extended to int32, ``mul`` then ``add`` (exact). The accumulators
    start from b or from y[y0:], and are stored there once, after the last nonzero. (``lanes``
    other than LANES: the tests' ymm blocks on an AVX-512 CPU.)"""
    i1, i8, i32, i64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
    int_vec, mask_t = ir.VectorType(i32, lanes), ir.VectorType(i1, lanes)

    @intrinsic
    def row_block(typingctx, y, y0, xt, indices, data, start, end, m0, count, first, b):
        if not (isinstance(y, types.Array) and isinstance(xt, types.Array) and y.layout == "C"
                and xt.layout == "C" and isinstance(indices.dtype, types.Integer)):
            return None
        real = y.dtype == xt.dtype == data.dtype == types.float32
        if not real and not (y.dtype == types.int32 and data.dtype == types.int8
                             and xt.dtype in (types.uint8, types.int8)):
            return None
        sig = types.void(y, types.intp, xt, indices, data, types.intp, types.intp, types.intp,
                         types.intp, types.boolean, y.dtype)

        def codegen(context, builder, signature, args):
            y_v, y0_v, xt_v, ind_v, data_v, start_v, end_v, m0_v, count_v, first_v, b_v = args
            ya, xa, ia, da = (context.make_array(signature.args[i])(context, builder, args[i])
                              for i in (0, 2, 3, 4))
            acc_t = ir.FloatType() if real else i32  # the accumulators' lanes
            x_t = ir.FloatType() if real else i8     # xt's elements
            vec, x_vec = ir.VectorType(acc_t, lanes), ir.VectorType(x_t, lanes)
            x_signed = signature.args[2].dtype == types.int8

            def splat(value, vector_type):
                undef = ir.Constant(vector_type, ir.Undefined)
                one = builder.insert_element(undef, value, i32(0))
                return builder.shuffle_vector(one, undef, ir.Constant(int_vec, [0] * lanes))

            def masked_op(kind, vector_type):
                """llvm.masked.load/store for ``vector_type`` (named like v16f32, v16i8)."""
                ptr, element = vector_type.as_pointer(), vector_type.element
                tag = f"v{lanes}" + ("f32" if element == ir.FloatType() else f"i{element.width}")
                if kind == "load":
                    return builder.module.declare_intrinsic(
                        f"llvm.masked.load.{tag}.p0",
                        fnty=ir.FunctionType(vector_type, [ptr, i32, mask_t, vector_type]))
                return builder.module.declare_intrinsic(
                    f"llvm.masked.store.{tag}.p0",
                    fnty=ir.FunctionType(ir.VoidType(), [vector_type, ptr, i32, mask_t]))

            if masked:  # vector v holds pixels v·L + lane: those below count are live
                live = splat(builder.trunc(count_v, i32), int_vec)
                lane_of = [ir.Constant(int_vec, [v * lanes + j for j in range(lanes)])
                           for v in range(vectors)]
                masks = [builder.icmp_signed("<", lane, live) for lane in lane_of]

            def load(base, v, vector_type, align):
                ptr = builder.gep(base, [i64(v)])
                if masked:
                    zero = ir.Constant(vector_type, [0] * lanes)
                    return builder.call(masked_op("load", vector_type),
                                        [ptr, i32(align), masks[v], zero])
                return builder.load(ptr, align=align)

            def store(value, base, v):
                ptr = builder.gep(base, [i64(v)])
                if masked:
                    builder.call(masked_op("store", vec), [value, ptr, i32(4), masks[v]])
                else:
                    builder.store(value, ptr, align=4)

            y_row = builder.bitcast(builder.gep(ya.data, [y0_v]), vec.as_pointer())
            accs = [cgutils.alloca_once(builder, vec) for _ in range(vectors)]
            bias = splat(b_v, vec)
            for v, acc in enumerate(accs):
                builder.store(builder.select(first_v, bias, load(y_row, v, vec, 4)), acc)
            x_stride = cgutils.unpack_tuple(builder, xa.strides)[0]
            x_bytes = builder.bitcast(xa.data, ir.IntType(8).as_pointer())
            m_bytes = builder.mul(m0_v, i64(4 if real else 1))
            signed = signature.args[3].dtype.signed
            with cgutils.for_range_slice(builder, start_v, end_v, i64(1)) as (e, _):
                k = builder.load(builder.gep(ia.data, [e]))
                k = builder.sext(k, i64) if signed else builder.zext(k, i64)
                w = builder.load(builder.gep(da.data, [e]))
                value = splat(w if real else builder.sext(w, i32), vec)
                x_row = builder.bitcast(
                    builder.gep(x_bytes, [builder.add(builder.mul(k, x_stride), m_bytes)]),
                    x_vec.as_pointer())
                for v, acc in enumerate(accs):
                    x = load(x_row, v, x_vec, 4 if real else 1)
                    if real:
                        term = builder.fmul(value, x)
                        builder.store(builder.fadd(builder.load(acc), term), acc)
                    else:
                        x = builder.sext(x, vec) if x_signed else builder.zext(x, vec)
                        builder.store(builder.add(builder.load(acc), builder.mul(value, x)), acc)
            for v, acc in enumerate(accs):
                store(builder.load(acc), y_row, v)
            return context.get_dummy_value()

        return sig, codegen

    return row_block


_WHOLE = row_block_ir(ROW_VECTORS, masked=False)
_MASKED_1, _MASKED_2, _MASKED_4, _MASKED_8 = (row_block_ir(v, masked=True) for v in (1, 2, 4, 8))


@njit(cache=True, inline="always")
def row_block_avx(y, y0, xt, indices, data, start, end, m0, count, first, b):
    """row_block_loops in registers: a whole block of PIXELS_PER_BLOCK pixels unmasked, a narrower
    one (the last slice of a row, or all of a small batch) by the smallest of the 1-, 2-, 4- and
    8-vector masked intrinsics that holds count pixels."""
    if count == PIXELS_PER_BLOCK:
        _WHOLE(y, y0, xt, indices, data, start, end, m0, count, first, b)
    elif count > 4 * LANES:
        _MASKED_8(y, y0, xt, indices, data, start, end, m0, count, first, b)
    elif count > 2 * LANES:
        _MASKED_4(y, y0, xt, indices, data, start, end, m0, count, first, b)
    elif count > LANES:
        _MASKED_2(y, y0, xt, indices, data, start, end, m0, count, first, b)
    else:
        _MASKED_1(y, y0, xt, indices, data, start, end, m0, count, first, b)


ROW_BLOCKS = {"loops": njit(cache=True, inline="always")(row_block_loops), "avx": row_block_avx}
"""The row block variants by name ("avx" needs an AVX2 CPU, HAS_AVX2); same bytes out."""

row_block = (row_block_loops if numba.config.DISABLE_JIT
             else row_block_avx if HAS_AVX2 else ROW_BLOCKS["loops"])
"""The row block the kernels run: registers where the CPU has AVX2, loops elsewhere, the plain
Python function when Numba's JIT is off (LLVM IR cannot run as Python)."""
