"""Streaming error metrics between a float tensor x and its quantized counterpart y.

Definitions (docs/metrics.md): over all elements of all samples,
cosine = <x,y>/(|x||y|), SNR_dB = 10 log10(sum x^2 / sum (x-y)^2), max_abs = max|x-y|,
rel_l2 = |x-y|/|x|. Only running sums are kept, never the activations.
"""

from __future__ import annotations

import math

import numpy as np

from qdebug.results.values import SNR_INF, Metrics, json_float  # noqa: F401  (re-exported)


class XStats:
    """Statistics of one float sample computed once and shared by every comparison against it."""

    __slots__ = ("flat", "sxx", "xmin", "xmax")

    def __init__(self, x: np.ndarray) -> None:
        self.flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        self.sxx = float(np.dot(self.flat, self.flat)) if self.flat.size else 0.0
        self.xmin = float(self.flat.min()) if self.flat.size else math.inf
        self.xmax = float(self.flat.max()) if self.flat.size else -math.inf


class TensorStats:
    """Running sums for one tensor pair; update() per sample, result() at the end."""

    __slots__ = ("n", "sxx", "syy", "sdd", "max_abs", "xmin", "xmax")

    def __init__(self) -> None:
        self.n = 0
        self.sxx = self.syy = self.sdd = 0.0
        self.max_abs = 0.0
        self.xmin = math.inf
        self.xmax = -math.inf

    def update(self, x: np.ndarray, y: np.ndarray, xs: XStats | None = None) -> None:
        """Add one sample (any shape; flattened). Shapes must agree.

        Per-sample sums use float32 BLAS dot products (fast) and are accumulated across samples in
        float64; <x,y> is derived from |x|², |y|² and |x−y|², and cosine from the difference sum in a
        cancellation-free form (see metrics_from_sums). `xs` reuses the float tensor's own statistics
        when the same x is compared several times (cumulative, isolated, parts).
        """
        if x.shape != y.shape:
            raise ValueError(f"shape mismatch {x.shape} vs {y.shape}")
        if x.size == 0:
            return
        xs = xs or XStats(x)
        yf = np.ascontiguousarray(y, dtype=np.float32).reshape(-1)
        d = xs.flat - yf
        self.add_sums(yf.size, xs.sxx, float(np.dot(yf, yf)), float(np.dot(d, d)),
                      max(float(d.max()), -float(d.min())), xs.xmin, xs.xmax)

    def add_sums(self, n: int, sxx: float, syy: float, sdd: float, max_abs: float | None,
                 xmin: float, xmax: float) -> None:
        """Add one sample given as its sums (n elements, |x|², |y|², |x−y|², max|x−y| or None when y is x,
        float min/max): the form both the array path and the in-graph path (metrics.fused) produce."""
        self.n += n
        self.sxx += sxx
        self.syy += syy
        self.sdd += sdd
        if max_abs is not None and (max_abs > self.max_abs or math.isnan(max_abs)):
            self.max_abs = max_abs
        self.xmin = min(self.xmin, xmin)
        self.xmax = max(self.xmax, xmax)

    def update_identical(self, x: np.ndarray, xs: XStats | None = None) -> None:
        """Add a sample where the quantized value equals the float one (no own quantization)."""
        if x.size == 0:
            return
        xs = xs or XStats(x)
        self.add_sums(x.size, xs.sxx, xs.sxx, 0.0, None, xs.xmin, xs.xmax)

    def result(self) -> Metrics:
        if self.n == 0:
            return Metrics(None, None, None, None)
        # <x,y> = (|x|² + |y|² − |x−y|²) / 2, so it is derived rather than accumulated
        return metrics_from_sums(self.sxx, self.syy, (self.sxx + self.syy - self.sdd) / 2.0, self.sdd,
                                 self.max_abs)


def metrics_from_sums(sxx: float, syy: float, sxy: float, sdd: float, max_abs: float) -> Metrics:
    """Metric values from the running sums, with the zero-vector conventions of docs/metrics.md."""
    if not (math.isfinite(sxx) and math.isfinite(syy) and math.isfinite(sdd)):
        # NaN/Inf in the quantized run (or sums past float range): undefined, shown as null with a warning
        return Metrics(None, None, max_abs if math.isfinite(max_abs) else None, None)
    if sxx == 0.0 and syy == 0.0:
        cos = 1.0
    elif sxx == 0.0 or syy == 0.0:
        cos = 0.0
    else:
        # cos = <x,y>/(|x||y|) = 1 - (|x-y|^2 - (|x|-|y|)^2) / (2|x||y|): no cancellation near cos = 1
        nx, ny = math.sqrt(sxx), math.sqrt(syy)
        one_minus = (sdd - (nx - ny) ** 2) / (2.0 * nx * ny)
        cos = 1.0 - one_minus if one_minus < 1e-3 else sxy / (nx * ny)
        cos = max(-1.0, min(1.0, cos))
    if sdd == 0.0:
        snr = SNR_INF
    elif sxx == 0.0:
        snr = None
    else:
        snr = min(SNR_INF, 10.0 * math.log10(sxx / sdd))
    if sxx == 0.0:
        rel = 0.0 if sdd == 0.0 else None
    else:
        rel = math.sqrt(sdd / sxx)
    return Metrics(cos, snr, max_abs, rel)


def compute_metrics(x: np.ndarray, y: np.ndarray) -> Metrics:
    """One-shot metrics of two arrays (reference implementation used by tests and small callers)."""
    s = TensorStats()
    s.update(x, y)
    return s.result()
