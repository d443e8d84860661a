"""Calibration remedy: a range method (or clipping threshold) chosen per tensor, written as QuantConfig.act_params.

For each quantization point of the candidate ops, two float passes over the calibration samples build a
histogram; every method (minmax, percentile at several thresholds, mse, entropy) proposes a range and
the one with the smallest expected quantization error of that tensor (clipping + rounding, from the
histogram) wins. No evaluation is spent per tensor: the remedy search judges whole variants.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from qdebug.graph.fusion import QuantOp
from qdebug.graph.model import ModelGraph
from qdebug.quant.calibrate import BINS, CALIBRATORS, Calibrator, PercentileCalibrator
from qdebug.quant.profiles import Profile
from qdebug.quant.scheme import QParams, QuantConfig, fake_quant, params_from_range
from qdebug.runners.session import OrtSession

PERCENTILES = (99.9, 99.99, 99.999)  # clipping thresholds tried besides the calibrator methods
MIN_GAIN = 0.9  # a tensor changes only when its expected error drops below 90% of the current one


@dataclass
class RangeChoice:
    """One quantization point whose range the remedy changes: method, old and new range, expected errors."""

    key: str  # act_params key: the tensor (output-side profiles) or "op:k" (input-side)
    tensor: str
    op: str
    method: str
    old: tuple[float, float]
    new: tuple[float, float]
    err_old: float
    err_new: float

    def to_json(self) -> dict:
        """The change as written in the remedy's detail."""
        return {"tensor": self.tensor, "op": self.op, "method": self.method,
                "old": [_r(self.old[0]), _r(self.old[1])], "new": [_r(self.new[0]), _r(self.new[1])],
                "expected_error_ratio": _r(self.err_new / self.err_old) if self.err_old > 0 else None}


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def quant_points(ops: Iterable[QuantOp], profile: Profile, keys: Sequence[str]) -> list[tuple[str, str, str]]:
    """(act_params key, tensor, op key) of the activation quantization points of the ops in `keys`, in
    `keys` order; Softmax outputs on a fixed probability grid are not calibrated and are left out."""
    by_key = {op.key: op for op in ops}
    out = []
    for k in keys:
        op = by_key.get(k)
        if op is None or not op.quantizable or op.base_type == "Softmax":
            continue
        if op.kind == "input" or profile.quantize_at == "output":
            out += [(t, t, op.key) for t in op.outputs]
        else:
            out += [(f"{op.key}:{j}", t, op.key) for j, (_, _, t) in enumerate(op.inputs)]
    return out


def collect(graph: ModelGraph, tensors: Sequence[str], samples: Sequence[dict[str, np.ndarray]]) -> Calibrator:
    """Two streamed float passes over `samples`: min/max, then a BINS-bin histogram per tensor."""
    cal = PercentileCalibrator(99.99)
    tensors = list(dict.fromkeys(tensors))
    # basic optimization only: ENABLE_ALL fuses across exposed Split outputs and onnxruntime then rejects the
    # model ("Duplicate definition of name"), seen on a real YOLOv8n
    sess = OrtSession(graph.with_outputs([t for t in tensors if t in graph.producer]), source=graph.path)
    for p in range(2):
        for s in samples:
            vals = {**sess.run(s), **s}
            for t in tensors:
                v = vals.get(t)
                if v is None or v.size == 0 or not np.issubdtype(v.dtype, np.floating):
                    continue
                v = v[np.isfinite(v)]
                if v.size and (p == 0 or t in cal.lo):
                    cal.observe(p, t, v)
    return cal


def method_ranges(cal: Calibrator, bits: int) -> dict[str, dict[str, tuple[float, float]]]:
    """Range per method per tensor from one histogram (every histogram method shares its bins)."""
    out: dict[str, dict[str, tuple[float, float]]] = {t: {"minmax": r} for t, r in cal.minmax().items()}
    methods: list[tuple[str, Calibrator]] = [(f"percentile {p:g}", PercentileCalibrator(p)) for p in PERCENTILES]
    methods += [(name, cls()) for name, cls in CALIBRATORS.items() if name not in ("minmax", "percentile")]
    for name, c in methods:
        c.lo, c.hi, c.hist = cal.lo, cal.hi, cal.hist  # type: ignore[attr-defined]
        c.signed_hist = True  # type: ignore[attr-defined]  (entropy folds the shared [lo, hi] histogram to |x|)
        for t, r in c.ranges(bits).items():
            out.setdefault(t, {})[name] = r
    return out


def expected_error(cal: Calibrator, tensor: str, p: QParams) -> float:
    """Mean squared error of quantizing the tensor's values with `p` (bin centers weighted by counts)."""
    h = cal.hist.get(tensor)  # type: ignore[attr-defined]
    if h is None or h.sum() == 0:
        return 0.0
    edges = np.linspace(cal.lo[tensor], cal.hi[tensor], BINS + 1)
    c = (edges[:-1] + edges[1:]) / 2
    q = fake_quant(c, p)
    return float(np.sum(h * (c - q) ** 2) / h.sum())


def choose(graph: ModelGraph, points: Sequence[tuple[str, str, str]], base: QuantConfig,
           current: dict[str, tuple[float, float]], samples: Sequence[dict[str, np.ndarray]],
           ) -> tuple[list[RangeChoice], list[RangeChoice], list[RangeChoice]]:
    """(best, unclipped, wide): per point the method with the smallest expected error, and per point the plain
    min/max range where the current range clips (best and unclipped keep only points whose 8-bit error drops
    enough); `wide` is the min/max range of every point, whatever the 8-bit error: the range a promoted
    (int16) op takes, where rounding no longer argues for clipping."""
    bits = base.scheme.activation.bits or 8
    sym = base.scheme.symmetric_activations
    cal = collect(graph, [t for _, t, _ in points], samples)
    ranges = method_ranges(cal, bits)
    best, unclipped, wide = [], [], []
    for key, t, op in points:
        if t not in ranges or t not in cal.lo:
            continue
        pinned = base.act_params.get(key)
        if pinned is not None and pinned.scale.size == 1:
            lo0, hi0 = (float(x[0]) for x in pinned.range())
            p_old = pinned
        elif t in current:
            lo0, hi0 = current[t]
            p_old = params_from_range(lo0, hi0, bits, symmetric=sym)
        else:
            continue
        e_old = expected_error(cal, t, p_old)
        scored = []
        for m, (lo, hi) in ranges[t].items():
            scored.append((expected_error(cal, t, params_from_range(lo, hi, bits, symmetric=sym)), m, (lo, hi)))
        scored.sort(key=lambda x: (x[0], x[1]))
        e, m, r = scored[0]
        if e < MIN_GAIN * e_old:
            best.append(RangeChoice(key, t, op, m, (lo0, hi0), r, e_old, e))
        mm = ranges[t]["minmax"]
        clips = mm[0] < lo0 - 1e-6 * (abs(lo0) + 1) or mm[1] > hi0 + 1e-6 * (abs(hi0) + 1)
        e_mm = expected_error(cal, t, params_from_range(mm[0], mm[1], bits, symmetric=sym))
        if clips and e_mm < MIN_GAIN * e_old:
            unclipped.append(RangeChoice(key, t, op, "minmax", (lo0, hi0), mm, e_old, e_mm))
        # every point: a promoted op also drops a clipping range the calibration remedy may have chosen
        wide.append(RangeChoice(key, t, op, "minmax (16-bit)", (lo0, hi0), mm, e_old, e_mm))
    order = {p[0]: i for i, p in enumerate(points)}
    for lst in (best, unclipped):  # largest relative error drop first, then the op's sensitivity rank
        lst.sort(key=lambda c: (-math.log(max(c.err_old, 1e-30) / max(c.err_new, 1e-30)), order[c.key]))
    return best, unclipped, wide


def apply(base: QuantConfig, choices: Sequence[RangeChoice], bits: int | None = None) -> QuantConfig:
    """`base` with the chosen ranges pinned as activation parameters (at `bits`, default the scheme's
    activation bits; promoted ops' ranges at 16, so no 8-bit grid rounding narrows them)."""
    if not choices:
        return base
    bits = bits or base.scheme.activation.bits or 8
    sym = base.scheme.symmetric_activations
    act = dict(base.act_params)
    for c in choices:
        act[c.key] = params_from_range(c.new[0], c.new[1], bits, symmetric=sym)
    return replace(base, act_params=act)
