"""Renamed copies of a kernel's plain Python function, for other compiled builds of the same loops.

Numba caches a compiled function on disk under its qualified name, so a second build of the same
loops (the serial twin of a parallel kernel, the dense int8 GEMM around another tile) needs a
function of its own name; ``globals`` lets the copy see a different helper under the same name.
The leading underscore keeps the kernel collector (``kernels/__init__.py``) from looking here.
"""

from __future__ import annotations

import types


def renamed_copy(fn, suffix: str, **globals_):
    """``fn`` (a plain function) as a new function named ``fn.__name__ + suffix`` (and qualified
    name likewise: its own disk-cache entry), with the same code, defaults and closure, and its
    module globals updated by ``globals_``."""
    scope = dict(fn.__globals__, **globals_) if globals_ else fn.__globals__
    copy = types.FunctionType(fn.__code__, scope, fn.__name__ + suffix, fn.__defaults__,
                              fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__module__, copy.__doc__ = fn.__module__, fn.__doc__
    return copy
