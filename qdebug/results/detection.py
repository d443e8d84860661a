"""Typed `qdebug.detection/1` section: the task verdict (detections lost, mAP vs float) of a run.

Under `compare --backend rknn`, `judge` names the simulator whose outputs `quantized` decodes (the built-in
one) and `toolkit` holds the same verdict computed on the vendor toolkit's own final outputs (`toolkit.judge`
names it), so both simulators' verdicts sit side by side.

Segment and pose heads add optional metrics to each run's `metrics` (absent for plain detect heads):
MASK_METRICS for segment heads, POSE_METRICS for pose heads; `decoder.head` names the head. The JSON
schema of the section is `schemas/detection-1.json`.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from qdebug.results.record import OMIT, Record, record

DETECTION_SCHEMA = "qdebug.detection/1"
MASK_METRICS = ("mask_map50_95_vs_float", "mask_iou_mean")  # segment heads: mask mAP vs float, mean mask IoU
POSE_METRICS = ("oks_map_vs_float", "kpt_err_px")  # pose heads: OKS mAP vs float, mean keypoint error (px)


@record
class DetectionRun(Record):
    """Detections of one quantized run scored against the float run (and labels when given)."""

    detections: int = 0
    metrics: dict[str, float | None] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    per_class: list[dict[str, Any]] = field(default_factory=list)
    overrides: dict[str, str] | None = field(default=None, metadata=OMIT)
    judge: str | None = field(default=None, metadata=OMIT)  # the simulator whose outputs this run decodes

    def instance_metrics(self) -> dict[str, float | None]:
        """The mask/keypoint metrics this run carries (empty for a plain detect head)."""
        return {k: self.metrics[k] for k in MASK_METRICS + POSE_METRICS if k in self.metrics}


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
    toolkit: DetectionRun | None = field(default=None, metadata=OMIT)  # the vendor toolkit's outputs, scored alike
    judge: str | None = field(default=None, metadata=OMIT)  # the simulator whose outputs `quantized` decodes
    labels: dict[str, Any] | None = None
    per_image: list[dict[str, Any]] = field(default_factory=list)
    worst_images: list[str] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float | None = None

    @property
    def head(self) -> str:
        """The decoded head: detect, segment or pose (detect for files written before heads were told apart)."""
        return str(self.decoder.get("head") or "detect")
