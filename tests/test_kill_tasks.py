"""Mutation-audit kills for the detection tasks: strict confidence and IoU ties (as ultralytics: `> conf`,
suppress only `IoU > thr`), class-aware NMS, and the letterbox record and its undo with horizontal padding.
Expected boxes are derived by hand.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image

from qdebug.graph.model import ModelGraph
from qdebug.inputs.dataset import Letterbox, Preprocess, load_dataset
from qdebug.tasks.base import Decoder, undo_letterbox
from qdebug.tasks.nms import batched_nms, box_iou


class Fixed(Decoder):
    """A decoder returning given candidates (boxes xyxy in network pixels, class scores)."""

    name = "fixed"

    def __init__(self, boxes, scores, **kw) -> None:
        super().__init__(**kw)
        self.b = np.asarray(boxes, np.float32)
        self.s = np.asarray(scores, np.float32)

    def candidates(self, outputs, input_hw):
        return self.b, self.s


def test_confidence_equal_to_the_threshold_is_dropped():
    dec = Fixed([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [[0.25], [0.5], [0.2500001]], conf=0.25)
    d = dec.decode({}, (64, 64))
    assert d.scores.tolist() == [np.float32(0.5), np.float32(0.2500001)]
    assert d.candidates == 2


def test_iou_equal_to_the_threshold_is_kept():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float64)  # intersection 50, union 100: IoU 0.5
    assert box_iou(boxes[:1], boxes[1:])[0, 0] == 0.5
    assert batched_nms(boxes, [0.9, 0.8], [0, 0], 0.5).tolist() == [0, 1]
    assert batched_nms(boxes, [0.9, 0.8], [0, 0], 0.49).tolist() == [0]
    assert batched_nms(boxes, [0.8, 0.9], [0, 0], 0.49).tolist() == [1]  # the higher score wins


def test_iou_tie_against_an_earlier_block():
    # 256 disjoint boxes fill the first block; the 257th (lowest score) overlaps box 0 with IoU exactly 0.5
    boxes = [[20.0 * i, 0, 20.0 * i + 10, 10] for i in range(256)] + [[0, 0, 10, 5]]
    scores = [1.0 - 0.001 * i for i in range(256)] + [0.01]
    classes = [0] * 257
    assert len(batched_nms(boxes, scores, classes, 0.5)) == 257
    assert batched_nms(boxes, scores, classes, 0.49).tolist() == list(range(256))
    # another class is never suppressed by class 0
    assert len(batched_nms(boxes, scores, classes[:256] + [1], 0.49)) == 257


def test_class_aware_and_agnostic():
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10]]  # IoU 90 / 110
    assert batched_nms(boxes, [0.9, 0.8], [0, 1], 0.5).tolist() == [0, 1]
    assert batched_nms(boxes, [0.9, 0.8], [0, 1], 0.5, agnostic=True).tolist() == [0]
    assert batched_nms(boxes, [0.9, 0.8], [0, 0], 0.5, max_keep=1).tolist() == [0]


def test_undo_letterbox_with_horizontal_padding():
    # 960 wide x 1280 high into 640 x 640: r = min(640/960, 640/1280) = 0.5, content 480 x 640, pad_x = 80
    lb = Letterbox(0.5, 80, 0, 960, 1280)
    net = np.array([[130, 100, 230, 300], [0, 0, 90, 640]], np.float32)
    out = undo_letterbox(net, lb, (640, 640))
    # x: (130 - 80) / 0.5 = 100, (230 - 80) / 0.5 = 300; y: 100 / 0.5 = 200, 300 / 0.5 = 600
    np.testing.assert_allclose(out[0], [100, 200, 300, 600])
    # a box reaching into the left padding is clipped at 0: (0 - 80)/0.5 -> 0, (90 - 80)/0.5 = 20
    np.testing.assert_allclose(out[1], [0, 0, 20, 1280])


def test_undo_letterbox_vertical_padding_and_plain_resize():
    lb = Letterbox(0.5, 0, 80, 1280, 960)
    np.testing.assert_allclose(undo_letterbox(np.array([[100, 130, 300, 230]], np.float32), lb, (640, 640))[0],
                               [200, 100, 600, 300])
    stretch = Letterbox(0.5, 0, 0, 1280, 640)  # resized to 640 x 640: x / 0.5, y / 1.0
    np.testing.assert_allclose(undo_letterbox(np.array([[100, 100, 200, 300]], np.float32), stretch, (640, 640))[0],
                               [200, 100, 400, 300])


def test_decode_undoes_the_letterbox():
    lb = Letterbox(0.5, 80, 0, 960, 1280)
    d = Fixed([[130, 100, 230, 300]], [[0.9]]).decode({}, (640, 640), lb)
    np.testing.assert_allclose(d.boxes[0], [100, 200, 300, 600])


def test_dataset_letterbox_record_for_a_tall_image(tmp_path):
    # 20 wide x 40 high into 16 x 16: r = min(16/20, 16/40) = 0.4, content 8 x 16, pad_x = (16 - 8) // 2 = 4
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "d", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "m.onnx"))
    d = tmp_path / "img"
    d.mkdir()
    Image.new("RGB", (20, 40), (200, 10, 30)).save(d / "a.png")
    ds = load_dataset(d, ModelGraph.load(tmp_path / "m.onnx"), Preprocess())
    arr = next(iter(ds))["x"]
    assert ds.letterbox["a.png"] == Letterbox(0.4, 4, 0, 20, 40)
    np.testing.assert_allclose(arr[0, :, :, :4], 114 / 255, atol=1e-6)  # left padding
    np.testing.assert_allclose(arr[0, :, :, 12:], 114 / 255, atol=1e-6)  # right padding
    np.testing.assert_allclose(arr[0, 0, :, 4:12], 200 / 255, atol=1e-6)  # image, red channel


def test_boxes_wholly_in_the_padding_vanish():
    lb = Letterbox(0.5, 80, 0, 960, 1280)
    # x from 0 to 70 lies in the left padding (content starts at 80): both edges clip to 0
    d = Fixed([[0, 0, 70, 100], [130, 100, 230, 300]], [[0.9], [0.8]]).decode({}, (640, 640), lb)
    assert d.scores.tolist() == [np.float32(0.8)]
    np.testing.assert_allclose(d.boxes, [[100, 200, 300, 600]])
