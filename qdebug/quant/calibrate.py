"""Activation calibrators (one interface, several methods), fed one float sample at a time.

MinMax needs one pass; Percentile, MSE and Entropy (KL threshold) need a second pass that fills a
fixed-range histogram built from the first pass's min/max. All state is per-tensor running data, never the activations.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from qdebug.errors import QDebugError

BINS = 2048


class Calibrator(ABC):
    """Collects statistics of float activations and returns a clipping range per tensor."""

    name = "?"
    passes = 1

    def __init__(self) -> None:
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}

    def observe(self, pass_idx: int, tensor: str, x: np.ndarray) -> None:
        """Feed one sample's value of `tensor` during pass `pass_idx`."""
        if x.size == 0:
            return
        if pass_idx == 0:
            self.observe_range(tensor, float(np.min(x)), float(np.max(x)))
        else:
            self.observe_hist(tensor, x)

    def observe_range(self, tensor: str, mn: float, mx: float) -> None:
        """First-pass update from one sample's min and max (when the caller already has them)."""
        self.lo[tensor] = min(self.lo.get(tensor, math.inf), mn)
        self.hi[tensor] = max(self.hi.get(tensor, -math.inf), mx)

    def observe_hist(self, tensor: str, x: np.ndarray) -> None:
        """Second-pass update (histogram methods); MinMax has no second pass."""
        self.add_hist(tensor, self.histogram(tensor, x))

    def histogram(self, tensor: str, x: np.ndarray) -> np.ndarray | None:
        """One sample's second-pass counts; reads only first-pass state, so worker threads may call it."""
        return None

    def add_hist(self, tensor: str, h: np.ndarray | None) -> None:  # noqa: B027  (only histogram methods)
        """Add counts from `histogram` (in the caller's thread)."""

    def minmax(self) -> dict[str, tuple[float, float]]:
        return {t: (self.lo[t], self.hi[t]) for t in self.lo}

    @abstractmethod
    def ranges(self, bits: int = 8) -> dict[str, tuple[float, float]]:
        """Final (lo, hi) clipping range per tensor."""


class MinMaxCalibrator(Calibrator):
    """The observed min and max (RKNN 'normal', ATC default)."""

    name = "minmax"

    def ranges(self, bits: int = 8) -> dict[str, tuple[float, float]]:
        return self.minmax()


class _HistCalibrator(Calibrator):
    passes = 2

    def __init__(self) -> None:
        super().__init__()
        self.hist: dict[str, np.ndarray] = {}

    def histogram(self, tensor: str, x: np.ndarray) -> np.ndarray | None:
        lo, hi = self.lo[tensor], self.hi[tensor]
        if hi <= lo:
            return None
        return np.histogram(x, bins=BINS, range=(lo, hi))[0]

    def add_hist(self, tensor: str, h: np.ndarray | None) -> None:
        if h is None:
            return
        if tensor in self.hist:
            self.hist[tensor] += h
        else:
            self.hist[tensor] = h.astype(np.int64)

    def _edges(self, tensor: str) -> np.ndarray:
        return np.linspace(self.lo[tensor], self.hi[tensor], BINS + 1)


class PercentileCalibrator(_HistCalibrator):
    """Clip each tail at (100 - p)/2 percent of the values (p = 99.99 keeps all but 0.01%)."""

    name = "percentile"

    def __init__(self, percentile: float = 99.99) -> None:
        super().__init__()
        if not 50.0 < percentile <= 100.0:
            raise QDebugError(f"percentile {percentile} out of range", where="--percentile",
                              fix="use a value in (50, 100], e.g. 99.99")
        self.percentile = percentile

    def ranges(self, bits: int = 8) -> dict[str, tuple[float, float]]:
        out = self.minmax()
        tail = (100.0 - self.percentile) / 200.0
        for t, h in self.hist.items():
            cdf = np.cumsum(h) / max(1, h.sum())
            edges = self._edges(t)
            i_lo = int(np.searchsorted(cdf, tail, side="left"))
            i_hi = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
            out[t] = (float(edges[i_lo]), float(edges[min(i_hi + 1, BINS)]))
        return out


class MSECalibrator(_HistCalibrator):
    """Choose the range shrink factor that minimizes expected quantization MSE (clip + rounding)."""

    name = "mse"

    def ranges(self, bits: int = 8) -> dict[str, tuple[float, float]]:
        out = self.minmax()
        levels = 2 ** bits - 1
        for t, h in self.hist.items():
            edges = self._edges(t)
            centers = (edges[:-1] + edges[1:]) / 2
            lo0, hi0 = min(self.lo[t], 0.0), max(self.hi[t], 0.0)
            best, best_err = (lo0, hi0), math.inf
            for f in np.linspace(0.3, 1.0, 36):
                lo, hi = lo0 * f, hi0 * f
                step = (hi - lo) / levels
                if step <= 0:
                    continue
                clipped = np.clip(centers, lo, hi)
                err = float(np.sum(h * ((centers - clipped) ** 2 + step * step / 12.0)))
                if err < best_err:
                    best, best_err = (lo, hi), err
            out[t] = best
        return out


QBINS = 128  # quantized bins of the entropy search (int8: 128 magnitudes)
KL_FLOOR = 1e-10  # Q probability used where Q is empty but P is not (keeps KL finite)


class EntropyCalibrator(_HistCalibrator):
    """KL-divergence threshold (TensorRT's entropy calibration, onnxruntime's `entropy`): the |x| histogram
    (BINS bins over [0, max|x|]) is cut at every i >= QBINS bins, the cut-off mass folded into bin i-1 (P),
    P's first i bins merged into QBINS levels and spread back over the non-empty bins (Q); the threshold is
    the edge (i + 0.5 bins) of the cut with the smallest KL(P || Q). Range: [max(min, -t), min(max, t)]."""

    name = "entropy"

    def histogram(self, tensor: str, x: np.ndarray) -> np.ndarray | None:
        amax = max(abs(self.lo[tensor]), abs(self.hi[tensor]))
        if amax <= 0:
            return None
        return np.histogram(np.abs(x), bins=BINS, range=(0.0, amax))[0]

    def ranges(self, bits: int = 8) -> dict[str, tuple[float, float]]:
        out = self.minmax()
        for t, h in self.hist.items():
            lo, hi = self.lo[t], self.hi[t]
            amax = max(abs(lo), abs(hi))
            if getattr(self, "signed_hist", False):  # a signed [lo, hi] histogram shared by another method
                edges = np.linspace(lo, hi, BINS + 1)
                h = np.histogram(np.abs((edges[:-1] + edges[1:]) / 2), bins=BINS, range=(0.0, amax), weights=h)[0]
            thr = kl_threshold(np.asarray(h, dtype=np.float64), amax, 2 ** (bits - 1))  # int16: no cut
            out[t] = (max(lo, -thr), min(hi, thr))
        return out


def kl_threshold(hist: np.ndarray, amax: float, qbins: int = QBINS) -> float:
    """The |x| threshold minimizing KL(P || Q) over cuts of a BINS-bin |x| histogram on [0, amax]."""
    n = hist.size
    width = amax / n
    if hist.sum() == 0 or n <= qbins:
        return amax
    # an offset tensor (no values near 0, e.g. positive-only [2.7, 23.8]): the cuts start qbins bins past its first
    # non-empty bin, as TensorRT's start qbins bins past 0 for data that begins there; a cut closer to the data
    # folds it into a few bins Q copies exactly (KL 0), a range that clips the data's bulk
    first = int(np.argmax(hist > 0))
    best_i, best_kl = n, math.inf
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    for i in range(qbins + first, n + 1):
        sliced = hist[:i]
        p = sliced.copy()
        p[-1] += tail[i]
        nonzero = p != 0
        merged = i // qbins
        starts = np.arange(qbins) * merged  # reduceat: the last level runs to the end (takes the remainder)
        sums = np.add.reduceat(sliced, starts)
        counts = np.add.reduceat((sliced != 0).astype(np.float64), starts)
        group = np.minimum(np.arange(i) // merged, qbins - 1)  # the last level takes the remainder bins
        per = np.divide(sums, counts, out=np.zeros(qbins), where=counts > 0)
        q = np.where(nonzero, per[group], 0.0)
        if q.sum() <= 0:
            continue
        ps, qs = p[nonzero] / p.sum(), q[nonzero] / q.sum()
        # a non-empty P bin whose Q level is empty (only cut-off mass landed there) costs log(p / KL_FLOOR)
        kl = float(np.sum(ps * np.log(ps / np.maximum(qs, KL_FLOOR))))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return (best_i + 0.5) * width


CALIBRATORS = {"minmax": MinMaxCalibrator, "percentile": PercentileCalibrator, "mse": MSECalibrator,
               "entropy": EntropyCalibrator}


def make_calibrator(name: str, percentile: float = 99.99) -> Calibrator:
    """Build a calibrator by name."""
    if name not in CALIBRATORS:
        raise QDebugError(f"unknown calibrator '{name}'", where="--calibrator",
                          fix=f"use one of: {', '.join(CALIBRATORS)}")
    if name == "percentile":
        return PercentileCalibrator(percentile)
    return CALIBRATORS[name]()
