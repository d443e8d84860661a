"""CLI glue for task options (`--task`, `--anchors`, `--labels`, `--conf`, `--iou`, ...) and terminal rendering.

compare/bisect call `add_task_args(parser)`, then `decoder_from_args(args)` (None without --task),
`check_target_task(args)` before a bisect, and `render_detection(doc["detection"], console)`.
"""

from __future__ import annotations

import argparse

from rich import box
from rich.console import Console
from rich.table import Table

from qdebug.errors import QDebugError
from qdebug.tasks import DECODERS, LABEL_METRICS, get_decoder, task_metrics_in
from qdebug.tasks.base import Decoder


def add_task_args(p: argparse.ArgumentParser, draw: bool = True) -> None:
    """Add the detection-task option group to a subcommand parser."""
    g = p.add_argument_group("task (detection verdict)")
    g.add_argument("--task", default=None, metavar="NAME",
                   help=f"decode detector outputs and score detections: {', '.join(sorted(DECODERS))} "
                        "(yolo11 = yolov8, yolov7 = yolov5)")
    g.add_argument("--anchors", default=None, metavar="SPEC|FILE",
                   help='YOLOv5 raw heads: anchors in pixels per level, "10,13,16,30,33,23;30,61,...;..." or a '
                        "file with one level per line (default: the YOLOv5 COCO anchors, with a warning)")
    g.add_argument("--labels", default=None, metavar="PATH",
                   help="ground truth for true mAP: COCO JSON or a folder of YOLO .txt (needs qdebug[coco])")
    g.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default 0.25; 0.001 to match "
                   "`yolo val` mAP)")
    g.add_argument("--iou", type=float, default=None, help="NMS IoU threshold (default: yolov8 0.7, yolov5 0.45)")
    g.add_argument("--max-det", type=int, default=300, help="detections kept per image after NMS (default 300)")
    g.add_argument("--nc", type=int, default=None, help="number of classes when the output carries extra channels")
    if draw:
        g.add_argument("--draw", default=None, metavar="DIR",
                       help="write pictures of the 3 images with the most lost/added detections into DIR")


def decoder_from_args(args: argparse.Namespace) -> Decoder | None:
    """The decoder selected by --task (None without --task); rejects task-only options without it."""
    task = getattr(args, "task", None)
    if not task:
        for opt in ("anchors", "labels"):
            if getattr(args, opt, None):
                raise QDebugError(f"--{opt} needs --task", where=f"--{opt}", fix="add --task yolov8 or --task yolov5")
        return None
    if getattr(args, "labels", None):
        from qdebug.tasks.labels import require_pycocotools

        require_pycocotools()  # fail before the long runs when the extra is missing
    return get_decoder(task, conf=args.conf, iou=args.iou, max_det=args.max_det, nc=args.nc,
                       **({"anchors": args.anchors} if args.anchors is not None else {}))


def check_target_task(args: argparse.Namespace) -> None:
    """Refuse a target with task metrics without --task (or true-mAP metrics without --labels), before any run."""
    used = task_metrics_in(getattr(args, "target", None))
    if used and not getattr(args, "task", None):
        raise QDebugError(f"target uses task metric(s) {', '.join(used)} but no --task was given", where="--target",
                          fix="add --task yolov8 (or yolov5) so qdebug can decode the detections")
    need = [m for m in used if m in LABEL_METRICS]
    if need and not getattr(args, "labels", None):
        raise QDebugError(f"target uses {', '.join(need)} (true mAP against labels) but no --labels were given",
                          where="--target", fix="pass --labels, or use map50_95_vs_float (agreement with float)")


def _f(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def render_detection(det: dict, console: Console, classes: int = 10) -> None:
    """Print the detection-agreement section of a compare/bisect result."""
    d = det["decoder"]
    th = det["thresholds"]
    console.print(f"[bold]Detection verdict[/] ({det['task']}, {d.get('layout')} layout, conf {th['conf']:g}, "
                  f"NMS IoU {th['nms_iou']:g}; float detections are the reference, matched at IoU "
                  f"≥ {th['match_iou']:g})")
    sides = [("quantized", det["quantized"])] + ([("promoted", det["promoted"])] if det.get("promoted") else [])
    tbl = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("run", "dets", "mAP50-95", "mAP50", "AR", "lost", "added", "flips", "IoU", "Δscore"):
        tbl.add_column(col, justify="left" if col == "run" else "right", no_wrap=True)
    tbl.add_row("float", str(det["float"]["detections"]), "1.000", "1.000", "1.000", "-", "-", "-", "-", "-")
    for name, s in sides:
        m, c = s["metrics"], s["counts"]
        lost = f"{c['lost']} {100 * (m['lost_frac'] or 0):.0f}%"
        style = "green" if (m["map50_95_vs_float"] or 0) >= 0.9 else "yellow" if (m["map50_95_vs_float"] or 0) >= 0.7 \
            else "bold red"
        tbl.add_row(name, str(s["detections"]), f"[{style}]{_f(m['map50_95_vs_float'])}[/]",
                    _f(m["map50_vs_float"]), _f(m["recall_vs_float"]), lost, str(c["added"]),
                    str(c["class_flips"]), _f(c["mean_iou"], ".2f"), _f(c["mean_score_shift"], "+.2f"))
    console.print(tbl)
    console.print("[dim]mAP and AR (COCO recall) against the float detections; lost/added at IoU ≥ 0.5; flips: "
                  "lost to another class; IoU, Δscore: mean over matched pairs[/]")
    rows = [r for r in det["quantized"]["per_class"] if r["float"]]
    if len(rows) > 1:
        rows.sort(key=lambda r: (r["ap50_95"] if r["ap50_95"] is not None else 1.0, -r["float"]))
        console.print(f"Per class (quantized; worst {min(classes, len(rows))} of {len(rows)} classes by AP50-95)")
        ct = Table(header_style="bold", box=box.SIMPLE_HEAD)
        for col in ("class", "float", "quantized", "AP50-95", "AP50", "lost", "added"):
            ct.add_column(col, justify="left" if col == "class" else "right")
        for r in rows[:classes]:
            ct.add_row(str(r["name"]), str(r["float"]), str(r["quantized"]), _f(r["ap50_95"]), _f(r["ap50"]),
                       str(r["lost"]), str(r["added"]))
        console.print(ct)
    lab = det.get("labels")
    if lab:
        console.print(f"[bold]True mAP[/] against {lab['format']} labels ({lab['images']} images, "
                      f"{lab['objects']} objects; COCO protocol, pycocotools)")
        lt = Table(header_style="bold", box=box.SIMPLE_HEAD)
        runs = [k for k in ("float", "quantized", "promoted") if k in lab["map50_95"]]
        lt.add_column("metric")
        for k in runs:
            lt.add_column(k, justify="right")
        for m, title in (("map50_95", "mAP50-95"), ("map50", "mAP50"), ("recall", "AR@100")):
            lt.add_row(title, *(_f(lab[m][k]) for k in runs))
        console.print(lt)
    for w in det.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
