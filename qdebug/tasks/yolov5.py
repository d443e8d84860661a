"""YOLOv5 (and YOLOv7-style) anchor-based decoder: decoded `[1, N, 5+nc]`, or raw heads with sigmoid, grid, anchors.

Layouts (auto-detected on the first decode):
- `decoded`: one `[1, N, 5+nc]` tensor: xywh in input pixels, objectness, class probabilities.
- `raw`: per stride `[1, na*(5+nc), h, w]` (or `[1, na, h, w, 5+nc]`) head tensors, the graph cut before
  the decode as done for NPUs. Here: sigmoid (unless the values already lie in [0, 1]),
  xy = (2*s - 0.5 + grid) * stride, wh = (2*s)^2 * anchor (YOLOv5 v6+ / YOLOv7 formula).
Anchors (pixels, per level P3, P4, P5...) come from `--anchors`; models trained with autoanchor have their own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qdebug.errors import QDebugError
from qdebug.tasks import register_decoder
from qdebug.tasks.base import Decoder, needs_sigmoid, sigmoid, xywh2xyxy

DEFAULT_ANCHORS: dict[int, list[list[float]]] = {
    3: [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],  # yolov5s..x P5
    4: [[19, 27, 44, 40, 38, 94], [96, 68, 86, 152, 180, 137], [140, 301, 303, 264, 238, 542],
        [436, 615, 739, 380, 925, 792]],  # P6 models
}
_NUM = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_anchors(spec: str | Sequence[Sequence[float]]) -> list[list[float]]:
    """Anchor levels from `"10,13,16,30,33,23;30,61,...;..."`, a file (one level per line, or one number
    per line as in rknn_model_zoo's anchors_yolov5.txt), or nested sequences. Values are pixels."""
    if not isinstance(spec, str):
        return [[float(v) for v in lvl] for lvl in spec]
    where = "--anchors"
    text = spec
    path = Path(spec)
    if "," not in spec and ";" not in spec and (path.exists() or spec.endswith((".txt", ".yaml", ".yml"))):
        try:
            text = path.read_text()
        except OSError as exc:
            raise QDebugError(f"cannot read anchors ({exc.__class__.__name__})", file=spec,
                              fix="pass a text file with one anchor level per line, or --anchors \"10,13,...;...\"") \
                from None
        where = spec
    levels = []
    for line in re.split(r"[;\n]", text):
        line = line.split("#", 1)[0]
        nums = [float(v) for v in _NUM.findall(line)]
        if nums:
            levels.append(nums)
    if not levels:
        raise QDebugError("no anchor values found", where=where,
                          fix='write e.g. --anchors "10,13,16,30,33,23;30,61,62,45,59,119;116,90,156,198,373,326"')
    if any(v <= 0 for lvl in levels for v in lvl):
        raise QDebugError("anchor sizes must be positive pixels", where=where,
                          fix="give anchors in input pixels (as in the YOLOv5 model yaml)")
    return levels


def resolve_anchors(levels: list[list[float]], nl: int, where: str = "--anchors") -> list[np.ndarray]:
    """Anchor levels -> nl arrays [na, 2]; a flat list (one number per line) is split evenly."""
    if len(levels) == nl and all(len(lv) % 2 == 0 and lv for lv in levels):
        return [np.asarray(lv, np.float32).reshape(-1, 2) for lv in levels]
    flat = [v for lv in levels for v in lv]
    if (len(levels) == 1 or all(len(lv) <= 2 for lv in levels)) and len(flat) % (2 * nl) == 0:
        return [np.asarray(lv, np.float32).reshape(-1, 2) for lv in np.split(np.asarray(flat), nl)]
    raise QDebugError(f"anchors give {len(levels)} level(s) ({', '.join(str(len(lv)) for lv in levels)} values) "
                      f"but the model has {nl} detection heads", where=where,
                      fix=f"give {nl} levels of w,h pairs separated by ';' (one level per line in a file)")


@register_decoder
class YoloV5Decoder(Decoder):
    """YOLOv5 / YOLOv7 anchor-based head (objectness x class probability)."""

    name = "yolov5"
    default_iou = 0.45
    hint = ("wrong anchors silently ruin boxes: pass the anchors the model was trained with via --anchors "
            "(autoanchor models: model.model[-1].anchors * stride)")

    def __init__(self, *args, anchors: str | Sequence[Sequence[float]] | None = None, sigmoid_mode: str = "auto",
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.anchor_levels = parse_anchors(anchors) if anchors is not None else None
        self.sigmoid_mode = sigmoid_mode
        self._plan: list[dict] | None = None
        self._decoded: tuple[str, bool] | None = None  # (output, anchors along axis 1)
        self._logits: bool | None = None

    def _detect(self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int]) -> None:
        heads = [(k, v) for k, v in outputs.items() if v.ndim in (4, 5)]
        three = [(k, v) for k, v in outputs.items() if v.ndim == 3]
        if heads:
            self._plan_raw(heads, input_hw)
            return
        if not three:
            raise QDebugError("no YOLOv5 output found: expected [1, N, 5+nc] or per-stride [1, na*(5+nc), h, w] "
                              f"heads; got {', '.join(f'{k} {tuple(v.shape)}' for k, v in outputs.items())}",
                              where="--task yolov5", fix="pick the decoder matching the model (--task yolov8)")
        name, v = max(three, key=lambda kv: max(kv[1].shape[1:]))
        rows = v.shape[1] >= v.shape[2]
        ch = v.shape[2] if rows else v.shape[1]
        nc = self.nc if self.nc is not None else ch - 5
        if nc < 1 or 5 + nc > ch:
            raise QDebugError(f"output '{name}' {tuple(v.shape)} has too few channels for xywh+obj+{nc} classes",
                              where="--task yolov5", fix="check the model output / --nc")
        self._decoded = (name, rows)
        self.layout = "decoded"
        self.info = {"outputs": [name], "nc": nc, "boxes": int(v.shape[1] if rows else v.shape[2]),
                     "transposed": not rows}
        if self.anchor_levels is not None:
            self.warn("--anchors ignored: the model output is already decoded (anchors are inside the graph)")

    def _plan_raw(self, heads: list[tuple[str, np.ndarray]], input_hw: tuple[int, int]) -> None:
        nl = len(heads)
        given = self.anchor_levels is not None
        if given:
            anchors = resolve_anchors(self.anchor_levels, nl)  # type: ignore[arg-type]
        elif nl in DEFAULT_ANCHORS:
            anchors = resolve_anchors(DEFAULT_ANCHORS[nl], nl)
            self.warn(f"no --anchors given: assumed the YOLOv5 default COCO anchors for {nl} heads; models "
                      "trained with autoanchor have their own and decode to wrong boxes with these")
        else:
            raise QDebugError(f"the model has {nl} raw heads and no default anchors exist for that",
                              where="--anchors", fix="pass --anchors with one level per head")
        ordered = sorted(heads, key=lambda kv: -(kv[1].shape[-2] * kv[1].shape[-1] if kv[1].ndim == 4
                                                 else kv[1].shape[2] * kv[1].shape[3]))
        plan = []
        for (name, v), anc in zip(ordered, anchors, strict=True):
            na = len(anc)
            if v.ndim == 5:
                if v.shape[1] != na:
                    raise QDebugError(f"head '{name}' {tuple(v.shape)} has {v.shape[1]} anchors per cell but "
                                      f"--anchors gives {na}", where="--anchors", fix="give na w,h pairs per level")
                h, w, no = int(v.shape[2]), int(v.shape[3]), int(v.shape[4])
            else:
                c, h, w = int(v.shape[1]), int(v.shape[2]), int(v.shape[3])
                if c % na:
                    raise QDebugError(f"head '{name}' has {c} channels, not a multiple of {na} anchors per cell",
                                      where="--anchors", fix="give as many w,h pairs per level as the model has "
                                      "anchors (channels = na*(5+nc))")
                no = c // na
            if no < 6 or (self.nc is not None and no != 5 + self.nc):
                raise QDebugError(f"head '{name}' {tuple(v.shape)} does not split into {na} anchors x (5+nc)",
                                  where="--anchors", fix="check the anchor count per level / --nc")
            stride = input_hw[0] / h
            plan.append({"name": name, "h": h, "w": w, "na": na, "no": no, "five_d": v.ndim == 5,
                         "stride": float(stride), "anchors": anc})
        if len({p["no"] for p in plan}) != 1:
            raise QDebugError("heads disagree on the class count", where="--task yolov5", fix="check the model")
        self._plan = plan
        self.layout = "raw"
        self.info = {"outputs": [p["name"] for p in plan], "nc": plan[0]["no"] - 5,
                     "strides": [p["stride"] for p in plan],
                     "anchors": [p["anchors"].ravel().tolist() for p in plan],
                     "anchors_source": "--anchors" if given else "default (YOLOv5 COCO)"}

    def candidates(self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        if self.layout is None:
            self._detect(outputs, input_hw)
        if self.layout == "decoded":
            assert self._decoded is not None
            name, rows = self._decoded
            v = outputs[name][0]
            v = (v if rows else v.T).astype(np.float32)
            nc = self.info["nc"]
            if self._logits is None:
                self._logits = needs_sigmoid(v[:, 4:5 + nc], mode=self.sigmoid_mode)
                if self._logits:
                    self.warn("objectness/class values are outside [0, 1]: treated as logits (sigmoid applied)")
            conf = sigmoid(v[:, 4:5 + nc]) if self._logits else v[:, 4:5 + nc]
            return xywh2xyxy(v[:, :4]), conf[:, 1:] * conf[:, :1]
        assert self._plan is not None
        if self._logits is None:
            self._logits = needs_sigmoid(*(outputs[p["name"]] for p in self._plan), mode=self.sigmoid_mode)
            self.info["sigmoid_applied"] = self._logits
        boxes, scores = [], []
        for p in self._plan:
            na, no, h, w = p["na"], p["no"], p["h"], p["w"]
            v = outputs[p["name"]][0].astype(np.float32)
            y = v if p["five_d"] else v.reshape(na, no, h, w).transpose(0, 2, 3, 1)  # [na, h, w, no]
            y = sigmoid(y) if self._logits else y
            gy, gx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
            grid = np.stack([gx, gy], axis=-1)[None]  # [1, h, w, 2]
            xy = (y[..., :2] * 2.0 - 0.5 + grid) * np.float32(p["stride"])
            wh = (y[..., 2:4] * 2.0) ** 2 * p["anchors"][:, None, None, :]
            boxes.append(xywh2xyxy(np.concatenate([xy, wh], axis=-1)).reshape(-1, 4))
            scores.append((y[..., 5:] * y[..., 4:5]).reshape(-1, no - 5))
        return np.concatenate(boxes), np.concatenate(scores)
