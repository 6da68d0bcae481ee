"""Gradual pruning schedules: how sparse the weights should be at each step of fine-tuning.

Zhu & Gupta ("To prune, or not to prune", 2017) raise the sparsity from ``initial`` to ``final``
over ``steps`` pruning steps along a polynomial that prunes fast while many weights are redundant
and slows down near the end:

    s_t = final + (initial − final) · (1 − t / steps) ** power,   t = 0, 1, …, steps

A training loop prunes to ``s_t`` with ``zeroskip.compress.masks`` at step t, trains a while with
the masks applied, and goes on. zeroskip itself never trains; ``examples/`` shows the loop in torch.
"""

from __future__ import annotations

import numpy as np

from ..errors import CompressionError
from .pruning import check_sparsity


def polynomial(initial: float, final: float, steps: int, power: float = 3) -> np.ndarray:
    """The sparsities s_0 = initial … s_steps = final (``steps + 1`` float64 values, never
    decreasing)."""
    initial = check_sparsity(initial, "initial")
    final = check_sparsity(final, "final")
    if final < initial:
        raise CompressionError(f"final={final} is below initial={initial}: a schedule only prunes more")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise CompressionError(f"steps={steps!r}: expected an integer >= 1")
    try:
        power = float(power)
    except (TypeError, ValueError):
        raise CompressionError(f"power={power!r}: expected a number >= 1") from None
    if not power >= 1:
        raise CompressionError(f"power={power!r}: expected a number >= 1")
    t = np.arange(steps + 1, dtype=np.float64)
    return final + (initial - final) * (1.0 - t / steps) ** power


__all__ = ["polynomial"]
