"""YOLOv8 / YOLO11 decoder: the concatenated `[1, 4+nc, anchors]` output, or rknn_model_zoo-style split heads.

Layouts (auto-detected from the output shapes on the first decode):
- `concat`: one `[1, 4+nc, A]` (or transposed `[1, A, 4+nc]`) tensor, xywh in input pixels, then
  class scores (sigmoid already applied in the model).
- `split`: per stride a `[1, 4*reg_max, h, w]` DFL box tensor (reg_max 16 -> 64 channels) and a
  `[1, nc, h, w]` class tensor, optionally a `[1, 1, h, w]` score-sum tensor. DFL softmax, dist2bbox
  and the stride multiply run here in numpy; strides are input size / grid size.
"""

from __future__ import annotations

import numpy as np

from qdebug.errors import QDebugError
from qdebug.tasks import register_decoder
from qdebug.tasks.base import Decoder, needs_sigmoid, sigmoid, xywh2xyxy

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

    def __init__(self, *args, score_sum: bool = True, sigmoid_mode: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.use_score_sum = score_sum
        self.sigmoid_mode = sigmoid_mode
        self._plan: list[dict] | None = None
        self._concat: tuple[str, bool] | None = None  # (output name, anchors on the last axis)
        self._logits: bool | None = None
        self._normalized: bool | None = None

    # ------------------------------------------------------------------ layout
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
        nc = self.nc if self.nc is not None else ch - 4
        if nc < 1 or 4 + nc > ch:
            raise QDebugError(f"output '{best[0]}' {tuple(v.shape)} has {ch} channels, too few for 4 box values "
                              f"+ {nc} classes", where="--task yolov8", fix="check the model output / --nc")
        self.layout = "concat"
        self.info = {"outputs": [best[0]], "nc": nc, "anchors": int(v.shape[2] if best[1] else v.shape[1]),
                     "transposed": not best[1]}

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
    def candidates(self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
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
            return xywh2xyxy(xywh), sigmoid(cls) if self._logits else cls
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


def _shapes(outputs: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items())

