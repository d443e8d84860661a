"""Quantization parameters, fake quantization and calibrators against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from qdebug.quant.calibrate import MinMaxCalibrator, MSECalibrator, PercentileCalibrator
from qdebug.quant.scheme import Precision, fake_quant, params_from_range


def test_asymmetric_int8_params_hand_derived():
    p = params_from_range(0.0, 2.55, 8, symmetric=False)
    assert p.scale[0] == pytest.approx(0.01)
    assert p.zero_point[0] == -128
    x = np.array([0.0, 0.004, 0.006, 1.234, 2.55, 3.0], dtype=np.float32)
    # round(x / 0.01) clipped to 0..255 steps above the minimum, times 0.01
    expect = np.array([0.0, 0.0, 0.01, 1.23, 2.55, 2.55], dtype=np.float32)
    np.testing.assert_allclose(fake_quant(x, p), expect, atol=1e-6)


def test_symmetric_per_channel_weights():
    w = np.array([[1.0, -0.5], [0.1, 0.05]], dtype=np.float32)
    p = params_from_range(w.min(axis=1), w.max(axis=1), 8, symmetric=True, axis=0)
    np.testing.assert_allclose(p.scale, [1.0 / 127, 0.1 / 127])
    assert (p.zero_point == 0).all() and p.qmin == -127
    q = fake_quant(w, p)
    np.testing.assert_allclose(q[0], [1.0, round(-0.5 * 127) / 127], rtol=1e-6)
    np.testing.assert_allclose(q[1], [0.1, round(0.05 / (0.1 / 127)) * 0.1 / 127], rtol=1e-6)


def test_with_bits_keeps_range_and_refines_step():
    p8 = params_from_range(-1.0, 3.0, 8, symmetric=False)
    p16 = p8.with_bits(16)
    lo8, hi8 = p8.range()
    lo16, hi16 = p16.range()
    assert lo16[0] == pytest.approx(lo8[0], abs=p16.scale[0])
    assert hi16[0] == pytest.approx(hi8[0], abs=p16.scale[0])
    assert p16.scale[0] == pytest.approx(4.0 / 65535)


def test_precision_parse_and_order():
    assert Precision.parse("S16") is Precision.INT16
    assert Precision.parse("float16") is Precision.FP16
    assert Precision.INT8.rank < Precision.INT16.rank < Precision.FP16.rank < Precision.FP32.rank
    with pytest.raises(ValueError):
        Precision.parse("int7")


def _feed(cal, data):
    for pass_idx in range(cal.passes):
        for chunk in np.array_split(data, 5):
            cal.observe(pass_idx, "t", chunk)


def test_calibrators_against_numpy():
    rng = np.random.default_rng(1)
    data = np.concatenate([rng.normal(size=20000), [40.0, -35.0]]).astype(np.float32)
    mm = MinMaxCalibrator()
    _feed(mm, data)
    assert mm.ranges()["t"] == (pytest.approx(-35.0), pytest.approx(40.0))
    pc = PercentileCalibrator(99.9)
    _feed(pc, data)
    lo, hi = pc.ranges()["t"]
    bin_w = 75.0 / 2048
    assert lo == pytest.approx(np.percentile(data, 0.05), abs=2 * bin_w)
    assert hi == pytest.approx(np.percentile(data, 99.95), abs=2 * bin_w)
    ms = MSECalibrator()
    _feed(ms, data)
    lo, hi = ms.ranges()["t"]
    assert -35.0 <= lo < -5 and 5 < hi <= 40.0  # outliers clipped, bulk kept

