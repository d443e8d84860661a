"""Typed `qdebug.compare/1` results: what `qdebug compare` measured, tensor by tensor, as records.

The compare stage builds these; search, report and CLI read them by attribute. `to_json` writes the
documented schema (schemas/compare-1.json), `from_json` reads it back (also files of earlier versions).
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from qdebug.results.detection import DetectionResult
from qdebug.results.record import OMIT, Record, record
from qdebug.results.runspec import RunSpec
from qdebug.results.task import TaskResult
from qdebug.results.values import SNR_INF, Metrics
from qdebug.results.vendor import CalibMapping, VendorComparison, VendorTensor

COMPARE_SCHEMA = "qdebug.compare/1"


@record
class IOInfo(Record):
    """A graph input or output: name, element type and shape (symbolic dims as strings)."""

    name: str
    dtype: str | None = None
    shape: list | None = None


@record
class ModelInfo(Record):
    """The model a result was computed on (path as given, content hash, size)."""

    path: str
    sha256: str | None = None
    nodes: int | None = None
    opset: int | None = None
    inputs: list[IOInfo] = field(default_factory=list)
    outputs: list[IOInfo] = field(default_factory=list)


@record
class SampleInfo(Record):
    """The data set: how many samples, from where, and the preprocessing applied to images."""

    count: int
    source: str | None = None
    kind: str | None = None
    names: list[str] = field(default_factory=list)
    preprocess: dict | None = None


@record
class SchemeInfo(Record):
    """The quantization scheme as resolved (activation precision, weights, calibrator, profile)."""

    activation: str = "int8"
    per_channel_weights: bool = True
    symmetric_weights: bool = True
    symmetric_activations: bool = False
    calibrator: str = "minmax"
    percentile: float | None = None
    profile: str | None = None


@record
class GroupInfo(Record):
    """One quantized op after fusion: its ONNX nodes, where it is quantized and at what precision."""

    key: str
    nodes: list[str] = field(default_factory=list)
    op_type: str = ""
    kind: str = ""
    outputs: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    precision: str | None = None
    fp16_compute: bool = False


@record
class QuantInfo(Record):
    """The backend and scheme a result was quantized with (backend-specific keys kept in `extra`)."""

    backend: str | None = None
    profile: str | None = field(default=None, metadata=OMIT)
    quantize_at: str | None = field(default=None, metadata=OMIT)
    fuse: bool | None = field(default=None, metadata=OMIT)
    scheme: SchemeInfo = field(default_factory=SchemeInfo)
    calib: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    groups: list[GroupInfo] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    calib_mapping: CalibMapping | None = field(default=None, metadata=OMIT)
    judge: dict | None = field(default=None, metadata=OMIT)

    def group_of(self) -> dict[str, str]:
        """ONNX node name -> the key of the quantized op it belongs to."""
        return {n: g.key for g in self.groups for n in (g.nodes or [g.key])}


@record
class TensorRow(Record):
    """Both metrics of one tensor plus where it sits in the graph (`jump_db`: SNR lost at this op)."""

    tensor: str
    node: str
    op_type: str
    index: int
    group: str | None
    quantized: bool
    shape: list[int] | None
    float_range: list[float | None] | None
    cumulative: Metrics
    isolated: Metrics
    jump_db: float | None
    vendor: VendorTensor | None = field(default=None, metadata=OMIT)


@record
class PartRow(Record):
    """One input slice of a Concat (e.g. the box or score part of a detector output) and its metrics."""

    tensor: str
    part: str
    source: str | None = None
    source_op: str | None = None
    axis: int | None = None
    start: int | None = None
    stop: int | None = None
    cumulative: Metrics | None = None
    isolated: Metrics | None = None


@record
class OutputRow(Record):
    """A graph output's metrics and those of its parts."""

    tensor: str
    cumulative: Metrics
    isolated: Metrics
    parts: list[PartRow] = field(default_factory=list)


@record
class HazardRow(Record):
    """A graph pattern int8 cannot carry well (e.g. scores concatenated with pixel boxes)."""

    kind: str
    node: str
    tensor: str | None = None
    message: str = ""
    fix: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


@record
class CompareResult(Record):
    """Everything `qdebug compare` found (schema `qdebug.compare/1`)."""

    schema: str
    qdebug_version: str
    created: str
    command: str
    model: ModelInfo
    samples: SampleInfo
    quant: QuantInfo
    tensors: list[TensorRow]
    parts: list[PartRow]
    outputs: list[OutputRow]
    hazards: list[HazardRow]
    warnings: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    engine: str | None = field(default=None, metadata=OMIT)
    environment: dict[str, Any] = field(default_factory=dict)
    detection: DetectionResult | None = field(default=None, metadata=OMIT)
    task: TaskResult | None = field(default=None, metadata=OMIT)  # classify / embedding / ctc verdict
    vendor: VendorComparison | None = field(default=None, metadata=OMIT)
    spec: RunSpec | None = field(default=None, metadata=OMIT)  # the resolved options of the run

    def by_tensor(self) -> dict[str, TensorRow]:
        """Tensor name -> row."""
        return {t.tensor: t for t in self.tensors}

    def worst(self, n: int = 10) -> list[TensorRow]:
        """Tensors with the largest SNR jump (error introduced at that op)."""
        ranked = [t for t in self.tensors if t.jump_db is not None]
        ranked.sort(key=lambda t: -(t.jump_db or 0.0))
        return ranked[:n]

    def output_parts(self) -> dict[str, list[str]]:
        """Graph output -> names of its Concat parts (what target expressions may address)."""
        return {o.tensor: [p.part for p in o.parts] for o in self.outputs}


__all__ = ["COMPARE_SCHEMA", "SNR_INF", "CompareResult", "GroupInfo", "HazardRow", "IOInfo", "Metrics", "ModelInfo",
           "OutputRow", "PartRow", "QuantInfo", "SampleInfo", "SchemeInfo", "TensorRow"]
