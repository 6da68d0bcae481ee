"""The plain NumPy reference: slow, obviously correct, and in two parts with two jobs.

* ``ops/`` — **ONNX op semantics**: one small float64 function per IR op (int64 for integer
  tensors). ``OPS`` maps every op name of ``zeroskip.ops.OPS`` to its function; the engine's
  ``reference`` mode runs them, and graph passes such as constant folding call them.
* ``kernels/`` — **mirrors of the Numba kernels**: ``reference/kernels/X.py`` mirrors
  ``zeroskip/kernels/X.py``, one reference per kernel, under the kernel's name. ``REFERENCES`` is
  their union and has the keys of ``zeroskip.kernels.KERNELS``.

A mirror may call the float64 math of ``ops/``, never a kernel or a kernel helper. ``windows`` holds
the padded window views that both parts read their inputs through.
"""

from __future__ import annotations

from .kernels import REFERENCES
from .ops import OPS

__all__ = ["OPS", "REFERENCES"]
