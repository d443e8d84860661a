"""Mutation-audit kills for the calibrators: percentile edges to the bin, MSE really searching, MinMax.

References are derived by hand or computed here with numpy's own histogram, never with qdebug's helpers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from qdebug.quant.calibrate import MinMaxCalibrator, MSECalibrator, PercentileCalibrator


def _feed(cal, xs: list[np.ndarray], name: str = "t") -> None:
    for p in range(cal.passes):
        for x in xs:
            cal.observe(p, name, x)


def test_percentile_edges_hand_derived():
    # 0..2048 in steps of 1: range [0, 2048] cut into 2048 bins of width 1; value k falls in bin k
    # (2048 itself in the last bin), so the cdf after bin i is (i+1)/2049 (the last bin holds 2).
    # p = 90: tails of 5 %: first bin with cdf >= 0.05 is i = 102 (103/2049 = 0.0503) -> lo = 102;
    # first bin with cdf >= 0.95 is i = 1946 (1947/2049 = 0.9502) -> hi = its upper edge 1947.
    x = np.arange(2049, dtype=np.float32)
    cal = PercentileCalibrator(90.0)
    _feed(cal, [x[:1000], x[1000:]])
    lo, hi = cal.ranges()["t"]
    assert lo == pytest.approx(102.0, abs=1e-9)
    assert hi == pytest.approx(1947.0, abs=1e-9)


def test_percentile_matches_an_independent_histogram():
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal(5000).astype(np.float32) * 3 for _ in range(3)]
    cal = PercentileCalibrator(99.0)
    _feed(cal, xs)
    got = cal.ranges()["t"]
    allx = np.concatenate(xs).astype(np.float64)
    lo0, hi0 = float(allx.min()), float(allx.max())
    counts, edges = np.histogram(allx, bins=2048, range=(lo0, hi0))
    frac = np.cumsum(counts) / counts.sum()
    tail = 0.005
    i_lo = next(i for i, f in enumerate(frac) if f >= tail)
    i_hi = next(i for i, f in enumerate(frac) if f >= 1 - tail)
    assert got[0] == pytest.approx(edges[i_lo], abs=1e-9)
    assert got[1] == pytest.approx(edges[i_hi + 1], abs=1e-9)
    # and the clipped range brackets numpy's own percentiles to within one bin
    width = (hi0 - lo0) / 2048
    assert abs(got[0] - np.percentile(allx, 0.5)) <= width
    assert abs(got[1] - np.percentile(allx, 99.5)) <= width


def test_mse_shrinks_a_range_dominated_by_one_outlier():
    rng = np.random.default_rng(1)
    body = rng.uniform(0.0, 1.0, 200000).astype(np.float32)
    xs = [body, np.array([20.0], np.float32)]
    cal = MSECalibrator()
    _feed(cal, xs)
    lo, hi = cal.ranges(8)["t"]
    # independent search over the same shrink factors, on numpy's histogram of the data
    allx = np.concatenate(xs).astype(np.float64)
    mn, mx = float(allx.min()), float(allx.max())
    counts, edges = np.histogram(allx, bins=2048, range=(mn, mx))
    centers = (edges[:-1] + edges[1:]) / 2
    best, best_err = None, math.inf
    for f in np.linspace(0.3, 1.0, 36):
        a, b = min(mn, 0.0) * f, max(mx, 0.0) * f
        step = (b - a) / 255
        err = float(np.sum(counts * ((centers - np.clip(centers, a, b)) ** 2 + step * step / 12)))
        if err < best_err:
            best, best_err = (a, b), err
    assert (lo, hi) == pytest.approx(best, rel=1e-9)
    assert hi <= 0.8 * mx + 1e-9  # min/max would keep 20; hand check: hi=16 costs 16 + 65.6 < 102.6 at hi=20


def test_mse_keeps_the_full_range_of_uniform_data():
    # uniform data has no tail worth clipping: factor 1.0 wins
    x = np.linspace(-4.0, 4.0, 4001).astype(np.float32)
    cal = MSECalibrator()
    _feed(cal, [x])
    assert cal.ranges(8)["t"] == pytest.approx((-4.0, 4.0), rel=1e-9)


def test_minmax_is_the_running_extremes():
    cal = MinMaxCalibrator()
    _feed(cal, [np.array([1.0, 2.0], np.float32), np.array([-3.0, 0.5], np.float32)])
    assert cal.ranges() == {"t": (-3.0, 2.0)}
