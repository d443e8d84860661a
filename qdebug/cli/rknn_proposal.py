"""`bisect --backend rknn --rknn-proposal`: the toolkit's own hybrid proposal scored as the toolkit writes it.

Every `custom_quantize_layers` entry of `hybrid_quantization_step1(proposal=True)` is replayed verbatim (cfg
tensor keys, not mapped back to ONNX nodes, so none is dropped) and judged by the same evaluator as bisect's
own set (task targets included). When neither plan meets the target alone, their union is scored too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qdebug.formats.rknn2 import RknnQuantCfg
from qdebug.graph.model import ModelGraph
from qdebug.inputs.dataset import Dataset
from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.results.bisect import BisectResult
from qdebug.results.vendor import PlanScore, ToolkitProposal
from qdebug.runners.rockchip import RAW, RknnBackend
from qdebug.search.evaluate import Evaluator, TensorTargetEvaluator
from qdebug.search.target import parse_target

JUDGE = "rknn-toolkit2"


def score_proposal(graph: ModelGraph, dataset: Dataset, cfg: QuantConfig, rk: RknnBackend, res: BisectResult,
                   prec: Precision, evaluator: Evaluator | None = None,
                   log: Callable[[str], None] | None = None) -> ToolkitProposal:
    """Run the toolkit's proposal, score it, qdebug's set and (if both miss) their union on the bisect target."""
    outs = [o.name for o in graph.outputs]
    if log:
        log("rknn-toolkit2 proposal (hybrid_quantization_step1 proposal=True), scored as written")
    step = rk.hybrid_cfg(graph, outs, proposal=True)
    prop = RknnQuantCfg.parse(Path(step["cfg"]).read_text(), step["cfg"])
    entries = dict(prop.custom)
    if evaluator is None:
        target = parse_target(res.target.expression, graph, res.compare_before.output_parts())
        evaluator = TensorTargetEvaluator(graph, list(dataset), rk, target)
    raw = {RAW + k: Precision.parse(v) for k, v in entries.items()}
    best = res.result.best  # a missed target has no set: qdebug's plan is then its best evaluated set
    ours_list = res.result.set or (best.promoted if best is not None else [])
    ours = {k: prec for k in ours_list}
    ours_values = dict(res.result.after) if res.result.set or best is None else dict(best.values)
    before = set(rk.not_applied)
    score = evaluator.evaluate(cfg.with_overrides(raw))  # an empty proposal is the plain int8 build: still valued
    plans = [PlanScore("toolkit proposal", len(entries), score.values, score.passed, JUDGE),
             PlanScore("qdebug set" if res.result.set else "qdebug best set", len(ours), ours_values,
                       res.result.met, JUDGE)]
    if not score.passed and not res.result.met and raw and ours:
        if log:
            log("neither plan meets the target alone: scoring their union")
        both = evaluator.evaluate(cfg.with_overrides({**ours, **raw}))
        plans.append(PlanScore("combined", len(ours) + len(entries), both.values, both.passed, JUDGE))
    not_applied = {k: v for k, v in rk.not_applied.items() if k in entries or k not in before}
    return ToolkitProposal(tensors=sorted(entries), count=len(entries), values=score.values, passed=score.passed,
                           entries=entries, plans=plans, not_applied=not_applied)
