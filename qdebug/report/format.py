"""Number formatting shared by the Markdown/HTML report and the terminal: one rule per kind of value.

`ascii=True` (the terminal) writes a missing value as "-" and an infinite SNR as "inf".
"""

from __future__ import annotations

from typing import Any

from qdebug.results.values import SNR_INF


def _missing(ascii: bool) -> str:
    """The text of a missing value: an en dash, or "-" for plain-ASCII output (the terminal)."""
    return "-" if ascii else "–"


def f_snr(v: float | None, ascii: bool = False) -> str:
    """SNR in dB with one decimal; the 999 sentinel (identical tensors) is shown as ∞ ("inf" with ascii)."""
    if v is None:
        return _missing(ascii)
    if v >= SNR_INF:
        return "inf" if ascii else "∞"
    return f"{v:.1f}"


def f_cos(v: float | None, ascii: bool = False) -> str:
    """Cosine with 5 decimals (6 when 5 would round a non-1 value to 1)."""
    if v is None:
        return _missing(ascii)
    s = f"{v:.5f}"
    if s == "1.00000" and v < 1.0:
        s = f"{v:.6f}"
    return s


def f_g(v: float | None, n: int = 3, ascii: bool = False) -> str:
    """`n` significant digits (max_abs, scales)."""
    if v is None:
        return _missing(ascii)
    return f"{v:.{n}g}"


def f_jump(v: float | None, ascii: bool = False) -> str:
    """Signed dB lost at an op, one decimal."""
    return _missing(ascii) if v is None else f"{v:+.1f}"


def f_metric(metric: str, v: float | None) -> str:
    """A target metric value in that metric's precision."""
    if metric == "snr_db":
        return f_snr(v)
    if metric == "cosine":
        return f_cos(v)
    if v is not None and metric.startswith(("map", "recall", "lost_frac")):  # detection task metrics
        return f"{v:.3f}"
    return f_g(v, 4)


def f_bound(op: str, bound: float) -> str:
    """`≥ 0.999` style bound text."""
    sym = {">=": "≥", ">": ">", "<=": "≤", "<": "<"}.get(op, op)
    return f"{sym} {bound:g}"


def f_secs(v: float | None) -> str:
    return "–" if v is None else (f"{v:.2f} s" if v < 10 else f"{v:.0f} s")


def num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


MAP_FINE, MAP_BROKEN = 0.9, 0.7  # mAP50-95 vs float: at or above FINE is fine, below BROKEN is broken


def map_grade(v: Any) -> str:
    """"good", "bad" or "" for an mAP50-95 against the float detections (the report and terminal colours)."""
    x = num(v)
    if x is None:
        return ""
    return "good" if x >= MAP_FINE else "bad" if x < MAP_BROKEN else ""


def f_det(v: Any, spec: str = ".3f", ascii: bool = False) -> str:
    """A detection metric (mAP, recall, IoU) or "–"."""
    x = num(v)
    return _missing(ascii) if x is None else format(x, spec)


def f_pct(v: Any) -> str:
    """A fraction as a whole percentage ("<1%" for a small non-zero one)."""
    x = num(v)
    if x is None:
        return "–"
    if 0 < x < 0.005:
        return "<1%"
    return f"{100 * x:.0f}%"


