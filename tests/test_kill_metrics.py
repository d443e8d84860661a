"""Mutation-audit kills for the streaming metrics, against values derived by hand (docs/metrics.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qdebug.metrics.stats import TensorStats, metrics_from_sums


def _m(x, y):
    s = TensorStats()
    s.update(np.asarray(x, np.float32), np.asarray(y, np.float32))
    return s.result()


def test_hand_derived_values():
    # x = (3, 4), y = (3, 3): |x|^2 = 25, |y|^2 = 18, |x-y|^2 = 1, <x,y> = 21
    m = _m([3, 4], [3, 3])
    assert m.snr_db == pytest.approx(10 * math.log10(25.0), abs=1e-9)
    assert m.rel_l2 == pytest.approx(0.2, abs=1e-12)
    assert m.max_abs == 1.0
    assert m.cosine == pytest.approx(21 / (5 * math.sqrt(18)), abs=1e-12)


def test_max_abs_counts_negative_differences():
    assert _m([1, -2], [1, 0]).max_abs == 2.0


def test_zero_and_identical_tensors():
    z = _m([0, 0], [0, 0])
    assert (z.cosine, z.snr_db, z.rel_l2) == (1.0, 999.0, 0.0)
    s = TensorStats()
    s.update_identical(np.array([1.0, -2.0], np.float32))
    r = s.result()
    assert (r.cosine, r.snr_db, r.rel_l2) == (1.0, 999.0, 0.0)


def test_sums_over_samples():
    # two samples: x = (1, 0), y = (1, 1) then x = (0, 2), y = (0, 2): |x|^2 = 5, |x-y|^2 = 1, |y|^2 = 6
    s = TensorStats()
    s.update(np.array([1, 0], np.float32), np.array([1, 1], np.float32))
    s.update(np.array([0, 2], np.float32), np.array([0, 2], np.float32))
    r = s.result()
    assert r.snr_db == pytest.approx(10 * math.log10(5.0), abs=1e-9)
    assert r.cosine == pytest.approx(5 / (math.sqrt(5) * math.sqrt(6)), abs=1e-12)


def test_infinite_error_is_undefined():
    r = _m([1, 2], [1, np.inf])
    assert r.snr_db is None and r.cosine is None and r.rel_l2 is None


def test_sums_past_float_range_are_undefined():
    # |x|^2 and |y|^2 finite but |x-y|^2 overflowed: every ratio is undefined, max_abs is kept
    r = metrics_from_sums(5.0, 5.0, 0.0, math.inf, 1.0)
    assert (r.cosine, r.snr_db, r.max_abs, r.rel_l2) == (None, None, 1.0, None)
