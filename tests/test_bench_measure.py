"""zeroskip bench's timing loop: interleaved rounds, a settle run before each timed run; the note
on CPUs far apart (a cache line's handoff between two, timed)."""

from __future__ import annotations

import numpy as np

import zeroskip.bench
from zeroskip.bench import Runner, measure


def test_each_round_runs_every_runner_twice_and_times_the_second_run(monkeypatch):
    pauses = []
    monkeypatch.setattr(zeroskip.bench.time, "sleep", pauses.append)
    calls = []
    runners = [Runner(name, lambda name=name: calls.append(name)) for name in "abc"]
    measure(runners, rounds=3)
    assert [len(r.times) for r in runners] == [3, 3, 3]
    assert all(t >= 0 for r in runners for t in r.times)
    # round r starts at runner r (mod 3); each runner twice in a row: settle, then timed
    assert calls == ["a", "a", "b", "b", "c", "c",
                     "b", "b", "c", "c", "a", "a",
                     "c", "c", "a", "a", "b", "b"]
    assert pauses == [zeroskip.bench.SETTLE_S] * 9  # before every turn


def test_a_turn_can_time_several_runs_back_to_back(monkeypatch):
    pauses = []
    monkeypatch.setattr(zeroskip.bench.time, "sleep", pauses.append)
    calls = []
    runners = [Runner(name, lambda name=name: calls.append(name)) for name in "ab"]
    measure(runners, rounds=2, runs_per_turn=3)
    assert [len(r.times) for r in runners] == [6, 6]
    # a turn: one settle run, then three timed ones, all before the next runner's turn
    assert calls == ["a"] * 4 + ["b"] * 4 + ["b"] * 4 + ["a"] * 4
    assert pauses == [zeroskip.bench.SETTLE_S] * 4


def test_a_pair_on_several_threads_notes_cpus_far_apart(monkeypatch):
    import zeroskip.kernels._spin as spin

    monkeypatch.setattr(zeroskip.bench.time, "sleep", lambda s: None)
    for ns, noted in ((45.0, False), (170.0, True)):
        monkeypatch.setattr(spin, "handoff_ns", lambda ns=ns: ns)
        notes: list = []
        assert zeroskip.bench._handoff_note(2, notes) == ns
        assert bool(notes) is noted
        if noted:
            assert "170 ns" in notes[0] and "far apart" in notes[0]
    notes = []
    assert zeroskip.bench._handoff_note(1, notes) is None and notes == []  # one thread: none


def test_handoff_is_timed_between_two_cpus_and_leaves_the_callers_cpus_as_they_were():
    import os

    import numba

    from zeroskip.kernels._spin import _volley, handoff_ns

    if numba.config.DISABLE_JIT or (os.cpu_count() or 1) < 2:
        assert handoff_ns() is None
        return
    mask = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    ns = handoff_ns(volleys=3, hits=300)  # (on CPUs busy with other tests: a switch each)
    assert ns is not None and 1.0 < ns < 1e9
    if mask is None:
        return
    assert os.sched_getaffinity(0) == mask
    os.sched_setaffinity(0, {min(mask)})
    try:
        assert handoff_ns(volleys=1, hits=10) is None  # one CPU: no handoff between two to time
        assert os.sched_getaffinity(0) == {min(mask)}
        # two players on one CPU still finish: each yields its CPU while it waits
        import threading

        word = np.zeros(1, np.int64)
        other = threading.Thread(target=_volley, args=(word, 1, 0, 200))
        other.start()
        _volley(word, 0, 0, 200)
        other.join(timeout=60)
        assert not other.is_alive() and word[0] == 400
    finally:
        os.sched_setaffinity(0, mask)
