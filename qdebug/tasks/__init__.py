"""Task-level verdicts: decode detector outputs and score quantized detections in the user's own unit (mAP).

Decoders are plug-ins registered by name (`--task yolov8`, `--task yolov5`): one module each, one
`@register_decoder` line. TASK_METRICS lists the metrics target expressions may use once a task is
given (`map50_95_vs_float>=0.95`, `lost_frac<=0.05`, ...); the CLI passes them to target parsing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qdebug.errors import QDebugError

if TYPE_CHECKING:
    from qdebug.tasks.base import Decoder
    from qdebug.tasks.scoring import TaskScorer

# name -> higher is better. *_vs_float: agreement with the float model's detections (no labels needed);
# map50_95 / map50: true COCO mAP against --labels.
AGREEMENT_METRICS = {"map50_95_vs_float": True, "map50_vs_float": True, "recall_vs_float": True,
                     "lost_frac": False}
LABEL_METRICS = {"map50_95": True, "map50": True}
# segment/pose heads (agreement with the float masks/keypoints): mask and OKS mAP, mask IoU, keypoint error (px)
INSTANCE_METRICS = {"mask_map50_95_vs_float": True, "mask_iou_mean": True, "oks_map_vs_float": True,
                    "kpt_err_px": False}
DEFAULT_TASK_TARGET = "map50_95_vs_float>=0.9"  # bisect --task without --target
TASK_METRICS: dict[str, bool] = {**AGREEMENT_METRICS, **INSTANCE_METRICS, **LABEL_METRICS}

DECODERS: dict[str, type[Decoder]] = {}
# non-detection tasks (`--task classify|embedding|ctc`): one TaskScorer each, its own target metrics
SCORERS: dict[str, type[TaskScorer]] = {}


def register_scorer(cls: type[TaskScorer]) -> type[TaskScorer]:
    """Class decorator that makes a task scorer (qdebug.tasks.scoring) selectable by `--task NAME`."""
    SCORERS[cls.name] = cls
    return cls


def metric_task(metric: str) -> str | None:
    """The task a target metric belongs to: "detection" (any decoder), a scorer's name, or None."""
    if metric in TASK_METRICS:
        return "detection"
    return next((name for name, cls in SCORERS.items() if metric in cls.metrics), None)


def register_decoder(cls: type[Decoder]) -> type[Decoder]:
    """Class decorator that makes a decoder selectable by `--task NAME`."""
    DECODERS[cls.name] = cls
    return cls


def get_decoder(name: str, **options) -> Decoder:
    """Instantiate a registered decoder (`yolov8`, `yolov5`; `yolo11`/`yolov7` are aliases) with options."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DECODERS:
        raise QDebugError(f"unknown task '{name}'", where="--task",
                          fix=f"use one of: {', '.join(sorted(DECODERS) + sorted(ALIASES) + sorted(SCORERS))}")
    cls = DECODERS[key]
    if "anchors" in options and options["anchors"] is not None and key != "yolov5":
        raise QDebugError(f"--anchors does not apply to --task {name} (anchor-free head)", where="--anchors",
                          fix="drop --anchors, or use --task yolov5 for anchor-based models")
    if options.get("kpt_shape") is not None and key != "yolov8":
        raise QDebugError(f"--kpt-shape does not apply to --task {name}", where="--kpt-shape",
                          fix="drop --kpt-shape, or use --task yolov8 for ultralytics pose models")
    options = {k: v for k, v in options.items() if v is not None or k in ("iou", "nc")}
    return cls(**options)


def task_metrics_in(expr: str | None) -> list[str]:
    """Task metric names used by a target expression (to require --task before a bisect starts)."""
    import re

    if not expr:
        return []
    found = []
    for raw in re.split(r"\s+and\s+|\s*&&\s*|\s*,\s*", expr.strip()):
        m = re.match(r"^\s*([A-Za-z_]\w*)\s*(?:>=|<=|>|<)", raw)
        if m and ":" not in raw and metric_task(m.group(1)):
            found.append(m.group(1))
    return found


ALIASES = {"yolo11": "yolov8", "yolov11": "yolov8", "yolov7": "yolov5"}

# register the built-in decoders (yolov5, yolov8) and the task scorers (classify, ctc, embedding)
from qdebug.tasks import classify, ctc, embedding, yolov5, yolov8  # noqa: E402,F401

__all__ = ["AGREEMENT_METRICS", "DECODERS", "DEFAULT_TASK_TARGET", "INSTANCE_METRICS", "LABEL_METRICS", "SCORERS",
           "TASK_METRICS", "get_decoder", "metric_task", "register_decoder", "register_scorer", "task_metrics_in"]
