"""Gaps found by running real models from PyPI wheels (benchmarks/bench_zoo.py), each on a tiny stand-in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from qdebug.cli import main

RNG = np.random.default_rng(3)


def _save(tmp: Path, graph: onnx.GraphProto, opset: int = 17) -> Path:
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    p = tmp / "m.onnx"
    onnx.save(m, p)
    return p


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sequence_model_takes_its_shape_from_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A VAD-like model: audio [batch, samples] with both dims dynamic, a state, and a 0-d int64 rate."""
    w = nh.from_array(RNG.standard_normal((16, 4)).astype(np.float32), "w")
    g = h.make_graph(
        [h.make_node("MatMul", ["audio_r", "w"], ["f"]), h.make_node("Reshape", ["audio", "shp"], ["audio_r"]),
         h.make_node("Cast", ["sr"], ["srf"], to=T.FLOAT), h.make_node("Mul", ["f", "srf"], ["g"]),
         h.make_node("Add", ["g", "state"], ["y"])],
        "vad", [h.make_tensor_value_info("audio", T.FLOAT, ["batch", "n"]),
                h.make_tensor_value_info("state", T.FLOAT, [1, 4]), h.make_tensor_value_info("sr", T.INT64, [])],
        [h.make_tensor_value_info("y", T.FLOAT, ["b", 4])], [w, nh.from_array(np.array([-1, 16], np.int64), "shp")])
    g.node.insert(0, g.node.pop(1))  # Reshape before MatMul
    model = _save(tmp_path, g)
    data = tmp_path / "d"
    data.mkdir()
    for i in range(3):
        np.savez(data / f"{i}.npz", audio=RNG.standard_normal((1, 32)).astype(np.float32),
                 state=np.zeros((1, 4), np.float32), sr=np.array(2, np.int64))
    code, _, err = _run(capsys, "compare", str(model), "--data", str(data), "-q", "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    doc = json.loads((tmp_path / "r.json").read_text())
    rows = {r["tensor"]: r for r in doc["tensors"]}
    assert rows["audio_r"]["shape"] == [2, 16]  # 32 samples of the data, reshaped: the data decided the size


def test_dynamic_batch_alone_needs_no_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = nh.from_array(RNG.standard_normal((2, 3, 3, 3)).astype(np.float32), "w")
    g = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "c",
                     [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 8, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 2, 8, 8])], [w])
    model = _save(tmp_path, g)
    data = tmp_path / "d"
    data.mkdir()
    for i in range(2):
        np.save(data / f"{i}.npy", RNG.standard_normal((1, 3, 8, 8)).astype(np.float32))
    code, _, err = _run(capsys, "compare", str(model), "--data", str(data), "-q")
    assert code == 0, err


def test_a_model_that_is_already_quantized_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = h.make_graph([h.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
                      h.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "dq",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, 4])], [h.make_tensor_value_info("y", T.FLOAT, [1, 4])])
    model = _save(tmp_path, g, opset=13)
    data = tmp_path / "d"
    data.mkdir()
    np.save(data / "0.npy", RNG.standard_normal((1, 4)).astype(np.float32))
    code, _, err = _run(capsys, "compare", str(model), "--data", str(data), "-q")
    assert code == 0
    assert "already holds quantized ops (DynamicQuantizeLinear x1, DequantizeLinear x1)" in " ".join(err.split())


def test_jump_of_an_if_counts_what_its_branches_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An If left in float passes its branch input on unchanged: it loses nothing (jump near 0), although its
    only listed input is an exact boolean."""
    w = nh.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    then_g = h.make_graph([h.make_node("Identity", ["c"], ["t_out"])], "then", [],
                          [h.make_tensor_value_info("t_out", T.FLOAT, [1, 4, 8, 8])])
    else_g = h.make_graph([h.make_node("Neg", ["c"], ["e_out"])], "else", [],
                          [h.make_tensor_value_info("e_out", T.FLOAT, [1, 4, 8, 8])])
    g = h.make_graph([h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                      h.make_node("If", ["flag"], ["y"], then_branch=then_g, else_branch=else_g)], "if",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8]),
                      h.make_tensor_value_info("flag", T.BOOL, [])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 8, 8])], [w])
    model = _save(tmp_path, g)
    data = tmp_path / "d"
    data.mkdir()
    for i in range(2):
        np.savez(data / f"{i}.npz", x=RNG.standard_normal((1, 3, 8, 8)).astype(np.float32), flag=np.array(True))
    code, _, err = _run(capsys, "compare", str(model), "--data", str(data), "-q", "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    rows = {r["tensor"]: r for r in json.loads((tmp_path / "r.json").read_text())["tensors"]}
    assert rows["y"]["op_type"] == "If"
    assert abs(rows["y"]["jump_db"]) < 0.5  # y equals c: SNR(c) - SNR(y) is 0, not 60 - SNR(y)
    assert rows["y"]["cumulative"]["snr_db"] == pytest.approx(rows["c"]["cumulative"]["snr_db"], abs=0.01)


def test_quantized_vit_with_a_constant_fed_quantize_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """onnxruntime's quantize_static quantizes the ViT's Expand of the class token: a QuantizeLinear computed from
    constants only, whose int8 output qdebug evaluates once; it must keep its int8 type."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from fixtures.families import make_vit_block

    model = make_vit_block()
    fp, qp = tmp_path / "vit.onnx", tmp_path / "vit_q.onnx"
    onnx.save(model, fp)
    name = model.graph.input[0].name
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    data = tmp_path / "d"
    data.mkdir()
    arrays = [RNG.random(shape).astype(np.float32) for _ in range(3)]
    for i, a in enumerate(arrays):
        np.save(data / f"{i}.npy", a)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: a} for a in arrays])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    quantize_static(str(fp), str(qp), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    assert any(n.op_type == "Expand" for n in model.graph.node)
    code, out, err = _run(capsys, "compare", str(fp), "--quantized", str(qp), "--data", str(data), "--top", "3")
    assert code == 0, err
    assert "quantized run imported from" in " ".join(out.split()) and "calibrator" not in out
