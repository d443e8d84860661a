"""Ground-truth labels (YOLO txt, COCO JSON) and true mAP through pycocotools; the missing-extra error."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest

from qdebug.cli.options import add_task_args, decoder_from_args
from qdebug.errors import DataError, QDebugError
from qdebug.graph.model import ModelGraph
from qdebug.inputs.dataset import load_dataset
from qdebug.tasks.base import Detections, image_metas, network_hw
from qdebug.tasks.labels import load_labels, require_pycocotools, true_map

# objects in original pixels of the 160x120 fixture images: (image index, class, x1, y1, x2, y2)
OBJECTS = [(0, 0, 10, 20, 50, 60), (0, 2, 80, 10, 150, 100), (1, 1, 30, 30, 90, 110), (2, 0, 5, 5, 25, 40)]


@pytest.fixture(scope="module")
def metas(fx):
    g = ModelGraph.load(fx["yolov8"])
    ds = load_dataset(fx["images"], g)
    list(ds)  # fills the letterbox records
    return image_metas(ds), network_hw(ds)


def _dets(metas, shift: float = 0.0, cls_map=None) -> list[Detections]:
    out = []
    for k in range(len(metas)):
        rows = [o for o in OBJECTS if o[0] == k]
        out.append(Detections.make([[o[2] + shift, o[3], o[4] + shift, o[5]] for o in rows], [0.9] * len(rows),
                                   [(cls_map or {}).get(o[1], o[1]) for o in rows]))
    return out


def _write_yolo(d, metas) -> None:
    d.mkdir(exist_ok=True)
    for k, m in enumerate(metas[:3]):
        lines = []
        for _, c, x1, y1, x2, y2 in (o for o in OBJECTS if o[0] == k):
            w, h = m.letterbox.orig_w, m.letterbox.orig_h
            lines.append(f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
        (d / (m.name.rsplit(".", 1)[0] + ".txt")).write_text("\n".join(lines) + "\n")
    (d / "classes.txt").write_text("person\ncar\ndog\n")


def test_yolo_txt_labels_true_map(metas, tmp_path):
    pytest.importorskip("pycocotools")
    ms, hw = metas
    _write_yolo(tmp_path / "labels", ms)
    lab = load_labels(tmp_path / "labels", ms, hw)
    assert lab.format == "yolo" and lab.labelled == len(ms) and lab.objects() == len(OBJECTS)
    assert lab.names == {0: "person", 1: "car", 2: "dog"}
    gts = lab.gt_detections()
    np.testing.assert_allclose(gts[0].boxes, [[10, 20, 50, 60], [80, 10, 150, 100]], atol=1e-3)
    perfect = true_map(lab, _dets(ms))
    assert perfect["map50_95"] == pytest.approx(1.0) and perfect["map50"] == pytest.approx(1.0)
    shifted = true_map(lab, _dets(ms, shift=6.0))
    assert shifted["map50_95"] < 0.9 and true_map(lab, [Detections.empty()] * len(ms))["map50_95"] == 0.0


def test_coco_json_labels_true_map(metas, tmp_path):
    pytest.importorskip("pycocotools")
    ms, hw = metas
    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
    cat_of = {0: 1, 1: 3, 2: 18}
    images = [{"id": 100 + k, "file_name": f"val/{m.name}", "width": 160, "height": 120} for k, m in enumerate(ms[:3])]
    anns = [{"id": i + 1, "image_id": 100 + o[0], "category_id": cat_of[o[1]], "iscrowd": 0,
             "bbox": [o[2], o[3], o[4] - o[2], o[5] - o[3]], "area": (o[4] - o[2]) * (o[5] - o[3])}
            for i, o in enumerate(OBJECTS)]
    f = tmp_path / "instances.json"
    f.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    lab = load_labels(f, ms, hw)
    assert lab.format == "coco" and lab.labelled == 3 and lab.class_to_cat == cat_of and lab.names[2] == "dog"
    assert any("no entry" in w for w in lab.warnings)  # the other 5 images are not in the file
    assert true_map(lab, _dets(ms))["map50_95"] == pytest.approx(1.0)
    assert true_map(lab, _dets(ms, cls_map={0: 1, 1: 0}))["map50_95"] < 0.7  # wrong classes


def test_label_errors(metas, tmp_path):
    ms, hw = metas
    with pytest.raises(DataError, match="not found"):
        load_labels(tmp_path / "nope", ms, hw)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no YOLO label file"):
        load_labels(tmp_path / "empty", ms, hw)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / (ms[0].name.rsplit(".", 1)[0] + ".txt")).write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(DataError, match="expected 5 values") as e:
        load_labels(bad, ms, hw)
    assert "line 1" in str(e.value)
    j = tmp_path / "other.json"
    j.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [], "categories": []}))
    with pytest.raises(DataError, match="no image of the data set"):
        load_labels(j, ms, hw)


def test_missing_pycocotools_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(QDebugError) as e:
        require_pycocotools()
    msg = e.value.one_line()
    assert "\n" not in msg and "pycocotools" in msg and "pip install 'qdebug[coco]'" in msg
    ap = argparse.ArgumentParser()
    add_task_args(ap)
    with pytest.raises(QDebugError, match="qdebug\\[coco\\]"):  # fails before any inference
        decoder_from_args(ap.parse_args(["--task", "yolov8", "--labels", "coco.json"]))
