"""Pictures for the report: float boxes (green) and quantized boxes (red, dashed) over the image (Pillow only).

Float boxes the quantized model lost are drawn thick with a "lost" tag; quantized boxes without a float
partner carry an "added" tag, so lost and shifted boxes are visible at a glance. Segment heads add their
instance masks (float green, quantized red, semi-transparent: where both agree the tints mix), pose heads
their keypoints and skeletons (float green, quantized red) with the largest keypoint errors of matched
instances ringed in orange and tagged in pixels (qdebug/tasks/draw_instances.py).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qdebug.fileio import atomic_write
from qdebug.inputs.dataset import Letterbox
from qdebug.tasks.agreement import agreement
from qdebug.tasks.base import Detections
from qdebug.tasks.draw_instances import GREEN, RED, Placement, draw_keypoints, overlay_masks
from qdebug.tasks.masks import CropMask

if TYPE_CHECKING:
    from PIL import Image, ImageDraw

MIN_SIDE = 480  # small images are upscaled so boxes and tags stay readable
MAX_TAGS = 40  # above this many boxes only "lost"/"added" boxes get a text tag


def _dashed_rect(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], color: tuple[int, int, int], width: int,
                 dash: float = 6.0) -> None:
    x1, y1, x2, y2 = box
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = float(np.hypot(bx - ax, by - ay))
        n = max(1, int(length // (2 * dash)))
        for k in range(n + 1):
            t0, t1 = 2 * k * dash / max(length, 1e-6), min(1.0, (2 * k + 1) * dash / max(length, 1e-6))
            if t0 >= 1.0:
                break
            draw.line([(ax + (bx - ax) * t0, ay + (by - ay) * t0), (ax + (bx - ax) * t1, ay + (by - ay) * t1)],
                      fill=color, width=width)


def draw_detections(image_path: str | Path | np.ndarray | Image.Image, float_dets: Detections, quant_dets: Detections,
                    out_png: str | Path, names: dict[int, str] | None = None, match_iou: float = 0.5,
                    label: str = "quantized", placement: Placement | None = None) -> Path:
    """Draw float (green) and quantized (red dashed) boxes over `image_path` (path, PIL image or HxWx3 uint8),
    with the instance masks and keypoints of segment/pose heads when the detections carry them.

    Boxes and keypoints must be in the image's pixel coordinates (what decoders return for image inputs);
    masks are on the network-input grid, put onto the image by `placement` (without it masks are not drawn).
    """
    from PIL import Image, ImageDraw, ImageFont

    if isinstance(image_path, Image.Image):
        im = image_path.convert("RGB")
    elif isinstance(image_path, np.ndarray):
        im = Image.fromarray(np.asarray(image_path, dtype=np.uint8)).convert("RGB")
    else:
        with Image.open(image_path) as src:
            im = src.convert("RGB")
    scale = max(1.0, MIN_SIDE / max(1, min(im.size)))
    if scale > 1.0:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
    agr = agreement([float_dets], [quant_dets], match_iou=match_iou, instances=False)
    fm, qm = agr.ref_matched[0], agr.test_matched[0]
    if placement is not None and float_dets.masks is not None and quant_dets.masks is not None:
        im = overlay_masks(im, float_dets.masks, quant_dets.masks, scale, placement)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    names = names or {}
    all_tags = len(float_dets) + len(quant_dets) <= MAX_TAGS

    def tag(x: float, y: float, text: str, color: tuple[int, int, int]) -> None:
        x0, y0, x1, y1 = draw.textbbox((x, y), text, font=font)
        y = max(0.0, y - (y1 - y0) - 2)
        draw.rectangle((x, y, x + (x1 - x0) + 2, y + (y1 - y0) + 2), fill=color)
        draw.text((x + 1, y), text, fill=(255, 255, 255), font=font)

    for box, s, c, ok in zip(float_dets.boxes, float_dets.scores, float_dets.classes, fm, strict=True):
        b = tuple(float(v) * scale for v in box)
        draw.rectangle(b, outline=GREEN, width=2 if ok else 4)
        if all_tags or not ok:
            tag(b[0], b[1], f"{names.get(int(c), int(c))} {s:.2f}" + ("" if ok else " lost"), GREEN)
    for box, s, c, ok in zip(quant_dets.boxes, quant_dets.scores, quant_dets.classes, qm, strict=True):
        b = tuple(float(v) * scale for v in box)
        _dashed_rect(draw, b, RED, 2)  # type: ignore[arg-type]
        if not ok:
            tag(b[0], b[3] + 12, f"{names.get(int(c), int(c))} {s:.2f} added", RED)
    worst = ""
    if float_dets.keypoints is not None and quant_dets.keypoints is not None:
        worst = draw_keypoints(draw, float_dets.keypoints, quant_dets.keypoints, agr.pairs[0], scale, tag)
    c = agr.counts
    legend = (f"float (green): {c['reference']}   {label} (red, dashed): {c['test']}   "
              f"lost {c['lost']}   added {c['added']}" + (f"   worst keypoint error {worst}" if worst else ""))
    *_, right, bottom = draw.textbbox((4, 4), legend, font=font)
    draw.rectangle((2, 2, right + 4, bottom + 4), fill=(0, 0, 0))
    draw.text((4, 4), legend, fill=(255, 255, 255), font=font)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return atomic_write(out_png, buf.getvalue())  # a killed run never leaves half a picture


def _dets(rows: list[dict]) -> Detections:
    """Detections of a JSON example, with masks/keypoints when every row carries them."""
    masks = [CropMask.from_json(r["mask"]) for r in rows] if rows and all("mask" in r for r in rows) else None
    kpts = [r["keypoints"] for r in rows] if rows and all("keypoints" in r for r in rows) else None
    return Detections.make([r["box"] for r in rows], [r["score"] for r in rows], [r["class"] for r in rows],
                           masks=masks, keypoints=kpts)


def _placement(section: dict, ex: dict) -> Placement | None:
    """Where a JSON example's network input sits on its image (None for files written before it was saved)."""
    hw = ex.get("input_hw")
    if not hw:
        return None
    res = ((section.get("decoder") or {}).get("masks") or {}).get("resolution")
    lb = ex.get("letterbox")
    return Placement((int(hw[0]), int(hw[1])), (int(res[0]), int(res[1])) if res else None,
                     Letterbox(**lb) if isinstance(lb, dict) else None)


def draw_examples(section: dict, out_dir: str | Path, promoted: bool = False,
                  names: dict[int, str] | None = None) -> list[Path]:
    """Pictures of the `examples` of a `detection` JSON section (skips images whose file is gone)."""
    out = Path(out_dir)
    if names is None:
        names = {r["class"]: r["name"] for r in section.get("quantized", {}).get("per_class", [])}
    paths = []
    for ex in section.get("examples", []):
        test = ex.get("promoted") if promoted else ex.get("quantized")
        if not ex.get("path") or test is None or not Path(ex["path"]).exists():
            continue
        png = out / f"detections_{Path(ex['image']).stem}{'_promoted' if promoted else ''}.png"
        paths.append(draw_detections(ex["path"], _dets(ex["float"]), _dets(test), png, names=names,
                                     match_iou=section["thresholds"]["match_iou"],
                                     label="promoted" if promoted else "quantized",
                                     placement=_placement(section, ex)))
    return paths
