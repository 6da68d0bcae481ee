"""The ``.zsk`` file format, versions 1 and 2: write, read and validate (the spec is
docs/format.md). Version 2 adds the block-sparse layout ``bsr``; a file is written as version 1
unless a tensor in it is stored ``bsr``, so that a version-1 reader still reads every other file.

Reading costs O(header): the file is memory-mapped, every tensor is a ``np.frombuffer`` view at its
declared offset, and every rule that needs only the header is checked at once. Rules that must read a
tensor's bytes (its CRC-32s, the CSR invariants) run as the tensor's ``verify`` callback, once, on
first access to its arrays (``verify="lazy"``), or for every tensor before ``load`` returns
(``verify="eager"``). Every failure is a ``ModelFormatError`` naming the tensor or node and the rule.

Writing is deterministic (sorted JSON, tensors in name order) and atomic (temporary file, fsync,
rename), and it validates the model first, so an invalid model never reaches the disk.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import stat
import struct
import tempfile
import zlib

import numpy as np

from ..errors import ModelFormatError, SaveError
from ..model import BSR, CSR, DTYPES, Dense, Graph, Model, Node, QuantParams, ValueInfo, index_dtype
from ..ops import normalize_attrs

MAGIC = b"\x89ZSK\r\n\x1a\n"
VERSION = 2
"""The newest version this module reads and writes."""
VERSIONS = (1, 2)
"""The versions this reader knows."""
BSR_VERSION = 2
"""The first version with the ``bsr`` layout."""
PREFIX = struct.Struct("<8sIIQ")  # magic, version, header CRC-32, header length
ALIGN = 64
MAX_HEADER = 64 << 20
"""Largest header a reader accepts, in bytes."""
MAX_NDIM = 32
MAX_DIM = 1 << 62
"""Shapes with more axes or a larger axis are refused before any size is computed."""

ROLES = {"dense": ("data",), "csr": ("indptr", "indices", "data"),
         "bsr": ("indptr", "indices", "data")}
"""Each layout's buffers, in the order they are written."""
INDEX_DTYPES = ("uint8", "uint16", "int32", "int64")
INTEGER_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "int64")
HEADER_KEYS = ("format", "version", "data_length", "graph", "tensors", "metadata")
TENSOR_KEYS = ("layout", "dtype", "shape", "buffers", "quant")
BSR_TENSOR_KEYS = TENSOR_KEYS + ("block",)
"""A ``bsr`` tensor's keys: its block's size along each axis too."""
MAX_BLOCK = 1 << 16
"""The largest side of a ``bsr`` block a reader accepts."""
BSR_BLOCKS = tuple(sorted(((r, c) for r in (1, 2, 4, 8) for c in (1, 2, 4, 8) if r * c > 1),
                          key=lambda block: (-block[0] * block[1], block)))
"""The (axis 0, axis 1) sizes of the blocks a writer tries for ``bsr`` (1 along every other axis),
in order: larger blocks first, so that of two layouts of the same bytes (padding evens out a few
index bytes) the one with fewer, larger blocks is kept: (8, 8), (4, 8), (8, 4), (2, 8), (4, 4),
(8, 2), (1, 8), … (1, 2), (2, 1)."""
BUFFER_KEYS = ("offset", "length", "dtype", "crc32")
QUANT_KEYS = ("axis", "scale", "zero_point")
GRAPH_KEYS = ("inputs", "outputs", "nodes")
VALUE_KEYS = ("name", "shape", "dtype")
NODE_KEYS = ("name", "op", "inputs", "outputs", "attrs")
VERIFY_MODES = ("lazy", "eager")


def _pad(n: int) -> int:
    """``n`` rounded up to a multiple of ALIGN."""
    return -(-n // ALIGN) * ALIGN


def _le(dtype) -> np.dtype:
    return np.dtype(dtype).newbyteorder("<")


# ================================================================================================
# Reading
# ================================================================================================

def load(path, *, verify: str = "lazy") -> Model:
    """Memory-map and validate the ``.zsk`` file at ``path``; tensors are read-only views of the map."""
    _check_verify_mode(verify)
    with open(path, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):  # a device or pipe: reading it may never end
            raise ModelFormatError(f"{os.fspath(path)!r} is not a regular file")
        if info.st_size < PREFIX.size:  # mmap refuses empty files; such a file is refused anyway
            return _read(f.read(PREFIX.size), verify)
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    # The arrays keep the map alive (and the map keeps its own handle on the file).
    return _read(buf, verify)


def loads(data, *, verify: str = "lazy") -> Model:
    """Validate and read ``.zsk`` bytes; tensors are read-only views of ``data``."""
    _check_verify_mode(verify)
    if not isinstance(data, bytes):
        data = bytes(data)  # a mutable buffer could change under the verified views
    return _read(data, verify)


def _check_verify_mode(verify):
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, not {verify!r}")


def _read(buf, verify: str) -> Model:
    header, data_start, version = _read_prefix_and_header(buf)
    graph_json, tensor_specs, metadata = _parse_header(header, len(buf) - data_start, version)
    initializers = {name: _build_tensor(buf, data_start, spec) for name, spec in tensor_specs.items()}
    graph = _build_graph(graph_json, initializers)
    if verify == "eager":
        for tensor in initializers.values():
            _touch(tensor)
    return Model(graph, metadata)


def _touch(tensor):
    """Access a tensor's arrays, which runs its pending verification."""
    if isinstance(tensor, (CSR, BSR)):
        tensor.indptr
    else:
        tensor.array


def _read_prefix_and_header(buf) -> tuple[object, int, int]:
    """Check the fixed prefix and the header's CRC; return the parsed JSON, the data offset and the
    format version."""
    size = len(buf)
    if size < PREFIX.size:
        raise ModelFormatError(f"file is {size} bytes, shorter than the {PREFIX.size}-byte prefix")
    magic, version, crc, length = PREFIX.unpack_from(buf, 0)
    if magic != MAGIC:
        raise ModelFormatError("not a .zsk file: bad magic bytes")
    if version not in VERSIONS:
        raise ModelFormatError(f"unsupported format version {version} "
                               f"(this reader knows versions {', '.join(map(str, VERSIONS))})")
    if length > MAX_HEADER:
        raise ModelFormatError(f"header length {length} exceeds the limit of {MAX_HEADER} bytes")
    if PREFIX.size + length > size:
        raise ModelFormatError(f"header length {length} runs past the end of the file "
                               f"({size} bytes)")
    raw = bytes(buf[PREFIX.size:PREFIX.size + length])
    got = zlib.crc32(raw)
    if got != crc:
        raise ModelFormatError(f"header CRC-32 mismatch (stored {crc:08x}, computed {got:08x})")
    return _parse_json(raw), _pad(PREFIX.size + length), version


def _parse_json(raw: bytes):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ModelFormatError(f"header is not valid UTF-8: {err}") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                          object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise ModelFormatError(f"header is not valid JSON: {err}") from None


def _refuse_constant(name):
    raise ValueError(f"{name} is not allowed")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _unique_keys(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


# -- JSON type checks ----------------------------------------------------------------------------

def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fields(obj, keys, where) -> list:
    """The values of ``keys`` in the JSON object ``obj``, which must have exactly those keys."""
    if not isinstance(obj, dict):
        raise ModelFormatError(f"{where}: expected a JSON object, got {_json_type(obj)}")
    for key in keys:
        if key not in obj:
            raise ModelFormatError(f"{where}: missing key {key!r}")
    extra = sorted(set(obj) - set(keys))
    if extra:
        raise ModelFormatError(f"{where}: unknown key {extra[0]!r}")
    return [obj[key] for key in keys]


def _want(value, kind, where, key):
    """``value`` if it has the JSON type ``kind`` (int, str, list, dict), else a ModelFormatError."""
    ok = _is_int(value) if kind is int else isinstance(value, kind)
    if not ok:
        name = {int: "an integer", str: "a string", list: "an array", dict: "an object"}[kind]
        raise ModelFormatError(f"{where}: key {key!r} must be {name}, got {_json_type(value)}")
    return value


def _want_count(value, where, key) -> int:
    """A non-negative integer."""
    _want(value, int, where, key)
    if value < 0:
        raise ModelFormatError(f"{where}: key {key!r} must be >= 0, got {value}")
    return value


# -- the header ----------------------------------------------------------------------------------

class _TensorSpec:
    """A tensor's header entry, checked: layout, dtype, shape, buffers by role, quantization, and a
    ``bsr`` tensor's block (rows, columns; None for the other layouts)."""

    def __init__(self, name, layout, dtype, shape, buffers, quant, block=None):
        self.name, self.layout, self.dtype, self.shape = name, layout, dtype, shape
        self.buffers, self.quant = buffers, quant  # buffers: role -> (offset, length, dtype, crc)
        self.block = block


def _parse_header(header, data_bytes: int, prefix_version: int = VERSION):
    """Check every structural rule of the header; return (graph JSON, tensor specs, metadata).

    ``data_bytes`` is how many bytes the file holds after the data section's start;
    ``prefix_version`` is the version the file's prefix gives (the header's must be the same).
    """
    where = "header"
    if not isinstance(header, dict):
        raise ModelFormatError(f"header: expected a JSON object, got {_json_type(header)}")
    fmt, version, data_length, graph, tensors, metadata = _fields(header, HEADER_KEYS, where)
    if fmt != "zsk":
        raise ModelFormatError(f'header: key \'format\' must be "zsk", got {fmt!r}')
    if not _is_int(version) or version != prefix_version:
        raise ModelFormatError(f"header: version {version!r} does not match the prefix's "
                               f"version {prefix_version}")
    _want_count(data_length, where, "data_length")
    if data_length != data_bytes:
        raise ModelFormatError(f"data section: the header declares {data_length} bytes but the file "
                               f"holds {max(data_bytes, 0)}")
    _want(graph, dict, where, "graph")
    _want(tensors, dict, where, "tensors")
    _want(metadata, dict, where, "metadata")
    specs = {name: _parse_tensor(name, tensors[name], data_length, version)
             for name in sorted(tensors)}
    _check_overlaps(specs)
    return graph, specs, metadata


def _parse_shape(shape, where, key="shape", dynamic=False) -> tuple:
    """A list of at most MAX_NDIM integers in [0, MAX_DIM] (or null, if ``dynamic``)."""
    what = "non-negative integers or null" if dynamic else "non-negative integers"
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(
            (dynamic and d is None) or (_is_int(d) and 0 <= d <= MAX_DIM) for d in shape):
        raise ModelFormatError(f"{where}: {key} must be a list of at most {MAX_NDIM} {what} "
                               f"(each at most 2**62), got {_short(shape)}")
    return tuple(shape)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_dtype(dtype, where, allowed=DTYPES, what="dtype") -> str:
    if not isinstance(dtype, str) or dtype not in allowed:
        raise ModelFormatError(f"{where}: {what} {dtype!r} is not allowed "
                               f"(allowed: {', '.join(allowed)})")
    return dtype


def _parse_tensor(name: str, entry, data_length: int, version: int = VERSION) -> _TensorSpec:
    where = f"tensor {name!r}"
    if name == "":
        raise ModelFormatError("tensor '': a tensor name must not be empty")
    bsr = isinstance(entry, dict) and entry.get("layout") == "bsr"
    layout, dtype, shape, buffers, quant, *block = _fields(
        entry, BSR_TENSOR_KEYS if bsr else TENSOR_KEYS, where)  # block: [the key's value] if bsr
    if not isinstance(layout, str):
        raise ModelFormatError(f"{where}: key 'layout' must be a string, got {_json_type(layout)}")
    if layout not in ROLES:
        raise ModelFormatError(f"{where}: unknown layout {layout!r} "
                               f"(this reader knows {', '.join(ROLES)})")
    if bsr and version < BSR_VERSION:
        raise ModelFormatError(f"{where}: layout 'bsr' needs format version {BSR_VERSION}, and the "
                               f"file is version {version}")
    dtype = _parse_dtype(dtype, where)
    shape = _parse_shape(shape, where)
    block = _parse_block(where, block[0], shape) if bsr else None
    roles = ROLES[layout]
    found = _fields(buffers, roles, f"{where} buffers")
    parsed = {role: _parse_buffer(f"{where} buffer {role!r}", buf, data_length)
              for role, buf in zip(roles, found)}
    if layout == "dense":
        _check_length(f"{where} buffer 'data'", parsed["data"], math.prod(shape), "elements")
    else:
        _check_csr_buffers(where, parsed, dtype, shape, block)
    for role in roles:
        if role == "data" and parsed[role][2] != dtype:
            raise ModelFormatError(f"{where} buffer 'data': dtype {parsed[role][2]!r} differs from "
                                   f"the tensor's dtype {dtype!r}")
    _check_representable(where, shape, dtype)
    return _TensorSpec(name, layout, dtype, shape, parsed, _parse_quant(where, quant, dtype, shape),
                       block)


def _parse_block(where, block, shape) -> tuple[int, ...]:
    """A ``bsr`` tensor's block: one integer in [1, MAX_BLOCK] per axis, each dividing its axis."""
    if not shape:
        raise ModelFormatError(f"{where}: a bsr tensor needs at least one axis")
    if not (isinstance(block, list) and len(block) == len(shape)
            and all(_is_int(b) and 1 <= b <= MAX_BLOCK for b in block)):
        raise ModelFormatError(f"{where}: block must be one integer in [1, {MAX_BLOCK}] per axis "
                               f"({len(shape)}), got {_short(block)}")
    if any(d % b for d, b in zip(shape, block)):
        raise ModelFormatError(f"{where}: block {_short(block)} does not divide the shape "
                               f"{_short(list(shape))}")
    return tuple(block)


def _check_representable(where, shape, dtype):
    """NumPy refuses a shape whose byte count overflows even if an axis is 0 (it counts 0 as 1), so
    an empty tensor of shape [0, 2**62, 2**62] would pass the length rules and fail in ``reshape``."""
    nbytes = math.prod(max(d, 1) for d in shape) * np.dtype(dtype).itemsize
    if nbytes > MAX_DIM:
        raise ModelFormatError(f"{where}: shape {_short(list(shape))} is too large: {nbytes} bytes "
                               f"with zero-length axes counted as 1, more than 2**62")


def _parse_buffer(where: str, entry, data_length: int) -> tuple[int, int, str, int]:
    offset, length, dtype, crc = _fields(entry, BUFFER_KEYS, where)
    _want_count(offset, where, "offset")
    _want_count(length, where, "length")
    _want_count(crc, where, "crc32")
    if crc > 0xFFFFFFFF:
        raise ModelFormatError(f"{where}: crc32 {crc} does not fit in 32 bits")
    dtype = _parse_dtype(dtype, where)
    if offset % ALIGN:
        raise ModelFormatError(f"{where}: offset {offset} is not a multiple of {ALIGN}")
    if offset + length > data_length:
        raise ModelFormatError(f"{where}: bytes [{offset}, {offset + length}) lie outside the data "
                               f"section ({data_length} bytes)")
    return offset, length, dtype, crc


def _check_length(where, buffer, count: int, what: str):
    """The buffer's length must be ``count`` elements of its dtype (Python ints: no overflow)."""
    itemsize = np.dtype(buffer[2]).itemsize
    if buffer[1] != count * itemsize:
        raise ModelFormatError(f"{where}: length {buffer[1]} != {count} {what} × {itemsize} bytes")


def _check_csr_buffers(where, buffers, dtype, shape, block=None):
    """The buffers' dtypes and lengths of a ``csr`` tensor, or of a ``bsr`` one (``block`` its
    size along each axis): the matrix of its grid of blocks, (rows/b0, the other axes' blocks),
    each entry prod(block) values."""
    if not shape:
        raise ModelFormatError(f"{where}: a csr tensor needs at least one axis")
    rows, cols = shape[0], math.prod(shape[1:])
    if rows * cols > MAX_DIM:  # NumPy's sizes and flat indices are int64
        raise ModelFormatError(f"{where}: shape {list(shape)} has {rows * cols} elements, more than "
                               f"2**62")
    per = math.prod(block) if block else 1
    r, c = (block[0], per // block[0]) if block else (1, 1)  # rows, columns of the grid's matrix
    for role in ("indptr", "indices"):
        _parse_dtype(buffers[role][2], f"{where} buffer {role!r}", INDEX_DTYPES, "index dtype")
    what = "elements (rows + 1)" if block is None else f"elements (rows / {r} + 1)"
    _check_length(f"{where} buffer 'indptr'", buffers["indptr"], rows // r + 1, what)
    index_size = np.dtype(buffers["indices"][2]).itemsize
    nnz, rest = divmod(buffers["indices"][1], index_size)
    if rest:
        raise ModelFormatError(f"{where} buffer 'indices': length {buffers['indices'][1]} is not a "
                               f"multiple of {index_size} bytes")
    data_size = np.dtype(buffers["data"][2]).itemsize
    if buffers["data"][1] != nnz * per * data_size:
        each = "" if block is None else f" ({per} per block)"
        raise ModelFormatError(f"{where}: data holds {buffers['data'][1] / data_size:g} values but "
                               f"indices holds {nnz}{each}")
    if nnz > (rows // r) * (cols // c):
        what = "nonzeros exceed rows × cols" if block is None else "blocks exceed the matrix's"
        raise ModelFormatError(f"{where}: {nnz} {what} = {(rows // r) * (cols // c)}")


def _check_overlaps(specs: dict):
    spans = sorted((offset, offset + length, f"tensor {spec.name!r} buffer {role!r}")
                   for spec in specs.values()
                   for role, (offset, length, _, _) in spec.buffers.items() if length)
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise ModelFormatError(f"{second} overlaps {first}")


def _parse_quant(where, quant, dtype, shape):
    if quant is None:
        return None
    where = f"{where} quant"
    axis, scale, zero_point = _fields(quant, QUANT_KEYS, where)
    if dtype not in INTEGER_DTYPES:
        raise ModelFormatError(f"{where}: only integer tensors may be quantized, not {dtype}")
    if axis is not None:
        _want(axis, int, where, "axis")
        if not 0 <= axis < len(shape):
            raise ModelFormatError(f"{where}: axis {axis} is out of range for a "
                                   f"{len(shape)}-d tensor")
    count = 1 if axis is None else shape[axis]
    for key, values in (("scale", scale), ("zero_point", zero_point)):
        _want(values, list, where, key)
        if len(values) != count:
            per = "per tensor" if axis is None else f"shape[{axis}]"
            raise ModelFormatError(f"{where}: {key} has {len(values)} values, expected {count} "
                                   f"({per})")
    values = []
    for i, value in enumerate(scale):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ModelFormatError(f"{where}: scale[{i}] is a {_json_type(value)}, not a number")
        try:
            values.append(float(value))
        except OverflowError:  # an integer too large for a float
            values.append(math.inf)
    with np.errstate(over="ignore", under="ignore"):
        scales = np.array(values, dtype=np.float64).astype(np.float32)
    bad = np.flatnonzero(~(np.isfinite(scales) & (scales > 0)))
    if bad.size:
        i = int(bad[0])
        raise ModelFormatError(f"{where}: scale[{i}] = {_short(scale[i])} is not finite and > 0 "
                               f"(as float32)")
    info = np.iinfo(dtype)
    for i, value in enumerate(zero_point):
        if not _is_int(value):
            raise ModelFormatError(f"{where}: zero_point[{i}] = {_short(value)} is not an integer")
        if not info.min <= value <= info.max:
            raise ModelFormatError(f"{where}: zero_point[{i}] = {value} is outside the range of "
                                   f"{dtype} [{info.min}, {info.max}]")
    zero_points = np.array(zero_point, dtype=dtype)
    if axis is None:
        scales, zero_points = scales.reshape(()), zero_points.reshape(())
    return QuantParams(scales, zero_points, axis)


# -- building the model --------------------------------------------------------------------------

def _view(buf, data_start: int, buffer) -> np.ndarray:
    """The buffer as a 1-d read-only array over ``buf``: no copy."""
    offset, length, dtype, _ = buffer
    dtype = _le(dtype)
    return np.frombuffer(buf, dtype=dtype, count=length // dtype.itemsize,
                         offset=data_start + offset)


def _build_tensor(buf, data_start: int, spec: _TensorSpec):
    views = {role: _view(buf, data_start, b) for role, b in spec.buffers.items()}
    crcs = [(role, views[role], b[3]) for role, b in spec.buffers.items()]
    if spec.layout == "dense":
        def verify():
            _check_crcs(spec.name, crcs)
            _check_bools(spec.name, views["data"])

        return Dense(views["data"].reshape(spec.shape), spec.quant, verify=verify)
    bsr = spec.layout == "bsr"
    cols = math.prod(spec.shape[1:]) // (math.prod(spec.block[1:]) if bsr else 1)  # a bsr's grid

    def verify():
        _check_crcs(spec.name, crcs)
        _check_bools(spec.name, views["data"])
        _check_csr_contents(spec.name, views["indptr"], views["indices"], cols,
                            "block " if bsr else "")

    if bsr:
        return BSR(views["indptr"], views["indices"], views["data"], spec.shape, spec.block,
                   spec.quant, verify=verify)
    return CSR(views["indptr"], views["indices"], views["data"], spec.shape, spec.quant,
               verify=verify)


def _check_crcs(name, crcs):
    for role, view, stored in crcs:
        got = zlib.crc32(view)
        if got != stored:
            raise ModelFormatError(f"tensor {name!r} buffer {role!r}: CRC-32 mismatch "
                                   f"(stored {stored:08x}, computed {got:08x})")


def _check_bools(name, data: np.ndarray):
    """A bool buffer holds only the bytes 0 and 1 (NumPy's logic assumes so)."""
    if data.dtype != np.bool_ or data.size == 0:
        return
    raw = data.view(np.uint8)
    if int(raw.max()) > 1:
        k = int(np.flatnonzero(raw > 1)[0])
        raise ModelFormatError(f"tensor {name!r}: bool value at position {k} is the byte "
                               f"{int(raw[k])}, not 0 or 1")


def _check_csr_contents(name, indptr: np.ndarray, indices: np.ndarray, cols: int,
                        unit: str = ""):
    """The CSR invariants: indptr starts at 0, never decreases and ends at nnz; every row's column
    indices lie in [0, cols) and strictly increase (sorted, no duplicates). A BSR's are the same
    over its matrix of blocks (``unit`` "block ": rows and columns of blocks, nnz its blocks).

    Comparisons stay in the arrays' own dtypes, so the check allocates only bool arrays.
    """
    where = f"tensor {name!r}"
    nnz = len(indices)
    if int(indptr[0]) != 0:
        raise ModelFormatError(f"{where}: indptr[0] = {int(indptr[0])}, expected 0")
    down = np.flatnonzero(indptr[1:] < indptr[:-1])
    if down.size:
        r = int(down[0])
        raise ModelFormatError(f"{where}: indptr decreases at {unit}row {r} "
                               f"({int(indptr[r])} -> {int(indptr[r + 1])})")
    if int(indptr[-1]) != nnz:
        raise ModelFormatError(f"{where}: indptr[-1] = {int(indptr[-1])}, expected "
                               f"{'nnz' if not unit else 'blocks'} = {nnz}")
    if nnz == 0:
        return
    if int(indices.min()) < 0 or int(indices.max()) >= cols:
        k = int(np.flatnonzero((indices < 0) | (indices >= cols))[0])
        raise ModelFormatError(f"{where}: {unit}column index {int(indices[k])} at position {k} "
                               f"({unit}row {_row_of(indptr, k)}) is out of range [0, {cols})")
    increasing = indices[1:] > indices[:-1]
    starts = indptr[1:-1]
    starts = starts[(starts > 0) & (starts < nnz)]
    increasing[starts.astype(np.int64) - 1] = True  # a new row may start anywhere
    bad = np.flatnonzero(~increasing)
    if bad.size:
        k = int(bad[0]) + 1
        raise ModelFormatError(f"{where}: {unit}row {_row_of(indptr, k)}: {unit}column indices are "
                               f"not strictly increasing (unsorted or duplicate) at position {k}")


def _row_of(indptr, k: int) -> int:
    return int(np.searchsorted(indptr, k, side="right")) - 1


def _build_graph(graph, initializers) -> Graph:
    result = Graph(*_parse_graph(graph), initializers)
    _check_graph(result)
    return result


def _parse_graph(graph) -> tuple[list, list, list]:
    """The graph's nodes, inputs and outputs, with their JSON types and dtypes checked."""
    inputs_json, outputs_json, nodes_json = _fields(graph, GRAPH_KEYS, "graph")
    values = {}
    for key, items in (("inputs", inputs_json), ("outputs", outputs_json)):
        _want(items, list, "graph", key)
        values[key] = [_parse_value(key[:-1], i, item) for i, item in enumerate(items)]
    _want(nodes_json, list, "graph", "nodes")
    nodes = [_parse_node(i, item) for i, item in enumerate(nodes_json)]
    return nodes, values["inputs"], values["outputs"]


def _parse_value(kind: str, i: int, item) -> ValueInfo:
    where = f"graph {kind} {i}"
    name, shape, dtype = _fields(item, VALUE_KEYS, where)
    _want(name, str, where, "name")
    where = f"graph {kind} {name!r}"
    return ValueInfo(name, _parse_shape(shape, where, dynamic=True), _parse_dtype(dtype, where))


def _parse_node(i: int, item) -> Node:
    where = f"node {i}"
    name, op, inputs, outputs, attrs = _fields(item, NODE_KEYS, where)
    _want(name, str, where, "name")
    where = f"node {name!r}"
    _want(op, str, where, "op")
    for key, names in (("inputs", inputs), ("outputs", outputs)):
        _want(names, list, where, key)
        if not all(isinstance(n, str) for n in names):
            raise ModelFormatError(f"{where}: key {key!r} must be a list of strings")
    _want(attrs, dict, where, "attrs")
    return Node(name, op, list(inputs), list(outputs), dict(attrs))


def _check_graph(graph: Graph):
    """``Graph.check`` (ops, arity, attribute names, types and required ones, topological order);
    then an optional attribute left out takes its op's default."""
    graph.check()
    for node in graph.nodes:
        node.attrs = normalize_attrs(node.op, node.attrs)


# ================================================================================================
# Writing
# ================================================================================================

def dumps(model: Model) -> bytes:
    """The ``.zsk`` bytes of ``model`` (deterministic; the model is validated first)."""
    head, arrays, data_length = _encode(model)
    return b"".join(_chunks(head, arrays, data_length))


try:
    import fcntl
except ImportError:  # Windows: no flock, so a killed save's temporary file is left in place
    fcntl = None

_TEMPORARY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")  # tempfile's random names


def save(model: Model, path) -> None:
    """Write ``model`` to ``path`` atomically: a temporary file in the same directory, fsync, rename.

    The model is validated and encoded before the disk is touched. If writing fails, a
    ``SaveError`` names ``path`` and the reason, the temporary file is removed, and an existing
    ``path`` is left as it was. A process killed at any moment leaves ``path`` either the old file
    or the new one, whole.

    A save killed before its rename (SIGKILL, power loss) cannot remove its temporary file,
    ``.NAME.XXXXXXXX.tmp`` beside ``path``. Each save holds an exclusive ``flock`` on its temporary
    file until the rename, and the system drops that lock when the process dies; so a save first
    deletes the temporary files of the same ``path`` whose lock it can take: those of killed saves,
    never that of a save running in another process. Where there is no ``flock`` (Windows), they are
    left in place for the user to delete.
    """
    head, arrays, data_length = _encode(model)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    mode = file_mode(path)
    _remove_stale_temporaries(directory, prefix)
    try:
        fd, tmp = _locked_temporary(directory, prefix)
    except OSError as err:
        raise _save_error(path, directory, err) from err
    try:
        with open(fd, "wb", closefd=False) as f:
            _write_chunks(f, _chunks(head, arrays, data_length))
        os.fsync(fd)
        if fcntl is None:  # Windows cannot rename a file while it is open
            os.close(fd)
            fd = None
            os.chmod(tmp, mode)
        else:
            os.fchmod(fd, mode)
        os.replace(tmp, path)  # the lock is held until the rename is done
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _save_error(path, directory, err) from err
        raise
    finally:
        if fd is not None:
            os.close(fd)
    _fsync_directory(directory)


def _save_error(path: str, directory: str, err: OSError) -> SaveError:
    """A SaveError naming ``path`` and what went wrong, with the system's errno."""
    if isinstance(err, FileNotFoundError) and not os.path.isdir(directory):
        reason = f"the directory {directory!r} does not exist"
    elif isinstance(err, NotADirectoryError):
        reason = f"{directory!r} is not a directory"
    elif isinstance(err, PermissionError) and not os.access(directory, os.W_OK | os.X_OK):
        reason = f"no permission to create a file in the directory {directory!r}"
    elif isinstance(err, IsADirectoryError):
        reason = "it is a directory"
    else:
        reason = err.strerror or str(err)
    error = SaveError(f"cannot save the model to {path!r}: {reason}")
    error.errno = err.errno
    return error


def _locked_temporary(directory: str, prefix: str) -> tuple[int, str]:
    """A new temporary file in ``directory`` (fd, path), under this process's exclusive flock.

    Between its creation and the lock, another save's ``_remove_stale_temporaries`` may take the
    file for a killed save's and delete it: the lock is taken, then the name checked to still be
    this file, else a new file is made."""
    for _ in range(100):
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
        if fcntl is None:
            return fd, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits at most for another save's check of this file
            if os.path.samestat(os.fstat(fd), os.stat(tmp, follow_symlinks=False)):
                return fd, tmp
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
    raise OSError(f"could not create a temporary file in {directory!r}")


def _remove_stale_temporaries(directory: str, prefix: str) -> None:
    """Delete the temporary files ``prefix + 8 random characters + .tmp`` that killed saves left in
    ``directory``: those no process holds a flock on (a running save holds one on its own). Best
    effort: a file it cannot open, lock or delete is left."""
    if fcntl is None:
        return
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        tag = name[len(prefix):-len(".tmp")]
        if not (name.startswith(prefix) and name.endswith(".tmp") and len(tag) == 8
                and set(tag) <= _TEMPORARY_CHARS):
            continue
        with contextlib.suppress(OSError):
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a save is writing it
                if os.path.samestat(os.fstat(fd), os.stat(entry.path, follow_symlinks=False)):
                    os.unlink(entry.path)
            finally:
                os.close(fd)


def file_mode(path) -> int:
    """The permissions an atomic save gives ``path``: an existing file's own (replacing a file keeps
    them), else what open() would give a new one (0o666 less the umask). mkstemp's temporary file
    is 0o600, which the rename would otherwise keep."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return default_file_mode()


def default_file_mode() -> int:
    """0o666 less the process's umask (read from /proc where possible: os.umask sets it too)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _write_chunks(f, chunks):
    for chunk in chunks:
        f.write(chunk)


def _fsync_directory(directory: str):
    """Make the rename itself durable, where the platform allows it."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _chunks(head: bytes, arrays, data_length: int):
    """The file's pieces in order: prefix and header, padding, then each buffer after its padding."""
    yield head
    yield bytes(_pad(len(head)) - len(head))
    position = 0
    for offset, array in arrays:
        yield bytes(offset - position)
        yield memoryview(array).cast("B")
        position = offset + array.nbytes
    yield bytes(data_length - position)


def _encode(model: Model) -> tuple[bytes, list, int]:
    """Validate ``model``; return the prefix + header bytes, the (offset, array) buffers, and the
    data section's length."""
    if not isinstance(model, Model):
        raise TypeError(f"expected a zeroskip Model, not {type(model).__name__}")
    graph = model.graph
    _check_graph(graph)
    for name in graph.initializers:
        if not isinstance(name, str) or not name:
            raise ModelFormatError(f"tensor {name!r}: a tensor name must be a non-empty string")
    tensors, arrays, position = {}, [], 0
    for name in sorted(graph.initializers):
        layout, dtype, shape, buffers, quant, block = _encode_tensor(name, graph.initializers[name])
        entries = {}
        for role, array in buffers.items():
            entries[role] = {"offset": position, "length": array.nbytes, "dtype": array.dtype.name,
                             "crc32": zlib.crc32(array)}
            arrays.append((position, array))
            position = _pad(position + array.nbytes)
        tensors[name] = {"layout": layout, "dtype": dtype, "shape": list(shape),
                         "buffers": entries, "quant": quant}
        if block is not None:
            tensors[name]["block"] = list(block)
    # version 1 unless a tensor needs version 2's bsr: a version-1 reader reads the rest
    version = BSR_VERSION if any(t["layout"] == "bsr" for t in tensors.values()) else 1
    header = {"format": "zsk", "version": version, "data_length": position,
              "graph": {"inputs": [_encode_value("input", vi) for vi in graph.inputs],
                        "outputs": [_encode_value("output", vi) for vi in graph.outputs],
                        "nodes": [_encode_node(node) for node in graph.nodes]},
              "tensors": tensors, "metadata": _to_json(model.metadata, "metadata")}
    raw = _dump_json(header, "header")
    # Guard: the header must pass the reader's own structural rules, so whatever is written loads.
    parsed = json.loads(raw)
    _parse_header(parsed, position, version)
    _parse_graph(parsed["graph"])
    if len(raw) > MAX_HEADER:
        raise ModelFormatError(f"header: {len(raw)} bytes exceed the limit of {MAX_HEADER}")
    return PREFIX.pack(MAGIC, version, zlib.crc32(raw), len(raw)) + raw, arrays, position


def _dump_json(value, where: str) -> bytes:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False,
                          ensure_ascii=False, default=_json_default).encode("utf-8")
    except ValueError as err:  # also UnicodeEncodeError, for a lone surrogate
        why = "NaN and infinities are not allowed" if "float" in str(err) else str(err)
        raise ModelFormatError(f"{where}: not serializable as JSON: {why}") from None
    except TypeError as err:
        raise ModelFormatError(f"{where}: not serializable as JSON: {err}") from None
    except RecursionError:
        raise ModelFormatError(f"{where}: not serializable as JSON: nested too deeply") from None


def _json_default(value):
    """NumPy scalars and arrays become their Python values; anything else is refused."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _to_json(value, where: str):
    """``value`` as it reads back from JSON (tuples become lists, NumPy scalars Python numbers)."""
    return json.loads(_dump_json(value, where))


def _encode_value(kind: str, vi: ValueInfo) -> dict:
    where = f"graph {kind} {vi.name!r}"
    try:
        dtype = vi.dtype if isinstance(vi.dtype, str) else np.dtype(vi.dtype).name
        shape = [None if d is None else int(d) for d in vi.shape]
    except (TypeError, ValueError) as err:
        raise ModelFormatError(f"{where}: bad shape or dtype: {err}") from None
    return {"name": vi.name, "shape": shape, "dtype": dtype}


def _encode_node(node: Node) -> dict:
    return {"name": node.name, "op": node.op, "inputs": list(node.inputs),
            "outputs": list(node.outputs),
            "attrs": _to_json(node.attrs, f"node {node.name!r} ({node.op}) attrs")}


def _encode_tensor(name: str, tensor):
    """Check an in-memory tensor; return (layout, dtype, shape, {role: LE array}, quant JSON,
    block: a bsr tensor's (r, c), else None).

    A weight (ndim >= 2, float, int8 or uint8) is stored dense, CSR or BSR, whichever is smallest on
    disk (``_smallest_layout``). The CSR and BSR written are canonical (no stored zeros, no all-zero
    block, narrowest index types), so the bytes depend on the values only, not on the layout in
    memory.
    """
    where = f"tensor {name!r}"
    if not isinstance(tensor, (Dense, CSR, BSR)):
        raise ModelFormatError(f"{where}: expected Dense, CSR or BSR, not {type(tensor).__name__}")
    dtype = tensor.dtype.name
    if dtype not in DTYPES:
        raise ModelFormatError(f"{where}: dtype {dtype!r} is not allowed "
                               f"(allowed: {', '.join(DTYPES)})")
    shape = tuple(tensor.shape)
    csr = None
    if isinstance(tensor, (CSR, BSR)):
        _check_sparse_in_memory(name, tensor)
    if isinstance(tensor, CSR) and np.count_nonzero(tensor.data) == tensor.nnz:
        csr = tensor  # already canonical but for index widths
    quant = _encode_quant(name, tensor.quant, len(shape))
    values = None if csr is not None else tensor.to_numpy()
    rows, cols = (shape[0], math.prod(shape[1:])) if shape else (1, 1)
    nnz = csr.nnz if csr is not None else int(np.count_nonzero(values))

    def nonzeros():  # their coordinates (one array per axis, in row-major order) and values
        if csr is None:
            at = np.nonzero(values)
            return at, values[at]
        row = np.repeat(np.arange(rows), np.diff(csr.indptr.astype(np.int64)))
        return (row, *np.unravel_index(csr.indices.astype(np.int64), shape[1:])), csr.data

    layout, block = _smallest_layout(shape, tensor.dtype, nnz, lambda: nonzeros()[0])
    if layout == "csr":
        csr = csr if csr is not None else CSR.from_dense(values)
        buffers = {"indptr": csr.indptr.astype(index_dtype(nnz), copy=False),
                   "indices": csr.indices.astype(index_dtype(max(cols - 1, 0)), copy=False),
                   "data": csr.data}
    elif layout == "bsr":
        bsr = BSR.from_coordinates(*nonzeros(), shape, block)
        buffers = {"indptr": bsr.indptr, "indices": bsr.indices, "data": bsr.data}
    else:
        buffers = {"data": tensor.to_numpy() if values is None else values}
    buffers = {role: np.ascontiguousarray(a, dtype=_le(a.dtype)).reshape(-1)
               for role, a in buffers.items()}
    return layout, dtype, shape, buffers, quant, block


def _sparse_bytes(rows: int, cols: int, entries: int, per_entry: int, dtype: np.dtype) -> int:
    """Bytes on disk, padding included, of a CSR (or a BSR's matrix of blocks) with ``rows`` rows,
    ``cols`` columns and ``entries`` stored entries of ``per_entry`` values each."""
    return (_pad((rows + 1) * index_dtype(entries).itemsize)
            + _pad(entries * index_dtype(max(cols - 1, 0)).itemsize)
            + _pad(entries * per_entry * dtype.itemsize))


def _smallest_layout(shape: tuple, dtype: np.dtype, nnz: int, nonzeros) -> tuple:
    """("dense" | "csr" | "bsr", a bsr's block or None): the layout that takes the fewest bytes
    on disk, padding included, for a tensor with ``nnz`` nonzeros, whose coordinates
    ``nonzeros()`` gives (one array per axis, row-major order), asked only if a bsr could win; a
    tie keeps the earlier of dense, csr, then the bsr blocks: r × c along axes 0 and 1 (1 along
    the others) in BSR_BLOCKS' order, each dividing its axes.

    Only weights may become sparse: ndim >= 2, and a float, int8 or uint8 dtype.
    """
    if len(shape) < 2 or not (dtype.kind == "f" or dtype.name in ("int8", "uint8")):
        return "dense", None
    rows, cols = shape[0], math.prod(shape[1:])
    best = (_pad(rows * cols * dtype.itemsize), "dense", None)
    best = min(best, (_sparse_bytes(rows, cols, nnz, 1, dtype), "csr", None),
               key=lambda option: option[0])
    if nnz * dtype.itemsize >= best[0]:  # no bsr can be smaller: its data alone would not be
        return best[1:]
    counts = _block_counts(shape, nonzeros())
    for r, c in BSR_BLOCKS:
        if (r, c) in counts:
            size = _sparse_bytes(rows // r, cols // c, counts[(r, c)], r * c, dtype)
            if size < best[0]:
                best = (size, "bsr", (r, c) + (1,) * (len(shape) - 2))
    return best[1:]


def _block_counts(shape: tuple, at) -> dict:
    """{(r, c): how many blocks of r along axis 0, c along axis 1 (1 along the others) hold a
    nonzero} for the (r, c) of BSR_BLOCKS that divide ``shape``, from the nonzeros' coordinates
    ``at``. One sort per r, by (axis 0 // r, the axes past 1, axis 1): along that order the block
    (axis 0 // r, axes past 1, axis 1 // c) of every width c never decreases, so the blocks are its
    changes (on a pruned ResNet-18 0.2 s a save, where a np.unique per block shape took 3.3)."""
    rows, channels, taps = shape[0], shape[1], math.prod(shape[2:])
    first, second = (np.asarray(a, np.int64) for a in at[:2])
    rest = (np.ravel_multi_index([np.asarray(a, np.int64) for a in at[2:]], shape[2:])
            if len(shape) > 2 and len(first) else 0)
    counts = {}
    for r in sorted({r for r, _ in BSR_BLOCKS}):
        if rows % r:
            continue
        key = (first // r * taps + rest) * channels + second  # < rows·cols ≤ 2**62
        if r > 1 or len(shape) > 2:  # row-major order is this order only for r = 1 of a matrix
            key = np.sort(key, kind="stable")  # timsort: merges the sorted runs
        outer, second_at = np.divmod(key, channels) if channels else (key, key)
        for c in sorted({c for height, c in BSR_BLOCKS if height == r}):
            if channels % c == 0:
                blocks = outer * (channels // c) + second_at // c  # non-decreasing
                counts[(r, c)] = int(np.count_nonzero(np.diff(blocks))) + int(len(blocks) > 0)
    return counts


def _check_sparse_in_memory(name: str, tensor):
    """Enough of the CSR or BSR rules that ``to_numpy`` is safe and means what it says: a BSR's
    are a CSR's over its grid of blocks, each entry a block."""
    where = f"tensor {name!r}"
    shape, bsr = tensor.shape, isinstance(tensor, BSR)
    if not shape:
        raise ModelFormatError(f"{where}: a {tensor.layout} tensor needs at least one axis")
    block = tensor.block if bsr else (1,) * len(shape)
    if len(block) != len(shape) or any(b < 1 or d % b for d, b in zip(shape, block)):
        raise ModelFormatError(f"{where}: block {list(block)} does not divide the shape "
                               f"{list(shape)}")
    grid = [d // b for d, b in zip(shape, block)]
    rows, cols = grid[0], math.prod(grid[1:])
    indptr, indices, data = tensor.indptr, tensor.indices, tensor.data
    for role, array in (("indptr", indptr), ("indices", indices)):
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise ModelFormatError(f"{where}: {role} must be a 1-d integer array, got "
                                   f"{array.ndim}-d {array.dtype}")
    if len(indptr) != rows + 1:
        per = f" / {block[0]}" if bsr else ""
        raise ModelFormatError(f"{where}: indptr has {len(indptr)} elements, expected rows{per} + "
                               f"1 = {rows + 1}")
    if bsr and data.shape != (len(indices),) + block:
        raise ModelFormatError(f"{where}: data has shape {data.shape}, expected "
                               f"{(len(indices),) + block}")
    if not bsr and (data.ndim != 1 or len(data) != len(indices)):
        raise ModelFormatError(f"{where}: data holds {data.size} values but indices holds "
                               f"{len(indices)}")
    _check_csr_contents(name, indptr, indices, cols, "block " if bsr else "")


def _encode_quant(name: str, quant, ndim: int):
    """QuantParams as JSON: float32 scales as the shortest JSON numbers that read back as exactly
    the same float32, and integer zero points.

    A negative axis is stored as its non-negative equivalent; the values' rules are checked by the
    reader's own parser on the finished header.
    """
    if quant is None:
        return None
    where = f"tensor {name!r} quant"
    if not isinstance(quant, QuantParams):
        raise ModelFormatError(f"{where}: expected QuantParams, not {type(quant).__name__}")
    axis = quant.axis
    if axis is not None:
        if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
            raise ModelFormatError(f"{where}: axis must be an integer or None, got {axis!r}")
        axis = int(axis) + ndim if -ndim <= axis < 0 else int(axis)
    scale, zero_point = np.asarray(quant.scale), np.asarray(quant.zero_point)
    if scale.dtype.kind not in "fiu":
        raise ModelFormatError(f"{where}: scale must be numeric, got {scale.dtype}")
    if zero_point.dtype.kind not in "iu":
        raise ModelFormatError(f"{where}: zero_point must be an integer array, got "
                               f"{zero_point.dtype}")
    with np.errstate(over="ignore", under="ignore"):
        scales = scale.astype(np.float32).reshape(-1)
    for i, s in enumerate(scales):
        if not (math.isfinite(s) and s > 0):
            raise ModelFormatError(f"{where}: scale[{i}] = {float(s)!r} is not finite and > 0 "
                                   f"(as float32)")
    # The shortest decimal that reads back as the same float32 (about 9 digits, not float64's 17):
    # the header of a per-channel model is mostly its scales.
    return {"axis": axis, "scale": [float(str(s)) for s in scales],
            "zero_point": [int(z) for z in zero_point.reshape(-1)]}
