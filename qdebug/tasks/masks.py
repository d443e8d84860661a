"""Instance masks of segment heads: built per kept detection from prototypes, stored cropped, compared by IoU.

Masks follow ultralytics `process_mask`: logits = coefficients @ prototypes, cropped to the detection's box
scaled to prototype resolution (column c is inside when x1·mw/W <= c < x2·mw/W, rows alike), binary where
the logit is > 0 (sigmoid > 0.5). They stay at prototype resolution (H/4 × W/4 for YOLOv8/YOLO11) in
network-input coordinates: float and quantized masks of an image share that grid, so their IoU needs no
upsampling, and only the box-sized crop of each kept detection is ever materialised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CropMask:
    """A binary mask stored as its box crop: `bits` [h, w] bool placed at row `y0`, column `x0` of the grid."""

    y0: int
    x0: int
    bits: np.ndarray

    @property
    def area(self) -> int:
        """Pixels set."""
        return int(self.bits.sum())

    @classmethod
    def from_full(cls, mask: np.ndarray) -> CropMask:
        """Wrap a full-frame binary mask (tests, hand-made masks)."""
        return cls(0, 0, np.asarray(mask, dtype=bool))

    def to_json(self) -> dict:
        """Placement, size and the row-major run lengths of the bits (first run: unset pixels), for pictures
        drawn from a saved JSON."""
        flat = self.bits.ravel()
        bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
        runs = np.diff(bounds).astype(int).tolist()
        if flat.size and flat[0]:
            runs = [0, *runs]
        h, w = self.bits.shape
        return {"y0": self.y0, "x0": self.x0, "h": int(h), "w": int(w), "runs": runs}

    @classmethod
    def from_json(cls, data: dict) -> CropMask:
        """The mask `to_json` wrote."""
        runs = [int(r) for r in data["runs"]]
        bits = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
        return cls(int(data["y0"]), int(data["x0"]), bits.reshape(int(data["h"]), int(data["w"])))

    def full(self, hw: tuple[int, int]) -> np.ndarray:
        """The mask pasted into an all-false [h, w] frame (clipped to the frame)."""
        out = np.zeros(hw, dtype=bool)
        h, w = self.bits.shape
        y1, x1 = min(hw[0], self.y0 + h), min(hw[1], self.x0 + w)
        if y1 > self.y0 and x1 > self.x0:
            out[self.y0:y1, self.x0:x1] = self.bits[:y1 - self.y0, :x1 - self.x0]
        return out


def crop_range(lo: float, hi: float, ratio: float, size: int) -> tuple[int, int]:
    """Grid indices i with lo·ratio <= i < hi·ratio, clipped to [0, size) (ultralytics `crop_mask` rule)."""
    a = int(np.clip(np.ceil(lo * ratio), 0, size))
    b = int(np.clip(np.ceil(hi * ratio), 0, size))
    return a, max(a, b)


def build_masks(coef: np.ndarray, protos: np.ndarray, boxes: np.ndarray, input_hw: tuple[int, int]) -> list[CropMask]:
    """Masks of kept detections: coef [K, nm], protos [nm, mh, mw], boxes [K, 4] xyxy in network-input pixels."""
    nm, mh, mw = protos.shape
    ry, rx = mh / input_hw[0], mw / input_hw[1]
    out = []
    for c, b in zip(np.asarray(coef, np.float32), np.asarray(boxes, np.float32), strict=True):
        x0, x1 = crop_range(float(b[0]), float(b[2]), rx, mw)
        y0, y1 = crop_range(float(b[1]), float(b[3]), ry, mh)
        crop = protos[:, y0:y1, x0:x1].reshape(nm, -1).astype(np.float32)
        out.append(CropMask(y0, x0, (c @ crop).reshape(y1 - y0, x1 - x0) > 0))
    return out


def mask_iou(a: Sequence[CropMask], b: Sequence[CropMask]) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of cropped masks (0 where the union is empty)."""
    out = np.zeros((len(a), len(b)))
    area_b = [m.area for m in b]
    for i, m in enumerate(a):
        am = m.area
        h, w = m.bits.shape
        for j, n in enumerate(b):
            nh, nw = n.bits.shape
            y0, y1 = max(m.y0, n.y0), min(m.y0 + h, n.y0 + nh)
            x0, x1 = max(m.x0, n.x0), min(m.x0 + w, n.x0 + nw)
            inter = 0
            if y1 > y0 and x1 > x0:  # crops overlap: count common pixels in the overlap only
                inter = int(np.count_nonzero(m.bits[y0 - m.y0:y1 - m.y0, x0 - m.x0:x1 - m.x0]
                                             & n.bits[y0 - n.y0:y1 - n.y0, x0 - n.x0:x1 - n.x0]))
            union = am + area_b[j] - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out
