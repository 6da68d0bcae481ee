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


def _quad_grid(w4: np.ndarray) -> np.ndarray:
    """(N, C/g/4·kh·kw) int32: the quad words of w4 (N, C/g, kh, kw) int8, column q = c4·kh·kw +
    i·kw + j, byte b of each word the weight on input channel 4c4 + b."""
    n_out, c_group, kh, kw = w4.shape
    taps = np.ascontiguousarray(
        np.asarray(w4, np.int8).reshape(n_out, c_group // 4, 4, kh * kw).transpose(0, 1, 3, 2))
    return taps.view("<i4").reshape(n_out, -1)


def quad_blocks(w4: np.ndarray, groups: int):
    """(cptr, qcols, wptr, words): the quads of a conv weight w4 (N, C/g, kh, kw) int8, C/g % 4 ==
    0, laid out for the quad conv's block tile (kernels/_quads.py, docs/kernels.md).

    Each group's output channels are taken 4 at a time (blocks; a group's last block may hold
    fewer), block j of group g the channels g·N/g + 4j + c, c < 4. An *entry* is a quad column
    that holds a nonzero in at least one channel of the block; its *class* is the bit mask of the
    channels that have it (bit c for channel c). Entries are sorted by block, then class, then
    column:
      - class m (1 … 15) of block k holds entries cptr[15k + m − 1] .. cptr[15k + m];
      - qcols[e]: entry e's quad column (where its activation words are: ``_quads.quad_offsets``);
      - each entry of class m has popcount(m) words, the quads of its channels in channel order:
        entry cptr[15k + m − 1] + i starts at words[wptr[15k + m − 1] + i·popcount(m)].
    The tile then loads an entry's activations once for every channel that has it. Built from
    the values at plan time: valid by construction."""
    from ...kernels._quads import QUAD_BLOCK, QUAD_CLASSES

    grid = _quad_grid(w4)
    n_out, columns = grid.shape
    per_group = n_out // groups
    blocks_per_group = -(-per_group // QUAD_BLOCK)
    padded = np.zeros((groups, blocks_per_group * QUAD_BLOCK, columns), np.int32)
    padded[:, :per_group] = grid.reshape(groups, per_group, columns)
    padded = padded.reshape(-1, QUAD_BLOCK, columns)  # (blocks, 4, columns)
    bits = (1 << np.arange(QUAD_BLOCK)).reshape(1, -1, 1)
    masks = ((padded != 0) * bits).sum(axis=1)  # (blocks, columns)
    blocks, qcols = np.nonzero(masks)  # by block, then column
    classes = blocks * QUAD_CLASSES + masks[blocks, qcols] - 1
    order = np.argsort(classes, kind="stable")  # by block and class; columns stay ascending
    blocks, qcols, classes = blocks[order], qcols[order], classes[order]
    n_classes = len(padded) * QUAD_CLASSES
    cptr = np.zeros(n_classes + 1, np.int64)
    np.cumsum(np.bincount(classes, minlength=n_classes), out=cptr[1:])
    quads = padded[blocks, :, qcols]  # (entries, 4): the block's 4 words at each entry's column
    present = quads != 0
    starts = np.zeros(len(qcols) + 1, np.int64)
    np.cumsum(present.sum(axis=1), out=starts[1:])
    wptr = starts[cptr[:-1]]
    return (cptr, qcols.astype(np.int64), np.ascontiguousarray(wptr),
            np.ascontiguousarray(quads[present], np.int32))

