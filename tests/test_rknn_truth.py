"""Issue #16: the Rockchip path tells the truth. Recorded toolkit build tables (what step 2 really built), the
fake toolkit (fixtures/fake_rknn) for promotions read back, the proposal scored as written, verdict sources,
clean runs and bad input; the real toolkit (skipped without its environment) for a Conv+SiLU at int16."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdebug.cli import main
from qdebug.errors import FormatError, QDebugError
from qdebug.formats.rknn2 import RknnQuantCfg
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.runners.rknn_results import parse_build_tables, unapplied_promotions
from qdebug.runners.rockchip import RAW, RknnBackend, find_rknn_python, static_input_model

ROOT = Path(__file__).parent.parent
REC = ROOT / "fixtures" / "text" / "rknn"
FAKE = ROOT / "fixtures" / "fake_rknn"
FAKE_VARS = ("FAKE_RKNN_FAIL", "FAKE_RKNN_CRASH", "FAKE_RKNN_UNSUPPORTED", "FAKE_RKNN_CRASH_KEY", "FAKE_RKNN_IGNORE",
             "FAKE_RKNN_ALL_TENSORS", "FAKE_RKNN_PROPOSAL", "FAKE_GAIN", "FAKE_GAIN_PROMOTED", "FAKE_RKNN_SLEEP")


# ------------------------------------------------ recorded: what step 2 built
def test_recorded_build_tables_show_what_was_built():
    """rknn-toolkit2 2.5.0, make_yolov8(128), custom entries: /model.2 conv + act output, /model.3/cv1 conv only."""
    t = parse_build_tables((REC / "step2_tables.yolov8_fixture.txt").read_text())
    assert t is not None
    assert t.ops["/model.2/conv/Conv"] == "int16"  # ConvExSwish: conv and SiLU fused, at int16
    assert t.ops["/model.3/cv1/conv/Conv"] == "int16" and t.ops["/model.0/conv/Conv"] == "int8"
    assert t.tensors["/model.2/act/Mul_output_0"] == "int16"
    assert t.tensors["/model.3/cv1/conv/Conv_output_0"] == "int16"
    assert t.tensors["/model.3/cv1/act/Mul_output_0"] == "int8"  # its SiLU was not promoted
    producer = {"/model.2/conv/Conv_output_0": "/model.2/conv/Conv", "/model.3/cv1/act/Mul_output_0": "/model.3/cv1/act/Mul"}
    bad = unapplied_promotions({"/model.2/conv/Conv_output_0": "int16", "/model.2/act/Mul_output_0": "int16",
                                "/model.3/cv1/act/Mul_output_0": "int16", "/model.3/cv1/act/Mulx_output_0": "int16"},
                               t, producer)
    # the conv output fused into ConvExSwish has no tensor row: its op's dtype counts
    assert set(bad) == {"/model.3/cv1/act/Mul_output_0", "/model.3/cv1/act/Mulx_output_0"}
    assert bad["/model.3/cv1/act/Mul_output_0"] == "requested int16, the toolkit built int8"
    assert "closest: /model.3/cv1/act/Mul_output_0" in bad["/model.3/cv1/act/Mulx_output_0"]
    assert parse_build_tables("I rknn building done.\n") is None  # a non-verbose log: nothing to check


# ------------------------------------------------------------- fake toolkit
def _conv_silu(tmp_path: Path, dynamic: bool = False) -> ModelGraph:
    """x -> Conv -> SiLU (Sigmoid, Mul) -> y: one fused op, two quantization points in the toolkit's cfg."""
    w = numpy_helper.from_array(np.full((3, 3, 1, 1), 0.5, np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Sigmoid", ["c"], ["s"], name="sig"),
             helper.make_node("Mul", ["c", "s"], ["y"], name="act")]
    dims = ["N", 3, "H", "W"] if dynamic else [1, 3, 4, 4]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "m.onnx"))
    return ModelGraph.load(tmp_path / "m.onnx")


def _linear(tmp_path: Path) -> Path:
    """y = 2x (Mul by a constant): the fake toolkit returns x * gain, so its SNR is set by FAKE_GAIN."""
    g = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"], name="mul")], "t",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [numpy_helper.from_array(np.array(2.0, np.float32), "k")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "lin.onnx"))
    data = tmp_path / "npy"
    data.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        np.save(data / f"{k}.npy", rng.uniform(0.5, 1.5, (1, 3, 4, 4)).astype(np.float32))
    return tmp_path / "lin.onnx"


@pytest.fixture()
def fake_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(FAKE))
    for k in FAKE_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("FAKE_RKNN_ALL_TENSORS", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path


def _backend(tmp_path: Path, graph: ModelGraph, **kw) -> tuple[RknnBackend, list[dict[str, np.ndarray]]]:
    be = RknnBackend(python=sys.executable, work_root=str(tmp_path / "work"), **kw)
    samples = [{"x": np.full((1, 3, 4, 4), i + 1, np.float32)} for i in range(2)]
    be.prepare(graph, QuantConfig(), samples)
    return be, samples


def test_conv_silu_promotion_writes_both_points_and_reads_back(fake_env, monkeypatch):
    g = _conv_silu(fake_env)
    be, samples = _backend(fake_env, g)
    list(be.run(g, QuantConfig(overrides={"act": Precision.INT16}), samples[:1], ["y"]))
    cfg = next(be.workdir.glob("job*_hybrid_step1/patched_*.quantization.cfg")).read_text()
    assert "    c: int16\n" in cfg and "    y: int16\n" in cfg  # the conv output too, not only the activation
    assert be.not_applied == {}  # the fake's tables show both at INT16
    monkeypatch.setenv("FAKE_RKNN_IGNORE", "c")  # now the toolkit leaves the conv output int8
    list(be.run(g, QuantConfig(overrides={"act": Precision.INT16}), samples[1:], ["y"]))
    assert be.not_applied == {"c": "requested int16, the toolkit built int8"}
    assert be.describe()["not_applied"] == be.not_applied
    be.close()


def test_raw_cfg_keys_are_written_verbatim_and_unknown_ones_refused(fake_env):
    g = _conv_silu(fake_env)
    be, samples = _backend(fake_env, g)
    list(be.run(g, QuantConfig(overrides={RAW + "s": Precision.FP16}), samples[:1], ["y"]))
    cfg = RknnQuantCfg.parse(next(be.workdir.glob("job*_hybrid_step1/patched_*.quantization.cfg")).read_text())
    assert cfg.custom == {"s": "float16"}  # exactly the entry given, no mapping to nodes
    with pytest.raises(FormatError, match="'sx' is not a tensor of the toolkit's quantization cfg.*did you mean"):
        list(be.run(g, QuantConfig(overrides={RAW + "sx": Precision.INT16}), samples[:1], ["y"]))
    be.close()


def test_dynamic_input_dims_fixed_before_the_toolkit(fake_env):
    g = _conv_silu(fake_env, dynamic=True)
    fixed = static_input_model(g.model, {"x": (1, 3, 8, 6)})
    assert [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 8, 6]
    assert g.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # the original is untouched
    be, samples = _backend(fake_env, g)
    list(be.run(g, QuantConfig(), samples[:1], ["y"]))
    saved = onnx.load(next(be.workdir.glob("model_*.onnx")))
    assert [d.dim_value for d in saved.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 4, 4]
    be.close()


def test_scratch_files_stay_in_the_run_folder_and_keep_work_says_where(fake_env, capsys):
    g = _conv_silu(fake_env)
    be, samples = _backend(fake_env, g, keep_work=True)
    list(be.run(g, QuantConfig(), samples[:1], ["y"]))
    assert not (fake_env / "tmp" / "check.onnx").exists()  # the toolkit's check.onnx went to the job folder
    assert list(be.workdir.glob("job*/check.onnx"))
    be.close()
    be.close()
    err = capsys.readouterr().err
    assert err.count(f"kept the rknn-toolkit2 run folder {be.workdir}") == 1 and be.workdir.exists()


def test_wrong_worker_python_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # qdebug's own python: no `rknn` module
    model = _linear(tmp_path)
    out = tmp_path / "r.json"
    with pytest.raises(QDebugError, match="has no rknn-toolkit2") as exc:
        RknnBackend(python=sys.executable, work_root=str(tmp_path / "w"))
    assert exc.value.where == "--rknn-python" and "worker.log" not in exc.value.one_line()
    assert main(["compare", str(model), "--data", str(tmp_path / "npy"), "--backend", "rknn", "--rknn-python",
                 sys.executable, "--json", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rknn-python" in err and sys.executable in err
    assert not out.exists() and not list(tmp_path.glob("**/qdebug-rknn-*"))


def test_unknown_backend_lists_every_backend(tmp_path, capsys):
    model = _linear(tmp_path)
    assert main(["compare", str(model), "--data", str(tmp_path / "npy"), "--backend", "foo", "-q"]) == 2
    err = capsys.readouterr().err
    assert "unknown backend 'foo'" in err and all(b in err for b in ("sim", "rknn", "qdq", "dumps"))


def test_proposal_scored_as_written_beside_ours_and_combined(fake_env, monkeypatch, capsys):
    """y = 2x; the fake returns 3x at int8 (SNR 10*log10(4/1) = 6.02 dB) and 1.5x once anything is int16
    (SNR 10*log10(4/0.25) = 12.04 dB): the target 20 dB is missed by both plans, so the union is scored too."""
    model = _linear(fake_env)
    monkeypatch.setenv("FAKE_GAIN", "3.0")
    monkeypatch.setenv("FAKE_GAIN_PROMOTED", "1.5")
    monkeypatch.setenv("FAKE_RKNN_PROPOSAL", "y:int16,x_int8:float16")  # x_int8 names no ONNX tensor
    out = fake_env / "b.json"
    rc = main(["bisect", str(model), "--data", str(fake_env / "npy"), "--backend", "rknn", "--rknn-python",
               sys.executable, "--rknn-proposal", "--target", "y:snr_db>=20", "--json", str(out)])
    doc = json.loads(out.read_text())
    tp = doc["toolkit_proposal"]
    assert rc == 1 and tp["entries"] == {"y": "int16", "x_int8": "float16"} and tp["count"] == 2
    plans = {p["name"]: p for p in tp["plans"]}
    assert set(plans) == {"toolkit proposal", "qdebug best set", "combined"}
    assert plans["qdebug best set"]["entries"] == 1 and "not_applied" in tp and tp["not_applied"] == {}
    assert plans["toolkit proposal"]["values"]["y:snr_db>=20"] == pytest.approx(10 * np.log10(4 / 0.25), abs=0.01)
    assert plans["combined"]["passed"] is False and plans["combined"]["judge"] == "rknn-toolkit2"
    # one count of builds: step 1, the search's step-2 builds, the proposal's step 1 and its 2 scorings, less the
    # runs identical to an earlier one: the baseline (= the full-graph cut probe) and qdebug's best set (= the
    # search's all-promoted evaluation, y promoted) are answered without a build
    judge = doc["quant"]["judge"]
    assert judge["reused_runs"] == 2 and plans["qdebug best set"]["values"] == doc["evaluations"][1]["values"]
    assert judge["builds"] == doc["counts"]["search_evaluations"] + 2 + 2 + doc["counts"]["cut_evaluations"] - 2
    text = capsys.readouterr().out
    assert "toolkit proposal (2 entr(ies), judged by rknn-toolkit2)" in text and "combined" in text


# ------------------------------------------------------------ clean signals
def test_sigterm_mid_toolkit_leaves_no_run_folder(fake_env):
    model = _linear(fake_env)
    env = {**os.environ, "FAKE_RKNN_SLEEP": "30", "TMPDIR": str(fake_env / "tmp")}
    cmd = [sys.executable, "-m", "qdebug.cli", "compare", str(model), "--data", str(fake_env / "npy"), "--backend",
           "rknn", "--rknn-python", sys.executable, "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT))
    deadline = time.time() + 60
    while time.time() < deadline and not list((fake_env / "tmp").glob("qdebug-rknn-*/job*/request.json")):
        time.sleep(0.1)
    assert list((fake_env / "tmp").glob("qdebug-rknn-*")), "the toolkit never started"
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and b"terminated" in err
    left = [p.name for p in (fake_env / "tmp").iterdir()]
    assert not [n for n in left if n.startswith("qdebug-rknn-") or n == "check.onnx"], left


# --------------------------------------------------------------- bad input
def test_cfg_of_another_model_is_refused(tmp_path):
    g = _conv_silu(tmp_path)
    text = (REC / "yolov8_fixture.quantization.cfg").read_text()
    cfg = RknnQuantCfg.parse(text, "other.quantization.cfg")
    with pytest.raises(FormatError, match="written for another model") as exc:
        cfg.promote(["act"], Precision.INT16, graph=g)
    assert exc.value.file == "other.quantization.cfg" and "hybrid_quantization_step1 on this model" in exc.value.fix
    with pytest.raises(FormatError, match="written for another model"):
        cfg.to_config(g, QuantConfig())


# ------------------------------------------------------------- real toolkit
REAL = find_rknn_python()
real = pytest.mark.skipif(REAL is None, reason="skipped: rknn-toolkit2 environment not found")


@pytest.mark.rknn
@real
def test_real_conv_silu_promotion_reaches_int16_in_both_tensors(tmp_path):
    from fixtures.models import make_yolov8

    onnx.save(make_yolov8(input_size=64), str(tmp_path / "y.onnx"))
    g = ModelGraph.load(tmp_path / "y.onnx")
    be = RknnBackend(work_root=str(tmp_path / "work"), mean=[0, 0, 0], std=[255, 255, 255])
    rng = np.random.default_rng(0)
    samples = [{g.inputs[0].name: rng.uniform(0, 1, (1, 3, 64, 64)).astype(np.float32)} for _ in range(2)]
    be.prepare(g, QuantConfig(), samples)
    node = "/model.2/act/Mul"  # Conv+SiLU: conv output and activation output are separate toolkit tensors
    list(be.run(g, QuantConfig(overrides={node: Precision.INT16}), samples[:1], [o.name for o in g.outputs]))
    cfg = RknnQuantCfg.parse(next(be.workdir.glob("job*_hybrid_step1/patched_*.quantization.cfg")).read_text())
    assert cfg.custom == {"/model.2/conv/Conv_output_0": "int16", "/model.2/act/Mul_output_0": "int16"}
    log = next(p for p in be.workdir.glob("job*_simulate/worker.log"))
    tables = parse_build_tables(log.read_text(errors="replace"))
    assert tables is not None and tables.ops["/model.2/conv/Conv"] == "int16"
    assert tables.tensors["/model.2/act/Mul_output_0"] == "int16"
    assert be.not_applied == {}
    be.close()


def test_disagreements_ranked_by_snr_difference_not_cosine():
    """Cosine 0.9999 vs 0.99999 hides 10 dB; the SNR gap ranks it first. Median of |-10|, |+1|, |-3| = 3."""
    from types import SimpleNamespace as NS

    from qdebug.compare.vendor import median_gap, rank_disagreements

    def row(name, v_snr, v_cos, b_snr, b_cos):
        return NS(tensor=name, cumulative=NS(snr_db=b_snr, cosine=b_cos),
                  vendor=NS(cumulative=NS(snr_db=v_snr, cosine=v_cos), table={}))

    tensors = [row("logits", 25.0, 0.9999, 35.0, 0.99999), row("box", 31.0, 0.999, 30.0, 0.99),
               row("mid", 27.0, 0.998, 30.0, 0.999), NS(tensor="fused", cumulative=NS(snr_db=1, cosine=1), vendor=None)]
    ranked = rank_disagreements(NS(tensors=tensors))
    assert [d["tensor"] for d in ranked] == ["logits", "mid", "box"]
    assert [d["snr_gap_db"] for d in ranked] == [-10.0, -3.0, 1.0]
    assert median_gap(ranked) == 3.0
