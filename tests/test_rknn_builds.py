"""Toolkit builds of bisect --backend rknn (issue #16): the rknn profile's int16 rule (Sub with a constant first
input) pinned by recorded rknn-toolkit2 outcomes, written as float16 before any build (zero crash isolation on
the fake toolkit that crashes like the real one), the binary-search fallback's cost, and the build count."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdebug.cli import main
from qdebug.graph.model import ModelGraph
from qdebug.quant.profiles import get_profile, int16_unsupported
from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.runners.rockchip import RknnBackend, find_rknn_python

ROOT = Path(__file__).parent.parent
REC = ROOT / "fixtures" / "text" / "rknn" / "int16_sub_const.txt"
FAKE = ROOT / "fixtures" / "fake_rknn"
FAKE_VARS = ("FAKE_RKNN_FAIL", "FAKE_RKNN_CRASH", "FAKE_RKNN_UNSUPPORTED", "FAKE_RKNN_CRASH_KEY", "FAKE_RKNN_IGNORE",
             "FAKE_RKNN_PROPOSAL", "FAKE_GAIN", "FAKE_GAIN_PROMOTED", "FAKE_RKNN_SLEEP")


def _recorded() -> list[dict[str, str]]:
    rows = []
    for line in REC.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        case, op, in0, in1, req, outcome, _ = (c.strip() for c in line.split("|", 6))
        rows.append({"case": case, "op": op, "in0": in0, "in1": in1, "req": req, "outcome": outcome})
    return rows


def test_rule_matches_every_recorded_toolkit_outcome():
    rows = _recorded()
    assert len(rows) == 13
    rknn = get_profile("rknn")
    for r in rows:
        blocked = int16_unsupported(rknn, r["op"], [r["in0"].startswith("const"), r["in1"].startswith("const")])
        if r["req"] == "int16":  # ruled out exactly where the toolkit did not build the op at int16 on the NPU
            assert (blocked is not None) == (r["outcome"] in ("crash", "cpu-float")), r["case"]
        else:  # float16, what the rule writes instead, builds wherever int16 crashed
            assert r["outcome"] == "fp16", r["case"]
    assert int16_unsupported(get_profile("generic"), "Sub", [True, False]) is None  # a toolkit rule, not generic


@pytest.fixture()
def fake_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(FAKE))
    for k in FAKE_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("FAKE_RKNN_ALL_TENSORS", "1")  # step 1 lists every node output, as the toolkit does
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path


def _chain(tmp_path: Path, muls: int, sub_at: int) -> ModelGraph:
    """x -> Mul(-1) ... with Sub(0, .) (a constant minuend) after `sub_at` Muls; y = x * (-1)^(muls+1)."""
    nodes, inits, t = [], [numpy_helper.from_array(np.array(-1.0, np.float32), "k"),
                           numpy_helper.from_array(np.zeros((1, 3, 4, 4), np.float32), "zero")], "x"
    for i in range(muls + 1):
        last = i == muls
        if i == sub_at:
            out = "y" if last else f"s{i}"
            nodes.append(helper.make_node("Sub", ["zero", t], [out], name="sub"))
            t = out
        if not last:
            nodes.append(helper.make_node("Mul", [t, "k"], [f"m{i}"], name=f"mul{i}"))
            t = f"m{i}"
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info(t, TensorProto.FLOAT, [1, 3, 4, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "chain.onnx"))
    return ModelGraph.load(tmp_path / "chain.onnx")


def _backend(tmp_path: Path, graph: ModelGraph) -> tuple[RknnBackend, list[dict[str, np.ndarray]]]:
    be = RknnBackend(python=sys.executable, work_root=str(tmp_path / "work"))
    samples = [{"x": np.full((1, 3, 4, 4), i + 1, np.float32)} for i in range(2)]
    be.prepare(graph, QuantConfig(), samples)
    return be, samples


def test_const_minuend_sub_written_as_float16_with_zero_isolation_builds(fake_env):
    g = _chain(fake_env, muls=1, sub_at=1)  # x -> mul0 -> sub(0, m0) = y
    be, samples = _backend(fake_env, g)
    out_name = g.outputs[0].name
    cfg = QuantConfig(overrides={"mul0": Precision.INT16, "sub": Precision.INT16})
    list(be.run(g, cfg, samples[:1], [out_name]))
    assert be.build_kinds == {"step1": 1, "evaluation": 1} and be.builds == 2  # no crash, no isolation
    assert "Sub@const0" in be.float16_instead["sub"] and be.unpromotable == {}
    patched = next(be.workdir.glob("job*_hybrid_step1/patched_*.quantization.cfg")).read_text()
    custom = patched.split("quantize_parameters")[0]
    assert f"    {out_name}: float16" in custom and "    m0: int16" in custom


def test_without_the_rule_the_fake_crashes_and_binary_search_finds_the_sub(fake_env, monkeypatch):
    """Control: the fake toolkit really dies on the pattern (naming no tensor); with 8 promoted ops the fallback
    spends ceil(log2 8) = 3 isolation builds, then one crashed and one good evaluation build."""
    g = _chain(fake_env, muls=7, sub_at=3)
    monkeypatch.setattr(RknnBackend, "int16_blocked", lambda self, graph, key: None)
    be, samples = _backend(fake_env, g)
    keys = ["mul0", "mul1", "mul2", "sub", "mul3", "mul4", "mul5", "mul6"]  # the Sub 4th: prefixes 4, 2, 3
    list(be.run(g, QuantConfig(overrides={k: Precision.INT16 for k in keys}), samples[:1], [g.outputs[0].name]))
    assert be.build_kinds == {"step1": 1, "crashed": 1, "isolation": math.ceil(math.log2(len(keys))),
                              "evaluation": 1}
    assert list(be.unpromotable) == ["sub"] and "Lut fuse dtype not support yet" in be.unpromotable["sub"]


def test_bisect_records_builds_against_the_bound(fake_env, capsys):
    """y = x through Mul(-1) and Sub(0, .); the fake gives 2x at int8 (0 dB) and x once an int16 entry is in the
    cfg: the all-promoted set meets y:snr_db>=40 without a crash, and every build is accounted for."""
    g = _chain(fake_env, muls=1, sub_at=1)
    data = fake_env / "npy"
    data.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        np.save(data / f"{k}.npy", rng.uniform(0.5, 1.5, (1, 3, 4, 4)).astype(np.float32))
    out = fake_env / "b.json"
    rc = main(["bisect", str(g.path), "--data", str(data), "--backend", "rknn", "--rknn-python", sys.executable,
               "--target", "y:snr_db>=40", "--json", str(out)])
    doc = json.loads(out.read_text())
    judge, counts = doc["quant"]["judge"], doc["counts"]
    sb = judge["search_builds"]
    assert rc == 0 and "sub" in judge["float16_instead"]
    assert "crashed" not in sb and "isolation" not in sb and judge["unpromotable"] == {}
    # the baseline evaluation is the full-graph truncation probe (cut y = the graph output) run again: one build
    # serves both, so the search's builds (evaluations - 1 + step 1) stay within the bound, not one over it
    assert sb["reused"] == judge["reused_runs"] == 1 and doc["first_bad_cut"]["probes"][0]["tensor"] == "y"
    # the issue's bound 2*ceil(log2 N) + |set| + 2, with the first-bad-cut probes counted inside it
    n = counts["candidates"]
    issue_bound = 2 * math.ceil(math.log2(n)) + len(doc["result"]["set"]) + 2 if n > 1 else 2 + len(doc["result"]["set"]) + 2
    assert sb["evaluation"] == counts["evaluations"] - 1 and sb["step1"] == 1 and sb["bound"] == issue_bound
    assert sb["total"] == counts["evaluations"] <= issue_bound and judge["builds"] == sb["total"]
    assert sum(judge["builds_by_kind"].values()) == judge["builds"]
    # the reused run scores like a fresh one: the fake's int8 gain 2 gives y' = 2y, SNR 10*log10(1/1) = 0 dB
    assert doc["evaluations"][0]["purpose"] == "baseline" and doc["evaluations"][0]["values"]["y:snr_db>=40"] == 0.0
    assert doc["first_bad_cut"]["probes"][0]["value"] == 0.0
    text = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert f"{sb['total']} toolkit builds for the search" in text and "1 evaluation(s) answered by an identical" in text


def test_identical_runs_share_one_build_and_different_inputs_do_not(fake_env):
    """The same model, cfg, outputs and input bytes twice: one build; other input bytes or another cfg: a build."""
    g = _chain(fake_env, muls=1, sub_at=1)
    be, samples = _backend(fake_env, g)
    y = g.outputs[0].name
    first = list(be.run(g, QuantConfig(), samples, [y]))
    again = list(be.run(g, QuantConfig(), [{"x": s["x"].copy()} for s in samples], [y]))
    assert be.build_kinds == {"evaluation": 1} and be.reused == 1
    for a, b, s in zip(first, again, samples, strict=True):  # the fake's int8 gain: 2x
        np.testing.assert_array_equal(a[y], 2 * s["x"]) and np.testing.assert_array_equal(b[y], 2 * s["x"])
    list(be.run(g, QuantConfig(), [{"x": samples[0]["x"] + 1}], [y]))
    list(be.run(g, QuantConfig(overrides={"mul0": Precision.INT16}), samples, [y]))
    assert be.build_kinds == {"evaluation": 3, "step1": 1} and be.reused == 1


def test_a_named_tensor_blames_the_op_type_the_message_names(fake_env, monkeypatch):
    """x -> Sub(x, c) -> s -> Add(s, c) -> y, both promoted; the toolkit says "in Sub, tensor name is: s": the Sub
    is blamed at once (not the Add that reads s), with no isolation build."""
    c = numpy_helper.from_array(np.full((1, 3, 4, 4), 0.5, np.float32), "c")
    g = helper.make_graph([helper.make_node("Sub", ["x", "c"], ["s"], name="sub"),
                           helper.make_node("Add", ["s", "c"], ["y"], name="add")], "t",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])], [c])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(fake_env / "sa.onnx"))
    graph = ModelGraph.load(fake_env / "sa.onnx")
    monkeypatch.setenv("FAKE_RKNN_UNSUPPORTED", "s")
    be, samples = _backend(fake_env, graph)
    list(be.run(graph, QuantConfig(overrides={"sub": Precision.INT16, "add": Precision.INT16}), samples[:1], ["y"]))
    assert list(be.unpromotable) == ["sub"] and "in Sub, tensor name is: s" in be.unpromotable["sub"]
    assert be.build_kinds == {"step1": 1, "crashed": 1, "evaluation": 1}


REAL = find_rknn_python()


@pytest.mark.rknn
@pytest.mark.skipif(REAL is None, reason="skipped: rknn-toolkit2 environment not found")
def test_real_toolkit_builds_the_const_minuend_sub_as_float16(tmp_path, monkeypatch):
    """The recorded crash, live: Sub(0, Mul(x, -1)) promoted to int16 is written as float16 and builds the first
    time; with the rule switched off the real toolkit dies and one isolation build finds the Sub."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    g = _chain(tmp_path, muls=1, sub_at=1)
    cfg = QuantConfig(overrides={"mul0": Precision.INT16, "sub": Precision.INT16})
    be = RknnBackend(python=REAL, work_root=str(tmp_path / "work"))
    samples = [{"x": np.full((1, 3, 4, 4), i + 1, np.float32)} for i in range(2)]
    be.prepare(g, QuantConfig(), samples)
    list(be.run(g, cfg, samples[:1], [g.outputs[0].name]))
    assert be.build_kinds == {"step1": 1, "evaluation": 1} and "sub" in be.float16_instead
    monkeypatch.setattr(RknnBackend, "int16_blocked", lambda self, graph, key: None)
    off = RknnBackend(python=REAL, work_root=str(tmp_path / "work2"))
    off.prepare(g, QuantConfig(), samples)
    list(off.run(g, cfg, samples[:1], [g.outputs[0].name]))
    assert list(off.unpromotable) == ["sub"] and off.build_kinds.get("crashed") == 1
