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

# name -> higher is better. *_vs_float: agreement with the float model's detections (no labels needed);
# map50_95 / map50: true COCO mAP against --labels.
AGREEMENT_METRICS = {"map50_95_vs_float": True, "map50_vs_float": True, "recall_vs_float": True,
                     "lost_frac": False}
LABEL_METRICS = {"map50_95": True, "map50": True}
DEFAULT_TASK_TARGET = "map50_95_vs_float>=0.9"  # bisect --task without --target
TASK_METRICS: dict[str, bool] = {**AGREEMENT_METRICS, **LABEL_METRICS}

DECODERS: dict[str, type[Decoder]] = {}


def register_decoder(cls: type[Decoder]) -> type[Decoder]:
    """Class decorator that makes a decoder selectable by `--task NAME`."""
    DECODERS[cls.name] = cls
    return cls


def get_decoder(name: str, **options) -> Decoder:
    """Instantiate a registered decoder (`yolov8`, `yolov5`; `yolo11`/`yolov7` are aliases) with options."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DECODERS:
        raise QDebugError(f"unknown task '{name}'", where="--task",
                          fix=f"use one of: {', '.join(sorted(DECODERS) + sorted(ALIASES))}")
    cls = DECODERS[key]
    if "anchors" in options and options["anchors"] is not None and key != "yolov5":
        raise QDebugError(f"--anchors does not apply to --task {name} (anchor-free head)", where="--anchors",
                          fix="drop --anchors, or use --task yolov5 for anchor-based models")
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
        if m and ":" not in raw and m.group(1) in TASK_METRICS:
            found.append(m.group(1))
    return found


ALIASES = {"yolo11": "yolov8", "yolov11": "yolov8", "yolov7": "yolov5"}

from qdebug.tasks import yolov5, yolov8  # noqa: E402,F401  (register the built-in decoders)

__all__ = ["AGREEMENT_METRICS", "DECODERS", "DEFAULT_TASK_TARGET", "LABEL_METRICS", "TASK_METRICS", "get_decoder",
           "register_decoder", "task_metrics_in"]
