"""The Detection verdict section (compare/bisect --task): decoder, agreement with the float detections,
true mAP, per class, warnings and the example pictures; plus its headline bullet."""

from __future__ import annotations

from typing import Any

from qdebug.report.blocks import (
    Block,
    Bullets,
    Details,
    Heading,
    Image,
    Inline,
    Para,
    Span,
    Table,
    b,
    bad,
    c,
    good,
    il,
    join,
)
from qdebug.report.context import DETECTION_GROUP, Ctx, detection_section
from qdebug.report.format import f_det, f_pct, map_grade, num
from qdebug.results.detection import MASK_METRICS, POSE_METRICS, DetectionResult, DetectionRun

DET_CLASSES_INLINE = 5  # per-class tables with more classes are collapsed


def _map_span(v: Any, spec: str = ".3f") -> Span | str:
    """mAP50-95 vs float, marked like the terminal (see `map_grade`): good, bad, or plain in between."""
    x = num(v)
    if x is None:
        return "–"
    text = format(x, spec)
    grade = map_grade(x)
    return Span(grade, text) if grade else text


def _promoted(det: DetectionResult) -> DetectionRun | None:
    return det.promoted if isinstance(det.promoted, DetectionRun) else None


def _toolkit(det: DetectionResult) -> DetectionRun | None:
    return det.toolkit if isinstance(det.toolkit, DetectionRun) else None


def run_label(name: str, judge: str | None, toolkit_present: bool) -> str:
    """A run's row label: with a vendor toolkit's run beside it, each run is labelled by its simulator."""
    if not toolkit_present or name not in ("quantized", "toolkit"):
        return name
    if name == "quantized":
        judge = judge or "built-in simulator"
        return judge if judge.startswith("built-in") else f"built-in: {judge}"
    return f"toolkit: {judge or 'vendor toolkit'}"


def _det_runs(det: DetectionResult) -> list[tuple[str, DetectionRun]]:
    """(label, side) of the quantized, the vendor toolkit's (compare --backend rknn) and the promoted run."""
    runs = [("quantized", det.quantized)]
    tk = _toolkit(det)
    if tk is not None:
        runs.append(("toolkit", tk))
    p = _promoted(det)
    if p is not None:
        runs.append(("promoted", p))
    return runs


def _label(det: DetectionResult, name: str) -> str:
    """Row label of a run of the detection tables."""
    if name == "promoted":
        return _promoted_label(det)
    tk = _toolkit(det)
    judge = (tk.judge if tk else None) if name == "toolkit" else det.judge
    return run_label(name, judge, tk is not None)


def _promoted_label(det: DetectionResult) -> str:
    p = _promoted(det)
    ov = (p.overrides if p else None) or {}
    if not ov:
        return "promoted"
    precs = sorted(set(map(str, ov.values())))
    return f"promoted ({len(ov)} op{'s' * (len(ov) != 1)} → {'/'.join(precs)})"


def plan_label(ctx: Ctx) -> str | None:
    """Label of bisect's after-run when its plan is more than a promotion (a head split, re-calibrated ranges):
    "plan (head split + precision)"; None when "promoted" is right."""
    remedies = getattr(getattr(ctx.res, "result", None), "remedies", None) or []
    kinds = [r.kind for r in remedies]
    return None if all(k == "precision" for k in kinds) else f"plan ({' + '.join(kinds)})"


def detection_headline(ctx: Ctx) -> Inline | None:
    """The headline bullet: mAP50-95 vs float and the share of lost detections (before → after promotion)."""
    det = detection_section(ctx.res)
    if det is None:
        return None
    q = det.quantized
    p = _promoted(det)
    qm, qc = q.metrics or {}, q.counts or {}
    nfloat = (det.float or {}).get("detections")
    what = il(b("Detections"), f" ({det.task or '?'}, {det.images} images, the float model's "
              "detections as reference): ")
    floats = f" of {nfloat:,} float detections" if isinstance(nfloat, int) else ""
    if p is not None:
        pm, pc = p.metrics or {}, p.counts or {}
        body = il("mAP50-95 vs float ", _map_span(qm.get("map50_95_vs_float"), ".2f"), " → ",
                  _map_span(pm.get("map50_95_vs_float"), ".2f"),
                  f" with the {plan_label(ctx)}; " if plan_label(ctx) else " after promotion; ",
                  f"{f_pct(qm.get('lost_frac'))} lost → {f_pct(pm.get('lost_frac'))} lost{floats}, "
                  f"added {qc.get('added', '–')} → {pc.get('added', '–')}")
    else:
        body = il("mAP50-95 vs float ", _map_span(qm.get("map50_95_vs_float"), ".2f"),
                  f" (mAP50 {f_det(qm.get('map50_vs_float'), '.2f')}); {f_pct(qm.get('lost_frac'))} lost{floats}, "
                  f"{qc.get('added', '–')} added")
    tk = _toolkit(det)
    if tk is not None:  # the same verdict on the vendor toolkit's own outputs, beside the built-in one
        tm = tk.metrics or {}
        body = il(_label(det, "quantized"), ": ", body, "; ", _label(det, "toolkit"), ": mAP50-95 vs float ",
                  _map_span(tm.get("map50_95_vs_float"), ".2f"),
                  f" (mAP50 {f_det(tm.get('map50_vs_float'), '.2f')}); {f_pct(tm.get('lost_frac'))} lost, "
                  f"{(tk.counts or {}).get('added', '–')} added")
    lab = det.labels
    if isinstance(lab, dict) and isinstance(lab.get("map50_95"), dict):
        vals = lab["map50_95"]
        runs = [k for k in ("float", "quantized", "toolkit", "promoted") if k in vals]
        body = il(body, "; true mAP50-95 ", ", ".join(f"{k} {f_det(vals[k])}" for k in runs))
    return il(what, body, " (", Span("link", "details", "#detection-verdict"), ")")


def detection(ctx: Ctx) -> list[Block]:
    """The "Detection verdict" section: decoder, agreement table, true mAP, per class, warnings, pictures."""
    det = detection_section(ctx.res)
    if det is None:
        return []
    d = det.decoder or {}
    th = det.thresholds or {}

    def g(v: Any, default: str = "?") -> str:
        x = num(v)
        return default if x is None else f"{x:g}"

    outs = d.get("outputs") or []
    dec = il("Decoder ", c(str(det.task or d.get("name") or "?")), f" ({d.get('layout', '?')} layout",
             f", {d['nc']} classes" if isinstance(d.get("nc"), int) else "",
             il(", outputs ", join([il(c(str(o))) for o in outs[:4]]), f" +{len(outs) - 4} more" if len(outs) > 4
                else "") if outs else None,
             f"); confidence ≥ {g(th.get('conf'))}, NMS IoU {g(th.get('nms_iou'))}, at most "
             f"{th.get('max_det', '?')} detections per image; {det.images} images, boxes in "
             f"{th.get('coords', 'image pixels')}. The float model's detections are the reference: quantized "
             f"detections match them at IoU ≥ {g(th.get('match_iou'), '0.5')} with the same class, and mAP is the "
             "COCO mAP over IoU 0.50:0.95 with the float detections as ground truth.")
    out: list[Block] = [Heading(2, "Detection verdict"), Para(dec)]
    header = ["run", "dets", "mAP50-95", "mAP50", "recall", "lost", "added", "flips", "mean IoU", "Δscore"]
    fl = (det.float or {}).get("detections")
    rows: list[list[Inline]] = [[il("float (reference)"), il(str(fl) if fl is not None else "–"), il("1.000"),
                                 il("1.000"), il("1.000"), il("–"), il("–"), il("–"), il("–"), il("–")]]
    for name, side in _det_runs(det):
        m, cnt = side.metrics or {}, side.counts or {}
        lost = cnt.get("lost")
        label = (plan_label(ctx) or _label(det, name)) if name == "promoted" else _label(det, name)
        iou, shift = num(cnt.get("mean_iou")), num(cnt.get("mean_score_shift"))
        rows.append([il(label), il(str(side.detections)), il(_map_span(m.get("map50_95_vs_float"))),
                     il(f_det(m.get("map50_vs_float"))), il(f_det(m.get("recall_vs_float"))),
                     il(f"{lost} ({f_pct(m.get('lost_frac'))})" if lost is not None else "–"),
                     il(str(cnt.get("added", "–"))), il(str(cnt.get("class_flips", "–"))),
                     il("–" if iou is None else f"{iou:.2f}"), il("–" if shift is None else f"{shift:+.2f}")])
    out.append(Table(header, rows, "lrrrrrrrrr"))
    out.append(Para(il("mAP50-95, mAP50 and recall (COCO AR) against the float detections (",
                       good("≥ 0.9"), " fine, ", bad("< 0.7"), " broken); lost: float detections without a "
                       "match, added: quantized detections without one (IoU ≥ 0.5); flips: lost to a box of another "
                       "class; mean IoU and Δscore (quantized − float confidence) over matched pairs.")))
    if _toolkit(det) is not None:
        out.append(Para(il("The toolkit row decodes the vendor toolkit's own final outputs with the same decoder and "
                           "scores them against the same float detections as the built-in simulator's row.")))
    out += _instances(det, plan_label(ctx))
    lab = det.labels
    if isinstance(lab, dict) and isinstance(lab.get("map50_95"), dict):
        runs = [k for k in ("float", "quantized", "toolkit", "promoted") if k in lab["map50_95"]]
        out.append(Para(il(b("True mAP"), f" against {lab.get('format', '?')} labels ", c(str(lab.get("source", "?"))),
                           f" ({lab.get('images', '?')} labelled images, {lab.get('objects', '?')} objects; COCO "
                           "protocol, pycocotools):")))
        lrows = [[il(title), *(il(f_det((lab.get(m) or {}).get(k))) for k in runs)]
                 for m, title in (("map50_95", "mAP50-95"), ("map50", "mAP50"), ("recall", "AR@100"))]
        out.append(Table(["metric", *[(plan_label(ctx) or _label(det, k)) if k == "promoted" else
                                      _label(det, k) if k != "float" else k for k in runs]], lrows,
                         "l" + "r" * len(runs)))
    out += _det_per_class(det, "plan" if plan_label(ctx) else "promoted")
    warns = [w for w in det.warnings or [] if isinstance(w, str)]
    if warns:
        out.append(Bullets([il(b("warning: "), w) for w in warns]))
    pics = [(file, alt, cap) for group, file, alt, cap in ctx.images if group == DETECTION_GROUP]
    if pics:
        out.append(Para(il("Examples: the images with the most lost and added detections. Float boxes are green "
                           "(thick with a \"lost\" tag when the run lost them), the run's boxes red and dashed (an "
                           "\"added\" tag when float has no match).")))
        for file, alt, cap in pics:
            out.append(Image(file, alt, cap))
    for n in ctx.det_notes:
        out.append(Para(il(b("Note: "), n)))
    return out


def _instances(det: DetectionResult, plan: str | None = None) -> list[Block]:
    """Masks (segment heads) and keypoints (pose heads) against the float ones, one row per run (`plan`: the
    after-run's label when the plan is more than a promotion)."""
    runs = [(name, side.instance_metrics()) for name, side in _det_runs(det)]
    if not any(im for _, im in runs):
        return []
    cols: list[tuple[str, str, str]] = []  # (metric, header, format)
    if any(k in im for _, im in runs for k in MASK_METRICS):
        cols += [("mask_map50_95_vs_float", "mask mAP50-95", ".3f"), ("mask_iou_mean", "mean mask IoU", ".3f")]
    if any(k in im for _, im in runs for k in POSE_METRICS):
        cols += [("oks_map_vs_float", "OKS mAP50-95", ".3f"), ("kpt_err_px", "keypoint error (px)", ".2f")]
    rows = [[il((plan or _label(det, name)) if name == "promoted" else _label(det, name)),
             *(il(_map_span(im.get(k)) if k.endswith("_vs_float") else f_det(im.get(k), spec)) for k, _, spec in cols)]
            for name, im in runs]
    d = det.decoder or {}
    what = []
    names = {k for k, _, _ in cols}
    if "mask_map50_95_vs_float" in names:
        res = (d.get("masks") or {}).get("resolution")
        grid = f"{res[0]}×{res[1]}" if isinstance(res, list) and len(res) == 2 else "prototype"
        what.append(f"masks are compared at the {grid} prototype resolution (mask IoU replaces box IoU in the COCO "
                    "AP; mean mask IoU over box-matched pairs)")
    if "oks_map_vs_float" in names:
        what.append(f"keypoints by OKS (sigmas {d.get('oks_sigmas', '?')}, area = float box area × 0.53) and by the "
                    "mean pixel distance of the float model's visible keypoints over box-matched pairs")
    return [Para(il(b("Masks and keypoints"), " against the float model's: " + "; ".join(what) + ".")),
            Table(["run", *(h for _, h, _ in cols)], rows, "l" + "r" * len(cols))]


def _det_per_class(det: DetectionResult, after: str = "promoted") -> list[Block]:
    """Per-class agreement (classes with float support), worst quantized AP50-95 first."""
    q = [r for r in det.quantized.per_class or [] if isinstance(r, dict) and r.get("float")]
    if len(q) < 2:  # one class: the run table above says it all
        return []
    p = _promoted(det)
    prom = {r.get("class"): r for r in p.per_class or [] if isinstance(r, dict)} if p is not None else None

    def worst(r: dict) -> tuple[float, int]:
        ap = num(r.get("ap50_95"))
        return (ap if ap is not None else 1.0, -(r.get("float") or 0))

    q.sort(key=worst)
    header = ["class", "float", "quantized", "AP50-95", "AP50", "lost", "added"]
    if prom is not None:
        header += [f"{after} AP50-95", f"{after} lost"]
    rows = []
    for r in q:
        row = [il(c(str(r.get("name", r.get("class", "?"))))), il(str(r.get("float", "–"))),
               il(str(r.get("quantized", "–"))), il(_map_span(r.get("ap50_95"))), il(f_det(r.get("ap50"))),
               il(str(r.get("lost", "–"))), il(str(r.get("added", "–")))]
        if prom is not None:
            pr = prom.get(r.get("class")) or {}
            row += [il(_map_span(pr.get("ap50_95"))), il(str(pr.get("lost", "–")))]
        rows.append(row)
    table = Table(header, rows, "l" + "r" * (len(header) - 1))
    title = f"Per class ({len(rows)} classes with float detections, worst quantized AP50-95 first)"
    if len(rows) > DET_CLASSES_INLINE:
        return [Details(title, [table])]
    return [Para(il(title + ":")), table]
