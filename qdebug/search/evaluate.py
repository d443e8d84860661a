"""The evaluation interface bisect searches with: "evaluate this precision map, return a score and pass/fail".

`TensorTargetEvaluator` scores per-tensor metrics of outputs/parts through any Backend (it only needs
final outputs). Task metrics (detection mAP) plug in as another Evaluator with the same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from qdebug.graph.model import ModelGraph
from qdebug.graph.parts import PartSpec, concat_parts, part_names
from qdebug.metrics.stats import TensorStats
from qdebug.quant.scheme import QuantConfig
from qdebug.runners.base import Backend
from qdebug.runners.reference import float_references
from qdebug.search.target import Clause, Target


@dataclass
class Score:
    """Values per clause, overall pass/fail and the worst margin (>= 0 means every clause passes)."""

    values: dict[str, float | None]
    passed: bool
    margin: float


class Evaluator(ABC):
    """Scores one QuantConfig against a target."""

    target: Target
    task_metrics: Mapping[str, bool] = {}  # target clauses without REF: this evaluator can score

    @abstractmethod
    def evaluate(self, config: QuantConfig) -> Score:
        """Run the quantized model per `config` on the evaluation samples and score it."""

    def score(self, values: dict[str, float | None]) -> Score:
        """Pass/fail and worst margin from per-clause values."""
        margins = [c.margin(values.get(c.text())) for c in self.target.clauses]
        passed = all(c.check(values.get(c.text())) for c in self.target.clauses)
        return Score(values, passed, min(margins) if margins else 0.0)


class TensorTargetEvaluator(Evaluator):
    """Per-tensor/part metrics of the target's tensors, float reference computed once and kept."""

    def __init__(self, graph: ModelGraph, samples: Sequence[dict[str, np.ndarray]], backend: Backend,
                 target: Target) -> None:
        self.graph = graph
        self.samples = list(samples)
        self.backend = backend
        self.target = target
        self.tensors = target.tensors()
        self.parts: dict[str, list[PartSpec]] = concat_parts(graph, self.tensors)
        self.reference = float_references(graph, self.samples, self.tensors, self.parts)

    def clause_stats(self) -> dict[str, TensorStats]:
        return {c.text(): TensorStats() for c in self.target.clauses if c.tensor}

    def add_sample(self, stats: dict[str, TensorStats], k: int, out: dict[str, np.ndarray]) -> None:
        """Fold sample k's quantized values of the target's tensors (or their parts) into `stats`."""
        ref = self.reference[k]
        for c in self.target.clauses:
            if not c.tensor:
                continue
            x, y = ref[c.tensor], out[c.tensor]
            if c.part:
                spec = next(s for s in self.parts[c.tensor] if s.name == c.part)
                x, y = spec.slice(x), spec.slice(y)
            stats[c.text()].update(x, y)

    def evaluate(self, config: QuantConfig) -> Score:
        stats = self.clause_stats()
        clauses: list[Clause] = [c for c in self.target.clauses if c.tensor]
        outs = self.backend.run(self.graph, config, self.samples, self.tensors)
        for k, out in enumerate(outs):
            self.add_sample(stats, k, out)
        values = {}
        for c in clauses:
            m = stats[c.text()].result()
            values[c.text()] = m.get(c.metric)
        return self.score(values)

    def part_names(self) -> dict[str, list[str]]:
        return part_names(self.parts)


class MixedTargetEvaluator(Evaluator):
    """Base of the task evaluators: task clauses scored by the subclass, a target's tensor clauses scored on the
    same quantized run by a TensorTargetEvaluator it keeps. Subclasses set graph, samples and backend."""

    graph: ModelGraph
    samples: list[dict[str, np.ndarray]]
    backend: Backend
    _target: Target | None = None
    _tensor_ev: TensorTargetEvaluator | None = None

    @property
    def target(self) -> Target:  # type: ignore[override]
        if self._target is None:
            raise RuntimeError(f"{type(self).__name__}.target is not set")
        return self._target

    @target.setter
    def target(self, target: Target) -> None:
        self.check_target(target)
        self._target = target
        self._tensor_ev = TensorTargetEvaluator(self.graph, self.samples, self.backend, target) \
            if target.tensors() else None

    def check_target(self, target: Target) -> None:
        """Refuse a target this evaluator cannot score (before any run); the default accepts every target."""
