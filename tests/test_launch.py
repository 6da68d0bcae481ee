"""Small work runs serially: every kernel has a work measure, and a Launch picks the build by it,
and above its threshold by timing both builds."""

import numpy as np
import pytest

from zeroskip.engine.plan.launch import (MIN_PARALLEL_CSR_RQ_WORK, MIN_PARALLEL_ELEMENTS,
                                         MIN_PARALLEL_MACS, WORK, Launch)
from zeroskip.kernels import KERNELS


def test_every_kernel_has_a_work_measure_and_threshold():
    assert set(WORK) == set(KERNELS)
    assert all(threshold > 0 for _, threshold in WORK.values())


def _recorder(calls, tag):
    def kernel(*args):
        calls.append(tag)
    return kernel


def test_launch_takes_the_parallel_build_only_from_the_threshold():
    calls = []
    launch = Launch(_recorder(calls, "parallel"), _recorder(calls, "serial"), "requantize_dense_i8")
    small = np.zeros((64, 16), np.int32)
    big = np.zeros((2, MIN_PARALLEL_ELEMENTS // 2), np.int32)
    launch(small, None, None, 0, 0, 255, None)
    launch(big, None, None, 0, 0, 255, None)
    assert calls == ["serial", "parallel"]


def _timed_recorder(calls, tag, seconds):
    import time

    def kernel(*args):
        calls.append(tag)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    return kernel


def test_launch_keeps_the_build_measured_faster_per_work_size():
    """Above the threshold, the first calls of a work size alternate the builds (parallel first,
    one untimed call of each, then TRIALS timed calls of each); every later call takes the faster,
    and a slower parallel build is not kept."""
    from zeroskip.engine.plan.launch import TRIALS

    big = np.zeros((2, MIN_PARALLEL_ELEMENTS // 2), np.int32)
    bigger = np.zeros((4, MIN_PARALLEL_ELEMENTS // 2), np.int32)
    for slow, fast in (("parallel", "serial"), ("serial", "parallel")):
        calls = []
        builds = {slow: _timed_recorder(calls, slow, 0.002), fast: _timed_recorder(calls, fast, 0)}
        launch = Launch(builds["parallel"], builds["serial"], "requantize_dense_i8")
        trials = 2 * (TRIALS + 1)
        for _ in range(trials + 3):
            launch(big, None, None, 0, 0, 255, None)
        # each build in both places of a pair of calls: parallel, serial, serial, parallel, ...
        assert calls[:trials] == (["parallel", "serial", "serial", "parallel"] * TRIALS)[:trials]
        assert calls[trials:] == [fast] * 3, (slow, calls)
        trial = launch.pick(big, None, None, 0, 0, 255, None)
        assert trial.decided() == fast
        calls.clear()  # another work size is measured on its own
        launch(bigger, None, None, 0, 0, 255, None)
        assert calls == ["parallel"]


def test_a_trial_is_not_decided_by_calls_that_come_slow_every_other_time():
    """A layer called once a run, in runs that come in pairs (a slow run after a pause, then a
    timed one): whichever place its first call takes, the faster build is kept."""
    import time

    from zeroskip.engine.plan.launch import TRIALS, Trial

    for phase in (0, 1):
        count = [phase]

        def build(seconds):
            def kernel():
                slow = 0.004 if count[0] % 2 == 0 else 0.0  # every other call comes cold
                count[0] += 1
                end = time.perf_counter() + seconds + slow
                while time.perf_counter() < end:
                    pass
            return kernel

        trial = Trial(build(0.001), build(0.002))
        for _ in range(2 * (TRIALS + 1)):
            trial()
        assert trial.decided() == "parallel", (phase, trial.best)


def test_a_trial_times_both_builds_again_at_its_rechecks():
    """A choice made while the machine was busy is corrected: at each of RECHECKS the builds are
    timed again (TRIALS calls of each), and the choice follows the best times over every window."""
    from zeroskip.engine.plan.launch import RECHECKS, TRIALS, Trial

    calls, delay = [], {"parallel": 0.003, "serial": 0.0015}  # busy at first: parallel is slower

    def build(tag):
        return lambda: (calls.append(tag), _timed_recorder([], tag, delay[tag])())

    trial = Trial(build("parallel"), build("serial"))
    for _ in range(2 * (TRIALS + 1)):
        trial()
    assert trial.decided() == "serial"
    assert trial.checks == RECHECKS  # (twice its calls, 16, comes before the first of them)
    delay["parallel"] = 0.0  # the machine is free again
    while trial.calls < trial.checks[0]:
        trial()
    assert set(calls[2 * (TRIALS + 1):]) == {"serial"}
    calls.clear()
    for _ in range(2 * TRIALS):
        trial()
    order = ["parallel", "serial", "serial", "parallel"] if trial.phase == 0 else \
        ["serial", "parallel", "parallel", "serial"]  # every other Trial: serial first
    assert calls == (order * TRIALS)[:2 * TRIALS]
    assert trial.decided() == "parallel"
    calls.clear()
    trial()
    assert calls == ["parallel"]


def test_recheck_windows_of_layers_called_in_the_same_runs_never_all_run_serial():
    """Trials that count the same calls (a model's layers, one call each a run) open their recheck
    windows in the same runs: in none of those runs do all of them take their serial build."""
    from zeroskip.engine.plan.launch import RECHECKS, TRIALS, Trial

    calls = []

    def build(tag):
        return lambda: calls.append(tag)

    trials = [Trial(build("parallel"), build("serial")) for _ in range(4)]
    assert {t.phase for t in trials} == {0, 1}
    for _ in range(RECHECKS[0]):  # every one chooses, then waits for its first recheck
        for trial in trials:
            trial()
    for _ in range(2 * TRIALS):  # the window: each run, one call of each layer
        calls.clear()
        for trial in trials:
            trial()
        assert "parallel" in calls and "serial" in calls, calls


def test_a_trial_that_keeps_its_serial_build_looks_again_at_doubling_calls():
    """While the serial build stays faster, each choice schedules a recheck at twice its calls (none
    before the first of RECHECKS; they stay); each window calls the parallel build TRIALS times."""
    from zeroskip.engine.plan.launch import RECHECKS, TRIALS, Trial

    calls = []

    def build(tag, seconds):
        return lambda: (calls.append(tag), _timed_recorder([], tag, seconds)())

    trial = Trial(build("parallel", 0.002), build("serial", 0.0))
    decided_at = []
    for _ in range(300):
        chosen = trial.chosen
        trial()
        if trial.chosen is not None and (chosen is None or trial.calls == trial.timed_until):
            decided_at.append(trial.calls)
    assert trial.decided() == "serial"
    # the rule, by hand (TRIALS = 3, RECHECKS = 64, 512): the first choice after 8 calls asks for
    # a look at 16, but none comes before 64; a window is 6 calls and its choice, at its end (70),
    # asks for one at 140 (choice at 146, next at 292); then 292 (298, next 596), 512 (518, next
    # 1036), 596 (602, next 1204)
    assert (TRIALS, RECHECKS) == (3, (64, 512))
    assert decided_at == [8, 70, 146, 298], decided_at
    assert trial.checks == (512, 596)
    assert calls.count("parallel") == (TRIALS + 1) + TRIALS * (len(decided_at) - 1)


def test_gemm_work_is_its_multiply_accumulates():
    work, threshold = WORK["matmul_dense_i8"]
    x, w = np.zeros((128, 256), np.uint8), np.zeros((64, 256), np.int8)
    assert work(x, w, None, None) == 128 * 256 * 64 and threshold == MIN_PARALLEL_MACS
    csr_work, _ = WORK["matmul_csr_i8"]
    data, xt = np.zeros(1000, np.int8), np.zeros((256, 128), np.uint8)
    assert csr_work(None, None, data, None, xt, None) == 1000 * 128
    rq_work, rq_threshold = WORK["matmul_csr_rq_i8"]  # products plus requantized outputs
    yt = np.zeros((64, 128), np.uint8)
    assert rq_work(None, None, data, None, xt, None, None, 0, 0, 255, yt) == 1000 * 128 + 64 * 128
    assert rq_threshold == MIN_PARALLEL_CSR_RQ_WORK
    dense_f32_work, _ = WORK["matmul_dense_f32"]  # x (M,K), w (K,N)
    assert dense_f32_work(np.zeros((3, 256), np.float32), np.zeros((256, 10), np.float32)) == \
        3 * 256 * 10


def test_parallel_builds_give_the_serial_bytes_through_a_session(monkeypatch):
    """With every threshold at 0, a two-thread Session takes every parallel build: the bytes are a
    one-thread Session's (serial twins), on the golden models, in every kernel mode."""
    import zeroskip
    from test_golden import golden
    from zeroskip.engine.plan import launch

    monkeypatch.setattr(launch, "WORK", {name: (work, 0) for name, (work, _) in WORK.items()})
    launched = set()
    trial = launch.Launch._trial  # every call from the threshold on takes its build here

    def spy(self, work):
        if self.threshold == 0:  # not a plan whose threads are BLAS's (force_serial)
            launched.add(self.parallel)
        return trial(self, work)

    monkeypatch.setattr(launch.Launch, "_trial", spy)
    for name, modes in (("cnn", ("dense-f32", "sparse-f32")),
                        ("int8", ("dense-i8", "sparse-i8", "dense-f32", "sparse-f32"))):
        model, expected = golden(name)
        feeds = {"x": expected["x"]}
        for mode in modes:
            one = zeroskip.Session(model, mode=mode, threads=1).run(feeds)
            two = zeroskip.Session(model, mode=mode, threads=2).run(feeds)
            for key in one:
                assert one[key].dtype == two[key].dtype and np.array_equal(one[key], two[key]), \
                    (name, mode, key)
    names = {dispatcher.py_func.__name__ for dispatcher in launched}
    assert {"_conv2d_csr_rq_i8", "_add_dense_i8", "_conv2d_csr_f32"} <= names, names
    for dispatcher in launched:  # the parallel build of every kernel so launched really ran
        assert dispatcher.signatures, dispatcher.py_func.__name__


def test_direct_conv_work_is_useful_macs_plus_outputs():
    from zeroskip.engine.plan.launch import MIN_PARALLEL_CONV_WORK

    work, threshold = WORK["conv2d_csr_i8"]
    y = np.zeros((1, 512, 7, 7), np.int32)  # ResNet-18's last downsample: 512 channels, 7×7
    data = np.zeros(512 * 25, np.int8)  # 25 nonzeros per output channel
    assert work(None, None, data, None, None, 0, None, y) == 512 * 49 * 26
    assert work(None, None, data, None, None, 0, None, y) >= threshold == MIN_PARALLEL_CONV_WORK
    small = np.zeros((1, 8, 9, 9), np.int32)  # a toy conv: serial
    assert work(None, None, np.zeros(8 * 27, np.int8), None, None, 0, None, small) < threshold


@pytest.mark.parametrize("serial_s, kept", [(0.0002, "parallel"), (0.00008, "serial")])
def test_a_tie_keeps_the_parallel_build_only_on_long_calls(serial_s, kept):
    """A parallel build within SERIAL_MARGIN of the serial one is kept on calls of SHORT_CALL_S or
    more (another runtime's spinning threads may have slowed its trials); on shorter calls the
    faster build is kept (a tie there gains nothing and costs a region)."""
    from zeroskip.engine.plan.launch import SERIAL_MARGIN, SHORT_CALL_S, TRIALS, Trial

    assert 1.08 < SERIAL_MARGIN and (serial_s >= SHORT_CALL_S) == (kept == "parallel")
    trial = Trial(_timed_recorder([], "parallel", serial_s * 1.08),
                  _timed_recorder([], "serial", serial_s))
    for _ in range(2 * (TRIALS + 1)):
        trial()
    assert trial.decided() == kept, trial.best
