"""Metric definitions checked against hand-derived values and independent numpy formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qdebug.metrics.stats import SNR_INF, TensorStats, compute_metrics


def test_hand_derived_values():
    x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    y = np.array([1.0, 2.0, 4.0], dtype=np.float32)
    m = compute_metrics(x, y)
    # sum x^2 = 14, sum (x-y)^2 = 1, <x,y> = 17, |y|^2 = 21
    assert m.snr_db == pytest.approx(10 * math.log10(14.0))
    assert m.cosine == pytest.approx(17 / math.sqrt(14 * 21))
    assert m.max_abs == pytest.approx(1.0)
    assert m.rel_l2 == pytest.approx(1 / math.sqrt(14))


def test_zero_vector_conventions():
    z = np.zeros(4, dtype=np.float32)
    one = np.ones(4, dtype=np.float32)
    both = compute_metrics(z, z)
    assert both.cosine == 1.0 and both.snr_db == SNR_INF and both.rel_l2 == 0.0 and both.max_abs == 0.0
    zx = compute_metrics(z, one)  # float is zero, quantized is not: SNR and rel_l2 undefined
    assert zx.cosine == 0.0 and zx.snr_db is None and zx.rel_l2 is None
    zy = compute_metrics(one, z)  # quantized crushed to zero: 0 dB, cosine 0
    assert zy.cosine == 0.0 and zy.snr_db == pytest.approx(0.0) and zy.rel_l2 == pytest.approx(1.0)
    ident = compute_metrics(one, one)
    assert ident.snr_db == SNR_INF and ident.cosine == pytest.approx(1.0)


def test_streaming_equals_one_shot_on_concatenated_samples():
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(3, 5, 7)).astype(np.float32) for _ in range(6)]
    ys = [x + rng.normal(scale=0.05, size=x.shape).astype(np.float32) for x in xs]
    s = TensorStats()
    for x, y in zip(xs, ys, strict=True):
        s.update(x, y)
    X = np.concatenate([x.ravel() for x in xs]).astype(np.float64)
    Y = np.concatenate([y.ravel() for y in ys]).astype(np.float64)
    m = s.result()
    assert m.snr_db == pytest.approx(10 * np.log10((X**2).sum() / ((X - Y) ** 2).sum()), rel=1e-6)
    assert 1 - m.cosine == pytest.approx(1 - X @ Y / np.linalg.norm(X) / np.linalg.norm(Y), rel=1e-4)
    assert m.max_abs == pytest.approx(np.abs(X - Y).max())
    assert m.rel_l2 == pytest.approx(np.linalg.norm(X - Y) / np.linalg.norm(X))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        TensorStats().update(np.zeros(3), np.zeros(4))


def test_json_is_nan_free():
    m = compute_metrics(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))
    d = m.to_json()
    assert all(v is None or math.isfinite(v) for v in d.values())


def test_cosine_precise_near_one():
    """1 - cosine is resolved even when it is far below float32 resolution of the sums."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=200_000).astype(np.float32)
    y = (x + rng.normal(scale=1e-3, size=x.size)).astype(np.float32)
    X, Y = x.astype(np.float64), y.astype(np.float64)
    ref = 1 - X @ Y / np.linalg.norm(X) / np.linalg.norm(Y)
    m = compute_metrics(x, y)
    assert 1 - m.cosine == pytest.approx(ref, rel=1e-3)
