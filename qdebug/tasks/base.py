"""The decoder interface: raw model outputs of one image -> boxes (xyxy), scores, classes.

A decoder plug-in implements `candidates()` (every anchor's box in network-input pixels and its class
scores, optionally per-anchor extra channels such as mask coefficients or keypoints); the shared `decode()`
applies the confidence threshold, class-aware NMS and the letterbox undo, then hands the extra channels of
the kept detections to `attach()` (masks, keypoints). Register a new decoder with `@register_decoder` in its
own module (see qdebug/tasks/__init__.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from qdebug.errors import QDebugError
from qdebug.inputs.dataset import Dataset, Letterbox
from qdebug.tasks.masks import CropMask
from qdebug.tasks.nms import batched_nms

IMPLAUSIBLE_FRAC = 0.5  # warn when more than this share of candidate boxes is implausible
MIN_SIDE_PX = 2.0  # a box side below this (network pixels) counts as degenerate
MAX_SIDE_FACTOR = 1.5  # a side above this times the input side counts as larger than the image


@dataclass
class Detections:
    """Detections of one image: xyxy boxes [K,4] float32, scores [K] float32, classes [K] int64.

    Segment heads add `masks` (one box-cropped binary mask per detection, prototype resolution, network
    coordinates); pose heads add `keypoints` [K, nk, 3] (x, y in the same pixels as the boxes, visibility).
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    candidates: int = 0  # boxes above the confidence threshold before NMS
    implausible: int = 0  # of those, boxes larger than the input or with a side < MIN_SIDE_PX
    masks: list[CropMask] | None = None
    keypoints: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        """No detections."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    @classmethod
    def make(cls, boxes: Sequence, scores: Sequence, classes: Sequence, masks: Sequence[CropMask] | None = None,
             keypoints: Sequence | np.ndarray | None = None) -> Detections:
        """Build from plain sequences (tests, label files); keypoints as [K, nk, 3] (x, y, visibility)."""
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        kp = None if keypoints is None else np.asarray(keypoints, np.float32).reshape(len(b), -1, 3)
        return cls(b, np.asarray(scores, np.float32).reshape(-1), np.asarray(classes, np.int64).reshape(-1),
                   masks=None if masks is None else list(masks), keypoints=kp)

    def to_json(self) -> list[dict]:
        """One dict per detection (box rounded to 0.01 px); segment heads add `mask` (CropMask.to_json), pose
        heads `keypoints` [[x, y, visibility], ...], so pictures can be drawn from the JSON alone."""
        out = [{"box": [round(float(v), 2) for v in b], "score": round(float(s), 4), "class": int(c)}
               for b, s, c in zip(self.boxes, self.scores, self.classes, strict=True)]
        for k, row in enumerate(out):
            if self.masks is not None:
                row["mask"] = self.masks[k].to_json()
            if self.keypoints is not None:
                row["keypoints"] = [[round(float(v), 2) for v in p] for p in self.keypoints[k]]
        return out


@dataclass
class ImageMeta:
    """What is needed to put boxes back into an input's own coordinates."""

    name: str
    letterbox: Letterbox | None = None  # None: .npy/.npz input, boxes stay in network coordinates
    path: Path | None = None


def network_hw(dataset: Dataset) -> tuple[int, int]:
    """(H, W) of the (first) network input of a data set."""
    shape = next(iter(dataset.input_shapes.values()))
    layout = dataset.preprocess.layout if dataset.preprocess and dataset.preprocess.layout else None
    return shape_hw(shape, layout)


def shape_hw(shape: Sequence[int], layout: str | None = None) -> tuple[int, int]:
    """(H, W) of a 4-D image tensor shape (NCHW unless NHWC is given or obvious)."""
    if len(shape) != 4:
        raise QDebugError(f"detection tasks need a 4-D image input, got shape {tuple(shape)}", where="--task",
                          fix="use a detector with an NCHW/NHWC image input")
    if layout == "nhwc" or (layout is None and shape[1] not in (1, 3, 4) and shape[3] in (1, 3, 4)):
        return int(shape[1]), int(shape[2])
    return int(shape[2]), int(shape[3])


def image_metas(dataset: Dataset) -> list[ImageMeta]:
    """Per-sample metadata; call after the samples were loaded (letterbox records are filled on load)."""
    metas = []
    for (path, _key, _idx), name in zip(dataset.entries, dataset.names(), strict=True):
        lb = dataset.letterbox.get(name) if dataset.kind == "images" else None
        metas.append(ImageMeta(name, lb, path if dataset.kind == "images" else None))
    return metas


def undo_letterbox(boxes: np.ndarray, lb: Letterbox | None, input_hw: tuple[int, int]) -> np.ndarray:
    """Network-input xyxy boxes -> original image pixels, clipped to the image (unchanged if lb is None).

    A record without padding is treated as a plain resize (x and y scaled separately), which is exact
    for `--resize resize` and for a letterbox whose aspect ratio matched.
    """
    if lb is None or not len(boxes):
        return boxes
    h, w = input_hw
    if lb.pad_x == 0 and lb.pad_y == 0:
        sx, sy = w / lb.orig_w, h / lb.orig_h
    else:
        sx = sy = lb.scale
    out = boxes.astype(np.float64).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - lb.pad_x) / sx
    out[:, [1, 3]] = (out[:, [1, 3]] - lb.pad_y) / sy
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, lb.orig_w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, lb.orig_h)
    return out.astype(np.float32)


def undo_letterbox_points(xy: np.ndarray, lb: Letterbox | None, input_hw: tuple[int, int]) -> np.ndarray:
    """Network-input points [..., 2] -> original image pixels (the box transform of `undo_letterbox`, unclipped)."""
    if lb is None or not xy.size:
        return xy
    h, w = input_hw
    sx, sy = (w / lb.orig_w, h / lb.orig_h) if lb.pad_x == 0 and lb.pad_y == 0 else (lb.scale, lb.scale)
    out = xy.astype(np.float64).copy()
    out[..., 0] = (out[..., 0] - lb.pad_x) / sx
    out[..., 1] = (out[..., 1] - lb.pad_y) / sy
    return out.astype(np.float32)


def xywh2xyxy(xywh: np.ndarray) -> np.ndarray:
    """Centre-size boxes [..., 4] -> corner boxes."""
    xy, wh = xywh[..., :2], xywh[..., 2:4]
    return np.concatenate([xy - wh / 2, xy + wh / 2], axis=-1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically safe logistic function (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def needs_sigmoid(*arrays: np.ndarray, mode: str = "auto") -> bool:
    """Whether class/objectness values are logits: `auto` = some value lies outside [0, 1]."""
    if mode in ("yes", "true", "on"):
        return True
    if mode in ("no", "false", "off"):
        return False
    return any(a.size and (float(a.min()) < 0.0 or float(a.max()) > 1.0) for a in arrays)


class Decoder(ABC):
    """Turns the raw outputs of one image into detections; subclasses implement `candidates`."""

    name: ClassVar[str] = "?"
    default_iou: ClassVar[float] = 0.7
    hint: ClassVar[str] = "check the decoder (--task) and the input preprocessing (--resize, --mean/--std)"

    def __init__(self, conf: float = 0.25, iou: float | None = None, max_det: int = 300, max_nms: int = 30000,
                 agnostic: bool = False, nc: int | None = None) -> None:
        if not 0.0 <= conf < 1.0:
            raise QDebugError(f"confidence threshold {conf} is outside [0, 1)", where="--conf",
                              fix="pass e.g. --conf 0.25 (0.001 to match `yolo val` mAP)")
        iou = self.default_iou if iou is None else iou
        if not 0.0 < iou <= 1.0:
            raise QDebugError(f"NMS IoU threshold {iou} is outside (0, 1]", where="--iou", fix="pass e.g. --iou 0.7")
        self.conf = float(conf)
        self.iou = float(iou)
        self.max_det = int(max_det)
        self.max_nms = int(max_nms)
        self.agnostic = agnostic
        self.nc = nc
        self.layout: str | None = None  # set on the first decode (auto-detected)
        self.info: dict = {}  # layout details for reports (strides, outputs, ...)
        self.warnings: list[str] = []
        self.class_names: dict[int, str] = {}  # from the model's metadata when it has them (configure)

    def warn(self, text: str) -> None:
        """Record a warning once."""
        if text not in self.warnings:
            self.warnings.append(text)

    def output_names(self, graph_outputs: Sequence[str]) -> list[str]:
        """Which graph outputs the decoder reads (default: all of them)."""
        return list(graph_outputs)

    def configure(self, metadata: dict[str, str]) -> None:
        """Read hints from the model's metadata (ONNX metadata_props, e.g. ultralytics `task`, `kpt_shape`)."""
        self.class_names = class_names(metadata)

    @abstractmethod
    def candidates(self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int]) -> tuple[np.ndarray, ...]:
        """Every anchor of image 0: xyxy boxes [N,4] in network-input pixels and class scores [N,nc] in [0,1],
        optionally a third array [N, E] of per-anchor extra channels that `attach` turns into masks/keypoints."""

    def attach(self, dets: Detections, extra: np.ndarray, net_boxes: np.ndarray, outputs: dict[str, np.ndarray],
               input_hw: tuple[int, int], letterbox: Letterbox | None) -> None:
        """Fill masks/keypoints of the kept detections from their extra channels (default: nothing)."""
        return None  # plain box decoders return no extra channels

    def decode(self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int],
               letterbox: Letterbox | None = None) -> Detections:
        """Threshold, class-aware NMS and letterbox undo for one image (masks/keypoints for kept detections only)."""
        cand = self.candidates(outputs, input_hw)
        boxes, cls_scores = cand[0], cand[1]
        extra = cand[2] if len(cand) > 2 else None
        if not len(boxes) or cls_scores.shape[1] == 0:
            return Detections.empty()
        classes = cls_scores.argmax(axis=1)
        scores = np.take_along_axis(cls_scores, classes[:, None], axis=1)[:, 0]
        sel = np.flatnonzero(scores > self.conf)
        if sel.size > self.max_nms:
            sel = sel[np.argsort(-scores[sel], kind="stable")[: self.max_nms]]
        boxes, scores, classes = boxes[sel], scores[sel], classes[sel]
        extra = extra[sel] if extra is not None else None
        boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:4]), np.maximum(boxes[:, :2], boxes[:, 2:4])], 1)
        h, w = input_hw
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        bad = (bw < MIN_SIDE_PX) | (bh < MIN_SIDE_PX) | (bw > MAX_SIDE_FACTOR * w) | (bh > MAX_SIDE_FACTOR * h) \
            | ~np.isfinite(boxes).all(axis=1)
        boxes = np.nan_to_num(boxes, nan=0.0, posinf=1e6, neginf=-1e6)
        keep = batched_nms(boxes, scores, classes, self.iou, self.max_det, self.agnostic)
        net = boxes[keep].astype(np.float32)
        out = undo_letterbox(net, letterbox, input_hw)
        inside = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])  # boxes wholly in the padding vanish
        keep = keep[inside]
        dets = Detections(out[inside], scores[keep].astype(np.float32), classes[keep].astype(np.int64),
                          candidates=int(sel.size), implausible=int(bad.sum()))
        if extra is not None:
            self.attach(dets, extra[keep], net[inside], outputs, input_hw, letterbox)
        return dets

    def describe(self) -> dict:
        """Name, thresholds and detected layout (JSON)."""
        return {"name": self.name, "layout": self.layout, "conf": self.conf, "iou": self.iou,
                "max_det": self.max_det, "agnostic": self.agnostic, **self.info}


def plausibility_warning(dets: Sequence[Detections], hint: str = "") -> str | None:
    """A warning when most candidate boxes are larger than the input or degenerate (wrong anchors/decoder)."""
    cand = sum(d.candidates for d in dets)
    bad = sum(d.implausible for d in dets)
    if cand < 10 or bad <= IMPLAUSIBLE_FRAC * cand:
        return None
    return (f"decoded boxes look implausible: {bad} of {cand} candidate boxes ({100 * bad / cand:.0f}%) are "
            f"larger than the input image or under {MIN_SIDE_PX:g} px wide/high; {hint or 'check the decoder (--task)'}")


def class_names(metadata: dict[str, str]) -> dict[int, str]:
    """Class id -> name from an ultralytics-style `names` entry ("{0: 'person', 1: 'bicycle'}"); {} otherwise.

    Read as a Python literal, never evaluated: a malformed or hostile entry just gives no names."""
    import ast

    text = metadata.get("names")
    if not text or len(text) > 1_000_000:
        return {}
    try:
        v = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return {}
    if isinstance(v, (list, tuple)):
        v = dict(enumerate(v))
    if not isinstance(v, dict):
        return {}
    return {int(k): str(n) for k, n in v.items() if isinstance(k, int) and isinstance(n, (str, int))}
