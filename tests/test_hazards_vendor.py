"""Hazards under vendor calibration files and input-side profiles.

1. With `--calib hisi:FILE` / `--calib rknn:FILE` a hazard quotes the step (and range) the file sets for the
   tensor's quantization point, labelled "(from FILE)"; a point the file does not set is labelled as the
   built-in estimate.
2. On input-side profiles (hisi) a Concat's output is not an int tensor: `score_concat` fires only where the
   simulator puts the scores on one grid with the boxes (a file record spanning both, or a quantized reader
   of the whole concatenated tensor), never for a Concat whose inputs keep their own grids.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fixtures.data import make_images
from fixtures.vendor import make_hisi_calibration, make_rknn_cfg, yolov8_bundle
from qdebug.cli import main
from qdebug.graph.hazards import Grid, Grids, judge_hazards
from qdebug.graph.model import ModelGraph

MUL2, CAT4, CAT5 = "/model.22/Mul_2", "/model.22/Concat_4", "/model.22/Concat_5"
SIG = "/model.22/Sigmoid_output_0"


@pytest.fixture(scope="module")
def y8(tmp_path_factory) -> Path:
    """The YOLOv8 fixture, 2 images, and its ATC-style and rknn-style calibration files."""
    d = tmp_path_factory.mktemp("hv")
    model, _, ranges = yolov8_bundle()
    onnx.save(model, str(d / "m.onnx"))
    make_images(d / "images", n=2)
    (d / "hisi.txt").write_text(make_hisi_calibration(model, ranges))
    (d / "rknn.cfg").write_text(make_rknn_cfg(model, ranges))
    return d


def compare(d: Path, capsys, *extra) -> dict:
    out = d / "c.json"
    rc = main([str(a) for a in ["compare", d / "m.onnx", "--data", d / "images", "--json", out, "-q", *extra]])
    err = capsys.readouterr().err
    assert rc == 0, err
    return json.loads(out.read_text())


def hisi_record(text: str, layer: str, inputs: list[tuple[float, int]] | None) -> str:
    """`text` with `layer`'s input records replaced by (scale, offset) S8 records, or the layer dropped (None)."""
    m = re.search(r'layer \{\n  name: "' + re.escape(layer) + r'"\n.*?\n\}\n', text, re.S)
    assert m is not None, layer
    if inputs is None:
        return text[:m.start()] + text[m.end():]
    body = "".join(f"    input {{\n      data_type: S8\n      scale: {s!r}\n      offset: {o}\n    }}\n"
                   for s, o in inputs)
    rec = f'layer {{\n  name: "{layer}"\n  calc_data_type: F16\n  quant_param {{\n{body}  }}\n}}\n'
    return text[:m.start()] + rec + text[m.end():]


def stride(model: onnx.ModelProto) -> float:
    """The largest constant Mul_2 multiplies by (the detector's stride), read from the model itself."""
    g = ModelGraph(model)
    return float(max(np.abs(v).max() for v in (g.const_value(i) for i in g.node_by_name[MUL2].input)
                     if v is not None))


def _width(r: list[float]) -> float:
    return max(r[1], 0.0) - min(r[0], 0.0)


def by_kind(doc: dict) -> dict[tuple[str, str], dict]:
    return {(h["kind"], h["node"]): h for h in doc["hazards"]}


# ------------------------------------------------------------------ 1. the file's step, labelled with the file
def test_hisi_file_step_is_quoted_from_the_file(y8, capsys) -> None:
    # Mul_2's input record: scale 8 (step 1/8), offset -100 -> it represents [(-128+100)/8, (127+100)/8]
    f = y8 / "hisi_mul2.txt"
    f.write_text(hisi_record((y8 / "hisi.txt").read_text(), MUL2, [(8.0, -100)]))
    sa = by_kind(compare(y8, capsys, "--calib", f"hisi:{f}"))[("scale_amplify", MUL2)]
    k = stride(yolov8_bundle()[0])
    assert sa["numbers"]["input_step"] == pytest.approx(0.125, rel=1e-12)
    assert sa["numbers"]["input_range"] == pytest.approx([-3.5, 28.375], rel=1e-12)
    assert sa["numbers"]["output_error_bound"] == pytest.approx(0.125 * k / 2, rel=1e-12)
    assert sa["numbers"]["step_source"] == "file"
    assert f"(range [-3.5, 28.4], int8 step 0.125 (from {f}))" in sa["message"]


def test_point_without_a_record_is_the_labelled_builtin_estimate(y8, capsys) -> None:
    f = y8 / "hisi_no_mul2.txt"
    f.write_text(hisi_record((y8 / "hisi.txt").read_text(), MUL2, None))
    doc = compare(y8, capsys, "--calib", f"hisi:{f}")
    sa = by_kind(doc)[("scale_amplify", MUL2)]
    rng = {t["tensor"]: t["float_range"] for t in doc["tensors"]}
    step = _width(rng[f"{CAT4}_output_0"]) / 255  # the built-in estimate: the float range over 255 levels
    assert sa["numbers"]["input_step"] == pytest.approx(step, rel=1e-4)
    assert sa["numbers"]["step_source"] == "estimate"
    assert f"int8 step {step:.3g} (built-in estimate)" in sa["message"] and "(from " not in sa["message"]


def test_rknn_file_step_is_quoted_from_the_file(y8, capsys) -> None:
    # output-side: Mul_2 reads Concat_4's output on the grid of its cfg entry; give it scale 0.125, zero point -96
    text = (y8 / "rknn.cfg").read_text()
    entry = re.search(re.escape(f"    {CAT4}_output_0:") + r"\n(        .*\n)+", text)
    assert entry is not None
    new = re.sub(r"(scale:\n        -   )\S+", r"\g<1>0.125", entry.group(0))
    new = re.sub(r"(zero_point:\n        -   )\S+", r"\g<1>-96", new)
    f = y8 / "edited.cfg"
    f.write_text(text.replace(entry.group(0), new))
    sa = by_kind(compare(y8, capsys, "--calib", f"rknn:{f}"))[("scale_amplify", MUL2)]
    # x = (q - zp) * scale for q in [-128, 127]: [(-128 + 96) / 8, (127 + 96) / 8]
    assert sa["numbers"]["input_step"] == pytest.approx(0.125, rel=1e-12)
    assert sa["numbers"]["input_range"] == pytest.approx([-4.0, 27.875], rel=1e-12)
    assert sa["numbers"]["step_source"] == "file" and f"int8 step 0.125 (from {f})" in sa["message"]


# ------------------------------------------------------------------ 2. score_concat on the input-side profile
def _score_snr(doc: dict) -> float:
    return next(p for p in doc["outputs"][0]["parts"] if p["part"] == "score")["cumulative"]["snr_db"]


def test_hisi_concat_inputs_on_their_own_grids_are_no_hazard(y8, capsys) -> None:
    # every Concat_5 input has a record of its own range: the simulator never puts scores on the box grid
    doc = compare(y8, capsys, "--calib", f"hisi:{y8 / 'hisi.txt'}")
    assert ("score_concat", CAT5) not in by_kind(doc)
    generic = compare(y8, capsys)  # output-side: the concat output is one int8 tensor
    assert ("score_concat", CAT5) in by_kind(generic)
    assert _score_snr(doc) > _score_snr(generic) + 15  # the simulator agrees: scores survive only on hisi


def test_hisi_concat_record_shared_with_boxes_is_a_hazard(y8, capsys) -> None:
    # ATC writes one (scale, offset) for every input of a Concat (the union range): scores on the box grid
    text = (y8 / "hisi.txt").read_text()
    rec = re.search(r'name: "' + re.escape(CAT5) + r'"\n.*?scale: (\S+)\n\s*offset: (-?\d+)', text, re.S)
    assert rec is not None
    box = (float(rec.group(1)), int(rec.group(2)))  # the box input's record, written for the union range
    f = y8 / "hisi_shared.txt"
    f.write_text(hisi_record(text, CAT5, [box, box]))
    doc = compare(y8, capsys, "--calib", f"hisi:{f}")
    sc = by_kind(doc)[("score_concat", CAT5)]
    score_w = _width({t["tensor"]: t["float_range"] for t in doc["tensors"]}[SIG])
    step = 1.0 / box[0]
    assert sc["numbers"]["int8_step"] == pytest.approx(step, rel=1e-12)
    assert sc["numbers"]["levels_left"] == pytest.approx(round(score_w / step, 2), abs=1e-9)
    assert sc["numbers"]["output_range"] == pytest.approx([(-128 - box[1]) * step, (127 - box[1]) * step])
    assert sc["numbers"]["step_source"] == "file" and f"(from {f})" in sc["message"]
    assert _score_snr(doc) < 10  # and the simulator crushes the scores there


def _concat_model(reader: str | None) -> ModelGraph:
    """b = Mul(x, 100); s = Sigmoid(x); c = Concat(b, s); then Reshape(c) = r read by `reader` (or r the output)."""
    n = helper.make_node
    nodes = [n("Mul", ["x", "k"], ["b"], name="mul"), n("Sigmoid", ["x"], ["s"], name="sig"),
             n("Concat", ["b", "s"], ["c"], name="cat", axis=1), n("Reshape", ["c", "shape"], ["r"], name="rs")]
    out = "r"
    if reader is not None:
        nodes.append(n(reader, ["r"], ["y"], name="reader"))
        out = "y"
    g = helper.make_graph(nodes, "cat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, [4])],
                          [helper.make_tensor("k", TensorProto.FLOAT, [], [100.0]),
                           helper.make_tensor("shape", TensorProto.INT64, [1], [4])])
    return ModelGraph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))


RANGES = {"x": (-2.0, 2.0), "b": (-200.0, 200.0), "s": (0.1, 0.9), "c": (-200.0, 200.0), "r": (-200.0, 200.0),
          "y": (0.0, 200.0)}


def _own(lo: float, hi: float) -> Grid:
    return Grid(lo, hi, (hi - lo) / 255, 8)


def test_input_side_reader_of_the_whole_concat_is_where_scores_are_crushed() -> None:
    g = _concat_model("Relu")
    own = {("cat", "b"): Grid(-200, 200, 400 / 255, 8, "file"), ("cat", "s"): Grid(0, 0.9, 0.9 / 255, 8, "file")}
    grids = Grids(read={**own, ("reader", "r"): _own(-200, 200)}, input_side=True, file="f.txt")
    live, notes = judge_hazards(g, RANGES, {}, grids=grids)
    sc = [h for h in live if h.kind == "score_concat"]
    # the file gives each Concat input a record of its own range; the Relu quantizes [-200, 200] as one tensor:
    # step 400 / 255, the scores [0, 0.9] keep 0.9 * 255 / 400 levels
    assert [(h.node, h.tensor) for h in sc] == [("reader", "s")]
    assert sc[0].numbers["int8_step"] == pytest.approx(400 / 255, rel=1e-12)
    assert sc[0].numbers["levels_left"] == pytest.approx(round(0.9 * 255 / 400, 2))
    assert "read by reader as one int8 tensor" in sc[0].message and "keep reader at int16/fp16" in sc[0].fix
    # the reader run in float: nothing quantizes the concatenated tensor
    live, notes = judge_hazards(g, RANGES, {"reader": None}, grids=grids)
    assert not [h for h in live if h.kind == "score_concat"]
    assert "hazard handled: score_concat at reader: the run keeps it in float" in notes


def test_input_side_concat_without_a_record_is_judged_on_the_shared_grid() -> None:
    """ATC writes one record for every input of a Concat: with no file record of its own, the score input is
    judged on the whole concatenated range; a record of its own range (and no quantized reader) is no hazard."""
    g = _concat_model(None)
    grids = Grids(read={("cat", "b"): _own(-200, 200), ("cat", "s"): _own(0, 0.9)}, input_side=True)
    sc = [h for h in judge_hazards(g, RANGES, {}, grids=grids)[0] if h.kind == "score_concat"]
    assert [(h.node, h.tensor) for h in sc] == [("cat", "s")]
    assert sc[0].numbers["levels_left"] == pytest.approx(round(0.9 * 255 / 400, 2))
    filed = Grids(read={("cat", "b"): Grid(-200, 200, 400 / 255, 8, "file"),
                        ("cat", "s"): Grid(0, 0.9, 0.9 / 255, 8, "file")}, input_side=True, file="f.txt")
    assert not [h for h in judge_hazards(g, RANGES, {}, grids=filed)[0] if h.kind == "score_concat"]
    # output-side points: the Concat's output is one grid -> the hazard at the Concat (0.9 / (400 / 255) levels)
    out_side = Grids(stored={"c": _own(-200, 200)})
    sc = [h for h in judge_hazards(g, RANGES, {}, grids=out_side)[0] if h.kind == "score_concat"]
    assert [(h.node, h.tensor) for h in sc] == [("cat", "s")]
    assert sc[0].numbers["levels_left"] == pytest.approx(round(0.9 * 255 / 400, 2))
