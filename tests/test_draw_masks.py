"""`--draw` pictures of segment and pose heads: the float/quantized instance masks (semi-transparent green/red)
and keypoints (green/red, the largest errors ringed) are drawn where the instances are, through the upscale and
the letterbox. Pixel colours are checked at positions computed here from the instance geometry."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qdebug.cli import main
from qdebug.inputs.dataset import Letterbox
from qdebug.tasks.base import Detections
from qdebug.tasks.draw import draw_detections
from qdebug.tasks.draw_instances import MASK_ALPHA, Placement
from qdebug.tasks.masks import CropMask

GREY = 100  # background of the test images
GRID = (16, 16)  # mask grid (prototype resolution) of a 64x64 network input: 4 input pixels per cell


def _grey(w: int, h: int) -> Image.Image:
    return Image.new("RGB", (w, h), (GREY, GREY, GREY))


def _tint(colour: tuple[int, int, int]) -> np.ndarray:
    """A grey pixel under one mask layer: grey * (1 - alpha) + colour * alpha."""
    return np.rint(GREY * (1 - MASK_ALPHA) + np.asarray(colour) * MASK_ALPHA)


def _cells(y0: int, y1: int, x0: int, x1: int) -> CropMask:
    m = np.zeros(GRID, bool)
    m[y0:y1, x0:x1] = True
    return CropMask.from_full(m)


def test_masks_land_on_the_image_through_the_letterbox(tmp_path):
    """A 240x120 image letterboxed into 64x64: scale 64/240, padded 16 px on top and bottom (network y 16..48).
    The picture is upscaled to 480 px on its short side (x4). Float mask: grid rows 5-7, cols 2-5 (network
    x 8..24, y 20..32); quantized mask: grid rows 5-7, cols 4-7 (x 16..32): they overlap on cols 4-5."""
    lb = Letterbox(scale=64 / 240, pad_x=0.0, pad_y=16.0, orig_w=240, orig_h=120)
    box = [[8 * 240 / 64, (20 - 16) * 240 / 64, 32 * 240 / 64, (32 - 16) * 240 / 64]]  # image pixels
    fd = Detections.make(box, [0.9], [0], masks=[_cells(5, 8, 2, 6)])
    qd = Detections.make(box, [0.8], [0], masks=[_cells(5, 8, 4, 8)])
    png = draw_detections(_grey(240, 120), fd, qd, tmp_path / "seg.png", placement=Placement((64, 64), GRID, lb))
    pic = np.asarray(Image.open(png).convert("RGB")).astype(int)
    up = 4  # 480 / 120

    def at(nx: float, ny: float) -> np.ndarray:
        """Picture pixel showing network-input point (nx, ny): undo the letterbox, then the upscale."""
        return pic[int((ny - lb.pad_y) / lb.scale * up), int((nx - lb.pad_x) / lb.scale * up)]

    green, red = _tint((0, 200, 0)), _tint((230, 30, 30))
    both = np.rint(green * (1 - MASK_ALPHA) + np.asarray((230, 30, 30)) * MASK_ALPHA)
    # cell centres well inside each region (grid cell c spans network pixels 4c..4c+4)
    assert np.abs(at(4 * 2.5, 4 * 6.5) - green).max() <= 1  # float only
    assert np.abs(at(4 * 6.5, 4 * 6.5) - red).max() <= 1  # quantized only
    assert np.abs(at(4 * 4.5, 4 * 6.5) - both).max() <= 1  # both: the tints mix
    assert np.abs(at(4 * 10.5, 4 * 6.5) - GREY).max() == 0  # no mask
    assert np.abs(at(4 * 4.5, 4 * 9.5) - GREY).max() == 0  # below the masks (grid row 9)


def _kpts(points: list[tuple[float, float]]) -> np.ndarray:
    return np.array([[x, y, 1.0] for x, y in points], np.float32)[None]


def test_keypoints_drawn_and_the_largest_error_ringed(tmp_path):
    """One matched pose instance with 3 keypoints on a 480x480 image (no upscale): two quantized keypoints on
    their float ones, the third 30 px off. Float points are green, quantized red, the 30 px error ringed orange."""
    box = [[100, 100, 300, 300]]
    f = [(150.0, 150.0), (250.0, 150.0), (200.0, 250.0)]
    q = [(150.0, 150.0), (250.0, 150.0), (230.0, 250.0)]
    fd = Detections.make(box, [0.9], [0], keypoints=_kpts(f))
    qd = Detections.make(box, [0.9], [0], keypoints=_kpts(q))
    png = draw_detections(_grey(480, 480), fd, qd, tmp_path / "pose.png")
    pic = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert tuple(pic[250, 200]) == (0, 200, 0)  # the float keypoint whose quantized partner moved
    assert tuple(pic[250, 230]) == (230, 30, 30)  # the quantized keypoint, 30 px right
    assert tuple(pic[150, 150]) == (230, 30, 30)  # an exact keypoint: the red point covers the green one
    ring = [tuple(pic[250 + dy, 230 + dx]) for dy, dx in ((0, 6), (0, -6), (6, 0), (-6, 0))]
    assert ring.count((245, 160, 0)) >= 3  # ringed: the largest error
    assert all(tuple(pic[150 + dy, 250 + dx]) != (245, 160, 0) for dy, dx in ((0, 6), (0, -6), (6, 0), (-6, 0)))


def test_plain_boxes_unchanged_without_masks_or_keypoints(tmp_path):
    fd = Detections.make([[10, 10, 60, 60]], [0.9], [0])
    png = draw_detections(_grey(480, 480), fd, fd, tmp_path / "box.png", placement=Placement((64, 64), GRID))
    pic = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert tuple(pic[35, 35]) == (GREY, GREY, GREY)  # inside the box: no tint


@pytest.mark.parametrize("kind", ["seg", "pose"])
def test_cli_draw_writes_pictures_with_the_instance_layers(tmp_path, kind):
    import onnx

    from fixtures.data import make_images
    from fixtures.heads import make_yolov8_pose, make_yolov8_seg

    model = tmp_path / f"{kind}.onnx"
    onnx.save(make_yolov8_seg() if kind == "seg" else make_yolov8_pose(), str(model))
    make_images(tmp_path / "images", n=3)
    out = tmp_path / "pics"
    assert main(["compare", str(model), "--data", str(tmp_path / "images"), "--task", "yolov8", "--conf", "0.05",
                 "--draw", str(out), "-q"]) == 0
    pngs = sorted(out.glob("detections_*.png"))
    assert pngs
    a, green, red = MASK_ALPHA, np.array((0, 200, 0)), np.array((230, 30, 30))
    counts = np.zeros(2, int)
    for png in pngs:  # the fixture's int8 run keeps few detections: count the layers over all pictures
        name = png.stem.removeprefix("detections_")
        with Image.open(next((tmp_path / "images").glob(name + ".*"))) as src:
            orig = src.convert("RGB")
        scale = max(1.0, 480 / min(orig.size))  # draw_detections' upscale
        orig = orig.resize((round(orig.width * scale), round(orig.height * scale)), Image.BILINEAR)
        pic = np.asarray(Image.open(png).convert("RGB")).astype(float)
        base = np.asarray(orig).astype(float)
        if kind == "seg":  # float layer: image * (1 - a) + green * a; the quantized layer red over that or the image
            on_float = base * (1 - a) + green * a
            float_only = (np.abs(pic - on_float) <= 1.5).all(-1)
            both = (np.abs(pic - (on_float * (1 - a) + red * a)) <= 1.5).all(-1)
            quant_only = (np.abs(pic - (base * (1 - a) + red * a)) <= 1.5).all(-1)
            counts += [(float_only | both).sum(), (quant_only | both).sum()]
        else:  # keypoint dots of both runs
            counts += [(pic == green).all(-1).sum(), (pic == red).all(-1).sum()]
    assert (counts > 20).all(), counts


def test_report_pictures_from_the_json_carry_the_same_layers(tmp_path):
    """`draw_examples` (what `qdebug report` draws from a saved detection section) gives the picture `--draw` gives."""
    from qdebug.tasks.draw import draw_examples

    rng = np.random.default_rng(3)
    bits = rng.random((5, 7)) > 0.5
    m = CropMask(2, 3, bits)
    back = CropMask.from_json(m.to_json())
    assert (back.y0, back.x0) == (2, 3) and np.array_equal(back.bits, bits)
    assert sum(m.to_json()["runs"]) == 35
    lb = Letterbox(scale=64 / 240, pad_x=0.0, pad_y=16.0, orig_w=240, orig_h=120)
    box = [[30.0, 15.0, 90.0, 60.0]]
    kp = _kpts([(40.0, 20.0), (80.0, 50.0)])
    fd = Detections.make(box, [0.9], [0], masks=[_cells(5, 8, 2, 6)], keypoints=kp)
    qd = Detections.make(box, [0.8], [0], masks=[_cells(5, 8, 4, 8)], keypoints=kp + np.float32([[[5, 0, 0]]]))
    img = tmp_path / "im.png"
    _grey(240, 120).save(img)
    direct = draw_detections(img, fd, qd, tmp_path / "direct.png", placement=Placement((64, 64), GRID, lb))
    section = {"decoder": {"masks": {"resolution": list(GRID)}}, "thresholds": {"match_iou": 0.5},
               "examples": [{"image": "im.png", "path": str(img), "input_hw": [64, 64],
                             "letterbox": {"scale": lb.scale, "pad_x": 0.0, "pad_y": 16.0, "orig_w": 240,
                                           "orig_h": 120},
                             "float": fd.to_json(), "quantized": qd.to_json(), "promoted": None}]}
    (drawn,) = draw_examples(section, tmp_path / "rep", names={})
    a, b = (np.asarray(Image.open(p).convert("RGB")) for p in (direct, drawn))
    assert np.array_equal(a, b) and (a != GREY).any(-1).sum() > 1000
