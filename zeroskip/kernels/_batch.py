"""Views of a batch of images for the kernels that take one image's 2-D operand or a batch's 3-D one
(the planar and CSR GEMMs: xt (K, M) or (B, K, M)), so that a batch goes through in one parallel
loop. The leading underscore keeps the kernel collector (``kernels/__init__.py``) from looking
here: helpers only.
"""

from __future__ import annotations

from numba.extending import overload


def as_images(a):
    """A 2-D array as one image (1, rows, columns); a 3-D one as it is: the planar GEMM takes one
    image's (K, M) or a batch's (B, K, M)."""
    return a.reshape((1,) + a.shape) if a.ndim == 2 else a


@overload(as_images, inline="always")
def _as_images_compiled(a):
    if a.ndim == 2:
        return lambda a: a.reshape((1, a.shape[0], a.shape[1]))
    return lambda a: a


def as_rows(a):
    """A 2- or 3-D array's rows, (rows, columns): the residual's QAdd goes row by row."""
    return a.reshape((-1, a.shape[-1]))


@overload(as_rows, inline="always")
def _as_rows_compiled(a):
    if a.ndim == 2:
        return lambda a: a
    return lambda a: a.reshape((a.shape[0] * a.shape[1], a.shape[2]))
