"""The interface of non-detection task verdicts: a `TaskScorer` reads one graph output of the float and the
quantized model sample by sample and scores their agreement in the task's own unit.

A scorer streams: `update(float_outputs, quant_outputs)` once per sample (arrays are copied, the caller may
reuse them), then `result()` gives a typed `TaskRun`. One module per task (classify, embedding, ctc)
registers its scorer with `@register_scorer` (qdebug.tasks); its `metrics` (name -> higher is better) are
the target names bisect accepts with that --task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from qdebug.errors import QDebugError
from qdebug.results.task import PER_SAMPLE_MAX, TaskRun


def rows_of(x: np.ndarray) -> np.ndarray:
    """A sample's output as [rows, features] in float64: the first axis is the batch, the rest is flattened."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim <= 1:
        return a.reshape(1, -1)
    return a.reshape(a.shape[0], -1)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, stable for large logits."""
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class TaskScorer(ABC):
    """Scores a quantized model's task output against the float model's, one sample at a time."""

    name: ClassVar[str] = ""
    metrics: ClassVar[dict[str, bool]] = {}  # target metric -> higher is better
    default_target: ClassVar[str] = ""  # bisect --task NAME without --target
    ranks: ClassVar[tuple[int, ...]] = ()  # output ranks that fit the task (to pick among several outputs)
    min_samples: ClassVar[int] = 1

    def __init__(self, output: str | None = None) -> None:
        self.requested = output
        self.output = output or ""
        self.warnings: list[str] = []
        self.reset()

    @abstractmethod
    def reset(self) -> None:
        """Forget every sample (a new run is scored against the same float outputs)."""

    @abstractmethod
    def update(self, float_outputs: Mapping[str, np.ndarray], quant_outputs: Mapping[str, np.ndarray],
               name: str | None = None) -> None:
        """Fold one sample's float and quantized values of the chosen output into the scores."""

    @abstractmethod
    def result(self) -> TaskRun:
        """The metrics of every sample seen since `reset`, and the per-sample rows."""

    def settings(self) -> dict[str, Any]:
        """How the outputs were read (probabilities or logits, layout, blank), for the JSON and the report."""
        return {}

    def bind(self, outputs: Sequence[tuple[str, Sequence[int | None] | None]]) -> str:
        """Choose the graph output to score among (name, static shape): --task-output, the only output, or the
        only output of a rank that fits the task; anything else is ambiguous."""
        names = [n for n, _ in outputs]
        if self.requested:
            if self.requested not in names:
                raise QDebugError(f"--task-output '{self.requested}' is not a graph output", where="--task-output",
                                  fix=f"use one of: {', '.join(names)}")
            self.output = self.requested
            return self.output
        if len(names) == 1:
            self.output = names[0]
            return self.output
        fit = [n for n, shape in outputs if shape is not None and len(shape) in self.ranks]
        if len(fit) == 1:
            self.output = fit[0]
            return self.output
        shown = ", ".join(f"{n} {list(s) if s is not None else '[?]'}" for n, s in outputs)
        raise QDebugError(f"--task {self.name}: the model has {len(names)} outputs ({shown}) and qdebug cannot tell "
                          "which one to score", where="--task",
                          fix=f"pass --task-output NAME (one of: {', '.join(names)})")

    def check_samples(self, n: int) -> None:
        """Refuse a data set too small for the task's metrics before any inference."""
        if n < self.min_samples:
            raise QDebugError(f"--task {self.name} needs at least {self.min_samples} samples, the data set has {n}",
                              where="--data", fix=f"pass {self.min_samples} or more samples (and --samples "
                              f">= {self.min_samples})")

    def pair(self, float_outputs: Mapping[str, np.ndarray],
             quant_outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The chosen output of both runs as float64 copies; refuses runs whose shapes differ."""
        try:
            f, q = np.array(float_outputs[self.output], dtype=np.float64), \
                np.array(quant_outputs[self.output], dtype=np.float64)
        except KeyError:
            raise QDebugError(f"output '{self.output}' is missing from the run", where="--task-output",
                              fix="pass --task-output with one of the model's graph outputs") from None
        if f.shape != q.shape:
            raise QDebugError(f"output '{self.output}' has shape {list(f.shape)} in float and {list(q.shape)} "
                              "quantized", where="--task-output", fix="pass --task-output of a fixed-shape output")
        return f, q

    def run_record(self, samples: int, metrics: dict[str, float | None], rows: list[dict[str, Any]]) -> TaskRun:
        """The typed run: metric values rounded for the JSON, at most PER_SAMPLE_MAX rows."""
        vals = {k: (None if v is None or not np.isfinite(v) else sig(v)) for k, v in metrics.items()}
        return TaskRun(samples=samples, metrics=vals, per_sample=rows[:PER_SAMPLE_MAX])


def sig(v: float, digits: int = 6) -> float:
    """`v` rounded to `digits` significant digits (JSON values that stay readable, tiny KLs not lost)."""
    return float(f"{float(v):.{digits}g}")


def sample_name(name: str | None, index: int, row: int, rows: int) -> str:
    """The name of one row of a sample ("img.npy", or "img.npy#2" when a sample carries a batch)."""
    base = name if name is not None else f"sample_{index}"
    return f"{base}#{row}" if rows > 1 else base


__all__ = ["TaskScorer", "log_softmax", "rows_of", "sample_name", "sig"]
