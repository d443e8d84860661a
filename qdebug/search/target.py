"""Target expressions: what "good enough" means for bisect, e.g. `output0.score:snr_db>=30 and output1:cosine>=0.999`.

A clause is `REF:METRIC OP NUMBER` where REF is a graph output (or any tensor) optionally followed by
`.part` (a Concat input part: `score`, `box`, `part1`...), METRIC is one of snr_db, cosine, max_abs,
rel_l2 (cumulative error), OP is >=, >, <=, <. A clause without `REF:` names a task metric (e.g.
`map50_95_vs_float>=0.95`) that the task evaluator provides (passed to `parse_target`).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from qdebug.errors import QDebugError
from qdebug.graph.model import ModelGraph

METRICS = ("snr_db", "cosine", "max_abs", "rel_l2")
HIGHER_BETTER = {"snr_db": True, "cosine": True, "max_abs": False, "rel_l2": False}
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
DEFAULT_CUT_SNR_DB = 20.0

_CLAUSE = re.compile(r"^\s*(?:(?P<ref>[^:]+?)\s*:\s*)?(?P<metric>[A-Za-z_][\w.]*)\s*(?P<op>>=|<=|>|<)\s*"
                     r"(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Clause:
    """One condition of a target."""

    tensor: str | None  # None for task metrics
    part: str | None
    metric: str
    op: str
    bound: float

    @property
    def ref(self) -> str:
        return self.tensor + (f".{self.part}" if self.part else "") if self.tensor else "task"

    def text(self) -> str:
        head = f"{self.ref}:" if self.tensor else ""
        return f"{head}{self.metric}{self.op}{self.bound:g}"

    def check(self, value: float | None) -> bool:
        """Pass/fail of a measured value (None = undefined = fail, except identical tensors)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return bool(OPS[self.op](value, self.bound))

    def margin(self, value: float | None) -> float:
        """Signed distance to the bound in the metric's better direction (>= 0 passes)."""
        if value is None:
            return -math.inf
        return value - self.bound if self.op in (">=", ">") else self.bound - value


@dataclass(frozen=True)
class Target:
    """A conjunction of clauses, plus whether it was assumed by default."""

    clauses: tuple[Clause, ...]
    assumed: bool = False
    cut: tuple[str, str, float] | None = None  # explicit first-bad-cut threshold

    def text(self) -> str:
        return " and ".join(c.text() for c in self.clauses)

    def tensors(self) -> list[str]:
        return sorted({c.tensor for c in self.clauses if c.tensor})

    def task_metrics(self) -> list[str]:
        return [c.metric for c in self.clauses if c.tensor is None]

    def to_json(self) -> dict:
        return {"expression": self.text(), "assumed_default": self.assumed,
                "cut_threshold": "".join(str(v) for v in self.cut_threshold()),
                "clauses": [{"ref": c.ref, "tensor": c.tensor, "part": c.part, "metric": c.metric, "op": c.op,
                             "bound": c.bound} for c in self.clauses]}

    def cut_threshold(self) -> tuple[str, str, float]:
        """(metric, op, bound) applied to intermediate tensors by the first-bad-cut search.

        The loosest SNR bound of the target when it has one; otherwise 20 dB ("badly damaged"), because
        an output-level cosine bound says little about an intermediate feature map (docs/bisect.md).
        """
        if self.cut is not None:
            return self.cut
        snr = [c.bound for c in self.clauses if c.metric == "snr_db"]
        return ("snr_db", ">=", min(snr)) if snr else ("snr_db", ">=", DEFAULT_CUT_SNR_DB)


def parse_target(expr: str | None, graph: ModelGraph, parts: dict[str, list[str]] | None = None,
                 task_metrics: Mapping[str, bool] | None = None) -> Target:
    """Parse and validate a target against the model's outputs/tensors and Concat parts.

    With no expression, every graph output part (or output without parts) must reach cosine >= 0.999.
    `task_metrics` (name -> higher is better) are the clauses without `REF:` the task evaluator provides.
    """
    parts = parts or {}
    task_metrics = task_metrics or {}
    outputs = [o.name for o in graph.outputs]
    if not expr or not expr.strip():
        clauses = []
        for o in outputs:
            if parts.get(o):
                clauses += [Clause(o, p, "cosine", ">=", 0.999) for p in parts[o]]
            else:
                clauses.append(Clause(o, None, "cosine", ">=", 0.999))
        return Target(tuple(clauses), assumed=True)
    known = set(graph.producer) | {i.name for i in graph.inputs}
    clauses = []
    for raw, ref, metric, op, num in _clauses(expr):
        if ref is None:
            if metric not in task_metrics:
                raise QDebugError(f"'{metric}' is not a task metric and the clause names no output",
                                  where="--target",
                                  fix=f"prefix an output, e.g. {outputs[0]}:{metric}{op}{num:g}"
                                  + (f"; task metrics: {', '.join(task_metrics)}" if task_metrics else
                                     "; task metrics such as map50_95_vs_float need --task"))
            clauses.append(Clause(None, None, metric, op, num))
            continue
        if metric not in METRICS:
            raise QDebugError(f"unknown metric '{metric}' in '{raw}'", where="--target",
                              fix=f"use one of {', '.join(METRICS)}")
        tensor, part = _split_ref(ref.strip(), known, parts)
        if tensor is None:
            raise QDebugError(f"unknown output or tensor '{ref}' in target", where="--target",
                              fix=f"graph outputs are {', '.join(outputs)}"
                              + (f"; parts of {o}: {', '.join(parts[o])}" if (o := outputs[0]) in parts else ""))
        clauses.append(Clause(tensor, part, metric, op, num))
    if not clauses:
        raise QDebugError("empty target", where="--target", fix='e.g. --target "output0:cosine>=0.999"')
    return Target(tuple(clauses))


def _clauses(expr: str) -> Iterator[tuple[str, str | None, str, str, float]]:
    """(clause text, ref, metric, operator, finite bound) of each clause of a target expression."""
    for raw in re.split(r"\s+and\s+|\s*&&\s*|\s*,\s*", expr.strip()):
        if not raw:
            continue
        m = _CLAUSE.match(raw)
        if not m:
            raise QDebugError(f"cannot parse target clause '{raw}'", where="--target",
                              fix='write e.g. "output0.score:snr_db>=30 and output0:cosine>=0.999"')
        yield raw, m.group("ref"), m.group("metric").removeprefix("cumulative."), m.group("op"), \
            _bound(m.group("num"), raw)


def precheck_target(expr: str | None) -> None:
    """Syntax and bounds of a target before any model is loaded (metric and tensor names are checked later).

    None means "the default target"; an empty string is a mistake. A bound no run can reach (cosine above 1,
    a share above 1) is refused: the search would spend every evaluation to report failure.
    """
    if expr is not None and not expr.strip():
        raise QDebugError("empty target", where="--target", fix='e.g. --target "output0:cosine>=0.999", or leave '
                          "--target out for the default")
    for raw, _ref, metric, op, num in _clauses(expr or ""):
        lo, hi = (-1.0, 1.0) if metric == "cosine" else (0.0, 1.0) if _is_share(metric) else (None, None)
        if lo is not None and hi is not None and ((op in (">=", ">") and num > hi) or (op in ("<=", "<") and num < lo)
                                                  or (op == ">" and num == hi) or (op == "<" and num == lo)):
            raise QDebugError(f"'{raw}' can never hold: {metric} lies in [{lo:g}, {hi:g}]", where="--target",
                              fix=f"use a bound inside [{lo:g}, {hi:g}]")


def _is_share(metric: str) -> bool:
    """Metrics that are shares or agreements in [0, 1] (mAP, recall, lost share, top-k agreement, IoU)."""
    return any(w in metric for w in ("map", "recall", "frac", "agreement", "iou")) and not metric.endswith("_px")


def _split_ref(ref: str, known: set[str], parts: dict[str, list[str]]) -> tuple[str | None, str | None]:
    if ref in known:
        return ref, None
    m = re.match(r"^(.*)\[(\w+)\]$", ref)
    if m and m.group(1) in known and m.group(2) in parts.get(m.group(1), []):
        return m.group(1), m.group(2)
    head, _, tail = ref.rpartition(".")
    if head in known:
        if tail not in parts.get(head, []):
            raise QDebugError(f"'{head}' has no part '{tail}'", where="--target",
                              fix=f"parts of {head}: {', '.join(parts.get(head, [])) or 'none (not a Concat)'}")
        return head, tail
    return None, None


def parse_cut(expr: str) -> tuple[str, str, float]:
    """Parse a first-bad-cut threshold such as `snr_db>=20` or `cosine>=0.99`."""
    m = _CLAUSE.match(expr)
    if not m or m.group("ref") or m.group("metric") not in ("snr_db", "cosine", "rel_l2"):
        raise QDebugError(f"cannot parse cut threshold '{expr}'", where="--cut-threshold",
                          fix="write snr_db>=20 or cosine>=0.99")
    return m.group("metric"), m.group("op"), _bound(m.group("num"), expr, "--cut-threshold")


def _bound(text: str, clause: str, where: str = "--target") -> float:
    """The clause's number; 1e999 or nan would only fail after the whole search, so refuse it here."""
    v = float(text)
    if not math.isfinite(v):
        raise QDebugError(f"the bound in '{clause}' is not a finite number", where=where,
                          fix="write a finite bound, e.g. snr_db>=30")
    return v
