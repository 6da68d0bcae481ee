"""zeroskip's weight quantizer (``zeroskip.compress.weights``, docs/quantization.md §1).

q_w = clip(round_half_even(w / w_scale[n]), −127, 127) with w_scale[n] = max|w[n,...]| / 127 (1.0 for
an all-zero channel): per-channel scales, the extreme value at ±127 exactly, ties to even, pruned
zeros exactly 0, the channel axis of conv (N, C, kh, kw), Gemm (N, K) and MatMul (K, N) weights, per
tensor, and Hypothesis properties over random shapes, axes and sparsity.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from zeroskip.compress.weights import WEIGHT_MAX, choose_weight_scales, quantize_weights


def _peaks(w, axis):
    other = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
    return np.max(np.abs(w.astype(np.float64)), axis=other)


def test_per_channel_scales_are_max_abs_over_127_in_float32():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((6, 10)) * np.arange(1, 7)[:, None]).astype(np.float32)
    scales = choose_weight_scales(w)
    assert scales.dtype == np.float32 and scales.shape == (6,)
    np.testing.assert_array_equal(scales, (_peaks(w, 0) / 127).astype(np.float32))
    assert WEIGHT_MAX == 127


def test_all_zero_channel_gets_scale_one_and_stays_zero():
    w = np.array([[0.0, 0.0, 0.0], [1.0, -2.54, 0.5], [0.0, -0.0, 0.0]], dtype=np.float32)
    with np.errstate(all="raise"):  # no 0/0 on the way
        scales = choose_weight_scales(w)
        q = quantize_weights(w, scales)
    assert scales.dtype == np.float32 and scales[0] == 1.0 and scales[2] == 1.0
    assert np.isclose(scales[1], 2.54 / 127)
    assert q.dtype == np.int8 and (q[0] == 0).all() and (q[2] == 0).all()
    assert q[1].tolist() == [50, -127, 25]


def test_a_scale_that_underflows_float32_is_treated_as_an_all_zero_channel():
    w = np.array([[1e-300, -1e-300], [2.0, 1.0]])
    scales = choose_weight_scales(w)
    assert scales.tolist() == [1.0, np.float32(2.0 / 127)]
    assert quantize_weights(w, scales).tolist() == [[0, 0], [127, 64]]


def test_the_extreme_value_of_each_channel_maps_to_plus_or_minus_127_exactly():
    rng = np.random.default_rng(1)
    w = rng.uniform(-3, 3, (40, 33)).astype(np.float32)
    q = quantize_weights(w, choose_weight_scales(w))
    rows = np.arange(40)
    peak = np.argmax(np.abs(w), axis=1)
    np.testing.assert_array_equal(q[rows, peak], np.where(w[rows, peak] > 0, 127, -127))
    assert q.min() >= -127 and q.max() <= 127  # −128 is never written


def test_rounds_half_to_even():
    # max|w| = 127 gives the scale 1.0 exactly, so w / scale is the tie itself
    w = np.array([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 126.5]])
    scales = choose_weight_scales(w)
    assert scales.tolist() == [1.0]
    assert quantize_weights(w, scales).tolist() == [[127, 0, 2, 2, 0, -2, -2, 4, 126]]


def test_pruned_zeros_stay_exactly_zero():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    mask = rng.random(w.shape) < 0.8
    w[mask] = 0.0
    w[0, 0, 0, 0] = -0.0
    q = quantize_weights(w, choose_weight_scales(w))
    assert np.all(q[w == 0] == 0)
    assert np.count_nonzero(q) <= np.count_nonzero(w)


def test_conv_weight_channels_are_axis_0():
    conv = np.zeros((4, 2, 3, 3), dtype=np.float32)
    conv[1, 0, 1, 1] = -3.0
    conv[3, 1, 2, 0] = 0.5
    s = choose_weight_scales(conv, axis=0)
    assert s.tolist() == [1.0, np.float32(3.0 / 127), 1.0, np.float32(0.5 / 127)]
    q = quantize_weights(conv, s, axis=0)
    assert q.shape == conv.shape and q[1, 0, 1, 1] == -127 and q[3, 1, 2, 0] == 127
    assert np.count_nonzero(q) == 2


def test_gemm_and_matmul_weights_agree_up_to_the_transpose():
    """The IR's Gemm weight is (N, K) with channels on axis 0; ONNX MatMul stores (K, N), axis 1."""
    rng = np.random.default_rng(3)
    w_nk = rng.standard_normal((5, 12)).astype(np.float32)
    w_kn = np.ascontiguousarray(w_nk.T)
    s_nk, s_kn = choose_weight_scales(w_nk, axis=0), choose_weight_scales(w_kn, axis=1)
    np.testing.assert_array_equal(s_nk, s_kn)
    np.testing.assert_array_equal(choose_weight_scales(w_kn, axis=-1), s_kn)
    q_nk, q_kn = quantize_weights(w_nk, s_nk, axis=0), quantize_weights(w_kn, s_kn, axis=1)
    np.testing.assert_array_equal(q_nk, q_kn.T)
    np.testing.assert_array_equal(quantize_weights(w_kn, s_kn, axis=-1), q_kn)


def test_per_tensor_has_one_scale():
    w = np.array([[0.0, 0.0], [0.25, -1.27]], dtype=np.float32)
    s = choose_weight_scales(w, axis=None)
    assert s.shape == () and s.dtype == np.float32 and s == np.float32(1.27 / 127)
    assert quantize_weights(w, s, axis=None).tolist() == [[0, 0], [25, -127]]
    assert choose_weight_scales(np.zeros((3, 3)), axis=None) == 1.0


def test_bad_axis_is_refused():
    with pytest.raises(ValueError, match="axis 2"):
        choose_weight_scales(np.ones((3, 4)), axis=2)
    with pytest.raises(ValueError, match="axis -3"):
        quantize_weights(np.ones((3, 4)), np.ones(3), axis=-3)


@st.composite
def _weights(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6))
    values = hnp.arrays(np.float32, shape, elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=False))
    w = draw(values)
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    keep = np.random.default_rng(draw(st.integers(0, 2 ** 16))).random(shape) < density
    axis = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    return np.where(keep, w, np.float32(0.0)), axis


@given(_weights())
def test_quantizer_properties(case):
    w, axis = case
    scales = choose_weight_scales(w, axis)
    q = quantize_weights(w, scales, axis)
    context = f"shape {w.shape}, axis {axis}"
    assert q.dtype == np.int8 and q.shape == w.shape, context
    assert scales.dtype == np.float32 and np.all(np.isfinite(scales)) and np.all(scales > 0), context
    assert q.min() >= -WEIGHT_MAX and q.max() <= WEIGHT_MAX, context
    assert np.all(q[w == 0] == 0), context
    if axis is None:
        s = np.float64(scales)
        peaks = np.array([np.max(np.abs(w.astype(np.float64)))])
        q_channels = [q]
    else:
        assert scales.shape == (w.shape[axis],), context
        shape = [1] * w.ndim
        shape[axis] = -1
        s = scales.astype(np.float64).reshape(shape)
        peaks = _peaks(w, axis)
        q_channels = [np.take(q, n, axis=axis) for n in range(w.shape[axis])]
    # every value within half a step; a nonzero channel reaches ±127
    error = np.abs(w.astype(np.float64) - s * q.astype(np.float64))
    assert np.all(error <= s / 2 * (1 + 1e-6)), context
    for peak, q_n in zip(peaks, q_channels):
        assert (np.max(np.abs(q_n.astype(int))) == 127) == (peak > 0), context
