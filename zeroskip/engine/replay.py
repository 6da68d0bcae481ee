"""Recorded runs: a short run replayed as its list of kernel calls, with no Python steps between.

At batch 1 a network's kernels are short, and the Python around them is not: each step looks up
its prepared call, checks its input, allocates its output and goes through the launch's Trial, and
all of it runs cold because the kernels evict the interpreter from the caches. On the int8
MobileNetV2-shaped model that was 0.30 ms of a 3.1 ms run on one thread and 0.37 of 2.3 on two
(``bench/python_cost.py``). Once a plan's choices are settled, a run at a given input shape makes
the same kernel calls, on the same builds, with the same arguments, every time, except for the
input and the freshly allocated activations. So the session records one run's calls and from then
on replays them: the activations of the recorded run become buffers that every replay writes
again, the input is put in place of the recorded one, and the outputs are copied out.

That is only right when the calls are the whole of the run. What makes sure of it:

* **Only steps that declare it** (``Step.replay``): "kernels" steps, whose run is kernel calls on
  arrays they read, allocate or view, with arguments only shapes decide (the int8 convs and GEMMs,
  QuantizeLinear, DequantizeLinear, the pools, QAdd); "view" steps, whose outputs are views of
  their inputs (Flatten and Reshape by a constant shape). A plan with any other step never replays.
* **Two runs recorded and compared.** Every kernel argument is either the same object in both runs
  (a weight, a scratch array, a prepared constant: *persistent*), or an array that this run made:
  the input, an activation some earlier step stored, or an output the step itself stores. An array
  made in Python on the way (a copy of a non-contiguous input, a conversion) is none of those: the
  step's replay would read last run's copy, and the plan does not replay at that shape. Arguments
  that are not arrays must be equal in both runs, arrays of the same shape, type and strides, and
  each step must make the same calls on the same builds. A "kernels" step's stored outputs must be
  arrays its own calls took; a "view" step's, views of its inputs.
* **Settled choices.** A run whose calls went through a Trial still timing its two builds is not
  recorded (``RECORDING.unsettled``); a replay stops before the next recheck of a Trial it calls
  and hands the calls it made on to it (``Trial.skip``), so that rechecks come when they would.
* **Per thread and per input signature**: the recorded scratch arrays are the recording thread's;
  inputs must be C-contiguous, and a new shape, type or layout records anew.

Outputs are bit-identical to the steps' own (the same kernels on the same bytes); the tests run
every replaying model on new inputs against a session that never replays.
"""

from __future__ import annotations

import inspect
import os
import time
from collections import Counter

import numpy as np

from .plan.launch import RECORDING
from .plan.steps import CACHE_LINE, aligned_empty

REPLAY_MAX_RUN_S = 0.02
"""A plan records its runs for replay only while they take less than this: the Python it saves is
~5 µs a step, which a longer run would not notice, and a replay keeps every activation
allocated."""

REPLAY_MAX_BYTES = 64 << 20
"""The most a replay may keep allocated in activations (a few MB for ResNet-18 or MobileNetV2 at
batch 1: every array their recorded calls take, weights and scratch included, is 14–17 MB)."""

ENV = "ZEROSKIP_REPLAY"
"""Set to 0 to run every step as planned (no recorded runs)."""


def enabled() -> bool:
    """Whether sessions made now record and replay their short runs (ENV is not "0")."""
    return os.environ.get(ENV, "1") != "0"


class Unsettled(Exception):
    """A recorded run went through a Trial that had not chosen its build yet: record again later."""


class Refused(Exception):
    """The plan cannot be replayed at this input signature; the message says why."""


def signature(checked: dict):
    """The key of a replay: per feed its name, shape, dtype, strides, writability and alignment
    (what Numba types an array by, so that a replay's compiled entry points, ``_direct``, take
    the new feed as they took the recorded one); None when a feed is not C-contiguous (a replay
    puts the new feed in place of the old by its buffer)."""
    if not all(a.flags.c_contiguous for a in checked.values()):
        return None
    return tuple((name, a.shape, a.dtype.str, a.strides, a.flags.writeable, a.flags.aligned)
                 for name, a in checked.items())


def _root(array: np.ndarray) -> np.ndarray:
    """The array that owns ``array``'s memory (views followed to their base)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _leaves(args, path=()):
    """(path, value) for every argument, tuples opened: a fused residual's arrays are in one."""
    for i, value in enumerate(args):
        if isinstance(value, tuple):
            yield from _leaves(value, path + (i,))
        else:
            yield path + (i,), value


class Recorder:
    """One run of a plan, step by step: each step's kernel calls (build, args), the inputs of its
    "view" steps and the values each step stored (under any name: a step with a fused
    activation or QAdd stores that node's output)."""

    def __init__(self, plan, checked: dict):
        self.plan = plan
        self.feeds = dict(checked)
        self.steps: list = []
        self.trials: list = []
        self.unsettled = False
        self.values: dict = {}

    def run(self, values: dict, frees: list) -> None:
        """Run the plan's steps on ``values`` (as Session does), recording them."""
        try:
            RECORDING.trials, RECORDING.unsettled = self.trials, False
            for i, step in enumerate(self.plan.steps):
                calls = RECORDING.calls = []
                ins = [values.get(n) for n in step.node.inputs] if step.replay == "view" else ()
                before = dict(values)
                step.run(values)
                # what it stored: a fused step stores its activation's or its QAdd's output
                stored = [v for k, v in values.items() if before.get(k) is not v]
                self.steps.append((calls, ins, stored))
                for name in frees[i]:
                    values.pop(name, None)
            self.values = values
        finally:
            self.unsettled = RECORDING.unsettled
            RECORDING.calls = RECORDING.trials = None
            RECORDING.unsettled = False


class Replay:
    """A recorded run's kernel calls, to run again on new feeds of the same signature."""

    def __init__(self, plan, calls: list, feeds: dict, outputs: dict, trials: Counter,
                 per_step: list | None = None):
        self.plan = plan              # kept alive: the replay states are keyed by its id
        self.calls = calls            # [(build, args)], the recorded run's, in order
        self.direct = [_direct(build, args) for build, args in calls]  # what run() calls
        # whether a call may open a parallel region (or is not a Numba kernel at all: BLAS):
        # else the run needs no thread count, launch lock or spinners (Session._replayed)
        self.parallel = not all(_serial_twin(build) for build, _ in calls)
        self.per_step = per_step      # calls each of plan.steps made, in order (for profiles)
        self.feeds = feeds            # call index -> [(arg index, feed name, offset, view)]
        self.outputs = outputs        # graph output name -> the recorded run's array
        self.trials = trials          # Trial -> its calls per run
        self.left = min((t.calls_before_check() // n for t, n in trials.items()),
                        default=float("inf"))
        self.runs = 0

    def due(self) -> bool:
        """Whether a Trial this replay calls is due to recheck: the replay then ends (``close``)."""
        return self.runs >= self.left

    def close(self) -> None:
        """Hand the calls the replays made on to their Trials (their rechecks then come)."""
        for trial, per_run in self.trials.items():
            trial.skip(per_run * self.runs)
        self.runs = 0

    def run(self, checked: dict, clock: list | None = None) -> dict:
        """Make the recorded calls on ``checked`` feeds; the recorded output arrays (which the
        next replay overwrites: the caller copies them). With ``clock`` (a list as long as the
        calls), each call's seconds are written into it (engine/profile.py)."""
        self.runs += 1
        calls = self.direct
        if self.feeds:
            calls = list(calls)
            for index, places in self.feeds.items():
                build, args = calls[index]
                args = list(args)
                for position, name, offset, like in places:
                    feed = checked[name]
                    args[position] = feed if offset < 0 else np.ndarray(
                        like.shape, like.dtype, buffer=feed, offset=offset, strides=like.strides)
                calls[index] = (build, tuple(args))
        if clock is None:
            for build, args in calls:
                build(*args)
        else:
            tick = time.perf_counter
            for i, (build, args) in enumerate(calls):
                start = tick()
                build(*args)
                clock[i] = tick() - start
        return self.outputs


def _serial_twin(build) -> bool:
    """Whether ``build`` is a Numba kernel compiled without parallel=True (kernels.serial_kernel's
    twins, and the helpers a step calls)."""
    options = getattr(build, "targetoptions", None)
    return options is not None and getattr(build, "py_func", None) is not None \
        and not options.get("parallel", False)


def _direct(build, args: tuple):
    """(the compiled entry point that a call of ``build`` on ``args`` reaches, the arguments it
    takes), or (build, args) where there is none to reach (a Python function, NUMBA_DISABLE_JIT).

    A call of a Numba dispatcher types each argument and looks the compiled version up by those
    types before it calls it: ~45 ns an argument, and the int8 MobileNetV2's 56 recorded calls
    pass 968 (44 µs a run, hot). A replay's arguments keep their types from run to run (the feeds
    by ``signature``, every other array is the recorded one), so the lookup is made once, here.
    Arguments left to their defaults are typed as Numba types them (``Omitted``), and passed:
    the entry point takes every parameter."""
    overloads = getattr(build, "overloads", None)
    py_func = getattr(build, "py_func", None)
    if not overloads or py_func is None:
        return build, args
    try:
        bound = inspect.signature(py_func).bind(*args)
        bound.apply_defaults()
        given = tuple(build.typeof_pyval(a) for a in args)
    except (TypeError, ValueError):
        return build, args
    full = bound.args
    if bound.kwargs or len(full) < len(args):
        return build, args
    from numba.core import types

    compiled = overloads.get(given + tuple(types.Omitted(d) for d in full[len(args):]))
    return (build, args) if compiled is None else (compiled.entry_point, tuple(full))


def replay_of(first: Recorder, second: Recorder, output_names) -> Replay:
    """The Replay of ``second``'s calls, checked against ``first`` (the module's docstring);
    Unsettled or Refused when it cannot be."""
    if first.unsettled or second.unsettled:
        raise Unsettled()
    feed_roots = {id(_root(a)): (name, a) for name, a in second.feeds.items()}
    if len(feed_roots) < len(second.feeds):
        raise Refused("two inputs are views of one array")
    produced: set = set()     # roots of the arrays earlier steps stored
    kept: dict = {}           # id -> root of every array the replay keeps written
    calls, feeds, per_step = [], {}, []
    for step, (calls_a, _, _), (calls_b, ins, outs) in zip(second.plan.steps, first.steps,
                                                           second.steps):
        per_step.append(len(calls_b))
        where = f"step {step.node.name!r} ({step.node.op})"
        if len(calls_a) != len(calls_b):
            raise Refused(f"{where}: another number of kernel calls from run to run")
        outs_roots = {id(_root(o)) for o in outs if isinstance(o, np.ndarray)}
        taken: set = set()
        for (build_a, args_a), (build_b, args_b) in zip(calls_a, calls_b):
            if build_a is not build_b:
                raise Refused(f"{where}: another kernel build from run to run")
            leaves_a, leaves_b = list(_leaves(args_a)), list(_leaves(args_b))
            if [p for p, _ in leaves_a] != [p for p, _ in leaves_b]:
                raise Refused(f"{where}: other arguments from run to run")
            for (path, a), (_, b) in zip(leaves_a, leaves_b):
                if not isinstance(b, np.ndarray):
                    if type(a) is not type(b) or not a == b:
                        raise Refused(f"{where}: an argument that changes from run to run")
                    continue
                if not isinstance(a, np.ndarray) or (a.shape, a.dtype, a.strides) != (
                        b.shape, b.dtype, b.strides):
                    raise Refused(f"{where}: an array argument that changes from run to run")
                root_a, root_b = _root(a), _root(b)
                key = id(root_b)
                if key in feed_roots:  # first: two runs may be fed views of one array
                    if len(path) != 1:
                        raise Refused(f"{where}: an input inside a tuple argument")
                    name, feed = feed_roots[key]
                    offset = b.__array_interface__["data"][0] - feed.__array_interface__["data"][0]
                    same = offset == 0 and b.shape == feed.shape and b.strides == feed.strides
                    feeds.setdefault(len(calls), []).append(
                        (path[0], name, -1 if same else offset, b))
                elif root_a is root_b:
                    continue  # persistent: a weight, a scratch array, a prepared constant
                elif key in produced or key in outs_roots:
                    taken.add(key)
                    kept[key] = root_b
                else:
                    raise Refused(f"{where}: a kernel reads an array made in Python during the "
                                  f"run (a copy of its input?)")
            calls.append((build_b, args_b))
        if step.replay == "view":
            in_roots = {id(_root(x)) for x in ins if isinstance(x, np.ndarray)}
            if calls_b or not outs_roots <= in_roots:
                raise Refused(f"{where}: its output is not a view of its input")
        elif not outs_roots <= taken:
            raise Refused(f"{where}: an output that none of its kernels wrote")
        produced |= outs_roots
    values = second.values
    outputs = {}
    for name in output_names:
        array = values.get(name)
        if not isinstance(array, np.ndarray) or id(_root(array)) in feed_roots:
            raise Refused(f"graph output {name!r} is not an array a kernel wrote")
        outputs[name] = array
    calls, outputs, arena_bytes = _share_buffers(calls, kept, outputs,
                                                 0 if second.plan.serial else COOL_BYTES)
    if arena_bytes > REPLAY_MAX_BYTES:
        raise Refused("its activations take more than REPLAY_MAX_BYTES")
    return Replay(second.plan, calls, feeds, outputs, Counter(second.trials), per_step)


COOL_BYTES = 2 << 20
"""In a replay that may run on several threads, a block an activation leaves is given to another
only once this many bytes of activations have begun since its last call (``_share_buffers``):
the block's lines have then left the other core's cache, so that writing them costs no
invalidation. Two threads, pruned MobileNetV2 in ``sparse-f32``, alternated runs: the 576 ×
14×14 depthwise conv took 0.15 ms where its output reused lines that both cores had just read
(the pointwise conv after it reads every channel), 0.075 where it wrote lines of its own; the
whole run 5.21 → 4.82 ms (median) with 2 MB (1 MB: 4.87; the arena 6.5 → 9.0 MB), the int8
``auto`` run unchanged (1.74 / 1.76). One thread has no other core to invalidate: it shares at
once (docs/kernels.md, "Shared buffers")."""


def _share_buffers(calls: list, kept: dict, outputs: dict, cool: int = 0):
    """The recorded calls and outputs moved onto one arena where activations whose lifetimes do
    not meet share bytes, as the steps' own allocations reuse the blocks just freed: (calls,
    outputs, the arena's size). ``kept`` maps id -> root of every activation the calls take.

    An activation lives from the first call that takes it to the last (to the end of the run for
    a graph output); two share bytes only when one's last call comes before the other's first, so
    a call never reads and writes one byte through two activations, and, with ``cool``, only when
    activations of at least ``cool`` bytes begin in between (COOL_BYTES). Nothing is read before
    the run writes it (the steps allocate with np.empty), so no content has to survive. Each root
    keeps its address modulo CACHE_LINE, so every view keeps the alignment it was recorded with.
    Kept apart, the float32 activations of MobileNetV2 at batch 1 (~25 MB) fell out of the caches
    that the steps' reused blocks stayed in (docs/kernels.md, "Recorded runs")."""
    first: dict = {}
    last: dict = {}
    for i, (_, args) in enumerate(calls):
        for _, value in _leaves(args):
            if isinstance(value, np.ndarray) and id(_root(value)) in kept:
                key = id(_root(value))
                first.setdefault(key, i)
                last[key] = i
    for array in outputs.values():
        if id(_root(array)) in kept:
            last[id(_root(array))] = len(calls)
    begun = np.zeros(len(calls) + 1, np.int64)  # bytes of the activations that begin at each call
    for key, i in first.items():
        begun[i] += kept[key].nbytes
    begun = np.cumsum(begun)  # ... at or before each call (a graph output's end: the last entry)
    place, live, top = {}, [], 0  # id -> (offset, residue); live slots (offset, size, last)
    for key in sorted(first, key=first.get):
        root = kept[key]
        residue = root.__array_interface__["data"][0] % CACHE_LINE
        size = -(-root.nbytes // CACHE_LINE) * CACHE_LINE + CACHE_LINE  # whatever the residue
        begins = first[key]
        live = [slot for slot in live  # still live, or left too recently (cool)
                if slot[2] >= begins or begun[begins] - begun[slot[2]] < cool]
        offset = 0
        for start, length, _ in sorted(live):  # the lowest gap that holds it
            if start - offset >= size:
                break
            offset = max(offset, start + length)
        place[key] = (offset, residue)
        live.append((offset, size, last[key]))
        top = max(top, offset + size)
    arena = aligned_empty((max(top, 1),), np.uint8)

    def moved(value):
        if isinstance(value, tuple):
            return tuple(moved(v) for v in value)
        if not isinstance(value, np.ndarray) or id(_root(value)) not in place:
            return value
        root = _root(value)
        offset, residue = place[id(root)]
        byte = value.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        return np.ndarray(value.shape, value.dtype, buffer=arena, offset=offset + residue + byte,
                          strides=value.strides)

    calls = [(build, moved(args)) for build, args in calls]
    return calls, {name: moved(array) for name, array in outputs.items()}, top
