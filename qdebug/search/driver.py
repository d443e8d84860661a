"""The bisect flow end to end: one-pass compare -> target -> first bad cut -> ranking -> search -> verify.

Returns a typed `BisectResult` (schema `qdebug.bisect/1`, docs/json-schema.md); the CLI prints it and
writes files.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from qdebug import __version__
from qdebug.compare.stage import environment, now_utc, run_compare
from qdebug.graph.model import ModelGraph
from qdebug.graph.parts import concat_parts, part_names
from qdebug.inputs.dataset import Dataset
from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.results.bisect import (
    BISECT_SCHEMA,
    BisectResult,
    Counts,
    RankedOp,
    Remedy,
    SearchOutcome,
    TargetInfo,
)
from qdebug.results.compare import CompareResult
from qdebug.results.values import json_float
from qdebug.runners.base import Backend
from qdebug.runners.sim import SimBackend
from qdebug.search import calib_remedy
from qdebug.search.bisect import (
    PromotionSearch,
    SearchResult,
    ancestors_ops,
    cut_search_bound,
    evaluation_bound,
    first_bad_cut_one_pass,
    first_bad_cut_truncation,
    rank_ops,
)
from qdebug.search.evaluate import Evaluator, TensorTargetEvaluator
from qdebug.search.remedies import UNITS, RemedyOutcome, RemedySearch
from qdebug.search.split import find_decode_tail, prove_split
from qdebug.search.target import parse_target


def run_bisect(graph: ModelGraph, dataset: Dataset, base: QuantConfig, backend: SimBackend, target_expr: str | None,
               precision: Precision = Precision.INT16, cut_path: str = "auto", calib: Dataset | None = None,
               evaluator: Evaluator | None = None, log: Callable[[str], None] | None = None,
               cut_threshold: str | None = None, eval_backend: Backend | None = None,
               remedies: bool = False, pinned: set[str] | None = None) -> BisectResult:
    """Find the first bad cut and the smallest promotion set meeting the target; verify it.

    `backend` (the built-in simulator) gives the one-pass comparison used for ranking; `eval_backend`
    (default: the same) judges every candidate set, e.g. rknn-toolkit2's simulator. A task `evaluator`
    (detection) scores the sets instead of per-tensor metrics and brings its task metrics to the target.
    `remedies`: search calibration per tensor, head split and precision together (search/remedies.py).
    `pinned`: node names whose precision the user fixed (default: every override differing from the
    scheme's precision); their ops are never candidates.
    """
    judge = eval_backend or backend
    t0 = time.perf_counter()
    say = log or (lambda s: None)
    samples = list(dataset)
    parts = part_names(concat_parts(graph, [o.name for o in graph.outputs]))
    target = parse_target(target_expr, graph, parts, evaluator.task_metrics if evaluator is not None else None)
    if cut_threshold:
        from dataclasses import replace

        from qdebug.search.target import parse_cut

        target = replace(target, cut=parse_cut(cut_threshold))
    say("one-pass comparison (float, isolated, cumulative)")
    before = run_compare(graph, dataset, base, backend, calib)
    if judge is not backend:  # also when a task evaluator (detection) judges through it
        judge.prepare(graph, base, list(calib) if calib is not None else samples)
    if evaluator is None:
        evaluator = TensorTargetEvaluator(graph, samples, judge, target)
    else:
        evaluator.target = target
    # first bad cut
    if cut_path == "auto":
        cut_path = "one-pass" if judge.intermediates else "truncation"
    say(f"first bad cut ({cut_path})")
    cuts = graph.activation_tensors()
    if cut_path == "one-pass":
        cut = first_bad_cut_one_pass(before, target)
    else:  # hint: the built-in one-pass comparison's first failing tensor
        cut = first_bad_cut_truncation(graph, judge, base, samples, target, cuts,
                                       hint=first_bad_cut_one_pass(before, target).tensor)
    # ranking and search
    ops = backend.quant_ops(graph)
    cand = ancestors_ops(graph, ops, target.tensors() or [o.name for o in graph.outputs])
    if judge is not backend:  # vendor hybrid configs cannot promote the graph input's quantization
        cand -= {i.name for i in graph.inputs}
    if pinned is None:
        pinned = {k for k, p in base.overrides.items() if p != base.scheme.activation}
    pinned_ops = {op.key for op in ops if op.key in pinned or any(m in pinned for m in op.nodes)}
    cand -= pinned_ops  # a user-pinned op is never a candidate (nor leads the ranking)
    ranked = rank_ops(ops, before, cand)
    plan = None
    if remedies:
        plan = run_remedies(graph, backend, evaluator, base, precision, ranked, before, pinned_ops,
                            list(calib) if calib is not None else samples, say, cut_index=cut.index)
        res, final_cfg = plan.search, plan.config
    else:
        search = PromotionSearch(evaluator, base, precision, progress=say)
        res = search.run([r.op for r in ranked], priority=sum(1 for r in ranked if r.evidence.hazards))
        final_cfg = search.config_for(res.promoted)
    after = None
    if res.met and final_cfg.key() != base.key():
        say("verification: full comparison with the chosen plan (built-in simulator)")
        after = run_compare(graph, dataset, final_cfg, backend, calib)
    total_s = time.perf_counter() - t0
    n = len(ranked)
    outcome = SearchOutcome(
        res.met, res.promoted, sorted({n for r in ranked if r.op in res.promoted for n in r.nodes}), res.message,
        {k: json_float(v) for k, v in res.before.values.items()},
        {k: json_float(v) for k, v in res.after.values.items()},
        res.best.to_record(precision) if res.best else None, plan.remedies if plan else _precision_remedy(
            res, precision))
    bound = evaluation_bound(n, len(res.promoted))
    if plan is not None:  # the remedy part's bounds on top of the precision search's
        bound = 1 + int(plan.info.split is not None) + plan.info.calibration_bound + plan.info.precision_bound \
            + max(0, len(plan.remedies) - 1)  # + attribution runs: the plan's steps before its last remedy
    # the count includes the cut probes, so the bound includes their bound
    cut_bound = cut_search_bound(len(cuts)) if cut.path == "truncation" else 0
    counts = Counts(n, res.quantized_evaluations + cut.evaluations, res.quantized_evaluations, cut.evaluations,
                    bound + cut_bound, n + 1, round(res.seconds, 3), round(total_s, 3), cut_bound)
    quant = before.quant.from_json({**before.quant.to_json(), "judge": judge.describe()})
    out = BisectResult(BISECT_SCHEMA, __version__, now_utc(), "", before.model, before.samples, quant,
                       TargetInfo.from_json(target.to_json()), precision.value, cut, ranked[:50],
                       [r.to_record(precision) for r in res.evaluations], outcome, counts, environment(),
                       before, after)
    out.remedy_search = plan.info if plan else None
    return out


def _precision_remedy(res: SearchResult, precision: Precision) -> list[Remedy]:
    """The promotion-only answer as one precision remedy (empty when nothing is promoted)."""
    if not res.promoted:
        return []
    return [Remedy("precision", len(res.promoted), UNITS["precision"], list(res.promoted),
                   {k: json_float(v) for k, v in res.before.values.items()},
                   {k: json_float(v) for k, v in res.after.values.items()}, {"precision": precision.value})]


def run_remedies(graph: ModelGraph, backend: SimBackend, evaluator: Evaluator, base: QuantConfig,
                 precision: Precision, ranked: list[RankedOp], before: CompareResult, pinned_ops: set[str],
                 calib_samples: list[dict], say: Callable[[str], None], cut_index: int | None = None) -> RemedyOutcome:
    """Calibration choices and the decode tail from the one-pass comparison, then the remedy search.
    `cut_index`: the first bad cut's node index; the ops up to it form the "upstream" calibration variant."""
    keys = [r.op for r in ranked]
    say("calibration remedy: range methods per tensor of the candidate ops (2 float passes)")
    points = calib_remedy.quant_points(backend.quant_ops(graph), backend.profile, keys)
    choices = calib_remedy.choose(graph, points, base, backend.ranges, calib_samples)
    split, why = find_decode_tail(graph, [(h.kind, h.node) for h in before.hazards])
    proof = None
    if split is not None:
        proof = prove_split(graph, split, calib_samples[:4])
        if not proof.passed:
            why = (f"the cut before the decode tail is not exact in float (max relative difference "
                   f"{proof.max_rel:.2g} > 1e-5), so the head-split remedy was skipped")
            split = None
    all_ops = [op.key for op in backend.quant_ops(graph) if op.quantizable]
    upstream = None
    if cut_index is not None:  # ops whose every node is at or before the first bad cut (and graph inputs)
        upstream = {op.key for op in backend.quant_ops(graph) if op.kind == "input" or
                    all(graph.index_of.get(n, cut_index + 1) <= cut_index for n in op.nodes)}
    rs = RemedySearch(evaluator, base, precision, choices, split, why, say, all_ops, len(calib_samples),
                      upstream=upstream)
    if split is not None and proof is not None:
        rs.info.split = {"tail": split.tail, "boundary": split.boundary, "reason": split.reason,
                         "proof": {"max_abs": proof.max_abs, "max_rel": proof.max_rel, "samples": proof.samples,
                                   "passed": proof.passed}}
    hazard_ops = {r.op for r in ranked if r.evidence.hazards}
    return rs.run(keys, hazard_ops, pinned_ops)
