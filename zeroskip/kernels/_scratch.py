"""Scratch arrays that start on a cache line, made inside compiled kernels.

Numba's ``np.empty`` aligns its data to 32 bytes, so a scratch whose 64-byte rows a tile stores
or loads whole (an AMX tile's int32 sums, the packed rows of a GEMM's input) starts on a cache
line or half-way through one, call by call, and in the second case every row splits two lines.
"""

from __future__ import annotations

import numpy as np
from numba import njit

LINE_WORDS = 16
"""32-bit words per 64-byte cache line."""


@njit(cache=True, inline="always")
def words_on_lines(count):
    """An uninitialised int32 [count] whose first word starts a cache line (reshape it as needed:
    a slice of a contiguous vector stays contiguous)."""
    raw = np.empty(count + LINE_WORDS, np.int32)
    start = (-raw.ctypes.data) % (4 * LINE_WORDS) // 4
    return raw[start:start + count]
