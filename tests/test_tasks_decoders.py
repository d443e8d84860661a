"""Decoders on hand-built raw tensors with known boxes; split/raw heads vs the fixtures' in-graph decode; NMS."""

from __future__ import annotations

import numpy as np
import pytest

from fixtures.detections import yolov5_raw, yolov8_concat, yolov8_split
from fixtures.models import make_yolov5
from qdebug.errors import QDebugError
from qdebug.graph.model import ModelGraph
from qdebug.inputs.dataset import Letterbox
from qdebug.runners.session import OrtSession
from qdebug.tasks import get_decoder, task_metrics_in
from qdebug.tasks.base import Detections, plausibility_warning, undo_letterbox
from qdebug.tasks.nms import batched_nms, box_iou
from qdebug.tasks.yolov5 import parse_anchors, resolve_anchors

HW = (128, 128)
CUSTOM = [[12, 20, 30, 18], [50, 70, 80, 40], [150, 120, 200, 260]]  # 2 anchors per level, not the COCO set


def _sorted(det: Detections) -> np.ndarray:
    rows = np.concatenate([det.boxes, det.scores[:, None], det.classes[:, None].astype(np.float32)], 1)
    return rows[np.lexsort((rows[:, 1], rows[:, 0]))]


def _same(det: Detections, expected: np.ndarray, atol: float = 1e-3) -> None:
    exp = expected[np.lexsort((expected[:, 1], expected[:, 0]))]
    got = _sorted(det)
    assert got.shape == exp.shape, (got, exp)
    np.testing.assert_allclose(got, exp, atol=atol)


@pytest.mark.parametrize("transposed", [False, True])
def test_yolov8_concat_known_boxes(transposed):
    objs = [(5, 1, (20.0, 30.0, 16.0, 10.0), 0.9), (200, 3, (100.0, 64.0, 40.0, 50.0), 0.6),
            (300, 0, (60.0, 60.0, 30.0, 30.0), 0.4)]
    outs, exp = yolov8_concat(objs, transposed=transposed)
    dec = get_decoder("yolov8")
    det = dec.decode(outs, HW)
    assert dec.layout == "concat" and dec.info["nc"] == 4 and dec.info["transposed"] is transposed
    _same(det, exp)
    assert det.classes.dtype == np.int64 and det.boxes.dtype == np.float32


def test_yolov8_concat_nms_and_threshold():
    # two overlapping boxes of the same class: the weaker one is suppressed; other class survives; 0.2 < conf
    objs = [(1, 0, (50.0, 50.0, 40.0, 40.0), 0.9), (2, 0, (52.0, 50.0, 40.0, 40.0), 0.8),
            (3, 1, (52.0, 50.0, 40.0, 40.0), 0.7), (4, 2, (10.0, 10.0, 8.0, 8.0), 0.2)]
    outs, _ = yolov8_concat(objs)
    det = get_decoder("yolov8").decode(outs, HW)
    assert sorted((int(c), round(float(s), 2)) for c, s in zip(det.classes, det.scores, strict=True)) == [(0, 0.9), (1, 0.7)]
    assert len(get_decoder("yolov8", agnostic=True).decode(outs, HW)) == 1
    assert len(get_decoder("yolov8", conf=0.1).decode(outs, HW)) == 3


@pytest.mark.parametrize("score_sum,logits", [(True, False), (False, True)])
def test_yolov8_split_dfl_known_boxes(score_sum, logits):
    objs = [(0, 3, 4, 2, (2, 1, 3, 4), 0.8), (1, 5, 2, 0, (0, 3, 1, 2), 0.55), (2, 1, 3, 1, (1, 1, 2, 0), 0.95)]
    outs, exp = yolov8_split(objs, score_sum=score_sum, logits=logits)
    dec = get_decoder("yolov8")
    det = dec.decode(outs, HW)
    assert dec.layout == "split" and dec.info["strides"] == [8, 16, 32] and dec.info["reg_max"] == 16
    assert dec.info["score_sum"] is score_sum and dec.info["class_sigmoid_applied"] is logits
    _same(det, exp)


def test_yolov8_split_score_sum_gates_cells():
    outs, _ = yolov8_split([(0, 3, 4, 2, (2, 1, 3, 4), 0.8)])
    outs["sum0"][:] = 0.1  # a crushed score-sum tensor hides the cell, as in the deployed C post-processing
    assert len(get_decoder("yolov8").decode(outs, HW)) == 0
    assert len(get_decoder("yolov8", score_sum=False).decode(outs, HW)) == 1


def test_yolov8_split_matches_fixture_concat(fx):
    """Split heads cut from the fixture graph (DFL/dist2bbox on the CPU) decode like the in-graph output0."""
    g = ModelGraph.load(fx["yolov8"])
    heads = [f"/model.22/cv{b}.{i}/cv{b}.{i}.2/Conv_output_0" for i in range(3) for b in (2, 3)]
    sess = OrtSession(g.with_outputs(heads))
    rng = np.random.default_rng(0)
    x = {"images": rng.random((1, 3, 128, 128), dtype=np.float32)}
    vals = sess.run(x)
    ref = get_decoder("yolov8").decode({"output0": vals["output0"]}, HW)
    split = get_decoder("yolov8")
    det = split.decode({h: vals[h] for h in heads}, HW)
    assert split.layout == "split" and split.info["class_sigmoid_applied"] is True
    assert len(ref) > 5 and len(det) == len(ref)
    np.testing.assert_allclose(_sorted(det), _sorted(ref), atol=2e-3)


@pytest.mark.parametrize("five_d,in_model", [(False, False), (True, False), (False, True)])
def test_yolov5_raw_heads_custom_anchors(five_d, in_model):
    objs = [(0, 1, 3, 5, 2, (0.6, 0.3, 0.4, 0.7), 0.9), (1, 0, 2, 2, 0, (0.5, 0.5, 0.5, 0.5), 0.7),
            (2, 1, 1, 3, 1, (0.2, 0.8, 0.3, 0.35), 0.5)]
    outs, exp = yolov5_raw(objs, CUSTOM, five_d=five_d, sigmoid_in_model=in_model)
    dec = get_decoder("yolov5", anchors=";".join(",".join(str(v) for v in lv) for lv in CUSTOM))
    det = dec.decode(outs, HW)
    assert dec.layout == "raw" and dec.info["strides"] == [8.0, 16.0, 32.0] and dec.info["nc"] == 3
    assert dec.info["sigmoid_applied"] is (not in_model) and dec.warnings == []
    _same(det, exp)


def test_yolov5_default_anchors_warn_and_differ():
    objs = [(0, 1, 3, 5, 2, (0.6, 0.3, 0.4, 0.7), 0.9)]
    outs, exp = yolov5_raw([(lv, k % 2, gx, gy, c, s, p) for lv, k, gx, gy, c, s, p in objs],
                           [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]])
    dec = get_decoder("yolov5")
    _same(dec.decode(outs, HW), exp)
    assert any("no --anchors given" in w for w in dec.warnings)
    with pytest.raises(QDebugError, match="2 anchors per cell|not a multiple"):
        get_decoder("yolov5", anchors="10,13,16,30,33,23;30,61,62,45,59,119;116,90,156,198,373,326").decode(
            yolov5_raw(objs, CUSTOM)[0], HW)


def test_yolov5_raw_matches_fixture_decoded_with_custom_anchors(fx, tmp_path):
    """A model exported with its own (autoanchor) anchors: raw heads + --anchors file == the in-graph decode;
    the default anchors decode to different boxes and the plausibility check complains."""
    anchors = [[4, 5, 8, 10, 12, 9], [20, 40, 42, 30, 40, 80], [90, 70, 120, 150, 300, 260]]
    m = make_yolov5(anchors=anchors)
    g = ModelGraph(m, str(tmp_path / "v5.onnx"))
    heads = [f"/model.24/m.{i}/Conv_output_0" for i in range(3)]
    sess = OrtSession(g.with_outputs(heads))
    rng = np.random.default_rng(1)
    vals = sess.run({"images": rng.random((1, 3, 128, 128), dtype=np.float32)})
    ref = get_decoder("yolov5").decode({"output0": vals["output0"]}, HW)
    f = tmp_path / "anchors.txt"
    f.write_text("# P3/8\n" + "\n".join(", ".join(str(v) for v in lv) for lv in anchors) + "\n")
    dec = get_decoder("yolov5", anchors=str(f))
    det = dec.decode({h: vals[h] for h in heads}, HW)
    assert len(ref) > 5 and len(det) == len(ref)
    np.testing.assert_allclose(_sorted(det), _sorted(ref), atol=2e-2)
    # the wrong (default) anchors: different boxes
    wrong = get_decoder("yolov5").decode({h: vals[h] for h in heads}, HW)
    assert len(wrong) != len(ref) or not np.allclose(_sorted(wrong)[:, :4], _sorted(ref)[:, :4], atol=1)


def test_implausible_boxes_warn():
    objs = [(lv, k, gx, gy, 0, (0.5, 0.5, 0.5, 0.5), 0.9) for lv in range(3) for k in range(2)
            for gx, gy in ((0, 0), (1, 1), (2, 1))]
    huge = [[v * 20 for v in lv] for lv in CUSTOM]  # anchors 20x too large: boxes far larger than the image
    outs, _ = yolov5_raw(objs, CUSTOM)
    dec = get_decoder("yolov5", anchors=huge)
    dets = [dec.decode(outs, HW)]
    w = plausibility_warning(dets, dec.hint)
    assert w is not None and "implausible" in w and "--anchors" in w
    good = get_decoder("yolov5", anchors=CUSTOM)
    assert plausibility_warning([good.decode(outs, HW)], good.hint) is None


def test_yolov5_decoded_fixture_layout(fx):
    g = ModelGraph.load(fx["yolov5"])
    vals = OrtSession(g.model).run({"images": np.random.default_rng(2).random((1, 3, 128, 128), dtype=np.float32)})
    dec = get_decoder("yolov5", anchors="1,2,3,4,5,6;1,2,3,4,5,6;1,2,3,4,5,6")
    det = dec.decode(vals, HW)
    assert dec.layout == "decoded" and dec.info["nc"] == 4 and len(det) > 0
    assert any("--anchors ignored" in w for w in dec.warnings)


def test_parse_anchors_forms(tmp_path):
    three = "10,13,16,30,33,23;30,61,62,45,59,119;116,90,156,198,373,326"
    lv = resolve_anchors(parse_anchors(three), 3)
    assert [a.shape for a in lv] == [(3, 2)] * 3 and lv[2][2].tolist() == [373, 326]
    flat = tmp_path / "anchors_yolov5.txt"  # rknn_model_zoo: one number per line
    flat.write_text("\n".join(f"{v}.0" for v in three.replace(";", ",").split(",")) + "\n")
    assert all((a == b).all() for a, b in zip(resolve_anchors(parse_anchors(str(flat)), 3), lv, strict=True))
    yaml_like = tmp_path / "anchors.yaml"
    yaml_like.write_text("anchors:\n  - [10,13, 16,30, 33,23]  # P3/8\n  - [30,61, 62,45, 59,119]  # P4/16\n"
                         "  - [116,90, 156,198, 373,326]  # P5/32\n")
    got = resolve_anchors(parse_anchors(str(yaml_like)), 3)
    assert [a.tolist() for a in got] == [a.tolist() for a in lv]
    with pytest.raises(QDebugError, match="level"):
        resolve_anchors(parse_anchors("10,13,16,30;30,61,62,45,59"), 3)
    with pytest.raises(QDebugError, match="no anchor values"):
        parse_anchors(";;")
    with pytest.raises(QDebugError, match="positive"):
        parse_anchors("10,-13,16,30,33,23")


def test_get_decoder_errors_and_aliases():
    assert get_decoder("yolo11").name == "yolov8" and get_decoder("YOLOv7").name == "yolov5"
    assert get_decoder("yolov8").iou == 0.7 and get_decoder("yolov5").iou == 0.45
    with pytest.raises(QDebugError, match="unknown task"):
        get_decoder("ssd")
    with pytest.raises(QDebugError, match="anchor-free"):
        get_decoder("yolov8", anchors="1,2")
    with pytest.raises(QDebugError, match="--conf"):
        get_decoder("yolov8", conf=1.5)
    with pytest.raises(QDebugError, match="no YOLOv8 output"):
        get_decoder("yolov8").decode({"x": np.zeros((1, 10), np.float32)}, HW)
    assert task_metrics_in("map50_95_vs_float>=0.9 and output0:cosine>=0.99 and lost_frac<0.1") == \
        ["map50_95_vs_float", "lost_frac"]


def test_letterbox_undo():
    boxes = np.array([[0, 16, 128, 112], [40, 56, 80, 72]], np.float32)
    lb = Letterbox(scale=0.8, pad_x=0, pad_y=16, orig_w=160, orig_h=120)
    np.testing.assert_allclose(undo_letterbox(boxes, lb, HW), [[0, 0, 160, 120], [50, 50, 100, 70]], atol=1e-4)
    rs = Letterbox(scale=128 / 160, pad_x=0, pad_y=0, orig_w=160, orig_h=64)  # --resize resize: x and y differ
    np.testing.assert_allclose(undo_letterbox(boxes[1:], rs, HW), [[50, 28, 100, 36]], atol=1e-4)
    assert undo_letterbox(boxes, None, HW) is boxes


def _brute_nms(boxes, scores, classes, thr):
    keep = []
    for c in np.unique(classes):
        idx = sorted(np.flatnonzero(classes == c), key=lambda i: -scores[i])
        kept: list[int] = []
        for i in idx:
            if all(box_iou(boxes[i:i + 1], boxes[j:j + 1])[0, 0] <= thr for j in kept):
                kept.append(i)
        keep += kept
    return sorted(keep)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block", [7, 256])
def test_nms_matches_brute_force(seed, block, monkeypatch):
    monkeypatch.setattr("qdebug.tasks.nms.BLOCK", block)  # small blocks exercise the cross-block path
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 150))
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(2, 80, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.permutation(n).astype(np.float32) / n + 0.01
    classes = rng.integers(0, 3, n)
    thr = float(rng.choice([0.3, 0.45, 0.7]))
    got = batched_nms(boxes, scores, classes, thr)
    assert sorted(got.tolist()) == _brute_nms(boxes, scores, classes, thr)
    assert (np.diff(scores[got]) <= 0).all()  # best first
    assert batched_nms(boxes, scores, classes, thr, max_keep=3).tolist() == got[:3].tolist()
    agn = batched_nms(boxes, scores, classes, thr, agnostic=True)
    assert sorted(agn.tolist()) == _brute_nms(boxes, scores, np.zeros(n, int), thr)



@pytest.mark.parametrize(("text", "want"), [
    ("{0: 'person', 1: 'bicycle'}", {0: "person", 1: "bicycle"}),
    ("['a', 'b', 'c']", {0: "a", 1: "b", 2: "c"}),
    ("{0: 'x', 'k': 'y', 2: 3}", {0: "x", 2: "3"}),  # non-integer ids dropped
    ("__import__('os').system('true')", {}),  # never evaluated
    ("{0: 'unterminated", {}),
    ("", {}),
])
def test_class_names_from_metadata(text, want):
    from qdebug.tasks.base import class_names

    assert class_names({"names": text}) == want


def test_detection_verdict_uses_the_models_class_names(fx, tmp_path):
    """An ultralytics export carries `names` in its metadata: the per-class rows name the classes."""
    import json

    import onnx

    from qdebug.cli import main

    m = onnx.load(str(fx["yolov8"]))
    names = {0: "cat one", 1: "dog", 2: "[bold]x[/]", 3: "bird"}  # markup in a name stays literal
    onnx.helper.set_model_props(m, {"names": repr(names)})
    onnx.save(m, str(tmp_path / "m.onnx"))
    out = tmp_path / "c.json"
    assert main(["compare", str(tmp_path / "m.onnx"), "--data", str(fx["images"]), "--task", "yolov8",
                 "--conf", "0.05", "--json", str(out), "-q"]) == 0
    rows = json.loads(out.read_text())["detection"]["quantized"]["per_class"]
    assert rows and all(r["name"] == names[r["class"]] for r in rows)
