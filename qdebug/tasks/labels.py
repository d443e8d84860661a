"""Ground-truth labels (COCO JSON or YOLO txt) and true COCO mAP through pycocotools (`pip install qdebug[coco]`).

- COCO JSON: `images[].file_name` is matched to the data set's file names (base name, else stem);
  model class i is the i-th category in ascending `id` order (the usual 80-class -> 91-id mapping).
- YOLO txt: a folder with one `<image stem>.txt` per image, lines `class cx cy w h` normalized to the
  original image size (a missing file means no objects); a `classes.txt` next to them gives names.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qdebug.errors import DataError, QDebugError
from qdebug.tasks.base import Detections, ImageMeta

COCO_FIX = "pip install 'qdebug[coco]' (or: pip install pycocotools)"


def require_pycocotools() -> tuple[type, type]:
    """The pycocotools modules (COCO, COCOeval), or a one-line error naming the fix."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise QDebugError("true mAP against --labels needs pycocotools, which is not installed", where="--labels",
                          fix=COCO_FIX) from None
    return COCO, COCOeval


@dataclass
class Labels:
    """Ground truth for the data set's images, as a COCO-format dict restricted to the labelled samples."""

    source: str
    format: str  # coco | yolo
    image_ids: list[int | None]  # per data-set sample; None = no label data (excluded from mAP)
    coco: dict  # {"images", "annotations", "categories"}
    class_to_cat: dict[int, int]  # model class index -> category id
    names: dict[int, str] = field(default_factory=dict)  # model class index -> name
    warnings: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> int:
        return sum(i is not None for i in self.image_ids)

    def objects(self) -> int:
        """Number of (non-crowd) ground-truth boxes."""
        return sum(1 for a in self.coco["annotations"] if not a.get("iscrowd", 0))

    def gt_detections(self) -> list[Detections | None]:
        """Per sample ground-truth boxes (xyxy, original pixels) with model class indices, score 1."""
        cat_to_class = {v: k for k, v in self.class_to_cat.items()}
        by_img: dict[int, list[dict]] = {}
        for a in self.coco["annotations"]:
            by_img.setdefault(a["image_id"], []).append(a)
        out: list[Detections | None] = []
        for iid in self.image_ids:
            if iid is None:
                out.append(None)
                continue
            anns = [a for a in by_img.get(iid, []) if a["category_id"] in cat_to_class]
            boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                     for a in anns]
            out.append(Detections.make(boxes, [1.0] * len(anns), [cat_to_class[a["category_id"]] for a in anns]))
        return out


def load_labels(path: str | Path, metas: Sequence[ImageMeta], input_hw: tuple[int, int]) -> Labels:
    """COCO JSON file or YOLO txt folder -> Labels aligned with the data set's samples."""
    p = Path(path)
    if not p.exists():
        raise DataError("labels not found", file=str(p), fix="pass --labels instances.json or a folder of YOLO .txt")
    if p.is_file() and p.suffix.lower() == ".json":
        return _load_coco(p, metas)
    if p.is_dir():
        return _load_yolo(p, metas, input_hw)
    raise DataError("unknown labels format", file=str(p),
                    fix="pass a COCO JSON file (instances_val.json) or a folder of YOLO .txt files")


def _load_coco(p: Path, metas: Sequence[ImageMeta]) -> Labels:
    try:
        data = json.loads(p.read_text())
        images, anns, cats = data["images"], data.get("annotations", []), data["categories"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"not a COCO annotation file ({exc.__class__.__name__})", file=str(p),
                        fix="give a COCO JSON with images, annotations and categories") from None
    if any(m.letterbox is None for m in metas):
        raise DataError("COCO labels need image inputs (boxes are mapped back to original image pixels)",
                        file=str(p), fix="use --data with the images, or YOLO txt labels for .npy inputs")
    by_name: dict[str, dict] = {}
    for im in images:
        fname = str(im.get("file_name", ""))
        by_name.setdefault(Path(fname).name, im)
        by_name.setdefault(Path(fname).stem, im)
    ids: list[int | None] = []
    for m in metas:
        im = by_name.get(m.name) or by_name.get(Path(m.name).stem)
        ids.append(int(im["id"]) if im is not None else None)
    if not any(i is not None for i in ids):
        raise DataError("no image of the data set appears in the COCO file", file=str(p),
                        fix="check that images[].file_name matches the files in --data")
    keep = {i for i in ids if i is not None}
    cats_sorted = sorted(cats, key=lambda c: c["id"])
    class_to_cat = {k: int(c["id"]) for k, c in enumerate(cats_sorted)}
    names = {k: str(c.get("name", c["id"])) for k, c in enumerate(cats_sorted)}
    coco = {"images": [im for im in images if im["id"] in keep],
            "annotations": [dict(a, id=a.get("id", k + 1)) for k, a in enumerate(anns) if a["image_id"] in keep],
            "categories": cats}
    for a in coco["annotations"]:
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
    warns = []
    missing = sum(i is None for i in ids)
    if missing:
        warns.append(f"{missing} of {len(ids)} images have no entry in {p.name} and are left out of the true mAP")
    return Labels(str(p), "coco", ids, coco, class_to_cat, names, warns)


def _load_yolo(p: Path, metas: Sequence[ImageMeta], input_hw: tuple[int, int]) -> Labels:
    images, anns = [], []
    ids: list[int | None] = []
    found = 0
    classes: set[int] = set()
    for k, m in enumerate(metas):
        stem = Path(m.name.split("[", 1)[0]).stem
        f = p / f"{stem}.txt"
        lb = m.letterbox
        w, h = (lb.orig_w, lb.orig_h) if lb is not None else (input_hw[1], input_hw[0])
        iid = k + 1
        ids.append(iid)
        images.append({"id": iid, "file_name": m.name, "width": w, "height": h})
        if not f.exists():
            continue
        found += 1
        for ln, line in enumerate(f.read_text().splitlines(), 1):
            vals = line.split("#", 1)[0].split()
            if not vals:
                continue
            try:
                nums = [float(v) for v in vals]
            except ValueError:
                raise DataError("expected 'class cx cy w h' (normalized)", file=str(f), where=f"line {ln}",
                                fix="write YOLO labels: class index then 4 numbers in 0..1") from None
            if len(nums) == 5:
                c, cx, cy, bw, bh = nums
            elif len(nums) >= 7 and len(nums) % 2 == 1:  # segment polygon: class x1 y1 x2 y2 ...
                c, xs, ys = nums[0], nums[1::2], nums[2::2]
                cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
                bw, bh = max(xs) - min(xs), max(ys) - min(ys)
            else:
                raise DataError(f"expected 5 values, got {len(nums)}", file=str(f), where=f"line {ln}",
                                fix="write YOLO labels: class cx cy w h, normalized to 0..1")
            if c < 0 or c != int(c) or max(cx, cy, bw, bh) > 1.5 or min(bw, bh) < 0:
                raise DataError("class must be a non-negative integer and boxes normalized to 0..1", file=str(f),
                                where=f"line {ln}", fix="YOLO labels are normalized by the image width/height")
            classes.add(int(c))
            bx, by, bw_px, bh_px = (cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": int(c) + 1,
                         "bbox": [bx, by, bw_px, bh_px], "area": bw_px * bh_px, "iscrowd": 0})
    if not found:
        raise DataError("no YOLO label file matches an image of the data set", file=str(p),
                        fix="put <image stem>.txt files (class cx cy w h) in the folder")
    names: dict[int, str] = {}
    for nf in ("classes.txt", "names.txt"):
        if (p / nf).exists():
            names = {k: n.strip() for k, n in enumerate((p / nf).read_text().splitlines()) if n.strip()}
            break
    n_cls = max(classes | set(names) | {0}) + 1
    cats = [{"id": c + 1, "name": names.get(c, str(c))} for c in range(n_cls)]
    warns = []
    if any(m.letterbox is None for m in metas):
        warns.append("non-image inputs: YOLO labels are taken relative to the network input (no letterbox undo)")
    return Labels(str(p), "yolo", ids, {"images": images, "annotations": anns, "categories": cats},
                  {c: c + 1 for c in range(n_cls)}, names, warns)


def true_map(labels: Labels, dets: Sequence[Detections]) -> dict:
    """COCO mAP@0.5:0.95, mAP@0.5 and AR@100 of detections (per sample, original pixels) via pycocotools."""
    COCO, COCOeval = require_pycocotools()
    res = []
    for iid, d in zip(labels.image_ids, dets, strict=True):
        if iid is None:
            continue
        for b, s, c in zip(d.boxes.astype(np.float64), d.scores, d.classes, strict=True):
            cat = labels.class_to_cat.get(int(c))
            if cat is None:
                continue
            res.append({"image_id": iid, "category_id": cat, "score": float(s),
                        "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {k: list(v) for k, v in labels.coco.items()}
        gt.createIndex()
        if not res:
            return {"map50_95": 0.0 if labels.objects() else None, "map50": 0.0 if labels.objects() else None,
                    "recall": 0.0 if labels.objects() else None, "detections": 0}
        dt = gt.loadRes(res)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted({i for i in labels.image_ids if i is not None})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    return {"map50_95": _pos(s[0]), "map50": _pos(s[1]), "recall": _pos(s[8]), "detections": len(res)}


def _pos(v: float) -> float | None:
    return None if v < 0 else round(float(v), 5)
