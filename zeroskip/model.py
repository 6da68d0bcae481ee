"""The model IR: tensors (``Dense``, ``CSR``, ``BSR``) with optional ``QuantParams``, and ``Node``/``Graph``/``Model``.

Every step of the data path takes a ``Model`` and returns one: ONNX import, pruning, quantization,
``.zsk`` save and load, and the Session's planner. Nodes are kept in topological order, ops and their
attributes follow ``zeroskip.ops``, and values are named by strings as in ONNX.

Tensors loaded from a ``.zsk`` file are views on the file's memory map. Their contents (checksums, CSR
invariants) are verified once, on first access to any of their arrays, so loading costs the same for a
100 KB and a 100 MB file and no unverified array ever reaches a kernel.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np

from .errors import ModelFormatError
from .ops import OPS, REQUIRED, VARIADIC, attr_type_error

DTYPES = ("float32", "float64", "float16", "int8", "uint8", "int16", "uint16", "int32", "int64",
          "bool")
"""Element types a tensor or a graph value may have (numpy names)."""


def index_dtype(limit: int) -> np.dtype:
    """The smallest index type that holds every value in [0, limit]: uint8, uint16, int32 or int64.

    uint16 and smaller stay exact when Numba promotes them to int64; uint32/uint64 are avoided because
    Numba mixes uint64 with int64 into float64.
    """
    if limit <= 0xFF:
        return np.dtype(np.uint8)
    if limit <= 0xFFFF:
        return np.dtype(np.uint16)
    if limit <= 0x7FFFFFFF:
        return np.dtype(np.int32)
    return np.dtype(np.int64)


@dataclass(frozen=True)
class QuantParams:
    """``real = scale·(q − zero_point)``, per tensor (``axis`` None, 0-d arrays) or per ``axis``.

    scale [C] or [] float32 — finite and > 0
    zero_point [C] or [] — the quantized tensor's own integer type
    """

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None

    def broadcast_shape(self, ndim: int) -> tuple[int, ...]:
        """Shape to reshape scale/zero_point to so they broadcast against an ``ndim`` tensor."""
        if self.axis is None:
            return ()
        shape = [1] * ndim
        shape[self.axis] = -1
        return tuple(shape)


_VERIFY_LOCK = threading.RLock()
"""Held while a tensor's lazy verification runs (one lock for all: verification runs once)."""


class _Tensor:
    """Shared behaviour of the tensor layouts: lazy verification, quantization, statistics."""

    layout = "?"

    def __init__(self, quant: QuantParams | None, verify: Callable[[], None] | None):
        self.quant = quant
        self._verify = verify
        self._verifying = False

    def _checked(self):
        # ``_verify`` is cleared only once verification has passed, so a second thread waits on the
        # lock instead of getting unverified arrays; a failure leaves it set (the next access raises
        # again). The callback may read its own tensor's arrays: the re-entrant call returns at once.
        if self._verify is None:
            return
        with _VERIFY_LOCK:
            if self._verify is None or self._verifying:
                return
            self._verifying = True
            try:
                self._verify()
            finally:
                self._verifying = False
            self._verify = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def density(self) -> float:
        return self.nnz / self.size if self.size else 1.0

    def dequantize(self) -> np.ndarray:
        """The real values as float64: ``scale·(q − zero_point)``, or the stored values if unquantized."""
        q = self.to_numpy()
        if self.quant is None:
            return q.astype(np.float64)
        shape = self.quant.broadcast_shape(q.ndim)
        scale = self.quant.scale.astype(np.float64).reshape(shape)
        zp = self.quant.zero_point.astype(np.int64).reshape(shape)
        return scale * (q.astype(np.int64) - zp)


class Dense(_Tensor):
    """A tensor stored whole: ``array`` of any shape."""

    layout = "dense"

    def __init__(self, array, quant: QuantParams | None = None, *, verify=None):
        super().__init__(quant, verify)
        self._array = np.asarray(array)

    @property
    def array(self) -> np.ndarray:
        self._checked()
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self._array.dtype

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.array))

    @property
    def nbytes(self) -> int:
        return int(self._array.nbytes)

    def to_numpy(self) -> np.ndarray:
        return self.array


class _Compressed(_Tensor):
    """What CSR and BSR share: the three arrays (read only after verification), the tensor's shape,
    its matrix (first axis, the rest flattened), dtype and bytes."""

    def __init__(self, indptr, indices, data, shape, quant, verify):
        super().__init__(quant, verify)
        self._indptr = np.asarray(indptr)
        self._indices = np.asarray(indices)
        self._data = np.asarray(data)
        self._shape = tuple(int(d) for d in shape)

    @property
    def indptr(self) -> np.ndarray:
        self._checked()
        return self._indptr

    @property
    def indices(self) -> np.ndarray:
        self._checked()
        return self._indices

    @property
    def data(self) -> np.ndarray:
        self._checked()
        return self._data

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def matrix_shape(self) -> tuple[int, int]:
        rows = self._shape[0] if self._shape else 1
        return rows, (self.size // rows if rows else 0)

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    @property
    def nbytes(self) -> int:
        return int(self._indptr.nbytes + self._indices.nbytes + self._data.nbytes)


class CSR(_Compressed):
    """A tensor of shape (N, d1, d2, ...) stored as the CSR matrix (N, d1·d2·...).

    Rows are the first axis (output channels of a weight), as in SciPy:
    indptr [N+1] — row n's nonzeros are ``data[indptr[n]:indptr[n+1]]``
    indices [nnz] — their column numbers, sorted and unique within each row
    data [nnz] — their values
    """

    layout = "csr"

    def __init__(self, indptr, indices, data, shape, quant: QuantParams | None = None, *,
                 verify=None):
        super().__init__(indptr, indices, data, shape, quant, verify)

    @classmethod
    def from_dense(cls, array, quant: QuantParams | None = None) -> "CSR":
        """The CSR form of ``array`` (ndim >= 1), with the smallest index types that fit."""
        array = np.asarray(array)
        matrix = array.reshape(array.shape[0], -1) if array.ndim else array.reshape(1, 1)
        rows, cols = np.nonzero(matrix)  # row-major order: rows ascending, columns sorted per row
        counts = np.bincount(rows, minlength=matrix.shape[0])
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(index_dtype(len(rows)))
        indices = cols.astype(index_dtype(max(matrix.shape[1] - 1, 0)))
        return cls(indptr, indices, matrix[rows, cols], array.shape, quant)

    @property
    def nnz(self) -> int:
        return int(self._data.shape[0])

    def to_numpy(self) -> np.ndarray:
        rows, cols = self.matrix_shape
        dense = np.zeros((rows, cols), dtype=self.dtype)
        row_of = np.repeat(np.arange(rows), np.diff(self.indptr.astype(np.int64)))
        dense[row_of, self.indices.astype(np.int64)] = self.data
        return dense.reshape(self._shape)


class BSR(_Compressed):
    """A tensor of shape (N, d1, d2, ...) stored in blocks of ``block`` = (b0, b1, ...), one size
    per axis, each dividing its axis: the tensor is a grid of blocks (N/b0, d1/b1, ...), the grid
    is the matrix (N/b0, (d1/b1)·(d2/b2)·...), and only the blocks that hold a nonzero are kept,
    in CSR order over that matrix:
    indptr [N/b0 + 1] — the blocks of grid row i are ``data[indptr[i]:indptr[i+1]]``
    indices [nb] — their columns in the grid's matrix, sorted and unique within each row
    data [nb, b0, b1, ...] — their values
    For a 2-d tensor this is SciPy's ``bsr_matrix``. A conv weight (N, C, kh, kw) in blocks
    (1, 4, 1, 1) holds one output channel's weights on 4 consecutive input channels at one tap:
    what pruning's ``block:1x4`` removes, and the quads of the quad conv (docs/format.md,
    "Layouts")."""

    layout = "bsr"

    def __init__(self, indptr, indices, data, shape, block, quant: QuantParams | None = None, *,
                 verify=None):
        self.block = tuple(int(b) for b in block)
        super().__init__(indptr, indices, np.asarray(data).reshape((-1,) + self.block), shape,
                         quant, verify)

    @classmethod
    def from_dense(cls, array, block, quant: QuantParams | None = None) -> "BSR":
        """The BSR form of ``array`` (ndim >= 1) in blocks of ``block`` (one size per axis, each
        dividing its axis); only the blocks with a nonzero are kept, with the smallest index
        types."""
        array = np.asarray(array)
        at = np.nonzero(array)
        return cls.from_coordinates(at, array[at], array.shape, block, quant)

    @classmethod
    def from_coordinates(cls, at, values, shape, block, quant: QuantParams | None = None
                         ) -> "BSR":
        """As ``from_dense``, from the nonzeros alone: ``at`` their coordinates (one array per
        axis, as np.nonzero gives them), ``values`` theirs (so a CSR tensor is never densified)."""
        shape, block = tuple(int(d) for d in shape), tuple(int(b) for b in block)
        if len(block) != len(shape) or not shape or any(
                b < 1 or d % b for d, b in zip(shape, block)):
            raise ValueError(f"block {list(block)} does not divide the shape {list(shape)}")
        values = np.asarray(values)
        grid = [d // b for d, b in zip(shape, block)]
        grid_cols = int(np.prod(grid[1:], dtype=np.int64))
        if len(values) == 0:
            nb, keys, inverse, within = 0, np.zeros(0, np.int64), None, None
        else:
            at = [np.asarray(a, np.int64) for a in at]
            cols = (np.ravel_multi_index([a // b for a, b in zip(at[1:], block[1:])], grid[1:])
                    if len(shape) > 1 else 0)
            keys, inverse = np.unique(at[0] // block[0] * grid_cols + cols, return_inverse=True)
            within = np.ravel_multi_index([a % b for a, b in zip(at, block)], block)
            nb = len(keys)
        data = np.zeros((nb, int(np.prod(block))), values.dtype)
        if nb:
            data[inverse.reshape(-1), within] = values
        counts = np.bincount(keys // max(grid_cols, 1), minlength=grid[0])
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(index_dtype(nb))
        indices = (keys % max(grid_cols, 1)).astype(index_dtype(max(grid_cols - 1, 0)))
        return cls(indptr, indices, data, shape, block, quant)

    @property
    def grid(self) -> tuple[int, ...]:
        """The tensor's shape in blocks."""
        return tuple(d // b for d, b in zip(self._shape, self.block))

    @property
    def blocks(self) -> int:
        """How many blocks are stored."""
        return int(self._data.shape[0])

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.data))

    def to_numpy(self) -> np.ndarray:
        grid, ndim = self.grid, len(self._shape)
        cols = int(np.prod(grid[1:], dtype=np.int64))
        dense = np.zeros((grid[0], cols) + self.block, dtype=self.dtype)
        row_of = np.repeat(np.arange(grid[0]), np.diff(self.indptr.astype(np.int64)))
        dense[row_of, self.indices.astype(np.int64)] = self.data
        # (grid0, grid1, ..., b0, b1, ...) -> (grid0, b0, grid1, b1, ...) -> the tensor
        dense = dense.reshape(tuple(grid) + self.block)
        order = [axis for pair in zip(range(ndim), range(ndim, 2 * ndim)) for axis in pair]
        return dense.transpose(order).reshape(self._shape)


Tensor = Union[Dense, CSR, BSR]


@dataclass
class ValueInfo:
    """A graph input or output: its name, shape (None for a dynamic dimension) and dtype name."""

    name: str
    shape: tuple
    dtype: str


@dataclass
class Node:
    """One op application. ``inputs`` may hold ``""`` for an optional input that is left out."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)


@dataclass
class Graph:
    nodes: list[Node]
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    initializers: dict[str, Tensor] = field(default_factory=dict)

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs}

    def check(self) -> None:
        """Raise ModelFormatError unless the graph is well formed.

        Rules: node names and value names are unique; every op is known and has its arity; every node
        input is a graph input, an initializer or an earlier node's output (so the graph is acyclic and
        in topological order), and a quantized layer's weight and bias are initializers; every graph
        output is produced.
        """
        defined = set()
        for vi in self.inputs:
            if vi.name in defined or vi.name in self.initializers:
                raise ModelFormatError(f"graph input {vi.name!r}: name is defined twice")
            defined.add(vi.name)
        defined.update(self.initializers)
        later = {out: node.name for node in self.nodes for out in node.outputs}
        names = set()
        for node in self.nodes:
            where = f"node {node.name!r} ({node.op})"
            if node.name in names:
                raise ModelFormatError(f"{where}: node name is used twice")
            names.add(node.name)
            spec = OPS.get(node.op)
            if spec is None:
                raise ModelFormatError(f"{where}: unknown op {node.op!r}")
            check_inputs(where, node.op, node.inputs)
            _check_arity(where, "outputs", len(node.outputs), spec.outputs)
            unknown = sorted(set(node.attrs) - set(spec.attrs))
            if unknown:
                raise ModelFormatError(f"{where}: unknown attribute {unknown[0]!r}")
            missing = [k for k, v in spec.attrs.items() if v is REQUIRED and k not in node.attrs]
            if missing:
                raise ModelFormatError(f"{where}: missing required attribute {missing[0]!r}")
            for key, value in node.attrs.items():
                why = attr_type_error(key, value)
                if why is not None:  # a kernel compiled for a list where an int belongs would crash
                    raise ModelFormatError(f"{where}: attribute {key!r} {why}")
            for key in _DTYPE_ATTRS.get(node.op, ()):
                if key in node.attrs and node.attrs[key] not in DTYPES:
                    raise ModelFormatError(f"{where}: attribute {key}={node.attrs[key]!r} is not "
                                           f"one of the dtypes {', '.join(DTYPES)}")
            for i, name in enumerate(node.inputs):
                if name == "":  # (an optional one: check_inputs refused a required one empty)
                    continue
                if i in _CONSTANT_INPUTS.get(node.op, ()) and name not in self.initializers:
                    raise ModelFormatError(f"{where}: input {i} ({name!r}) must be an initializer "
                                           f"(the weight and bias of a quantized layer are "
                                           f"constants)")
                if name not in defined:
                    if name in later:
                        raise ModelFormatError(
                            f"{where}: input {name!r} is produced by node {later[name]!r}, which does "
                            f"not come before it (nodes must be acyclic and in topological order)")
                    raise ModelFormatError(f"{where}: input {name!r} is not defined in the graph")
            for name in node.outputs:
                if not name or name in defined:
                    raise ModelFormatError(f"{where}: output {name!r} is empty or defined twice")
                defined.add(name)
        for vi in self.outputs:
            if vi.name not in defined:
                raise ModelFormatError(f"graph output {vi.name!r} is not produced by any node")


_CONSTANT_INPUTS = {"QConv": (1, 2), "QGemm": (1, 2)}
"""Inputs (by position) that must be initializers."""

_DTYPE_ATTRS = {"Cast": ("to",), "ConstantOfShape": ("dtype",)}
"""Attributes that name a dtype, which must be in DTYPES."""


def check_inputs(where: str, op: str, inputs) -> None:
    """ModelFormatError (prefixed ``where``) unless a node of IR op ``op`` with ``inputs`` has as
    many as the op takes and none of its required ones is empty ("")."""
    bounds = OPS[op].inputs
    _check_arity(where, "inputs", len(inputs), bounds)
    empty = [i for i in range(min(bounds[0], len(inputs))) if inputs[i] == ""]
    if empty:
        raise ModelFormatError(f"{where}: required input {empty[0]} is empty")


def _check_arity(where, what, count, bounds):
    low, high = bounds
    if not low <= count <= high:
        want = f"at least {low}" if high == VARIADIC else (
            f"{low}" if low == high else f"{low} to {high}")
        raise ModelFormatError(f"{where}: has {count} {what}, expected {want}")


@dataclass
class Model:
    """A graph and its metadata.

    ``metadata`` keys: ``producer`` (what wrote it), ``source`` (where it came from: format, name,
    opset, producer), and ``weights``: for each initializer, how it was made (``origin``, and later
    ``sparsity``, ``pruning``, ``calibration``).
    """

    graph: Graph
    metadata: dict = field(default_factory=dict)

    def weight_rows(self) -> list[dict]:
        """One row per (node, weight input): what ``zeroskip inspect`` prints."""
        rows = []
        for node in self.graph.nodes:
            for name in node.inputs:
                tensor = self.graph.initializers.get(name)
                if tensor is None:
                    continue
                layout = tensor.layout
                if isinstance(tensor, BSR):
                    layout = "bsr " + "x".join(map(str, tensor.block))
                rows.append(dict(node=node.name, op=node.op, tensor=name, shape=tensor.shape,
                                 layout=layout, dtype=str(tensor.dtype),
                                 density=tensor.density, nbytes=tensor.nbytes,
                                 quantized=tensor.quant is not None))
        return rows
