"""YOLOv8 / YOLO11 decoder: the concatenated `[1, 4+nc, anchors]` output, or rknn_model_zoo-style split heads.

Layouts (auto-detected from the output shapes on the first decode):
- `concat`: one `[1, 4+nc, A]` (or transposed `[1, A, 4+nc]`) tensor, xywh in input pixels, then
  class scores (sigmoid already applied in the model). Heads (ultralytics export, nn/modules/head.py):
  `detect`; `segment` = 32 mask coefficients after the class scores plus a `[1, 32, H/4, W/4]` prototype
  output; `pose` = K*D keypoint values after the class scores, per keypoint x, y (input pixels, decoded in
  the graph) and, for D = 3, a visibility already passed through a sigmoid. The head is read from the
  shapes (a second 4-D output -> segment), `--kpt-shape`/`--nc`, or the ONNX metadata ultralytics writes
  (`task`, `kpt_shape`, `names`).
- `split`: per stride a `[1, 4*reg_max, h, w]` DFL box tensor (reg_max 16 -> 64 channels) and a
  `[1, nc, h, w]` class tensor, optionally a `[1, 1, h, w]` score-sum tensor. DFL softmax, dist2bbox
  and the stride multiply run here in numpy; strides are input size / grid size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from qdebug.errors import QDebugError
from qdebug.inputs.dataset import Letterbox
from qdebug.tasks import register_decoder
from qdebug.tasks.base import Decoder, Detections, needs_sigmoid, sigmoid, undo_letterbox_points, xywh2xyxy
from qdebug.tasks.masks import build_masks

STRIDE_SETS = ((8, 16, 32), (8, 16, 32, 64), (4, 8, 16, 32))


def expected_anchors(input_hw: tuple[int, int]) -> set[int]:
    """Anchor counts of the usual stride sets (P3-P5, P3-P6, P2-P5) for an input size."""
    h, w = input_hw
    return {sum(-(-h // s) * -(-w // s) for s in ss) for ss in STRIDE_SETS}


def dfl(box: np.ndarray, reg_max: int) -> np.ndarray:
    """DFL: [4*reg_max, n] logits -> [4, n] expected distances (softmax over the bins, dot 0..reg_max-1)."""
    x = box.reshape(4, reg_max, -1).astype(np.float32)
    x = np.exp(x - x.max(axis=1, keepdims=True))
    x /= x.sum(axis=1, keepdims=True)
    return np.einsum("abn,b->an", x, np.arange(reg_max, dtype=np.float32))


def dist2bbox(dist: np.ndarray, h: int, w: int, stride: float) -> np.ndarray:
    """ltrb distances [4, h*w] (grid units) -> xyxy boxes [h*w, 4] in input pixels."""
    gy, gx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5, indexing="ij")
    gx, gy = gx.ravel(), gy.ravel()
    return np.stack([gx - dist[0], gy - dist[1], gx + dist[2], gy + dist[3]], axis=1) * np.float32(stride)


@register_decoder
class YoloV8Decoder(Decoder):
    """YOLOv8/YOLO11 (anchor-free, DFL) detection head."""

    name = "yolov8"
    default_iou = 0.7

    def __init__(self, *args, score_sum: bool = True, sigmoid_mode: str = "auto",
                 kpt_shape: str | Sequence[int] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.use_score_sum = score_sum
        self.sigmoid_mode = sigmoid_mode
        self.kpt_shape = parse_kpt_shape(kpt_shape) if kpt_shape is not None else None
        self.meta: dict[str, object] = {}  # hints from the ONNX metadata (task, kpt_shape, nc)
        self.head = "detect"
        self._extra: tuple[int, int] | None = None  # channel range of mask coefficients / keypoints
        self._proto: str | None = None  # prototype output of a segment head
        self._plan: list[dict] | None = None
        self._concat: tuple[str, bool] | None = None  # (output name, anchors on the last axis)
        self._logits: bool | None = None
        self._normalized: bool | None = None

    def configure(self, metadata: dict[str, str]) -> None:
        """Read ultralytics' ONNX metadata: `task` (segment/pose), `kpt_shape` "[17, 3]", `names` (class count)."""
        super().configure(metadata)  # class names
        task = str(metadata.get("task", "")).strip().lower()
        if task:
            self.meta["task"] = task
        kp = metadata.get("kpt_shape")
        if kp:
            nums = [int(x) for x in re.findall(r"\d+", kp)]
            if len(nums) == 2 and nums[0] > 0 and nums[1] in (2, 3):
                self.meta["kpt_shape"] = (nums[0], nums[1])
        names = metadata.get("names")
        if names:
            ids = re.findall(r"(\d+)\s*:", names)
            if ids:
                self.meta["nc"] = len(ids)

    # ------------------------------------------------------------------ layout
    def _head(self, outputs: dict[str, np.ndarray], name: str, ch: int) -> int:
        """Decide the head (detect/segment/pose) of the concat output `name` with `ch` channels; returns nc."""
        opt_nc = self.nc
        meta_nc = self.meta.get("nc") if isinstance(self.meta.get("nc"), int) else None
        protos = [(k, v) for k, v in outputs.items() if k != name and v.ndim == 4 and v.shape[0] == 1
                  and 0 < v.shape[1] < ch - 4]
        kpt = self.kpt_shape or self.meta.get("kpt_shape") or ((17, 3) if self.meta.get("task") == "pose" else None)
        where, fix_nc = "--task yolov8", "pass --nc N (classes) and, for a pose head, --kpt-shape K,D"
        if protos:
            self._proto, pv = protos[0]
            nm = int(pv.shape[1])
            nc = opt_nc if opt_nc is not None else ch - 4 - nm
            if nc < 1 or 4 + nc + nm != ch:
                raise QDebugError(f"segment head: output '{name}' has {ch} channels but 4 box + {nc} classes + {nm} "
                                  f"mask coefficients (prototypes '{self._proto}' {tuple(pv.shape)}) do not add up",
                                  where=where, fix=fix_nc)
            self.head, self._extra = "segment", (4 + nc, ch)
            self.info["masks"] = {"prototypes": self._proto, "nm": nm, "resolution": [int(pv.shape[2]),
                                                                                     int(pv.shape[3])]}
            return nc
        if kpt is None and opt_nc is not None and ch - 4 - opt_nc > 0:
            extra = ch - 4 - opt_nc
            if extra % 3:
                self.warn(f"output '{name}' has {extra} channels after 4 box values + {opt_nc} classes: decoded as "
                          "boxes only; pass --kpt-shape K,D if they are keypoints")
            else:
                kpt = (extra // 3, 3)  # ultralytics pose exports carry (x, y, visibility) per keypoint
        if kpt is not None:
            k, dim = int(kpt[0]), int(kpt[1])
            nc = opt_nc if opt_nc is not None else meta_nc if meta_nc is not None else ch - 4 - k * dim
            if nc < 1 or 4 + nc + k * dim != ch:
                raise QDebugError(f"pose head: output '{name}' has {ch} channels but 4 box + {nc} classes + {k}x{dim} "
                                  "keypoint values do not add up", where="--kpt-shape", fix=fix_nc)
            self.head, self._extra, self.kpt_shape = "pose", (4 + nc, ch), (k, dim)
            self.info["kpt_shape"] = [k, dim]
            self.info["oks_sigmas"] = "coco" if k == 17 else f"uniform 1/{k}"
            return nc
        nc = opt_nc if opt_nc is not None else meta_nc if meta_nc is not None and meta_nc <= ch - 4 else ch - 4
        if self.meta.get("task") in ("segment", "pose"):
            self.warn(f"the model metadata says task={self.meta['task']} but the outputs have no "
                      f"{'prototype output' if self.meta['task'] == 'segment' else 'keypoint channels'}: boxes only")
        elif opt_nc is None and meta_nc is None and ch == 4 + 1 + 17 * 3:
            self.warn(f"output '{name}' has {ch} channels, read as {ch - 4} classes; a pose export (1 class, 17 "
                      "keypoints) has the same width: pass --kpt-shape 17,3 if it is one")
        return nc

    def _detect(self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int]) -> None:
        three = [(k, v) for k, v in outputs.items() if v.ndim == 3]
        four = [(k, v) for k, v in outputs.items() if v.ndim == 4]
        if four and not three:
            self._plan = self._split_plan(four, input_hw)
            self.layout = "split"
            self.info = {"outputs": [k for lv in self._plan for k in (lv["box"], lv["cls"], lv["sum"]) if k],
                         "strides": [lv["stride"] for lv in self._plan], "reg_max": self._plan[0]["reg_max"],
                         "nc": self._plan[0]["nc"], "score_sum": any(lv["sum"] for lv in self._plan)}
            return
        if not three:
            raise QDebugError("no YOLOv8 output found: expected one [1, 4+nc, anchors] tensor or per-stride "
                              f"[1, 64, h, w] + [1, nc, h, w] heads; got {_shapes(outputs)}", where="--task yolov8",
                              fix="pick the decoder matching the model (--task yolov5 for anchor-based heads)")
        want = expected_anchors(input_hw)
        best = None
        for name, v in three:
            if v.shape[2] in want:
                best = (name, True)
            elif v.shape[1] in want:
                best = (name, False)
            if best:
                break
        if best is None:  # unusual stride set: the longer axis holds the anchors
            name, v = max(three, key=lambda kv: max(kv[1].shape[1:]))
            best = (name, v.shape[2] >= v.shape[1])
        self._concat = best
        v = outputs[best[0]]
        ch = v.shape[1] if best[1] else v.shape[2]
        self.info = {}
        nc = self._head(outputs, best[0], ch)
        if nc < 1 or 4 + nc > ch:
            raise QDebugError(f"output '{best[0]}' {tuple(v.shape)} has {ch} channels, too few for 4 box values "
                              f"+ {nc} classes", where="--task yolov8", fix="check the model output / --nc")
        self.layout = "concat"
        self.info = {"outputs": [best[0]] + ([self._proto] if self._proto else []), "nc": nc, "head": self.head,
                     "anchors": int(v.shape[2] if best[1] else v.shape[1]), "transposed": not best[1], **self.info}

    def _split_plan(self, four: list[tuple[str, np.ndarray]], input_hw: tuple[int, int]) -> list[dict]:
        groups: dict[tuple[int, int], list[tuple[str, int]]] = {}
        for name, v in four:
            groups.setdefault((int(v.shape[2]), int(v.shape[3])), []).append((name, int(v.shape[1])))
        plan = []
        for (h, w), items in sorted(groups.items(), key=lambda kv: -kv[0][0] * kv[0][1]):
            sums = [n for n, c in items if c == 1]
            rest = [(n, c) for n, c in items if c != 1]
            if not rest and len(sums) >= 2:  # nc == 1: class tensor then score sum (rknn order)
                rest, sums = [(sums[0], 1)], sums[1:]
            dfl_like = [(n, c) for n, c in rest if c % 4 == 0 and c != self.nc]
            box = next((nc_ for nc_ in dfl_like if nc_[1] == 64), dfl_like[0] if dfl_like else None)
            others = [(n, c) for n, c in rest if box is None or n != box[0]]
            if box is None or len(others) != 1:
                raise QDebugError(f"cannot split the {h}x{w} head into a DFL box tensor and a class tensor: "
                                  f"{[(n, c) for n, c in items]}", where="--task yolov8",
                                  fix="export per stride [1, 64, h, w] box + [1, nc, h, w] class outputs "
                                      "(rknn_model_zoo style) or the single concatenated output")
            stride = input_hw[0] / h
            if abs(stride * w - input_hw[1]) > stride or abs(stride - round(stride)) > 1e-6:
                raise QDebugError(f"head grid {h}x{w} does not divide the input {input_hw[0]}x{input_hw[1]}",
                                  where="--task yolov8", fix="check --size matches the exported model")
            plan.append({"box": box[0], "reg_max": box[1] // 4, "cls": others[0][0], "nc": others[0][1],
                         "sum": sums[0] if sums else None, "h": h, "w": w, "stride": int(round(stride))})
        ncs = {lv["nc"] for lv in plan}
        if len(ncs) != 1:
            raise QDebugError(f"class tensors disagree on the class count: {sorted(ncs)}", where="--task yolov8",
                              fix="check the model outputs")
        return plan

    # ------------------------------------------------------------------ decode
    def candidates(self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int]) -> tuple[np.ndarray, ...]:
        if self.layout is None:
            self._detect(outputs, input_hw)
        if self.layout == "concat":
            assert self._concat is not None
            name, last = self._concat
            v = outputs[name][0]
            v = v.T if last else v  # [A, C]
            nc = self.info["nc"]
            xywh, cls = v[:, :4].astype(np.float32), v[:, 4:4 + nc].astype(np.float32)
            if self._normalized is None:
                self._normalized = bool(xywh.size) and float(np.abs(xywh).max()) <= 2.0 and min(input_hw) > 32
                if self._normalized:
                    self.info["normalized_boxes"] = True
            if self._normalized:
                xywh = xywh * np.array([input_hw[1], input_hw[0]] * 2, np.float32)
            if self._logits is None:
                self._logits = needs_sigmoid(cls, mode=self.sigmoid_mode)
                if self._logits:
                    self.warn("class scores are outside [0, 1]: treated as logits (sigmoid applied)")
            cls = sigmoid(cls) if self._logits else cls
            if self._extra is not None:  # mask coefficients / keypoints ride along through NMS
                return xywh2xyxy(xywh), cls, v[:, self._extra[0]:self._extra[1]].astype(np.float32)
            return xywh2xyxy(xywh), cls
        assert self._plan is not None
        boxes, scores = [], []
        if self._logits is None:
            self._logits = needs_sigmoid(*(outputs[lv["cls"]] for lv in self._plan), mode=self.sigmoid_mode)
            self.info["class_sigmoid_applied"] = self._logits
        for lv in self._plan:
            h, w = lv["h"], lv["w"]
            box = outputs[lv["box"]][0].reshape(lv["reg_max"] * 4, h * w)
            dist = dfl(box, lv["reg_max"]) if lv["reg_max"] > 1 else box.astype(np.float32)
            cls = outputs[lv["cls"]][0].reshape(lv["nc"], h * w).T.astype(np.float32)
            cls = sigmoid(cls) if self._logits else cls
            if lv["sum"] and self.use_score_sum:  # the deployed C code skips cells whose score sum is low
                ssum = outputs[lv["sum"]][0].reshape(h * w)
                cls = np.where((ssum >= self.conf)[:, None], cls, 0.0).astype(np.float32)
            boxes.append(dist2bbox(dist, h, w, lv["stride"]))
            scores.append(cls)
        return np.concatenate(boxes), np.concatenate(scores)


    def attach(self, dets: Detections, extra: np.ndarray, net_boxes: np.ndarray, outputs: dict[str, np.ndarray],
               input_hw: tuple[int, int], letterbox: Letterbox | None) -> None:
        """Masks (segment) or keypoints (pose) of the kept detections."""
        if self.head == "segment" and self._proto is not None:
            dets.masks = build_masks(extra, outputs[self._proto][0], net_boxes, input_hw)
        elif self.head == "pose" and self.kpt_shape is not None:
            k, dim = self.kpt_shape
            kp = extra.reshape(len(extra), k, dim).astype(np.float32)
            xy = kp[..., :2] * np.array([input_hw[1], input_hw[0]], np.float32) if self._normalized else kp[..., :2]
            vis = kp[..., 2:3] if dim == 3 else np.ones((len(kp), k, 1), np.float32)
            dets.keypoints = np.concatenate([undo_letterbox_points(xy, letterbox, input_hw), vis], axis=-1)


def parse_kpt_shape(value: str | Sequence[int]) -> tuple[int, int]:
    """`--kpt-shape 17,3` -> (17, 3): keypoints per instance and values per keypoint (2 = x,y; 3 = x,y,visibility)."""
    nums = [int(x) for x in re.findall(r"-?\d+", value)] if isinstance(value, str) else [int(x) for x in value]
    if len(nums) != 2 or nums[0] < 1 or nums[1] not in (2, 3):
        raise QDebugError(f"--kpt-shape '{value}' is not K,D with K >= 1 keypoints and D = 2 or 3 values each",
                          where="--kpt-shape", fix="pass e.g. --kpt-shape 17,3 (COCO person keypoints)")
    return nums[0], nums[1]


def _shapes(outputs: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items())

