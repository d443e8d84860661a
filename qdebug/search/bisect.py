"""bisect: find where the error first becomes unacceptable and the smallest set of ops to promote.

Steps (docs/bisect.md):
1. baseline and all-promoted evaluations (is the target met already? can promotion meet it at all?);
2. first bad cut: the first tensor (topological order) whose cumulative error fails the cut threshold,
   read from the one-pass comparison when the backend shows intermediates, else by binary search over
   truncated graphs (at most ceil(log2 N) + 2 backend runs, counted and bounded with the search);
3. rank ops by sensitivity from the one-pass comparison (hazard, jump, isolated error);
4. binary search for the shortest ranked prefix meeting the target, a second one for the shortest passing
   window ending there, then pruning inside the window (groups of members first when one trial per member
   would not fit) within the evaluation bound, then a verification run. Evaluations are cached by precision map.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from qdebug.graph.fusion import QuantOp
from qdebug.graph.model import ModelGraph
from qdebug.graph.parts import concat_parts
from qdebug.metrics.stats import TensorStats, json_float
from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.results.bisect import Evaluation, Evidence, FirstBadCut, RankedOp
from qdebug.results.compare import CompareResult, PartRow
from qdebug.runners.base import Backend
from qdebug.runners.reference import float_references
from qdebug.search.evaluate import Evaluator, Score
from qdebug.search.target import OPS, Target

HAZARD_BONUS = 100.0


def log2_ceil(n: int) -> int:
    """⌈log2 n⌉ for n ≥ 1 (0 for n ≤ 1)."""
    return max(0, (max(n, 1) - 1).bit_length())


def evaluation_bound(n: int, found: int) -> int:
    """The promised evaluation budget of a search over n candidates: 2*ceil(log2 N) + |found set| + 2."""
    return 2 * max(1, log2_ceil(n)) + found + 2


@dataclass
class EvalRecord:
    """One evaluated precision map."""

    id: int
    purpose: str
    promoted: tuple[str, ...]
    score: Score
    seconds: float
    per_op: dict[str, Precision] | None = None  # the precision of each promoted op (None: all at the search's)

    def to_record(self, precision: Precision) -> Evaluation:
        """The evaluation as a result record (values rounded for JSON)."""
        per = self.per_op or {}
        return Evaluation(self.id, self.purpose, list(self.promoted),
                          {k: per.get(k, precision).value for k in self.promoted},
                          {k: _j(v) for k, v in self.score.values.items()}, self.score.passed, _j(self.score.margin),
                          round(self.seconds, 3))


_j = json_float


@dataclass
class SearchResult:
    """Outcome of the promotion search."""

    met: bool
    promoted: list[str]
    before: Score
    after: Score
    best: EvalRecord | None
    message: str
    evaluations: list[EvalRecord]
    seconds: float
    candidates: int

    @property
    def quantized_evaluations(self) -> int:
        return len(self.evaluations)


class PromotionSearch:
    """Cached evaluation of promotion sets plus the prefix-bisection and pruning search."""

    def __init__(self, evaluator: Evaluator, base: QuantConfig, precision: Precision = Precision.INT16,
                 progress: Callable[[str], None] | None = None) -> None:
        self.evaluator = evaluator
        self.base = base
        self.precision = precision
        self.cache: dict[str, EvalRecord] = {}
        self.records: list[EvalRecord] = []
        self.progress = progress
        # (config, promoted ops) -> config: the remedy search re-ranges promoted ops for the wider type
        self.widen: Callable[[QuantConfig, Sequence[str]], QuantConfig] | None = None
        self.per_op: dict[str, Precision] = {}  # promoted ops at another precision (the fp16 fallback's int16 ops)
        # drop groups of members before single ones when singles would not fit the bound (plain bisect and
        # --remedies alike; False: single members only, the search before issue #17 round 4)
        self.grouped = True

    def prec_of(self, op: str) -> Precision:
        return self.per_op.get(op, self.precision)

    def config_for(self, promoted: Sequence[str]) -> QuantConfig:
        cfg = self.base.with_overrides({k: self.prec_of(k) for k in promoted})
        return self.widen(cfg, promoted) if self.widen is not None and promoted else cfg

    def evaluate(self, promoted: Sequence[str], purpose: str) -> EvalRecord:
        """Evaluate a promotion set once; repeated sets come from the cache (no configuration runs twice)."""
        promoted = tuple(sorted(set(promoted)))
        cfg = self.config_for(promoted)
        key = cfg.key()
        if key in self.cache:
            return self.cache[key]
        if self.progress:
            self.progress(f"{purpose}: {len(promoted)} op(s) promoted")
        t0 = time.perf_counter()
        score = self.evaluator.evaluate(cfg)
        rec = EvalRecord(len(self.records) + 1, purpose, promoted, score, time.perf_counter() - t0,
                         {k: self.prec_of(k) for k in promoted})
        self.cache[key] = rec
        self.records.append(rec)
        return rec

    def run(self, ranked: list[str], priority: int = 0) -> SearchResult:
        """Smallest set (prefix bisection + pruning) meeting the target, or the plain fallback.

        `priority`: how many top-ranked ops are flagged by hazards; they are tried on their own when
        promoting everything misses the target (a vendor toolkit's all-int16 build is not always its best).
        """
        t0 = time.perf_counter()
        n0 = len(self.records)  # the remedy search shares this log: count only this run's evaluations
        base = self.evaluate([], "baseline")
        if base.score.passed:
            return SearchResult(True, [], base.score, base.score, base, "target met without promoting any op",
                                self.records, time.perf_counter() - t0, len(ranked))
        full = self.evaluate(ranked, "all-promoted")
        hi = len(ranked)
        if not full.score.passed and 0 < priority < len(ranked):
            hz = self.evaluate(ranked[:priority], "hazard-ops")
            if hz.score.passed:
                full, hi = hz, priority
        if not full.score.passed:
            best = max(self.records, key=lambda r: r.score.margin)
            msg = f"even with all {len(ranked)} candidate ops at {self.precision.value} the target is missed " \
                  f"(worst margin {full.score.margin:.3g}); "
            calib = self.base.scheme.calibrator
            if calib != "minmax" and not self.base.act_params:
                msg += (f"the likely cause is clipping: {calib} calibration clips ranges and promotion keeps each "
                        "clipped range; run bisect --remedies (per-tensor calibration) or use --calibrator minmax")
            else:
                msg += ("the problem is not quantization precision: check for unsupported ops, a preprocessing "
                        "mismatch, or a target tighter than the float model allows")
            if self.base.act_params:
                msg += ("; with a calibration file, also check that its ranges cover this data (promotion keeps "
                        "each record's range, so values outside it stay clipped): re-calibrate on representative "
                        "inputs")
            return SearchResult(False, [], base.score, full.score, best, msg, self.records,
                                time.perf_counter() - t0, len(ranked))
        lo = 0  # prefix(lo) fails, prefix(hi) passes
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.evaluate(ranked[:mid], "prefix").score.passed:
                hi = mid
            else:
                lo = mid
        # window: the largest start s such that ranked[s:hi] still passes (ops before s are not needed); worth
        # its ceil(log2 hi) probes only when the prefix is longer than that plus one
        window = hi - 1 > (hi - 1).bit_length() + 1
        s_lo, s_hi = 0, (hi if window else 0)  # window(s_lo) passes; the empty window (s_hi = hi) fails
        while s_hi - s_lo > 1:
            mid = (s_lo + s_hi) // 2
            if self.evaluate(ranked[mid:hi], "window").score.passed:
                s_lo = mid
            else:
                s_hi = mid
        chosen = list(ranked[s_lo:hi])
        # prune inside the window, lowest score first (its two ends last: each was needed by a bisection), and
        # only while one more evaluation keeps the count within 2*ceil(log2 N) + |set| + 2 whatever it returns
        order = (list(reversed(chosen[1:-1])) + chosen[-1:] + chosen[:1]) if window else list(reversed(chosen))
        bound_fixed = evaluation_bound(len(ranked), 0)
        if self.grouped:
            chosen, order = self._drop_groups(chosen, order, order[-2:] if window else order[:1], n0, bound_fixed)
        untried = 0
        for k, member in enumerate(order):
            if len(chosen) == 1:
                break
            trial = [m for m in chosen if m != member]
            if self.config_for(trial).key() not in self.cache and \
                    len(self.records) - n0 + 1 > bound_fixed + len(chosen) - 1:
                untried = len(order) - k
                break
            if self.evaluate(trial, "prune").score.passed:
                chosen = trial
        final = self.evaluate(chosen, "final")
        msg = f"target met by promoting {len(chosen)} op(s) to {self.precision.value}"
        if untried:
            alone = " alone" if any(r.purpose == "prune group" for r in self.records[n0:]) else ""
            msg += (f" (the set may not be minimal: {untried} member(s) were not tried{alone} for removal, pruning "
                    "stopped at the evaluation bound)")
        if len(chosen) > max(3, len(ranked) // 4):
            msg += (f"; that is {len(chosen)} of {len(ranked)} ops: the error is spread over the network rather "
                    "than concentrated in a few ops, so a mixed-precision patch is a poor fit — consider 16-bit "
                    "activations for the whole model (--dtype int16, ATC --compile_mode 1), better calibration "
                    "(--calibrator percentile/mse) or quantization-aware training")
        return SearchResult(final.score.passed, chosen, base.score, final.score, final, msg, self.records,
                            time.perf_counter() - t0, len(ranked))

    def _drop_groups(self, chosen: list[str], order: list[str], needed: list[str], n0: int,
                     bound_fixed: int) -> tuple[list[str], list[str]]:
        """Grouped pruning: while one trial per member would not fit the bound, drop halves, then quarters...
        of the members (pruning order; not the `needed` ends a bisection proved), each trial only if the count
        stays within 2*ceil(log2 N) + |set| + 2 should it pass. Returns the set and the members left to try."""
        inner = [m for m in order if m not in needed]
        g = len(inner) // 2
        while g >= 2 and 2 * len(inner) > bound_fixed + len(chosen) - (len(self.records) - n0):
            i = 0
            while i < len(inner):
                group = set(inner[i:i + g])
                trial = [m for m in chosen if m not in group]
                if self.config_for(trial).key() not in self.cache and \
                        len(self.records) - n0 + 1 > bound_fixed + len(trial):
                    g = 1  # the bound: leave the rest to the single-member pruning (which stops there too)
                    break
                if self.evaluate(trial, "prune group").score.passed:
                    chosen, inner = trial, inner[:i] + inner[i + g:]
                else:
                    i += g
            g //= 2
        return chosen, [m for m in order if m in chosen]


# ------------------------------------------------------------------- ranking
def rank_ops(ops: list[QuantOp], compare: CompareResult, candidates: set[str]) -> list[RankedOp]:
    """Order candidate ops by sensitivity (see docs/bisect.md for the formula)."""
    by_tensor = compare.by_tensor()
    hazard_nodes: dict[str, list[str]] = {}
    for h in compare.hazards:
        hazard_nodes.setdefault(h.node, []).append(h.kind)
    ranked = []
    for op in ops:
        if op.key not in candidates:
            continue
        rows = [by_tensor[t] for t in op.outputs if t in by_tensor]
        jump = max((r.jump_db for r in rows if r.jump_db is not None), default=0.0)
        iso = min((r.isolated.snr_db for r in rows if r.isolated.snr_db is not None), default=None)
        cum = min((r.cumulative.snr_db for r in rows if r.cumulative.snr_db is not None), default=None)
        kinds = sorted({k for n in [op.key, *op.nodes] for k in hazard_nodes.get(n, [])})
        score = (HAZARD_BONUS if kinds else 0.0) + max(0.0, jump) + 0.5 * max(0.0, 40.0 - (iso if iso is not None
                                                                                          else 40.0))
        ranked.append(RankedOp(0, op.key, op.op_type, list(op.nodes), score,
                               Evidence(_j(jump), _j(iso), _j(cum), kinds)))
    ranked.sort(key=lambda r: (-r.score, r.op))
    for i, r in enumerate(ranked):
        r.rank, r.score = i + 1, round(r.score, 3)
    return ranked


def ancestors_ops(graph: ModelGraph, ops: list[QuantOp], tensors: Sequence[str]) -> set[str]:
    """Keys of quantized ops that can influence `tensors`."""
    needed, seen_nodes = graph.ancestors(tensors)
    out = set()
    for op in ops:
        if not op.quantizable:
            continue
        if (op.kind == "input" and op.key in needed) or any(n in seen_nodes for n in op.nodes):
            out.add(op.key)
    return out


# ------------------------------------------------------------- first bad cut
def _fails(metric: str, op: str, bound: float, value: float | None) -> bool:
    return value is None or not OPS[op](value, bound)


def first_bad_cut_one_pass(compare: CompareResult, target: Target) -> FirstBadCut:
    """Scan the one-pass cumulative metrics in topological order for the first failing tensor or part."""
    metric, op, bound = target.cut_threshold()
    parts: dict[str, list[PartRow]] = {}
    for p in compare.parts:
        parts.setdefault(p.tensor, []).append(p)
    for t in compare.tensors:
        if t.index < 0:  # graph inputs
            continue
        checks = [(None, t.cumulative.get(metric))] + [(p.part, p.cumulative.get(metric) if p.cumulative else None)
                                                       for p in parts.get(t.tensor, [])]
        for part, v in checks:
            if _fails(metric, op, bound, v):
                return FirstBadCut(t.tensor, t.node, t.op_type, t.index, metric, bound, _j(v), part, "one-pass", 0)
    return FirstBadCut(None, None, None, None, metric, bound, None, None, "one-pass", 0)


def cut_search_bound(n: int) -> int:
    """Probes the truncation search may spend over n cut points: the last cut, the hint, ⌈log2 n⌉ bisection."""
    return log2_ceil(n) + 2


def first_bad_cut_truncation(graph: ModelGraph, backend: Backend, config: QuantConfig,
                             samples: Sequence[dict[str, np.ndarray]], target: Target,
                             cuts: Sequence[str], hint: str | None = None) -> FirstBadCut:
    """Binary search over topological cut points; each probe truncates the graph at the cut tensor,
    quantizes that subgraph with the backend (final outputs only) and compares it with the float value.

    Error is not monotone along the graph (a later op can hide an earlier failure), so a passing last cut
    proves nothing: `hint` (the built-in one-pass comparison's first failing tensor) is probed next and, when
    it fails, bounds the bisection. At most `cut_search_bound(len(cuts))` probes."""
    metric, op, bound = target.cut_threshold()
    part_specs = concat_parts(graph, list(cuts))
    refs = float_references(graph, samples, list(cuts), part_specs)
    probes: list[dict] = []

    def probe(k: int) -> tuple[bool, float | None, str | None]:
        t = cuts[k]
        sub = graph.truncate([t])
        stats = TensorStats()
        pstats: dict[str, TensorStats] = {}
        specs = part_specs.get(t, [])
        for ref, out in zip(refs, backend.run(sub, config, samples, [t]), strict=True):
            stats.update(ref[t], out[t])
            for s in specs:
                if s.stop > s.start:
                    pstats.setdefault(s.name, TensorStats()).update(s.slice(ref[t]), s.slice(out[t]))
        v = stats.result().get(metric)
        bad, worst_part = _fails(metric, op, bound, v), None
        for name, st in pstats.items():
            pv = st.result().get(metric)
            if _fails(metric, op, bound, pv):
                bad, worst_part, v = True, name, pv
        probes.append({"tensor": t, "index": k, "value": _j(v), "fails": bad, "part": worst_part})
        return bad, v, worst_part

    lo, hi = -1, len(cuts) - 1
    bad_hi, v_hi, part_hi = probe(hi)
    if not bad_hi and hint in cuts[:hi]:
        hi = list(cuts).index(hint)
        bad_hi, v_hi, part_hi = probe(hi)
    if not bad_hi:
        return FirstBadCut(None, None, None, None, metric, bound, None, None, "truncation", len(probes), probes)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        bad, v, part = probe(mid)
        if bad:
            hi, v_hi, part_hi = mid, v, part
        else:
            lo = mid
    t = cuts[hi]
    node = graph.producer[t]
    return FirstBadCut(t, node.name, node.op_type, graph.index_of[node.name], metric, bound, _j(v_hi), part_hi,
                     "truncation", len(probes), probes)
