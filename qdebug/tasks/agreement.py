"""Detection agreement: the float model's detections are the ground truth, the quantized ones are scored.

COCO protocol (as pycocotools `COCOeval`, bbox, area "all"): per image and class, detections in
descending score order are greedily matched to the unmatched reference box of highest IoU >= t, for
t = 0.50:0.05:0.95; AP is the 101-point interpolated precision averaged over recall 0:0.01:1, per class
with support, then averaged over classes (and thresholds for mAP@0.5:0.95); recall is COCO AR.
Counts read first: at IoU >= 0.5 (same class), float detections without a partner are *lost*, quantized
detections without a partner are *added*; matched pairs give the mean IoU and the mean score shift.

Segment and pose heads add instance scores (`instance_metrics`): the same COCO AP with mask IoU
(`mask_map50_95_vs_float`) or OKS (`oks_map_vs_float`) as the similarity, and over the box-matched pairs
the mean mask IoU (`mask_iou_mean`) and the mean keypoint distance in pixels (`kpt_err_px`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from qdebug.tasks.base import Detections
from qdebug.tasks.keypoints import box_area, keypoint_errors, oks
from qdebug.tasks.masks import mask_iou
from qdebug.tasks.nms import box_iou

# Same constructions as pycocotools' Params so that thresholds compare bit-identically.
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
# similarity of test detections `di` of one image and class with reference detections `gi`: [len(di), len(gi)]
Similarity = Callable[[Detections, np.ndarray, Detections, np.ndarray], np.ndarray]


def greedy_match(iou: np.ndarray, thrs: np.ndarray) -> np.ndarray:
    """COCO matching for detections sorted by score: [T, D] index of the matched reference (-1 = none).

    Each detection takes the still unmatched reference with the highest IoU >= t (the last one on ties,
    as pycocotools does); all thresholds are matched at once.
    """
    d_n, g_n = iou.shape
    t_n = len(thrs)
    dtm = np.full((t_n, d_n), -1, dtype=np.int64)
    if d_n == 0 or g_n == 0:
        return dtm
    cand = iou >= thrs.min()
    rows, cols = cand.sum(axis=1), cand.sum(axis=0)
    g_of = cand.argmax(axis=1)
    # uncontested pairs (one candidate each way) are decided directly; the rest in score order
    simple = np.flatnonzero((rows == 1) & (cols[g_of] == 1))
    if simple.size:
        ok = iou[simple, g_of[simple]][None, :] >= thrs[:, None]
        dtm[:, simple] = np.where(ok, g_of[simple][None, :], -1)
    contested = np.flatnonzero((rows > 1) | ((rows == 1) & (cols[g_of] > 1)))
    if not contested.size:
        return dtm
    rr, gg = np.nonzero(cand[contested])
    vals = iou[contested[rr], gg].tolist()
    gg_l = gg.tolist()
    bounds = np.concatenate([[0], np.cumsum(rows[contested])]).tolist()
    thr_l = [float(t) for t in thrs]
    taken: list[set[int]] = [set() for _ in thr_l]
    out = dtm.tolist()
    for k, d in enumerate(contested.tolist()):  # candidates are few per row: plain Python is fastest
        gs, vs = gg_l[bounds[k]:bounds[k + 1]], vals[bounds[k]:bounds[k + 1]]
        for t, th in enumerate(thr_l):
            best, bv, used = -1, th, taken[t]
            for g, v in zip(gs, vs, strict=True):
                if v >= bv and g not in used:  # ">=": the last of equal IoUs wins, as in pycocotools
                    best, bv = g, v
            if best >= 0:
                used.add(best)
                out[t][d] = best
    return np.asarray(out, dtype=np.int64)


def average_precision(scores: np.ndarray, tp: np.ndarray, npos: int) -> tuple[np.ndarray, np.ndarray]:
    """COCO 101-point interpolated AP and final recall per threshold row of `tp` [T, n] (pycocotools accumulate)."""
    t_n = tp.shape[0]
    ap, rec = np.zeros(t_n), np.zeros(t_n)
    if npos == 0:
        return np.full(t_n, np.nan), np.full(t_n, np.nan)
    n = len(scores)
    if n == 0:
        return ap, rec
    order = np.argsort(-scores, kind="mergesort")
    tps = tp[:, order]
    tp_sum = np.cumsum(tps, axis=1, dtype=np.float64)
    fp_sum = np.cumsum(~tps, axis=1, dtype=np.float64)
    for t in range(t_n):
        rc = tp_sum[t] / npos
        pr = tp_sum[t] / (fp_sum[t] + tp_sum[t] + np.spacing(1))
        rec[t] = rc[-1]
        pr = np.maximum.accumulate(pr[::-1])[::-1]
        idx = np.searchsorted(rc, REC_THRS, side="left")
        q = np.zeros(len(REC_THRS))
        valid = idx < n
        q[valid] = pr[idx[valid]]
        ap[t] = q.mean()
    return ap, rec


@dataclass
class Agreement:
    """COCO-style scores of `test` detections against `reference` detections, plus simple counts."""

    map50_95: float | None
    map50: float | None
    recall: float | None
    counts: dict
    per_class: list[dict]
    per_image: list[dict]
    match_iou: float
    ref_matched: list[np.ndarray] = field(default_factory=list, repr=False)  # per image, bool per reference det
    test_matched: list[np.ndarray] = field(default_factory=list, repr=False)
    pairs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)  # per image (ref, test)
    extra: dict[str, float | None] = field(default_factory=dict)  # instance metrics (masks, keypoints)

    @property
    def lost_frac(self) -> float | None:
        """Share of reference detections without a partner (None when the reference is empty)."""
        n = self.counts["reference"]
        return self.counts["lost"] / n if n else None

    def values(self) -> dict[str, float | None]:
        """Target metric name -> value (names as registered in TASK_METRICS)."""
        return {"map50_95_vs_float": self.map50_95, "map50_vs_float": self.map50,
                "recall_vs_float": self.recall, "lost_frac": self.lost_frac, **self.extra}

    def to_json(self) -> dict:
        return {"metrics": {k: _r(v) for k, v in self.values().items()},
                "counts": {k: _r(v) if isinstance(v, float) else v for k, v in self.counts.items()},
                "per_class": self.per_class}


def _r(v: float | None, nd: int = 5) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return round(float(v), nd)


def agreement(reference: Sequence[Detections], test: Sequence[Detections], *, match_iou: float = 0.5,
              max_dets: int | None = None, names: dict[int, str] | None = None,
              image_names: Sequence[str] | None = None, instances: bool | Collection[str] = True) -> Agreement:
    """Score `test` against `reference` per image (same order); `max_dets` caps detections per image and class.

    `instances`: also the mask/keypoint metrics the detections support (True: all, or only the names given).
    """
    if len(reference) != len(test):
        raise ValueError(f"{len(reference)} reference images but {len(test)} test images")
    thrs = np.append(IOU_THRS, match_iou)
    t_ap = len(IOU_THRS)
    cls_scores: dict[int, list[np.ndarray]] = {}
    cls_tp: dict[int, list[np.ndarray]] = {}
    npos: dict[int, int] = {}
    cls_lost: dict[int, int] = {}
    cls_added: dict[int, int] = {}
    ref_m, test_m, per_image, pairs = [], [], [], []
    pair_iou: list[np.ndarray] = []
    pair_shift: list[np.ndarray] = []
    flips = 0
    for i, (g, d) in enumerate(zip(reference, test, strict=True)):
        gm = np.zeros(len(g), dtype=bool)
        dm = np.zeros(len(d), dtype=bool)
        pg: list[np.ndarray] = []
        pd: list[np.ndarray] = []
        for c in np.unique(np.concatenate([g.classes, d.classes])).tolist():
            gi = np.flatnonzero(g.classes == c)
            di = np.flatnonzero(d.classes == c)
            di = di[np.argsort(-d.scores[di], kind="mergesort")]
            if max_dets is not None:
                di = di[:max_dets]
            dtm = greedy_match(box_iou(d.boxes[di], g.boxes[gi]), thrs)
            npos[c] = npos.get(c, 0) + len(gi)
            cls_scores.setdefault(c, []).append(d.scores[di].astype(np.float64))
            cls_tp.setdefault(c, []).append(dtm[:t_ap] >= 0)
            ok = dtm[-1] >= 0
            if ok.any():
                gsel, dsel = gi[dtm[-1][ok]], di[ok]
                gm[gsel] = True
                dm[dsel] = True
                pg.append(gsel)
                pd.append(dsel)
                pair_iou.append(np.diag(box_iou(d.boxes[dsel], g.boxes[gsel])))
                pair_shift.append(d.scores[dsel].astype(np.float64) - g.scores[gsel].astype(np.float64))
            cls_lost[c] = cls_lost.get(c, 0) + int(len(gi) - ok.sum())
            cls_added[c] = cls_added.get(c, 0) + int((d.classes == c).sum() - ok.sum())
        lost, added = np.flatnonzero(~gm), np.flatnonzero(~dm)
        if len(lost) and len(added):
            cross = box_iou(g.boxes[lost], d.boxes[added]) >= match_iou
            cross &= g.classes[lost][:, None] != d.classes[added][None, :]
            flips += int(cross.any(axis=1).sum())
        ref_m.append(gm)
        test_m.append(dm)
        pairs.append((np.concatenate(pg) if pg else np.zeros(0, np.int64),
                      np.concatenate(pd) if pd else np.zeros(0, np.int64)))
        per_image.append({"image": image_names[i] if image_names else str(i), "float": len(g), "quantized": len(d),
                          "lost": int(len(lost)), "added": int(len(added))})
    per_class = []
    aps, ap50s, recs = [], [], []
    for c in sorted(set(npos) | set(cls_added)):
        sc = np.concatenate(cls_scores[c]) if cls_scores.get(c) else np.zeros(0)
        tp = np.concatenate(cls_tp[c], axis=1) if cls_tp.get(c) else np.zeros((t_ap, 0), bool)
        ap, rec = average_precision(sc, tp, npos.get(c, 0))
        row = {"class": c, "name": (names or {}).get(c, str(c)), "float": npos.get(c, 0), "quantized": len(sc),
               "lost": cls_lost.get(c, 0), "added": cls_added.get(c, 0),
               "ap50_95": None, "ap50": None, "recall": None}
        if npos.get(c, 0):
            aps.append(ap.mean())
            ap50s.append(ap[0])
            recs.append(rec.mean())
            row.update(ap50_95=_r(ap.mean()), ap50=_r(ap[0]), recall=_r(rec.mean()))
        per_class.append(row)
    ious = np.concatenate(pair_iou) if pair_iou else np.zeros(0)
    shifts = np.concatenate(pair_shift) if pair_shift else np.zeros(0)
    n_ref = sum(len(g) for g in reference)
    n_test = sum(len(d) for d in test)
    counts = {"reference": n_ref, "test": n_test, "matched": int(len(ious)), "lost": n_ref - int(len(ious)),
              "added": n_test - int(len(ious)), "class_flips": flips,
              "mean_iou": float(ious.mean()) if len(ious) else None,
              "mean_score_shift": float(shifts.mean()) if len(shifts) else None,
              "mean_abs_score_shift": float(np.abs(shifts).mean()) if len(shifts) else None}
    agr = Agreement(float(np.mean(aps)) if aps else None, float(np.mean(ap50s)) if ap50s else None,
                    float(np.mean(recs)) if recs else None, counts, per_class, per_image, match_iou, ref_m, test_m,
                    pairs)
    if instances:
        agr.extra = instance_metrics(reference, test, pairs, None if instances is True else set(instances))
    return agr


def similarity_map(reference: Sequence[Detections], test: Sequence[Detections], sim: Similarity) -> float | None:
    """COCO mAP@0.5:0.95 of `test` against `reference` with `sim` (mask IoU, OKS) in place of box IoU.

    Same protocol as `agreement`: per image and class greedy matching in score order, 101-point AP per class
    with reference support, mean over classes and thresholds; None when the reference is empty.
    """
    cls_scores: dict[int, list[np.ndarray]] = {}
    cls_tp: dict[int, list[np.ndarray]] = {}
    npos: dict[int, int] = {}
    for g, d in zip(reference, test, strict=True):
        for c in np.unique(np.concatenate([g.classes, d.classes])).tolist():
            gi = np.flatnonzero(g.classes == c)
            di = np.flatnonzero(d.classes == c)
            di = di[np.argsort(-d.scores[di], kind="mergesort")]
            s = sim(d, di, g, gi) if len(di) and len(gi) else np.zeros((len(di), len(gi)))
            dtm = greedy_match(s, IOU_THRS)
            npos[c] = npos.get(c, 0) + len(gi)
            cls_scores.setdefault(c, []).append(d.scores[di].astype(np.float64))
            cls_tp.setdefault(c, []).append(dtm >= 0)
    aps = []
    for c, n in npos.items():
        if n:
            ap, _ = average_precision(np.concatenate(cls_scores[c]), np.concatenate(cls_tp[c], axis=1), n)
            aps.append(ap.mean())
    return float(np.mean(aps)) if aps else None


def _mask_sim(d: Detections, di: np.ndarray, g: Detections, gi: np.ndarray) -> np.ndarray:
    assert d.masks is not None and g.masks is not None
    return mask_iou([d.masks[i] for i in di], [g.masks[j] for j in gi])


def _oks_sim(d: Detections, di: np.ndarray, g: Detections, gi: np.ndarray) -> np.ndarray:
    assert d.keypoints is not None and g.keypoints is not None
    return oks(d.keypoints[di], g.keypoints[gi], box_area(g.boxes[gi]))


def instance_metrics(reference: Sequence[Detections], test: Sequence[Detections],
                     pairs: Sequence[tuple[np.ndarray, np.ndarray]], which: Collection[str] | None = None
                     ) -> dict[str, float | None]:
    """Mask and keypoint metrics the detections carry (all, or the names in `which`); {} for plain boxes.

    `pairs`: per image, (reference indices, test indices) of the box-matched pairs (IoU >= 0.5, same class).
    """
    def want(name: str) -> bool:
        return which is None or name in which

    out: dict[str, float | None] = {}
    all_dets = list(reference) + list(test)
    if all_dets and all(d.masks is not None for d in all_dets):
        if want("mask_map50_95_vs_float"):
            out["mask_map50_95_vs_float"] = similarity_map(reference, test, _mask_sim)
        if want("mask_iou_mean"):
            ious = [mask_iou([d.masks[t]], [g.masks[r]])[0, 0] for g, d, (rs, ts) in zip(reference, test, pairs,
                                                                                         strict=True)
                    for r, t in zip(rs.tolist(), ts.tolist(), strict=True)]  # type: ignore[index]
            out["mask_iou_mean"] = float(np.mean(ious)) if ious else None
    if all_dets and all(d.keypoints is not None for d in all_dets):
        if want("oks_map_vs_float"):
            out["oks_map_vs_float"] = similarity_map(reference, test, _oks_sim)
        if want("kpt_err_px"):
            errs = [keypoint_errors(d.keypoints[ts], g.keypoints[rs])  # type: ignore[index]
                    for g, d, (rs, ts) in zip(reference, test, pairs, strict=True) if len(rs)]
            flat = np.concatenate(errs) if errs else np.zeros(0)
            out["kpt_err_px"] = float(flat.mean()) if flat.size else None
    return out
