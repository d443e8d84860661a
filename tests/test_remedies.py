"""bisect --remedies: calibration, head split and precision searched in cost order (issue #17).

Fixtures: fixtures/remedy_models.py (clip branch, wide branch, both) and make_yolov8 (decode tail).
Expected values come from the fixture's construction (outlier magnitude, WIDE ratio) or independent
re-evaluations with a fresh backend, never from the module under test.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fixtures.remedy_models import OUTLIER, WIDE, make_remedy_model, make_samples, write_samples
from qdebug.cli import main
from qdebug.graph.model import ModelGraph
from qdebug.inputs.dataset import load_dataset
from qdebug.quant.scheme import Precision, QuantConfig, QuantScheme
from qdebug.results.schema import validate_result
from qdebug.runners.sim import SimBackend
from qdebug.search.calib_remedy import RangeChoice
from qdebug.search.driver import run_bisect
from qdebug.search.evaluate import Evaluator, Score, TensorTargetEvaluator
from qdebug.search.remedies import Plan, RemedySearch, calibration_bound, config_from_remedies
from qdebug.search.split import HeadSplit
from qdebug.search.target import parse_target

PCT = QuantScheme(calibrator="percentile", percentile=99.9)
CLIP_T = "out_clip:snr_db>=15"
WIDE_T = "out_wide:snr_db>=18"


@pytest.fixture(scope="module")
def rm(tmp_path_factory):
    d = tmp_path_factory.mktemp("rm")
    paths = {"data": write_samples(d / "data")}
    for name, kw in (("clip", {"wide": False}), ("wide", {"clip": False}), ("both", {})):
        paths[name] = d / f"{name}.onnx"
        onnx.save(make_remedy_model(**kw), str(paths[name]))
    return paths


def _run(rm, name, target, remedies=True, pinned=None, scheme=PCT):
    g = ModelGraph.load(rm[name])
    ds = load_dataset(rm["data"], g)
    return g, ds, run_bisect(g, ds, QuantConfig(scheme=scheme), SimBackend(), target, remedies=remedies,
                             pinned=pinned)


def _independent(g, ds, target, cfg):
    """A fresh backend and evaluator judge a config (no cache shared with the search)."""
    be = SimBackend()
    be.prepare(g, QuantConfig(scheme=PCT), list(ds))
    return TensorTargetEvaluator(g, list(ds), be, parse_target(target, g, {})).evaluate(cfg)


def test_clip_model_calibration_fixes_it(rm):
    g, ds, doc = _run(rm, "clip", CLIP_T)
    res = doc.result
    assert res.met and res.set == []
    assert [r.kind for r in res.remedies] == ["calibration"]
    cal = res.remedies[0]
    # the input carries +/-OUTLIER in 2 of 8*32*32 values per sample: 99.9% percentile clips them (by hand:
    # 2/8192 = 0.024% < 0.05% per tail), the remedy's range for x keeps them (within 10%)
    xs = np.concatenate([x.ravel() for x in make_samples()])
    assert np.percentile(xs, 99.95) < OUTLIER / 4
    assert "x" in cal.changed and cal.detail["ranges"]["x"]["new"][1] >= OUTLIER * 0.9
    assert cal.detail["ranges"]["x"]["old"][1] < OUTLIER / 4
    base = QuantConfig(scheme=PCT)
    assert not _independent(g, ds, CLIP_T, base).passed
    assert _independent(g, ds, CLIP_T, config_from_remedies(base, res.remedies, Precision.INT16)).passed
    assert doc.counts.evaluations <= doc.counts.bound
    assert "no decode tail" in doc.remedy_search.skipped["split"]


def test_clip_model_promotion_only_names_clipping(rm):
    _, _, doc = _run(rm, "clip", CLIP_T, remedies=False)
    assert not doc.result.met
    assert "clipping" in doc.result.message and "not quantization precision" not in doc.result.message


def test_wide_model_needs_precision(rm):
    g, ds, doc = _run(rm, "wide", WIDE_T)
    res = doc.result
    # a = Conv_A(x) spans +/-WIDE*|x_1|: an int8 step of 2*WIDE*4/255 > 1 erases the unit channels, and
    # Conv_B's row [1/WIDE, .., 1] rounds 1/WIDE to 0 on an int8 weight grid: both ops need 16 bits
    xs = np.stack([x[0, 1] for x in make_samples()])
    assert 2 * WIDE * np.abs(xs).max() / 255 > 1.0
    assert res.met and sorted(res.set) == ["/wide/A", "/wide/B"]
    assert [r.kind for r in res.remedies] == ["precision"]
    base = QuantConfig(scheme=PCT)
    for only in ("/wide/A", "/wide/B"):
        assert not _independent(g, ds, WIDE_T, base.with_overrides({only: Precision.INT16})).passed
    assert doc.counts.evaluations <= doc.counts.bound


def test_combination_calibration_plus_precision(rm):
    g, ds, doc = _run(rm, "both", f"{CLIP_T} and {WIDE_T}")
    res = doc.result
    assert res.met and sorted(res.set) == ["/wide/A", "/wide/B"]
    assert [r.kind for r in res.remedies] == ["calibration", "precision"]
    assert "x" in res.remedies[0].changed
    base = QuantConfig(scheme=PCT)
    target = f"{CLIP_T} and {WIDE_T}"
    assert _independent(g, ds, target, config_from_remedies(base, res.remedies, Precision.INT16)).passed
    assert not _independent(g, ds, target, config_from_remedies(base, res.remedies[:1], Precision.INT16)).passed
    assert not _independent(g, ds, target, config_from_remedies(base, res.remedies[1:], Precision.INT16)).passed
    assert doc.counts.evaluations <= doc.counts.bound
    validate_result(json.loads(json.dumps(doc.to_json())))


def test_pinned_ops_never_candidates(rm):
    _, _, doc = _run(rm, "wide", WIDE_T, pinned={"/wide/A"})
    assert "/wide/A" not in [r.op for r in doc.ranking]
    assert all("/wide/A" not in e.promoted for e in doc.evaluations)
    assert not doc.result.met and "pinned by you: /wide/A" in doc.result.message


def test_pinned_fp32_does_not_lead_ranking(rm, tmp_path):
    out = tmp_path / "b.json"
    rc = main(["bisect", str(rm["wide"]), "--data", str(rm["data"]), "--target", WIDE_T, "--calibrator",
               "percentile", "--percentile", "99.9", "--override", "/wide/B=fp32", "--json", str(out), "-q"])
    doc = json.loads(out.read_text())
    assert "/wide/B" not in [r["op"] for r in doc["ranking"]]
    assert rc == 0 and doc["result"]["set"] == ["/wide/A"]


def test_unreachable_target_names_closest_plan(rm):
    _, _, doc = _run(rm, "clip", "out_clip:snr_db>=80")
    msg = doc.result.message
    assert not doc.result.met
    assert msg.startswith("no remedy meets the target; closest plan:") and "limited by:" in msg
    best = max(doc.evaluations, key=lambda e: e.margin)
    assert f"{best.margin:.3g}" in msg


def test_decode_tail_split(fx, tmp_path):
    out = tmp_path / "plan"
    js = tmp_path / "y.json"
    rc = main(["bisect", str(fx["yolov8"]), "--data", str(fx["images"]), "--remedies", "-o", str(out),
               "--json", str(js), "-q"])
    doc = json.loads(js.read_text())
    assert rc == 0 and doc["result"]["met"] and doc["result"]["set"] == []
    assert [r["kind"] for r in doc["result"]["remedies"]] == ["split"]
    sp = doc["remedy_search"]["split"]
    heads = sorted(f"/model.22/{b}.{i}/{b}.{i}.2/Conv_output_0" for b in ("cv2", "cv3") for i in range(3))
    assert sorted(sp["boundary"]) == heads and sp["proof"]["passed"]
    npu = onnx.load(str(out / "yolov8.npu.onnx"))
    post = onnx.load(str(out / "yolov8.post.onnx"))
    assert {n.name for n in post.graph.node} == set(sp["tail"])
    assert not {n.name for n in npu.graph.node} & set(sp["tail"])
    # float equality, recomputed here with onnxruntime on the original and the two parts
    full = ort.InferenceSession(str(fx["yolov8"]))
    s_npu, s_post = ort.InferenceSession(str(out / "yolov8.npu.onnx")), ort.InferenceSession(
        str(out / "yolov8.post.onnx"))
    g = ModelGraph.load(fx["yolov8"])
    for sample in list(load_dataset(fx["images"], g))[:3]:
        ref = full.run(None, sample)[0]
        mid = dict(zip([o.name for o in s_npu.get_outputs()], s_npu.run(None, sample), strict=True))
        got = s_post.run(None, {i.name: mid[i.name] for i in s_post.get_inputs()})[0]
        assert np.max(np.abs(ref - got)) <= 1e-5 * np.max(np.abs(ref))


class Scripted(Evaluator):
    """Passes iff range k1 is pinned and op o5 is at int16; margin = -(missing conditions)."""

    def __init__(self, float_passes: bool = True) -> None:
        self.target = parse_target("y:snr_db>=1", _one_node_graph(), {})
        self.calls: list[QuantConfig] = []
        self.float_passes = float_passes

    def evaluate(self, config: QuantConfig) -> Score:
        self.calls.append(config)
        if self.float_passes and config.overrides.get("o7") == Precision.FP32:
            return Score({"y:snr_db>=1": 99.0}, True, 98.0)
        miss = int("k1" not in config.act_params) + int(config.overrides.get("o5") != Precision.INT16)
        if not self.float_passes:
            miss += 1
        return Score({"y:snr_db>=1": 1.0 - miss}, miss == 0, -float(miss))


def _one_node_graph():
    from onnx import TensorProto, helper

    n = helper.make_node("Relu", ["x"], ["y"], name="r")
    g = helper.make_graph([n], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return ModelGraph(helper.make_model(g))


def _choices(keys):
    return [RangeChoice(k, k, "op", "minmax", (-1.0, 1.0), (-2.0, 2.0), 1.0, 0.5) for k in keys]


def test_scripted_search_order_and_bound():
    ev = Scripted()
    best, unclipped = _choices(["k1", "k2", "k3", "k4"]), _choices(["k1", "k2"])
    split = HeadSplit(["t1", "t2"], ["b"], ["t2"], "tail")
    rs = RemedySearch(ev, QuantConfig(), Precision.INT16, (best, unclipped), split,
                      all_ops=[f"o{i}" for i in range(1, 9)])
    ranked = ["o1", "o2", "o3", "o4", "o5", "o6", "o8"]  # o7 only switches the scripted float check
    out = rs.run(ranked, set(), pinned={"o2"})
    purposes = [r.purpose for r in out.records]
    # cost order: baseline, calibration variants, head split, split + calibration variants, then precision
    assert purposes[:6] == ["baseline", "calibration", "calibration", "head split", "split + calibration",
                            "split + calibration"]
    assert out.plan == Plan(tuple(best[:1]), False, ("o5",))
    assert all("o2" not in r.promoted for r in out.records)
    # by hand: precision on top of "calibration best" (margin ties broken by the earliest); 6 candidates
    # (o2 pinned): all-promoted 1, prefix probes 2 (3 -> fail, 4 -> pass), pruning of [o1,o3,o4,o5]: drop o5
    # = prefix 3 (cached), drop o4 pass, o3 pass, o1 pass = 3 -> 6; bound 2*ceil(log2 6) + |{o5}| + 2 = 9.
    # (a prefix of 4 is pruned directly: 3 <= ceil(log2 4) + 1, the window bisection would not pay off)
    # calibration: 4 variant probes + prefix 1 (pass) + prefix 0 (fail) = 6; bound 2*(1+1) + ceil(log2 5) = 7
    assert out.info.precision_evaluations == 6 and out.info.precision_bound == 9
    assert out.info.calibration_evaluations == 6 and out.info.calibration_bound == calibration_bound(2, True, 4) == 7
    assert len(out.records) == 1 + 1 + 6 + 6 + 1  # baseline + split + calibration + precision + 1 attribution
    assert len(ev.calls) == len(out.records)  # every evaluation ran once (cache)


def test_scripted_float_limit_message():
    ev = Scripted(float_passes=False)
    rs = RemedySearch(ev, QuantConfig(), Precision.INT16, ([], []), None, "no decode tail: test",
                      all_ops=["o1", "o5"])
    out = rs.run(["o1", "o5"], set(), pinned=set())
    assert not out.search.met
    assert "tighter than float allows" in out.search.message
    assert out.info.skipped == {"split": "no decode tail: test", "calibration": out.info.skipped["calibration"]}
