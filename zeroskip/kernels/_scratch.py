"""Scratch arrays that start on a cache line, made inside compiled kernels, and the zeroed tails
of the kernels' workspaces.

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


@njit(cache=True, inline="always")
def zero_tails(work, start):
    """work[b, start:] = 0 for every row b of a 2-D workspace (the slack that a packed input's
    dropped positions read), element by element: in a parallel kernel a slice assignment in a
    loop is a parallel region per pass (one per image: 450 at the digits CNN's batch made each
    quad conv 2–2.5× slower on two threads than written this way)."""
    for b in range(work.shape[0]):
        for i in range(start, work.shape[1]):
            work[b, i] = 0
