"""The break-even table behind mode="auto": interpolation, caching, and a broken cache."""

import json

import numpy as np
import pytest

from zeroskip.engine import tuning


@pytest.mark.parametrize("dense, sparse, want", [
    ([1, 1, 1, 1], [0.4, 0.8, 1.2, 1.6], 0.25),       # sparse = 4·density: equal at 0.25
    ([1, 1, 9, 1], [0.4, 0.8, 1.2, 1.6], 0.25),       # one slow dense run changes nothing
    ([1, 1, 1, 1], [0.4, 9.0, 1.2, 1.6], 0.25),       # nor one slow sparse run
    ([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], 1.0),        # always faster: 1.0
    ([1, 1, 1, 1], [1.4, 1.8, 2.2, 2.6], 0.0),        # never faster: 0.0
])
def test_crossing(dense, sparse, want):
    assert tuning.crossing([0.1, 0.2, 0.3, 0.4], dense, sparse) == pytest.approx(want)


def test_table_measures_once_and_caches(tmp_path):
    calls = []

    def measure(density):
        calls.append(density)
        return 1.0, density * 4  # sparse wins below 0.25

    path = tmp_path / "be.json"
    table = tuning.BreakEvenTable(threads=1, path=str(path))
    entry = table.get("gemm f32", measure)
    assert entry["break_even"] == pytest.approx(0.25)
    assert calls == list(tuning.DENSITIES)
    again = tuning.BreakEvenTable(threads=1, path=str(path)).get("gemm f32", measure)
    assert again["break_even"] == pytest.approx(0.25) and len(calls) == len(tuning.DENSITIES)
    # another thread count is another machine configuration: measured again
    tuning.BreakEvenTable(threads=2, path=str(path)).get("gemm f32", measure)
    assert len(calls) == 2 * len(tuning.DENSITIES)


def test_corrupt_cache_is_measured_again(tmp_path):
    path = tmp_path / "be.json"
    path.write_text("{not json")
    entry = tuning.BreakEvenTable(threads=1, path=str(path)).get("x", lambda d: (1.0, 2.0 + d))
    assert entry["break_even"] == 0.0
    assert json.loads(path.read_text())  # rewritten whole


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ZEROSKIP_CACHE_DIR", str(tmp_path / "zs"))
    assert tuning.cache_dir() == str(tmp_path / "zs")
    monkeypatch.delenv("ZEROSKIP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tuning.cache_dir() == str(tmp_path / "xdg" / "zeroskip")


def test_multi_thread_timings_take_each_modes_faster_build_serial_twins_first(monkeypatch):
    """A multi-thread plan's layer timing is, per mode, the faster of its steps and of the steps on
    the serial twins, which are timed first (after a parallel call they would run slower)."""
    order = []

    class FakeStep:
        def __init__(self, tag, seconds):
            self.tag, self.seconds = tag, seconds

        def run(self, values):
            order.append(self.tag)
            clock["now"] += self.seconds

    clock = {"now": 0.0}
    monkeypatch.setattr(tuning.time, "perf_counter", lambda: clock["now"])
    times = {("dense-i8", False): 2.0, ("sparse-i8", False): 1.0,   # the plan's steps
             ("dense-i8", True): 1.5, ("sparse-i8", True): 3.0}     # their serial twins

    def steps(serial):
        return lambda model, node, mode: FakeStep((mode, serial), times[(mode, serial)])

    modes = ("dense-i8", "sparse-i8")
    got = tuning._time_modes(None, None, {}, modes, steps(False), steps(True))
    assert got == (1.5, 1.0)
    first_plan_step = order.index(("dense-i8", False))
    assert set(order[:first_plan_step]) == {("dense-i8", True), ("sparse-i8", True)}
    assert tuning._time_modes(None, None, {}, modes, steps(False)) == (2.0, 1.0)  # one thread


def test_a_close_call_is_timed_twice_and_each_mode_keeps_its_better_time(monkeypatch):
    """A slow spell on one mode's runs of the first timing does not decide a close layer: both
    modes are timed again and each keeps its best; a clear call is timed once."""
    clock = {"now": 0.0}
    monkeypatch.setattr(tuning.time, "perf_counter", lambda: clock["now"])
    calls = {"dense-i8": 0, "sparse-i8": 0}

    class FakeStep:
        def __init__(self, mode, seconds):
            self.mode, self.seconds = mode, seconds

        def run(self, values):
            calls[self.mode] += 1
            slow = self.mode == "dense-i8" and calls[self.mode] <= tuning.REPEATS + 1
            clock["now"] += self.seconds * (1.8 if slow else 1.0)

    modes = ("dense-i8", "sparse-i8")
    close = {"dense-i8": 1.0, "sparse-i8": 1.2}
    got = tuning._time_modes(None, None, {}, modes,
                             lambda model, node, mode: FakeStep(mode, close[mode]))
    assert got == pytest.approx((1.0, 1.2)) and calls["sparse-i8"] == 2 * (tuning.REPEATS + 1)
    calls.update({"dense-i8": 0, "sparse-i8": 0})
    clear = {"dense-i8": 1.0, "sparse-i8": 5.0}
    got = tuning._time_modes(None, None, {}, modes,
                             lambda model, node, mode: FakeStep(mode, clear[mode]))
    assert got == pytest.approx((1.8, 5.0)) and calls["sparse-i8"] == tuning.REPEATS + 1


def test_a_layer_pruned_in_quads_is_not_timed_as_one_pruned_unstructured():
    """The per-layer key tells apart two weights of one density whose nonzeros fill different
    shares of the groups of 4 input channels at a tap: the quad conv's work differs 3×."""
    from zeroskip import Dense, Node
    from zeroskip.ops import normalize_attrs

    rng = np.random.default_rng(0)
    unstructured = (rng.random((32, 16, 3, 3)) < 0.1).astype(np.int8)
    kept = rng.random((32, 4, 1, 3, 3)) < 0.1  # which groups of 4 input channels at a tap stay
    quads = np.repeat(kept, 4, axis=2).reshape(32, 16, 3, 3)
    node = Node("c", "Conv", ["x", "w"], ["y"], normalize_attrs("Conv", {"pads": [1, 1, 1, 1]}))
    keys = [tuning.layer_key(node, {"w": Dense(w.astype(np.int8))}, ((1, 16, 8, 8), "uint8"),
                             0.1) for w in (unstructured, quads)]
    assert keys[0] != keys[1]
    assert tuning.quad_share(quads.astype(np.int8)) == np.mean(kept)  # the groups kept, whole
    assert tuning.quad_share(np.ones((8, 6), np.int8)) is None  # 6 inputs: no groups of 4
