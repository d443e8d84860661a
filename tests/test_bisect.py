"""bisect on the fixtures: first bad cut, minimal set, necessity of each member, evaluation bound."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qdebug.cli import main
from qdebug.errors import QDebugError
from qdebug.graph.model import ModelGraph
from qdebug.graph.parts import concat_parts
from qdebug.inputs.dataset import load_dataset
from qdebug.quant.scheme import Precision, QuantConfig, QuantScheme
from qdebug.runners.sim import SimBackend
from qdebug.search.bisect import PromotionSearch
from qdebug.search.driver import evaluation_bound, run_bisect
from qdebug.search.evaluate import TensorTargetEvaluator
from qdebug.search.target import parse_target

TAIL = {"/model.22/Mul_2", "/model.22/Concat_5", "/model.22/Concat_4", "/model.22/Sigmoid"}


def _setup(fx, profile="generic", model="yolov8"):
    g = ModelGraph.load(fx[model])
    ds = load_dataset(fx["images"], g)
    return g, ds, SimBackend(profile), QuantConfig(scheme=QuantScheme(profile=profile))


def _independent_pass(g, ds, profile, target_expr, promoted):
    """Re-evaluate a promotion set with a fresh backend and evaluator (no shared cache)."""
    be = SimBackend(profile)
    base = QuantConfig(scheme=QuantScheme(profile=profile))
    be.prepare(g, base, list(ds))
    parts = {t: [s.name for s in ss] for t, ss in concat_parts(g, ["output0"]).items()}
    ev = TensorTargetEvaluator(g, list(ds), be, parse_target(target_expr, g, parts))
    return ev.evaluate(base.with_overrides({k: Precision.INT16 for k in promoted})).passed


@pytest.fixture(scope="module")
def default_run(fx):
    g, ds, be, cfg = _setup(fx)
    return g, ds, run_bisect(g, ds, cfg, be, None)


def test_default_target_finds_final_concat(default_run):
    g, ds, doc = default_run
    assert doc.target.assumed_default is True
    res = doc.result
    assert res.met and res.set == ["/model.22/Concat_5"]
    assert doc.first_bad_cut.node in TAIL and doc.first_bad_cut.path == "one-pass"
    c = doc.counts
    assert c.evaluations <= evaluation_bound(c.candidates, len(res.set)) == c.bound
    assert c.evaluations < c.naive_evaluations
    target = doc.target.expression
    assert _independent_pass(g, ds, "generic", target, res.set)
    assert not _independent_pass(g, ds, "generic", target, [])
    # the verification run is a full comparison with the set applied
    after = doc.compare_after
    assert after.quant.overrides == {"/model.22/Concat_5": "int16"}
    score = next(p for p in after.outputs[0].parts if p.part == "score")
    assert score.cumulative.cosine >= 0.999


def test_stride_mul_needed_for_box_target_hisi(fx):
    target = "output0.score:snr_db>=25 and output0.box:snr_db>=36"
    g, ds, be, cfg = _setup(fx, "hisi")
    doc = run_bisect(g, ds, cfg, be, target)
    res = doc.result
    assert res.met, res.message
    assert "/model.22/Mul_2" in res.set and len(res.set) <= 3
    assert doc.counts.evaluations <= doc.counts.bound
    assert _independent_pass(g, ds, "hisi", target, res.set)
    for member in res.set:  # each member is necessary
        assert not _independent_pass(g, ds, "hisi", target, [m for m in res.set if m != member]), member


def test_truncation_path_agrees_with_one_pass(fx, default_run):
    g, ds, be, cfg = _setup(fx)
    doc = run_bisect(g, ds, cfg, be, None, cut_path="truncation")
    cut = doc.first_bad_cut
    assert cut.path == "truncation" and cut.evaluations <= 2 + int(np.ceil(np.log2(len(g.nodes))))
    assert cut.tensor == default_run[2].first_bad_cut.tensor


def test_benign_model_needs_no_promotion(fx, tmp_path):
    g = ModelGraph.load(fx["benign"])
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        np.save(d / f"{i}.npy", rng.uniform(0, 1, size=(1, 3, 16, 16)).astype(np.float32))
    doc = run_bisect(g, load_dataset(d, g), QuantConfig(), SimBackend("generic"), "logits:cosine>=0.99")
    assert doc.result.met and doc.result.set == []
    assert doc.counts.evaluations == 1


def test_impossible_target_reports_plainly(fx, tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(["bisect", str(fx["yolov8"]), "--data", str(fx["images"]), "--samples", "2",
               "--target", "output0:snr_db>=200", "--json", str(out), "-q"])
    assert rc == 1
    doc = json.loads(out.read_text())
    assert not doc["result"]["met"] and "not quantization precision" in doc["result"]["message"]
    assert doc["result"]["best"] is not None


def test_deterministic_and_cached(fx):
    g, ds, be, cfg = _setup(fx)
    target = "output0.score:snr_db>=25"
    a = run_bisect(g, ds, cfg, be, target)
    b = run_bisect(g, ds, cfg, SimBackend("generic"), target)
    assert a.result.set == b.result.set
    assert [e.promoted for e in a.evaluations] == [e.promoted for e in b.evaluations]
    sets = [tuple(e.promoted) for e in a.evaluations]
    assert len(sets) == len(set(sets))  # no configuration evaluated twice


def test_search_cache_reuses_results(fx):
    g, ds, be, cfg = _setup(fx)
    be.prepare(g, cfg, list(ds))
    ev = TensorTargetEvaluator(g, list(ds), be, parse_target("output0:cosine>=0.9", g, {}))
    s = PromotionSearch(ev, cfg)
    r1 = s.evaluate(["/model.22/Mul_2"], "x")
    r2 = s.evaluate(["/model.22/Mul_2"], "y")
    assert r1 is r2 and len(s.records) == 1


@pytest.mark.parametrize("expr,msg", [
    ("output0.score:snr>=3", "unknown metric"),
    ("nope:cosine>=0.9", "unknown output or tensor"),
    ("output0.bogus:cosine>=0.9", "has no part 'bogus'"),
    ("output0:cosine=>0.9", "cannot parse"),
    ("foo_metric>=0.9", "not a task metric"),
])
def test_bad_targets(fx, expr, msg):
    g = ModelGraph.load(fx["yolov8"])
    parts = {t: [s.name for s in ss] for t, ss in concat_parts(g, ["output0"]).items()}
    with pytest.raises(QDebugError, match=msg):
        parse_target(expr, g, parts)


def test_bad_target_cli_exit_code(fx, capsys):
    rc = main(["bisect", str(fx["yolov8"]), "--data", str(fx["images"]), "--target", "outputX:cosine>=0.9", "-q"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "--target" in err and "output0" in err


def test_hazard_ops_tried_when_all_promoted_misses():
    """A judge whose all-promoted build is worse than the hazard ops alone (seen with rknn-toolkit2)."""
    from qdebug.search.evaluate import Evaluator, Score

    class Judge(Evaluator):
        target = None

        def evaluate(self, config):
            promoted = {k for k, v in config.overrides.items() if v == Precision.INT16}
            ok = "hz" in promoted and len(promoted) < 5
            return Score({"t": 1.0 if ok else 0.0}, ok, 0.0 if ok else -1.0)

    ranked = ["hz", "a", "b", "c", "d", "e", "f"]
    res = PromotionSearch(Judge(), QuantConfig()).run(ranked, priority=1)
    assert res.met and res.promoted == ["hz"]
    assert [r.purpose for r in res.evaluations][:3] == ["baseline", "all-promoted", "hazard-ops"]
