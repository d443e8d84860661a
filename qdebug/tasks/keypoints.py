"""Keypoints of pose heads: OKS (object keypoint similarity) and pixel error against the float keypoints.

OKS as in COCO / ultralytics `kpt_iou`: for a reference instance with keypoints g, visibility v and area s,
and a test instance p, OKS = sum_k [v_k visible] exp(-d_k^2 / (2 s (2 sigma_k)^2)) / sum_k [v_k visible], with
d_k the distance of keypoint k. sigma: the COCO person sigmas for 17 keypoints, else 1/K per keypoint (the
ultralytics `yolo val` rule for custom keypoint sets). The area is the reference box area times 0.53, as
ultralytics' pose validator does. A float keypoint counts as visible when its visibility is >= 0.5 (the
exported value is already a sigmoid); keypoints without a visibility channel are all visible.
"""

from __future__ import annotations

import numpy as np

# COCO keypoint sigmas (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles)
COCO_SIGMAS = np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87,
                        0.89, 0.89]) / 10.0
AREA_FACTOR = 0.53  # box area -> object area (ultralytics PoseValidator)
VISIBLE = 0.5  # a reference keypoint with visibility >= this is scored


def sigmas_for(k: int) -> np.ndarray:
    """Per-keypoint sigmas: COCO for 17 keypoints, else uniform 1/K (ultralytics' rule for other sets)."""
    return COCO_SIGMAS.copy() if k == 17 else np.full(k, 1.0 / k)


def visible(kpts: np.ndarray) -> np.ndarray:
    """[..., K] bool: which keypoints of [..., K, 3] count as visible."""
    return kpts[..., 2] >= VISIBLE


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Object areas [N] from xyxy boxes: width * height * AREA_FACTOR."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0) * AREA_FACTOR


def oks(test: np.ndarray, ref: np.ndarray, ref_area: np.ndarray, sigmas: np.ndarray | None = None,
        eps: float = 1e-7) -> np.ndarray:
    """OKS matrix [D, G] of test keypoints [D, K, 3] against reference keypoints [G, K, 3] with areas [G]."""
    test = np.asarray(test, np.float64)
    ref = np.asarray(ref, np.float64)
    d_n, g_n = len(test), len(ref)
    if d_n == 0 or g_n == 0:
        return np.zeros((d_n, g_n))
    sig = sigmas_for(ref.shape[1]) if sigmas is None else np.asarray(sigmas, np.float64)
    d2 = ((test[:, None, :, :2] - ref[None, :, :, :2]) ** 2).sum(-1)  # [D, G, K]
    e = d2 / ((2 * sig) ** 2 * (np.asarray(ref_area, np.float64)[None, :, None] + eps) * 2)
    vis = visible(ref)[None].astype(np.float64)  # [1, G, K]
    return (np.exp(-e) * vis).sum(-1) / (vis.sum(-1) + eps)


def keypoint_errors(test: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Pixel distances of paired instances' keypoints ([P, K, 3] each), visible reference keypoints only (flat)."""
    test, ref = np.asarray(test, np.float64), np.asarray(ref, np.float64)
    d = np.sqrt(((test[..., :2] - ref[..., :2]) ** 2).sum(-1))
    return d[visible(ref)]
