"""Typed `qdebug.task/1` section: the verdict of a non-detection task (classify, embedding, ctc) of a run.

The float model's outputs are the reference; each quantized run (and, after bisect, the promoted one) is
scored against them with the task's metrics (docs/tasks.md). Under `compare --backend rknn`, `judge` names the
simulator of `quantized` and `toolkit` scores the vendor toolkit's own outputs the same way. Schema: schemas/task-1.json.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from qdebug.results.record import OMIT, Record, record

TASK_SCHEMA = "qdebug.task/1"
PER_SAMPLE_MAX = 1000  # per-sample rows kept in the JSON


@record
class TaskRun(Record):
    """One run scored against the float outputs: metric values and one row per sample."""

    samples: int = 0
    metrics: dict[str, float | None] = field(default_factory=dict)
    per_sample: list[dict[str, Any]] = field(default_factory=list)
    overrides: dict[str, str] | None = field(default=None, metadata=OMIT)
    judge: str | None = field(default=None, metadata=OMIT)  # the simulator whose outputs this run scores

    def worst(self, n: int = 3, floor: float = 1e-4) -> list[dict[str, Any]]:
        """The `n` samples that moved most from float (largest `severity`; rows at or below `floor` left out)."""
        rows = [r for r in self.per_sample if (r.get("severity") or 0.0) > floor]
        rows.sort(key=lambda r: -float(r.get("severity") or 0.0))
        return rows[:n]


@record
class TaskResult(Record):
    """The task verdict: which task and output, how it was read, the quantized (and promoted) scores."""

    schema: str = TASK_SCHEMA
    task: str = ""
    output: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    quantized: TaskRun = field(default_factory=TaskRun)
    promoted: TaskRun | None = None
    toolkit: TaskRun | None = field(default=None, metadata=OMIT)  # the vendor toolkit's outputs, scored alike
    judge: str | None = field(default=None, metadata=OMIT)  # the simulator whose outputs `quantized` scores
    warnings: list[str] = field(default_factory=list)
    seconds: float | None = None


# how the terminal and the report name and print each metric (one home for both)
METRIC_LABELS = {"top1_agreement": "top-1 agreement", "top5_agreement": "top-5 agreement", "kl_mean": "KL mean",
                 "embedding_cos_min": "cosine min", "embedding_cos_mean": "cosine mean",
                 "nn_agreement": "NN agreement", "ctc_agreement": "same labels", "ctc_edit_distance": "edit distance"}
_PERCENT = ("top1_agreement", "top5_agreement", "nn_agreement", "ctc_agreement")


def format_metric(name: str, value: float | None, missing: str = "–") -> str:
    """A metric value as shown: agreements in percent, cosines with 5 decimals, the rest with 4."""
    if value is None:
        return missing
    if name in _PERCENT:
        return f"{100 * value:.1f}%"
    if name.startswith("embedding_cos"):  # 6 decimals when 5 would round a cosine below 1 up to 1
        return f"{value:.6f}" if f"{value:.5f}" == "1.00000" and value < 1.0 else f"{value:.5f}"
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"


def _labels(seq: Any) -> str:
    seq = list(seq or [])
    return " ".join(str(x) for x in seq[:12]) + (" …" if len(seq) > 12 else "") if seq else "(empty)"


def describe_row(task: str, row: dict[str, Any]) -> str:
    """What happened to one sample, in words (e.g. "class 7 → 2, KL 0.412")."""
    if task == "classify":
        moved = f"class {row.get('float_top1')} → {row.get('quant_top1')}" \
            if row.get("float_top1") != row.get("quant_top1") else f"class {row.get('float_top1')} kept"
        return f"{moved}, KL {format_metric('kl_mean', row.get('kl'))}"
    if task == "embedding":
        nn = "" if row.get("nn_float") == row.get("nn_quant") or "nn_float" not in row else \
            f", nearest {row.get('nn_float')} → {row.get('nn_quant')}"
        return f"cosine {format_metric('embedding_cos_min', row.get('cosine'))}{nn}"
    if task == "ctc":
        return f"[{_labels(row.get('float'))}] → [{_labels(row.get('quant'))}], edit {row.get('edit', 0):.2f}"
    return ""


__all__ = ["METRIC_LABELS", "PER_SAMPLE_MAX", "TASK_SCHEMA", "TaskResult", "TaskRun", "describe_row", "format_metric"]
