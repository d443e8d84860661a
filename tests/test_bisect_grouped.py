"""Grouped pruning (issue #17 round 3): a long passing window is cut by halves/quarters before single members,
so the search ends on a smaller set within the same bound 2*ceil(log2 N) + |set| + 2."""

from __future__ import annotations

import itertools

from onnx import TensorProto, helper

from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.search.bisect import PromotionSearch
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


def test_grouped_pruning_reaches_the_exhaustive_minimum_where_singles_stop():
    ranked = [f"o{i}" for i in range(32)]
    groups = [{"o3"}, {"o20"}]
    old_ev, new_ev = HitEvery(groups), HitEvery(groups)
    old = PromotionSearch(old_ev, QuantConfig()).run(ranked)
    s = PromotionSearch(new_ev, QuantConfig())
    s.grouped = True
    new = s.run(ranked)
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
    old = PromotionSearch(old_ev, QuantConfig()).run(ranked)
    s = PromotionSearch(new_ev, QuantConfig())
    s.grouped = True
    new = s.run(ranked)
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
    plain = PromotionSearch(a, QuantConfig()).run(ranked)
    s = PromotionSearch(b, QuantConfig())
    s.grouped = True
    grouped = s.run(ranked)
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
