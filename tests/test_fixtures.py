"""Tests for the deterministic fixture generators in ``fixtures/``."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

# `fixtures` lives at the repo root; make it importable under bare `pytest` too.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from fixtures.data import make_images, make_npy_inputs  # noqa: E402
from fixtures.generate import generate, main  # noqa: E402
from fixtures.models import make_benign, make_yolov5, make_yolov8, make_yolov8_bench  # noqa: E402

SMALL_BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "yolov8": make_yolov8,
    "yolov5": make_yolov5,
    "benign": make_benign,
}


@functools.cache
def _model(name: str) -> onnx.ModelProto:
    builders = {**SMALL_BUILDERS, "yolov8_bench": make_yolov8_bench}
    return builders[name]()


def _run(model: onnx.ModelProto, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(seed).random(tuple(inp.shape), dtype=np.float32)
    return x, sess.run(None, {inp.name: x})[0]


def _nodes(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in model.graph.node}


@pytest.mark.parametrize("name", sorted(SMALL_BUILDERS))
def test_model_checks_and_runs(name: str) -> None:
    model = _model(name)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    _, out = _run(model)
    assert np.isfinite(out).all()
    assert len(model.SerializeToString()) < 1_000_000


@pytest.mark.parametrize("name", sorted(SMALL_BUILDERS))
def test_deterministic_serialization(name: str) -> None:
    a = SMALL_BUILDERS[name]().SerializeToString(deterministic=True)
    b = SMALL_BUILDERS[name]().SerializeToString(deterministic=True)
    assert a == b


def test_seed_changes_weights() -> None:
    a = make_yolov8(seed=0).SerializeToString()
    b = make_yolov8(seed=1).SerializeToString()
    assert a != b


@pytest.mark.parametrize("name", sorted(SMALL_BUILDERS))
def test_exporter_style_tensor_names(name: str) -> None:
    model = _model(name)
    graph_outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        assert node.name
        for i, out in enumerate(node.output):
            if out not in graph_outputs:
                assert out == f"{node.name}_output_{i}"


def test_yolov8_output_shape_and_io() -> None:
    model = _model("yolov8")
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["output0"]
    _, out = _run(model)
    a = (128 // 8) ** 2 + (128 // 16) ** 2 + (128 // 32) ** 2
    assert out.shape == (1, 4 + 4, a)


@pytest.mark.parametrize(("size", "nc", "width", "depth"), [(64, 2, 8, 2), (160, 3, 16, 1)])
def test_yolov8_parameters(size: int, nc: int, width: int, depth: int) -> None:
    model = make_yolov8(input_size=size, nc=nc, width=width, depth=depth)
    onnx.checker.check_model(model, full_check=True)
    _, out = _run(model)
    a = sum((size // s) ** 2 for s in (8, 16, 32))
    assert out.shape == (1, 4 + nc, a)
    assert sum(n.name.endswith("/Add") and "/m." in n.name for n in model.graph.node) == depth


def test_yolov8_node_count_and_ops() -> None:
    model = _model("yolov8")
    assert 60 <= len(model.graph.node) <= 120
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "Sigmoid", "Mul", "Split", "Concat", "Add", "MaxPool", "Softmax", "Transpose"} <= ops
    nodes = _nodes(model)
    assert "/model.0/conv/Conv" in nodes
    assert nodes["/model.0/act/Sigmoid"].op_type == "Sigmoid"
    assert nodes["/model.0/act/Mul"].op_type == "Mul"
    assert nodes["/model.0/conv/Conv"].output[0] == "/model.0/conv/Conv_output_0"
    dfl = nodes["/model.22/dfl/conv/Conv"]
    assert len(dfl.input) == 2  # no bias
    init = {t.name: t for t in model.graph.initializer}
    w = onnx.numpy_helper.to_array(init[dfl.input[1]])
    np.testing.assert_array_equal(w.ravel(), np.arange(16, dtype=np.float32))
    assert nodes["/model.22/dfl/Softmax"].attribute[0].i == 1


def test_yolov8_named_output_nodes() -> None:
    model = _model("yolov8")
    nodes = _nodes(model)
    mul = nodes["/model.22/Mul_2"]
    assert mul.op_type == "Mul"
    cat = nodes["/model.22/Concat_5"]
    assert cat.op_type == "Concat"
    assert list(cat.output) == ["output0"]
    assert mul.output[0] in cat.input
    assert nodes["/model.22/Sigmoid"].output[0] in cat.input
    # The stride Mul multiplies by the per-anchor stride constant (8/16/32).
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    strides = next(init[i] for i in mul.input if i in init)
    assert strides.shape == (1, 336)
    assert set(np.unique(strides).tolist()) == {8.0, 16.0, 32.0}


def test_yolov8_range_mixing() -> None:
    model = _model("yolov8")
    _, out = _run(model, seed=3)
    box, scores = out[0, :4], out[0, 4:]
    assert box.max() - box.min() > 0.5 * 128
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    # Scores spread over (0, 1) rather than collapsing to one value.
    assert scores.min() < 0.1 and scores.max() > 0.6
    # Box centres stay roughly inside the image.
    cxy = out[0, :2]
    assert np.median(cxy) > 0.1 * 128 and np.median(cxy) < 0.9 * 128


def test_yolov8_dfl_softmax_not_degenerate() -> None:
    model = _model("yolov8")
    sm_name = "/model.22/dfl/Softmax_output_0"
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(onnx.helper.make_empty_tensor_value_info(sm_name))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)
    sm = sess.run([sm_name], {"images": x})[0]
    peak = np.median(sm.max(axis=1))
    assert 1.5 / 16 < peak < 0.95


def test_per_tensor_int8_destroys_yolov8_scores_but_not_benign(tmp_path: Path) -> None:
    quant = pytest.importorskip("onnxruntime.quantization")

    class Reader(quant.CalibrationDataReader):
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            rng = np.random.default_rng(5)
            self._it = iter([{name: rng.random(shape, dtype=np.float32)} for _ in range(3)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    def quantize(name: str, inp: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        fp, qp = tmp_path / f"{name}.onnx", tmp_path / f"{name}_q.onnx"
        onnx.save(_model(name), fp)
        quant.quantize_static(
            str(fp),
            str(qp),
            Reader(inp, shape),
            quant_format=quant.QuantFormat.QDQ,
            per_channel=False,
            activation_type=quant.QuantType.QUInt8,
            weight_type=quant.QuantType.QInt8,
        )
        x = np.random.default_rng(9).random(shape, dtype=np.float32)
        ref = ort.InferenceSession(str(fp), providers=["CPUExecutionProvider"]).run(None, {inp: x})[0]
        q = ort.InferenceSession(str(qp), providers=["CPUExecutionProvider"]).run(None, {inp: x})[0]
        return ref, q

    ref, q = quantize("yolov8", "images", (1, 3, 128, 128))
    assert np.abs(ref[0, :4] - q[0, :4]).max() < 0.2 * 128  # boxes survive
    assert np.abs(ref[0, 4:] - q[0, 4:]).max() > 0.4  # scores destroyed (step >> 1)

    ref, q = quantize("benign", "input", (1, 3, 16, 16))
    assert np.abs(ref - q).max() < 0.1 * np.abs(ref).max()
    assert ref.argmax() == q.argmax()


def test_yolov5_output() -> None:
    model = _model("yolov5")
    assert [o.name for o in model.graph.output] == ["output0"]
    _, out = _run(model)
    n = 3 * sum((128 // s) ** 2 for s in (8, 16, 32))
    assert out.shape == (1, n, 5 + 4)
    assert out[0, :, 4:].min() >= 0.0 and out[0, :, 4:].max() <= 1.0
    assert out[0, :, :2].max() > 0.5 * 128
    assert out[0, :, 2:4].min() >= 0.0
    nodes = _nodes(model)
    assert nodes["/model.24/Pow"].op_type == "Pow"
    assert nodes["/model.24/m.0/Conv"].op_type == "Conv"
    assert nodes["/model.24/Concat_3"].output[0] == "output0"


def test_yolov5_custom_anchors() -> None:
    anchors = [[10, 10, 20, 20], [40, 40, 60, 60], [80, 80, 120, 120]]
    model = make_yolov5(input_size=64, nc=2, anchors=anchors)
    _, out = _run(model)
    assert out.shape == (1, 2 * (64 + 16 + 4), 7)
    assert out[0, :, 2:4].max() <= 4 * 120 + 1e-3


def test_benign_output() -> None:
    model = _model("benign")
    assert [i.name for i in model.graph.input] == ["input"]
    _, out = _run(model)
    assert out.shape == (1, 10)
    ops = {n.op_type for n in model.graph.node}
    assert ops == {"Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"}


def test_bench_model() -> None:
    model = _model("yolov8_bench")
    onnx.checker.check_model(model, full_check=True)
    assert 180 <= len(model.graph.node) <= 300
    ops = {n.op_type for n in model.graph.node}
    assert {"Resize", "MaxPool", "Split", "Concat"} <= ops
    nodes = _nodes(model)
    assert nodes["/model.22/Mul_2"].op_type == "Mul"
    assert nodes["/model.22/Concat_5"].output[0] == "output0"
    _, out = _run(model)
    assert out.shape == (1, 84, 8400)
    assert out[0, 4:].min() >= 0.0 and out[0, 4:].max() <= 1.0
    assert out[0, :4].max() - out[0, :4].min() > 320


def test_make_images(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "a", n=8, size=(160, 120), seed=0)
    assert len(paths) == 8
    assert [p.suffix for p in paths].count(".jpg") == 2
    for p in paths:
        with Image.open(p) as im:
            assert im.size == (160, 120)
            assert im.mode == "RGB"
            arr = np.asarray(im)
        assert arr.std() > 10  # not flat
    again = make_images(tmp_path / "b", n=8, size=(160, 120), seed=0)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    other = make_images(tmp_path / "c", n=1, seed=1)
    assert other[0].read_bytes() != paths[0].read_bytes()


def test_make_npy_inputs(tmp_path: Path) -> None:
    paths = make_npy_inputs(tmp_path, (1, 3, 32, 32), n=4, seed=0)
    npys, npz = paths[:-1], paths[-1]
    assert len(npys) == 4 and npz.suffix == ".npz"
    arrays = [np.load(p) for p in npys]
    for a in arrays:
        assert a.dtype == np.float32 and a.shape == (1, 3, 32, 32)
        assert a.min() >= 0.0 and a.max() <= 1.0
    with np.load(npz) as z:
        assert len(z.files) == 4
        for key, a in zip(sorted(z.files), arrays, strict=True):
            np.testing.assert_array_equal(z[key], a)
    again = make_npy_inputs(tmp_path / "again", (1, 3, 32, 32), n=4, seed=0)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]


def test_generate_cli_is_deterministic(tmp_path: Path) -> None:
    assert main([str(tmp_path / "a")]) == 0
    generate(tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    names = {str(f) for f in files}
    assert {"yolov8.onnx", "yolov5.onnx", "benign.onnx"} <= names
    assert "yolov8_bench.onnx" not in names
    assert sum(f.parts[0] == "images" for f in files) == 8
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
        if f.suffix == ".onnx":
            assert (tmp_path / "a" / f).stat().st_size < 1_000_000
    # Idempotent: running again in place leaves the files unchanged.
    before = {f: (tmp_path / "a" / f).read_bytes() for f in files}
    main([str(tmp_path / "a")])
    assert before == {f: (tmp_path / "a" / f).read_bytes() for f in files}
    loaded = onnx.load(tmp_path / "a" / "yolov8.onnx")
    assert loaded.SerializeToString() == make_yolov8().SerializeToString()
