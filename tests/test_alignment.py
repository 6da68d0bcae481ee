"""Arrays that kernels load 64 bytes at a time start on a cache line: the weights a plan packs
(engine/plan/steps.aligned_copy) and the scratch a compiled kernel makes for its tiles
(kernels/_scratch.words_on_lines). Where they did not, the same kernel ran up to 1.5× slower in
one process than in another (docs/kernels.md, "Alignment")."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from zeroskip.engine.plan.steps import CACHE_LINE, aligned_copy
from zeroskip.kernels._scratch import words_on_lines


def _at_offset(values: np.ndarray, offset: int) -> np.ndarray:
    """A copy of ``values`` whose data starts ``offset`` bytes past a cache line."""
    raw = np.empty(values.nbytes + 2 * CACHE_LINE, np.uint8)
    start = -raw.ctypes.data % CACHE_LINE + offset
    out = raw[start:start + values.nbytes].view(values.dtype).reshape(values.shape)
    out[...] = values
    return out


@pytest.mark.parametrize("offset", [0, 4, 16, 32, 48])
@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.float32])
def test_aligned_copy_starts_on_a_line_and_keeps_the_values(offset, dtype):
    values = np.arange(3 * 5 * 7, dtype=np.int64).reshape(3, 5, 7).astype(dtype)
    source = _at_offset(values, offset)
    got = aligned_copy(source)
    assert got.ctypes.data % CACHE_LINE == 0
    assert got.dtype == values.dtype and got.shape == values.shape and got.flags.c_contiguous
    np.testing.assert_array_equal(got, values)
    assert (got is source) == (offset == 0)  # an aligned array is taken as it is


def test_aligned_copy_makes_a_strided_view_contiguous():
    values = np.arange(64, dtype=np.int8).reshape(8, 8)
    got = aligned_copy(values[:, ::2])
    assert got.flags.c_contiguous and got.ctypes.data % CACHE_LINE == 0
    np.testing.assert_array_equal(got, values[:, ::2])


@njit
def _compiled_scratch(count):
    return words_on_lines(count)


@pytest.mark.parametrize("make", [words_on_lines, _compiled_scratch], ids=["called", "inlined"])
def test_kernel_scratch_starts_on_a_line(make):
    for count in [1, 15, 16, 17, 64, 257, 1000]:
        for _ in range(4):  # fresh allocations land at different offsets from a line
            got = make(count)
            assert got.shape == (count,) and got.dtype == np.int32
            assert got.ctypes.data % CACHE_LINE == 0, count
