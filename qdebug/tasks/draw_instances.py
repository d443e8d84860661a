"""Mask and keypoint layers of the detection pictures (segment and pose heads; Pillow only, like the boxes).

Masks live on the prototype grid of the network input (qdebug/tasks/masks.py); each picture pixel is mapped
back through the upscale, the letterbox and the grid ratio to the grid cell it shows, so a mask lands where
the float or quantized model put it on the original image. Keypoints are already in image pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from qdebug.inputs.dataset import Letterbox
from qdebug.tasks.keypoints import VISIBLE
from qdebug.tasks.masks import CropMask

if TYPE_CHECKING:
    from PIL import Image, ImageDraw

GREEN = (0, 200, 0)  # float
RED = (230, 30, 30)  # quantized
HIGHLIGHT = (245, 160, 0)  # keypoint error lines, the largest errors ringed (orange: white tag text reads on it)
MASK_ALPHA = 0.4  # mask tint: the image stays visible under it, and float + quantized overlap mixes both tints
POINT_RADIUS = 3
WORST_KEYPOINTS = 3  # keypoint errors ringed and tagged per picture
# ultralytics' COCO-pose skeleton (1-based keypoint indices) for 17-keypoint heads
COCO_SKELETON = ((16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
                 (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7))


@dataclass(frozen=True)
class Placement:
    """Where the network input sits on the original image: the input (H, W), the mask grid (h, w) and the
    letterbox record of the image (None: the image was resized to the input without one)."""

    input_hw: tuple[int, int]
    mask_hw: tuple[int, int] | None = None
    letterbox: Letterbox | None = None


def _grid_index(n_out: int, scale: float, net: int, grid: int, ratio: float, pad: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid index of each picture pixel along one axis and whether it lies on the grid."""
    centre = (np.arange(n_out) + 0.5) / scale  # original-image pixel centres
    cell = np.floor((centre * ratio + pad) * grid / net).astype(np.int64)
    return cell.clip(0, grid - 1), (cell >= 0) & (cell < grid)


def mask_pixels(masks: Sequence[CropMask], size: tuple[int, int], scale: float, place: Placement) -> np.ndarray:
    """[h, w] bool: picture pixels (picture `size` = (w, h), the original image times `scale`) under any mask."""
    w, h = size
    (net_h, net_w), (mh, mw) = place.input_hw, place.mask_hw or place.input_hw
    lb = place.letterbox
    ow, oh = w / scale, h / scale
    if lb is None:
        sx, sy, px, py = net_w / ow, net_h / oh, 0.0, 0.0
    elif lb.pad_x == 0 and lb.pad_y == 0:  # a plain resize (the rule of undo_letterbox)
        sx, sy, px, py = net_w / lb.orig_w, net_h / lb.orig_h, 0.0, 0.0
    else:
        sx, sy, px, py = lb.scale, lb.scale, lb.pad_x, lb.pad_y
    cols, vc = _grid_index(w, scale, net_w, mw, sx, px)
    rows, vr = _grid_index(h, scale, net_h, mh, sy, py)
    grid = np.zeros((mh, mw), dtype=bool)
    for m in masks:
        grid |= m.full((mh, mw))
    return grid[np.ix_(rows, cols)] & vr[:, None] & vc[None, :]


def overlay_masks(im: Image.Image, float_masks: Sequence[CropMask], quant_masks: Sequence[CropMask], scale: float,
                  place: Placement) -> Image.Image:
    """The picture with the float masks tinted green and the quantized masks red, semi-transparent."""
    from PIL import Image

    arr = np.asarray(im, dtype=np.float32).copy()
    for masks, colour in ((float_masks, GREEN), (quant_masks, RED)):
        sel = mask_pixels(masks, im.size, scale, place)
        arr[sel] = arr[sel] * (1.0 - MASK_ALPHA) + np.asarray(colour, np.float32) * MASK_ALPHA
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def _skeleton(draw: ImageDraw.ImageDraw, kpts: np.ndarray, scale: float, colour: tuple[int, int, int]) -> None:
    """One instance: limbs between visible keypoints (COCO skeleton for 17 keypoints), then the points."""
    vis = kpts[:, 2] >= VISIBLE
    if len(kpts) == 17:
        for a, b in COCO_SKELETON:
            if vis[a - 1] and vis[b - 1]:
                draw.line([tuple(kpts[a - 1, :2] * scale), tuple(kpts[b - 1, :2] * scale)], fill=colour, width=2)
    r = POINT_RADIUS
    for x, y in kpts[vis, :2] * scale:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def draw_keypoints(draw: ImageDraw.ImageDraw, float_kpts: np.ndarray, quant_kpts: np.ndarray,
                   pairs: tuple[np.ndarray, np.ndarray], scale: float,
                   tag: Callable[[float, float, str, tuple[int, int, int]], None]) -> str:
    """Float (green) and quantized (red) skeletons; per matched pair an orange line from each visible float
    keypoint to its quantized one, the largest errors ringed and tagged. Returns the worst error as text."""
    errors = []  # (pixels, float point, quantized point), visible float keypoints of matched pairs
    for r, t in zip(*pairs, strict=True):
        f, q = np.asarray(float_kpts[r], np.float64), np.asarray(quant_kpts[t], np.float64)
        for j in np.flatnonzero(f[:, 2] >= VISIBLE):
            d = float(np.hypot(*(q[j, :2] - f[j, :2])))
            errors.append((d, f[j, :2] * scale, q[j, :2] * scale))
            draw.line([tuple(f[j, :2] * scale), tuple(q[j, :2] * scale)], fill=HIGHLIGHT, width=1)
    for k in float_kpts:  # the points over the error lines
        _skeleton(draw, np.asarray(k, np.float64), scale, GREEN)
    for k in quant_kpts:
        _skeleton(draw, np.asarray(k, np.float64), scale, RED)
    errors.sort(key=lambda e: -e[0])
    r = POINT_RADIUS + 3
    for d, _, (x, y) in [e for e in errors if e[0] >= 0.5][:WORST_KEYPOINTS]:
        draw.ellipse((x - r, y - r, x + r, y + r), outline=HIGHLIGHT, width=2)
        tag(x + r, y + r + 12, f"{d:.1f}px", HIGHLIGHT)
    return f"{errors[0][0]:.1f} px" if errors else ""
