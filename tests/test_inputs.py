"""Input loading and preprocessing against hand-computed values."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from qdebug.errors import DataError
from qdebug.graph.model import ModelGraph
from qdebug.inputs.dataset import Preprocess, load_dataset


def _graph(shape, dtype=TensorProto.FLOAT):
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="id")], "t",
                          [helper.make_tensor_value_info("x", dtype, shape)],
                          [helper.make_tensor_value_info("y", dtype, shape)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return ModelGraph(m, "t.onnx")


def _solid(path, size, color):
    Image.new("RGB", size, color).save(path)


def test_letterbox_hand_computed(tmp_path):
    d = tmp_path / "img"
    d.mkdir()
    _solid(d / "a.png", (160, 120), (200, 100, 50))  # W=160, H=120 -> scale 0.2 into 32x32: 32x24, pad 4 rows
    ds = load_dataset(d, _graph([1, 3, 32, 32]))
    x = next(iter(ds))["x"]
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    lb = ds.letterbox["a.png"]
    assert lb.scale == pytest.approx(0.2) and lb.pad_y == 4 and lb.pad_x == 0
    np.testing.assert_allclose(x[0, :, 0, 0], [114 / 255] * 3, atol=1e-6)  # padding row
    np.testing.assert_allclose(x[0, :, 16, 16], [200 / 255, 100 / 255, 50 / 255], atol=1e-6)


def test_bgr_nhwc_mean_std_uint8(tmp_path):
    d = tmp_path / "img"
    d.mkdir()
    _solid(d / "a.png", (8, 8), (10, 20, 30))
    x = next(iter(load_dataset(d, _graph([1, 8, 8, 3]), Preprocess(color="bgr", mean=(1, 2, 3), std=(2, 2, 2),
                                                                    resize="resize"))))["x"]
    np.testing.assert_allclose(x[0, 0, 0], [(30 - 1) / 2, (20 - 2) / 2, (10 - 3) / 2])
    u = next(iter(load_dataset(d, _graph([1, 3, 8, 8], TensorProto.UINT8))))["x"]
    assert u.dtype == np.uint8 and list(u[0, :, 0, 0]) == [10, 20, 30]


def test_npy_npz_and_samples_cap(tmp_path):
    d = tmp_path / "arr"
    d.mkdir()
    for i in range(3):
        np.save(d / f"{i}.npy", np.full((3, 4, 4), i, dtype=np.float32))  # batch dim added on load
    g = _graph([1, 3, 4, 4])
    ds = load_dataset(d, g, samples=2)
    assert len(ds) == 2 and [float(s["x"][0, 0, 0, 0]) for s in ds] == [0.0, 1.0]
    z = tmp_path / "z"
    z.mkdir()
    np.savez(z / "all.npz", x=np.arange(5 * 48, dtype=np.float32).reshape(5, 3, 4, 4))
    ds = load_dataset(z, g)
    assert len(ds) == 5 and float(list(ds)[4]["x"][0, 0, 0, 0]) == 4 * 48


def test_errors(tmp_path):
    g = _graph([1, 3, 4, 4])
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "missing", g)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        load_dataset(tmp_path / "e", g)
    with pytest.raises(Exception, match="dynamic"):
        load_dataset(tmp_path / "e", _graph(["N", 3, "H", "W"]))


def test_second_pass_reuses_decoded_samples_within_budget(tmp_path, monkeypatch):
    """Calibration and comparison iterate the data set twice; decoded samples are kept up to the byte
    budget (and shared read-only), beyond it they are decoded again, so memory stays bounded."""
    for k in range(4):
        _solid(tmp_path / f"im{k}.png", (16, 16), (10 * k, 20, 30))
    ds = load_dataset(str(tmp_path), _graph([1, 3, 16, 16]), Preprocess())
    per = 3 * 16 * 16 * 4
    ds.cache_bytes = 2 * per  # room for two samples
    import qdebug.inputs.dataset as mod

    calls = []
    real = mod._load_image
    monkeypatch.setattr(mod, "_load_image", lambda *a, **k: calls.append(a[0].name) or real(*a, **k))
    first = [s["x"].copy() for s in ds]
    second = list(ds)
    assert calls == ["im0.png", "im1.png", "im2.png", "im3.png", "im2.png", "im3.png"]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b["x"])
    assert not second[0]["x"].flags.writeable and second[3]["x"].flags.writeable
