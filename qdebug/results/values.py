"""Plain result values shared by every layer: the four metrics of one tensor, the SNR sentinel, JSON numbers.

They sit on the ground floor so metrics (which computes them), search, report and CLI (which read them)
share one definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SNR_INF = 999.0  # JSON sentinel for "identical" (infinite SNR); see docs/metrics.md


@dataclass
class Metrics:
    """Final metric values for one tensor (None where undefined, see docs/metrics.md)."""

    cosine: float | None
    snr_db: float | None
    max_abs: float | None
    rel_l2: float | None

    def to_json(self) -> dict:
        return {"cosine": _r(self.cosine, 7), "snr_db": _r(self.snr_db, 3), "max_abs": _r(self.max_abs, 6, g=True),
                "rel_l2": _r(self.rel_l2, 6, g=True)}

    @classmethod
    def from_json(cls, d: dict) -> Metrics:
        return cls(d.get("cosine"), d.get("snr_db"), d.get("max_abs"), d.get("rel_l2"))

    def get(self, name: str) -> float | None:
        return getattr(self, name)


def json_float(v: float | None) -> float | None:
    """A JSON-safe number with 6 significant digits (None for missing, NaN or infinite)."""
    if v is None or not math.isfinite(v):
        return None
    return float(f"{v:.6g}")


def _r(v: float | None, nd: int, g: bool = False) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return float(f"{v:.{nd}g}") if g else round(float(v), nd)


def finite_json(doc: object) -> tuple[object, int]:
    """`doc` with every NaN/Inf float replaced by None (JSON has no such numbers), and how many were replaced."""
    count = 0

    def walk(v: object) -> object:
        nonlocal count
        if isinstance(v, float) and not math.isfinite(v):
            count += 1
            return None
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [walk(x) for x in v]
        return v

    return walk(doc), count
