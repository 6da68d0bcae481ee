"""The padded rows (kernels/_runs.py) and the padded plane built from them (_planes.pad_plane).

pad_row writes one row of a padded plane: the fill everywhere, then a run of a source row over it
(each 8-bit value xor a flip byte, as the depthwise row tile pads int8 planes). Every variant this
CPU runs (the masked AVX-512 BW form, the plain loops) is compared with numpy, byte for byte, for
runs that start and end anywhere in a row, rows longer than one 64-byte chunk, and every dtype the
kernels pad (uint8, int8, float32). pad_plane is compared with numpy's pad on short rows (the
masked path) and long ones (the flat fill), with the crops and offsets its callers use.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel_checks import assert_exact
from zeroskip.kernels import _planes, _runs

DTYPES = [np.uint8, np.int8, np.float32]


def _call_row(name, dst, r, src, sr, su, u, count, fill, flip):
    """pad_row with variant ``name``, compiled around it (the masked form is an intrinsic)."""
    return _row_callers(name)(dst, r, src, sr, su, u, count, fill, flip)


_CALLERS: dict = {}


def _row_callers(name):
    if name not in _CALLERS:
        row = _runs.ROWS[name]
        if name == "masked":
            def call(dst, r, src, sr, su, u, count, fill, flip):
                row(dst, r, src, sr, su, u, count, dst.dtype.type(fill), flip)
        else:
            def call(dst, r, src, sr, su, u, count, fill, flip):
                row(dst, r, src, sr, su, u, count, fill, flip)
        _CALLERS[name] = call if numba.config.DISABLE_JIT else numba.njit(call)
    return _CALLERS[name]


def _want_row(dst, r, src, sr, su, u, count, fill, flip):
    want = dst.copy()
    want[r, :] = fill
    run = src[sr, su:su + count]
    if flip is not None:
        run = run ^ run.dtype.type(flip)
    want[r, u:u + count] = run
    return want


def _values(rng, shape, dtype):
    if dtype == np.float32:
        return rng.standard_normal(shape).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape, dtype=dtype)


@pytest.mark.parametrize("name", sorted(_runs.ROWS))
@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_pad_row_matches_numpy(name, dtype, data):
    width = data.draw(st.integers(1, 200), label="width")
    src_width = data.draw(st.integers(1, 200), label="src_width")
    u = data.draw(st.integers(0, width), label="u")
    su = data.draw(st.integers(0, src_width), label="su")
    count = data.draw(st.integers(0, min(width - u, src_width - su)), label="count")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    flip = None
    if dtype != np.float32 and data.draw(st.booleans(), label="flip"):
        flip = dtype(-128) if dtype == np.int8 else dtype(0x80)
    rng = np.random.default_rng(seed)
    dst, src = _values(rng, (3, width), dtype), _values(rng, (2, src_width), dtype)
    fill = _values(rng, (), dtype)[()]
    r, sr = int(rng.integers(0, 3)), int(rng.integers(0, 2))
    want = _want_row(dst, r, src, sr, su, u, count, fill, flip)
    _call_row(name, dst, r, src, sr, su, u, count, fill, flip)
    assert_exact(dst.view(np.uint8), want.view(np.uint8), name=name, dtype_=dtype.__name__,
                 width=width, u=u, su=su, count=count)


@pytest.mark.parametrize("name", sorted(_runs.ROWS))
def test_pad_row_touches_nothing_outside_its_row(name):
    """Whole-chunk and tail masks: the rows around the written one and the source keep their bytes,
    and the run may end exactly at the source's last byte (a masked load past it would fault or
    read garbage into the row)."""
    for width in (1, 14, 63, 64, 65, 128, 130):
        src = np.arange(3 * width, dtype=np.uint8).reshape(3, width)[2:]  # the array's last row
        dst = np.full((3, width), 7, np.uint8)
        before = src.copy()
        _call_row(name, dst, 1, src, 0, 0, 0, width, 200, None)
        assert (dst[0] == 7).all() and (dst[2] == 7).all(), width
        assert_exact(dst[1], src[0], width=width)
        assert_exact(src, before, width=width)


def _want_plane(x, Hp, Wp, pt, pl, fill):
    big = np.full((Hp + abs(pt) + x.shape[0], Wp + abs(pl) + x.shape[1]), fill, x.dtype)
    oy, ox = abs(pt), abs(pl)
    big[oy + pt:oy + pt + x.shape[0], ox + pl:ox + pl + x.shape[1]] = x
    return big[oy:oy + Hp, ox:ox + Wp]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H, W, Hp, Wp, pt, pl", [
    (14, 14, 16, 16, 1, 1),     # 3×3 pad 1: short rows, the masked path
    (7, 7, 9, 9, 1, 1),
    (28, 28, 30, 30, 1, 1),
    (56, 56, 58, 58, 1, 1),     # 58 uint8 bytes: short; 232 float32 bytes: long
    (112, 112, 114, 114, 1, 1),  # long rows: the flat fill
    (13, 13, 15, 15, 0, 0),     # pads only at the end
    (15, 15, 14, 14, 1, 1),     # a crop of x's tail (stride 2, the taps do not reach it)
    (5, 9, 9, 13, 2, 2),        # 5×5 pad 2
    (1, 1, 3, 3, 1, 1),
])
def test_pad_plane_matches_numpy(dtype, H, W, Hp, Wp, pt, pl):
    rng = np.random.default_rng(H * 131 + Wp)
    x = _values(rng, (2, H, W), dtype)[1]  # the array's last plane: its last row ends the buffer
    fill = _values(rng, (), dtype)[()]
    xq = _values(rng, (Hp, Wp), dtype)
    _planes.pad_plane(x, xq, pt, pl, fill)
    assert_exact(xq.view(np.uint8), _want_plane(x, Hp, Wp, pt, pl, fill).view(np.uint8),
                 dtype_=dtype.__name__, H=H, W=W, Hp=Hp, Wp=Wp)
    if dtype != np.float32:  # with the flip that pads int8 planes as x + 128
        flip = dtype(-128) if dtype == np.int8 else dtype(0x80)
        _planes.pad_plane(x, xq, pt, pl, fill, flip)
        want = _want_plane(x ^ flip, Hp, Wp, pt, pl, fill)
        assert_exact(xq.view(np.uint8), want.view(np.uint8), dtype_=dtype.__name__, flip=True)


def test_short_rows_take_the_masked_path_where_it_runs():
    """pad_plane's split: rows of at most SHORT_ROW_BYTES bytes go through pad_row (masked where
    the CPU has AVX-512 BW), longer ones through the flat fill; the sizes MobileNetV2's small
    planes pad to are short."""
    assert 16 * 1 <= _planes.SHORT_ROW_BYTES < 114
    assert _runs.RUNS == ("masked" in _runs.ROWS)
