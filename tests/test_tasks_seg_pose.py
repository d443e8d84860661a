"""Segment and pose heads of `--task yolov8`: mask IoU, OKS, their COCO AP, decoding, and the CLI end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest

from fixtures.data import make_images
from fixtures.heads import make_yolov8_pose, make_yolov8_seg
from qdebug.cli import main
from qdebug.errors import QDebugError
from qdebug.inputs.dataset import Letterbox
from qdebug.tasks import get_decoder
from qdebug.tasks.agreement import agreement, instance_metrics, similarity_map
from qdebug.tasks.base import Detections
from qdebug.tasks.keypoints import oks
from qdebug.tasks.masks import CropMask, build_masks, mask_iou

SCHEMA = Path(__file__).parent.parent / "qdebug" / "results" / "schemas" / "detection-1.json"


def square(x0: int, y0: int, side: int = 4, hw: tuple[int, int] = (8, 8)) -> np.ndarray:
    m = np.zeros(hw, bool)
    m[y0:y0 + side, x0:x0 + side] = True
    return m


# ------------------------------------------------------------------ mask IoU
def test_mask_iou_of_half_overlapping_squares_is_one_third():
    a, b = square(0, 0), square(2, 0)  # 16 px each, 8 px in common: 8 / (16 + 16 - 8)
    full = mask_iou([CropMask.from_full(a)], [CropMask.from_full(b)])
    crops = mask_iou([CropMask(0, 0, np.ones((4, 4), bool))], [CropMask(0, 2, np.ones((4, 4), bool))])
    assert full[0, 0] == pytest.approx(1 / 3) and crops[0, 0] == pytest.approx(1 / 3)
    assert mask_iou([CropMask.from_full(a)], [CropMask.from_full(square(4, 4))])[0, 0] == 0.0
    assert (CropMask(0, 2, np.ones((4, 4), bool)).full((8, 8)) == b).all()


def test_build_masks_crops_to_the_box_at_prototype_resolution():
    # 32x32 input, 8x8 prototypes (ratio 1/4): box x 4..12 -> columns with 1 <= c < 3, y 4..8 -> row 1 only
    protos = np.ones((1, 8, 8), np.float32)
    m = build_masks(np.array([[1.0]]), protos, np.array([[4.0, 4.0, 12.0, 8.0]]), (32, 32))[0]
    assert (m.y0, m.x0, m.bits.shape, m.area) == (1, 1, (1, 2), 2)
    neg = build_masks(np.array([[-1.0]]), protos, np.array([[4.0, 4.0, 12.0, 8.0]]), (32, 32))[0]
    assert neg.area == 0  # logit -1 < 0: sigmoid below 0.5


# ------------------------------------------------------------------ OKS
def test_oks_of_one_offset_keypoint_matches_the_formula():
    ref = np.zeros((1, 17, 3))
    ref[0, :, 0] = np.arange(17) * 2.0
    ref[0, :, 1] = 5.0
    ref[0, :, 2] = 1.0
    test = ref.copy()
    test[0, 0, 0] += 3.0  # keypoint 0 (nose, sigma 0.026) moved by d = 3 px
    area = 20.0 * 10.0 * 0.53  # float box 20x10 px, ultralytics' 0.53 area factor
    e = 3.0 ** 2 / ((2 * 0.026) ** 2 * area * 2)
    want = (16 + math.exp(-e)) / 17
    assert oks(test, ref, np.array([area]))[0, 0] == pytest.approx(want, rel=1e-6)
    ref[0, 5:, 2] = 0.2  # keypoints below visibility 0.5 are not scored: 5 left, one of them moved
    assert oks(test, ref, np.array([area]))[0, 0] == pytest.approx((4 + math.exp(-e)) / 5, rel=1e-6)


def test_oks_other_keypoint_counts_use_uniform_sigma():
    ref = np.array([[[0.0, 0.0, 1.0], [10.0, 0.0, 1.0], [0.0, 10.0, 1.0], [10.0, 10.0, 1.0]]])
    test = ref + np.array([2.0, 0.0, 0.0])  # every keypoint 2 px off
    area = 100.0
    e = 4.0 / ((2 * 0.25) ** 2 * area * 2)  # K = 4 -> sigma 1/4
    assert oks(test, ref, np.array([area]))[0, 0] == pytest.approx(math.exp(-e), rel=1e-6)


# ------------------------------------------------------------------ AP with mask IoU / OKS
def _seg_dets(masks, scores, classes=None, boxes=None):
    if boxes is None:  # the masks' bounding boxes
        boxes = [[np.flatnonzero(m.any(0))[0], np.flatnonzero(m.any(1))[0], np.flatnonzero(m.any(0))[-1] + 1,
                  np.flatnonzero(m.any(1))[-1] + 1] for m in masks]
    return Detections.make(boxes, scores, classes or [0] * len(masks), masks=[CropMask.from_full(m) for m in masks])


def test_identical_sets_score_one():
    ref = [_seg_dets([square(0, 0), square(4, 4)], [0.9, 0.8])]
    kp = np.tile(np.array([[1.0, 2.0, 1.0]]), (2, 17, 1))
    pose = [Detections.make([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.7], [0, 0], keypoints=kp)]
    m = agreement(ref, ref).values()
    assert m["mask_map50_95_vs_float"] == 1.0 and m["mask_iou_mean"] == 1.0
    p = agreement(pose, pose).values()
    assert p["oks_map_vs_float"] == 1.0 and p["kpt_err_px"] == 0.0
    assert "mask_map50_95_vs_float" not in p and "oks_map_vs_float" not in m


def test_a_dropped_instance_gives_the_hand_computed_ap():
    ref = [_seg_dets([square(0, 0), square(4, 4)], [0.9, 0.8])]
    test = [_seg_dets([square(0, 0)], [0.9])]
    # one of two reference instances found, first in score order: precision 1 up to recall 0.5, so the 101-point
    # interpolation has precision 1 at recall 0.00..0.50 (51 points) and 0 above, at every IoU threshold
    assert similarity_map(ref, test, lambda d, di, g, gi: mask_iou([d.masks[i] for i in di],
                                                                   [g.masks[j] for j in gi])) \
        == pytest.approx(51 / 101)
    # the first mask half-shifted (mask IoU 1/3 < 0.5 fails every threshold; the boxes still match) and scored
    # below the intact one: TP then FP, so again precision 1 up to recall 0.5
    shifted = [_seg_dets([square(2, 0), square(4, 4)], [0.8, 0.9], boxes=[[0, 0, 4, 4], [4, 4, 8, 8]])]
    m = agreement(ref, shifted).values()
    assert m["map50_95_vs_float"] == 1.0 and m["mask_map50_95_vs_float"] == pytest.approx(51 / 101)
    assert m["mask_iou_mean"] == pytest.approx((1 / 3 + 1) / 2)


def test_keypoint_error_counts_visible_matched_keypoints_only():
    kp = np.zeros((1, 17, 3))
    kp[..., 2] = 1.0
    moved = kp.copy()
    moved[0, 0, :2] = [3.0, 4.0]  # 5 px
    moved[0, 1, :2] = [6.0, 8.0]  # 10 px, but invisible in the reference
    kp[0, 1, 2] = 0.1
    ref = [Detections.make([[0, 0, 10, 10]], [0.9], [0], keypoints=kp)]
    test = [Detections.make([[0, 0, 10, 10]], [0.9], [0], keypoints=moved)]
    got = instance_metrics(ref, test, agreement(ref, test, instances=False).pairs)
    assert got["kpt_err_px"] == pytest.approx(5.0 / 16)  # 16 visible keypoints, one 5 px off


# ------------------------------------------------------------------ decode
A32 = 16 + 4 + 1  # anchors of a 32x32 input at strides 8/16/32


def _seg_output(nc=2, nm=2):
    out = np.zeros((1, 4 + nc + nm, A32), np.float32)
    out[0, :4, 0] = [16, 16, 16, 16]  # xywh -> xyxy 8..24
    out[0, 4 + 1, 0] = 0.9  # class 1
    out[0, 4 + nc:, 0] = [1.0, 0.0]
    out[0, :4, 1] = [17, 16, 16, 16]  # overlaps anchor 0 (IoU 0.88 > 0.7), lower score: suppressed
    out[0, 4 + 1, 1] = 0.6
    out[0, 4 + nc:, 1] = [-1.0, 0.0]
    protos = np.zeros((1, nm, 8, 8), np.float32)
    protos[0, 0, :, :4] = 1.0  # left half positive
    protos[0, 0, :, 4:] = -1.0
    return {"output0": out, "output1": protos}


def test_decode_segment_output_builds_masks_for_kept_detections():
    dec = get_decoder("yolov8")
    dets = dec.decode(_seg_output(), (32, 32))
    assert dec.info["head"] == "segment" and dec.info["nc"] == 2 and dec.info["masks"]["nm"] == 2
    assert len(dets) == 1 and dets.classes.tolist() == [1] and dets.masks is not None and len(dets.masks) == 1
    # crop rows/cols 2..5 of the 8x8 grid; positive where the prototype is (columns < 4): 4 rows x 2 columns
    assert (dets.masks[0].y0, dets.masks[0].x0, dets.masks[0].area) == (2, 2, 8)


def _pose_output(nc=1, k=17):
    out = np.zeros((1, 4 + nc + 3 * k, A32), np.float32)
    out[0, :4, 0] = [16, 16, 16, 16]
    out[0, 4, 0] = 0.8
    kp = np.stack([np.arange(k) + 8.0, np.full(k, 12.0), np.linspace(0.0, 1.0, k)], axis=1)  # x, y, vis
    out[0, 4 + nc:, 0] = kp.ravel()
    return {"output0": out}, kp


def test_decode_pose_output_keeps_keypoints_and_undoes_the_letterbox():
    outputs, kp = _pose_output()
    dec = get_decoder("yolov8", kpt_shape="17,3")
    dets = dec.decode(outputs, (32, 32))
    assert dec.info["head"] == "pose" and dec.info["nc"] == 1 and dec.info["kpt_shape"] == [17, 3]
    assert dets.keypoints is not None and np.allclose(dets.keypoints[0], kp)
    lb = Letterbox(scale=0.5, pad_x=0.0, pad_y=4.0, orig_w=64, orig_h=48)  # 64x48 image in 32x32 with 4 px bars
    dets = get_decoder("yolov8", kpt_shape="17,3").decode(outputs, (32, 32), lb)
    assert np.allclose(dets.keypoints[0, :, 0], kp[:, 0] / 0.5)
    assert np.allclose(dets.keypoints[0, :, 1], (kp[:, 1] - 4.0) / 0.5) and np.allclose(dets.keypoints[0, :, 2], kp[:, 2])


def test_pose_head_ambiguity_and_options():
    outputs, _ = _pose_output()
    plain = get_decoder("yolov8")
    plain.decode(outputs, (32, 32))  # 56 channels and no hint: 52 classes, with a warning naming the option
    assert plain.info["head"] == "detect" and plain.info["nc"] == 52
    assert any("--kpt-shape 17,3" in w for w in plain.warnings)
    by_nc = get_decoder("yolov8", nc=1)
    assert by_nc.decode(outputs, (32, 32)).keypoints is not None and by_nc.info["kpt_shape"] == [17, 3]
    meta = get_decoder("yolov8")
    meta.configure({"task": "pose", "kpt_shape": "[17, 3]", "names": "{0: 'person'}"})
    assert meta.decode(outputs, (32, 32)).keypoints is not None and meta.info["nc"] == 1
    with pytest.raises(QDebugError, match="--kpt-shape"):
        get_decoder("yolov8", kpt_shape="17")
    with pytest.raises(QDebugError, match="--kpt-shape"):
        get_decoder("yolov8", nc=1, kpt_shape="5,3").decode(outputs, (32, 32))  # 4 + 1 + 15 != 56 channels
    with pytest.raises(QDebugError, match="does not apply"):
        get_decoder("yolov5", kpt_shape="17,3")


# ------------------------------------------------------------------ CLI on generated models
@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("heads")
    paths = {"seg": d / "seg.onnx", "pose": d / "pose.onnx", "images": d / "images"}
    onnx.save(make_yolov8_seg(), str(paths["seg"]))
    onnx.save(make_yolov8_pose(), str(paths["pose"]))
    make_images(paths["images"], n=8)
    return paths


@pytest.mark.parametrize("kind,keys", [("seg", ("mask_map50_95_vs_float", "mask_iou_mean")),
                                       ("pose", ("oks_map_vs_float", "kpt_err_px"))])
def test_cli_compare_reports_mask_and_keypoint_metrics(heads, tmp_path, capsys, kind, keys):
    out = tmp_path / "c.json"
    rc = main(["compare", str(heads[kind]), "--data", str(heads["images"]), "--task", "yolov8", "--json", str(out)])
    assert rc == 0
    det = json.loads(out.read_text())["detection"]
    jsonschema.validate(det, json.loads(SCHEMA.read_text()))
    assert det["decoder"]["head"] == ("segment" if kind == "seg" else "pose") and det["float"]["detections"] > 0
    assert all(k in det["quantized"]["metrics"] for k in keys)
    text = capsys.readouterr().out
    assert ("masks: mask mAP50-95" if kind == "seg" else "keypoints: OKS mAP50-95") in text
    assert main(["report", str(out), "-o", str(tmp_path / "rep"), "--no-why"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Masks and keypoints" in md and ("mean mask IoU" if kind == "seg" else "keypoint error (px)") in md


def test_cli_bisect_meets_a_mask_target(heads, tmp_path):
    out = tmp_path / "b.json"
    rc = main(["bisect", str(heads["seg"]), "--data", str(heads["images"]), "--task", "yolov8",
               "--target", "mask_map50_95_vs_float>=0.9", "--json", str(out), "-q"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["result"]["met"]
    assert doc["result"]["before"]["mask_map50_95_vs_float>=0.9"] < 0.9
    assert doc["result"]["after"]["mask_map50_95_vs_float>=0.9"] >= 0.9
    prom = doc["detection"]["promoted"]["metrics"]
    assert prom["mask_map50_95_vs_float"] >= 0.9 and "mask_iou_mean" in prom


def test_cli_bisect_refuses_a_pose_metric_on_a_segment_model(heads, capsys):
    rc = main(["bisect", str(heads["seg"]), "--data", str(heads["images"]), "--samples", "2", "--task", "yolov8",
               "--target", "oks_map_vs_float>=0.5", "-q"])
    assert rc == 2 and "needs a pose head" in capsys.readouterr().err
