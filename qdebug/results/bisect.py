"""Typed `qdebug.bisect/1` results: target, first bad cut, ranked ops, every evaluation, the verified set.

The search builds these; the report and CLI read them by attribute. `to_json` writes the documented
schema (schemas/bisect-1.json) with the before/after compare results embedded.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from qdebug.results.compare import CompareResult, ModelInfo, QuantInfo, SampleInfo
from qdebug.results.detection import DetectionResult
from qdebug.results.record import OMIT, Record, record
from qdebug.results.runspec import RunSpec
from qdebug.results.task import TaskResult
from qdebug.results.vendor import PatchedFile, ToolkitProposal

BISECT_SCHEMA = "qdebug.bisect/1"


@record
class ClauseInfo(Record):
    """One clause of a target: `ref` (tensor, part or task), the metric, the comparison and the bound."""

    ref: str
    tensor: str | None = None
    part: str | None = None
    metric: str = "snr_db"
    op: str = ">="
    bound: float = 0.0

    def key(self) -> str:
        """The clause as written in evaluation records (`output0.score:snr_db>=30`, `lost_frac<=0.05`)."""
        return f"{self.ref}:{self.metric}{self.op}{self.bound:g}" if self.tensor else \
            f"{self.metric}{self.op}{self.bound:g}"

    def passes(self, v: float | None) -> bool:
        """True when a value meets this clause."""
        if v is None:
            return False
        return {">=": v >= self.bound, ">": v > self.bound, "<=": v <= self.bound, "<": v < self.bound}[self.op]


@record
class TargetInfo(Record):
    """The target a search had to meet, as parsed (expression, clauses, first-bad-cut threshold)."""

    expression: str
    assumed_default: bool = False
    cut_threshold: str | None = None
    clauses: list[ClauseInfo] = field(default_factory=list)


@record
class FirstBadCut(Record):
    """The first tensor (in graph order) whose cumulative error fails the cut threshold."""

    tensor: str | None
    node: str | None = None
    op_type: str | None = None
    index: int | None = None
    metric: str = "snr_db"
    bound: float = 0.0
    value: float | None = None
    part: str | None = None
    path: str = "one-pass"
    evaluations: int = 0
    probes: list[dict[str, Any]] = field(default_factory=list)


@record
class Evidence(Record):
    """Why an op ranks where it does: the SNR it loses, its isolated SNR and the hazards at it."""

    jump_db: float | None = None
    isolated_snr_db: float | None = None
    cumulative_snr_db: float | None = None
    hazards: list[str] = field(default_factory=list)


@record
class RankedOp(Record):
    """One candidate op in sensitivity order."""

    rank: int
    op: str
    op_type: str
    nodes: list[str]
    score: float
    evidence: Evidence


@record
class Evaluation(Record):
    """One quantized evaluation of a promotion set against the target."""

    id: int
    purpose: str
    promoted: list[str]
    overrides: dict[str, str]
    values: dict[str, float | None]
    passed: bool
    margin: float | None
    seconds: float


@record
class Remedy(Record):
    """One remedy of the chosen plan: its kind, cost (in `unit`), what it changed and the target before/after."""

    kind: str  # calibration | split | precision
    cost: int
    unit: str
    changed: list[str] = field(default_factory=list)
    before: dict[str, float | None] = field(default_factory=dict)
    after: dict[str, float | None] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)


@record
class PlanTrial(Record):
    """One candidate plan the remedy search evaluated (the alternatives tried)."""

    evaluation: int
    plan: str
    cost: dict[str, int]
    passed: bool
    margin: float | None
    values: dict[str, float | None] = field(default_factory=dict)


@record
class RemedySearchInfo(Record):
    """How the remedy search went: the plans tried, skipped remedies and why, the evaluation bounds."""

    trials: list[PlanTrial] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    calibration_evaluations: int = 0
    calibration_bound: int = 0
    precision_evaluations: int = 0
    precision_bound: int = 0
    split: dict[str, Any] | None = None


@record
class SearchOutcome(Record):
    """The answer: whether the target is met, the promotion set, its target values before and after."""

    met: bool
    set: list[str]
    set_nodes: list[str] = field(default_factory=list)
    message: str = ""
    before: dict[str, float | None] = field(default_factory=dict)
    after: dict[str, float | None] = field(default_factory=dict)
    best: Evaluation | None = None
    remedies: list[Remedy] = field(default_factory=list)  # the plan, cheapest kind first


@record
class Counts(Record):
    """How much work the search did against its promised bound."""

    candidates: int
    evaluations: int
    search_evaluations: int
    cut_evaluations: int
    bound: int
    naive_evaluations: int
    search_seconds: float
    total_seconds: float
    cut_bound: int = 0  # the part of `bound` that is the truncation cut search's own (0: one-pass)


@record
class BisectResult(Record):
    """Everything `qdebug bisect` found (schema `qdebug.bisect/1`)."""

    schema: str
    qdebug_version: str
    created: str
    command: str
    model: ModelInfo
    samples: SampleInfo
    quant: QuantInfo
    target: TargetInfo
    promote_precision: str
    first_bad_cut: FirstBadCut
    ranking: list[RankedOp]
    evaluations: list[Evaluation]
    result: SearchOutcome
    counts: Counts
    environment: dict[str, Any]
    compare_before: CompareResult
    compare_after: CompareResult | None = None
    detection: DetectionResult | None = field(default=None, metadata=OMIT)
    task: TaskResult | None = field(default=None, metadata=OMIT)  # classify / embedding / ctc verdict
    patched_file: PatchedFile | None = field(default=None, metadata=OMIT)
    exports: dict[str, str] | None = field(default=None, metadata=OMIT)
    toolkit_proposal: ToolkitProposal | None = field(default=None, metadata=OMIT)
    spec: RunSpec | None = field(default=None, metadata=OMIT)  # the resolved options of the run
    remedy_search: RemedySearchInfo | None = field(default=None, metadata=OMIT)  # bisect --remedies
