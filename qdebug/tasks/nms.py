"""Box IoU and class-aware greedy NMS in numpy (no torch), as in ultralytics/YOLOv5 `non_max_suppression`."""

from __future__ import annotations

import numpy as np

BLOCK = 256  # candidates resolved per vectorised step


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of xyxy boxes (float64; 0 where the union is empty)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area_a = np.maximum(a[:, 2] - a[:, 0], 0) * np.maximum(a[:, 3] - a[:, 1], 0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_thr: float,
                max_keep: int | None = None, agnostic: bool = False) -> np.ndarray:
    """Greedy NMS, class-aware unless `agnostic`: indices of kept boxes, highest score first.

    A box is kept when no higher-scored kept box of its class overlaps it with IoU > iou_thr. Candidates
    are taken in score order in blocks: each block is checked against the boxes kept so far in one
    matrix, then resolved within itself, so the work stops soon after `max_keep` boxes are kept.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    if not n:
        return np.zeros(0, dtype=np.int64)
    cls = np.zeros(n, np.int64) if agnostic else np.asarray(classes).reshape(-1)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    limit = n if max_keep is None else max_keep
    kept: list[np.ndarray] = []
    kept_boxes = np.zeros((0, 4))
    kept_cls = np.zeros(0, cls.dtype)
    count = 0
    for start in range(0, n, BLOCK):
        idx = order[start:start + BLOCK]
        b, c = boxes[idx], cls[idx]
        alive = np.ones(len(idx), dtype=bool)
        if len(kept_boxes):
            hit = (box_iou(b, kept_boxes) > iou_thr) & (c[:, None] == kept_cls[None, :])
            alive &= ~hit.any(axis=1)
        over = (box_iou(b, b) > iou_thr) & (c[:, None] == c[None, :])
        take = []
        for j in np.flatnonzero(alive).tolist():
            if not alive[j]:
                continue
            take.append(j)
            if count + len(take) >= limit:
                break
            alive[j + 1:] &= ~over[j, j + 1:]
        if take:
            sel = idx[take]
            kept.append(sel)
            kept_boxes = np.concatenate([kept_boxes, boxes[sel]])
            kept_cls = np.concatenate([kept_cls, cls[sel]])
            count += len(take)
        if count >= limit:
            break
    return np.concatenate(kept).astype(np.int64) if kept else np.zeros(0, dtype=np.int64)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float, max_keep: int | None = None) -> np.ndarray:
    """Class-agnostic greedy NMS (see `batched_nms`)."""
    return batched_nms(boxes, scores, np.zeros(len(np.asarray(scores).reshape(-1)), np.int64), iou_thr, max_keep,
                       agnostic=True)
