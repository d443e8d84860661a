"""Rockchip backend: result readers on recorded toolkit output, the worker protocol against a fake
toolkit (everywhere), and the real rknn-toolkit2 when its environment is present (marked rknn)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdebug.cli import main
from qdebug.errors import QDebugError
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.runners import rockchip
from qdebug.runners.rknn_results import fused_away, onnx_name, parse_error_analysis, parse_name_map
from qdebug.runners.rockchip import RknnBackend, ToolkitError, find_rknn_python

ROOT = Path(__file__).parent.parent
REC = ROOT / "fixtures" / "text" / "rknn"
FAKE = ROOT / "fixtures" / "fake_rknn"


# ------------------------------------------------------------------ readers
def test_recorded_error_analysis_table():
    rows = parse_error_analysis((REC / "error_analysis.yolov8_fixture.txt").read_text())
    by = {r.name: r for r in rows}
    assert by["/model.0/conv/Conv_output_0"].entire_cos == pytest.approx(0.99998)
    assert by["/model.0/conv/Conv_output_0"].entire_euc == pytest.approx(1.56329)
    mul = by["/model.22/Mul_2_output_0-rs"]
    assert (mul.op_type, mul.single_cos, mul.single_euc) == ("Mul", pytest.approx(0.99997), pytest.approx(27.55831))
    blank = by["/model.22/Split_output_1-rs"]
    assert blank.entire_cos is None  # fused: the toolkit left the row empty
    names = parse_name_map((REC / "map_name_to_file.yolov8_fixture.txt").read_text())
    assert names["/model.0/conv/Conv_output_0"] == "_model_0_conv_Conv_output_0.txt"


def test_euclidean_running_into_next_column():
    text = ("layer_name                    simulator_error\n"
            "                          entire              single\n"
            "                       cos      euc        cos      euc\n" + "-" * 60 + "\n"
            "[Mul] /a/Mul_output_0-rs     0.99975 | 7921.583010.99988 | 27.55831\n")
    r = parse_error_analysis(text)[0]
    assert (r.entire_cos, r.entire_euc, r.single_cos, r.single_euc) == (0.99975, 7921.58301, 0.99988, 27.55831)


def test_older_layout_and_bad_file():
    text = ("layer_name        quant_error      runtime_error\n"
            "                 entire    per_layer      simu_err  golden_err\n" + "-" * 60 + "\n"
            "images_int8       1.000000  1.000000\n/x/Conv_output_0  0.998002  0.999888       0.999745  0.998027\n")
    rows = parse_error_analysis(text)
    assert rows[1].entire_cos == pytest.approx(0.998002) and rows[1].single_cos == pytest.approx(0.999888)
    with pytest.raises(QDebugError, match="header separator"):
        parse_error_analysis("not a table", "x.txt")


def test_name_mapping_and_fused_away():
    assert onnx_name("/m/Concat_3_output_0-rs") == "/m/Concat_3_output_0"
    assert onnx_name("output0_int8") == "output0" and onnx_name("/c/Conv_output_0__int16") == "/c/Conv_output_0"
    rows = parse_error_analysis((REC / "error_analysis.yolov8_fixture.txt").read_text())
    gone = fused_away(["/model.0/act/Sigmoid_output_0", "/model.0/act/Mul_output_0"], rows)
    assert gone == ["/model.0/act/Sigmoid_output_0"]


# ------------------------------------------------------- worker protocol
def _model(tmp_path):
    nodes = [helper.make_node("Mul", ["x", "k"], ["m"], name="mul"),
             helper.make_node("Sub", ["m", "c"], ["y"], name="sub")]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [numpy_helper.from_array(np.array(2.0, np.float32), "k"),
                           numpy_helper.from_array(np.array(0.0, np.float32), "c")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "m.onnx"))
    return ModelGraph.load(tmp_path / "m.onnx")


@pytest.fixture()
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(FAKE))
    for k in ("FAKE_RKNN_FAIL", "FAKE_RKNN_CRASH", "FAKE_RKNN_UNSUPPORTED", "FAKE_RKNN_CRASH_KEY"):
        monkeypatch.delenv(k, raising=False)
    g = _model(tmp_path)
    be = RknnBackend(python=sys.executable, work_root=str(tmp_path / "work"))
    samples = [{"x": np.full((1, 3, 4, 4), i, np.float32)} for i in range(3)]
    be.prepare(g, QuantConfig(), samples)
    return g, be, samples


def test_worker_simulate_roundtrip(fake):
    g, be, samples = fake
    outs = list(be.run(g, QuantConfig(), samples, ["y"]))
    assert [float(o["y"].ravel()[0]) for o in outs] == [0.0, 2.0, 4.0]  # fake toolkit: input * 2


def test_worker_hybrid_promotion_uses_patched_cfg(fake):
    g, be, samples = fake
    outs = list(be.run(g, QuantConfig(overrides={"sub": Precision.INT16}), samples[1:2], ["y"]))
    assert float(outs[0]["y"].ravel()[0]) == 1.0  # gain 1 once the cfg carries an int16 entry
    cfg = next(be.workdir.glob("job*_hybrid_step1/patched_*.quantization.cfg")).read_text()
    assert cfg.startswith("custom_quantize_layers:\n    y: int16\n")


def test_toolkit_error_is_one_clean_line(fake, monkeypatch):
    g, be, samples = fake
    monkeypatch.setenv("FAKE_RKNN_FAIL", "build")
    with pytest.raises(ToolkitError) as exc:
        list(be.run(g, QuantConfig(), samples, ["y"]))
    msg = exc.value.one_line()
    assert "unsupported op 'Foo'" in msg and "\x1b" not in msg and "worker.log" in msg


def test_worker_crash_reports_first_error(fake, monkeypatch):
    g, be, samples = fake
    monkeypatch.setenv("FAKE_RKNN_CRASH", "1")
    with pytest.raises(ToolkitError, match="crashed in simulate.*Meet something fatal"):
        list(be.run(g, QuantConfig(), samples, ["y"]))


def test_unpromotable_op_is_dropped_and_reported(fake, monkeypatch):
    g, be, samples = fake
    monkeypatch.setenv("FAKE_RKNN_UNSUPPORTED", "y")
    outs = list(be.run(g, QuantConfig(overrides={"sub": Precision.INT16}), samples[1:2], ["y"]))
    assert "sub" in be.unpromotable and float(outs[0]["y"].ravel()[0]) == 2.0


def test_crashing_and_unlisted_ops_are_isolated(fake, monkeypatch):
    g, be, samples = fake
    monkeypatch.setenv("FAKE_RKNN_CRASH_KEY", "y")  # the toolkit dies (no tensor named) when `sub` is int16
    cfg = QuantConfig(overrides={"sub": Precision.INT16, "mul": Precision.INT16})
    outs = list(be.run(g, cfg, samples[1:2], ["y"]))
    assert "crashes" in be.unpromotable["sub"]  # found by group testing over the promoted ops
    assert "no entry" in be.unpromotable["mul"]  # `m` is not a key of the toolkit's cfg
    assert float(outs[0]["y"].ravel()[0]) == 2.0


def test_run_folder_removed_unless_kept(fake):
    g, be, samples = fake
    list(be.run(g, QuantConfig(), samples[:1], ["y"]))
    wd = be.workdir
    assert wd.exists()
    be.close()
    assert not wd.exists()


def test_missing_environment_and_bad_platform(monkeypatch, tmp_path):
    monkeypatch.delenv("QDEBUG_RKNN_PYTHON", raising=False)
    monkeypatch.setattr(rockchip, "DEFAULT_ENV", tmp_path / "none")
    assert find_rknn_python(str(tmp_path / "nope")) is None
    with pytest.raises(QDebugError, match="rknn-toolkit2 environment not found"):
        RknnBackend()
    with pytest.raises(QDebugError, match="nope' is not an executable file"):
        RknnBackend(python=str(tmp_path / "nope"))
    with pytest.raises(QDebugError, match="unknown platform 'rk9999'"):
        RknnBackend(python=sys.executable, platform="rk9999")


# ------------------------------------------------------------- real toolkit
REAL = find_rknn_python()
real = pytest.mark.skipif(REAL is None, reason="skipped: rknn-toolkit2 environment not found")


@pytest.mark.rknn
@real
def test_real_compare_and_bisect_on_yolov8_fixture(fx, tmp_path, capsys):
    run = tmp_path / "rk.json"
    assert main(["compare", str(fx["yolov8"]), "--data", str(fx["images"]), "--samples", "4", "--backend", "rknn",
                 "--json", str(run), "-q"]) == 0
    v = json.loads(run.read_text())["vendor"]
    score = next(p for p in v["outputs"][0]["parts"] if p["part"] == "score")
    assert score["cumulative"]["snr_db"] < 5  # the toolkit crushes the scores too
    assert v["tensors_matched"] > 20 and v["fused_away"]
    out = tmp_path / "b.json"
    patched = tmp_path / "patched.quantization.cfg"
    rc = main(["bisect", str(fx["yolov8"]), "--data", str(fx["images"]), "--samples", "4", "--backend", "rknn",
               "--target", "output0.score:snr_db>=20", "-o", str(patched), "--json", str(out), "-q"])
    doc = json.loads(out.read_text())
    assert rc == 0 and doc["result"]["met"] and "/model.22/Concat_5" in doc["result"]["set"]
    assert doc["result"]["after"]["output0.score:snr_db>=20"] >= 20  # measured by a real hybrid build
    assert "output0-rs: int16" in patched.read_text()
