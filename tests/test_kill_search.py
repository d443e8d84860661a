"""Mutation-audit kills for the search: clause operators and margins, the cut threshold, and the promotion
search (prefix bisection + greedy pruning) driven by a scripted evaluator whose verdict is a known function
of the promoted set, so every evaluated set and the minimal set are derived by hand.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.search.bisect import PromotionSearch, first_bad_cut_one_pass
from qdebug.search.evaluate import Evaluator, Score
from qdebug.search.target import Clause, Target, parse_target


def _graph():
    """The three attributes parse_target reads: outputs, producers and inputs."""
    return SimpleNamespace(outputs=[SimpleNamespace(name="out")], producer={"out": None, "mid": None},
                           inputs=[SimpleNamespace(name="x")])


@pytest.mark.parametrize("op, value, passed, margin", [
    ("<", 0.4, True, 0.1), ("<", 0.5, False, 0.0), ("<", 0.7, False, -0.2),
    ("<=", 0.5, True, 0.0), ("<=", 0.6, False, -0.1),
    (">", 0.6, True, 0.1), (">", 0.5, False, 0.0),
    (">=", 0.5, True, 0.0), (">=", 0.3, False, -0.2),
])
def test_clause_check_and_margin(op, value, passed, margin):
    c = Clause("out", None, "max_abs", op, 0.5)
    assert c.check(value) is passed
    assert c.margin(value) == pytest.approx(margin, abs=1e-12)


def test_clause_undefined_value_fails():
    c = Clause("out", None, "snr_db", ">=", 30.0)
    assert c.check(None) is False and c.check(math.nan) is False
    assert c.margin(None) == -math.inf


def test_parse_target_operators():
    t = parse_target("out:max_abs<0.25 and mid:rel_l2<=0.1 and out:snr_db>30", _graph())
    assert [(c.tensor, c.metric, c.op, c.bound) for c in t.clauses] == [
        ("out", "max_abs", "<", 0.25), ("mid", "rel_l2", "<=", 0.1), ("out", "snr_db", ">", 30.0)]


def test_cut_threshold_is_the_loosest_snr_bound():
    t = parse_target("out:snr_db>=30 and mid:snr_db>=12 and out:cosine>=0.99", _graph())
    assert t.cut_threshold() == ("snr_db", ">=", 12.0)
    assert parse_target("out:cosine>=0.99", _graph()).cut_threshold() == ("snr_db", ">=", 20.0)
    assert Target(t.clauses, cut=("cosine", ">=", 0.9)).cut_threshold() == ("cosine", ">=", 0.9)


class Scripted(Evaluator):
    """Passes iff every op of `needed` is promoted; margin = -(number of needed ops missing)."""

    def __init__(self, needed: set[str]) -> None:
        self.needed = needed
        self.target = Target((Clause("out", None, "cosine", ">=", 0.0),))
        self.calls: list[tuple[str, ...]] = []

    def evaluate(self, config: QuantConfig) -> Score:
        got = set(config.overrides)
        assert all(p == Precision.INT16 for p in config.overrides.values())
        self.calls.append(tuple(sorted(got)))
        missing = len(self.needed - got)
        return Score({}, missing == 0, float(-missing))


def test_score_margin_is_the_worst_clause():
    ev = Scripted(set())
    ev.target = Target((Clause("out", None, "snr_db", ">=", 30.0), Clause("out", None, "max_abs", "<", 1.0)))
    s = ev.score({"out:snr_db>=30": 35.0, "out:max_abs<1": 1.5})
    assert s.passed is False and s.margin == pytest.approx(-0.5)


def test_search_prunes_to_the_minimal_set():
    ev = Scripted({"a", "c"})
    res = PromotionSearch(ev, QuantConfig()).run(["a", "b", "c", "d", "e"])
    # baseline fails; all five pass; prefix bisection lo=0, hi=5: [a,b] fails, [a,b,c] passes -> hi=3;
    # pruning from the back: drop c -> [a,b] fails (cached), drop b -> [a,c] passes, drop a -> [c] fails
    assert res.after.passed and res.best is not None and res.best.promoted == ("a", "c")
    assert res.met and res.promoted == ["a", "c"]
    assert [(r.purpose, r.promoted) for r in res.evaluations] == [
        ("baseline", ()), ("all-promoted", ("a", "b", "c", "d", "e")), ("prefix", ("a", "b")),
        ("prefix", ("a", "b", "c")), ("prune", ("a", "c")), ("prune", ("c",))]  # the final check of [a,c] is the cached prune run
    assert len(ev.calls) == len(set(ev.calls))  # no set evaluated twice


def test_search_single_late_op():
    ev = Scripted({"f"})
    res = PromotionSearch(ev, QuantConfig()).run(list("abcdefgh"))
    # prefixes: 4 [a..d] fails, 6 [a..f] passes, 5 [a..e] fails -> hi = 6; pruning keeps only f
    assert res.promoted == ["f"]
    assert [r.promoted for r in res.evaluations if r.purpose == "prefix"] == [
        tuple("abcd"), tuple("abcdef"), tuple("abcde")]


def test_search_met_without_promotion_and_impossible():
    ok = PromotionSearch(Scripted(set()), QuantConfig()).run(["a", "b"])
    assert ok.met and ok.promoted == [] and len(ok.evaluations) == 1
    bad = PromotionSearch(Scripted({"z"}), QuantConfig()).run(["a", "b"])
    assert not bad.met and bad.promoted == []
    assert "not quantization precision" in bad.message


def test_default_target_is_cosine_0999_per_output_or_part():
    t = parse_target(None, _graph())
    assert t.assumed and [(c.tensor, c.part, c.metric, c.op, c.bound) for c in t.clauses] == [
        ("out", None, "cosine", ">=", 0.999)]
    t = parse_target("", _graph(), parts={"out": ["box", "score"]})
    assert [(c.ref, c.metric, c.op, c.bound) for c in t.clauses] == [
        ("out.box", "cosine", ">=", 0.999), ("out.score", "cosine", ">=", 0.999)]


def _row(tensor, index, snr):
    return SimpleNamespace(tensor=tensor, node=f"n_{tensor}", op_type="Conv", index=index,
                           cumulative={"snr_db": snr})


def test_first_bad_cut_skips_graph_inputs_and_uses_the_loosest_bound():
    cmp = SimpleNamespace(parts=[], tensors=[_row("x", -1, 5.0), _row("c", 0, 25.0), _row("d", 1, 15.0),
                                             _row("e", 2, 10.0)])
    # default cut: snr_db >= 20 -> x is an input (skipped), c passes, d fails
    cut = first_bad_cut_one_pass(cmp, parse_target("out:cosine>=0.99", _graph()))
    assert (cut.tensor, cut.index, cut.value, cut.bound) == ("d", 1, 15.0, 20.0)
    # bounds 30 and 12: the cut uses 12 -> c and d pass, e fails
    cut = first_bad_cut_one_pass(cmp, parse_target("out:snr_db>=30 and mid:snr_db>=12", _graph()))
    assert (cut.tensor, cut.bound) == ("e", 12.0)
    cut = first_bad_cut_one_pass(SimpleNamespace(parts=[], tensors=cmp.tensors[:2]),
                                 parse_target("out:cosine>=0.99", _graph()))
    assert cut.tensor is None
