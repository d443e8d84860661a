"""Typed `qdebug.detection/1` section: the task verdict (detections lost, mAP vs float) of a run."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from qdebug.results.record import OMIT, Record, record

DETECTION_SCHEMA = "qdebug.detection/1"


@record
class DetectionRun(Record):
    """Detections of one quantized run scored against the float run (and labels when given)."""

    detections: int = 0
    metrics: dict[str, float | None] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    per_class: list[dict[str, Any]] = field(default_factory=list)
    overrides: dict[str, str] | None = field(default=None, metadata=OMIT)


@record
class DetectionResult(Record):
    """The detection verdict: float, quantized and (after bisect) promoted runs, per image and per class."""

    schema: str = DETECTION_SCHEMA
    task: str = ""
    decoder: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    images: int = 0
    float: dict[str, Any] = field(default_factory=dict)
    quantized: DetectionRun = field(default_factory=DetectionRun)
    promoted: DetectionRun | None = None
    labels: dict[str, Any] | None = None
    per_image: list[dict[str, Any]] = field(default_factory=list)
    worst_images: list[str] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float | None = None
