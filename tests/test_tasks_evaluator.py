"""Task verdict on the YOLOv8-style fixture: int8 loses detections, promoting the final Concat recovers them;
bisect with a detection target; the compare `detection` section, pictures and CLI helpers."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from rich.console import Console

from qdebug.cli.options import add_task_args, check_target_task, decoder_from_args
from qdebug.cli.terminal import render_detection
from qdebug.errors import QDebugError
from qdebug.graph.model import ModelGraph
from qdebug.inputs.dataset import load_dataset
from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.results.detection import DetectionResult
from qdebug.runners.session import OrtSession
from qdebug.runners.sim import SimBackend
from qdebug.search.driver import run_bisect
from qdebug.search.target import parse_target
from qdebug.tasks import get_decoder
from qdebug.tasks.evaluator import DetectionCollector, DetectionEvaluator, run_detection

CONCAT = "/model.22/Concat_5"


@pytest.fixture(scope="module")
def setup(fx):
    g = ModelGraph.load(fx["yolov8"])
    ds = load_dataset(fx["images"], g)
    be = SimBackend("generic")
    cfg = QuantConfig()
    be.prepare(g, cfg, list(ds))
    return g, ds, be, cfg


@pytest.fixture(scope="module")
def run(setup):
    g, ds, be, cfg = setup
    return run_detection(g, ds, be, cfg, get_decoder("yolov8"),
                         promoted=cfg.with_overrides({CONCAT: Precision.INT16}))


def test_int8_loses_detections_promotion_recovers(run):
    d = run.to_json()
    q, p = d["quantized"], d["promoted"]
    assert d["float"]["detections"] > 100 and d["images"] == 8
    assert q["metrics"]["lost_frac"] >= 0.9 and q["metrics"]["map50_95_vs_float"] <= 0.05
    assert q["counts"]["lost"] >= 0.9 * d["float"]["detections"]
    assert p["metrics"]["map50_95_vs_float"] >= 0.7 and p["metrics"]["map50_vs_float"] >= 0.85
    assert p["metrics"]["map50_95_vs_float"] - q["metrics"]["map50_95_vs_float"] >= 0.6
    assert p["metrics"]["lost_frac"] <= 0.15 and p["counts"]["mean_iou"] >= 0.8
    assert p["overrides"] == {CONCAT: "int16"}


def test_detection_section_is_json(run):
    d = run.to_json()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["schema"] == "qdebug.detection/1"
    assert d["decoder"]["layout"] == "concat" and d["thresholds"]["conf"] == 0.25
    assert d["thresholds"]["nms_iou"] == 0.7 and d["thresholds"]["coords"] == "original image pixels"
    assert len(d["per_image"]) == 8 and {"promoted_lost", "lost"} <= set(d["per_image"][0])
    assert [r["class"] for r in d["quantized"]["per_class"]] == sorted(r["class"] for r in d["quantized"]["per_class"])
    assert len(d["worst_images"]) == 3 and d["labels"] is None


def test_boxes_in_original_image_coordinates(run):
    boxes = np.concatenate([x.boxes for x in run.float_dets])
    assert boxes[:, [0, 2]].max() <= 160 and boxes[:, [1, 3]].max() <= 120 and boxes.min() >= 0


def test_draw_pictures(run, tmp_path):
    from PIL import Image

    paths = run.draw(tmp_path / "pics", n=2) + run.draw(tmp_path / "pics", n=1, promoted=True)
    assert len(paths) == 3 and all(p.exists() for p in paths)
    with Image.open(paths[-1]) as im:
        arr = np.asarray(im.convert("RGB")).astype(int)
    assert im.size[0] >= 480
    red = (arr[..., 0] > 200) & (arr[..., 1] < 60)
    green = (arr[..., 1] > 180) & (arr[..., 0] < 40)
    assert red.sum() > 100 and green.sum() > 100  # both box sets are drawn


def test_draw_from_json_examples(run, tmp_path):
    from qdebug.tasks.draw import draw_examples

    section = json.loads(json.dumps(run.to_json()))
    assert [e["image"] for e in section["examples"]] == section["worst_images"]
    assert len(section["examples"][0]["quantized"]) == 0 and section["examples"][0]["float"]
    paths = draw_examples(section, tmp_path / "from_json") + draw_examples(section, tmp_path / "p", promoted=True)
    assert len(paths) == 6 and all(p.stat().st_size > 1000 for p in paths)


def test_collector_in_compare_loop_matches(setup, run):
    """The compare-loop hook (decode tensors already computed) gives the same verdict as separate passes."""
    g, ds, be, cfg = setup
    dec = get_decoder("yolov8")
    col = DetectionCollector(g, ds, dec)
    fs = OrtSession(g.model)
    samples = list(ds)
    for k, (s, q) in enumerate(zip(samples, be.run(g, cfg, samples, ["output0"]), strict=True)):
        col.add(k, {**fs.run(s), "unrelated": np.zeros(3)}, q)
    res = run_detection(g, ds, be, cfg, dec, collector=col).to_json()
    ref = run.to_json()
    assert res["quantized"]["metrics"] == ref["quantized"]["metrics"]
    assert res["float"] == ref["float"] and res["promoted"] is None


def test_bisect_with_detection_target(setup):
    g, ds, _, cfg = setup
    be = SimBackend("generic")
    ev = DetectionEvaluator(g, ds, be, get_decoder("yolov8"))
    doc = run_bisect(g, ds, cfg, be, "map50_95_vs_float>=0.7 and lost_frac<=0.15 and output0.box:snr_db>=30",
                     evaluator=ev)
    res = doc.result
    assert res.met and res.set == [CONCAT]
    assert res.before["map50_95_vs_float>=0.7"] == 0.0 and res.after["map50_95_vs_float>=0.7"] >= 0.7
    assert res.after["output0.box:snr_db>=30"] >= 30
    assert doc.counts.evaluations <= doc.counts.bound
    assert ev.last is not None and ev.warnings == []


def test_evaluator_target_checks(setup):
    g, ds, be, _ = setup
    ev = DetectionEvaluator(g, ds, be, get_decoder("yolov8"))
    with pytest.raises(QDebugError, match="--labels"):
        ev.target = parse_target("map50_95>=0.4", g, task_metrics=ev.task_metrics)
    ev.target = parse_target("recall_vs_float>=0.5", g, task_metrics=ev.task_metrics)
    assert ev.evaluate(QuantConfig()).values == {"recall_vs_float>=0.5": 0.0}


def test_cli_helpers(run):
    ap = argparse.ArgumentParser()
    add_task_args(ap)
    ap.add_argument("--target", default=None)
    args = ap.parse_args(["--task", "yolov5", "--anchors", "10,13,16,30,33,23;30,61,62,45,59,119;116,90,156,198,"
                          "373,326", "--conf", "0.3", "--iou", "0.5"])
    dec = decoder_from_args(args)
    assert dec is not None and dec.name == "yolov5" and (dec.conf, dec.iou) == (0.3, 0.5) and dec.anchor_levels
    assert decoder_from_args(ap.parse_args([])) is None
    with pytest.raises(QDebugError, match="--anchors needs --task"):
        decoder_from_args(ap.parse_args(["--anchors", "1,2"]))
    with pytest.raises(QDebugError, match="no --task"):
        check_target_task(ap.parse_args(["--target", "map50_95_vs_float>=0.9"]))
    check_target_task(ap.parse_args(["--target", "output0:cosine>=0.9"]))
    with pytest.raises(QDebugError, match="no --labels"):
        check_target_task(ap.parse_args(["--task", "yolov8", "--target", "map50>=0.5"]))
    con = Console(record=True, width=160)
    render_detection(DetectionResult.from_json(run.to_json()), con)
    text = con.export_text()
    assert "Detection verdict" in text and "promoted" in text and "mAP50-95" in text
