"""The remedy search: the cheapest verified change that meets the target, over three levers searched together.

Order (cheapest kind first; docs/bisect.md): (1) calibration per tensor (cost: tensors whose range
changed), (2) head split (cost: ops moved to the CPU), (3) precision — the existing promotion search
(cost: ops at higher precision on the NPU) on top of the best combination of (1) and (2). Every
candidate plan is one end-to-end evaluation through the same Evaluator; evaluations are cached by the
config's hash, so no plan runs twice.

Evaluation budget: baseline 1 + split S (0/1) + calibration V·(1+S) + ⌈log2 (M+1)⌉ (V ≤ 3 variants,
M changed tensors; the prefix bisection runs once) + precision 2⌈log2 N⌉ + |set| + 2 (2⌈log2 N⌉ + 2|set| + 4
when every op at int16 misses and the set is searched at fp16, members tried back at int16) (+1 diagnosis,
outside the count, when nothing meets the target). Promoted int16 ops take their unclipped min/max range.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.results.bisect import PlanTrial, Remedy, RemedySearchInfo
from qdebug.results.values import json_float
from qdebug.search import calib_remedy
from qdebug.search.bisect import EvalRecord, PromotionSearch, SearchResult, evaluation_bound, log2_ceil
from qdebug.search.calib_remedy import RangeChoice
from qdebug.search.evaluate import Evaluator
from qdebug.search.split import HeadSplit

UNITS = {"calibration": "tensors whose ranges changed", "split": "ops moved to the CPU",
         "precision": "ops at higher precision on the NPU"}
CLIPPING_CALIBRATORS = ("percentile", "mse", "entropy")
SMALL_CALIB = 8  # fewer calibration samples than this is named as a limit when no plan meets the target


def calibration_bound(variants: int, split: bool, changed: int) -> int:
    """Evaluations the calibration part may spend: V·(1+S) variant probes + ⌈log2 (M+1)⌉ prefix probes."""
    return variants * (1 + int(split)) + log2_ceil(changed + 1)


@dataclass
class Plan:
    """A candidate: calibration choices, whether the tail is split off, the promoted ops."""

    calib: tuple[RangeChoice, ...] = ()
    split: bool = False
    promoted: tuple[str, ...] = ()
    label: str = ""

    def cost(self, split: HeadSplit | None) -> dict[str, int]:
        return {"calibration": len(self.calib), "split": len(split.tail) if self.split and split else 0,
                "precision": len(self.promoted)}


@dataclass
class RemedyOutcome:
    """What the remedy search hands the driver: the promotion result, the plan and the search log."""

    search: SearchResult
    plan: Plan
    config: QuantConfig
    remedies: list[Remedy]
    info: RemedySearchInfo
    records: list[EvalRecord] = field(default_factory=list)


class RemedySearch:
    """Calibration, head split and precision in cost order, every plan verified by the evaluator."""

    def __init__(self, evaluator: Evaluator, base: QuantConfig, precision: Precision,
                 calib_choices: tuple[list[RangeChoice], ...], split: HeadSplit | None,
                 split_reason: str = "", progress: Callable[[str], None] | None = None,
                 all_ops: Sequence[str] = (), calib_samples: int = 0,
                 fp16_fallback: bool = True, upstream: set[str] | None = None) -> None:
        self.base = base
        self.all_ops = list(all_ops)
        self.calib_samples = calib_samples
        self.precision = precision
        self.fp16_fallback = fp16_fallback  # int16 misses -> search at fp16, members back to int16 per op
        self.split = split
        self.promo = PromotionSearch(evaluator, base, precision, progress=progress)  # shared cache and log
        self.info = RemedySearchInfo(skipped={} if split else {"split": split_reason})
        best, unclipped = calib_choices[:2]
        # promoted (int16) ops take their unclipped min/max range: at 16 bits rounding no longer argues for
        # clipping; fp16 has no range to set
        self.wide: dict[str, list[RangeChoice]] = {}
        for c in (calib_choices[2] if len(calib_choices) > 2 and precision == Precision.INT16 else []):
            self.wide.setdefault(c.op, []).append(c)
        self.promo.widen = self._widen if self.wide else None
        self.variants: list[tuple[str, list[RangeChoice]]] = []
        # cheapest first: the best ranges of the ops up to the first bad cut only (where the error starts; the
        # rest of the network then sees less error, and fewer changed tensors is the cheaper plan)
        up = [c for c in best if upstream is not None and c.op in upstream]
        if up and len(up) < len(best):
            self.variants.append(("upstream of the first bad cut", up))
        if best:
            self.variants.append(("per-tensor best", best))
        if unclipped and [c.key for c in unclipped] != [c.key for c in best] or \
                (unclipped and [c.new for c in unclipped] != [c.new for c in best]):
            self.variants.append(("unclipped", unclipped))
        if not self.variants:
            self.info.skipped["calibration"] = ("no tensor of the candidate ops gets a smaller expected error "
                                                "from another range method or clipping threshold")
        self.plans: dict[int, Plan] = {}

    # ------------------------------------------------------------ evaluation
    def config(self, plan: Plan) -> QuantConfig:
        """The QuantConfig of a plan (ranges pinned, tail at fp32, promoted ops at the promote precision with
        their 16-bit ranges)."""
        cfg = calib_remedy.apply(self.base, plan.calib)
        if plan.split and self.split:
            cfg = cfg.with_overrides({n: Precision.FP32 for n in self.split.tail})
        cfg = cfg.with_overrides({k: self.promo.prec_of(k) for k in plan.promoted})
        return self._widen(cfg, plan.promoted) if plan.promoted and self.wide else cfg

    def wide_choices(self, promoted: Sequence[str]) -> list[RangeChoice]:
        """The min/max ranges the int16-promoted ops' quantization points take (fp16 has no range)."""
        return [c for k in promoted if self.promo.prec_of(k) == Precision.INT16 for c in self.wide.get(k, [])]

    def _widen(self, cfg: QuantConfig, promoted: Sequence[str]) -> QuantConfig:
        return calib_remedy.apply(cfg, self.wide_choices(promoted), bits=16)

    def evaluate(self, plan: Plan, purpose: str) -> EvalRecord:
        """One cached end-to-end evaluation of a plan; logged as a trial."""
        saved = self.promo.base
        self.promo.base = self.config(Plan(plan.calib, plan.split))
        try:
            rec = self.promo.evaluate(list(plan.promoted), purpose)
        finally:
            self.promo.base = saved
        if rec.id not in self.plans:
            self.plans[rec.id] = plan
            self.info.trials.append(PlanTrial(rec.id, plan.label or purpose, plan.cost(self.split),
                                              rec.score.passed, json_float(rec.score.margin),
                                              {k: json_float(v) for k, v in rec.score.values.items()}))
        return rec

    def _min_calib(self, choices: list[RangeChoice], split: bool, promoted: tuple[str, ...], name: str) -> Plan:
        """Shortest prefix of `choices` (largest error drop first) that still meets the target: ⌈log2 M⌉ probes."""
        # prefix(lo) fails (the stage's base did), prefix(hi) passes; with promoted ops the empty prefix is
        # not known to fail, so the search starts one below it
        lo, hi = (-1 if promoted else 0), len(choices)
        n0 = len(self.promo.records)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            p = Plan(tuple(choices[:mid]), split, promoted, f"calibration ({name}) first {mid} tensor(s)"
                     + (" + head split" if split else "") + (f" + {len(promoted)} promoted" if promoted else ""))
            if self.evaluate(p, "calibration prefix").score.passed:
                hi = mid
            else:
                lo = mid
        self.info.calibration_evaluations += len(self.promo.records) - n0
        return Plan(tuple(choices[:hi]), split, promoted)

    # ---------------------------------------------------------------- search
    def run(self, ranked: list[str], hazard_ops: set[str], pinned: set[str]) -> RemedyOutcome:
        """Cheapest plan meeting the target (or the closest one, with what limits it)."""
        t0 = time.perf_counter()
        base_rec = self.evaluate(Plan(label="baseline (no remedy)"), "baseline")
        if base_rec.score.passed:
            return self._done(Plan(), base_rec, base_rec, [], t0, "target met without any remedy")
        tried: list[tuple[Plan, EvalRecord]] = [(Plan(), base_rec)]
        S = self.split is not None
        # (1) calibration alone
        for name, ch in self.variants:
            n0 = len(self.promo.records)
            rec = self.evaluate(Plan(tuple(ch), label=f"calibration ({name}): {len(ch)} tensor(s)"), "calibration")
            self.info.calibration_evaluations += len(self.promo.records) - n0
            tried.append((Plan(tuple(ch)), rec))
            if rec.score.passed:
                plan = self._min_calib(ch, False, (), name)
                return self._finish(plan, base_rec, ranked, t0, f"target met by re-calibrating {len(plan.calib)} "
                                    "tensor(s), no op promoted")
        # (2) head split, then split + calibration
        if S:
            rec = self.evaluate(Plan(split=True, label=f"head split: {len(self.split.tail)} op(s) to the CPU"),
                                "head split")
            tried.append((Plan(split=True), rec))
            if rec.score.passed:
                return self._finish(Plan(split=True), base_rec, ranked, t0,
                                    "target met by running the decode tail on the CPU (head split)")
            for name, ch in self.variants:
                n0 = len(self.promo.records)
                rec = self.evaluate(Plan(tuple(ch), True, label=f"head split + calibration ({name})"),
                                    "split + calibration")
                self.info.calibration_evaluations += len(self.promo.records) - n0
                tried.append((Plan(tuple(ch), True), rec))
                if rec.score.passed:
                    plan = self._min_calib(ch, True, (), name)
                    return self._finish(plan, base_rec, ranked, t0, "target met by the head split and "
                                        f"re-calibrating {len(plan.calib)} tensor(s), no op promoted")
        # (3) precision on top of the best combination so far
        combo, combo_rec = max(tried, key=lambda pr: (self._passing(pr[1]), pr[1].score.margin, -pr[1].id))
        tail = set(self.split.tail) if (combo.split and self.split) else set()
        cands = [k for k in ranked if k not in pinned and k not in tail]
        self.promo.base = self.config(combo)
        n0 = len(self.promo.records)
        priority = sum(1 for k in cands if k in hazard_ops)
        res = self.promo.run(cands, priority=priority)
        self.info.precision_bound = evaluation_bound(len(cands), len(res.promoted))
        if not res.met and self.precision == Precision.INT16 and self.fp16_fallback:
            res = self._fp16_per_op(cands, priority, res)
            if self.precision == Precision.FP16:  # the fallback met: its search + the per-op int16 trials
                self.info.precision_bound = evaluation_bound(len(cands), 2 * len(res.promoted)) + 2
        self.info.precision_evaluations = len(self.promo.records) - n0
        self._log_new_trials(combo)
        self.promo.base = self.base
        if res.met:
            plan = Plan(combo.calib, combo.split, tuple(res.promoted))
            if len(plan.calib) > 1:  # the calibration part may shrink now that some ops are promoted
                name = next((n for n, ch in self.variants if list(plan.calib) == ch), "unclipped")
                plan = self._min_calib(list(plan.calib), plan.split, plan.promoted, name)
            n16 = sum(1 for k in plan.promoted if self.promo.prec_of(k) == Precision.INT16)
            what = [f"promoting {len(plan.promoted)} op(s) to {self.precision.value}" if not self.promo.per_op else
                    f"promoting {len(plan.promoted)} op(s) ({n16} to int16, {len(plan.promoted) - n16} to fp16)"]
            if plan.split:
                what.insert(0, "the head split")
            if plan.calib:
                what.insert(0, f"re-calibrating {len(plan.calib)} tensor(s)")
            return self._finish(plan, base_rec, ranked, t0, "target met by " + " + ".join(what), res)
        return self._fail(base_rec, combo, res, ranked, pinned, t0)

    def _fp16_per_op(self, cands: list[str], priority: int, res16: SearchResult) -> SearchResult:
        """Every candidate at int16 misses: search at fp16 (the baseline is cached, all-fp16 is one new
        evaluation), then try each member of the set back at int16, lowest score first (int16 is the cheaper
        type); a member stays fp16 only when int16 fails for it. Keeps the int16 result when fp16 misses too."""
        self.promo.precision = Precision.FP16
        res = self.promo.run(cands, priority=priority)
        if not res.met:
            self.promo.precision = Precision.INT16
            self.info.notes.append("every candidate at fp16 misses the target too")
            return res16
        self.precision = Precision.FP16
        rank = {k: i for i, k in enumerate(cands)}
        for k in sorted(res.promoted, key=lambda k: -rank[k]):
            self.promo.per_op[k] = Precision.INT16
            if not self.promo.evaluate(res.promoted, "int16 per op").score.passed:
                del self.promo.per_op[k]
        final = self.promo.evaluate(res.promoted, "final")
        res.after, res.best = final.score, final
        self.info.notes.append(f"every candidate at int16 missed: the set was searched at fp16, then "
                               f"{len(self.promo.per_op)} of its {len(res.promoted)} op(s) went back to int16")
        return res

    def _passing(self, rec: EvalRecord) -> int:
        """How many target clauses an evaluation meets (breaks ties of the worst margin)."""
        return sum(1 for c in self.promo.evaluator.target.clauses if c.check(rec.score.values.get(c.text())))

    def _log_new_trials(self, combo: Plan) -> None:
        """Record the precision search's evaluations as trials (on top of the combination base)."""
        for rec in self.promo.records:
            if rec.id in self.plans:
                continue
            p = Plan(combo.calib, combo.split, rec.promoted)
            label = " + ".join([x for x in (f"calibration {len(combo.calib)} tensor(s)" if combo.calib else "",
                                            "head split" if combo.split else "") if x]
                               + [f"{len(rec.promoted)} op(s) at "
                                  f"{'/'.join(sorted({v.value for v in rec.per_op.values()})) if rec.per_op else self.precision.value}"
                                  f" ({rec.purpose})"])
            self.plans[rec.id] = p
            self.info.trials.append(PlanTrial(rec.id, label, p.cost(self.split), rec.score.passed,
                                              json_float(rec.score.margin),
                                              {k: json_float(v) for k, v in rec.score.values.items()}))

    # --------------------------------------------------------------- results
    def _finish(self, plan: Plan, base_rec: EvalRecord, ranked: list[str], t0: float, msg: str,
                res: SearchResult | None = None) -> RemedyOutcome:
        final = self.evaluate(Plan(plan.calib, plan.split, plan.promoted, label="final plan"), "final")
        return self._done(plan, base_rec, final, ranked, t0, msg, res)

    def _done(self, plan: Plan, base_rec: EvalRecord, final: EvalRecord, ranked: list[str], t0: float,
              msg: str, res: SearchResult | None = None) -> RemedyOutcome:
        if res is None:
            res = SearchResult(final.score.passed, list(plan.promoted), base_rec.score, final.score, final, msg,
                               self.promo.records, time.perf_counter() - t0, len(ranked))
        else:
            res.met, res.after, res.best, res.evaluations = final.score.passed, final.score, final, self.promo.records
            res.before = base_rec.score  # the run as given (the precision search's own baseline had the combo)
            res.message = msg + (res.message[res.message.find(";"):] if ";" in res.message else "")
            res.seconds = time.perf_counter() - t0
        self.info.calibration_bound = calibration_bound(len(self.variants), self.split is not None,
                                                        max((len(c) for _, c in self.variants), default=0))
        return RemedyOutcome(res, plan, self.config(plan), self.remedies(plan), self.info, self.promo.records)

    def remedies(self, plan: Plan) -> list[Remedy]:
        """The plan as Remedy records, each with the target values before and after adding it (cost order)."""
        out = []
        steps: list[tuple[str, Plan]] = []
        if plan.calib:
            steps.append(("calibration", Plan(plan.calib)))
        if plan.split:
            steps.append(("split", Plan(plan.calib, True)))
        if plan.promoted:
            steps.append(("precision", plan))
        prev = self.promo.cache.get(self.base.key())
        for kind, upto in steps:
            rec = self.promo.cache.get(self.config(upto).key())
            if rec is None:  # a step of the plan not evaluated by the search: one attribution run
                rec = self.evaluate(Plan(upto.calib, upto.split, upto.promoted, label=f"plan up to {kind}"),
                                    "attribution")
            changed: list[str]
            if kind == "calibration":
                changed, detail = [c.key for c in plan.calib], {"ranges": {c.key: c.to_json() for c in plan.calib}}
            elif kind == "split" and self.split is not None:
                changed, detail = list(self.split.tail), {"boundary": self.split.boundary, "reason": self.split.reason}
            else:
                changed, detail = list(plan.promoted), {"precision": self.precision.value}
                if self.promo.per_op:  # per-op types (the fp16 fallback's members back at int16)
                    detail["per_op"] = {k: self.promo.prec_of(k).value for k in plan.promoted
                                        if self.promo.prec_of(k) != self.precision}
                calib = {c.key: c.new for c in plan.calib}
                wide = [c for c in self.wide_choices(plan.promoted)
                        if not _same_range(calib.get(c.key, c.old), c.new)]  # the range in effect before
                if wide:  # written into the vendor file with the precision (formats with write_ranges)
                    detail["ranges"] = {c.key: c.to_json() for c in wide}
            out.append(Remedy(kind, len(changed), UNITS[kind], changed,
                              {k: json_float(v) for k, v in (prev.score.values if prev else {}).items()},
                              {k: json_float(v) for k, v in (rec.score.values if rec else {}).items()}, detail))
            prev = rec if rec is not None else prev
        return out

    def _fail(self, base_rec: EvalRecord, combo: Plan, res: SearchResult, ranked: list[str], pinned: set[str],
              t0: float) -> RemedyOutcome:
        """No plan meets the target: name the closest plan, by how much it misses and what limits it."""
        best_id = max(self.promo.records, key=lambda r: (r.score.margin, -r.id)).id
        best = next(r for r in self.promo.records if r.id == best_id)
        trial = next(t for t in self.info.trials if t.evaluation == best_id)
        misses = [f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = n/a" for k, v in best.score.values.items()]
        limits = self._limits(combo, res, pinned)
        msg = (f"no remedy meets the target; closest plan: {trial.plan} (worst margin {best.score.margin:.3g}: "
               f"{', '.join(misses)}); limited by: {'; '.join(limits)}")
        res.message = msg
        res.best, res.before = best, base_rec.score  # before: the run as given, not the precision search's base
        res.seconds = time.perf_counter() - t0
        res.evaluations = self.promo.records
        self.info.calibration_bound = calibration_bound(len(self.variants), self.split is not None,
                                                        max((len(c) for _, c in self.variants), default=0))
        plan = self.plans[best_id]
        return RemedyOutcome(res, plan, self.config(plan), self.remedies(plan), self.info, self.promo.records)

    def _limits(self, combo: Plan, res: SearchResult, pinned: set[str]) -> list[str]:
        """What keeps the target out of reach: the float model, clipping, ops not searched, little data."""
        out = []
        fl = self.promo.evaluator.evaluate(self._all_float())
        self.info.notes.append(f"diagnosis: every op in float scores worst margin {fl.margin:.3g}")
        if not fl.passed:
            out.append(f"the float model itself (every op in float: worst margin {fl.margin:.3g}): the target is "
                       "tighter than float allows")
        calib = self.base.scheme.calibrator
        if (calib in CLIPPING_CALIBRATORS or self.base.act_params) and not combo.calib:
            out.append(f"clipping: the {calib if calib != 'minmax' else 'pinned'} ranges clip values and "
                       "promotion keeps each clipped range")
        if pinned:
            out.append(f"upstream error in ops the search may not change (pinned by you: "
                       f"{', '.join(sorted(pinned)[:3])}{' ...' if len(pinned) > 3 else ''})")
        if 0 < self.calib_samples < SMALL_CALIB:
            out.append(f"calibration data too small ({self.calib_samples} sample(s)): ranges from so few inputs "
                       f"miss values the evaluation data holds; calibrate on {SMALL_CALIB} or more")
        if fl.passed and not out:
            out.append(f"error spread over the candidate ops: even all {res.candidates} at {self.precision.value} "
                       "miss; try --promote-dtype fp16, 16-bit activations for the whole model or more "
                       "calibration data")
        return out

    def _all_float(self) -> QuantConfig:
        return self.base.with_overrides({k: Precision.FP32 for k in self.all_ops})


def _same_range(a: Sequence[float], b: Sequence[float]) -> bool:
    """Equal up to float noise (the simulator's range and the remedy's min/max come from separate passes)."""
    return all(abs(x - y) <= 1e-6 * (abs(x) + abs(y) + 1e-12) for x, y in zip(a, b, strict=True))


def config_from_remedies(base: QuantConfig, remedies: Sequence[Remedy], precision: Precision) -> QuantConfig:
    """The QuantConfig a plan's Remedy records describe (ranges pinned, tail at fp32, ops promoted)."""
    cfg = base
    for r in remedies:
        if r.kind == "calibration":
            ranges = r.detail.get("ranges", {})
            cfg = calib_remedy.apply(cfg, [RangeChoice(k, v["tensor"], v["op"], v["method"], tuple(v["old"]),
                                                       tuple(v["new"]), 0.0, 0.0) for k, v in ranges.items()])
        elif r.kind == "split":
            cfg = cfg.with_overrides({n: Precision.FP32 for n in r.changed})
        else:
            prec = Precision(r.detail["precision"]) if "precision" in r.detail else precision
            per = {k: Precision(v) for k, v in r.detail.get("per_op", {}).items()}
            cfg = cfg.with_overrides({k: per.get(k, prec) for k in r.changed})
            cfg = calib_remedy.apply(cfg, [RangeChoice(k, v["tensor"], v["op"], v["method"], tuple(v["old"]),
                                                       tuple(v["new"]), 0.0, 0.0)
                                           for k, v in r.detail.get("ranges", {}).items()], bits=16)
    return cfg
