"""The bisect flow end to end: one-pass compare -> target -> first bad cut -> ranking -> search -> verify.

Returns the `qdebug.bisect/1` document (docs/json-schema.md); the CLI prints it and writes files.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable

from qdebug import __version__
from qdebug.graph.model import ModelGraph
from qdebug.inputs.dataset import Dataset
from qdebug.metrics.engine import concat_parts
from qdebug.metrics.stats import json_float
from qdebug.pipeline import environment, run_compare
from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.runners.base import Backend
from qdebug.runners.sim import SimBackend
from qdebug.search.bisect import (
    PromotionSearch,
    ancestors_ops,
    first_bad_cut_one_pass,
    first_bad_cut_truncation,
    rank_ops,
)
from qdebug.search.evaluate import Evaluator, TensorTargetEvaluator
from qdebug.search.target import parse_target

BISECT_SCHEMA = "qdebug.bisect/1"


def evaluation_bound(n: int, found: int) -> int:
    """The promised evaluation budget: 2*ceil(log2 N) + |found set| + 2."""
    return 2 * max(1, (max(n, 1) - 1).bit_length()) + found + 2


def run_bisect(graph: ModelGraph, dataset: Dataset, base: QuantConfig, backend: SimBackend, target_expr: str | None,
               precision: Precision = Precision.INT16, cut_path: str = "auto", calib: Dataset | None = None,
               evaluator: Evaluator | None = None, log: Callable[[str], None] | None = None,
               cut_threshold: str | None = None, eval_backend: Backend | None = None) -> dict:
    """Find the first bad cut and the smallest promotion set meeting the target; verify it.

    `backend` (the built-in simulator) gives the one-pass comparison used for ranking; `eval_backend`
    (default: the same) judges every candidate set, e.g. rknn-toolkit2's simulator.
    """
    judge = eval_backend or backend
    t0 = time.perf_counter()
    say = log or (lambda s: None)
    samples = list(dataset)
    parts = {t: [s.name for s in ss] for t, ss in concat_parts(graph, [o.name for o in graph.outputs]).items()}
    target = parse_target(target_expr, graph, parts)
    if cut_threshold:
        from dataclasses import replace

        from qdebug.search.target import parse_cut

        target = replace(target, cut=parse_cut(cut_threshold))
    say("one-pass comparison (float, isolated, cumulative)")
    before = run_compare(graph, dataset, base, backend, calib)
    before_json = before.to_json()
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
    if cut_path == "one-pass":
        cut = first_bad_cut_one_pass(before_json, target)
    else:
        cuts = graph.activation_tensors()
        cut = first_bad_cut_truncation(graph, judge, base, samples, target, cuts)
    # ranking and search
    ops = backend.quant_ops(graph)
    cand = ancestors_ops(graph, ops, target.tensors() or [o.name for o in graph.outputs])
    if judge is not backend:  # vendor hybrid configs cannot promote the graph input's quantization
        cand -= {i.name for i in graph.inputs}
    ranked = rank_ops(ops, before_json, before_json["hazards"], cand)
    search = PromotionSearch(evaluator, base, precision, progress=say)
    res = search.run([r.key for r in ranked], priority=sum(1 for r in ranked if r.evidence["hazards"]))
    after_json = None
    if res.met and res.promoted:
        say("verification: full comparison with the promotion set (built-in simulator)")
        verify = run_compare(graph, dataset, search.config_for(res.promoted), backend, calib)
        after_json = verify.to_json()
    total_s = time.perf_counter() - t0
    n = len(ranked)
    bound = evaluation_bound(n, len(res.promoted))
    return {
        "schema": BISECT_SCHEMA,
        "qdebug_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "",
        "model": before_json["model"],
        "samples": before_json["samples"],
        "quant": {**before_json["quant"], "judge": judge.describe()},
        "target": target.to_json(),
        "promote_precision": precision.value,
        "first_bad_cut": cut.to_json(),
        "ranking": [r.to_json(i + 1) for i, r in enumerate(ranked[:50])],
        "evaluations": [r.to_json(precision) for r in res.evaluations],
        "result": {
            "met": res.met, "set": res.promoted,
            "set_nodes": sorted({n for r in ranked if r.key in res.promoted for n in r.nodes}),
            "message": res.message,
            "before": {k: _round(v) for k, v in res.before.values.items()},
            "after": {k: _round(v) for k, v in res.after.values.items()},
            "best": res.best.to_json(precision) if res.best else None,
        },
        "counts": {"candidates": n, "evaluations": res.quantized_evaluations + cut.evaluations,
                   "search_evaluations": res.quantized_evaluations, "cut_evaluations": cut.evaluations,
                   "bound": bound, "naive_evaluations": n + 1, "search_seconds": round(res.seconds, 3),
                   "total_seconds": round(total_s, 3)},
        "environment": environment(),
        "compare_before": before_json,
        "compare_after": after_json,
    }


_round = json_float
