"""Batch scoring past one machine, on Dask (the ``dask`` extra): a Session mapped over chunks.

    import dask.array as da, zeroskip.dask
    x = da.from_zarr("images.zarr")                       # (N, 3, 224, 224), chunked along N
    y = zeroskip.dask.run("model.zsk", x, batch=256)      # lazy: (N, 1000) float32
    y.to_zarr("logits.zarr")                              # or y.compute() on a Client's cluster

``run`` maps a ``Session`` over the chunks of a ``dask.array`` along its first axis (or over the
partitions of a dask DataFrame whose columns are the features). The model travels once: the
Session is one object in the task graph (it pickles as its ``.zsk`` bytes, and a worker keeps what
it fetched), not a copy per task. Each chunk runs with one thread by default, since Dask already
runs one task per worker thread. A chunk the model refuses raises an ``InputError`` that names the
chunk and its rows. The result is lazy and has the output's shape, chunks and dtype, so it composes
with the rest of a Dask pipeline. Because ``Session.run`` is a pure function of its input, a task
that Dask retries (its worker died) gives the same bytes.

Dask is not a zeroskip dependency: this module imports it only when called.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def run(session_or_path, data, batch: int | None = None, output: str | None = None,
        mode: str = "auto", threads: int | None = 1):
    """A lazy ``dask.array`` of the model's output for every row of ``data``.

    session_or_path — a ``zeroskip.Session`` (used as it is) or anything ``Session`` opens (a
    ``.zsk`` or ``.onnx`` path, ``.zsk`` bytes, a Model), then run in ``mode`` with ``threads``;
    data — a ``dask.array`` (rows along axis 0) or a dask DataFrame (one row per sample, the
    feature columns in order); batch — rows per task (None: the array's own chunks along axis 0);
    output — which output (None: the first). The model must have one input.
    """
    import dask
    import dask.array as da

    from .engine.session import Session

    session = session_or_path if isinstance(session_or_path, Session) else \
        Session(session_or_path, mode=mode, threads=threads)
    if len(session.inputs) != 1:
        raise InputError(f"zeroskip.dask.run maps models with one input; this one has "
                         f"{len(session.inputs)}: {', '.join(v.name for v in session.inputs)}")
    info = session.inputs[0]
    x = _as_array(data, info)
    if x.ndim != len(info.shape):
        raise InputError(f"input {info.name!r}: the data has {x.ndim} axes, the model expects "
                         f"{len(info.shape)} (shape {_shape(info.shape)})")
    for axis, (have, want) in enumerate(zip(x.shape[1:], info.shape[1:]), start=1):
        if want is not None and have != want:
            raise InputError(f"input {info.name!r}: axis {axis} has size {have}, the model "
                             f"expects {want} (shape {_shape(info.shape)})")
    if batch is not None:
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise InputError(f"batch must be a positive integer, not {batch!r}")
    x = x.rechunk({0: batch if batch is not None else x.chunks[0],
                   **{axis: -1 for axis in range(1, x.ndim)}})
    names = [v.name for v in session.outputs]
    name = output if output is not None else names[0]
    if name not in names:
        raise InputError(f"output {name!r}: the model's outputs are {', '.join(names)}")
    probe = session.run({info.name: np.zeros((1,) + x.shape[1:], dtype=info.dtype)})[name]
    chunks = (x.chunks[0],) + tuple((d,) for d in probe.shape[1:])
    shipped = dask.delayed(session, pure=True, traverse=False)
    return da.map_blocks(_score, x, shipped, info.name, name, dtype=probe.dtype, chunks=chunks,
                         drop_axis=list(range(1, x.ndim)),
                         new_axis=list(range(1, probe.ndim)) or None, meta=np.empty(
                             (0,) * probe.ndim, probe.dtype))


def _score(block, session, input_name, output_name, block_info=None):
    """One task: the session on one chunk; an InputError names the chunk and its rows."""
    try:
        return session.run({input_name: block})[output_name]
    except InputError as err:
        where = ""
        if block_info and 0 in block_info:
            chunk = block_info[0]["chunk-location"][0]
            start, stop = block_info[0]["array-location"][0]
            where = f"chunk {chunk} (rows {start} to {stop - 1}): "
        raise InputError(f"{where}{err}") from None


def _as_array(data, info):
    """A dask array of the rows: the array itself, or a DataFrame's values (float columns are
    cast to the input's dtype)."""
    import dask.array as da

    if isinstance(data, da.Array):
        return data
    try:
        import dask.dataframe as dd
    except ImportError:  # dask without its dataframe part: only arrays then
        dd = None
    if dd is not None and isinstance(data, dd.DataFrame):
        return data.to_dask_array(lengths=True).astype(info.dtype)
    if isinstance(data, np.ndarray):
        return da.from_array(data, chunks=(max(len(data), 1),) + data.shape[1:])
    raise InputError(f"zeroskip.dask.run takes a dask array, a dask DataFrame or a numpy array, "
                     f"not {type(data).__name__}")


def _shape(shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


__all__ = ["run"]
