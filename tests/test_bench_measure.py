"""zeroskip bench's timing loop: interleaved rounds, a settle run before each timed run."""

from __future__ import annotations

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
