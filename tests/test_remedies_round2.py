"""Issue #17 round 2: ranges written into vendor files, the calibration table, the precision part within its
bound (window + bounded pruning), promoted ops' 16-bit ranges, the entropy calibrator.

Expected numbers are derived by hand in the comments (scale = levels / (max - min), offset/zero point =
round(qmin - min * scale)) or by an independent implementation written here (the KL threshold search).
"""

from __future__ import annotations

import itertools
import json
import math
import struct

import numpy as np
import pytest

from fixtures.remedy_models import make_remedy_model
from fixtures.vendor import make_hisi_calibration, make_rknn_cfg, model_ranges
from qdebug.errors import FormatError
from qdebug.formats.base import load_vendor_file
from qdebug.formats.calib_table import CalibTable, render_table
from qdebug.formats.hisi import HisiCalibration
from qdebug.formats.rknn2 import RknnQuantCfg
from qdebug.graph.model import ModelGraph
from qdebug.quant.calibrate import BINS, EntropyCalibrator
from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.search.bisect import PromotionSearch
from qdebug.search.calib_remedy import RangeChoice
from qdebug.search.evaluate import Evaluator, Score
from qdebug.search.remedies import Plan, RemedySearch
from qdebug.search.target import parse_target


@pytest.fixture(scope="module")
def model():
    m = make_remedy_model()
    return m, ModelGraph(m), model_ranges(m)


def _outside_lines(a: str, b: str) -> list[tuple[str, str]]:
    """Line pairs that differ (the texts keep their line count when only values change)."""
    la, lb = a.splitlines(True), b.splitlines(True)
    assert len(la) == len(lb)
    return [(x, y) for x, y in zip(la, lb, strict=True) if x != y]


# ------------------------------------------------------------ HiSilicon ranges
def test_hisi_write_ranges_hand_values(model):
    m, g, r = model
    vf = HisiCalibration.parse(make_hisi_calibration(m, r))
    pr = vf.write_ranges({"/clip/Q:0": (-1.0, 3.0), "a": {"tensor": "a", "new": [-2.0, 6.0]}, "x": (0.0, 2.0)}, g)
    # S8 (-1, 3): scale 255/4 = 63.75, offset round(-128 + 63.75) = round(-64.25) = -64
    # S8 (-2, 6) on /wide/B's input a: scale 255/8 = 31.875, offset round(-128 + 2*31.875) = -64
    # U8 image record x (0, 2): scale 255/2 = 127.5, offset -128 kept (the signed-domain shift)
    new = HisiCalibration.parse(pr.text)
    q, b, x = new.by_name("/clip/Q")[0].inputs[0], new.by_name("/wide/B")[0].inputs[0], new.by_name("x")[0].inputs[0]
    assert (q.scale, q.offset) == ([63.75], [-64])
    assert (b.scale, b.offset) == ([31.875], [-64])
    assert (x.scale, x.offset) == ([127.5], [-128])
    assert sorted(pr.changed) == ["/clip/Q", "/wide/B", "x"]
    diff = _outside_lines(vf.text, pr.text)  # only those values moved: 2 lines each for S8, 1 for the U8 record
    assert len(diff) == 5 and all(("scale" in a and "scale" in b) or ("offset" in a and "offset" in b)
                                  for a, b in diff)
    for name in ("/clip/P", "/wide/A"):  # untouched records byte-identical
        assert vf.record_text(vf.by_name(name)[0]) == new.record_text(new.by_name(name)[0])


def test_hisi_write_ranges_16bit_record(model):
    m, g, r = model
    vf = HisiCalibration.parse(make_hisi_calibration(m, r, bits=16))
    pr = vf.write_ranges({"/clip/Q:0": (-2.0, 6.0)}, g)
    # S16 (-2, 6): scale 65535/8 = 8191.875, offset round(-32768 + 2*8191.875) = round(-16384.25) = -16384
    f = HisiCalibration.parse(pr.text).by_name("/clip/Q")[0].inputs[0]
    assert (f.scale, f.offset) == ([8191.875], [-16384])


def test_hisi_write_ranges_notes_unknown_and_refuses_bad_range(model):
    m, g, r = model
    vf = HisiCalibration.parse(make_hisi_calibration(m, r))
    pr = vf.write_ranges({"nosuch": (0.0, 1.0)}, g)
    assert pr.text == vf.text and pr.changed == [] and "no input record" in pr.notes[0]
    with pytest.raises(FormatError, match="invalid range"):
        vf.write_ranges({"/clip/Q:0": (3.0, -1.0)}, g)


# ---------------------------------------------------------------- RKNN ranges
def test_rknn_write_ranges_hand_values_after_promotion(model):
    m, g, r = model
    cf = RknnQuantCfg.parse(make_rknn_cfg(m, r))
    promoted = RknnQuantCfg.parse(cf.promote(["/wide/A"], Precision.INT16, graph=g).text)
    pr = promoted.write_ranges({"p": (-1.0, 3.0), "out_clip": (-1.0, 1.0), "nosuch": (0.0, 1.0)}, g)
    new = RknnQuantCfg.parse(pr.text)
    # asym int8 (-1, 3): scale 4/255, zero point round(-128 + 1/(4/255)) = round(-64.25) = -64
    p = new.params["p"]
    assert (p.min, p.max, p.zero_point) == ([-1.0], [3.0], [-64]) and p.scale[0] == pytest.approx(4 / 255, rel=1e-15)
    # a float graph output is written through its int8 twin (the toolkit's quantized copy): (-1, 1) gives
    # scale 2/255, zero point round(-128 + 127.5) = round(-0.5) = 0 (half to even)
    tw = new.params["out_clip_int8"]
    assert (tw.min, tw.max, tw.zero_point) == ([-1.0], [1.0], [0]) and tw.scale[0] == pytest.approx(2 / 255)
    assert new.params["out_clip"] == promoted.params["out_clip"]  # the float entry itself is kept
    assert pr.changed == ["p", "out_clip_int8"] and any("nosuch" in n for n in pr.notes)
    assert new.custom == promoted.custom  # custom_quantize_layers untouched (the promotion stays)
    diff = _outside_lines(promoted.text, pr.text)
    assert len(diff) == 8 and all(a.split("-")[0] == b.split("-")[0] for a, b in diff)  # 8 values, same layout
    keep = set(new.params) - {"p", "out_clip_int8"}
    assert {k: new.params[k] for k in keep} == {k: promoted.params[k] for k in keep}


# ------------------------------------------------------------ calibration table
def test_calib_table_trt_and_json(tmp_path):
    # TensorRT cache: scale = max(|min|, |max|) / 127 = 3/127, written as the float32's big-endian bits
    text = render_table({"t1": (-1.0, 3.0)}, trt=True)
    want = np.array([3 / 127], dtype=">f4").tobytes().hex()
    assert text == f"TRT-8601-EntropyCalibration2\nt1: {want}\n"
    (tmp_path / "c.cache").write_text(text)
    vf = load_vendor_file(str(tmp_path / "c.cache"))  # auto-detected
    assert isinstance(vf, CalibTable) and vf.ranges["t1"][1] == pytest.approx(3.0, rel=1e-6)
    js = json.loads(render_table({"t1": (-1.0, 3.0)}))
    assert js == {"t1": {"min": -1.0, "max": 3.0, "scale": 4 / 255}}
    pr = CalibTable.parse(json.dumps(js)).write_ranges({"t2": {"tensor": "t2", "new": [0.0, 1.0]}})
    assert json.loads(pr.text)["t2"] == {"min": 0.0, "max": 1.0, "scale": 1 / 255} and pr.changed == ["t2"]
    with pytest.raises(FormatError, match="carries ranges, not precisions"):
        vf.promote(["n"], Precision.INT16)
    assert struct.unpack(">f", bytes.fromhex(want))[0] == pytest.approx(3 / 127, rel=1e-7)


# --------------------------------------------------- precision part within bound
class NeedAll(Evaluator):
    """Passes iff every op of `needed` is at int16 (an exact, monotone script)."""

    def __init__(self, needed: set[str]) -> None:
        self.target = parse_target("y:snr_db>=1", _one_node_graph(), {})
        self.needed = needed
        self.calls = 0

    def evaluate(self, config: QuantConfig) -> Score:
        self.calls += 1
        miss = sum(config.overrides.get(k) != Precision.INT16 for k in self.needed)
        return Score({"y:snr_db>=1": 1.0 - miss}, miss == 0, -float(miss))


def _one_node_graph():
    from onnx import TensorProto, helper

    n = helper.make_node("Relu", ["x"], ["y"], name="r")
    gr = helper.make_graph([n], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return ModelGraph(helper.make_model(gr))


def _smallest_passing(needed: set[str], ops: list[str], limit: int = 4) -> set[str] | None:
    """Brute force, independent of bisect: the smallest subset of `ops` NeedAll(needed) passes on."""
    for k in range(1, limit + 1):
        for c in itertools.combinations(ops, k):
            if needed <= set(c):
                return set(c)
    return None


def test_long_prefix_stays_within_bound_and_says_not_minimal():
    ranked = [f"o{i}" for i in range(16)]
    ev = NeedAll({"o2", "o7", "o12"})
    res = PromotionSearch(ev, QuantConfig()).run(ranked)  # plain bisect: grouped pruning (issue #17 round 4)
    # by hand, L = ceil(log2 16) = 4, fixed part 2L + 2 = 10. baseline 1 + all-promoted 1; prefix: 8 fail,
    # 12 fail, 14 pass, 13 pass (4) -> [o0..o12]; window start: 6 fail, 3 fail, 1 pass, 2 pass (4) -> [o2..o12]
    # (u = 10). Groups of the 9 inner members (pruning order o11..o3; the ends o2, o12 stay), halves of 4:
    # -o11..o8 passes (u 11), -o7..o4 fails (12), -o3 passes (13) -> [o2 o4 o5 o6 o7 o12]; pairs: -o7 o6 fails
    # (14), -o5 o4 would need 15 <= 10 + 4: stop groups. Singles (u + 1 <= 10 + |set| - 1 = 15): -o7 fails
    # (15), -o6 would need 16: stop, 5 members untried.
    assert res.met and res.promoted == ["o2", "o4", "o5", "o6", "o7", "o12"]
    assert _smallest_passing(ev.needed, ranked) == {"o2", "o7", "o12"} <= set(res.promoted)
    assert ev.calls == len(res.evaluations) == 15 <= 2 * 4 + len(res.promoted) + 2
    assert "may not be minimal: 5 member(s) were not tried alone for removal" in res.message  # (groups were)
    # single-member pruning (the search before round 4) ends on the same 6 ops with one evaluation more: after
    # the window, o11 o10 o9 o8 pass (u 14), o7 fails (15), o6 passes (16), o5 would need 17 <= 15: stop
    ev1 = NeedAll({"o2", "o7", "o12"})
    single = PromotionSearch(ev1, QuantConfig())
    single.grouped = False
    old = single.run(ranked)
    assert old.promoted == ["o2", "o3", "o4", "o5", "o7", "o12"] and ev1.calls == 16 == 2 * 4 + 6 + 2
    assert "may not be minimal: 5 member(s) were not tried for removal" in old.message
    assert len(res.promoted) <= len(old.promoted)
    # the old search (prefix + prune every member) spent 1 + 1 + 4 + 12 = 18 > 2*4 + 3 + 2 = 13 here


def test_short_window_prunes_to_minimal():
    ev = NeedAll({"o2", "o3"})
    res = PromotionSearch(ev, QuantConfig()).run([f"o{i}" for i in range(16)])
    # baseline, all; prefix 8 p, 4 p, 2 f, 3 f -> [o0..o3] (u = 6); 3 members <= ceil(log2 4) + 1: no window,
    # prune from the back: o3 -> [o0..o2] cached fail, o2 fail (7), o1 pass (8), o0 pass (9) -> [o2, o3];
    # 9 evaluations <= 2*4 + 2 + 2 = 12
    assert res.promoted == ["o2", "o3"] and ev.calls == 9 and "not be minimal" not in res.message


# ----------------------------------------------------- promoted ops' 16-bit range
def test_promoted_ops_take_the_unclipped_range_at_16_bits():
    clipped = RangeChoice("t", "t", "opA", "percentile 99.9", (-8.0, 8.0), (-1.0, 1.0), 1.0, 0.5)
    wide = RangeChoice("t", "t", "opA", "minmax (16-bit)", (-8.0, 8.0), (-8.0, 8.0), 1.0, 1.0)
    rs = RemedySearch(NeedAll({"opA"}), QuantConfig(), Precision.INT16, ([clipped], [], [wide]), None, "none")
    lo, hi = rs.config(Plan((clipped,))).act_params["t"].range()
    assert hi[0] == pytest.approx(1.0, rel=0.01)  # not promoted: the calibration remedy's clipped range
    p = rs.config(Plan((clipped,), promoted=("opA",))).act_params["t"]
    lo, hi = p.range()
    # promoted: min/max (-8, 8) pinned at 16 bits (scale 16/65535), not widened from an 8-bit grid
    assert p.qmax == 32767 and p.scale[0] == pytest.approx(16 / 65535) and lo[0] <= -8.0 + 16 / 65535
    assert rs.remedies(Plan((clipped,), promoted=("opA",)))[-1].detail["ranges"]["t"]["new"] == [-8.0, 8.0]


# ------------------------------------------------------------------- entropy
def _kl_reference(hist: np.ndarray, amax: float, nq: int = 128) -> float:
    """TensorRT's entropy calibration written plainly (loops): reference P with the cut-off mass in its last
    bin, Q = P's first i bins merged into nq levels, each level's mass spread over its non-empty bins."""
    best, best_i = math.inf, len(hist)
    for i in range(nq, len(hist) + 1):
        p = [float(v) for v in hist[:i]]
        p[-1] += float(hist[i:].sum())
        step = i // nq
        q = [0.0] * i
        for j in range(nq):
            a, b = j * step, (i if j == nq - 1 else (j + 1) * step)
            nonempty = [k for k in range(a, b) if hist[k] != 0]
            for k in range(a, b):
                if p[k] != 0 and nonempty:
                    q[k] = float(hist[a:b].sum()) / len(nonempty)
        sp, sq = sum(p), sum(q)
        if sq == 0:
            continue
        kl = sum(pk / sp * math.log((pk / sp) / max(qk / sq, 1e-10)) for pk, qk in zip(p, q, strict=True) if pk)
        if kl < best:
            best, best_i = kl, i
    return (best_i + 0.5) * amax / len(hist)


def test_entropy_threshold_matches_independent_implementation():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.laplace(0.0, 1.0, 20000), [40.0, -35.0]]).astype(np.float32)  # long tail + outliers
    cal = EntropyCalibrator()
    for p in range(2):
        for chunk in np.array_split(x, 4):
            cal.observe(p, "t", chunk)
    lo, hi = cal.ranges(8)["t"]
    amax = float(np.max(np.abs(x)))
    hist = np.histogram(np.abs(x), bins=BINS, range=(0.0, amax))[0]
    thr = _kl_reference(hist, amax)
    assert hi == pytest.approx(thr, rel=1e-9) and lo == pytest.approx(-thr, rel=1e-9)
    assert thr < amax / 2  # the outliers are cut: a real search, not min/max


# ------------------------------------------------------- rknn backend + remedies
FAKE = __import__("pathlib").Path(__file__).parent.parent / "fixtures" / "fake_rknn"


def test_rknn_backend_remedies_plan_writes_cfg_with_precision_and_ranges(monkeypatch, tmp_path):
    """y = 2x; the fake toolkit returns 3x at int8 and 2x once an int16 entry is in the cfg. Percentile 90
    clips y's range in the simulator; the promoted Mul takes the unclipped min/max at 16 bits, and -o writes
    both into the toolkit's own step-1 cfg: `y: int16` and y's min/max/scale/zero_point."""
    import sys

    from test_rknn_truth import _linear

    from qdebug.cli import main

    monkeypatch.setenv("PYTHONPATH", str(FAKE))
    monkeypatch.setenv("FAKE_RKNN_ALL_TENSORS", "1")
    monkeypatch.setenv("FAKE_GAIN", "3.0")
    monkeypatch.setenv("FAKE_GAIN_PROMOTED", "2.0")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    _linear(tmp_path)  # lin.onnx (y = 2x) and three samples in npy/
    xs = [np.load(p) for p in sorted((tmp_path / "npy").glob("*.npy"))]
    out, js = tmp_path / "out.quantization.cfg", tmp_path / "b.json"
    rc = main(["bisect", str(tmp_path / "lin.onnx"), "--data", str(tmp_path / "npy"), "--backend", "rknn",
               "--rknn-python", sys.executable, "--remedies", "--calibrator", "percentile", "--percentile", "90",
               "--target", "y:snr_db>=30", "-o", str(out), "--json", str(js), "-q"])
    doc = json.loads(js.read_text())
    assert rc == 0 and doc["result"]["met"] and doc["result"]["set"] == ["mul"]
    cfg = RknnQuantCfg.parse(out.read_text())
    assert cfg.custom == {"y": "int16"}
    # y's unclipped range by hand: [0, 2 * max(x)] (0 always representable); asym int8: scale = max / 255,
    # zero point = round(-128 - 0 / scale) = -128
    hi = 2.0 * float(max(np.max(x) for x in xs))
    e = cfg.params["y"]
    assert e.min == [0.0] and e.max[0] == pytest.approx(hi, rel=1e-6) and e.zero_point == [-128]
    assert e.scale[0] == pytest.approx(hi / 255, rel=1e-6)
    assert cfg.params["x_int8"].scale == [0.00392]  # the other entry as the toolkit wrote it
    assert doc["patched_file"]["path"] == str(out) and "y" in doc["patched_file"]["changed"]


def test_cli_remedies_write_ranges_into_hisi_file_and_table(tmp_path):
    """The clip model with a HiSilicon file calibrated at percentile-like ranges (the outliers clipped): the
    calibration remedy's ranges go into the input records of -o (scale/offset re-derived by the formula in
    the test) and into --calib-table; records the plan does not touch stay byte-identical."""
    import onnx

    from fixtures.remedy_models import OUTLIER, make_samples, write_samples
    from qdebug.cli import main

    m = make_remedy_model(wide=False)
    onnx.save(m, str(tmp_path / "clip.onnx"))
    data = write_samples(tmp_path / "data")
    ranges = model_ranges(m, [{"x": x} for x in make_samples()])
    clipped = {k: (max(lo, -OUTLIER / 10), min(hi, OUTLIER / 10)) for k, (lo, hi) in ranges.items()}
    vf_text = make_hisi_calibration(m, clipped)
    (tmp_path / "cal.txt").write_text(vf_text)
    out, js, table = tmp_path / "patched.txt", tmp_path / "b.json", tmp_path / "table.json"
    rc = main(["bisect", str(tmp_path / "clip.onnx"), "--data", str(data), "--calib", f"hisi:{tmp_path / 'cal.txt'}",
               "--remedies", "--target", "out_clip:snr_db>=15", "-o", str(out), "--calib-table", str(table),
               "--json", str(js), "-q"])
    doc = json.loads(js.read_text())
    assert rc == 0 and doc["result"]["met"]
    cal = next(r for r in doc["result"]["remedies"] if r["kind"] == "calibration")
    new = HisiCalibration.parse(out.read_text())
    old = HisiCalibration.parse(vf_text)
    touched = set()
    for key, d in cal["detail"]["ranges"].items():
        op, _, j = key.rpartition(":") if ":" in key else (key, "", "0")  # a graph input's own record
        rec = new.by_name(op)[0].inputs[int(j)]
        touched.add(op)
        lo, hi = min(d["new"][0], 0.0), max(d["new"][1], 0.0)
        if rec.data_type == "U8":  # image record: the byte holds round(x * scale) in [0, 255], offset kept
            assert rec.scale[0] == pytest.approx(255.0 / hi, rel=1e-6) and rec.offset == [-128]
            continue
        scale = 255.0 / (hi - lo)  # the offset follows from the scale (ATC: q = round(x * scale) + offset)
        assert rec.data_type == "S8" and rec.scale[0] == pytest.approx(scale, rel=1e-6)
        assert rec.offset == [int(np.clip(np.round(-128 - lo * scale), -128, 127))]
    assert touched  # the clipped point's record was rewritten
    for ly in old.layers:
        if ly.name not in touched:
            assert old.record_text(ly) == new.record_text(new.by_name(ly.name)[0])
    tab = json.loads(table.read_text())
    assert {d["tensor"] for d in cal["detail"]["ranges"].values()} <= set(tab)


class NeedsFp16(Evaluator):
    """Passes iff op A is at fp16 (int16 is not enough for it) and op B at int16 or fp16."""

    def __init__(self) -> None:
        self.target = parse_target("y:snr_db>=1", _one_node_graph(), {})
        self.calls = 0

    def evaluate(self, config: QuantConfig) -> Score:
        self.calls += 1
        ok = config.overrides.get("A") == Precision.FP16 and config.overrides.get("B") in (Precision.INT16,
                                                                                           Precision.FP16)
        return Score({"y:snr_db>=1": 1.0 if ok else 0.0}, ok, 0.0 if ok else -1.0)


def test_precision_per_op_int16_first_fp16_where_int16_fails():
    ev = NeedsFp16()
    rs = RemedySearch(ev, QuantConfig(), Precision.INT16, ([], []), None, "no tail")
    out = rs.run(["A", "B", "C"], set(), pinned=set())
    # by hand: baseline 1; int16: all-promoted fails (2). fp16: all passes (3); prefix [A] fails (4), [A,B]
    # passes (5); prune: [A] cached, [B] fails (6). Per op, lowest score first: B at int16 passes (7), A at
    # int16 fails (8). Precision part 7 <= bound 2*ceil(log2 3) + 2*|set| + 4 = 12.
    assert out.search.met and out.plan.promoted == ("A", "B")
    assert out.config.overrides == {"A": Precision.FP16, "B": Precision.INT16}
    prec = out.remedies[-1]
    assert prec.detail == {"precision": "fp16", "per_op": {"B": "int16"}}
    assert ev.calls == 8 and out.info.precision_evaluations == 7 and out.info.precision_bound == 12
    assert "1 to int16, 1 to fp16" in out.search.message
    from qdebug.search.remedies import config_from_remedies

    assert config_from_remedies(QuantConfig(), out.remedies, Precision.INT16).overrides == out.config.overrides
