"""A team of worker threads that runs Numba's parallel regions, in place of the threading layer.

Every ``prange`` loop of a parallel kernel becomes one call of the threading layer's
``parallel_for(fn, args, dims, steps, data, inner_ndim, array_count, num_threads)``: ``dims[0]``
chunks of the loop (one per thread: Numba's static schedule), each run as ``fn`` with every
argument pointer moved on by ``steps[j] × chunk``. Under TBB each call builds a new task arena,
and its worker joins ~10–12 µs after the launch even when the previous region ended a microsecond
before (docs/kernels.md, "What a region costs now"): on the 14×14 and 7×7 layers, half a region's
work. A team worker instead spins for ``SPIN_S`` after its last job (on ``pause``, then on
``sched_yield``: PAUSE_S), watching one word, and starts a chunk ~0.2 µs after the launch; idle
longer, it sleeps on a futex, and the next launch wakes it.

The protocol, on one array of int64 words (``_state``, which the compiled code reaches as the
process symbol ``zeroskip_team_state``, so that the kernels cache on disk):

* A launch takes the team (``BUSY`` 0 → 1 by compare-and-swap). If another thread has it (a
  second Python thread, a region inside a region), or no worker is alive, or the region does not
  fit, the threading layer runs the region, as it did before.
* It writes the job's fields, then publishes ``CLAIM = generation << 32`` (no chunk claimed).
* Every participant (the launching thread, and the workers below ``num_threads − 1``) claims a
  chunk by compare-and-swap of ``CLAIM``, setting the chunk's bit, runs it, and adds one to
  ``DONE``: first its own chunk (the launcher chunk 0, worker w chunk w + 1), so that while all
  are there each thread takes the same share of every region (measured within noise against
  first come, first served), then any chunk still free. A late worker finds nothing left; a
  worker that is not scheduled at all (another process has its CPU) costs nothing, since the
  launcher runs every chunk itself: no static share waits for a thread that is not there
  (OpenMP's spinning team, which does, ran 2× slower than one thread when another process took a
  CPU). The generation in the claim word means that a worker that saw an old job can never claim
  a chunk of a new one.
* The launcher returns when ``DONE`` reaches the chunk count, and frees the team.
* A launch that wakes sleeping workers writes its CPU (``LAUNCHER_CPU``) first; a worker that
  wakes on that CPU (Linux may wake a thread on its waker's) moves itself off it (``_move_off``:
  its CPUs without that one, then all of them again) before it claims a chunk, instead of taking
  turns with the launcher on one CPU. Runs after a 150 ms pause, pruned int8 MobileNetV2 at two
  threads, `auto`: median 2.12–2.57 ms and p90 2.75–3.69 with the move, 2.40–3.34 and 3.71–4.17
  without (processes alternated, the CPUs close); the worker moved in 2–23 of 40 wakes.

Each chunk is the same call of ``fn`` that the threading layer would make, so the results are
the same bytes whichever thread runs which chunk. Linux on x86-64 only (``pause``, the futex
system call's number); elsewhere, under NUMBA_DISABLE_JIT, with NUMBA_NUM_THREADS=1, or with
ZEROSKIP_TEAM=0, the threading layer runs every region.
"""

from __future__ import annotations

import atexit
import os
import platform
import sys
import threading
import time

import numpy as np
from llvmlite import ir
from numba import cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

TEAM_ENV = "ZEROSKIP_TEAM"
"""Set to 0 to leave every parallel region to Numba's threading layer."""

SPIN_S = 1e-3
"""How long a worker spins after its last chunk before it sleeps. Between two parallel regions of
a batch-1 run there are 1–60 µs of serial steps and Python, and between two runs the run's serial
tail (global pool, classifier) and the caller's Python, 0.1–0.2 ms; a sleeping worker takes 5–50
µs to wake (a futex wake, and on a VM the CPU's own wake-up: engine/awake.py). With 100 µs the
first regions of each run found the worker asleep: pruned ResNet-18 at two threads, back to back,
2.69 ms against 2.59 with 1 ms."""

PAUSE_S = 100e-6
"""Of SPIN_S, how long a worker spins on ``pause`` alone; after that it calls sched_yield each time
round, so that another thread that wants its CPU gets it at once, instead of taking it later for a
whole time slice, perhaps in the middle of a chunk the launcher then waits for. OpenBLAS's workers
spin for ~0.1 s after a multi-threaded call: in ``zeroskip demo`` the float CNN in dense-f32, right
after the reference row (BLAS on two threads), took 5.6–6.8 ms a batch with a worker that only
paused, 5.0–5.1 with this (TBB 4.8–5.1, one thread 5.5; 2.8 with OpenBLAS on one thread). Pruned
ResNet-18 at two threads, back to back: the same with a PAUSE_S of 1 ms (2.57–2.65 ms against
2.59–2.62)."""

# The words of the state, each written by several threads on a cache line of its own.
CLAIM = 0          # generation << 32 | a bit per chunk claimed
DONE = 8           # chunks finished in this generation
BUSY = 16          # 1 while a launch holds the team
SLEEPERS = 24      # workers waiting on FUTEX
FUTEX = 32         # bumped to wake them (the futex is its low 32 bits)
FN, ARGS, DIMS, STEPS, DATA, NDIM, NARRAYS, TOTAL, NTHREADS = range(40, 49)  # the job
WORKERS = 56       # workers alive
STOP = 57          # 1: the workers return
SPIN_TICKS = 58    # SPIN_S in cycle-counter ticks
PAUSE_TICKS = 59   # PAUSE_S in cycle-counter ticks
LAUNCHER_CPU = 60  # the CPU of the launch that last woke sleeping workers
STATS = 64         # counters, below; one line per writer
LAUNCHES, FALLBACKS, MAIN_TICKS, WAIT_TICKS = 64, 65, 66, 67   # written by launchers
WORKER_CHUNKS, JOIN_TICKS, WORKER_TICKS = 72, 73, 74          # written by workers
PUBLISHED = 75     # the cycle counter when the job was published
MOVES = 76         # workers that woke on their launcher's CPU and moved off it
WORDS = 80

MAX_ARRAYS = 512   # larger regions go to the threading layer (the chunk's arguments are on the
MAX_DIMS = 512     # stack: 8 KB in all)

_STATE_SYMBOL = "zeroskip_team_state"
_LAYER_SYMBOL = "zeroskip_layer_parallel_for"

_i64 = ir.IntType(64)
_i32 = ir.IntType(32)
_i8p = ir.IntType(8).as_pointer()
_LOW = 0xFFFFFFFF


def _word(builder, index):
    """A pointer to the state's word ``index`` (an i64 value)."""
    module = builder.module
    state = module.globals.get(_STATE_SYMBOL)
    if state is None:
        state = ir.GlobalVariable(module, ir.ArrayType(_i64, WORDS), _STATE_SYMBOL)
        state.linkage = "external"
    return builder.gep(state, [_i64(0), index])


@intrinsic
def _load(typingctx, index):
    """The state's word ``index``, an acquire load."""
    def codegen(context, builder, signature, args):
        return builder.load_atomic(_word(builder, args[0]), "acquire", 8)
    return types.int64(types.int64), codegen


@intrinsic
def _store(typingctx, index, value):
    """Word ``index`` = value, a release store."""
    def codegen(context, builder, signature, args):
        builder.store_atomic(args[1], _word(builder, args[0]), "release", 8)
        return context.get_dummy_value()
    return types.void(types.int64, types.int64), codegen


@intrinsic
def _cas(typingctx, index, expected, new):
    """Compare-and-swap word ``index`` from expected to new; the value found."""
    def codegen(context, builder, signature, args):
        pair = builder.cmpxchg(_word(builder, args[0]), args[1], args[2], "acq_rel", "acquire")
        return builder.extract_value(pair, 0)
    return types.int64(types.int64, types.int64, types.int64), codegen


@intrinsic
def _add(typingctx, index, value):
    """Word ``index`` += value, atomically; the value before."""
    def codegen(context, builder, signature, args):
        return builder.atomic_rmw("add", _word(builder, args[0]), args[1], "acq_rel")
    return types.int64(types.int64, types.int64), codegen


@intrinsic
def _fence(typingctx):
    """A sequentially consistent fence: a sleeper's count against the launcher's claim word."""
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.void(), codegen


def _call(builder, name, result, *values, var_arg=False):
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(result, [v.type for v in values][:1 if var_arg else None],
                                        var_arg=var_arg), name)
    return builder.call(function, list(values))


@intrinsic
def _pause(typingctx):
    """x86's spin-wait hint."""
    def codegen(context, builder, signature, args):
        _call(builder, "llvm.x86.sse2.pause", ir.VoidType())
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def _ticks(typingctx):
    """The CPU's cycle counter (rdtsc: constant rate on every CPU with AVX2)."""
    def codegen(context, builder, signature, args):
        return _call(builder, "llvm.readcyclecounter", _i64)
    return types.int64(), codegen


@intrinsic
def _yield_cpu(typingctx):
    """sched_yield()."""
    def codegen(context, builder, signature, args):
        _call(builder, "sched_yield", _i32)
        return context.get_dummy_value()
    return types.void(), codegen


_SYS_FUTEX = 202           # x86-64's number
_FUTEX_WAIT_PRIVATE = 128
_FUTEX_WAKE_PRIVATE = 129


def _futex(builder, operation, value):
    address = builder.ptrtoint(_word(builder, _i64(FUTEX)), _i64)
    _call(builder, "syscall", _i64, _i64(_SYS_FUTEX), address, _i64(operation), value, _i64(0),
          _i64(0), _i64(0), var_arg=True)


@intrinsic
def _futex_wait(typingctx, expected):
    """Sleep while the low 32 bits of word FUTEX equal expected's (or until a signal)."""
    def codegen(context, builder, signature, args):
        _futex(builder, _FUTEX_WAIT_PRIVATE, builder.and_(args[0], _i64(_LOW)))
        return context.get_dummy_value()
    return types.void(types.int64), codegen


@intrinsic
def _futex_wake(typingctx):
    """Wake every thread sleeping on word FUTEX."""
    def codegen(context, builder, signature, args):
        _futex(builder, _FUTEX_WAKE_PRIVATE, _i64(0x7FFFFFFF))
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def _getcpu(typingctx):
    """sched_getcpu(): the CPU the calling thread runs on (−1 where it cannot tell)."""
    def codegen(context, builder, signature, args):
        return builder.sext(_call(builder, "sched_getcpu", _i32), _i64)
    return types.int64(), codegen


_SYS_SCHED_SETAFFINITY = 203   # x86-64's numbers
_SYS_SCHED_GETAFFINITY = 204


@intrinsic
def _affinity(typingctx, number, mask):
    """syscall(number, 0, the mask's bytes, mask): sched_[gs]etaffinity of the calling thread."""
    if not (isinstance(mask, types.Array) and mask.dtype == types.uint64):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[1])(context, builder, args[1])
        size = builder.mul(builder.extract_value(array.shape, 0), _i64(8))
        return _call(builder, "syscall", _i64, args[0], _i64(0), size,
                     builder.ptrtoint(array.data, _i64), var_arg=True)
    return types.int64(types.int64, mask), codegen


@njit(cache=True, nogil=True)
def _move_off(cpu):
    """Move the calling thread off ``cpu`` (its CPUs without that one, then all of them again: it
    stays where the first call put it); False where it cannot (one CPU, no mask)."""
    mask = np.zeros(16, np.uint64)  # 1024 CPUs
    if cpu < 0 or cpu >= 1024 or _affinity(_SYS_SCHED_GETAFFINITY, mask) <= 0:
        return False
    saved = mask.copy()
    mask[cpu // 64] &= ~(np.uint64(1) << np.uint64(cpu % 64))
    if not mask.any():
        return False
    _affinity(_SYS_SCHED_SETAFFINITY, mask)
    _affinity(_SYS_SCHED_SETAFFINITY, saved)
    return True


@intrinsic
def _peek(typingctx, address):
    """The int64 at a raw address (dims[0])."""
    def codegen(context, builder, signature, args):
        return builder.load(builder.inttoptr(args[0], _i64.as_pointer()))
    return types.int64(types.int64), codegen


@intrinsic
def _run_chunk(typingctx, fn, arrays, dims, steps, data, ndim, narrays, chunk):
    """fn(each arrays[j] moved on by steps[j]·chunk, dims with dims[0] = 1, steps, data): one chunk
    of a region, as the threading layers run a range of them (all raw addresses and counts)."""
    def codegen(context, builder, signature, args):
        fn_, arrays_, dims_, steps_, data_, ndim_, narrays_, chunk_ = args
        moved = cgutils.alloca_once(builder, _i8p, size=MAX_ARRAYS)
        counts = cgutils.alloca_once(builder, _i64, size=MAX_DIMS)
        arrays_p = builder.inttoptr(arrays_, _i8p.as_pointer())
        steps_p = builder.inttoptr(steps_, _i64.as_pointer())
        dims_p = builder.inttoptr(dims_, _i64.as_pointer())
        with cgutils.for_range(builder, narrays_) as loop:
            j = loop.index
            offset = builder.mul(builder.load(builder.gep(steps_p, [j])), chunk_)
            base = builder.load(builder.gep(arrays_p, [j]))
            builder.store(builder.gep(base, [offset]), builder.gep(moved, [j]))
        with cgutils.for_range(builder, builder.add(ndim_, _i64(1))) as loop:
            j = loop.index
            builder.store(builder.load(builder.gep(dims_p, [j])), builder.gep(counts, [j]))
        builder.store(_i64(1), counts)
        fnty = ir.FunctionType(ir.VoidType(), [_i8p.as_pointer(), _i64.as_pointer(),
                                               _i64.as_pointer(), _i8p])
        builder.call(builder.inttoptr(fn_, fnty.as_pointer()),
                     [moved, counts, steps_p, builder.inttoptr(data_, _i8p)])
        return context.get_dummy_value()
    return types.void(*([types.int64] * 8)), codegen


@intrinsic
def _layer_parallel_for(typingctx, fn, arrays, dims, steps, data, ndim, narrays, threads):
    """The threading layer's own parallel_for (the process symbol zeroskip_layer_parallel_for)."""
    def codegen(context, builder, signature, args):
        _call(builder, _LAYER_SYMBOL, ir.VoidType(), *args)
        return context.get_dummy_value()
    return types.void(*([types.int64] * 8)), codegen


MAX_CHUNKS = 32
"""Chunks a region may have on the team: one bit each in the claim word (Numba's schedule makes
one per thread)."""


@njit(inline="always")
def _claim_and_run(generation, preferred):
    """Claim and run chunks of job ``generation`` until none is left, chunk ``preferred`` first if
    it is still free, then the lowest free one; how many this thread ran."""
    ran = 0
    while True:
        word = _load(CLAIM)
        if (word >> 32) & _LOW != generation:
            return ran
        total = _load(TOTAL)
        claimed = word & _LOW
        chunk = preferred
        if chunk >= total or (claimed >> chunk) & 1:
            chunk = 0
            while chunk < total and (claimed >> chunk) & 1:
                chunk += 1
            if chunk == total:
                return ran
        if _cas(CLAIM, word, word | (1 << chunk)) == word:
            # the job cannot end before DONE counts this chunk: its fields stay as they are
            _run_chunk(_load(FN), _load(ARGS), _load(DIMS), _load(STEPS), _load(DATA),
                       _load(NDIM), _load(NARRAYS), chunk)
            _add(DONE, 1)
            ran += 1


@njit(cache=True, nogil=True)
def worker_loop(index):
    """Worker ``index``: runs chunks of each job with num_threads > index + 1, spins SPIN_S after
    the last one, then sleeps until a launch wakes it; returns once STOP is set."""
    _add(WORKERS, 1)
    seen = (_load(CLAIM) >> 32) & _LOW
    idle_since = _ticks()
    while _load(STOP) == 0:
        generation = (_load(CLAIM) >> 32) & _LOW
        if generation != seen:
            seen = generation
            if index < _load(NTHREADS) - 1:  # a job for fewer threads leaves this worker idle
                start = _ticks()
                ran = _claim_and_run(generation, index + 1)
                if ran > 0:
                    end = _ticks()
                    _add(WORKER_CHUNKS, ran)
                    _add(JOIN_TICKS, start - _load(PUBLISHED))
                    _add(WORKER_TICKS, end - start)
                idle_since = _ticks()
        elif _ticks() - idle_since > _load(SPIN_TICKS):
            expected = _load(FUTEX)
            _add(SLEEPERS, 1)
            _fence()
            if (_load(CLAIM) >> 32) & _LOW == seen and _load(STOP) == 0:
                _futex_wait(expected)
                # woken where the launcher runs (Linux may wake a thread on its waker's CPU),
                # it would take turns with it: it moves to another CPU first
                if _getcpu() == _load(LAUNCHER_CPU) and _move_off(_load(LAUNCHER_CPU)):
                    _add(MOVES, 1)
            _add(SLEEPERS, -1)
            idle_since = _ticks()
        elif _ticks() - idle_since > _load(PAUSE_TICKS):
            _yield_cpu()
        else:
            _pause()
    _add(WORKERS, -1)
    return 0


@njit(cache=True, nogil=True)
def _launch(fn, arrays, dims, steps, data, ndim, narrays, threads):
    """parallel_for on the team (the module's docstring has the protocol)."""
    total = _peek(dims)
    if (threads < 2 or _load(WORKERS) == 0 or narrays > MAX_ARRAYS or ndim >= MAX_DIMS
            or total > MAX_CHUNKS or _cas(BUSY, 0, 1) != 0):
        _add(FALLBACKS, 1)
        _layer_parallel_for(fn, arrays, dims, steps, data, ndim, narrays, threads)
        return
    _store(FN, fn)
    _store(ARGS, arrays)
    _store(DIMS, dims)
    _store(STEPS, steps)
    _store(DATA, data)
    _store(NDIM, ndim)
    _store(NARRAYS, narrays)
    _store(TOTAL, total)
    _store(NTHREADS, threads)
    _store(DONE, 0)
    generation = (((_load(CLAIM) >> 32) & _LOW) + 1) & _LOW
    start = _ticks()
    _store(PUBLISHED, start)
    _store(CLAIM, generation << 32)
    _fence()
    if _load(SLEEPERS) > 0:
        _store(LAUNCHER_CPU, _getcpu())
        _add(FUTEX, 1)
        _futex_wake()
    _claim_and_run(generation, 0)
    own = _ticks()
    waited = 0
    while _load(DONE) < total:  # a chunk a worker claimed and still runs
        _pause()
        waited += 1
        if waited > 2000:
            _yield_cpu()
    _add(LAUNCHES, 1)
    _add(MAIN_TICKS, own - start)
    _add(WAIT_TICKS, _ticks() - own)
    _store(BUSY, 0)


def _parallel_for(fn, arrays, dims, steps, data, ndim, narrays, threads):
    _launch(fn, arrays, dims, steps, data, ndim, narrays, threads)


@njit(cache=True)
def _read_ticks():
    return _ticks()


# ---------------------------------------------------------------------------------------------
# Python side

_state = None          # the words, 64-byte aligned (None: no team in this process)
_threads: list = []
_pid = None
_tick_rate = 0.0       # cycle-counter ticks per second
_install_entry: list = []  # the compiled launcher, kept alive


def supported() -> bool:
    """Whether this process can have a team: Linux on x86-64, the JIT on, two threads or more,
    and ZEROSKIP_TEAM not 0."""
    import numba

    return (sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")
            and not numba.config.DISABLE_JIT and numba.config.NUMBA_NUM_THREADS > 1
            and os.environ.get(TEAM_ENV, "1") != "0")


def install() -> bool:
    """Route Numba's parallel regions through the team, and start its workers (NUMBA_NUM_THREADS
    − 1 of them); whether it did. Before any parallel kernel is compiled or loaded from the cache:
    each resolves ``numba_parallel_for`` when it is linked. Starts Numba's threading layer, which
    runs what the team does not."""
    global _state, _tick_rate
    if _state is not None:
        return True
    if not supported():
        return False
    import importlib

    import llvmlite.binding as ll
    import numba
    from numba.np.ufunc import parallel

    parallel._launch_threads()
    layer = numba.threading_layer()
    module = importlib.import_module(
        "numba.np.ufunc." + {"tbb": "tbbpool", "omp": "omppool"}.get(layer, layer))
    raw = np.zeros(WORDS + 8, np.int64)
    first = (-raw.ctypes.data % 64) // 8
    state = raw[first:first + WORDS]
    ll.add_symbol(_LAYER_SYMBOL, module.parallel_for)
    ll.add_symbol(_STATE_SYMBOL, state.ctypes.data)
    rate = _measure_tick_rate()
    state[SPIN_TICKS] = int(rate * SPIN_S)
    state[PAUSE_TICKS] = int(rate * PAUSE_S)
    state[LAUNCHER_CPU] = -1
    entry = cfunc(types.void(*([types.int64] * 8)), cache=True)(_parallel_for)
    worker_loop.compile((types.int64,))  # here, not in the first worker (the import lock)
    _start_workers(numba.config.NUMBA_NUM_THREADS - 1, state)
    ll.add_symbol("numba_parallel_for", entry.address)
    _state, _tick_rate = state, rate  # installed: nothing above failed
    _install_entry.append(entry)  # keep its code alive
    atexit.register(_stop)
    os.register_at_fork(after_in_child=_forget_workers)
    return True


def _measure_tick_rate() -> float:
    _read_ticks()
    t0, c0 = time.perf_counter(), _read_ticks()
    time.sleep(0.005)
    t1, c1 = time.perf_counter(), _read_ticks()
    return (c1 - c0) / (t1 - t0)


def _start_workers(count: int, state) -> None:
    """Start ``count`` workers and wait (up to a second) until each has entered its loop, so that
    the first regions after this find them."""
    global _pid
    _pid = os.getpid()
    alive = int(state[WORKERS])
    for index in range(count):
        thread = threading.Thread(target=worker_loop, args=(index,), daemon=True,
                                  name=f"zeroskip-team-{index}")
        thread.start()
        _threads.append(thread)
    until = time.monotonic() + 1.0
    while state[WORKERS] < alive + count and time.monotonic() < until:
        time.sleep(1e-4)


def _forget_workers() -> None:
    """In a forked child: the workers did not come along; the threading layer runs every region
    (it has its own fork handling) until ``restart`` starts new workers."""
    if _state is not None:
        _threads.clear()
        for word in (WORKERS, SLEEPERS, BUSY, DONE):
            _state[word] = 0


def restart() -> None:
    """Start this process's workers if it has none (a forked child, after ``stop``)."""
    import numba

    if _state is not None and not any(t.is_alive() for t in _threads):
        _threads.clear()
        _state[STOP] = 0
        _start_workers(numba.config.NUMBA_NUM_THREADS - 1, _state)


def _stop(timeout: float = 1.0) -> None:
    """Make the workers return (at exit: none may run compiled code while the process ends)."""
    if _state is None or _pid != os.getpid():
        return
    _state[STOP] = 1
    _wake_sleepers()
    for thread in _threads:
        thread.join(timeout)
    _threads.clear()


@njit(cache=True)
def _wake_sleepers():
    _add(FUTEX, 1)
    _futex_wake()


def stop() -> None:
    """Stop the workers (tests; ``restart`` starts them again)."""
    _stop()


def active() -> bool:
    """Whether parallel regions go through the team now: installed, with a worker alive."""
    return _state is not None and _state[WORKERS] > 0


def stats() -> dict:
    """Counters since the process started: ``launches`` (regions the team ran), ``fallbacks``
    (regions left to the threading layer), ``worker_chunks`` (chunks the workers ran), and the
    seconds the launchers spent on their own chunks (``main_s``) and waiting for the workers'
    (``wait_s``), the workers spent on chunks (``worker_s``), and their summed delays between a
    job's launch and their start on it (``join_s``); ``moves``: wakes on a launcher's CPU that a
    worker moved off."""
    if _state is None:
        return {}
    rate = _tick_rate or 1.0
    s = _state
    return {"launches": int(s[LAUNCHES]), "fallbacks": int(s[FALLBACKS]),
            "worker_chunks": int(s[WORKER_CHUNKS]), "main_s": float(s[MAIN_TICKS] / rate),
            "wait_s": float(s[WAIT_TICKS] / rate), "worker_s": float(s[WORKER_TICKS] / rate),
            "join_s": float(s[JOIN_TICKS] / rate), "workers": int(s[WORKERS]),
            "moves": int(s[MOVES])}


__all__ = ["SPIN_S", "TEAM_ENV", "active", "install", "restart", "stats", "stop", "supported"]
