"""Activation calibrators (one interface, several methods), fed one float sample at a time.

MinMax needs one pass; Percentile and MSE need a second pass that fills a fixed-range histogram
built from the first pass's min/max. All state is per-tensor running data, never the activations.
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


CALIBRATORS = {"minmax": MinMaxCalibrator, "percentile": PercentileCalibrator, "mse": MSECalibrator}


def make_calibrator(name: str, percentile: float = 99.99) -> Calibrator:
    """Build a calibrator by name."""
    if name not in CALIBRATORS:
        raise QDebugError(f"unknown calibrator '{name}'", where="--calibrator",
                          fix=f"use one of: {', '.join(CALIBRATORS)}")
    if name == "percentile":
        return PercentileCalibrator(percentile)
    return CALIBRATORS[name]()
