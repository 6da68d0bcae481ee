"""A structure-aware fuzzer for ``.zsk`` files: mutate valid files, re-seal them, load them, run them.

    python bench/fuzz_zsk.py [--cases 10000] [--seed 0] [--workers 2] [--out DIR] [--timeout 5]
                             [--add MODEL.zsk ...]

It starts from valid files of every kind (the demo models: dense, CSR, int8 per channel, convs;
and built here: a pooled, residual CNN with wide CSR weights in float and int8), and any others
given with ``--add``. Each case applies one to three mutations:

- bytes: flip bytes anywhere, or truncate or extend the file (not re-sealed: the checks of the
  prefix, the header CRC and the lengths see these), or change bytes of the header's JSON text
  and fix its CRC (the JSON parser sees these);
- header fields, rewritten with hostile values (negative, huge, NaN-like, the wrong JSON type,
  empty): tensor shapes, dtypes, buffer offsets and lengths, scales, zero points, graph input
  shapes, node inputs and outputs (dangling names, cycles, duplicates), ops and attributes;
- data: CSR arrays corrupted (unsorted, duplicate or out-of-range indices, a bad ``indptr``), and
  weight bytes changed;

and then re-seals the file (every buffer's CRC-32 and the header's, and ``data_length``), so the
mutation reaches the deep checks instead of stopping at a checksum. Every file is then loaded
from disk in a worker process and, if it loads, run in one of the modes on random inputs of its
declared shapes. Allowed outcomes are success and a ``ZeroskipError``. Anything else is a failure
and its file is saved (``--out``): another exception, a crash (the worker dies), a hang (no answer
within ``--timeout`` seconds, twice: the second time in a fresh worker, so that a first JIT compile
is not taken for a hang), or a worker whose peak resident memory grows past 1 GiB. Workers run
with ``ZEROSKIP_MEMORY_LIMIT=1G`` and a 4 GiB address-space limit, so that a run-away allocation
fails instead of taking the machine.

``tests/test_fuzz.py`` runs a seeded subset, and re-runs every saved failure in ``tests/data/fuzz``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PREFIX = struct.Struct("<8sIIQ")
MODES = ("reference", "dense-f32", "sparse-f32", "dense-i8", "sparse-i8", "auto")
MEMORY_LIMIT = 1 << 30
"""A case fails when it grows the worker's peak resident memory past this."""
ADDRESS_LIMIT = 4 << 30
BATCH = 2
MAX_FEED = 1 << 24
"""Elements of the largest input the fuzzer makes up (a larger one is loaded and planned only)."""
HOSTILE_INTS = (-1, -(2**31), 0, 1, 3, 255, 256, 2**31 - 1, 2**31, 2**32, 2**62, 2**63, 2**64,
                10**30)
HOSTILE_VALUES = HOSTILE_INTS + (0.5, -0.0, 1e-45, 3.5e38, 1e308, -1e308, "", "x", "float32",
                                 "int64", None, True, False, [], {}, [1, 2], [[0]], {"a": 1},
                                 "a" * 300, [2**31] * 3)


# -- valid files to start from ---------------------------------------------------------------------
def seed_files() -> dict[str, bytes]:
    """Valid ``.zsk`` bytes of every kind: the demo models and the pooled CNNs built here."""
    import zeroskip
    from zeroskip.formats.zsk import dumps

    seeds = {p.stem: p.read_bytes()
             for p in sorted((Path(zeroskip.__file__).parent / "data").glob("*.zsk"))}
    pooled = pooled_cnn()
    rng = np.random.default_rng(1)
    calibration = rng.standard_normal((8, 3, 12, 12)).astype(np.float32)
    pruned = zeroskip.prune(pooled, 0.8)
    seeds["pooled_cnn"] = dumps(pooled)
    seeds["pooled_cnn_pruned"] = dumps(pruned)
    seeds["pooled_cnn_int8"] = dumps(zeroskip.quantize(pooled, calibration, progress=False))
    seeds["pooled_cnn_pruned_int8"] = dumps(zeroskip.quantize(pruned, calibration, progress=False))
    return seeds


def pooled_cnn(seed: int = 0):
    """x (N,3,12,12) -> Conv 3x3 -> Relu -> MaxPool 2 -> Conv 3x3 (+ residual Add) -> AveragePool
    -> Conv 1x1 -> GlobalAveragePool -> Flatten -> Gemm (K = 320: uint16 CSR indices) -> Softmax."""
    from zeroskip import Dense, Graph, Model, Node, ValueInfo
    from zeroskip.ops import normalize_attrs

    rng = np.random.default_rng(seed)

    def weight(*shape):
        return Dense((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32))

    def node(name, op, inputs, outputs, **attrs):
        return Node(name, op, inputs, outputs, normalize_attrs(op, attrs))

    nodes = [
        node("conv1", "Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        node("relu1", "Relu", ["c1"], ["r1"]),
        node("pool1", "MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        node("conv2", "Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        node("add", "Add", ["c2", "p1"], ["a2"]),
        node("relu2", "Relu", ["a2"], ["r2"]),
        node("pool2", "AveragePool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[1, 1]),
        node("conv3", "Conv", ["p2", "w3", "b3"], ["c3"]),
        node("gap", "GlobalAveragePool", ["c3"], ["g"]),
        node("flat", "Flatten", ["g"], ["f"]),
        node("fc", "Gemm", ["f", "w4", "b4"], ["logits"], transB=1),
        node("soft", "Softmax", ["logits"], ["y"], axis=1),
    ]
    initializers = {"w1": weight(16, 3, 3, 3), "b1": weight(16), "w2": weight(16, 16, 3, 3),
                    "b2": weight(16), "w3": weight(320, 16, 1, 1), "b3": weight(320),
                    "w4": weight(10, 320), "b4": weight(10)}
    graph = Graph(nodes, [ValueInfo("x", (None, 3, 12, 12), "float32")],
                  [ValueInfo("y", (None, 10), "float32")], initializers)
    return Model(graph, {"producer": "bench/fuzz_zsk.py"})


# -- a file taken apart and put back together ------------------------------------------------------
@dataclass
class ZskFile:
    """A ``.zsk`` file as its header (parsed JSON) and data section (bytes)."""

    header: dict
    data: bytearray
    keep_crc: set = field(default_factory=set)
    """(tensor, role) of buffers whose CRC a mutation set on purpose: sealing leaves it."""

    @classmethod
    def parse(cls, blob: bytes) -> "ZskFile":
        _, _, _, length = PREFIX.unpack_from(blob, 0)
        start = PREFIX.size + length
        data_start = -(-start // 64) * 64
        return cls(json.loads(blob[PREFIX.size:start]), bytearray(blob[data_start:]))

    def seal(self) -> bytes:
        """The file with every buffer's CRC-32, ``data_length`` and the header CRC made to match
        (a buffer whose offset or length is not a usable int, or in ``keep_crc``, keeps its CRC)."""
        header = self.header
        if isinstance(header, dict):
            header["data_length"] = len(self.data)
            for name, role, buf in buffers(header):
                if (name, role) in self.keep_crc:
                    continue
                off, length = buf.get("offset"), buf.get("length")
                if _int(off) and _int(length) and 0 <= off and 0 <= length and \
                        off + length <= len(self.data):
                    buf["crc32"] = zlib.crc32(self.data[off:off + length])
        raw = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=True,
                         ensure_ascii=False).encode("utf-8", "surrogatepass")
        prefix = PREFIX.pack(b"\x89ZSK\r\n\x1a\n", 1, zlib.crc32(raw), len(raw))
        pad = -(len(prefix) + len(raw)) % 64
        return prefix + raw + b"\0" * pad + bytes(self.data)


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def tensors(header) -> list[tuple[str, dict]]:
    entries = header.get("tensors") if isinstance(header, dict) else None
    return [(k, v) for k, v in entries.items() if isinstance(v, dict)] if isinstance(
        entries, dict) else []


def buffers(header) -> list[tuple[str, str, dict]]:
    out = []
    for name, tensor in tensors(header):
        bufs = tensor.get("buffers")
        if isinstance(bufs, dict):
            out += [(name, role, b) for role, b in bufs.items() if isinstance(b, dict)]
    return out


def nodes(header) -> list[dict]:
    graph = header.get("graph") if isinstance(header, dict) else None
    found = graph.get("nodes") if isinstance(graph, dict) else None
    return [n for n in found if isinstance(n, dict)] if isinstance(found, list) else []


def values(header) -> list[dict]:
    graph = header.get("graph") if isinstance(header, dict) else None
    if not isinstance(graph, dict):
        return []
    return [v for key in ("inputs", "outputs") if isinstance(graph.get(key), list)
            for v in graph[key] if isinstance(v, dict)]


# -- mutations -------------------------------------------------------------------------------------
# Each takes (rng, ZskFile) and says what it did; "raw" ones return bytes that are not re-sealed.

def m_flip_bytes(rng, f, blob):
    data = bytearray(blob)
    for _ in range(rng.integers(1, 9)):
        data[rng.integers(len(data))] ^= 1 << rng.integers(8)
    return bytes(data), "flip bytes (not re-sealed)"


def m_header_bytes(rng, f, blob):
    """Bytes of the header's JSON text changed, then its CRC fixed: the JSON parser's turn."""
    _, _, _, length = PREFIX.unpack_from(blob, 0)
    data = bytearray(blob)
    if length == 0 or PREFIX.size + length > len(data):
        return blob, "no header"
    for _ in range(rng.integers(1, 5)):
        data[PREFIX.size + int(rng.integers(length))] = int(rng.choice(
            [rng.integers(256), ord("{"), ord("}"), ord('"'), ord("-"), ord("9"), ord(",")]))
    struct.pack_into("<I", data, 12, zlib.crc32(data[PREFIX.size:PREFIX.size + length]))
    return bytes(data), "header text changed, header CRC fixed"


def m_truncate(rng, f, blob):
    cut = int(rng.integers(len(blob)))
    return blob[:cut], f"truncate at {cut} of {len(blob)}"


def m_extend(rng, f, blob):
    extra = bytes(rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8))
    return blob + extra, f"append {len(extra)} bytes"


def m_flip_data(rng, f):
    if not f.data:
        return "no data"
    for _ in range(rng.integers(1, 17)):
        f.data[rng.integers(len(f.data))] = int(rng.integers(256))
    return "data bytes changed"


def m_cut_data(rng, f):
    cut = int(rng.integers(len(f.data) + 1))
    del f.data[cut:]
    return f"data section cut to {cut}"


def m_tensor_field(rng, f):
    picked = _pick(rng, tensors(f.header))
    if picked is None:
        return "no tensors"
    name, tensor = picked
    key = ["shape", "dtype", "layout", "quant", "buffers"][rng.integers(5)]
    if key == "shape" and isinstance(tensor.get("shape"), list) and tensor["shape"] and \
            rng.random() < 0.7:
        axis = int(rng.integers(len(tensor["shape"])))
        tensor["shape"][axis] = _hostile(rng)
        return f"tensor {name!r} shape[{axis}] = {tensor['shape'][axis]!r}"
    if key == "dtype" and rng.random() < 0.7:
        tensor["dtype"] = _dtype(rng)
    elif key == "layout" and rng.random() < 0.7:
        tensor["layout"] = ["dense", "csr", "bsr", ""][rng.integers(4)]
    else:
        tensor[key] = _hostile(rng)
    return f"tensor {name!r} {key} = {tensor[key]!r}"[:200]


def m_buffer_field(rng, f):
    picked = _pick(rng, buffers(f.header))
    if picked is None:
        return "no buffers"
    name, role, buf = picked
    key = ["offset", "length", "dtype", "crc32"][rng.integers(4)]
    if key == "dtype":
        buf[key] = _dtype(rng)
    elif key in ("offset", "length") and _int(buf.get(key)) and rng.random() < 0.5:
        buf[key] += int(rng.choice([-64, -8, -1, 1, 8, 64, 4096]))
    else:
        buf[key] = _hostile(rng)
    if key == "crc32":
        f.keep_crc.add((name, role))  # (else sealing would put the right one back)
    return f"tensor {name!r} buffer {role} {key} = {buf[key]!r}"


def m_quant(rng, f):
    quantized = [(n, t) for n, t in tensors(f.header) if isinstance(t.get("quant"), dict)]
    if not quantized:
        return "no quantized tensor"
    name, tensor = quantized[rng.integers(len(quantized))]
    quant = tensor["quant"]
    key = ["scale", "zero_point", "axis"][rng.integers(3)]
    hostile = [0, -1.0, 1e-46, 1e39, 3.4e38, float("nan"), float("inf"), 128, -129, 300, 1.5,
               "x", None, 2**31]
    if isinstance(quant.get(key), list) and quant[key] and rng.random() < 0.7:
        i = int(rng.integers(len(quant[key])))
        quant[key][i] = hostile[rng.integers(len(hostile))]
    elif key == "axis":
        quant[key] = [None, -1, 0, 1, 2, 4, 2**31, "0"][rng.integers(8)]
    else:
        quant[key] = [[], [1.0] * 1000, None, 1.0][rng.integers(4)]
    return f"tensor {name!r} quant {key} = {str(quant[key])[:80]}"


def m_value_shape(rng, f):
    vi = _pick(rng, values(f.header))
    if vi is None:
        return "no graph values"
    if isinstance(vi.get("shape"), list) and vi["shape"] and rng.random() < 0.8:
        axis = int(rng.integers(len(vi["shape"])))
        vi["shape"][axis] = [None, 0, -1, 2**31, 2**40, 2**62, 7, 2**16, "N"][rng.integers(9)]
    elif rng.random() < 0.5:
        vi["dtype"] = _dtype(rng)
    else:
        vi["shape"] = _hostile(rng)
    return f"graph value {vi.get('name')!r} = {str(vi)[:120]}"


def m_node_wiring(rng, f):
    found = nodes(f.header)
    if not found:
        return "no nodes"
    i = int(rng.integers(len(found)))
    n = found[i]
    names = [o for m in found for o in (m.get("outputs") or []) if isinstance(o, str)]
    choice = rng.integers(6)
    if choice == 0 and n.get("inputs"):  # a dangling name
        n["inputs"][rng.integers(len(n["inputs"]))] = "no-such-value"
    elif choice == 1 and n.get("inputs") and names:  # a later output: a cycle or an order error
        n["inputs"][rng.integers(len(n["inputs"]))] = names[-1 - int(rng.integers(len(names)))]
    elif choice == 2 and n.get("outputs") and names:  # a name defined twice
        n["outputs"][0] = names[rng.integers(len(names))]
    elif choice == 3:  # nodes reordered
        j = int(rng.integers(len(found)))
        found[i], found[j] = found[j], found[i]
        f.header["graph"]["nodes"] = found
    elif choice == 4:
        key = ["inputs", "outputs", "name"][rng.integers(3)]
        n[key] = _hostile(rng)
    else:  # an input dropped or added
        if isinstance(n.get("inputs"), list):
            if n["inputs"] and rng.random() < 0.5:
                n["inputs"].pop()
            else:
                n["inputs"].append(["", "x", names[0] if names else "y"][rng.integers(3)])
    return f"node {i} wiring ({choice}): {str(n)[:160]}"


def m_node_op(rng, f):
    n = _pick(rng, nodes(f.header))
    if n is None:
        return "no nodes"
    from zeroskip.ops import OPS

    ops = sorted(OPS)
    n["op"] = ops[rng.integers(len(ops))] if rng.random() < 0.8 else _hostile(rng)
    return f"node {n.get('name')!r} op = {n['op']!r}"


def m_node_attr(rng, f):
    with_attrs = [n for n in nodes(f.header) if isinstance(n.get("attrs"), dict) and n["attrs"]]
    if not with_attrs:
        return "no attributes"
    n = with_attrs[rng.integers(len(with_attrs))]
    key = sorted(n["attrs"])[rng.integers(len(n["attrs"]))]
    value = n["attrs"][key]
    if isinstance(value, list) and value and rng.random() < 0.6:
        value[rng.integers(len(value))] = _hostile(rng)
    elif isinstance(value, list) and rng.random() < 0.5:
        n["attrs"][key] = value + [1] if rng.random() < 0.5 else value[:-1]
    else:
        n["attrs"][key] = _hostile(rng)
    return f"node {n.get('name')!r} attr {key} = {str(n['attrs'][key])[:80]}"


def m_csr(rng, f):
    """Corrupt a CSR tensor's arrays in place (then re-sealed): the CSR invariants must catch it."""
    csrs = [(n, t) for n, t in tensors(f.header) if t.get("layout") == "csr"]
    if not csrs:
        return "no csr tensor"
    name, tensor = csrs[rng.integers(len(csrs))]
    try:
        indptr = _array(f, tensor["buffers"]["indptr"])
        indices = _array(f, tensor["buffers"]["indices"])
    except (KeyError, TypeError, ValueError):
        return "csr buffers unusable"
    kind = int(rng.integers(7))
    if kind == 0 and len(indices) >= 2:  # unsorted within a row (or across one)
        i = int(rng.integers(len(indices) - 1))
        indices[i], indices[i + 1] = indices[i + 1], indices[i]
    elif kind == 1 and len(indices) >= 2:  # a duplicate
        i = int(rng.integers(1, len(indices)))
        indices[i] = indices[i - 1]
    elif kind == 2 and len(indices):  # out of range: the largest value the dtype holds, or -1
        indices[rng.integers(len(indices))] = np.iinfo(indices.dtype).max if rng.random() < 0.5 \
            else (-1 if indices.dtype.kind == "i" else np.iinfo(indices.dtype).max - 1)
    elif kind == 3 and len(indptr) >= 3:  # indptr decreasing
        i = int(rng.integers(1, len(indptr) - 1))
        indptr[i:i + 1] = (indptr[i - 1:i].astype(np.int64) - 1).astype(indptr.dtype)
    elif kind == 4 and len(indptr):  # indptr not ending at nnz (wrapping in its dtype)
        indptr[-1:] = (indptr[-1:].astype(np.int64) + int(rng.choice([-1, 1]))).astype(indptr.dtype)
    elif kind == 5 and len(indptr):  # indptr not starting at 0
        indptr[0] = 1
    elif len(indptr) >= 2:  # a row claiming every nonzero
        indptr[1:] = indptr[-1]
    return f"tensor {name!r} csr corruption {kind}"


def _array(f, buf) -> np.ndarray:
    """A writable view of a buffer inside ``f.data``."""
    dtype = np.dtype(buf["dtype"]).newbyteorder("<")
    return np.frombuffer(memoryview(f.data)[buf["offset"]:buf["offset"] + buf["length"]],
                         dtype=dtype)


def m_header_any(rng, f):
    """Any object key in the header, anywhere (metadata included): replaced or deleted."""
    paths = []

    def walk(obj, path):
        if isinstance(obj, dict):
            for k, v in obj.items():
                paths.append((obj, k, path + (k,)))
                walk(v, path + (k,))
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                paths.append((obj, i, path + (i,)))
                walk(v, path + (i,))

    walk(f.header, ())
    if not paths:
        return "empty header"
    parent, key, path = paths[rng.integers(len(paths))]
    if isinstance(parent, dict) and rng.random() < 0.2:
        del parent[key]
        return f"deleted {path}"
    if isinstance(parent, dict) and rng.random() < 0.1:
        parent["unexpected"] = 1
        return f"added a key beside {path}"
    parent[key] = _hostile(rng)
    return f"{path} = {str(parent[key])[:80]}"


def _pick(rng, items):
    """A random element of ``items``, or None when there is none."""
    return items[rng.integers(len(items))] if items else None


def _hostile(rng):
    value = HOSTILE_VALUES[rng.integers(len(HOSTILE_VALUES))]
    return json.loads(json.dumps(value))  # a fresh copy (lists are mutated later)


def _dtype(rng):
    names = ["float32", "float64", "float16", "int8", "uint8", "int16", "uint16", "int32", "int64",
             "bool", "uint32", "uint64", "complex64", "object", "<f4", ""]
    return names[rng.integers(len(names))]


RAW = {"flip_bytes": m_flip_bytes, "truncate": m_truncate, "extend": m_extend,
       "header_bytes": m_header_bytes}
SEALED = {"flip_data": m_flip_data, "cut_data": m_cut_data, "tensor_field": m_tensor_field,
          "buffer_field": m_buffer_field, "quant": m_quant, "value_shape": m_value_shape,
          "node_wiring": m_node_wiring, "node_op": m_node_op, "node_attr": m_node_attr,
          "csr": m_csr, "header_any": m_header_any}
WEIGHTS = {"flip_bytes": 1, "truncate": 1, "extend": 0.5, "header_bytes": 1, "flip_data": 1,
           "cut_data": 0.5, "tensor_field": 2, "buffer_field": 2, "quant": 2, "value_shape": 2,
           "node_wiring": 2, "node_op": 1, "node_attr": 3, "csr": 3, "header_any": 2}
"""How often each mutation is chosen (relative)."""


@dataclass
class Case:
    index: int
    seed_name: str
    blob: bytes
    mutations: list = field(default_factory=list)
    mode: str = "reference"


def make_case(index: int, seeds: dict[str, bytes], base_seed: int) -> Case:
    """Case ``index`` of a run: the same file for the same (seed files, base seed, index)."""
    rng = np.random.default_rng([base_seed, index])
    names = sorted(seeds)
    seed_name = names[rng.integers(len(names))]
    blob = seeds[seed_name]
    kinds = sorted(WEIGHTS)
    p = np.array([WEIGHTS[k] for k in kinds], float)
    chosen = [kinds[i] for i in rng.choice(len(kinds), size=int(rng.integers(1, 4)), p=p / p.sum())]
    done = []
    sealed = [k for k in chosen if k in SEALED]
    if sealed:
        f = ZskFile.parse(blob)
        for kind in sealed:
            try:
                done.append(f"{kind}: {SEALED[kind](rng, f)}")
            except (KeyError, TypeError, ValueError, IndexError, AttributeError,
                    OverflowError) as err:
                done.append(f"{kind}: skipped ({type(err).__name__})")
        blob = f.seal()
    for kind in chosen:
        if kind in RAW:
            blob, what = RAW[kind](rng, None, blob)
            done.append(f"{kind}: {what}")
    modes = modes_for(seed_name)
    return Case(index, seed_name, blob, done, modes[rng.integers(len(modes))])


# -- the worker: load, run, report -----------------------------------------------------------------
def _worker(conn, selftest: str | None = None):
    import resource

    os.environ["ZEROSKIP_MEMORY_LIMIT"] = str(MEMORY_LIMIT)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_LIMIT, ADDRESS_LIMIT))
    except (ValueError, OSError):
        pass
    import zeroskip

    directory = tempfile.mkdtemp(prefix="zsk-fuzz-")
    path = os.path.join(directory, "case.zsk")
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        blob, mode = message
        with open(path, "wb") as out:
            out.write(blob)
        before = _resident()
        stage = "load"
        try:
            if selftest and blob.startswith(b"SELFTEST"):
                _selftest(selftest)
            model = zeroskip.load(path)
            stage = "session"
            session = zeroskip.Session(model, mode=mode, threads=1 + (len(blob) % 2))
            stage = "run"
            feeds = _feeds(session)
            if feeds is None:
                outcome, detail = "planned", "inputs too large to make up"
            else:
                session.run(feeds)
                outcome, detail = "ran", ""
        except zeroskip.ZeroskipError as err:
            outcome, detail = f"refused at {stage}", f"{type(err).__name__}: {str(err)[:300]}"
        except BaseException as err:  # noqa: BLE001 - the very thing the fuzzer looks for
            outcome = "error"
            detail = "".join(traceback.format_exception(type(err), err, err.__traceback__))[-3000:]
        conn.send((outcome, detail, _peak() - before))


def _resident() -> int:
    """Resident bytes now, after resetting the peak (Linux: /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status("VmRSS")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak() -> int:
    """Peak resident bytes since ``_resident`` (else since the process started)."""
    try:
        return _status("VmHWM")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/self/status")


def _feeds(session):
    feeds = {}
    rng = np.random.default_rng(0)
    for vi in session.inputs:
        shape = tuple(BATCH if d is None else d for d in vi.shape)
        if int(np.prod(shape, dtype=object)) > MAX_FEED:
            return None
        if vi.dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(shape).astype(vi.dtype)
        elif vi.dtype.kind in "iu":
            feeds[vi.name] = rng.integers(0, 4, shape).astype(vi.dtype)
        else:
            feeds[vi.name] = rng.random(shape) < 0.5
    return feeds


def _selftest(kind: str):
    """Failures on purpose, for the test that the harness catches each kind."""
    if kind == "error":
        raise ValueError("a non-zeroskip exception on purpose")
    if kind == "crash":
        os.abort()
    if kind == "hang":
        time.sleep(3600)
    if kind == "memory":
        np.ones(MEMORY_LIMIT // 8 * 3 // 2).sum()  # touched: resident


class Worker:
    """A worker process that answers one case at a time, restarted after a failure."""

    def __init__(self, selftest: str | None = None):
        self.selftest = selftest
        self._start()

    def _start(self):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, self.selftest), daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(300) or self.conn.recv() != "ready":
            raise RuntimeError("a fuzz worker did not start")

    def restart(self):
        self.process.kill()
        self.process.join()
        self.conn.close()
        self._start()

    def ask(self, case: Case, timeout: float):
        """(outcome, detail, grown bytes); outcome "crash" or "hang" when the worker fails."""
        try:
            self.conn.send((case.blob, case.mode))
            if not self.conn.poll(timeout):
                self.restart()
                return "hang", f"no answer in {timeout} s", 0
            return self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.process.join(5)
            code = self.process.exitcode
            self.restart()
            return "crash", f"worker exit code {code}", 0

    def close(self):
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()


FAILURES = ("error", "crash", "hang", "memory")


def judge(worker: Worker, case: Case, timeout: float, compile_allowance: float = 60.0):
    """Run a case. One that hangs is run again in the fresh worker with ``compile_allowance``
    seconds: a kernel's first JIT compile (its cache written only when it ends) is not a hang."""
    outcome, detail, grown = worker.ask(case, timeout)
    if outcome == "hang":
        outcome, detail, grown = worker.ask(case, max(timeout, compile_allowance))
    if outcome not in FAILURES and grown > MEMORY_LIMIT:
        outcome, detail = "memory", f"peak resident memory grew by {grown / 2**20:.0f} MiB"
        worker.restart()
    return outcome, detail


def warm_up(worker: Worker, seeds: dict[str, bytes]):
    """Every seed in each of its modes, unmutated: the kernels compile (or load from Numba's
    cache) here, not inside a timed case."""
    for name, blob in sorted(seeds.items()):
        for mode in modes_for(name):
            outcome, detail, _ = worker.ask(Case(-1, name, blob, [], mode), 600)
            if outcome != "ran":
                raise RuntimeError(f"seed {name!r} does not run in {mode}: {outcome} {detail}")


def modes_for(seed_name: str) -> tuple[str, ...]:
    """The modes a seed runs in: the int8 ones for quantized models only."""
    return MODES if "int8" in seed_name else tuple(m for m in MODES if "i8" not in m)


def fuzz(cases: int, seed: int = 0, workers: int = 2, timeout: float = 5.0, out: str | None = None,
         first: int = 0, selftest: str | None = None, seeds: dict | None = None,
         progress: bool = True, compile_allowance: float = 60.0) -> dict:
    """Run cases ``first`` .. ``first + cases - 1``; returns {"outcomes": Counter, "failures":
    [case record], "seconds": float, "by_mutation": {kind: Counter of outcomes}, "reasons":
    Counter of the kinds of refusal}."""
    from concurrent.futures import ThreadPoolExecutor

    seeds = seeds if seeds is not None else seed_files()
    pool = [Worker(selftest) for _ in range(workers)]
    if not selftest:
        for worker in pool:
            warm_up(worker, seeds)
    outcomes, reasons, by_mutation, failures = Counter(), Counter(), {}, []
    start = time.perf_counter()

    def one(worker_index, index):
        case = make_case(index, seeds, seed)
        if selftest:
            case.blob = b"SELFTEST" + case.blob
        return case, judge(pool[worker_index], case, timeout, compile_allowance)

    try:
        with ThreadPoolExecutor(workers) as threads:
            indices = list(range(first, first + cases))
            for chunk_start in range(0, len(indices), workers):
                batch = indices[chunk_start:chunk_start + workers]
                for case, (outcome, detail) in threads.map(one, range(len(batch)), batch):
                    outcomes[outcome] += 1
                    reasons[_reason(outcome, detail)] += 1
                    for m in case.mutations:
                        by_mutation.setdefault(m.split(":")[0], Counter())[outcome] += 1
                    if outcome in FAILURES:
                        record = dict(index=case.index, seed=case.seed_name, mode=case.mode,
                                      mutations=case.mutations, outcome=outcome, detail=detail)
                        failures.append(record)
                        if out:
                            _save(out, case, record)
                done = chunk_start + len(batch)
                if progress and done % 500 < workers:
                    print(f"  {done}/{cases} cases, {len(failures)} failures, "
                          f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    finally:
        for worker in pool:
            worker.close()
    return dict(outcomes=outcomes, failures=failures, seconds=time.perf_counter() - start,
                by_mutation=by_mutation, reasons=reasons)


def _reason(outcome: str, detail: str) -> str:
    """A refusal's kind: its error type and the rule's wording, without names and numbers."""
    if not outcome.startswith("refused"):
        return outcome
    import re

    text = re.sub(r"'[^']*'|\d+(\.\d+)?|\([^)]*\)", "_", detail.split(": ", 1)[-1])
    return f"{outcome}: {detail.split(':')[0]}: {' '.join(text.split()[:8])}"


def _save(out: str, case: Case, record: dict):
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"case-{case.index:06d}")
    with open(stem + ".zsk", "wb") as f:
        f.write(case.blob)
    with open(stem + ".json", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first", type=int, default=0, help="index of the first case")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--out", default="fuzz-failures", help="where failing files are saved")
    parser.add_argument("--add", nargs="*", default=[], metavar="FILE.zsk",
                        help="more valid files to start from (your own models); a name with "
                             "'int8' in it is also run in the int8 modes")
    args = parser.parse_args(argv)
    seeds = seed_files()
    for path in args.add:
        seeds[Path(path).stem] = Path(path).read_bytes()
    result = fuzz(args.cases, args.seed, args.workers, args.timeout, args.out, args.first,
                  seeds=seeds)
    print(f"{args.cases} cases in {result['seconds']:.0f} s (seed {args.seed}): "
          + ", ".join(f"{k} {v}" for k, v in sorted(result["outcomes"].items())))
    print(f"{'mutation':<14} " + " ".join(f"{k:>10}" for k in
                                          ("ran", "planned", "refused", *FAILURES)))
    for kind, counts in sorted(result["by_mutation"].items()):
        refused = sum(v for k, v in counts.items() if k.startswith("refused"))
        print(f"{kind:<14} " + " ".join(f"{n:>10}" for n in (
            counts["ran"], counts["planned"], refused, *(counts[k] for k in FAILURES))))
    for record in result["failures"]:
        print(f"FAIL case {record['index']} ({record['seed']}, {record['mode']}): "
              f"{record['outcome']}: {record['mutations']}\n{record['detail']}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
