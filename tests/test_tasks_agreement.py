"""Detection agreement: 1.0 for identical outputs, monotone under shifts and crushed scores, equal to pycocotools."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from fixtures.detections import random_detections
from qdebug.tasks.agreement import agreement, greedy_match
from qdebug.tasks.base import Detections


def _ref(seed: int = 0, images: int = 6, nc: int = 5) -> list[Detections]:
    rng = np.random.default_rng(seed)
    return [Detections.make(*random_detections(rng, int(rng.integers(3, 30)), nc)) for _ in range(images)]


def _shift(dets: list[Detections], frac: float) -> list[Detections]:
    out = []
    for d in dets:
        b = d.boxes.copy()
        w = b[:, 2] - b[:, 0]
        b[:, [0, 2]] += (frac * w)[:, None]
        out.append(Detections(b, d.scores.copy(), d.classes.copy()))
    return out


def _crush(dets: list[Detections], factor: float, conf: float = 0.25) -> list[Detections]:
    out = []
    for d in dets:
        s = d.scores * factor
        k = s > conf
        out.append(Detections(d.boxes[k], s[k], d.classes[k]))
    return out


def test_identical_is_one():
    ref = _ref()
    a = agreement(ref, [Detections(d.boxes.copy(), d.scores.copy(), d.classes.copy()) for d in ref])
    assert a.map50_95 == pytest.approx(1.0) and a.map50 == pytest.approx(1.0) and a.recall == pytest.approx(1.0)
    c = a.counts
    assert c["lost"] == 0 and c["added"] == 0 and c["matched"] == c["reference"] == c["test"]
    assert c["mean_iou"] == pytest.approx(1.0) and c["mean_score_shift"] == pytest.approx(0.0)
    assert a.lost_frac == 0.0 and all(r["ap50_95"] == pytest.approx(1.0) for r in a.per_class)
    assert a.values() == {"map50_95_vs_float": a.map50_95, "map50_vs_float": a.map50,
                          "recall_vs_float": a.recall, "lost_frac": 0.0}


def test_monotone_in_box_shift():
    ref = _ref(1)
    maps = [agreement(ref, _shift(ref, f)).map50_95 for f in (0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.6)]
    assert maps[0] == pytest.approx(1.0)
    assert all(b <= a + 1e-12 for a, b in zip(maps, maps[1:], strict=False)), maps
    assert maps[-1] < 0.05 and maps[3] < maps[1]
    ious = [agreement(ref, _shift(ref, f)).counts["mean_iou"] for f in (0.0, 0.05, 0.2)]
    assert ious[0] > ious[1] > ious[2]


def test_monotone_in_crushed_scores():
    ref = _crush(_ref(2), 1.0)  # a decoder's output is already above the confidence threshold
    runs = [agreement(ref, _crush(ref, k)) for k in (1.0, 0.8, 0.6, 0.45, 0.3, 0.2)]
    maps = [r.map50_95 for r in runs]
    lost = [r.lost_frac for r in runs]
    assert maps[0] == pytest.approx(1.0) and maps[-1] == 0.0 and lost[-1] == 1.0
    assert all(b <= a + 1e-12 for a, b in zip(maps, maps[1:], strict=False)), maps
    assert all(b >= a for a, b in zip(lost, lost[1:], strict=False)), lost
    shift = runs[1].counts["mean_score_shift"]
    assert shift is not None and shift < 0


def test_counts_lost_added_flips():
    ref = [Detections.make([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [0, 1, 2])]
    test = [Detections.make([[0, 0, 10, 11], [20, 20, 40, 40], [70, 70, 80, 80]], [0.8, 0.6, 0.5], [0, 3, 2])]
    a = agreement(ref, test, image_names=["a.png"])
    c = a.counts
    assert (c["matched"], c["lost"], c["added"], c["class_flips"]) == (1, 2, 2, 1)
    assert c["mean_iou"] == pytest.approx(10 / 11) and c["mean_score_shift"] == pytest.approx(-0.1)
    assert a.per_image == [{"image": "a.png", "float": 3, "quantized": 3, "lost": 2, "added": 2}]
    assert a.ref_matched[0].tolist() == [True, False, False] and a.test_matched[0].tolist() == [True, False, False]
    rows = {r["class"]: r for r in a.per_class}
    assert rows[3]["float"] == 0 and rows[3]["ap50_95"] is None and rows[3]["added"] == 1  # no support: no AP
    assert rows[1]["ap50"] == 0.0 and rows[0]["ap50"] == pytest.approx(1.0)
    assert a.lost_frac == pytest.approx(2 / 3)


def test_empty_reference_is_undefined():
    a = agreement([Detections.empty()], [Detections.make([[0, 0, 5, 5]], [0.9], [0])])
    assert a.map50_95 is None and a.lost_frac is None and a.counts["added"] == 1
    b = agreement([Detections.make([[0, 0, 5, 5]], [0.9], [0])], [Detections.empty()])
    assert b.map50_95 == 0.0 and b.lost_frac == 1.0


def test_greedy_match_takes_best_unmatched():
    iou = np.array([[0.6, 0.9], [0.8, 0.7]])
    m = greedy_match(iou, np.array([0.5, 0.85]))
    assert m.tolist() == [[1, 0], [1, -1]]


# ------------------------------------------------------------------ pycocotools cross-check
def _pycoco(ref: list[Detections], test: list[Detections], max_det: int = 10000) -> tuple[float, float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cats = sorted({int(c) for d in ref + test for c in d.classes})
    anns = []
    for i, d in enumerate(ref):
        for b, c in zip(d.boxes.astype(np.float64), d.classes, strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1, "bbox": [b[0], b[1], w, h],
                         "area": w * h, "iscrowd": 0})
    res = [{"image_id": i + 1, "category_id": int(c) + 1, "score": float(s),
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
           for i, d in enumerate(test) for b, s, c in zip(d.boxes.astype(np.float64), d.scores, d.classes, strict=True)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i + 1} for i in range(len(ref))], "annotations": anns,
                      "categories": [{"id": c + 1} for c in cats]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(res), "bbox")
        ev.params.maxDets = [max_det]
        ev.evaluate()
        ev.accumulate()
    p = ev.eval["precision"][:, :, :, 0, -1]
    r = ev.eval["recall"][:, :, 0, -1]
    return float(p[p > -1].mean()), float(p[0][p[0] > -1].mean()), float(r[r > -1].mean())


@pytest.mark.parametrize("seed", range(5))
def test_matches_pycocotools(seed):
    pytest.importorskip("pycocotools")
    rng = np.random.default_rng(100 + seed)
    ref = _ref(seed, images=int(rng.integers(3, 9)))
    test = []
    for d in ref:  # perturb: drop, jitter boxes, jitter scores (with ties), flip classes, add false positives
        keep = rng.random(len(d)) > 0.2
        b = d.boxes[keep] + rng.normal(0, rng.uniform(0, 10), (int(keep.sum()), 4)).astype(np.float32)
        b = np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], 1)
        s = np.clip(d.scores[keep] + rng.normal(0, 0.2, int(keep.sum())), 0.05, 1.0).round(2)
        c = d.classes[keep].copy()
        flip = rng.random(len(c)) < 0.1
        c[flip] = rng.integers(0, 5, int(flip.sum()))
        eb, es, ec = random_detections(rng, int(rng.integers(0, 6)))
        test.append(Detections.make(np.concatenate([b, eb]), np.concatenate([s, es]), np.concatenate([c, ec])))
    ours = agreement(ref, test)
    m, m50, rec = _pycoco(ref, test)
    assert ours.map50_95 == pytest.approx(m, abs=1e-12)
    assert ours.map50 == pytest.approx(m50, abs=1e-12)
    assert ours.recall == pytest.approx(rec, abs=1e-12)
    capped = agreement(ref, test, max_dets=3)  # COCO's per-image, per-class cap
    assert capped.map50_95 == pytest.approx(_pycoco(ref, test, max_det=3)[0], abs=1e-12)
