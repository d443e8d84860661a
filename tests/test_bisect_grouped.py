"""Grouped pruning (issue #17 round 3; plain bisect too since round 4): a long passing window is cut by
halves/quarters before single members, so the search ends on a smaller set within the same bound
2*ceil(log2 N) + |set| + 2. `grouped = False` is the single-member pruning before it, kept for comparison."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qdebug.graph.model import ModelGraph
from qdebug.inputs.dataset import load_dataset
from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.runners.sim import SimBackend
from qdebug.search.bisect import PromotionSearch
from qdebug.search.driver import run_bisect
from qdebug.search.evaluate import Evaluator, Score
from qdebug.search.remedies import Plan, RemedySearch
from qdebug.search.target import parse_target


def _graph() -> ModelGraph:
    n = helper.make_node("Relu", ["x"], ["y"], name="r")
    g = helper.make_graph([n], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return ModelGraph(helper.make_model(g))


class HitEvery(Evaluator):
    """Passes iff the promoted set holds at least one op of every group (a step metric: fail/pass only)."""

    def __init__(self, groups: list[set[str]]) -> None:
        self.target = parse_target("y:snr_db>=1", _graph(), {})
        self.groups = groups
        self.calls = 0

    def passes(self, promoted: set[str]) -> bool:
        return all(promoted & g for g in self.groups)

    def evaluate(self, config: QuantConfig) -> Score:
        self.calls += 1
        ok = self.passes({k for k, p in config.overrides.items() if p == Precision.INT16})
        return Score({"y:snr_db>=1": 1.0 if ok else 0.0}, ok, 0.0 if ok else -1.0)


def _exhaustive_min(ev: HitEvery, ops: list[str], limit: int = 4) -> int:
    """Smallest passing subset of `ops`, by trying every subset up to `limit` members (independent of bisect)."""
    for k in range(1, limit + 1):
        if any(ev.passes(set(c)) for c in itertools.combinations(ops, k)):
            return k
    return limit + 1


def _bound(n: int, found: int) -> int:
    return 2 * max(1, (n - 1).bit_length()) + found + 2


def _single(ev: Evaluator) -> PromotionSearch:
    """The search with single-member pruning only (plain bisect before issue #17 round 4)."""
    s = PromotionSearch(ev, QuantConfig())
    s.grouped = False
    return s


def test_grouped_pruning_reaches_the_exhaustive_minimum_where_singles_stop():
    ranked = [f"o{i}" for i in range(32)]
    groups = [{"o3"}, {"o20"}]
    old_ev, new_ev = HitEvery(groups), HitEvery(groups)
    old = _single(old_ev).run(ranked)
    new = PromotionSearch(new_ev, QuantConfig()).run(ranked)  # the default: grouped
    assert old.met and new.met
    # by hand: prefix [o0..o20] (u = 7), window [o3..o20] (u = 12), 18 members; singles can drop 9 before the
    # bound (u + 1 <= 12 + |set| - 1) -> 9 ops; grouped: drop o19..o12 (pass), o11..o4 (pass) -> {o3, o20}
    assert len(old.promoted) == 9 and "may not be minimal" in old.message
    assert sorted(new.promoted) == ["o20", "o3"]
    assert len(new.promoted) == _exhaustive_min(new_ev, ranked) == 2
    assert new_ev.calls == 14 <= _bound(32, len(new.promoted))
    assert old_ev.calls <= _bound(32, len(old.promoted))


def test_grouped_pruning_with_alternatives_stays_within_bound_and_beats_singles():
    # non-additive: o5 or o6 fixes one thing, o14 another, o25 or o26 a third
    ranked = [f"o{i}" for i in range(40)]
    groups = [{"o5", "o6"}, {"o14"}, {"o25", "o26"}]
    old_ev, new_ev = HitEvery(groups), HitEvery(groups)
    old = _single(old_ev).run(ranked)
    new = PromotionSearch(new_ev, QuantConfig()).run(ranked)
    best = _exhaustive_min(new_ev, ranked)
    assert best == 3 and new.met and new_ev.passes(set(new.promoted))
    assert len(new.promoted) < len(old.promoted)
    assert len(new.promoted) <= best + 1  # within one op of the exhaustive minimum
    assert new_ev.calls <= _bound(40, len(new.promoted)) and len(new.evaluations) == new_ev.calls


def test_remedy_search_uses_grouped_pruning():
    ranked = [f"o{i}" for i in range(32)]
    ev = HitEvery([{"o3"}, {"o20"}])
    out = RemedySearch(ev, QuantConfig(), Precision.INT16, ([], []), None, "no tail").run(ranked, set(), set())
    assert sorted(out.plan.promoted) == ["o20", "o3"]
    assert out.info.precision_evaluations <= out.info.precision_bound == _bound(32, 2)
    assert any(r.purpose == "prune group" for r in out.records)


def test_short_windows_unchanged_by_grouping():
    # singles fit the bound here, so grouping never runs (same trials as the plain search)
    ranked = [f"o{i}" for i in range(16)]
    a, b = HitEvery([{"o2"}, {"o3"}]), HitEvery([{"o2"}, {"o3"}])
    plain = _single(a).run(ranked)
    grouped = PromotionSearch(b, QuantConfig()).run(ranked)
    assert plain.promoted == grouped.promoted == ["o2", "o3"] and a.calls == b.calls
    assert not any(r.purpose == "prune group" for r in grouped.evaluations)


class CalibOnly(Evaluator):
    """Passes iff tensor k1's range is re-calibrated and k3's is not (re-ranging k3 hurts, as a clipping choice
    downstream of the error can)."""

    def __init__(self) -> None:
        self.target = parse_target("y:snr_db>=1", _graph(), {})
        self.calls = 0

    def evaluate(self, config: QuantConfig) -> Score:
        self.calls += 1
        ok = "k1" in config.act_params and "k3" not in config.act_params
        return Score({"y:snr_db>=1": 1.0 if ok else 0.0}, ok, 0.0 if ok else -1.0)


def test_upstream_calibration_variant_is_tried_first():
    from qdebug.search.calib_remedy import RangeChoice

    best = [RangeChoice(k, k, f"o{k[1]}", "minmax", (-1.0, 1.0), (-2.0, 2.0), 1.0, 0.5)
            for k in ("k1", "k2", "k3", "k4")]
    ev = CalibOnly()
    rs = RemedySearch(ev, QuantConfig(), Precision.INT16, (best, []), None, "no tail", upstream={"o1", "o2"})
    assert [n for n, _ in rs.variants] == ["upstream of the first bad cut", "per-tensor best"]
    out = rs.run(["o1", "o2", "o3", "o4"], set(), set())
    # by hand: baseline fails (1); the upstream variant [k1, k2] passes (2); its prefix [k1] passes (3); the
    # final plan [k1] is cached. The per-tensor best (k3 re-ranged: fails) is never needed.
    assert out.search.met and [c.key for c in out.plan.calib] == ["k1"] and not out.plan.promoted
    assert ev.calls == 3 and "upstream" in out.info.trials[1].plan
    # without the cut, the same search tries the per-tensor best (fails) and finds no calibration-only plan
    ev2 = CalibOnly()
    rs2 = RemedySearch(ev2, QuantConfig(), Precision.INT16, (best, []), None, "no tail")
    assert [n for n, _ in rs2.variants] == ["per-tensor best"]
    assert not rs2.evaluate(Plan(tuple(best)), "calibration").score.passed


def _chain(n: int) -> onnx.ModelProto:
    """x -> n0 (Mul) -> n1 (Add) -> ... -> n{n-1} -> y: n quantized ops in a row, nothing else."""
    nodes, inits, x = [], [], "x"
    for i in range(n):
        inits.append(numpy_helper.from_array(np.array(1.0 + 0.01 * i, np.float32), f"c{i}"))
        y = "y" if i == n - 1 else f"t{i}"
        nodes.append(helper.make_node("Mul" if i % 2 == 0 else "Add", [x, f"c{i}"], [y], name=f"n{i}"))
        x = y
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_plain_bisect_uses_grouped_pruning_and_stays_within_bound(tmp_path):
    # plain `qdebug bisect` (run_bisect without remedies) on a 32-op chain where exactly n3 and n20 must be
    # promoted: the set is the brute-force minimum over the candidates, and the count stays within the bound
    onnx.save(_chain(32), str(tmp_path / "chain.onnx"))
    (tmp_path / "data").mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        np.save(tmp_path / "data" / f"s{k}.npy", rng.normal(size=(1, 4)).astype(np.float32))
    g = ModelGraph.load(str(tmp_path / "chain.onnx"))
    ev = HitEvery([{"n3"}, {"n20"}])
    doc = run_bisect(g, load_dataset(str(tmp_path / "data"), g), QuantConfig(), SimBackend(), "y:snr_db>=1",
                     evaluator=ev)
    cands = [r.op for r in doc.ranking]
    assert len(cands) == 33  # the input's quantization and the 32 ops
    assert doc.result.met and sorted(doc.result.set) == ["n20", "n3"]
    assert _exhaustive_min(ev, cands, limit=2) == len(doc.result.set)
    assert any(e.purpose == "prune group" for e in doc.evaluations)
    assert doc.counts.evaluations == ev.calls <= doc.counts.bound == _bound(33, 2)
