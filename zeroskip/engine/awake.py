"""Keeping the run's other CPUs awake while it runs parallel kernels.

On a virtual machine an idle CPU is handed back to the host, and waking it again (the IPI that
the threading layer's futex wake becomes) costs about a millisecond: on the 2-vCPU AMD EPYC
(Zen 5) VM, a parallel call 150 ms after the last one took 0.39 ms where it takes 0.17, and
whole runs were worse. The int8 ResNet-18-shaped model in dense-i8 at 2 threads ran in 6.2 ms
back to back but 11.2–12.5 ms (one thread: 10.7) when each run followed a 150 ms pause, as in
``zeroskip bench``, which pauses between runtimes: one pause of 30 ms or more was enough for the
whole next run to go at one thread's speed, though the TBB workers answer within 6 µs while they
are awake (kernels/__init__.py). onnxruntime's own workers spin between ops; Numba's sleep, and
their CPU with them.

So while a run of parallel kernels is under way, threads − 1 *spinners* (kernels/_spin.py) keep the
other CPUs busy with a loop that only yields the CPU, under Linux's SCHED_IDLE policy
(``_idle_priority``): any thread that wants the CPU, a threading layer's worker or another process,
takes it at once, and the CPU never goes idle. The same model, paused runs: 7.7–8.7 ms with the
spinner against 11.5–12.6 without (back to back 6.4–6.6 against 6.8–6.9). With another process busy
on the second CPU the spinner gives way to it: 13.8 against 13.1 ms paused, 11.3 against 11.5 back
to back, where OpenMP's spinning workers (GOMP_SPINCOUNT) made the paused runs 117 ms.

Spinners start on the first long parallel run (SPIN_MIN_RUN_S) and then sleep on an Event between
runs; sessions running at once share them (a count of runs in progress). Off on one-thread plans
(their kernels never enter the pool), under NUMBA_DISABLE_JIT (the loop would hold the GIL), where
the platform has no sched_yield, and when ZEROSKIP_SPIN=0.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

SPIN_ENV = "ZEROSKIP_SPIN"
"""Set to 0 to turn the spinners off."""

SPIN_MIN_RUN_S = 2e-3
"""A session's runs of a plan have spinners once one of them took this long. Waking a spinner
and getting the GIL back from it cost the run's thread 20–110 µs: more than the whole run of the
digits MLP and CNN at batch 1 (0.03–0.08 ms, and with spinners 0.08–0.18)."""


class _Spinners:
    """The process's spinner threads, and the count of runs that want them."""

    def __init__(self):
        self.lock = threading.Lock()
        self.runs = 0
        self.pid = None      # the process that started the threads (a fork has none)
        self.threads: list = []
        self.flag = None     # raised (1) when no run is in progress: the spinners return
        self.go = threading.Event()
        self.spins = 0       # sched_yield calls made by the spinners so far (for tests)

    def _start(self, count: int) -> None:
        from ..kernels._spin import new_flag, spin_until

        if self.pid != os.getpid():
            self.threads, self.pid, self.flag = [], os.getpid(), new_flag()
            self.go = threading.Event()
        flag, go = self.flag, self.go

        def loop():
            _idle_priority()
            while True:
                go.wait()
                self.spins += spin_until(flag)

        while len(self.threads) < count:
            thread = threading.Thread(target=loop, name=f"zeroskip-spinner-{len(self.threads)}",
                                      daemon=True)
            thread.start()
            self.threads.append(thread)

    def enter(self, count: int) -> None:
        with self.lock:
            self.runs += 1
            if self.runs == 1:
                self._start(count)
                self.flag[0] = 0
                self.go.set()

    def leave(self) -> None:
        with self.lock:
            self.runs -= 1
            if self.runs == 0:
                self.go.clear()
                self.flag[0] = 1


_SPINNERS = _Spinners()


def _idle_priority() -> None:
    """Put the calling thread under Linux's SCHED_IDLE policy, where it has one: it then runs only
    when nothing else on its CPU wants to, and any other thread that wakes there preempts it at
    once, not at its next yield. At normal priority the spinner took its share of the CPUs from
    the run's own threads: MobileNetV2-shaped int8 at two threads, back to back, 3.14–3.60 ms
    with spinners against 3.10–3.15 without; under SCHED_IDLE 3.05–3.13, and the pruned
    ResNet-18-shaped model 3.13 against 3.31 without spinners. Runs after a 150 ms pause keep the
    spinners' gain: 3.69 against 4.30 ms, and 4.10 against 5.45. Elsewhere the spinner keeps its
    priority and yields as before."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        pass


def spinning_allowed() -> bool:
    """Whether runs may keep their CPUs awake here (module docstring)."""
    if os.environ.get(SPIN_ENV, "1").strip() == "0":
        return False
    import numba

    from ..kernels._spin import SPINS

    return SPINS and not numba.config.DISABLE_JIT


@contextmanager
def kept_awake(threads: int):
    """While in it, threads − 1 spinners keep the other CPUs from going idle (none for one
    thread, or where ``spinning_allowed`` says no)."""
    if threads < 2 or not spinning_allowed():
        yield
        return
    _SPINNERS.enter(threads - 1)
    try:
        yield
    finally:
        _SPINNERS.leave()


def spinner_count() -> int:
    """How many spinner threads this process has started (for tests)."""
    return len(_SPINNERS.threads) if _SPINNERS.pid == os.getpid() else 0


__all__ = ["SPIN_ENV", "SPIN_MIN_RUN_S", "kept_awake", "spinner_count", "spinning_allowed"]
