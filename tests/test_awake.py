"""The spinners that keep a parallel run's other CPUs awake (engine/awake.py, kernels/_spin.py)."""

import os
import threading
import time

import numpy as np
import pytest

import zeroskip
from zeroskip.engine import awake, session as session_module
from zeroskip.kernels._spin import SPINS, new_flag, spin_until

pytestmark = pytest.mark.skipif(not SPINS, reason="no sched_yield on this platform")


def test_spin_until_returns_at_once_on_a_raised_flag():
    assert spin_until(new_flag()) == 0


def test_spin_until_yields_until_its_flag_is_raised():
    flag = new_flag()
    flag[0] = 0
    counts = []
    thread = threading.Thread(target=lambda: counts.append(spin_until(flag)))
    thread.start()
    time.sleep(0.05)
    assert thread.is_alive()  # still spinning: the flag is read each time round
    flag[0] = 1
    thread.join(5)
    assert not thread.is_alive() and counts[0] > 0


def _cpu_ticks(thread: threading.Thread) -> int:
    """User + system clock ticks of one thread of this process, from /proc."""
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _state(thread: threading.Thread) -> str:
    """The scheduler state of one thread of this process, from /proc: R runnable, S sleeping."""
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux's /proc")
def test_spinners_spin_inside_kept_awake_and_sleep_outside(monkeypatch):
    """Inside, the spinner yields over and over: its count of sched_yield calls grows, or, when
    other processes keep every core busy, it waits runnable for a turn (it runs under SCHED_IDLE,
    which gets no CPU then: a CI run beside other tests starved it for 10 s) where a sleeping
    spinner would wait on its Event; outside, it sleeps."""
    monkeypatch.delenv(awake.SPIN_ENV, raising=False)
    before = awake._SPINNERS.spins
    runnable = 0  # consecutive samples, 50 ms apart, with the spinner runnable and not spinning
    with awake.kept_awake(2):
        assert awake.spinner_count() >= 1
        spinner = awake._SPINNERS.threads[0]
        until = time.monotonic() + 10.0
        time.sleep(0.3)
        while awake._SPINNERS.spins <= before and runnable < 20 and time.monotonic() < until:
            runnable = runnable + 1 if _state(spinner) == "R" else 0
            time.sleep(0.05)
    time.sleep(0.05)  # the spinner returns to its Event
    assert awake._SPINNERS.spins > before or runnable >= 20
    before = _cpu_ticks(spinner)
    time.sleep(0.3)
    idle = _cpu_ticks(spinner) - before
    tick = os.sysconf("SC_CLK_TCK")
    assert idle <= 0.02 * tick, idle  # it sleeps between runs
    assert awake._SPINNERS.runs == 0 and awake._SPINNERS.flag[0] == 1


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="no SCHED_IDLE here")
def test_spinners_run_at_idle_priority(monkeypatch):
    """Any other thread on the spinner's CPU preempts it at once (awake._idle_priority)."""
    monkeypatch.delenv(awake.SPIN_ENV, raising=False)
    with awake.kept_awake(2):
        spinner = awake._SPINNERS.threads[0]
        for _ in range(100):  # the thread sets its policy as it starts
            if os.sched_getscheduler(spinner.native_id) == os.SCHED_IDLE:
                break
            time.sleep(0.01)
        assert os.sched_getscheduler(spinner.native_id) == os.SCHED_IDLE


def test_nested_and_concurrent_runs_share_the_spinners(monkeypatch):
    monkeypatch.delenv(awake.SPIN_ENV, raising=False)
    with awake.kept_awake(2):
        with awake.kept_awake(2):
            assert awake._SPINNERS.runs == 2 and awake._SPINNERS.flag[0] == 0
        assert awake._SPINNERS.runs == 1 and awake._SPINNERS.flag[0] == 0  # still one in progress
    assert awake._SPINNERS.runs == 0 and awake._SPINNERS.flag[0] == 1


def test_no_spinner_for_one_thread_or_when_turned_off(monkeypatch):
    runs = []
    monkeypatch.setattr(awake._SPINNERS, "enter", lambda count: runs.append(count))
    with awake.kept_awake(1):
        pass
    monkeypatch.setenv(awake.SPIN_ENV, "0")
    assert not awake.spinning_allowed()
    with awake.kept_awake(4):
        pass
    assert runs == []


def _conv_session(threads):
    from test_modes import _quantized

    _, model, input_name, x, _ = _quantized("residual", "qdq", "uint8")
    return zeroskip.Session(model, mode="dense-i8", threads=threads), {input_name: x}


@pytest.mark.parametrize("threads", [1, 2])
def test_sessions_ask_for_spinners_once_a_run_is_long_enough(monkeypatch, threads):
    """A parallel plan's runs keep threads − 1 CPUs awake from the run after one that took
    SPIN_MIN_RUN_S (here 0), a one-thread plan never; the bytes do not change."""
    monkeypatch.delenv(awake.SPIN_ENV, raising=False)
    monkeypatch.setattr(session_module, "SPIN_MIN_RUN_S", 0.0)
    asked = []
    real = session_module.kept_awake
    monkeypatch.setattr(session_module, "kept_awake",
                        lambda count: asked.append(count) or real(count))
    session, feeds = _conv_session(threads)
    first = session.run(feeds)
    second = session.run(feeds)
    spun = [count for count in asked if count > 1]
    if threads == 1:
        assert spun == []
    else:
        assert spun == [2], asked  # the first run had no time to go by yet
    monkeypatch.setenv(awake.SPIN_ENV, "0")
    third = session.run(feeds)
    for key in first:
        assert first[key].tobytes() == second[key].tobytes() == third[key].tobytes()
