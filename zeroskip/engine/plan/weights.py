"""Weights as the steps read them, prepared once at plan time: real values, 8-bit activations as
stored, CSR triples with the narrowest indices, densities."""

from __future__ import annotations

import numpy as np

from ...model import CSR, Node

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "QConv", "QGemm")
"""Ops whose second input is a weight (its density shows in ``Session.explain``)."""


def constant(tensor, float_dtype) -> np.ndarray:
    """An initializer as the kernel steps read it: real values in ``float_dtype``, 8-bit activations
    (quantized constants whose parameters live in the reading op) as stored, other ints as int64."""
    if tensor.quant is not None or tensor.dtype.kind == "f":
        return np.ascontiguousarray(tensor.dequantize().astype(float_dtype))
    if tensor.dtype in (np.uint8, np.int8):
        return np.ascontiguousarray(tensor.to_numpy())
    if tensor.dtype.kind in "iu":
        return tensor.to_numpy().astype(np.int64)
    return np.asarray(tensor.to_numpy())


def reference_constant(tensor) -> np.ndarray:
    """An initializer as the reference ops read it: real values in float64, integers as int64."""
    if tensor.quant is not None or tensor.dtype.kind == "f":
        return tensor.dequantize()
    if tensor.dtype.kind in "iu":
        return tensor.to_numpy().astype(np.int64)
    return np.asarray(tensor.to_numpy())


def weight_density(node: Node, tensors: dict) -> float | None:
    """The density of a node's weight (its second input, when that is an initializer)."""
    if node.op not in WEIGHTED_OPS or len(node.inputs) < 2:
        return None
    tensor = tensors.get(node.inputs[1])
    return None if tensor is None else tensor.density


def nonzero_share(array: np.ndarray) -> float:
    """The fraction of nonzero entries of ``array`` (1.0 when it is empty)."""
    return float(np.count_nonzero(array)) / array.size if array.size else 1.0


def csr_triple(matrix: np.ndarray):
    """(indptr, indices, data) of ``matrix`` (rows = output channels, values in its own dtype),
    indices in the narrowest type that fits (model.index_dtype). Built from the values here, at plan
    time, so it is valid by construction whatever the file held: no unchecked index reaches a
    kernel."""
    csr = CSR.from_dense(np.ascontiguousarray(matrix))
    return csr.indptr, csr.indices, np.ascontiguousarray(csr.data)


def quad_rows(w4: np.ndarray):
    """(qptr, qcols, words) of a conv weight w4 (N, C/g, kh, kw) int8 with C/g % 4 == 0, for the
    quad-sparse conv (kernels/conv_quad.py): per output channel n, from qptr[n] to qptr[n+1], the
    quads that hold a nonzero, in column order. Quad column q = c4·kh·kw + i·kw + j is the 4 weights
    w4[n, 4c4 : 4c4+4, i, j], stored as one int32 word whose byte b is the weight on channel 4c4+b.
    Built from the values at plan time: valid by construction."""
    n_out, c_group, kh, kw = w4.shape
    taps = np.ascontiguousarray(
        np.asarray(w4, np.int8).reshape(n_out, c_group // 4, 4, kh * kw).transpose(0, 1, 3, 2))
    grid = taps.view("<i4").reshape(n_out, -1)  # (N, C/g/4·kh·kw): byte b of a word = channel 4c4+b
    rows, qcols = np.nonzero(grid)  # row-major: by channel, then by column
    qptr = np.zeros(n_out + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n_out), out=qptr[1:])
    return qptr, qcols.astype(np.int64), np.ascontiguousarray(grid[rows, qcols], np.int32)
