"""The one place kernel tolerances live (STYLE.md: "Tolerances live in one helper").

- int8 paths: exactly equal (``assert_exact``).
- f32 against the float64 reference: ``|got − want| ≤ (K + 2)·2⁻²⁴·(|W|·|X|)[i] + 1e-30``, the classic
  bound on a K-term float32 dot product, taken per element from the magnitudes that went into it
  (``assert_f32_close``).

Both check shape and dtype first, and a failure prints the first bad index, the context (M, N, K,
density, seed, ...), expected and got, and any extra arrays given (the int32 accumulator, the scales).
"""

from __future__ import annotations

import numpy as np

F32_UNIT = 2.0 ** -24


def _describe(context: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in context.items())


def _check_shape_dtype(got, want, dtype, context):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"shape: got {got.shape}, want {want.shape} ({_describe(context)})"
    if dtype is not None:
        assert got.dtype == np.dtype(dtype), \
            f"dtype: got {got.dtype}, want {np.dtype(dtype)} ({_describe(context)})"
    return got, want


def assert_exact(got, want, *, dtype=None, extra: dict | None = None, **context) -> None:
    """Integer results must be identical, and two float results bit for bit (NaN where NaN is,
    the same sign of zero; an integer result against a float reference compares as integers); on
    failure show the first mismatch and its neighbours."""
    got, want = _check_shape_dtype(got, want, dtype, context)
    if got.dtype.kind == "f" and want.dtype.kind == "f":
        assert got.dtype == want.dtype, \
            f"dtype: got {got.dtype}, want {want.dtype} bit for bit ({_describe(context)})"
        bits = np.dtype(f"i{got.dtype.itemsize}")
        bad = np.argwhere(np.ascontiguousarray(got).view(bits) != np.ascontiguousarray(want).view(bits))
    else:
        bad = np.argwhere(got.astype(np.int64) != want.astype(np.int64))
    if len(bad):
        index = tuple(int(i) for i in bad[0])
        lines = [f"{len(bad)} of {got.size} elements differ ({_describe(context)})",
                 f"first at {index}: expected {want[index]}, got {got[index]}"]
        for name, array in (extra or {}).items():
            array = np.asarray(array)
            try:
                value = array[index[:array.ndim]] if array.ndim else array
            except IndexError:
                value = array
            lines.append(f"{name} there: {value}")
        raise AssertionError("\n".join(lines))


def assert_f32_close(got, want, *, K: int, magnitude, dtype=np.float32, **context) -> None:
    """``got`` (float32) within the K-term dot-product bound of the float64 reference ``want``.

    magnitude — per output element, Σ|w·x| over the terms that made it (e.g. ``abs(W) @ abs(X)``),
    broadcastable to the output; K — the number of terms.
    """
    got, want = _check_shape_dtype(got, want, dtype, context)
    bound = (K + 2) * F32_UNIT * np.asarray(magnitude, dtype=np.float64) + 1e-30
    error = np.abs(got.astype(np.float64) - want.astype(np.float64))
    bad = np.argwhere(~(error <= bound))  # NaN fails too
    if len(bad):
        index = tuple(int(i) for i in bad[0])
        raise AssertionError(
            f"{len(bad)} of {got.size} elements outside the f32 bound ({_describe(context)}, K={K})\n"
            f"first at {index}: expected {want[index]!r}, got {got[index]!r}, "
            f"error {error[index]:.3g} > bound {np.broadcast_to(bound, error.shape)[index]:.3g}")


def residual_for(rng, shape, dtype, y_zero_point: int) -> tuple:
    """A fused residual QAdd for a requantizing kernel's output of ``shape`` and ``dtype``, as the
    kernels take it (kernels/elementwise.residual_parts): a random r of y's type and (y_zero_point,
    r_zero_point, A, B, R, out_zero_point, lo, hi) with scale ratios about 1, so that sums clamp at
    both ends of [lo, hi]."""
    from zeroskip import quantmath

    info = np.iinfo(dtype)
    r = rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)
    a, b, shift = quantmath.add_multipliers(rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4))
    middle = (int(info.min) + int(info.max)) // 2
    return (r, y_zero_point, int(rng.integers(middle - 20, middle + 21)), a, b, shift,
            int(rng.integers(middle - 20, middle + 21)), int(info.min) + 2, int(info.max) - 3)


def extreme_values(rng, shape, lo, hi, ends=0.25):
    """Uniform integers in [lo, hi], a share ``ends`` of them at lo or hi (the largest products)."""
    v = rng.integers(lo, hi + 1, shape)
    at_ends = rng.random(shape) < ends
    v[at_ends] = np.where(rng.random(int(at_ends.sum())) < 0.5, lo, hi)
    return v


TYPE_RANGE = {np.uint8: (0, 255), np.int8: (-128, 127)}


def random_conv_case(rng, w_shape, x_shape, density, x_type, seed):
    """A requantizing int8 conv's random operands: (w, x, x_zp, bias', w_sums, m0, shift, y_type,
    lo, hi, y_zp). Weights and activations put a quarter of their values at the ends of their
    ranges; among the first 16 channels every third one's multiplier is a power of two (its sums
    hit the rounding's ties), the channels from 16 on have tie-free ones (the kernels' short
    requantization, chosen per channel or per vector of 16 channels);
    the output type is x's for odd seeds and the other 8-bit type for even ones."""
    N = w_shape[0]
    w = extreme_values(rng, w_shape, -128, 127).astype(np.int8)
    w[rng.random(w.shape) >= density] = 0
    x = extreme_values(rng, x_shape, *TYPE_RANGE[x_type]).astype(x_type)
    x_zp = int(rng.integers(*TYPE_RANGE[x_type], endpoint=True))
    w2 = w.reshape(N, -1).astype(np.int64)
    bias = (rng.integers(-2 ** 16, 2 ** 16, N) - x_zp * w2.sum(axis=1)).astype(np.int32)
    m0 = rng.integers(2 ** 30, 2 ** 31 - 1, N).astype(np.int32)
    m0[:16:3] = 2 ** 30  # a multiplier of 2^(30−shift): many sums fall on rounding ties, both signs
    shift = rng.integers(31, 42, N).astype(np.int32)
    m0[16:] |= 1  # past the first 16 channels, tie-free ones (quant.tie_free): the short form
    shift[16:] = rng.integers(33, 42, max(N - 16, 0))
    y_type = x_type if seed % 2 else (np.int8 if x_type == np.uint8 else np.uint8)
    lo, hi = TYPE_RANGE[y_type]
    return w, x, x_zp, bias, w2.sum(axis=1), m0, shift, y_type, lo, hi, int(rng.integers(lo, hi + 1))


_WITH_TILE: dict = {}


def kernel_with_tile(kernel, function, global_name: str, tiles: dict, tile_name: str):
    """``kernel`` itself when tiles[tile_name] is the tile it was built with (the global
    ``global_name`` of ``function``'s module), else a copy of its Python ``function`` with that
    global bound to tiles[tile_name], compiled serially (and cached on disk under a new name); as
    Python under NUMBA_DISABLE_JIT."""
    import numba

    from zeroskip.kernels._copies import renamed_copy

    tile = tiles[tile_name]
    if tile is function.__globals__[global_name]:
        return kernel
    key = (function, tile_name)
    if key not in _WITH_TILE:
        copy = renamed_copy(function, f"_{tile_name}", **{global_name: tile})
        _WITH_TILE[key] = copy if numba.config.DISABLE_JIT else \
            numba.njit(cache=True, nogil=True)(copy)
    return _WITH_TILE[key]
