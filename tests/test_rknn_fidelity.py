"""The rknn profile's toolkit rules, pinned by numbers rknn-toolkit2 2.5.0 wrote (fixtures/text/rknn/):
Sigmoid inputs clamped to [-7, 7] and the clamp carried up through Concat/Reshape/Split; asymmetric
per-channel weights. No toolkit needed: the recorded .quantization.cfg entries are the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdebug.formats.rknn2 import RknnQuantCfg
from qdebug.graph.fusion import build_quant_ops
from qdebug.graph.model import ModelGraph
from qdebug.quant.profiles import get_profile
from qdebug.quant.scheme import QuantConfig, QuantScheme
from qdebug.quant.simulate import clip_sigmoid_inputs
from qdebug.runners.rknn_results import fused_away, parse_error_analysis
from qdebug.runners.sim import SimBackend

RKNN = Path(__file__).resolve().parents[1] / "fixtures" / "text" / "rknn"
H = "/model.22/"


def _model(nodes, inputs, outputs, inits=()) -> ModelGraph:
    g = helper.make_graph(nodes, "t", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return ModelGraph(m)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _w(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


# ------------------------------------------------------------------ nudenet head, recorded toolkit ranges
def _head_graph() -> ModelGraph:
    """The YOLOv8 head of nudenet's 320n.onnx with its tensor names: per level a box conv (cv2) and a class
    conv (cv3) -> Concat -> Reshape; Concat_6 over levels -> Split (box | class) -> Sigmoid on the class part."""
    nodes, inits, inputs, reshaped = [], [], [], []
    for lvl in range(3):
        cat = "Concat" if lvl == 0 else f"Concat_{lvl}"
        rs = "Reshape" if lvl == 0 else f"Reshape_{lvl}"
        f = f"f{lvl}"
        inputs.append(_vi(f, [1, 2, 2, 2]))
        for head, cout in (("cv2", 4), ("cv3", 2)):
            name = f"{H}{head}.{lvl}/{head}.{lvl}.2/Conv"
            inits.append(_w(name + "_w", np.ones((cout, 2, 1, 1))))
            nodes.append(helper.make_node("Conv", [f, name + "_w"], [name + "_output_0"], name=name))
        nodes.append(helper.make_node("Concat", [f"{H}cv2.{lvl}/cv2.{lvl}.2/Conv_output_0",
                                                 f"{H}cv3.{lvl}/cv3.{lvl}.2/Conv_output_0"],
                                      [f"{H}{cat}_output_0"], name=H + cat, axis=1))
        inits.append(helper.make_tensor(f"shape{lvl}", TensorProto.INT64, [3], [1, 6, -1]))
        nodes.append(helper.make_node("Reshape", [f"{H}{cat}_output_0", f"shape{lvl}"], [f"{H}{rs}_output_0"],
                                      name=H + rs))
        reshaped.append(f"{H}{rs}_output_0")
    nodes.append(helper.make_node("Concat", reshaped, [f"{H}Concat_6_output_0"], name=H + "Concat_6", axis=2))
    inits.append(helper.make_tensor("split", TensorProto.INT64, [2], [4, 2]))
    nodes.append(helper.make_node("Split", [f"{H}Concat_6_output_0", "split"],
                                  [f"{H}Split_1_output_0", f"{H}Split_1_output_1"], name=H + "Split_1", axis=1))
    nodes.append(helper.make_node("Sigmoid", [f"{H}Split_1_output_1"], ["score"], name=H + "Sigmoid"))
    nodes.append(helper.make_node("Relu", [f"{H}Split_1_output_0"], ["box"], name=H + "box"))
    return _model(nodes, inputs, [_vi("score", None), _vi("box", None)], inits)


def _recorded() -> dict[str, tuple[float, float, float, float]]:
    """tensor -> (ori_min, ori_max, min, max) from the toolkit's cfg (its `-rs` suffix dropped)."""
    rows = {}
    for line in (RKNN / "nudenet_320n_head_ranges.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, *vals = line.split()
            rows[name.removesuffix("-rs")] = tuple(float(v) for v in vals)
    return rows


def test_sigmoid_clamp_follows_the_toolkit_on_nudenet_head():
    rec = _recorded()
    g = _head_graph()
    ranges = {t: (r[0], r[1]) for t, r in rec.items()}
    # the Reshape holds its input's values: the toolkit lists Reshape_1 under Concat_1's range
    ranges[f"{H}Reshape_1_output_0"] = ranges[f"{H}Concat_1_output_0"]
    clip = get_profile("rknn").sigmoid_input_clip
    assert clip == 7.0
    got = clip_sigmoid_inputs(g, build_quant_ops(g, fuse=True), ranges, clip)
    for t, (_, _, tmin, tmax) in rec.items():
        lo, hi = got[t]
        # the toolkit's min/max also include 0 (asymmetric grids always hold zero), as params_from_range does
        assert (min(lo, 0.0), max(hi, 0.0)) == pytest.approx((min(tmin, 0.0), max(tmax, 0.0)), abs=1e-6), t
    # clamped: the class logits' own range -27.02 became -7; the box conv stays; nothing else moved
    assert got[f"{H}cv3.0/cv3.0.2/Conv_output_0"][0] == -7.0
    assert got[f"{H}cv2.0/cv2.0.2/Conv_output_0"] == ranges[f"{H}cv2.0/cv2.0.2/Conv_output_0"]
    assert ranges[f"{H}Concat_6_output_0"][0] < -27  # the input dict is not modified
    assert clip_sigmoid_inputs(g, build_quant_ops(g, fuse=True), ranges, get_profile("generic").sigmoid_input_clip) \
        is ranges


# ------------------------------------------------------------------ probe: calibrated end to end
def _probe() -> tuple[ModelGraph, list[dict[str, np.ndarray]]]:
    """x [-1, 1] -> a = Conv(20x | 5x), b = Conv(3x | 1x), d = Conv; Sigmoid(Concat(a, b)), Sigmoid(Relu(d)),
    Sigmoid(b): the model fixtures/text/rknn/sigmoid_clip_probe.quantization.cfg was written for."""
    nodes, inits = [], []
    for name, w in (("a", [[20, 0], [0, 5]]), ("b", [[3, 0], [0, 1]]), ("d", [[6, 9], [0, 1]])):
        inits.append(_w(name + "_w", np.asarray(w).reshape(2, 2, 1, 1)))
        nodes.append(helper.make_node("Conv", ["x", name + "_w"], [name], name=name + "_node"))
    nodes += [helper.make_node("Concat", ["a", "b"], ["c"], axis=1, name="cat"),
              helper.make_node("Sigmoid", ["c"], ["y"], name="sig_c"),
              helper.make_node("Relu", ["d"], ["dr"], name="relu_d"),
              helper.make_node("Sigmoid", ["dr"], ["z"], name="sig_d"),
              helper.make_node("Sigmoid", ["b"], ["u"], name="sig_b")]
    g = _model(nodes, [_vi("x", [1, 2, 8, 8])], [_vi(n, None) for n in ("y", "z", "u")], inits)
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(4):
        x = rng.uniform(-1, 1, (1, 2, 8, 8)).astype(np.float32)
        x[0, :, 0, 0], x[0, :, 0, 1] = 1.0, -1.0  # the extremes: a spans exactly [-20, 20]
        samples.append({"x": x})
    return g, samples


@pytest.mark.parametrize("tensor", ["a", "b", "c", "dr"])
def test_probe_grid_equals_the_toolkit_cfg(tensor):
    g, samples = _probe()
    cfg_path = RKNN / "sigmoid_clip_probe.quantization.cfg"
    toolkit = RknnQuantCfg.parse(cfg_path.read_text(), str(cfg_path)).params
    sim = SimBackend("rknn")
    config = QuantConfig(scheme=QuantScheme(profile="rknn"))
    sim.prepare(g, config, samples)
    qp = sim.plan(g, config).act[tensor]
    assert float(qp.scale[0]) == pytest.approx(toolkit[tensor].scale[0], rel=1e-9)
    assert int(qp.zero_point[0]) == toolkit[tensor].zero_point[0]


def test_generic_profile_keeps_the_observed_range():
    g, samples = _probe()
    sim = SimBackend("generic")
    config = QuantConfig(scheme=QuantScheme(profile="generic"))
    sim.prepare(g, config, samples)
    qp = sim.plan(g, config).act["a"]
    assert float(qp.scale[0]) == pytest.approx(40.0 / 255.0)  # [-20, 20] over 255 steps


# ------------------------------------------------------------------ weights
@pytest.mark.parametrize("profile,asym", [("rknn", True), ("generic", False)])
def test_weight_grid_per_profile(profile, asym):
    w = np.array([[-1.0, 0.5, 0.25, 0.1], [0.3, -0.2, 0.05, 0.6]], dtype=np.float32).reshape(2, 4, 1, 1)
    g = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], [_vi("x", [1, 4, 2, 2])],
               [_vi("y", None)], [_w("w", w)])
    sim = SimBackend(profile)
    config = QuantConfig(scheme=QuantScheme(profile=profile))
    sim.prepare(g, config, [{"x": np.ones((1, 4, 2, 2), np.float32)}])
    got = sim.plan(g, config).weights["conv"]
    want = {True: np.empty_like(w), False: np.empty_like(w)}
    for c in range(2):  # written out by hand: asym = [min, max] over 255 steps with a zero point; sym = max|w|/127
        lo, hi = min(w[c].min(), 0.0), max(w[c].max(), 0.0)
        s = (hi - lo) / 255.0
        zp = np.round(-128 - lo / s)
        want[True][c] = (np.clip(np.round(w[c] / s) + zp, -128, 127) - zp) * s
        s = max(-lo, hi) / 127.0
        want[False][c] = np.clip(np.round(w[c] / s), -127, 127) * s
    np.testing.assert_allclose(got, want[asym], rtol=0, atol=1e-7)
    assert not np.allclose(got, want[not asym], rtol=0, atol=1e-7)  # the two grids differ on these weights


def test_probe_model_is_the_fixture_model():
    """The recorded cfg lists exactly the probe's tensors (a cfg written for another model would not)."""
    g, _ = _probe()
    cfg_path = RKNN / "sigmoid_clip_probe.quantization.cfg"
    params = RknnQuantCfg.parse(cfg_path.read_text(), str(cfg_path)).params
    names = {t for n in g.nodes for t in n.output} | {"x"}
    assert {k for k in params if not k.endswith("_int8")} == names


# ------------------------------------------------------------------ PP-OCRv4 det: where the toolkit quantizes
def _ppocr_head() -> ModelGraph:
    """PP-OCRv4 det's first layers with paddle2onnx's names: Conv+BN; then per block Conv -> Mul(a) -> Add(b)
    (a learnable affine) -> HardSwish written as Add(3) -> Clip(0, 6) -> Mul -> Div(6) -> Mul(a') -> Add(b');
    the third block ends after its affine."""
    nodes, inits = [], []

    def const(name, v):
        inits.append(_w(name, np.asarray(v, dtype=np.float32)))
        return name

    def conv(name, x, y):
        nodes.append(helper.make_node("Conv", [x, const(name + ".w", np.full((2, 2, 1, 1), 0.5))], [y], name=name))

    def op(kind, name, ins, y):
        nodes.append(helper.make_node(kind, ins, [y], name=name))

    conv("p2o.Conv.0", "x", "conv2d_450.tmp_0")
    bn = [const(f"bn.{k}", v) for k, v in (("s", [1.0, 2.0]), ("b", [0.1, 0.2]), ("m", [0.0, 0.1]), ("v", [1.0, 1.0]))]
    op("BatchNormalization", "p2o.BatchNormalization.0", ["conv2d_450.tmp_0", *bn], "batch_norm_67.tmp_2")
    x = "batch_norm_67.tmp_2"
    blocks = [(1, "depthwise_conv2d_0.tmp_0", 0, 2, 4, 0, 2, "hardswish_58.tmp_0", 4, 6),
              (2, "conv2d_451.tmp_0", 6, 10, 12, 2, 8, "hardswish_59.tmp_0", 10, 14)]
    for conv_k, conv_out, m0, a0, a3, c0, m2, hs, m4, a6 in blocks:
        conv(f"p2o.Conv.{conv_k}", x, conv_out)
        op("Mul", f"p2o.Mul.{m0}", [const(f"s{m0}", [0.9]), conv_out], f"p2o.Mul.{m0 + 1}")
        op("Add", f"p2o.Add.{a0}", [f"p2o.Mul.{m0 + 1}", const(f"b{a0}", [0.5])], f"p2o.Add.{a0 + 1}")
        t = f"p2o.Add.{a0 + 1}"
        op("Add", f"p2o.Add.{a3}", [t, const(f"three{a3}", 3.0)], f"p2o.Add.{a3 + 1}")
        op("Clip", f"p2o.Clip.{c0}", [f"p2o.Add.{a3 + 1}", const(f"lo{c0}", 0.0), const(f"hi{c0}", 6.0)],
           f"p2o.Clip.{c0 + 1}")
        op("Mul", f"p2o.Mul.{m2}", [t, f"p2o.Clip.{c0 + 1}"], f"p2o.Mul.{m2 + 1}")
        op("Div", f"p2o.Div.{conv_k - 1}", [f"p2o.Mul.{m2 + 1}", const(f"six{m2}", 6.0)], hs)
        op("Mul", f"p2o.Mul.{m4}", [const(f"s{m4}", [0.5]), hs], f"p2o.Mul.{m4 + 1}")
        op("Add", f"p2o.Add.{a6}", [f"p2o.Mul.{m4 + 1}", const(f"b{a6}", [0.0])], f"p2o.Add.{a6 + 1}")
        x = f"p2o.Add.{a6 + 1}"
    conv("p2o.Conv.3", x, "depthwise_conv2d_1.tmp_0")
    op("Mul", "p2o.Mul.12", [const("s12", [1.1]), "depthwise_conv2d_1.tmp_0"], "p2o.Mul.13")
    op("Add", "p2o.Add.18", ["p2o.Mul.13", const("b18", [0.2])], "p2o.Add.19")
    return _model(nodes, [_vi("x", [1, 2, 4, 4])], [_vi("p2o.Add.19", None)], inits)


def test_ppocr_quantization_points_are_the_toolkits():
    path = RKNN / "ppocr4_det_layers.txt"
    rows = [r for r in parse_error_analysis(path.read_text(), str(path)) if r.op_type not in ("Input", "exDataConvert")]
    dumped = {r.name for r in rows if r.entire_cos is not None}  # a row with numbers: the toolkit quantizes it
    fused = {r.name for r in rows if r.entire_cos is None}  # a blank row: inside the next op
    assert len(dumped) == 8 and fused == {"p2o.Add.3", "p2o.Add.11"}
    # a blank row counts as fused away (its dump is the op's internal value, not compared)
    assert fused_away(["p2o.Add.3", "hardswish_58.tmp_0", "p2o.Mul.1"], rows) == ["p2o.Add.3", "p2o.Mul.1"]
    g = _ppocr_head()
    ops = build_quant_ops(g, fuse=True)
    points = {t for op in ops if op.kind == "compute" for t in op.outputs}
    assert points == dumped
    labels = [op.op_type for op in ops if op.kind == "compute"]
    assert labels.count("Conv+Mul(const)+Add(const)+HardSwish") == 2 and labels[-1] == "Conv+Mul(const)+Add(const)"


def test_hardswish_with_other_constants_is_not_fused():
    """Add(2) -> Clip(0, 6) -> Mul -> Div(6) is not HardSwish: each op stays its own quantization point."""
    g = _ppocr_head()
    m = g.model
    for init in m.graph.initializer:
        if init.name == "three4":
            init.CopyFrom(_w("three4", np.asarray(2.0, dtype=np.float32)))
    g = ModelGraph(m)
    points = {t for op in build_quant_ops(g, fuse=True) if op.kind == "compute" for t in op.outputs}
    assert {"p2o.Add.3", "p2o.Add.5", "p2o.Clip.1", "p2o.Mul.3", "hardswish_58.tmp_0"} <= points
    assert "p2o.Add.11" not in points  # the second block still fuses


def test_float_rounding_is_not_a_reordering():
    """PP-OCRv4's probability map: the toolkit's float run matches ONNX to ~2e-5, which is agreement (it was
    taken for a layout change and skipped, so only blank pages were counted and a 0 dB deviation reported)."""
    from qdebug.compare.vendor import _same_values_reordered

    rng = np.random.default_rng(1)
    f = rng.uniform(0, 1, 1000)
    assert not _same_values_reordered(f, f + rng.normal(0, 2e-5, f.size))  # rounding: same values, same order
    assert _same_values_reordered(f, f[::-1].copy())  # a transposed dump: same values, other order
    assert not _same_values_reordered(f, f * 0.5)  # other values


def test_hardsigmoid_input_is_its_linear_region_as_the_toolkit_records():
    """Every HardSigmoid input of PP-OCRv4 det: the toolkit quantizes it on [-beta/alpha, (1-beta)/alpha]
    (observed ranges up to -69.5..60.0); alpha 1/6 gives +-3, alpha 0.2 gives +-2.5."""
    rows = [ln.split() for ln in (RKNN / "ppocr4_det_hardsigmoid_ranges.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert len(rows) == 10
    for name, alpha, beta, t, omin, omax, tmin, tmax in rows:
        node = helper.make_node("HardSigmoid", [t], ["y"], name=name, alpha=float(alpha), beta=float(beta))
        conv = helper.make_node("Conv", ["x", "w"], [t], name="conv")
        g = _model([conv, node], [_vi("x", [1, 1, 2, 2])], [_vi("y", None)], [_w("w", np.ones((1, 1, 1, 1)))])
        ops = build_quant_ops(g, fuse=True)
        ranges = {t: (float(omin), float(omax))}
        rk = get_profile("rknn")
        got = clip_sigmoid_inputs(g, ops, ranges, rk.sigmoid_input_clip, rk.hardsigmoid_input_clip)[t]
        assert got == pytest.approx((float(tmin), float(tmax)), abs=1e-6), name
        generic = get_profile("generic")
        assert clip_sigmoid_inputs(g, ops, ranges, generic.sigmoid_input_clip,
                                   generic.hardsigmoid_input_clip)[t] == ranges[t]


@pytest.mark.parametrize(("profile", "flag", "symmetric"), [("generic", [], True), ("generic", ["--asymmetric-weights"],
                                                                                   False), ("rknn", [], False)])
def test_scheme_records_the_weights_actually_simulated(tmp_path, profile, flag, symmetric):
    """The rknn profile always gives weights a zero point: the JSON (and the report built from it) says so."""
    import json

    import onnx

    from qdebug.cli import main

    x = _vi("x", [1, 2, 4, 4])
    w = _w("w", np.arange(2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3) / 10 - 1.0)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 1, 1])], "t", [x],
                          [_vi("y", [1, 2, 4, 4])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(1, 2, 4, 4)).astype(np.float32))
    out = tmp_path / "c.json"
    assert main(["compare", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "x.npy"), "--profile", profile,
                 *flag, "-q", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["quant"]["scheme"]["symmetric_weights"] is symmetric
