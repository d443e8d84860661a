"""Comparison engine: streams float / isolated / cumulative values sample by sample into running sums.

Concat outputs are also measured per input part (qdebug.graph.parts), so a destroyed score part is not
hidden by a healthy box part in one per-tensor number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from qdebug.graph.model import ModelGraph
from qdebug.graph.parts import PartSpec, resolve_parts
from qdebug.metrics.stats import Metrics, TensorStats, XStats
from qdebug.workers import WORKERS, pool

# the sums are memory-bound, so a second thread helps (0.12 -> 0.08-0.09 s per image of the benchmark model
# on 2 cores) and more than a few do not: one share of the tensors per shared worker thread
METRIC_THREADS = WORKERS


@dataclass
class Pending:
    """A sample whose metric sums are being added on worker threads (see CompareAccumulator.submit)."""

    sample: str
    order: list[str]
    compared: list[str]
    futures: list[Future]


class CompareAccumulator:
    """Running metrics for cumulative and isolated errors of every tensor and Concat part."""

    def __init__(self, g: ModelGraph, tensors: Sequence[str], iso_map: dict[str, str],
                 parts: dict[str, list[PartSpec]]) -> None:
        self.g = g
        self.tensors = list(tensors)
        self.iso_map = iso_map
        self.parts = parts
        self.cum = {t: TensorStats() for t in self.tensors}
        self.iso = {t: TensorStats() for t in self.tensors}
        self.part_cum = {(t, s.name): TensorStats() for t, ss in parts.items() for s in ss}
        self.part_iso = {(t, s.name): TensorStats() for t, ss in parts.items() for s in ss}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.nonfinite_quant: list[str] = []
        self.nonfinite_float: list[str] = []  # float tensors holding NaN/Inf on some sample (not an output)
        self.zero_size: list[str] = []
        self.samples = 0
        self.threads = METRIC_THREADS
        self._resolved = False
        self._held: dict = {}  # tensor or (tensor, part) -> float statistics kept from submit_float for submit_quant

    def _resolve_parts(self, fvals: dict[str, np.ndarray]) -> None:
        resolve_parts(self.g, self.parts, fvals)
        self._resolved = True

    def update(self, fvals: dict[str, np.ndarray], qvals: dict[str, np.ndarray], sample: str = "?") -> None:
        """Add one sample: float run (with isolated twins) and cumulative quantized run."""
        self.collect(self.submit(fvals, qvals, sample))

    def submit(self, fvals: dict[str, np.ndarray], qvals: dict[str, np.ndarray], sample: str = "?") -> Pending:
        """Start adding one sample on the shared worker threads; `collect` finishes it (in sample order).

        Tensors are independent, so they are spread over `self.threads` shares, largest first (numpy
        releases the GIL). The caller may run other work (the next sample's sessions) meanwhile.
        """
        return self._submit(fvals, qvals, sample, True, True)

    def submit_float(self, fvals: dict[str, np.ndarray], sample: str = "?") -> Pending:
        """First half of a sample whose runs are not held at once: the float statistics and isolated errors
        (the float tensors' statistics are kept for `submit_quant`). Collect it before the second half;
        the two halves add exactly what `submit` adds."""
        return self._submit(fvals, {}, sample, True, False)

    def submit_quant(self, fvals: dict[str, np.ndarray], qvals: dict[str, np.ndarray], sample: str = "?") -> Pending:
        """Second half (after `submit_float` of the same sample was collected): the cumulative errors."""
        return self._submit(fvals, qvals, sample, False, True)

    def _submit(self, fvals: dict[str, np.ndarray], qvals: dict[str, np.ndarray], sample: str, iso: bool,
                cum: bool) -> Pending:
        if not self._resolved:
            self._resolve_parts(fvals)
        if iso:
            self.samples += 1
        work: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]] = []
        for t in self.tensors:
            x = fvals.get(t)
            if x is None:
                continue
            if x.size == 0:
                if iso and t not in self.zero_size:
                    self.zero_size.append(t)
                continue
            self.shapes.setdefault(t, tuple(x.shape))
            iso_name = self.iso_map.get(t) if iso else None
            work.append((t, x, qvals.get(t) if cum else None, fvals.get(iso_name) if iso_name else None))
        if self.threads <= 1 or len(work) < 2:
            shares = [work]
        else:
            loads = [0] * self.threads
            shares = [[] for _ in range(self.threads)]
            for item in sorted(work, key=lambda w: -w[1].size):  # the big tensors dominate the time
                k = loads.index(min(loads))
                shares[k].append(item)
                loads[k] += item[1].size
        futures = [pool().submit(self._update_many, share, iso, cum) for share in shares if share]
        return Pending(sample, [t for t, *_ in work], [t for t, _, y, _ in work if y is not None], futures)

    def collect(self, pending: Pending) -> None:
        """Wait for a submitted sample. The float tensors' min/max, computed anyway, double as the NaN/Inf
        check: when a graph output holds one, the first float tensor in topological order holding one raises
        the graph's one-line error."""
        bad = dict(b for f in pending.futures for b in f.result())
        if bad and any(o.name in bad for o in self.g.outputs):
            first = next(t for t in pending.order if t in bad)
            raise self.g.nonfinite_error(first, bad[first], pending.sample)
        # NaN/Inf that never reach an output (-Inf attention masks): that sample is left out of the tensor's sums
        self.nonfinite_float.extend(t for t in pending.order if t in bad and t not in self.nonfinite_float)
        for t in pending.compared:
            if not math.isfinite(self.cum[t].sdd) and t not in self.nonfinite_quant:
                self.nonfinite_quant.append(t)

    def _update_many(self, work: list, iso: bool = True, cum: bool = True) -> list[tuple[str, str]]:
        """Add a share of tensors; without `cum` the float statistics are kept for the cumulative half, which
        (without `iso`) takes them instead of computing them again, and skips tensors the first half refused."""
        bad = []
        held = self._held
        for t, x, y, yi in work:
            if iso:
                xs = XStats(x)
                if not (math.isfinite(xs.xmin) and math.isfinite(xs.xmax)):
                    bad.append((t, "NaN" if math.isnan(xs.xmin) or math.isnan(xs.xmax) else "Inf"))
                    continue
                if not cum:
                    held[t] = xs
            else:
                xs = held.pop(t, None)
                if xs is None:  # NaN/Inf in the float tensor: left out of this sample's sums
                    continue
            if y is not None:
                self.cum[t].update(x, y, xs)
            if iso:
                if yi is not None:
                    self.iso[t].update(x, yi, xs)
                else:
                    self.iso[t].update_identical(x, xs)
            for s in self.parts.get(t, []):
                if s.stop <= s.start:
                    continue
                xp = s.slice(x)
                xps = XStats(xp) if iso else held.pop((t, s.name))
                if iso and not cum:
                    held[(t, s.name)] = xps
                if y is not None:
                    self.part_cum[(t, s.name)].update(xp, s.slice(y), xps)
                if not iso:
                    continue
                if yi is not None:
                    self.part_iso[(t, s.name)].update(xp, s.slice(yi), xps)
                else:
                    self.part_iso[(t, s.name)].update_identical(xp, xps)
        return bad

    def cumulative(self, t: str) -> Metrics:
        return self.cum[t].result()

    def isolated(self, t: str) -> Metrics:
        return self.iso[t].result()

    def float_range(self, t: str) -> tuple[float, float] | None:
        s = self.cum[t]
        return (s.xmin, s.xmax) if s.n else None
