"""The team of kernels/_team.py: parallel regions run on it give the threading layer's bytes, its
workers take chunks (also after sleeping), a region it cannot take goes to the layer, a worker
that never comes leaves every chunk to the launcher, and a forked child runs regions too."""

from __future__ import annotations

import multiprocessing
import threading
import time

import numba
import numpy as np
import pytest
from numba import njit, prange

from zeroskip.kernels import _team

pytestmark = pytest.mark.skipif(
    not _team.supported(),
    reason="no team in this process (not Linux x86-64, one CPU, the JIT off, or ZEROSKIP_TEAM=0)")


def test_the_team_is_up_where_it_is_supported():
    """zeroskip.kernels installed the team at import, and its workers are in their loops."""
    assert _team.active()
    assert _team.stats()["workers"] == numba.config.NUMBA_NUM_THREADS - 1


def _hashes(x, out, reps):
    """out[i] = an FNV-1a hash of x's row i, ``reps`` rounds (uint64 arithmetic wraps)."""
    for i in prange(x.shape[0]):
        h = np.uint64(1469598103934665603)
        for _ in range(reps):
            for v in x[i]:
                h = (h ^ np.uint64(v)) * np.uint64(1099511628211)
        out[i] = h


_parallel = njit(parallel=True)(_hashes)
_serial = njit(_hashes)
LONG = 3000
"""Rounds that make each chunk take ~0.1 ms: long enough for a sleeping worker to wake and join."""


@pytest.fixture(scope="module")
def case():
    x = np.random.default_rng(0).integers(0, 256, (64, 40), dtype=np.uint8)
    expected = {}
    for reps in (3, LONG):
        expected[reps] = np.zeros(x.shape[0], np.uint64)
        _serial(x, expected[reps], reps)
    return x, expected


def _run(x, reps=3, threads=2):
    out = np.zeros(x.shape[0], np.uint64)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        _parallel(x, out, reps)
    finally:
        numba.set_num_threads(before)
    return out


def test_the_serial_reference_is_the_python_loop(case):
    x, expected = case
    out = np.zeros(x.shape[0], np.uint64)
    with np.errstate(over="ignore"):
        _hashes(x, out, 3)  # prange is range in Python
    np.testing.assert_array_equal(out, expected[3])


def test_regions_on_the_team_give_the_same_bytes_and_workers_take_chunks(case):
    x, expected = case
    before = _team.stats()
    for _ in range(50):
        np.testing.assert_array_equal(_run(x, LONG), expected[LONG])
        np.testing.assert_array_equal(_run(x), expected[3])
    after = _team.stats()
    assert after["launches"] - before["launches"] == 100  # no other launcher: none fell back
    assert after["worker_chunks"] > before["worker_chunks"]


def test_one_thread_regions_go_to_the_layer(case):
    x, expected = case
    before = _team.stats()
    np.testing.assert_array_equal(_run(x, threads=1), expected[3])
    after = _team.stats()
    assert after["fallbacks"] == before["fallbacks"] + 1
    assert after["launches"] == before["launches"]


def test_launches_from_two_threads_each_run_once_on_the_team_or_the_layer(case):
    x, expected = case
    before = _team.stats()
    errors = []

    def launch():
        for _ in range(100):
            out = _run(x)
            if not np.array_equal(out, expected[3]):
                errors.append(out)

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = _team.stats()
    assert not errors
    regions = (after["launches"] - before["launches"]) + (after["fallbacks"] - before["fallbacks"])
    assert regions == 200


def test_sleeping_workers_wake_for_the_next_region(case):
    x, expected = case
    until = time.monotonic() + 2.0
    while _team._state[_team.SLEEPERS] < _team.stats()["workers"] and time.monotonic() < until:
        time.sleep(0.01)
    assert _team._state[_team.SLEEPERS] == _team.stats()["workers"]  # idle past SPIN_S: asleep
    before = _team.stats()["worker_chunks"]
    for _ in range(20):  # long chunks: a woken worker joins within each region
        np.testing.assert_array_equal(_run(x, LONG), expected[LONG])
    assert _team.stats()["worker_chunks"] > before


@njit(nogil=True)
def _cpu_now():
    return _team._getcpu()


def test_a_thread_moves_off_a_cpu_and_keeps_all_its_cpus():
    """_move_off, what a worker woken on its launcher's CPU does: the thread runs elsewhere after
    it, and may still run on every CPU it could before; with one CPU it stays (False)."""
    import os

    mask = os.sched_getaffinity(0)
    if len(mask) < 2:
        assert not _team._move_off(_cpu_now())
        return
    try:
        for _ in range(3):
            cpu = _cpu_now()
            assert cpu in mask
            assert _team._move_off(cpu)
            assert _cpu_now() != cpu
            assert os.sched_getaffinity(0) == mask
        os.sched_setaffinity(0, {min(mask)})
        assert not _team._move_off(min(mask)) and os.sched_getaffinity(0) == {min(mask)}
    finally:
        os.sched_setaffinity(0, mask)


def test_a_launch_that_wakes_workers_records_its_cpu(case):
    """Each launch that wakes sleeping workers records its CPU (a worker that wakes there moves
    off it: _move_off above; counted in ``moves``); regions give the same bytes either way."""
    import os

    x, expected = case
    mask = os.sched_getaffinity(0)
    assert "moves" in _team.stats()
    for cpu in sorted(mask)[:2]:
        try:
            os.sched_setaffinity(0, {cpu})  # the launcher held on one CPU
            until = time.monotonic() + 2.0  # the workers asleep: idle past SPIN_S
            while _team._state[_team.SLEEPERS] < _team.stats()["workers"] \
                    and time.monotonic() < until:
                time.sleep(0.01)
            assert _team._state[_team.SLEEPERS] == _team.stats()["workers"]
            np.testing.assert_array_equal(_run(x, LONG), expected[LONG])
            assert _team._state[_team.LAUNCHER_CPU] == cpu
        finally:
            os.sched_setaffinity(0, mask)


def test_the_launcher_runs_every_chunk_when_no_worker_comes(case):
    x, expected = case
    _team.stop()
    try:
        assert _team.stats()["workers"] == 0
        _team._state[_team.WORKERS] = 1  # a worker that never runs, as when its CPU is taken
        before = _team.stats()
        for _ in range(10):
            np.testing.assert_array_equal(_run(x), expected[3])
        after = _team.stats()
        assert after["launches"] == before["launches"] + 10
        assert after["worker_chunks"] == before["worker_chunks"]
    finally:
        _team._state[_team.WORKERS] = 0
        _team.restart()
    until = time.monotonic() + 2.0
    while not _team.active() and time.monotonic() < until:
        time.sleep(0.01)
    assert _team.active()


def _child(queue, x, expected):
    out = _run(x)
    alive_before = _team.active()
    _team.restart()
    until = time.monotonic() + 2.0
    while not _team.active() and time.monotonic() < until:
        time.sleep(0.01)
    again = _run(x)
    queue.put((np.array_equal(out, expected), alive_before, _team.active(),
               np.array_equal(again, expected)))


def test_a_forked_child_runs_regions_on_the_layer_then_on_its_own_team(case):
    x, expected = case
    _run(x)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, x, expected[3]))
    process.start()
    result = queue.get(timeout=60)
    process.join(60)
    assert result == (True, False, True, True)
