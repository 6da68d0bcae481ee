"""Calibration: what range of real values each activation gets, and its scale and zero point.

An ``Observer`` watches one tensor over every calibration batch in bounded memory: the exact
minimum and maximum, and a histogram of ``BINS`` bins over a range [−R, R] that doubles when a
value falls outside it (two neighbouring bins merge into one, so nothing is re-read). A thousand
batches cost the same memory as one.

From what it saw, ``Observer.range(method)`` chooses the real range [lo, hi] that the 256 integer
levels cover (docs/compression.md):

* ``minmax`` — the smallest and largest value seen. Nothing is clipped; one outlier stretches the
  step for every other value.
* ``percentile`` — cuts ``(100 − percentile)`` % of the values off each tail of the histogram.
* ``mse`` — the range, among ``CANDIDATES`` shrinkings of the min-max range, with the least
  expected squared error: step²/12 for each value inside it, plus (value − edge)² for each value
  clipped outside.
* ``entropy`` — the range whose quantized histogram is closest to the observed one in
  Kullback-Leibler divergence (the TensorRT method, on both tails rather than on |x|).

``activation_params`` then turns [lo, hi] into an asymmetric uint8 or int8 scale and zero point. The
range always holds 0, so that zero (ReLU's output, padding) is exact.
"""

from __future__ import annotations

import numpy as np

from ..errors import CompressionError

METHODS = ("minmax", "percentile", "mse", "entropy")
ACTIVATIONS = {"uint8": (0, 255), "int8": (-128, 127)}

BINS = 8192
"""Histogram bins per observed tensor (64 KiB of int64 counts), a multiple of 4."""
CANDIDATES = 200
"""How many shrinkings of the min-max range ``mse`` and ``entropy`` try."""
MIN_SCALE = 1e-12
"""The smallest scale written: a tensor that was always 0 gets scale 1 instead."""


class Observer:
    """The running statistics of one tensor: min, max, count and a doubling-range histogram."""

    def __init__(self, bins: int = BINS):
        if bins % 4:
            raise ValueError("the histogram needs a multiple of 4 bins")
        self.bins = bins
        self.hist = np.zeros(bins, np.int64)
        self.radius = 0.0  # R: the histogram covers [−R, R]; 0 until a nonzero value is seen
        self.zeros = 0     # values seen while R was still 0 (all exactly zero)
        self.exact_zeros = 0  # values exactly 0 (in the histogram too): quantization keeps them exact
        self.min = np.inf
        self.max = -np.inf
        self.count = 0

    def update(self, values) -> None:
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        if not x.size:
            return
        lo, hi = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += x.size
        self.exact_zeros += x.size - int(np.count_nonzero(x))
        peak = max(abs(lo), abs(hi))
        if self.radius == 0.0:
            if peak == 0.0:
                self.zeros += x.size
                return
            self.radius = peak
            if self.zeros:
                self.hist[self._index(np.zeros(1))] += self.zeros
                self.zeros = 0
        while peak > self.radius:
            self._double()
        self.hist += np.bincount(self._index(x), minlength=self.bins)

    def _index(self, x):
        width = 2.0 * self.radius / self.bins
        return np.clip(((x + self.radius) / width).astype(np.int64), 0, self.bins - 1)

    def _double(self) -> None:
        """[−R, R] becomes [−2R, 2R]: old bins 2j, 2j+1 become the middle half's bin j."""
        merged = self.hist.reshape(-1, 2).sum(axis=1)
        self.hist = np.zeros(self.bins, np.int64)
        self.hist[self.bins // 4:3 * self.bins // 4] = merged
        self.radius *= 2.0

    # -- choosing the range ------------------------------------------------------------------------
    def range(self, method: str = "minmax", levels: int = 256,
              percentile: float = 99.99) -> tuple[float, float]:
        """The real range [lo, hi] (lo <= 0 <= hi) that ``levels`` integers should cover."""
        if self.count == 0:
            raise CompressionError("no calibration value reached this tensor")
        lo, hi = min(self.min, 0.0), max(self.max, 0.0)
        if method == "minmax" or self.radius == 0.0 or hi == lo:
            return lo, hi
        edges = np.linspace(-self.radius, self.radius, self.bins + 1)
        centers = 0.5 * (edges[:-1] + edges[1:])
        if method == "percentile":
            return self._tails((100.0 - percentile) / 100.0, edges, lo, hi)
        # Candidates: the min-max range shrunk about 0, and ranges that cut a fraction f of the
        # values off each tail (each side follows its own tail). f = 0 is min-max itself.
        candidates = [(lo * t, hi * t) for t in np.linspace(1.0 / CANDIDATES, 1.0, CANDIDATES)]
        candidates += [self._tails(f, edges, lo, hi) for f in np.geomspace(1e-7, 0.05, CANDIDATES)]
        if method == "mse":
            errors = [_expected_mse(self.hist, centers, a, b, levels) for a, b in candidates]
        else:
            # Exact zeros (ReLU's half of the values) stay exact at any range: leave them out, or
            # their spike alone would decide the range.
            hist = self.hist.copy()
            hist[self._index(np.zeros(1))[0]] -= self.exact_zeros
            width = edges[1] - edges[0]
            errors = [_kl_divergence(hist, edges, a, b, levels, width) for a, b in candidates]
        return candidates[int(np.argmin(errors))]

    def _tails(self, fraction, edges, lo, hi):
        """The range that leaves ``fraction`` of the values outside on each side (bin edges)."""
        tail = fraction * self.count
        cdf = np.cumsum(self.hist)
        low = edges[min(np.searchsorted(cdf, tail, side="right"), self.bins)]
        high = edges[min(np.searchsorted(cdf, self.count - tail, side="left") + 1, self.bins)]
        return min(max(low, lo), 0.0), max(min(high, hi), 0.0)


def _expected_mse(hist, centers, lo, hi, levels):
    step = (hi - lo) / (levels - 1)
    inside = (centers >= lo) & (centers <= hi)
    clipped = np.where(centers < lo, lo - centers, np.where(centers > hi, centers - hi, 0.0))
    return float(np.sum(hist[inside]) * step * step / 12.0 + np.sum(hist * clipped * clipped))


def _kl_divergence(hist, edges, lo, hi, levels, width):
    """KL(P || Q) of a candidate range [lo, hi], as TensorRT's calibrator measures it.

    P is the histogram inside the range with the mass outside added to its end bins (what clipping
    does to the values). Q is the histogram inside the range, *without* that mass, seen through
    ``levels`` quantization buckets: each bucket's mass spread evenly over its nonzero bins. So Q
    pays both for the resolution lost inside and for what clipping piles onto the edges. A range
    narrower than ``levels`` bins is not a candidate (inf)."""
    first = int(np.clip(np.floor((lo - edges[0]) / width), 0, len(hist) - 1))
    last = int(np.clip(np.ceil((hi - edges[0]) / width) - 1, first, len(hist) - 1))
    if last - first + 1 < levels:
        return np.inf
    inside = hist[first:last + 1].astype(np.float64)
    p = inside.copy()
    p[0] += hist[:first].sum()
    p[-1] += hist[last + 1:].sum()
    bucket = (np.arange(len(p)) * levels) // len(p)
    mass = np.bincount(bucket, weights=inside, minlength=levels)
    used = np.bincount(bucket, weights=(inside > 0).astype(np.float64), minlength=levels)
    q = np.where(inside > 0, mass[bucket] / np.maximum(used[bucket], 1), 0.0)
    if p.sum() == 0 or q.sum() == 0:
        return np.inf
    p, q = p / p.sum(), q / q.sum()
    nz = p > 0
    # A bin that P has and Q lacks (clipped mass on an empty edge bin) gets a small floor in Q.
    return float(np.sum(p[nz] * np.log(p[nz] / np.maximum(q[nz], 1e-12))))


def activation_params(lo: float, hi: float, dtype: str = "uint8") -> tuple[float, int]:
    """(scale, zero_point) so that [lo, hi] (lo <= 0 <= hi) spans the dtype's integers:
    scale = (hi − lo) / (qmax − qmin), zero_point = round(qmin − lo / scale) in [qmin, qmax].
    The scale is a float32 value (as the file stores it); an all-zero range gets scale 1."""
    qmin, qmax = ACTIVATIONS[dtype]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = float(np.float32((hi - lo) / (qmax - qmin)))
    if not np.isfinite(scale):
        raise CompressionError(f"calibration range [{lo}, {hi}] is not finite")
    if scale < MIN_SCALE:
        return 1.0, 0
    zero_point = int(np.clip(np.rint(qmin - lo / scale), qmin, qmax))
    return scale, zero_point


def fake_quantize(x, scale: float, zero_point: int, dtype: str = "uint8") -> np.ndarray:
    """x quantized with (scale, zero_point) and back to real values, in float64."""
    qmin, qmax = ACTIVATIONS[dtype]
    q = np.clip(np.rint(np.asarray(x, np.float64) / scale) + zero_point, qmin, qmax)
    return scale * (q - zero_point)


def sqnr_db(reference, approximation) -> float:
    """Signal-to-quantization-noise ratio 10·log10(Σ r² / Σ (r − a)²) in dB (inf when exact)."""
    r = np.asarray(reference, np.float64)
    noise = float(np.sum((r - np.asarray(approximation, np.float64)) ** 2))
    signal = float(np.sum(r * r))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * np.log10(signal / noise)


__all__ = ["ACTIVATIONS", "BINS", "METHODS", "Observer", "activation_params", "fake_quantize",
           "sqnr_db"]
