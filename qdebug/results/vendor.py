"""Typed vendor sections: how a vendor file mapped onto the graph, a vendor simulator's comparison, a
patched vendor file and a toolkit's own proposal."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from qdebug.results.record import OMIT, Record, record
from qdebug.results.values import Metrics


@record
class CalibMapping(Record):
    """How the records of a vendor calibration file matched the ONNX graph (`--calib`)."""

    matched: int = 0
    unmatched_records: list[str] = field(default_factory=list)
    nodes_without_record: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def notes_for_user(self) -> list[str]:
        """The mapping's notes plus one line each for unmatched records and ops without a record."""
        notes = list(self.notes)
        if self.unmatched_records:
            notes.append(f"{len(self.unmatched_records)} record(s) match no ONNX node (fused/inserted by the "
                         f"vendor compiler), e.g. {', '.join(self.unmatched_records[:3])}")
        if self.nodes_without_record:
            notes.append(f"{len(self.nodes_without_record)} quantized op(s) have no record and were calibrated "
                         f"by qdebug, e.g. {', '.join(self.nodes_without_record[:3])}")
        return notes


@record
class VendorTensor(Record):
    """A vendor toolkit's own numbers for one tensor (its per-tensor table, and dumps when available)."""

    toolkit_name: str
    op_type: str | None = None
    table: dict[str, float | None] = field(default_factory=dict)
    cumulative: Metrics | None = field(default=None, metadata=OMIT)


@record
class VendorComparison(Record):
    """The vendor simulator's run of the same model and data, beside the built-in one."""

    backend: str
    platform: str | None = None
    toolkit: str | None = None
    samples: int = 0
    analysis_samples: int = 0
    outputs: list[dict[str, Any]] = field(default_factory=list)
    tensors_matched: int = 0
    fused_away: list[str] = field(default_factory=list)
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    builds: int | None = None
    median_snr_gap_db: float | None = field(default=None, metadata=OMIT)
    float_deviation: list[dict[str, Any]] = field(default_factory=list)  # toolkit float run != ONNX model


@record
class PatchedFile(Record):
    """A vendor file written with the promotion set (`-o`): where, from what, what changed."""

    path: str | None
    source: str | None
    format: str
    changed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra_options: dict[str, str] = field(default_factory=dict, metadata={"key": "extra"})
    diff: str = ""


@record
class PlanScore(Record):
    """One promotion plan judged on the bisect target by the same evaluator (task targets included)."""

    name: str
    entries: int = 0
    values: dict[str, float | None] = field(default_factory=dict)
    passed: bool | None = None
    judge: str = "built-in"  # which simulator produced the values: built-in | rknn-toolkit2


@record
class ToolkitProposal(Record):
    """A vendor toolkit's own list of layers to keep in higher precision, scored on the same target as the
    toolkit wrote it (every entry, verbatim), beside qdebug's set and, when neither meets the target alone,
    their union."""

    tensors: list[str] = field(default_factory=list)
    count: int = 0
    values: dict[str, float | None] = field(default_factory=dict)
    passed: bool | None = None
    entries: dict[str, str] = field(default_factory=dict)
    plans: list[PlanScore] = field(default_factory=list)
    not_applied: dict[str, str] = field(default_factory=dict)
