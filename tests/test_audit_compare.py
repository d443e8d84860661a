"""The compare-side audit: hazards judged at the run's precision, graph-input rows, distinct short names, a
forced CTC layout, the entropy calibrator on offset tensors, help texts and the terminal layout.

Numbers are checked against hand-derived values or computations made here with numpy/onnx directly.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures.data import make_images
from fixtures.families import make_crnn
from fixtures.models import make_yolov8
from fixtures.vendor import make_hisi_calibration, yolov8_bundle
from qdebug.cli import build_parser, main
from qdebug.cli.terminal import distinct_elide, elide
from qdebug.formats.hisi import HisiCalibration
from qdebug.graph.hazards import judge_hazards
from qdebug.graph.model import ModelGraph
from qdebug.quant.calibrate import EntropyCalibrator
from qdebug.quant.scheme import Precision

MUL2, CAT5 = "/model.22/Mul_2", "/model.22/Concat_5"


def cli(args: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, " ".join(cap.err.split())


@pytest.fixture(scope="module")
def y8(tmp_path_factory) -> Path:
    """The YOLOv8 fixture and 4 images."""
    d = tmp_path_factory.mktemp("y8")
    onnx.save(make_yolov8(), str(d / "m.onnx"))
    make_images(d / "images", n=4)
    return d


def compare_json(d: Path, capsys, *extra) -> dict:
    rc, out, err = cli(["compare", d / "m.onnx", "--data", d / "images", "--json", d / "c.json", "-q", *extra], capsys)
    assert rc == 0, err
    return json.loads((d / "c.json").read_text())


def _width(r: list[float]) -> float:
    return max(r[1], 0.0) - min(r[0], 0.0)


# ------------------------------------------------------------------ 1. hazards at the run's precision
def test_hazards_default_then_handled_by_overrides(y8, capsys) -> None:
    doc = compare_json(y8, capsys)
    kinds = {(h["kind"], h["node"]): h for h in doc["hazards"]}
    assert set(kinds) >= {("scale_amplify", MUL2), ("score_concat", CAT5)}
    rng = {t["tensor"]: t["float_range"] for t in doc["tensors"]}
    sc = kinds[("score_concat", CAT5)]
    # one int8 step of the concat: its output width over 255 levels; the message says step / score width
    step = _width(rng["output0"]) / 255
    assert sc["numbers"]["int8_step"] == pytest.approx(step, rel=1e-4)
    score_w = _width(rng["/model.22/Sigmoid_output_0"])
    assert f"is {step / score_w:.2f}x the whole score range" in sc["message"]

    doc = compare_json(y8, capsys, "--override", f"{MUL2}=int16", "--override", f"{CAT5}=int16")
    live = {(h["kind"], h["node"]) for h in doc["hazards"]}
    assert ("scale_amplify", MUL2) not in live
    assert f"hazard handled: scale_amplify at {MUL2}: the run quantizes it at int16" in doc["warnings"]
    # the score part keeps score_w / (W / 65535) levels at int16: a hazard only under 16 (hand rule)
    levels16 = score_w / (_width(rng["output0"]) / 65535)
    assert (("score_concat", CAT5) in live) == (levels16 < 16)
    assert levels16 >= 16 and any(w.startswith(f"hazard handled: score_concat at {CAT5}") for w in doc["warnings"])

    doc = compare_json(y8, capsys, "--override", f"{MUL2}=fp16")
    assert ("scale_amplify", MUL2) not in {(h["kind"], h["node"]) for h in doc["hazards"]}
    assert f"hazard handled: scale_amplify at {MUL2}: the run keeps it in float" in doc["warnings"]


def test_hazard_handled_by_vendor_file(tmp_path, capsys) -> None:
    model, _, ranges = yolov8_bundle()
    onnx.save(model, str(tmp_path / "m.onnx"))
    make_images(tmp_path / "images", n=2)
    text8 = make_hisi_calibration(model, ranges)
    (tmp_path / "c8.txt").write_text(text8)
    (tmp_path / "c16.txt").write_text(HisiCalibration.parse(text8).promote([MUL2], Precision.INT16).text)
    doc8 = compare_json(tmp_path, capsys, "--calib", f"hisi:{tmp_path / 'c8.txt'}")
    assert ("scale_amplify", MUL2) in {(h["kind"], h["node"]) for h in doc8["hazards"]}
    doc16 = compare_json(tmp_path, capsys, "--calib", f"hisi:{tmp_path / 'c16.txt'}")
    assert ("scale_amplify", MUL2) not in {(h["kind"], h["node"]) for h in doc16["hazards"]}
    assert f"hazard handled: scale_amplify at {MUL2}: the run quantizes it at int16" in doc16["warnings"]
    # the header names the file that decides the ranges, not the calibrator
    rc, out, err = cli(["compare", tmp_path / "m.onnx", "--data", tmp_path / "images", "--calib",
                        f"hisi:{tmp_path / 'c16.txt'}"], capsys)
    head = " ".join(out.split("SNR =")[0].split())
    assert rc == 0 and "ranges from hisi:" in head and "calibrator" not in head


def _mix_model() -> onnx.ModelProto:
    """x -> Mul(x, 100) = a (a scale_amplify), Concat(a, Relu(x)) = y (Relu(x) 100x narrower: a range mix)."""
    n = helper.make_node
    g = helper.make_graph(
        [n("Mul", ["x", "k"], ["a"], name="mul"), n("Relu", ["x"], ["r"], name="relu"),
         n("Concat", ["a", "r"], ["y"], name="cat", axis=1)], "mix",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [numpy_helper.from_array(np.array(100.0, np.float32), "k")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_imported_qdq_hazards_quote_its_scales(tmp_path, capsys) -> None:
    quant = pytest.importorskip("onnxruntime.quantization")
    onnx.save(_mix_model(), str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(3)
    xs = [rng.uniform(-1, 1, (1, 2, 4, 4)).astype(np.float32) for _ in range(3)]
    (tmp_path / "images").mkdir()
    for i, x in enumerate(xs):
        np.save(tmp_path / "images" / f"{i}.npy", x)

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": x * 1.5} for x in xs])  # other ranges than qdebug's calibration: other steps

        def get_next(self):
            return next(self.it, None)

    logging.getLogger().setLevel(logging.ERROR)
    quant.quantize_static(str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), Reader(),
                          quant_format=quant.QuantFormat.QDQ, activation_type=quant.QuantType.QUInt8,
                          weight_type=quant.QuantType.QInt8)
    q = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    scale = {nd.input[0]: float(inits[nd.input[1]]) for nd in q.graph.node if nd.op_type == "QuantizeLinear"}
    doc = compare_json(tmp_path, capsys, "--quantized", tmp_path / "q.onnx")
    hz = {h["kind"]: h for h in doc["hazards"]}
    sa = hz["scale_amplify"]
    assert sa["numbers"]["input_step"] == pytest.approx(scale["x"], rel=1e-6)
    assert f"int8 step {scale['x']:.3g} (imported scale)" in sa["message"]
    mix = hz["concat_range_mix"]
    y_scale = next(v for k, v in scale.items() if k.startswith("y"))
    assert mix["numbers"]["int8_step"] == pytest.approx(y_scale, rel=1e-6)
    assert "(imported scale)" in mix["message"]


def test_softmax_input_hazard_needs_the_producer_promoted_too() -> None:
    n = helper.make_node
    g = helper.make_graph([n("Add", ["x", "z"], ["s"], name="add"), n("Softmax", ["s"], ["p"], name="sm", axis=-1)],
                          "sm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 8])],
                          [numpy_helper.from_array(np.zeros(8, np.float32), "z")])
    graph = ModelGraph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    ranges = {"x": (-150.0, 50.0), "s": (-150.0, 50.0)}  # width 200 > 255 * ln(256) / 16 = 88.4 (int8)
    live, notes = judge_hazards(graph, ranges, {"sm": 16})  # only the Softmax: its input is still int8
    assert [h.kind for h in live] == ["softmax_range"] and notes == []
    live, notes = judge_hazards(graph, ranges, {"sm": 16, "add": 16})  # 200 / 65535 per step: far over 16 levels
    assert live == [] and notes == ["hazard handled: softmax_range at sm: the run quantizes it at int16"]


# ------------------------------------------------------------------ 2. graph-input rows
def _conv_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.5, (2, 1, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4),
                           helper.make_node("Relu", ["c"], ["y"], name="relu")], "c",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _exact_inputs(d: Path, n: int = 3) -> list[np.ndarray]:
    """Inputs on the int8 grid of [0, 1] (k / 255, both ends present): quantized exactly."""
    rng = np.random.default_rng(1)
    xs = []
    (d / "images").mkdir(exist_ok=True)
    for i in range(n):
        x = (rng.integers(0, 256, (1, 1, 6, 6)) / 255.0).astype(np.float32)
        x.flat[0], x.flat[1] = 0.0, 1.0
        np.save(d / "images" / f"{i}.npy", x)
        xs.append(x)
    return xs


def test_exact_input_jump_is_zero_not_negative(tmp_path, capsys) -> None:
    onnx.save(_conv_model(), str(tmp_path / "m.onnx"))
    _exact_inputs(tmp_path)
    doc = compare_json(tmp_path, capsys, "--all")
    rows = {t["tensor"]: t for t in doc["tensors"]}
    assert rows["x"]["cumulative"]["snr_db"] > 60  # k/255 on a 1/255 grid: exact up to float rounding
    assert rows["x"]["jump_db"] == 0.0  # exact source, nothing lost (was 60 - its own SNR, e.g. -80)
    c = rows["c"]["cumulative"]["snr_db"]
    assert c < 60 and rows["c"]["jump_db"] == pytest.approx(60 - c, abs=2e-3)  # an op after an exact input


def test_input_without_dump_is_not_available(tmp_path, capsys) -> None:
    m = _conv_model()
    onnx.save(m, str(tmp_path / "m.onnx"))
    xs = _exact_inputs(tmp_path)
    import onnxruntime as ort

    mm = onnx.ModelProto()
    mm.CopyFrom(m)
    mm.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    sess = ort.InferenceSession(mm.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    noisy_x = []
    for k, x in enumerate(xs):
        y, c = sess.run(["y", "c"], {"x": x})
        for sub, with_x in (("a", False), ("b", True)):
            out = tmp_path / sub / f"{k:04d}"
            out.mkdir(parents=True)
            np.save(out / "c.npy", c + 0.01)
            np.save(out / "y.npy", y + 0.01)
            if with_x:
                nx = (x + rng.normal(0, 0.01, x.shape)).astype(np.float32)
                noisy_x.append((x, nx))
                np.save(out / "x.npy", nx)
    rows = {t["tensor"]: t for t in compare_json(tmp_path, capsys, "--quantized-dumps", tmp_path / "a")["tensors"]}
    assert rows["x"]["cumulative"]["snr_db"] is None and rows["x"]["jump_db"] is None
    # a recorded input is the recorded value, not the float sample
    rows = {t["tensor"]: t for t in compare_json(tmp_path, capsys, "--quantized-dumps", tmp_path / "b")["tensors"]}
    sx = sum(float(np.sum(x.astype(np.float64) ** 2)) for x, _ in noisy_x)
    sd = sum(float(np.sum((x.astype(np.float64) - q) ** 2)) for x, q in noisy_x)
    assert rows["x"]["cumulative"]["snr_db"] == pytest.approx(10 * np.log10(sx / sd), abs=2e-3)


# ------------------------------------------------------------------ 3. distinct shortened names
def test_shortened_names_stay_distinct() -> None:
    names = ["22/cv2.0/cv2.0.1/conv/Conv", "22/cv3.0/cv3.0.1/conv/Conv", "22/cv2.1/cv2.1.1/conv/Conv",
             "22/cv3.1/cv3.1.1/conv/Conv", "22/dfl/conv/Conv", "4/m.0/cv1/act/Sigmoid", "4/m.1/cv1/act/Sigmoid",
             "4/m.0/cv2/act/Sigmoid", "4/cv1/act/Sigmoid"]
    assert len({elide(n, 16) for n in names}) < len(names)  # plain elision merges rows
    for width in (20, 22, 30):
        shown = distinct_elide(names, [width] * len(names))
        assert shown is not None and len(set(shown)) == len(names)
        for s, n in zip(shown, names, strict=True):
            assert len(s) <= width
            kept = [p for p in s.split("/") if p != "…"]
            assert kept[-1] == n.split("/")[-1] and all(p in n.split("/") for p in kept)
    assert distinct_elide(names, [10] * len(names)) is None  # too narrow: the caller stacks full names


# ------------------------------------------------------------------ 4. a forced CTC layout
def test_ctc_forced_layout_contradicting_shape_is_refused(tmp_path, capsys) -> None:
    onnx.save(make_crnn(), str(tmp_path / "m.onnx"))
    make_images(tmp_path / "images", n=4, size=(160, 40))
    base = ["compare", tmp_path / "m.onnx", "--data", tmp_path / "images", "--resize", "resize", "--task", "ctc",
            "--json", tmp_path / "c.json", "-q"]
    rc, _, err = cli(base + ["--ctc-layout", "tnc"], capsys)
    assert rc == 2 and "--ctc-layout" in err and "[1, 32, 20]" in err and "fix: pass --ctc-layout ntc" in err
    rc, _, err = cli(base + ["--ctc-layout", "ntc"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "c.json").read_text())["task"]["quantized"]["samples"] == 4  # one per image


# ------------------------------------------------------------------ 5. entropy calibration of offset tensors
def _entropy_range(x: np.ndarray) -> tuple[float, float]:
    cal = EntropyCalibrator()
    for s in np.array_split(x, 4):
        cal.observe(0, "t", s)
    for s in np.array_split(x, 4):
        cal.observe(1, "t", s)
    return cal.ranges(8)["t"]


def test_entropy_offset_uniform_keeps_the_range() -> None:
    x = np.random.default_rng(0).uniform(10.0, 20.0, 200_000).astype(np.float32)
    lo, hi = _entropy_range(x)
    # flat density: any cut folds a spike into the last bin (KL > 0); the full cut's KL is ~0 -> hi ~ max (20)
    assert lo == pytest.approx(float(x.min())) and hi >= 19.5


def test_entropy_offset_skewed_keeps_the_bulk() -> None:
    rng = np.random.default_rng(1)
    x = (2.7 + np.minimum(rng.exponential(3.0, 200_000), 21.0)).astype(np.float32)  # like /model.22/Add_1
    lo, hi = _entropy_range(x)
    kept = float(np.mean((x >= lo) & (x <= hi)))
    assert hi > lo and kept >= 0.99  # was [2.7, 2.71]: the bulk clipped


def test_entropy_signed_data_unchanged() -> None:
    # data from 0 (first non-empty bin 0): the search starts at 128 bins as TensorRT's; a Laplace tail is cut
    x = np.random.default_rng(2).laplace(0.0, 1.0, 200_000).astype(np.float32)
    lo, hi = _entropy_range(x)
    amax = float(np.abs(x).max())
    assert -amax < lo < 0 < hi < amax and hi == -lo


# ------------------------------------------------------------------ 6. help texts
def _subparsers() -> dict[str, argparse.ArgumentParser]:
    ap = build_parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", ["compare", "promote", "bisect", "report", "doctor"])
def test_every_option_has_help(command: str) -> None:
    p = _subparsers()[command]
    missing = [a.option_strings or [a.dest] for a in p._actions
               if not isinstance(a, argparse._HelpAction) and (not a.help or a.help == argparse.SUPPRESS)]
    assert missing == []


def test_defaults_shown_and_task_group_named() -> None:
    p = _subparsers()["compare"]
    helps = {s: a.help for a in p._actions for s in a.option_strings}
    assert "default 15" in helps["--top"] and "default 1" in helps["--rknn-analysis-samples"]
    assert "99.99" in helps["--percentile"]
    group = next(g for g in p._action_groups if any("--ctc-layout" in a.option_strings for a in g._group_actions))
    assert "detection verdict)" not in group.title and "ctc" in group.title and "classify" in group.title


# ------------------------------------------------------------------ 7. layout at 80 columns
def test_hazards_wrap_with_hanging_indent(y8, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    rc, out, err = cli(["compare", y8 / "m.onnx", "--data", y8 / "images"], capsys)
    assert rc == 0, err
    block = out.split("Hazards (")[1].split("Outputs")[0].splitlines()[1:]
    assert len(block) > 4 and all(len(line) <= 80 for line in block)
    assert all(line.startswith("  ") for line in block)  # no continuation at column 0
    assert all(line.startswith("    ") for line in block if not line.lstrip().startswith("⚠"))


def test_promote_notes_wrap(tmp_path, capsys, monkeypatch) -> None:
    model, _, ranges = yolov8_bundle()
    (tmp_path / "c.txt").write_text(make_hisi_calibration(model, ranges))
    monkeypatch.setenv("COLUMNS", "80")
    rc, out, err = cli(["promote", f"hisi:{tmp_path / 'c.txt'}", "--layers", MUL2, "-o", tmp_path / "o.txt"], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    k = next(i for i, line in enumerate(lines) if line.startswith("note:"))
    assert len(lines[k]) <= 80 and lines[k + 1].startswith("      ")  # wrapped under "note: "


def test_draw_written_after_the_summary(y8, tmp_path, capsys) -> None:
    rc, out, err = cli(["compare", y8 / "m.onnx", "--data", y8 / "images", "--task", "yolov8", "--draw",
                        tmp_path / "draw"], capsys)
    assert rc == 0, err
    wrote = [m.start() for m in re.finditer(r"^wrote ", out, re.M)]  # (long paths wrap: the line start counts)
    assert wrote and min(wrote) > out.index("qdebug compare") and min(wrote) > out.index("Detection verdict")
