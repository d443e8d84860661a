"""Defects of the `bisect` side found by a documentation audit: each test fails on the old behaviour.

Models are built here (a hidden-failure Concat model) or come from fixtures/ (remedy models, YOLOv8).
Expected values are derived by hand from the model's construction or recomputed with a fresh backend.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from fixtures.remedy_models import make_remedy_model, write_samples
from qdebug.cli import main
from qdebug.cli.terminal import render_bisect
from qdebug.graph.model import ModelGraph
from qdebug.inputs.dataset import load_dataset
from qdebug.quant.scheme import QuantConfig, QuantScheme
from qdebug.results.vendor import PatchedFile
from qdebug.runners.sim import SimBackend
from qdebug.search.driver import run_bisect
from qdebug.search.evaluate import TensorTargetEvaluator
from qdebug.search.target import parse_target

BIG = 1000.0  # the Concat's first part is BIG * x: one int8 grid of +/-BIG*max|x| erases its second part x
C, S = 4, 8


def _hidden_model() -> onnx.ModelProto:
    """x -> m = BIG*x; t = Concat(m, x); out = Conv(t, ones): the output is BIG*sum(x) + sum(x), so the lost x
    part of t costs the output little (~ 1/BIG of its signal), while t's part x fails any SNR bound."""
    inits = [numpy_helper.from_array(np.array(BIG, np.float32), "big"),
             numpy_helper.from_array(np.ones((1, 2 * C, 1, 1), np.float32), "w")]
    nodes = [helper.make_node("Mul", ["x", "big"], ["m"], name="mul"),
             helper.make_node("Concat", ["m", "x"], ["t"], name="cat", axis=1),
             helper.make_node("Conv", ["t", "w"], ["out"], name="conv")]
    g = helper.make_graph(nodes, "hidden", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, S, S])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, S, S])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@pytest.fixture(scope="module")
def hidden(tmp_path_factory):
    d = tmp_path_factory.mktemp("hidden")
    p = d / "hidden.onnx"
    onnx.save(_hidden_model(), str(p))
    data = d / "data"
    data.mkdir()
    rng = np.random.default_rng(3)
    for k in range(4):
        np.save(data / f"s{k}.npy", rng.normal(size=(1, C, S, S)).astype(np.float32))
    return p, data


def _run_hidden(hidden, cut_path: str):
    g = ModelGraph.load(hidden[0])
    ds = load_dataset(hidden[1], g)
    return g, run_bisect(g, ds, QuantConfig(), SimBackend(), "out:snr_db>=80", cut_path=cut_path,
                         cut_threshold="snr_db>=20")


def test_truncation_finds_a_failure_the_output_hides(hidden):
    xs = np.concatenate([np.load(p).ravel() for p in sorted(hidden[1].iterdir())])
    # by hand: t's int8 step 2*BIG*max|x|/255 exceeds twice max|x|, so every value of the x part rounds to 0
    # (SNR 0 dB < 20), while the output keeps BIG*sum(x) (its error ~ 1/BIG of the signal: far above 20 dB)
    assert 2 * BIG * np.abs(xs).max() / 255 > 2 * np.abs(xs).max()
    g, doc = _run_hidden(hidden, "truncation")
    cut = doc.first_bad_cut
    assert cut.tensor == "t" and cut.part is not None and cut.value is not None and cut.value < 20
    assert cut.probes[0]["tensor"] == "out" and not cut.probes[0]["fails"]  # the output alone said "none"
    _, one = _run_hidden(hidden, "one-pass")  # the independent path: every tensor scanned
    assert one.first_bad_cut.tensor == "t"
    n_cuts = len(g.activation_tensors())  # m, t, out
    assert n_cuts == 3
    assert cut.evaluations <= math.ceil(math.log2(n_cuts)) + 2
    # item 4: the count includes the cut probes, so the bound includes the cut search's ceil(log2 N) + 2
    c = doc.counts
    assert c.evaluations == c.search_evaluations + c.cut_evaluations and c.cut_evaluations == cut.evaluations
    n = c.candidates
    search_bound = 2 * max(1, math.ceil(math.log2(n))) + len(doc.result.set) + 2
    assert c.bound == search_bound + math.ceil(math.log2(n_cuts)) + 2
    assert c.evaluations <= c.bound
    assert one.counts.bound == 2 * max(1, math.ceil(math.log2(one.counts.candidates))) + len(one.result.set) + 2


def test_terminal_counts_and_empty_patched_file(hidden):
    _, doc = _run_hidden(hidden, "truncation")
    doc.patched_file = PatchedFile(path="q.promoted.onnx", source="q.onnx", format="onnx-qdq", changed=[],
                                   notes=[])
    con = Console(record=True, width=200)
    render_bisect(doc, con)
    text = con.export_text()
    c = doc.counts
    assert f"{c.search_evaluations} search + {c.cut_evaluations} first-bad-cut probe(s)" in text
    assert "(changed: )" not in text and "nothing changed" in text


PCT = QuantScheme(calibrator="percentile", percentile=99.9)
BOTH_T = "out_clip:snr_db>=15 and out_wide:snr_db>=18"


def test_remedies_before_is_the_run_as_given(tmp_path):
    p = tmp_path / "both.onnx"
    onnx.save(make_remedy_model(), str(p))
    data = write_samples(tmp_path / "data")
    g = ModelGraph.load(p)
    ds = load_dataset(data, g)
    doc = run_bisect(g, ds, QuantConfig(scheme=PCT), SimBackend(), BOTH_T, remedies=True)
    kinds = [r.kind for r in doc.result.remedies]
    assert kinds == ["calibration", "precision"]  # the precision search ran on top of a calibration
    be = SimBackend()  # the baseline recomputed with a fresh backend and evaluator (no shared cache)
    be.prepare(g, QuantConfig(scheme=PCT), list(ds))
    base = TensorTargetEvaluator(g, list(ds), be, parse_target(BOTH_T, g, {})).evaluate(QuantConfig(scheme=PCT))
    for k, v in base.values.items():
        assert doc.result.before[k] == pytest.approx(v, rel=1e-4, abs=1e-4)
        assert doc.result.remedies[0].before[k] == pytest.approx(v, rel=1e-4, abs=1e-4)
    # each remedy's before is the previous one's after; the last after is the result's after
    assert doc.result.remedies[1].before == doc.result.remedies[0].after
    assert doc.result.remedies[-1].after == doc.result.after


def test_output_without_file_to_patch_one_message(hidden, capsys):
    for extra in ([], ["--format", "rknn"]):
        rc = main(["bisect", str(hidden[0]), "--data", str(hidden[1]), "-o", str(hidden[0].parent / "x.txt"),
                   *extra])
        err = capsys.readouterr().err
        assert rc == 2 and "-o needs a vendor file to patch" in err
        assert "or --format rknn" not in err  # the old fix that led to the other refusal
        assert f"--calib {'rknn' if extra else 'FORMAT'}:FILE" in err and "--backend rknn" in err


def test_calib_table_on_an_input_refused_before_work(hidden, monkeypatch, capsys):
    import qdebug.search.driver as driver

    def no_search(*a, **k):
        raise AssertionError("the search ran before the output check")

    monkeypatch.setattr(driver, "run_bisect", no_search)
    rc = main(["bisect", str(hidden[0]), "--data", str(hidden[1]), "--remedies", "--calib-table", str(hidden[0])])
    err = capsys.readouterr().err
    assert rc == 2 and "--calib-table" in err and "refusing to overwrite an input" in err


def test_task_default_target_marked_and_plan_files_named(fx, tmp_path, capsys):
    out = tmp_path / "plan"
    js = tmp_path / "b.json"
    rc = main(["bisect", str(fx["yolov8"]), "--data", str(fx["images"]), "--task", "yolov8", "--remedies",
               "-o", str(out), "--json", str(js), "--report", str(tmp_path / "rep")])
    text = capsys.readouterr().out
    doc = json.loads(js.read_text())
    assert rc in (0, 1)
    assert doc["target"]["assumed_default"] is True
    assert "(assumed default)" in text
    kinds = [r["kind"] for r in doc["result"]["remedies"]]
    assert "split" in kinds  # the fixture's decode tail (tests/test_remedies.py::test_decode_tail_split)
    files = doc["remedy_search"]["split"]["files"]
    assert sorted(files) == sorted(str(out / f"yolov8.{k}.onnx") for k in ("npu", "post"))
    lines = text.splitlines()
    for f in files:  # one "wrote" line per file of the plan
        assert f"wrote {f}" in lines
    # the detection table's after-run is the plan (a head split is no promotion), not "promoted"
    rows = [ln.split()[0] for ln in lines if ln.split()[:1] in (["quantized"], ["plan"], ["promoted"])]
    assert "plan" in rows and "promoted" not in rows
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"| plan ({' + '.join(kinds)}) |" in md and "\n| promoted" not in md


def test_split_without_output_says_how_to_get_the_models(fx, capsys):
    rc = main(["bisect", str(fx["yolov8"]), "--data", str(fx["images"]), "--remedies"])
    text = " ".join(capsys.readouterr().out.split())
    assert rc in (0, 1)
    assert "the split models (yolov8.npu.onnx, yolov8.post.onnx) were not written: pass -o DIR" in text


def test_quantized_empty_set_writes_nothing(hidden, tmp_path, capsys):
    quant = pytest.importorskip("onnxruntime.quantization")
    xs = [np.load(p) for p in sorted(hidden[1].iterdir())]

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": x} for x in xs])

        def get_next(self):
            return next(self.it, None)

    q = tmp_path / "q.onnx"
    quant.quantize_static(str(hidden[0]), str(q), Reader(), quant_format=quant.QuantFormat.QDQ)
    out = tmp_path / "promoted.onnx"
    # snr_db >= 0: any quantization keeps more signal than noise on the BIG*sum(x) output, so the baseline meets
    # the target and the set is empty
    rc = main(["bisect", str(hidden[0]), "--quantized", str(q), "--data", str(hidden[1]), "--target",
               "out:snr_db>=0", "-o", str(out)])
    cap = capsys.readouterr()
    assert rc == 0 and not out.exists()
    assert "(changed: )" not in cap.out and f"wrote {out}" not in cap.out.splitlines()
    assert "nothing to promote" in " ".join(cap.err.split())
