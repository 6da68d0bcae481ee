"""zeroskip.dask: a Session mapped over a dask array's chunks on a LocalCluster of 2 worker
processes gives the single-process bytes; a worker that dies mid-run is retried; a bad chunk is an
InputError naming it; a dask DataFrame's partitions; and ``zeroskip run --dask``."""

from __future__ import annotations

import os

import dask
import dask.array as da
import distributed  # the test extra installs it: these tests run everywhere the suite does
import numpy as np
import pytest

import zeroskip
import zeroskip.dask as zs_dask

import compress_models as cm
from test_cli import zeroskip_cmd

@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def _data(rows=60, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, 3, 8, 8)).astype(np.float32)


def _per_chunk(session, x, batch):
    return np.concatenate([session.run({"x": x[i:i + batch]})["y"]
                           for i in range(0, len(x), batch)])


def test_cluster_output_is_the_single_process_output_byte_for_byte(client):
    model = cm.cnn()
    x = _data()
    lazy = zs_dask.run(model, da.from_array(x, chunks=(25, 3, 8, 8)), batch=9)
    assert lazy.shape == (60, 10) and lazy.dtype == np.float32 and lazy.chunks[0][0] == 9
    # the model is one object in the graph, not a copy per task
    sessions = [v for v in dict(lazy.__dask_graph__()).values()
                if isinstance(getattr(v, "value", v), zeroskip.Session)]
    assert len(sessions) == 1
    got = client.compute(lazy).result()
    want = _per_chunk(zeroskip.Session(model, "auto", threads=1), x, 9)
    assert np.array_equal(got, want)  # float: the same chunks give the same bytes
    q = zeroskip.quantize(model, x, progress=False)
    got = client.compute(zs_dask.run(q, da.from_array(x, chunks=(7, 3, 8, 8)))).result()
    assert np.array_equal(got, zeroskip.Session(q, "auto", threads=1).run({"x": x})["y"])


def _dies_once(marker, block):
    """The first call anywhere kills its worker process (as a crashed or preempted machine
    would); any retry returns the block."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return block


def test_a_worker_that_dies_mid_run_is_retried_and_the_result_is_complete(client, tmp_path):
    model = cm.cnn()
    x = _data(40, seed=3)
    marker = str(tmp_path / "died")
    pieces = [da.from_delayed(dask.delayed(_dies_once)(marker, x[i:i + 10]) if i == 20 else
                              dask.delayed(lambda b: b)(x[i:i + 10]), (10, 3, 8, 8), np.float32)
              for i in range(0, 40, 10)]
    lazy = zs_dask.run(model, da.concatenate(pieces), batch=10)
    got = client.compute(lazy).result()
    assert os.path.exists(marker)  # a worker did die
    assert np.array_equal(got, _per_chunk(zeroskip.Session(model, "auto", threads=1), x, 10))


def test_a_bad_chunk_is_an_input_error_naming_the_chunk(client):
    model = cm.cnn()
    x = _data(30)
    bad = x[10:20, :, :7, :]  # declared 8x8, holds 7x8
    pieces = [da.from_array(x[:10], chunks=(10, 3, 8, 8)),
              da.from_delayed(dask.delayed(lambda b: b)(bad), (10, 3, 8, 8), np.float32),
              da.from_array(x[20:], chunks=(10, 3, 8, 8))]
    lazy = zs_dask.run(model, da.concatenate(pieces))
    with pytest.raises(zeroskip.InputError, match=r"chunk 1 \(rows 10 to 19\): .*'x'"):
        client.compute(lazy).result()


def test_dataframe_partitions_and_static_checks():
    import dask.dataframe as dd
    import pandas as pd

    model = cm.mlp()
    x = np.random.default_rng(1).standard_normal((45, 20)).astype(np.float32)
    frame = dd.from_pandas(pd.DataFrame(x), npartitions=3)
    got = zs_dask.run(model, frame).compute(scheduler="threads")
    session = zeroskip.Session(model, "auto", threads=1)
    parts = [len(p) for p in frame.partitions]
    want = np.concatenate([session.run({"x": x[s:s + n]})["y"] for s, n in
                           zip(np.cumsum([0] + parts[:-1]), parts)])
    assert np.array_equal(got, want)
    with pytest.raises(zeroskip.InputError, match="axis 1 has size 21, the model expects 20"):
        zs_dask.run(model, da.zeros((4, 21), chunks=2))
    with pytest.raises(zeroskip.InputError, match="output 'z'"):
        zs_dask.run(model, da.zeros((4, 20), chunks=2), output="z")
    with pytest.raises(zeroskip.InputError, match="batch must be a positive integer"):
        zs_dask.run(model, da.zeros((4, 20), chunks=2), batch=0)


def test_run_dask_from_the_shell(tmp_path):
    model = cm.mlp()
    zeroskip.save(model, tmp_path / "m.zsk")
    x = np.random.default_rng(2).standard_normal((50, 20)).astype(np.float32)
    np.save(tmp_path / "big.npy", x)
    result = zeroskip_cmd("run", tmp_path / "m.zsk", "--input", tmp_path / "big.npy", "--mode",
                          "dense-f32", "--dask", "local:2", "--batch", "16",
                          "--output", tmp_path / "y.npz")
    assert result.returncode == 0, result.stderr
    assert "ran 50 rows in" in result.stdout and "on Dask (local:2)" in result.stdout
    with np.load(tmp_path / "y.npz") as data:
        got = data["y"]
    session = zeroskip.Session(model, "dense-f32")
    want = np.concatenate([session.run({"x": x[i:i + 16]})["y"] for i in range(0, 50, 16)])
    assert np.array_equal(got, want)
