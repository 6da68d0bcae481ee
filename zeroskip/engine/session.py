"""``Session``: validate the inputs, run the graph node by node, return the outputs.

The planner (``zeroskip.engine.plan``) turns the model into one step per node once, for the chosen
mode; ``run`` checks the feeds, walks the steps and frees each activation after its last reader.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

from ..budget import ENV as MEMORY_ENV, over_budget, show_bytes
from ..errors import InputError, ModelFormatError, UnsupportedModelError, ZeroskipError
from ..model import Model, ValueInfo
from ..shapes import batch_coupling
from .awake import SPIN_MIN_RUN_S, kept_awake, spinning_allowed
from .chunks import cache_chunk, sample_bytes
from .memory import estimate
from .plan import MODES, build_plan
from .plan.launch import TRIALS
from .profile import Profile, profile_plan, profile_replay
from .replay import REPLAY_MAX_RUN_S, Recorder, Refused, Replay, Unsettled, replay_of, signature
from .replay import enabled as replay_enabled
from .tuning import batch_class

@dataclass(frozen=True)
class IOInfo:
    """A model input or output as a user sees it: name, shape (None = any size), dtype."""

    name: str
    shape: tuple
    dtype: np.dtype


def _open(model_or_path) -> Model:
    if isinstance(model_or_path, Model):
        return model_or_path
    if isinstance(model_or_path, (bytes, bytearray, memoryview)):
        from ..formats.zsk import loads

        return loads(bytes(model_or_path))
    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        if path.lower().endswith(".onnx"):
            from ..formats.onnx import import_onnx

            return import_onnx(path)
        from ..formats.zsk import load

        return load(path)
    raise TypeError(f"Session needs a Model, a .zsk/.onnx path or .zsk bytes, "
                    f"not {type(model_or_path).__name__}")


class Session:
    """Run a model: ``Session(model_or_path, mode="reference", threads=None).run({name: array})``.

    model_or_path — a ``Model``, a path to a ``.zsk`` (or ``.onnx``) file, or ``.zsk`` bytes.
    mode — how to run it; see ``MODES`` and DESIGN.md's table of modes.
    threads — threads for this session's runs: Numba's, and numpy BLAS's in the float plans that
    call sgemm (None: leave both libraries' settings alone). With 1 the plan takes the kernels'
    serial twins, which skip the threading layer (and its lock) altogether.

    A Session pickles as its model's ``.zsk`` bytes, its mode and its thread count, and ``run`` is a
    pure function of its inputs, so it can be shipped to workers and mapped over chunks of a batch.
    """

    def __init__(self, model_or_path, mode: str = "reference", threads: int | None = None):
        if mode not in MODES:
            raise ZeroskipError(f"mode {mode!r} is not available; choose one of: {', '.join(MODES)}")
        self._float = np.float64 if mode == "reference" else np.float32
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ZeroskipError(f"threads must be a positive integer or None, not {threads!r}")
        self.model = _open(model_or_path)
        self.mode = mode
        self.threads = threads
        graph = self.model.graph
        graph.check()
        self._inputs = [IOInfo(v.name, tuple(v.shape), np.dtype(v.dtype)) for v in graph.inputs]
        # peak-memory estimates per fed shapes (engine/memory.py), and whether a batch too large
        # for memory may run in chunks: checked at the declared shapes before anything is planned
        self._estimates: dict = {}
        self._coupling = batch_coupling(graph)
        self._sample_bytes = None  # the bytes a sample's hungriest step moves (engine/chunks.py)
        need = self._estimate(tuple(tuple(1 if d is None else d for d in v.shape)
                                    for v in self._inputs), declared=True)
        budget = over_budget(need.total)
        if budget is not None:
            shapes = ", ".join(f"{v.name}{_show_shape(v.shape)}" for v in self._inputs)
            raise UnsupportedModelError(
                f"graph inputs {shapes}: a run at these shapes (dynamic sizes as 1) needs about "
                f"{show_bytes(need.total)} (weights {show_bytes(need.weights)}, activations "
                f"{show_bytes(need.activations)} at node {need.node!r}), more than the "
                f"{show_bytes(budget)} available ({MEMORY_ENV} sets the limit)")
        # auto times kernels at the batch it runs: one plan per batch class (tuning.batch_class)
        # when the batch is dynamic, planned when a batch of that class first arrives
        self._batch_axes = {v.name: v.shape.index(None) for v in self._inputs
                            if mode == "auto" and None in v.shape}
        self._plans: dict = {}
        self._plans_lock = threading.Lock()
        self._run_seconds: dict = {}  # id(plan) -> its last run's time (whether spinners pay)
        self._choices: dict = {}  # id(plan) -> its RunChoice, or False: runs as planned
        self._runs: dict = {}  # id(plan) -> runs before its RunChoice is made
        # recorded runs (engine/replay.py), per thread: (id(plan), feeds' signature) -> state
        self._replay = replay_enabled()
        self._replay_local = threading.local()
        self._plan = self._plan_for(1 if self._batch_axes else None)
        self._outputs = [IOInfo(v.name, tuple(v.shape), np.dtype(v.dtype)) for v in
                         _plan_outputs(self.model, self._plan)]
        # after step i, the activations whose last reader it was are freed: _frees[i] lists them
        # (the same nodes in every batch class's plan; outputs and constants are kept)
        keep = {v.name for v in self._outputs} | set(self._plan.constants)
        last_use = {}
        for i, step in enumerate(self._plan.steps):
            for name in step.node.inputs:
                last_use[name] = i
        self._frees = [() for _ in self._plan.steps]
        for name, i in last_use.items():
            if name and name not in keep:
                self._frees[i] += (name,)

    # -- description ---------------------------------------------------------------------------
    @property
    def inputs(self) -> list[IOInfo]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[IOInfo]:
        return list(self._outputs)

    # -- running -------------------------------------------------------------------------------
    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        """Map ``{input name: array}`` to ``{output name: array}``, outputs in the model's order.

        A batch whose run would not fit in memory (``zeroskip.budget``) runs in chunks of the
        largest batch that fits, when the model's samples are independent, and is refused with an
        InputError otherwise. A batch whose layers would overflow the CPU's last-level cache runs
        in cache-sized chunks (engine/chunks.py), with the same outputs."""
        checked = self._check_feeds(feeds)
        chunk = self._chunk(checked)
        if chunk is None:
            return self._run_checked(checked)
        batch = next(iter(checked.values())).shape[0]
        parts = [self._run_checked({name: array[start:start + chunk]
                                    for name, array in checked.items()})
                 for start in range(0, batch, chunk)]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def _run_checked(self, checked: dict) -> dict[str, np.ndarray]:
        plan = self._plan_for(self._batch_class(checked))
        choice = self._choices.get(id(plan))
        if choice is None:
            choice = self._choice_for(plan)
        ran = plan if choice is False else choice.next()
        recorder = None
        states, key = self._replay_states(plan, ran, checked)
        if states is not None:
            state = states.get(key)
            if isinstance(state, Replay):
                if not state.due():
                    return self._replayed(ran, choice, state, checked)
                state.close()  # its Trials recheck in the next runs, which record anew
                del states[key]
                state = None
            if state is None or isinstance(state, Recorder):
                recorder = Recorder(ran, checked)
        values = _start_values(ran, checked)
        before = time.perf_counter()
        with self._running(ran):
            start = time.perf_counter()
            if recorder is None:
                for i, step in enumerate(ran.steps):
                    self._run_step(i, step, values)
            else:
                recorder.run(values, self._frees)
            self._run_seconds[id(ran)] = time.perf_counter() - start
        if choice is not False:
            self._record_choice(choice, ran, time.perf_counter() - before)
        if recorder is not None and (choice is False or choice.chosen is None
                                     or choice.chosen is ran):
            self._recorded(states, key, recorder)
        return self._outputs_of(ran, values, copy=recorder is not None, feeds=checked)

    def _outputs_of(self, plan, values: dict, copy: bool = False,
                    feeds: dict | None = None) -> dict[str, np.ndarray]:
        """The run's outputs, C-contiguous (a GEMM's may be the transpose of its kernel's (N,M)
        result). A constant output is copied, so a caller who changes it cannot change the next
        run's, and so is every output with ``copy`` (a recorded or replayed run's, whose arrays
        the next replay writes again), and an output that is a view of a feed (a Flatten of the
        input), so that changing it cannot change the caller's input."""
        feeds = list((feeds or {}).values())
        out = {}
        for v in self._outputs:
            value = values[v.name]
            if copy or v.name in plan.constants or any(np.may_share_memory(value, f)
                                                       for f in feeds):
                out[v.name] = np.array(value, dtype=v.dtype, order="C", copy=True)
            else:
                out[v.name] = np.asarray(value, dtype=v.dtype, order="C")
        return out

    # -- recorded runs (engine/replay.py) --------------------------------------------------------
    def _replay_states(self, plan, ran, checked: dict):
        """(this thread's replay states, the key of a run of ``ran`` on ``checked``), or (None,
        None) where such a run is not recorded: replays off, a step that cannot be replayed, the
        first runs of ``plan`` (the batch class's), before it may race its one-thread twin
        (``ran`` is the one that runs), runs too long to gain, a feed not C-contiguous. A state is a Recorder
        (one run recorded), a Replay, or the reason a replay was refused (str).

        While the plan and its twin race (``RunChoice``), each records and replays its own runs,
        so that the race is between replays, as the winner will run: the digits MLP's parallel
        plan had lost it step by step (0.190 against 0.187 ms, int8 dense-i8, batch 450, the
        Python between its steps costing it 60 µs more than the twin) and then replayed at 0.18
        ms, where its replays take 0.12. The loser's states go when the race ends
        (``_record_choice``)."""
        if not (self._replay and ran.replayable):
            return None, None
        choice = self._choices.get(id(plan))
        if choice is None:  # its first runs: Trials and JIT still settling
            return None, None
        if self._run_seconds.get(id(ran), REPLAY_MAX_RUN_S) >= REPLAY_MAX_RUN_S:
            return None, None
        sig = signature(checked)
        if sig is None:
            return None, None
        states = getattr(self._replay_local, "states", None)
        if states is None or len(states) >= 16:  # a stream of new shapes keeps a bounded cache
            for state in (states or {}).values():
                if isinstance(state, Replay):
                    state.close()  # its Trials count the calls it made
            states = self._replay_local.states = {}
        if choice is not False and choice.loser is not None:  # the race ended in another thread
            _drop_states(states, choice.loser)
        return states, (id(ran), sig)

    def _recorded(self, states: dict, key, recorder) -> None:
        """A recorded run's state: compared with the one before it, a Replay (or the reason
        there is none); else it waits for the next."""
        first = states.get(key)
        if not isinstance(first, Recorder) or first.plan is not recorder.plan:
            states[key] = recorder
            return
        try:
            states[key] = replay_of(first, recorder, [v.name for v in self._outputs])
        except Unsettled:
            states[key] = recorder
        except Refused as err:
            states[key] = str(err)

    def _replayed(self, plan, choice, replay, checked: dict) -> dict[str, np.ndarray]:
        """A run of ``plan`` as ``replay``'s kernel calls. Where none of them may open a parallel
        region (a parallel plan whose layers all fell below their thresholds: the digits MLP at
        batch 1), in no run context: setting it up and taking it down cost ~20 µs on a run after
        a pause, and made the MLP's two-thread runs in ``zeroskip bench`` slower than its one-thread
        runs (41–57 against 27–33 µs), for the same kernel calls."""
        before = time.perf_counter()
        with self._running(plan) if replay.parallel else _NOTHING:
            start = time.perf_counter()
            values = replay.run(checked)
            self._run_seconds[id(plan)] = time.perf_counter() - start
        if choice is not False:
            self._record_choice(choice, plan, time.perf_counter() - before)
        return self._outputs_of(plan, values, copy=True)

    def _record_choice(self, choice, plan, seconds: float) -> None:
        """``choice.record``; when that ends the race, this thread's recorded runs of the plan
        that lost are dropped (the twin's weights are not kept)."""
        plans, decided = choice.plans, choice.chosen is not None
        choice.record(plan, seconds)
        if decided or choice.chosen is None:
            return
        choice.loser = id(plans[1] if choice.chosen is plans[0] else plans[0])
        _drop_states(getattr(self._replay_local, "states", None) or {}, choice.loser)

    def replays(self) -> list[dict]:
        """This thread's recorded runs: per plan and input signature, whether its runs replay
        (engine/replay.py) and, where they do not, why."""
        rows = []
        for (_, sig), state in (getattr(self._replay_local, "states", None) or {}).items():
            shapes = {name: shape for name, shape, *_ in sig}
            if isinstance(state, Replay):
                rows.append(dict(inputs=shapes, replays=True, calls=len(state.calls)))
            elif isinstance(state, str):
                rows.append(dict(inputs=shapes, replays=False, why=state))
            else:
                rows.append(dict(inputs=shapes, replays=False, why="recording"))
        return rows

    def profile(self, feeds: dict, repeats: int = 20) -> Profile:
        """Where the time goes: ``repeats`` runs of ``feeds`` (after one warm-up run), timed step by
        step, or, where runs at these feeds replay their recorded kernel calls (after the runs it
        takes them to start), each call timed inside whole replayed runs (``Profile.replayed``).
        Returns a ``Profile`` (engine/profile.py): per node its op, input shape, kernel,
        weight density, median time, share of the run and GMAC/s, and the executor's own cost.
        The feeds run in one piece, also where ``run`` would split them into cache-sized chunks
        (engine/chunks.py): profile a chunk's batch (``explain(batch=...)`` names it) to see
        those runs."""
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ZeroskipError(f"repeats must be a positive integer, not {repeats!r}")
        checked = self._check_feeds(feeds)
        if self._memory_chunk(checked) is not None:
            raise InputError(f"profile() runs its feeds in one piece, and a batch of "
                             f"{next(iter(checked.values())).shape[0]} does not fit in memory")
        self._run_checked(checked)  # JIT compile or cache load, scratch: not part of the profile
        replay = self._settled_replay(checked)
        if replay is not None:  # time the recorded calls inside whole runs, as run makes them
            with self._running(replay.plan):
                return profile_replay(replay, checked, _start_values(replay.plan, checked),
                                      self._run_step, repeats)
        plan, values = self._start(checked)
        with self._running(plan):
            return profile_plan(plan, values, self._run_step, repeats)

    def _settled_replay(self, checked: dict):
        """The Replay that this thread's runs of ``checked`` feeds make, after as many runs as it
        takes (the thread-count choice and the Trials settled, two runs recorded; at most
        PROFILE_SETTLE_RUNS); None where these runs are not replayed (replays off, a step that
        cannot replay, runs too long to gain, a refusal, a feed not C-contiguous)."""
        sig = signature(checked)
        plan = self._plan_for(self._batch_class(checked))
        if not (self._replay and sig is not None and plan.replayable):  # (its twin's steps too)
            return None
        slow = 0
        for _ in range(PROFILE_SETTLE_RUNS):
            self._run_checked(checked)
            choice = self._choices.get(id(plan))
            settled = choice is False or (choice is not None and choice.chosen is not None)
            ran = (plan if choice is False else choice.chosen) if settled else plan
            # two runs in a row too long to be recorded: so are the next (one run may be long
            # for its own reasons: auto timing its kernels, a JIT compile, the machine)
            slow = slow + 1 if self._run_seconds.get(id(ran), 0.0) >= 2 * REPLAY_MAX_RUN_S else 0
            if slow == 2:
                return None
            if not settled:
                continue  # before, or while, timing the plan against its one-thread twin
            state = (getattr(self._replay_local, "states", None) or {}).get((id(ran), sig))
            if isinstance(state, str):
                return None
            if isinstance(state, Replay) and state.per_step is not None:
                return state  # (its Trials' next recheck waits for the run after the profile)
        return None

    def _start(self, checked: dict):
        """(the plan for checked feeds' batch, the values a run starts from: constants, inputs)."""
        plan = self._plan_for(self._batch_class(checked))
        return plan, _start_values(plan, checked)

    # -- memory: a run's peak, estimated before it starts ----------------------------------------
    def _estimate(self, shapes: tuple, declared: bool = False):
        """The peak-memory estimate of a run at ``shapes`` (one per input, in order), kept per
        shapes. Shapes the nodes cannot take are the model's fault when they are the ``declared``
        ones (ModelFormatError), else the feeds' (InputError)."""
        need = self._estimates.get(shapes)
        if need is None:
            try:
                need = estimate(self.model.graph,
                                {v.name: shape for v, shape in zip(self._inputs, shapes)},
                                self.mode)
            except ModelFormatError as err:
                if declared:
                    raise
                raise InputError(str(err)) from None
            if len(self._estimates) >= 64:  # a stream of ever new shapes keeps a bounded cache
                self._estimates.clear()
            self._estimates[shapes] = need
        return need

    def chunk_of(self, feeds: dict) -> int | None:
        """The batch of the chunks ``run(feeds)`` goes in, None when it runs whole: chunks that fit
        in memory (``zeroskip.budget``), and within them in the cache (engine/chunks.py)."""
        return self._chunk(self._check_feeds(feeds))

    def _chunk(self, checked: dict) -> int | None:
        """The batch of the chunks a run of ``checked`` goes in, None to run it whole: those that
        fit in memory (``_memory_chunk``), and within them those that fit in the cache
        (engine/chunks.py), when the samples are independent."""
        fits = self._memory_chunk(checked)
        shapes = tuple(array.shape for array in checked.values())
        if fits is None and (not shapes or not shapes[0] or shapes[0][0] <= 1):
            return None  # one sample never splits: 3.5 µs a run saved, on runs of 0.1 ms
        if not self._batch_axes_all(shapes):
            return fits
        cached = self._cache_chunk(shapes[0][0] if fits is None else fits)
        return fits if cached is None else cached

    def _cache_chunk(self, batch: int) -> int | None:
        """The chunks a batch of independent samples runs in to stay in the cache, None for
        whole (engine/chunks.py)."""
        if self._coupling is not None:
            return None
        if self._sample_bytes is None:
            self._sample_bytes = sample_bytes(self.model.graph, self._plan.steps,
                                              self._plan.constants, self.mode)
        return cache_chunk(batch, self._sample_bytes)

    def _memory_chunk(self, checked: dict) -> int | None:
        """None when a run of ``checked`` fits in memory, else the batch of the chunks to run it
        in; InputError when it cannot be split or even one sample does not fit."""
        shapes = tuple(array.shape for array in checked.values())
        need = self._estimate(shapes)
        budget = over_budget(need.activations + need.outputs)
        if budget is None:
            return None
        name, batch = self._inputs[0].name, shapes[0][0] if shapes[0] else 1
        why = (f"input {name!r}: a batch of {batch} needs about {show_bytes(need.activations)} "
               f"at its peak (node {need.node!r}), more than the {show_bytes(budget)} available "
               f"({MEMORY_ENV} sets the limit)")
        # chunks keep room for the whole batch's outputs twice (theirs and the concatenation)
        reserve = 2 * need.outputs if self._coupling is None else 0
        fits = self._largest_batch(shapes, budget - reserve) if self._batch_axes_all(shapes) else 0
        if fits < 1:
            raise InputError(f"{why}, and even a batch of 1 does not fit" if self._batch_axes_all(
                shapes) else f"{why}; its batch is fixed")
        if self._coupling is not None:
            raise InputError(f"{why}, and it cannot run in chunks ({self._coupling}): the largest "
                             f"batch that fits is {fits}")
        return fits

    def _batch_axes_all(self, shapes) -> bool:
        """Whether every input has a dynamic first axis, all fed at the same size."""
        return all(v.shape and v.shape[0] is None for v in self._inputs) and \
            len({shape[0] for shape in shapes}) == 1

    def _largest_batch(self, shapes, room: int) -> int:
        """The largest batch (at most the fed one) whose run's peak fits in ``room`` bytes. The
        peak grows linearly with the batch (every activation is batch-sized): a line through the
        estimates at batches 1 and 2 gives it."""
        one, two = (self._estimate(tuple((b,) + shape[1:] for shape in shapes)) for b in (1, 2))
        per_sample = max(1, two.activations - one.activations)
        return int(min(shapes[0][0], (room - one.activations + per_sample) // per_sample))

    # -- plans: one, or in auto with a dynamic batch one per batch class --------------------------
    def _batch_class(self, checked: dict) -> int | None:
        """The batch class of checked feeds (None: this session has one plan for every batch)."""
        if not self._batch_axes:
            return None
        name, axis = next(iter(self._batch_axes.items()))
        return batch_class(checked[name].shape[axis])

    def _plan_for(self, batch: int | None):
        """The plan of a batch class, built (and kept) the first time it is asked for."""
        plan = self._plans.get(batch)
        if plan is not None:
            return plan
        with self._plans_lock:  # two threads meeting a new class plan it once
            plan = self._plans.get(batch)
            if plan is None:
                with timing_context(self.threads) if self.mode == "auto" else _NOTHING:
                    plan = build_plan(self.model, self.mode, serial=self.threads == 1,
                                      batch=1 if batch is None else batch)
                if plan.uses_numba and not plan.serial:
                    _restart_team()  # a forked child's parallel regions back on the team
                self._plans[batch] = plan
        return plan

    def _choice_for(self, plan):
        """The plan's RunChoice once it has run RUN_CHECK_AFTER times (False before, and asked
        again at its next run): for a parallel plan whose runs take under RUN_CHECK_MAX_S, a
        choice between it and its one-thread twin (planned now, as a ``threads=1`` session would
        plan it); False, kept, for every other plan, which then always runs as planned."""
        if self.threads == 1 or plan.serial or not plan.uses_numba:
            self._choices[id(plan)] = False
            return False
        runs = self._runs.get(id(plan), 0) + 1
        self._runs[id(plan)] = runs
        if runs <= RUN_CHECK_AFTER:
            return False
        if self._run_seconds.get(id(plan), 0.0) >= RUN_CHECK_MAX_S:
            self._choices[id(plan)] = False
            return False
        with self._plans_lock:
            if id(plan) in self._choices:
                return self._choices[id(plan)]
            batch = next((b for b, p in self._plans.items() if p is plan), None)
            with timing_context(1) if self.mode == "auto" else _NOTHING:
                twin = build_plan(self.model, self.mode, serial=True,
                                  batch=1 if batch is None else batch)
            same = [s.node.name for s in twin.steps] == [s.node.name for s in plan.steps]
            choice = RunChoice(plan, twin) if same else False
            self._choices[id(plan)] = choice
        return choice

    def _running(self, plan):
        """The thread count and launch lock a run of ``plan`` needs (none for serial kernels)."""
        parallel = plan.uses_numba and not plan.serial  # serial kernels never enter the pool
        # BLAS gets the threads when the plan's weighted layers all run on it (its Numba steps are
        # then serial), else one thread: the Numba kernels have them (Plan.blas_owns_threads)
        blas = (self.threads if plan.blas_owns_threads else 1) if plan.uses_blas else None
        # spinners keep the other CPUs awake (engine/awake.py) once a run of this plan has been
        # long enough for them to pay
        awake = _awake_threads(self.threads) if parallel and self._run_seconds.get(
            id(plan), -1.0) >= SPIN_MIN_RUN_S else 1
        return _running(self.threads if parallel else None, parallel, blas, awake)

    def _run_step(self, i: int, step, values: dict) -> None:
        """Run step ``i``, then free the activations whose last reader it was."""
        step.run(values)
        for name in self._frees[i]:
            values.pop(name, None)

    def explain(self, batch: int | None = None) -> list[dict]:
        """One row per node: op, weight density, the kernel chosen, and why.

        In auto with a dynamic batch the choice is made per batch class (1, 8, 64 or 512: the nearest
        in log scale, ``tuning.batch_class``), and each row also says its class under "batch":
        with ``batch`` given, the rows of that batch's class (planned now if need be), else those
        of every class planned so far. Other sessions have one plan, and no "batch" key. Once a
        plan's short runs have raced its one-thread twin (``RunChoice``), its rows say which one
        runs under "run": "parallel" or "one thread". With ``batch`` given, a batch that runs in
        cache-sized chunks (engine/chunks.py) shows the plan of its chunks' class, and the chunk
        under "chunk"."""
        chunk = None
        if batch is not None:
            if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
                raise ZeroskipError(f"batch must be a positive integer, not {batch!r}")
            if all(v.shape and v.shape[0] is None for v in self._inputs):
                chunk = self._cache_chunk(batch)
            classes = [batch_class(chunk or batch) if self._batch_axes else None]
            self._plan_for(classes[0])
        else:
            classes = sorted(self._plans, key=lambda c: -1 if c is None else c)
        rows = []
        for cls in classes:
            plan = self._plans[cls]
            choice = self._choices.get(id(plan))
            raced = choice.decided() if choice else None
            for row in plan.explain():
                if raced is not None:  # a short run's race (RunChoice) has kept this plan's runs
                    row = dict(row, run=raced)
                if chunk is not None:  # the batch runs in cache-sized chunks of this plan
                    row = dict(row, chunk=chunk)
                rows.append(row if cls is None else dict(row, batch=cls))
        return rows

    def _check_feeds(self, feeds) -> dict[str, np.ndarray]:
        if not isinstance(feeds, dict):
            raise InputError(f"run() takes a dict of input name -> array, not {type(feeds).__name__}")
        expected = {v.name: v for v in self._inputs}
        unknown = [name for name in feeds if name not in expected]
        if unknown:
            raise InputError(f"unknown input {unknown[0]!r}; the model's inputs are: "
                             f"{', '.join(repr(n) for n in expected)}")
        missing = [name for name in expected if name not in feeds]
        if missing:
            raise InputError(f"missing input {missing[0]!r} "
                             f"(expected shape {_show_shape(expected[missing[0]].shape)}, "
                             f"dtype {expected[missing[0]].dtype})")
        checked = {}
        for name, info in expected.items():
            checked[name] = _check_array(info, feeds[name], self._float)
        return checked

    # -- pickling (Dask and friends) ------------------------------------------------------------
    def __getstate__(self):
        from ..formats.zsk import dumps

        return {"model": dumps(self.model), "mode": self.mode, "threads": self.threads}

    def __setstate__(self, state):
        self.__init__(state["model"], mode=state["mode"], threads=state["threads"])

    def __repr__(self):
        ins = ", ".join(f"{v.name}{_show_shape(v.shape)}" for v in self._inputs)
        return f"Session(mode={self.mode!r}, inputs=[{ins}], nodes={len(self.model.graph.nodes)})"


def _plan_outputs(model: Model, plan):
    """The graph outputs with the dtypes the plan produces (f32 modes turn int8 outputs real)."""
    if plan.mode in ("dense-f32", "sparse-f32"):
        return [ValueInfo(v.name, v.shape, "float32" if v.dtype in ("uint8", "int8") else v.dtype)
                for v in model.graph.outputs]
    return model.graph.outputs


@contextmanager
def _threads(count: int | None):
    """Run with ``count`` Numba threads (None: leave Numba's setting alone)."""
    if count is None:
        yield
        return
    import numba

    from .. import kernels  # noqa: F401 - picks the threading layer before numba launches one

    before = numba.get_num_threads()
    count = min(count, numba.config.NUMBA_NUM_THREADS)
    if count == before:  # the usual case; setting it costs ~2 µs, twice a run
        yield
        return
    numba.set_num_threads(count)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _start_values(plan, checked: dict) -> dict:
    """The values a run of ``plan`` starts from: its constants, then the checked feeds."""
    values = dict(plan.constants)
    values.update(checked)
    return values


RUN_CHECK_MAX_S = 2e-3
"""A parallel plan whose runs take less than this is timed against its one-thread twin (the plan a
``threads=1`` session would run), run for run, and the faster one keeps running (``RunChoice``):
the default thread count is then never slower than one thread on small work, by construction. Each
kernel's Trial already picks its faster build, but a run of 0.1–0.2 ms also pays the thread count's
setting and restoring, and builds that win one by one can lose together: the digits MLP's pruned
int8 model in dense-i8 at the demo's batch of 450 took 0.185 ms at two threads against 0.162 at
one. Longer runs keep their plan: there the Trials' per-kernel choice is what counts."""

RUN_CHECK_AFTER = 2 * (TRIALS + 1)
"""Runs of a plan before its RunChoice times it: its kernels' Trials choose in as many calls."""

RUN_CHECK_RUNS = 5
"""Timed runs of each plan, alternated, before the faster (by its best run) is kept."""

PROFILE_SETTLE_RUNS = 3 * RUN_CHECK_AFTER + 2 * RUN_CHECK_RUNS + 4
"""Runs ``profile`` makes, at the most, for its feeds' runs to start replaying: the RunChoice
settled (RUN_CHECK_AFTER runs, then RUN_CHECK_RUNS of each plan), the chosen plan's Trials
settled (as many calls again), two runs recorded, and a few to spare."""


def _drop_states(states: dict, plan_id: int) -> None:
    """Forget a thread's recorded runs of the plan ``plan_id`` (one that lost its race)."""
    for key in [k for k in states if k[0] == plan_id]:
        state = states.pop(key)
        if isinstance(state, Replay):
            state.close()  # its Trials count the calls it made


class RunChoice:
    """A parallel plan against its one-thread twin: ``next`` alternates them for RUN_CHECK_RUNS
    runs each, ``record`` keeps each one's best run time, and then ``next`` returns the faster one
    for good (the parallel plan on a tie). Both give the same bytes, so the choice never changes an
    output. Concurrent runs may time a few runs more.

    The alternation goes plan, twin, twin, plan, plan, twin, …, so that each takes runs in both
    places of a pair: ``zeroskip bench`` runs in pairs, a run just after a pause (slow: caches
    and CPUs cold) and a timed one, and plan, twin, plan, twin gave one of the two every slow run.
    The digits MLP at two threads kept its parallel plan that way (best runs 68 against 152 µs)
    and then ran 41 µs against the twin's 28."""

    __slots__ = ("plans", "best", "runs", "chosen", "loser")

    def __init__(self, plan, twin):
        self.plans = (plan, twin)
        self.best = [float("inf"), float("inf")]
        self.runs, self.chosen = 0, None
        self.loser = None  # the id of the plan that lost, once chosen (Session._record_choice)

    def next(self):
        if self.chosen is not None:
            return self.chosen
        return self.plans[(self.runs + self.runs // 2) % 2]

    def record(self, plan, seconds: float) -> None:
        if self.chosen is not None:
            return
        k = 0 if plan is self.plans[0] else 1
        self.best[k] = min(self.best[k], seconds)
        self.runs += 1
        if self.runs >= 2 * RUN_CHECK_RUNS:
            self.chosen = self.plans[1] if self.best[1] < self.best[0] else self.plans[0]
            if self.chosen is self.plans[0]:
                self.plans = (self.plans[0], None)  # the twin's weights are not kept

    def decided(self) -> str | None:
        """"parallel" or "one thread" once chosen, else None."""
        if self.chosen is None:
            return None
        return "parallel" if self.chosen is self.plans[0] else "one thread"


_LAUNCH_LOCK = threading.Lock()


_NOTHING = nullcontext()


def timing_context(threads: int | None):
    """The context ``auto`` times a plan's layers in: Numba on ``threads`` (None: as it is) with
    the launch lock where parallel kernels need it, and BLAS on one thread, as it runs beside
    parallel Numba kernels. ``zeroskip sweep`` times in it too, so its timings are auto's."""
    return _running(threads, threads != 1, 1)


def _running(threads: int | None, parallel: bool, blas: int | None = None, awake: int = 1):
    """The context a run needs: Numba's thread count, the launch lock, BLAS's thread count, and
    the spinners that keep ``awake`` − 1 other CPUs awake (engine/awake.py). When none of them
    has anything to do (a one-thread plan, or default threads and no BLAS under a layer that
    takes concurrent launches, and no spinners), a shared empty context: the generator-based
    ones cost ~3 µs a run, a tenth of the digits MLP's run at batch 1."""
    if threads is None and blas is None and awake < 2 \
            and not (parallel and _serial_launches()):
        return _NOTHING
    return _all_of(threads, parallel, blas, awake)


def _awake_threads(threads: int | None) -> int:
    """The thread count a parallel run keeps awake: its own (Numba's when None; no more than
    Numba's pool, which has one thread per CPU unless NUMBA_NUM_THREADS says otherwise), or 1
    where spinning is off."""
    if not spinning_allowed():
        return 1
    import numba

    return numba.get_num_threads() if threads is None \
        else min(threads, numba.config.NUMBA_NUM_THREADS)


@contextmanager
def _all_of(threads: int | None, parallel: bool, blas: int | None, awake: int = 1):
    with _threads(threads), _launch_guard(parallel), blas_threads(blas), kept_awake(awake):
        yield


def _restart_team() -> None:
    from ..kernels import _team

    _team.restart()


def _serial_launches() -> bool:
    from ..kernels import serial_launches

    return serial_launches()


_BLAS: list | None = None


def _blas_libraries() -> list:
    """threadpoolctl's controllers of the BLAS libraries loaded (numpy's OpenBLAS, MKL...)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _BLAS


@contextmanager
def blas_threads(count: int | None):
    """Run with at most ``count`` BLAS threads (None: leave BLAS alone), so that a session's
    ``threads`` bounds numpy's sgemm in the float plans too. Each library's count is read and set
    directly (a few µs) and put back after the run. The setting is process-wide: two sessions
    with different counts running at once see each other's."""
    if count is None:
        yield
        return
    changed = []
    for library in _blas_libraries():
        before = library.num_threads
        if before != count:
            library.set_num_threads(count)
            changed.append((library, before))
    try:
        yield
    finally:
        for library, before in changed:
            library.set_num_threads(before)


@contextmanager
def _launch_guard(uses_numba: bool):
    """Hold the process-wide launch lock while a plan with Numba kernels runs, when the threading
    layer may not be entered by two threads at once (kernels.serial_launches): concurrent runs then
    take turns."""
    if not uses_numba:
        yield
        return
    from ..kernels import serial_launches

    if not serial_launches():
        yield
        return
    with _LAUNCH_LOCK:
        yield


def _show_shape(shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ("," if len(shape) == 1
                                                                          else "") + ")"


def _check_array(info: IOInfo, value, float_dtype=np.float64) -> np.ndarray:
    """Check one fed array against its declaration and return it as the reference ops take it."""
    try:
        array = np.asarray(value)
    except Exception as err:  # noqa: BLE001 - anything numpy cannot turn into an array
        raise InputError(f"input {info.name!r}: cannot be read as an array ({err})") from None

    def wrong(got: str):  # built only on error: formatting a dtype's name costs µs per run
        return InputError(f"input {info.name!r}: expected dtype {info.dtype} and shape "
                          f"{_show_shape(info.shape)}, got {got}")

    if info.dtype.kind == "f":
        if array.dtype.kind != "f":
            raise wrong(f"dtype {array.dtype}")
    elif array.dtype != info.dtype:
        raise wrong(f"dtype {array.dtype}")
    if array.ndim != len(info.shape):
        raise wrong(f"rank {array.ndim} shape {_show_shape(array.shape)}")
    for axis, (want_dim, got_dim) in enumerate(zip(info.shape, array.shape)):
        if want_dim is not None and want_dim != got_dim:
            raise wrong(f"shape {_show_shape(array.shape)} (dimension {axis} is {got_dim}, not "
                        f"{want_dim})")
    if array.size == 0 and any(want is None and got == 0
                               for want, got in zip(info.shape, array.shape)):
        # (a size of 0 that the model itself declares is its business: ONNX reduces empty sets)
        raise InputError(f"input {info.name!r}: shape {_show_shape(array.shape)} has no elements; "
                         f"a run needs at least one sample")
    if array.dtype.kind == "f":
        # Round to the declared precision first, so float64 feeds give float32 models' answers.
        # A feed of the declared type is used as it is (no step writes into its inputs): its copy
        # was 0.03–0.07 ms of a 2.2 ms MobileNetV2 run (150 528 values).
        return array.astype(info.dtype, copy=False).astype(float_dtype, copy=False)
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    return array


__all__ = ["IOInfo", "MODES", "Session"]
