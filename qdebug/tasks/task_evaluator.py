"""Non-detection task verdicts in bisect and compare: `TaskEvaluator`, `TaskCollector`, `run_task`.

- `TaskEvaluator(graph, dataset, backend, scorer)` plugs into `run_bisect(..., evaluator=...)`: the float
  outputs are computed once; each candidate precision map is run through the backend and scored (task
  clauses; tensor clauses of a mixed target are scored on the same run).
- `TaskCollector` feeds a scorer from compare's `on_sample` hook (no extra inference).
- `run_task` builds the typed `TaskResult` (the compare/bisect JSON's `task` section) from a collector, or
  runs float and quantized passes of the scored output itself; with `promoted`, the promoted run too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from qdebug.graph.model import ModelGraph
from qdebug.inputs.dataset import Dataset
from qdebug.metrics.stats import TensorStats
from qdebug.quant.scheme import QuantConfig
from qdebug.results.task import TaskResult, TaskRun
from qdebug.runners.base import Backend
from qdebug.runners.session import OrtSession
from qdebug.search.evaluate import MixedTargetEvaluator, Score
from qdebug.search.target import Target
from qdebug.tasks.evaluator import prepare_backend
from qdebug.tasks.scoring import TaskScorer
from qdebug.workers import ordered_map


def bind_scorer(graph: ModelGraph, scorer: TaskScorer, samples: int) -> str:
    """Choose the scored output from the graph outputs and check the data set is large enough."""
    out = scorer.bind([(o.name, o.shape) for o in graph.outputs])
    scorer.check_samples(samples)
    return out


def float_outputs(graph: ModelGraph, samples: Sequence[dict[str, np.ndarray]], output: str) -> list[np.ndarray]:
    """The float model's value of `output` for every sample (computed once, kept for every scoring)."""
    sess = OrtSession(graph.with_outputs([output]), source=graph.path)
    return [np.array(o[output]) for o in ordered_map(sess.run, samples)]


def score_run(scorer: TaskScorer, reference: Sequence[np.ndarray], quantized: Sequence[dict[str, np.ndarray]],
              names: Sequence[str]) -> TaskRun:
    """Score a run's outputs against the float reference, sample by sample."""
    scorer.reset()
    o = scorer.output
    for k, (ref, out) in enumerate(zip(reference, quantized, strict=True)):
        scorer.update({o: ref}, out, names[k] if k < len(names) else None)
    return scorer.result()


class TaskEvaluator(MixedTargetEvaluator):
    """Scores a QuantConfig by the task metrics of one output against the float model's (bisect --task)."""

    def __init__(self, graph: ModelGraph, dataset: Dataset, backend: Backend, scorer: TaskScorer,
                 target: Target | None = None) -> None:
        self.graph = graph
        self.backend = backend
        self.scorer = scorer
        self.task_metrics = scorer.metrics
        self.samples = list(dataset)
        self.names = dataset.names()
        self.output = bind_scorer(graph, scorer, len(self.samples))
        self.reference = float_outputs(graph, self.samples, self.output)
        self.last: TaskRun | None = None
        self.seconds = 0.0
        if target is not None:
            self.target = target

    def run(self, config: QuantConfig) -> TaskRun:
        """The task scores of one precision map (no target needed)."""
        outs = self.backend.run(self.graph, config, self.samples, [self.output])
        return score_run(self.scorer, self.reference, list(outs), self.names)

    def evaluate(self, config: QuantConfig) -> Score:
        """Run the quantized model per `config`, score the task clauses (and tensor clauses on the same run)."""
        t0 = time.perf_counter()
        tev = self._tensor_ev
        stats: dict[str, TensorStats] = tev.clause_stats() if tev else {}
        names = list(dict.fromkeys([self.output] + (tev.tensors if tev else [])))
        self.scorer.reset()
        for k, out in enumerate(self.backend.run(self.graph, config, self.samples, names)):
            self.scorer.update({self.output: self.reference[k]}, out, self.names[k])
            if tev:
                tev.add_sample(stats, k, out)
        run = self.scorer.result()
        self.last = run
        values: dict[str, float | None] = {}
        for c in self.target.clauses:
            values[c.text()] = stats[c.text()].result().get(c.metric) if c.tensor else run.metrics.get(c.metric)
        self.seconds += time.perf_counter() - t0
        return self.score(values)


class TaskCollector:
    """Feeds a scorer from a compare loop: `add(k, float_values, quant_values)` per sample (extra tensors ignored)."""

    def __init__(self, graph: ModelGraph, dataset: Dataset, scorer: TaskScorer) -> None:
        self.scorer = scorer
        self.names = dataset.names()
        self.output = bind_scorer(graph, scorer, len(dataset))
        self.count = 0
        self.seconds = 0.0

    def add(self, index: int, float_values: dict[str, np.ndarray], quant_values: dict[str, np.ndarray]) -> None:
        """Score one sample's float and quantized output (the scorer copies the arrays)."""
        t0 = time.perf_counter()
        self.scorer.update(float_values, quant_values, self.names[index] if index < len(self.names) else None)
        self.count += 1
        self.seconds += time.perf_counter() - t0


def run_task(graph: ModelGraph, dataset: Dataset, backend: Backend, config: QuantConfig, scorer: TaskScorer,
             promoted: QuantConfig | None = None, collector: TaskCollector | None = None,
             evaluator: TaskEvaluator | None = None) -> TaskResult:
    """The `task` section: quantized (and promoted) runs scored against float; reuses a compare loop's
    `collector` or a bisect `evaluator` (its float outputs) when given, else runs the passes itself."""
    t0 = time.perf_counter()
    names = dataset.names()
    if collector is not None and collector.count == len(dataset):
        quant = scorer.result()
        reference: list[np.ndarray] | None = None
        samples: list[dict[str, np.ndarray]] = list(dataset) if promoted is not None else []
    elif evaluator is not None:
        samples, reference = evaluator.samples, evaluator.reference
        quant = evaluator.run(config)
    else:
        samples = list(dataset)
        output = bind_scorer(graph, scorer, len(samples))
        prepare_backend(graph, backend, config, samples)
        reference = float_outputs(graph, samples, output)
        quant = score_run(scorer, reference, list(backend.run(graph, config, samples, [output])), names)
    settings = scorer.settings()
    prom = None
    if promoted is not None:
        if reference is None:
            reference = float_outputs(graph, samples, scorer.output)
        prom = score_run(scorer, reference, list(backend.run(graph, promoted, samples, [scorer.output])), names)
        prom.overrides = {k: v.value for k, v in promoted.overrides.items()}
    extra = collector.seconds if collector is not None else 0.0
    return TaskResult(task=scorer.name, output=scorer.output, settings=settings,
                      higher_is_better=dict(scorer.metrics), quantized=quant, promoted=prom,
                      warnings=list(dict.fromkeys(scorer.warnings)), seconds=round(time.perf_counter() - t0 + extra, 3))
