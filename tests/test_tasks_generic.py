"""Task verdicts beyond detection (issue #15): classify, embedding and ctc scorers, their CLI wiring
(compare section, bisect targets, report), and the one-line errors of bad input.

Expected numbers are derived by hand in each test (closed forms, hand-decoded label sequences, vectors
placed so that int8 rounding merges two of them); models are tiny Gemm/MatMul graphs built here.
"""

from __future__ import annotations

import argparse
import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdebug.cli import main
from qdebug.cli.options import TaskOptions, check_target_task
from qdebug.errors import QDebugError
from qdebug.results.compare import CompareResult
from qdebug.results.schema import first_error
from qdebug.results.task import TaskResult
from qdebug.tasks import metric_task, task_metrics_in
from qdebug.tasks.classify import ClassifyScorer
from qdebug.tasks.ctc import CtcScorer, edit_distance, greedy_decode
from qdebug.tasks.embedding import EmbeddingScorer


def _feed(scorer, fl, qu, out="y"):
    scorer.reset()
    for k, (f, q) in enumerate(zip(fl, qu, strict=True)):
        scorer.update({out: np.asarray(f, np.float32)}, {out: np.asarray(q, np.float32)}, f"s{k}")
    return scorer.result()


def _bound(scorer, out="y"):
    scorer.bind([(out, [1, None])])
    return scorer


# --------------------------------------------------------------------------- classify
def test_classify_top1_and_kl_by_hand():
    # 4 samples, the quantized argmax differs in one (logits 2,1,0 -> 1,2,0): top-1 3/4.
    fl = [[[2.0, 1.0, 0.0]], [[0.0, 3.0, 1.0]], [[1.0, 0.0, 5.0]], [[4.0, 0.0, 0.0]]]
    qu = [[[1.0, 2.0, 0.0]], [[0.0, 3.0, 1.0]], [[1.0, 0.0, 5.0]], [[4.0, 0.0, 0.0]]]
    run = _feed(_bound(ClassifyScorer()), fl, qu)
    assert run.metrics["top1_agreement"] == 0.75
    assert run.metrics["top5_agreement"] == 1.0  # 3 classes: the float class is always in the top-3
    # sample 0: both logit vectors are permutations, so their log-sum-exps cancel and
    # KL = sum p_i (f_i - q_i) = p0 - p1 = (e^2 - e) / (e^2 + e + 1); the other samples are identical
    e = math.e
    kl0 = (e ** 2 - e) / (e ** 2 + e + 1)
    assert run.metrics["kl_mean"] == pytest.approx(kl0 / 4, rel=1e-5)
    assert [r["quant_top1"] for r in run.per_sample] == [1, 1, 2, 0]


def test_classify_probabilities_used_as_they_are():
    # rows >= 0 summing to 1: no softmax. KL([.5,.25,.25] || [.25,.5,.25]) = .5 ln 2 + .25 ln .5 = .25 ln 2
    sc = _bound(ClassifyScorer())
    run = _feed(sc, [[[0.5, 0.25, 0.25]]], [[[0.25, 0.5, 0.25]]])
    assert sc.settings() == {"read_as": "probabilities"}
    assert run.metrics["kl_mean"] == pytest.approx(0.25 * math.log(2), rel=1e-5)
    assert run.metrics["top1_agreement"] == 0.0


def test_classify_top5_misses_when_float_class_drops_out():
    # 7 classes; quantized ranks the float class (0) sixth in sample 0, second in sample 1
    f = [[[9, 1, 2, 3, 4, 5, 6]]] * 2
    q0 = [[1.5, 1, 2, 3, 4, 5, 6]]
    q1 = [[5.5, 1, 2, 3, 4, 5, 6]]
    run = _feed(_bound(ClassifyScorer()), f, [q0, q1])
    assert run.metrics["top1_agreement"] == 0.0
    assert run.metrics["top5_agreement"] == 0.5


def test_classify_batched_rows_count_as_samples():
    f = np.array([[3.0, 0.0], [0.0, 3.0]])
    q = np.array([[3.0, 0.0], [3.0, 0.0]])
    run = _feed(_bound(ClassifyScorer()), [f], [q])
    assert run.samples == 2 and run.metrics["top1_agreement"] == 0.5
    assert [r["sample"] for r in run.per_sample] == ["s0#0", "s0#1"]


def test_classify_output_choice():
    outs = [("a", [1, 10]), ("b", [1, 10])]
    with pytest.raises(QDebugError, match="--task-output"):
        ClassifyScorer().bind(outs)
    assert ClassifyScorer("b").bind(outs) == "b"
    assert ClassifyScorer().bind([("feat", [1, 8, 4, 4]), ("logits", [1, 10])]) == "logits"  # the only 2-D one
    with pytest.raises(QDebugError, match="not a graph output"):
        ClassifyScorer("c").bind(outs)


# --------------------------------------------------------------------------- embedding
def test_embedding_cosine_and_nn_agreement_by_hand():
    # C = [.8,.199] is A's nearest in float (smaller angle to [1,0] than B = [.8,.2]); quantized, C lands on B,
    # so A's two candidates tie and the lowest index (B) wins: A flips, B/C/D keep theirs -> 3/4.
    A, B, C, D = [1.0, 0.0], [0.8, 0.2], [0.8, 0.199], [0.0, 1.0]
    run = _feed(_bound(EmbeddingScorer()), [[A], [B], [C], [D]], [[A], [B], [B], [D]])
    assert run.metrics["nn_agreement"] == 0.75
    cos_c = (0.8 * 0.8 + 0.199 * 0.2) / (math.hypot(0.8, 0.199) * math.hypot(0.8, 0.2))
    assert run.metrics["embedding_cos_min"] == pytest.approx(cos_c, abs=1e-6)
    assert run.metrics["embedding_cos_mean"] == pytest.approx((3 + cos_c) / 4, abs=1e-6)
    assert [(r["nn_float"], r["nn_quant"]) for r in run.per_sample][0] == ("s2", "s1")


def test_embedding_rotated_sample_cosine():
    # quantized sample 2 is [1,0] rotated to [.6,.8]: cosine exactly 0.6
    f = [[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]]
    q = [[[1.0, 0.0]], [[0.0, 1.0]], [[0.6, 0.8]]]
    run = _feed(_bound(EmbeddingScorer()), f, q)
    assert run.metrics["embedding_cos_min"] == pytest.approx(0.6, abs=1e-6)


def test_embedding_needs_three_samples():
    with pytest.raises(QDebugError, match="at least 3 samples"):
        EmbeddingScorer().check_samples(2)


# --------------------------------------------------------------------------- ctc
def _frames(path, c=4):
    return np.eye(c, dtype=np.float32)[path]


def test_ctc_greedy_decode_and_edit_distance_by_hand():
    assert greedy_decode(_frames([1, 1, 0, 1, 2, 2])) == [1, 1, 2]  # repeat, blank, repeat again
    assert greedy_decode(_frames([0, 3, 3, 0, 0])) == [3]
    assert greedy_decode(_frames([1, 1, 0, 1, 2, 2]), blank=1) == [0, 2]
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], [1, 2]) == 2


def test_ctc_scores_by_hand():
    # sample 0: float [1,1,2], quantized [1,1,2,3] (one insertion over 4 labels); sample 1 unchanged
    f = [_frames([1, 1, 0, 1, 2, 2])[None], _frames([3, 0, 2])[None]]
    q = [_frames([1, 0, 0, 1, 2, 3])[None], _frames([3, 0, 2])[None]]
    sc = CtcScorer()
    sc.bind([("y", [1, None, 4])])
    run = _feed(sc, f, q)
    assert run.metrics["ctc_agreement"] == 0.5
    assert run.metrics["ctc_edit_distance"] == pytest.approx((1 / 4 + 0) / 2)
    assert run.per_sample[0]["float"] == [1, 1, 2] and run.per_sample[0]["quant"] == [1, 1, 2, 3]
    assert sc.settings()["layout"] == "ntc"


def test_ctc_layouts():
    fr = _frames([1, 0, 2])  # [T=3, C=4]
    tnc = fr[:, None, :]  # [T, N=1, C]
    sc = CtcScorer()
    sc.bind([("y", None)])
    run = _feed(sc, [tnc], [tnc])
    assert sc.layout == "tnc" and run.per_sample[0]["float"] == [1, 2]
    two = np.stack([_frames([1, 2]), _frames([3, 3])])  # [2, 2, 4]: N or T first?
    sc = CtcScorer()
    sc.bind([("y", None)])
    with pytest.raises(QDebugError, match="--ctc-layout"):
        _feed(sc, [two], [two])
    sc = CtcScorer(layout="tnc")
    sc.bind([("y", None)])
    run = _feed(sc, [two], [two])  # T first: sequence 0 is steps (1, 3), sequence 1 is (2, 3)
    assert [r["float"] for r in run.per_sample] == [[1, 3], [2, 3]]
    with pytest.raises(QDebugError, match="--blank"):
        sc = CtcScorer(blank=7)
        sc.bind([("y", None)])
        _feed(sc, [fr], [fr])


# --------------------------------------------------------------------------- registration and targets
def _args(**kw):
    base = {"task": None, "target": None, "labels": None}
    return argparse.Namespace(**{**base, **kw})


def test_metrics_belong_to_their_task():
    assert metric_task("top1_agreement") == "classify"
    assert metric_task("nn_agreement") == "embedding"
    assert metric_task("ctc_edit_distance") == "ctc"
    assert metric_task("map50_95_vs_float") == "detection"
    assert task_metrics_in("top1_agreement>=0.98 and y:cosine>=0.9") == ["top1_agreement"]


@pytest.mark.parametrize("task,target,names", [
    (None, "top1_agreement>=0.98", "--task classify"),
    ("embedding", "top1_agreement>=0.98", "--task classify"),
    ("classify", "nn_agreement>=0.9", "--task embedding"),
    ("yolov8", "ctc_agreement>=0.9", "--task ctc"),
    ("classify", "map50_95_vs_float>=0.9", "--task yolov8"),
])
def test_target_of_another_task_names_the_right_task(task, target, names):
    with pytest.raises(QDebugError) as exc:
        check_target_task(_args(task=task, target=target))
    assert names in str(exc.value) and "\n" not in str(exc.value)


def test_target_of_the_given_task_passes():
    check_target_task(_args(task="classify", target="top1_agreement>=0.98 and kl_mean<=0.01"))
    check_target_task(_args(task="ctc", target="ctc_agreement>=0.9"))


def test_task_options_refuse_other_kinds():
    with pytest.raises(QDebugError, match="--blank"):
        TaskOptions(task="classify", blank=1).scorer()
    with pytest.raises(QDebugError, match="--task-output"):
        TaskOptions(task="yolov8", task_output="y").scorer()
    with pytest.raises(QDebugError, match="--anchors"):
        TaskOptions(task="embedding", anchors="1,2").scorer()
    assert TaskOptions(task="classify").decoder() is None
    assert isinstance(TaskOptions(task="ctc", blank=2).scorer(), CtcScorer)


# --------------------------------------------------------------------------- CLI on models built here
def _model(path: Path, op: str, w: np.ndarray, in_shape, out_shape, out="y", b: np.ndarray | None = None,
           extra_out: bool = False) -> Path:
    inits = [numpy_helper.from_array(w.astype(np.float32), "W")]
    ins = ["x", "W"]
    if b is not None:
        inits.append(numpy_helper.from_array(b.astype(np.float32), "B"))
        ins.append("B")
    nodes = [helper.make_node(op, ins, [out], name="fc")]
    outs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)]
    if extra_out:  # a second 2-D output: the classifier output is ambiguous
        nodes.append(helper.make_node("Relu", [out], ["y2"], name="relu"))
        outs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, out_shape))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)], outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _data(d: Path, rows) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rows):
        np.save(d / f"s{i}.npy", np.asarray(r, np.float32)[None])
    return d


@pytest.fixture(scope="module")
def cls_env(tmp_path_factory):
    """A Gemm classifier (logits = [x0, x1, 0.1]) and 4 inputs in [0, 1].

    int8 steps of the input and the logits are 1/255: sample 0 = [0.4, 0.401] sits inside one step (0.4 * 255 =
    102.0, 0.401 * 255 = 102.3), so quantized its two logits tie and the argmax moves from class 1 to class 0;
    the other samples differ by >= 0.5. int16 (step 1/65535) keeps them apart.
    """
    d = tmp_path_factory.mktemp("cls")
    w = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    model = _model(d / "cls.onnx", "Gemm", w, [1, 2], [1, 3], "logits", b=np.array([0, 0, 0.1]))
    data = _data(d / "data", [[0.4, 0.401], [1.0, 0.0], [0.0, 1.0], [0.7, 0.2]])
    return d, model, data


def test_cli_compare_classify_section(cls_env, capsys):
    d, model, data = cls_env
    out = d / "c.json"
    assert main(["compare", str(model), "--data", str(data), "--task", "classify", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Task verdict" in text and "75.0%" in text
    # the per-sample lines say which run they describe, right above them
    lines = text.splitlines()
    k = next(i for i, ln in enumerate(lines) if "→" in ln and ln.startswith("  "))
    assert lines[k - 1] == "samples that moved most (quantized run):"
    assert max(len(line) for line in text.splitlines() if "top-1" in line or "Task verdict" in line) <= 80
    doc = json.loads(out.read_text())
    t = doc["task"]
    assert t["task"] == "classify" and t["output"] == "logits" and t["settings"]["read_as"] == "logits"
    assert t["quantized"]["metrics"]["top1_agreement"] == 0.75
    assert t["quantized"]["metrics"]["top5_agreement"] == 1.0
    assert 0 <= t["quantized"]["metrics"]["kl_mean"] < 1e-3  # the tie moves ~1e-3 of logit: a tiny KL
    schema = json.loads(resources.files("qdebug.results").joinpath("schemas", "task-1.json").read_text())
    assert first_error(t, schema) is None
    assert first_error({**t, "task": "nope"}, schema) is not None  # the schema can fail
    assert CompareResult.from_json(doc).task.to_json() == t
    assert main(["report", str(out), "-o", str(d / "rep")]) == 0
    md = (d / "rep" / "report.md").read_text()
    assert "## Task verdict" in md and "class 1 → 0" in md


def test_cli_bisect_top1_target(cls_env):
    d, model, data = cls_env
    out = d / "b.json"
    rc = main(["bisect", str(model), "--data", str(data), "--task", "classify", "--target",
               "top1_agreement>=0.98", "--json", str(out), "-q"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["result"]["met"] is True
    assert doc["result"]["before"]["top1_agreement>=0.98"] == 0.75
    assert doc["result"]["after"]["top1_agreement>=0.98"] == 1.0
    t = TaskResult.from_json(doc["task"])
    assert t.quantized.metrics["top1_agreement"] == 0.75 and t.promoted.metrics["top1_agreement"] == 1.0
    assert set(t.promoted.overrides) == set(doc["result"]["set"])


def test_cli_embedding_compare_and_bisect(tmp_path):
    # identity Gemm; the vectors of test_embedding_cosine_and_nn_agreement_by_hand: 0.199 * 255 = 50.7 rounds to
    # 51 = 0.2 * 255, so int8 merges C into B and sample A's nearest neighbour flips (3 of 4 agree)
    model = _model(tmp_path / "emb.onnx", "Gemm", np.eye(2, dtype=np.float32), [1, 2], [1, 2], "emb")
    data = _data(tmp_path / "data", [[1.0, 0.0], [0.8, 0.2], [0.8, 0.199], [0.0, 1.0]])
    out = tmp_path / "e.json"
    assert main(["compare", str(model), "--data", str(data), "--task", "embedding", "--json", str(out), "-q"]) == 0
    m = json.loads(out.read_text())["task"]["quantized"]["metrics"]
    assert m["nn_agreement"] == 0.75 and m["embedding_cos_min"] > 0.9999
    out = tmp_path / "b.json"
    rc = main(["bisect", str(model), "--data", str(data), "--task", "embedding", "--target", "nn_agreement>=1",
               "--json", str(out), "-q"])
    doc = json.loads(out.read_text())
    assert rc == 0 and doc["task"]["promoted"]["metrics"]["nn_agreement"] == 1.0


def test_cli_ctc_compare(tmp_path):
    # identity MatMul over [1, T=4, C=3] frames. Sample 0's step 2 is [0.4, 0.401, 0]: int8 ties it, the argmax
    # falls to the blank (index 0), and the decoding [1, 1, 2] loses a label -> [1, 2] (edit 1 of 3)
    model = _model(tmp_path / "ctc.onnx", "MatMul", np.eye(3, dtype=np.float32), [1, 4, 3], [1, 4, 3])
    s0 = [[0, 1, 0], [1, 0, 0], [0.4, 0.401, 0], [0, 0, 1]]
    s1 = [[0, 0, 1], [0, 0, 1], [1, 0, 0], [0, 1, 0]]
    s2 = [[0, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]]
    data = _data(tmp_path / "data", [s0, s1, s2])
    out = tmp_path / "c.json"
    assert main(["compare", str(model), "--data", str(data), "--task", "ctc", "--json", str(out), "-q"]) == 0
    t = json.loads(out.read_text())["task"]
    assert t["settings"]["layout"] == "ntc"
    assert [r["float"] for r in t["quantized"]["per_sample"]] == [[1, 1, 2], [2, 1], [1, 2, 1]]
    assert t["quantized"]["per_sample"][0]["quant"] == [1, 2]
    assert t["quantized"]["metrics"]["ctc_agreement"] == pytest.approx(2 / 3, abs=1e-6)
    assert t["quantized"]["metrics"]["ctc_edit_distance"] == pytest.approx(1 / 9, abs=1e-6)


def test_cli_bad_inputs(tmp_path, capsys):
    model = _model(tmp_path / "two.onnx", "Gemm", np.eye(2, dtype=np.float32), [1, 2], [1, 2], extra_out=True)
    data = _data(tmp_path / "data", [[1.0, 0.0], [0.0, 1.0]])
    assert main(["compare", str(model), "--data", str(data), "--task", "classify", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--task-output" in err and "y2" in err and len(err.splitlines()) == 1
    assert main(["compare", str(model), "--data", str(data), "--task", "embedding", "--task-output", "y",
                 "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "at least 3 samples" in err and "has 2" in err and len(err.splitlines()) == 1
    assert main(["bisect", str(model), "--data", str(data), "--task", "classify", "--task-output", "y",
                 "--target", "nn_agreement>=0.9", "-q"]) == 2
    assert "--task embedding" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["arrays", "in-graph"])
def test_collector_in_compare_loop_matches_separate_passes(cls_env, engine):
    """The compare hook (both engines) gives the same scores as float and quantized passes run on their own."""
    from qdebug.compare.stage import run_compare
    from qdebug.graph.model import ModelGraph
    from qdebug.inputs.dataset import load_dataset
    from qdebug.quant.scheme import QuantConfig, QuantScheme
    from qdebug.runners.sim import SimBackend
    from qdebug.tasks.task_evaluator import TaskCollector, run_task

    _, model, data = cls_env
    graph = ModelGraph.load(str(model))
    ds = load_dataset(str(data), graph, None, None, None)
    cfg, backend = QuantConfig(scheme=QuantScheme()), SimBackend("generic")
    coll = TaskCollector(graph, ds, ClassifyScorer())
    run_compare(graph, ds, cfg, backend, on_sample=coll.add, engine=engine)
    hooked = run_task(graph, ds, backend, cfg, coll.scorer, collector=coll)
    separate = run_task(graph, ds, backend, cfg, ClassifyScorer())
    assert coll.count == 4 and hooked.quantized.metrics == separate.quantized.metrics
    assert hooked.quantized.metrics["top1_agreement"] == 0.75
